"""One short generation through every quantization type we ship, with the default settings, each in
its own process: a CPU on which ggml crashes (AMX, llama.cpp #20824) fails here loudly, by name,
instead of taking a later test or a user's chat down."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from ouroboros_lite.catalog import is_verified, load_catalog

# catalog model -> the quantization types inside it (general.file_type and mixed tensors)
SHIPPED = {
    "smollm2-135m-instruct-q4_1": "Q4_1",
    "smollm2-135m-instruct-f32": "F32",
    "gemma-3-270m-q4_k_m": "Q4_K_M (Q4_K, Q6_K, Q5_0)",
    "qwen2.5-coder-1.5b-instruct-q4_k_m": "Q4_K_M (Q4_K, Q6_K, Q5_0)",
    "qwen2.5-coder-0.5b-instruct-q4_k_m": "Q4_K_M (Q4_K, Q6_K, Q5_0)",
}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_default_settings_decode_batches_on_this_cpu(name, tmp_path):
    entry = load_catalog().get(name)
    if not is_verified(entry):
        pytest.skip(f"{name} is not cached (ouroboros-lite pull {name})")
    # a prompt prefill (a batch of many tokens) and a Jacobi window's trees (batches of 2+)
    command = [sys.executable, "-m", "ouroboros_lite", "generate", "--model", str(entry.path), "--draft", "none",
               "-n", "4", "--window", "2", "-t", "2", "--no-warm-pool", "--prompt", "The capital of France is"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    how = f"killed by {signal.Signals(-done.returncode).name}" if done.returncode < 0 else f"exit {done.returncode}"
    assert done.returncode == 0, f"{name} ({SHIPPED[name]}) failed on this CPU ({how}): {done.stderr[-500:]}"
    assert "tok/s" in done.stderr
