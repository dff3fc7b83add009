"""call_with_retry: bounded tries of transient NVML errors, a plain call when the first succeeds."""

from __future__ import annotations

import pytest

from cdmo.node_agent.backend import (
    InstanceBusy,
    NvmlReturn,
    RetryPolicy,
    TransientNvmlError,
    call_with_retry,
)


class Flaky:
    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self, value: int) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return value * 2


TIMEOUT = TransientNvmlError("timed out", NvmlReturn.TIMEOUT)


@pytest.mark.parametrize(("attempts", "failures", "calls"), [(4, 0, 1), (4, 3, 4), (2, 1, 2), (1, 0, 1)])
def test_transient_errors_are_tried_again_up_to_the_bound(attempts: int, failures: int, calls: int) -> None:
    fn = Flaky(failures, TIMEOUT)
    assert call_with_retry(RetryPolicy(attempts=attempts, initial_seconds=0), fn, 21) == 42
    assert fn.calls == calls


@pytest.mark.parametrize("attempts", [1, 2, 4])
def test_a_transient_error_that_stays_is_raised_after_the_last_try(attempts: int) -> None:
    fn = Flaky(100, TIMEOUT)
    with pytest.raises(TransientNvmlError):
        call_with_retry(RetryPolicy(attempts=attempts, initial_seconds=0), fn, 1)
    assert fn.calls == attempts


def test_other_errors_are_not_retried() -> None:
    fn = Flaky(1, InstanceBusy("busy", NvmlReturn.IN_USE))
    with pytest.raises(InstanceBusy):
        call_with_retry(RetryPolicy(attempts=4, initial_seconds=0), fn, 1)
    assert fn.calls == 1


def test_the_waits_start_at_the_initial_seconds_and_double(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    fn = Flaky(3, TIMEOUT)
    assert call_with_retry(RetryPolicy(attempts=4, initial_seconds=0.2, max_seconds=2.0), fn, 1) == 2
    assert slept == pytest.approx([0.2, 0.4, 0.8])
