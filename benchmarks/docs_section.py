"""Writing one benchmark's section of docs/benchmarks.md, leaving the other sections as they are.

Each benchmark script owns one ``## `` heading; its ``--write-docs`` replaces that section (up to
the next ``## ``) with the text it generated, or appends it when the heading is not there yet.
"""

from __future__ import annotations

import re
from pathlib import Path


def write_section(heading: str, section: str, path: Path) -> None:
    """Replace the section under ``heading`` in ``path`` by ``section`` (which starts with it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text.rstrip("\n") + "\n")
