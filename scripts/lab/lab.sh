#!/usr/bin/env bash
# The nstask lab VM under Vagrant + vagrant-libvirt (issue 13).
#
#   lab.sh up        install what is missing, start libvirt, build (or reuse) the local box,
#                    choose KVM or TCG, `vagrant up` (provisioning: scripts/bootstrap.sh,
#                    then make install), print how to enter
#   lab.sh ssh       vagrant ssh into it
#   lab.sh test      up (or reuse), check it end to end over `vagrant ssh`, destroy, check the
#                    host is clean
#                    (NSTASK_LAB_KEEP=1: a failed test leaves the VM up to look at)
#   lab.sh destroy   vagrant destroy, then remove the lab's libvirt domain, volumes, pool and
#                    network; the box stays cached
#
# Everything lives under NSTASK_LAB_CACHE (/var/cache/nstask-lab): the image and box, the key,
# VAGRANT_HOME, the wheelhouse, the storage pool's directory. libvirt objects are all named
# nstask-lab (domain, storage pool, network and its bridge nstask-lab0).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${NSTASK_LAB_CACHE:-/var/cache/nstask-lab}"
NAME=nstask-lab
BOX_NAME=nstask/bookworm-local
BOX="$CACHE/nstask-lab-bookworm.box"
POOL_DIR="$CACHE/pool"
NET_ADDR=192.168.231.1
NET_XML="<network><name>$NAME</name><bridge name='${NAME}0' stp='on' delay='0'/>
<dns enable='no'/>
<ip address='$NET_ADDR' netmask='255.255.255.0'>
<dhcp><range start='192.168.231.10' end='192.168.231.254'/></dhcp></ip></network>"
export NSTASK_LAB_CACHE="$CACHE"
export VAGRANT_HOME="$CACHE/vagrant.d"
export VAGRANT_DEFAULT_PROVIDER=libvirt
export VAGRANT_CWD="$REPO/vagrant"
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_NO_PLUGINS_UPDATE=1
export LIBVIRT_DEFAULT_URI=qemu:///system
VIRSH=(virsh -q -c qemu:///system)

log() { printf 'lab: %s\n' "$*" >&2; }
die() { printf 'lab: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }

[[ $EUID -eq 0 ]] || { log "must run as root (apt, libvirt, debootstrap)"; exit 2; }

# -- what the lab needs on the host ------------------------------------------------------------
ensure_packages() {
    local need=() pkg
    for pkg in vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu \
        libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base rsync debootstrap python3-venv; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${need[@]}" >&2
    fi
}

libvirt_ok() { timeout 10 "${VIRSH[@]}" version >/dev/null 2>&1; }

# libvirtd and virtlogd: systemd's units where systemd runs, else started here as daemons when
# their sockets do not answer. Pids we start are recorded (nothing here ever stops a daemon it
# did not start; the lab leaves them running, they are cheap).
ensure_libvirt() {
    libvirt_ok && return 0
    if [[ -d /run/systemd/system ]]; then
        systemctl start virtlogd.socket libvirtd.socket libvirtd.service >&2
    else
        if ! [[ -S /run/libvirt/virtlogd-sock ]] || ! pid_alive /run/virtlogd.pid; then
            virtlogd -d
            record_daemon virtlogd /run/virtlogd.pid
        fi
        if ! pid_alive /run/libvirtd.pid; then
            libvirtd -d
            record_daemon libvirtd /run/libvirtd.pid
        fi
    fi
    for _ in $(seq 100); do libvirt_ok && return 0; sleep 0.2; done
    die "libvirtd does not answer on qemu:///system"
}
pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
record_daemon() { # name pidfile
    local _i
    for _i in $(seq 50); do [[ -s "$2" ]] && break; sleep 0.1; done
    log "started $1 (pid $(cat "$2" 2>/dev/null || echo '?'))"
    echo "$1 $(cat "$2" 2>/dev/null || echo '?') $(date -u +%FT%TZ)" >>"$CACHE/nstask-lab-daemons"
}

# libvirt checks /dev/kvm as the user it runs qemu as (libvirt-qemu). Where udev does not run,
# /dev/kvm can stay root-only: libvirt then finds its cached qemu capabilities (probed with
# KVM) outdated at every domain definition and probes qemu again, ~47 s each time. Debian's
# udev rule gives /dev/kvm the group kvm, mode 0660 (libvirt-qemu is in kvm); the lab does the
# same, records what it found, and `lab.sh destroy` puts that back.
KVM_PERMS="$CACHE/nstask-lab-kvm-perms"
ensure_kvm_perms() {
    [[ -c /dev/kvm ]] && getent group kvm >/dev/null || return 0
    runuser -u libvirt-qemu -- test -r /dev/kvm -a -w /dev/kvm 2>/dev/null && return 0
    [[ -s "$KVM_PERMS" ]] || stat -c '%a %U %G' /dev/kvm >"$KVM_PERMS"
    log "/dev/kvm: group kvm, mode 0660 as Debian's udev rule sets it (was $(cat "$KVM_PERMS"))"
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
}
restore_kvm_perms() {
    local mode user group
    [[ -s "$KVM_PERMS" && -c /dev/kvm ]] || return 0
    read -r mode user group <"$KVM_PERMS"
    chown "$user:$group" /dev/kvm
    chmod "$mode" /dev/kvm
    rm -f "$KVM_PERMS"
    log "/dev/kvm: back to $mode $user:$group"
}

# -- accelerator ---------------------------------------------------------------------------------
# kvm when a Linux guest really boots under KVM here (scripts/lab/boot-check.sh's probe: kernel
# output on the console within NSTASK_LAB_KVM_TIMEOUT s), else qemu (TCG). The answer is
# cached per host kernel and CPU; NSTASK_LAB_ACCEL=kvm|tcg forces one, NSTASK_LAB_REPROBE=1
# probes again.
choose_driver() {
    local key cached
    if [[ -n "${NSTASK_LAB_ACCEL:-}" ]]; then
        ACCEL="$NSTASK_LAB_ACCEL"
    else
        key="$(uname -r) $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
        cached="$CACHE/nstask-lab-accel"
        if [[ -z "${NSTASK_LAB_REPROBE:-}" && -s "$cached" ]] && [[ "$(sed -n 2p "$cached")" == "$key" ]]; then
            ACCEL="$(sed -n 1p "$cached")"
            log "accelerator: $ACCEL (probed before: $cached; NSTASK_LAB_REPROBE=1 probes again)"
        else
            ACCEL="$("$HERE/boot-check.sh" --probe)"
            printf '%s\n%s\n' "$ACCEL" "$key" >"$cached"
        fi
    fi
    case "$ACCEL" in
        kvm) DRIVER=kvm ;;
        tcg) DRIVER=qemu ;;
        *) die "NSTASK_LAB_ACCEL=$ACCEL: must be kvm or tcg" ;;
    esac
    export NSTASK_LAB_DRIVER="$DRIVER"
}

# -- Python packages for the VM ------------------------------------------------------------------
# The project's dependencies (and setuptools, to build nstask itself) as wheels, downloaded by
# the host's pip from wherever the host's pip config points; rebuilt when pyproject.toml
# changes.
ensure_wheelhouse() {
    local wh="$CACHE/wheelhouse" pipenv="$CACHE/nstask-lab-pip" stamp want
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    stamp="$wh/.nstask-stamp"
    [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]] && return 0
    [[ -x "$pipenv/bin/pip" ]] || python3 -m venv "$pipenv"
    mapfile -t reqs < <(python3 -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    p = tomllib.load(f)
print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"]))' "$REPO/pyproject.toml")
    log "downloading wheels for the VM into $wh: ${reqs[*]}"
    mkdir -p "$wh"
    "$pipenv/bin/pip" wheel -qq --disable-pip-version-check --find-links "$wh" -w "$wh" "${reqs[@]}" >&2
    echo "$want" >"$stamp"
}

# -- libvirt objects of the lab ------------------------------------------------------------------
ensure_box() {
    "$HERE/build-box.sh" >&2
    local added="$VAGRANT_HOME/nstask-lab-box.added" want
    want="$(stat -c '%s %Y' "$BOX")"
    if [[ "$(cat "$added" 2>/dev/null)" != "$want" ]] || ! vagrant box list 2>/dev/null | grep -q "^$BOX_NAME "; then
        vagrant box remove -f --all "$BOX_NAME" >/dev/null 2>&1 || true
        # A volume of the previous box in our pool would be reused by vagrant-libvirt.
        remove_pool
        log "adding the box $BOX_NAME to $VAGRANT_HOME"
        vagrant box add -f --name "$BOX_NAME" "$BOX" >&2
        mkdir -p "$VAGRANT_HOME"
        echo "$want" >"$added"
    fi
}

ensure_pool() {
    mkdir -p "$POOL_DIR" "$CACHE/run"
    if ! "${VIRSH[@]}" pool-info "$NAME" >/dev/null 2>&1; then
        "${VIRSH[@]}" pool-define-as "$NAME" dir --target "$POOL_DIR" >/dev/null
    fi
    if [[ "$("${VIRSH[@]}" pool-info "$NAME" | awk '$1=="State:" {print $2}')" != running ]]; then
        "${VIRSH[@]}" pool-start "$NAME" >/dev/null
    fi
}

ensure_network() {
    if ! "${VIRSH[@]}" net-info "$NAME" >/dev/null 2>&1; then
        "${VIRSH[@]}" net-define <(echo "$NET_XML") >/dev/null
    fi
    if [[ "$("${VIRSH[@]}" net-info "$NAME" | awk '$1=="Active:" {print $2}')" != yes ]]; then
        "${VIRSH[@]}" net-start "$NAME" >/dev/null
    fi
}

remove_pool() {
    local vol
    if "${VIRSH[@]}" pool-info "$NAME" >/dev/null 2>&1; then
        "${VIRSH[@]}" pool-refresh "$NAME" >/dev/null 2>&1 || true
        for vol in $("${VIRSH[@]}" vol-list "$NAME" 2>/dev/null | awk '{print $1}'); do
            "${VIRSH[@]}" vol-delete --pool "$NAME" "$vol" >/dev/null
        done
        "${VIRSH[@]}" pool-destroy "$NAME" >/dev/null 2>&1 || true
        "${VIRSH[@]}" pool-undefine "$NAME" >/dev/null
    fi
    rm -rf --one-file-system "$POOL_DIR"
}

# -- commands ------------------------------------------------------------------------------------
# Each line of vagrant's output prefixed with the seconds since it started.
# A progress meter (lines rewritten with \r) shows only its last state.
stamped() {
    local t0=$SECONDS line
    while IFS= read -r line; do
        line="${line##*$'\r'}"
        printf '[%4d s] %s\n' $((SECONDS - t0)) "$line"
    done
}

vagrant_state() { vagrant status --machine-readable 2>/dev/null | awk -F, '$3=="state" {print $4}'; }

cmd_up() {
    local t0 t_build t_up
    t0="$(now)"
    mkdir -p "$CACHE"
    chmod 0711 "$CACHE"
    ensure_packages
    ensure_libvirt
    ensure_kvm_perms
    ensure_box
    ensure_wheelhouse
    choose_driver
    ensure_pool
    ensure_network
    t_build="$(since "$t0")"
    local state
    state="$(vagrant_state)"
    log "vagrant up (libvirt driver $DRIVER, accelerator $ACCEL; machine was: ${state:-unknown})"
    local t1
    t1="$(now)"
    vagrant up --provider=libvirt 2>&1 | stamped >&2
    t_up="$(since "$t1")"
    echo "lab: up in $(since "$t0") s (host side $t_build s, vagrant up $t_up s, accelerator $ACCEL)"
    cat <<EOF
lab: enter it with     make lab-ssh
lab:   (or: cd vagrant && VAGRANT_HOME=$VAGRANT_HOME vagrant ssh)
lab: inside:           sudo -i; cd /nstask && nstask run --rm examples/hello.json
lab: remove it with    make lab-destroy
EOF
}

cmd_ssh() {
    exec vagrant ssh "$@"
}

cmd_destroy() {
    if command -v vagrant >/dev/null && [[ -d "$REPO/vagrant/.vagrant" ]]; then
        vagrant destroy -f >&2 || log "vagrant destroy failed; removing the libvirt objects directly"
    fi
    if command -v virsh >/dev/null && libvirt_ok; then
        if "${VIRSH[@]}" dominfo "$NAME" >/dev/null 2>&1; then
            "${VIRSH[@]}" destroy "$NAME" >/dev/null 2>&1 || true
            "${VIRSH[@]}" undefine "$NAME" --nvram >/dev/null 2>&1 || "${VIRSH[@]}" undefine "$NAME" >/dev/null
        fi
        remove_pool
        local net
        for net in "$NAME" "$NAME-nat"; do
            if "${VIRSH[@]}" net-info "$net" >/dev/null 2>&1; then
                "${VIRSH[@]}" net-destroy "$net" >/dev/null 2>&1 || true
                "${VIRSH[@]}" net-undefine "$net" >/dev/null
            fi
        done
    fi
    rm -rf "$REPO/vagrant/.vagrant" "$CACHE/run"
    restore_kvm_perms
    echo "lab: destroyed (the box stays cached in $CACHE)"
}

# Nothing of the lab on the host: no domain, network, pool, volume, bridge or qemu of ours.
check_clean() {
    local bad=0
    if "${VIRSH[@]}" list --all --name | grep -qx "$NAME"; then log "left: domain $NAME"; bad=1; fi
    if "${VIRSH[@]}" net-list --all --name | grep -q "^$NAME"; then log "left: network $NAME*"; bad=1; fi
    if "${VIRSH[@]}" pool-list --all --name | grep -qx "$NAME"; then log "left: pool $NAME"; bad=1; fi
    if [[ -e "$POOL_DIR" ]]; then log "left: $POOL_DIR (volumes)"; bad=1; fi
    if ip link show "${NAME}0" >/dev/null 2>&1; then log "left: bridge ${NAME}0"; bad=1; fi
    if pgrep -f -- "-name guest=$NAME," >/dev/null; then log "left: a qemu of $NAME"; bad=1; fi
    ((bad == 0)) && echo "lab: host clean (no domain, network, pool, volume, bridge or qemu of $NAME)"
    return "$bad"
}

cmd_test() {
    local t0 fails=0
    t0="$(now)"
    # A process of its own, so that `set -e` holds inside (it does not in an `if` here).
    if ! "$HERE/lab.sh" up; then
        log "the lab did not come up"
        [[ -n "${NSTASK_LAB_KEEP:-}" ]] || { cmd_destroy; check_clean || true; }
        echo "lab-test: FAILED in $(since "$t0") s (up failed)"
        return 1
    fi
    local t_up
    t_up="$(since "$t0")"
    choose_driver  # as the up chose it (cached): the Vagrantfile reads it
    run_checks || fails=1
    if ((fails)) && [[ -n "${NSTASK_LAB_KEEP:-}" ]]; then
        log "NSTASK_LAB_KEEP is set: the failed lab stays up (make lab-ssh; make lab-destroy)"
        return 1
    fi
    cmd_destroy
    check_clean || fails=1
    echo "lab-test: $( ((fails)) && echo FAILED || echo passed) in $(since "$t0") s (up $t_up s, accelerator $ACCEL)"
    return "$fails"
}

# guest-check.sh runs inside the VM (as root, from the synced tree).
guest() { vagrant ssh -c "sudo bash /nstask/scripts/lab/guest-check.sh $*" -- -o ServerAliveInterval=10 </dev/null; }

run_checks() {
    local boot1 boot2 t
    # The tree as it is now (a reused VM may have an older copy).
    vagrant rsync >&2
    guest before || return 1
    boot1="$(vagrant ssh -c 'cat /proc/sys/kernel/random/boot_id' </dev/null | tr -d '\r')"
    log "rebooting the VM"
    t="$(now)"
    vagrant ssh -c 'sudo systemctl reboot' </dev/null >/dev/null 2>&1 || true
    # Wait until ssh answers from a new boot.
    local deadline=$((SECONDS + 600))
    while :; do
        sleep 3
        boot2="$(vagrant ssh -c 'cat /proc/sys/kernel/random/boot_id' -- -o ConnectTimeout=5 </dev/null 2>/dev/null | tr -d '\r')" || true
        [[ -n "$boot2" && "$boot2" != "$boot1" ]] && break
        ((SECONDS < deadline)) || { log "the VM did not come back within 600 s of the reboot"; return 1; }
    done
    log "back after the reboot in $(since "$t") s"
    guest after-reboot || return 1
}

case "${1:-}" in
    up) cmd_up ;;
    ssh) shift; cmd_ssh "$@" ;;
    test) cmd_test ;;
    destroy) cmd_destroy ;;
    check-clean) check_clean ;;
    *) log "usage: $0 up|ssh|test|destroy|check-clean"; exit 2 ;;
esac
