"""The project's scripts (scripts/, benchmarks/) loaded as modules for tests.

They are files, not a package, so each is loaded from its path, once per test process.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def load_script(relative: str) -> ModuleType:
    """The script at ``relative`` (from the repository root), e.g. ``scripts/sweep_simulate.py``."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
