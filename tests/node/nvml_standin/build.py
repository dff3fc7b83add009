"""Compile the NVML stand-in (standin.c) against NVIDIA's nvml.h into ``libnvidia-ml.so.1``.

The header comes from the nvidia-nvml-dev wheel (the test extra installs it; it is never
committed). The library gets the soname ``libnvidia-ml.so.1``: loaded once into a process by
path, pynvml's own ``CDLL("libnvidia-ml.so.1")`` then finds it, and a ``cdmo`` command started
with ``LD_LIBRARY_PATH`` set to its folder loads it the way it loads the driver's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("standin.c")
LIBRARY_NAME = "libnvidia-ml.so.1"


class NoCompiler(Exception):
    """No C compiler on this machine (or not Linux): the stand-in cannot be built."""


def find_compiler() -> str:
    if not sys.platform.startswith("linux"):  # a shared library with a soname, as on a GPU node
        raise NoCompiler(f"the stand-in for libnvidia-ml.so.1 is built on Linux only, not {sys.platform}")
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise NoCompiler("no C compiler: $CC is unset or not found, and neither cc, gcc nor clang is on PATH")


def find_nvml_header() -> Path:
    """nvml.h inside the installed nvidia-nvml-dev package (``nvidia/cu13/include/nvml.h``)."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        found = sorted(Path(root).glob("**/include/nvml.h"))
        if found:
            return found[-1]
    raise FileNotFoundError(
        "nvml.h not found: install the test extra (pip install -e '.[test]'), which brings nvidia-nvml-dev"
    )


def build_standin(out_dir: Path, *, r535_rows: bool = False) -> Path:
    """Compile the stand-in into ``out_dir/libnvidia-ml.so.1`` and return its path.

    ``r535_rows``: answer process lists as the R535 drivers do (32-byte rows; standin.c says more).
    """
    compiler = find_compiler()
    header = find_nvml_header()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / LIBRARY_NAME
    cmd = [
        compiler,
        "-shared",
        "-fPIC",
        "-O1",
        "-Wall",
        "-pthread",
        f"-I{header.parent}",
        f"-Wl,-soname,{LIBRARY_NAME}",
        *(["-DSTANDIN_R535_ROWS"] if r535_rows else []),
        "-o",
        str(target),
        str(SOURCE),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"building the NVML stand-in failed:\n{' '.join(cmd)}\n{done.stderr}")
    return target
