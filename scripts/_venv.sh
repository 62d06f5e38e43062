# Sourced by the scripts beside it: make .venv with the project and what the script needs.
#
#   pyforward_venv        the project and its run-time dependencies (scripts/pyforward)
#   pyforward_venv test   the same plus an extra of pyproject.toml (scripts/test: the test tools)
#
# One venv for both; a stamp per extra (.venv/.installed-run, .venv/.installed-test), each
# redone when pyproject.toml is newer, so running pyforward never waits for the test tools
# and the test command adds them to the venv the run command made.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PYFORWARD_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

pyforward_venv() {
    local extra="${1:-}"
    local spec="$ROOT" stamp="$VENV/.installed-run"
    if [[ -n "$extra" ]]; then
        spec="$ROOT[$extra]"
        stamp="$VENV/.installed-$extra"
    fi
    if [[ -x "$VENV/bin/python" && -f "$stamp" && ! "$ROOT/pyproject.toml" -nt "$stamp" ]]; then
        return
    fi
    echo "setting up $VENV${extra:+ with the $extra extra} ..." >&2
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    # --no-compile: bytecode is written on first import instead, so the ~1,700 modules of the
    # kubernetes client, which static forwarding never imports, are not compiled up front.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
        -e "$spec" >&2
    touch "$stamp"
    # Every extra includes the run-time dependencies.
    [[ -z "$extra" ]] || touch "$VENV/.installed-run"
}
