"""Weights put into one of ggml's extra CPU buffers by tensor overrides, one buffer without the other.

llama.cpp's `use_extra_bufts` switches all of ggml's extra CPU weight buffers on or off together: the
AMX buffer (Intel AMX tiles) and CPU_REPACK (interleaved Q4_0/Q4_K/IQ4_NL blocks and their AVX2 GEMM
kernels). This module names a model's tensors for one of them, as llama_model_tensor_buft_override
entries, while `use_extra_bufts` stays off:
- "avx2": the tensors CPU_REPACK can take. On the AMX Xeon we measured it makes forwards of 4-8 tokens
  0.72-0.84x as dear but single tokens 1.21x, so generation ran at 0.91x (benchmarks/repack.py);
  opt-in, for CPUs whose AVX-512 paths are slower.
- "amx": the Q4_K matrix weights the AMX kernels take, nothing else. Measured on Qwen2.5-Coder-1.5B:
  forwards of 4-32 tokens 0.69-0.82x as dear, one token 1.07x; Q6_K weights and the output layer in
  AMX made one- and two-token steps dearer and gained nothing, which is why llama.cpp's all-or-nothing
  "on" (every supported weight in AMX) ran generation at 0.87x. It needs a build whose AMX kernels
  work (amx_probe.py).
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

from . import gguf_meta, rpc

# ggml_repack_get_optimal_repack_type (ggml-cpu/repack.cpp, llama.cpp of llama-cpp-python 0.3.36): the
# types it repacks on x86 with AVX2, each only when the tensor's row count ne[1] is a multiple of 8.
# A tensor of any other type in that buffer would have no repack traits and crash on load.
REPACKED_TYPES = frozenset({2, 12, 20})  # enum ggml_type: Q4_0, Q4_K, IQ4_NL
BUFFER_NAME = "CPU_REPACK"
# ggml-cpu/amx/amx.cpp supports_op (same llama.cpp): a weight's rows ne[0] must be whole QK_K = 256
# super-blocks for Q4_K and its row count ne[1] a multiple of 2 * TILE_N = 32; a tensor in the AMX
# buffer that its kernels cannot multiply would have no reader at all.
AMX_TYPES = frozenset({12})  # Q4_K: the one type that gained (see above)
AMX_BUFFER_NAME = "AMX"


class TensorOverride(ctypes.Structure):  # llama.h: struct llama_model_tensor_buft_override
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def applies(info: str, repack: str) -> bool:
    """Whether the setting asks for CPU_REPACK without AMX and the CPU has the AVX2 kernels CPU_REPACK's
    x86 layouts need (`use_extra_bufts` is off for it); "amx" is decided by the caller (amx_probe)."""
    return repack == "avx2" and "AVX2 = 1" in info and "REPACK = 1" in info


def repackable_tensors(path: str | Path) -> list[str]:
    """The model's 2-D weights of the repeating layers that CPU_REPACK takes (matrix products only:
    the token embedding is read by row and stays out, as do 3-D expert tensors)."""
    return [t.name for t in gguf_meta.tensors(path)
            if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2
            and t.type in REPACKED_TYPES and t.shape[1] % 8 == 0]


def amx_tensors(path: str | Path) -> list[str]:
    """The model's 2-D Q4_K weights of the repeating layers whose shapes the AMX kernels take."""
    return [t.name for t in gguf_meta.tensors(path)
            if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2
            and t.type in AMX_TYPES and t.shape[0] % 256 == 0 and t.shape[1] % 32 == 0]


def patterns(names: list[str]) -> list[str]:
    """A few small regexes naming exactly `names`: one per weight kind, listing its layers
    (llama.cpp compiles every pattern once per tensor with std::regex, so one alternation of hundreds
    of names would cost seconds of load time)."""
    layers: dict[str, list[str]] = {}
    for name in names:
        _, layer, kind = name.split(".", 2)
        layers.setdefault(kind, []).append(layer)
    return [rf"^blk\.({'|'.join(numbers)})\.{re.escape(kind)}$" for kind, numbers in layers.items()]


def overrides(names: list[str], buffer_type: int) -> ctypes.Array | None:
    """A NULL-terminated override array putting the named tensors in `buffer_type`, or None if there
    are none. The caller keeps the array alive while the model loads."""
    chosen = patterns(names)
    if not chosen:
        return None
    table = (TensorOverride * (len(chosen) + 1))()
    for entry, pattern in zip(table, chosen):
        entry.pattern, entry.buft = pattern.encode(), buffer_type
    return table


def for_model(path: str | Path, info: str, repack: str) -> ctypes.Array | None:
    """The overrides the setting ("avx2", "amx"; any other: none) loads `path` with on this CPU (`info`:
    llama.cpp's system info), or None."""
    if repack == "amx":
        buffer = buffer_type(AMX_BUFFER_NAME)
        return overrides(amx_tensors(path), buffer) if buffer else None
    if not applies(info, repack):
        return None
    buffer = buffer_type()
    return overrides(repackable_tensors(path), buffer) if buffer else None


def buffer_type(name: str = BUFFER_NAME) -> int | None:
    """ggml's extra CPU buffer type of that name ("CPU_REPACK", "AMX"), or None if this build has none."""
    ggml, base = rpc.ggml_library(), rpc.ggml_library("ggml-base")
    base.ggml_backend_buft_name.restype, base.ggml_backend_buft_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    cpu = ggml.ggml_backend_reg_by_name(b"CPU")
    address = ggml.ggml_backend_reg_get_proc_address(cpu, b"ggml_backend_dev_get_extra_bufts") if cpu else None
    if not address:
        return None
    extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)(
        ggml.ggml_backend_dev_by_type(DEVICE_TYPE_CPU))
    index = 0
    while extra and extra[index]:
        if base.ggml_backend_buft_name(extra[index]) == name.encode():
            return extra[index]
        index += 1
    return None


DEVICE_TYPE_CPU = 0  # ggml-backend.h: GGML_BACKEND_DEVICE_TYPE_CPU
