"""Page I/O for one data file: reads through the segment mappings, writes through the file
layer, and a bounded cache of decoded pages.

Design note: the decoded-page cache.  A committed page never changes while any snapshot can
reach it (invariant 1), so a page is decoded once and the decoded object is shared by every
reader in the process; a page number is only reused after no snapshot can reach its old
contents (invariant 4), and the writer replaces the cache entry when it writes the new
contents.  So a cache hit needs no validation.  The cache is bounded by entry count
(``cache_size`` bytes / page size / 2, as a decoded page costs about twice its size in
Python objects) and evicts the leaves among the oldest-inserted quarter when full (branch
pages stay: they are few and on every path): a hit stays one ``dict.get``, with no LRU
bookkeeping on the read path.

Design note: lookups past a full cache.  When a tree is several times the cache, most
lookups miss, and a miss that decodes a leaf (~2 µs), caches it and later frees the node it
evicts (~2 µs more) costs far more than the lookup.  So :meth:`visit`, the lookup path,
never evicts: once the cache is full, a leaf it misses is *peeked* (its keys unpacked in one
C call, its values left in the page copy, ~1 µs) for that lookup only, and the cache keeps
what it holds.  A uniform random workload hits the cache as often as with any eviction
policy (the cached fraction of the leaves); a shifting hot set pays the peek, not a decode,
on each miss.  A peek verifies the page's checksum every time (~0.3 µs): it reads the
mapped page again, and whatever the disk holds now must check, as a decode's must.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import CorruptionError
from .fileio import FileSystem
from .segments import Segments, segment_end

Decoder = Callable[[bytes, int], Any]
Peeker = Callable[[bytes, int], Any]


class Pager:
    """Reads, writes and caches pages of one open data file."""

    __slots__ = (
        "fs",
        "fd",
        "page_size",
        "segments",
        "cache",
        "max_cached",
        "decode",
        "peek",
        "__weakref__",
    )

    def __init__(
        self, fs: FileSystem, fd: int, page_size: int, decode: Decoder, cache_size: int,
        peek: Peeker | None = None,
    ) -> None:  # fmt: skip
        self.fs = fs
        self.fd = fd
        self.page_size = page_size
        self.segments = Segments(fs, fd, page_size)
        self.cache: dict[int, Any] = {}
        self.max_cached = max(64, cache_size // (2 * page_size))
        self.decode = decode
        self.peek = peek

    # -- reading -----------------------------------------------------------------------
    def node(self, pgno: int) -> Any:
        """The decoded page ``pgno`` (cached).  Cost: ~50 ns on a hit; one page copy and a
        decode on a miss.  Raises :class:`CorruptionError` if the page fails its checks."""
        node = self.cache.get(pgno)
        if node is None:
            node = self.decode(self.segments.page(pgno), pgno)
            self.remember(pgno, node)
        return node

    def visit(self, pgno: int) -> Any:
        """Page ``pgno`` for one lookup: the cached node, or the page decoded and cached
        while the cache has room, or (cache full) a leaf peeked for this lookup only (see
        the design note).  Cost: ~50 ns on a hit; ~1 µs for a peek.  Raises
        :class:`CorruptionError` if the page fails its checks."""
        cache = self.cache
        node = cache.get(pgno)
        if node is not None:
            return node
        buf = self.segments.page(pgno)
        if len(cache) >= self.max_cached and self.peek is not None:
            node = self.peek(buf, pgno)
            if node is not None:
                return node
        node = self.decode(buf, pgno)
        self.remember(pgno, node)
        return node

    def forget(self) -> None:
        """Drop every cached page (page numbers may have been reused)."""
        self.cache.clear()

    def remember(self, pgno: int, node: Any) -> None:
        """Put a decoded page in the cache (the writer does this for pages it wrote)."""
        cache = self.cache
        cache[pgno] = node
        if len(cache) > self.max_cached:
            # Evict the leaves among the oldest quarter: branch pages (about 1% of a tree,
            # and on every lookup's path) stay, unless there are too few leaves to matter.
            # list(cache) copies the keys in one C call (atomic under the GIL); pop()
            # tolerates another thread evicting the same entries concurrently.
            oldest = list(cache)[: len(cache) // 4]
            get = cache.get
            victims = [p for p in oldest if getattr(get(p), "kids", None) is None]
            if len(victims) < len(oldest) // 2:
                victims = oldest
            for p in victims:
                cache.pop(p, None)

    def page(self, pgno: int) -> bytes:
        """Raw bytes of page ``pgno``, uncached.  Raises :class:`CorruptionError` beyond EOF."""
        return self.segments.page(pgno)

    def read(self, offset: int, size: int) -> bytes:
        """Raw bytes of the file (e.g. a whole run).  Raises :class:`CorruptionError` beyond
        the end of the file."""
        return self.segments.read(offset, size)

    # -- writing -----------------------------------------------------------------------
    def ensure_pages(self, npages: int) -> bool:
        """Make the file (and the mappings) cover at least ``npages`` pages, growing it to
        the next segment boundary.  Returns True if the file grew; the caller's next
        ``sync()`` makes the new size durable before any meta page refers to it
        (invariant 7).  Raises ``OSError``."""
        need = npages * self.page_size
        if need <= self.segments.mapped:
            return False
        size = self.fs.size(self.fd)
        if size < need:
            size = segment_end(need, self.page_size)
            self.fs.truncate(self.fd, size)
        self.segments.map_to(size)
        return True

    def write(self, pgno: int, data: bytes) -> None:
        """Write ``data`` (one page or a run) at page ``pgno``.  Raises ``OSError``."""
        self.fs.pwrite(self.fd, data, pgno * self.page_size)

    def write_all(self, pages: list[tuple[int, bytes]]) -> None:
        """Write many pages, sorted by number, coalescing neighbours into one ``pwrite``."""
        pages.sort(key=lambda p: p[0])
        ps = self.page_size
        i = 0
        n = len(pages)
        while i < n:
            start, data = pages[i]
            end = start + len(data) // ps
            chunk = [data]
            i += 1
            while i < n and pages[i][0] == end and len(chunk) < 256:
                chunk.append(pages[i][1])
                end += len(pages[i][1]) // ps
                i += 1
            self.fs.pwrite(self.fd, b"".join(chunk) if len(chunk) > 1 else data, start * ps)

    def sync(self) -> None:
        """``fdatasync`` the data file.  Raises ``OSError``."""
        self.fs.fdatasync(self.fd)

    def file_size(self) -> int:
        """Current size of the data file in bytes."""
        return self.fs.size(self.fd)

    def check_covers(self, npages: int) -> None:
        """Map the file up to ``npages`` pages, raising :class:`CorruptionError` if the file
        is shorter (a truncated file must not be touched beyond its end: SIGBUS)."""
        need = npages * self.page_size
        if need <= self.segments.mapped:
            return
        size = self.fs.size(self.fd)
        if size < need:
            raise CorruptionError(
                f"data file is {size} bytes but the meta page needs {need} ({npages} pages)"
            )
        self.segments.map_to(size - size % self.page_size)

    def close(self) -> None:
        """Drop the cache and the mappings (the file descriptor belongs to the caller)."""
        self.forget()
        self.segments.close()
