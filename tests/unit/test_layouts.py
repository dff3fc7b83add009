"""The hardware rules, pinned: what an 8-slot GPU can and cannot hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdmo.errors import InvalidInput, InvalidLayout
from cdmo.mig.catalog import all_models, get_model
from cdmo.mig.layouts import (
    Instance,
    check_layout,
    enumerate_layouts,
    feasible_multisets,
    format_layout,
    free_placements,
    layout_candidates,
    maximal_multisets,
    named_layout,
    named_layouts,
    pack_layout,
    parse_layout,
    valid_layout_bits,
    validate_layout,
)

EIGHT_SLOT = ["a100-40gb", "a100-80gb", "h100-80gb", "h100-94gb", "gh200-96gb", "h200-141gb", "b200-180gb"]


def _base(model_key: str, slices: int, size: int | None = None) -> str:
    model = get_model(model_key)
    return next(
        p.name
        for p in model.base_profiles
        if p.compute_slices == slices and (size is None or p.placement_size == size)
    )


@pytest.mark.parametrize("key", EIGHT_SLOT)
def test_4g_plus_3g_is_valid_only_as_4g_at_0_and_3g_at_4(key: str) -> None:
    model = get_model(key)
    g4, g3 = _base(key, 4), _base(key, 3)
    assert validate_layout(model, [Instance(g4, 0), Instance(g3, 4)]) == []
    assert validate_layout(model, [Instance(g4, 0), Instance(g3, 0)])


@pytest.mark.parametrize("key", EIGHT_SLOT)
def test_3g_plus_3g_valid_4g_plus_4g_not(key: str) -> None:
    model = get_model(key)
    g3, g4 = _base(key, 3), _base(key, 4)
    assert validate_layout(model, [Instance(g3, 0), Instance(g3, 4)]) == []
    assert validate_layout(model, [Instance(g4, 0), Instance(g4, 4)])  # no legal start at 4
    assert validate_layout(model, [Instance(g4, 0), Instance(g4, 0)])


@pytest.mark.parametrize("key", EIGHT_SLOT)
def test_nothing_fits_beside_7g(key: str) -> None:
    model = get_model(key)
    g7 = _base(key, 7)
    assert free_placements(model, [Instance(g7, 0)]) == ()
    for p in model.profiles:
        for s in p.starts:
            if p.name != g7:
                assert validate_layout(model, [Instance(g7, 0), Instance(p.name, s)])


@pytest.mark.parametrize("key", EIGHT_SLOT)
def test_double_memory_1g_starts_only_at_0_2_4_6_and_2g_never_at_6(key: str) -> None:
    model = get_model(key)
    double = _base(key, 1, size=2)
    assert model.profile(double).starts == (0, 2, 4, 6)
    for start in (1, 3, 5, 7):
        problems = validate_layout(model, [Instance(double, start)])
        assert problems and "legal starts are 0, 2, 4, 6" in problems[0]
    g2 = _base(key, 2)
    assert model.profile(g2).starts == (0, 2, 4)
    assert "legal starts are 0, 2, 4" in validate_layout(model, [Instance(g2, 6)])[0]


@pytest.mark.parametrize("key", EIGHT_SLOT)
def test_at_most_one_media_extension_instance(key: str) -> None:
    model = get_model(key)
    me = next(p.name for p in model.profiles if p.name.endswith("+me"))
    assert validate_layout(model, [Instance(me, 0)]) == []
    problems = validate_layout(model, [Instance(me, 0), Instance(me, 1)])
    assert any("exclusive group media-ext" in p for p in problems)


@pytest.mark.parametrize(
    ("key", "maximal", "multisets"), [(k, 28, 77) for k in EIGHT_SLOT] + [("a30-24gb", 4, 9)]
)
def test_maximal_layouts_match_the_shared_enumeration(key: str, maximal: int, multisets: int) -> None:
    model = get_model(key)
    assert len(feasible_multisets(model)) == multisets
    assert len(maximal_multisets(model)) == maximal


def test_maximal_sets_equal_the_team_file() -> None:
    text = (Path(__file__).parents[1] / "data" / "mig-maximal-layouts.txt").read_text()
    sections = re.split(r"^== ", text, flags=re.M)[1:]
    checked = 0
    for section in sections:
        head, *lines = section.strip().splitlines()
        key = head.split(":")[0]
        expected = set()
        for line in lines:
            parts = [p.strip() for p in line.split("+")]
            expected.add(tuple(sorted((p.split("x", 1)[1], int(p.split("x", 1)[0])) for p in parts)))
        assert set(maximal_multisets(get_model(key))) == expected, key
        checked += 1
    assert checked == len(all_models())


def test_compute_slice_budget_is_checked() -> None:
    model = get_model("h100-80gb")
    problems = validate_layout(model, [Instance("7g.80gb", 0), Instance("1g.10gb", 6)])
    assert any("compute slices exceed the 7" in p for p in problems)


def test_problems_say_exactly_what_is_wrong() -> None:
    model = get_model("h100-80gb")
    problems = validate_layout(
        model,
        [Instance("9g.99gb", 0), Instance("1g.20gb", 1), Instance("3g.40gb", 0), Instance("2g.20gb", 2)],
    )
    assert problems == [
        "9g.99gb is not a MIG profile of h100-80gb; its profiles are "
        "1g.10gb, 1g.10gb+me, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb",
        "1g.20gb cannot start at 1 on h100-80gb; legal starts are 0, 2, 4, 6",
        "3g.40gb@0 overlaps 2g.20gb@2 on placement units 2-3",
    ]


def test_check_layout_raises_with_every_problem() -> None:
    with pytest.raises(InvalidLayout) as info:
        check_layout(get_model("a100-40gb"), [Instance("4g.20gb", 0), Instance("4g.20gb", 0)])
    assert len(info.value.problems) == 3  # overlap, max count, compute slices


def test_free_placements_beside_a_3g_at_4() -> None:
    model = get_model("h100-80gb")
    free = free_placements(model, [Instance("3g.40gb", 4)], include_variants=False)
    assert format_layout(free) == (
        "1g.10gb@0,1g.20gb@0,2g.20gb@0,3g.40gb@0,4g.40gb@0,1g.10gb@1,1g.10gb@2,1g.20gb@2,2g.20gb@2,1g.10gb@3"
    )


def test_free_placements_refuses_an_invalid_start() -> None:
    with pytest.raises(InvalidLayout):
        free_placements(get_model("h100-80gb"), [Instance("4g.40gb", 4)])


def test_parse_and_format_round_trip() -> None:
    layout = parse_layout(" 4g.40gb@0 , 3g.40gb@4 ")
    assert layout == (Instance("4g.40gb", 0), Instance("3g.40gb", 4))
    assert format_layout(layout) == "4g.40gb@0,3g.40gb@4"
    assert parse_layout("") == ()


@pytest.mark.parametrize("text", ["4g.40gb", "4g.40gb@x", "@0", "four@0"])
def test_parse_refuses_what_is_not_profile_at_start(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_layout(text)


def test_named_layouts_of_h100() -> None:
    model = get_model("h100-80gb")
    layouts = named_layouts(model)
    assert format_layout(layouts["all-1g"]) == ",".join(f"1g.10gb@{i}" for i in range(7))
    assert format_layout(layouts["all-1g.20gb"]) == "1g.20gb@0,1g.20gb@2,1g.20gb@4,1g.20gb@6"
    assert format_layout(layouts["all-2g"]) == "2g.20gb@0,2g.20gb@2,2g.20gb@4"
    assert format_layout(layouts["all-3g"]) == "3g.40gb@0,3g.40gb@4"
    assert format_layout(layouts["all-4g"]) == "4g.40gb@0"
    assert format_layout(layouts["all-7g"]) == "7g.80gb@0"
    assert format_layout(layouts["all-balanced"]) == "1g.10gb@0,1g.10gb@1,2g.20gb@2,3g.40gb@4"
    with pytest.raises(InvalidInput, match="all-balanced"):
        named_layout(model, "all-9g")


def test_every_named_layout_of_every_model_is_valid() -> None:
    for model in all_models():
        layouts = named_layouts(model)
        assert "all-balanced" in layouts and "all-1g" in layouts
        for lay in layouts.values():
            assert validate_layout(model, lay) == []


def test_pack_layout_finds_a_placement_or_none() -> None:
    model = get_model("h100-80gb")
    assert format_layout(pack_layout(model, {"4g.40gb": 1, "3g.40gb": 1}) or ()) == "4g.40gb@0,3g.40gb@4"
    assert pack_layout(model, {"4g.40gb": 1, "1g.20gb": 3}) is None


def test_enumeration_is_cached_and_complete_for_small_models() -> None:
    model = get_model("a30-24gb")
    assert enumerate_layouts(model) is enumerate_layouts(model)
    layouts = set(enumerate_layouts(model, include_variants=False))
    assert (Instance("4g.24gb", 0),) in layouts
    assert len(layouts) == 25


@pytest.mark.parametrize("key", [m.key for m in all_models()])
def test_every_enumerated_layout_validates(key: str) -> None:
    model = get_model(key)
    for lay in enumerate_layouts(model):
        assert validate_layout(model, lay) == []


def _layouts_by_rules(key: str, include_variants: bool) -> list[tuple[Instance, ...]]:
    """Every valid layout, each grown layout judged from scratch by validate_layout."""
    model = get_model(key)
    cands = [
        c for c in layout_candidates(model) if include_variants or not model.profile(c.profile).is_variant
    ]
    out: list[tuple[Instance, ...]] = []

    def extend(chosen: list[Instance], start: int) -> None:
        for i in range(start, len(cands)):
            grown = [*chosen, cands[i]]
            if not validate_layout(model, grown):
                out.append(tuple(grown))
                extend(grown, i + 1)

    extend([], 0)
    return sorted(out, key=lambda lay: (len(lay), [(i.start, i.profile) for i in lay]))


@pytest.mark.parametrize("key", [m.key for m in all_models()])
def test_the_incremental_enumeration_equals_judging_every_layout_by_the_rules(key: str) -> None:
    model = get_model(key)
    for variants in (True, False):
        assert list(enumerate_layouts(model, include_variants=variants)) == _layouts_by_rules(key, variants)
    index = {c: i for i, c in enumerate(layout_candidates(model))}
    bits = {sum(1 << index[i] for i in lay) for lay in enumerate_layouts(model)}
    assert valid_layout_bits(model) == bits


def _instances(draw: st.DrawFn, key: str) -> list[Instance]:
    model = get_model(key)
    pool = [Instance(p.name, s) for p in model.profiles for s in range(model.placement_axis_size)]
    pool.append(Instance("9g.99gb", 0))
    return draw(st.lists(st.sampled_from(pool), max_size=8))


@st.composite
def random_sets(draw: st.DrawFn) -> tuple[str, list[Instance]]:
    key = draw(st.sampled_from([m.key for m in all_models()]))
    return key, _instances(draw, key)


@settings(max_examples=300, deadline=None)
@given(random_sets())
def test_a_random_set_validates_or_comes_with_a_reason(case: tuple[str, list[Instance]]) -> None:
    key, instances = case
    model = get_model(key)
    problems = validate_layout(model, instances)
    enumerated = {frozenset(lay) for lay in enumerate_layouts(model)}
    as_set = frozenset(instances)
    if problems:
        assert all(isinstance(p, str) and p for p in problems)
        assert len(as_set) < len(instances) or as_set not in enumerated
    else:
        assert len(as_set) == len(instances)
        assert not instances or as_set in enumerated


def test_a_layout_longer_than_the_gpu_holds_is_one_problem() -> None:
    """Each pair of 2,000 instances was checked and named: seconds, and 100 MB of overlaps."""
    from cdmo.mig.catalog import get_model
    from cdmo.mig.layouts import Instance, validate_layout

    model = get_model("h100-80gb")
    assert validate_layout(model, [Instance("1g.10gb", 0)] * 2000) == [
        "2000 instances exceed the 7 of h100-80gb"
    ]


def test_a_start_too_long_to_read_is_bad_input() -> None:
    from cdmo.errors import InvalidInput
    from cdmo.mig.layouts import parse_layout

    with pytest.raises(InvalidInput, match="is not a placement start"):
        parse_layout("4g.40gb@" + "9" * 4301)


@pytest.mark.parametrize(
    ("text", "item"),
    [("4g.40gb@0,,3g.40gb@4", 2), ("4g.40gb@0, ,3g.40gb@4", 2), (",4g.40gb@0", 1), ("4g.40gb@0,", 2)],
    ids=["middle", "blank", "first", "last"],
)
def test_an_empty_item_of_a_layout_is_refused_by_position(text: str, item: int) -> None:
    with pytest.raises(InvalidInput, match=f"^item {item} of the layout is empty"):
        parse_layout(text)


@pytest.mark.parametrize("text", ["", "   "], ids=["empty", "blank"])
def test_an_empty_layout_is_the_empty_layout(text: str) -> None:
    assert parse_layout(text) == ()


# int() reads these as 3, 1 and 0; a start (like every number a user writes for cdmo) is 0-9 only.
NON_ASCII_DIGITS = ["\u0663", "\uff11", "\u0e50"]


@pytest.mark.parametrize("digit", NON_ASCII_DIGITS, ids=["arabic-indic", "fullwidth", "thai"])
def test_a_start_in_other_digits_is_refused(digit: str) -> None:
    with pytest.raises(InvalidInput, match="PROFILE@START"):
        parse_layout(f"1g.10gb@{digit}")


@pytest.mark.parametrize("digit", NON_ASCII_DIGITS, ids=["arabic-indic", "fullwidth", "thai"])
@pytest.mark.parametrize("field", ["index", "start"])
def test_a_layout_file_in_other_digits_is_refused(tmp_path: Path, digit: str, field: str) -> None:
    # node apply and the standalone agent read layout files as MigLayout specs: YAML reads such a
    # digit as text, and the spec wants a number.
    from cdmo.commands.node import read_layout_file

    index, start = (digit, "0") if field == "index" else ("0", digit)
    path = tmp_path / "layout.yaml"
    path.write_text(
        f"gpus:\n- index: {index}\n  instances:\n  - {{profile: 1g.10gb, start: {start}}}\n", encoding="utf-8"
    )
    with pytest.raises(InvalidLayout, match=f"{field}: must be a whole number"):
        read_layout_file(str(path))
