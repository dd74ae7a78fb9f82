# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's guest image: Debian bookworm by mmdebstrap, booted with -kernel/-initrd.

    python -m tests.lab.image [--cache-dir DIR] [--force] [--kernel default|backports]

The image lives in a cache directory outside the work tree (``$STILLPOINT_LAB_CACHE``, else
``~/.cache/stillpoint-lab``), in a subdirectory named by the hash of every build input (package
list, hook scripts, suite, the host's apt sources, image size). It is rebuilt only when that hash
changes; a lock file keeps two builds of the same inputs from racing.

Kernel variants (``build(kernel=...)``), each with its own cache key:

* ``default``: bookworm's ``linux-image-cloud-amd64`` (6.1); its key is what it always was.
* ``backports``: bookworm-backports' ``linux-image-cloud-amd64`` (6.12 when this was written; a
  kernel >= 6.6 nests FIFREEZE and device-mapper's freeze). The backports mirror is added to
  mmdebstrap's sources. Under qemu 7.2 TCG it oopses at boot with ``-cpu max`` and double-faults
  (in SLUB's ``cmpxchg16b``) with any model that has CX16: boot it with
  ``cpu=KERNELS["backports"]["cpu"]`` (the VM spec's ``cpu`` key; qemu64 plus SSE4.2, minus CX16).

A finished build holds ``base.raw`` (ext4, label ``vmroot``), ``vmlinuz``, ``initrd.img``, the SSH
key pair whose public half is root's ``authorized_keys`` in the image (``id_ed25519``) and
``image.json`` (what was built, from what, and how long it took).

Network inside the guest (systemd-networkd, no default route anywhere):

* management NIC, MAC ``52:54:00:12:34:56``: ``10.0.2.15/24`` on qemu's user network, which
  forwards nothing but the host ports the lab asks for (``restrict=on``);
* link NICs, MAC ``52:54:00:77:00:NN`` (NN = 01..09): ``10.77.0.NN/24``, the VM-to-VM wire.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

SUITE = "bookworm"
IMAGE_SIZE = "2G"
SOURCES = "/etc/apt/sources.list.d/debian.sources"
PACKAGES = [
    "systemd-sysv", "udev", "openssh-server", "python3", "python3-boto3", "lvm2",
    "thin-provisioning-tools", "mdadm", "drbd-utils", "xfsprogs", "util-linux", "kmod", "iproute2",
    "e2fsprogs", "procps", "postgresql-15", "initramfs-tools", "linux-image-cloud-amd64",
]
# kernel variant -> the kernel package (replaces PACKAGES' last entry), extra mirrors for mmdebstrap,
# and the -cpu the kernel boots with under TCG
KERNELS = {
    "default": {"package": "linux-image-cloud-amd64", "mirrors": [], "cpu": "max"},
    "backports": {"package": "linux-image-cloud-amd64/bookworm-backports",
                  "mirrors": ["deb http://deb.debian.org/debian bookworm-backports main"],
                  # -cx16: with CMPXCHG16B, SLUB's per-cpu cmpxchg16b double-faults under qemu 7.2 TCG at boot
                  "cpu": "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,-cx16"},
}
MGMT_MAC = "52:54:00:12:34:56"
MGMT_ADDRESS = "10.0.2.15"
LINK_MAC = "52:54:00:77:00:%02x"
LINK_ADDRESS = "10.77.0.%d"
MAX_LINK_HOSTS = 9
# qemu's user network: the address inside the guest that reaches the host's forwarded ports
HOST_ALIAS = "10.0.2.100"

# Runs before packages are installed: the initrd must be able to mount a virtio-blk root.
SETUP_HOOK = r"""
set -e
mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"
echo MODULES=list > "$1/etc/initramfs-tools/conf.d/stillpoint-lab"
cat > "$1/etc/initramfs-tools/hooks/stillpoint-lab" <<'EOF'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk virtio_net ext4; do force_load "$m"; done
EOF
chmod 755 "$1/etc/initramfs-tools/hooks/stillpoint-lab"
"""

# Runs once everything is installed; $1 is the root, PUBKEY the key to authorize.
CUSTOMIZE_HOOK = r"""
set -e
R="$1"
install -d -m 700 "$R/root/.ssh"
printf '%s\n' "$PUBKEY" > "$R/root/.ssh/authorized_keys"
chmod 600 "$R/root/.ssh/authorized_keys"
echo 'LABEL=vmroot / ext4 rw,noatime,errors=remount-ro 0 1' > "$R/etc/fstab"
mkdir -p "$R/etc/systemd/network"
cat > "$R/etc/systemd/network/10-mgmt.network" <<EOF
[Match]
MACAddress=$MGMT_MAC
[Network]
Address=$MGMT_ADDRESS/24
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
for n in $(seq 1 $MAX_LINK_HOSTS); do
  mac=$(printf "$LINK_MAC" "$n"); addr=$(printf "$LINK_ADDRESS" "$n")
  cat > "$R/etc/systemd/network/20-link$n.network" <<EOF
[Match]
MACAddress=$mac
[Network]
Address=$addr/24
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
done
chroot "$R" systemctl enable systemd-networkd ssh
# Guest CPU is the lab's scarce resource (TCG): nothing runs that no test needs. dpkg-db-backup.timer and
# systemd-tmpfiles-clean.timer fired in every VM resumed from the saved state (its clock moves on by hours; dpkg's
# backup took 5 s of guest CPU), e2scrub_reap 10 s and the gettys of getty-static at every cold boot; the kvm
# modules load because -cpu max offers svm/vmx, for no use.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
         getty@tty1.service serial-getty@ttyS0.service mdmonitor.service mdmonitor-oneshot.timer \
         mdcheck_start.timer mdcheck_continue.timer lvm2-monitor.service systemd-timesyncd.service \
         dpkg-db-backup.timer systemd-tmpfiles-clean.timer e2scrub_reap.service getty-static.service; do
  chroot "$R" systemctl mask "$u" >/dev/null 2>&1 || true
done
printf 'blacklist kvm_amd\nblacklist kvm_intel\nblacklist kvm\n' > "$R/etc/modprobe.d/stillpoint-lab.conf"
chroot "$R" systemctl disable drbd.service >/dev/null 2>&1 || true
# PostgreSQL: the server binaries only; the cluster the package made at install is dropped and nothing starts one
# (tests/lab/test_lab_postgresql.py runs its own initdb on the array, started by pg_ctl as postgres)
for c in "$R"/etc/postgresql/*/*; do
  if [ -d "$c" ]; then chroot "$R" pg_dropcluster "$(basename "$(dirname "$c")")" "$(basename "$c")"; fi
done
chroot "$R" systemctl mask postgresql.service >/dev/null 2>&1 || true
sed -i 's/^#\?UseDNS.*/UseDNS no/; s/^#\?PermitRootLogin.*/PermitRootLogin prohibit-password/' \
  "$R/etc/ssh/sshd_config"
# no resolver, no mirror: the guest reaches nothing but what the lab forwards
rm -f "$R/etc/apt/sources.list" "$R/etc/apt/sources.list.d/"*
: > "$R/etc/resolv.conf"
chroot "$R" update-initramfs -u -k all >/dev/null
"""

EXCLUDES = ["/usr/share/man/*", "/usr/share/locale/*", "/usr/share/doc/*", "/usr/share/info/*"]
BUILD_FILES = ("base.raw", "vmlinuz", "initrd.img", "id_ed25519", "id_ed25519.pub", "image.json")


class ImageError(Exception):
    """The guest image could not be built."""


def default_cache_dir():
    return os.environ.get("STILLPOINT_LAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "stillpoint-lab")


def _variant(kernel):
    if kernel not in KERNELS:
        raise ImageError("unknown kernel variant %r: choose one of %s" % (kernel, ", ".join(sorted(KERNELS))))
    return KERNELS[kernel]


def packages(kernel="default"):
    """The package list of a kernel variant (``default``: PACKAGES as they are)."""
    return PACKAGES[:-1] + [_variant(kernel)["package"]]


def inputs_hash(kernel="default"):
    """Hash of everything the image is made from (a change rebuilds it).

    The default variant hashes exactly what it always did (CI's cache stays valid); another variant
    differs by its package list (its kernel package)."""
    h = hashlib.sha256()
    for part in (SUITE, IMAGE_SIZE, " ".join(packages(kernel)), SETUP_HOOK, CUSTOMIZE_HOOK, " ".join(EXCLUDES),
                 MGMT_MAC, MGMT_ADDRESS, LINK_MAC, LINK_ADDRESS, str(MAX_LINK_HOSTS)):
        h.update(part.encode() + b"\0")
    try:
        with open(SOURCES, "rb") as f:
            h.update(f.read())
    except OSError:
        pass
    return h.hexdigest()[:16]


class Image:
    """A finished build in ``path``."""

    def __init__(self, path):
        self.path = path
        self.base = os.path.join(path, "base.raw")
        self.kernel = os.path.join(path, "vmlinuz")
        self.initrd = os.path.join(path, "initrd.img")
        self.key = os.path.join(path, "id_ed25519")
        with open(os.path.join(path, "image.json")) as f:
            self.info = json.load(f)

    def __repr__(self):
        return "Image(%r)" % self.path


def _complete(path):
    return all(os.path.exists(os.path.join(path, name)) for name in BUILD_FILES)


def _need_tools():
    missing = [t for t in ("mmdebstrap", "mkfs.ext4", "ssh-keygen", "qemu-system-x86_64", "qemu-img")
               if shutil.which(t) is None]
    if missing:
        raise ImageError("missing host tools %s: apt-get install --no-install-recommends qemu-system-x86 "
                         "qemu-utils mmdebstrap e2fsprogs openssh-client" % ", ".join(missing))


def build(cache_dir=None, force=False, log=None, kernel="default"):
    """The image for the current inputs and ``kernel`` variant (see :data:`KERNELS`), built if not
    cached. Returns an :class:`Image`."""
    variant = _variant(kernel)
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    path = os.path.join(cache_dir, inputs_hash(kernel))
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(path) and not force:
            return Image(path)
        _need_tools()
        _build(path, log or sys.stderr, packages(kernel), variant["mirrors"], kernel)
    return Image(path)


def _build(path, log, package_list=None, mirrors=(), kernel="default"):
    package_list = package_list or PACKAGES
    t0 = time.monotonic()
    work = path + ".work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(work)
    rootfs = os.path.join(work, "rootfs")
    key = os.path.join(work, "id_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stillpoint-lab", "-f", key], check=True)
    with open(key + ".pub") as f:
        pubkey = f.read().strip()
    env = dict(os.environ, PUBKEY=pubkey, MGMT_MAC=MGMT_MAC, MGMT_ADDRESS=MGMT_ADDRESS, LINK_MAC=LINK_MAC,
               LINK_ADDRESS=LINK_ADDRESS, MAX_LINK_HOSTS=str(MAX_LINK_HOSTS))
    cmd = ["mmdebstrap", "--variant=minbase", "--mode=root", "--include=" + ",".join(package_list),
           "--aptopt=Acquire::Check-Valid-Until \"false\""]
    cmd += ["--dpkgopt=path-exclude=" + e for e in EXCLUDES]
    cmd += ["--setup-hook=" + SETUP_HOOK, "--customize-hook=" + CUSTOMIZE_HOOK, SUITE, rootfs]
    if os.path.exists(SOURCES):
        cmd.append(SOURCES)
    cmd += list(mirrors)
    log.write("lab image: mmdebstrap %s (%d packages) into %s\n" % (SUITE, len(package_list), rootfs))
    log.flush()
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if r.returncode != 0:
        raise ImageError("mmdebstrap failed (rc %d):\n%s" % (r.returncode, r.stdout[-4000:]))
    t_debootstrap = time.monotonic() - t0
    boot = os.path.join(rootfs, "boot")
    kernels = sorted(n for n in os.listdir(boot) if n.startswith("vmlinuz-"))
    if not kernels:
        raise ImageError("no kernel in %s" % boot)
    version = kernels[-1][len("vmlinuz-"):]
    shutil.copy(os.path.join(boot, "vmlinuz-" + version), os.path.join(work, "vmlinuz"))
    shutil.copy(os.path.join(boot, "initrd.img-" + version), os.path.join(work, "initrd.img"))
    base = os.path.join(work, "base.raw")
    subprocess.run(["truncate", "-s", IMAGE_SIZE, base], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "vmroot", "-d", rootfs, base], check=True)
    shutil.rmtree(rootfs)
    info = {"suite": SUITE, "kernel": version, "variant": kernel, "cpu": KERNELS[kernel]["cpu"],
            "packages": package_list, "inputs": os.path.basename(path),
            "build_seconds": round(time.monotonic() - t0, 1), "mmdebstrap_seconds": round(t_debootstrap, 1)}
    with open(os.path.join(work, "image.json"), "w") as f:
        json.dump(info, f, indent=1)
    os.rename(work, path)
    log.write("lab image: built %s in %.1f s\n" % (path, info["build_seconds"]))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.lab.image", description=__doc__.split("\n", 1)[0])
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--force", action="store_true", help="rebuild even if the cached image is complete")
    p.add_argument("--kernel", default="default", choices=sorted(KERNELS), help="kernel variant")
    p.add_argument("--resume-template", action="store_true",
                   help="also the saved state lab VMs of the default shape resume from (tests/lab/resume.py: one cold boot)")
    args = p.parse_args(argv)
    try:
        image = build(args.cache_dir, force=args.force, kernel=args.kernel)
    except ImageError as e:
        sys.exit("lab image: %s" % e)
    out = dict(image.info, path=image.path)
    if args.resume_template:
        from . import resume  # boots a VM: only when asked
        out["resume_template"], seconds = resume.ensure(image.path, log=sys.stderr)  # seconds: 0.0 when cached
        out["resume_template_seconds"] = round(seconds, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
