"""The operator Deployment and the agent DaemonSet: what the design asks of each, and that
the environment the chart sets is exactly cdmo.config's, with cdmo's own defaults."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cdmo.config import AgentConfig, OperatorConfig
from tests.chart.conftest import CHART, RENDERS, Helm, by_kind, container, env_of, one, render_named

#: Variables the chart sets for programs other than cdmo, and why.
FOREIGN_ENV = {
    "operator": {"POD_ID": "kopf names each replica in the peering object after it"},
    "agent": {
        "NVIDIA_VISIBLE_DEVICES": "the NVIDIA container runtime mounts NVML only when it is set",
        "NVIDIA_DRIVER_CAPABILITIES": "utility is the capability that carries NVML",
        "NVIDIA_MIG_CONFIG_DEVICES": "the toolkit grants MIG configuration (create, destroy) only when asked",
        "NVIDIA_MIG_MONITOR_DEVICES": "the toolkit grants listing every MIG device only when asked",
    },
}
CONFIG_ENV = {
    "operator": {var for _, var in OperatorConfig.ENV},
    "agent": {var for _, var in AgentConfig.ENV},
}
WORKLOAD = {"operator": "Deployment", "agent": "DaemonSet"}


def pod_spec(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return one(objects, kind)["spec"]["template"]["spec"]


# --- environment: cdmo.config's variables only, and cdmo's defaults by default ---------------


@pytest.mark.parametrize("render", sorted(RENDERS))
@pytest.mark.parametrize("component", ["operator", "agent"])
def test_every_env_var_is_one_that_cdmo_config_knows(helm: Helm, render: str, component: str) -> None:
    env = env_of(container(one(render_named(helm, render), WORKLOAD[component])))
    unknown = set(env) - CONFIG_ENV[component] - set(FOREIGN_ENV[component])
    assert unknown == set(), f"{component} sets variables cdmo.config does not read: {sorted(unknown)}"


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_the_agent_asks_the_toolkit_for_nvml_and_the_mig_capabilities(helm: Helm, render: str) -> None:
    # Without the MIG config capability NVML refuses instance changes in the container
    # (NO_PERMISSION), and without monitor it lists only some MIG devices and processes.
    env = env_of(container(one(render_named(helm, render), "DaemonSet")))
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert env["NVIDIA_MIG_CONFIG_DEVICES"] == env["NVIDIA_MIG_MONITOR_DEVICES"] == "all"


def test_default_operator_env_gives_cdmo_defaults(helm: Helm) -> None:
    env = env_of(container(one(render_named(helm, "defaults"), "Deployment")))
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    # CDMO_EVENTS_NAMESPACE comes from the downward API: the operator's own namespace.
    assert set(plain) == CONFIG_ENV["operator"] - {"CDMO_EVENTS_NAMESPACE"}, (
        "the chart should set every operator knob"
    )
    assert OperatorConfig.from_env(plain) == OperatorConfig()
    assert env["CDMO_EVENTS_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_default_agent_env_gives_cdmo_defaults(helm: Helm) -> None:
    env = env_of(container(one(render_named(helm, "defaults"), "DaemonSet")))
    plain = {k: v for k, v in env.items() if isinstance(v, str) and k in CONFIG_ENV["agent"]}
    # The simulator's knobs appear only with backend=sim; NODE_NAME and CDMO_EVENTS_NAMESPACE
    # come from the downward API.
    downward = {"NODE_NAME", "CDMO_EVENTS_NAMESPACE"}
    assert set(plain) == CONFIG_ENV["agent"] - downward - {"CDMO_SIM_GPUS", "CDMO_SIM_STATE"}
    assert AgentConfig.from_env(plain) == AgentConfig()
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["CDMO_EVENTS_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_nondefault_values_reach_the_config(helm: Helm) -> None:
    objects = render_named(helm, "nondefault")
    op_env = env_of(container(one(objects, "Deployment")))
    op = OperatorConfig.from_env({k: v for k, v in op_env.items() if isinstance(v, str)})
    assert (op.label_key, op.label_value) == ("example.com/mig-partitioning", "dynamic")
    assert (op.batch_idle_seconds, op.batch_max_seconds) == (2.5, 20.0)
    assert (op.stale_timeout_seconds, op.pending_grace_seconds) == (300.0, 0.0)
    assert (op.metrics_port, op.health_port) == (9090, 9091)
    ag_env = env_of(container(one(objects, "DaemonSet")))
    ag = AgentConfig.from_env(
        {k: v for k, v in ag_env.items() if isinstance(v, str) and k in CONFIG_ENV["agent"]}
    )
    assert ag.refresh_strategy == "delete-pod"
    assert (ag.device_plugin_namespace, ag.device_plugin_selector) == (
        "nvidia-device-plugin",
        "app.kubernetes.io/name=nvidia-device-plugin",
    )
    assert ag.pod_resources_socket == "/var/lib/k0s/kubelet/pod-resources/kubelet.sock"
    assert (ag.enable_mig, ag.metrics_port, ag.log_format) == (True, 9465, "json")
    assert (ag.resync_seconds, ag.refresh_timeout_seconds) == (30.0, 60.0)


def test_sim_backend_sets_the_simulator_knobs(helm: Helm) -> None:
    env = env_of(container(one(render_named(helm, "sim-backend"), "DaemonSet")))
    cfg = AgentConfig.from_env(
        {k: v for k, v in env.items() if isinstance(v, str) and k in CONFIG_ENV["agent"]}
    )
    assert (cfg.backend, cfg.sim_gpus, cfg.sim_state) == (
        "simulated",
        "h100-80gb,a100-40gb",
        "/tmp/gpus.json",
    )


# --- the operator Deployment ---------------------------------------------------------------


def test_operator_runs_two_replicas_with_kopf_peering(helm: Helm) -> None:
    objects = render_named(helm, "defaults")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    c = container(deployment)
    assert c["args"][0] == "operator"
    assert "--peering=cdmo" in c["args"] and "--standalone" not in c["args"]
    (peering,) = by_kind(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "cdmo"
    assert env_of(c)["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # Replicas prefer different nodes, so one node's loss does not take both.
    anti = pod_spec(objects, "Deployment")["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_standalone_operator_has_no_peering(helm: Helm) -> None:
    objects = render_named(helm, "standalone")
    c = container(one(objects, "Deployment"))
    assert "--standalone" in c["args"] and not any(a.startswith("--peering") for a in c["args"])
    assert by_kind(objects, "ClusterKopfPeering") == []


@pytest.mark.parametrize("render", ["defaults", "nondefault"])
def test_operator_is_non_root_read_only_and_bounded(helm: Helm, render: str) -> None:
    objects = render_named(helm, render)
    spec = pod_spec(objects, "Deployment")
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] > 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(one(objects, "Deployment"))
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in sc
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][part]), part


@pytest.mark.parametrize("render", ["defaults", "nondefault"])
def test_operator_liveness_probe_is_kopfs_endpoint(helm: Helm, render: str) -> None:
    c = container(one(render_named(helm, render), "Deployment"))
    port = int(env_of(c)["CDMO_HEALTH_PORT"])
    assert f"--liveness=http://0.0.0.0:{port}/healthz" in c["args"]
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports[probe["port"]] == port
    assert ports["metrics"] == int(env_of(c)["CDMO_METRICS_PORT"])


@pytest.mark.parametrize("render", ["defaults", "nondefault"])
def test_agent_liveness_probe_asks_the_agents_metrics_port(helm: Helm, render: str) -> None:
    """The agent had no liveness probe: a pass hung in NVML or a kubelet call went unnoticed."""
    from cdmo.config import AgentConfig

    c = container(one(render_named(helm, render), "DaemonSet"))
    probe = c["livenessProbe"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert probe["httpGet"]["path"] == "/healthz"
    assert ports[probe["httpGet"]["port"]] == int(env_of(c)["CDMO_METRICS_PORT"])
    conf = AgentConfig.from_env({k: v for k, v in env_of(c).items() if isinstance(v, str)})
    # restarted only once a pass is far past anything a healthy agent does
    assert conf.liveness_seconds >= 10 * conf.resync_seconds


def test_operator_extra_args_follow_the_verb(helm: Helm) -> None:
    c = container(one(render_named(helm, "nondefault"), "Deployment"))
    assert c["args"][0] == "operator" and c["args"][-1] == "--verbose"


# --- the agent DaemonSet -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("render", "label"),
    [
        ("defaults", ("cdmo.clear.ml/gpu-partitioning", "mig")),
        ("nondefault", ("example.com/mig-partitioning", "dynamic")),
    ],
)
def test_agent_runs_only_on_labelled_nodes(helm: Helm, render: str, label: tuple[str, str]) -> None:
    objects = render_named(helm, render)
    selector = pod_spec(objects, "DaemonSet")["nodeSelector"]
    assert selector[label[0]] == label[1]
    # The operator plans for the same nodes the agents run on.
    op_env = env_of(container(one(objects, "Deployment")))
    assert op_env["CDMO_PARTITION_LABEL"] == f"{label[0]}={label[1]}"


@pytest.mark.parametrize(
    ("render", "host_pid"),
    [
        ("defaults", False),
        ("sighup-no-taint", True),
        ("delete-pod", False),
        ("refresh-none", False),
        ("nondefault", False),
    ],
)
def test_agent_has_host_pid_only_for_sighup(helm: Helm, render: str, host_pid: bool) -> None:
    spec = pod_spec(render_named(helm, render), "DaemonSet")
    assert spec.get("hostPID", False) is host_pid


@pytest.mark.parametrize("render", ["defaults", "nondefault"])
def test_agent_is_privileged_with_the_pod_resources_directory(helm: Helm, render: str) -> None:
    objects = render_named(helm, render)
    spec = pod_spec(objects, "DaemonSet")
    c = container(one(objects, "DaemonSet"))
    assert c["args"] == ["agent"]
    assert c["securityContext"]["privileged"] is True
    # Kubernetes refuses privileged together with allowPrivilegeEscalation=false.
    assert c["securityContext"].get("allowPrivilegeEscalation") is not False
    socket = env_of(c)["CDMO_POD_RESOURCES_SOCKET"]
    directory = socket.rsplit("/", 1)[0]
    (volume,) = [v for v in spec["volumes"] if v.get("hostPath", {}).get("path") == directory]
    assert volume["hostPath"] == {"path": directory, "type": "Directory"}
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == directory  # the directory, not the socket
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][part]), part


@pytest.mark.parametrize(("render", "mounted"), [("defaults", True), ("delete-pod", False)])
def test_agent_mounts_the_device_plugins_directory_in_builtin_mode(
    helm: Helm, render: str, mounted: bool
) -> None:
    objects = render_named(helm, render)
    spec = pod_spec(objects, "DaemonSet")
    c = container(one(objects, "DaemonSet"))
    directory = env_of(c)["CDMO_DEVICE_PLUGIN_DIR"]
    volumes = [v for v in spec["volumes"] if v.get("hostPath", {}).get("path") == directory]
    mounts = [m for m in c["volumeMounts"] if m["mountPath"] == directory]
    assert (len(volumes), len(mounts)) == ((1, 1) if mounted else (0, 0))
    if mounted:
        assert volumes[0]["hostPath"]["type"] == "Directory" and not mounts[0].get("readOnly")


def test_agent_tolerates_the_gpu_taint(helm: Helm) -> None:
    tolerations = pod_spec(render_named(helm, "defaults"), "DaemonSet")["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_agent_runtime_class_is_optional(helm: Helm) -> None:
    assert "runtimeClassName" not in pod_spec(render_named(helm, "defaults"), "DaemonSet")
    assert pod_spec(render_named(helm, "nondefault"), "DaemonSet")["runtimeClassName"] == "nvidia"


def test_metrics_services_and_service_monitor(helm: Helm) -> None:
    objects = render_named(helm, "nondefault")
    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    assert services["gpu-slicer-operator-metrics"]["spec"]["ports"][0]["port"] == 9090
    agent = services["gpu-slicer-agent-metrics"]
    assert agent["spec"]["clusterIP"] == "None" and agent["spec"]["ports"][0]["port"] == 9465
    for s in services.values():
        # Each Service selects the pods of its component, through the port the container names.
        component = s["metadata"]["labels"]["app.kubernetes.io/component"]
        workload = one(objects, WORKLOAD[component])
        assert s["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
        assert s["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container(workload)["ports"]}
    (monitor,) = by_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert by_kind(render_named(helm, "defaults"), "ServiceMonitor") == []


# --- the chart and the code agree ----------------------------------------------------------


def test_value_choices_are_the_agents() -> None:
    from cdmo.node_agent.refresh import STRATEGIES
    from cdmo.node_agent.wiring import BACKENDS

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["agent"]["properties"]
    assert tuple(schema["refreshStrategy"]["enum"]) == STRATEGIES
    assert tuple(schema["backend"]["enum"]) == BACKENDS


@pytest.mark.parametrize("render", ["defaults", "nondefault", "standalone"])
@pytest.mark.parametrize("component", ["operator", "agent"])
def test_container_args_are_a_cdmo_command_line(helm: Helm, render: str, component: str) -> None:
    from cdmo.cli import COMMANDS, build_parser

    if component not in COMMANDS:
        pytest.fail(f"`cdmo {component}` is not registered in cdmo.cli.COMMANDS, but the chart runs it")
    args = container(one(render_named(helm, render), WORKLOAD[component]))["args"]
    parsed = build_parser().parse_args(args)  # argparse exits (SystemExit) on an unknown flag
    assert parsed.verb == component


@pytest.mark.parametrize("render", ["defaults", "nondefault"])
def test_agent_mounts_its_pod_bound_token(helm: Helm, render: str) -> None:
    """Per-node trust needs the projected token kubelet binds to the agent's pod (node-name claim)."""
    spec = pod_spec(render_named(helm, render), "DaemonSet")
    assert spec["automountServiceAccountToken"] is True
    # no hand-made token volume (a Secret-based token has no node claim)
    assert not [v for v in spec.get("volumes") or [] if "secret" in v and "token" in v["name"]]


@pytest.mark.parametrize(
    ("render", "verified"),
    [("defaults", "false"), ("defaults-on-1.30-cluster", "true"), ("nondefault", "false")],
    ids=["no-policy", "policy-denies", "policy-warns-only"],
)
def test_operator_trusts_reports_only_where_the_policy_denies(helm: Helm, render: str, verified: str) -> None:
    env = env_of(container(one(render_named(helm, render), "Deployment")))
    assert env["CDMO_STATUS_WRITERS_VERIFIED"] == verified
