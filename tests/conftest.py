"""Settings shared by every test layer."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import pytest
import structlog


class _StderrNow:
    """A structlog logger factory that writes to whatever sys.stderr is at each call.

    Agents and operators run in background threads in the integration tests; a logger bound to
    the stream of the test that created it would print into a later test's output or the terminal.
    """

    def __call__(self, *args: Any) -> structlog.PrintLogger:
        return structlog.PrintLogger(file=_Current())


class _Current:
    def write(self, text: str) -> int:
        stream: TextIO = sys.stderr
        return stream.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _quiet_structlog() -> Iterator[None]:
    """Only warnings and errors of cdmo's structured logs reach the test output."""
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=_StderrNow(),
        cache_logger_on_first_use=False,
    )
    yield
    structlog.reset_defaults()
