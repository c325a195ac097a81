"""Turning raw samples into the report: the summary rows, the markdown table, the JSON file
and the PNG chart of kvmap/lmdb ratios.

Each cell is the median over repetitions with the min–max in brackets.  The ratio column is
kvmap's median divided by LMDB's: above 1 kvmap is faster for a throughput row; for a row
marked "lower is better" (bytes on disk, RSS) below 1 is kvmap's win.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any

from .workloads import BY_NAME, WORKLOADS, Workload

MARK = "†"  # an engine that cannot honour "full" durability


def included(w: Workload, selected: list[str]) -> bool:
    if w.kind in ("child", "readers"):
        return w.name in selected
    if w.name == "readers_scaling":
        return "readers_1" in selected and "readers_2" in selected
    if w.name == "disk_load":
        return "load" in selected
    if w.name == "disk_puts":
        return "put_batch" in selected
    if w.name == "reader_rss":
        return "readers_1" in selected
    return True  # rss


def title(w: Workload, config: dict[str, Any]) -> str:
    if w.name == "put_each_full":
        return f"{w.title}, n={config['n_sync']:,}"
    return w.title


def _values(results: dict[str, Any], engine: str, name: str) -> list[float]:
    samples = results["samples"][engine]
    if name == "readers_scaling":
        one = {s["rep"]: s["value"] for s in samples.get("readers_1", [])}
        two = {s["rep"]: s["value"] for s in samples.get("readers_2", [])}
        return [two[r] / one[r] for r in sorted(one) if r in two and one[r] > 0]
    return [float(s["value"]) for s in samples.get(name, [])]


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per reported workload: per engine {median, min, max, reps} (or {skipped}, or
    {error}), and ``ratio`` = kvmap median / lmdb median when both exist."""
    selected = results["config"]["workloads"]
    engines = list(results["samples"])
    failed = {(e["engine"], e["workload"]) for e in results["errors"]}
    rows = []
    for w in WORKLOADS:
        if not included(w, selected):
            continue
        cells: dict[str, dict[str, Any]] = {}
        for engine in engines:
            skipped = results["skipped"][engine].get(w.name) or (
                w.name == "readers_scaling" and results["skipped"][engine].get("readers_2")
            )
            vals = _values(results, engine, w.name)
            if skipped:
                cells[engine] = {"skipped": skipped}
            elif vals:
                cells[engine] = {
                    "median": statistics.median(vals), "min": min(vals), "max": max(vals),
                    "reps": len(vals),
                }  # fmt: skip
            else:
                why = "error" if any(e == engine for e, _ in failed) else "no data"
                cells[engine] = {"error": why}
        ratio = None
        k, m = cells.get("kvmap", {}), cells.get("lmdb", {})
        if "median" in k and "median" in m and m["median"]:
            ratio = k["median"] / m["median"]
        rows.append({
            "workload": w.name, "title": title(w, results["config"]), "unit": w.unit,
            "higher_is_better": w.higher_is_better, "mode": w.mode, "cells": cells,
            "ratio": ratio,
        })  # fmt: skip
    return rows


# -- text ----------------------------------------------------------------------------------
def fmt(x: float, unit: str) -> str:
    if unit == "x":
        return f"{x:.2f}"
    if unit in ("B/key", "MiB"):
        return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e5:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}" if x >= 10 else f"{x:.2f}"


def cell_text(cell: dict[str, Any], unit: str) -> str:
    if "skipped" in cell:
        return "skipped"
    if "error" in cell:
        return cell["error"].upper() if cell["error"] == "error" else cell["error"]
    text = fmt(cell["median"], unit)
    if cell["reps"] > 1:
        text += f" ({fmt(cell['min'], unit)}–{fmt(cell['max'], unit)})"
    return text


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ) + " |"  # fmt: skip

    sep = "| " + " | ".join(
        "-" * (w - 1) + ":" if i in right else "-" * w for i, w in enumerate(widths)
    ) + " |"  # fmt: skip
    return [line(header), sep, *(line(r) for r in rows)]


def markdown(results: dict[str, Any], summary: list[dict[str, Any]]) -> str:
    """The report printed to stdout: the run, the durability settings, the table, notes."""
    cfg, mach = results["config"], results["machine"]
    engines = list(results["samples"])
    infos = results["engines"]
    out = [
        f"## kvmap benchmark: `{results['command'].strip()}`",
        "",
        f"{results['started']}, {results.get('seconds', 0):.0f} s.  "
        f"n = {cfg['n']:,} keys of {cfg['key_size']} B with {cfg['value_size']} B values, "
        f"seed {cfg['seed']}; {cfg['reps']} repetition{'s' if cfg['reps'] > 1 else ''}, engines "
        "interleaved; each cell is the median (min–max) over repetitions.",
        "",
        f"Machine: {mach['platform']}, {mach['cpu']}, {mach['cpus_usable']} usable CPUs of "
        f"{mach['cpu_count']}, {(mach['memory_bytes'] or 0) / (1 << 30):.1f} GiB; "
        f"{mach['python']}; databases in {mach['directory']} ({mach['filesystem']}).  "
        f"Load average {mach['load_average_start'][0]:.1f} at the start, "
        f"{mach['load_average_end'][0]:.1f} at the end (other processes share the CPUs).",
        "",
    ]
    if "cpu_scaling_2" in mach:
        out[-1:-1] = [
            "",
            f"Two pure-Python processes at once ran {mach['cpu_scaling_2']:.2f}x the loops of "
            "one alone on this machine: about what a pure-Python reader can reach in the "
            "2-reader scaling row (2.00 on two idle cores).",
        ]
    erows = [
        [e, infos[e]["version"], infos[e]["durability"].get("full", "") + (
            "" if infos[e]["matched"] else f" {MARK}"), infos[e]["durability"].get("normal", ""),
         infos[e]["bulk_path"]]
        for e in engines
    ]  # fmt: skip
    out += _table(["engine", "version", '"full" durability', '"normal" durability', "bulk load"],
                  erows, set())  # fmt: skip
    out.append("")
    has_ratio = "kvmap" in engines and "lmdb" in engines
    header = ["workload", "unit", *engines] + (["kvmap/lmdb"] if has_ratio else [])
    trows = []
    for row in summary:
        cells = []
        for e in engines:
            text = cell_text(row["cells"][e], row["unit"])
            if row["mode"] == "full" and not infos[e]["matched"] and "median" in row["cells"][e]:
                text += f" {MARK}"
            cells.append(text)
        r = [row["title"], row["unit"], *cells]
        if has_ratio:
            r.append("–" if row["ratio"] is None else f"{row['ratio']:.2f}x")
        trows.append(r)
    out += _table(header, trows, set(range(2, len(header))))
    out += ["", "Notes:"]
    out.append(
        f"- Random puts with one commit each at full durability run {cfg['n_sync']:,} commits "
        "(n/50, at least 100, at most 10,000: each commit is an fsync); the other write "
        f"workloads write n = {cfg['n']:,} keys, each into an empty database except mixed "
        "(on the loaded one)."
    )
    out.append(
        "- Write workloads time the puts and the final close() (the data made durable: kvmap's "
        "checkpoint, lmdb's env.sync, SQLite's WAL checkpoint), not the open."
    )
    out.append(
        "- Reads are warm (an untimed pass first, every answer checked), in one read snapshot "
        "per workload; a pass (n gets, one full scan, 1,000 short scans) repeats until "
        f"{cfg['read_seconds']:g} s have passed."
    )
    out.append(
        "- Reader processes (spawned, each with its own handle, readonly where the engine has "
        f"it) do random gets in one snapshot for {cfg['reader_seconds']:g} s, all at once; "
        "throughput is all their gets over the wall time from the first start to the last end "
        f"(this machine has {mach['cpus_usable']} usable CPUs)."
    )
    for e in engines:
        for name, why in results["skipped"][e].items():
            out.append(f"- {e}: {BY_NAME[name].title}: skipped, {why}.")
    for e in engines:
        if not infos[e]["matched"]:
            out.append(
                f"- {MARK} {e} has no fsync: its full-durability rows are not durable against "
                "power loss, so they are not comparable."
            )
    base = {e: sum(v) / len(v) for e, v in results["rss_baseline_mib"].items() if v}
    if base:
        if max(base.values()) - min(base.values()) < 1:
            size = f"{min(base.values()):.0f} MiB"
        else:
            size = ", ".join(f"{e} {v:.0f}" for e, v in base.items()) + " MiB"
        out.append(
            f"- Peak RSS counts the harness's own data set too (keys and work lists: {size} "
            "before the engine was imported); reader RSS growth is resident memory after the "
            "gets minus before the open (mapped file pages included)."
        )
    for e, why in results.get("unavailable", {}).items():
        out.append(f"- {e} not run: {why}.")
    if not has_ratio:
        out.append("- No kvmap/lmdb ratio: run both (lmdb: pip install -e '.[bench]').")
    if results["errors"]:
        out += ["", "Errors:"]
        for err in results["errors"]:
            first = err["error"].strip().splitlines()[-1] if err["error"].strip() else "?"
            out.append(f"- {err['engine']} / {err['workload']} (rep {err['rep'] + 1}): {first}")
        out.append("(full tracebacks in the --json file)")
    return "\n".join(out)


def write_json(results: dict[str, Any], path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=False)
        f.write("\n")


def plot(results: dict[str, Any], summary: list[dict[str, Any]], path: str) -> str | None:
    """A horizontal bar per workload: kvmap/lmdb (log scale, 1 = parity), green where kvmap
    is better.  Returns why no chart was drawn, or None."""
    rows = [r for r in summary if r["ratio"] is not None]
    if not rows:
        return "no kvmap/lmdb ratio to draw (run both engines)"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    cfg = results["config"]
    labels = [r["title"] for r in rows]
    ratios = [r["ratio"] for r in rows]
    colors = []
    for x, r in zip(ratios, rows):
        if abs(math.log(x)) < 0.02 if x > 0 else False:
            colors.append("#999999")  # a tie
        elif (x > 1) == r["higher_is_better"]:
            colors.append("#3a923a")
        else:
            colors.append("#c0504d")
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.6))
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, ratios, color=colors, height=0.6)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(ys, labels, fontsize=8)
    lo, hi = min(ratios + [1.0]) / 1.8, max(ratios + [1.0]) * 1.8
    ax.set_xlim(lo, hi)
    ticks = [2.0**e for e in range(-12, 13) if lo <= 2.0**e <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_locator(NullLocator())
    for y, x in zip(ys, ratios):
        ax.text(x * 1.04, y, f"{x:.2f}x", va="center", fontsize=8)
    ax.set_xlabel(
        "kvmap / lmdb, log scale.  Green: kvmap better, red: lmdb better, grey: within 2%.\n"
        "Rows marked lower-is-better: below 1x is kvmap's win.",
        fontsize=8,
    )
    ax.set_title(
        f"kvmap / lmdb, n={cfg['n']:,}, {cfg['reps']} reps, median ({results['started'][:10]})",
        fontsize=10,
    )
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


__all__ = ["fmt", "markdown", "plot", "summarize", "write_json"]
