#!/usr/bin/env bash
# Boot the nstask lab image under qemu and check it (issue 13, first deliverable).
#
# Tries KVM first; on this machine kind a Linux guest under KVM can hang right after the
# kernel is loaded, so when the console shows no kernel output within NSTASK_LAB_KVM_TIMEOUT
# seconds the VM is stopped and booted again with software emulation (TCG). Direct kernel
# boot, virtio disk (a throwaway snapshot: the cached image is never written), user-mode
# networking restricted to one host forward (127.0.0.1:<free port> -> guest:22), serial
# console to a log file. Waits for multi-user, ssh's in with our key, powers off.
#
#   boot-check.sh --probe   only the KVM probe: prints `kvm` when the guest reaches multi-user
#                           under KVM, else `tcg` (scripts/lab/lab.sh picks libvirt's driver
#                           with it)
set -euo pipefail
PROBE=0
[[ "${1:-}" == --probe ]] && PROBE=1

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${NSTASK_LAB_CACHE:-/var/cache/nstask-lab}"
IMAGE="$CACHE/nstask-lab-bookworm.img"
KERNEL="$CACHE/nstask-lab-bookworm-vmlinuz"
INITRD="$CACHE/nstask-lab-bookworm-initrd.img"
KEY="$CACHE/nstask-lab-key"
KVM_TIMEOUT="${NSTASK_LAB_KVM_TIMEOUT:-20}"
BOOT_TIMEOUT="${NSTASK_LAB_BOOT_TIMEOUT:-300}"
SSH_TIMEOUT="${NSTASK_LAB_SSH_TIMEOUT:-120}"
OFF_TIMEOUT="${NSTASK_LAB_OFF_TIMEOUT:-120}"
MEM="${NSTASK_LAB_MEM:-1024}"

log() { printf 'boot-check: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

"$HERE/build-image.sh" >&2

RUN="$(mktemp -d /tmp/nstask-lab-run.XXXXXX)"
QPID=""
stop_qemu() {
    if [[ -n "$QPID" ]] && kill -0 "$QPID" 2>/dev/null; then
        kill "$QPID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
    fi
    QPID=""
}
cleanup() {
    stop_qemu
    rm -rf "$RUN"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PORT=""
CONSOLE=""
start_qemu() { # $1 = kvm|tcg
    PORT="$(free_port)"
    CONSOLE="$RUN/console-$1.log"
    : >"$CONSOLE"
    # snapshot=on keeps guest writes in a temporary file (under TMPDIR, our run dir).
    TMPDIR="$RUN" qemu-system-x86_64 \
        -accel "$1" -m "$MEM" -smp 2 \
        -nodefaults -display none -no-reboot \
        -kernel "$KERNEL" -initrd "$INITRD" \
        -append "root=/dev/vda rw console=ttyS0 panic=-1" \
        -drive "file=$IMAGE,format=raw,if=virtio,snapshot=on" \
        -nic "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:$PORT-:22" \
        -serial "file:$CONSOLE" \
        >"$RUN/qemu-$1.out" 2>&1 &
    QPID=$!
}

# wait_console REGEX TIMEOUT: 0 when the console shows REGEX, 1 on timeout or qemu exit.
wait_console() {
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        grep -aqE "$1" "$CONSOLE" && return 0
        kill -0 "$QPID" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

ACCEL=""
T0=""
try_order=(kvm tcg)
[[ -n "${NSTASK_LAB_ACCEL:-}" ]] && try_order=("$NSTASK_LAB_ACCEL")
if ((PROBE)); then
    try_order=(kvm)
    BOOT_TIMEOUT="${NSTASK_LAB_KVM_BOOT_TIMEOUT:-90}"
fi
for accel in "${try_order[@]}"; do
    if [[ "$accel" == kvm ]] && ! [[ -r /dev/kvm && -w /dev/kvm ]]; then
        log "no usable /dev/kvm; skipping KVM"
        continue
    fi
    T0="$(now)"
    start_qemu "$accel"
    log "qemu pid $QPID with -accel $accel (ssh forward 127.0.0.1:$PORT)"
    if [[ "$accel" == kvm ]]; then
        if ! wait_console 'Linux version' "$KVM_TIMEOUT"; then
            log "KVM: no kernel output on the console within ${KVM_TIMEOUT}s (qemu: $(tr '\n' ' ' <"$RUN/qemu-kvm.out" | cut -c1-200)); falling back to TCG"
            stop_qemu
            continue
        fi
    fi
    ACCEL="$accel"
    break
done
if ((PROBE)); then
    if [[ -n "$ACCEL" ]] && wait_console 'Reached target.*Multi-User|nstask-lab login:' "$BOOT_TIMEOUT"; then
        log "KVM runs the guest: multi-user after $(since "$T0")s"
        echo kvm
    else
        [[ -n "$ACCEL" ]] && log "KVM: the kernel started but no multi-user within ${BOOT_TIMEOUT}s; using TCG"
        echo tcg
    fi
    exit 0
fi
[[ -n "$ACCEL" ]] || { log "no accelerator booted the guest"; exit 1; }

if ! wait_console 'Reached target.*Multi-User|nstask-lab login:' "$BOOT_TIMEOUT"; then
    log "guest did not reach multi-user within ${BOOT_TIMEOUT}s; console tail:"
    tail -n 30 "$CONSOLE" >&2
    exit 1
fi
T_MULTI="$(since "$T0")"
log "multi-user after ${T_MULTI}s"

SSH=(ssh -i "$KEY" -p "$PORT" -o BatchMode=yes -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5 vagrant@127.0.0.1)
deadline=$((SECONDS + SSH_TIMEOUT))
until "${SSH[@]}" true 2>/dev/null; do
    if ((SECONDS >= deadline)); then
        log "ssh not ready within ${SSH_TIMEOUT}s"
        exit 1
    fi
    sleep 1
done
T_SSH="$(since "$T0")"
log "ssh ready after ${T_SSH}s"

"${SSH[@]}" 'state=$(systemctl is-system-running --wait || true); echo "system: $state"; uname -a; sudo -n true && echo "sudo: ok"'

# restrict=on: the guest must not reach the host. 10.0.2.2 is the host's loopback in qemu's
# user-mode network, and our own forward listens there on $PORT: without the restriction this
# connection would succeed.
if "${SSH[@]}" "timeout 5 bash -c '</dev/tcp/10.0.2.2/$PORT'" 2>/dev/null; then
    log "the guest reached the host at 10.0.2.2:$PORT: network not isolated"
    exit 1
fi
echo "network: isolated (guest cannot open 10.0.2.2:$PORT)"

T_OFF0="$(now)"
"${SSH[@]}" 'sudo -n systemctl poweroff' 2>/dev/null || true
deadline=$((SECONDS + OFF_TIMEOUT))
while kill -0 "$QPID" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
        log "qemu still running ${OFF_TIMEOUT}s after poweroff"
        exit 1
    fi
    sleep 0.2
done
wait "$QPID" 2>/dev/null || true
QPID=""
T_OFF="$(since "$T_OFF0")"
cp "$CONSOLE" "$CACHE/nstask-lab-console-last.log"

echo "accelerator: $ACCEL"
echo "boot to multi-user: ${T_MULTI} s"
echo "ssh ready: ${T_SSH} s"
echo "power-off: ${T_OFF} s"
echo "total: $(since "$T0") s (console: $CACHE/nstask-lab-console-last.log)"
