"""The data file mapped as a sequence of read-only segments.

Design note: why segments.  A single ``mmap`` of the whole file would have to be resized (or
unmapped and mapped again) when the file grows, which invalidates every memoryview and every
pointer a reader in another thread is using: LMDB avoids that by making the user choose a
huge map size up front.  kvmap instead maps the file in *segments*, each its own ``mmap``
object, and never resizes or unmaps one while the database is open.  Growth extends the file
to the end of the next segment and maps only the new range, so readers never stall and
nothing they hold moves.

Segment sizes double from :func:`first_segment` bytes (64 KiB for 4 KiB pages) up to
:data:`SEGMENT_CAP` (1 GiB), then stay at the cap: a database of a few keys is a 64 KiB
(sparse) file, and a terabyte needs about a thousand mappings.  Segment boundaries are page
aligned, so a page never straddles two mappings; an overflow run may, and
:meth:`Segments.read` stitches it.

Invariant 7 (design.md): nothing is read from a mapping beyond the bytes it covers, and a
mapping only covers bytes that exist in the file when it is made.  Every read checks its
range against the mapped size first and raises :class:`~kvmap.CorruptionError` instead of
touching an unmapped byte (which would be SIGBUS, not an exception).
"""

from __future__ import annotations

import mmap
from bisect import bisect_right

from .errors import CorruptionError, DatabaseClosedError
from .fileio import FileSystem

SEGMENT_CAP = 1 << 30
_MIN_FIRST = 64 * 1024


def first_segment(page_size: int) -> int:
    """Size in bytes of segment 0: 64 KiB, or 16 pages when pages are larger than 4 KiB.

    >>> first_segment(512), first_segment(4096), first_segment(65536)
    (65536, 65536, 1048576)
    """
    return max(_MIN_FIRST, 16 * page_size)


def segment_end(nbytes: int, page_size: int) -> int:
    """The smallest segment boundary at or above ``nbytes``: the size the file is grown to
    so that ``nbytes`` fit.

    >>> segment_end(1, 4096), segment_end(65536, 4096), segment_end(65537, 4096)
    (65536, 65536, 196608)
    """
    size = first_segment(page_size)
    end = size
    while end < nbytes:
        size = min(size * 2, SEGMENT_CAP)
        end += size
    return end


class Segments:
    """Read-only mappings covering ``[0, mapped)`` of one file, in segment pieces.

    Cost: :meth:`page` is a ``bisect`` plus one slice copy (~0.6 µs for 4 KiB); growth is one
    ``ftruncate`` and one ``mmap`` per new segment.
    """

    __slots__ = ("_fs", "_fd", "page_size", "_starts", "_ends", "_maps", "mapped", "closed")

    def __init__(self, fs: FileSystem, fd: int, page_size: int) -> None:
        self._fs = fs
        self._fd = fd
        self.page_size = page_size
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._maps: list[mmap.mmap] = []
        self.mapped = 0
        self.closed = False

    def map_to(self, size: int) -> None:
        """Map ``[mapped, size)``; the file must already be at least ``size`` bytes long.

        New ranges are mapped segment by segment (following the doubling schedule); a file
        whose size is not a segment boundary gets a shorter last piece.
        Raises ``OSError`` if ``mmap`` fails.
        """
        while self.mapped < size:
            # mmap offsets must be multiples of the allocation granularity; after a short
            # last piece the next mapping starts a little early and overlaps it (harmless:
            # lookups take the newest mapping that starts at or before an offset).
            start = self.mapped - self.mapped % mmap.ALLOCATIONGRANULARITY
            end = min(segment_end(self.mapped + 1, self.page_size), size)
            m = self._fs.mmap(self._fd, end - start, start)
            self._starts.append(start)
            self._ends.append(end)
            self._maps.append(m)
            self.mapped = end

    def page(self, pgno: int) -> bytes:
        """A copy of page ``pgno``.  Raises :class:`CorruptionError` if the page lies beyond
        the mapped file."""
        ps = self.page_size
        off = pgno * ps
        i = bisect_right(self._starts, off) - 1
        if i < 0 or off + ps > self._ends[i]:
            raise CorruptionError(f"page {pgno} lies beyond the end of the data file")
        rel = off - self._starts[i]
        try:
            return self._maps[i][rel : rel + ps]
        except ValueError:
            self._raise_if_closed()
            raise

    def _raise_if_closed(self) -> None:
        """Another thread closed the database under a reader: say so (the mappings stay
        indexable after close, so only the slice of a closed ``mmap`` can fail)."""
        if self.closed:
            raise DatabaseClosedError("the database was closed during the read")

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``, stitched across segments.  Raises
        :class:`CorruptionError` if the range is not entirely mapped."""
        if offset < 0 or size < 0 or offset + size > self.mapped:
            raise CorruptionError(
                f"read of {size} bytes at offset {offset} runs past the end of the data file"
            )
        if size == 0:
            return b""
        try:
            return self._read(offset, size)
        except ValueError:
            self._raise_if_closed()
            raise

    def _read(self, offset: int, size: int) -> bytes:
        i = bisect_right(self._starts, offset) - 1
        end = self._ends[i]
        rel = offset - self._starts[i]
        if offset + size <= end:
            return self._maps[i][rel : rel + size]
        parts = []
        while size > 0:
            take = min(size, self._ends[i] - offset)
            parts.append(self._maps[i][rel : rel + take])
            size -= take
            offset += take
            i += 1
            if i < len(self._starts):
                rel = offset - self._starts[i]
        return b"".join(parts)

    def view(self, pgno: int) -> memoryview:
        """A zero-copy read-only view of page ``pgno``; it stays valid while the database
        is open, whatever the file grows to.  Raises :class:`CorruptionError` like
        :meth:`page`."""
        ps = self.page_size
        off = pgno * ps
        i = bisect_right(self._starts, off) - 1
        if i < 0 or off + ps > self._ends[i]:
            raise CorruptionError(f"page {pgno} lies beyond the end of the data file")
        rel = off - self._starts[i]
        return memoryview(self._maps[i])[rel : rel + ps]

    @property
    def count(self) -> int:
        """Number of mappings."""
        return len(self._maps)

    def close(self) -> None:
        """Drop every mapping.  A mapping that still has views exported stays alive until
        the last view is released (it is never unmapped under a reader)."""
        # The lists are left as they are, so a reader in another thread that is between
        # its bisect and its slice indexes a closed mmap (ValueError, reported as
        # DatabaseClosedError) rather than a shrunken list.
        self.closed = True
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass  # a caller still holds a view: the GC unmaps it after the view dies
