"""The chart's copy of the MigLayout CRD is byte-equal to its single source in crds/.

Helm installs only what sits in the chart's own crds/ folder; scripts/sync-crd makes the copy.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.chart.conftest import CHART, ROOT

SOURCE = ROOT / "crds" / "miglayouts.yaml"
COPY = CHART / "crds" / "miglayouts.yaml"
SYNC = ROOT / "scripts" / "sync-crd"


def test_chart_crd_is_byte_equal_to_the_source() -> None:
    assert SOURCE.is_file(), "crds/miglayouts.yaml is the CRD's single source and must exist"
    assert COPY.read_bytes() == SOURCE.read_bytes(), (
        "helm/cdmo/crds/miglayouts.yaml differs; run scripts/sync-crd"
    )


def test_sync_script_copies_and_checks(tmp_path: Path) -> None:
    # Run the script on a scratch copy of the layout it expects, so the real tree is untouched.
    (tmp_path / "scripts").mkdir()
    shutil.copy2(SYNC, tmp_path / "scripts" / "sync-crd")
    (tmp_path / "crds").mkdir()
    (tmp_path / "crds" / "miglayouts.yaml").write_bytes(SOURCE.read_bytes())
    script = str(tmp_path / "scripts" / "sync-crd")

    stale = subprocess.run([script, "--check"], capture_output=True, text=True)
    assert stale.returncode == 1 and "run scripts/sync-crd" in stale.stderr

    assert subprocess.run([script], capture_output=True, text=True).returncode == 0
    copied = tmp_path / "helm" / "cdmo" / "crds" / "miglayouts.yaml"
    assert copied.read_bytes() == SOURCE.read_bytes()
    assert subprocess.run([script, "--check"], capture_output=True, text=True).returncode == 0

    copied.write_text(copied.read_text() + "# a local edit\n")
    assert subprocess.run([script, "--check"], capture_output=True, text=True).returncode == 1
