"""The agent's one doubling backoff: the reconcile loop, the MigLayout watch, the device
plugin's kubelet registration and its XID watch all wait with it after failures."""

from __future__ import annotations

#: Doublings past this are not computed: a float times 2 ** 1025 overflows (OverflowError), which
#: ended the agent's loop after about 1,000 failed passes; every caller's maximum is reached long
#: before 2 ** 64 times its initial delay.
_MAX_DOUBLINGS = 64


def doubling_delay(initial: float, doublings: int, maximum: float) -> float:
    """``initial * 2 ** doublings`` seconds, at most ``maximum``."""
    return min(maximum, initial * 2 ** min(max(doublings, 0), _MAX_DOUBLINGS))
