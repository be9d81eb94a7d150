#!/bin/sh
# /init of the initramfs tests/vm/run builds for the qemu backend (busybox sh, PID 1).
# 1. insmod the boot modules (/etc/modules.load, dependency order)
# 2. mount the control share (9p tag "ctl") and read its config
# 3. mount the host root (9p "hostroot", read-only) with a tmpfs-backed overlay on top
# 4. mount proc/sys/dev/run and the read-write host dirs (tags rw0..rwN) at their host paths
# 5. chroot and run cmd.sh; stdout/stderr go to virtio serial ports "out"/"err"
# 6. write the exit status to /ctl/rc, sync, poweroff (qemu runs with -no-reboot)
PATH=/bin:/sbin
export PATH

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

die() {
  echo "imaged-vm-init: $*" > /dev/ttyS0
  [ -d /ctl/. ] && echo 125 > /ctl/rc.tmp && mv /ctl/rc.tmp /ctl/rc 2>/dev/null
  sync
  poweroff -f
  sleep 10
}

KVER=$(cat /etc/kver)
while read -r m; do
  insmod "/lib/modules/$KVER/$m" 2>/dev/null || echo "imaged-vm-init: insmod $m failed" > /dev/ttyS0
done < /etc/modules.load

P9="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$P9,cache=none" ctl /ctl || die "cannot mount ctl share"
. /ctl/config
mount -t 9p -o "$P9,ro,cache=loose" hostroot /lower || die "cannot mount hostroot"
# On-demand modules (dm-*, loop, filesystems) live in the cache on the host; the kernel's
# autoloader finds them through busybox modprobe.
if [ -n "$VM_MODDIR" ] && [ -f "/lower$VM_MODDIR/modules.dep" ]; then
  mount --bind "/lower$VM_MODDIR" "/lib/modules/$KVER"
else
  echo "imaged-vm-init: no module tree at $VM_MODDIR" > /dev/ttyS0
fi
# Static nodes (what kmod static-nodes does): opening them autoloads loop / dm_mod.
while read -r mod node spec; do
  case "$mod" in '#'* | '') continue ;; esac
  t=${spec%%[0-9]*}
  mm=${spec#?}
  mkdir -p "/dev/$(dirname "$node")"
  [ -e "/dev/$node" ] || mknod "/dev/$node" "$t" "${mm%%:*}" "${mm##*:}"
done < "/lib/modules/$KVER/modules.devname"
[ -n "$VM_MODULES" ] && { modprobe -a $VM_MODULES || echo "imaged-vm-init: modprobe failed" > /dev/ttyS0; }

mount -t tmpfs -o mode=755 tmpfs /ovl
mkdir -p /ovl/upper /ovl/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work /newroot \
  || die "overlay mount failed"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
# What udev/systemd-tmpfiles would add; bash <(...) needs /dev/fd.
ln -sfn /proc/self/fd $R/dev/fd
ln -sfn /proc/self/fd/0 $R/dev/stdin
ln -sfn /proc/self/fd/1 $R/dev/stdout
ln -sfn /proc/self/fd/2 $R/dev/stderr
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs -o mode=755 tmpfs $R/run
mkdir -p $R/run/imaged-vm $R/run/lock
mount --bind /ctl $R/run/imaged-vm

i=0
for d in $VM_RW; do
  mkdir -p "$R$d"
  mount -t 9p -o "$P9,cache=mmap" "rw$i" "$R$d" || die "cannot mount rw$i at $d"
  i=$((i + 1))
done

OUT=/dev/ttyS0
ERR=/dev/ttyS0
for p in /sys/class/virtio-ports/*; do
  [ -e "$p/name" ] || continue
  case "$(cat "$p/name")" in
    out) OUT=/dev/${p##*/} ;;
    err) ERR=/dev/${p##*/} ;;
  esac
done

[ -n "$VM_VERBOSE" ] && echo "imaged-vm-init: starting command, uptime $(cut -d' ' -f1 /proc/uptime)s" > /dev/ttyS0
chroot $R /bin/bash /run/imaged-vm/cmd.sh < /dev/null > "$OUT" 2> "$ERR"
rc=$?
[ -n "$VM_VERBOSE" ] && echo "imaged-vm-init: command exited $rc, uptime $(cut -d' ' -f1 /proc/uptime)s" > /dev/ttyS0
[ -n "$VM_DMESG" ] && dmesg > /ctl/dmesg.txt
echo $rc > /ctl/rc.tmp && mv /ctl/rc.tmp /ctl/rc
sync
poweroff -f
sleep 10
