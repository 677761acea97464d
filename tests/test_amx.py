"""ggml's AMX kernels: the probe that finds out whether this build's work (amx_probe.py), the one-line
fix that makes GCC 12 builds of them work (llamacpp_tools.patch_amx_tile_config), and the wheel build
that applies it."""

from __future__ import annotations

import subprocess
import tarfile

import numpy as np
import pytest

from ouroboros_lite import amx_probe, backend, llamacpp_tools, rpc
from ouroboros_lite.llamacpp_tools import (
    AMX_TILE_CONFIG_FILE,
    AMX_TILE_CONFIG_FIX,
    BuildError,
)


def test_the_probes_product_is_the_matrix_product():
    """The ggml graph the probe builds (Q8_0 weight times F32 rows) computes x @ W.T on the plain CPU
    buffer, so comparing the AMX buffer's result with it tests the AMX kernels, not the probe."""
    backend.system_info()  # llama.cpp's backends initialised
    weight, dequantized, activations = amx_probe.probe_matrices()
    reference = activations @ dequantized.T
    ours = amx_probe.product(False, weight, activations)
    assert ours.shape == reference.shape
    # ggml quantizes the activations to Q8_0 for the dot products: about 1 % of the largest entry
    assert np.abs(ours - reference).max() <= 0.02 * np.abs(reference).max()
    assert np.abs(ours - amx_probe.product(False, *amx_probe.probe_matrices(1)[::2])).max() > 1  # not constant


def _fake_child(monkeypatch, outcome):
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        if isinstance(outcome, BaseException):
            raise outcome
        return subprocess.CompletedProcess(command, outcome[0], stdout=outcome[1], stderr="")

    monkeypatch.setattr(amx_probe.subprocess, "run", run)
    return calls


@pytest.mark.parametrize(("outcome", "verdict"), [
    ((0, "ok\n"), True),
    ((0, "wrong\n"), False),  # a build whose AMX products are wrong, or one without the AMX buffer
    ((-11, ""), False),  # SIGSEGV, the GCC 12 build
    ((132, ""), False),  # SIGILL
    ((0, "ok\nmore"), False),
    (subprocess.TimeoutExpired("python", 60), False),
    (OSError("no such file"), False),
])
def test_the_verdict_comes_from_the_child_and_is_kept_per_library(monkeypatch, tmp_path, outcome, verdict):
    monkeypatch.setenv("OUROBOROS_LITE_CACHE", str(tmp_path))
    calls = _fake_child(monkeypatch, outcome)
    assert amx_probe.amx_works() is verdict
    assert amx_probe.amx_works() is verdict
    assert len(calls) == 1 and calls[0][-2:] == ["-m", "ouroboros_lite.amx_probe"]
    library = tmp_path / "libggml-cpu.so"  # another build of the library: probed afresh
    library.write_bytes(b"\0" * 16)
    monkeypatch.setattr(rpc, "mapped_library", lambda name: library)
    amx_probe.amx_works()
    assert len(calls) == 2


def test_a_damaged_or_read_only_verdict_file_only_means_probing_again(monkeypatch, tmp_path):
    monkeypatch.setenv("OUROBOROS_LITE_CACHE", str(tmp_path))
    calls = _fake_child(monkeypatch, (0, "ok\n"))
    (tmp_path / "amx_probe.json").write_text("[not json")
    assert amx_probe.amx_works() is True
    (tmp_path / "amx_probe.json").write_text('["a list"]')
    assert amx_probe.amx_works() is True
    assert len(calls) == 2
    monkeypatch.setenv("OUROBOROS_LITE_CACHE", str(tmp_path / "file"))
    (tmp_path / "file").write_text("")  # the cache "directory" is a file: nothing can be written
    assert amx_probe.amx_works() is True


def test_the_real_probe_answers_for_this_machine():
    """On a CPU without AMX the child finds no AMX buffer and says so; on one with it, the answer is
    whether the loaded build multiplies correctly there (False for GCC 12 builds, True once patched)."""
    info = backend.system_info()
    child = subprocess.run([amx_probe.sys.executable, "-m", "ouroboros_lite.amx_probe"], check=False,
                           capture_output=True, text=True, timeout=120)
    if not backend.amx_active(info):
        assert (child.returncode, child.stdout.strip()) == (0, "wrong"), child.stderr[-500:]
    else:
        assert child.returncode != 0 or child.stdout.strip() in ("ok", "wrong")


# --- the fix ------------------------------------------------------------------------------------------

MMQ_EXCERPT = """static void ggml_tile_config_init(void) {
    static thread_local bool is_first_time = true;
    if (!is_first_time) {
        return;
    }
    static thread_local ggml_tile_config_t tc;
    ggml_tile_config_t current_tc;
    _tile_storeconfig(&current_tc);
    if (tc.palette_id == 0 || (memcmp(&current_tc.colsb, &tc.colsb, sizeof(uint16_t) * 8) != 0 &&
                               memcmp(&current_tc.rows, &tc.rows, sizeof(uint8_t) * 8) != 0)) {
        tc.palette_id = 1;
        tc.start_row = 0;
        TC_CONFIG_TILE(TMM0, 8, 64);
_tile_loadconfig(&tc);
    }
    is_first_time = false;
}
""".replace("_tile_loadconfig(&tc);\n", AMX_TILE_CONFIG_FIX[0])


def _source_tree(tmp_path, text=MMQ_EXCERPT):
    path = tmp_path / AMX_TILE_CONFIG_FILE
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_the_fix_replaces_the_builtin_once_and_only_that(tmp_path):
    path = _source_tree(tmp_path)
    llamacpp_tools.patch_amx_tile_config(tmp_path)
    patched = path.read_text()
    assert "_tile_loadconfig(&tc)" not in patched
    assert patched.count('asm volatile("ldtilecfg %0" : : "m"(tc) : "memory");') == 1
    assert patched.replace(AMX_TILE_CONFIG_FIX[1], AMX_TILE_CONFIG_FIX[0]) == MMQ_EXCERPT
    llamacpp_tools.patch_amx_tile_config(tmp_path)  # already patched: unchanged
    assert path.read_text() == patched


@pytest.mark.parametrize("text", [MMQ_EXCERPT.replace(AMX_TILE_CONFIG_FIX[0], ""),
                                  MMQ_EXCERPT + AMX_TILE_CONFIG_FIX[0]])
def test_a_source_the_fix_was_not_written_for_is_refused(tmp_path, text):
    path = _source_tree(tmp_path, text)
    with pytest.raises(BuildError, match="not there once"):
        llamacpp_tools.patch_amx_tile_config(tmp_path)
    assert path.read_text() == text


RELEASE = f"llama_cpp_python-{llamacpp_tools.PINNED_LLAMA_CPP_PYTHON}"


def _fake_sdist(monkeypatch, tmp_path):
    """`pip download` of the pinned sdist, faked: an archive holding only the file the fix touches."""
    _source_tree(tmp_path / "sdist" / RELEASE)
    archive = tmp_path / f"{RELEASE}.tar.gz"
    with tarfile.open(archive, "w:gz") as out:
        out.add(tmp_path / "sdist" / RELEASE, arcname=RELEASE)
    monkeypatch.setattr(llamacpp_tools, "_download_sdist", lambda work, log: archive)


def test_the_wheel_is_built_from_the_patched_sdist(monkeypatch, tmp_path):
    """wheel() unpacks the pinned sdist, patches it and hands that tree to pip (pip itself faked here;
    the README's AMX section runs the real build)."""
    _fake_sdist(monkeypatch, tmp_path)
    built = []

    def pip(command, log, what, env=None):
        source = command[-1]
        built.append((command, (llamacpp_tools.Path(source) / AMX_TILE_CONFIG_FILE).read_text()))
        (tmp_path / "out" / f"{RELEASE}-py3-none-linux_x86_64.whl").write_bytes(b"wheel")

    monkeypatch.setattr(llamacpp_tools, "_run_logged", pip)
    wheel = llamacpp_tools.wheel(tmp_path / "out")
    assert wheel.name == f"{RELEASE}-py3-none-linux_x86_64.whl"
    (command, text), = built
    assert command[1:4] == ["-m", "pip", "wheel"] and AMX_TILE_CONFIG_FIX[1] in text


def test_a_build_without_a_wheel_is_one_error(monkeypatch, tmp_path):
    _fake_sdist(monkeypatch, tmp_path)
    monkeypatch.setattr(llamacpp_tools, "_run_logged", lambda command, log, what, env=None: None)
    with pytest.raises(BuildError, match="without a wheel"):
        llamacpp_tools.wheel(tmp_path / "out")
