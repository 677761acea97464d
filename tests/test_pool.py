"""Phrase pool: LRU order per key, and a saved pool that round-trips exactly or is dropped with a warning."""

from __future__ import annotations

import os
import struct
import warnings

import pytest

from ouroboros_lite import catalog
from ouroboros_lite.pool import MAGIC, PhrasePool, PoolFileWarning, PoolStats, default_pool_path
from ouroboros_lite.runtime import pool_file


def sample_pool() -> PhrasePool:
    pool = PhrasePool(phrase_length=3, capacity=4)
    pool.insert_many([
        (7, (1, 2, 3)), (7, (4, 5, 6)), (9, (-1, 0, 2**31 - 1)), (7, (7, 8, 9)),
        (9, (10, 11, 12)), (42, (13, 14, 15)), (7, (1, 2, 3)),  # last one re-used: now newest for 7
    ])
    return pool


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "sample.pool"
    sample_pool().save(path)
    return path


def load_expecting_warning(path, match: str, phrase_length: int = 3) -> PhrasePool:
    with pytest.warns(PoolFileWarning, match=match) as record:
        pool = PhrasePool.load(path, phrase_length=phrase_length, capacity=4)
    assert str(path) in str(record[0].message)
    assert len(pool) == 0 and pool.keys() == [] and pool.phrases(7) == []
    return pool


def test_constructor_rejects_nonpositive_sizes():
    with pytest.raises(ValueError, match="phrase_length.*0"):
        PhrasePool(phrase_length=0, capacity=4)
    with pytest.raises(ValueError, match="capacity.*-1"):
        PhrasePool(phrase_length=3, capacity=-1)


def test_capacity_limit_evicts_least_recently_used():
    pool = PhrasePool(phrase_length=2, capacity=3)
    for i in range(5):
        pool.insert(1, (i, i))
    assert pool.phrases(1) == [(2, 2), (3, 3), (4, 4)]
    assert len(pool) == 3
    pool.insert(2, (9, 9))  # other keys have their own budget
    assert pool.phrases(1) == [(2, 2), (3, 3), (4, 4)]
    assert len(pool) == 4
    assert pool.stats == PoolStats(keys=2, phrases=4)


def test_duplicate_moves_to_newest_instead_of_adding():
    pool = PhrasePool(phrase_length=2, capacity=3)
    pool.insert_many([(1, (1, 1)), (1, (2, 2)), (1, (3, 3))])
    pool.insert(1, [1, 1])  # a list is the same phrase as the tuple
    assert pool.phrases(1) == [(2, 2), (3, 3), (1, 1)]
    assert len(pool) == 3
    pool.insert(1, (4, 4))  # (2, 2) is now the oldest, so it goes, not (1, 1)
    assert pool.phrases(1) == [(3, 3), (1, 1), (4, 4)]


def test_recent_is_newest_first_and_bounded_by_what_exists():
    pool = PhrasePool(phrase_length=1, capacity=5)
    pool.insert_many((3, (t,)) for t in (10, 20, 30))
    assert pool.recent(3, 2) == [(30,), (20,)]
    assert pool.recent(3, 10) == [(30,), (20,), (10,)]
    assert pool.recent(3, 0) == []
    assert pool.recent(99, 4) == []
    assert pool.phrases(99) == []


def test_touch_marks_most_recent_only_if_present():
    pool = PhrasePool(phrase_length=1, capacity=3)
    pool.insert_many((3, (t,)) for t in (10, 20, 30))
    assert pool.touch(3, (10,)) is True
    assert pool.recent(3, 3) == [(10,), (30,), (20,)]
    assert pool.touch(3, (99,)) is False
    assert pool.touch(4, (10,)) is False
    assert pool.phrases(3) == [(20,), (30,), (10,)]
    assert 4 not in pool.keys() and len(pool) == 3
    pool.insert(3, (40,))  # touched (10,) survives the eviction, (20,) does not
    assert pool.phrases(3) == [(30,), (10,), (40,)]


def test_wrong_phrase_length_raises():
    pool = PhrasePool(phrase_length=3, capacity=2)
    with pytest.raises(ValueError, match="3 tokens, got 2"):
        pool.insert(1, (1, 2))
    with pytest.raises(ValueError, match="3 tokens, got 4"):
        pool.insert(1, (1, 2, 3, 4))
    assert len(pool) == 0 and pool.keys() == []


def test_contains_keys_len_and_clear():
    pool = sample_pool()
    assert (7, (4, 5, 6)) in pool
    assert (7, [4, 5, 6]) in pool
    assert (9, (4, 5, 6)) not in pool
    assert (7, (4, 5)) not in pool
    assert "nonsense" not in pool
    assert pool.keys() == [7, 9, 42]
    assert len(pool) == 6
    assert pool.stats == PoolStats(keys=3, phrases=6)
    pool.clear()
    assert len(pool) == 0 and pool.keys() == [] and (7, (4, 5, 6)) not in pool


def test_save_load_round_trip_keeps_content_and_recency(saved):
    original = sample_pool()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = PhrasePool.load(saved, phrase_length=3, capacity=4)
    assert loaded.keys() == original.keys() == [7, 9, 42]
    for key in original.keys():
        assert loaded.phrases(key) == original.phrases(key)
    assert loaded.phrases(7) == [(4, 5, 6), (7, 8, 9), (1, 2, 3)]
    assert loaded.phrases(9) == [(-1, 0, 2**31 - 1), (10, 11, 12)]
    assert loaded.stats == original.stats == PoolStats(keys=3, phrases=6)
    # LRU state round-trips too: the next insert evicts the same phrase in both
    original.insert_many([(7, (0, 0, 0)), (7, (0, 0, 1))])
    loaded.insert_many([(7, (0, 0, 0)), (7, (0, 0, 1))])
    assert loaded.phrases(7) == original.phrases(7) == [(7, 8, 9), (1, 2, 3), (0, 0, 0), (0, 0, 1)]


def test_save_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "nested" / "dir" / "p.pool"
    sample_pool().save(path)
    small = PhrasePool(phrase_length=3, capacity=4)
    small.insert(1, (1, 1, 1))
    small.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.pool"]  # no temp file left behind
    assert PhrasePool.load(path, 3, 4).phrases(1) == [(1, 1, 1)]
    assert PhrasePool.load(path, 3, 4).keys() == [1]


def test_file_layout(saved):
    data = saved.read_bytes()
    assert data[:8] == MAGIC
    version, phrase_length, capacity, count = struct.unpack_from("<IIIQ", data, 8)
    assert (version, phrase_length, capacity, count) == (1, 3, 4, 6)
    assert len(data) == 28 + 6 * 4 * 4 + 32
    assert struct.unpack_from("<4i", data, 28) == (7, 4, 5, 6)  # key 7's oldest phrase first


def test_missing_file_gives_empty_pool_silently(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool = PhrasePool.load(tmp_path / "absent.pool", phrase_length=3, capacity=4)
    assert len(pool) == 0 and pool.keys() == []
    assert (pool.phrase_length, pool.capacity) == (3, 4)


def test_load_still_rejects_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="capacity"):
        PhrasePool.load(tmp_path / "absent.pool", phrase_length=3, capacity=0)


def test_corrupt_file_warns_and_gives_empty_pool(saved):
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0x40
    saved.write_bytes(bytes(data))
    load_expecting_warning(saved, "checksum")


def test_truncated_file_warns_and_gives_empty_pool(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[:-5])
    load_expecting_warning(saved, "truncated")
    saved.write_bytes(data[:12])
    load_expecting_warning(saved, "truncated")
    saved.write_bytes(b"")
    load_expecting_warning(saved, "truncated")


def test_trailing_bytes_warn(saved):
    saved.write_bytes(saved.read_bytes() + b"\0")
    load_expecting_warning(saved, "unexpected bytes")


def test_wrong_magic_warns_and_gives_empty_pool(saved):
    data = saved.read_bytes()
    saved.write_bytes(b"NOTAPOOL" + data[8:])
    load_expecting_warning(saved, "wrong magic")
    saved.write_bytes(b"GGUF")
    load_expecting_warning(saved, "wrong magic")


def test_other_format_version_warns(saved):
    data = bytearray(saved.read_bytes())
    struct.pack_into("<I", data, 8, 2)
    saved.write_bytes(bytes(data))
    load_expecting_warning(saved, "format version 2")


def test_other_phrase_length_warns_and_gives_empty_pool(tmp_path):
    path = tmp_path / "four.pool"
    pool = PhrasePool(phrase_length=4, capacity=4)
    pool.insert(1, (1, 2, 3, 4))
    pool.save(path)
    load_expecting_warning(path, "4 tokens, 3 are wanted", phrase_length=3)
    assert PhrasePool.load(path, phrase_length=4, capacity=4).phrases(1) == [(1, 2, 3, 4)]


def test_unreadable_path_warns(tmp_path):
    load_expecting_warning(tmp_path, "cannot be read")  # a directory, not a file


def test_smaller_capacity_on_load_keeps_newest(saved):
    loaded = PhrasePool.load(saved, phrase_length=3, capacity=2)
    assert loaded.capacity == 2
    assert loaded.phrases(7) == [(7, 8, 9), (1, 2, 3)]
    assert loaded.phrases(9) == [(-1, 0, 2**31 - 1), (10, 11, 12)]
    assert loaded.phrases(42) == [(13, 14, 15)]
    assert len(loaded) == 5


def test_larger_capacity_on_load_keeps_everything(saved):
    loaded = PhrasePool.load(saved, phrase_length=3, capacity=10)
    assert loaded.phrases(7) == sample_pool().phrases(7)
    for t in range(6):
        loaded.insert(7, (t, t, t))
    assert len(loaded.phrases(7)) == 9


def test_token_outside_int32_cannot_be_saved(tmp_path):
    pool = PhrasePool(phrase_length=1, capacity=1)
    pool.insert(1, (2**31,))
    with pytest.raises(ValueError, match="int32"):
        pool.save(tmp_path / "big.pool")
    assert list(tmp_path.iterdir()) == []


def test_default_pool_path_follows_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    path = default_pool_path("smollm2")
    assert path == tmp_path / "cache" / "pools" / "smollm2.pool"
    sample_pool().save(path)
    assert PhrasePool.load(path, 3, 4).phrases(42) == [(13, 14, 15)]


def test_tokens_outside_the_vocabulary_are_refused_though_the_checksum_is_valid(tmp_path):
    for bad in (49152, -1):
        path = tmp_path / f"{bad}.pool"
        pool = PhrasePool(phrase_length=3, capacity=4)
        pool.insert(7, (1, bad, 3))
        pool.save(path)
        with pytest.warns(PoolFileWarning, match=f"holds token {bad}, outside this model's vocabulary of 49152"):
            assert len(PhrasePool.load(path, 3, 4, n_vocab=49152)) == 0
        assert PhrasePool.load(path, 3, 4).phrases(7) == [(1, bad, 3)]  # without a vocabulary: as saved


def test_the_model_identity_is_recorded_and_checked(tmp_path):
    path, mine, other = tmp_path / "p.pool", b"m" * 32, b"o" * 32
    sample_pool().save(path, model_id=mine)
    assert PhrasePool.load(path, 3, 4, model_id=mine).phrases(42) == [(13, 14, 15)]
    assert PhrasePool.load(path, 3, 4).phrases(42) == [(13, 14, 15)]
    with pytest.warns(PoolFileWarning, match="was learnt on another model"):
        assert len(PhrasePool.load(path, 3, 4, model_id=other)) == 0
    sample_pool().save(path)
    with pytest.warns(PoolFileWarning, match="does not say which model"):
        assert len(PhrasePool.load(path, 3, 4, model_id=mine)) == 0


def test_only_regular_files_of_a_bounded_size_are_read(tmp_path):
    fifo = tmp_path / "fifo.pool"
    os.mkfifo(fifo)
    load_expecting_warning(fifo, "not a regular file")  # did block forever on open
    with pytest.raises(OSError, match="not a regular file"):
        sample_pool().save(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        sample_pool().save(tmp_path)  # a directory: not replaced
    huge = tmp_path / "huge.pool"
    with open(huge, "wb") as f:
        f.truncate(3 << 30)  # sparse
    load_expecting_warning(huge, "more than a pool file holds")


def test_pools_are_keyed_by_the_model_file_not_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    a, b, c = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf", tmp_path / "c" / "model.gguf"
    for path, content in ((a, b"GGUF one model"), (b, b"GGUF another model"), (c, b"GGUF one model")):
        path.parent.mkdir()
        path.write_bytes(content)
    assert pool_file(a, None, 5) != pool_file(b, None, 5)  # shared one pool before: same stem
    assert pool_file(a, None, 5) == pool_file(c, None, 5)  # a copy of the same model shares it
    assert pool_file(a, b, 5) != pool_file(a, None, 5) != pool_file(a, None, 4)
