"""A kubelet stand-in for the device-plugin API, independent of cdmo: it imports nothing from
cdmo and compiles its own stubs from its own copy of the kubelet's published api.proto.

    python kubelet_standin.py DEVICE_PLUGIN_DIR

It serves Registration on DIR/kubelet.sock; for every plugin that registers it dials the
plugin's endpoint in DIR and keeps a ListAndWatch stream open. It writes one JSON object per
line to stdout: {"event": "ready"}, {"event": "register", ...}, {"event": "list", "resource",
"devices": [[id, health]...], "t": unix time}. It reads commands from stdin, one JSON object
per line: {"op": "allocate", "resource": R, "ids": [...]} answers {"event": "allocate", ...}
or {"event": "allocate-error", ...}; {"op": "preferred", "resource", "available", "size"}
answers {"event": "preferred", "ids"}.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
_out_lock = threading.Lock()


def emit(**doc):
    with _out_lock:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()


def compile_stubs():
    out = Path(tempfile.mkdtemp(prefix="kubelet-standin-"))
    (out / "api.proto").write_text((HERE / "api.proto").read_text())
    rc = protoc.main(
        ["protoc", f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}", str(out / "api.proto")]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, str(out))
    return importlib.import_module("api_pb2"), importlib.import_module("api_pb2_grpc")


def main(plugin_dir):
    pb, rpc = compile_stubs()
    plugins = {}

    def watch(resource, stub):
        try:
            for msg in stub.ListAndWatch(pb.Empty()):
                emit(
                    event="list",
                    resource=resource,
                    devices=[[d.ID, d.health] for d in msg.devices],
                    t=time.time(),
                )
        except grpc.RpcError as exc:
            emit(event="stream-end", resource=resource, code=str(exc.code()))

    class Registration(rpc.RegistrationServicer):
        def Register(self, request, context):
            channel = grpc.insecure_channel(f"unix:{Path(plugin_dir) / request.endpoint}")
            stub = rpc.DevicePluginStub(channel)
            options = stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
            plugins[request.resource_name] = stub
            emit(
                event="register",
                resource=request.resource_name,
                endpoint=request.endpoint,
                version=request.version,
                preferred=options.get_preferred_allocation_available,
            )
            threading.Thread(target=watch, args=(request.resource_name, stub), daemon=True).start()
            return pb.Empty()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc.add_RegistrationServicer_to_server(Registration(), server)
    sock = Path(plugin_dir) / "kubelet.sock"
    sock.unlink(missing_ok=True)
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    emit(event="ready")
    for line in sys.stdin:
        cmd = json.loads(line)
        stub = plugins.get(cmd.get("resource"))
        if stub is None:
            emit(event="error", message=f"no plugin for {cmd.get('resource')}")
            continue
        try:
            if cmd["op"] == "allocate":
                resp = stub.Allocate(
                    pb.AllocateRequest(
                        container_requests=[pb.ContainerAllocateRequest(devices_ids=cmd["ids"])]
                    ),
                    timeout=5,
                ).container_responses[0]
                emit(
                    event="allocate",
                    resource=cmd["resource"],
                    ids=cmd["ids"],
                    envs=dict(resp.envs),
                    mounts=[[m.container_path, m.host_path, m.read_only] for m in resp.mounts],
                    annotations=dict(resp.annotations),
                )
            elif cmd["op"] == "preferred":
                req = pb.PreferredAllocationRequest(
                    container_requests=[
                        pb.ContainerPreferredAllocationRequest(
                            available_deviceIDs=cmd["available"], allocation_size=cmd["size"]
                        )
                    ]
                )
                resp = stub.GetPreferredAllocation(req, timeout=5)
                emit(
                    event="preferred",
                    resource=cmd["resource"],
                    ids=list(resp.container_responses[0].deviceIDs),
                )
        except grpc.RpcError as exc:
            emit(
                event=f"{cmd['op']}-error",
                resource=cmd["resource"],
                code=str(exc.code()),
                details=exc.details(),
            )
    server.stop(grace=None)


if __name__ == "__main__":
    main(sys.argv[1])
