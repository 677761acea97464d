"""Whether ggml's AMX kernels work in this llama-cpp-python build, found out once by running them.

GCC 12 miscompiles ggml's AMX tile set-up (ggml-cpu/amx/mmq.cpp, `ggml_tile_config_init`): it drops
the stores that fill the tile configuration before the `_tile_loadconfig` builtin, which it does not
treat as reading its argument, so `ldtilecfg` loads stack garbage and faults. Every matrix product of
two or more rows with a weight in the AMX buffer then kills the process (llama.cpp #20824). The same
source built by a compiler without that bug, or the pinned sdist built by `python -m
ouroboros_lite.llamacpp_tools wheel` (which patches that one line), runs them. Which build is loaded
cannot be read off the library, so a child process multiplies a Q8_0 matrix in the AMX buffer by
two rows and checks the product; the verdict is kept per library file.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import numpy as np

from . import cpu_repack, rpc
from .catalog import cache_dir

_TYPE_F32, _TYPE_Q8_0 = 0, 8  # ggml.h: enum ggml_type
_K, _N, _M = 256, 64, 2  # weight K x N (N % 32 == 0 for the AMX kernels), M rows of activations
_TIMEOUT_S = 60


def amx_works() -> bool:
    """True where the AMX buffer's batched products ran correctly in a child process (cached per
    library file), False where they crashed, were wrong, or could not be run."""
    library = rpc.mapped_library("ggml-cpu")
    stat = library.stat()
    key = f"{library.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    verdicts_file = cache_dir() / "amx_probe.json"
    try:
        verdicts = json.loads(verdicts_file.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if not isinstance(verdicts, dict):
        verdicts = {}
    if isinstance(verdicts.get(key), bool):
        return verdicts[key]
    try:
        child = subprocess.run([sys.executable, "-m", __name__], check=False, capture_output=True, text=True,
                               timeout=_TIMEOUT_S)
        works = child.returncode == 0 and child.stdout.strip() == "ok"
    except (OSError, subprocess.TimeoutExpired):
        works = False
    verdicts[key] = works
    try:
        verdicts_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = verdicts_file.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(verdicts, indent=1))
        os.replace(temporary, verdicts_file)
    except OSError:
        pass  # a read-only cache: probe again next time
    return works


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _ggml_base() -> ctypes.CDLL:
    base = rpc.ggml_library("ggml-base")
    p, i, z = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    for name, restype, argtypes in (
            ("ggml_init", p, [_InitParams]), ("ggml_free", None, [p]),
            ("ggml_new_tensor_2d", p, [p, i, ctypes.c_int64, ctypes.c_int64]),
            ("ggml_mul_mat", p, [p, p, p]), ("ggml_new_graph", p, [p]),
            ("ggml_build_forward_expand", None, [p, p]),
            ("ggml_backend_buft_get_alloc_size", z, [p, p]), ("ggml_backend_buft_alloc_buffer", p, [p, z]),
            ("ggml_backend_buffer_get_base", p, [p]), ("ggml_backend_buffer_free", None, [p]),
            ("ggml_backend_tensor_alloc", i, [p, p, p]), ("ggml_backend_tensor_set", None, [p, p, z, z]),
            ("ggml_backend_tensor_get", None, [p, p, z, z]), ("ggml_backend_dev_buffer_type", p, [p]),
            ("ggml_backend_dev_init", p, [p, ctypes.c_char_p]), ("ggml_backend_graph_compute", i, [p, p]),
            ("ggml_backend_free", None, [p])):
        function = getattr(base, name)
        function.restype, function.argtypes = restype, argtypes
    return base


def product(amx: bool, weight_blocks: bytes, activations: np.ndarray) -> np.ndarray:
    """(M, N) = activations (M, K) times the Q8_0 weight (N, K), with the weight in the AMX buffer or
    in the CPU's plain one."""
    base, ggml = _ggml_base(), rpc.ggml_library()
    device = ggml.ggml_backend_dev_by_type(cpu_repack.DEVICE_TYPE_CPU)
    context = base.ggml_init(_InitParams(1 << 20, None, True))
    weight = base.ggml_new_tensor_2d(context, _TYPE_Q8_0, _K, _N)
    x = base.ggml_new_tensor_2d(context, _TYPE_F32, _K, _M)
    y = base.ggml_mul_mat(context, weight, x)
    graph = base.ggml_new_graph(context)
    base.ggml_build_forward_expand(graph, y)
    buffers = []
    for tensor, buffer_type in ((weight, cpu_repack.buffer_type(cpu_repack.AMX_BUFFER_NAME) if amx else None), (x, None), (y, None)):
        buffer_type = buffer_type or base.ggml_backend_dev_buffer_type(device)
        buffer = base.ggml_backend_buft_alloc_buffer(buffer_type, base.ggml_backend_buft_get_alloc_size(buffer_type, tensor))
        buffers.append(buffer)
        if not buffer or base.ggml_backend_tensor_alloc(buffer, tensor, base.ggml_backend_buffer_get_base(buffer)) != 0:
            raise RuntimeError("could not allocate a tensor")
    base.ggml_backend_tensor_set(weight, weight_blocks, 0, len(weight_blocks))
    rows = np.ascontiguousarray(activations, dtype=np.float32)
    base.ggml_backend_tensor_set(x, rows.ctypes.data, 0, rows.nbytes)
    backend = base.ggml_backend_dev_init(device, None)
    if base.ggml_backend_graph_compute(backend, graph) != 0:
        raise RuntimeError("graph compute failed")
    out = np.empty((_M, _N), dtype=np.float32)
    base.ggml_backend_tensor_get(y, out.ctypes.data, 0, out.nbytes)
    base.ggml_backend_free(backend)
    for buffer in buffers:
        base.ggml_backend_buffer_free(buffer)
    base.ggml_free(context)
    return out


def probe_matrices(seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A Q8_0 weight (N, K) as ggml's blocks, the same weight dequantized, and (M, K) activations."""
    rng = np.random.default_rng(seed)
    quants = rng.integers(-16, 17, size=(_N, _K // 32, 32), dtype=np.int8)
    block = np.dtype([("d", "<f2"), ("qs", "i1", 32)])  # ggml's block_q8_0
    blocks = np.zeros((_N, _K // 32), dtype=block)
    blocks["d"], blocks["qs"] = 1 / 16, quants
    return blocks.tobytes(), quants.reshape(_N, _K).astype(np.float32) / 16, \
        rng.standard_normal((_M, _K)).astype(np.float32)


def _probe() -> bool:
    """Run in the child: the AMX product must equal the plain one."""
    import llama_cpp  # maps llama-cpp-python's ggml libraries

    llama_cpp.llama_backend_init()
    if cpu_repack.buffer_type(cpu_repack.AMX_BUFFER_NAME) is None:
        return False
    weight, _, activations = probe_matrices()
    plain = product(False, weight, activations)
    tiled = product(True, weight, activations)
    return bool(np.allclose(tiled, plain, rtol=1e-3, atol=1e-2))


if __name__ == "__main__":
    print("ok" if _probe() else "wrong")
