"""Corruption: damaged files give the right data or ``kvmap.CorruptionError``, nothing else.

Real databases are damaged on disk, one corruption at a time, and opened in **child
processes** (so a hang, a SIGBUS or a SIGSEGV is caught: every child runs under a timeout,
and ``faulthandler`` stops one stuck in a single case; its return code must not be
negative).  A child applies each damage to its working copy, probes it and undoes it, many
cases per child for speed.  The damage:

* **every bit of both meta pages**, one at a time (small database);
* random bits of **leaf, branch, overflow** (first and continuation pages) and **freelist
  run** pages, of **free pages** and of pages beyond the high-water mark;
* random bits of the **WAL** files: the current one (frames to replay) and a stale one the
  tree already covers;
* every bit of the **lock file** header and random bits of its reader table;
* the data file **truncated at every page boundary**.

A probe opens the database read-only and reads every key of the model (and keys deleted
earlier, which must stay missing), scans everything, compares ``len()``, runs ``check()``
and ``kvmap check DBPATH`` (``kvmap.cli.main``).  Each read must return the model's value or
raise :class:`kvmap.CorruptionError`: never a wrong value, never another exception.  Where
the damage is certain to be detected (a page the tree reaches: every single-bit error
breaks its CRC-32C), an error must name the damaged page (for a run: its first page), both
from ``check()`` and from the CLI.  Damage that cannot matter (free pages, bytes beyond the
high-water mark, the stale WAL) must change nothing.  For WAL damage the right data is the
state of the commits whose frames precede the damaged one (docs/format.md, invariant 5).
A sample of cases is also opened writable (recovery, a commit, close and reopen).

Each test prints how many corrupt files it tried (``-s``).  The default run samples;
``-m slow`` runs larger samples.  Seeds come from the ``rng`` fixture (``KVMAP_SEED``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from model import applied, commit_ops

import kvmap
from kvmap import cli
from kvmap.check import read_freelist
from kvmap.format import (
    DATA_FILE,
    LOCK_FILE,
    LOCK_HEADER_SIZE,
    PAGE_FREELIST,
    PAGE_OVERFLOW,
    WAL_HEADER_SIZE,
)
from kvmap.node import Ovf, decode, run_header, run_pages
from kvmap.wal import decode_header, list_wals, scan_frames

ROOT = Path(__file__).resolve().parent.parent
PS = 512
CASE_TIMEOUT = 30.0  # seconds one case may take in a child before it counts as a hang
TRIED: dict[str, int] = {}  # corrupt files tried, per test (printed)

# Lock-file header bytes the sweep leaves alone: none (a slot count above 65536 is damage,
# and the lock file is remade; see test_a_huge_slot_count_in_the_lock_file_is_refused).
NSLOTS_HIGH_BYTES: tuple[int, ...] = ()
# Known kvmap bug: damage to an overflow run's length field is detected, but check() may
# blame another (healthy) page and reads name no page (strict xfail reproducer below).
TOLERATE_UNNAMED_RUN_LENGTH = False


# -- building the damaged databases' templates -----------------------------------------------


@dataclass
class Template:
    """A crash image: a tree (whose meta page has a valid predecessor), a stale WAL the tree
    covers, and the current WAL with frames to replay; the state after each of those
    frames; and where every kind of page lives."""

    path: str
    states: list[dict[bytes, bytes]]  # states[i]: the tree plus the first i current frames
    ever: list[bytes]  # every key the database ever held (those not in a state: missing)
    wal: str  # the current WAL's file name
    stale: str  # the stale WAL's file name
    frame_ends: list[int]  # end offset of each frame of the current WAL
    hwm: int
    npages: int  # pages in the data file
    newest_meta: int  # 0 or 1
    pages: dict[str, list[int]] = field(default_factory=dict)  # category -> page numbers
    run_of: dict[int, int] = field(default_factory=dict)  # run page -> the run's first page


def build(root: Path, nkeys: int, nbig: int, seed: int = 7) -> Template:
    """A template with ``nkeys`` small keys and ``nbig`` values in overflow runs."""
    rng = random.Random(seed)
    live = str(root / "live")
    ever: set[bytes] = set()
    # checkpoint_size=0: every commit folds, leaving freed pages, pending groups and a
    # freelist run in the file
    with kvmap.open(live, page_size=PS, checkpoint_size=0) as db:
        db.put_many((b"key%05d" % i, b"v%d" % i * rng.randrange(1, 12)) for i in range(nkeys))
        db.put_many((b"big%d" % i, bytes([65 + i]) * (1500 + 700 * i)) for i in range(nbig))
        commit_ops(db, [(b"key%05d" % i, None) for i in range(0, nkeys, 4)])
        db.put(b"key00001", b"updated")
        ever.update(db.keys())
    ever.update(b"key%05d" % i for i in range(nkeys))
    db = kvmap.open(live, page_size=PS, sync="full", checkpoint_size=1 << 30)
    try:
        for n in range(3):  # commits the stale WAL holds (and the checkpoint folds)
            commit_ops(db, [(b"stale%d" % n, b"s" * (n + 1)), (b"key%05d" % (4 * n + 1), None)])
        [(_, stale_path)] = list_wals(live)
        stale = Path(stale_path).read_bytes()
        db.checkpoint()
        states = [dict(db.items())]
        for n in range(8):  # the current WAL's frames
            ops: list[tuple[bytes, bytes | None]] = [
                (b"wal%02d" % n, b"w%d" % n * (3 + 20 * n)),
                (b"key%05d" % (4 * n + 2), None),
                (b"key%05d" % (4 * n + 3), b"rewritten by frame %d" % n),
            ]
            if n == 5:
                ops.append((b"walbig", b"B" * 900))  # bigger than a page: stored whole
            if n == 6:
                ops.append((b"wal00", None))
            commit_ops(db, ops)
            states.append(applied(states[-1], ops))
            ever.update(k for k, _ in ops)
        path = str(root / "image")
        shutil.copytree(live, path)  # what a crash leaves
    finally:
        db.close()
    Path(path, os.path.basename(stale_path)).write_bytes(stale)
    os.unlink(os.path.join(path, LOCK_FILE))
    ever.update(b"stale%d" % n for n in range(3))
    [(_, stale_p), (_, wal_p)] = list_wals(path)
    buf = Path(wal_p).read_bytes()
    salt, start = decode_header(buf)
    ends = [end for _, _, end in scan_frames(buf, WAL_HEADER_SIZE, salt, start)]
    assert len(ends) == 8 and buf[ends[-1] :] == bytes(len(buf) - ends[-1])  # then zeros
    tpl = Template(
        path=path, states=states, ever=sorted(ever),
        wal=os.path.basename(wal_p), stale=os.path.basename(stale_p), frame_ends=ends,
        hwm=0, npages=os.path.getsize(os.path.join(path, DATA_FILE)) // PS, newest_meta=0,
    )  # fmt: skip
    _map_pages(tpl)
    with kvmap.open(path, readonly=True) as ro:  # the image recovers every commit
        assert dict(ro.items()) == states[-1]
        ro.check()
    return tpl


def _map_pages(tpl: Template) -> None:
    """Fill ``tpl.pages`` and ``tpl.run_of`` from the newest meta's tree."""
    db = kvmap.open(tpl.path, readonly=True)
    try:
        state = db._state
        assert state is not None
        meta, pager = state.meta, state.pager
        tpl.hwm = meta.hwm
        tpl.newest_meta = meta.txnid % 2
        cats: dict[str, list[int]] = {
            k: [] for k in ("leaf", "branch", "overflow", "freelist", "free", "beyond")
        }
        stack = [meta.root]
        while stack:
            pgno = stack.pop()
            node = decode(pager.page(pgno), pgno)
            if node.kids is not None:
                cats["branch"].append(pgno)
                stack.extend(node.kids)
                continue
            cats["leaf"].append(pgno)
            for v in node.vals:  # type: ignore[union-attr]
                if isinstance(v, Ovf):
                    _, length = run_header(pager.page(v.pgno), v.pgno, PAGE_OVERFLOW)
                    for p in range(v.pgno, v.pgno + run_pages(length, PS)):
                        cats["overflow"].append(p)
                        tpl.run_of[p] = v.pgno
        if meta.freelist:
            _, length = run_header(pager.page(meta.freelist), meta.freelist, PAGE_FREELIST)
            for p in range(meta.freelist, meta.freelist + run_pages(length, PS)):
                cats["freelist"].append(p)
                tpl.run_of[p] = meta.freelist
        cats["free"] = sorted(read_freelist(pager, meta)[0].pages())
        cats["beyond"] = list(range(meta.hwm, tpl.npages))
        tpl.pages = cats
    finally:
        db.close()
    used = sum(len(v) for k, v in tpl.pages.items() if k != "beyond")
    assert used == tpl.hwm - 2, "every page below the high-water mark is in one category"


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Template:
    tpl = build(tmp_path_factory.mktemp("big"), nkeys=1500, nbig=6)
    assert all(len(tpl.pages[k]) >= 2 for k in ("leaf", "branch", "overflow", "free"))
    assert tpl.pages["freelist"]
    return tpl


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return build(tmp_path_factory.mktemp("small"), nkeys=40, nbig=1)


# -- cases -----------------------------------------------------------------------------------
# A case is a JSON object: "file" (a name in the database directory), and "flip": [offset,
# mask] or "truncate": size; "state": the index of the state it must read as; "expect":
#   "same"    nothing may change: right data, check() and the CLI pass;
#   "detect"  right data or CorruptionError, and check() (or open) and the CLI must fail
#             naming page "page";
#   "any"     right data or CorruptionError;
#   "corrupt" open must raise CorruptionError;
# "writable": also open a copy writable; "cli": run kvmap check (in the child).


def _flip_case(file: str, offset: int, bit: int, expect: str, **extra: Any) -> dict[str, Any]:
    return {"file": file, "flip": [offset, 1 << bit], "expect": expect, **extra}


def page_flips(
    tpl: Template, category: str, count: int, rng: random.Random
) -> list[dict[str, Any]]:
    """``count`` random single-bit flips in pages of ``category`` of the big template."""
    out = []
    final = len(tpl.states) - 1
    for _ in range(count):
        pgno = rng.choice(tpl.pages[category])
        offset = pgno * PS + rng.randrange(PS)
        if category in ("free", "beyond"):
            case = _flip_case(DATA_FILE, offset, rng.randrange(8), "same", state=final)
        else:
            named = tpl.run_of.get(pgno, pgno)
            case = _flip_case(DATA_FILE, offset, rng.randrange(8), "detect", state=final,
                              page=named, cli=True)  # fmt: skip
            if TOLERATE_UNNAMED_RUN_LENGTH and pgno == named and category == "overflow":
                # the run's length field: detected, but possibly not named (bug, below)
                case["unnamed_ok"] = 24 <= offset - pgno * PS < 32
        case["what"] = f"{category} page {pgno}"
        out.append(case)
    return out


def meta_flips(tpl: Template, every: int = 1) -> list[dict[str, Any]]:
    """Every ``every``-th bit of both meta pages."""
    final = len(tpl.states) - 1
    out = []
    for pgno in (0, 1):
        for bit in range(0, PS * 8, every):
            case = _flip_case(DATA_FILE, pgno * PS + bit // 8, bit % 8, "any", state=final,
                              cli=bit % 97 == 0)  # fmt: skip
            case["what"] = f"meta page {pgno}" + (" (newest)" if pgno == tpl.newest_meta else "")
            out.append(case)
    return out


def wal_flips(tpl: Template, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Random bits of the current WAL (the state is the prefix of frames before the damage;
    the header: CorruptionError) and of the stale one (nothing changes)."""
    final = len(tpl.states) - 1
    size = tpl.frame_ends[-1]
    out = []
    for _ in range(count):
        offset = rng.randrange(size)
        bit = rng.randrange(8)
        if offset < WAL_HEADER_SIZE:
            if offset >= 36:  # unused padding after the header's checksum
                case = _flip_case(tpl.wal, offset, bit, "same", state=final)
            else:
                case = _flip_case(tpl.wal, offset, bit, "corrupt", state=final)
        else:
            n = sum(1 for end in tpl.frame_ends if end <= offset)
            case = _flip_case(tpl.wal, offset, bit, "same", state=n)
        case["what"] = f"current WAL byte {offset}"
        out.append(case)
    stale_size = os.path.getsize(os.path.join(tpl.path, tpl.stale))
    for _ in range(max(1, count // 4)):
        offset = rng.randrange(stale_size)
        case = _flip_case(tpl.stale, offset, rng.randrange(8), "same", state=final)
        case["what"] = f"stale WAL byte {offset}"
        out.append(case)
    return out


def lock_flips(tpl: Template, slots: int, rng: random.Random) -> list[dict[str, Any]]:
    """Every bit of the lock file header (but the known bug's) and ``slots`` random bits of
    the reader table.  The lock file is made by the first open of the child's copy."""
    final = len(tpl.states) - 1
    out = []
    for offset in range(LOCK_HEADER_SIZE):
        if offset in NSLOTS_HIGH_BYTES:
            continue
        for bit in range(8):
            case = _flip_case(LOCK_FILE, offset, bit, "any", state=final,
                              writable=offset in (0, 8, 12, 16, 24) and bit in (0, 7))  # fmt: skip
            case["what"] = f"lock file header byte {offset}"
            out.append(case)
    for _ in range(slots):
        offset = LOCK_HEADER_SIZE + rng.randrange(126 * 64)
        case = _flip_case(LOCK_FILE, offset, rng.randrange(8), "any", state=final)
        case["what"] = f"lock file slot byte {offset}"
        out.append(case)
    return out


def truncations(tpl: Template, writable_every: int) -> list[dict[str, Any]]:
    """The data file cut at every page boundary: shorter than the high-water mark must
    raise CorruptionError; from it on, nothing is missing."""
    final = len(tpl.states) - 1
    out = []
    for n in range(tpl.npages):
        expect = "corrupt" if n < tpl.hwm else "same"
        out.append({
            "file": DATA_FILE, "truncate": n * PS, "expect": expect, "state": final,
            "what": f"data file cut to {n} pages", "writable": n % writable_every == 0,
        })  # fmt: skip
    return out


# -- the child -------------------------------------------------------------------------------


def _hex_state(state: dict[bytes, bytes]) -> dict[str, str]:
    return {k.hex(): v.hex() for k, v in state.items()}


def _damage(path: str, case: dict[str, Any]) -> bytes:
    """Apply the case's damage to the copy at ``path``; returns what undoes it."""
    target = os.path.join(path, case["file"])
    if "truncate" in case:
        with open(target, "rb") as f:
            saved = f.read()
        os.truncate(target, case["truncate"])
        return saved
    offset, mask = case["flip"]
    with open(target, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        if not b:
            raise AssertionError(f"{case['file']} has no byte {offset}")
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))
    return b""


def _undo(path: str, case: dict[str, Any], saved: bytes) -> None:
    target = os.path.join(path, case["file"])
    if "truncate" in case:
        with open(target, "wb") as f:
            f.write(saved)
    else:
        _damage(path, case)  # a flip undoes itself


def _probe(path: str, model: dict[bytes, bytes], ever: list[bytes]) -> dict[str, Any]:
    """Open read-only and read everything (the keys of ``model``, and the keys in ``ever``
    but not in it must be missing); classify what happened."""
    ghosts = [k for k in ever if k not in model]
    out: dict[str, Any] = {"open": "", "errors": [], "bad": [], "check": None}
    errors: list[str] = out["errors"]
    bad: list[str] = out["bad"]
    try:
        db = kvmap.open(path, readonly=True)
    except kvmap.CorruptionError as exc:
        out["open"] = str(exc)
        return out
    except Exception as exc:  # noqa: BLE001 - the point of the test
        bad.append(f"open raised {exc!r}")
        return out
    try:
        for key, want in [*model.items(), *((g, None) for g in ghosts)]:
            try:
                got = db.get(key)
            except kvmap.CorruptionError as exc:
                errors.append(str(exc))
                continue
            except Exception as exc:  # noqa: BLE001
                bad.append(f"get({key!r}) raised {exc!r}")
                continue
            if got != want:
                bad.append(f"get({key!r}) returned a wrong value: {got!r:.60} != {want!r:.60}")
        for reverse in (False, True):
            try:
                items = list(db.items(reverse=reverse))
            except kvmap.CorruptionError as exc:
                errors.append(str(exc))
                continue
            except Exception as exc:  # noqa: BLE001
                bad.append(f"items(reverse={reverse}) raised {exc!r}")
                continue
            if items != sorted(model.items(), reverse=reverse):
                bad.append(f"items(reverse={reverse}) differs from the model")
        if not errors and len(db) != len(model):
            bad.append(f"len() is {len(db)}, the model holds {len(model)}")
        try:
            db.check()
            out["check"] = "ok"
        except kvmap.CorruptionError as exc:
            out["check"] = str(exc)
        except Exception as exc:  # noqa: BLE001
            bad.append(f"check() raised {exc!r}")
    finally:
        try:
            db.close()
        except Exception as exc:  # noqa: BLE001
            bad.append(f"close() raised {exc!r}")
    return out


def _cli_check(path: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(["check", path])
    return code, err.getvalue()


def _writable(path: str, scratch: str, model: dict[bytes, bytes]) -> list[str]:
    """Open a copy writable (recovery folds the WAL), commit, close, reopen: the right data
    or CorruptionError.  Returns the problems."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(path, scratch)
    bad = []
    try:
        try:
            with kvmap.open(scratch) as db:
                if dict(db.items()) != model:
                    bad.append("writable open: wrong data")
                db.put(b"after-damage", b"1")
            with kvmap.open(scratch) as db:
                if dict(db.items()) != {**model, b"after-damage": b"1"}:
                    bad.append("writable reopen: wrong data")
                db.check()
        except kvmap.CorruptionError:
            pass
        except Exception as exc:  # noqa: BLE001
            bad.append(f"writable open raised {exc!r}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return bad


def child_main(job_path: str) -> None:
    """Run the cases of a job file; one JSON line per case on stdout."""
    with open(job_path) as f:
        job = json.load(f)
    states = [{bytes.fromhex(k): bytes.fromhex(v) for k, v in s.items()} for s in job["states"]]
    ever = [bytes.fromhex(k) for k in job["ever"]]
    work = job["work"]
    shutil.copytree(job["template"], work)
    kvmap.open(work, readonly=True).close()  # makes the lock file (for the lock cases)
    with open(os.path.join(work, LOCK_FILE), "rb") as f:
        lock = f.read()
    for i, case in enumerate(job["cases"]):
        print(json.dumps({"start": i}), flush=True)
        faulthandler.dump_traceback_later(CASE_TIMEOUT, exit=True)
        saved = _damage(work, case)
        try:
            res = _probe(work, states[case["state"]], ever)
            if case.get("cli"):
                res["cli_out"] = _cli_check(work)
            if case.get("writable"):
                res["bad"] += _writable(work, work + ".w", states[case["state"]])
        finally:
            _undo(work, case, saved)
            if case["file"] == LOCK_FILE:
                with open(os.path.join(work, LOCK_FILE), "wb") as f:
                    f.write(lock)
        faulthandler.cancel_dump_traceback_later()
        print(json.dumps({"case": i, **res}), flush=True)
    shutil.rmtree(work)


# -- the parent ------------------------------------------------------------------------------

CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "import test_corruption as t; t.child_main(sys.argv[2])"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_cases(
    tpl: Template, cases: list[dict[str, Any]], tmp: Path, children: int = 2
) -> list[dict[str, Any]]:
    """Run ``cases`` in ``children`` child processes at once; returns one result per case
    (the case merged in).  Fails on a hang, a signal or a child that did not finish."""
    tmp.mkdir(parents=True, exist_ok=True)
    chunks = [cases[i::children] for i in range(children)]
    procs = []
    for n, chunk in enumerate(chunks):
        if not chunk:
            continue
        job = tmp / f"job{n}.json"
        job.write_text(json.dumps({
            "template": tpl.path, "work": str(tmp / f"work{n}"), "cases": chunk,
            "states": [_hex_state(s) for s in tpl.states], "ever": [k.hex() for k in tpl.ever],
        }))  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(ROOT / "tests"), str(job)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=ROOT,
        )  # fmt: skip
        procs.append((proc, chunk))
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120 + CASE_TIMEOUT + 0.2 * len(cases)
    for proc, chunk in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        started = [line["start"] for line in lines if "start" in line]
        done = {line["case"]: line for line in lines if "case" in line}
        current = chunk[started[-1]] if started and started[-1] not in done else None
        tail = err.decode(errors="replace")[-3000:]
        assert proc.returncode is not None and proc.returncode >= 0, (
            f"child killed by signal {-(proc.returncode or 0)} in case {current}: {tail}"
        )
        assert proc.returncode == 0 and len(done) == len(chunk), (
            f"child exited {proc.returncode} in case {current} (a hang stops it): {tail}"
        )
        results.extend({**chunk[i], **done[i]} for i in range(len(chunk)))
    return results


def _names(msg: str, page: int) -> bool:
    return re.search(rf"\bpage {page}\b", msg) is not None


def verify(results: list[dict[str, Any]], label: str) -> dict[str, int]:
    """Assert every result meets its expectation; returns outcome counts."""
    problems: list[str] = []
    counts = {"right data": 0, "CorruptionError on open": 0, "CorruptionError on read": 0,
              "check() failed": 0}  # fmt: skip
    for r in results:
        how = f"flip {r['flip'][0]}/{r['flip'][1]:#x}" if "flip" in r else "cut"
        what = f"{r['what']} ({how})"
        expect = r["expect"]
        for b in r["bad"]:
            problems.append(f"{what}: {b}")
        check = r["check"] if r["check"] not in (None, "ok") else ""
        messages = [m for m in (r["open"], *r["errors"], check) if m]
        if r["open"]:
            counts["CorruptionError on open"] += 1
        elif r["errors"]:
            counts["CorruptionError on read"] += 1
        else:
            counts["right data"] += 1
        if r["check"] not in (None, "ok"):
            counts["check() failed"] += 1
        cli_code, cli_err = r.get("cli_out", (None, ""))
        if cli_code is not None and cli_code not in (0, 1):
            problems.append(f"{what}: kvmap check exited {cli_code}: {cli_err}")
        if cli_code == 1 and not cli_err.startswith("kvmap: error: "):
            problems.append(f"{what}: kvmap check printed {cli_err!r}")
        if expect == "same":
            if messages:
                problems.append(f"{what}: harmless damage raised {messages[0]}")
            if cli_code not in (None, 0):
                problems.append(f"{what}: kvmap check failed on harmless damage: {cli_err}")
        elif expect == "corrupt":
            if not r["open"]:
                problems.append(f"{what}: open did not raise CorruptionError")
        elif expect == "detect":
            page = r["page"]
            if not r["open"] and r["check"] == "ok":
                problems.append(f"{what}: check() passed")
            elif r.get("unnamed_ok"):
                counts["known bug: unnamed"] = counts.get("known bug: unnamed", 0) + 1
                if cli_code not in (None, 1):
                    problems.append(f"{what}: kvmap check passed")
            elif not any(_names(m, page) for m in messages):
                problems.append(f"{what}: no error names page {page}: {messages[:2]}")
            if cli_code is not None and not r.get("unnamed_ok"):
                if not (cli_code == 1 and _names(cli_err, page)):
                    problems.append(f"{what}: kvmap check does not name page {page}: {cli_err!r}")
    TRIED[label] = TRIED.get(label, 0) + len(results)
    print(f"{label}: {len(results)} corrupt files tried: {counts}")
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:30])
    return counts


# -- the tests -------------------------------------------------------------------------------


def test_every_bit_of_both_meta_pages(small: Template, tmp_path: Path) -> None:
    """A damaged meta page is ignored; the other one's tree is used and the stale WAL
    (still there, as after a crash before the checkpoint deleted it) fills the gap."""
    results = run_cases(small, meta_flips(small), tmp_path)
    assert len(results) == 2 * PS * 8
    counts = verify(results, "meta pages, stale WAL kept")
    assert counts["right data"] == len(results)  # the fallback recovers every commit


def test_meta_bits_without_the_stale_wal(small: Template, tmp_path: Path) -> None:
    """Without the WAL that fills the gap, falling back to the older meta must raise
    CorruptionError ("commits ... are missing"), never serve the older tree."""
    tpl = _without_stale(small, tmp_path)
    cases = meta_flips(tpl, every=13)
    results = run_cases(tpl, cases, tmp_path)
    counts = verify(results, "meta pages, stale WAL gone")
    newest = [r for r in results if "(newest)" in r["what"]]
    assert newest and all(r["open"] for r in newest)
    assert counts["right data"] == len(results) - len(newest)


def _without_stale(tpl: Template, tmp_path: Path) -> Template:
    path = str(tmp_path / "nostale")
    shutil.copytree(tpl.path, path)
    os.unlink(os.path.join(path, tpl.stale))
    return Template(**{**tpl.__dict__, "path": path})


@pytest.mark.parametrize(
    ("category", "count"),
    [("leaf", 300), ("branch", 150), ("overflow", 250), ("freelist", 120), ("free", 80),
     ("beyond", 40)],
)  # fmt: skip
def test_random_bits_in_data_pages(
    big: Template, tmp_path: Path, rng: random.Random, category: str, count: int
) -> None:
    cases = page_flips(big, category, count, rng)
    for case in cases[:: max(1, count // 8)]:
        case["writable"] = True
    verify(run_cases(big, cases, tmp_path), f"{category} pages")


def test_random_bits_in_the_wal(big: Template, tmp_path: Path, rng: random.Random) -> None:
    cases = wal_flips(big, 300, rng)
    for case in cases[::25]:
        case["writable"] = True
    verify(run_cases(big, cases, tmp_path), "WAL files")


def test_bits_of_the_lock_file(small: Template, tmp_path: Path, rng: random.Random) -> None:
    verify(run_cases(small, lock_flips(small, 200, rng), tmp_path), "lock file")


def test_data_file_truncated_at_every_page_boundary(big: Template, tmp_path: Path) -> None:
    cases = truncations(big, writable_every=20)
    assert len(cases) == big.npages
    verify(run_cases(big, cases, tmp_path), "truncated data file")


@pytest.mark.parametrize("category", ["leaf", "branch", "overflow", "freelist"])
def test_cli_check_names_the_damaged_page(big: Template, tmp_path: Path, category: str) -> None:
    """The real command, in its own process: exit status 1, one line naming the page."""
    path = str(tmp_path / "db")
    shutil.copytree(big.path, path)
    pages = big.pages[category]
    pgno = pages[len(pages) // 2]
    _damage(path, {"file": DATA_FILE, "flip": [pgno * PS + PS // 2, 0x10]})
    proc = subprocess.run(
        [sys.executable, "-m", "kvmap", "check", path],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc
    named = big.run_of.get(pgno, pgno)
    assert proc.stderr.startswith("kvmap: error: ") and _names(proc.stderr, named), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    TRIED["kvmap check (process)"] = TRIED.get("kvmap check (process)", 0) + 1


@pytest.mark.slow
def test_many_random_bits(big: Template, tmp_path: Path, rng: random.Random) -> None:
    cases: list[dict[str, Any]] = []
    for category, count in [("leaf", 3000), ("branch", 1500), ("overflow", 2500),
                            ("freelist", 1000), ("free", 500), ("beyond", 200)]:  # fmt: skip
        cases += page_flips(big, category, count, rng)
    cases += wal_flips(big, 3000, rng)
    for case in cases[::50]:
        case["writable"] = True
    verify(run_cases(big, cases, tmp_path), "slow sample")
    verify(run_cases(big, lock_flips(big, 3000, rng), tmp_path / "lock"), "slow lock file")


@pytest.mark.slow
def test_every_bit_of_both_meta_pages_of_the_big_database(big: Template, tmp_path: Path) -> None:
    verify(run_cases(big, meta_flips(big), tmp_path), "meta pages (big)")
    tpl = _without_stale(big, tmp_path)
    verify(run_cases(tpl, meta_flips(tpl), tmp_path), "meta pages (big), stale WAL gone")


# -- reproducers of the bugs found -----------------------------------------------------------


def test_a_huge_slot_count_in_the_lock_file_is_refused(small: Template, tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    shutil.copytree(small.path, path)
    kvmap.open(path, readonly=True).close()  # makes the lock file: 126 slots
    _damage(path, {"file": LOCK_FILE, "flip": [15, 0x01]})  # nslots 126 -> 2**24 + 126
    lock = os.path.join(path, LOCK_FILE)
    try:
        try:
            kvmap.open(path, readonly=True).close()
        except kvmap.CorruptionError:
            pass
        assert os.path.getsize(lock) <= LOCK_HEADER_SIZE + 64 * 65536
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_damaged_overflow_length_names_the_run(big: Template, tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    shutil.copytree(big.path, path)
    first = big.run_of[big.pages["overflow"][0]]
    with open(os.path.join(path, DATA_FILE), "rb") as f:
        f.seek(first * PS + 24)
        assert int.from_bytes(f.read(8), "little") < 1 << 20
    _damage(path, {"file": DATA_FILE, "flip": [first * PS + 26, 0x10]})  # length += 1 MiB
    with kvmap.open(path, readonly=True) as db:
        with pytest.raises(kvmap.CorruptionError) as info:
            db.check()
        assert _names(str(info.value), first), str(info.value)  # it blames page hwm
        with pytest.raises(kvmap.CorruptionError) as info:
            dict(db.items())
        assert _names(str(info.value), first), str(info.value)


def test_check_reports_a_damaged_meta_page(small: Template, tmp_path: Path) -> None:
    """A meta page that does not verify, other than the one in use, is what a crash during
    a checkpoint leaves, so check() passes; stats() and `kvmap check` report it."""
    path = str(tmp_path / "db")
    shutil.copytree(small.path, path)
    older = 1 - small.newest_meta
    _damage(path, {"file": DATA_FILE, "flip": [older * PS + 100, 0x01]})
    with kvmap.open(path, readonly=True) as db:
        assert dict(db.items()) == small.states[-1]
        db.check()
        assert re.search(rf"meta page {older}\b", db.stats()["other_meta_problem"] or "")
    out = subprocess.run(
        [sys.executable, "-m", "kvmap", "check", path], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert re.search(rf"note: meta page {older}\b", out.stdout), out.stdout
    with kvmap.open(path) as db:  # an undamaged pair reports nothing
        db.put(b"fresh", b"1")
        db.checkpoint()
        db.put(b"fresh2", b"1")
        db.checkpoint()
        assert db.stats()["other_meta_problem"] is None


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    if TRIED:
        print(f"\ncorrupt files tried: {sum(TRIED.values())} {TRIED}")
