"""The committing store's key filter answers "absent" without SQLite, and never wrongly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.ledger.store import _WRITER_PAGE_CACHE_KIB, KeyFilter, Store

_KEYS = st.binary(min_size=1, max_size=12)
_BLOCKS = st.lists(
    st.dictionaries(_KEYS, st.none() | st.binary(min_size=1, max_size=4), max_size=8), max_size=6
)


@settings(max_examples=60, deadline=None)
@given(blocks=_BLOCKS, probes=st.lists(_KEYS, max_size=20))
def test_a_filtered_store_reads_exactly_what_an_unfiltered_one_does(
    tmp_path_factory: pytest.TempPathFactory,
    blocks: list[dict[bytes, bytes | None]],
    probes: list[bytes],
) -> None:
    folder = tmp_path_factory.mktemp("stores")
    plain, filtered = Store(folder / "plain.db"), Store(folder / "f.db", key_filter=True)
    try:
        for height, writes in enumerate(blocks, start=1):
            for store in (plain, filtered):
                store.commit(writes, height, b"h", None)
        keys = {k for writes in blocks for k in writes} | set(probes)
        assert {k: filtered.get_raw(k) for k in keys} == {k: plain.get_raw(k) for k in keys}
        reopened = Store(folder / "f.db", key_filter=True)  # the filter rebuilt from the file
        try:
            assert {k: reopened.get_raw(k) for k in keys} == {k: plain.get_raw(k) for k in keys}
        finally:
            reopened.close()
    finally:
        plain.close()
        filtered.close()


def test_the_filter_says_absent_for_most_new_keys_and_never_for_a_stored_one() -> None:
    stored = [f"id/prac/h{i % 4}/dr-{i}".encode() for i in range(50_000)]
    found = KeyFilter.of(iter(stored), len(stored))
    assert all(found.may_contain(k) for k in stored)
    fresh = [f"id/prac/h{i % 4}/dr-{i}".encode() for i in range(50_000, 60_000)]
    assert sum(found.may_contain(k) for k in fresh) < 100  # a few "maybe": SQLite answers


def test_a_key_committed_is_read_back_through_the_filter(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db", key_filter=True)
    try:
        assert store.get_raw(b"acc/id/h1/ab") is None
        store.commit({b"acc/id/h1/ab": b"\x01"}, 1, b"h", None)
        store._cache.clear()  # as after the cache's own bound: the filter and SQLite answer
        assert store.get_raw(b"acc/id/h1/ab") == b"\x01"
    finally:
        store.close()


def test_only_the_committing_store_keeps_the_larger_page_cache(tmp_path: Path) -> None:
    """The sole writer's SQLite page cache holds the B-trees' pages its rows land on (grow13);
    a second connection on the file (verify, the CLI) keeps SQLite's default."""
    writer = Store(tmp_path / "l.db", key_filter=True)
    reader = Store(tmp_path / "l.db")
    try:
        assert writer.execute("PRAGMA cache_size") == [(-_WRITER_PAGE_CACHE_KIB,)]
        assert reader.execute("PRAGMA cache_size") != writer.execute("PRAGMA cache_size")
    finally:
        reader.close()
        writer.close()
