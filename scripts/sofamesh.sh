#!/usr/bin/env bash
# sofamesh node bootstrap: installs the sofamesh agent on a VM and hands over to it.
#
#   sofamesh.sh install -t TENANT -w WORKSPACE -i INSTANCEID -n APPNAME -a ACCESSKEY \
#                       -s SECRETKEY -f ARTIFACTS [--console URL] [--backend B] [-v]
#                       [--ip IP] [--proxy-user USER] [--cgroup PATH]
#   sofamesh.sh uninstall [-v]
#   sofamesh.sh reinstall [-f ARTIFACTS] [-v]
#   sofamesh.sh status [--json] [-v]
#
# install checks root and the OS, installs the OS packages the backend needs (only the
# missing ones), creates a venv under $SOFAMESH_ROOT/opt/sofamesh/venv from /usr/bin/python3
# (--system-site-packages: it must see Debian's python3-nftables and python3-bpfcc), installs
# sofamesh offline from the artifacts' wheels, then runs `sofamesh install` with the same
# options. The secret reaches it only through the environment (SOFAMESH_SECRETKEY), never as
# an argument, and is never printed (R-CLI-6).
#
# Environment: SOFAMESH_ROOT (install root, default /), SOFAMESH_SECRETKEY (the secret,
# instead of -s), SOFAMESH_OS_RELEASE (os-release file to read, default /etc/os-release).
# Exit codes are agent/exit_codes.py's; the Python CLI's own code is passed through.
set -euo pipefail
umask 022  # the sidecar runs from the venv as the unprivileged proxy user: it must read it

PROG=sofamesh.sh
# agent/exit_codes.py (tests/unit/test_install_script.py checks that these agree)
EXIT_ERROR=1
EXIT_BAD_INPUT=2
EXIT_NOT_ROOT=3
EXIT_BACKEND_UNSUPPORTED=5
EXIT_BUSY=11
EXIT_NOT_INSTALLED=12

usage() {
  cat <<'EOF'
usage: sofamesh.sh install|uninstall|reinstall|status [options]

Commands:
  install      install the agent, the sidecar and the interception rules on this node
  uninstall    remove everything install created
  reinstall    install again with the saved parameters (after a change in the console)
  status       show the node's state (--json for a machine-readable form)

Options:
  -t, --tenant TENANT          tenant (console: environment info)                [install]
  -w, --workspace WORKSPACE    workspace                                         [install]
  -i, --instanceid ID          instance ID                                       [install]
  -n, --appname NAME           app name as registered in the console (letters,
                               digits, '-')                                       [install]
  -a, --accesskey KEY          access key id                                     [install]
  -s, --secretkey SECRET       access key secret (or env SOFAMESH_SECRETKEY)     [install]
  -f, --artifacts PATH|URL     install package: directory, .tar.gz or http(s) URL of
                               the .tar.gz                            [install, reinstall]
      --console URL            console URL (default: the artifacts' settings.json) [install]
      --backend B              auto|iptables|nftables|ebpf (default auto)         [install]
      --ip IP                  this node's IP as listed in the console (default:
                               the address it reaches the console from)          [install]
      --proxy-user USER        the sidecar's user (default sofamesh-proxy)        [install]
      --cgroup PATH            ebpf: the cgroup v2 whose processes are intercepted [install]
      --json                   machine-readable status                            [status]
  -v, --verbose                show each step and each command run (secret masked)
  -h, --help                   this help

Environment: SOFAMESH_ROOT install root (default /), SOFAMESH_SECRETKEY the secret,
SOFAMESH_OS_RELEASE os-release file (default /etc/os-release).
Exit codes: 0 ok, 1 error, 2 bad input, 3 not root, 4 console unreachable or auth failed,
5 backend or platform unsupported, 6 failed and rolled back, 10 not registered in the
console, 11 another install is running, 12 not installed; others from `sofamesh install`.
EOF
}

log() { echo "$PROG: $*" >&2; }
fail() { echo "$PROG: error: $1" >&2; exit "$2"; }
bad() { fail "$1" "$EXIT_BAD_INPUT"; }

# The secret lives in an unexported variable: apt, curl and pip must not inherit it.
SECRET=${SOFAMESH_SECRETKEY-}
unset SOFAMESH_SECRETKEY

mask() {
  local text=$1
  if [ -n "$SECRET" ]; then text=${text//"$SECRET"/******}; fi
  printf '%s' "$text"
}

VERBOSE=0
show() {  # with -v: the command about to run, quoted, secret masked
  [ "$VERBOSE" = 1 ] || return 0
  local word line="+"
  for word in "$@"; do line+=" $(printf '%q' "$(mask "$word")")"; done
  echo "$line" >&2
}
# Runs a command (shown with -v). fd 8 holds the install lock: a daemon started by a child
# must not inherit it, or the lock would outlive this script.
run() { show "$@"; "$@" 8<&-; }
# The same, with the secret in the command's environment only.
run_with_secret() { show "SOFAMESH_SECRETKEY=$SECRET" "$@"; SOFAMESH_SECRETKEY=$SECRET "$@" 8<&-; }

# ---------------------------------------------------------------------------------------
# 1. Parse and validate everything before touching anything (R-SF-2).

[ "$#" -gt 0 ] || bad "missing command: install, uninstall, reinstall or status (see --help)"
COMMAND=$1
shift
case "$COMMAND" in
  install | uninstall | reinstall | status) ;;
  -h | --help | help) usage; exit 0 ;;
  *) bad "unknown command '$COMMAND': use install, uninstall, reinstall or status" ;;
esac

TENANT="" WORKSPACE="" INSTANCE="" APPNAME="" ACCESSKEY="" ARTIFACTS="" CONSOLE=""
NODE_IP="" PROXY_USER="" CGROUP=""
BACKEND=auto JSON=0 SECRET_FLAG=0
GIVEN=()     # the long names of the options given, to check them against the command
REEXEC=()    # the arguments without the secret, for the re-exec below
while [ "$#" -gt 0 ]; do
  arg=$1
  shift
  name="" value="" inline=0
  case "$arg" in
    --*=*) name=${arg%%=*} value=${arg#*=} inline=1 ;;
    *) name=$arg ;;
  esac
  case "$name" in
    -t | --tenant) long=--tenant ;;
    -w | --workspace) long=--workspace ;;
    -i | --instanceid) long=--instanceid ;;
    -n | --appname) long=--appname ;;
    -a | --accesskey) long=--accesskey ;;
    -s | --secretkey) long=--secretkey ;;
    -f | --artifacts) long=--artifacts ;;
    --console) long=--console ;;
    --backend) long=--backend ;;
    --ip) long=--ip ;;
    --proxy-user) long=--proxy-user ;;
    --cgroup) long=--cgroup ;;
    -v | --verbose | --json | -h | --help)
      [ "$inline" = 0 ] || bad "option $name takes no value"
      case "$name" in
        -v | --verbose) VERBOSE=1; GIVEN+=(--verbose) ;;
        --json) JSON=1; GIVEN+=(--json) ;;
        *) usage; exit 0 ;;
      esac
      REEXEC+=("$arg")
      continue
      ;;
    *) bad "unknown option '$(mask "$name")' (see --help)" ;;
  esac
  if [ "$inline" = 0 ]; then
    [ "$#" -gt 0 ] || bad "option $long needs a value"
    value=$1
    shift
    # `-t -w x` would otherwise make "-w" the tenant.
    case "$value" in
      -t | -w | -i | -n | -a | -s | -f | -v | -h | --*)
        if [ "$long" = --secretkey ]; then bad "option $long needs a value"; fi
        bad "option $long needs a value (got '$value')"
        ;;
    esac
  fi
  [ -n "$value" ] || bad "option $long: empty value"
  GIVEN+=("$long")
  case "$long" in
    --tenant) TENANT=$value ;;
    --workspace) WORKSPACE=$value ;;
    --instanceid) INSTANCE=$value ;;
    --appname) APPNAME=$value ;;
    --accesskey) ACCESSKEY=$value ;;
    --secretkey) SECRET=$value SECRET_FLAG=1; continue ;;
    --artifacts) ARTIFACTS=$value ;;
    --console) CONSOLE=$value ;;
    --backend) BACKEND=$value ;;
    --ip) NODE_IP=$value ;;
    --proxy-user) PROXY_USER=$value ;;
    --cgroup) CGROUP=$value ;;
  esac
  REEXEC+=("$long" "$value")
done

case "$COMMAND" in
  install) ALLOWED=" --tenant --workspace --instanceid --appname --accesskey --secretkey --artifacts --console --backend --ip --proxy-user --cgroup --verbose " ;;
  reinstall) ALLOWED=" --artifacts --verbose " ;;
  uninstall) ALLOWED=" --verbose " ;;
  status) ALLOWED=" --json --verbose " ;;
esac
for long in "${GIVEN[@]+"${GIVEN[@]}"}"; do
  [[ "$ALLOWED" == *" $long "* ]] || bad "option $long is not an option of '$COMMAND' (see --help)"
done

# The same rules as `sofamesh install` (agent/settings.py), checked here so that a bad value
# stops the script before it installs OS packages or a venv.
SCOPE_RE='^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'
check() {  # option, value, regex, rule
  [ -n "$2" ] || bad "option $1 is required"
  [[ "$2" =~ $3 ]] || bad "option $1: '$2' is not valid ($4)"
}
is_url() { [[ "$1" =~ ^https?://[^/[:space:]]+(/[^[:space:]]*)?$ ]]; }

if [ "$COMMAND" = install ]; then
  check --tenant "$TENANT" "$SCOPE_RE" "letters, digits, '_', '.', '-'"
  check --workspace "$WORKSPACE" "$SCOPE_RE" "letters, digits, '_', '.', '-'"
  check --instanceid "$INSTANCE" "$SCOPE_RE" "letters, digits, '_', '.', '-'"
  check --appname "$APPNAME" '^[A-Za-z0-9-]{1,63}$' "letters, digits and '-', at most 63"
  check --accesskey "$ACCESSKEY" '^[A-Za-z0-9_-]{4,64}$' "the access key id from the console"
  # Never echo the secret's value, not even in an error.
  [ -n "$SECRET" ] || bad "option --secretkey is required (or set SOFAMESH_SECRETKEY)"
  [ "${#SECRET}" -le 256 ] || bad "option --secretkey: longer than 256 characters"
  [[ "$SECRET" != *[[:cntrl:]]* ]] || bad "option --secretkey: contains a control character"
  [ -n "$ARTIFACTS" ] || bad "option --artifacts is required (directory, .tar.gz or URL)"
  [ -z "$CONSOLE" ] || is_url "$CONSOLE" || bad "option --console: '$CONSOLE' is not an http(s) URL"
  case "$BACKEND" in
    auto | iptables | nftables | ebpf) ;;
    *) bad "option --backend: '$BACKEND': choose from auto, iptables, nftables, ebpf" ;;
  esac
  # Shape checks only; sofamesh install checks the rest before it changes anything.
  [ -z "$NODE_IP" ] || [[ "$NODE_IP" =~ ^[0-9A-Fa-f.:]+$ ]] || bad "option --ip: '$NODE_IP' is not an IP address"
  [ -z "$PROXY_USER" ] || [[ "$PROXY_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || bad "option --proxy-user: '$PROXY_USER' is not a Linux user name"
  [ -z "$CGROUP" ] || [[ "$CGROUP" == /* ]] || bad "option --cgroup: '$CGROUP' must be an absolute path"
fi
if [ -n "$ARTIFACTS" ] && ! is_url "$ARTIFACTS"; then
  case "$ARTIFACTS" in
    http:* | https:*) bad "option --artifacts: '$ARTIFACTS' is not a valid URL" ;;
  esac
  if [ -d "$ARTIFACTS" ]; then
    [ -d "$ARTIFACTS/wheels" ] || bad "option --artifacts: $ARTIFACTS has no wheels/ directory"
  elif [ -f "$ARTIFACTS" ]; then
    case "$ARTIFACTS" in
      *.tar.gz | *.tgz) ;;
      *) bad "option --artifacts: $ARTIFACTS is not a .tar.gz" ;;
    esac
  else
    bad "option --artifacts: $ARTIFACTS does not exist"
  fi
  ARTIFACTS=$(realpath "$ARTIFACTS")
fi

ROOT=${SOFAMESH_ROOT:-/}
[[ "$ROOT" == /* ]] || bad "SOFAMESH_ROOT: '$ROOT' is not an absolute path"
[ -d "$ROOT" ] || bad "SOFAMESH_ROOT: $ROOT is not a directory"
BASE=${ROOT%/}/opt/sofamesh  # "/" gives /opt/sofamesh, not //opt/sofamesh
VENV=$BASE/venv
STAMP=$BASE/artifacts.sha256
PARENT_MARK=$BASE/.created-parent  # install created $ROOT/opt: uninstall removes it again

# The secret came as a flag: this shell's own arguments (visible in ps and /proc to every
# user) hold it. Start again with it in the environment instead, which only root can read.
if [ "$SECRET_FLAG" = 1 ] && [ -f "$0" ] && [ -z "${SOFAMESH_SH_REEXEC-}" ]; then
  SOFAMESH_SECRETKEY=$SECRET SOFAMESH_SH_REEXEC=1 exec "$BASH" "$0" "$COMMAND" "${REEXEC[@]}"
fi
unset SOFAMESH_SH_REEXEC

# A node's install must come from the artifacts alone: no pip configuration or index of
# this host may add or replace packages.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^PIP_' || true)
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# ---------------------------------------------------------------------------------------
# 2. Host checks (they change nothing).

require_root() {
  [ "$(id -u)" = 0 ] || fail "$COMMAND needs root (it changes the firewall, users and services); run it with sudo" "$EXIT_NOT_ROOT"
}

PKG_TOOL=""
detect_os() {
  local file=${SOFAMESH_OS_RELEASE:-/etc/os-release} id="" like=""
  [ -r "$file" ] || fail "cannot read $file: unknown OS (supported: Debian, Ubuntu, RHEL family)" "$EXIT_BACKEND_UNSUPPORTED"
  # Read the two fields with sed rather than sourcing the file: it is data, not a script.
  id=$(sed -n 's/^ID=//p' "$file" | tr -d '"'"'" | tr '[:upper:]' '[:lower:]')
  like=$(sed -n 's/^ID_LIKE=//p' "$file" | tr -d '"'"'" | tr '[:upper:]' '[:lower:]')
  case " $id $like " in
    *" debian "* | *" ubuntu "*) PKG_TOOL=apt ;;
    *" rhel "* | *" fedora "* | *" centos "* | *" rocky "* | *" almalinux "*)
      if command -v dnf >/dev/null; then PKG_TOOL=dnf; else PKG_TOOL=yum; fi ;;
    *) fail "unsupported OS '${id:-unknown}' (from $file): sofamesh supports Debian, Ubuntu and the RHEL family" "$EXIT_BACKEND_UNSUPPORTED" ;;
  esac
  [ "$VERBOSE" = 0 ] || log "OS: ${id} (packages: $PKG_TOOL)"
}

PYTHON=/usr/bin/python3  # the system's interpreter: it sees the distribution's nftables/bcc

# ---------------------------------------------------------------------------------------
# 3. Artifacts: a directory, a .tar.gz or an http(s) URL of one.

WORK=""
ROLLBACK_BASE=0  # set while a first install has created $BASE and not yet succeeded
on_exit() {
  local rc=$?
  if [ "$rc" != 0 ] && [ "$ROLLBACK_BASE" = 1 ]; then
    log "install failed (exit $rc): removing $BASE, which this run created"
    remove_base || true
  fi
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
  exit "$rc"
}
trap on_exit EXIT

ART_DIR=""
resolve_artifacts() {
  if [ -d "$ARTIFACTS" ]; then
    ART_DIR=$ARTIFACTS
  else
    WORK=$(mktemp -d)
    local tarball=$ARTIFACTS
    if is_url "$ARTIFACTS"; then
      log "downloading $ARTIFACTS"
      tarball=$WORK/artifacts.tar.gz
      run curl -fsSL --retry 3 --connect-timeout 10 -o "$tarball" "$ARTIFACTS" \
        || fail "option --artifacts: could not download $ARTIFACTS" "$EXIT_ERROR"
    fi
    mkdir "$WORK/x"
    run tar -xzf "$tarball" -C "$WORK/x" || bad "option --artifacts: $ARTIFACTS is not a readable .tar.gz"
    local found
    found=$(find "$WORK/x" -maxdepth 2 -type d -name wheels)
    if [ -z "$found" ] || [ "$(wc -l <<<"$found")" != 1 ]; then
      bad "option --artifacts: $ARTIFACTS holds no (or more than one) wheels/ directory"
    fi
    ART_DIR=$(dirname "$found")
  fi
  compgen -G "$ART_DIR/wheels/sofamesh-*.whl" >/dev/null \
    || bad "option --artifacts: $ARTIFACTS has no wheels/sofamesh-*.whl"
}

json_field() {  # file, key: the string value of a top-level key written by build-artifacts.sh
  [ -f "$1" ] || return 0
  sed -n 's/.*"'"$2"'"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$1" | head -n 1
}

# ---------------------------------------------------------------------------------------
# 4. OS packages: only the missing ones, for the chosen backend.

pkg_present() {
  case "$PKG_TOOL" in
    apt) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" ;;
    *) rpm -q --whatprovides "$1" >/dev/null 2>&1 ;;
  esac
}

ensure_packages() {
  local wanted=() missing=() pkg headers=""
  if [ "$PKG_TOOL" = apt ]; then
    wanted=(python3 python3-venv python3-pip iproute2)
    case "$BACKEND" in
      iptables) wanted+=(iptables ipset) ;;
      nftables) wanted+=(nftables python3-nftables) ;;
      auto) wanted+=(iptables ipset nftables python3-nftables) ;;  # auto may pick either
      ebpf) wanted+=(python3-bpfcc bpftool); headers=linux-headers-$(uname -r) ;;
    esac
  else
    wanted=(python3 python3-pip iproute)
    case "$BACKEND" in
      iptables) wanted+=(iptables ipset) ;;
      nftables) wanted+=(nftables python3-nftables) ;;
      auto) wanted+=(iptables ipset nftables python3-nftables) ;;
      ebpf) wanted+=(python3-bcc bpftool); headers=kernel-devel-$(uname -r) ;;
    esac
  fi
  # bcc compiles its programs against the running kernel's headers.
  if [ -n "$headers" ] && [ ! -e "/lib/modules/$(uname -r)/build" ]; then wanted+=("$headers"); fi
  for pkg in "${wanted[@]}"; do
    if [ "$VERBOSE" = 1 ]; then
      echo "+ $([ "$PKG_TOOL" = apt ] && echo dpkg-query -W "$pkg" || echo rpm -q --whatprovides "$pkg")" >&2
    fi
    pkg_present "$pkg" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" = 0 ]; then
    log "OS packages: all present (${wanted[*]})"
    return
  fi
  log "OS packages: installing ${missing[*]}"
  if [ "$PKG_TOOL" = apt ]; then
    run apt-get update -qq || fail "apt-get update failed" "$EXIT_ERROR"
    if [ -n "$headers" ] && [[ " ${missing[*]} " == *" $headers "* ]] \
      && ! apt-cache show "$headers" >/dev/null 2>&1; then
      fail "the ebpf backend needs kernel headers, and $headers is not available; choose --backend auto" "$EXIT_BACKEND_UNSUPPORTED"
    fi
    DEBIAN_FRONTEND=noninteractive run apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      || fail "apt-get install ${missing[*]} failed" "$EXIT_ERROR"
  else
    run "$PKG_TOOL" install -y -q "${missing[@]}" \
      || fail "$PKG_TOOL install ${missing[*]} failed (for --backend ebpf: kernel headers must match $(uname -r))" "$EXIT_ERROR"
  fi
}

check_python() {
  [ -x "$PYTHON" ] || fail "$PYTHON is missing" "$EXIT_BACKEND_UNSUPPORTED"
  local have want machine built_for
  have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "sofamesh needs Python 3.11 or newer; $PYTHON is $have" "$EXIT_BACKEND_UNSUPPORTED"
  want=$(json_field "$ART_DIR/manifest.json" python)
  machine=$(json_field "$ART_DIR/manifest.json" machine)
  built_for="Python ${want:-?} on ${machine:-?}"
  if { [ -n "$want" ] && [ "$want" != "$have" ]; } || { [ -n "$machine" ] && [ "$machine" != "$(uname -m)" ]; }; then
    fail "the artifacts were built for $built_for; this node has Python $have on $(uname -m): build them on a matching machine" "$EXIT_BACKEND_UNSUPPORTED"
  fi
}

# ---------------------------------------------------------------------------------------
# 5. The venv and the package.

remove_base() {
  local parent_created=0
  [ ! -e "$PARENT_MARK" ] || parent_created=1
  run rm -rf "$BASE"
  if [ "$parent_created" = 1 ]; then run rmdir --ignore-fail-on-non-empty "$(dirname "$BASE")"; fi
}

artifacts_digest() {
  # Content, not names or times: the same wheels from a directory, a tarball or a URL match.
  (cd "$ART_DIR/wheels" && sha256sum -- *.whl) | sha256sum | cut -d' ' -f1
}

ensure_venv() {
  if [ ! -d "$BASE" ]; then
    local parent parent_created=0
    parent=$(dirname "$BASE")
    if [ ! -d "$parent" ]; then run mkdir -p "$parent"; parent_created=1; fi
    ROLLBACK_BASE=1
    run mkdir "$BASE"
    if [ "$parent_created" = 1 ]; then : >"$PARENT_MARK"; fi
  fi
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    log "creating the virtual environment $VENV"
    run rm -rf "$VENV" "$STAMP"
    # --without-pip: ensurepip would take seconds to copy a pip into every venv; the
    # system's pip (python3-pip), seen through --system-site-packages, installs into the venv.
    run "$PYTHON" -m venv --without-pip --system-site-packages "$VENV"
  fi
  if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    run "$VENV/bin/python" -m ensurepip --default-pip
  fi
  local digest
  digest=$(artifacts_digest)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$digest" ] && [ -x "$VENV/bin/sofamesh" ]; then
    log "artifacts unchanged since the last install: skipping pip install"
    return 0
  fi
  local upgrade=0
  [ ! -x "$VENV/bin/sofamesh" ] || upgrade=1
  log "installing sofamesh from $ARTIFACTS (offline)"
  run "$VENV/bin/python" -m pip install -q --no-index --find-links "$ART_DIR/wheels" sofamesh
  if [ "$upgrade" = 1 ]; then
    # Other artifacts with the same version number: pip would call sofamesh satisfied.
    run "$VENV/bin/python" -m pip install -q --no-index --no-deps --force-reinstall \
      "$ART_DIR"/wheels/sofamesh-*.whl
  fi
  echo "$digest" >"$STAMP"
}

# ---------------------------------------------------------------------------------------
# 6. The commands.

CLI=()  # the Python CLI with its global options
set_cli() {
  CLI=("$VENV/bin/sofamesh")
  [ "$VERBOSE" = 0 ] || CLI+=(-v)
  CLI+=(--root "$ROOT")
}

# One install, uninstall or reinstall at a time per root (R-AG-8): a lock on the root
# directory itself, which always exists, so the lock leaves no file behind.
lock_root() {
  exec 8<"$ROOT"
  if ! flock -n 8; then
    log "another sofamesh.sh run holds $ROOT: waiting for it (up to 10 minutes)"
    flock -w 600 8 || fail "another sofamesh.sh run still holds $ROOT; try again later" "$EXIT_BUSY"
  fi
}

require_installed() {
  if [ ! -x "$VENV/bin/sofamesh" ]; then
    if [ "$JSON" = 1 ]; then printf '{"installed": false, "root": "%s"}\n' "$ROOT"; fi
    fail "sofamesh is not installed under $ROOT (no $VENV): run '$PROG install' first" "$EXIT_NOT_INSTALLED"
  fi
}

do_install() {
  require_root
  detect_os
  resolve_artifacts
  if [ -z "$CONSOLE" ]; then
    CONSOLE=$(json_field "$ART_DIR/settings.json" console)
    [ -n "$CONSOLE" ] || bad "option --console is required: $ARTIFACTS/settings.json names no console"
    is_url "$CONSOLE" || bad "option --console: settings.json's '$CONSOLE' is not an http(s) URL"
  fi
  lock_root
  ensure_packages
  check_python
  ensure_venv
  log "handing over to sofamesh install"
  set_cli
  # A failure exits through on_exit, which removes the venv if this run created it:
  # sofamesh install has undone its own steps, so a failed first install leaves nothing.
  local extra=()
  [ -z "$NODE_IP" ] || extra+=(--ip "$NODE_IP")
  [ -z "$PROXY_USER" ] || extra+=(--proxy-user "$PROXY_USER")
  [ -z "$CGROUP" ] || extra+=(--cgroup "$CGROUP")
  run_with_secret "${CLI[@]}" install \
    --tenant "$TENANT" --workspace "$WORKSPACE" --instanceid "$INSTANCE" --appname "$APPNAME" \
    --accesskey "$ACCESSKEY" --artifacts "$ARTIFACTS" --console "$CONSOLE" --backend "$BACKEND" \
    "${extra[@]+"${extra[@]}"}"
  ROLLBACK_BASE=0
}

do_uninstall() {
  require_root
  lock_root
  if [ ! -x "$VENV/bin/sofamesh" ]; then
    if [ -d "$BASE" ]; then remove_base; fi
    log "sofamesh is not installed under $ROOT: nothing to uninstall"
    return 0
  fi
  set_cli
  local rc=0
  run "${CLI[@]}" uninstall || rc=$?
  # "not installed" from the agent: only the venv is left (a first install that was cut off).
  if [ "$rc" != 0 ] && [ "$rc" != "$EXIT_NOT_INSTALLED" ]; then
    log "sofamesh uninstall failed (exit $rc): $VENV is kept so that uninstall can run again"
    return "$rc"
  fi
  log "removing $BASE"
  remove_base
}

do_reinstall() {
  require_root
  lock_root
  require_installed
  if [ -n "$ARTIFACTS" ]; then
    resolve_artifacts
    check_python
    ensure_venv
  fi
  set_cli
  run "${CLI[@]}" reinstall
}

do_status() {
  require_installed
  set_cli
  if [ "$JSON" = 1 ]; then run "${CLI[@]}" status --json; else run "${CLI[@]}" status; fi
}

# Called plainly, not in an `if` or `||`: bash would switch off set -e inside it.
"do_$COMMAND"
