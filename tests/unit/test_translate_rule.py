"""The fraction/memory -> MIG profile rule, table-tested on every catalog model, plus its invariants."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdmo.mig.catalog import all_models, get_model
from cdmo.translate.rule import (
    Choice,
    Need,
    NoFit,
    Rule,
    candidate_profiles,
    choose_profile,
    profile_memory_mib,
    whole_gpu_profile,
)

FRACTIONS = ("0.0625", "0.125", "0.25", "0.375", "0.5", "0.75", "1")
#: fraction -> profile for every catalog model (the rule of issue 12, worked by hand from
#: each model's compute and memory slices).
FRACTION_TABLE = {
    "a30-24gb": ("1g.6gb", "1g.6gb", "1g.6gb", "2g.12gb", "2g.12gb", "4g.24gb", "4g.24gb"),
    "a100-40gb": ("1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb", "7g.40gb"),
    "a100-80gb": ("1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "7g.80gb"),
    "h100-80gb": ("1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "7g.80gb"),
    "h100-94gb": ("1g.12gb", "1g.12gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb", "7g.94gb"),
    "gh200-96gb": ("1g.12gb", "1g.12gb", "2g.24gb", "3g.48gb", "4g.48gb", "7g.96gb", "7g.96gb"),
    "h200-141gb": ("1g.18gb", "1g.18gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb", "7g.141gb"),
    "b200-180gb": ("1g.23gb", "1g.23gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb", "7g.180gb"),
    # 4 compute slices on a 12-unit memory axis: a quarter is one slice of each
    "rtx-pro-6000-blackwell": ("1g.24gb", "1g.24gb", "1g.24gb", "2g.48gb", "2g.48gb", "4g.96gb", "4g.96gb"),
}
MEMORIES = (2000, 12000, 30000, 150000)
#: memory ask (MiB) -> profile; None = no profile holds it
MEMORY_TABLE = {
    "a30-24gb": ("1g.6gb", "4g.24gb", None, None),  # 2g.12gb holds 11968 MiB < 12000
    "a100-40gb": ("1g.5gb", "3g.20gb", "7g.40gb", None),
    "a100-80gb": ("1g.10gb", "1g.20gb", "3g.40gb", None),
    "h100-80gb": ("1g.10gb", "1g.20gb", "3g.40gb", None),
    "h100-94gb": ("1g.12gb", "1g.24gb", "3g.47gb", None),  # 1g.12gb holds 11008 MiB
    "gh200-96gb": ("1g.12gb", "1g.24gb", "3g.48gb", None),  # 1g.12gb holds 11264 MiB
    "h200-141gb": ("1g.18gb", "1g.18gb", "1g.35gb", None),
    "b200-180gb": ("1g.23gb", "1g.23gb", "1g.45gb", "7g.180gb"),
    "rtx-pro-6000-blackwell": ("1g.24gb", "1g.24gb", "2g.48gb", None),
}


def test_tables_cover_every_catalog_model() -> None:
    keys = {m.key for m in all_models()}
    assert set(FRACTION_TABLE) == keys
    assert set(MEMORY_TABLE) == keys


@pytest.mark.parametrize(
    ("model", "fraction", "profile"),
    [(m, f, p) for m, row in FRACTION_TABLE.items() for f, p in zip(FRACTIONS, row, strict=True)],
    ids=lambda v: str(v),
)
def test_fraction_gets_the_rules_profile(model: str, fraction: str, profile: str) -> None:
    result = choose_profile(get_model(model), Need(fraction=Fraction(fraction)))
    assert isinstance(result, Choice), result
    assert (result.profile, result.count) == (profile, 1)


@pytest.mark.parametrize(
    ("model", "mib", "profile"),
    [(m, mem, p) for m, row in MEMORY_TABLE.items() for mem, p in zip(MEMORIES, row, strict=True)],
    ids=lambda v: str(v),
)
def test_memory_ask_gets_the_rules_profile(model: str, mib: int, profile: str | None) -> None:
    result = choose_profile(get_model(model), Need(memory_mib=mib))
    if profile is None:
        assert isinstance(result, NoFit)
        assert f"ask at most {result.max_memory_mib} MiB" in result.reason
    else:
        assert isinstance(result, Choice), result
        assert result.profile == profile


@pytest.mark.parametrize("count", [1, 2, 8])
def test_whole_gpus_stay_whole(count: int) -> None:
    result = choose_profile(get_model("h100-80gb"), Need(fraction=Fraction(count)))
    assert isinstance(result, Choice)
    assert (result.profile, result.count) == ("7g.80gb", count)


@pytest.mark.parametrize(
    ("fraction", "words"),
    [("1.5", "whole number"), ("0", "above 0"), ("-0.5", "above 0"), ("1000", "more than 64")],
)
def test_fractions_that_name_no_share_are_refused_with_a_reason(fraction: str, words: str) -> None:
    result = choose_profile(get_model("h100-80gb"), Need(fraction=Fraction(fraction)))
    assert isinstance(result, NoFit)
    assert words in result.reason


def test_fraction_and_memory_together_meet_both() -> None:
    # 0.125 alone is 1g.10gb; 15000 MiB needs the 2-slice 1g.20gb
    result = choose_profile(get_model("h100-80gb"), Need(fraction=Fraction("0.125"), memory_mib=15000))
    assert isinstance(result, Choice) and result.profile == "1g.20gb"


def test_a_rule_without_the_memory_share_picks_by_compute_only() -> None:
    # compute only: 0.125 of 7 compute slices is 1 -> the smallest 1-slice profile
    rule = Rule(fraction_memory=False)
    result = choose_profile(get_model("rtx-pro-6000-blackwell"), Need(fraction=Fraction("0.5")), rule)
    assert isinstance(result, Choice) and result.profile == "2g.48gb"
    result = choose_profile(
        get_model("h100-80gb"), Need(fraction=Fraction("0.25")), Rule(fraction_compute=False)
    )
    # memory only: 2 of 8 memory slices -> 1g.20gb has 2 memory slices and 1 compute slice
    assert isinstance(result, Choice) and result.profile == "1g.20gb"


def test_estimated_memory_is_a_lower_bound_from_known_profiles() -> None:
    b200 = get_model("b200-180gb")
    mib, estimated = profile_memory_mib(b200, b200.profile("7g.180gb"))
    assert estimated and mib == 8 * 22528


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(all_models()),
    fraction=st.one_of(
        st.none(), st.fractions(min_value=Fraction(1, 1000), max_value=1, max_denominator=1000)
    ),
    mib=st.one_of(st.none(), st.integers(min_value=1, max_value=200_000)),
)
def test_a_choice_never_gives_less_than_asked_and_is_the_smallest(
    model, fraction: Fraction | None, mib: int | None
) -> None:
    need = Need(fraction=fraction, memory_mib=mib)
    if fraction is None and mib is None:
        return
    result = choose_profile(model, need)

    def meets(p) -> bool:
        ok = True
        if fraction is not None and fraction < 1:
            ok &= p.compute_slices >= math.ceil(fraction * model.compute_slices_total)
            ok &= p.placement_size >= math.ceil(fraction * model.placement_axis_size)
        if mib is not None:
            ok &= profile_memory_mib(model, p)[0] >= mib
        return bool(ok)

    fitting = [p for p in candidate_profiles(model) if meets(p)]
    if fraction == 1:  # a whole GPU stays whole
        assert isinstance(result, NoFit) or result.profile == whole_gpu_profile(model).name
        return
    if isinstance(result, NoFit):
        assert fitting == [], (fitting, result)
        return
    chosen = model.profile(result.profile)
    assert not chosen.is_variant and "+" not in chosen.name
    assert meets(chosen)
    # no fitting profile has fewer compute slices, or as many and less memory
    for p in fitting:
        assert (p.compute_slices, p.placement_size) >= (chosen.compute_slices, chosen.placement_size)
