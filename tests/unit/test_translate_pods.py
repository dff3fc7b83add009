"""Reading the asks off pods, choosing the model, and the JSON patch the webhook sends."""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

import pytest

from cdmo.translate.asks import InvalidAsk, parse_number, read_asks
from cdmo.translate.jsonpatch import apply_patch
from cdmo.translate.pods import ASK_ANNOTATION, REASON_ANNOTATION, selected_products, translate_pod
from cdmo.translate.rule import Rule


def pod(
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "namespace": "ns"}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": containers or [{"name": "main", "image": "x"}], **(spec or {})},
    }


def limits(result_pod: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return result_pod["spec"]["containers"][index].get("resources", {}).get("limits", {})


def mutate(p: dict[str, Any], cluster: dict[str, int] | None = None, **kw: Any) -> dict[str, Any]:
    result = translate_pod(p, {"h100-80gb": 1} if cluster is None else cluster, **kw)
    assert result.action == "mutate", result.reason
    return apply_patch(p, result.patch)


def test_cfgi_label_becomes_a_mig_device_and_the_ask_is_recorded() -> None:
    out = mutate(pod(labels={"clearml-injector/fraction": "0.250"}))
    assert limits(out) == {"nvidia.com/mig-2g.20gb": "1"}
    record = json.loads(out["metadata"]["annotations"][ASK_ANNOTATION])
    assert record == [
        {
            "asked": {"clearml-injector/fraction": "0.250"},
            "container": "main",
            "count": 1,
            "model": "h100-80gb",
            "profile": "2g.20gb",
            "resource": "nvidia.com/mig-2g.20gb",
            "source": "cfgi",
        }
    ]
    assert "2g.20gb" in out["metadata"]["annotations"][REASON_ANNOTATION]
    assert out["metadata"]["labels"] == {"clearml-injector/fraction": "0.250"}  # the label stays


def test_legacy_cfgi_replicas_are_removed_and_the_larger_share_is_served() -> None:
    containers = [
        {"name": "side", "image": "x"},
        {
            "name": "task",
            "image": "x",
            "resources": {"limits": {"nvidia.com/gpu": 4}, "requests": {"nvidia.com/gpu": 4}},
        },
    ]
    # label 0.125 but 4 of 8 replicas: the pod gets the half it was actually given before
    out = mutate(pod(labels={"clearml-injector/fraction": "0.125"}, containers=containers))
    assert limits(out, 1) == {"nvidia.com/mig-4g.40gb": "1"}
    assert out["spec"]["containers"][1]["resources"]["requests"] == {}
    assert "resources" not in out["spec"]["containers"][0]


def test_kai_fraction_goes_to_the_named_container() -> None:
    containers = [{"name": "sidecar", "image": "x"}, {"name": "trainer", "image": "x", "resources": {}}]
    p = pod(
        annotations={"gpu-fraction": "0.5", "gpu-fraction-container-name": "trainer"}, containers=containers
    )
    out = mutate(p)
    assert limits(out, 1) == {"nvidia.com/mig-4g.40gb": "1"}
    assert limits(out, 0) == {}


def test_kai_memory_ask_is_served_with_at_least_that_memory() -> None:
    out = mutate(pod(annotations={"gpu-memory": "30000"}))
    assert limits(out) == {"nvidia.com/mig-3g.40gb": "1"}


def test_metagpu_units_are_a_fraction_of_100_and_the_resource_is_removed() -> None:
    containers = [{"name": "nb", "image": "x", "resources": {"limits": {"cnvrg.io/metagpu": 25, "cpu": "2"}}}]
    out = mutate(pod(containers=containers))
    assert limits(out) == {"cpu": "2", "nvidia.com/mig-2g.20gb": "1"}


def test_whole_gpu_asks_keep_whole_gpus() -> None:
    assert limits(mutate(pod(labels={"clearml-injector/fraction": "1.000"}))) == {
        "nvidia.com/mig-7g.80gb": "1"
    }
    containers = [{"name": "nb", "image": "x", "resources": {"limits": {"cnvrg.io/metagpu": "200"}}}]
    assert limits(mutate(pod(containers=containers))) == {"nvidia.com/mig-7g.80gb": "2"}


def test_the_pods_product_selector_wins_over_the_cluster_model() -> None:
    p = pod(
        labels={"clearml-injector/fraction": "0.5"},
        spec={"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}},
    )
    assert limits(mutate(p, {"h100-80gb": 10})) == {"nvidia.com/mig-4g.20gb": "1"}


def test_required_affinity_on_the_product_label_selects_the_model() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H200"]}
                        ]
                    }
                ]
            }
        }
    }
    p = pod(annotations={"gpu-memory": "12000"}, spec={"affinity": affinity})
    assert selected_products(p) == ["NVIDIA-H200"]
    assert limits(mutate(p, {"h100-80gb": 10})) == {"nvidia.com/mig-1g.18gb": "1"}


def test_the_model_most_nodes_carry_comes_first_and_a_default_model_goes_before_it() -> None:
    p = pod(labels={"clearml-injector/fraction": "0.125"})
    cluster = {"h100-80gb": 1, "h200-141gb": 3}
    assert limits(mutate(p, cluster)) == {"nvidia.com/mig-1g.18gb": "1"}
    assert limits(mutate(p, cluster, default_model="h100-80gb")) == {"nvidia.com/mig-1g.10gb": "1"}


def test_a_model_that_cannot_serve_is_passed_over_for_one_that_can() -> None:
    # the A30s are most common, but 30000 MiB only fits the H100
    p = pod(annotations={"gpu-memory": "30000"})
    assert limits(mutate(p, {"a30-24gb": 5, "h100-80gb": 1})) == {"nvidia.com/mig-3g.40gb": "1"}


def test_an_ask_no_cluster_model_serves_is_refused_saying_what_would_fit() -> None:
    result = translate_pod(pod(annotations={"gpu-memory": "100000"}), {"h100-80gb": 2, "a100-40gb": 1})
    assert result.action == "refuse" and result.patch == ()
    assert "ask at most 81152 MiB" in result.reason
    assert "GPUs that could serve it: h200-141gb, b200-180gb" in result.reason
    assert "\n" not in result.reason


def test_no_labelled_nodes_is_refused_with_what_to_do() -> None:
    result = translate_pod(pod(annotations={"gpu-fraction": "0.5"}), {})
    assert result.action == "refuse" and "label MIG GPU nodes" in result.reason


@pytest.mark.parametrize(
    ("p", "words"),
    [
        (pod(), "no fractional GPU ask"),
        (pod(annotations={"gpu-fraction": "0.5", ASK_ANNOTATION: "[]"}), "already translated"),
        (
            pod(
                annotations={"gpu-fraction": "0.5"},
                containers=[{"name": "m", "resources": {"limits": {"nvidia.com/mig-1g.10gb": 1}}}],
            ),
            "already asks for a MIG device",
        ),
        (
            pod(
                annotations={"gpu-fraction": "0.5"},
                spec={"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
            ),
            "not a MIG GPU",
        ),
    ],
    ids=["no-ask", "already-translated", "already-mig", "non-mig-product"],
)
def test_pods_left_alone(p: dict[str, Any], words: str) -> None:
    result = translate_pod(p, {"h100-80gb": 1})
    assert result.action == "skip" and result.patch == ()
    assert words in result.reason


@pytest.mark.parametrize(
    ("p", "words"),
    [
        (
            pod(labels={"clearml-injector/fraction": "quarter"}),
            "clearml-injector/fraction 'quarter' is not a number",
        ),
        (pod(annotations={"gpu-memory": "1.5"}), "gpu-memory '1.5' is not a whole number"),
        (pod(annotations={"gpu-fraction": "1e999999"}), "not a usable number"),
        (
            pod(annotations={"gpu-fraction": "0.5", "gpu-fraction-container-name": "nope"}),
            "names no container",
        ),
        (
            pod(containers=[{"name": "m", "resources": {"limits": {"cnvrg.io/metagpu": "-5"}}}]),
            "'-5' is negative; write whole units (100 to a GPU), e.g. 25",
        ),
        # A memory ask is whole MiB: the hint says so, never "like 0.25".
        (pod(annotations={"gpu-memory": "20Gi"}), "'20Gi' is not a number; write whole MiB, e.g. 20480"),
        (pod(annotations={"gpu-memory": "-5"}), "'-5' is negative; write whole MiB, e.g. 20480"),
        (pod(annotations={"gpu-memory": "1e7"}), "'1e7' is not a usable number; write whole MiB"),
        (pod(annotations={"gpu-memory": "1.5"}), "not a whole number; write whole MiB, e.g. 20480"),
        (
            pod(annotations={"gpu-fraction": "0.5", "gpu-fraction-num-devices": "two"}),
            "'two' is not a number; write a whole number of GPUs, e.g. 2",
        ),
        (
            pod(
                labels={"clearml-injector/fraction": "0.25"},
                containers=[{"name": "m", "resources": {"limits": {"nvidia.com/gpu": "1.5"}}}],
            ),
            "'1.5' is not a whole number; write a whole number of CFGI's replicas, e.g. 2",
        ),
    ],
    ids=[
        "cfgi-word",
        "kai-memory-decimal",
        "huge-exponent",
        "kai-container",
        "metagpu-negative",
        "kai-memory-unit",
        "kai-memory-negative",
        "kai-memory-huge",
        "kai-memory-hint",
        "kai-devices-word",
        "cfgi-replicas-decimal",
    ],
)
def test_unreadable_asks_raise_one_clear_error(p: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidAsk) as err:
        translate_pod(p, {"h100-80gb": 1})
    assert words in str(err.value)


def test_several_systems_on_one_container_are_served_together() -> None:
    p = pod(labels={"clearml-injector/fraction": "0.125"}, annotations={"gpu-memory": "15000"})
    (ask,) = read_asks(p)
    assert ask.source == "cfgi+kai"
    assert limits(mutate(p)) == {"nvidia.com/mig-1g.20gb": "1"}


def test_a_rule_with_other_replica_and_unit_counts() -> None:
    containers = [{"name": "m", "resources": {"limits": {"nvidia.com/gpu": 1}}}]
    rule = Rule(cfgi_replicas_per_gpu=2)
    p = pod(labels={"clearml-injector/fraction": "0.1"}, containers=containers)
    assert limits(mutate(p, rule=rule)) == {"nvidia.com/mig-4g.40gb": "1"}


def test_the_patch_creates_missing_annotations_and_escapes_slashes() -> None:
    p = pod(labels={"clearml-injector/fraction": "0.25"})
    result = translate_pod(p, {"h100-80gb": 1})
    paths = [op["path"] for op in result.patch]
    assert "/metadata/annotations" in paths
    p2 = pod(labels={"clearml-injector/fraction": "0.25"}, annotations={"team": "a"})
    paths2 = [op["path"] for op in translate_pod(p2, {"h100-80gb": 1}).patch]
    assert "/metadata/annotations/cdmo.clear.ml~1fractional-ask" in paths2


def test_kai_num_devices_asks_for_as_many_mig_devices() -> None:
    p = pod(annotations={"gpu-fraction": "0.5", "gpu-fraction-num-devices": "2"})
    out = mutate(p)
    assert limits(out) == {"nvidia.com/mig-4g.40gb": "2"}
    record = json.loads(out["metadata"]["annotations"][ASK_ANNOTATION])
    assert record[0]["asked"]["gpu-fraction-num-devices"] == "2" and record[0]["count"] == 2
    with pytest.raises(InvalidAsk, match="must be 1 to 64"):
        translate_pod(
            pod(annotations={"gpu-fraction": "0.5", "gpu-fraction-num-devices": "0"}), {"h100-80gb": 1}
        )


def test_kai_num_devices_times_the_ask_is_bounded_like_one_ask() -> None:
    """64 whole GPUs on each of 64 GPUs is 4096 GPUs: refused as an ask of 65 GPUs is."""
    big = pod(annotations={"gpu-fraction": "64", "gpu-fraction-num-devices": "64"})
    result = translate_pod(big, {"h100-80gb": 1})
    assert result.action == "refuse" and result.patch == ()
    assert "is 4096 GPUs, more than 64 for one pod" in result.reason
    over = translate_pod(
        pod(annotations={"gpu-fraction": "2", "gpu-fraction-num-devices": "33"}), {"h100-80gb": 1}
    )
    assert over.action == "refuse" and "is 66 GPUs, more than 64" in over.reason
    # At the bound itself the pod is served.
    assert limits(mutate(pod(annotations={"gpu-fraction": "2", "gpu-fraction-num-devices": "32"}))) == {
        "nvidia.com/mig-7g.80gb": "64"
    }
    assert limits(mutate(pod(annotations={"gpu-fraction": "0.5", "gpu-fraction-num-devices": "64"}))) == {
        "nvidia.com/mig-4g.40gb": "64"
    }


@pytest.mark.parametrize(
    "text",
    [
        "1_0",
        "0_5",
        "\u0660.\u0665",
        "\uff10.\uff15",
        "Infinity",
        "-inf",
        "NaN",
        "0x10",
        "1/2",
        "",
        "1e",
        ".",
        "5%",
    ],
    ids=lambda t: repr(t),
)
def test_numbers_are_ascii_digits_sign_point_and_exponent_only(text: str) -> None:
    """Decimal alone reads "1_0" as 10 and Arabic-Indic digits as 0.5; nobody writes an ask so."""
    with pytest.raises(InvalidAsk, match=r"is not a number; write it like 0\.25"):
        parse_number(text, "label clearml-injector/fraction")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.25", "1/4"),
        (".5", "1/2"),
        ("5.", "5"),
        ("+0.5", "1/2"),
        ("2.5e-1", "1/4"),
        ("1E2", "100"),
        (" 25 ", "25"),
    ],
)
def test_the_documented_number_forms_are_read_exactly(text: str, value: str) -> None:
    assert parse_number(text, "x") == Fraction(value)


def test_a_tiny_exponent_is_refused_at_once() -> None:
    """Fraction("1e-99999999") builds a 10^99999999 denominator: minutes of CPU for one label."""
    with pytest.raises(InvalidAsk, match="not a usable number"):
        parse_number("1e-99999999", "annotation gpu-fraction")


def test_a_pod_with_an_underscored_or_non_ascii_fraction_is_not_translated() -> None:
    for text in ("1_0", "\u0660.\u0665"):
        with pytest.raises(InvalidAsk, match="is not a number"):
            translate_pod(pod(labels={"clearml-injector/fraction": text}), {"h100-80gb": 1})


# --- A whole GPU next to a share of one ---------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "words"),
    [
        (
            pod(
                annotations={"gpu-fraction": "0.5"},
                containers=[{"name": "main", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
            ),
            [
                "container main asks for a whole GPU (nvidia.com/gpu=1) and a share of one"
                " (kai gpu-fraction=0.5)",
                "remove nvidia.com/gpu from container main",
                "or remove annotation gpu-fraction to keep the whole GPU",
                "KAI refuses such a pod too",
            ],
        ),
        (
            pod(
                annotations={"gpu-memory": "20000"},
                containers=[{"name": "main", "resources": {"requests": {"nvidia.com/gpu": 2}}}],
            ),
            ["nvidia.com/gpu=2", "kai gpu-memory=20000", "remove nvidia.com/gpu from container main"],
        ),
        (
            pod(
                containers=[
                    {"name": "nb", "resources": {"limits": {"cnvrg.io/metagpu": "25", "nvidia.com/gpu": "1"}}}
                ]
            ),
            [
                "container nb asks for a whole GPU (nvidia.com/gpu=1) and a share of one"
                " (metagpu cnvrg.io/metagpu=25)",
                "remove nvidia.com/gpu from container nb",
                "or remove cnvrg.io/metagpu from container nb",
            ],
        ),
    ],
    ids=["kai-fraction", "kai-memory-requests", "metagpu"],
)
def test_a_whole_gpu_in_the_container_with_the_share_is_refused(p: dict[str, Any], words: list[str]) -> None:
    """The MIG limit used to be added next to nvidia.com/gpu: a pod asking for both never schedules."""
    result = translate_pod(p, {"h100-80gb": 1})
    assert result.action == "refuse" and result.patch == (), result.reason
    assert result.reason.startswith("pod ns/p: ")
    for w in words:
        assert w in result.reason
    assert "\n" not in result.reason


def test_a_whole_gpu_in_another_container_is_refused_naming_it() -> None:
    p = pod(
        annotations={"gpu-fraction": "0.5", "gpu-fraction-container-name": "trainer"},
        containers=[
            {"name": "trainer"},
            {"name": "viz", "resources": {"limits": {"nvidia.com/gpu": 1}}},
        ],
        spec={"initContainers": [{"name": "warm", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]},
    )
    result = translate_pod(p, {"h100-80gb": 1})
    assert result.action == "refuse" and result.patch == ()
    assert (
        "container viz and init container warm ask for whole GPUs (nvidia.com/gpu=1, nvidia.com/gpu=2)"
        " and container trainer for a share of one (kai gpu-fraction=0.5)" in result.reason
    )
    assert "remove nvidia.com/gpu from container viz and init container warm" in result.reason


@pytest.mark.parametrize("zero", ["0", 0, "0m"])
def test_a_zero_whole_gpu_ask_is_no_ask(zero: object) -> None:
    """A template's ``nvidia.com/gpu: 0`` asks for nothing; it is left as it is."""
    p = pod(
        annotations={"gpu-fraction": "0.5"},
        containers=[{"name": "m", "resources": {"limits": {"nvidia.com/gpu": zero}}}],
    )
    assert limits(mutate(p)) == {"nvidia.com/gpu": zero, "nvidia.com/mig-4g.40gb": "1"}


def test_cfgi_replicas_stay_the_ask_even_next_to_a_kai_annotation() -> None:
    """CFGI < 1.3's nvidia.com/gpu is its share of the GPU, not a whole one: taken out, never refused."""
    p = pod(
        labels={"clearml-injector/fraction": "0.25"},
        annotations={"gpu-fraction": "0.25"},
        containers=[{"name": "task", "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
    )
    assert limits(mutate(p)) == {"nvidia.com/mig-2g.20gb": "1"}


# --- Init containers and native sidecars --------------------------------------------------------


def _init_pod() -> dict[str, Any]:
    return pod(
        containers=[{"name": "app", "resources": {"limits": {"cnvrg.io/metagpu": "50", "cpu": "1"}}}],
        spec={
            "initContainers": [
                {
                    "name": "fetch",
                    "resources": {"limits": {"cnvrg.io/metagpu": 25}, "requests": {"cnvrg.io/metagpu": 25}},
                },
                {
                    "name": "proxy",
                    "restartPolicy": "Always",
                    "resources": {"limits": {"cnvrg.io/metagpu": "25"}},
                },
            ]
        },
    )


def test_metagpu_in_init_containers_and_sidecars_is_translated_there() -> None:
    p = _init_pod()
    result = translate_pod(p, {"h100-80gb": 1})
    assert result.action == "mutate", result.reason
    paths = [op["path"] for op in result.patch]
    assert "/spec/initContainers/0/resources/limits/nvidia.com~1mig-2g.20gb" in paths
    assert "/spec/initContainers/0/resources/requests/cnvrg.io~1metagpu" in paths
    assert "/spec/initContainers/1/resources/limits/cnvrg.io~1metagpu" in paths
    out = apply_patch(p, result.patch)
    init = out["spec"]["initContainers"]
    assert init[0]["resources"] == {"limits": {"nvidia.com/mig-2g.20gb": "1"}, "requests": {}}
    assert init[1]["resources"] == {"limits": {"nvidia.com/mig-2g.20gb": "1"}}
    assert init[1]["restartPolicy"] == "Always"
    assert limits(out) == {"cpu": "1", "nvidia.com/mig-4g.40gb": "1"}
    record = json.loads(out["metadata"]["annotations"][ASK_ANNOTATION])
    assert [(r["container"], r.get("initContainer", False), r["asked"], r["profile"]) for r in record] == [
        ("app", False, {"cnvrg.io/metagpu": "50"}, "4g.40gb"),
        ("fetch", True, {"cnvrg.io/metagpu": "25"}, "2g.20gb"),
        ("proxy", True, {"cnvrg.io/metagpu": "25"}, "2g.20gb"),
    ]
    assert "cnvrg.io/metagpu" not in json.dumps(out["spec"])


def test_a_translated_init_container_pod_asks_what_kubernetes_will_count() -> None:
    """cdmo.demand (the operator's and the agent's one reader) counts the patched pod as the
    kubelet does: app containers + sidecars run together, a plain init container beside the
    sidecars started before it."""
    from cdmo.demand import read_demand

    out = apply_patch(_init_pod(), translate_pod(_init_pod(), {"h100-80gb": 1}).patch)
    # running: app 4g + sidecar 2g; the plain init container ran alone before the sidecar started
    assert read_demand(out).by_profile() == {"2g.20gb": 1, "4g.40gb": 1}
    # a plain init container after the sidecar runs beside it: 2 x 2g at once
    p = _init_pod()
    p["spec"]["initContainers"].reverse()
    out = apply_patch(p, translate_pod(p, {"h100-80gb": 1}).patch)
    assert read_demand(out).by_profile() == {"2g.20gb": 2, "4g.40gb": 1}


def test_kai_container_name_may_name_an_init_container_as_kai_allows() -> None:
    p = pod(
        annotations={"gpu-memory": "10000", "gpu-fraction-container-name": "prep"},
        containers=[{"name": "main"}],
        spec={"initContainers": [{"name": "prep", "resources": {}}]},
    )
    out = mutate(p)
    assert out["spec"]["initContainers"][0]["resources"] == {"limits": {"nvidia.com/mig-1g.20gb": "1"}}
    assert "resources" not in out["spec"]["containers"][0]
    (record,) = json.loads(out["metadata"]["annotations"][ASK_ANNOTATION])
    assert record["container"] == "prep" and record["initContainer"] is True


def test_an_init_container_that_already_asks_for_mig_is_left_alone() -> None:
    p = pod(
        spec={
            "initContainers": [
                {
                    "name": "i",
                    "resources": {"limits": {"cnvrg.io/metagpu": "25", "nvidia.com/mig-1g.10gb": 1}},
                }
            ]
        }
    )
    result = translate_pod(p, {"h100-80gb": 1})
    assert result.action == "skip" and "already asks for a MIG device" in result.reason


def test_an_unknown_kai_container_name_lists_init_containers_too() -> None:
    p = pod(
        annotations={"gpu-fraction": "0.5", "gpu-fraction-container-name": "nope"},
        spec={"initContainers": [{"name": "prep"}]},
    )
    with pytest.raises(
        InvalidAsk, match="names no container of the pod; containers are main, init containers are prep"
    ):
        translate_pod(p, {"h100-80gb": 1})
