"""The user's procedures (docs/install.md, observing.md, disabling.md, troubleshooting.md) stay
true: their YAML parses and is valid, the values they set exist in the chart, the resources
and labels they name are cdmo's, and their links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cdmo.api import PARTITIONING_LABEL_KEY, PARTITIONING_LABEL_VALUE
from cdmo.mig.catalog import models_with_profile
from cdmo.mig.resources import profile_from_resource
from tests.chart.conftest import CHART, KUBE_VERSION, ROOT

DOCS = [
    ROOT / "docs" / f"{name}.md"
    for name in ("install", "observing", "disabling", "troubleshooting", "upgrading", "compatibility")
]
IDS = [p.name for p in DOCS]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


def commands(path: Path) -> str:
    """The shell in the doc's bash blocks, continuation lines joined."""
    return "\n".join(blocks(path, "bash")).replace("\\\n", " ")


def slug(heading: str) -> str:
    # GitHub's anchors: lower case, punctuation dropped (not - or _), spaces as dashes.
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def value_paths(node: Any, prefix: str = "") -> set[str]:
    paths = {prefix} if prefix else set()
    if isinstance(node, dict):
        for key, value in node.items():
            paths |= value_paths(value, f"{prefix}.{key}" if prefix else key)
    return paths


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_yaml_blocks_parse_and_kubernetes_objects_are_valid(path: Path) -> None:
    for body in blocks(path, "yaml"):
        for doc in yaml.safe_load_all(body):
            assert doc is not None
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_the_full_gpu_values_only_drop_what_gives_mig_to_cdmo() -> None:
    (body,) = [b for b in blocks(ROOT / "docs" / "disabling.md", "yaml") if "devicePlugin" in b]
    restore = yaml.safe_load(body)
    cdmo_values = yaml.safe_load((ROOT / "examples" / "gpu-operator-values.yaml").read_text())
    assert "migManager" not in restore and "mig" not in restore
    assert set(cdmo_values) - set(restore) == {"migManager", "mig"}
    assert restore["devicePlugin"] == cdmo_values["devicePlugin"]
    assert restore["toolkit"] == cdmo_values["toolkit"]


def test_the_teardown_pod_matches_the_agent() -> None:
    (body,) = [b for b in blocks(ROOT / "docs" / "disabling.md", "yaml") if "kind: Pod" in b]
    pod = yaml.safe_load(body)
    (c,) = pod["spec"]["containers"]
    assert c["args"][:2] == ["teardown", "--disable-mig"]
    from cdmo.cli import build_parser

    parsed = build_parser().parse_args(c["args"])  # exits on a flag `cdmo teardown` does not have
    assert (parsed.verb, parsed.disable_mig) == ("teardown", True)
    assert c["securityContext"]["privileged"] is True
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility" and env["NODE_NAME"] == pod["spec"]["nodeName"]
    # as the agent: the toolkit's MIG capabilities, without which NVML may not change MIG
    assert env["NVIDIA_MIG_CONFIG_DEVICES"] == env["NVIDIA_MIG_MONITOR_DEVICES"] == "all"
    (volume,) = pod["spec"]["volumes"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert volume["hostPath"]["path"] == values["agent"]["podResourcesDir"]


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_set_flags_name_values_that_exist(path: Path) -> None:
    known = value_paths(yaml.safe_load((CHART / "values.yaml").read_text()))
    text = path.read_text()
    named = set(re.findall(r"--set ([A-Za-z0-9_.]+)=", text))
    # Values named in prose (`agent.refreshStrategy`) must exist too.
    named |= {
        m
        for m in re.findall(
            r"`((?:operator|agent|image|partitioning|metrics|admissionPolicy)\.[A-Za-z.]+)", text
        )
    }
    named = {n.rstrip(".") for n in named}
    if path.name == "install.md":
        assert len(named) >= 10, "install.md should name the values a user may want"
    assert sorted(n for n in named if n not in known) == []


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_mig_resources_in_docs_are_known_profiles(path: Path) -> None:
    for resource in set(
        re.findall(r"nvidia\.com/mig-[0-9]+g\.[0-9]+gb(?:\.me(?:\.all)?|\.gfx|-me)?", path.read_text())
    ):
        assert models_with_profile(profile_from_resource(resource)), resource


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_node_labels_are_cdmos(path: Path) -> None:
    text = commands(path)
    # A doc that installs cdmo with a label of its own (--set partitioning.labelKey=...) may use it.
    own = dict.fromkeys(re.findall(r"--set partitioning\.labelKey=(\S+)", text), "")
    for key, rest in re.findall(r"kubectl label nodes \S+ ([\w./-]+?)(=\S+|-)(?:\s|$)", text):
        if key == NVIDIA_PLUGIN_LABEL_KEY:  # the GPU operator's switch for its device plugin
            assert rest in ("=false", "-")
            continue
        assert key == PARTITIONING_LABEL_KEY or key in own
        if key == PARTITIONING_LABEL_KEY:
            assert rest in (f"={PARTITIONING_LABEL_VALUE}", "-")


NVIDIA_PLUGIN_LABEL_KEY = "nvidia.com/gpu.deploy.device-plugin"


def test_the_procedures_contain_the_steps_of_the_issue() -> None:
    install = commands(ROOT / "docs" / "install.md")
    assert f"kubectl label nodes gpu-node-1 {NVIDIA_PLUGIN_LABEL_KEY}=false" in install
    assert "nvidia-smi -i 0 -mig 1" in install
    assert f"kubectl label nodes gpu-node-1 {PARTITIONING_LABEL_KEY}={PARTITIONING_LABEL_VALUE}" in install
    assert "helm upgrade -i cdmo helm/cdmo" in install
    assert "-f examples/gpu-operator-values.yaml" in install
    disabling = commands(ROOT / "docs" / "disabling.md")
    for step in (
        "nvidia-smi mig -dci",
        "nvidia-smi mig -dgi",
        "nvidia-smi -mig 0",
        f"{PARTITIONING_LABEL_KEY}-",
    ):
        assert step in disabling, step
    observing = commands(ROOT / "docs" / "observing.md")
    assert (
        "kubectl get miglayouts" in observing
        and "kubectl get events" in observing
        and "/metrics" in observing
    )
    trouble = (ROOT / "docs" / "troubleshooting.md").read_text()
    for heading in ("re-advertise", "IN_USE", "pending a reset on Ampere", "Stale"):
        assert re.search(rf"^## .*{re.escape(heading)}", trouble, re.M), heading


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    text = path.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"^[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.exists(), f"{path.name}: {link} leads nowhere"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
            assert anchor in {slug(h) for h in headings}, f"{path.name}: no heading #{anchor} in {file.name}"


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_paths_in_commands_exist(path: Path) -> None:
    for ref in set(re.findall(r"(?<![\w/])((?:examples|helm|docs|scripts)/[\w./-]+)", commands(path))):
        assert (ROOT / ref).exists(), f"{path.name}: {ref} does not exist"


def test_the_compatibility_matrix_names_each_part_and_kopf_s_real_bound() -> None:
    import tomllib

    text = (ROOT / "docs" / "compatibility.md").read_text()
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    for part in ("Kubernetes", "NVIDIA GPU operator", "NVIDIA driver", "kopf"):
        assert part in rows, part
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (kopf,) = [d for d in deps if d.startswith("kopf")]
    assert f"| kopf | {kopf.removeprefix('kopf>=')} or later |" in text


def test_the_clearml_cdmo_section_says_one_per_node() -> None:
    text = (ROOT / "docs" / "compatibility.md").read_text()
    section = text[text.index("## cdmo and ClearML's CDMO") :]
    assert f"{PARTITIONING_LABEL_KEY}={PARTITIONING_LABEL_VALUE}" in section
    assert "nvidia.com/mig-<profile>" in section
    assert "Run one of them per node" in section
