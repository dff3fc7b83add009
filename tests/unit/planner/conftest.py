"""Shared helpers for the planner tests: fixtures under tests/data/snapshots and small builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

SNAPSHOTS = Path(__file__).resolve().parents[2] / "data" / "snapshots"
LABELS = {"cdmo.clear.ml/gpu-partitioning": "mig"}


def load_fixture(name: str) -> dict[str, Any]:
    return yaml.safe_load((SNAPSHOTS / name).read_text())


def node(name: str, *gpus: dict[str, Any], labelled: bool = True, **extra: Any) -> dict[str, Any]:
    labels = dict(LABELS) if labelled else {}
    labels.update(extra.pop("labels", {}))
    return {"name": name, "labels": labels, "gpus": list(gpus), **extra}


def gpu(index: int, model: str = "h100-80gb", *instances: str) -> dict[str, Any]:
    """``instances`` as "3g.40gb@4" (free) or "3g.40gb@4!" (used)."""
    out = []
    for text in instances:
        used = text.endswith("!")
        profile, start = text.rstrip("!").split("@")
        out.append({"profile": profile, "start": int(start), "used": used})
    return {"index": index, "model": model, "instances": out}


def pod(name: str, *profiles: str, **extra: Any) -> dict[str, Any]:
    """A pending pod asking for one device per profile given (repeat a profile for more)."""
    requests: dict[str, int] = {}
    for p in profiles:
        key = "nvidia.com/mig-" + p.replace("+", ".")
        requests[key] = requests.get(key, 0) + 1
    return {"name": name, "requests": requests, **extra}


@pytest.fixture
def fixture_names() -> list[str]:
    return sorted(p.name for p in SNAPSHOTS.glob("*.yaml"))
