"""Workloads: the pods a simulation replays, from Poisson streams or from a trace file.

A workload is generated once per seed and then replayed, unchanged, for every policy, so the
policies are compared on exactly the same pods. Each stream draws from its own generator seeded
with ``(seed, stream name)``: adding a stream does not change the pods of the others.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cdmo.errors import InvalidInput
from cdmo.inputfile import TRACE, read_input_lines
from cdmo.jsonload import load_json
from cdmo.mig.catalog import GpuModel
from cdmo.sim import scenario as _limits
from cdmo.sim.scenario import (
    InvalidScenario,
    Lognormal,
    Scenario,
    Stream,
    parse_duration,
    read_text_file,
    resolve_profile,
)
from cdmo.yamlload import describe_error, load_yaml


@dataclass(frozen=True, slots=True)
class PodSpec:
    """One pod of the workload: it asks for ``count`` instances of ``profile`` and runs ``duration`` s."""

    id: int
    name: str
    arrival: float
    profile: str
    count: int
    duration: float
    priority: int


def _draw_duration(rng: random.Random, d: Lognormal) -> float:
    value = d.median if d.sigma == 0 else rng.lognormvariate(math.log(d.median), d.sigma)
    if d.max is not None:
        value = min(value, d.max)
    # A pod runs for at least a second; sub-second jobs would only measure the event queue.
    return max(1.0, round(value, 3))


_Row = tuple[float, str, int, str, int, float, int, str]


def _generate_stream(stream: Stream, seed: int, horizon: float) -> list[_Row]:
    rng = random.Random(f"cdmo-sim:{seed}:{stream.name}")
    end = horizon if stream.end is None else min(stream.end, horizon)
    rate = stream.rate_per_hour / 3600.0
    weights = [m.weight for m in stream.mix]
    rows: list[_Row] = []
    t = stream.start
    seq = 0
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            break
        item = rng.choices(stream.mix, weights=weights, k=1)[0] if len(stream.mix) > 1 else stream.mix[0]
        duration = _draw_duration(rng, item.duration)
        rows.append(
            (round(t, 3), stream.name, seq, item.label, item.count, duration, item.priority, item.profile)
        )
        seq += 1
    return rows


def generate_workload(
    scenario: Scenario, *, seed: int | None = None, duration: float | None = None
) -> tuple[PodSpec, ...]:
    """The pods of ``scenario`` arriving before ``duration``: generated from its streams, or read from its trace."""
    horizon = scenario.duration if duration is None else duration
    use_seed = scenario.seed if seed is None else seed
    if scenario.trace is not None:
        pods = read_trace(scenario.trace, scenario.models)
        return tuple(p for p in pods if p.arrival < horizon)
    rows: list[_Row] = []
    for stream in scenario.streams:
        rows.extend(_generate_stream(stream, use_seed, horizon))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return tuple(
        PodSpec(
            id=i,
            # Sequence first: names sort in arrival order, as the operator sorts pending pods by name.
            name=f"pod-{i:07d}-{label.replace('+', '-')}",
            arrival=arrival,
            profile=profile,
            count=count,
            duration=dur,
            priority=prio,
        )
        for i, (arrival, _stream, _seq, label, count, dur, prio, profile) in enumerate(rows)
    )


def offered_slice_seconds(pods: Iterable[PodSpec], models: Sequence[GpuModel], horizon: float) -> float:
    """Compute-slice seconds of work that the pods arriving before ``horizon`` bring.

    Over the fleet's compute-slice seconds in the same time this is the offered load (arrival
    rate x work per pod / capacity, as queueing theory has it). Above 1 the fleet cannot do the
    work in the run whatever the policy: pods wait, or run past the end; in a run long against the
    pods' durations, queues grow until the end. Utilization stays below it (the fleet starts
    empty, and pods that arrive late run past the end). A pod counts its profile's compute slices
    on the first of ``models`` that offers it (a profile's compute slices are the same on every
    model that has it), times its count and its whole duration.
    """
    slices: dict[str, int] = {}
    total = 0.0
    for pod in pods:
        if pod.arrival >= horizon:
            continue
        per_device = slices.get(pod.profile)
        if per_device is None:
            model = next((m for m in models if m.has_profile(pod.profile)), None)
            if model is None:
                raise ValueError(f"no model of the fleet offers {pod.profile}")
            per_device = slices[pod.profile] = model.profile(pod.profile).compute_slices
        total += per_device * pod.count * pod.duration
    return total


# --- trace files ------------------------------------------------------------------------------------

_TRACE_FIELDS = (
    "arrival",
    "profile",
    "queue",
    "fraction",
    "gpu_memory",
    "metagpu",
    "model",
    "duration",
    "priority",
    "count",
    "name",
)


def _lines(path: Path) -> Iterator[str]:
    """The lines of a text file as ``str.splitlines`` gives them, read as they are needed, so a
    trace past the pod limit is refused after MAX_PODS rows rather than after reading it all, and
    a line or a file past cdmo.inputfile.TRACE's bounds (/dev/zero: one endless line) is refused
    after that many bytes."""
    try:
        yield from read_input_lines(path, TRACE)
    except InvalidInput as exc:
        raise InvalidScenario("", exc.message, hint=exc.hint) from None


def _too_many(path: Path) -> InvalidScenario:
    return InvalidScenario(
        str(path),
        f"more than {_limits.MAX_PODS:,} pods, the limit of one run",
        hint="split the trace, or keep the rows before the end of the run; see the limits in docs/simulate.md",
    )


#: What Excel's "CSV UTF-8" (and Notepad) put before the first line; not part of the header.
_BOM = "\ufeff"


class _CsvLines:
    """The lines csv reads: blank lines and comments (``#``) left out, a byte order mark taken off.

    ``first`` is the file line number of the first line handed out since :meth:`start_record`,
    so that a record is named by the line an editor shows, comments and blank lines counted.
    """

    def __init__(self, path: Path) -> None:
        self._numbered = enumerate(_lines(path), start=1)
        self.first = 0
        self._new_record = True

    def start_record(self) -> None:
        self._new_record = True

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        for number, line in self._numbered:
            if number == 1:
                line = line.removeprefix(_BOM)
            if line.strip() and not line.startswith("#"):
                if self._new_record:
                    self.first, self._new_record = number, False
                return line
        raise StopIteration


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(file line, cells) of each CSV record, read as they are needed (csv reads no line ahead)."""
    lines = _CsvLines(path)
    reader = csv.reader(lines)
    while True:
        lines.start_record()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a field past csv's size limit, say
            raise InvalidScenario(f"{path}: line {lines.first}", f"not valid CSV ({exc})") from None
        yield lines.first, cells


def _csv_columns(path: Path, line: int, header: list[str]) -> list[str]:
    """The header's column names; refused without ``arrival`` or with a name given twice.

    A name given twice would leave one of its cells unread in every row, as a key given twice in a
    JSONL or YAML trace would, and those are refused too.
    """
    columns = [name.strip() for name in header]
    if "arrival" not in columns:
        raise InvalidScenario(
            str(path),
            "a CSV trace needs a header row with at least arrival, duration and profile or queue",
        )
    seen: dict[str, int] = {}
    for number, name in enumerate(columns, start=1):
        if name in seen:
            raise InvalidScenario(
                f"{path}: line {line}",
                f"{name!r} is named twice in the header (columns {seen[name]} and {number})",
                hint="give each field one column",
            )
        if name:
            seen[name] = number
    return columns


def _csv_row(where: str, columns: Sequence[str], cells: Sequence[str]) -> dict[str, str]:
    """The non-empty cells of one record by column name; each cell must have its own column."""
    if len(cells) != len(columns):
        raise InvalidScenario(
            where,
            f"{len(cells)} cells, but the header has {len(columns)} columns",
            hint="give every row one cell per column (empty for a default); quote a value that holds a comma",
        )
    row: dict[str, str] = {}
    for number, (name, cell) in enumerate(zip(columns, cells, strict=True), start=1):
        value = cell.strip()
        if not value:
            continue  # an empty cell gives the field's default; a column without a name may stay empty
        if not name:
            raise InvalidScenario(
                where,
                f"column {number} has a value, but the header gives the column no name",
                hint="name the column in the header, or leave its cells empty",
            )
        row[name] = value
    return row


def check_trace_rows(path: Path) -> None:
    """Refuse a CSV or JSONL trace of more than MAX_PODS rows before any row is parsed.

    Counting (CSV records, non-blank JSONL lines) reads the file once without checking a field,
    about a second for two million rows, where parsing them takes tens of seconds and hundreds
    of MiB. YAML traces are counted when read (the whole document is parsed first anyway).
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        for i, _ in enumerate(_csv_records(path)):
            if i > _limits.MAX_PODS:  # record 0 is the header
                raise _too_many(path)
    elif suffix == ".jsonl":
        rows = 0
        for line in _lines(path):
            if line.strip():
                rows += 1
                if rows > _limits.MAX_PODS:
                    raise _too_many(path)


def _read_rows(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, row) pairs, read as they are needed; ``where`` names the row for error messages.

    More than MAX_PODS rows are refused as soon as the next one is read.
    """
    suffix = path.suffix.lower()
    limit = _limits.MAX_PODS
    if suffix == ".csv":
        records = _csv_records(path)
        header_line, header = next(records, (0, []))
        columns = _csv_columns(path, header_line, header)
        for i, (number, cells) in enumerate(records):
            if i >= limit:
                raise _too_many(path)
            where = f"{path}: line {number}"
            yield where, _csv_row(where, columns, cells)
        return
    if suffix == ".jsonl":
        count = 0
        for i, line in enumerate(_lines(path)):
            if not line.strip():
                continue
            if count >= limit:
                raise _too_many(path)
            count += 1
            try:
                row = load_json(line)
            except ValueError as exc:  # JSONDecodeError, a key given twice, or an int past Python's limit
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0]
                raise InvalidScenario(f"{path}: line {i + 1}", f"not valid JSON ({msg})") from None
            yield f"{path}: line {i + 1}", row
        return
    if suffix in (".yaml", ".yml"):
        text = read_text_file(path, "trace")
        try:
            data = load_yaml(text)  # traces can be long: the fast loader
        except yaml.YAMLError as exc:
            raise InvalidScenario(str(path), f"not valid YAML: {describe_error(exc)}") from None
        except ValueError:  # an int past Python's digit limit
            raise InvalidScenario(str(path), "not valid YAML") from None
        if isinstance(data, Mapping) and "pods" in data:
            data = data["pods"]
        if not isinstance(data, list):
            raise InvalidScenario(str(path), "a YAML trace is a list of pods (or a mapping with pods: [...])")
        if len(data) > limit:
            raise _too_many(path)
        for i, row in enumerate(data):
            yield f"{path}: pods[{i}]", row
        return
    raise InvalidScenario(
        str(path), f"unknown trace format {suffix or '(none)'!r}", hint="use .csv, .jsonl or .yaml"
    )


#: A whole number as a trace writes it: ASCII digits only (int() would also read "\u0663" as 3).
_WHOLE_NUMBER_RE = re.compile(r"[+-]?[0-9]+")
#: Below the 4300 digits past which int() refuses a string; far above any count or priority.
_MAX_DIGITS = 4000


def _to_whole_number(value: Any, where: str) -> int:
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_DIGITS or not _WHOLE_NUMBER_RE.fullmatch(text):
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise InvalidScenario(where, f"{shown!r} is not a whole number")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidScenario(where, f"{value!r} is not a whole number")
    return value


def read_trace(path: Path, fleet_models: Sequence[GpuModel]) -> tuple[PodSpec, ...]:
    """Pods from a CSV, JSONL or YAML trace (arrival, profile or queue, duration, priority, count, name)."""
    raw: list[tuple[float, int, str, str, int, float, int, str]] = []
    for index, (where, row) in enumerate(_read_rows(path)):
        if not isinstance(row, Mapping):
            raise InvalidScenario(where, "expected a mapping of fields")
        unknown = sorted(str(k) for k in row if k not in _TRACE_FIELDS)
        if unknown:
            raise InvalidScenario(
                f"{where}.{unknown[0]}", "unknown field", hint="trace fields are " + ", ".join(_TRACE_FIELDS)
            )
        for key in ("arrival", "duration"):
            if key not in row:
                raise InvalidScenario(f"{where}.{key}", "is required")
        arrival = parse_duration(row["arrival"], f"{where}.arrival", allow_zero=True)
        duration = parse_duration(row["duration"], f"{where}.duration")
        profile, label = resolve_profile(
            fleet_models,
            profile=row.get("profile"),
            queue=row.get("queue"),
            model=row.get("model"),
            path=where,
            fractional={k: row.get(k) or None for k in ("fraction", "gpu_memory", "metagpu")},
        )
        priority = _to_whole_number(row.get("priority", 0), f"{where}.priority")
        count = _to_whole_number(row.get("count", 1), f"{where}.count")
        if count < 1:
            raise InvalidScenario(f"{where}.count", f"must be >= 1, got {count}")
        if count > _limits.MAX_POD_DEVICES:
            raise InvalidScenario(
                f"{where}.count",
                f"is more than the limit of {_limits.MAX_POD_DEVICES:,} devices per pod",
            )
        name = str(row.get("name") or "")
        raw.append((arrival, index, name, label, count, max(1.0, duration), priority, profile))
    raw.sort(key=lambda r: (r[0], r[1]))
    pods = []
    names: set[str] = set()
    for i, (arrival, _index, name, label, count, duration, priority, profile) in enumerate(raw):
        pod_name = name or f"pod-{i:07d}-{label.replace('+', '-')}"
        if pod_name in names:
            raise InvalidScenario(
                str(path), f"two pods are called {pod_name!r}", hint="pod names must be unique"
            )
        names.add(pod_name)
        pods.append(PodSpec(i, pod_name, arrival, profile, count, duration, priority))
    return tuple(pods)


def write_trace_csv(pods: Iterable[PodSpec], path: Path) -> None:
    """Write pods as a CSV trace that :func:`read_trace` reads back to the same pods."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["arrival", "profile", "duration", "priority", "count", "name"])
        for p in pods:
            writer.writerow([p.arrival, p.profile, p.duration, p.priority, p.count, p.name])
