"""cffi binding of the C tree verifier in native/ (built by CMakeLists.txt into this package).

The C library leaves llama's symbols undefined; they are resolved against the libllama that
``llama_cpp`` already mapped. So ``llama_cpp`` is imported first (one copy of libllama, one set of
globals) and its library is promoted to the global symbol namespace before ours is loaded.
"""

from __future__ import annotations

import ctypes
import os
import sys
from importlib import metadata
from pathlib import Path

import llama_cpp  # noqa: F401  (must be mapped before the native library)
from cffi import FFI

from .errors import OuroborosError

PINNED_LLAMA_CPP_PYTHON = "0.3.36"

CDEF = """
typedef int32_t llama_pos;
typedef int32_t llama_token;
typedef int32_t llama_seq_id;
struct llama_context;
typedef struct ouro_tree ouro_tree;

void    ouro_abi_batch_layout(int64_t out[8]);
int32_t ouro_abi_version(void);
void    ouro_set_abort_flag(struct llama_context * ctx, volatile int32_t * flag);
int32_t ouro_n_vocab(const struct llama_context * ctx);
int32_t ouro_argmax(const float * values, int32_t n);
int32_t ouro_decode_chain(struct llama_context * ctx, const llama_token * tokens, int32_t n,
                          llama_pos pos0, llama_seq_id seq, llama_token * argmax_last,
                          int32_t * llama_rc);
float * ouro_logits_last(struct llama_context * ctx);
int32_t ouro_rollback(struct llama_context * ctx, llama_pos pos);
ouro_tree * ouro_tree_init(struct llama_context * ctx, int32_t max_nodes, int32_t max_paths);
void        ouro_tree_free(ouro_tree * tree);
int32_t ouro_tree_decode(ouro_tree * tree, llama_token root, llama_pos pos_root,
                         const llama_token * tokens, int32_t n_tokens,
                         const int32_t * parents, int32_t n_parents);
int32_t ouro_tree_discard(ouro_tree * tree);
const llama_token * ouro_tree_argmax(const ouro_tree * tree);
float *  ouro_tree_logits(ouro_tree * tree, int32_t entry);
int32_t  ouro_tree_n_paths(const ouro_tree * tree);
int32_t  ouro_tree_last_decode_rc(const ouro_tree * tree);
int32_t  ouro_tree_accept_greedy(const ouro_tree * tree, int32_t * path, int32_t * n_path,
                                 llama_token * next_token);
int32_t  ouro_tree_commit(ouro_tree * tree, int32_t last_node);
"""

ABI_VERSION = 3

# Return codes of native/ouro.h.
OURO_OK = 0
OURO_ERR_ARGUMENT = -1
OURO_ERR_TOO_MANY_NODES = -2
OURO_ERR_TOO_MANY_PATHS = -3
OURO_ERR_BAD_PARENT = -4
OURO_ERR_BAD_TOKEN = -5
OURO_ERR_BAD_POSITION = -6
OURO_ERR_CONTEXT_FULL = -7
OURO_ERR_DECODE = -8
OURO_ERR_NO_MEMORY = -9
OURO_ERR_STATE = -10
OURO_ERR_ROLLBACK = -11
OURO_ERR_NO_LOGITS = -12

# What each code means, with what the caller should change.
ERRORS = {
    OURO_ERR_ARGUMENT: "invalid argument",
    OURO_ERR_TOO_MANY_NODES: "tree has more nodes than the context's n_batch (or the verifier's capacity)",
    OURO_ERR_TOO_MANY_PATHS: "tree has more root-to-leaf paths than the context's n_seq_max (or the verifier's capacity)",
    OURO_ERR_BAD_PARENT: "tree node has a parent that is out of range or not earlier in the list (cycle or forward edge)",
    OURO_ERR_BAD_TOKEN: "token id outside the vocabulary",
    OURO_ERR_BAD_POSITION: "position does not continue sequence 0 (or is past its end)",
    OURO_ERR_CONTEXT_FULL: "the context is full",
    OURO_ERR_DECODE: "llama_decode failed",
    OURO_ERR_NO_MEMORY: "out of memory",
    OURO_ERR_STATE: "no decoded tree to accept or commit, or node index out of range",
    OURO_ERR_ROLLBACK: "llama.cpp could not remove the rejected tokens from the KV cache (partial removal failed)",
    OURO_ERR_NO_LOGITS: "llama.cpp returned no logits for a batch entry",
}


class NativeError(OuroborosError):
    """A non-zero return code of the C library, turned into an exception."""

    def __init__(self, code: int, detail: str = ""):
        self.code = code
        message = ERRORS.get(code, f"native error {code}")
        super().__init__(f"{message}{': ' + detail if detail else ''}")


def check(code: int, detail: str = "") -> None:
    if code != OURO_OK:
        raise NativeError(code, detail)


def _library_names() -> list[str]:
    if sys.platform == "darwin":
        return ["libouro.dylib", "libouro.so"]
    if os.name == "nt":
        return ["ouro.dll", "libouro.dll"]
    return ["libouro.so"]


def _find_library() -> Path:
    candidates: list[Path] = []
    override = os.environ.get("OUROBOROS_LITE_NATIVE")
    if override:
        candidates.append(Path(override))
    here = Path(__file__).resolve().parent
    candidates += [here / name for name in _library_names()]
    # A source checkout on sys.path can shadow the installed package: look there too.
    try:
        dist = metadata.distribution("ouroboros-lite")
        candidates += [Path(str(dist.locate_file(f"ouroboros_lite/{n}"))) for n in _library_names()]
    except metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise OuroborosError(
        "the native library (libouro) is not built; install the package with `pip install .` "
        "or set OUROBOROS_LITE_NATIVE to a built libouro"
    )


def _promote_libllama() -> None:
    if llama_cpp.__version__ != PINNED_LLAMA_CPP_PYTHON:
        raise OuroborosError(
            f"llama-cpp-python {llama_cpp.__version__} is installed but ouroboros-lite is built "
            f"for {PINNED_LLAMA_CPP_PYTHON} (its C ABI changes between releases)"
        )
    lib_path = llama_cpp.llama_cpp._lib._name
    mode = getattr(os, "RTLD_GLOBAL", 0) | getattr(os, "RTLD_NOLOAD", 0)
    ctypes.CDLL(lib_path, mode=mode)


def _load():
    _promote_libllama()
    ffi = FFI()
    ffi.cdef(CDEF)
    path = _find_library()
    try:
        lib = ffi.dlopen(str(path))
        version = lib.ouro_abi_version()
    except (OSError, AttributeError) as exc:  # not a shared library, or not ours
        raise OuroborosError(f"{path} is not the ouroboros-lite native library ({exc}); unset "
                             "OUROBOROS_LITE_NATIVE or point it at a built libouro") from None
    if version != ABI_VERSION:
        raise OuroborosError("the native library is from another version; reinstall the package")
    return ffi, lib


ffi, lib = _load()


def context_pointer(ctx) -> object:
    """A cffi `struct llama_context *` for a ctypes context handle of llama_cpp."""
    address = ctx if isinstance(ctx, int) else ctypes.cast(ctx, ctypes.c_void_p).value
    return ffi.cast("struct llama_context *", address)


def batch_layout() -> list[int]:
    out = ffi.new("int64_t[8]")
    lib.ouro_abi_batch_layout(out)
    return list(out)
