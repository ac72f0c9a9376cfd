#!/usr/bin/env bash
# Package the lab image (scripts/lab/build-image.sh) as a Vagrant box for vagrant-libvirt:
# a tar of metadata.json and box.img (qcow2). The kernel, initrd and ssh key stay beside it in
# the cache (the Vagrantfile points libvirt's direct kernel boot and Vagrant's ssh at them).
#
# Cached: the box is rebuilt only when the image is newer than it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${NSTASK_LAB_CACHE:-/var/cache/nstask-lab}"
IMAGE="$CACHE/nstask-lab-bookworm.img"
BOX="$CACHE/nstask-lab-bookworm.box"

log() { printf 'build-box: %s\n' "$*" >&2; }

"$HERE/build-image.sh" >&2

if [[ -s "$BOX" && "$BOX" -nt "$IMAGE" ]]; then
    echo "cached: $BOX"
    exit 0
fi

start=$(date +%s)
WORK="$(mktemp -d "$CACHE/nstask-lab-box.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT INT TERM
log "converting $IMAGE to qcow2"
qemu-img convert -O qcow2 "$IMAGE" "$WORK/box.img"
size_bytes=$(stat -c %s "$IMAGE")
size_gb=$(((size_bytes + (1 << 30) - 1) >> 30))
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$size_gb" \
    >"$WORK/metadata.json"
# The box's own Vagrantfile: only what every user of this box needs.
cat >"$WORK/Vagrantfile" <<'EOF'
# nstask lab box (scripts/lab/build-box.sh): Debian 12 from debootstrap, no bootloader (direct
# kernel boot, root=/dev/vda), a vagrant user that trusts the key beside the box in the cache.
Vagrant.configure("2") do |config|
  config.ssh.insert_key = false
end
EOF
log "packing the box"
tar -C "$WORK" -cf "$WORK/box.tar" metadata.json Vagrantfile box.img
mv "$WORK/box.tar" "$BOX"
echo "built: $BOX ($(du -h "$BOX" | cut -f1)) in $(($(date +%s) - start)) s"
