"""The Ouroboros phrase pool: short token phrases remembered by the token that precedes them.

Ouroboros lengthens and corrects drafts with phrases seen before (in the draft model's output and
in verified text). A phrase is the N-1 tokens that followed a key token; the pool keeps, per key,
at most G of them in least-recently-used order, so the phrases that keep being useful stay and the
rest age out. All G are offered to the verifier; the few newest are the candidate suffixes.

The pool can be saved and loaded so a later run starts warm. A pool is only a cache: a file that
is missing, damaged or made for other settings is never an error, it just means starting cold.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from .catalog import cache_dir

Phrase = tuple[int, ...]

MAGIC = b"OUROPOOL"
FORMAT_VERSION = 1
# magic, format version, phrase_length, capacity, record count; all little-endian
_HEADER = struct.Struct("<8sIIIQ")
_DIGEST_SIZE = hashlib.sha256().digest_size
_MODEL_TAG = b"MODEL-ID"  # then the 32-byte identity of the model pair the pool was learnt on
_MODEL_TRAILER = len(_MODEL_TAG) + _DIGEST_SIZE
MAX_FILE_BYTES = 256 << 20  # far above any real pool (50k keys x 8 phrases x 5 tokens is 8 MB)


class PoolFileWarning(UserWarning):
    """A saved pool could not be used; the pool starts empty instead."""


@dataclass(frozen=True)
class PoolStats:
    keys: int
    phrases: int


def default_pool_path(name: str) -> Path:
    """Where the pool called `name` is kept between runs: <cache>/pools/<name>.pool."""
    return cache_dir() / "pools" / f"{name}.pool"


class PhrasePool:
    """Key token -> at most `capacity` phrases of exactly `phrase_length` tokens, oldest first."""

    def __init__(self, phrase_length: int, capacity: int) -> None:
        if phrase_length < 1:
            raise ValueError(f"phrase_length must be >= 1, got {phrase_length}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.phrase_length = phrase_length
        self.capacity = capacity
        # per key, phrases in recency order: first is the least recently used (evicted first)
        self._pool: dict[int, OrderedDict[Phrase, None]] = {}
        self._count = 0

    # -- updating --------------------------------------------------------------------------------

    def _phrase(self, phrase: Sequence[int]) -> Phrase:
        # plain ints, so numpy scalars and lists hash and compare like the tuples stored here
        out = tuple(int(token) for token in phrase)
        if len(out) != self.phrase_length:
            raise ValueError(f"phrase must have {self.phrase_length} tokens, got {len(out)}: {out}")
        return out

    def insert(self, key: int, phrase: Sequence[int]) -> None:
        """Add `phrase` after `key` as the newest; a phrase already there is only moved to newest."""
        phrase = self._phrase(phrase)
        slot = self._pool.setdefault(int(key), OrderedDict())
        if phrase in slot:
            slot.move_to_end(phrase)
            return
        slot[phrase] = None
        self._count += 1
        if len(slot) > self.capacity:
            slot.popitem(last=False)
            self._count -= 1

    def insert_many(self, key_phrase_pairs: Iterable[tuple[int, Sequence[int]]]) -> None:
        """Insert each (key, phrase) in order, so the last pair given ends up the newest."""
        for key, phrase in key_phrase_pairs:
            self.insert(key, phrase)

    def touch(self, key: int, phrase: Sequence[int]) -> bool:
        """Mark a phrase most recent (it was just accepted); False if the pool does not hold it."""
        slot = self._pool.get(int(key))
        phrase = tuple(int(token) for token in phrase)
        if slot is None or phrase not in slot:
            return False
        slot.move_to_end(phrase)
        return True

    def clear(self) -> None:
        self._pool.clear()
        self._count = 0

    # -- reading ---------------------------------------------------------------------------------

    def phrases(self, key: int) -> list[Phrase]:
        """All phrases for `key`, oldest first: what draft verification checks."""
        slot = self._pool.get(int(key))
        return list(slot) if slot else []

    def recent(self, key: int, k: int) -> list[Phrase]:
        """The `k` most recently used phrases for `key`, newest first: the candidate suffixes."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        slot = self._pool.get(int(key))
        return list(islice(reversed(slot), k)) if slot else []

    def keys(self) -> list[int]:
        return list(self._pool)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item: object) -> bool:
        """`(key, phrase) in pool`."""
        try:
            key, phrase = item  # type: ignore[misc]
            slot = self._pool.get(int(key))
            return slot is not None and tuple(int(token) for token in phrase) in slot
        except (TypeError, ValueError):
            return False

    @property
    def stats(self) -> PoolStats:
        return PoolStats(keys=len(self._pool), phrases=self._count)

    def __repr__(self) -> str:
        return (f"PhrasePool(phrase_length={self.phrase_length}, capacity={self.capacity}, "
                f"keys={len(self._pool)}, phrases={self._count})")

    # -- persistence -----------------------------------------------------------------------------
    #
    # File: header (_HEADER), then `count` records of key + phrase as int32 little-endian, each
    # key's phrases oldest first so inserting them back in file order rebuilds the LRU order,
    # then, if saved with one, the model tag (_MODEL_TAG + 32-byte identity), then the sha256 of
    # everything before it.

    def save(self, path: str | os.PathLike[str], model_id: bytes | None = None) -> None:
        """Write the pool to `path` atomically: a reader sees the old file or the new, never half.

        model_id: 32 bytes naming the models the phrases are tokens of (checked by `load`).
        Raises OSError where `path` is something other than a regular file (a directory, a FIFO)."""
        path = Path(path)
        if os.path.lexists(path) and not path.is_file():
            raise OSError(f"{path} is not a regular file, so it is not replaced")
        record = struct.Struct(f"<{1 + self.phrase_length}i")
        body = bytearray(_HEADER.pack(MAGIC, FORMAT_VERSION, self.phrase_length, self.capacity, self._count))
        try:
            for key, slot in self._pool.items():
                for phrase in slot:
                    body += record.pack(key, *phrase)
        except struct.error as error:
            raise ValueError(f"pool holds a token that does not fit in int32: {error}") from None
        if model_id is not None:
            if len(model_id) != _DIGEST_SIZE:
                raise ValueError(f"model_id must be {_DIGEST_SIZE} bytes, got {len(model_id)}")
            body += _MODEL_TAG + model_id
        body += hashlib.sha256(body).digest()

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str], phrase_length: int, capacity: int, *,
             n_vocab: int | None = None, model_id: bytes | None = None) -> PhrasePool:
        """The pool saved at `path`, or an empty one if there is none or it cannot be used.

        Never raises for the file's sake (only for invalid arguments): a missing file is the
        normal first run and passes silently; anything else wrong warns and starts empty. A file
        saved with a larger capacity keeps each key's `capacity` most recent phrases.
        n_vocab: every token must be in 0..n_vocab-1. model_id: the file must have been saved
        with this model identity. Only regular files of up to MAX_FILE_BYTES are read.
        """
        pool = cls(phrase_length, capacity)
        path = Path(path)
        try:
            data = _read_regular_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return pool
        except OSError as error:
            return _unusable(pool, path, f"cannot be read ({error.strerror or error})")
        problem = pool._restore(data, n_vocab, model_id)
        if problem:
            pool.clear()
            return _unusable(pool, path, problem)
        return pool

    def _restore(self, data: bytes, n_vocab: int | None = None, model_id: bytes | None = None) -> str | None:
        """Fill this empty pool from a saved file's bytes; the reason it cannot, else None."""
        if len(data) < _HEADER.size + _DIGEST_SIZE:
            if not MAGIC.startswith(data[:len(MAGIC)]):
                return "is not a phrase pool file (wrong magic)"
            return f"is truncated ({len(data)} bytes, shorter than an empty pool)"
        magic, version, phrase_length, _capacity, count = _HEADER.unpack_from(data)
        if magic != MAGIC:
            return "is not a phrase pool file (wrong magic)"
        if version != FORMAT_VERSION:
            return f"has format version {version}, this version reads {FORMAT_VERSION}"
        if not 0 < phrase_length <= 1024:
            return f"is corrupt (phrase length {phrase_length})"
        record = struct.Struct(f"<{1 + phrase_length}i")
        expected = _HEADER.size + count * record.size + _DIGEST_SIZE
        if len(data) < expected:
            return f"is truncated ({len(data)} bytes, {expected} expected for {count} phrases)"
        tagged = len(data) == expected + _MODEL_TRAILER and \
            data[-_DIGEST_SIZE - _MODEL_TRAILER:][:len(_MODEL_TAG)] == _MODEL_TAG
        if len(data) > expected and not tagged:
            return f"has {len(data) - expected} unexpected bytes after its end"
        payload, digest = data[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
        if hashlib.sha256(payload).digest() != digest:
            return "is corrupt (sha256 checksum mismatch)"
        if phrase_length != self.phrase_length:
            return f"holds phrases of {phrase_length} tokens, {self.phrase_length} are wanted"
        saved_id = payload[-_DIGEST_SIZE:] if tagged else None
        if model_id is not None and saved_id != model_id:
            return "was learnt on another model" if tagged else "does not say which model it was learnt on"
        records = memoryview(payload)[_HEADER.size:_HEADER.size + count * record.size]
        rows = list(record.iter_unpack(records))
        if n_vocab is not None:
            bad = next((t for row in rows for t in row if not 0 <= t < n_vocab), None)
            if bad is not None:
                return f"holds token {bad}, outside this model's vocabulary of {n_vocab}"
        for key, *phrase in rows:
            self.insert(key, phrase)
        return None


def _read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; OSError for anything else (a FIFO,
    which would block, a directory, a device, a huge file)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError("not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise OSError(f"{info.st_size} bytes, more than a pool file holds ({MAX_FILE_BYTES})")
        return file.read(MAX_FILE_BYTES + 1)


def _unusable(pool: PhrasePool, path: Path, reason: str) -> PhrasePool:
    warnings.warn(f"phrase pool {path} {reason}; starting with an empty pool", PoolFileWarning, stacklevel=3)
    return pool
