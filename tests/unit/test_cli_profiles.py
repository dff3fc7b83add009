"""``cdmo profiles`` through the real entry point, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cdmo import exit_codes
from cdmo.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_table_lists_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles")
    assert code == 0
    for key in ("a30-24gb", "h100-80gb", "h200-141gb", "rtx-pro-6000-blackwell"):
        assert key in out


def test_h100_json_lists_seven_profiles_with_placements(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles", "h100-80gb", "--output", "json")
    assert code == 0
    data = json.loads(out)
    assert [p["name"] for p in data["profiles"]] == [
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
    ]
    placements = {p["name"]: [pl["start"] for pl in p["placements"]] for p in data["profiles"]}
    assert placements["1g.20gb"] == [0, 2, 4, 6]
    assert placements["3g.40gb"] == [0, 4]
    assert data["validLayouts"] == 2318
    assert data["maximalProfileSets"] == 28


def test_model_by_product_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles", "NVIDIA A100-SXM4-40GB", "-o", "json")
    assert code == 0 and json.loads(out)["key"] == "a100-40gb"


def test_check_valid_layout(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles", "h100-80gb", "--check", "4g.40gb@0,3g.40gb@4")
    assert code == 0 and out.startswith("valid on h100-80gb")


def test_check_invalid_layout_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles", "h100-80gb", "--check", "4g.40gb@0,3g.40gb@0", "-o", "json")
    assert code == 1
    data = json.loads(out)
    assert data["valid"] is False
    assert data["problems"] == ["3g.40gb@0 overlaps 4g.40gb@0 on placement units 0-3"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["profiles", "tesla-t4"], "known models are a30-24gb"),
        (["profiles", "h100-80gb", "--check", "1g.20gb@3"], "legal starts are 0, 2, 4, 6"),
        (["profiles", "h100-80gb", "--check", "9g.99gb@0"], "its profiles are 1g.10gb"),
        (["profiles", "h100-80gb", "--check", "garbage"], "PROFILE@START"),
        (["profiles", "--check", "4g.40gb@0"], "--check needs a MODEL"),
        (["profiles", ""], "MODEL is empty"),
        (["profiles", "  "], "MODEL is empty"),
        (["profiles", "", "--check", "4g.40gb@0"], "MODEL is empty"),
        (["profiles", "h100-80gb", "--check", "4g.40gb@0,,3g.40gb@4"], "item 2 of the layout is empty"),
        (["profiles", "h100-80gb", "--check", "1g.10gb@\u0663"], "PROFILE@START"),
    ],
    ids=[
        "unknown-model",
        "illegal-start",
        "unknown-profile",
        "garbage",
        "check-without-model",
        "empty-model",
        "blank-model",
        "empty-model-with-check",
        "empty-item",
        "arabic-indic-start",
    ],
)
def test_bad_input_gets_one_clear_line_and_non_zero_exit(argv: list[str], needle: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "cdmo.cli", *argv], capture_output=True, text=True)
    assert proc.returncode in (exit_codes.ERROR, exit_codes.USAGE)
    text = proc.stdout + proc.stderr
    assert needle in text
    assert "Traceback" not in text


def test_mistyped_verb_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["profils"])
    assert info.value.code == 2
    assert "did you mean 'profiles'" in capsys.readouterr().err
