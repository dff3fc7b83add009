"""The operator at scale: peak memory and time to the first plan, against the API double.

    .venv/bin/python benchmarks/bench_operator_scale.py                   # 50,000 pods, 2,000 nodes
    .venv/bin/python benchmarks/bench_operator_scale.py --pods 5000 --nodes 200 --labelled 20

The API double (tests/harness/kube_api.py, in this process) serves ``--nodes`` nodes, of which
``--labelled`` carry cdmo's label and a Ready MigLayout (8 H100 80GB GPUs each, MIG on, no
instances yet), and ``--pods`` Running pods of about ``--pod-kb`` KB each (labels, a
last-applied-configuration annotation, env, volumes, status: what real pods weigh), plus
``--waiting`` unschedulable pods that ask for ``nvidia.com/mig-1g.10gb``.

The real operator runs as the chart runs it (``cdmo operator --standalone``) in a child process
pointed at the double, with 0.5 s / 2 s batch windows. Measured: wall time from the child's
start to the first MigLayout spec with instances (its first plan, published), and the child's
peak resident memory (``VmHWM`` in /proc, Linux) at that moment; then it is stopped. ``--unbounded`` turns the
server-side selectors and paging off (CDMO_LIST_CHUNK_SIZE=0 and no selectors), for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdmo.api import GPU_PRODUCT_LABEL, PARTITIONING_LABEL_KEY, PARTITIONING_LABEL_VALUE  # noqa: E402
from cdmo.mig.catalog import get_model, gfd_label  # noqa: E402
from tests.harness.kube_api import KubeApiDouble  # noqa: E402

GPUS = 8


def build_node(name: str, labelled: bool) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "topology.kubernetes.io/zone": "zone-a",
        "node.kubernetes.io/instance-type": "p5.48xlarge",
    }
    if labelled:
        labels[GPU_PRODUCT_LABEL] = gfd_label(get_model("h100-80gb").product_names[0])
        labels[PARTITIONING_LABEL_KEY] = PARTITIONING_LABEL_VALUE
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": "10.0.0.0/24", "providerID": f"aws:///zone-a/i-{abs(hash(name)) % 10**12:012d}"},
        "status": {
            "capacity": {"cpu": "192", "memory": "2097152Mi", "pods": "110"},
            "allocatable": {"cpu": "191", "memory": "2090000Mi", "pods": "110"},
            "conditions": [
                {"type": t, "status": "False" if t != "Ready" else "True", "reason": f"Kubelet{t}"}
                for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
            ],
            "nodeInfo": {"kubeletVersion": "v1.31.0", "containerRuntimeVersion": "containerd://1.7.20"},
        },
    }


def build_miglayout(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "cdmo.clear.ml/v1alpha1",
        "kind": "MigLayout",
        "metadata": {"name": name},
        "spec": {"gpus": [{"index": i, "instances": []} for i in range(GPUS)]},
        "status": {
            "observedGeneration": 1,
            "phase": "Ready",
            "gpus": [
                {
                    "index": i,
                    "uuid": f"GPU-{name}-{i}",
                    "model": "h100-80gb",
                    "product": "NVIDIA H100 80GB HBM3",
                    "migEnabled": True,
                    "instances": [],
                }
                for i in range(GPUS)
            ],
        },
    }


def build_pod(i: int, node: str, kb: int) -> dict[str, Any]:
    name = f"web-{i:06d}"
    spec: dict[str, Any] = {
        "nodeName": node,
        "containers": [
            {
                "name": "app",
                "image": "registry.example.com/team/app:1.2.3",
                "env": [{"name": f"SETTING_{k}", "value": f"value-{k}-{i}"} for k in range(12)],
                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                "volumeMounts": [
                    {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
                ],
            }
        ],
        "volumes": [
            {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
        ],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": f"team-{i % 50}",
            "labels": {"app": "web", "pod-template-hash": "5d9c7b", "team": f"team-{i % 50}"},
            "annotations": {},
        },
        "spec": spec,
        "status": {
            "phase": "Running",
            "podIP": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
            "conditions": [
                {"type": t, "status": "True"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
        },
    }
    # kubectl's last-applied-configuration: the usual bulk of a real pod's metadata
    size = len(json.dumps(pod))
    pod["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "x" * max(
        0, kb * 1024 - size - 80
    )
    return pod


def waiting_pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"train-{i:03d}", "namespace": "ml"},
        "spec": {
            "containers": [
                {"name": "main", "image": "trainer", "resources": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}}
            ]
        },
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
        },
    }


def seed(api: KubeApiDouble, args: argparse.Namespace) -> None:
    store = api.store

    def do() -> None:
        nodes, pods, mls = (store.type_of(p) for p in ("nodes", "pods", "miglayouts"))
        for n in range(args.nodes):
            name = f"node-{n:05d}"
            store.create(nodes, None, build_node(name, n < args.labelled), keep_status=True)
            if n < args.labelled:
                store.create(mls, None, build_miglayout(name), keep_status=True)
        for i in range(args.pods):
            store.create(
                pods, None, build_pod(i, f"node-{i % args.nodes:05d}", args.pod_kb), keep_status=True
            )
        for i in range(args.waiting):
            store.create(pods, None, waiting_pod(i), keep_status=True)
        store.compact()  # the seeding is history nobody watches

    api.call(do, timeout=3600)


def _peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM). Not ru_maxrss of the children: that
    counts the forked copy of this (big) process before it executes the operator."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


def first_plan(api: KubeApiDouble, timeout: float) -> None:
    def planned(store: Any) -> bool:
        for ml in store.objects[("cdmo.clear.ml", "miglayouts")].values():
            if any(g.get("instances") for g in (ml.get("spec") or {}).get("gpus") or []):
                return True
        return False

    api.wait_for(planned, timeout, "no plan published")


def run(args: argparse.Namespace) -> dict[str, Any]:
    api = KubeApiDouble(history_limit=1000, bookmark_interval=60.0)
    api.start()
    try:
        started = time.perf_counter()
        seed(api, args)
        seeded = time.perf_counter() - started
        env = {
            **os.environ,
            "CDMO_BATCH_IDLE_SECONDS": "0.5",
            "CDMO_BATCH_MAX_SECONDS": "2",
            "CDMO_LOG_LEVEL": "warning",
        }
        if args.unbounded:
            env["CDMO_LIST_CHUNK_SIZE"] = "0"
        cmd = [
            sys.executable,
            "-m",
            "cdmo.cli",
            "operator",
            "--standalone",
            "--server",
            api.url,
            "--metrics-port",
            "0",
        ]
        if args.unbounded:
            cmd = [sys.executable, str(Path(__file__)), "--child-unbounded", api.url]
        t0 = time.perf_counter()
        # the child's log goes to a file: a pipe nobody reads would block it once full
        with tempfile.TemporaryFile() as log:
            child = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
            peak_kib = 0
            try:
                first_plan(api, args.timeout)
                to_plan = time.perf_counter() - t0
                peak_kib = _peak_rss_kib(child.pid)
            finally:
                child.send_signal(signal.SIGINT)
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                log.seek(0)
                err = log.read()
        return {
            "pods": args.pods,
            "podKB": args.pod_kb,
            "nodes": args.nodes,
            "labelled": args.labelled,
            "waiting": args.waiting,
            "bounded": not args.unbounded,
            "seedSeconds": round(seeded, 1),
            "firstPlanSeconds": round(to_plan, 1),
            "peakMiB": round(peak_kib / 1024),
            "stderrTail": err.decode(errors="replace")[-400:] if args.verbose else "",
        }
    finally:
        api.stop()


def child_unbounded(url: str) -> None:
    """The operator with kopf's defaults: whole lists, every pod and node (the comparison)."""
    from cdmo.cli import main
    from cdmo.operator import handlers

    handlers.watch_selectors = lambda config: {}  # type: ignore[assignment]
    sys.argv = ["cdmo", "operator", "--standalone", "--server", url, "--metrics-port", "0"]
    sys.exit(main())


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child-unbounded":
        child_unbounded(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=50_000)
    parser.add_argument("--pod-kb", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=2_000)
    parser.add_argument("--labelled", type=int, default=200)
    parser.add_argument("--waiting", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--unbounded", action="store_true", help="no server-side selectors, no paging")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    result = run(args)
    result["python"] = platform.python_version()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
