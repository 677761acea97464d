"""CPU weight repacking: the decision is a pure function of llama.cpp's system info and the setting,
and the setting reaches llama.cpp from every layer (flag, config key, environment)."""

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

CASES = [  # (system info, setting, use_extra_bufts)
    (AMX_XEON, "auto", False), (AMX_XEON, "on", True), (AMX_XEON, "off", False),
    (CUDA_ON_AMX, "auto", False), (CUDA_ON_AMX, "on", True), (CUDA_ON_AMX, "off", False),
    (AVX2_EPYC, "auto", True), (AVX2_EPYC, "on", True), (AVX2_EPYC, "off", False),
    (AVX512_NO_AMX, "auto", True), (AVX512_NO_AMX, "on", True), (AVX512_NO_AMX, "off", False),
    (APPLE_M, "auto", True), (APPLE_M, "on", True), (APPLE_M, "off", False),
    ("", "auto", True), ("", "on", True), ("", "off", False),
]


@pytest.mark.parametrize(("info", "setting", "expected"), CASES)
def test_decision_for_every_cpu_and_setting(info, setting, expected):
    assert use_extra_buffers(info, setting) is expected


def test_amx_is_read_from_the_feature_list():
    assert amx_active(AMX_XEON) and amx_active(CUDA_ON_AMX)
    assert not any(amx_active(info) for info in (AVX2_EPYC, AVX512_NO_AMX, APPLE_M, ""))


@pytest.mark.parametrize("setting", ["yes", "", "AUTO", "true"])
def test_unknown_setting_is_a_clear_error(setting):
    with pytest.raises(OuroborosError, match="repack must be one of auto, on, off"):
        use_extra_buffers(AVX2_EPYC, setting)


def test_every_setting_the_config_accepts_is_one_the_backend_takes():
    from ouroboros_lite.config import CHOICES

    assert [use_extra_buffers(AVX2_EPYC, s) for s in CHOICES["repack"]] == [True, True, False]


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
    cfg.write_text('repack = "maybe"\n')
    with pytest.raises(OuroborosError, match="repack must be one of auto, on, off; got 'maybe'"):
        resolve({}, env={}, path=cfg)


def test_cli_flags_map_to_the_setting():
    from ouroboros_lite.cli import setup_arg_parser

    parser = setup_arg_parser()
    assert parser.parse_args(["generate"]).repack is None  # "not given": config or auto decides
    assert parser.parse_args(["generate", "--repack"]).repack == "on"
    assert parser.parse_args(["generate", "--no-repack"]).repack == "off"
    assert parser.parse_args(["chat", "-nr"]).repack == "off"


def test_the_setting_reaches_llama_cpp(gemma_path, monkeypatch):
    """With repacking on, llama.cpp moves Q4_K weights into its CPU_REPACK (or AMX) buffer where the CPU
    has such kernels (AVX2, ARM); with it off, never."""
    from collections import deque

    def buffers(repack: str) -> str:
        monkeypatch.setattr(backend, "_log_lines", deque(maxlen=100_000))  # the whole load log
        backend.Model(gemma_path, repack=repack).close()
        return "".join(line for line in backend._log_lines if "model buffer size" in line)

    assert "CPU_Mapped" in buffers("off") and "REPACK" not in buffers("off") and "AMX" not in buffers("off")
    on = buffers("on")
    if "AVX2 = 1" in backend.system_info() or "NEON = 1" in backend.system_info():
        assert "CPU_REPACK" in on or "AMX" in on, on
