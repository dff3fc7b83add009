"""Showing results: a rich table for people, one JSON document for machines, a matplotlib plot.

The JSON document has one key per policy (in the order they ran); each value is the policy's
summary (cdmo.sim.metrics.summarize) plus the scenario, seed and simulated duration it ran with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cdmo.sim.metrics import pending_times, utilization_series
from cdmo.sim.runner import Report


def format_seconds(seconds: float) -> str:
    """``0s``, ``12s``, ``3m05s``, ``2h04m``: short and sortable by eye."""
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if 0 < seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def build_document(report: Report) -> dict[str, Any]:
    """One JSON-ready document with a key per policy."""
    sc = report.scenario
    context = {
        "scenario": sc.name,
        "seed": report.seed,
        "duration_seconds": report.horizon,
        "nodes": sc.node_count,
        "gpus": sc.gpu_count,
    }
    return {name: {**summary, **context} for name, summary in report.summaries.items()}


def describe(report: Report) -> str:
    """One line saying what was simulated."""
    sc = report.scenario
    line = (
        f"{sc.name}: {sc.node_count} nodes, {sc.gpu_count} GPUs ({', '.join(m.key for m in sc.models)}), "
        f"{len(report.pods)} pods over {format_seconds(report.horizon)}, seed {report.seed}"
    )
    # Every policy replays the same pods, so any summary says the offered load.
    first = next(iter(report.summaries.values()), None)
    if first is not None:
        line += f"; offered load {100 * first['offered_load']:.1f}% of the fleet's compute slices"
        if first["offered_load"] > 1:
            # Not "queues grow": in a run short against its pods' durations the excess may be
            # pods running past the end rather than pods waiting.
            line += " (more than it can do in the run: whatever the policy, pods wait or run past the end)"
    return line


def build_table(report: Report) -> Table:
    table = Table()
    columns = (
        "POLICY",
        "STARTED",
        "NEVER\nSTARTED",
        "PENDING\np50",
        "\np95",
        "\np99",
        "\nmax",
        "SLICE\nUTIL",
        "RECON-\nFIGS",
        "GI\n+/-",
        "DIS-\nRUPTED",
        "PLANNER\nCPU",
    )
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for name, s in report.summaries.items():
        pend = s["pending_seconds"]
        cpu = s["timing"].get("planner_cpu_seconds")
        table.add_row(
            name,
            f"{s['pods']['started']}/{s['pods']['submitted']}",
            str(s["pods"]["never_started"]),
            format_seconds(pend["p50"]),
            format_seconds(pend["p95"]),
            format_seconds(pend["p99"]),
            format_seconds(pend["max"]),
            f"{100 * s['utilization']:.1f}%",
            str(s["reconfigurations"]),
            f"+{s['gpu_instances']['created']}/-{s['gpu_instances']['destroyed']}",
            str(s["disrupted_pods"]),
            "-" if cpu is None else f"{cpu:.2f}s",
        )
    return table


def write_plot(report: Report, path: Path) -> None:
    """Pending-time CDF per policy and compute-slice utilization over time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cdf, ax_util) = plt.subplots(1, 2, figsize=(13, 5.2))
    for name, run in report.runs.items():
        waits = pending_times(run)
        n = len(waits)
        if n:
            xs = [max(w, 0.1) for w in waits]
            ys = [(i + 1) / n for i in range(n)]
            ax_cdf.step(xs, ys, where="post", label=name)
        series = utilization_series(run)
        hours = [(i + 0.5) * run.util_bucket_seconds / 3600 for i in range(len(series))]
        ax_util.plot(hours, [100 * u for u in series], label=name)
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("pending time, seconds (log; pods never started count until the end)")
    ax_cdf.set_ylabel("fraction of pods")
    ax_cdf.set_title("Pending time CDF")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_util.set_xlabel("simulated time, hours")
    ax_util.set_ylabel("compute slices held by running pods, %")
    ax_util.set_ylim(0, 100)
    ax_util.set_title("MIG compute-slice utilization")
    ax_util.grid(True, alpha=0.3)
    handles, labels = ax_util.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize="small", frameon=False)
    fig.suptitle(describe(report), fontsize="medium")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
