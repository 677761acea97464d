"""llama.cpp's own programs (llama-completion, llama-speculative-simple, llama-lookup, ggml-rpc-server),
built once from the llama.cpp tree vendored in the pinned llama-cpp-python sdist, so they run the same
llama.cpp as our native module. They go into the cache, `<cache>/llama.cpp-tools/<version>/`; the
repository keeps no second copy of llama.cpp."""

from __future__ import annotations

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


def _run_logged(command: list[str], log: Path, what: str) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
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
        _run_logged([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                     "-d", work, f"llama-cpp-python=={PINNED_LLAMA_CPP_PYTHON}"], log, "pip download")
        archives = list(Path(work).glob("llama_cpp_python-*.tar.gz"))
        if not archives:
            raise BuildError(f"pip download gave no sdist in {work} (log {log})")
        prefix = f"llama_cpp_python-{PINNED_LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
            if not members:
                raise BuildError(f"{archives[0].name} holds no vendor/llama.cpp")
            for member in members:
                member.name = member.name[len(prefix):]
            archive.extractall(Path(work) / "llama.cpp", members=[m for m in members if m.name], filter="data")
        shutil.rmtree(source, ignore_errors=True)
        shutil.move(Path(work) / "llama.cpp", source)
    return source


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


if __name__ == "__main__":  # python -m ouroboros_lite.llamacpp_tools [TOOL ...]: build them, print their paths
    try:
        for tool, path in build(tuple(sys.argv[1:]) or TOOLS).items():
            print(f"{tool}\t{path}")
    except BuildError as exc:
        sys.exit(f"ouroboros-lite: {exc}")
