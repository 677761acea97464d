"""CPU weight repacking: the decision is a function of llama.cpp's system info, the setting and, on
AMX CPUs only, whether this build's AMX kernels work (amx_probe.py), and the setting reaches llama.cpp
from every layer (flag, config key, environment)."""

from __future__ import annotations

import pytest

from ouroboros_lite import backend
from ouroboros_lite.backend import amx_active, use_extra_buffers
from ouroboros_lite.config import resolve
from ouroboros_lite.errors import OuroborosError

# llama_print_system_info() as llama.cpp builds it: "<backend> : <feature> = 1 | ..." per backend
AMX_XEON = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
            "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | "
            "OPENMP = 1 | REPACK = 1 | ")
AVX2_EPYC = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | "
             "OPENMP = 1 | REPACK = 1 | ")
APPLE_M = ("Metal : EMBED_LIBRARY = 1 | BF16 = 1 | CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | MATMUL_INT8 = 1 | "
           "DOTPROD = 1 | ACCELERATE = 1 | REPACK = 1 | ")
CUDA_ON_AMX = "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | " + AMX_XEON
AVX512_NO_AMX = AVX2_EPYC.replace("BMI2 = 1 | ", "BMI2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | ")

CASES = [  # (system info, setting, what weights load as) on CPUs without AMX: the probe never runs
    (AVX2_EPYC, "auto", "on"), (AVX2_EPYC, "on", "on"), (AVX2_EPYC, "off", "off"),
    (AVX2_EPYC, "avx2", "avx2"), (AVX2_EPYC, "amx", "off"),
    (AVX512_NO_AMX, "auto", "on"), (AVX512_NO_AMX, "on", "on"), (AVX512_NO_AMX, "off", "off"),
    (APPLE_M, "auto", "on"), (APPLE_M, "on", "on"), (APPLE_M, "off", "off"), (APPLE_M, "amx", "off"),
    ("", "auto", "on"), ("", "on", "on"), ("", "off", "off"),
]
AMX_CASES = [  # (setting, with working AMX kernels, with a GCC 12 build: None = refused)
    ("auto", "amx", "off"), ("on", "on", None), ("off", "off", "off"), ("avx2", "avx2", "avx2"), ("amx", "amx", None),
]


@pytest.mark.parametrize(("info", "setting", "expected"), CASES)
def test_decision_for_every_cpu_and_setting(info, setting, expected, monkeypatch):
    from ouroboros_lite import amx_probe

    monkeypatch.setattr(amx_probe, "amx_works", lambda: pytest.fail("probed a CPU without AMX"))
    assert backend.cpu_weight_setting(info, setting) == expected
    assert use_extra_buffers(info, setting) is (expected == "on")


@pytest.mark.parametrize("info", [AMX_XEON, CUDA_ON_AMX])
@pytest.mark.parametrize(("setting", "working", "broken"), AMX_CASES)
def test_on_amx_cpus_the_probe_decides(info, setting, working, broken, monkeypatch):
    from ouroboros_lite import amx_probe

    monkeypatch.setattr(amx_probe, "amx_works", lambda: True)
    assert backend.cpu_weight_setting(info, setting) == working
    assert use_extra_buffers(info, setting) is (working == "on")
    monkeypatch.setattr(amx_probe, "amx_works", lambda: False)
    if broken is None:  # a one-line error naming the fix, not a segfault at the first batch
        with pytest.raises(OuroborosError, match=r"AMX kernels do not work .*llamacpp_tools wheel"):
            backend.cpu_weight_setting(info, setting)
    else:
        assert backend.cpu_weight_setting(info, setting) == broken


def test_amx_is_read_from_the_feature_list():
    assert amx_active(AMX_XEON) and amx_active(CUDA_ON_AMX)
    assert not any(amx_active(info) for info in (AVX2_EPYC, AVX512_NO_AMX, APPLE_M, ""))


@pytest.mark.parametrize("setting", ["yes", "", "AUTO", "true"])
def test_unknown_setting_is_a_clear_error(setting):
    with pytest.raises(OuroborosError, match="repack must be one of auto, on, off, avx2, amx"):
        use_extra_buffers(AVX2_EPYC, setting)


def test_every_setting_the_config_accepts_is_one_the_backend_takes():
    from ouroboros_lite.config import CHOICES

    assert [backend.cpu_weight_setting(AVX2_EPYC, s) for s in CHOICES["repack"]] == ["on", "on", "off", "avx2", "off"]


def test_this_machine_decides_from_its_own_system_info():
    info = backend.system_info()
    assert info.startswith(("CPU :", "CUDA :", "Metal :", "Vulkan :")) or " : " in info
    assert use_extra_buffers(info, "auto") is not amx_active(info)


def test_setting_comes_from_file_environment_and_flags(tmp_path):
    cfg = tmp_path / "config.toml"
    assert resolve({}, env={}, path=cfg)["repack"] == "auto"
    cfg.write_text('repack = "off"\n')
    assert resolve({}, env={}, path=cfg)["repack"] == "off"
    assert resolve({}, env={"OUROBOROS_LITE_REPACK": "on"}, path=cfg)["repack"] == "on"
    assert resolve({"repack": "auto"}, env={"OUROBOROS_LITE_REPACK": "on"}, path=cfg)["repack"] == "auto"
    cfg.write_text('repack = "avx2"\n')
    assert resolve({}, env={}, path=cfg)["repack"] == "avx2"
    cfg.write_text('repack = "maybe"\n')
    with pytest.raises(OuroborosError, match="repack must be one of auto, on, off, avx2, amx; got 'maybe'"):
        resolve({}, env={}, path=cfg)


def test_cli_flags_map_to_the_setting():
    from ouroboros_lite.cli import setup_arg_parser

    parser = setup_arg_parser()
    assert parser.parse_args(["generate"]).repack is None  # "not given": config or auto decides
    assert parser.parse_args(["generate", "--repack"]).repack == "on"
    assert parser.parse_args(["generate", "--no-repack"]).repack == "off"
    assert parser.parse_args(["chat", "-nr"]).repack == "off"
    assert parser.parse_args(["serve", "--repack-avx2"]).repack == "avx2"
    assert parser.parse_args(["bench", "--repack-amx"]).repack == "amx"


def test_the_setting_reaches_llama_cpp(gemma_path, monkeypatch):
    """With repacking on, llama.cpp moves Q4_K weights into its CPU_REPACK (or AMX) buffer where the CPU
    has such kernels (AVX2, ARM); with it off, never. On AMX CPUs auto uses the AMX buffer for Q4_K
    weights only where this build's kernels work, and "on" is refused where they do not."""
    from collections import deque

    from ouroboros_lite import amx_probe

    def buffers(repack: str) -> str:
        monkeypatch.setattr(backend, "_log_lines", deque(maxlen=100_000))  # the whole load log
        backend.Model(gemma_path, repack=repack).close()
        return "".join(line for line in backend._log_lines if "model buffer size" in line)

    info = backend.system_info()
    assert "CPU_Mapped" in buffers("off") and "REPACK" not in buffers("off") and "AMX" not in buffers("off")
    amx_works = amx_active(info) and amx_probe.amx_works()
    if amx_active(info) and not amx_works:
        with pytest.raises(OuroborosError, match="AMX kernels do not work"):
            backend.Model(gemma_path, repack="on")
    elif "AVX2 = 1" in info or "NEON = 1" in info:
        on = buffers("on")
        assert "CPU_REPACK" in on or "AMX" in on, on
    if amx_active(info):  # avx2: CPU_REPACK by overrides, never AMX
        auto, avx2 = buffers("auto"), buffers("avx2")
        assert "CPU_REPACK" in avx2 and "AMX" not in avx2, avx2
        assert "REPACK" not in auto and ("AMX" in auto) is amx_works, auto


def test_amx_takes_only_q4_k_weights_of_shapes_its_kernels_multiply(gemma_path, draft_path):
    from ouroboros_lite import cpu_repack, gguf_meta

    chosen = set(cpu_repack.amx_tensors(gemma_path))
    assert chosen and cpu_repack.amx_tensors(draft_path) == []  # Q4_1: not taken
    for t in gguf_meta.tensors(gemma_path):
        fits = t.type == 12 and t.shape[0] % 256 == 0 and t.shape[1] % 32 == 0 and t.name.startswith("blk.")
        assert (t.name in chosen) is (fits and len(t.shape) == 2), t
    assert len(chosen) == 27  # attn_output and half the ffn_down; the Q5_0/Q6_K/Q8_0 weights stay out


# --- CPU_REPACK without the AMX buffer (cpu_repack.py) ----------------------------------------------

@pytest.mark.parametrize(("info", "setting", "expected"), [
    (AMX_XEON, "avx2", True), (AMX_XEON, "auto", False), (AMX_XEON, "on", False), (AMX_XEON, "off", False),
    (CUDA_ON_AMX, "avx2", True), (AVX2_EPYC, "avx2", True), (AVX2_EPYC, "auto", False),
    (APPLE_M, "avx2", False), ("", "avx2", False),
    (AMX_XEON.replace("REPACK = 1", "REPACK = 0"), "avx2", False),
])
def test_avx2_repack_is_opt_in_and_keeps_the_amx_buffer_off(info, setting, expected):
    from ouroboros_lite import cpu_repack

    assert cpu_repack.applies(info, setting) is expected
    if expected:  # the AMX buffer itself stays off
        assert use_extra_buffers(info, setting) is False


def test_override_patterns_name_exactly_the_repackable_tensors():
    import re

    from ouroboros_lite.cpu_repack import patterns

    chosen = ["blk.0.ffn_up.weight", "blk.1.ffn_up.weight", "blk.11.ffn_up.weight", "blk.3.attn_v.weight"]
    others = ["blk.2.ffn_up.weight", "blk.1.ffn_up.weight.extra", "xblk.0.ffn_up.weight", "blk.0.attn_v.weight",
              "blk.10.ffn_up.weight", "blk.1.ffn_upXweight", "token_embd.weight", "blk.33.attn_v.weight"]
    compiled = [re.compile(p) for p in patterns(chosen)]
    assert len(compiled) == 2  # one per weight kind, not one per tensor
    assert all(any(p.search(name) for p in compiled) for name in chosen)
    assert not any(p.search(name) for p in compiled for name in others)


def test_tensor_table_matches_the_gguf_reference_reader(draft_path, gemma_path):
    import gguf

    from ouroboros_lite import cpu_repack, gguf_meta

    reference = gguf.GGUFReader(str(draft_path)).tensors  # (slow on Gemma's 262k-token vocabulary)
    assert [(t.name, t.shape, t.type) for t in gguf_meta.tensors(draft_path)] == [
        (t.name, tuple(int(n) for n in t.shape), int(t.tensor_type)) for t in reference]
    assert cpu_repack.repackable_tensors(draft_path) == []  # Q4_1: no x86 repack layout
    ours = gguf_meta.tensors(gemma_path)
    repackable = cpu_repack.repackable_tensors(gemma_path)
    assert repackable and "token_embd.weight" not in repackable
    assert all(t.type == int(gguf.GGMLQuantizationType.Q4_K) and t.shape[1] % 8 == 0
               for t in ours if t.name in set(repackable))


@pytest.mark.parametrize("setting", ["avx2", "amx"])
def test_llama_cpp_pythons_llama_loads_the_weights_where_ours_does(gemma_path, monkeypatch, setting):
    """The test references and benchmarks that use llama-cpp-python's `Llama` get our buffers (so the
    same kernels and the same logits), the per-file tensor overrides of "avx2" and "amx" included."""
    from collections import deque

    import llama_cpp

    from ouroboros_lite import amx_probe

    def buffers(load) -> list[str]:
        monkeypatch.setattr(backend, "_log_lines", deque(maxlen=100_000))
        load()
        return sorted(line.split("model buffer size")[0].split(":")[-1].strip()
                      for line in backend._log_lines if "model buffer size" in line)

    info = backend.system_info()
    usable = {"avx2": "AVX2 = 1" in info, "amx": amx_active(info) and amx_probe.amx_works()}[setting]
    setting = setting if usable else "auto"
    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", llama_cpp.llama_cpp.llama_model_default_params)
    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_load_from_file", llama_cpp.llama_cpp.llama_model_load_from_file)
    backend.apply_repack_to_llama_cpp_python(setting)
    backend.apply_repack_to_llama_cpp_python(setting)  # idempotent: wraps the originals, not itself
    ours = buffers(lambda: backend.Model(gemma_path, repack=setting).close())
    theirs = buffers(lambda: llama_cpp.Llama(model_path=str(gemma_path), n_ctx=64, verbose=True).close())
    assert ours == theirs, (ours, theirs)
    if usable:
        assert {"avx2": "CPU_REPACK", "amx": "AMX"}[setting] in theirs
