"""The command line and the run: child processes, helper processes, repetitions.

How a run goes (``python -m bench``):

1. The data set is fixed by ``--seed``, ``--n`` and ``--value-size``; each process
   regenerates it (``workloads.Dataset``).
2. For each repetition, the engines run one after another in an order rotated by one each
   repetition (kvmap, lmdb, sqlite, … then lmdb, sqlite, …, kvmap), so slow drift of the
   machine (thermal, page cache, other tenants) hits every engine alike.  Each engine's
   workloads of one repetition run in a fresh process (``multiprocessing``, spawn start
   method), whose ``ru_maxrss`` is the engine's peak RSS; then the reader workloads run on
   the database it loaded, from helper processes started once per run (spawn), each opening
   its own handle.
3. Every number is reported as the median over repetitions with its min–max
   (``bench.report``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.connection import Connection
from typing import Any

from . import adapters, report, workloads
from .workloads import READERS, SELECTABLE, Config

QUICK_N = 20_000
DEFAULT_N = 100_000
#: the shortest timed section of a single-process read workload (whole passes repeat)
READ_SECONDS, QUICK_READ_SECONDS = 0.25, 0.1
#: how long the reader processes do random gets
READER_SECONDS, QUICK_READER_SECONDS = 1.0, 0.3


# -- the command line ----------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    engine_list = ",".join(adapters.ENGINES)
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="kvmap next to LMDB (the reference), SQLite and pure-Python stores: the "
        "same workloads, durability matched, median of repetitions, kvmap/lmdb ratios.",
    )
    ap.add_argument(
        "--engines",
        help=f"comma-separated engines (default: the ones that import of {engine_list})",
    )
    ap.add_argument(
        "--workloads",
        help=f"comma-separated workloads (default: all): {','.join(SELECTABLE)}",
    )
    ap.add_argument("--n", type=int, help=f"keys (default {DEFAULT_N:,}; {QUICK_N:,} with --quick)")
    ap.add_argument("--value-size", type=int, default=100, help="value bytes (default 100)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the data set (default 1)")
    ap.add_argument("--reps", type=int, help="repetitions, median reported (default 3)")
    ap.add_argument(
        "--quick", action="store_true",
        help=f"a short run: n={QUICK_N:,} unless --n is given (under 2 minutes on 2 cores)",
    )  # fmt: skip
    ap.add_argument("--json", metavar="PATH", help="write every raw timing and the machine here")
    ap.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of kvmap/lmdb ratios")
    args = ap.parse_args(argv)
    if args.n is None:
        args.n = QUICK_N if args.quick else DEFAULT_N
    if args.reps is None:
        args.reps = 3
    if args.n < 1 or args.reps < 1 or args.value_size < 1:
        ap.error("--n, --reps and --value-size must be positive")
    if args.workloads:
        wanted = _split(args.workloads)
        unknown = [w for w in wanted if w not in SELECTABLE]
        if unknown:
            ap.error(f"unknown workload(s) {', '.join(unknown)}; choose: {', '.join(SELECTABLE)}")
        args.workloads = [w for w in SELECTABLE if w in wanted]
    else:
        args.workloads = list(SELECTABLE)
    if args.engines:
        wanted = _split(args.engines)
        unknown = [e for e in wanted if e not in adapters.ENGINES]
        if unknown:
            known = ", ".join(adapters.ENGINES)
            ap.error(f"unknown engine(s) {', '.join(unknown)}; choose from {known}")
        ok, missing = adapters.available(wanted)
        if missing:
            ap.error("; ".join(f"{e} does not import ({why})" for e, why in missing.items()))
        args.engines, args.unavailable = ok, {}
    else:
        args.engines, args.unavailable = adapters.available()
    return args


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


# -- the machine ---------------------------------------------------------------------------
def _dist(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _kvmap_version() -> str | None:
    try:
        import kvmap
    except ImportError:
        return None
    return getattr(kvmap, "__version__", None) or _dist("kvmap")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def filesystem(path: str) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts), or "unknown"."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) >= len(best):
                best, kind = parts[1], parts[2]
    return kind


def machine(workdir: str) -> dict[str, Any]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines()
         if ln.startswith("model name")),
        platform.processor() or platform.machine(),
    )  # fmt: skip
    mem = next(
        (int(ln.split()[1]) * 1024 for ln in _read("/proc/meminfo").splitlines()
         if ln.startswith("MemTotal:")),
        None,
    )  # fmt: skip
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        import lmdb

        lmdb_version: str | None = f"{lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()))})"
    except ImportError:
        lmdb_version = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_bytes": mem,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": {
            "kvmap": _kvmap_version(),
            "lmdb": lmdb_version,
            "sqlite": sqlite3.sqlite_version,
            "semidbm": _dist("semidbm"),
            "tqdm": _dist("tqdm"),
            "matplotlib": _dist("matplotlib"),
        },
        "directory": workdir,
        "filesystem": filesystem(workdir),
    }


# -- progress ------------------------------------------------------------------------------
class Progress:
    """A tqdm bar on stderr, or nothing when tqdm is not installed."""

    def __init__(self, total: int) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar: Any = None
        else:
            self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text, refresh=True)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None and steps > 0:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def child_steps(cfg: Config) -> int:
    """How many ("step", …) messages one engine process sends (the warm-up included)."""
    names = set(cfg.workloads)
    steps = 1 + (1 if "load" in names or names & workloads.NEEDS_MAIN else 0)
    return steps + len(names & {"get", "get_missing", "scan", "short_scans", "mixed",
                                "put_batch", "put_each_normal", "put_each_full"})  # fmt: skip


# -- processes -----------------------------------------------------------------------------
class HelperError(Exception):
    pass


class Helpers:
    """Persistent helper processes (spawn): ``readers`` that run reader jobs, then one
    that runs writer jobs if ``writer``."""

    def __init__(self, ctx: Any, readers: int, writer: bool) -> None:
        self.ctx = ctx
        self.readers = readers
        self.count = readers + writer
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self.start()

    def start(self) -> None:
        for i in range(self.count):
            parent, child = self.ctx.Pipe()
            p = self.ctx.Process(
                target=workloads.helper_main, args=(child,), name=f"bench-helper-{i}"
            )
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)

    def restart(self) -> None:
        self.close()
        self.procs, self.conns = [], []
        self.start()

    def release(self) -> None:
        """Make every helper close the database handle it keeps between reader jobs."""
        for conn in self.conns:
            conn.send(("release",))
        for conn in self.conns:
            _recv(conn)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("exit",))
            except OSError:
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self.conns:
            conn.close()


def _recv(conn: Connection) -> Any:
    try:
        return conn.recv()
    except (EOFError, OSError) as exc:
        raise HelperError(f"a helper process died ({exc!r})") from exc


def run_readers(helpers: Helpers, engine: str, path: str, cfg: Config, name: str) -> dict[str, Any]:
    """One reader workload: ``readers`` processes doing random gets on the database at
    ``path`` (and one process committing one put at a time, if ``writer``).  Throughput is
    all the gets divided by the time from the first reader's start to the last one's end.
    Raises ``HelperError`` with the helper's traceback if a job fails."""
    readers, writer = READERS[name]
    rconns = helpers.conns[:readers]
    wconn = helpers.conns[helpers.readers] if writer else None  # never one of the readers
    jobs = [(c, ("read", engine, path, cfg, i)) for i, c in enumerate(rconns)]
    if wconn is not None:
        jobs.append((wconn, ("write", engine, path, cfg, 0)))
    for conn, job in jobs:
        conn.send(job)
    replies = [(conn, _recv(conn)) for conn, _ in jobs]
    failed = [msg[1] for _, msg in replies if msg[0] == "error"]
    if failed:
        for conn, msg in replies:
            if msg[0] == "ready":
                conn.send("abort")
                _recv(conn)
        raise HelperError(failed[0])
    if wconn is not None:
        wconn.send("go")
    for conn in rconns:
        conn.send("go")
    done = [_recv(conn) for conn in rconns]
    wdone = None
    if wconn is not None:
        wconn.send("stop")
        wdone = _recv(wconn)
    for msg in [*done, wdone]:
        if msg is not None and msg[0] == "error":
            raise HelperError(msg[1])
    stats = [msg[1] for msg in done]
    t0 = min(s["t0"] for s in stats)
    t1 = max(s["t1"] for s in stats)
    ops = sum(s["ops"] for s in stats)
    out = workloads.sample(ops, t1 - t0)
    out["readers"] = [
        {"ops": s["ops"], "seconds": s["t1"] - s["t0"], "rss_growth_mib": s["rss_growth"]}
        for s in stats
    ]
    if wdone is not None:
        w = wdone[1]
        out["writer_commits"] = w["commits"]
        out["writer_commits_per_s"] = w["commits"] / (w["t1"] - w["t0"])
    return out


def cpu_scaling(helpers: Helpers, seconds: float) -> float:
    """Loops per second of two pure-Python processes at once over one alone: what this
    machine allows the 2-reader rows (2.0 on two idle, independent cores)."""

    def rate(conns: list[Connection]) -> float:
        for conn in conns:
            conn.send(("spin", seconds))
        for conn in conns:
            _recv(conn)  # ready
        for conn in conns:
            conn.send("go")
        done = [_recv(conn)[1] for conn in conns]
        return sum(d["ops"] for d in done) / (
            max(d["t1"] for d in done) - min(d["t0"] for d in done)
        )

    rate(helpers.conns[:2])  # warm-up
    one = rate(helpers.conns[:1])
    two = rate(helpers.conns[:2])
    return two / one


def run_engine(
    ctx: Any, engine: str, cfg: Config, workdir: str, on_step: Callable[[str], None]
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]], dict[str, Any]]:
    """Run one engine's workloads of one repetition in a fresh process: (samples by
    workload, [(workload, error)], the end message)."""
    parent, child = ctx.Pipe()
    p = ctx.Process(
        target=workloads.engine_child, args=(child, engine, cfg, workdir), name=f"bench-{engine}"
    )
    p.start()
    child.close()
    samples: dict[str, dict[str, Any]] = {}
    errors: list[tuple[str, str]] = []
    end: dict[str, Any] | None = None
    while end is None:
        try:
            msg = parent.recv()
        except EOFError:
            break
        if msg[0] == "step":
            on_step(msg[1])
        elif msg[0] == "sample":
            samples[msg[1]] = msg[2]
        elif msg[0] == "error":
            errors.append((msg[1], msg[2]))
        elif msg[0] == "end":
            end = msg[1]
    p.join()
    parent.close()
    if end is None:
        errors.append(("process", f"the {engine} process died (exit code {p.exitcode})"))
        end = {}
    return samples, errors, end


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns the results (what --json writes)."""
    cfg = Config(
        n=args.n, value_size=args.value_size, seed=args.seed, reps=args.reps,
        workloads=args.workloads, quick=args.quick,
        read_seconds=QUICK_READ_SECONDS if args.quick else READ_SECONDS,
        reader_seconds=QUICK_READER_SECONDS if args.quick else READER_SECONDS,
    )  # fmt: skip
    engines: list[str] = args.engines
    infos = {e: adapters.load(e).info() for e in engines}
    root = tempfile.mkdtemp(prefix="kvmap-bench-")
    started = time.time()
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
        "config": cfg.as_dict(),
        "machine": machine(root),
        "engines": infos,
        "unavailable": args.unavailable,
        "samples": {e: {} for e in engines},
        "errors": [],
        "skipped": {e: {} for e in engines},
        "rss_baseline_mib": {e: [] for e in engines},
    }
    reader_wls = [w for w in cfg.workloads if w in READERS]
    for e in engines:
        reason = infos[e]["concurrent_writer"]
        if reason:
            for w in reader_wls:
                if READERS[w][1]:
                    results["skipped"][e][w] = reason
    ctx = multiprocessing.get_context("spawn")
    most = max((READERS[w][0] for w in reader_wls), default=0)
    writer = any(READERS[w][1] for w in reader_wls)
    per_engine = child_steps(cfg) + len(reader_wls)
    progress = Progress(cfg.reps * len(engines) * per_engine)
    helpers = Helpers(ctx, most, writer) if most else None
    results["machine"]["load_average_start"] = os.getloadavg()
    try:
        if helpers is not None and helpers.readers >= 2:
            progress.describe("machine: CPU scaling of 2 processes")
            results["machine"]["cpu_scaling_2"] = cpu_scaling(helpers, cfg.reader_seconds)
        for rep in range(cfg.reps):
            shift = rep % len(engines)
            for engine in engines[shift:] + engines[:shift]:
                _run_one(ctx, helpers, engine, cfg, rep, root, results, progress, per_engine)
    finally:
        progress.close()
        if helpers is not None:
            helpers.close()
        shutil.rmtree(root, ignore_errors=True)
    results["seconds"] = time.time() - started
    results["machine"]["load_average_end"] = os.getloadavg()
    return results


def _run_one(
    ctx: Any, helpers: Helpers | None, engine: str, cfg: Config, rep: int, root: str,
    results: dict[str, Any], progress: Progress, per_engine: int,
) -> None:  # fmt: skip
    label = f"rep {rep + 1}/{cfg.reps} {engine}"
    workdir = os.path.join(root, f"{engine}-{rep}")
    os.makedirs(workdir)
    seen = [0]

    def on_step(name: str) -> None:
        if seen[0]:
            progress.advance()
        seen[0] += 1
        progress.describe(f"{label}: {name}")

    samples, errors, end = run_engine(ctx, engine, cfg, workdir, on_step)
    progress.advance(child_steps(cfg) - seen[0] + 1 if seen[0] else child_steps(cfg))
    store = results["samples"][engine]
    for name, data in samples.items():
        store.setdefault(name, []).append({"rep": rep, **data})
    if "rss" in end:
        store.setdefault("rss", []).append({"rep": rep, "value": end["rss"]})
        results["rss_baseline_mib"][engine].append(end["rss_baseline"])
    for name, text in errors:
        results["errors"].append({"engine": engine, "workload": name, "rep": rep, "error": text})
    main = os.path.join(workdir, "main")
    for name in (w for w in cfg.workloads if w in READERS):
        progress.describe(f"{label}: {name}")
        if name in results["skipped"][engine]:
            pass
        elif not end.get("main_ok") or helpers is None:
            results["errors"].append(
                {"engine": engine, "workload": name, "rep": rep, "error": "no loaded database"}
            )
        else:
            try:
                data = run_readers(helpers, engine, main, cfg, name)
            except HelperError as exc:
                results["errors"].append(
                    {"engine": engine, "workload": name, "rep": rep, "error": str(exc)}
                )
                if "died" in str(exc):
                    helpers.restart()
            else:
                store.setdefault(name, []).append({"rep": rep, **data})
                if name == "readers_1":
                    growth = data["readers"][0]["rss_growth_mib"]
                    store.setdefault("reader_rss", []).append({"rep": rep, "value": growth})
        progress.advance()
    if helpers is not None:
        try:
            helpers.release()
        except HelperError:
            helpers.restart()
    shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = argv
    if not args.engines:
        print("no engine to run", file=sys.stderr)
        return 2
    results = run(args)
    summary = report.summarize(results)
    results["summary"] = summary
    print(report.markdown(results, summary))
    if args.json:
        report.write_json(results, args.json)
        print(f"\nraw timings: {args.json}")
    if args.plot:
        why = report.plot(results, summary, args.plot)
        print(f"\nchart: {args.plot}" if why is None else f"\nno chart: {why}")
    return 1 if results["errors"] else 0
