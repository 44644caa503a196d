"""The benchmark plots, drawn from the JSON results (``run.py --plots-only`` redraws them).

Every plot shows nx-27017 with solid lines and, when ``results/mongodb/`` holds a
run, the same series on MongoDB with dashed lines. Error bars are the spread
(min-max) across rounds; points are medians.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

STYLES = {"nx-27017": "-", "mongodb": "--"}
COLORS = {
    "library": "#1f6feb",
    "library_new_store": "#8250df",
    "library_caller_id": "#bf3989",
    "raw": "#6e7781",
    "raw_load": "#cf222e",
    "es_memory": "#1a7f37",
    "es_file": "#4ac26b",
}


def _load(results: Path, name: str) -> dict[str, dict[str, Any]]:
    """``{target: result}`` for the targets that have a ``name`` result."""
    found = {}
    for target, path in (
        ("nx-27017", results / f"{name}.json"),
        ("mongodb", results / "mongodb" / f"{name}.json"),
    ):
        if path.exists():
            found[target] = json.loads(path.read_text())
    return found


def _errorbar(
    ax: Axes, xs: list[float], summaries: list[dict[str, Any]], *, label: str, color: str, ls: str
) -> None:
    medians = [s["median"] for s in summaries]
    low = [s["median"] - s["min"] for s in summaries]
    high = [s["max"] - s["median"] for s in summaries]
    ax.errorbar(
        xs, medians, yerr=[low, high], label=label, color=color, ls=ls, marker="o", capsize=3
    )


def _finish(fig: Any, ax: Axes, title: str, subtitle: str, out: Path) -> Path:
    ax.set_title(title, fontsize=11, loc="left")
    fig.text(0.01, 0.01, subtitle, fontsize=7, color="#57606a")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _subtitle(runs: dict[str, dict[str, Any]]) -> str:
    parts = []
    for target, run in runs.items():
        env = run["environment"]
        parts.append(
            f"{target}: {env['date'][:10]}, {env['cpu_count']} CPUs, Python {env['python']}, "
            f"{env['os']}"
        )
    return "; ".join(parts)


def _suffix(target: str, runs: dict[str, Any]) -> str:
    return f" ({target})" if len(runs) > 1 else ""


def append_latency(runs: dict[str, dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    series = (
        ("lib_warm", "library append, warm store", "library"),
        ("lib_new_store", "library append, new store (reads both heads)", "library_new_store"),
        ("lib_caller_id", "library append, caller-made id (checked)", "library_caller_id"),
        ("raw_insert_one", "raw insert_one of a commit", "raw"),
    )
    for target, run in runs.items():
        rows = run["append"]
        xs = [r["events_in_store"] for r in rows]
        for key, label, color in series:
            _errorbar(
                ax,
                xs,
                [r["figures"][key] for r in rows],
                label=label + _suffix(target, runs),
                color=COLORS[color],
                ls=STYLES[target],
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events in the store")
    ax.set_ylabel("ms per one-event append (median, min-max)")
    return _finish(fig, ax, "Append latency as the store grows", _subtitle(runs), out)


def catch_up(runs: dict[str, dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for target, run in runs.items():
        rows = run["catch_up"]
        if not rows:
            continue
        xs = [r["events_in_store"] for r in rows]
        for key, label in (
            ("library", "handler projection, catch_up()"),
            ("raw", "raw find + fold + bulk upsert"),
        ):
            _errorbar(
                ax,
                xs,
                [r[key] for r in rows],
                label=label + _suffix(target, runs),
                color=COLORS[key],
                ls=STYLES[target],
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events in the store")
    ax.set_ylabel("seconds from position 0 to the head")
    return _finish(fig, ax, "Projection catch-up time against event count", _subtitle(runs), out)


def rebuild_memory(runs: dict[str, dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for target, run in runs.items():
        rows = run["memory"]
        if not rows:
            continue
        xs = [r["events"] for r in rows]
        # The rebuild and the streamed raw fold lie on top of each other: draw the
        # rebuild wide and the raw fold thin over it, so that both stay visible.
        for key, label, color, width, marker in (
            ("rebuild", "rebuild() of the projection", "library", 5.0, "s"),
            ("raw_stream", "raw fold over a streamed cursor", "raw", 1.5, "o"),
            ("raw_load", "raw fold after loading every commit", "raw_load", 1.5, "o"),
        ):
            peaks = [r[key]["peak_mb"] for r in rows]
            ax.plot(
                xs,
                peaks,
                label=label + _suffix(target, runs),
                color=COLORS[color],
                ls=STYLES[target],
                lw=width,
                marker=marker,
                alpha=0.6 if key == "rebuild" else 1.0,
            )
            for x, peak in zip(xs, peaks, strict=True):
                ax.annotate(
                    f"{peak:.0f}", (x, peak), textcoords="offset points", xytext=(4, 6), fontsize=7
                )
        ax.plot(
            xs,
            [r["rebuild"]["baseline_mb"] for r in rows],
            label="process before the work" + _suffix(target, runs),
            color="#afb8c1",
            ls=":",
        )
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("events in the store")
    ax.set_ylabel("peak resident set of the process, MiB")
    return _finish(fig, ax, "Rebuild peak memory against event count", _subtitle(runs), out)


def read_your_writes(runs: dict[str, dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for target, run in runs.items():
        rows = run["read_your_writes"]
        xs = [r["writes_per_second"] for r in rows]
        for key, label in (
            ("library", "ProjectionRunner (change stream + checkpoint)"),
            ("raw", "hand-written change-stream projector"),
        ):
            _errorbar(
                ax,
                xs,
                [r[key]["round_medians_ms"] for r in rows],
                label=f"{label}, median{_suffix(target, runs)}",
                color=COLORS[key],
                ls=STYLES[target],
            )
            ax.plot(
                xs,
                [r[key]["p99_ms"] for r in rows],
                color=COLORS[key],
                ls=":",
                marker="x",
                label=f"{label}, p99{_suffix(target, runs)}",
            )
    ax.set_yscale("log")
    ax.set_xlabel("steady background writes, appends per second")
    ax.set_ylabel("ms from append to a read that shows it")
    return _finish(fig, ax, "Read-your-writes latency under write load", _subtitle(runs), out)


def peers(runs: dict[str, dict[str, Any]], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    labels = {
        "eventsourcing_sqlite_memory": ("eventsourcing, SQLite in memory", "es_memory"),
        "eventsourcing_sqlite_file": ("eventsourcing, SQLite file (WAL)", "es_file"),
        "cqrs_kit_repository_save": ("cqrs-kit Repository.save", "library_caller_id"),
        "cqrs_kit_store_append": ("cqrs-kit EventStore.append", "library"),
        "raw_insert_one": ("raw insert_one", "raw"),
    }
    for ax, size in zip(axes, ("1", "100"), strict=True):
        names, values, colors = [], [], []
        for target, run in runs.items():
            for key, summary in run["figures"][size].items():
                label, color = labels[key]
                server = "" if key.startswith("eventsourcing") else f" [{target}]"
                if key.startswith("eventsourcing") and target != "nx-27017":
                    continue  # the same SQLite figures in both runs
                names.append(label + server)
                values.append(summary["median"])
                colors.append(COLORS[color])
        bars = ax.barh(names[::-1], values[::-1], color=colors[::-1])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values[::-1]], fontsize=7, padding=2)
        ax.set_xlim(0, max(values) * 1.2)
        ax.set_xlabel("ms per save (median)")
        ax.set_title(f"{size} event{'s' if size != '1' else ''} per save", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.suptitle("Saving the same aggregate events: eventsourcing vs cqrs-kit", fontsize=11)
    fig.text(0.01, 0.01, _subtitle(runs), fontsize=7, color="#57606a")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw(results: Path, folder: Path) -> list[Path]:
    """Draw every plot whose results exist; return the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    scaling = _load(results, "scaling")
    if scaling:
        written += [
            append_latency(scaling, folder / "append-latency.png"),
            catch_up(scaling, folder / "catch-up.png"),
            rebuild_memory(scaling, folder / "rebuild-memory.png"),
            read_your_writes(scaling, folder / "read-your-writes.png"),
        ]
    peer_runs = _load(results, "peers")
    if peer_runs:
        written.append(peers(peer_runs, folder / "peers.png"))
    return written
