"""values.schema.json against what the templates render and what cdmo.config accepts.

Helm removes a key set to null before it checks the schema, so the schema never saw it: the
templates rendered "<nil>" (or 0, or "") into the pods' environment and the pods crash-looped.
Every value that reaches cdmo as an environment variable or a flag is found here through its
schema description, which names the variable (CDMO_...) or the flag (--...); nulled, each must
make helm fail naming it. A number without a maximum rendered 10^30 as -9223372036854775808 and
1e+300 as replicas: 1e+300; every number now has one, and the one behind a CDMO_ variable is
cdmo.config's own (compared here, so that they cannot drift apart).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdmo.config import AgentConfig, OperatorConfig, WebhookConfig, maximum, minimum
from tests.chart.conftest import CHART, Helm, HelmError, container, env_of, one

SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
#: Where each component's values live: its workload (kind, name suffix) and its config class.
COMPONENTS: dict[str, tuple[str, str, type]] = {
    "operator": ("Deployment", "-operator", OperatorConfig),
    "agent": ("DaemonSet", "-agent", AgentConfig),
    "webhook": ("Deployment", "-webhook", WebhookConfig),
}
#: One render that sets every variable the chart can set: the webhook on, the simulated backend.
EVERYTHING = (
    "webhook.enabled=true",
    "webhook.tls.certManager=false",
    "agent.backend=simulated",
    "agent.sim.gpus=h100-80gb",
    "agent.sim.state=/tmp/gpus.json",
)
#: Variables whose value the chart fixes (no value behind them), and why.
FIXED_ENV = {
    "NVIDIA_VISIBLE_DEVICES": "the NVIDIA container runtime mounts NVML only when it is set",
    "NVIDIA_DRIVER_CAPABILITIES": "utility carries NVML",
    "NVIDIA_MIG_CONFIG_DEVICES": "the toolkit grants MIG configuration only when asked",
    "NVIDIA_MIG_MONITOR_DEVICES": "the toolkit grants listing MIG devices only when asked",
    "CDMO_WEBHOOK_CERT_FILE": "the Secret's mount path, /tls",
    "CDMO_WEBHOOK_KEY_FILE": "the Secret's mount path, /tls",
}
_NAMED = re.compile(r"\bCDMO_[A-Z_]+\b|--[a-z][a-z-]*")


def schema_leaves(
    node: Mapping[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, schema) of every value below ``node`` that has no properties of its own."""
    props = node.get("properties")
    if not props:
        yield ".".join(path), dict(node)
        return
    for key, child in props.items():
        yield from schema_leaves(child, (*path, key))


def names(leaf: Mapping[str, Any]) -> set[str]:
    """The variables and flags a value's description names."""
    return set(_NAMED.findall(leaf.get("description", "")))


def is_number(node: Mapping[str, Any]) -> bool:
    kinds = node.get("type", ())
    return bool({"integer", "number"} & ({kinds} if isinstance(kinds, str) else set(kinds)))


#: path -> variables and flags: every value the chart hands to cdmo.
ENV_VALUES = {path: names(leaf) for path, leaf in schema_leaves(SCHEMA) if names(leaf)}
#: The numbers among them that belong to one component: compared with cdmo.config.
CONFIG_NUMBERS = [
    (path, var)
    for path, leaf in schema_leaves(SCHEMA)
    if is_number(leaf) and path.split(".")[0] in COMPONENTS
    for var in sorted(names(leaf))
    if var.startswith("CDMO_")
]


def test_the_values_behind_variables_are_found() -> None:
    # A typo in the pattern above would make the null test below check nothing.
    assert len(ENV_VALUES) >= 60 and len(CONFIG_NUMBERS) >= 30
    assert {"CDMO_BATCH_IDLE_SECONDS"} == ENV_VALUES["operator.batchIdleSeconds"]


@pytest.mark.parametrize("path", sorted(ENV_VALUES))
def test_a_value_cdmo_reads_set_to_null_is_refused_naming_it(helm: Helm, path: str) -> None:
    # Before: exit 0 with CDMO_BATCH_IDLE_SECONDS: "<nil>" (the operator then stopped with
    # "is not a valid float"), listChunkSize 0, an empty backend, or a schema message that
    # did not say what to give.
    with pytest.raises(HelmError, match=re.escape(f"{path} is null or missing: give ")):
        helm.render(*EVERYTHING, f"{path}=null")


def test_every_variable_and_flag_comes_from_a_value_the_schema_names(helm: Helm) -> None:
    """So that a new variable in a template is found by the null test above (its value's
    description must name it), or is listed in FIXED_ENV."""
    objects = helm.render(*EVERYTHING)
    unnamed = []
    for component, (kind, suffix, _) in COMPONENTS.items():
        c = container(one(objects, kind, suffix))
        given = {var for var, value in env_of(c).items() if isinstance(value, str)} - set(FIXED_ENV)
        given |= {arg.split("=", 1)[0] for arg in c.get("args", []) if arg.startswith("--")}
        # A value of this component, or one the components share (partitioning, admissionPolicy).
        named = set().union(
            *(n for path, n in ENV_VALUES.items() if path.split(".")[0] == component),
            *(n for path, n in ENV_VALUES.items() if path.split(".")[0] not in COMPONENTS),
        )
        unnamed += [f"{component}: {var}" for var in sorted(given - named)]
    assert unnamed == [], f"no value's description in values.schema.json names these: {unnamed}"


def _numbers(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every number anywhere in the schema (definitions, items, additionalProperties too)."""
    if isinstance(node, dict):
        if is_number(node):
            yield where, node
        for key, child in node.items():
            yield from _numbers(child, f"{where}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _numbers(child, f"{where}/{i}")


def test_every_number_in_the_schema_has_a_maximum() -> None:
    missing = [where for where, node in _numbers(SCHEMA) if "maximum" not in node]
    assert missing == [], f"numbers without a maximum in values.schema.json: {missing}"


@pytest.mark.parametrize(("path", "var"), CONFIG_NUMBERS, ids=[p for p, _ in CONFIG_NUMBERS])
def test_the_schema_bounds_a_number_as_cdmo_config_does(path: str, var: str) -> None:
    leaf = dict(schema_leaves(SCHEMA))[path]
    config = COMPONENTS[path.split(".")[0]][2]
    field = {v: f for f, v in config.ENV}[var]  # type: ignore[attr-defined]
    assert leaf["maximum"] == maximum(config, field), f"{path} and cdmo.config's {var}"
    # The schema may be stricter below (a port of 0 turns metrics off in cdmo, the chart always
    # serves them), never looser: what cdmo refuses must not install.
    low, refused = minimum(config, field)
    if "exclusiveMinimum" in leaf:
        assert leaf["exclusiveMinimum"] >= low, path
    else:
        assert leaf["minimum"] > low or (leaf["minimum"] == low and not refused), path


def _nested(path: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    at = out
    *parents, last = path.split(".")
    for key in parents:
        at = at.setdefault(key, {})
    at[last] = value
    return out


def _merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in b.items():
        a[key] = _merge(a.get(key, {}), value) if isinstance(value, Mapping) else value
    return a


#: Every number a value may hold, with its maximum (ports apart: two at 65535 would collide;
#: one without a maximum fails test_every_number_in_the_schema_has_a_maximum).
BOUNDED = sorted(
    (path, leaf["maximum"])
    for path, leaf in schema_leaves(SCHEMA)
    if is_number(leaf) and "maximum" in leaf and not path.endswith(("Port", ".port"))
)


def _values_file(tmp_path: Path, values: Mapping[str, Any]) -> Path:
    out = tmp_path / "values.yaml"
    out.write_text(yaml.safe_dump(dict(values)))
    return out


def test_every_number_at_its_maximum_renders_as_that_number(helm: Helm, tmp_path: Path) -> None:
    """From a values file, where numbers are floats: 2147483647 replicas rendered as
    2.147483647e+09 and a user ID of 1000680000 as 1.00068e+09, which the API server refuses."""
    values: dict[str, Any] = {}
    for path, top in BOUNDED:
        _merge(values, _nested(path, top))
    objects = helm.render(*EVERYTHING, values_files=(_values_file(tmp_path, values),))
    for path, var in CONFIG_NUMBERS:
        if path not in dict(BOUNDED):
            continue
        kind, suffix, config = COMPONENTS[path.split(".")[0]]
        env = {k: v for k, v in env_of(container(one(objects, kind, suffix))).items() if isinstance(v, str)}
        field = {v: f for f, v in config.ENV}[var]  # type: ignore[attr-defined]
        assert getattr(config.from_env(env), field) == dict(BOUNDED)[path], path  # type: ignore[attr-defined]
    # Integers, not floats that equal them: Kubernetes' int32 fields refuse 2.147483647e+09.
    int32_max = [2147483647, int]
    for suffix in ("-operator", "-webhook"):
        workload = one(objects, "Deployment", suffix)
        security = workload["spec"]["template"]["spec"]["securityContext"]
        for value in (workload["spec"]["replicas"], security["runAsUser"], security["runAsGroup"]):
            assert [value, type(value)] == int32_max, suffix
    probe = container(one(objects, "Deployment", "-operator"))["livenessProbe"]
    for key in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold"):
        assert [probe[key], type(probe[key])] == int32_max, key
    budget = one(objects, "PodDisruptionBudget", "-operator")["spec"]["maxUnavailable"]
    assert [budget, type(budget)] == int32_max


def test_every_number_above_its_maximum_is_refused_naming_it(helm: Helm, tmp_path: Path) -> None:
    # Before: 10^30 rendered as "-9223372036854775808" (which the operator refused), 1e+300 as
    # replicas: 1e+300, and agent.resyncSeconds 1e10 killed the agent's loop. Helm lists every
    # value the schema refuses, so one render checks them all.
    values: dict[str, Any] = {}
    for path, top in BOUNDED:
        _merge(values, _nested(path, top * 10 if top >= 1e9 else top + 1))
    with pytest.raises(HelmError) as refused:
        helm.render(*EVERYTHING, values_files=(_values_file(tmp_path, values),))
    unnamed = [p for p, _ in BOUNDED if f"at '/{p.replace('.', '/')}': maximum" not in str(refused.value)]
    assert unnamed == [], f"accepted above their maximum: {unnamed}"


def test_the_audits_large_numbers_are_refused(helm: Helm, tmp_path: Path) -> None:
    big = (
        "operator:\n  replicas: 1.0e+300\n  batchIdleSeconds: 1.0e+300\n"
        "  prewarm:\n    maxPerProfile: 100000000000000000000000000000\n"
        "  defrag:\n    opsPerHour: 1000000000000000000000000000000\n"
        "agent:\n  resyncSeconds: 1.0e+10\n"
    )
    values_file = tmp_path / "hv1.yaml"
    values_file.write_text(big)
    with pytest.raises(HelmError) as refused:
        helm.render(values_files=(values_file,))
    for where in (
        "replicas",
        "batchIdleSeconds",
        "prewarm/maxPerProfile",
        "defrag/opsPerHour",
        "resyncSeconds",
    ):
        assert f"{where}': maximum" in str(refused.value)


def test_a_percentage_above_100_is_refused(helm: Helm) -> None:
    with pytest.raises(HelmError, match="maxUnavailable"):
        helm.render("operator.podDisruptionBudget.maxUnavailable=150%")
