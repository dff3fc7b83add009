"""``cdmo translate``: each source system's example pod on H100, A100 40GB and H200, and bad input."""

from __future__ import annotations

import copy
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdmo.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pods" / "fractional"

#: example -> model -> MIG resource (the rule of issue 12)
CASES = {
    "cfgi-pod.yaml": {"h100-80gb": "2g.20gb", "a100-40gb": "2g.10gb", "h200-141gb": "2g.35gb"},  # 0.25
    "cfgi-legacy-pod.yaml": {
        "h100-80gb": "2g.20gb",
        "a100-40gb": "2g.10gb",
        "h200-141gb": "2g.35gb",
    },  # 2 of 8
    "kai-pod.yaml": {"h100-80gb": "4g.40gb", "a100-40gb": "4g.20gb", "h200-141gb": "4g.71gb"},  # 0.5
    "kai-memory-pod.yaml": {
        "h100-80gb": "1g.20gb",
        "a100-40gb": "3g.20gb",
        "h200-141gb": "1g.18gb",
    },  # 12000 MiB
    "metagpu-pod.yaml": {"h100-80gb": "2g.20gb", "a100-40gb": "2g.10gb", "h200-141gb": "2g.35gb"},  # 25 units
}
#: the keys each example asks with, recorded on the translated pod
ASKED = {
    "cfgi-pod.yaml": {"clearml-injector/fraction": "0.250"},
    "cfgi-legacy-pod.yaml": {"clearml-injector/fraction": "0.250", "nvidia.com/gpu": "2"},
    "kai-pod.yaml": {"gpu-fraction": "0.5", "gpu-fraction-container-name": "trainer"},
    "kai-memory-pod.yaml": {"gpu-memory": "12000"},
    "metagpu-pod.yaml": {"cnvrg.io/metagpu": "25"},
}


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    rc = main(["translate", *args, "-o", "json"])
    out, err = capsys.readouterr()
    return rc, json.loads(out) if out.strip() else None, err


@pytest.mark.parametrize(
    ("example", "model", "profile"),
    [(e, m, p) for e, row in CASES.items() for m, p in row.items()],
    ids=lambda v: str(v),
)
def test_translate_gives_the_rules_profile_and_records_the_ask(
    capsys: pytest.CaptureFixture[str], example: str, model: str, profile: str
) -> None:
    rc, pod, err = run_json(capsys, str(EXAMPLES / example), "--model", model)
    assert rc == 0, err
    resource = f"nvidia.com/mig-{profile}"
    gpu_containers = [c for c in pod["spec"]["containers"] if c.get("resources", {}).get("limits")]
    assert len(gpu_containers) == 1
    assert gpu_containers[0]["resources"]["limits"] == {resource: "1"}
    record = json.loads(pod["metadata"]["annotations"]["cdmo.clear.ml/fractional-ask"])
    assert record[0]["asked"] == ASKED[example] and record[0]["model"] == model
    assert f"-> 1 x {profile} on {model}" in err


def test_yaml_output_starts_with_the_reason_and_is_the_pod(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["translate", str(EXAMPLES / "kai-pod.yaml"), "--model", "h100-80gb"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# mutate: kai gpu-fraction=0.5")
    pod = yaml.safe_load(out)
    assert pod["spec"]["containers"][1]["resources"]["limits"] == {"nvidia.com/mig-4g.40gb": "1"}


def test_json_output_keeps_a_manifests_keys_as_they_are(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The CLI's camelCase rule is for cdmo's own documents; a label key is data, never renamed."""
    pod = yaml.safe_load((EXAMPLES / "kai-pod.yaml").read_text())
    pod["metadata"].setdefault("labels", {})["team_name"] = "vision"
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    rc, out, _ = run_json(capsys, str(path), "--model", "h100-80gb")
    assert rc == 0
    assert out["metadata"]["labels"] == {"team_name": "vision"}


def test_table_output_shows_each_objects_decision(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["translate", str(EXAMPLES / "kai-pod.yaml"), "--model", "a100-40gb", "-o", "table"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "Pod/kai-train" in line)
    assert "mutate" in row and "a100-40gb" in row and "1 x 4g.20gb" in row


def test_a_job_template_is_translated(capsys: pytest.CaptureFixture[str]) -> None:
    rc, job, _ = run_json(capsys, str(EXAMPLES / "cfgi-job.yaml"), "--model", "h100-80gb")
    assert rc == 0
    template = job["spec"]["template"]
    assert template["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-4g.40gb": "1"}
    assert "name" not in template["metadata"] and "namespace" not in template["metadata"]


def test_the_pods_own_selector_wins_over_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pod = yaml.safe_load((EXAMPLES / "metagpu-pod.yaml").read_text())
    pod["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-H200"}
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    rc, out, _ = run_json(capsys, str(path), "--model", "a100-40gb")
    assert rc == 0 and out["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-2g.35gb": "1"}


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "in.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "args", "rc", "words"),
    [
        (None, ["--model", "h100-80gb"], 2, "no such file"),
        ("kind: Pod\nmetadata: {name: x\n", ["--model", "h100-80gb"], 2, "not YAML or JSON"),
        ("", ["--model", "h100-80gb"], 2, "is empty"),
        ("- a\n- b\n", ["--model", "h100-80gb"], 2, "not a Kubernetes object"),
        (
            "kind: ConfigMap\nmetadata: {name: c}\n",
            ["--model", "h100-80gb"],
            2,
            "neither a Pod nor a workload",
        ),
        (
            "kind: Pod\nmetadata: {name: x, annotations: {gpu-fraction: '0.5'}}\nspec: {containers: [{name: m}]}\n",
            [],
            2,
            "give --model",
        ),
        (
            "kind: Pod\nmetadata: {name: x, annotations: {gpu-fraction: '0.5'}}\nspec: {containers: [{name: m}]}\n",
            ["--model", "v100"],
            2,
            "unknown GPU model",
        ),
        (
            "kind: Pod\nmetadata: {name: x, annotations: {gpu-fraction: half}}\nspec: {containers: [{name: m}]}\n",
            ["--model", "h100-80gb"],
            2,
            "is not a number",
        ),
        (
            "kind: Pod\nmetadata: {name: x, annotations: {gpu-memory: '100000'}}\nspec: {containers: [{name: m}]}\n",
            ["--model", "h100-80gb"],
            1,
            "would refuse it",
        ),
        (
            "kind: Pod\nmetadata: [1]\nspec: {containers: [{name: m}]}\n",
            ["--model", "h100-80gb"],
            2,
            "metadata must be a mapping",
        ),
        (
            "kind: Pod\nmetadata: {name: x, labels: {clearml-injector/fraction: '0.5'}}\nspec: {containers: [c]}\n",
            ["--model", "h100-80gb"],
            2,
            "spec.containers[0] must be a mapping",
        ),
        (
            "kind: Pod\nmetadata: {name: x}\nspec: {containers: oops}\n",
            ["--model", "h100-80gb"],
            2,
            "spec.containers must be a list",
        ),
        (
            "kind: Pod\nmetadata: {name: x, annotations: {gpu-fraction: '0.5'}}\n"
            "spec: {containers: [{name: m, resources: {limits: [1]}}]}\n",
            ["--model", "h100-80gb"],
            2,
            "spec.containers[0].resources.limits must be a mapping",
        ),
        # Shapes the pod's model selection reads, and the way to a workload's pod template.
        (
            "kind: Pod\nmetadata: {name: p, labels: {clearml-injector/fraction: '0.5'}}\n"
            "spec: {containers: [{name: c}], affinity: [1]}\n",
            ["--model", "h100-80gb"],
            2,
            "the pod: spec.affinity must be a mapping, not list",
        ),
        (
            "kind: Pod\nmetadata: {name: p, labels: {clearml-injector/fraction: '0.5'}}\n"
            "spec: {containers: [{name: c}], affinity: {nodeAffinity:"
            " {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [1]}}}}\n",
            ["--model", "h100-80gb"],
            2,
            "requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0] must be a mapping, not int",
        ),
        (
            "kind: Pod\nmetadata: {name: p, labels: {clearml-injector/fraction: '0.5'}}\n"
            "spec: {containers: [{name: c}], affinity: {nodeAffinity:"
            " {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions:"
            " [{key: nvidia.com/gpu.product, operator: In, values: 5}]}]}}}}\n",
            ["--model", "h100-80gb"],
            2,
            "nodeSelectorTerms[0].matchExpressions[0].values must be a list, not int",
        ),
        (
            "kind: Pod\nmetadata: {name: p, labels: {clearml-injector/fraction: '0.5'}}\n"
            "spec: {containers: [{name: c}], nodeSelector: 7}\n",
            ["--model", "h100-80gb"],
            2,
            "the pod: spec.nodeSelector must be a mapping, not int",
        ),
        (
            "kind: CronJob\nmetadata: {name: j}\nspec: {jobTemplate: [1]}\n",
            ["--model", "h100-80gb"],
            2,
            "the CronJob: spec.jobTemplate must be a mapping, not list",
        ),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec: [1]\n",
            ["--model", "h100-80gb"],
            2,
            "the Deployment: spec must be a mapping, not list",
        ),
        (
            "kind: Deployment\nmetadata: [1]\nspec: {template: {spec: {containers: [{name: c}]}}}\n",
            ["--model", "h100-80gb"],
            2,
            "the Deployment: metadata must be a mapping, not list",
        ),
        (
            "kind: Pod\nmetadata: {name: x, annotations: {gpu-fraction: '0.5'}}\nspec: {containers: [{name: m}]}\n",
            ["--model", ""],
            2,
            "--model is empty",
        ),
        (
            "kind: Pod\nmetadata: {name: x, annotations: {gpu-memory: 20Gi}}\nspec: {containers: [{name: m}]}\n",
            ["--model", "h100-80gb"],
            2,
            "'20Gi' is not a number; write whole MiB, e.g. 20480",
        ),
        (
            "kind: Pod\nmetadata: {name: x, labels: {clearml-injector/fraction: '1_0'}}\n"
            "spec: {containers: [{name: m}]}\n",
            ["--model", "h100-80gb"],
            2,
            "'1_0' is not a number",
        ),
        (
            "kind: Pod\nmetadata: {name: x, annotations: {gpu-fraction: '64', gpu-fraction-num-devices: '64'}}\n"
            "spec: {containers: [{name: m}]}\n",
            ["--model", "h100-80gb"],
            1,
            "is 4096 GPUs, more than 64 for one pod",
        ),
        (
            "kind: Pod\nmetadata: {name: x, annotations: {gpu-fraction: '0.5'}}\n"
            "spec: {containers: [{name: m, resources: {limits: {nvidia.com/gpu: 1}}}]}\n",
            ["--model", "h100-80gb"],
            1,
            "would refuse it: pod default/x: container m asks for a whole GPU (nvidia.com/gpu=1) and a share"
            " of one (kai gpu-fraction=0.5)",
        ),
        (
            "kind: Job\nmetadata: {name: j}\nspec: {template: {spec: {"
            "initContainers: [{name: warm, resources: {limits: {nvidia.com/gpu: 1}}}],"
            " containers: [{name: nb, resources: {limits: {cnvrg.io/metagpu: 25}}}]}}}\n",
            ["--model", "h100-80gb"],
            1,
            "remove nvidia.com/gpu from init container warm to run on a MIG slice,"
            " or remove cnvrg.io/metagpu from container nb to keep the whole GPU",
        ),
    ],
    ids=[
        "missing",
        "bad-yaml",
        "empty",
        "list",
        "configmap",
        "no-model",
        "unknown-model",
        "bad-ask",
        "refused",
        "metadata-not-a-mapping",
        "container-not-a-mapping",
        "containers-not-a-list",
        "limits-not-a-mapping",
        "affinity-not-a-mapping",
        "selector-term-not-a-mapping",
        "expression-values-not-a-list",
        "node-selector-not-a-mapping",
        "job-template-not-a-mapping",
        "workload-spec-not-a-mapping",
        "workload-metadata-not-a-mapping",
        "empty-model",
        "memory-with-a-unit",
        "underscored-fraction",
        "num-devices-times-ask-too-large",
        "whole-gpu-next-to-a-share",
        "whole-gpu-in-an-init-container",
    ],
)
def test_bad_input_gives_one_line_and_an_exit_code(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str | None, args: list[str], rc: int, words: str
) -> None:
    path = str(tmp_path / "missing.yaml") if text is None else _write(tmp_path, text)
    assert main(["translate", path, *args]) == rc
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in captured.err


def _laughs(levels: int, word: str = "lol") -> str:
    """A pod whose spec repeats ``word`` 10^levels times through nested YAML aliases (billion laughs)."""
    lines = [
        "kind: Pod",
        "metadata: {name: p, annotations: {gpu-fraction: '0.5'}}",
        "spec:",
        "  containers: [{name: c}]",
        f"  a0: &a0 {word}",
    ]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


ALIAS_BOMBS = {
    # Nine levels of ten aliases: 10^9 values from 300 bytes (-o json took 30 s and 3.6 GB).
    "values": ((9, "x"), "more than 1048576 values once its YAML aliases are expanded"),
    # A 10 KB string aliased 10^3 times: 10 MB of text from a 10 KB file. Each alias counted as one
    # value, it passed the bound (the audit's 100 KB string aliased 9^5 times: 18 s, 4 GB, then
    # MemoryError); counted by its characters, it is refused.
    "text": ((3, "x" * 10_000), "more than 4 MiB of text once its YAML aliases are expanded"),
}


@pytest.mark.parametrize("output", ["yaml", "json", "table"])
@pytest.mark.parametrize("bomb", sorted(ALIAS_BOMBS))
def test_an_alias_bomb_is_refused_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, output: str, bomb: str
) -> None:
    """Refused before anything is expanded: what Python allocates meanwhile stays small (counted
    by tracemalloc, which does not depend on the machine's load as a clock does)."""
    (levels, word), message = ALIAS_BOMBS[bomb]
    path = _write(tmp_path, _laughs(levels, word))
    tracemalloc.start()
    try:
        assert main(["translate", path, "--model", "h100-80gb", "-o", output]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert message in captured.err


def test_a_pod_whose_containers_share_values_through_anchors_translates_each(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """YAML gives both containers one resources object: patching the first changed the second
    too, and the second's patch then failed ("JSON patch remove of absent ...")."""
    text = (
        "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
        "  - {name: a, image: &img pytorch:24.05, resources: &r {limits: {cnvrg.io/metagpu: 25}}}\n"
        "  - {name: b, image: *img, resources: *r}\n"
    )
    rc, pod, err = run_json(capsys, _write(tmp_path, text), "--model", "h100-80gb")
    assert rc == 0, err
    assert [c["resources"] for c in pod["spec"]["containers"]] == [
        {"limits": {"nvidia.com/mig-2g.20gb": "1"}}
    ] * 2
    assert [c["image"] for c in pod["spec"]["containers"]] == ["pytorch:24.05"] * 2


def test_aliases_within_the_bound_are_read_as_yaml_means_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, pod, _ = run_json(capsys, _write(tmp_path, _laughs(2)), "--model", "h100-80gb")
    assert rc == 0 and pod["spec"]["a2"] == [["lol"] * 10] * 10


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "kind: Pod\nmetadata: &m {name: p, annotations: {gpu-fraction: '0.5'}, labels: {x: *m}}\n"
            "spec: {containers: [{name: c}]}\n",
            "alias *m stands inside its own anchor",
        ),
        (
            "kind: Pod\nmetadata: {name: p, annotations: {gpu-fraction: '0.5'}}\n"
            "spec: {containers: [{name: c}], x: " + "[" * 150 + "]" * 150 + "}\n",
            "nested more than 100 levels deep",
        ),
        (
            "kind: Pod\nmetadata: {name: p, labels: {x: !!binary aGVsbG8=}, annotations: {gpu-fraction: '0.5'}}\n"
            "spec: {containers: [{name: c}]}\n",
            "a value of type bytes in the manifest has no JSON form",
        ),
    ],
    ids=["cycle", "deep", "binary"],
)
def test_documents_the_output_cannot_write_are_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, words: str
) -> None:
    rc, _, err = run_json(capsys, _write(tmp_path, text), "--model", "h100-80gb")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and words in lines[0]


def test_an_unquoted_date_is_written_as_its_text(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """YAML reads 2024-01-01 as a date, which JSON has no type for; Kubernetes reads it as text."""
    text = (
        "kind: Pod\nmetadata: {name: p, labels: {since: 2024-01-01}, annotations: {gpu-fraction: '0.5'}}\n"
        "spec: {containers: [{name: c}]}\n"
    )
    rc, pod, _ = run_json(capsys, _write(tmp_path, text), "--model", "h100-80gb")
    assert rc == 0 and pod["metadata"]["labels"]["since"] == "2024-01-01"


def test_a_key_given_twice_is_refused_as_by_every_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The safe loader kept the second metadata: the pod's fraction annotation was lost silently."""
    text = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {gpu-fraction: '0.5'}}\n"
        "metadata: {name: q}\nspec: {containers: [{name: c}]}\n"
    )
    assert main(["translate", _write(tmp_path, text), "--model", "h100-80gb"]) == 2
    err = capsys.readouterr().err
    assert "found duplicate key 'metadata'" in err and len(err.strip().splitlines()) == 1, err


def test_metagpu_in_init_containers_and_sidecars_is_translated_in_place(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """cnvrg.io/metagpu left in an init container is a resource no MIG node offers: the pod pended."""
    text = (
        "kind: Pod\nmetadata: {name: p}\nspec:\n"
        "  initContainers:\n"
        "  - {name: fetch, resources: {limits: {cnvrg.io/metagpu: 25}}}\n"
        "  - {name: proxy, restartPolicy: Always, resources: {limits: {cnvrg.io/metagpu: 50, cpu: 1}}}\n"
        "  containers: [{name: app}]\n"
    )
    rc, pod, err = run_json(capsys, _write(tmp_path, text), "--model", "h100-80gb")
    assert rc == 0, err
    init = pod["spec"]["initContainers"]
    assert init[0]["resources"]["limits"] == {"nvidia.com/mig-2g.20gb": "1"}
    assert init[1]["resources"]["limits"] == {"cpu": 1, "nvidia.com/mig-4g.40gb": "1"}
    assert init[1]["restartPolicy"] == "Always" and "resources" not in pod["spec"]["containers"][0]
    record = json.loads(pod["metadata"]["annotations"]["cdmo.clear.ml/fractional-ask"])
    assert [(r["container"], r["initContainer"], r["asked"]) for r in record] == [
        ("fetch", True, {"cnvrg.io/metagpu": "25"}),
        ("proxy", True, {"cnvrg.io/metagpu": "50"}),
    ]
    assert "metagpu cnvrg.io/metagpu=25; metagpu cnvrg.io/metagpu=50 -> 1 x 2g.20gb, 1 x 4g.40gb" in err


#: A pod with every part check_pod_shape walks, which translates as it is.
_SHAPED: dict[str, Any] = {
    "kind": "Pod",
    "metadata": {"name": "p", "labels": {"team": "a"}, "annotations": {"note": "b"}},
    "spec": {
        "initContainers": [{"name": "i", "resources": {"limits": {"cpu": 1}, "requests": {"cpu": 1}}}],
        "containers": [
            {"name": "c", "resources": {"limits": {"cnvrg.io/metagpu": 25}, "requests": {"cpu": 1}}}
        ],
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "nvidia.com/gpu.product",
                                    "operator": "In",
                                    "values": ["NVIDIA-H100-80GB-HBM3"],
                                }
                            ]
                        }
                    ]
                }
            }
        },
    },
}
_TERMS = (
    "spec",
    "affinity",
    "nodeAffinity",
    "requiredDuringSchedulingIgnoredDuringExecution",
    "nodeSelectorTerms",
)
_RESOURCES = ("spec", "containers", 0, "resources")
#: Fields a pod may leave out (or null), by the shape they have when given.
_MAPPINGS = [
    ("metadata",),
    ("metadata", "labels"),
    ("metadata", "annotations"),
    ("spec",),
    _RESOURCES,
    (*_RESOURCES, "limits"),
    (*_RESOURCES, "requests"),
    ("spec", "initContainers", 0, "resources"),
    ("spec", "nodeSelector"),
    ("spec", "affinity"),
    ("spec", "affinity", "nodeAffinity"),
    _TERMS[:-1],
]
_LISTS = [
    ("spec", "containers"),
    ("spec", "initContainers"),
    _TERMS,
    (*_TERMS, 0, "matchExpressions"),
    (*_TERMS, 0, "matchExpressions", 0, "values"),
]
#: List entries: a mapping each, never absent, so null is as wrong as a string.
_ITEMS = [
    ("spec", "containers", 0),
    ("spec", "initContainers", 0),
    (*_TERMS, 0),
    (*_TERMS, 0, "matchExpressions", 0),
]


def _field_path(path: tuple[str | int, ...]) -> str:
    """``spec.containers[0].resources``, as the error names the field."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _shaped_cases() -> list[Any]:
    """(path, value, words): words None where the pod still translates, else what the error says."""
    cases = []
    for path in _MAPPINGS + _LISTS:
        shape = "a mapping" if path in _MAPPINGS else "a list"
        cases.append((path, None, None))  # a null field is one left out: the pod is read without it
        cases.append((path, "x", f"the pod: {_field_path(path)} must be {shape}, not str"))
    for path in _ITEMS:
        cases.append((path, None, f"the pod: {_field_path(path)} must be a mapping, not null"))
        cases.append((path, "x", f"the pod: {_field_path(path)} must be a mapping, not str"))
    return [pytest.param(*case, id=f"{_field_path(case[0])}={case[1]!r}") for case in cases]


@pytest.mark.parametrize(("path", "value", "words"), _shaped_cases())
def test_a_null_or_misshapen_part_of_the_pod_is_refused_naming_its_path(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    path: tuple[str | int, ...],
    value: Any,
    words: str | None,
) -> None:
    """A null list entry (a lone ``-``, ``[null]``) passed the shape check as if left out and
    crashed the pod walk (AttributeError, exit 3); so did ``metadata:`` left null. A null field
    is read as left out; a null entry or a string where a mapping goes is refused in one line."""
    obj = copy.deepcopy(_SHAPED)
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    rc = main(["translate", _write(tmp_path, yaml.safe_dump(obj)), "--model", "h100-80gb", "-o", "json"])
    captured = capsys.readouterr()
    if words is None:
        assert rc == 0, captured.err
        json.loads(captured.out)
        return
    lines = captured.err.strip().splitlines()
    assert rc == 2 and captured.out == "" and len(lines) == 1 and words in lines[0], captured.err


def test_a_pod_with_null_metadata_is_translated_and_written_without_name_or_namespace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``metadata:`` left empty crashed on setting the default namespace (AttributeError, exit 3)."""
    text = (
        "kind: Pod\nmetadata:\nspec: {containers: [{name: a, resources: {limits: {cnvrg.io/metagpu: 25}}}]}\n"
    )
    rc, pod, err = run_json(capsys, _write(tmp_path, text), "--model", "h100-80gb")
    assert rc == 0, err
    assert set(pod["metadata"]) == {"annotations"}
    assert pod["spec"]["containers"][0]["resources"] == {"limits": {"nvidia.com/mig-2g.20gb": "1"}}


def test_a_number_of_more_than_4300_digits_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Python's int() refuses it (sys.int_info): it ended in 'unexpected error', exit 3."""
    path = _write(
        tmp_path,
        "kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c}]\n  a: " + "9" * 5000 + "\n",
    )
    assert main(["translate", path, "--model", "h100-80gb"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "more than 4300 digits" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
