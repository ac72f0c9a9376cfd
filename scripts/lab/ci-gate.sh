#!/usr/bin/env bash
# Should CI run `make lab-test` on this machine? Prints the decision and why; exit 0 = run it,
# 1 = skip it (not a failure: CI goes on green).
#
# Runs it when a VM really boots here (scripts/lab/boot-check.sh: build or reuse the cached
# image, boot it with KVM or else TCG, ssh in, power off) fast enough, and when the time CI
# has left covers what the lab test is expected to take with that accelerator.
#
#   NSTASK_CI_LAB=auto|1|0        1: always run it, 0: never (default auto: decide)
#   NSTASK_CI_TIME_LIMIT=3600     CI's time limit in seconds
#   NSTASK_CI_ELAPSED=<seconds>   how long CI has run so far (.ci/run passes it)
#   NSTASK_CI_LAB_MAX_BOOT=120    a boot to ssh slower than this (seconds) skips the lab
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode="${NSTASK_CI_LAB:-auto}"
limit="${NSTASK_CI_TIME_LIMIT:-3600}"
elapsed="${NSTASK_CI_ELAPSED:-0}"
max_boot="${NSTASK_CI_LAB_MAX_BOOT:-120}"
# What `make lab-test` took on a 2-core machine from a cold cache (image, box, wheels, boot,
# provisioning, checks, destroy), with a margin of about 1.5x; see README "Lab".
est_tcg=900
est_kvm=600

say() { printf 'ci-gate: %s\n' "$*"; }
skip() { say "lab-test SKIPPED: $*"; exit 1; }

case "$mode" in
    0) skip "NSTASK_CI_LAB=0" ;;
    1) say "lab-test RUNS: NSTASK_CI_LAB=1"; exit 0 ;;
    auto) ;;
    *) say "NSTASK_CI_LAB=$mode: must be auto, 1 or 0"; exit 2 ;;
esac
[[ $EUID -eq 0 ]] || skip "not root"
[[ "$(uname -m)" == x86_64 ]] || skip "the lab image is amd64; this machine is $(uname -m)"
left=$((limit - elapsed))
# Even the faster estimate must fit before paying for the probe.
((left >= est_kvm)) || skip "CI has ${left}s left of ${limit}s; the lab test needs about ${est_kvm}s even with KVM"

log="$(mktemp /tmp/nstask-ci-gate.XXXXXX)"
trap 'rm -f "$log"' EXIT
t0=$SECONDS
if ! "$HERE/boot-check.sh" >"$log" 2>&1; then
    tail -n 15 "$log" | sed 's/^/    /'
    skip "no VM boots on this machine (scripts/lab/boot-check.sh failed, output above)"
fi
accel="$(awk '/^accelerator:/ {print $2}' "$log")"
ssh_s="$(awk '/^ssh ready:/ {print $3}' "$log")"
say "a VM boots here: accelerator $accel, ssh ready after ${ssh_s}s (probe took $((SECONDS - t0))s)"
awk -v s="$ssh_s" -v m="$max_boot" 'BEGIN { exit !(s <= m) }' \
    || skip "the boot took ${ssh_s}s to ssh, more than NSTASK_CI_LAB_MAX_BOOT=${max_boot}s"
est=$est_tcg
[[ "$accel" == kvm ]] && est=$est_kvm
left=$((limit - elapsed - (SECONDS - t0)))
((left >= est)) || skip "CI has ${left}s left; the lab test takes about ${est}s with $accel"
say "lab-test RUNS: accelerator $accel, about ${est}s expected, ${left}s of CI time left"
