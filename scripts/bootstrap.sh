#!/usr/bin/env bash
# Bootstrap a Debian 12 host for nstask: shared by `make demo`, `make test`, CI and Vagrant.
# Idempotent: each step checks first and does nothing when its work is already done.
#
#   scripts/bootstrap.sh            packages, venv, containerd running, test image imported
#   scripts/bootstrap.sh --test     also what the test suite needs (a C compiler for the test
#                                   log router, a loopback OCI registry, skopeo)
#   NSTASK_VENV=/opt/nstask/venv    where the virtual environment goes (default: ./.venv)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${NSTASK_VENV:-$repo/.venv}
ctr_sock=${NSTASK_CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}
ctr_log=${NSTASK_CONTAINERD_LOG:-/var/log/nstask-containerd.log}
test_image=${NSTASK_TEST_IMAGE:-nstask.local/busybox:latest}
namespace=${NSTASK_NAMESPACE:-nstask}

say() { printf 'bootstrap: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: must run as root (it installs packages and starts containerd)" >&2
    exit 1
fi

# 1. Debian packages, only when something is missing.
need=()
# golang-github-containers-common: podman's default seccomp profile (/usr/share/containers).
packages=(containerd runc containernetworking-plugins iptables busybox-static tini iproute2
    golang-github-containers-common)
test_packages=(gcc libc6-dev docker-registry skopeo apache2-utils)
[ "${1:-}" = "--test" ] && packages+=("${test_packages[@]}")
for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. The virtual environment, reinstalled only when pyproject.toml changed.
stamp=$venv/.nstask-installed
want=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
    say "creating virtual environment $venv"
    python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing nstask into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$repo[dev]"
    echo "$want" > "$stamp"
fi

# 3. containerd, started in the background when its socket does not answer (no systemd here).
ctr_ok() { timeout 5 ctr --address "$ctr_sock" version >/dev/null 2>&1; }
if ! ctr_ok; then
    say "starting containerd (log: $ctr_log)"
    mkdir -p "$(dirname "$ctr_log")"
    setsid containerd --address "$ctr_sock" >>"$ctr_log" 2>&1 < /dev/null &
    for _ in $(seq 1 100); do ctr_ok && break; sleep 0.1; done
    ctr_ok || { echo "bootstrap: containerd did not answer on $ctr_sock; see $ctr_log" >&2; exit 1; }
fi

# 4. The test image, packed from busybox-static and imported into our namespace.
if ! ctr --address "$ctr_sock" -n "$namespace" images ls -q 2>/dev/null | grep -qxF "$test_image"; then
    say "packing and importing $test_image"
    "$venv/bin/python" "$repo/scripts/make_test_image.py" --ref "$test_image" \
        --address "$ctr_sock" --namespace "$namespace"
fi
say "ready (venv $venv, containerd $ctr_sock, image $test_image)"
