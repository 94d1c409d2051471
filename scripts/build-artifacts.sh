#!/usr/bin/env bash
# Builds the node install package that `sofamesh.sh install -f` takes:
#   OUT/wheels/         the sofamesh wheel and the wheels of its core (node) dependencies,
#                       so a node installs offline (pip --no-index)
#   OUT/settings.json   {"console": URL} with --console, else {}
#   OUT/manifest.json   what the wheels were built for (Python X.Y, machine): checked on nodes
#   OUT/sofamesh.sh     the bootstrap script
#   OUT.tar.gz          the same, one top-level directory named like OUT
#
# usage: scripts/build-artifacts.sh OUT [--console URL]
#
# Environment:
#   SOFAMESH_BUILD_PYTHON  interpreter that builds the wheels; it must be the Python the
#                          nodes run (default: the repo's .venv, made from Debian's python3)
#   SOFAMESH_WHEEL_CACHE   dependency wheels kept between builds (default: .cache/wheels);
#                          a repeat build with a warm cache needs no network
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=build-artifacts.sh
# Fixed timestamps make the wheel and the tarball depend on their content only, so a rebuild
# of unchanged code gives the same bytes (and sofamesh.sh install can skip its pip step).
export SOURCE_DATE_EPOCH=315532800  # 1980-01-01, the earliest time a zip file can hold

die() { echo "$PROG: error: $*" >&2; exit "${2:-1}"; }
bad() { echo "$PROG: error: $*" >&2; exit 2; }
log() { echo "$PROG: $*" >&2; }

usage() {
  cat <<'EOF'
usage: scripts/build-artifacts.sh OUT [--console URL]

Builds OUT/ (wheels/, settings.json, manifest.json, sofamesh.sh) and OUT.tar.gz.
  --console URL   the console nodes follow (written to settings.json)
  -h, --help      this help
EOF
}

OUT="" CONSOLE=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --console) [ "$#" -ge 2 ] || bad "option --console: needs a value"; CONSOLE=$2; shift 2 ;;
    --console=*) CONSOLE=${1#--console=}; shift ;;
    -*) bad "unknown option $1 (see --help)" ;;
    *) [ -z "$OUT" ] || bad "unexpected argument $1: only one OUT directory"; OUT=$1; shift ;;
  esac
done
[ -n "$OUT" ] || bad "missing OUT directory (see --help)"
if [ -n "$CONSOLE" ] && ! [[ "$CONSOLE" =~ ^https?://[^/[:space:]]+(/[^[:space:]]*)?$ ]]; then
  bad "option --console: '$CONSOLE' is not an http(s) URL"
fi

PYTHON=${SOFAMESH_BUILD_PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=/usr/bin/python3; fi
fi
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set SOFAMESH_BUILD_PYTHON)"
CACHE=${SOFAMESH_WHEEL_CACHE:-$REPO/.cache/wheels}

OUT=$(realpath -m "$OUT")
PARENT=$(dirname "$OUT")
NAME=$(basename "$OUT")
mkdir -p "$PARENT" "$CACHE"
# Refuse to replace a directory that is not an earlier build: OUT may be mistyped as $HOME.
if [ -e "$OUT" ] && [ ! -f "$OUT/manifest.json" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  bad "$OUT exists and is not an artifacts directory; choose another OUT"
fi

# Build beside OUT, then rename: a failed or interrupted build never leaves half a package.
STAGE=$(mktemp -d "$PARENT/.$NAME.build.XXXXXX")
SRC=$(mktemp -d)
cleanup() { rm -rf "$STAGE" "$SRC"; }
trap cleanup EXIT

pip_quiet() { "$PYTHON" -m pip --disable-pip-version-check -q "$@"; }

# The wheel is built from a copy: the work tree may hold a concurrent build's build/ and
# egg-info, and its __pycache__ must not end up in the package.
log "building the sofamesh wheel"
mapfile -t PACKAGES < <("$PYTHON" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as handle:
    project = tomllib.load(handle)
for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
    print(pattern.rstrip("*"))
EOF
)
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md "${PACKAGES[@]}" \
  | tar -C "$SRC" -xf -
mkdir -p "$STAGE/wheels"
# No build isolation when the interpreter has the build tools (the dev extras bring them):
# isolation would set up a fresh build environment from the index on every build.
if "$PYTHON" -c 'import setuptools, wheel' 2>/dev/null; then
  pip_quiet wheel --no-deps --no-build-isolation -w "$STAGE/wheels" "$SRC"
else
  log "$PYTHON lacks setuptools or wheel: building in an isolated environment (needs the index)"
  pip_quiet wheel --no-deps -w "$STAGE/wheels" "$SRC"
fi
WHEEL=$(find "$STAGE/wheels" -name 'sofamesh-*.whl')

# Dependency wheels: from the cache when it has them all (no network), else fill the cache
# from the index once. The lock keeps two concurrent builds from writing the same files.
log "collecting dependency wheels (cache: $CACHE)"
exec 9>"$CACHE/.lock"
flock 9
if ! pip_quiet wheel --no-index --find-links "$CACHE" -w "$STAGE/wheels" "$WHEEL" 2>/dev/null; then
  log "the cache lacks some dependency wheels: fetching them from the package index"
  pip_quiet wheel --find-links "$CACHE" -w "$CACHE" "$WHEEL"
  # The cache holds dependencies only: a stale sofamesh wheel there could shadow a new one.
  rm -f "$CACHE"/sofamesh-*.whl
  pip_quiet wheel --no-index --find-links "$CACHE" -w "$STAGE/wheels" "$WHEEL"
fi
flock -u 9

"$PYTHON" - "$STAGE" "$CONSOLE" "$WHEEL" <<'EOF'
import json, pathlib, platform, sys
stage, console, wheel = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
settings = {"console": console} if console else {}
(stage / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
manifest = {
    "sofamesh": wheel.name.split("-")[1],
    "python": "%d.%d" % sys.version_info[:2],
    "machine": platform.machine(),
}
(stage / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
EOF
install -m 0755 "$REPO/scripts/sofamesh.sh" "$STAGE/sofamesh.sh"
chmod 0755 "$STAGE"  # mktemp made it 0700; nodes may unpack it as any user

rm -rf "$OUT"
mv "$STAGE" "$OUT"
tar -C "$PARENT" --sort=name --mtime=@"$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
  -cf - "$NAME" | gzip -n >"$OUT.tar.gz.tmp"
mv "$OUT.tar.gz.tmp" "$OUT.tar.gz"
log "built $(find "$OUT/wheels" -name '*.whl' | wc -l) wheels"
echo "$OUT"
echo "$OUT.tar.gz"
