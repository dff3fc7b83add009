"""The Dockerfile, read as text (no container engine here): one image, python:3.11-slim,
non-root, ENTRYPOINT cdmo, and a build context (.dockerignore) that holds everything
`pip install .` needs."""

from __future__ import annotations

import json
import re
import tomllib

import yaml

from tests.chart.conftest import CHART, ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for instr in instrs:
        if instr[0] == "FROM":
            out.append([])
        out[-1].append(instr)
    return out


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Docker's .dockerignore patterns: Go filepath.Match plus '**'; a pattern that matches a
    # directory matches everything below it.
    pattern = pattern.strip().strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(f"^{out}(/.*)?$")


def in_context(relpath: str, ignore_text: str) -> bool:
    """Whether .dockerignore lets ``relpath`` into the build context (the last match decides)."""
    included = True
    for line in ignore_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if _pattern_regex(line.lstrip("!")).match(relpath):
            included = negate
    return included


def test_the_ignore_matcher_behaves_like_docker() -> None:
    rules = "*\n!cdmo/\n**/__pycache__\n"
    assert in_context("cdmo/mig/catalog.py", rules)
    assert not in_context("tests/unit/test_api.py", rules)
    assert not in_context("cdmo/__pycache__/cli.cpython-311.pyc", rules)
    assert not in_context(".venv/bin/python", rules)


def test_one_slim_python_image_for_both_verbs() -> None:
    parts = stages(instructions(DOCKERFILE.read_text()))
    for stage in parts:
        image = stage[0][1].split()[0]
        assert image == "python:3.11-slim", image
    final = parts[-1]
    (entrypoint,) = [args for word, args in final if word == "ENTRYPOINT"]
    # Exec form, so that the verb the chart passes as args reaches cdmo and signals reach it too.
    assert json.loads(entrypoint) == ["cdmo"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cdmo"] == "cdmo.cli:main"


def test_the_image_runs_as_the_operator_s_non_root_user() -> None:
    final = stages(instructions(DOCKERFILE.read_text()))[-1]
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root USER lets runAsNonRoot check it"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["operator"]["runAsUser"] == int(uid)


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    ignore = DOCKERIGNORE.read_text()
    copied = []
    for word, args in instructions(DOCKERFILE.read_text()):
        if word == "ADD":
            raise AssertionError("use COPY: ADD fetches URLs and unpacks archives implicitly")
        if word == "COPY" and "--from=" not in args:
            *sources, _dest = args.split()
            copied += sources
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert in_context(source, ignore), f"{source} is copied but .dockerignore leaves it out"


def test_the_build_context_holds_what_pip_install_needs() -> None:
    ignore = DOCKERIGNORE.read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"]]
    # Every module and data file of the package, as setuptools' find and package-data see them.
    package_files = [
        p
        for p in (ROOT / "cdmo").rglob("*")
        if p.is_file() and p.suffix in (".py", ".yaml", ".md", ".proto") and "__pycache__" not in p.parts
    ]
    assert any(p.name == "mig-profiles.yaml" for p in package_files)
    needed += [p.relative_to(ROOT).as_posix() for p in package_files]
    left_out = [n for n in needed if not in_context(n, ignore)]
    assert left_out == []
    # And nothing heavy or private rides along.
    for path in (".venv/bin/python", ".git/config", ".tools/bin/helm", "tests/unit/test_api.py"):
        assert not in_context(path, ignore), path
