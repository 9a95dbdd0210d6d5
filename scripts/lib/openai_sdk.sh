# The official `openai` Python package, for the test that points it at
# Sluice's OpenAI-compatible front door (tests/clients/openai_sdk.py, run by
# tests/api/clients/openai_sdk.rs): a client Sluice did not write reads its chunks
# and its error bodies. The same venv holds a pinned `httpx` (a dependency of
# openai, pinned here on its own) for the push worker example,
# examples/push_worker.py, which tests/api/push/workers.rs runs, and a pinned
# `standardwebhooks` (no dependencies of its own) for the webhook receiver
# example, examples/webhook_receiver.py, which tests/api/webhooks/receivers.rs
# runs.
#
# The virtualenv is cached per machine, outside the checkout, in a folder
# keyed by the pinned versions and by the Python that made it, so a venv of
# other versions or of another Python is never picked up. It is built in a
# temporary folder beside it and moved into place only once whole: an
# interrupted install leaves nothing that a later run could reuse.
#
# Sourced by scripts/test. openai_sdk_setup exports SLUICE_E2E_OPENAI_PYTHON
# (the venv's python), or SLUICE_E2E_OPENAI_SDK_ERROR saying why there is
# none; it never exits the script, and the test then fails under CI=true and
# skips loudly elsewhere.

OPENAI_SDK_VERSION=3.57.0
HTTPX_VERSION=0.28.1
STANDARDWEBHOOKS_VERSION=1.1.0
OPENAI_SDK_CACHE="${SLUICE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sluice}"

# Whether the venv at $1 runs and imports all three pinned versions.
openai_sdk_usable() {
  [ -x "$1/bin/python" ] &&
    "$1/bin/python" -c "import httpx, openai, standardwebhooks, sys; sys.exit(openai.__version__ != '$OPENAI_SDK_VERSION' or httpx.__version__ != '$HTTPX_VERSION' or standardwebhooks.__version__ != '$STANDARDWEBHOOKS_VERSION')" 2>/dev/null
}

# Creates (or reuses) the venv; exports SLUICE_E2E_OPENAI_PYTHON or
# SLUICE_E2E_OPENAI_SDK_ERROR. Returns 1 on failure, never exits.
openai_sdk_setup() {
  unset SLUICE_E2E_OPENAI_PYTHON SLUICE_E2E_OPENAI_SDK_ERROR
  local py venv tmp
  if ! py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
    export SLUICE_E2E_OPENAI_SDK_ERROR="python3 is missing or does not run"
    echo "openai-sdk: $SLUICE_E2E_OPENAI_SDK_ERROR" >&2
    return 1
  fi
  venv="$OPENAI_SDK_CACHE/openai-sdk-$OPENAI_SDK_VERSION-httpx-$HTTPX_VERSION-standardwebhooks-$STANDARDWEBHOOKS_VERSION-py$py"
  if openai_sdk_usable "$venv"; then
    echo "openai-sdk: reusing $venv" >&2
    export SLUICE_E2E_OPENAI_PYTHON="$venv/bin/python"
    return 0
  fi
  echo "openai-sdk: installing openai==$OPENAI_SDK_VERSION httpx==$HTTPX_VERSION standardwebhooks==$STANDARDWEBHOOKS_VERSION into $venv" >&2
  mkdir -p "$OPENAI_SDK_CACHE" || {
    export SLUICE_E2E_OPENAI_SDK_ERROR="cannot create the cache folder $OPENAI_SDK_CACHE"
    echo "openai-sdk: $SLUICE_E2E_OPENAI_SDK_ERROR" >&2
    return 1
  }
  # Left behind by an install that was interrupted an hour or more ago.
  find "$OPENAI_SDK_CACHE" -maxdepth 1 -name '.openai-sdk-tmp.*' -mmin +60 \
    -exec rm -rf {} + 2>/dev/null || true
  # Beside the final folder, so that the move is a rename on one file system.
  tmp=$(mktemp -d "$OPENAI_SDK_CACHE/.openai-sdk-tmp.XXXXXX") || {
    export SLUICE_E2E_OPENAI_SDK_ERROR="cannot create a temporary folder in $OPENAI_SDK_CACHE"
    echo "openai-sdk: $SLUICE_E2E_OPENAI_SDK_ERROR" >&2
    return 1
  }
  if ! python3 -m venv "$tmp/venv" >&2; then
    SLUICE_E2E_OPENAI_SDK_ERROR="python3 -m venv failed (is python3-venv installed?)"
  elif ! "$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "openai==$OPENAI_SDK_VERSION" "httpx==$HTTPX_VERSION" \
    "standardwebhooks==$STANDARDWEBHOOKS_VERSION" >&2; then
    SLUICE_E2E_OPENAI_SDK_ERROR="pip install openai==$OPENAI_SDK_VERSION httpx==$HTTPX_VERSION standardwebhooks==$STANDARDWEBHOOKS_VERSION failed (see the output above)"
  elif ! "$tmp/venv/bin/python" -c 'import httpx, openai, standardwebhooks' >&2; then
    SLUICE_E2E_OPENAI_SDK_ERROR="openai==$OPENAI_SDK_VERSION, httpx==$HTTPX_VERSION or standardwebhooks==$STANDARDWEBHOOKS_VERSION installed but does not import"
  fi
  if [ -n "${SLUICE_E2E_OPENAI_SDK_ERROR:-}" ]; then
    rm -rf "$tmp"
    export SLUICE_E2E_OPENAI_SDK_ERROR
    echo "openai-sdk: $SLUICE_E2E_OPENAI_SDK_ERROR" >&2
    return 1
  fi
  # Only bin/python is ever run (pip as `python -m pip`): it finds its venv
  # from where it stands, so the move does not break it, whereas the
  # activate and pip scripts keep naming the temporary folder.
  rm -rf "$venv"
  if ! mv "$tmp/venv" "$venv"; then
    rm -rf "$tmp"
    export SLUICE_E2E_OPENAI_SDK_ERROR="cannot move the new venv into $venv"
    echo "openai-sdk: $SLUICE_E2E_OPENAI_SDK_ERROR" >&2
    return 1
  fi
  rm -rf "$tmp"
  if ! openai_sdk_usable "$venv"; then
    rm -rf "$venv"
    export SLUICE_E2E_OPENAI_SDK_ERROR="the venv at $venv does not import openai $OPENAI_SDK_VERSION, httpx $HTTPX_VERSION and standardwebhooks $STANDARDWEBHOOKS_VERSION after the move"
    echo "openai-sdk: $SLUICE_E2E_OPENAI_SDK_ERROR" >&2
    return 1
  fi
  export SLUICE_E2E_OPENAI_PYTHON="$venv/bin/python"
  echo "openai-sdk: ready ($SLUICE_E2E_OPENAI_PYTHON)" >&2
}
