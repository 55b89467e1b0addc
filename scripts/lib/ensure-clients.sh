# Shared by the scripts/ensure-*-clients.sh installers (sourced, not run):
# messages, quiet commands, the system packages a Python venv needs, and a
# venv with one pinned package. The caller sets NAME (the message prefix)
# before sourcing, and keeps `set -euo pipefail`.

say() { printf '%s: %s\n' "$NAME" "$*"; }
die() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }

ensure_log="${TMPDIR:-/tmp}/ensure-$NAME.$$.log"
trap 'rm -f "$ensure_log"' EXIT

# Runs a command with its output in a log; on failure shows the tail and dies.
quiet() {
    local what="$1"; shift
    if ! "$@" >"$ensure_log" 2>&1 </dev/null; then
        tail -n 30 "$ensure_log" >&2
        die "$what failed (output above)"
    fi
}

# Adds to the array `need` the Debian packages missing for a python3 that
# can make a venv with pip.
need_python_venv() {
    if ! command -v python3 >/dev/null 2>&1; then
        need+=(python3 python3-venv)
        return
    fi
    local probe
    probe="$(mktemp -d)"
    if ! python3 -m venv "$probe/v" >/dev/null 2>&1 || [ ! -x "$probe/v/bin/pip" ]; then
        need+=(python3-venv)
    fi
    rm -rf "$probe"
}

# Installs the packages of `need` with apt-get as root; as another user,
# prints the command to run and exits 1. Never skips.
install_needed() {
    [ ${#need[@]} -gt 0 ] || return 0
    if [ "$(id -u)" != 0 ]; then
        echo "$NAME: missing ${need[*]}; run: sudo apt-get install -y ${need[*]} (then re-run $0)" >&2
        exit 1
    fi
    say "installing ${need[*]} with apt-get (once)..."
    quiet "apt-get install ${need[*]}" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${need[*]}"
    hash -r
    command -v python3 >/dev/null 2>&1 || die "python3 still not found after apt-get install"
}

# True when the venv has the Python package at exactly this version.
venv_has() { # <venv> <package> <version>
    "$1/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$2') != '$3')" 2>/dev/null
}

# (Re)creates the venv with the package pinned, from PyPI.
venv_install() { # <venv> <package> <version>
    rm -rf "$1"
    mkdir -p "$(dirname "$1")"
    quiet "python3 -m venv $1" python3 -m venv "$1"
    quiet "pip install $2==$3" "$1/bin/pip" install --disable-pip-version-check -q "$2==$3"
    venv_has "$@" || die "$2 $3 not importable from $1 after pip install"
}
