"""llama.cpp's own programs (llama-completion, llama-speculative-simple, llama-lookup, ggml-rpc-server),
built once from the llama.cpp tree vendored in the pinned llama-cpp-python sdist, so they run the same
llama.cpp as our native module. They go into the cache, `<cache>/llama.cpp-tools/<version>/`; the
repository keeps no second copy of llama.cpp.

`wheel(directory)` builds the pinned llama-cpp-python itself from that sdist with one line of ggml
patched (AMX_TILE_CONFIG_FIX: GCC 12 miscompiles ggml's AMX tile set-up; see amx_probe.py), so that
Intel CPUs with AMX can use ggml's AMX kernels instead of crashing in them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .errors import OuroborosError
from .native import PINNED_LLAMA_CPP_PYTHON

TOOLS = ("llama-completion", "llama-speculative-simple", "llama-lookup", "ggml-rpc-server")
CMAKE_CONFIGURE = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_RPC=ON", "-DLLAMA_BUILD_EXAMPLES=ON",
                   "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                   "-DLLAMA_OPENSSL=OFF")


class BuildError(OuroborosError):
    pass


def tools_dir() -> Path:
    from .catalog import cache_dir

    return cache_dir() / "llama.cpp-tools" / PINNED_LLAMA_CPP_PYTHON


def binary(name: str) -> Path:
    return tools_dir() / "build" / "bin" / name


def _run_logged(command: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        raise BuildError(f"{what} failed (exit {done.returncode}; log {log}): {tail[0][:200] if tail else ''}")


def _fetch_source(home: Path, log: Path) -> Path:
    """The vendored llama.cpp of the pinned sdist, unpacked once into `home/llama.cpp`."""
    source = home / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    print(f"fetching the llama-cpp-python {PINNED_LLAMA_CPP_PYTHON} sdist ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=home) as work:
        archive_path = _download_sdist(Path(work), log)
        prefix = f"llama_cpp_python-{PINNED_LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        with tarfile.open(archive_path) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
            if not members:
                raise BuildError(f"{archive_path.name} holds no vendor/llama.cpp")
            for member in members:
                member.name = member.name[len(prefix):]
            archive.extractall(Path(work) / "llama.cpp", members=[m for m in members if m.name], filter="data")
        shutil.rmtree(source, ignore_errors=True)
        shutil.move(Path(work) / "llama.cpp", source)
    return source


AMX_TILE_CONFIG_FILE = "vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp"
AMX_TILE_CONFIG_FIX = (
    "    _tile_loadconfig(&tc);\n",
    ("    // ouroboros-lite: GCC 12 drops the stores that fill tc before the _tile_loadconfig builtin (it\n"
     "    // does not model the builtin's read), so ldtilecfg loaded a half-set config and faulted. An asm\n"
     "    // statement with tc as its memory input keeps them.\n"
     "    asm volatile(\"ldtilecfg %0\" : : \"m\"(tc) : \"memory\");\n"))


def _download_sdist(work: Path, log: Path) -> Path:
    _run_logged([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                 "-d", str(work), f"llama-cpp-python=={PINNED_LLAMA_CPP_PYTHON}"], log, "pip download")
    archives = list(work.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise BuildError(f"pip download gave no sdist in {work} (log {log})")
    return archives[0]


def patch_amx_tile_config(source: Path) -> None:
    """Apply AMX_TILE_CONFIG_FIX to an unpacked llama-cpp-python sdist; BuildError if the line is not
    there exactly once (another version: the patch would need a new look)."""
    path = source / AMX_TILE_CONFIG_FILE
    old, new = AMX_TILE_CONFIG_FIX
    text = path.read_text()
    if new in text:
        return
    if text.count(old) != 1:
        raise BuildError(f"{path}: the AMX tile-config line to patch is not there once")
    path.write_text(text.replace(old, new))


def wheel(directory: Path, jobs: int = 2) -> Path:
    """The pinned llama-cpp-python built into `directory` from its sdist with the AMX fix; CMAKE_ARGS
    from the environment pass through (-DGGML_RPC=on, -DGGML_CUDA=on, ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "build.log"
    log.write_text("")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        archive = _download_sdist(Path(work), log)
        with tarfile.open(archive) as sdist:
            sdist.extractall(work, filter="data")
        source = Path(work) / f"llama_cpp_python-{PINNED_LLAMA_CPP_PYTHON}"
        patch_amx_tile_config(source)
        print(f"building llama-cpp-python {PINNED_LLAMA_CPP_PYTHON} with the AMX fix (log {log}) ...",
              file=sys.stderr)
        env = {"CMAKE_BUILD_PARALLEL_LEVEL": str(jobs), **os.environ}
        _run_logged([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                     "-w", str(directory), str(source)], log, "pip wheel", env)
    built = sorted(directory.glob(f"llama_cpp_python-{PINNED_LLAMA_CPP_PYTHON}-*.whl"))
    if not built:
        raise BuildError(f"the build finished without a wheel in {directory} (log {log})")
    print(f"built in {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return built[-1]


def build(names: tuple[str, ...] = TOOLS, jobs: int = 2) -> dict[str, Path]:
    """The named programs, each built once into the cache; BuildError (one line) when that fails."""
    unknown = [name for name in names if name not in TOOLS]
    if unknown:
        raise BuildError(f"no llama.cpp tool called {', '.join(unknown)}; known: {', '.join(TOOLS)}")
    binaries = {name: binary(name) for name in names}
    missing = [name for name, path in binaries.items() if not path.is_file()]
    if not missing:
        return binaries
    home = tools_dir()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "build.log"
    log.write_text("")
    started = time.perf_counter()
    source = _fetch_source(home, log)
    print(f"building {', '.join(missing)} in {home} (log {log}) ...", file=sys.stderr)
    cmake = shutil.which("cmake")
    if cmake is None:
        raise BuildError("cmake is not installed (pip install cmake)")
    _run_logged([cmake, "-S", str(source), "-B", str(home / "build"), *CMAKE_CONFIGURE], log, "cmake configure")
    _run_logged([cmake, "--build", str(home / "build"), f"-j{jobs}", "--target", *missing], log, "cmake build")
    still_missing = [name for name in missing if not binaries[name].is_file()]
    if still_missing:
        raise BuildError(f"the build finished without {', '.join(still_missing)} (log {log})")
    print(f"built in {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return binaries


if __name__ == "__main__":
    # python -m ouroboros_lite.llamacpp_tools [TOOL ...]: build them, print their paths;
    # python -m ouroboros_lite.llamacpp_tools wheel DIR: build the patched llama-cpp-python wheel into DIR
    try:
        if sys.argv[1:2] == ["wheel"]:
            if len(sys.argv) != 3:
                sys.exit("usage: python -m ouroboros_lite.llamacpp_tools wheel DIRECTORY")
            print(wheel(Path(sys.argv[2]).expanduser()))
            sys.exit(0)
        for tool, path in build(tuple(sys.argv[1:]) or TOOLS).items():
            print(f"{tool}\t{path}")
    except BuildError as exc:
        sys.exit(f"ouroboros-lite: {exc}")
