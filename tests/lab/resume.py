# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot a lab VM from a saved guest state instead of a cold boot.

A cold boot to SSH takes 26-30 s under TCG; most lab VMs are only provisioned by it. So the lab
boots one VM cold once per image and machine shape (``-cpu``, memory, vCPUs), saves its whole state
after boot (QMP ``stop`` + ``migrate`` to a file: RAM and devices) beside a copy-on-write root
disk frozen at that instant, and every later *first* boot of a VM of that shape starts qemu with
``-incoming`` from that file on an overlay of that root disk: the guest goes on from where the
template stopped, a few seconds instead of thirty.

What differs between the template and a VM is put right before ``VM.start`` returns (``adopt``):

* links and EBS volumes are not in the template (a device's MAC and an NVMe serial are part of the
  saved state): they are hot-plugged (QMP ``netdev_add``/``device_add``, ``blockdev-add``/
  ``device_add nvme,serial=vol...``) - exactly what AttachVolume does to a running lab VM - and the
  guest is waited for until it sees each disk by serial and each link address;
* the hostname (DRBD and CLUSTERPRO name nodes by ``uname -n``), set as systemd would from the
  kernel command line of a cold boot;
* the clock: the guest resumes at the template's time; it is set to the host's;
* the kernel's random generator: two VMs resumed from one state would draw the same numbers (DRBD
  generation identifiers, UUIDs), so the harness feeds host randomness and forces a reseed
  (``RNDRESEEDCRNG``). Every VM also has a ``vmgenid`` device, for guest kernels with its driver
  (bookworm's cloud kernel has none: ``CONFIG_VIRT_DRIVERS`` is not set).

Only a VM's first start resumes; a later start (StartInstances after StopInstances) is a real cold
boot of its disk. Anything the resume cannot do (no template, qemu refuses the state) falls back to
a cold boot; ``VM.boot_mode`` says which happened. The template lives beside the image in its
cache directory, keyed by everything the saved state depends on, and is built under a lock.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import time

from .qmp import QMP, QMPError

# A change in what the saved state holds (the device layout of VM.command) bumps this.
LAYOUT = "pc/virtio-blk root/virtio-net mgmt/vmgenid/v1"
STATE = "state.bin"
ROOT = "root.qcow2"


class ResumeError(Exception):
    """The saved state could not be made or used."""


@functools.lru_cache(maxsize=None)
def qemu_version():
    """qemu's version line (part of the template key; asked once per process)."""
    out = subprocess.run(["qemu-system-x86_64", "--version"], stdout=subprocess.PIPE, text=True, check=False).stdout
    return out.splitlines()[0] if out else "?"


def template_key(image_path, cpu, memory, smp):
    h = hashlib.sha256()
    for part in (os.path.basename(os.path.abspath(image_path)), cpu or "max", str(memory), str(smp), LAYOUT,
                 qemu_version()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


def template_dir(image_path, cpu=None, memory=1024, smp=1):
    return os.path.join(image_path, "resume-" + template_key(image_path, cpu, memory, smp))


def find(spec):
    """The template directory for a VM spec, if one is complete."""
    path = template_dir(spec["image"], spec.get("cpu"), spec.get("memory", 1024), spec.get("smp", 1))
    return path if os.path.exists(os.path.join(path, "template.json")) else None


def ensure(image_path, cpu=None, memory=1024, smp=1, log=None):
    """Build the template of this machine shape if it is not there (one cold boot, then the save).
    Returns ``(path, seconds spent building or 0.0)``."""
    from .vm import VM, free_port  # vm imports this module
    path = template_dir(image_path, cpu, memory, smp)
    with open(os.path.join(image_path, ".resume.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(path, "template.json")):
            return path, 0.0
        t0 = time.monotonic()
        work = path + ".work"
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        vm = VM({"name": "sp-template", "dir": work, "image": image_path, "ssh_port": free_port(),
                 "memory": memory, "smp": smp, "cpu": cpu, "links": [], "forwards": []})
        try:
            vm.start()
            vm.wait_ssh()
            # quiet guest: everything on disk, no SSH session left open in the user network's state
            vm.ssh("sync; systemctl is-system-running --wait >/dev/null 2>&1 || true; sync")
            time.sleep(2)
            with vm.qmp() as q:
                q.execute("stop")
                q.execute("migrate-set-parameters", **{"max-bandwidth": 8 << 30})
                q.execute("migrate", uri="exec:cat > %s" % os.path.join(work, STATE))
                deadline = time.monotonic() + 300
                while True:
                    status = q.execute("query-migrate").get("status")
                    if status == "completed":
                        break
                    if status in ("failed", "cancelled") or time.monotonic() > deadline:
                        raise ResumeError("saving the template's state: migration %s" % status)
                    time.sleep(0.2)
        finally:
            vm.quit(10)
        os.rename(vm.overlay, os.path.join(work, ROOT))
        # the frozen root is a backing file from now on: never written again
        os.chmod(os.path.join(work, ROOT), 0o444)
        info = {"key": os.path.basename(path), "cpu": cpu, "memory": memory, "smp": smp, "layout": LAYOUT,
                "qemu": qemu_version(), "cold_boot_seconds": round(vm.boot_seconds or 0, 1),
                "state_bytes": os.path.getsize(os.path.join(work, STATE)),
                "build_seconds": round(time.monotonic() - t0, 1)}
        with open(os.path.join(work, "template.json"), "w") as f:
            json.dump(info, f, indent=1)
        for name in os.listdir(work):
            if name not in (STATE, ROOT, "template.json"):
                os.unlink(os.path.join(work, name))
        os.rename(work, path)
        if log:
            log.write("lab resume template %s built in %.1f s\n" % (path, info["build_seconds"]))
        return path, time.monotonic() - t0


def incoming_args(template):
    return ["-incoming", "exec:cat %s" % os.path.join(template, STATE)]


def wait_resumed(vm, timeout=120):
    """Wait until the incoming migration is loaded and the guest runs again."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not vm.running():
            raise ResumeError("qemu exited while loading the saved state")
        try:
            with vm.qmp() as q:
                last = q.execute("query-status").get("status")
                if last == "running":
                    return
                if last in ("paused", "postmigrate", "prelaunch"):
                    mig = q.execute("query-migrate").get("status")
                    if mig in ("completed", None):
                        q.execute("cont")
                        continue
                    if mig == "failed":
                        raise ResumeError("loading the saved state failed")
        except QMPError:
            pass
        time.sleep(0.2)
    raise ResumeError("the guest did not resume within %d s (status %s)" % (timeout, last))


def hot_plug(vm, links, disks, link_mac, disk_node):
    """Plug what the template does not have: link NICs (index and UDP ports from the spec) and the
    VM's EBS disks (``[{node, file, serial, id}]``), in that order."""
    with QMP(vm.lab_qmp_path) as q:
        for i, link in enumerate(links):
            q.execute("netdev_add", type="socket", id="link%d" % i, udp="127.0.0.1:%d" % link["peer_port"],
                      localaddr="127.0.0.1:%d" % link["local_port"])
            q.execute("device_add", driver="virtio-net-pci", netdev="link%d" % i, mac=link_mac % link["index"],
                      id="linknic%d" % i)
        for disk in disks:
            q.execute("blockdev-add", **disk_node(disk["node"], disk["file"]))
            q.execute("device_add", driver="nvme", drive=disk["node"], serial=disk["serial"], id=disk["id"])


ADOPT = r"""
set -e
# kernel warnings (an NVMe timeout, a hung task) reach the serial console too: console.log explains a hang
dmesg -n 5
hostname {name}
echo {name} > /etc/hostname
date -s @{now} >/dev/null
printf '%s' {seed} | base64 -d > /dev/urandom
python3 -c 'import fcntl, os; fd = os.open("/dev/urandom", os.O_WRONLY); fcntl.ioctl(fd, 0x5207)'
deadline=$(( $(date +%s) + {timeout} ))
for serial in {serials}; do
  until ls /dev/disk/by-id/nvme-*_"$serial" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || {{ echo "no NVMe disk with serial $serial"; exit 1; }}
    sleep 0.2
  done
done
for addr in {addresses}; do
  until ip -4 -o addr show | grep -q " $addr/"; do
    [ "$(date +%s)" -lt "$deadline" ] || {{ echo "no link address $addr"; exit 1; }}
    sleep 0.2
  done
done
udevadm settle -t 30 || true
"""


def adopt(vm, disks, addresses, timeout=60):
    """The guest takes on this VM's identity: hostname, clock, fresh randomness, and sees its disks
    and link addresses before the boot counts as done."""
    script = ADOPT.format(name=vm.name, now="%.3f" % time.time(), seed=base64.b64encode(os.urandom(64)).decode(),
                          timeout=int(timeout), serials=" ".join(d["serial"] for d in disks) or "",
                          addresses=" ".join(addresses) or "")
    vm.ssh("sh -s", input=script, timeout=timeout + 30)
