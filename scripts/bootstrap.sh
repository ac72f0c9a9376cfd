#!/usr/bin/env bash
# Bootstrap a Debian 12 host for nstask: shared by `make demo`, `make test`, CI and Vagrant.
# Idempotent: each step checks first and does nothing when its work is already done.
#
#   scripts/bootstrap.sh            packages, venv, containerd running, test image imported
#   scripts/bootstrap.sh --test     also what the test suite needs (a C compiler for the test
#                                   log router, a loopback OCI registry, skopeo)
#   scripts/bootstrap.sh --install  packages and the venv only (`make install`: containerd is
#                                   the host's service, no test image)
#   NSTASK_VENV=/opt/nstask/venv    where the virtual environment goes (default: ./.venv)
#   NSTASK_WHEELHOUSE=DIR           install Python packages only from the wheels in DIR (pip
#                                   --no-index; the lab VM has no network beyond its host)
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
test_packages=(gcc libc6-dev docker-registry skopeo apache2-utils e2fsprogs tmux)
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

# 2. The virtual environment. Users (no --test) get a regular install of nstask, redone when
# pyproject.toml or any source file changed (the stamp is a hash over them). --test (`make test`,
# development) gets an editable install whose .pth is one plain path line (setuptools' compat
# mode: no import hook at start-up), so the tests and every process they start run the working
# tree's code, never a stale copy. The stamp names the mode: `make demo` after `make test`
# reinstalls.
mode=user
extras=""
[ "${1:-}" = "--test" ] && { mode=test; extras="[dev]"; }
sources() {
    [ "$mode" = user ] || return 0
    (cd "$repo" && find cli.py cli_fast.py agent cni shim -type f \( -name '*.py' -o -name '*.proto' \
        -o -name py.typed \) -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum)
}
stamp=$venv/.nstask-installed
want=$({ echo "$mode"; sha256sum "$repo/pyproject.toml"; sources; } | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
    say "creating virtual environment $venv"
    python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing nstask into $venv ($mode install)"
    rm -f "$stamp"
    pip=("$venv/bin/pip" install -q --disable-pip-version-check)
    [ -n "${NSTASK_WHEELHOUSE:-}" ] && pip+=(--no-index --find-links "$NSTASK_WHEELHOUSE")
    if [ "$mode" = test ]; then
        "${pip[@]}" --config-settings editable_mode=compat -e "$repo$extras"
    else
        rm -rf "$repo/build"  # setuptools reuses build/lib: a deleted module would ship again
        "${pip[@]}" "$repo"
        rm -rf "$repo/build"
    fi
    echo "$want" > "$stamp"
fi

# 2b. Our own launchers for the two console scripts, in place of pip's: Python with -I -S (no
# site: no .pth files, no user site, no PYTHON* variables; ~10 ms less per start), and the
# code's directory (the repo with --test, else site-packages) put on sys.path by the launcher.
# The shim needs no third-party package: it gets only its own directory.
site_dir=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
plat_dir=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("platlib"))')
code_dir=$site_dir
[ "$mode" = test ] && code_dir=$repo
py_paths() {  # the distinct arguments as a Python list literal
    "$venv/bin/python" -c 'import sys; print(list(dict.fromkeys(sys.argv[1:])))' "$@"
}
write_launcher() {  # name, module, paths...
    local name=$1 module=$2 target=$venv/bin/$1 head text
    shift 2
    head="#!$venv/bin/python -IS"
    if [ ${#head} -gt 250 ] || [[ "$venv" == *[[:space:]]* ]]; then
        # Too long (or not splittable) for a shebang line: start through sh, as pip does.
        head="#!/bin/sh
'''exec' \"$venv/bin/python\" -IS \"\$0\" \"\$@\"
' '''"
    fi
    text="$head
# nstask's own launcher, written by scripts/bootstrap.sh (see there).
import sys
sys.path += $(py_paths "$@")
from $module import main
sys.exit(main())"
    if [ "$(cat "$target" 2>/dev/null)" != "$text" ]; then
        printf '%s\n' "$text" > "$target.tmp"
        chmod 755 "$target.tmp"
        mv -f "$target.tmp" "$target"
    fi
}
write_launcher nstask cli_fast "$code_dir" "$site_dir" "$plat_dir"
write_launcher nstask-shim-logger shim.main "$code_dir"
# The first run through click writes what `ps`, `validate` and `--help` need to start without
# it (cli_fast.py); make that run now rather than on the user's first command.
"$venv/bin/nstask" --help >/dev/null

[ "${1:-}" = "--install" ] && { say "installed (venv $venv)"; exit 0; }

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
