#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (apt + a venv) and runs the demo or the tests.
#   scripts/dev.sh demo    the whole flow in network-namespace VMs
#   scripts/dev.sh test    lint, type-check and the test suite (what CI runs)
#   scripts/dev.sh setup   only install what is missing
#   scripts/dev.sh bench bench/proxy.py --write-results   a benchmark, with its packages
# Needs root: the tests and the demo build network namespaces (never touching the host's own).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 util-linux procps       # ip netns, nsenter, ps
  iptables ipset nftables python3-nftables
  python3-venv python3-pip
  curl nginx-light wrk redis-server  # real peers for the sidecar tests
  postgresql                       # the console's PostgreSQL tests (a throw-away cluster)
  chromium                         # the console's browser tests (headless, driven by Playwright)
)
BENCH_PACKAGES=(haproxy)           # the peer proxy bench/proxy.py compares against

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/dev.sh: needs root (it builds network namespaces); run it with sudo" >&2
    exit 3
  fi
}

ensure_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "apt: installing ${missing[*]}"
    apt-get update -qq
    # Packages like nginx and redis must not start services on the host itself: every
    # server the tests need runs inside a namespace VM they create.
    local policy=/usr/sbin/policy-rc.d created=""
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$created" ]; then rm -f "$policy"; fi
  fi
}

ensure_venv() {
  # Debian's own interpreter sees python3-nftables (and later python3-bpfcc); a venv made
  # from it with --system-site-packages sees them too (DESIGN.md section 4).
  if [ ! -x .venv/bin/python ]; then
    log "venv: creating .venv from /usr/bin/python3"
    /usr/bin/python3 -m venv --system-site-packages .venv
  fi
  local stamp=.venv/.sofamesh-installed
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "pip: installing sofamesh and its dev tools into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
  fi
}

ensure_bpf() {
  # The eBPF backend: bcc compiles its programs at run time against the kernel headers
  # (DESIGN.md section 4); bpftool is what the tests compare bpf objects with.
  ensure_apt linux-headers-amd64 python3-bpfcc bpftool
  local release build
  release="$(uname -r)"
  build="/lib/modules/$release/build"
  if [ ! -e "$build" ]; then
    # This kernel ships no headers package: point build/source at Debian's amd64 headers.
    local headers common
    headers="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)"
    common="$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$headers" ] && [ -n "$common" ]; then
      mkdir -p "/lib/modules/$release"
      ln -sfn "$headers" "$build"
      ln -sfn "$common" "/lib/modules/$release/source"
      log "bpf: no headers for kernel $release: linked $build -> $headers and source -> $common"
    else
      log "bpf: no kernel headers found: the eBPF tests will be skipped (with the reason)"
    fi
  fi
}

setup() { ensure_root; ensure_apt "${APT_PACKAGES[@]}"; ensure_bpf; ensure_venv; }

run_tests() {
  setup
  log "ruff"
  .venv/bin/ruff check .
  .venv/bin/ruff format --check .
  log "mypy"
  .venv/bin/mypy
  .venv/bin/mypy bench/*.py  # scripts, not a package: checked on their own
  log "pytest"
  set +e
  # Two workers: most of the suite waits on namespace VMs, subprocesses and the network,
  # not on the CPU. loadfile keeps each file (its module fixtures: a lab, a console, a
  # PostgreSQL cluster) on one worker. `scripts/dev.sh test -n0` runs serially.
  .venv/bin/pytest -n 2 --dist loadfile "$@"
  local rc=$?
  set -e
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests" >&2
    rc=1
  fi
  return "$rc"
}

case "${1:-}" in
  setup) setup ;;
  test) shift; run_tests "$@" ;;
  demo) shift; setup; exec .venv/bin/sofamesh demo "$@" ;;
  bench) shift; setup; ensure_apt "${BENCH_PACKAGES[@]}"; exec .venv/bin/python "$@" ;;
  *) echo "usage: scripts/dev.sh demo|test|setup|bench SCRIPT [ARGS]" >&2; exit 2 ;;
esac
