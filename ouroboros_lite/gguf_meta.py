"""A small reader of GGUF headers: refuse what llama.cpp's loader would abort on, and name a model file.

llama.cpp GGML_ASSERTs some hyper-parameters while loading (the layer count, expert counts, the rope
scaling type) and divides by head counts, so a damaged or hand-edited header takes the whole process
down instead of failing the load. `check` reads the key-value section and the tensor names (never
the weights) and raises ModelFileError for those values. A header this reader cannot parse is left
to llama.cpp, which reports that as an ordinary load error.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from .errors import ModelFileError

MAX_LAYERS, MAX_EXPERTS = 512, 1024  # LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS (llama-hparams.h)
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_SMALL_ARRAY = 4096  # numeric arrays up to this length are kept (per-layer values); longer ones skipped
_BLOCK = re.compile(r"blk\.(\d+)\.")


class _Malformed(Exception):
    pass


class TensorInfo(NamedTuple):
    name: str
    shape: tuple[int, ...]  # ggml's ne order: shape[0] is the row length
    type: int  # enum ggml_type (gguf.GGMLQuantizationType)


def read_header(path: str | os.PathLike) -> tuple[dict, list[str]] | None:
    """(metadata, tensor names) of a GGUF file, or None where the header does not parse.

    Metadata holds scalars, strings and numeric arrays of up to 4096 values as tuples; longer
    arrays and arrays of strings (the vocabulary) map to None."""
    header = _read(path)
    return None if header is None else (header[0], [tensor.name for tensor in header[1]])


def tensors(path: str | os.PathLike) -> list[TensorInfo]:
    """Name, shape and type of every tensor in a GGUF file ([] where the header does not parse)."""
    header = _read(path)
    return [] if header is None else header[1]


def _read(path: str | os.PathLike) -> tuple[dict, list[TensorInfo]] | None:
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # empty, or not mappable: llama.cpp will say
            return None
    with buf:
        try:
            return _parse(buf)
        except (struct.error, _Malformed, OverflowError):
            return None


def block_count(path: str | os.PathLike) -> int | None:
    """The model's number of layers ({arch}.block_count), or None where the header does not say."""
    header = read_header(path)
    if header is None:
        return None
    meta = header[0]
    return _int(meta.get(f"{meta.get('general.architecture')}.block_count"))


def _parse(buf) -> tuple[dict, list[TensorInfo]]:
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    if magic != b"GGUF" or version < 2 or n_kv > len(buf) // 12 or n_tensors > len(buf) // 24:
        raise _Malformed
    pos, meta = 24, {}
    for _ in range(n_kv):
        key, pos = _string(buf, pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        meta[key], pos = _value(buf, pos + 4, kind)
    infos = []
    for _ in range(n_tensors):
        name, pos = _string(buf, pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        if n_dims > 8:
            raise _Malformed
        shape = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        (kind,) = struct.unpack_from("<I", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 4 + 8  # dimensions, type, offset
        infos.append(TensorInfo(name, shape, kind))
    if pos > len(buf):
        raise _Malformed
    return meta, infos


def _string(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    end = pos + 8 + n
    if end > len(buf):
        raise _Malformed
    return buf[pos + 8:end].decode("utf-8", errors="replace"), end


def _value(buf, pos: int, kind: int):
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
    if kind == _STRING:
        return _string(buf, pos)
    if kind != _ARRAY:
        raise _Malformed
    item, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if item in _SCALARS:
        size = struct.calcsize(_SCALARS[item])
        if pos + count * size > len(buf):
            raise _Malformed
        values = struct.unpack_from(f"<{count}{_SCALARS[item]}", buf, pos) if count <= _SMALL_ARRAY else None
        return values, pos + count * size
    if count > len(buf) // 8:
        raise _Malformed
    if item == _STRING:  # the vocabulary: 50k-250k strings, walked over as fast as Python goes
        unpack = _U64.unpack_from
        for _ in range(count):
            pos += 8 + unpack(buf, pos)[0]
        if pos > len(buf):
            raise _Malformed
        return None, pos
    for _ in range(count):  # nested arrays: walked over, not kept
        _, pos = _value(buf, pos, item)
    return None, pos


def check(path: str | os.PathLike) -> None:
    """Raise ModelFileError for hyper-parameters llama.cpp's loader would abort the process on."""
    header = read_header(path)
    if header is None:
        return
    meta, names = header
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return
    for problem in _problems(meta, names, arch):
        raise ModelFileError(f"{path}: llama.cpp cannot load this model: {problem} (a damaged or edited GGUF header)")


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _problems(meta: dict, names: list[str], arch: str):
    def key(name: str) -> str:
        return f"{arch}.{name}"

    layers = _int(meta.get(key("block_count")))
    if layers is None:
        return  # missing or mistyped: llama.cpp reports it
    if not 1 <= layers <= MAX_LAYERS:
        yield f"{key('block_count')} is {layers}, outside 1..{MAX_LAYERS}"
        return
    blocks = {int(m.group(1)) for name in names if (m := _BLOCK.match(name))}
    if blocks and max(blocks) + 1 != layers:
        yield f"{key('block_count')} is {layers} but the file holds tensors for {max(blocks) + 1} layers"
    nextn = _int(meta.get(key("nextn_predict_layers")))
    if nextn is not None and nextn > layers:
        yield f"{key('nextn_predict_layers')} is {nextn}, more than the {layers} layers"
    embedding = _int(meta.get(key("embedding_length")))
    if embedding is not None and embedding <= 0:
        yield f"{key('embedding_length')} is {embedding}; it must be positive"
    # Head counts need no check here: 0 is legitimate (recurrent layers), and llama.cpp rejects
    # wrong ones cleanly when it compares them with the tensors' shapes.
    yield from _expert_problems(meta, key)
    rope = meta.get(key("rope.scaling.type"))
    if isinstance(rope, str) and rope not in ROPE_SCALING_TYPES:
        yield f"{key('rope.scaling.type')} is {rope!r}, not one of {', '.join(ROPE_SCALING_TYPES)}"


def _expert_problems(meta: dict, key):
    experts = _int(meta.get(key("expert_count"))) or 0
    used_value = meta.get(key("expert_used_count"))
    used = max(used_value) if isinstance(used_value, tuple) and used_value else (_int(used_value) or 0)
    groups = _int(meta.get(key("expert_group_count"))) or 0
    group_used = _int(meta.get(key("expert_group_used_count"))) or 0
    if experts > MAX_EXPERTS:
        yield f"{key('expert_count')} is {experts}, more than {MAX_EXPERTS}"
    elif used > experts:
        yield f"{key('expert_used_count')} is {used}, more than the {experts} experts"
    elif experts > 0 and used == 0:
        yield f"{key('expert_used_count')} is 0 for a model with {experts} experts"
    elif experts == 0 and groups:
        yield f"{key('expert_group_count')} is {groups} for a model without experts"
    elif experts > 0 and (groups >= experts or groups > 1 and (
            experts % groups or not 0 < group_used < groups)):
        yield f"the expert groups ({groups} groups, {group_used} used) do not fit {experts} experts"


@lru_cache(maxsize=16)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(4 << 20))
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike) -> str:
    """The identity of a model file: sha256 (hex) of its size and its first 4 MiB, which hold the
    header, the metadata (tokenizer included) and the first weights; two copies of one model agree,
    two fine-tunes of one architecture do not. Cached per file size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return _fingerprint(str(p), st.st_size, st.st_mtime_ns)
