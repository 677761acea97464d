#!/usr/bin/env bash
# CI: build the C tree verifier once under AddressSanitizer + UndefinedBehaviorSanitizer and run
# the native tests against it. Run after .ci/run (it uses that script's .venv and test models).
# Python and llama.cpp are not instrumented; the sanitizer runtimes are preloaded so that they
# come first, and leak detection is off (the interpreter keeps its allocations by design).
set -euo pipefail
cd "$(dirname "$0")/.."

source .venv/bin/activate
mkdir -p build/asan
cc -g -O1 -std=c99 -Wall -Wextra -Werror -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    -fno-omit-frame-pointer -shared -fPIC -Inative native/ouro.c -o build/asan/libouro.so

export OUROBOROS_LITE_NATIVE="$PWD/build/asan/libouro.so"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=99"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98"

# The library under test must be the instrumented one, or the run proves nothing.
python - <<'EOF'
from ouroboros_lite import native
assert native.lib.ouro_abi_version() == native.ABI_VERSION
with open("/proc/self/maps") as maps:
    mapped = maps.read()
assert "build/asan/libouro.so" in mapped and "libasan" in mapped, "the ASAN build is not the one loaded"
print("asan: loaded", native._find_library())
EOF

# Every native entry point and error path; the two slowest tree tests (many full forwards, no
# path the fuzz test does not take) are left to the main run to keep this one short.
python -m pytest -q -p no:cacheprovider tests/test_native_abi.py tests/test_tree_verifier.py tests/test_verifier_fuzz.py \
    -k "not random_trees_match_chains and not branch_path_committed" "$@"
