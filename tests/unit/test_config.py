from __future__ import annotations

import pytest

from cdmo.config import AgentConfig, OperatorConfig
from cdmo.errors import InvalidInput


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
