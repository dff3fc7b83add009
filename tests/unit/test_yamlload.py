"""cdmo.yamlload.load_yaml gives what yaml.safe_load gives: the same data, the same errors."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdmo import yamlload
from cdmo.yamlload import load_yaml

ROOT = Path(__file__).resolve().parents[2]
#: Every YAML file the project reads as data (Helm templates are not YAML until rendered).
_PATTERNS = ("tests/data/**/*.yaml", "examples/**/*.yaml", "cdmo/mig/data/*.yaml", "crds/*.yaml")
FILES = [
    *sorted(p.relative_to(ROOT).as_posix() for pattern in _PATTERNS for p in ROOT.glob(pattern)),
    "helm/cdmo/values.yaml",
    "helm/cdmo/Chart.yaml",
]

needs_libyaml = pytest.mark.skipif(
    yamlload.SAFE_LOADER is yaml.SafeLoader,
    reason="PyYAML without libyaml: load_yaml is yaml.safe_load itself, there is no fast path to test",
)


def _same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (``.nan`` loads as a float that equals nothing).

    Without recursion: the texts nested 500 deep load as data with the libyaml of PyYAML 6.0.2
    (seen when it was the lowest bound), and comparing them level by level would pass Python's limit.
    """
    todo = [(a, b)]
    while todo:
        x, y = todo.pop()
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if list(x) != list(y):
                return False
            todo.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            todo.extend(zip(x, y, strict=True))
        elif x != y:
            return False
    return True


def _outcome(load: Any, text: str) -> tuple[str, Any]:
    try:
        return ("data", load(text))
    except Exception as exc:
        mark = getattr(exc, "problem_mark", None)
        where = (mark.line, mark.column) if mark is not None else None
        return ("error", (type(exc).__name__, where, str(exc)))


def _libyaml_load(text: str) -> Any:
    return yaml.load(text, Loader=yamlload.StrictSafeLoader)


class _PureStrictLoader(yamlload.NoDuplicateKeys, yaml.SafeLoader):  # type: ignore[misc]
    """yaml.safe_load's pure-Python loader, refusing a key given twice as load_yaml does."""


def assert_loads_like_safe_load(text: str) -> None:
    """The same outcome as ``yaml.load(text, Loader=yaml.CSafeLoader)`` -- safe_load on libyaml,
    what cdmo loaded with before, but refusing a key given twice -- in data, error kind, line,
    column and message.

    Where libyaml's parser and PyYAML's pure-Python one disagree among themselves (the wording of
    some errors, which quote no snippet of the line in libyaml; a surrogate pair escaped in a
    quoted string, which libyaml refuses), load_yaml follows libyaml; everywhere else that is
    yaml.safe_load's outcome too, which the file and fixture tests check directly.
    """
    ours, libyaml = _outcome(load_yaml, text), _outcome(_libyaml_load, text)
    assert ours[0] == libyaml[0], (ours, libyaml)
    if ours[0] == "data":
        assert _same(ours[1], libyaml[1]), (ours[1], libyaml[1])
    else:
        assert ours[1] == libyaml[1]


def _assert_same_as_pure_safe_load(text: str) -> None:
    """yaml.safe_load itself (pure Python): the same data, or an error of the same kind at the
    same line and column (multi-document files are refused by both)."""
    ours, theirs = _outcome(load_yaml, text), _outcome(lambda t: yaml.load(t, Loader=_PureStrictLoader), text)
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "data":
        assert _same(ours[1], theirs[1]), (ours[1], theirs[1])
    else:
        assert ours[1][:2] == theirs[1][:2]


@pytest.mark.parametrize("name", FILES)
def test_every_yaml_file_of_the_project_loads_as_safe_load_loads_it(name: str) -> None:
    text = (ROOT / name).read_text()
    assert_loads_like_safe_load(text)
    _assert_same_as_pure_safe_load(text)


@needs_libyaml
@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "tests/data/snapshots").glob("*.yaml")))
def test_snapshots_take_the_fast_path(name: str) -> None:
    # Not through the fallback: the events path itself gives safe_load's data for snapshots.
    text = (ROOT / "tests/data/snapshots" / name).read_text()
    assert _same(yamlload._load_events(text), yaml.safe_load(text))


#: Plain scalars whose type YAML 1.1 (PyYAML) decides by their text.
TRICKY = [
    "0", "-0", "00", "017", "08", "0o17", "0x1F", "0X1f", "0b101", "1_000", "+12", "-3", "1:30", "-1:30:00",
    "190:20:30.15", "1.5", "1.", ".5", ".", "1e3", "1.5e3", "1.5e+3", "6.8523015e+5", "685.230_15e+03",
    ".inf", "-.Inf", "+.INF", ".NaN", ".nan", "~", "null", "Null", "NULL", "", "yes", "Yes", "NO", "on", "Off",
    "y", "n", "true", "True", "FALSE", "2001-12-14", "2001-12-14t21:59:43.10-05:00",
    "2001-12-14 21:59:43.10 -5", "2002-12-14", "=", "<<", "1g.10gb", "h100-80gb", "nvidia.com/mig-1g.10gb",
    "7g.80gb", "0x", "1__0", "12e", "-", "+", "1_", "0b", "0o", "3g", "NVIDIA H100 80GB HBM3",
    "1" * 5000,
]  # fmt: skip


@pytest.mark.parametrize("scalar", TRICKY, ids=[t[:30] or "empty" for t in TRICKY])
@pytest.mark.parametrize("shape", ["key: {}\n", "- {}\n", "{}\n", "{{k: {}}}\n", "[{}, x]\n", "{}: v\n"])
def test_plain_scalars_resolve_as_safe_load_resolves_them(scalar: str, shape: str) -> None:
    for text in (shape.format(scalar), shape.format(f"'{scalar}'")):  # quoted: always a string
        assert_loads_like_safe_load(text)
        _assert_same_as_pure_safe_load(text)


SPECIAL = {
    "anchors and aliases": "a: &x [1, 2]\nb: *x\n",
    "merge key": "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n",
    "explicit str": "a: !!str 12\nb: !!int '7'\n",
    "binary": "a: !!binary aGVsbG8=\n",
    "set": "a: !!set {x, y}\n",
    "omap": "a: !!omap [x: 1, y: 2]\n",
    "non-specific tag": "a: ! 12\n",
    "unknown tag": "a: !thing 12\n",
    "python tag refused": "a: !!python/name:os.system\n",
    "list as key": "? [a, b]\n: 1\n",
    "map as key": "? {a: 1}\n: 1\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "explicit document": "---\na: 1\n...\n",
    "empty": "",
    "comment only": "# nothing\n",
    "scalar document": "just text\n",
    "duplicate keys": "a: 1\na: 2\nb: 3\n",
    "flow and block": "a: {b: [1, {c: d}], e: []}\nf:\n- - 1\n  - 2\n- {}\n",
    "bad indentation": "a:\n  b: 1\n c: 2\n",
    "unclosed flow": "nodes: [\n",
    "tab": "a:\n\tb: 1\n",
    "undefined alias": "a: *nope\n",
    "bad int after good data": "a: [1, 2]\nb: 0b2\nc: [\n",
    "literal block": "a: |\n  line 1\n  line 2\nb: >\n  folded\n  text\n",
    "escapes": "a: \"tab\\there \\u00e9\"\nb: 'it''s'\n",
    "unicode": "名前: 漢字\nemoji: 🙂\n",
    "big int": "a: 123456789012345678901234567890\n",
    "huge int": "a: " + "9" * 5000 + "\n",
}


@pytest.mark.parametrize("text", list(SPECIAL.values()), ids=list(SPECIAL))
def test_what_the_fast_path_leaves_to_pyyaml_loads_as_safe_load_loads_it(text: str) -> None:
    assert_loads_like_safe_load(text)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: 2\na: 3\n", 3),  # the block path
        ("gpus:\n- index: 0\n  instances: []\n  instances:\n  - {profile: 1g.10gb, start: 0}\n", 4),
        ("a: {b: 1, b: 2}\n", 1),  # flow: the events path
        ("a: 1\n'a': 2\n", 2),  # quoted or not, the same key
        ("1: x\n0x1: y\n", 2),  # YAML 1.1 reads both as 1
        ("# c\nk: &x [1]\nk: *x\n", 3),  # anchors: the full loader
    ],
)
def test_a_key_given_twice_is_an_error_at_the_second(text: str, line: int) -> None:
    """safe_load keeps the last value: a layout saying ``instances:`` twice used the second list."""
    with pytest.raises(yaml.constructor.ConstructorError) as caught:
        load_yaml(text)
    assert caught.value.problem is not None and caught.value.problem.startswith("found duplicate key")
    assert caught.value.problem_mark is not None and caught.value.problem_mark.line + 1 == line
    assert str(caught.value).startswith("found duplicate key")  # what one-line messages show


def test_a_merge_may_still_be_overridden() -> None:
    assert load_yaml("b: &x {k: 1, j: 2}\nc:\n  <<: *x\n  k: 3\n")["c"] == {"k": 3, "j": 2}


def test_an_alias_is_the_same_object_as_its_anchor() -> None:
    data = load_yaml("a: &x [1, 2]\nb: *x\n")
    assert data["a"] is data["b"]


def test_invalid_yaml_keeps_its_line_and_column() -> None:
    with pytest.raises(yaml.MarkedYAMLError) as ours:
        load_yaml("nodes:\n  - name: a\n  bad: [\n")
    with pytest.raises(yaml.MarkedYAMLError) as theirs:
        yaml.safe_load("nodes:\n  - name: a\n  bad: [\n")
    assert ours.value.problem_mark is not None and theirs.value.problem_mark is not None
    assert (ours.value.problem_mark.line, ours.value.problem_mark.column) == (
        theirs.value.problem_mark.line,
        theirs.value.problem_mark.column,
    )
    with pytest.raises(yaml.MarkedYAMLError) as libyaml:
        yaml.load("nodes:\n  - name: a\n  bad: [\n", Loader=yamlload.SAFE_LOADER)
    assert ours.value.problem == libyaml.value.problem  # libyaml words some problems its own way


# -- properties ----------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(TRICKY[:-1]),  # strings that look like numbers, bools, null, dates ...
    st.text(max_size=12),
    st.text(alphabet="0123456789.-+_:eExXoObB~ yYnN", max_size=8),
)
_keys = st.one_of(st.text(max_size=10), st.sampled_from(TRICKY[:-1]), st.integers(), st.booleans())
_data = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=30,
)


def _dumps(data: Any) -> list[str]:
    texts = [
        yaml.safe_dump(data, sort_keys=False),
        yaml.safe_dump(data, sort_keys=False, default_flow_style=True),
        yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), default_flow_style=False),
        yaml.safe_dump(data, sort_keys=False, default_style='"'),
    ]
    with contextlib.suppress(TypeError, ValueError):  # keys JSON cannot write
        texts.append(json.dumps(data))  # JSON is YAML too (safe_load reads it by YAML 1.1 rules)
    return texts


@given(_data)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_dumped_data_loads_as_safe_load_loads_it(data: Any) -> None:
    for text in _dumps(data):
        assert_loads_like_safe_load(text)


@given(
    st.lists(st.text(alphabet="0123456789.-+_:eExXoObB~ yYnNtTfF<=!&*[]{},#'\"\n", max_size=12), max_size=4)
)
@settings(max_examples=300, deadline=None)
def test_arbitrary_scalar_text_loads_as_safe_load_loads_it(parts: list[str]) -> None:
    # Whatever the text (valid or not), the same data or the same error.
    assert_loads_like_safe_load("a: " + "\nb: ".join(parts) + "\n")
    assert_loads_like_safe_load("- " + "\n- ".join(parts) + "\n")


@needs_libyaml
def test_a_syntax_error_is_reported_without_reading_the_text_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # A big snapshot with a typo at its end: the parser's error, at once, not after a second
    # read through PyYAML's full loader (which takes seconds on a 1000-node snapshot).
    text = "nodes:\n" + "- {name: n, gpus: []}\n" * 2000 + "pending: [\n"
    expected = _outcome(_libyaml_load, text)
    assert expected[0] == "error"

    def no_second_read(*_: Any, **__: Any) -> Any:
        raise AssertionError("the text was read twice")

    monkeypatch.setattr(yamlload.yaml, "load", no_second_read)
    assert _outcome(load_yaml, text) == expected


# -- the block path (yamlload._load_block) -------------------------------------------------------

#: Edits that keep a dumped text close to the block grammar or just outside it: indentation one
#: off, a mark moved, a key split or merged, comments, quotes, trailing spaces, empty lines.
_EDITS = [
    " ",
    "  ",
    "- ",
    "-",
    ":",
    ": ",
    "#",
    "'",
    "''",
    "\n",
    "\n  ",
    "\n- ",
    "x",
    "1",
    "~",
    "[]",
    "{}",
    "a b",
]


@given(
    _data,
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 3), st.sampled_from(_EDITS)), max_size=3),
)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_edited_block_text_loads_as_safe_load_loads_it(data: Any, edits: list[tuple[int, int, str]]) -> None:
    # Block YAML as yaml.dump writes it, then cut, spliced and re-indented at random: whatever
    # the block path takes must be what libyaml reads, and what it does not take goes there.
    text = yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), default_flow_style=False)
    for at, cut, insert in edits:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + cut :]
    assert_loads_like_safe_load(text)


@pytest.mark.parametrize(
    "text",
    [
        "a:\n- 1\n- 2\nb: x\n",  # a sequence at its key's column, as yaml.dump writes it
        "a:\n  - 1\n  - 2\nb:\n  c: d\n  e:\n  f: []\n",
        "- - 1\n  - 2\n- - - x: 1\n      y: 2\n",
        "- a:\n  - b\n  c: 'it''s'\n- {}\n- []\n- ''\n",
        "a: NVIDIA H100 80GB HBM3\nb: nvidia.com/mig-1g.10gb\n-1: -x\n.5: on\nc: 2001-12-14\n",
    ],
)
def test_block_text_takes_the_block_path(text: str) -> None:
    assert _same(yamlload._load_block(text), yaml.safe_load(text))


@pytest.mark.parametrize(
    "text",
    [
        "a: b\n  c\n",  # a plain scalar over two lines
        "a:\n  b: 1\n c: 2\n",  # a key between two indentations
        "a: 1\n\nb: 2\n",  # an empty line
        "a: 1 # note\n",  # a comment
        "a: 1 \n",  # a trailing space
        "a:  1\n",  # two spaces after the colon
        "- a\nb: 1\n",  # a sequence, then a mapping at the root
        "  a: 1\n",  # an indented first line
        "a: 'x\n  y'\n",  # a quoted string over two lines
        "---\na: 1\n",  # a document marker
        "a: " + "x" * 10 + "\n" + "k" * 1001 + ": 1\n",  # a key longer than a simple key may be
        "a:\r\n  b: 1\r\n",  # carriage returns
        "a: é\n",  # beyond ASCII
        "- " * 1001 + "a\n",  # nested deeper than libyaml reads (its error, not data)
        "".join(" " * i + "k:\n" for i in range(1000)) + " " * 1000 + "k: 1\n",
        "",
    ],
)
def test_text_outside_the_block_grammar_is_left_to_libyaml(text: str) -> None:
    with pytest.raises(yamlload._Unsupported):
        yamlload._load_block(text)
    assert_loads_like_safe_load(text)


def test_a_dumped_snapshot_takes_the_block_path() -> None:
    text = (ROOT / "tests/data/snapshots/handout.yaml").read_text()
    data = yaml.safe_load(text)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    dumped = yaml.dump(data, Dumper=dumper, default_flow_style=False, sort_keys=False)
    assert _same(yamlload._load_block(dumped), data)
