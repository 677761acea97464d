"""llama-cpp-python's own `Llama` greedy generation, the reference our greedy loop must equal.

It runs in a child process (`python tests/llama_reference.py`), so a crash inside ggml fails
the one test that asked for it instead of taking the whole suite down. `Llama` has no parameter
for `use_extra_bufts` and segfaults on CPUs whose ggml AMX path is active (llama.cpp #20824),
so the child loads with the same repack decision as ours (backend.apply_repack_to_llama_cpp_python).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import ouroboros_lite


def reference_greedy(path: Path, prompt_tokens: list[int], n: int, *, threads: int) -> list[int]:
    request = json.dumps({"path": str(path), "tokens": prompt_tokens, "n": n, "threads": threads})
    # the child imports the same ouroboros_lite as this process (a source checkout or the installed one)
    package_root = str(Path(ouroboros_lite.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, __file__], input=request, capture_output=True, text=True, timeout=600,
                          env=env)
    if done.returncode != 0:
        how = (f"killed by {signal.Signals(-done.returncode).name}" if done.returncode < 0
               else f"exit {done.returncode}")
        tail = done.stderr.strip().splitlines()[-3:]
        raise AssertionError(f"the llama-cpp-python reference on {path.name} failed ({how}): {' | '.join(tail)}")
    return json.loads(done.stdout)


def _generate(path: str, tokens: list[int], n: int, threads: int) -> list[int]:
    from llama_cpp import Llama

    from ouroboros_lite.backend import apply_repack_to_llama_cpp_python

    apply_repack_to_llama_cpp_python("auto")
    llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, flash_attn=True,
                verbose=False)
    try:
        out = []
        for token in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
            out.append(token)
            if llm._model.token_is_eog(token) if hasattr(llm._model, "token_is_eog") else token == llm.token_eos():
                break
            if len(out) >= n:
                break
        return out
    finally:
        llm.close()


if __name__ == "__main__":
    request = json.loads(sys.stdin.read())
    print(json.dumps(_generate(request["path"], request["tokens"], request["n"], request["threads"])))
