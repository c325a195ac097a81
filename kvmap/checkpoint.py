"""Folding writes into the tree: the copy-on-write commit of a sorted batch.

Commits go to the WAL and the memtable; a *checkpoint* later applies the memtable to the
tree as one sorted batch with :func:`fold` and flips the meta page, which then records the
last commit sequence the tree covers (``wal_seq``).  Bulk loads use :func:`fold` too.

The ordered steps (a crash between any two leaves the previous meta and its tree intact):

1. release pending pages that no registered reader can reach any more (invariant 4);
2. apply the batch to the tree, copy-on-write (only new pages are written);
3. free the replaced pages and persist the freelist as a new run;
4. extend the file (and the mappings) to cover the new high-water mark (invariant 7);
5. write every new page, then ``fdatasync``;
6. write meta page ``txnid % 2``, then ``fdatasync``.

Only after step 6 may the WAL files the meta covers be deleted (the caller does that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .btree import TreeWriter
from .fileio import failpoint
from .format import PAGE_FREELIST, RUN_DATA_OFFSET
from .freelist import Freelist
from .meta import Meta
from .node import encode_run, run_header, run_pages
from .pager import Pager


def fold(
    pager: Pager, freelist: Freelist, meta: Meta, keys: Sequence[bytes],
    vals: Sequence[bytes | None], wal_seq: int, oldest_reader: Callable[[int], int],
) -> tuple[Meta, int]:  # fmt: skip
    """Apply the batch ``keys``/``vals`` (parallel lists: keys sorted and unique, value None
    deletes) to the tree of ``meta`` and commit it durably (steps 1-6 above).  Returns the
    new meta and the change in entries; puts the new pages' decoded nodes in the pager's
    cache.  ``oldest_reader(limit)`` gives the oldest tree txn id a registered reader
    holds.  Raises ``OSError`` on I/O failure (the caller must then stop using the handle)
    and :class:`~kvmap.CorruptionError`."""
    txnid = meta.txnid + 1
    ps = meta.page_size
    # 1. the meta being replaced is durable (checkpoints always sync), so only readers count
    freelist.release(oldest_reader(meta.txnid))
    # 2. the batch, copy-on-write
    writer = TreeWriter(pager, freelist, txnid, meta.hwm)
    root, depth = writer.apply(meta.root, meta.depth, keys, vals)
    # 3. the old freelist run is freed like any replaced page; the new run is allocated
    #    last, which only shrinks what it must hold, so the estimate is an upper bound.
    if meta.freelist:
        # No snapshot reads a freelist run, so the old run waits only for this meta to be
        # durable (a torn meta falls back to the old one, which names the old run): it goes
        # into group 0, which the next fold releases whatever readers hold.  Pending on
        # readers instead, runs listing ever more pending pages would pile up while a
        # snapshot is held, and the file would grow exponentially.
        _, length = run_header(pager.page(meta.freelist), meta.freelist, PAGE_FREELIST)
        freelist.add_pending(0, list(range(meta.freelist, meta.freelist + run_pages(length, ps))))
    freelist.add_pending(txnid, writer.freed)
    fl_pgno = 0
    if len(freelist):
        npages = run_pages(freelist.encoded_size(), ps)
        fl_pgno = writer.alloc(npages)
        payload = freelist.encode()
        # Taking the run's own pages off the list may leave it needing fewer pages than
        # allocated: pad the payload so its recorded length spans every page of the run
        # (the decoder ignores bytes after the groups), or those pages would leak.
        capacity = npages * ps - RUN_DATA_OFFSET
        assert len(payload) <= capacity
        payload += bytes(capacity - len(payload))
        writer.runs[fl_pgno] = encode_run(PAGE_FREELIST, fl_pgno, txnid, payload, ps)
    new = Meta(
        txnid, ps, root, fl_pgno, writer.hwm, meta.entries + writer.delta, depth, wal_seq,
        meta.wal_salt,
    )  # fmt: skip
    # 4. grow the file before anything refers to the new pages (invariant 7)
    pager.ensure_pages(new.hwm)
    # 5. pages, then sync
    pager.write_all(writer.encoded_pages())
    pager.sync()
    failpoint("ckpt-after-pages")
    # 6. meta, then sync
    pager.write(txnid % 2, new.encode())
    pager.sync()
    for pgno, node in writer.dirty.items():  # decoded already: straight into the cache
        pager.remember(pgno, node)
    return new, writer.delta
