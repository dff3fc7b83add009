"""``cdmo profiles [MODEL] [--check LAYOUT] [--output table|json|yaml]``."""

from __future__ import annotations

import argparse
from typing import Any

from cdmo import exit_codes
from cdmo.errors import InvalidInput
from cdmo.mig.catalog import GpuModel, Profile, all_models, get_model
from cdmo.mig.layouts import (
    enumerate_layouts,
    format_layout,
    maximal_multisets,
    named_layouts,
    parse_layout,
    sort_layout,
    validate_layout,
)
from cdmo.output import add_output_argument, build_table, console, emit, print_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="catalog key (h100-80gb), NVML product name, GFD label or PCI device id",
    )
    parser.add_argument(
        "--check",
        metavar="LAYOUT",
        help='say whether a layout such as "4g.40gb@0,3g.40gb@4" is valid on MODEL, and why not',
    )
    add_output_argument(parser)


def run(args: argparse.Namespace) -> int:
    # An empty MODEL would read as no MODEL at all and list every model, as translate's empty
    # --model would read as none; both are refused the same way.
    if args.model is not None and not args.model.strip():
        raise InvalidInput(
            "MODEL is empty", hint="name a GPU model, e.g. cdmo profiles h100-80gb (cdmo profiles lists them)"
        )
    if args.check is not None and not args.model:
        raise InvalidInput(
            "--check needs a MODEL", hint='try: cdmo profiles h100-80gb --check "3g.40gb@0,3g.40gb@4"'
        )
    if not args.model:
        return _show_models(args.output)
    model = get_model(args.model)
    if args.check is not None:
        return _check(model, args.check, args.output)
    return _show_model(model, args.output)


def build_model_summary(model: GpuModel) -> dict[str, Any]:
    return {
        "key": model.key,
        "architecture": model.architecture,
        "product_names": list(model.product_names),
        "pci_device_ids": [f"0x{i:08X}" for i in model.pci_device_ids],
        "placement_axis_size": model.placement_axis_size,
        "compute_slices": model.compute_slices_total,
        "profiles": list(model.profile_names),
        "confidence": model.confidence,
    }


def build_profile_row(p: Profile) -> dict[str, Any]:
    return {
        "name": p.name,
        "resource": p.resource_name,
        "nvml_constant": p.nvml_constant,
        "nvml_constant_value": p.nvml_constant_value,
        "profile_id": p.profile_id,
        "compute_slices": p.compute_slices,
        "placement_size": p.placement_size,
        "memory_mib": p.memory_mib,
        "max_count": p.max_count,
        "exclusive_group": p.exclusive_group,
        "default_ci_profile": p.default_ci.constant,
        "placements": [{"start": s, "size": p.placement_size} for s in p.starts],
        "variant_of": p.variant_of,
    }


def build_model_detail(model: GpuModel) -> dict[str, Any]:
    return {
        **build_model_summary(model),
        "profiles": [build_profile_row(p) for p in model.profiles],
        "valid_layouts": len(enumerate_layouts(model)),
        "valid_layouts_without_variants": len(enumerate_layouts(model, include_variants=False)),
        "maximal_profile_sets": len(maximal_multisets(model)),
        "named_layouts": {k: format_layout(v) for k, v in named_layouts(model).items()},
    }


def _show_models(output: str) -> int:
    models = all_models()
    if output != "table":
        emit({"models": [build_model_summary(m) for m in models]}, output)
        return exit_codes.SUCCESS
    rows = [
        (m.key, m.architecture, ", ".join(m.product_names), m.placement_axis_size, len(m.profiles))
        for m in models
    ]
    print_table(
        build_table(
            "MIG-capable GPU models", ("MODEL", "ARCH", "NVML PRODUCT NAMES", "AXIS", "PROFILES"), rows
        )
    )
    return exit_codes.SUCCESS


def _show_model(model: GpuModel, output: str) -> int:
    detail = build_model_detail(model)
    if output != "table":
        emit(detail, output)
        return exit_codes.SUCCESS
    rows = [
        (
            r["name"],
            r["resource"],
            f"{r['nvml_constant'].removeprefix('NVML_GPU_INSTANCE_PROFILE_')} ({r['nvml_constant_value']})",
            r["profile_id"],
            r["compute_slices"],
            r["placement_size"],
            r["memory_mib"] if r["memory_mib"] is not None else "?",
            r["max_count"],
            r["exclusive_group"] or "",
            ",".join(str(pl["start"]) for pl in r["placements"]),
        )
        for r in detail["profiles"]
    ]
    out = console()
    print_table(
        build_table(
            f"{model.key} ({model.architecture}; placement axis {model.placement_axis_size}, "
            f"{model.compute_slices_total} compute slices)",
            (
                "PROFILE",
                "RESOURCE",
                "NVML CONSTANT",
                "ID",
                "SLICES",
                "SIZE",
                "MiB",
                "MAX",
                "EXCLUSIVE",
                "STARTS",
            ),
            rows,
        ),
        out,
    )
    out.print(
        f"{detail['valid_layouts']} valid layouts ({detail['valid_layouts_without_variants']} without "
        f"+me/+gfx variants); {detail['maximal_profile_sets']} maximal profile sets"
    )
    return exit_codes.SUCCESS


def _check(model: GpuModel, text: str, output: str) -> int:
    layout = sort_layout(parse_layout(text))
    problems = validate_layout(model, layout)
    if output != "table":
        emit(
            {
                "model": model.key,
                "layout": format_layout(layout),
                "valid": not problems,
                "problems": problems,
            },
            output,
        )
    elif problems:
        print(f"invalid on {model.key}: {format_layout(layout) or '(empty)'}")
        for p in problems:
            print(f"  - {p}")
    else:
        print(f"valid on {model.key}: {format_layout(layout) or '(empty)'}")
    return exit_codes.ERROR if problems else exit_codes.SUCCESS
