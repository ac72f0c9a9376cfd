#!/usr/bin/env bash
# Build the nstask lab VM image (issue 13, first deliverable): a Debian 12 (bookworm)
# root filesystem made with debootstrap from the host's configured Debian mirror, packed
# into an ext4 raw disk image, plus the kernel and initrd for qemu's direct kernel boot and
# an ssh key pair of our own for the `vagrant` user.
#
# Everything lives under $NSTASK_LAB_CACHE (default /var/cache/nstask-lab). A second run
# finds the cached image and exits 0 at once ("cached").
set -euo pipefail

CACHE="${NSTASK_LAB_CACHE:-/var/cache/nstask-lab}"
SUITE=bookworm
IMAGE="$CACHE/nstask-lab-bookworm.img"
KERNEL="$CACHE/nstask-lab-bookworm-vmlinuz"
INITRD="$CACHE/nstask-lab-bookworm-initrd.img"
KEY="$CACHE/nstask-lab-key"
IMAGE_SIZE="${NSTASK_LAB_IMAGE_SIZE:-3G}"
PACKAGES=linux-image-amd64,systemd-sysv,openssh-server,sudo,rsync,ca-certificates,iproute2,udev,dbus
# What scripts/bootstrap.sh installs (its `packages` list, python3-venv) and make: the lab VM
# has no network beyond the host, so its apt cannot fetch them.
PACKAGES+=,containerd,runc,containernetworking-plugins,iptables,busybox-static,tini
PACKAGES+=,golang-github-containers-common,python3,python3-venv,make
STAMP="$CACHE/nstask-lab-bookworm.stamp"
# A change of the package list (or of this recipe's version) rebuilds the cached image.
RECIPE="2 $SUITE $IMAGE_SIZE $PACKAGES"

log() { printf 'build-image: %s\n' "$*" >&2; }

if [[ $EUID -ne 0 ]]; then
    log "must run as root (debootstrap, chroot)"
    exit 2
fi

if [[ -s "$IMAGE" && -s "$KERNEL" && -s "$INITRD" && -s "$KEY" && -s "$KEY.pub" ]] \
    && [[ "$(cat "$STAMP" 2>/dev/null)" == "$RECIPE" ]]; then
    echo "cached: $IMAGE"
    exit 0
fi

# Install what the build needs, only if missing.
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
if ((${#need[@]})); then
    log "installing: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi

# The Debian mirror the host's apt uses for $SUITE (deb822 .sources or one-line .list).
mirror_url() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -e "$f" ]] || continue
        awk -v suite="$SUITE" '
            /^[[:space:]]*$/ { uris=""; suites=""; next }
            tolower($1)=="uris:" { uris=$2 }
            tolower($1)=="suites:" { for (i=2;i<=NF;i++) if ($i==suite) suites=1 }
            uris!="" && suites==1 { print uris; exit }
        ' "$f"
    done
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        sed -E 's/\[[^]]*\]//' |
        awk -v suite="$SUITE" '$1=="deb" && $3==suite { print $2 }' || true
}
MIRROR="${NSTASK_LAB_MIRROR:-$(mirror_url | head -n1 || true)}"
if [[ -z "$MIRROR" ]]; then
    log "no Debian mirror for $SUITE found in /etc/apt/sources.list*; set NSTASK_LAB_MIRROR"
    exit 2
fi

mkdir -p "$CACHE"
# Traversable but not listable: libvirt's qemu (user libvirt-qemu) opens the lab's kernel,
# initrd and storage pool below it; the private key stays 0600.
chmod 0711 "$CACHE"
WORK="$(mktemp -d "$CACHE/nstask-lab-build.XXXXXX")"
cleanup() {
    local m
    # debootstrap mounts proc/sys in the target; never leave them, never rm through them.
    if [[ -d "$WORK" ]]; then
        { findmnt -rn -o TARGET | grep -F "$WORK/" || true; } | sort -r | while read -r m; do
            umount -l "$m" || true
        done
        rm -rf --one-file-system "$WORK"
    fi
}
trap cleanup EXIT INT TERM

ROOT="$WORK/rootfs"
start=$(date +%s)
log "debootstrap $SUITE (minbase) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    exit 1
}

log "configuring the guest"
echo nstask-lab >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 nstask-lab\n' >"$ROOT/etc/hosts"
printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$ROOT/etc/fstab"
# DHCP on the virtio NIC (qemu user-mode networking) with systemd-networkd.
mkdir -p "$ROOT/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' >"$ROOT/etc/systemd/network/80-nstask-lab.network"
chroot "$ROOT" systemctl enable systemd-networkd.service ssh.service >/dev/null 2>&1
# The vagrant user: sudo without password, our own key (the public insecure key is not
# available offline, and our own is better anyway).
chroot "$ROOT" useradd -m -s /bin/bash -G sudo vagrant
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\n' >"$ROOT/etc/sudoers.d/vagrant"
chmod 0440 "$ROOT/etc/sudoers.d/vagrant"
# A rebuild keeps the key pair it finds, so a running lab stays reachable.
if [[ -s "$KEY" && -s "$KEY.pub" ]]; then
    cp "$KEY" "$WORK/key"
    cp "$KEY.pub" "$WORK/key.pub"
else
    ssh-keygen -q -t ed25519 -N '' -C nstask-lab -f "$WORK/key"
fi
install -d -m 0700 -o 1000 -g 1000 "$ROOT/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$WORK/key.pub" "$ROOT/home/vagrant/.ssh/authorized_keys"
[[ "$(chroot "$ROOT" id -u vagrant)" == 1000 ]] || { log "vagrant is not uid 1000"; exit 1; }
# Fresh host keys are made at build time by openssh-server's postinst; drop apt caches.
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/tmp/*

log "extracting kernel and initrd"
vmlinuz=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -n1)
cp "$vmlinuz" "$WORK/vmlinuz"
cp "$initrd" "$WORK/initrd.img"

log "packing ext4 image ($IMAGE_SIZE)"
mkfs.ext4 -q -F -L nstask-lab -d "$ROOT" "$WORK/disk.img" "$IMAGE_SIZE"

# Publish atomically: the image last, so its presence means a complete build.
install -m 0600 "$WORK/key" "$KEY"
install -m 0644 "$WORK/key.pub" "$KEY.pub"
mv "$WORK/vmlinuz" "$KERNEL"
mv "$WORK/initrd.img" "$INITRD"
rm -f "$STAMP"
mv "$WORK/disk.img" "$IMAGE"
echo "$RECIPE" >"$STAMP"
echo "built: $IMAGE in $(($(date +%s) - start)) s"
