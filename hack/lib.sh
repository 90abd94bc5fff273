# shellcheck shell=bash
# Shared helpers for the scripts in hack/. Source it; it does nothing on its own.
#
# Everything here is idempotent: ensure_* functions check first and only act when something is
# missing, so hack/test can call them on every run at almost no cost.

# Repository root, whatever the caller's working directory.
ECSD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ECSD_ROOT

# Debian packages that ecsd, its tests and its benchmark need. protobuf-compiler is for the
# containerd gRPC client; containerd and runc run tasks (on hosts with /usr/sbin/policy-rc.d
# returning 101, as in containers and CI, apt does not start them); iproute2 (`ip netns`) makes
# the tasks' network namespaces; busybox-static is what hack/build-test-image puts in the test
# image; tini is the init of containers with initProcessEnabled; netavark, aardvark-dns and
# iptables give tasks their interfaces, published ports and name resolution (Debian's netavark
# 1.4 drives iptables); podman is what hack/bench-run compares awsvpc task starts with;
# docker-registry, skopeo and apache2-utils (htpasswd) make the registry lab of the pull tests
# (hack/registry); rootlesskit and uidmap (newuidmap/newgidmap) run `ecsd serve --rootless`
# (tests/rootless.rs), and slirp4netns gives the uplink namespace of a rootless ecsd (or of
# ECSD_NETWORK_UPLINK=netns) its way out.
ECSD_APT_PACKAGES=(
  ca-certificates curl jq
  python3 python3-venv
  protobuf-compiler
  wrk shellcheck
  containerd runc
  iproute2 busybox-static
  tini
  netavark aardvark-dns iptables
  podman
  docker-registry skopeo apache2-utils
  rootlesskit slirp4netns uidmap
)

# The Python tools of the end-to-end tier and the benchmark, pinned to versions known to work
# together (awscli 1.x vendors its own botocore; boto3 pins the separate botocore package).
ECSD_PY_PACKAGES=(
  "awscli==1.46.3"
  "boto3==1.44.5"
  "botocore==1.44.5"
  "moto[server]==5.2.5"
)

ECSD_VENV="${ECSD_VENV:-$ECSD_ROOT/.venv}"

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, else through sudo (never prompting when
# there is no terminal to answer, e.g. in CI).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    if [[ -t 0 && -z ${CI:-} ]]; then sudo "$@"; else sudo -n "$@"; fi
  else
    die "need root to run: $* (install sudo or run as root)"
  fi
}

# Print the packages of ECSD_APT_PACKAGES that are not installed.
missing_apt_packages() {
  local p status
  for p in "${ECSD_APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $status == installed ]] || printf '%s\n' "$p"
  done
}

# Install missing Debian packages. apt-get update runs only when something is missing.
ensure_apt_packages() {
  local missing out
  mapfile -t missing < <(missing_apt_packages)
  ((${#missing[@]} == 0)) && return 0
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! out=$(as_root apt-get update -q 2>&1); then
    printf '%s\n' "$out" >&2
    die "apt-get update failed"
  fi
  if ! out=$(as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}" 2>&1); then
    printf '%s\n' "$out" >&2
    die "apt-get install failed: ${missing[*]}"
  fi
}

# cargo fmt and cargo clippy come from rustup components, which a bare toolchain may lack.
ensure_rust_components() {
  local c
  for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
      command -v rustup >/dev/null 2>&1 || die "cargo ${c/rustfmt/fmt} is missing and there is no rustup to add it"
      log "adding rustup component $c"
      rustup component add "$c" >/dev/null || die "rustup component add $c failed"
    fi
  done
}

# The interpreter for the venv: Debian's (installed by ensure_apt_packages, with the venv
# module), else whatever python3 is on PATH.
venv_python() {
  if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo /usr/bin/python3
  else
    command -v python3 || die "python3 not found"
  fi
}

# Create (or reuse) the venv at $ECSD_VENV with ECSD_PY_PACKAGES. It is reused when its
# interpreter runs, the packages import, and the stamp records the same pins.
ensure_venv() {
  local stamp="$ECSD_VENV/.ecsd-pins" want out
  want=$(printf '%s\n' "${ECSD_PY_PACKAGES[@]}")
  if [[ -x $ECSD_VENV/bin/python && -f $stamp ]] && [[ $(<"$stamp") == "$want" ]] &&
    "$ECSD_VENV/bin/python" -c 'import awscli, boto3, moto, flask' 2>/dev/null &&
    [[ -x $ECSD_VENV/bin/aws && -x $ECSD_VENV/bin/moto_server ]]; then
    return 0
  fi
  log "creating Python venv $ECSD_VENV (${ECSD_PY_PACKAGES[*]})"
  rm -rf "$ECSD_VENV"
  if ! out=$("$(venv_python)" -m venv "$ECSD_VENV" 2>&1); then
    printf '%s\n' "$out" >&2
    die "python3 -m venv $ECSD_VENV failed"
  fi
  if ! out=$("$ECSD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input "${ECSD_PY_PACKAGES[@]}" 2>&1); then
    printf '%s\n' "$out" >&2
    rm -rf "$ECSD_VENV"
    die "pip install into $ECSD_VENV failed"
  fi
  printf '%s\n' "$want" >"$stamp"
}

# Cargo's target directory (honours CARGO_TARGET_DIR and .cargo/config).
cargo_target_dir() {
  if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
    echo "$CARGO_TARGET_DIR"
  else
    (cd "$ECSD_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null | jq -r .target_directory) ||
      echo "$ECSD_ROOT/target"
  fi
}

# True while PID runs. kill -0 alone also succeeds for a zombie (an exited child not yet reaped).
pid_alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  state=${state%% *}
  [[ $state != Z ]]
}

# wait_for_line FILE REGEX PID TIMEOUT_S: wait until FILE has a line matching REGEX (ERE) and
# print the first match; fail if PID exits or the timeout passes first.
wait_for_line() {
  local file=$1 re=$2 pid=$3 timeout=${4:-30} line deadline
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    line=$(grep -m1 -E "$re" "$file" 2>/dev/null || true)
    if [[ -n $line ]]; then
      printf '%s\n' "$line"
      return 0
    fi
    pid_alive "$pid" || return 1
    sleep 0.05
  done
  return 1
}

# Stop PID with SIGTERM, then SIGKILL after TIMEOUT_S; reap it if it is our child.
stop_pid() {
  local pid=$1 timeout=${2:-10} deadline
  pid_alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Network namespaces that the root tier's ecsd instances make: `ecsd-<containerd namespace>-<task
# id>`, where the tests' containerd namespaces are `t-*` (tests/tasks_containerd.rs) and
# `ecsd-test-*` (tests/runtime.rs).
ECSD_TEST_NETNS_RE='^ecsd-(t|ecsd-test)-'

# Print the test network namespaces that exist now, one per line.
test_netns() {
  ip netns list 2>/dev/null | awk '{ print $1 }' | grep -E "$ECSD_TEST_NETNS_RE" || true
}

# The bridges of the root tests' task networks (`ecsdt<n>`, `ecsdu<n>`).
test_bridges() {
  ip -o link show type bridge 2>/dev/null | awk -F': ' '{ print $2 }' | grep -E '^ecsd[tu][0-9]+$' || true
}

# Copy stdin to stdout, each line indented by four spaces.
indent() { sed 's/^/    /'; }

# Delete the network namespaces named on stdin (one per line).
delete_netns() {
  local ns
  while read -r ns; do
    [[ -z $ns ]] || ip netns delete "$ns" || log "cannot delete network namespace $ns"
  done
}

# Print `NAMESPACE/ID` for each container that the containerd at SOCKET still holds.
containerd_containers() {
  local sock=$1 ns id
  for ns in $(ctr --address "$sock" namespaces ls -q 2>/dev/null); do
    for id in $(ctr --address "$sock" --namespace "$ns" containers ls -q 2>/dev/null); do
      printf '%s/%s\n' "$ns" "$id"
    done
  done
}

# True while something is mounted at or below DIR.
mounted_under() {
  awk -v d="${1%/}/" 'index($5 "/", d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo
}
