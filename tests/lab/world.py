# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab world: the strict EC2 endpoint plus qemu VMs that are its instances.

    world = LabWorld("/tmp/labw").start()
    try:
        a = world.instance("vma", volumes=[{"size": 1, "device": "/dev/sdf"}])
        b = world.instance("vmb")
        world.boot()                       # both VMs to SSH, in parallel
        a.vm.ssh("lsblk")                  # the volume is an NVMe disk with serial vol<hex>
        world.inventory("/tmp/labw/hosts.yml")
    finally:
        world.stop()                       # every VM by PID, then the endpoint

Each instance is an EC2 instance at the endpoint (RunInstances, volumes by CreateVolume and
AttachVolume) made a qemu instance (``Endpoint.make_qemu``): its attached volumes are disk images
plugged into the VM as NVMe with the EBS serial, its metadata service is an IMDSv2 emulator of its
own, and from inside the guest ``http://10.0.2.100:8080`` is the EC2 endpoint and
``http://10.0.2.100:80`` the metadata service (``guest_env``).

Also a command line, for molecule's delegated driver and for people:

    python -m tests.lab.world up --dir D --instance vma:2 --instance vmb:0 [--link vma,vmb]
    python -m tests.lab.world down --dir D

``up`` writes ``D/inventory.yml`` and ``D/world.json`` and leaves the endpoint and the VMs
running (their PIDs in ``D``); ``down`` stops them all by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

from tests.ec2_endpoint import Endpoint
from tests.lab import resume
from tests.lab.image import build as build_image
from tests.lab.vm import VM, Lab, LabError

GUEST_EC2_URL = "http://10.0.2.100:8080"
GUEST_IMDS_URL = "http://10.0.2.100:80"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST_ROOT = "/opt/stillpoint"
GUEST_COLLECTION = GUEST_ROOT + "/ansible_collections/stillpoint/snapshots"


def fs_metadata_kib(vm, mount):
    """What the filesystem mounted at ``mount`` may write besides file data, in KiB: its whole journal
    (XFS's internal log or ext4's journal, written in a circle: a busy writer dirties all of it) plus
    1 MiB of headers, inode and btree blocks. A bound for how far DRBD's out-of-sync count may exceed
    the bytes an application appended (ext4 made without lazy init, so nothing is zeroed later)."""
    fstype, source = vm.ssh("findmnt -n -o FSTYPE,SOURCE --mountpoint %s" % mount).stdout.split()
    if fstype == "xfs":
        line = next(ln for ln in vm.ssh("xfs_info %s" % mount).stdout.splitlines() if ln.split("=")[0].strip() == "log")
        fields = dict(kv.rstrip(",").split("=") for kv in line.split() if kv.split("=")[0] in ("bsize", "blocks"))
        return int(fields["bsize"]) * int(fields["blocks"]) // 1024 + 1024
    if fstype == "ext4":
        head = dict(ln.split(":", 1) for ln in vm.ssh("dumpe2fs -h %s 2>/dev/null" % source).stdout.splitlines()
                    if ":" in ln)
        # e.g. "16M" or "1024k"; e2fsprogs 1.47 says "Total journal size", older ones "Journal size"
        size = (head.get("Total journal size") or head["Journal size"]).strip()
        return int(size[:-1]) * {"k": 1, "M": 1024, "G": 1024 * 1024}[size[-1]] + 1024
    raise AssertionError("no metadata bound known for %s at %s" % (fstype, mount))


class LabInstance:
    """An endpoint instance whose machine is a lab VM."""

    def __init__(self, world, name, info, vm):
        self.world = world
        self.name = name
        self.info = info  # Endpoint.create_instance's answer
        self.vm = vm

    @property
    def instance_id(self):
        return self.info["instance_id"]

    @property
    def volume_ids(self):
        return [v["volume_id"] for v in self.info["volumes"]]

    def guest_env(self):
        """Environment for boto3/the collection inside the guest (endpoint and IMDS via guestfwd)."""
        env = dict(self.world.endpoint.env())
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = GUEST_IMDS_URL
        env["AWS_EC2_METADATA_DISABLED"] = "false"
        return env

    def write_aws_credentials(self):
        """The endpoint's credentials and region as root's AWS config in the guest (what an instance profile
        would give), so that modules running there in host mode reach the endpoint."""
        env = self.guest_env()
        self.vm.ssh("mkdir -p /root/.aws && printf '[default]\\naws_access_key_id = %s\\naws_secret_access_key = %s\\n'"
                    " > /root/.aws/credentials && printf '[default]\\nregion = %s\\n' > /root/.aws/config"
                    % (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_DEFAULT_REGION"]))

    def ship_collection(self):
        """Copy the collection's plugins into the guest (``/opt/stillpoint``) so that guest-side
        checks use the product's own code (e.g. its device resolver), not a test copy."""
        if getattr(self, "_shipped", False):
            return
        tar = subprocess.run(["tar", "-C", ROOT, "-cf", "-", "--exclude=__pycache__", "plugins"],
                             stdout=subprocess.PIPE, check=True).stdout
        self.vm.ssh("mkdir -p %s && tar -C %s -xf -" % (GUEST_COLLECTION, GUEST_COLLECTION),
                    input=tar)
        self._shipped = True

    def devices_for_volume(self, volume_id, timeout=30):
        """The guest's ``/dev/...`` disks of EBS volume ``volume_id``, found by the collection's
        resolver (NVMe serial / by-id link), waiting up to ``timeout`` for a hot-plug to show."""
        self.ship_collection()
        script = ("import sys, time; sys.path.insert(0, %r)\n"
                  "from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import DeviceResolver\n"
                  "deadline = time.monotonic() + %d\n"
                  "while True:\n"
                  "    found = DeviceResolver().devices_for_volume(%r)\n"
                  "    if found or time.monotonic() > deadline: break\n"
                  "    time.sleep(0.2)\n"
                  "print(' '.join(found))\n" % (GUEST_ROOT, timeout, volume_id))
        return self.vm.ssh("python3 -", input=script).stdout.split()

    def hostvars(self):
        return {"instance_id": self.instance_id, "lab_ec2_url": GUEST_EC2_URL, "lab_guest_env": self.guest_env()}


class LabWorld:
    def __init__(self, workdir, image=None, pending_seconds=1.0, memory=1024):
        self.workdir = os.path.abspath(str(workdir))
        os.makedirs(self.workdir, exist_ok=True)
        self.image = image
        self.pending_seconds = pending_seconds
        self.memory = memory
        self.endpoint = Endpoint()
        self.lab = None
        self.instances = []
        self.timings = {}

    def start(self, detached=False):
        t0 = time.monotonic()
        self.image = self.image or build_image()
        self.timings["image"] = time.monotonic() - t0
        t0 = time.monotonic()
        resume.ensure(self.image.path, memory=self.memory)  # first boots resume from it (tests/lab/resume.py)
        self.timings["resume template"] = time.monotonic() - t0
        self.lab = Lab(os.path.join(self.workdir, "vms"), self.image, memory=self.memory)
        self.endpoint.start(os.path.join(self.workdir, "endpoint"), pending_seconds=self.pending_seconds,
                            detached=detached)
        return self

    def instance(self, name, volumes=(), az=None, tags=None):
        """A new instance with data ``volumes`` ([{"size" (GiB), "device", "tags"}]) attached; not booted."""
        info = self.endpoint.create_instance(az=az, volumes=list(volumes), tags=dict(tags or {}, Name=name))
        vm = self.lab.vm(name)
        made = self.endpoint.make_qemu(info["instance_id"], vm.spec, boot=False)
        vm.spec = made["spec"]
        vm.__init__(vm.spec)
        inst = LabInstance(self, name, info, vm)
        self.instances.append(inst)
        return inst

    def link(self, a, b):
        return self.lab.link(a.vm, b.vm)

    def boot(self, instances=None, timeout=240):
        """Boot (through the endpoint, which cold-plugs the attached volumes) and wait for SSH."""
        instances = list(instances or self.instances)
        t0 = time.monotonic()
        for inst in instances:
            self.endpoint.make_qemu(inst.instance_id, inst.vm.spec, boot=True)
            inst.vm._t_start = time.monotonic()
        errors = []

        def wait(inst):
            try:
                inst.vm.wait_ssh(timeout)
            except LabError as e:
                errors.append(e)
        threads = [threading.Thread(target=wait, args=(inst,)) for inst in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise LabError("; ".join(str(e) for e in errors))
        self.timings["boot %d VM(s)" % len(instances)] = time.monotonic() - t0
        return {inst.name: inst.vm.boot_seconds for inst in instances}

    def inventory(self, path, group="lab"):
        return self.lab.inventory(path, group=group,
                                  hostvars={inst.name: inst.hostvars() for inst in self.instances})

    def stop(self):
        """Every VM of the lab by PID (even if the endpoint is gone), then the endpoint."""
        try:
            if self.lab is not None:
                self.lab.teardown()
        finally:
            if self.endpoint.running:
                self.endpoint.stop()

    def describe(self):
        return {"workdir": self.workdir, "endpoint": {"url": self.endpoint.url, "pid": self.endpoint.pid,
                                                      "state_dir": self.endpoint.state_dir},
                "instances": [{"name": i.name, "instance_id": i.instance_id, "volumes": i.info["volumes"],
                               "spec": i.vm.spec} for i in self.instances]}


def _up(args):
    world = LabWorld(args.dir)
    world.start(detached=True)
    try:
        made = {}
        for item in args.instance:
            name, n = (item.split(":", 1) + ["0"])[:2]
            devices = ["/dev/sd%s" % c for c in "fghijklmnop"][:int(n or 0)]
            made[name] = world.instance(name, volumes=[{"size": args.size, "device": d} for d in devices])
        for pair in args.link:
            a, b = pair.split(",")
            world.link(made[a], made[b])
        world.boot()
        world.inventory(os.path.join(world.workdir, "inventory.yml"))
        with open(os.path.join(world.workdir, "world.json"), "w") as f:
            json.dump(world.describe(), f, indent=1)
    except BaseException:
        world.stop()
        raise
    # the endpoint outlives this command: detach it from our process group's fate
    world.endpoint._proc = None
    print(json.dumps({"inventory": os.path.join(world.workdir, "inventory.yml"), "timings": world.timings}))


def _down(args):
    path = os.path.join(os.path.abspath(args.dir), "world.json")
    try:
        with open(path) as f:
            described = json.load(f)
    except OSError:
        print("nothing to stop: no %s" % path)
        return
    for inst in described["instances"]:
        vm = VM(inst["spec"])
        vm.kill()
    pid = described["endpoint"]["pid"]
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            ours = b"tests.ec2_endpoint.server" in f.read()
    except OSError:
        ours = False
    if ours:
        os.kill(pid, signal.SIGTERM)
        for _attempt in range(100):
            if not os.path.exists("/proc/%d" % pid):
                break
            time.sleep(0.1)
    os.unlink(path)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.lab.world", description="the lab: EC2 endpoint + qemu VMs")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--dir", required=True)
    up.add_argument("--instance", action="append", default=[], help="NAME[:N data volumes]")
    up.add_argument("--link", action="append", default=[], help="NAME,NAME: a VM-to-VM wire")
    up.add_argument("--size", type=int, default=1, help="GiB per data volume")
    down = sub.add_parser("down")
    down.add_argument("--dir", required=True)
    args = p.parse_args(argv)
    (_up if args.cmd == "up" else _down)(args)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main()
