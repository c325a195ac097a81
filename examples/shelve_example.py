"""A persistent dictionary of Python objects: the stdlib shelve module on kvmap.

``shelve`` stores any picklable object under a str key in a ``dbm`` database.
``kvmap.dbm.open`` is a ``dbm`` database, so ``shelve.Shelf(kvmap.dbm.open(...))`` is a
shelf kept in kvmap: crash-safe commits, and readers in other processes while one writes.

(``shelve.open(filename)`` always picks one of the stdlib's own dbm modules, so wrap the
kvmap database in ``shelve.Shelf`` yourself, as below.)

Run it:  python examples/shelve_example.py [DBPATH]
"""

from __future__ import annotations

import os
import shelve
import shutil
import sys
import tempfile

import kvmap.dbm


def main() -> int:
    tmp = None if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="kvmap-shelve-")
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tmp, "todo")  # type: ignore[arg-type]
    try:
        # "c": read-write, created if missing.  Each assignment is one kvmap commit.
        with shelve.Shelf(kvmap.dbm.open(path, "c")) as shelf:
            shelf["lists"] = ["home", "work"]
            shelf["home"] = [{"task": "water the plants", "done": False}]
            shelf["work"] = [{"task": "review the backup runbook", "done": False}]

            # A shelf hands out copies: changing a fetched object changes nothing stored.
            # Read, change, store back (or open the Shelf with writeback=True).
            work = shelf["work"]
            work.append({"task": "ship 0.1.0", "done": True})
            shelf["work"] = work

        # Reopen read-only ("r"): everything is there, and writes are refused.
        with shelve.Shelf(kvmap.dbm.open(path, "r")) as shelf:
            for name in shelf["lists"]:
                items = shelf[name]
                done = sum(item["done"] for item in items)
                print(f"{name}: {len(items)} task(s), {done} done")
                for item in items:
                    print(f"  [{'x' if item['done'] else ' '}] {item['task']}")
            print(f"keys, in kvmap's key order: {sorted(shelf.keys()) == list(shelf.keys())}")
            try:
                shelf["home"] = []
            except kvmap.dbm.error as exc:
                print(f"read-only shelf: {exc}")

        # The same data through kvmap's own API: keys are UTF-8, values are pickles.
        with kvmap.open(path, readonly=True) as db:
            print(f"kvmap sees {len(db)} keys: {[k.decode() for k in db.keys()]}")
        return 0
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
