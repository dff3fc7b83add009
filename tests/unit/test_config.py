from __future__ import annotations

import threading
from dataclasses import fields
from pathlib import Path

import pytest

from cdmo.config import MAX_SECONDS, AgentConfig, OperatorConfig, WebhookConfig, maximum
from cdmo.errors import InvalidInput

CONFIGS: tuple[type, ...] = (OperatorConfig, AgentConfig, WebhookConfig)
#: (class, field, variable) of every number setting (bools are not numbers here).
NUMBER_SETTINGS = [
    (cls, f.name, dict(cls.ENV)[f.name])  # type: ignore[attr-defined]
    for cls in CONFIGS
    for f in fields(cls)
    if isinstance(f.default, int | float) and not isinstance(f.default, bool)
]


def test_defaults_and_environment_overrides() -> None:
    assert OperatorConfig.from_env({}).label_key == "cdmo.clear.ml/gpu-partitioning"
    cfg = OperatorConfig.from_env({"CDMO_BATCH_IDLE_SECONDS": "2.5", "CDMO_PARTITION_LABEL": "team/mig=yes"})
    assert cfg.batch_idle_seconds == 2.5
    assert (cfg.label_key, cfg.label_value) == ("team/mig", "yes")
    agent = AgentConfig.from_env(
        {"NODE_NAME": "gpu-1", "CDMO_ENABLE_MIG": "true", "CDMO_RESYNC_SECONDS": "10"}
    )
    assert (agent.node_name, agent.enable_mig, agent.resync_seconds) == ("gpu-1", True, 10.0)


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(InvalidInput, match="CDMO_METRICS_PORT"):
        AgentConfig.from_env({"CDMO_METRICS_PORT": "http"})


def test_operator_watches_are_bounded_server_side() -> None:
    from cdmo.config import OperatorConfig
    from cdmo.operator.handlers import watch_selectors

    config = OperatorConfig(partition_label="example.com/mig=yes")
    assert watch_selectors(config) == {
        "pods": ("field", "status.phase=Pending"),
        "nodes": ("label", "example.com/mig=yes"),
    }
    assert OperatorConfig.from_env({"CDMO_LIST_CHUNK_SIZE": "200"}).list_chunk_size == 200
    assert OperatorConfig().list_chunk_size == 500


@pytest.mark.parametrize(
    ("config", "env", "words"),
    [
        (AgentConfig, {"CDMO_RESYNC_SECONDS": "0"}, "must be above zero"),
        (AgentConfig, {"CDMO_BACKOFF_INITIAL_SECONDS": "nan"}, "not a finite number"),
        (AgentConfig, {"CDMO_LIVENESS_SECONDS": "-1"}, "must not be negative"),
        (AgentConfig, {"CDMO_METRICS_PORT": "70000"}, "not a TCP port"),
        (OperatorConfig, {"CDMO_WATCH_SERVER_TIMEOUT": "0.5"}, "at least 1"),
        (OperatorConfig, {"CDMO_DRAIN_MAX_USED_SHARE": "1.5"}, "is a share"),
        (OperatorConfig, {"CDMO_PREWARM_WINDOW_SECONDS": "inf"}, "not a finite number"),
        (WebhookConfig, {"CDMO_WEBHOOK_NODES_REFRESH_SECONDS": "0"}, "must be above zero"),
        (WebhookConfig, {"CDMO_WEBHOOK_PORT": "65536"}, "not a TCP port"),
    ],
)
def test_a_number_no_component_can_run_with_is_refused_naming_it(
    config: type, env: dict[str, str], words: str
) -> None:
    """inf, nan, 0 and -1 read as floats: they failed deep inside kopf or made a loop spin."""
    (var,) = env
    with pytest.raises(InvalidInput, match=words) as refused:
        config.from_env(env)  # type: ignore[attr-defined]
    assert var in str(refused.value)


def test_zero_stays_a_way_to_turn_things_off() -> None:
    agent = AgentConfig.from_env({"CDMO_LIVENESS_SECONDS": "0", "CDMO_METRICS_PORT": "0"})
    assert (agent.liveness_seconds, agent.metrics_port) == (0, 0)
    op = OperatorConfig.from_env({"CDMO_DRAIN_MAX_FRACTION": "0", "CDMO_DEFRAG_OPS_PER_HOUR": "0"})
    assert (op.drain_max_fraction, op.defrag_ops_per_hour) == (0, 0)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (
            ["agent", "--standalone", "layout.yaml", "--sim-gpus", "h100-80gb", "--metrics-port", "70000"],
            "--metrics-port=70000 is not a TCP port",
        ),
        (
            ["operator", "--standalone", "--server", "http://127.0.0.1:9", "--metrics-port", "-3"],
            "--metrics-port=-3 must not be negative",
        ),
    ],
    ids=["agent", "operator"],
)
def test_a_flag_is_checked_as_its_variable_is(
    argv: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flag overrides the environment after from_env checked it; the agent's went unchecked."""
    from cdmo.cli import main

    argv = [a if a != "layout.yaml" else str(tmp_path / a) for a in argv]
    assert main([*argv, "--sim-state", str(tmp_path / "s.json")] if argv[0] == "agent" else argv) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err


def test_a_resync_too_long_for_a_thread_wait_is_refused() -> None:
    """The audit's repro: 1e10 passed, and the agent's loop died in Event.wait with
    OverflowError (timestamp out of range for platform time_t)."""
    with pytest.raises(InvalidInput, match=r"CDMO_RESYNC_SECONDS=10000000000.0 is more than 1e\+09 seconds"):
        AgentConfig.from_env({"CDMO_RESYNC_SECONDS": "1e10"})


@pytest.mark.parametrize(
    ("config", "name", "var"), NUMBER_SETTINGS, ids=[f"{c.__name__}.{n}" for c, n, _ in NUMBER_SETTINGS]
)
def test_every_number_setting_takes_its_maximum_and_refuses_more(config: type, name: str, var: str) -> None:
    top = maximum(config, name)
    assert getattr(config.from_env({var: str(top)}), name) == top  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as refused:
        config.from_env({var: str(top + 1)})  # type: ignore[attr-defined]
    assert var in str(refused.value) and "\n" not in str(refused.value)


def test_every_seconds_setting_fits_a_thread_wait() -> None:
    """Each float that is not a share is seconds, bounded by MAX_SECONDS: two of them added
    (resync + liveness) must still be a timeout threading accepts."""
    assert 2 * MAX_SECONDS < threading.TIMEOUT_MAX
    for config, name, var in NUMBER_SETTINGS:
        default = next(f.default for f in fields(config) if f.name == name)
        if isinstance(default, float) and name not in getattr(config, "SHARES", ()):
            assert name.endswith(("_seconds", "_timeout")), f"{var}: a float that is no share must be seconds"
            assert maximum(config, name) == MAX_SECONDS, var


@pytest.mark.parametrize("raw", ["\u0663", "1_0", "\u00b2"])
@pytest.mark.parametrize("var", ["CDMO_RESYNC_SECONDS", "CDMO_METRICS_PORT"])
def test_a_number_is_written_in_ascii_digits(var: str, raw: str) -> None:
    """int() and float() read '٣' as 3 and '1_0' as 10; a setting must say what it means in 0-9."""
    with pytest.raises(InvalidInput, match=var):
        AgentConfig.from_env({var: raw})
