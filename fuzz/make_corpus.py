"""Write the seed corpus, fuzz/corpus/<target>/seed-*, from real kvmap files, and the
hand-made reproducers of the bugs found, fuzz/crashes/<target>/ (kept if present).

    python fuzz/make_corpus.py

Each seed is a valid input in the target's layout (see fuzz/targets.py): a mode byte, then
bytes taken from a database kvmap wrote (pages, meta pages, a WAL file, a lock file), or an
operation program for ``ops``.  Rerunning replaces the seeds (WAL salts and lock tokens are
random, so the bytes differ from run to run; the structure does not).
"""

from __future__ import annotations

import os
import random
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import targets  # noqa: E402

import kvmap  # noqa: E402
from kvmap import fileio, meta, node, wal  # noqa: E402
from kvmap.format import (  # noqa: E402
    FORMAT_VERSION,
    LOCK_HEADER,
    LOCK_HEADER_SIZE,
    LOCK_MAGIC,
    LOCK_SLOT_SIZE,
    PAGE_BRANCH,
    PAGE_FREELIST,
    PAGE_HEADER,
    PAGE_LEAF,
    PAGE_OVERFLOW,
    RUN_LENGTH,
)

PS_MODE = {512: 0, 1024: 2, 4096: 3}


def write(target: str, name: str, data: bytes) -> None:
    path = os.path.join(targets.corpus_dir(target), name)
    with open(path, "wb") as f:
        f.write(data)


def sample_db(path: str, page_size: int) -> bytes:
    """A database with a multi-level tree, overflow values and free pages; its data file."""
    with fileio.installed(targets.FuzzFS()):
        db = kvmap.open(path, page_size=page_size, sync="off", checkpoint_size=0)
        for i in range(120 if page_size == 512 else 400):
            db.put(b"user:%05d" % i, b"v" * (i % 50))
        db.put(b"big", bytes(range(256)) * 12)
        for i in range(0, 120, 4):
            db.delete(b"user:%05d" % i)
        db.close()
    with open(os.path.join(path, "kvmap.data"), "rb") as f:
        return f.read()


def page_seeds(data: bytes, ps: int) -> None:
    m, _ = meta.pick(data[:ps], data[ps : 2 * ps])
    wanted = {PAGE_LEAF: "leaf", PAGE_BRANCH: "branch", PAGE_OVERFLOW: "overflow",
              PAGE_FREELIST: "freelist"}  # fmt: skip
    for pgno in range(2, m.hwm):
        page = data[pgno * ps : (pgno + 1) * ps]
        _, ptype, _, _, stored, _ = PAGE_HEADER.unpack_from(page, 0)
        if ptype not in wanted or stored != pgno:
            continue
        name = wanted.pop(ptype)
        if ptype in (PAGE_OVERFLOW, PAGE_FREELIST):
            (length,) = RUN_LENGTH.unpack_from(page, 24)
            page = data[pgno * ps : (pgno + node.run_pages(length, ps)) * ps]
        mode = PS_MODE[ps] | 0x08
        write("page", f"seed-{name}-{ps}", bytes([mode]) + page)
    write("meta", f"seed-meta-{ps}", bytes([PS_MODE[ps]]) + data[: 2 * ps])


def wal_seeds(root: str) -> None:
    """WAL files continuing the fuzz template's database (so that recovery replays them)."""
    tpl = targets.Template.get()
    path = os.path.join(root, "wal")
    os.makedirs(path)
    tpl.install(path)
    with fileio.installed(targets.FuzzFS()):
        db = kvmap.open(path, page_size=512, sync="normal")
        db.put(b"key001", b"changed")
        db.delete(b"key002")
        with db.begin(write=True) as txn:
            txn.put(b"new", b"N" * 300)
            txn.put(b"\x00", b"")
            txn.delete(b"key004")
        db.put(b"key005", b"x")
        (_, walpath), *_ = wal.list_wals(path)
        with open(walpath, "rb") as f:
            raw = f.read()
        db.close()
    write("wal", "seed-wal", bytes([0x00]) + raw)
    write("wal", "seed-wal-writable", bytes([0x20]) + raw)
    write("wal", "seed-wal-torn", bytes([0x00]) + raw[:-7])
    write("wal", "seed-wal-header-only", bytes([0x00]) + raw[:64])


def lockfile_seeds(root: str) -> None:
    path = os.path.join(root, "lock")
    with fileio.installed(targets.FuzzFS()):
        db = kvmap.open(path, page_size=512, max_readers=4)
        db.put(b"a", b"1")
        ro = kvmap.open(path, readonly=True)
        with ro.begin() as snap:
            snap.get(b"a")
            with open(os.path.join(path, "kvmap.lock"), "rb") as f:
                live = f.read()
        ro.close()
        db.close()
    write("lockfile", "seed-lock-live", bytes([0x00]) + live)
    write("lockfile", "seed-lock-live-open", bytes([0x10]) + live)


def ops_seeds() -> None:
    rng = random.Random(20240601)
    for i in range(6):
        n = rng.choice((40, 120, 400))
        write("ops", f"seed-random-{i}", bytes(rng.randrange(256) for _ in range(n)))
    # every operation once, in order, on each sync mode / checkpoint size
    program = bytes(b for op in range(len(targets.OPS)) for b in (op, 3, 1, 2, 0x41, 5))
    for cfg in (0, 5, 10, 15):
        write("ops", f"seed-all-ops-{cfg}", bytes([cfg]) + program * 3)


def bug_reproducers() -> None:
    """Hand-made inputs for the bugs found (fuzz/crashes/<target>/): ``bug-*`` reproduce an
    entry of targets.KNOWN_BUGS, ``fixed-*`` a bug fixed since.  Existing files are kept."""
    tpl = targets.Template.get()
    salt, start = 0x5EED, tpl.wal_seq
    frame = wal.encode_frame(salt, start + 1, [(b"k" * 200, b"v")])
    files = {
        ("wal", "bug-wal-oversized-key-200"): bytes([0x00])
        + wal.encode_header(salt, start)
        + frame,
        ("wal", "bug-wal-oversized-key-600-writable"): bytes([0x20])
        + wal.encode_header(salt, start)
        + wal.encode_frame(salt, start + 1, [(b"k" * 600, b"v")]),
    }
    for nslots, name in ((0, "zero-slots"), (2**32 - 1, "huge-slots")):
        name += f"-nslots-{nslots}"
        head = LOCK_HEADER.pack(LOCK_MAGIC, FORMAT_VERSION, nslots, 0, 0, 0, 0)
        body = head.ljust(LOCK_HEADER_SIZE + 4 * LOCK_SLOT_SIZE, b"\0")
        files["lockfile", f"fixed-lockfile-{name}"] = bytes([0x10]) + body
    for (target, name), data in files.items():
        os.makedirs(targets.crashes_dir(target), exist_ok=True)
        path = os.path.join(targets.crashes_dir(target), name)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)


def main() -> None:
    for target in targets.TARGETS:
        d = targets.corpus_dir(target)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    root = os.path.join(targets.scratch_root(), "corpus")
    os.makedirs(root)
    for ps in (512, 4096):
        page_seeds(sample_db(os.path.join(root, f"db{ps}"), ps), ps)
    wal_seeds(root)
    lockfile_seeds(root)
    ops_seeds()
    bug_reproducers()
    for target in targets.TARGETS:
        seeds = sorted(os.listdir(targets.corpus_dir(target)))
        for name in seeds:  # every seed is a passing input
            with open(os.path.join(targets.corpus_dir(target), name), "rb") as f:
                bug = targets.run(target, f.read())
            if bug:
                print(f"  {target}/{name}: hits known bug {bug}")
        print(f"{target}: {len(seeds)} seeds")
    shutil.rmtree(targets.scratch_root(), ignore_errors=True)


if __name__ == "__main__":
    main()
