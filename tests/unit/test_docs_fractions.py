"""docs/coming-from-fractions.md stays true: its tables are what the code gives, its examples and
chart values exist, and the CFGI agent values it keeps unchanged translate as the table says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from cdmo.mig.catalog import get_model
from cdmo.translate.asks import InvalidAsk, parse_number
from cdmo.translate.pods import translate_pod
from cdmo.translate.rule import Choice, Need, choose_profile
from cdmo.translate.tables import BEGIN, END, build_tables, render_doc

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "coming-from-fractions.md"


def test_the_docs_tables_are_the_generated_ones() -> None:
    text = DOC.read_text()
    assert render_doc(text) == text, "run scripts/fractions-table"
    assert build_tables() in text


def test_the_generator_script_checks_the_doc() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fractions-table"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_table_rows_follow_the_rule_for_the_issues_examples() -> None:
    # one cell per table checked against the rule directly, so a broken generator cannot pass
    section = DOC.read_text().split(BEGIN)[1].split(END)[0]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in section.splitlines()
        if line.startswith("| ")
    }
    header = rows["fraction"]
    h100 = header.index("h100-80gb")
    assert rows["0.250 (`gpu-fraction-0_250`)"][h100] == "2g.20gb"
    assert rows["12000 MiB"][h100] == "1g.20gb"
    assert rows["25 units"][header.index("h200-141gb")] == "2g.35gb"


def test_files_commands_and_values_the_doc_names_exist() -> None:
    text = DOC.read_text()
    for path in set(re.findall(r"(examples/[\w./-]+\.yaml)", text)):
        assert (ROOT / path).is_file(), path
    values = yaml.safe_load((ROOT / "helm" / "cdmo" / "values.yaml").read_text())["webhook"]
    for key in (
        "failurePolicy",
        "namespaceSelector",
        "optOutLabel",
        "defaultModel",
        "fractionMatch",
        "cfgiReplicasPerGpu",
        "metagpuUnitsPerGpu",
    ):
        assert key in values, key
    assert values["optOutLabel"] == {"key": "cdmo.clear.ml/fractional", "value": "off"}
    assert 'cdmo.clear.ml/fractional: "off"' in text


def test_cfgi_agent_values_kept_unchanged_translate_as_the_table_says() -> None:
    values = yaml.safe_load((ROOT / "examples" / "clearml-agent-values-cfgi.yaml").read_text())
    queues = values["agentk8sglue"]["queues"]
    assert list(queues) == [
        f"gpu-fraction-{n}_{d}"
        for n, d in (
            ("0", "125"),
            ("0", "250"),
            ("0", "375"),
            ("0", "500"),
            ("0", "625"),
            ("0", "750"),
            ("0", "875"),
            ("1", "000"),
        )
    ]
    h100 = get_model("h100-80gb")
    for name, queue in queues.items():
        labels = queue["templateOverrides"]["labels"]
        assert "resources" not in queue["templateOverrides"]  # no MIG ask written in the values
        pod = {"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "task"}]}}
        result = translate_pod(pod, {"h100-80gb": 1})
        expected = choose_profile(h100, Need(fraction=Fraction(labels["clearml-injector/fraction"])))
        assert isinstance(expected, Choice)
        assert (
            json.loads(result.patch[-1]["value"]["cdmo.clear.ml/fractional-ask"])[0]["profile"]
            == expected.profile
        )


def _doc_numbers(kind: str) -> list[str]:
    """The backquoted numbers the doc lists between its ``numbers:KIND`` markers."""
    match = re.search(rf"<!-- numbers:{kind} -->(.*?)<!-- /numbers -->", DOC.read_text(), re.S)
    assert match, f"the doc lost its numbers:{kind} list"
    return re.findall(r"`([^`]+)`", match.group(1))


def test_the_number_forms_the_doc_names_are_the_ones_read() -> None:
    accepted, refused = _doc_numbers("accepted"), _doc_numbers("refused")
    assert accepted and refused
    for text in accepted:
        parse_number(text, "x")
    for text in refused:
        with pytest.raises(InvalidAsk, match="is not a number"):
            parse_number(text, "x")


def test_the_whole_gpu_refusal_the_doc_shows_is_what_the_webhook_says() -> None:
    """The doc's example pod, translated, is refused with the doc's line, word for word."""
    match = re.search(r"<!-- refusal:whole-gpu -->(.*?)<!-- /refusal -->", DOC.read_text(), re.S)
    assert match, "the doc lost its refusal:whole-gpu example"
    manifest, denial = re.findall(r"```(?:yaml)?\n(.*?)```", match.group(1), re.S)
    pod = yaml.safe_load(textwrap.dedent(manifest))  # the example sits in a list item
    result = translate_pod(pod, {"h100-80gb": 1})
    assert result.action == "refuse"
    assert (
        " ".join(denial.split())
        == f'admission webhook "fractional.cdmo.clear.ml" denied the request: {result.reason}'
    )
