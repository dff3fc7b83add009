"""Simulation scenarios: the YAML format, read into frozen dataclasses with errors that name the path.

A scenario says which fleet to simulate (node groups of one GPU model each), which workload
(Poisson streams of pods with a profile mix and lognormal durations, or a trace file), which
policies to compare, the reconfiguration time model and the scheduler's retry interval. Every
field is checked here, once; a bad one raises :class:`InvalidScenario` naming its YAML path
(``workload.streams[0].mix[2].queue: ...``), which the CLI turns into exit code 2.

See docs/simulate.md for the format with examples.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cdmo.api import MAX_GPUS_PER_NODE
from cdmo.config import MAX_SECONDS, OperatorConfig
from cdmo.errors import CdmoError, InvalidInput
from cdmo.inputfile import SCENARIO, TRACE, check_input_file, read_input_text
from cdmo.mig.catalog import GpuModel, find_model, model_keys
from cdmo.mig.layouts import named_layouts
from cdmo.mig.resources import QUEUE_SLICES, queue_profile
from cdmo.yamlload import describe_error, load_yaml

#: The static layouts the issue names; any other mig-parted name of every fleet model works too.
STATIC_LAYOUTS = ("all-1g", "all-balanced", "all-3g", "all-7g")
DEFAULT_POLICIES = ("dynamic", "first-fit", *(f"static:{name}" for name in STATIC_LAYOUTS))
REFRESH_KINDS = ("builtin", "sighup", "pod-restart")


#: What one ``cdmo simulate`` run may ask for. large.yaml (4,000 GPUs, about 193,000 pods in a
#: day) takes about a minute and a few hundred MiB; these limits keep a run within tens of
#: minutes and a few GiB, and turn a typo such as ``count: 100000000`` into one clear message
#: instead of a run that ends when memory does.
MAX_GPUS = 100_000
MAX_NODES = 20_000
MAX_PODS = 2_000_000
MAX_DURATION_SECONDS = 31 * 24 * 3600.0
#: Any time a scenario or trace gives (a pod's duration, a stream's start, a time-model step):
#: the settings' own bound, about 31 years. Far beyond any run, and small enough that summing a
#: run's work (offered load: slices x count x duration of up to MAX_PODS pods) stays a finite
#: number in the JSON.
MAX_TIME_SECONDS = MAX_SECONDS
#: The scheduler's retry, the batch windows and first-fit's requeue are intervals the engine
#: waits again and again; below 10 ms they only multiply events (a 1 us requeue turns a one-hour
#: run into minutes) and change no decision a cluster could make. The defaults are 1 to 60 s.
MIN_INTERVAL_SECONDS = 0.01
#: A lognormal duration's sigma: at 10 the 99th percentile is already 10^10 times the median;
#: real job durations are about 0.5 to 2. Far above, drawing a duration overflows a float.
MAX_SIGMA = 10.0
#: Devices one pod asks for, all on one node: no node here holds more than 64 GPUs of at most
#: 7 instances each, so a pod beyond a few hundred can never start; this bound only stops typos
#: (count: 10**400) before they overflow the offered-load sum.
MAX_POD_DEVICES = 10_000


class InvalidScenario(InvalidInput):
    """A scenario file that does not follow the format; ``path`` is the YAML path of the bad field."""

    def __init__(self, path: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path
        self.detail = message


# --- dataclasses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeGroup:
    """``count`` nodes named ``<name>-000`` ... with ``gpus`` GPUs of ``model`` each."""

    name: str
    model: GpuModel
    count: int
    gpus: int


@dataclass(frozen=True)
class Lognormal:
    """A lognormal duration: ``median`` seconds, ``sigma`` of the underlying normal, capped at ``max``."""

    median: float
    sigma: float
    max: float | None = None


@dataclass(frozen=True)
class MixItem:
    """One kind of pod in a stream's mix; ``profile`` is already resolved from a queue name."""

    profile: str
    weight: float
    count: int
    duration: Lognormal
    priority: int
    label: str  # the queue or profile as written, for pod names


@dataclass(frozen=True)
class Stream:
    """Poisson arrivals at ``rate_per_hour`` between ``start`` and ``end`` seconds."""

    name: str
    start: float
    end: float | None  # None: until the end of the simulation
    rate_per_hour: float
    mix: tuple[MixItem, ...]


@dataclass(frozen=True)
class TimeModel:
    """Seconds that reconfiguration takes (defaults: about what NVML and the device plugin take)."""

    gi_create_seconds: float = 1.0
    gi_destroy_seconds: float = 1.0
    sighup_refresh_seconds: float = 5.0
    pod_restart_seconds: float = 30.0
    #: cdmo's built-in device plugin: ListAndWatch sends the new list during the pass; the
    #: kubelet's node status update brings it to the scheduler (about 0.2 s).
    builtin_advertise_seconds: float = 0.2

    def refresh_seconds(self, kind: str) -> float:
        if kind == "builtin":
            return self.builtin_advertise_seconds
        return self.sighup_refresh_seconds if kind == "sighup" else self.pod_restart_seconds


@dataclass(frozen=True)
class BatchSettings:
    """A policy's batch window and device-plugin refresh: plan after ``idle`` quiet seconds, at most ``max``."""

    batch_idle_seconds: float
    batch_max_seconds: float
    refresh: str
    #: first-fit only: nos requeues a pod reconcile this long while a node has not reported its plan.
    requeue_seconds: float = 10.0


def default_dynamic_settings() -> BatchSettings:
    op = OperatorConfig()
    return BatchSettings(op.batch_idle_seconds, op.batch_max_seconds, "builtin")


def default_first_fit_settings() -> BatchSettings:
    # nos' chart defaults: batchWindowIdleSeconds 10, batchWindowTimeoutSeconds 60; its MIG agent
    # deletes the device-plugin pod after every change (migagent/actuator.go restartNvidiaDevicePlugin).
    return BatchSettings(10.0, 60.0, "pod-restart", 10.0)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int
    duration: float
    fleet: tuple[NodeGroup, ...]
    streams: tuple[Stream, ...]
    trace: Path | None
    policies: tuple[str, ...]
    time_model: TimeModel = field(default_factory=TimeModel)
    retry_seconds: float = 1.0
    dynamic: BatchSettings = field(default_factory=default_dynamic_settings)
    first_fit: BatchSettings = field(default_factory=default_first_fit_settings)
    source: Path | None = None

    @property
    def models(self) -> tuple[GpuModel, ...]:
        seen: dict[str, GpuModel] = {}
        for g in self.fleet:
            seen.setdefault(g.model.key, g.model)
        return tuple(seen[k] for k in sorted(seen))

    @property
    def node_count(self) -> int:
        return sum(g.count for g in self.fleet)

    @property
    def gpu_count(self) -> int:
        return sum(g.count * g.gpus for g in self.fleet)


# --- small parsers ------------------------------------------------------------------------------

# [0-9], not \d: \d also matches other scripts' digits, which float() reads ("\u0663" as 3).
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(s|sec|m|min|h|d)?\s*$")
_UNIT = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any, path: str, *, allow_zero: bool = False, minimum: float | None = None) -> float:
    """Seconds from a number or a string like ``90``, ``30s``, ``10m``, ``2h``, ``1d``.

    Finite and at most MAX_TIME_SECONDS (an infinite duration would reach the JSON output as
    ``Infinity``, which is not JSON); at least ``minimum`` when given.
    """
    if isinstance(value, bool):
        raise InvalidScenario(path, f"{value!r} is not a duration", hint="write seconds or 30s, 10m, 2h, 1d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m[1]) * _UNIT[m[2]]
    else:
        raise InvalidScenario(path, f"{value!r} is not a duration", hint="write seconds or 30s, 10m, 2h, 1d")
    if seconds < 0 or (seconds == 0 and not allow_zero) or seconds != seconds:
        raise InvalidScenario(path, f"{value!r} must be {'>= 0' if allow_zero else '> 0'}")
    if math.isinf(seconds):
        raise InvalidScenario(path, f"{value!r} must be finite", hint="write seconds or 30s, 10m, 2h, 1d")
    if seconds > MAX_TIME_SECONDS:
        raise InvalidScenario(
            path, f"{_short(value)} is more than the limit of {MAX_TIME_SECONDS:g} s (about 31 years)"
        )
    if minimum is not None and seconds < minimum:
        raise InvalidScenario(
            path,
            f"{value!r} must be at least {minimum:g} s",
            hint="shorter intervals only multiply simulated events; see the bounds in docs/simulate.md",
        )
    return seconds


def _short(value: Any) -> str:
    """``value`` for a message, cut short: a typo can be a number of hundreds of digits."""
    text = (
        repr(value)
        if not isinstance(value, int) or abs(value) < 10**30
        else f"a {len(str(value))}-digit number"
    )
    return text if len(text) <= 40 else text[:37] + "..."


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidScenario(path, f"expected a mapping, got {_kind(value)}")
    return value


def _sequence(value: Any, path: str, *, min_len: int = 1) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise InvalidScenario(path, f"expected a list, got {_kind(value)}")
    if len(value) < min_len:
        raise InvalidScenario(path, f"needs at least {min_len} item{'s' if min_len > 1 else ''}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _number(
    value: Any,
    path: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidScenario(path, f"expected a number, got {_kind(value)} {_short(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int of hundreds of digits: no float holds it
        raise InvalidScenario(path, f"{_short(value)} is too large a number") from None
    if positive and number <= 0:
        raise InvalidScenario(path, f"must be > 0, got {_short(value)}")
    if minimum is not None and number < minimum:
        raise InvalidScenario(path, f"must be >= {minimum}, got {_short(value)}")
    # inf would reach random.choices (which refuses it) or the JSON output (where it is not JSON).
    if math.isinf(number):
        raise InvalidScenario(path, f"must be finite, got {_short(value)}")
    if maximum is not None and number > maximum:
        raise InvalidScenario(path, f"must be at most {maximum:g}, got {_short(value)}")
    return number


def _integer(
    value: Any, path: str, *, minimum: int | None = None, maximum: int | None = None, why: str = ""
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidScenario(path, f"expected a whole number, got {_kind(value)} {_short(value)}")
    if minimum is not None and value < minimum:
        raise InvalidScenario(path, f"must be >= {minimum}, got {_short(value)}")
    if maximum is not None and value > maximum:
        raise InvalidScenario(path, f"{_short(value)} is more than the limit of {maximum:,}{why}")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidScenario(path, f"expected a non-empty string, got {_kind(value)}")
    return value.strip()


def _no_extra(data: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
    extra = sorted(str(k) for k in data if k not in allowed)
    if extra:
        where = f"{path}.{extra[0]}" if path else extra[0]
        raise InvalidScenario(where, "unknown field", hint="known fields here are " + ", ".join(allowed))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- fleet, workload, policies ---------------------------------------------------------------------


def _parse_model(value: Any, path: str) -> GpuModel:
    text = _string(value, path)
    model = find_model(text)
    if model is None:
        raise InvalidScenario(
            path, f"unknown GPU model {text!r}", hint="known models are " + ", ".join(model_keys())
        )
    return model


def _parse_fleet(raw: Any, path: str) -> tuple[NodeGroup, ...]:
    groups = []
    names: set[str] = set()
    for i, item in enumerate(_sequence(raw, path)):
        p = f"{path}[{i}]"
        data = _mapping(item, p)
        _no_extra(data, ("name", "model", "count", "gpus"), p)
        for key in ("model", "count", "gpus"):
            if key not in data:
                raise InvalidScenario(_join(p, key), "is required")
        model = _parse_model(data["model"], _join(p, "model"))
        name = _string(data.get("name", model.key), _join(p, "name"))
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
            raise InvalidScenario(
                _join(p, "name"), f"{name!r} is not a valid node-name prefix (lower-case, digits, -)"
            )
        if name in names:
            raise InvalidScenario(_join(p, "name"), f"two node groups are called {name!r}; give each a name")
        names.add(name)
        groups.append(
            NodeGroup(
                name=name,
                model=model,
                count=_integer(data["count"], _join(p, "count"), minimum=1),
                gpus=_integer(data["gpus"], _join(p, "gpus"), minimum=1),
            )
        )
    return tuple(groups)


#: Fractional asks a mix item or trace row may give instead of a profile or queue, as the
#: webhook would translate them (docs/coming-from-fractions.md): key -> what it is.
FRACTIONAL_KEYS = ("fraction", "gpu_memory", "metagpu")


def _model_of_fleet(fleet_models: Sequence[GpuModel], model: Any, path: str) -> GpuModel:
    """The GPU model ``model`` names, which must be one of the fleet's: a queue or fractional ask
    resolved on another model gives a profile no node may offer (and nothing to measure it by)."""
    gpu_model = _parse_model(model, path)
    if gpu_model.key not in {m.key for m in fleet_models}:
        raise InvalidScenario(
            path,
            f"{gpu_model.key} is not in the fleet",
            hint="the fleet's models are " + ", ".join(m.key for m in fleet_models),
        )
    return gpu_model


def _fleet_model(fleet_models: Sequence[GpuModel], model: Any, path: str, what: str) -> GpuModel:
    if model is not None:
        return _model_of_fleet(fleet_models, model, _join(path, "model"))
    if len(fleet_models) == 1:
        return fleet_models[0]
    raise InvalidScenario(
        path,
        f"{what} needs a model in a fleet of several GPU models",
        hint="add model: " + " or ".join(m.key for m in fleet_models),
    )


def _fractional_profile(
    fleet_models: Sequence[GpuModel], asks: Mapping[str, Any], model: Any, path: str
) -> tuple[str, str]:
    """(profile, label) of a fractional ask, by the webhook's rule (cdmo.translate)."""
    from fractions import Fraction

    from cdmo.translate.asks import FRACTION_HINT, MEMORY_HINT, METAGPU_HINT, InvalidAsk, parse_number
    from cdmo.translate.rule import DEFAULT_RULE, Need, NoFit, choose_profile

    ((key, raw),) = asks.items()
    where = _join(path, key)
    hint = {"fraction": FRACTION_HINT, "gpu_memory": MEMORY_HINT, "metagpu": METAGPU_HINT}[key]
    try:
        number = parse_number(raw, key, hint)  # the webhook's reading and hints, each in its unit
    except InvalidAsk as exc:
        raise InvalidScenario(where, exc.message, hint=exc.hint) from None
    if key == "gpu_memory":
        if number.denominator != 1:
            raise InvalidScenario(where, f"{raw!r} is not a whole number of MiB")
        need = Need(memory_mib=int(number))
    else:
        fraction = number if key == "fraction" else number / DEFAULT_RULE.metagpu_units_per_gpu
        if fraction > 1:
            raise InvalidScenario(
                where, f"{raw!r} is more than one GPU", hint="for whole GPUs give fraction: 1 and count: N"
            )
        need = Need(fraction=Fraction(fraction))
    gpu_model = _fleet_model(fleet_models, model, path, f"{key} {raw}")
    result = choose_profile(gpu_model, need)
    if isinstance(result, NoFit):
        raise InvalidScenario(where, result.reason)
    return result.profile, f"{key}-{raw}"


def resolve_profile(
    fleet_models: Sequence[GpuModel],
    *,
    profile: Any,
    queue: Any,
    model: Any,
    path: str,
    fractional: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """(profile, label) of a mix item or trace row: a profile name, a queue on a model of the
    fleet, or a fractional ask (``fraction: 0.25``, ``gpu_memory: 12000``, ``metagpu: 25``)."""
    asks = {k: v for k, v in (fractional or {}).items() if v is not None}
    given = [k for k, v in (("profile", profile), ("queue", queue)) if v is not None] + list(asks)
    if len(given) != 1:
        raise InvalidScenario(
            path,
            "give exactly one of profile, queue, "
            + ", ".join(FRACTIONAL_KEYS)
            + (f" (got {', '.join(given)})" if given else ""),
        )
    if asks:
        return _fractional_profile(fleet_models, asks, model, path)
    if profile is not None:
        name = _string(profile, _join(path, "profile"))
        if name.startswith("nvidia.com/mig-"):
            from cdmo.mig.resources import profile_from_resource

            name = profile_from_resource(name)
        if not any(m.has_profile(name) for m in fleet_models):
            offered = sorted({p.name for m in fleet_models for p in m.base_profiles})
            raise InvalidScenario(
                _join(path, "profile"),
                f"no GPU model of the fleet has profile {name!r}",
                hint="the fleet offers " + ", ".join(offered),
            )
        return name, name
    qname = _string(queue, _join(path, "queue"))
    if qname not in QUEUE_SLICES:
        raise InvalidScenario(
            _join(path, "queue"), f"unknown queue {qname!r}", hint="queues are " + ", ".join(QUEUE_SLICES)
        )
    if model is not None:
        gpu_model = _model_of_fleet(fleet_models, model, _join(path, "model"))
    elif len(fleet_models) == 1:
        gpu_model = fleet_models[0]
    else:
        raise InvalidScenario(
            path,
            f"queue {qname} needs a model in a fleet of several GPU models",
            hint="add model: " + " or ".join(m.key for m in fleet_models),
        )
    try:
        return queue_profile(gpu_model, qname), qname
    except CdmoError as exc:
        raise InvalidScenario(_join(path, "queue"), exc.message) from None


def _parse_lognormal(raw: Any, path: str) -> Lognormal:
    if isinstance(raw, Mapping):
        _no_extra(raw, ("median", "sigma", "max"), path)
        if "median" not in raw:
            raise InvalidScenario(_join(path, "median"), "is required")
        median = parse_duration(raw["median"], _join(path, "median"))
        sigma = _number(raw.get("sigma", 0.0), _join(path, "sigma"), minimum=0.0, maximum=MAX_SIGMA)
        cap = parse_duration(raw["max"], _join(path, "max")) if raw.get("max") is not None else None
        return Lognormal(median, sigma, cap)
    return Lognormal(parse_duration(raw, path), 0.0)


def _parse_mix(raw: Any, path: str, fleet_models: Sequence[GpuModel]) -> tuple[MixItem, ...]:
    items = []
    for i, item in enumerate(_sequence(raw, path)):
        p = f"{path}[{i}]"
        data = _mapping(item, p)
        _no_extra(
            data,
            ("profile", "queue", *FRACTIONAL_KEYS, "model", "weight", "count", "duration", "priority"),
            p,
        )
        profile, label = resolve_profile(
            fleet_models,
            profile=data.get("profile"),
            queue=data.get("queue"),
            model=data.get("model"),
            path=p,
            fractional={k: data.get(k) for k in FRACTIONAL_KEYS},
        )
        if "duration" not in data:
            raise InvalidScenario(
                _join(p, "duration"), "is required", hint="e.g. duration: {median: 30m, sigma: 1.0}"
            )
        items.append(
            MixItem(
                profile=profile,
                weight=_number(data.get("weight", 1), _join(p, "weight"), positive=True),
                count=_integer(
                    data.get("count", 1),
                    _join(p, "count"),
                    minimum=1,
                    maximum=MAX_POD_DEVICES,
                    why=" devices per pod",
                ),
                duration=_parse_lognormal(data["duration"], _join(p, "duration")),
                priority=_integer(data.get("priority", 0), _join(p, "priority")),
                label=label,
            )
        )
    # Each weight is finite, but random.choices refuses weights whose total is not.
    if not math.isfinite(sum(m.weight for m in items)):
        raise InvalidScenario(path, "the weights add up to more than a number holds", hint="scale them down")
    return tuple(items)


def _parse_stream(raw: Any, path: str, index: int, fleet_models: Sequence[GpuModel]) -> Stream:
    data = _mapping(raw, path)
    _no_extra(data, ("name", "start", "end", "rate_per_hour", "mix"), path)
    for key in ("rate_per_hour", "mix"):
        if key not in data:
            raise InvalidScenario(_join(path, key), "is required")
    start = parse_duration(data.get("start", 0), _join(path, "start"), allow_zero=True)
    end = parse_duration(data["end"], _join(path, "end")) if data.get("end") is not None else None
    if end is not None and end <= start:
        raise InvalidScenario(_join(path, "end"), f"must be after start ({start:g} s)")
    return Stream(
        name=_string(data.get("name", f"s{index}"), _join(path, "name")),
        start=start,
        end=end,
        rate_per_hour=_number(data["rate_per_hour"], _join(path, "rate_per_hour"), positive=True),
        mix=_parse_mix(data["mix"], _join(path, "mix"), fleet_models),
    )


def _parse_workload(
    raw: Any, path: str, fleet_models: Sequence[GpuModel], base_dir: Path
) -> tuple[tuple[Stream, ...], Path | None]:
    data = _mapping(raw, path)
    _no_extra(data, ("streams", "rate_per_hour", "mix", "trace"), path)
    kinds = [k for k in ("streams", "trace", "mix") if k in data]
    if len(kinds) != 1:
        raise InvalidScenario(path, "give exactly one of streams, trace, or rate_per_hour with mix")
    if "trace" in data:
        trace = base_dir / _string(data["trace"], _join(path, "trace"))
        try:  # a missing path, a directory, /dev/zero or a FIFO: said here, with the scenario
            check_input_file(trace, TRACE)
        except InvalidInput as exc:
            raise InvalidScenario(_join(path, "trace"), exc.message, hint=exc.hint) from None
        from cdmo.sim.workload import check_trace_rows  # workload imports this module

        # A trace past the pod limit is refused here, with the scenario, before a worker starts.
        try:
            check_trace_rows(trace)
        except InvalidScenario as exc:
            raise InvalidScenario(_join(path, "trace"), exc.message, hint=exc.hint) from None
        return (), trace
    if "mix" in data:
        return (
            _parse_stream({k: data[k] for k in ("rate_per_hour", "mix") if k in data}, path, 0, fleet_models),
        ), None
    streams = tuple(
        _parse_stream(s, f"{path}.streams[{i}]", i, fleet_models)
        for i, s in enumerate(_sequence(data["streams"], _join(path, "streams")))
    )
    names = [s.name for s in streams]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidScenario(_join(path, "streams"), f"two streams are called {dupes[0]!r}")
    return streams, None


def check_policy(name: str, fleet_models: Sequence[GpuModel], path: str = "policies") -> str:
    """The policy name if it can run on the fleet; raises InvalidScenario saying why not."""
    if name in ("dynamic", "dynamic-sighup", "first-fit"):
        return name
    if name.startswith("static:"):
        layout = name.removeprefix("static:")
        for m in fleet_models:
            if layout not in named_layouts(m):
                raise InvalidScenario(
                    path,
                    f"{name}: {m.key} has no named layout {layout!r}",
                    hint="its named layouts are " + ", ".join(named_layouts(m)),
                )
        return name
    raise InvalidScenario(
        path,
        f"unknown policy {name!r}",
        hint="policies are dynamic, dynamic-sighup, first-fit and static:<layout> ("
        + ", ".join(STATIC_LAYOUTS)
        + ")",
    )


def check_policies(names: Sequence[str], fleet_models: Sequence[GpuModel], path: str) -> tuple[str, ...]:
    """``names`` if each can run on the fleet and none is given twice (a policy's results are
    keyed by its name, so a second run of it has nowhere to go); ``path`` names the list."""
    checked: list[str] = []
    for i, name in enumerate(names):
        where = f"{path}[{i}]"
        check_policy(name, fleet_models, where)
        if name in checked:
            raise InvalidScenario(where, f"policy {name} is listed twice", hint="give each policy once")
        checked.append(name)
    return tuple(checked)


def _parse_policies(raw: Any, path: str, fleet_models: Sequence[GpuModel]) -> tuple[str, ...]:
    names = [_string(item, f"{path}[{i}]") for i, item in enumerate(_sequence(raw, path))]
    return check_policies(names, fleet_models, path)


def _parse_time_model(raw: Any, path: str) -> TimeModel:
    data = _mapping(raw, path)
    names = (
        "gi_create_seconds",
        "gi_destroy_seconds",
        "sighup_refresh_seconds",
        "pod_restart_seconds",
        "builtin_advertise_seconds",
    )
    _no_extra(data, names, path)
    defaults = TimeModel()
    return TimeModel(
        **{
            n: parse_duration(data[n], _join(path, n), allow_zero=True) if n in data else getattr(defaults, n)
            for n in names
        }
    )


def _parse_batch(raw: Any, path: str, defaults: BatchSettings, *, requeue: bool) -> BatchSettings:
    data = _mapping(raw, path)
    allowed = ["batch_idle_seconds", "batch_max_seconds", "refresh"] + (
        ["requeue_seconds"] if requeue else []
    )
    _no_extra(data, allowed, path)
    refresh = data.get("refresh", defaults.refresh)
    if refresh not in REFRESH_KINDS:
        raise InvalidScenario(
            _join(path, "refresh"), f"unknown refresh {refresh!r}", hint="use builtin, sighup or pod-restart"
        )
    idle = parse_duration(
        data.get("batch_idle_seconds", defaults.batch_idle_seconds),
        _join(path, "batch_idle_seconds"),
        minimum=MIN_INTERVAL_SECONDS,
    )
    most = parse_duration(
        data.get("batch_max_seconds", defaults.batch_max_seconds),
        _join(path, "batch_max_seconds"),
        minimum=MIN_INTERVAL_SECONDS,
    )
    if most < idle:
        raise InvalidScenario(_join(path, "batch_max_seconds"), f"must be >= batch_idle_seconds ({idle:g})")
    return BatchSettings(
        batch_idle_seconds=idle,
        batch_max_seconds=most,
        refresh=refresh,
        requeue_seconds=parse_duration(
            data.get("requeue_seconds", defaults.requeue_seconds),
            _join(path, "requeue_seconds"),
            minimum=MIN_INTERVAL_SECONDS,
        ),
    )


_TOP_FIELDS = (
    "name",
    "description",
    "seed",
    "duration",
    "fleet",
    "workload",
    "policies",
    "time_model",
    "scheduler",
    "dynamic",
    "first_fit",
)


def parse_scenario(data: Any, *, base_dir: Path | None = None, source: Path | None = None) -> Scenario:
    """A Scenario from parsed YAML; raises InvalidScenario naming the path of the first bad field."""
    top = _mapping(data, "")
    _no_extra(top, _TOP_FIELDS, "")
    for key in ("fleet", "workload", "duration"):
        if key not in top:
            raise InvalidScenario(key, "is required", hint="see docs/simulate.md for the scenario format")
    fleet = _parse_fleet(top["fleet"], "fleet")
    models = sorted({g.model.key: g.model for g in fleet}.values(), key=lambda m: m.key)
    streams, trace = _parse_workload(top["workload"], "workload", models, base_dir or Path("."))
    scheduler = _mapping(top.get("scheduler", {}), "scheduler")
    _no_extra(scheduler, ("retry_seconds",), "scheduler")
    scenario = Scenario(
        name=_string(top.get("name", source.stem if source else "scenario"), "name"),
        description=str(top.get("description", "")).strip(),
        seed=_integer(top.get("seed", 0), "seed", minimum=0),
        duration=parse_duration(top["duration"], "duration"),
        fleet=fleet,
        streams=streams,
        trace=trace,
        policies=_parse_policies(top.get("policies", list(DEFAULT_POLICIES)), "policies", models),
        time_model=_parse_time_model(top.get("time_model", {}), "time_model"),
        retry_seconds=parse_duration(
            scheduler.get("retry_seconds", 1.0), "scheduler.retry_seconds", minimum=MIN_INTERVAL_SECONDS
        ),
        dynamic=_parse_batch(top.get("dynamic", {}), "dynamic", default_dynamic_settings(), requeue=False),
        first_fit=_parse_batch(
            top.get("first_fit", {}), "first_fit", default_first_fit_settings(), requeue=True
        ),
        source=source,
    )
    check_scale(scenario)
    # After check_scale, so that a fleet past the run's limits in all is told that first.
    for i, group in enumerate(fleet):
        _integer(
            group.gpus,
            f"fleet[{i}].gpus",
            maximum=MAX_GPUS_PER_NODE,
            why=" GPUs on one node (what the planner and node agent accept)",
        )
    return scenario


def expected_pods(scenario: Scenario, duration: float | None = None) -> float:
    """How many pods the streams bring on average before ``duration`` (rate x window)."""
    horizon = scenario.duration if duration is None else duration
    total = 0.0
    for stream in scenario.streams:
        end = horizon if stream.end is None else min(stream.end, horizon)
        total += max(0.0, end - stream.start) / 3600.0 * stream.rate_per_hour
    return total


def check_scale(scenario: Scenario, duration: float | None = None, duration_path: str = "duration") -> None:
    """Refuse a scenario beyond the stated limits (MAX_*), before any memory is spent on it.

    ``duration`` overrides the scenario's (``--duration``, named by ``duration_path``).
    """
    horizon = scenario.duration if duration is None else duration
    hint = "see the limits in docs/simulate.md; split the fleet or shorten the run"
    if horizon > MAX_DURATION_SECONDS:
        raise InvalidScenario(
            duration_path,
            f"{horizon:g} s is more than the limit of {MAX_DURATION_SECONDS:g} s (31 days)",
            hint=hint,
        )
    if scenario.node_count > MAX_NODES:
        raise InvalidScenario(
            "fleet", f"{scenario.node_count:,} nodes are more than the limit of {MAX_NODES:,}", hint=hint
        )
    if scenario.gpu_count > MAX_GPUS:
        raise InvalidScenario(
            "fleet", f"{scenario.gpu_count:,} GPUs are more than the limit of {MAX_GPUS:,}", hint=hint
        )
    pods = expected_pods(scenario, horizon)
    if pods > MAX_PODS:
        raise InvalidScenario(
            "workload",
            f"the streams bring about {pods:.3g} pods in {horizon:g} s, more than the limit of {MAX_PODS:,}",
            hint="lower rate_per_hour or the duration; " + hint,
        )


def read_text_file(path: Path, what: str) -> str:
    """The text of a ``what`` file ("scenario" or "trace"), read with that kind's bound
    (cdmo.inputfile); a missing path, a directory, a pipe or device, a file past the bound or one
    that is not UTF-8 text (a binary, an image) is one clear InvalidScenario."""
    try:
        return read_input_text(path, SCENARIO if what == "scenario" else TRACE)
    except InvalidInput as exc:
        raise InvalidScenario("", exc.message, hint=exc.hint) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; raises InvalidScenario (exit 2 at the CLI) for any bad input."""
    p = Path(path)
    text = read_text_file(p, "scenario")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise InvalidScenario("", f"{p} is not valid YAML: {describe_error(exc)}") from None
    except ValueError as exc:  # int() of a scalar of thousands of digits, past Python's limit
        raise InvalidScenario("", f"{p} is not valid YAML: {str(exc).split(';')[0]}") from None
    if data is None:
        raise InvalidScenario("", f"{p} is empty", hint="see docs/simulate.md for the scenario format")
    try:
        return parse_scenario(data, base_dir=p.parent, source=p)
    except InvalidScenario as exc:
        raise InvalidScenario(f"{p}: {exc.path}" if exc.path else str(p), exc.detail, hint=exc.hint) from None
