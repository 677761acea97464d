"""ggml's tiled K-quant matmul can be turned off (`--no-tiled-mm`, `tiled_matmul = false`), only before a
process's first model load (ggml reads GGML_CPU_TILED_MM once), and the output stays the target's.

Each check runs in a child process: the switch is process-wide, and this one has loaded models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ouroboros_lite.config import resolve

TESTS = Path(__file__).parent

# Gemma-3-270M Q4_K_M: K-quant weights, so batches of 8+ tokens took the tiled kernels before.
OFF_FIRST = """
import os, sys
sys.path.insert(0, sys.argv[2])
from support import PROMPTS, assert_equal_or_tie, generate_ids, options
from ouroboros_lite.runtime import Runtime

with Runtime(sys.argv[1], options=options(tiled_matmul=False)) as gemma:
    assert os.environ["GGML_CPU_TILED_MM"] == "0"
    accepted = 0
    for prompt in PROMPTS:
        tokens = gemma.tokenize_prompt(prompt, chat=False)
        reference = generate_ids(gemma, tokens, 64, "ar")
        responses = list(gemma.generate(tokens, max_tokens=64, method="pld"))
        accepted += responses[-1].spec.accepted_tokens
        assert_equal_or_tie(gemma, tokens, reference, [r.token for r in responses if r.token >= 0], prompt)
    assert accepted > 0, "pld never had a copied token accepted"
with Runtime(sys.argv[1], options=options()):  # the default afterwards: stays off, no error
    assert os.environ["GGML_CPU_TILED_MM"] == "0"
print("ok")
"""

OFF_AFTER_A_LOAD = """
import sys
from ouroboros_lite.errors import OuroborosError
from ouroboros_lite.runtime import Runtime, RuntimeOptions

Runtime(sys.argv[1], options=RuntimeOptions(threads=2)).close()
try:
    Runtime(sys.argv[1], options=RuntimeOptions(threads=2, tiled_matmul=False))
except OuroborosError as exc:
    print(exc)
"""


def run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GGML_CPU_TILED_MM"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)


def test_off_sets_ggmls_switch_and_keeps_the_output(gemma_path):
    done = run_child(OFF_FIRST, str(gemma_path), str(TESTS))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_off_after_the_first_load_is_refused_in_one_line(gemma_path):
    done = run_child(OFF_AFTER_A_LOAD, str(gemma_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines() == [
        "tiled_matmul = false must be chosen before this process loads its first model (ggml reads "
        "GGML_CPU_TILED_MM once); set it at start-up or export GGML_CPU_TILED_MM=0"]


def test_flag_config_and_environment_reach_the_runtime_options(tmp_path, gemma_path):
    from ouroboros_lite.arguments import runtime_options
    from ouroboros_lite.cli import setup_arg_parser
    from ouroboros_lite.config import apply_to_namespace

    cfg = tmp_path / "config.toml"
    assert resolve({}, env={}, path=cfg)["tiled_matmul"] is True
    assert resolve({}, env={"OUROBOROS_LITE_TILED_MATMUL": "false"}, path=cfg)["tiled_matmul"] is False
    cfg.write_text("tiled_matmul = false\n")
    assert resolve({}, env={}, path=cfg)["tiled_matmul"] is False
    parser = setup_arg_parser()
    for argv, expected in ((["generate"], True), (["generate", "--no-tiled-mm"], False), (["bench", "--no-tiled-mm"], False)):
        args = parser.parse_args([*argv, "--model", str(gemma_path)])
        apply_to_namespace(args, env={}, path=tmp_path / "none.toml")
        assert runtime_options(args).tiled_matmul is expected, argv
