"""Loading YAML the way ``yaml.safe_load`` does, fast enough for a 10,000-pod snapshot.

``load_yaml(text)`` gives the same data as ``yaml.safe_load(text)`` and, for bad input, the
error ``yaml.load(text, Loader=yaml.CSafeLoader)`` raises (what cdmo used before): the same kind,
line and column as safe_load's, worded by libyaml. One difference, on purpose: a mapping that
gives a key twice is an error (safe_load keeps the last value), as Kubernetes' strict decoding
has it. It is what cdmo reads YAML documents with (snapshots, the MIG catalog and layouts,
scenarios, traces, layout files).

Why not plain ``yaml.load(text, Loader=yaml.CSafeLoader)``: libyaml parses quickly, but PyYAML
first composes the whole document into node objects (a node and two marks per scalar, about a
million objects for a 1000-node snapshot) and only then builds the data. Those objects all live
until the end, so the cyclic garbage collector scans them again and again while they pile up:
on a 2.7 MB snapshot composing alone takes about 2 s, five times what it takes with the
collector paused. Here the data is built straight from libyaml's events, so nothing but the
result outlives an event, and plain scalars are resolved (``7`` an int, ``true`` a bool, ``~``
null) through a cache keyed by the scalar's text, with PyYAML's own resolver and constructors.

Block YAML of the kind ``yaml.dump`` writes for plain data (every line ``key: value``,
``key:`` or ``- ...`` with one-line plain or single-quoted scalars, indentation as YAML nests it)
is read faster still, without libyaml's events: one regular expression over the text and a loop
over its lines (_load_block; 0.31 -> 0.18 s for a 2.7 MB snapshot). A text with anything else in
it, or any line the loop cannot place, goes to the events path below, which answers as before.

The events path takes what snapshots hold: mappings, sequences and scalars without tags. Anything
else (anchors and aliases, explicit tags, merge keys ``<<``, keys that are mappings or lists,
a second document, any error) sends the whole text through ``yaml.load`` with the C safe loader,
so those cases, and every error message with its line and column, are PyYAML's own. Implicit
resolvers are PyYAML's as shipped for the safe loader (read once, at the first load).

Pure: imports nothing of cdmo, Kubernetes or NVML.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml
from yaml.events import (
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

#: libyaml's safe loader where PyYAML was built with it, else the pure-Python one.
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class NoDuplicateKeys(yaml.constructor.SafeConstructor):
    """A safe constructor that refuses a mapping giving one key twice (mixed into a loader).

    The safe loader keeps the last value without a word: a layout file saying ``instances:``
    twice for one GPU would apply only the second list. Kubernetes' strict decoding (``kubectl
    --validate=strict``, the API server's ``fieldValidation=Strict``) refuses such a document too.
    Keys a merge (``<<``) brings in may still be overridden, as YAML means them to be.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):  # the constructor's own check comes after
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # a complex key: the constructor says what is wrong with it
                if key_node.tag == "tag:yaml.org,2002:value":
                    key: Any = key_node.value  # "=", which the safe constructor reads as a string
                else:
                    key = self.construct_object(key_node)
                if key in seen:
                    # no context: the first line of the error is then the problem
                    raise yaml.constructor.ConstructorError(
                        None, None, f"found duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def describe_error(exc: yaml.YAMLError) -> str:
    """What a YAML error says in one line: its problem and where ("found duplicate key 'a' at
    line 3, column 1"), for the messages of every command that reads YAML."""
    problem = getattr(exc, "problem", None) or "cannot parse it"
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


class StrictSafeLoader(NoDuplicateKeys, SAFE_LOADER):  # type: ignore[valid-type,misc]
    """:data:`SAFE_LOADER` that refuses a key given twice in one mapping (:class:`NoDuplicateKeys`)."""


_STR = "tag:yaml.org,2002:str"
#: Tags of plain scalars whose value the fast path builds with PyYAML's SafeConstructor.
_SCALAR_TAGS = frozenset(
    {
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:timestamp",
    }
)
#: Distinct plain scalars remembered across documents (then forgotten all at once): snapshots
#: repeat a few hundred values (counts, starts, true/false, keys); a scalar whose first character
#: no resolver looks at (most names: gpu-0001, job-17) never reaches the cache.
_CACHE_LIMIT = 65536
_MISSING = object()


class _Unsupported(Exception):
    """The fast path met something it leaves to PyYAML's full loader."""


class _Plain:
    """The value of a plain (unquoted) scalar, as the safe loader resolves and builds it."""

    def __init__(self) -> None:
        self._resolvers: dict[Any, list[tuple[str, Any]]] = SAFE_LOADER.yaml_implicit_resolvers
        self._constructor = yaml.constructor.SafeConstructor()
        self.cache: dict[str, Any] = {}

    def starts(self) -> frozenset[str] | None:
        """First characters an implicit resolver looks at (``''``: the empty scalar); None: all."""
        if None in self._resolvers:
            return None  # a resolver for every first character (none in PyYAML as shipped)
        return frozenset(self._resolvers)

    def value(self, text: str) -> Any:
        found = self.cache.get(text, _MISSING)
        if found is not _MISSING:
            return found
        tag = _STR
        for candidate, regexp in self._resolvers.get(text[:1], []) + self._resolvers.get(None, []):
            if regexp.match(text):
                tag = candidate
                break
        if tag == _STR:
            result: Any = text
        elif tag in _SCALAR_TAGS:
            # The same constructor yaml.safe_load would call; ints, floats, bools, None and
            # dates are immutable, so one object may stand for every occurrence.
            try:
                result = self._constructor.yaml_constructors[tag](self._constructor, ScalarNode(tag, text))
            except Exception as exc:  # e.g. an int of more than 4300 digits: safe_load's own error
                raise _Unsupported(tag) from exc
        else:
            raise _Unsupported(tag)  # merge key <<, the value key =
        if len(self.cache) >= _CACHE_LIMIT:
            self.cache.clear()
        self.cache[text] = result
        return result


_PLAIN: _Plain | None = None


def _plain() -> _Plain:
    global _PLAIN
    if _PLAIN is None:
        _PLAIN = _Plain()
    return _PLAIN


#: One line of the block YAML that ``yaml.dump`` writes for plain data: indentation, "- " entry
#: marks, then ``key:``, ``key: value`` or a lone value; a value is a plain scalar of one line
#: (letters, digits and ``_./-``, single spaces inside, no indicator first), a single-quoted
#: string of printable ASCII on one line, or ``[]`` / ``{}``. Groups: indent, entry marks, key,
#: plain value, quote, quoted text, empty collection. (Runs of one character class, no
#: look-ahead per character: the expression reads a 2.7 MB snapshot in about 0.06 s.)
_PLAIN_RE = r"(?:[A-Za-z0-9_]|[-.](?=[A-Za-z0-9_]))[A-Za-z0-9_./-]*(?: [A-Za-z0-9_./-]+)*"
_LINE = re.compile(
    rf"^( *)((?:- )*)(?:({_PLAIN_RE}):(?= |$) ?)?"
    rf"(?:({_PLAIN_RE})|(')((?:[ -&(-~]|'')*)'|(\[\]|\{{\}}))?$",
    re.MULTILINE,
)
#: Collections nested deeper than this take the events path: libyaml refuses a document nested
#: about 1000 levels deep ("exceeded maximum nesting depth"), and load_yaml answers as it does.
_DEPTH_LIMIT = 500
#: Characters that the block grammar holds in single quotes at most (see _load_block).
_OFF_BLOCK = ("#", '"', "\t", "\r", "&", "*", "!", "|", ">", "%", "? ", "\\")
#: A mapping key longer than this may not be a YAML simple key (libyaml's limit is 1024
#: characters from the key to its colon): such text takes the events path.
_KEY_LIMIT = 1000


def _load_block(text: str) -> Any:
    """The data of ``text`` if every line is in the block grammar of :data:`_LINE` and its
    indentation nests the way YAML reads it; raises _Unsupported for anything else (the caller
    then takes the events path, so every other text, and every error, is libyaml's).

    Why: libyaml parses a 2.7 MB snapshot in 0.04 s, but turning its 390,000 events into
    Python objects takes 0.2 s; one regular expression over the text and a loop over its lines
    build the same data in about half the time (docs/benchmarks.md, "YAML load").
    """
    if not text.isascii():
        raise _Unsupported("text outside the block grammar")  # line breaks beyond "\n", BOMs
    # Scans at C speed that send most hand-written YAML (comments, flow collections, double
    # quotes, block scalars, tags, anchors) to libyaml before a line is matched. Such characters
    # are only allowed inside single quotes, where these checks are merely cautious.
    for off in _OFF_BLOCK:
        if off in text:
            raise _Unsupported(f"{off!r} in the text")
    if text.count("[") != text.count("[]") or text.count("{") != text.count("{}"):
        raise _Unsupported("a flow collection")
    # a final newline ends the last line; it does not start an empty one
    end = len(text) - 1 if text.endswith("\n") else len(text)
    expected = text.count("\n", 0, end) + 1
    if not end:
        raise _Unsupported("no lines")
    plain = _plain()
    starts = plain.starts()
    if starts is None:
        raise _Unsupported("a resolver for every first character")  # none in PyYAML as shipped
    cached = plain.cache.get
    value_of = plain.value
    missing = _MISSING
    key_limit = _KEY_LIMIT
    # The collections being filled, outermost first: (column, container, is a list). The
    # innermost one is kept in locals (col, items, seq); ``pending`` is the key of ``items`` (a
    # mapping) whose value may still come on the lines below ("key:" ending its line): the
    # collections under it never have one, since a nested collection takes it.
    # The first line says what the root is; it must not be indented.
    seq = text.startswith("- ")
    items: Any = [] if seq else {}
    root = items
    top_col = 0
    stack: list[tuple[int, Any, bool]] = []
    pending: Any = missing
    count = 0
    # one match at a time (a list of every line's groups would keep 145,000 tuples alive and
    # wake the cyclic collector hundreds of times); a line outside the grammar has no match
    for match in _LINE.finditer(text, 0, end):
        indent, marks, key, word, quote, quoted, empty = match.groups()
        count += 1
        col = len(indent)
        # the value of the line, if any (a key's or an entry's)
        value: Any = missing
        if word:
            value = cached(word, missing)
            if value is missing:
                value = value_of(word) if word[:1] in starts else word
        elif quote:
            value = quoted.replace("''", "'")
        elif empty:
            value = [] if empty == "[]" else {}
        if col != top_col or marks or seq or pending is not missing:
            # Close the collections this line is left of. A sequence at the column of the
            # mapping that holds it ("key:", then "- item" below, as yaml.dump writes) ends at
            # the next key.
            while stack and (top_col > col or (top_col == col and seq and not marks)):
                top_col, items, seq = stack.pop()
                pending = missing
            if pending is not missing:
                if col > top_col or (marks and col == top_col):
                    # the value of "key:" above: a mapping (deeper) or a sequence
                    child: Any = [] if marks else {}
                    items[pending] = child
                    stack.append((top_col, items, seq))
                    top_col, items, seq = col, child, bool(marks)
                pending = missing  # else "key:" with nothing below: null, set already
            if col != top_col or bool(marks) != seq:
                raise _Unsupported("indentation the block grammar does not hold")
            if len(stack) + len(marks) > _DEPTH_LIMIT:
                raise _Unsupported("collections nested deeper than libyaml reads them")
            if marks:
                # The first mark is an entry of ``items`` (a sequence at this column), each
                # further one a sequence inside the entry before it.
                depth = len(marks) // 2
                for i in range(1, depth):
                    child = []
                    items.append(child)
                    stack.append((top_col, items, True))
                    top_col, items = col + 2 * i, child
                if not key:
                    if value is missing:
                        raise _Unsupported("an entry with nothing on its line")
                    items.append(value)
                    continue
                child = {}
                items.append(child)
                stack.append((top_col, items, True))
                top_col, items, seq = col + 2 * depth, child, False
        if not key:
            raise _Unsupported("a value without a key")
        if len(key) > key_limit:
            raise _Unsupported("a key too long to be a simple key")
        k: Any = cached(key, missing)
        if k is missing:
            k = value_of(key) if key[:1] in starts else key
        if k in items:
            raise _Unsupported("a key given twice")  # the strict loader says where
        if value is missing:
            items[k] = None
            pending = k
        else:
            items[k] = value
    if count != expected:
        raise _Unsupported("a line outside the block grammar")
    return root


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``: the same data, the same errors (YAMLError with its marks), and
    one more: a mapping that gives a key twice is a ConstructorError ("found duplicate key")
    at the second one (:class:`StrictSafeLoader`)."""
    try:
        return _load_block(text)
    except _Unsupported:
        pass  # not all in the block grammar: libyaml reads it (errors and all)
    if SAFE_LOADER is yaml.SafeLoader:
        return yaml.load(text, Loader=StrictSafeLoader)  # PyYAML without libyaml: no events to skip
    try:
        return _load_events(text)
    except yaml.YAMLError:
        # Only libyaml's parser raises these here (scalars are built inside _Plain.value, which
        # hands every failure to the full loader): the full loader would meet the same error at
        # the same event first, since composing and building start only with its events, and
        # reading a big file twice to say so costs seconds.
        raise
    except Exception:
        # _Unsupported, or a scalar PyYAML refuses to build: the full loader reads the text
        # again and answers as safe_load would, the same data or the same error.
        return yaml.load(text, Loader=StrictSafeLoader)


def _load_events(text: str) -> Any:
    plain = _plain()
    starts = plain.starts()
    cached = plain.cache.get
    value_of = plain.value
    # Tags start with "!" and anchors with "&": a text without either has none, and the events
    # need not be asked (a "!" or "&" inside a string only means asking).
    marked = "!" in text or "&" in text
    parser = SAFE_LOADER(text)
    # types-PyYAML leaves CParser's methods untyped
    get: Callable[[], Any] = parser.get_event
    dispose: Callable[[], None] = parser.dispose
    try:
        get()  # StreamStart
        if type(get()) is not DocumentStartEvent:
            return None  # an empty stream: safe_load gives None too
        # The container being filled (top), the key that waits for its value in a mapping,
        # and the (container, key) pairs of the containers around it.
        parents: list[tuple[Any, Any]] = []
        top: Any = None
        key: Any = _MISSING
        root: Any = None
        missing = _MISSING
        # local names: read once per event, globals cost a dictionary look-up each time
        scalar, mapping_start, sequence_start = ScalarEvent, MappingStartEvent, SequenceStartEvent
        mapping_end, sequence_end = MappingEndEvent, SequenceEndEvent
        while True:
            event = get()
            kind = type(event)
            if kind is scalar:
                if marked and (event.anchor is not None or event.tag is not None):
                    raise _Unsupported("a tag or an anchor")
                item: Any = event.value
                if (starts is None or item[:1] in starts) and event.implicit[0]:
                    found = cached(item, missing)
                    item = value_of(item) if found is missing else found
                if top is None:
                    root = item
                    break
            elif kind is mapping_start or kind is sequence_start:
                if marked and (event.anchor is not None or event.tag is not None):
                    raise _Unsupported("a tag or an anchor")
                container: Any = {} if kind is mapping_start else []
                if top is None:
                    root = container
                elif type(top) is list:
                    top.append(container)
                elif key is missing:
                    raise _Unsupported("a key that is a mapping or a list")
                elif key in top:
                    raise _Unsupported("a key given twice")  # the strict loader says where
                else:
                    top[key] = container
                    key = missing
                parents.append((top, key))
                top = container
                continue
            elif kind is mapping_end or kind is sequence_end:
                top, key = parents.pop()
                if top is None:
                    break
                continue
            else:
                raise _Unsupported(kind.__name__)  # an alias
            if type(top) is list:
                top.append(item)
            elif key is missing:
                key = item
            elif key in top:
                raise _Unsupported("a key given twice")  # the strict loader says where
            else:
                top[key] = item
                key = missing
        if type(get()) is not DocumentEndEvent or type(get()) is not StreamEndEvent:
            raise _Unsupported("more than one document")
        return root
    finally:
        dispose()
