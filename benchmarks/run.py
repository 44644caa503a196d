"""Run every benchmark, on nx-27017 and on a real MongoDB when one is configured.

Run from the repository root (``make bench`` does, after installing the ``bench``
extra)::

    .venv/bin/python benchmarks/run.py [--only scaling,peers] [--plots-only]

Each benchmark script runs in its own child process against a fresh in-memory
nx-27017 server (``EmbeddedServer``, with its own port, pid file and log file),
and again against the MongoDB deployment in ``CQRS_KIT_BENCH_MONGODB_URI`` when
that variable is set (a scratch deployment: databases named ``bench*`` are
dropped). Every figure is measured side by side with its raw-driver baseline in
the same process and run. Scripts that repeat their figures in rounds
themselves (append, snapshots, http, peers, scaling) run once with at least 5
rounds; the others (projection, routing) run 5 times, and their key figures are
summarised as median and spread over the runs.

Writes ``benchmarks/results/<script>.json`` (``results/mongodb/`` for MongoDB),
``benchmarks/results/suite.json`` (what ran, how long each step took, the
summaries of repeated runs, each script's printed tables) and the plots in
``docs/assets/benchmarks/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import RESULTS, environment, mongodb_uri, results_path

_HERE = Path(__file__).resolve().parent

PLOTS = _HERE.parent / "docs" / "assets" / "benchmarks"
REPEATS = 5

# A child puts benchmarks/ on sys.path, then runs the script through harness.launch.
LAUNCHER = (
    "import sys; "
    f"sys.path.insert(0, {str(_HERE)!r}); "
    "import harness; harness.launch(sys.argv[1], sys.argv[2], sys.argv[3:])"
)


@dataclass(frozen=True)
class Step:
    """One benchmark script and how the suite runs it."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    repeats: int = 1
    #: Whether the script takes ``--target`` itself (else harness.launch swaps the server).
    targeted: bool = False
    #: Extra arguments on the MongoDB target only.
    mongodb_args: tuple[str, ...] = ()


STEPS = (
    Step("append", "append.py", ("--rounds", "7", "--profile")),
    Step("snapshots", "snapshots.py", ("--rounds", "7")),
    Step("projection", "projection.py", ("--events", "10000", "--live", "30"), repeats=REPEATS),
    Step("routing", "routing.py", ("--appends", "100"), repeats=REPEATS),
    Step("http", "http_commands.py", ("--rounds", "7")),
    Step("peers", "peers.py", ("--rounds", "7"), targeted=True),
    Step(
        "scaling",
        "scaling.py",
        (
            "--rounds", "5",
            "--sizes", "10000,100000,300000,1000000",
            "--projection-sizes", "10000,30000,100000,1000000",
            "--projection-budget", "300",
        ),
        targeted=True,
        # A real server catches up fast enough for the million-event point.
        mongodb_args=("--projection-budget", "1800"),
    ),
)  # fmt: skip


def run_step(step: Step, target: str) -> dict[str, Any]:
    """Run a step (``repeats`` times) on a target; return its runs and outputs."""
    own = RESULTS / f"{step.name}.json"
    # On MongoDB, scripts without --target write to results/<name>.json as usual; keep
    # the nx-27017 file and move theirs to results/mongodb/ afterwards.
    kept = own.read_bytes() if target != "nx-27017" and own.exists() else None
    args = [
        *step.args,
        *(("--target", target) if step.targeted else ()),
        *(step.mongodb_args if target == "mongodb" else ()),
    ]
    runs = []
    for attempt in range(step.repeats):
        print(f"== {step.name} on {target} ({attempt + 1}/{step.repeats})", flush=True)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, step.script, target, *args],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        print(done.stdout, flush=True)
        if done.returncode != 0:
            raise SystemExit(f"{step.script} failed on {target} (exit {done.returncode})")
        produced = results_path(step.name, target) if step.targeted else own
        result = json.loads(produced.read_text()) if produced.exists() else None
        if not step.targeted and target != "nx-27017" and result is not None:
            results_path(step.name, target).write_text(json.dumps(result, indent=2) + "\n")
        runs.append({"seconds": round(seconds, 1), "stdout": done.stdout, "result": result})
    if kept is not None:
        own.write_bytes(kept)
    return {
        "script": f"benchmarks/{step.script}",
        "args": args,
        "seconds": round(sum(r["seconds"] for r in runs), 1),
        "runs": runs,
        "summary": summarise(step.name, runs),
    }


# -- summaries of repeated runs --------------------------------------------------------------


def spread(values: list[float], digits: int = 2) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": len(values),
    }


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The key figures of a step, as median and spread over its runs."""
    results = [r["result"] for r in runs if r["result"] is not None]
    if name == "projection" and results:
        out: dict[str, Any] = {"events": results[0]["events"]}
        for n, row in enumerate(results[0]["catch_up"]):
            key = "pipeline" if n == 0 else "handler"
            out[f"{key}_library_s"] = spread([r["catch_up"][n]["library_s"] for r in results])
            out[f"{key}_raw_s"] = spread([r["catch_up"][n]["raw_s"] for r in results])
            out[f"{key}_ratio"] = spread([r["catch_up"][n]["ratio"] for r in results])
            out[f"{key}_labels"] = [row["library"], row["raw"]]
        out["read_all_s"] = spread([r["read_all_seconds"] for r in results])
        out["fill_s"] = spread([r["fill_seconds"] for r in results])
        for model in results[0]["live"]:
            for q in ("p50_ms", "p99_ms"):
                out[f"live_{model}_{q}"] = spread([r["live"][model][q] for r in results], 1)
        return out
    if name == "routing" and results:
        out = {
            "rules": results[0]["patterns"]["rules"],
            "events": results[0]["patterns"]["events"],
            "evaluations_per_second": spread(
                [r["patterns"]["evaluations_per_second"] for r in results], 0
            ),
            "match_rate": results[0]["patterns"]["match_rate"],
        }
        for label in results[0]["latency_ms"]:
            for q in ("p50", "p99", "mean"):
                key = f"{label.replace(' ', '_')}_{q}_ms"
                out[key] = spread([r["latency_ms"][label][q] for r in results], 1)
            out[f"{label.replace(' ', '_')}_n"] = results[0]["latency_ms"][label]["n"]
        return out
    if name == "snapshots":
        return parse_snapshots(runs[-1]["stdout"])
    return {}


_LOAD = re.compile(
    r"load (?P<kind>without snapshot|with snapshot)[^:]*:\s+(?P<median>[\d.]+) ms "
    r"\(min (?P<min>[\d.]+), max (?P<max>[\d.]+)\)\s+\[(?P<rounds>\d+) rounds\]"
)


def parse_snapshots(stdout: str) -> dict[str, Any]:
    """The figures snapshots.py prints (it writes no JSON)."""
    out: dict[str, Any] = {}
    for match in _LOAD.finditer(stdout):
        key = "full_replay_ms" if match["kind"] == "without snapshot" else "snapshot_ms"
        out[key] = {k: float(match[k]) for k in ("median", "min", "max")}
        out["rounds"] = int(match["rounds"])
    ratio = re.search(r"ratio \(medians, without / with\): ([\d.]+)x", stdout)
    if ratio:
        out["ratio"] = float(ratio[1])
    return out


# -- the suite -------------------------------------------------------------------------------


def targets() -> list[str]:
    return ["nx-27017", "mongodb"] if mongodb_uri() else ["nx-27017"]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated step names (default: all)")
    parser.add_argument("--plots-only", action="store_true", help="redraw plots from results")
    args = parser.parse_args(argv)
    if args.plots_only:
        draw_all()
        return
    wanted = set(args.only.split(",")) if args.only else {s.name for s in STEPS}
    unknown = wanted - {s.name for s in STEPS}
    if unknown:
        parser.error(f"unknown steps: {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    for target in targets():
        out = results_path("suite", target)
        # A partial run (--only) replaces its steps in the last full run's file.
        earlier = json.loads(out.read_text())["steps"] if args.only and out.exists() else {}
        suite: dict[str, Any] = {
            "command": " ".join(["python", "benchmarks/run.py", *argv]),
            "environment": environment(),
            "target": target,
            "steps": earlier,
        }
        target_started = time.perf_counter()
        for step in STEPS:
            if step.name not in wanted:
                continue
            if not (_HERE / step.script).exists():
                print(f"== {step.name}: benchmarks/{step.script} does not exist, skipped")
                continue
            suite["steps"][step.name] = run_step(step, target)
        suite["runtime_s"] = round(time.perf_counter() - target_started, 1)
        suite["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        out.write_text(json.dumps(suite, indent=2) + "\n")
    draw_all()
    total = time.perf_counter() - started
    print(f"\nbenchmark suite finished in {total / 60:.1f} min ({total:.0f} s)")


def draw_all() -> None:
    from plots import draw

    for path in draw(RESULTS, PLOTS):
        print(f"plot: {path.relative_to(_HERE.parent)}")


if __name__ == "__main__":
    main(sys.argv[1:])
