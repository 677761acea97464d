"""The C library and llama_cpp's ctypes bindings agree on the pinned llama.cpp ABI."""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np

from ouroboros_lite import native


def test_llama_batch_layout_matches_ctypes():
    fields = [name for name, _ in llama_cpp.llama_batch._fields_]
    assert fields == ["n_tokens", "token", "embd", "pos", "n_seq_id", "seq_id", "logits"]
    expected = [ctypes.sizeof(llama_cpp.llama_batch)] + [getattr(llama_cpp.llama_batch, f).offset for f in fields]
    assert native.batch_layout() == expected


def test_pinned_llama_cpp_python_version():
    assert llama_cpp.__version__ == native.PINNED_LLAMA_CPP_PYTHON


def test_one_libllama_is_mapped():
    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if "libllama" in line}
    assert len(libs) == 1, libs


def test_n_vocab_through_native_equals_ctypes(pair):
    ctx = pair.context
    through_c = native.lib.ouro_n_vocab(native.context_pointer(ctx.handle))
    vocab = llama_cpp.llama_model_get_vocab(llama_cpp.llama_get_model(ctx.handle))
    assert through_c == llama_cpp.llama_vocab_n_tokens(vocab) == 49152


def test_argmax_picks_first_maximum():
    values = np.array([0.5, 3.0, -1.0, 3.0, 2.0], dtype=np.float32)
    ptr = native.ffi.cast("float *", values.ctypes.data)
    assert native.lib.ouro_argmax(ptr, len(values)) == 1
