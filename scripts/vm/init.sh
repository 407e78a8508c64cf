#!/bin/busybox sh
# PID 1 of the test VMs (busybox initramfs). Loads the virtio/9p/overlay
# modules listed in /modules/order (dependencies first), mounts the host's
# shares read-only under a tmpfs overlay so the guest can write anywhere
# without touching the host, mounts the writable results share, then runs
# the job the host left there, chrooted into the merged tree.
# Not run by hand: scripts/vm/matrix.js packs it into each guest's initramfs.
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "UFFD-VM: init $(uname -r) $(uname -m)"
# Loopback: tests serve and connect on 127.0.0.1 (migration source, sockets).
ifconfig lo 127.0.0.1 up 2>/dev/null || ip link set lo up 2>/dev/null || echo "UFFD-VM: loopback not up"

while read -r m; do
  insmod "/modules/$m" 2>/dev/null || echo "UFFD-VM: insmod $m failed"
done </modules/order

repo=
for arg in $(cat /proc/cmdline); do
  case "$arg" in uffdvm.repo=*) repo="${arg#uffdvm.repo=}" ;; esac
done

fail() {
  echo "UFFD-VM: setup-failed $*"
  poweroff -f
}

opts=trans=virtio,version=9p2000.L,msize=262144
mkdir -p /lower /rw /root /repo-lower
mount -t 9p -o "$opts,ro,cache=loose" hostroot /lower || fail "mount hostroot"
mount -t tmpfs -o size=2g tmpfs /rw || fail "tmpfs"
mkdir -p /rw/upper /rw/work /rw/repo-upper /rw/repo-work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /root || fail "overlay root"
mkdir -p /root/uffd-vm-results /root/proc /root/sys /root/dev /root/tmp
mount -t 9p -o "$opts" results /root/uffd-vm-results || fail "mount results"
mount -t proc proc /root/proc
mount -t sysfs sysfs /root/sys
mount -t devtmpfs devtmpfs /root/dev
mkdir -p /root/dev/shm /root/dev/pts
mount -t tmpfs tmpfs /root/dev/shm
mount -t tmpfs tmpfs /root/tmp
# The checkout goes last, so a checkout under /tmp is not hidden by the tmpfs.
if [ -n "$repo" ]; then
  mount -t 9p -o "$opts,ro,cache=loose" repo /repo-lower || fail "mount repo"
  mkdir -p "/root$repo" || fail "mkdir $repo"
  mount -t overlay overlay -o lowerdir=/repo-lower,upperdir=/rw/repo-upper,workdir=/rw/repo-work "/root$repo" || fail "overlay repo"
fi

echo "UFFD-VM: job-start"
chroot /root /bin/sh /uffd-vm-results/job.sh
echo "UFFD-VM: job-done rc=$?"
umount /root/uffd-vm-results 2>/dev/null
sync
poweroff -f
