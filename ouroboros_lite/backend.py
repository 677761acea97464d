"""Models and contexts on llama_cpp's low-level C API (the only module that calls llama_cpp).

We do not use llama_cpp.Llama: it cannot set kv_unified / n_seq_max, which tree verification needs.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import signal
import sys
import threading
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from . import cpu_repack, gguf_meta, rpc
from .errors import ModelFileError, OuroborosError

GGUF_MAGIC = b"GGUF"
KV_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


DEFAULT_THREADS = max(1, min(8, available_cores()))

_init_lock = threading.Lock()
_initialized = False
_log_lines: deque[str] = deque(maxlen=50)


@llama_cpp.llama_log_callback
def _log_callback(level, text, user_data):  # noqa: ARG001
    message = text.decode("utf-8", errors="replace") if text else ""
    _log_lines.append(message)
    if os.environ.get("OUROBOROS_LITE_VERBOSE"):
        os.write(2, message.encode("utf-8", errors="replace"))


@contextmanager
def deferred_interrupt():
    """Hold Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt.

    While llama.cpp works (loading a model), Python code runs only in `_log_callback`; a
    KeyboardInterrupt raised there cannot unwind through C, so ctypes prints "Exception ignored"
    and drops it. Only Python's own handler in the main thread is replaced; others are left alone."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _ensure_backend() -> None:
    global _initialized
    with _init_lock:
        if not _initialized:
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _initialized = True


def _last_log_error() -> str:
    """The first error llama.cpp logged since the log was cleared (the cause, not the echo)."""
    for line in _log_lines:
        line = line.strip()
        if line and ("error" in line.lower() or "failed" in line.lower()):
            return line.split(": ", 1)[-1] if line.startswith("llama_model_load:") else line
    return ""


class GpuUnavailableWarning(UserWarning):
    pass


_repack_reported = False


def system_info() -> str:
    """llama.cpp's feature string: "CPU : SSE3 = 1 | ... | AMX_INT8 = 1 | ..." for this build on this CPU."""
    _ensure_backend()
    return llama_cpp.llama_print_system_info().decode(errors="replace")


def amx_active(info: str) -> bool:
    """Whether ggml's AMX weight buffer is in use: the build has it and the CPU offers it."""
    return "AMX_INT8 = 1" in info


TILED_MATMUL_ENV = "GGML_CPU_TILED_MM"  # ggml-cpu/tiled/tiled.cpp: "0" turns its tiled K-quant matmul off
_models_loaded = False  # whether a Model of this process has loaded: ggml may have read TILED_MATMUL_ENV by then


def apply_tiled_matmul(on: bool) -> None:
    """ggml's tiled K-quant matrix product (x86 CPUs) takes every CPU batch of 8 or more tokens whose
    weights are K-quants outside the repack buffers: on Qwen2.5-Coder-1.5B Q4_K_M that is the Q6_K
    layers and the output layer. ggml reads its switch once per process, at its first matrix product,
    so `on=False` must come before the process's first model load; True keeps what the environment
    says (llama.cpp's default: on). Measured on a 2-core AVX2 EPYC (benchmarks/tiled_matmul.py): off,
    verification forwards of 8-9 tokens were 0.79-0.83x as dear, of 16 tokens 1.02x, and prompts ran at 0.85x."""
    global _models_loaded
    if not on and os.environ.get(TILED_MATMUL_ENV) != "0":
        if _models_loaded:
            raise OuroborosError("tiled_matmul = false must be chosen before this process loads its first model "
                                 f"(ggml reads {TILED_MATMUL_ENV} once); set it at start-up or export "
                                 f"{TILED_MATMUL_ENV}=0")
        os.environ[TILED_MATMUL_ENV] = "0"
    _models_loaded = True


def cpu_weight_setting(info: str, repack: str = "auto") -> str:
    """What a repack setting ("auto", "on", "off", "avx2", "amx") loads weights as on this CPU and
    build (`info`: llama.cpp's system info): "on", "off", "avx2" or "amx".

    "on" is llama.cpp's default, every extra CPU buffer (use_extra_bufts): ggml's repack speeds
    Q4_0/Q4_K on AVX2 and ARM. Where the AMX buffer is active, "auto" puts only the Q4_K matrix
    weights into it (cpu_repack.py: the rest is slower there), if this build's AMX kernels work;
    builds from GCC 12 crash in them (amx_probe.py), and there "auto" loads as stored, like llama.cpp's
    --no-repack, while "on" and "amx" are refused with a one-line error instead of a segfault."""
    if repack not in ("auto", "on", "off", "avx2", "amx"):  # config.REPACK_SETTINGS
        raise OuroborosError(f"repack must be one of auto, on, off, avx2, amx; got {repack!r}")
    if repack in ("off", "avx2") or not amx_active(info):
        return "on" if repack == "auto" else ("off" if repack == "amx" else repack)
    # imported only where AMX is active: the probe runs a child process, once per llama.cpp build
    from . import amx_probe

    if amx_probe.amx_works():
        return "amx" if repack == "auto" else repack
    if repack == "auto":
        return "off"
    raise OuroborosError(f"repack {repack!r} would crash here: this llama-cpp-python build's AMX kernels do "
                         "not work (GCC 12 miscompiles them); rebuild it with `python -m "
                         "ouroboros_lite.llamacpp_tools wheel DIR` (README: AMX), or use auto")


def use_extra_buffers(info: str, repack: str = "auto") -> bool:
    """llama_model_params.use_extra_bufts for a repack setting: only "on" turns all of ggml's extra CPU
    buffers on; "avx2" and "amx" name their tensors for one buffer by overrides (cpu_repack.py)."""
    return cpu_weight_setting(info, repack) == "on"


_kept_overrides: list = []


def _set_cpu_overrides(params, path, info: str, repack: str):
    """Put cpu_repack's tensor overrides for `path` into llama_model_params where the model runs on
    this CPU only (no GPU or RPC layers) and none are set; returns the array, which the caller keeps
    alive, or None."""
    if params.n_gpu_layers != 0 or params.tensor_buft_overrides:
        return None
    table = cpu_repack.for_model(path, info, cpu_weight_setting(info, repack))
    if table is not None:
        params.tensor_buft_overrides = ctypes.cast(table, ctypes.c_void_p).value
    return table


def apply_repack_to_llama_cpp_python(repack: str = "auto") -> None:
    """Make llama-cpp-python's own `Llama` (benchmarks and test references; we never use it) load
    its models as `Model` loads them on this CPU: it has no parameter for use_extra_bufts (and crashes
    where AMX is active) nor for our per-file CPU_REPACK overrides (the same kernels, the same logits)."""
    current = llama_cpp.llama_cpp.llama_model_default_params  # what llama_cpp.Llama calls
    defaults = getattr(current, "_ouroboros_original", current)  # (not __wrapped__: the ctypes stub's)
    current_load = llama_cpp.llama_cpp.llama_model_load_from_file
    load = getattr(current_load, "_ouroboros_original", current_load)
    info = system_info()
    extra_buffers = use_extra_buffers(info, repack)

    def model_params():
        params = defaults()
        params.use_extra_bufts = extra_buffers
        return params

    def load_from_file(path_model, params):
        table = _set_cpu_overrides(params, os.fsdecode(path_model), info, repack)
        if table is not None:
            _kept_overrides.append(table)  # alive as long as llama.cpp may read the params
        return load(path_model, params)

    model_params._ouroboros_original = defaults
    load_from_file._ouroboros_original = load
    llama_cpp.llama_cpp.llama_model_default_params = model_params
    llama_cpp.llama_cpp.llama_model_load_from_file = load_from_file


def _report_repack_choice(info: str, repack: str) -> None:
    global _repack_reported
    if repack == "auto" and amx_active(info) and not _repack_reported and os.environ.get("OUROBOROS_LITE_VERBOSE"):
        _repack_reported = True
        if cpu_weight_setting(info, repack) == "amx":
            print("ouroboros-lite: this CPU has AMX and this build's AMX kernels work: Q4_K matrix weights "
                  "load into ggml's AMX buffer, the rest as stored", file=sys.stderr)
        else:
            print("ouroboros-lite: this CPU has AMX, but this build's AMX kernels crash (GCC 12; README: "
                  "AMX): loading models without weight repacking", file=sys.stderr)


def gpu_backend() -> str | None:
    """"cuda", "metal", another GPU backend's name in lower case, or None (CPU-only build)."""
    if not llama_cpp.llama_supports_gpu_offload():
        return None
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    for name in ("CUDA", "Metal", "Vulkan", "ROCm", "HIP", "SYCL"):
        if name in info:
            return name.lower()
    # llama_supports_gpu_offload is also true for a build with RPC and no GPU of its own
    return "gpu" if rpc.local_gpu_devices() else None


def check_gguf_file(path: str | os.PathLike) -> Path:
    """Fail with a clear message unless `path` is a readable file that starts like a GGUF file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"model file not found: {p}")
    if not p.is_file():
        raise ModelFileError(f"model path is not a file: {p}")
    with p.open("rb") as f:
        head = f.read(8)
    if head[:4] != GGUF_MAGIC:
        raise ModelFileError(f"not a GGUF file: {p}")
    if len(head) < 8:
        raise ModelFileError(f"truncated GGUF file: {p}")
    gguf_meta.check(p)  # values llama.cpp's loader would abort the process on
    return p


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


class Model:
    """A GGUF model loaded by llama.cpp, with its tokenizer and chat template."""

    def __init__(self, path: str | os.PathLike, *, gpu_layers: int = 0, repack: str = "auto",
                 rpc_servers: tuple[str, ...] = (), tiled_matmul: bool = True):
        """rpc_servers: ggml-rpc-server endpoints ("host:port") that hold the model's layers (all the
        repeating layers unless gpu_layers says how many; the output layer stays here), split by their
        free memory as llama.cpp splits them. tiled_matmul: False turns ggml's tiled K-quant matmul off
        for the process (apply_tiled_matmul)."""
        self.path = check_gguf_file(path)
        _ensure_backend()
        if gpu_layers != 0 and not rpc_servers and gpu_backend() is None:
            warnings.warn("this llama-cpp-python build has no GPU backend, so --gpu-layers is ignored and "
                          "the model runs on the CPU (see the README's GPU section)", GpuUnavailableWarning,
                          stacklevel=2)
        params = llama_cpp.llama_model_default_params()
        self._devices = rpc.device_list(tuple(rpc_servers))  # None: llama.cpp's default
        if self._devices is not None:
            params.devices = ctypes.cast(self._devices, ctypes.c_void_p).value
        if rpc_servers and gpu_layers == 0:
            # every layer to the servers, but not the output layer: its logits (a row of n_vocab
            # floats per tree node, megabytes per forward) would cross the network, hidden states do not
            gpu_layers = gguf_meta.block_count(self.path) or 999
        params.n_gpu_layers = gpu_layers
        self.rpc_servers = tuple(rpc_servers)
        info = system_info()
        params.use_extra_bufts = use_extra_buffers(info, repack)
        self._overrides = _set_cpu_overrides(params, self.path, info, repack)  # kept alive while llama.cpp loads
        _report_repack_choice(info, repack)
        apply_tiled_matmul(tiled_matmul)
        _log_lines.clear()
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            reason = _last_log_error()
            raise ModelFileError(
                f"llama.cpp could not load {self.path} (truncated or unsupported GGUF)"
                + (f": {reason}" if reason else "")
            )
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self._model)
        self.bos = llama_cpp.llama_vocab_bos(self._vocab)
        self.eos = llama_cpp.llama_vocab_eos(self._vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.add_eos = bool(llama_cpp.llama_vocab_get_add_eos(self._vocab))
        self.vocab_type = int(llama_cpp.llama_vocab_type(self._vocab))
        self.is_recurrent = bool(llama_cpp.llama_model_is_recurrent(self._model)) or bool(
            llama_cpp.llama_model_is_hybrid(self._model)
        )
        self._piece_cache: dict[int, bytes] = {}

    @property
    def handle(self):
        return self._model

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # --- metadata -----------------------------------------------------------------------------
    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    @property
    def is_quantized(self) -> bool:
        """Weights stored below 16 bits (GGUF general.file_type other than F32, F16, BF16)."""
        return self.metadata("general.file_type") not in (None, "0", "1", "32")

    @property
    def description(self) -> str:
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self._model, buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    # --- tokens ---------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = utf8(text)
        capacity = len(data) + 8
        while True:
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buf, capacity, add_special, parse_special
            )
            if n >= 0:
                return list(buf[:n])
            capacity = -n

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The raw bytes of one token (a piece may end inside a multibyte character)."""
        key = token if not special else -1 - token
        piece = self._piece_cache.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            piece = buf.raw[: max(n, 0)]
            self._piece_cache[key] = piece
        return piece

    def token_text(self, token: int) -> str:
        """The vocabulary entry of a token as stored in the GGUF (for vocabulary checks)."""
        return llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # --- chat -------------------------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        tmpl = llama_cpp.llama_model_chat_template(self._model, None)
        return tmpl.decode("utf-8", errors="replace") if tmpl else None

    def apply_chat_template(self, messages: list[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        template = llama_cpp.llama_model_chat_template(self._model, None)
        if not template:
            raise OuroborosError(f"{self.path.name} has no chat template in its GGUF metadata")
        keep = [(utf8(m.role, "a message role"), utf8(m.content, "a message")) for m in messages]
        chat = (llama_cpp.llama_chat_message * len(keep))()
        for i, (role, content) in enumerate(keep):
            chat[i].role = role
            chat[i].content = content
        capacity = 2 * sum(len(r) + len(c) for r, c in keep) + 512
        for _ in range(2):
            buf = ctypes.create_string_buffer(capacity)
            n = llama_cpp.llama_chat_apply_template(
                template, chat, len(keep), add_generation_prompt, buf, capacity
            )
            if n < 0:
                return _jinja_chat(template.decode("utf-8", errors="replace"), messages, add_generation_prompt, self)
            if n <= capacity:
                return buf.raw[:n].decode("utf-8", errors="replace")
            capacity = n
        raise OuroborosError("chat template output did not fit")


def _jinja_chat(template: str, messages: list[ChatMessage], add_generation_prompt: bool, model: Model) -> str:
    """Templates llama.cpp's built-in matcher does not know are rendered with Jinja2."""
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:  # pragma: no cover - jinja2 comes with llama-cpp-python
        raise OuroborosError("this model's chat template needs jinja2") from exc
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined)

    def raise_exception(message):
        raise OuroborosError(f"chat template: {message}")

    bos = model.token_bytes(model.bos, special=True).decode("utf-8", "replace") if model.bos >= 0 else ""
    eos = model.token_bytes(model.eos, special=True).decode("utf-8", "replace") if model.eos >= 0 else ""
    try:
        return env.from_string(template).render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
            raise_exception=raise_exception,
        )
    except OuroborosError:
        raise
    except Exception as exc:  # noqa: BLE001 - a template is code from the file: syntax errors, bad filters, ...
        raise OuroborosError(f"{model.path.name} has a broken chat template ({type(exc).__name__}: {exc}); "
                             "use another model (or generate without --chat)") from None


def utf8(text: str, what: str = "the text") -> bytes:
    """`text` as UTF-8 bytes; an OuroborosError for a non-string or a string that is not valid Unicode."""
    if not isinstance(text, str):
        raise OuroborosError(f"{what} must be a string, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])  # surrogateescape maps an undecodable byte b to U+DC00 + b
        kind = f"invalid UTF-8 byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else \
            f"a lone surrogate U+{char:04X}"
        raise OuroborosError(f"{what} is not valid Unicode: {kind} at character {exc.start}; "
                             "pass valid UTF-8 text") from None


class Context:
    """A llama.cpp context set up for tree verification: one unified KV cache for all sequences."""

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_seq_max: int = 1,
        threads: int = DEFAULT_THREADS,
        flash_attn: bool | None = None,
        kv_type: str = "f16",
    ):
        if kv_type not in KV_TYPES:
            raise OuroborosError(f"unknown KV cache type {kv_type!r}; choose one of {', '.join(KV_TYPES)}")
        if n_ctx <= 0 or n_batch <= 0 or n_seq_max <= 0 or threads <= 0:
            raise OuroborosError("n_ctx, n_batch, n_seq_max and threads must be positive")
        # llama.cpp clamps n_batch to n_ctx, then aborts (GGML_ASSERT n_outputs_max) below n_seq_max
        n_ctx, n_batch = max(n_ctx, n_seq_max), max(n_batch, n_seq_max)
        self.model = model
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = n_seq_max
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = True  # coupled sequences (a token in several paths) need one stream
        params.swa_full = True  # shared cells of SWA models must not be recycled (Gemma 3)
        params.no_perf = True
        params.type_k = params.type_v = KV_TYPES[kv_type]
        if flash_attn is not None:
            params.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        _log_lines.clear()
        self._ctx = llama_cpp.llama_init_from_model(model.handle, params)
        if not self._ctx:
            raise OuroborosError(f"llama.cpp could not create a context: {_last_log_error() or 'unknown error'}")
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_batch = llama_cpp.llama_n_batch(self._ctx)
        self.n_seq_max = llama_cpp.llama_n_seq_max(self._ctx)
        self._memory = llama_cpp.llama_get_memory(self._ctx)

    @property
    def handle(self):
        return self._ctx

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self._memory, True)

    def seq_pos_max(self, seq: int = 0) -> int:
        return llama_cpp.llama_memory_seq_pos_max(self._memory, seq)

    def seq_pos_min(self, seq: int = 0) -> int:
        return llama_cpp.llama_memory_seq_pos_min(self._memory, seq)

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class TextStream:
    """Turns token bytes into text pieces; a character split over tokens is printed whole."""

    def __init__(self, model: Model):
        self._model = model
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(self._model.token_bytes(token))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
