"""The randomized fault campaign (cdmo.sim.fault_campaign): a bounded set of seeds in CI.

More seeds: ``.venv/bin/python benchmarks/fault_campaign.py --seeds 500``. The API, the
kubelet's pod-resources and the device plugin are in-memory stand-ins at the agent's own
interfaces (AgentKube, PodDevicesSource, Refresher), not a real API server or kubelet; the
GPUs are the simulated backend, which refuses what NVML refuses.
"""

from __future__ import annotations

import pytest

from cdmo.sim.fault_campaign import HOLDER_FORMS, World, run_campaign

#: Enough for every holder form and fault kind to occur several times, in a few seconds.
CI_SEEDS = range(24)


def _report(figures: object) -> str:
    return "\n".join(getattr(figures, "examples", []))


def test_campaign_in_memory_api_finds_no_violation() -> None:
    figures = run_campaign(CI_SEEDS, steps=25)
    assert figures.runs == len(CI_SEEDS)
    # the campaign really exercised what it claims to
    assert set(figures.holders) == set(HOLDER_FORMS)
    for kind in (
        "nvml",
        "pod-resources",
        "api-read",
        "api-list",
        "api-patch",
        "api-event",
        "reboot",
        "bind-mid-pass",
    ):
        assert figures.faults[kind] > 0, kind
    assert figures.faults["crash-between-gi-and-ci"] > 0
    assert not figures.violations, _report(figures)


def test_checker_catches_an_agent_with_its_protections_off() -> None:
    figures = run_campaign(CI_SEEDS, steps=25, broken=True)
    assert figures.violations["held-destroyed"] > 0
    assert figures.violations["reserved-destroyed"] > 0


def test_checker_catches_an_agent_whose_recheck_reads_nothing_new() -> None:
    # pods bound between the agent's first read and its destroys: only a fresh re-check sees them
    figures = run_campaign(CI_SEEDS, steps=25, broken="stale")
    assert figures.violations["reserved-destroyed"] > 0
    assert any("bound mid-pass" in e for e in figures.examples)


def test_checker_catches_an_agent_blind_to_mig_index_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    # the agent before index ids under nvidia.com/gpu held anything: it read them as whole GPUs
    monkeypatch.setattr("cdmo.node_agent.inuse.is_mig_index_id", lambda device_id: False)
    figures = run_campaign(CI_SEEDS, steps=25)
    assert figures.violations["held-destroyed"] > 0
    assert any("(indexed)" in e for e in figures.examples)


def test_checker_catches_an_agent_blind_to_devices_named_past_the_plugin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the agent before it read NVIDIA_VISIBLE_DEVICES of bound pods
    monkeypatch.setattr("cdmo.node_agent.inuse.named_devices", lambda pod: ((), False))
    figures = run_campaign(CI_SEEDS, steps=25)
    assert figures.violations["held-destroyed"] > 0
    assert any("(named)" in e for e in figures.examples)


def test_checker_sees_a_gpu_instance_left_without_its_compute_instance() -> None:
    world = World(7)
    world.build()
    world.agent_pass()
    gpu = world.node.gpus[0]
    for p in gpu.model.profiles:
        start = next((s for s in p.starts if not world._overlaps(0, p, s)), None)
        if start is not None and not p.is_variant:
            world.node.create_gpu_instance(0, p.profile_id, start, p.placement_size)  # no CI: half-made
            break
    else:
        pytest.skip("seed 7 left no free placement on GPU 0 for this check")
    world.split.clear()
    world.check_converged()
    assert world.figures.violations["gi-without-full-ci"] == 1


def test_checker_sees_a_status_that_differs_from_the_gpus() -> None:
    world = World(3)
    world.build()
    world.agent_pass()
    assert not world.figures.violations, _report(world.figures)
    status = world.kube.obj["status"] if world.kube.obj else {}
    gpu0 = status["gpus"][0]
    # a status that lists an instance GPU 0 does not hold, or misses one it holds
    gpu0["instances"] = [] if world.node.gpus[0].gis else [{"profile": "x", "start": 0, "giId": 99}]
    world.check_status()
    assert world.figures.violations["status-differs"] == 1


def test_same_seed_same_run() -> None:
    a = run_campaign([5], steps=15)
    b = run_campaign([5], steps=15)
    assert (a.steps, a.passes, a.faults, a.holders, a.violations) == (
        b.steps,
        b.passes,
        b.faults,
        b.holders,
        b.violations,
    )
