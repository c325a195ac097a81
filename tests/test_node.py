"""kvmap.node: the leaf/branch page codecs and overflow/freelist runs.

Round trips (hypothesis) for leaves with inline and overflow values and for branches,
sizes, every detected mismatch (checksum, page number, type, cells past the page, bad
overflow references), and that decoding garbage, sealed or not, raises only
CorruptionError.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmap.errors import CorruptionError
from kvmap.format import (
    PAGE_BRANCH,
    PAGE_FREELIST,
    PAGE_HEADER,
    PAGE_HEADER_SIZE,
    PAGE_LEAF,
    PAGE_META,
    PAGE_OVERFLOW,
    RUN_DATA_OFFSET,
    VALUE_OVERFLOW_BIT,
    max_inline_cell,
    max_key_size,
)
from kvmap.meta import Meta
from kvmap.node import (
    _LAYOUTS,
    Node,
    Ovf,
    branch_size,
    decode,
    encode,
    encode_run,
    leaf_size,
    peek,
    run_header,
    run_pages,
    run_payload,
    seal,
    verify_checksum,
)

PAGE_SIZES = [512, 1024, 4096]


@st.composite
def leaves(draw: Any, page_size: int | None = None) -> tuple[Node, int]:
    ps = page_size or draw(st.sampled_from(PAGE_SIZES))
    maxcell = max_inline_cell(ps)
    keys = sorted(draw(st.sets(st.binary(max_size=max_key_size(ps)), max_size=40)))
    vals: list[bytes | Ovf] = []
    kept: list[bytes] = []
    size = PAGE_HEADER_SIZE
    for k in keys:
        if draw(st.booleans()) and draw(st.booleans()):
            v: bytes | Ovf = Ovf(draw(st.integers(2, 2**64 - 1)))
        else:
            v = draw(st.binary(max_size=maxcell - 4 - len(k)))
        cell = 4 + len(k) + len(v)
        if size + cell > ps:
            break
        size += cell
        kept.append(k)
        vals.append(v)
    pgno = draw(st.integers(2, 2**64 - 1))
    txn = draw(st.integers(0, 2**64 - 1))
    return Node(kept, vals, None, pgno, txn), ps


@st.composite
def branches(draw: Any) -> tuple[Node, int]:
    ps = draw(st.sampled_from(PAGE_SIZES))
    keys = sorted(draw(st.sets(st.binary(min_size=1, max_size=max_key_size(ps)), max_size=40)))
    seps = [b""]
    size = PAGE_HEADER_SIZE + 10
    for k in keys:
        if size + 10 + len(k) > ps:
            break
        size += 10 + len(k)
        seps.append(k)
    kids = draw(st.lists(st.integers(2, 2**64 - 1), min_size=len(seps), max_size=len(seps)))
    return Node(seps, None, kids, draw(st.integers(2, 2**40)), draw(st.integers(0, 2**40))), ps


def same(a: Node, b: Node) -> None:
    def seq(x: Any) -> Any:  # decoded nodes hold tuples, built ones lists
        return None if x is None else list(x)

    assert (seq(a.keys), seq(a.vals), seq(a.kids), a.pgno, a.txn) == (
        seq(b.keys), seq(b.vals), seq(b.kids), b.pgno, b.txn,
    )  # fmt: skip
    if a.vals is not None and b.vals is not None:  # an inline value is never an Ovf, and back
        assert [isinstance(v, Ovf) for v in a.vals] == [isinstance(v, Ovf) for v in b.vals]
        assert [v.pgno for v in a.vals if isinstance(v, Ovf)] == [
            v.pgno for v in b.vals if isinstance(v, Ovf)
        ]


# -- round trips --------------------------------------------------------------------------------


@settings(max_examples=200)
@given(leaves())
def test_leaf_round_trip(case: tuple[Node, int]) -> None:
    node, ps = case
    page = encode(node, ps)
    assert len(page) == ps
    back = decode(page, node.pgno)
    same(back, node)
    # the second decode compiles the layout, the third unpacks with it: all the same
    for _ in range(2):
        again = decode(page, node.pgno)
        same(again, node)
        assert [type(v) for v in again.vals] == [type(v) for v in node.vals]  # type: ignore[union-attr]
    assert back.is_leaf
    assert all(type(k) is bytes for k in back.keys)
    assert node.size() == leaf_size(node.keys, node.vals) <= ps  # type: ignore[arg-type]
    assert page[node.size() :] == bytes(ps - node.size())  # size() is exactly what is used
    _, ptype, flags, n, pgno, txn = PAGE_HEADER.unpack_from(page)
    assert (ptype, flags, n, pgno, txn) == (PAGE_LEAF, 0, len(node.keys), node.pgno, node.txn)


@settings(max_examples=200)
@given(branches())
def test_branch_round_trip(case: tuple[Node, int]) -> None:
    node, ps = case
    page = encode(node, ps)
    back = decode(page, node.pgno)
    same(back, node)
    assert not back.is_leaf and back.vals is None
    assert back.keys[0] == b""
    assert node.size() == branch_size(node.keys) <= ps
    assert page[node.size() :] == bytes(ps - node.size())


def test_branch_first_key_is_stored_empty() -> None:
    node = Node([b"lower-bound", b"m", b"t"], None, [5, 6, 7], 9, 3)
    back = decode(encode(node, 512), 9)
    assert back.keys == (b"", b"m", b"t") and back.kids == (5, 6, 7)
    assert branch_size(node.keys) == PAGE_HEADER_SIZE + 30 + 2


def test_empty_leaf_and_edge_values() -> None:
    same(decode(encode(Node([], [], None, 4, 1), 512), 4), Node([], [], None, 4, 1))
    node = Node([b"", b"\x00", b"\xff" * 10], [b"", Ovf(2**64 - 1), b"\x00"], None, 5, 2)
    same(decode(encode(node, 512), 5), node)


def test_largest_cells_fit() -> None:
    for ps in (512, 4096, 65536):
        k = max_key_size(ps)
        cell = max_inline_cell(ps)
        # four maximal inline cells and four max-size keys with overflow references
        inline = Node([bytes([i]) * 2 for i in range(4)],
                      [bytes([i]) * (cell - 6) for i in range(4)], None, 3, 1)  # fmt: skip
        assert leaf_size(inline.keys, inline.vals) <= ps  # type: ignore[arg-type]
        same(decode(encode(inline, ps), 3), inline)
        refs = Node([bytes([i]) * k for i in range(4)], [Ovf(10 + i) for i in range(4)], None, 3, 1)
        assert 4 + k + 8 == cell
        same(decode(encode(refs, ps), 3), refs)
        seps = Node([b""] + [bytes([i + 1]) * k for i in range(3)], None, [4, 5, 6, 7], 3, 1)
        same(decode(encode(seps, ps), 3), seps)


def test_encode_refuses_a_node_that_does_not_fit() -> None:
    with pytest.raises(AssertionError):
        encode(Node([b"k"], [b"v" * 600], None, 2, 1), 512)


def test_inline_value_that_looks_like_a_reference_stays_inline() -> None:
    ref = Ovf(7)
    lookalike = (7).to_bytes(8, "little")
    node = Node([b"a", b"b"], [lookalike, ref], None, 5, 1)
    back = decode(encode(node, 512), 5)
    assert type(back.vals[0]) is not Ovf and back.vals[0] == lookalike  # type: ignore[index]
    assert isinstance(back.vals[1], Ovf) and back.vals[1].pgno == 7  # type: ignore[index,union-attr]


def test_ovf() -> None:
    assert len(Ovf(7)) == 8
    assert Ovf(7) == Ovf(7) and Ovf(7) != Ovf(8) and Ovf(7) != 7
    assert hash(Ovf(7)) == hash(Ovf(7))
    assert repr(Ovf(7)) == "Ovf(7)"
    for p in (0, 2, 2**32 + 5, 2**64 - 1):
        assert Ovf(p).pgno == p


# -- mismatches ---------------------------------------------------------------------------------


def test_every_single_bit_flip_is_detected() -> None:
    node = Node([b"a", b"bb", b"ccc"], [b"1", Ovf(40), b"333"], None, 12, 5)
    page = encode(node, 512)
    for bit in range(512 * 8):
        bad = bytearray(page)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptionError, match="page 12"):
            decode(bytes(bad), 12)


def test_page_number_mismatch() -> None:
    page = encode(Node([b"a"], [b"1"], None, 12, 5), 512)
    with pytest.raises(CorruptionError, match="page 13: header says it is page 12"):
        decode(page, 13)


@pytest.mark.parametrize("ptype", [0, PAGE_META, PAGE_OVERFLOW, PAGE_FREELIST, 6, 255])
def test_wrong_type(ptype: int) -> None:
    page = bytearray(encode(Node([b"a"], [b"1"], None, 12, 5), 512))
    page[4] = ptype
    with pytest.raises(CorruptionError, match="page 12: expected a leaf or branch page"):
        decode(seal(page), 12)


def test_meta_and_runs_are_not_tree_pages() -> None:
    meta = Meta(2, 512, 3, 0, 5, 1, 1).encode()
    with pytest.raises(CorruptionError, match="found meta"):
        decode(meta, 0)
    run = encode_run(PAGE_OVERFLOW, 7, 1, b"x" * 100, 512)
    with pytest.raises(CorruptionError, match="found overflow"):
        decode(run, 7)


def _sealed(ptype: int, n: int, body: bytes, pgno: int = 3, ps: int = 512) -> bytes:
    page = bytearray(ps)
    PAGE_HEADER.pack_into(page, 0, 0, ptype, 0, n, pgno, 1)
    page[PAGE_HEADER_SIZE : PAGE_HEADER_SIZE + len(body)] = body
    return seal(page)


def test_cells_past_the_end_of_the_page() -> None:
    with pytest.raises(CorruptionError, match="do not fit"):
        decode(_sealed(PAGE_LEAF, 200, b""), 3)
    # one cell whose key length runs past the page
    body = (600).to_bytes(2, "little") + (0).to_bytes(2, "little")
    with pytest.raises(CorruptionError, match="past the end"):
        decode(_sealed(PAGE_LEAF, 1, body), 3)
    body = (10).to_bytes(2, "little") + (0x7FFF).to_bytes(2, "little")
    with pytest.raises(CorruptionError, match="past the end"):
        decode(_sealed(PAGE_LEAF, 1, body), 3)
    with pytest.raises(CorruptionError, match="branch with 0 children"):
        decode(_sealed(PAGE_BRANCH, 0, b""), 3)
    with pytest.raises(CorruptionError, match="branch with"):
        decode(_sealed(PAGE_BRANCH, 100, b""), 3)
    body = (0).to_bytes(2, "little") + (900).to_bytes(2, "little") + bytes(16)
    with pytest.raises(CorruptionError, match="past the end"):
        decode(_sealed(PAGE_BRANCH, 2, body), 3)


def test_a_learned_layout_still_checks_the_page_bounds() -> None:
    """The layout cache is keyed by the cell lengths only: a layout learned from a 4 KiB
    page, found again on a 512-byte page it does not fit, must still raise."""
    big = Node([b"k%03d" % i for i in range(20)], [b"v" * 150] * 20, None, 3, 1)
    page = encode(big, 4096)
    for _ in range(3):
        same(decode(page, 3), big)
    n = len(big.keys)
    lens = page[PAGE_HEADER_SIZE : PAGE_HEADER_SIZE + 4 * n]
    assert lens not in _LAYOUTS  # read again, one page does not count twice
    other = Node(big.keys, big.vals, None, 4, 1)
    same(decode(encode(other, 4096), 4), other)
    assert lens in _LAYOUTS  # seen on a second page: compiled
    with pytest.raises(CorruptionError, match="past the end"):
        decode(_sealed(PAGE_LEAF, n, lens + bytes(512 - PAGE_HEADER_SIZE - 4 * n)), 3)


def test_bad_overflow_reference() -> None:
    body = (1).to_bytes(2, "little") + (VALUE_OVERFLOW_BIT | 5).to_bytes(2, "little") + b"k"
    with pytest.raises(CorruptionError, match="bad overflow reference in cell 0"):
        decode(_sealed(PAGE_LEAF, 1, body), 3)
    good = (1).to_bytes(2, "little") + (VALUE_OVERFLOW_BIT | 8).to_bytes(2, "little") + b"k"
    good += (77).to_bytes(8, "little")
    assert decode(_sealed(PAGE_LEAF, 1, good), 3).vals == (Ovf(77),)


@settings(max_examples=300)
@given(st.binary(min_size=512, max_size=512), st.integers(0, 2**64 - 1))
def test_garbage_raises_corruption_only(buf: bytes, pgno: int) -> None:
    with pytest.raises(CorruptionError):
        decode(buf, pgno)


@settings(max_examples=500)
@given(st.sampled_from([PAGE_LEAF, PAGE_BRANCH]), st.integers(0, 300),
       st.binary(max_size=512 - PAGE_HEADER_SIZE))  # fmt: skip
def test_sealed_garbage_raises_corruption_or_decodes_inside_the_page(
    ptype: int, n: int, body: bytes
) -> None:
    """A page with a valid checksum but nonsense cells: decode either raises CorruptionError
    or returns a node whose cells all come from inside the page."""
    page = _sealed(ptype, n, body)
    try:
        node = decode(page, 3)
    except CorruptionError:
        return
    assert len(node.keys) == n
    total = sum(map(len, node.keys))
    if node.vals is not None:
        assert len(node.vals) == n
        total += sum(len(v) for v in node.vals)
        assert PAGE_HEADER_SIZE + 4 * n + total <= 512
    else:
        assert node.kids is not None and len(node.kids) == n >= 1
        assert PAGE_HEADER_SIZE + 10 * n + total <= 512


def test_verify_checksum() -> None:
    page = encode(Node([b"a"], [b"b"], None, 2, 1), 512)
    verify_checksum(page, "x")
    verify_checksum(memoryview(page), "x")
    with pytest.raises(CorruptionError, match="what: checksum mismatch"):
        verify_checksum(page[:-1] + b"\x01", "what")


# -- runs ---------------------------------------------------------------------------------------


def test_run_pages() -> None:
    assert run_pages(0, 512) == 1
    assert run_pages(512 - RUN_DATA_OFFSET, 512) == 1
    assert run_pages(512 - RUN_DATA_OFFSET + 1, 512) == 2
    assert run_pages(2 * 512 - RUN_DATA_OFFSET, 512) == 2
    assert run_pages(64 * 2**20, 4096) == -(-(64 * 2**20 + 32) // 4096)


@pytest.mark.parametrize("length", [0, 1, 479, 480, 481, 991, 992, 993, 5000, 70_000])
@pytest.mark.parametrize("ptype", [PAGE_OVERFLOW, PAGE_FREELIST])
def test_run_round_trip(length: int, ptype: int) -> None:
    payload = bytes(i * 13 % 256 for i in range(length))
    run = encode_run(ptype, 40, 6, payload, 512)
    assert len(run) == run_pages(length, 512) * 512
    txn, got_len = run_header(run[:512], 40, ptype)
    assert (txn, got_len) == (6, length)
    assert run_payload(run, 40, length) == payload
    assert run[RUN_DATA_OFFSET + length :] == bytes(len(run) - RUN_DATA_OFFSET - length)


def test_run_header_mismatches() -> None:
    run = encode_run(PAGE_OVERFLOW, 40, 6, b"x" * 1000, 512)
    with pytest.raises(CorruptionError, match="page 41: expected the start of a overflow run"):
        run_header(run[:512], 41, PAGE_OVERFLOW)
    with pytest.raises(CorruptionError, match="found overflow page 40"):
        run_header(run[:512], 40, PAGE_FREELIST)
    leaf = encode(Node([b"a"], [b"1"], None, 40, 1), 512)
    with pytest.raises(CorruptionError, match="found leaf"):
        run_header(leaf, 40, PAGE_OVERFLOW)
    with pytest.raises(CorruptionError, match="type 99"):
        run_header(b"\0\0\0\0\x63" + bytes(507), 40, PAGE_OVERFLOW)


def test_every_page_of_a_run_is_covered_by_its_checksum() -> None:
    run = encode_run(PAGE_OVERFLOW, 40, 6, b"v" * 3000, 512)
    assert len(run) == 6 * 512
    for off in [4, 5, 8, 16, 24, 31, 32, 600, 1500, 3031, 3032, 3033, len(run) - 1]:
        bad = bytearray(run)
        bad[off] ^= 0x40
        with pytest.raises(CorruptionError, match="run at page 40: checksum mismatch"):
            run_payload(bytes(bad), 40, 3000)


# -- peek: a leaf read for one lookup ------------------------------------------------------------


def _learned_leaf(pgno: int, klen: int, vlen: int, n: int) -> tuple[Node, bytes]:
    node = Node([b"%0*d" % (klen, i) for i in range(n)], [b"%0*d" % (vlen, i) for i in range(n)],
                None, pgno, 7)  # fmt: skip
    page = encode(node, 4096)
    decode(page, pgno)
    decode(encode(Node(node.keys, node.vals, None, pgno + 1, 7), 4096), pgno + 1)
    assert page[PAGE_HEADER_SIZE : PAGE_HEADER_SIZE + 4 * n] in _LAYOUTS  # seen on two pages
    return node, page


def test_peek_reads_a_learned_leaf_like_decode() -> None:
    node, page = _learned_leaf(5, 13, 41, 30)
    for _ in range(2):
        got = peek(page, 5)
        assert got is not None
        assert got.kids is None and (got.pgno, got.txn) == (5, 7)
        assert list(got.keys) == node.keys
        assert len(got.vals) == 30
        assert [got.vals[i] for i in range(30)] == node.vals
        assert got.vals[-1] == node.vals[-1]


def test_peek_declines_what_it_cannot_read_cheaply() -> None:
    """None means "decode it": a branch, an empty leaf, overflow values, a page that says
    it is another page, or a bad checksum."""
    _, page = _learned_leaf(5, 11, 37, 20)
    assert peek(page, 6) is None  # the header names page 5
    damaged = bytearray(page)
    damaged[-1] ^= 1
    assert peek(bytes(damaged), 5) is None
    with pytest.raises(CorruptionError, match="checksum"):
        decode(bytes(damaged), 5)
    branch = encode(Node([b"", b"m"], None, [3, 4], 5, 7), 4096)
    assert peek(branch, 5) is None
    assert peek(encode(Node([], [], None, 5, 7), 4096), 5) is None  # an empty leaf
    ovf = encode(Node([b"k" * 9] * 2, [b"v" * 8, Ovf(42)], None, 5, 7), 4096)
    for _ in range(3):
        decode(ovf, 5)
    assert peek(ovf, 5) is None


def test_peek_checks_that_a_learned_layout_fits_the_page() -> None:
    node, page = _learned_leaf(3, 20, 150, 20)
    n = len(node.keys)
    lens = page[PAGE_HEADER_SIZE : PAGE_HEADER_SIZE + 4 * n]
    small = _sealed(PAGE_LEAF, n, lens + bytes(512 - PAGE_HEADER_SIZE - 4 * n))
    assert peek(small, 3) is None


def test_peek_reads_a_layout_never_seen_before() -> None:
    node = Node([b"a" * 97, b"b" * 3], [b"x" * 211, b"y"], None, 5, 7)  # a unique layout
    got = peek(encode(node, 4096), 5)
    assert got is not None
    assert list(got.keys) == node.keys and [got.vals[0], got.vals[1]] == node.vals


@settings(max_examples=500)
@given(st.integers(0, 300), st.binary(max_size=512 - PAGE_HEADER_SIZE))
def test_peek_never_reads_what_decode_rejects(n: int, body: bytes) -> None:
    """On sealed nonsense, peek either declines or reads exactly what decode reads."""
    page = _sealed(PAGE_LEAF, n, body)
    try:
        want: Node | None = decode(page, 3)
    except CorruptionError:
        want = None
    for _ in range(2):  # the second time, the layout may be compiled
        got = peek(page, 3)
        if got is not None:
            assert want is not None
            assert list(got.keys) == list(want.keys)
            assert [got.vals[i] for i in range(len(got.keys))] == list(want.vals)  # type: ignore[arg-type]
