#!/bin/bash
# PID 1 of the User-Mode-Linux guest started by tests/vm/run. The guest root is the host root
# over hostfs (read-only, from the kernel command line). imaged_vm_ctl (the control dir) arrives
# as an environment variable from the kernel command line. Same protocol as guest-init-qemu.sh:
# read config, build a throw-away writable root (overlay, tmpfs upper), chroot, run cmd.sh,
# write the exit status to $CTL/rc, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CTL=${imaged_vm_ctl:?}
BB=$(command -v busybox)
log() { echo "imaged-vm-init: $*" > /dev/console; }
finish() {  # $1 = exit status for the host
  echo "$1" > "$CTL/rc.tmp" && mv "$CTL/rc.tmp" "$CTL/rc"
  sync
  "$BB" poweroff -f
  sleep 10
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t hostfs -o "$CTL" none "$CTL" || { log "cannot mount $CTL"; "$BB" poweroff -f; }
. "$CTL/config"
# The UML modules are not under /lib/modules of the (host) root: a modprobe wrapper points
# modprobe at them, and the kernel's autoloader calls it.
echo "$VM_MODPROBE" > /proc/sys/kernel/modprobe
# Static nodes (what kmod static-nodes does): opening them autoloads loop / dm_mod.
while read -r mod node spec; do
  case "$mod" in '#'* | '') continue ;; esac
  t=${spec%%[0-9]*}
  mm=${spec#?}
  mkdir -p "/dev/$(dirname "$node")"
  [ -e "/dev/$node" ] || mknod "/dev/$node" "$t" "${mm%%:*}" "${mm##*:}"
done < "$VM_MODDIR/modules.devname"
[ -n "$VM_MODULES" ] && { "$VM_MODPROBE" -a $VM_MODULES || log "modprobe $VM_MODULES failed"; }

mount -t tmpfs -o mode=755 tmpfs /run  # hides the host's /run in the guest only
mkdir -p /run/vm/upper /run/vm/work /run/vm/root
"$VM_MODPROBE" overlay
mount -t overlay overlay -o lowerdir=/,upperdir=/run/vm/upper,workdir=/run/vm/work /run/vm/root \
  || { log "overlay mount failed"; finish 125; }
R=/run/vm/root
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs -o mode=755 tmpfs $R/run
mkdir -p $R/run/imaged-vm $R/run/lock
mount -t hostfs -o "$CTL" none $R/run/imaged-vm
for d in $VM_RW; do
  mkdir -p "$R$d"
  mount -t hostfs -o "$d" none "$R$d" || { log "cannot mount $d"; finish 125; }
done
# tty1/tty2 are FIFOs to the host's stdout/stderr: raw, so "\n" stays "\n".
stty -F /dev/tty1 raw -echo
stty -F /dev/tty2 raw -echo
[ -n "$VM_VERBOSE" ] && log "starting command, uptime $(cut -d' ' -f1 /proc/uptime)s"
chroot $R /bin/bash /run/imaged-vm/cmd.sh < /dev/null > /dev/tty1 2> /dev/tty2
rc=$?
[ -n "$VM_VERBOSE" ] && log "command exited $rc, uptime $(cut -d' ' -f1 /proc/uptime)s"
[ -n "$VM_DMESG" ] && dmesg > "$CTL/dmesg.txt"
finish $rc
