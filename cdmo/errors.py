"""The one root of cdmo's errors.

This module imports nothing from cdmo, so every module can import it. The CLI and the kopf
handlers map these families to exit codes and to kopf errors; nothing else catches broadly.
"""

from __future__ import annotations


class CdmoError(Exception):
    """Anything cdmo knows how to explain to the user in one message."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class InvalidInput(CdmoError):
    """Bad input from the user: a file, a flag, an argument."""


class UnknownModel(InvalidInput):
    """A GPU model that the catalog does not know."""


class UnknownProfile(InvalidInput):
    """A MIG profile that a GPU model does not have."""


class InvalidLayout(InvalidInput):
    """A set of (profile, start) that the hardware cannot hold."""

    def __init__(self, message: str, problems: list[str] | None = None, **kw: str) -> None:
        super().__init__(message, **kw)
        self.problems = list(problems or [])


class InvalidSnapshot(InvalidInput):
    """A planner snapshot that does not follow spec/planner-io.md; names the bad field's path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class NvmlError(CdmoError):
    """An NVML call failed; ``rc`` is NVML's return code (NVML_ERROR_*)."""

    def __init__(self, message: str, rc: int | None = None, **kw: str) -> None:
        super().__init__(message, **kw)
        self.rc = rc


class Fatal(CdmoError):
    """Nothing will get better by retrying (for example, a missing privilege)."""


class Transient(CdmoError):
    """Try again later, after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 5.0, **kw: str) -> None:
        super().__init__(message, **kw)
        self.delay = delay
