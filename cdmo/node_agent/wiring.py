"""How the CLI verbs build the node agent's parts from flags and AgentConfig.

Backend choice: ``--backend`` when given; else ``simulated`` when ``--sim-state`` or
``--sim-gpus`` is given; else ``CDMO_BACKEND`` (default nvml). ``--backend nvml`` with a
``--sim-*`` flag is refused (exit 2), not run on the real GPUs with the flag ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import TYPE_CHECKING

import structlog

from cdmo.config import AgentConfig
from cdmo.errors import InvalidInput

if TYPE_CHECKING:  # the verbs' --help must not pay for grpc or pynvml
    from cdmo.node_agent.backend import GpuBackend
    from cdmo.node_agent.deviceplugin.plugin import KubeletDevicePlugin
    from cdmo.node_agent.inuse import InUse
    from cdmo.node_agent.metrics import AgentMetrics

log = structlog.get_logger("cdmo.node_agent")

BACKENDS = ("nvml", "simulated")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend, --sim-state, --sim-gpus, --pod-resources-socket."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="nvml (real GPUs) or simulated; default: simulated with --sim-*, else $CDMO_BACKEND or nvml",
    )
    parser.add_argument(
        "--sim-state",
        metavar="FILE",
        default=None,
        help="keep simulated GPUs in this JSON file so that separate commands see the same GPUs",
    )
    parser.add_argument(
        "--sim-gpus",
        metavar="MODELS",
        default=None,
        help="models of a new simulated node, such as h100-80gb,h100-80gb",
    )
    parser.add_argument(
        "--pod-resources-socket",
        metavar="PATH",
        default=None,
        help="kubelet pod-resources socket (default $CDMO_POD_RESOURCES_SOCKET or "
        "/var/lib/kubelet/pod-resources/kubelet.sock)",
    )


def config_from_args(args: argparse.Namespace, base: AgentConfig | None = None) -> AgentConfig:
    """AgentConfig from the environment, overridden by the flags that were given."""
    conf = base or AgentConfig.from_env()
    changes = {}
    for name in (
        "sim_state",
        "sim_gpus",
        "pod_resources_socket",
        "device_plugin_dir",
        "device_list_strategy",
        "device_id_strategy",
    ):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    backend = getattr(args, "backend", None)
    sim_flags = [
        flag for flag, name in (("--sim-state", "sim_state"), ("--sim-gpus", "sim_gpus")) if name in changes
    ]
    if backend == "nvml" and sim_flags:
        # Once ignored without a word: the command planned against the real GPUs and exited 0.
        raise InvalidInput(
            f"--backend nvml does not take {' or '.join(sim_flags)}: those are for simulated GPUs",
            hint="drop --backend nvml to use simulated GPUs, or drop the --sim-* flags to use this node's GPUs",
        )
    if backend is None and (changes.get("sim_state") or changes.get("sim_gpus")):
        backend = "simulated"
    if backend is not None:
        changes["backend"] = backend
    return dataclasses.replace(conf, **changes)


def build_backend(conf: AgentConfig) -> GpuBackend:
    """The backend ``conf.backend`` names (pynvml is imported only for nvml)."""
    if conf.backend == "nvml":
        from cdmo.node_agent.nvml import NvmlBackend

        return NvmlBackend()
    if conf.backend == "simulated":
        from cdmo.node_agent.simulated import SimulatedBackend, parse_models

        models = parse_models(conf.sim_gpus) if conf.sim_gpus else ()
        seed = conf.node_name or "sim-node"
        if conf.sim_state:
            return SimulatedBackend(state_file=conf.sim_state, new_gpus=models, seed=seed)
        if not models:
            raise InvalidInput(
                "the simulated backend needs GPUs", hint="give --sim-gpus h100-80gb,... or --sim-state FILE"
            )
        return SimulatedBackend.from_models(models, seed=seed)
    raise InvalidInput(f"unknown backend {conf.backend!r}", hint="backends are " + ", ".join(BACKENDS))


def read_local_in_use(socket_path: str) -> InUse:
    """Who holds what, without Kubernetes: pod-resources when its socket exists (NVML
    processes are added by reconcile). A socket that exists but does not answer is an error."""
    from cdmo.node_agent.inuse import build_in_use
    from cdmo.node_agent.podresources.client import PodResourcesClient

    client = PodResourcesClient(socket_path)
    if not client.available():
        log.debug("Skipped pod-resources: socket not found", socket=socket_path)
        return build_in_use([], ())
    return build_in_use(client.list(), ())


def env_node_name() -> str:
    return os.environ.get("NODE_NAME", "")


def add_device_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the built-in device plugin."""
    parser.add_argument(
        "--device-plugin-dir",
        metavar="DIR",
        default=None,
        help="the kubelet's device-plugins directory (default $CDMO_DEVICE_PLUGIN_DIR or "
        "/var/lib/kubelet/device-plugins)",
    )
    parser.add_argument(
        "--device-list-strategy",
        metavar="STRATEGY",
        default=None,
        help="how Allocate names devices: envvar, volume-mounts (default) or cdi-annotations, "
        "comma-separated",
    )
    parser.add_argument(
        "--device-id-strategy",
        choices=("uuid", "index"),
        default=None,
        help="device IDs as uuid (default) or index",
    )


def build_device_plugin(
    conf: AgentConfig, backend: GpuBackend, metrics: AgentMetrics | None = None
) -> KubeletDevicePlugin:
    """The built-in device plugin from the config (not started), counting critical XIDs in
    ``metrics``; a bad ``CDMO_DISABLE_HEALTHCHECKS`` is refused here, at start."""
    from cdmo.node_agent.deviceplugin.plugin import KubeletDevicePlugin, PluginSettings

    return KubeletDevicePlugin(
        backend,
        PluginSettings(
            plugin_dir=conf.device_plugin_dir,
            device_list_strategy=conf.device_list_strategy,
            device_id_strategy=conf.device_id_strategy,
            cdi_kind=conf.cdi_kind,
            whole_gpus=conf.advertise_whole_gpus,
            disable_healthchecks=conf.disable_healthchecks,
        ),
        observe_xid=metrics.observe_xid if metrics is not None else None,
    )
