"""examples/: every YAML file parses; pods are valid Kubernetes 1.30 objects that ask for MIG
profiles the catalog knows, on the GPU model their file is named after; the ClearML queue
templates ask for the profile cdmo's queue mapping gives; the gpu-operator values say what
cdmo needs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cdmo.mig.catalog import get_model, models_with_profile
from cdmo.mig.layouts import pack_layout
from cdmo.mig.resources import QUEUE_SLICES, is_mig_resource, profile_from_resource, queue_profile
from tests.chart.conftest import KUBE_VERSION, ROOT

EXAMPLES = ROOT / "examples"
POD_MODELS = ("a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb")
CLEARML_QUEUES = ("slice-1", "slice-2", "slice-4", "slice-7")
CLEARML_FILES = {
    # file -> the GPU models whose profile names it uses
    "clearml-agent-values.yaml": ("h100-80gb", "a100-80gb"),
    "clearml-agent-values-a100.yaml": ("a100-40gb",),
}


def yaml_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def mig_resources(node: Any) -> Iterator[str]:
    """Every nvidia.com/mig-* key anywhere in a parsed YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and is_mig_resource(key):
                yield key
            yield from mig_resources(value)
    elif isinstance(node, list):
        for item in node:
            yield from mig_resources(item)


def test_examples_exist() -> None:
    names = {p.relative_to(EXAMPLES).as_posix() for p in yaml_files()}
    expected = {f"pods/{m}.yaml" for m in POD_MODELS} | set(CLEARML_FILES) | {"gpu-operator-values.yaml"}
    assert expected <= names


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_every_example_parses(path: Path) -> None:
    assert load_all(path), f"{path} holds no YAML document"


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_every_mig_resource_in_examples_is_a_known_profile(path: Path) -> None:
    for doc in load_all(path):
        for resource in mig_resources(doc):
            profile = profile_from_resource(resource)  # raises on a name that is no MIG profile
            assert models_with_profile(profile), f"{path.name}: no GPU model offers {profile} ({resource})"


def pods(model_key: str) -> list[dict[str, Any]]:
    docs = load_all(EXAMPLES / "pods" / f"{model_key}.yaml")
    assert all(d["kind"] == "Pod" for d in docs)
    return docs


@pytest.mark.parametrize("model_key", POD_MODELS)
def test_pod_examples_are_valid_pods_for_kubernetes_1_30(model_key: str) -> None:
    for pod in pods(model_key):
        kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("model_key", POD_MODELS)
def test_pod_examples_ask_for_profiles_of_their_model_and_fit_one_gpu(model_key: str) -> None:
    model = get_model(model_key)
    names = [p["metadata"]["name"] for p in pods(model_key)]
    assert len(names) == len(set(names)) >= 3
    for pod in pods(model_key):
        counts: dict[str, int] = {}
        for c in pod["spec"]["containers"]:
            for resource, amount in c["resources"]["limits"].items():
                if is_mig_resource(resource):
                    profile = profile_from_resource(resource)
                    assert model.has_profile(profile), f"{model_key} has no {profile}"
                    counts[profile] = counts.get(profile, 0) + int(amount)
        assert counts, f"{pod['metadata']['name']} asks for no MIG device"
        # What one pod asks for must fit on one GPU of the model, or it could never run.
        assert pack_layout(model, counts) is not None, (
            f"{pod['metadata']['name']}: {counts} fits no {model_key}"
        )


@pytest.mark.parametrize("model_key", POD_MODELS)
def test_pod_examples_select_their_model_by_the_gfd_product_label(model_key: str) -> None:
    for pod in pods(model_key):
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        (term,) = terms["nodeSelectorTerms"]
        (expr,) = term["matchExpressions"]
        assert (expr["key"], expr["operator"]) == ("nvidia.com/gpu.product", "In")
        assert tuple(expr["values"]) == get_model(model_key).gfd_product_labels


@pytest.mark.parametrize("filename", sorted(CLEARML_FILES))
def test_clearml_queues_ask_for_the_profile_of_their_slice_count(filename: str) -> None:
    glue = load_all(EXAMPLES / filename)[0]["agentk8sglue"]
    queues = glue["queues"]
    assert tuple(queues) == CLEARML_QUEUES
    for queue, body in queues.items():
        limits = body["templateOverrides"]["resources"]["limits"]
        (resource,) = [r for r in limits if is_mig_resource(r)]
        assert limits[resource] == "1"
        profile = profile_from_resource(resource)
        for model_key in CLEARML_FILES[filename]:
            model = get_model(model_key)
            assert profile == queue_profile(model, queue), f"{filename}: {queue} on {model_key}"
            assert model.profile(profile).compute_slices == QUEUE_SLICES[queue]


def test_gpu_operator_values_hand_mig_to_cdmo() -> None:
    (values,) = load_all(EXAMPLES / "gpu-operator-values.yaml")
    assert values["migManager"]["enabled"] is False
    assert values["mig"]["strategy"] == "mixed"
    plugin_env = {e["name"]: e["value"] for e in values["devicePlugin"]["env"]}
    # Helm replaces the list whole: the chart's other defaults must still be there.
    assert {"PASS_DEVICE_SPECS", "FAIL_ON_INIT_ERROR", "DEVICE_ID_STRATEGY", "NVIDIA_VISIBLE_DEVICES"} <= set(
        plugin_env
    )
    # The agent matches pod-resources device ids to MIG UUIDs.
    assert plugin_env["DEVICE_ID_STRATEGY"] == "uuid"
    toolkit_env = {e["name"]: e["value"] for e in values["toolkit"]["env"]}
    if plugin_env["DEVICE_LIST_STRATEGY"] == "volume-mounts":
        assert toolkit_env["ACCEPT_NVIDIA_VISIBLE_DEVICES_AS_VOLUME_MOUNTS"] == "true"


def test_the_agents_builtin_plugin_answers_as_the_gpu_operator_values_configure() -> None:
    # The same GPU operator values serve both modes: the agent's own plugin (builtin) answers
    # Allocate in the device list and ID strategy that NVIDIA's plugin is given there, which is
    # what the toolkit is set up to read.
    from cdmo.config import AgentConfig
    from cdmo.node_agent.deviceplugin.devices import PluginDevice, build_container_response

    (values,) = load_all(EXAMPLES / "gpu-operator-values.yaml")
    plugin_env = {e["name"]: e["value"] for e in values["devicePlugin"]["env"]}
    (chart,) = load_all(ROOT / "helm" / "cdmo" / "values.yaml")
    conf = AgentConfig()
    assert (conf.device_list_strategy, conf.device_id_strategy) == (
        plugin_env["DEVICE_LIST_STRATEGY"],
        plugin_env["DEVICE_ID_STRATEGY"],
    )
    assert (chart["agent"]["deviceListStrategy"], chart["agent"]["deviceIdStrategy"]) == (
        plugin_env["DEVICE_LIST_STRATEGY"],
        plugin_env["DEVICE_ID_STRATEGY"],
    )
    dev = PluginDevice("nvidia.com/mig-1g.10gb", "MIG-0123", 0, "0:0", True, "1g.10gb", 0)
    answer = build_container_response([dev], (conf.device_list_strategy,), conf.device_id_strategy)
    toolkit_env = {e["name"]: e["value"] for e in values["toolkit"]["env"]}
    assert toolkit_env["ACCEPT_NVIDIA_VISIBLE_DEVICES_AS_VOLUME_MOUNTS"] == "true"
    assert answer.mounts == (("/var/run/nvidia-container-devices/MIG-0123", "/dev/null", False),)
