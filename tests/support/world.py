# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An emulated EC2 instance on this host, shared by the integration tests, the demo and the benchmark.

Each "EBS volume" is a real filesystem on a loop device (tests/support/loopfs.py) and a real
volume at the local EC2 endpoint (tests/ec2_endpoint), attached to an instance there. The udev link
``nvme-Amazon_Elastic_Block_Store_vol<id>`` that a Nitro instance would have is made in a
directory of our own (passed as ``by_id_dir``), pointing at the loop device. The emulated instance
metadata service answers with the instance's identity.

With ``local=True`` the endpoint does the host side, as EC2 and udev would: the test makes sparse
image files, the endpoint attaches them through its EC2 API to a local instance (losetup, link),
and the test only makes and mounts filesystems on the devices the links point at. Restored
volumes attached later to the same instance become loop devices too, so a restore can run end to
end on this host.
"""

import atexit
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from tests.support import loopfs as _loopfs
from tests.support.loopfs import LoopArray
from tests.support.loopfs import LoopFS
from tests.support.mounts import mounts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")


LINK_PREFIX = "nvme-Amazon_Elastic_Block_Store_"
_LIVE = []  # local instances not cleaned up yet (atexit safety net)


class EmulatedInstance:
    """``n`` loop devices registered as the data volumes of one instance at ``endpoint``.

    ``layout="filesystems"``: one filesystem (``fstype``) per volume. ``layout="array"``: one btrfs
    filesystem striped over all ``n`` volumes (``-d raid0``), the multi-volume array of seed 000.

    ``local=True``: the instance is local at the endpoint (``Endpoint.make_local``): the volumes are
    file-backed (sparse images in a fresh directory under ``image_dir``), attached through the
    endpoint's EC2 API, which makes the loop devices and the by-id links; the filesystems are then
    made and mounted on the linked devices. Cleanup unmounts whatever is mounted from the
    instance's loop devices or under its directory, detaches every local volume of the instance
    through the API (Force if still busy), then detaches directly whatever loop device still holds
    one of its images.
    """

    def __init__(self, endpoint, n=4, size_mb=16, fstype="ext4", az=None, backed=False, image_dir=None,
                 layout="filesystems", local=False):
        if layout not in ("filesystems", "array"):
            raise ValueError("layout is filesystems or array, not %r" % layout)
        self.layout = layout
        self.endpoint = endpoint
        self.n = n
        self.size_mb = size_mb
        self.fstype = fstype
        self.az = az
        self.local = bool(local)
        self.backed = backed or self.local
        self.image_dir = image_dir  # where the loop images live (default /tmp)
        self.filesystems = []
        self.by_id_dir = None
        self.info = None
        self.member_devices = []
        self.workdir = None  # local: images and mountpoints
        self.images = []  # local: the member images, in member order

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.cleanup()
        return False

    def create(self):
        if self.local:
            return self._create_local()
        try:
            if self.layout == "array":
                array = LoopArray(n=self.n, size_mb=max(self.size_mb, 128), workdir=self.image_dir)
                self.filesystems.append(array)
                array.create()
                members = list(zip(array.devices, array.images))
            else:
                for _index in range(self.n):
                    fs = LoopFS(size_mb=self.size_mb, fstype=self.fstype, workdir=self.image_dir)
                    self.filesystems.append(fs)
                    fs.create()
                members = [(fs.device, fs.image) for fs in self.filesystems]
            self.member_devices = [device for device, _image in members]
            volumes = []
            for i, (_device, image) in enumerate(members):
                vol = {"size": 1, "device": "/dev/sd%s" % "fghijklmnopqrstuvwxyz"[i]}
                if self.backed:
                    vol["backing_file"] = image
                volumes.append(vol)
            kwargs = {"volumes": volumes}
            if self.az:
                kwargs["az"] = self.az
            self.info = self.endpoint.create_instance(**kwargs)
            self.by_id_dir = tempfile.mkdtemp(prefix="stillpoint-by-id-")
            for device, vol in zip(self.member_devices, self.info["volumes"]):
                link = "nvme-Amazon_Elastic_Block_Store_%s" % vol["volume_id"].replace("-", "")
                os.symlink(device, os.path.join(self.by_id_dir, link))
            self.endpoint.set_imds(instance_id=self.info["instance_id"], az=self.info["az"])
        except BaseException:
            self.cleanup()
            raise
        return self

    def _create_local(self):
        _LIVE.append(self)
        try:
            array = self.layout == "array"
            size_mb = max(int(self.size_mb), 128) if array else max(int(self.size_mb), _loopfs._MKFS[self.fstype][1])
            self.by_id_dir = tempfile.mkdtemp(prefix="stillpoint-by-id-")
            self.workdir = tempfile.mkdtemp(prefix="stillpoint-local-", dir=self.image_dir or "/tmp")
            volumes = []
            for i in range(self.n):
                image = os.path.join(self.workdir, "member%d.img" % i)
                with open(image, "wb") as handle:
                    handle.truncate(size_mb * 1024 * 1024)
                self.images.append(image)
                volumes.append({"size": max(1, -(-size_mb // 1024)), "device": "/dev/sd%s" % "fghijklmnopqrstuvwxyz"[i],
                                "backing_file": image})
            kwargs = {"volumes": volumes, "local": True, "by_id_dir": self.by_id_dir}
            if self.az:
                kwargs["az"] = self.az
            self.info = self.endpoint.create_instance(**kwargs)
            self.member_devices = [self.wait_link(v["volume_id"]) for v in self.info["volumes"]]
            if array and self.n:
                fs = _AttachedArray(self.member_devices, self.images, os.path.join(self.workdir, "mnt"))
                self.filesystems.append(fs)
                fs.create()
            elif not array:
                for i, (device, image) in enumerate(zip(self.member_devices, self.images)):
                    fs = _AttachedFS(device, image, self.fstype, os.path.join(self.workdir, "mnt%d" % i))
                    self.filesystems.append(fs)
                    fs.create()
            self.endpoint.set_imds(instance_id=self.info["instance_id"], az=self.info["az"])
        except BaseException:
            self.cleanup()
            raise
        return self

    def link_path(self, volume_id):
        """Where the by-id link of ``volume_id`` is (or would be) for this instance."""
        return os.path.join(self.by_id_dir, LINK_PREFIX + volume_id.replace("-", ""))

    def wait_link(self, volume_id, timeout=10.0):
        """Wait until the by-id link of ``volume_id`` resolves to a block device; return that device."""
        link = self.link_path(volume_id)
        deadline = time.monotonic() + timeout
        while True:
            device = os.path.realpath(link) if os.path.islink(link) else None
            if device and os.path.exists(device):
                return device
            if time.monotonic() > deadline:
                raise AssertionError("no by-id link %s -> block device within %ss" % (link, timeout))
            time.sleep(0.02)

    @property
    def instance_id(self):
        return self.info["instance_id"]

    @property
    def mountpoints(self):
        return [fs.mountpoint for fs in self.filesystems]

    @property
    def volume_ids(self):
        return [v["volume_id"] for v in self.info["volumes"]]

    def cleanup(self):
        if self.local:
            return self._cleanup_local()
        errors = []
        for fs in reversed(self.filesystems):
            fs.cleanup()
            errors.extend(fs.cleanup_errors)
        self.filesystems = []
        if self.by_id_dir:
            shutil.rmtree(self.by_id_dir, ignore_errors=True)
            self.by_id_dir = None
        return errors

    def _cleanup_local(self):
        """Unmount, detach through the API (or directly), remove the files; never raises; returns problems."""
        if self in _LIVE:
            _LIVE.remove(self)
        errors = []
        up = self.info is not None and getattr(self.endpoint, "running", True)
        known = []
        if up:
            try:
                known = self.endpoint.local_devices(instance_id=self.instance_id)
            except Exception as e:  # the endpoint may be gone already: its stop released its devices
                if getattr(self.endpoint, "running", True):
                    errors.append("local_devices: %s" % e)
                up = False
        # Only loop devices still bound to this instance's images: after a swap the endpoint released
        # the original members' devices, and their numbers may belong to someone else by now.
        ours = set(os.path.realpath(i) for i in self.images)
        ours |= set(os.path.realpath(d["image"]) for d in known if d.get("image"))
        loops = set(d for d in set(self.member_devices) | set(d["loop_device"] for d in known)
                    if _backing_file(d) in ours)
        for fs in reversed(self.filesystems):
            fs.cleanup()
            errors.extend(fs.cleanup_errors)
        self.filesystems = []
        errors.extend(_unmount_from(loops, self.workdir))
        if up and known:
            errors.extend(self._detach_all(known))
        for image in self.images:
            for device in _loops_of(image):
                proc = _loopfs._run(["losetup", "-d", device], check=False)
                if proc.returncode != 0 and "No such device" not in proc.stderr:
                    errors.append("losetup -d %s: %s" % (device, proc.stderr.strip()))
        if self.by_id_dir:
            shutil.rmtree(self.by_id_dir, ignore_errors=True)
            self.by_id_dir = None
        if self.workdir:
            if any(m == self.workdir or m.startswith(self.workdir + "/") for _s, m, _d in mounts()):
                errors.append("something is still mounted under %s; left in place" % self.workdir)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
        return errors

    def _detach_all(self, known, timeout=5.0):
        """DetachVolume for every local volume of this instance; Force=True for what stays busy."""
        import botocore.exceptions

        errors = []
        client = self.endpoint.client(retries={"total_max_attempts": 3})
        for force in (False, True):
            pending = self.endpoint.local_devices(instance_id=self.instance_id)
            if not pending:
                break
            for dev in pending:
                if not force and dev["state"] not in ("attaching", "attached"):
                    continue  # already detaching or busy
                try:
                    kwargs = {"VolumeId": dev["volume_id"]}
                    if force:
                        kwargs["Force"] = True
                    else:
                        kwargs["InstanceId"] = self.instance_id
                    client.detach_volume(**kwargs)
                except botocore.exceptions.ClientError as e:
                    errors.append("DetachVolume %s%s: %s" % (dev["volume_id"], " (Force)" if force else "", e))
            deadline = time.monotonic() + timeout
            while self.endpoint.local_devices(instance_id=self.instance_id) and time.monotonic() < deadline:
                time.sleep(0.05)
        left = self.endpoint.local_devices(instance_id=self.instance_id)
        if left:
            errors.append("still attached at the endpoint: %s" % ", ".join(d["volume_id"] for d in left))
            return errors
        # released on the host; wait out the endpoint's detaching delay too, so the volumes are
        # available (deletable, attachable) once cleanup returns
        ids = [dev["volume_id"] for dev in known]
        deadline = time.monotonic() + timeout
        while True:
            try:
                busy = [v["VolumeId"] for v in client.describe_volumes(VolumeIds=ids)["Volumes"]
                        if v["State"] != "available"]
            except botocore.exceptions.ClientError as e:  # e.g. a test deleted one meanwhile
                if "InvalidVolume.NotFound" not in str(e):
                    errors.append("DescribeVolumes: %s" % e)
                break
            if not busy:
                break
            if time.monotonic() > deadline:
                errors.append("not available after detach: %s" % ", ".join(busy))
                break
            time.sleep(0.05)
        return errors


class _AttachedFS(LoopFS):
    """A filesystem made on a loop device the endpoint attached. Thawing and unmounting are ours
    (LoopFS.cleanup); the loop device is the endpoint's (detached through its API), the files the
    instance's."""

    def __init__(self, device, image, fstype, mountpoint):
        super().__init__(fstype=fstype, workdir=os.path.dirname(mountpoint))
        self.device = device
        self.image = image
        self.mountpoint = mountpoint

    def __repr__(self):
        return "_AttachedFS(%s on %s at %s)" % (self.fstype, self.device, self.mountpoint)

    def create(self):
        _loopfs._run(_loopfs._MKFS[self.fstype][0] + [self.device], timeout=120)
        os.makedirs(self.mountpoint, exist_ok=True)
        _loopfs._run(["mount", "-t", self.fstype, self.device, self.mountpoint])
        self._mounted = True
        return self

    def cleanup(self):
        device, self.device = self.device, None
        self.workdir = None
        try:
            LoopFS.cleanup(self)  # thaw + unmount only: no device, no workdir to remove
        finally:
            self.device = device


class _AttachedArray(_AttachedFS):
    """One btrfs (``-d raid0 -m raid1``) over the loop devices the endpoint attached."""

    def __init__(self, devices, images, mountpoint):
        super().__init__(devices[0], images[0], "btrfs", mountpoint)
        self.devices = list(devices)
        self.images = list(images)

    def __repr__(self):
        return "_AttachedArray(btrfs raid0 over %s at %s)" % (", ".join(self.devices), self.mountpoint)

    def create(self):
        data, meta = ("raid0", "raid1") if len(self.devices) > 1 else ("single", "dup")
        _loopfs._run(["mkfs.btrfs", "-q", "-f", "-d", data, "-m", meta] + self.devices, timeout=120)
        os.makedirs(self.mountpoint, exist_ok=True)
        _loopfs._run(["mount", "-t", "btrfs", "-o", "device=" + ",device=".join(self.devices), self.devices[0],
                      self.mountpoint])
        self._mounted = True
        return self


def _unmount_from(devices, workdir):
    """Thaw and unmount (deepest first) what is mounted from ``devices`` or under ``workdir``."""
    errors = []
    below = (workdir.rstrip("/") + "/") if workdir else None
    for _round in range(3):  # again for mounts stacked on the same mountpoint
        targets = set(m for s, m, _d in mounts() if s in devices or (below and (m + "/").startswith(below)))
        if not targets:
            break
        for mountpoint in sorted(targets, key=lambda m: m.count("/"), reverse=True):
            _loopfs._run(["fsfreeze", "-u", mountpoint], check=False)  # EINVAL when not frozen: fine
            for attempt in range(10):
                proc = _loopfs._run(["umount", mountpoint], check=False)
                if proc.returncode == 0 or "not mounted" in proc.stderr:
                    break
                time.sleep(0.05 * (attempt + 1))
            else:
                proc = _loopfs._run(["umount", "-l", mountpoint], check=False)
                if proc.returncode != 0:
                    errors.append("umount -l %s: %s" % (mountpoint, proc.stderr.strip()))
    return errors


def _backing_file(device):
    """The file a loop device is bound to now (real path), or None."""
    try:
        with open("/sys/block/%s/loop/backing_file" % os.path.basename(device), encoding="utf-8") as handle:
            return os.path.realpath(handle.read().strip().replace(" (deleted)", ""))
    except OSError:
        return None


def _loops_of(image):
    """The loop devices bound to ``image`` now (``losetup -j``)."""
    proc = _loopfs._run(["losetup", "-j", image], check=False)
    return [line.split(":", 1)[0] for line in proc.stdout.splitlines() if line.startswith("/dev/loop")]


def _cleanup_survivors():
    for inst in list(_LIVE):
        inst.cleanup()


atexit.register(_cleanup_survivors)


def write_data(mountpoints, files_per_mount=1, size=256 * 1024):
    """Random files on each mountpoint, synced; returns ``{path: sha256}``."""
    sums = {}
    for i, mountpoint in enumerate(mountpoints):
        for k in range(files_per_mount):
            path = os.path.join(mountpoint, "data-%d-%d.bin" % (i, k))
            with open(path, "wb") as handle:
                handle.write(os.urandom(size))
            sums[path] = checksum(path)
    os.sync()
    return sums


def checksum(path):
    """sha256 of a file, None if it cannot be read (gone, filesystem not mounted)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def destroy(sums):
    """The disaster: overwrite every file of ``sums``."""
    for path in sums:
        with open(path, "wb") as handle:
            handle.write(b"disaster")
    os.sync()


def own_snapshots(ec2):
    """The ids of every snapshot the endpoint's account owns."""
    return {s["SnapshotId"] for s in ec2.client().describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def wait_for_call(ec2, proc, action, timeout):
    """Until the endpoint has received an ``action`` call (what happened, not a delay assumed); fails when ``proc``
    (the run that makes it) ended first or nothing came within ``timeout`` seconds."""
    t0 = time.monotonic()
    while ec2.received(action) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "no %s arrived" % action
        time.sleep(0.02)


def ansible_env(endpoint, extra=None):
    """Environment for ansible-playbook runs against the local endpoint (never the real AWS)."""
    env = dict(os.environ)
    env.update(endpoint.env())
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_SHOW_CUSTOM_STATS": "true",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "AWS_EC2_METADATA_DISABLED": "false",
    })
    env.update(extra or {})
    return env


def run_playbook(playbook, endpoint, extravars=None, check=False, env=None, timeout=600, inventory=None):
    """Run ``playbook`` (a path) on localhost, or on the hosts of ``inventory`` (a path); return
    (rc, {task name: host result}, raw json). With several hosts a task's entry is the last host's."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook")]
    if inventory:
        cmd += ["-i", inventory, playbook]
    else:
        cmd += ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable, playbook]
    if not os.path.exists(cmd[0]):
        cmd[0] = "ansible-playbook"
    if extravars:
        cmd += ["-e", json.dumps(extravars)]
    if check:
        cmd.append("--check")
    # stdin from /dev/null: an inherited stdin another process of the worker made non-blocking makes ansible refuse
    proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(endpoint, env), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout, check=False)
    # progress lines printed by the action plugin precede the JSON document
    lines = proc.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line == "{"), 0)
    try:
        data = json.loads("\n".join(lines[start:]))
    except ValueError as e:
        raise AssertionError("ansible-playbook output is not JSON (rc=%s)\nstdout:\n%s\nstderr:\n%s"
                             % (proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:])) from e
    results = {}
    for play in data.get("plays", []):
        for task in play.get("tasks", []):
            for _host, res in task.get("hosts", {}).items():
                results[task["task"]["name"]] = res
    data["progress_lines"] = lines[:start]
    _log_task_times(playbook, data)
    return proc.returncode, results, data


def _log_task_times(playbook, data):
    """With STILLPOINT_TASK_LOG set (a file), append one JSON line per task and host: the playbook, the
    task, its action and its wall-clock seconds (where a lab run's time goes)."""
    path = os.environ.get("STILLPOINT_TASK_LOG")
    if not path:
        return
    stamp = "%Y-%m-%dT%H:%M:%S.%fZ"
    with open(path, "a") as handle:
        for play in data.get("plays", []):
            for entry in play.get("tasks", []):
                span = entry["task"].get("duration") or {}
                try:
                    seconds = (datetime.datetime.strptime(span["end"], stamp)
                               - datetime.datetime.strptime(span["start"], stamp)).total_seconds()
                except (KeyError, ValueError):
                    seconds = None
                for host, res in entry.get("hosts", {}).items():
                    handle.write(json.dumps({"playbook": os.path.basename(str(playbook)), "task": entry["task"]["name"],
                                             "host": host, "action": res.get("action"), "s": seconds}) + "\n")


def task(results, name):
    """A task's result from ``run_playbook``'s results, whether or not the callback prefixed a role name."""
    for key, value in results.items():
        if key == name or key.endswith(" : " + name):
            return value
    raise AssertionError("no task %r in %s" % (name, sorted(results)))


def task_hosts(data, name):
    """``{host: result}`` of the task ``name`` (role prefix or not) in ``run_playbook``'s raw json, every host's."""
    for play in data.get("plays", []):
        for entry in play.get("tasks", []):
            if entry["task"]["name"] == name or entry["task"]["name"].endswith(" : " + name):
                return entry["hosts"]
    raise AssertionError("no task %r; %s" % (name, failures(data)))


def failures(data, limit=6000):
    """What went wrong in ``run_playbook``'s raw json, for an assertion message: every failed or unreachable
    task result (task, host, msg, the tail of its stderr/stdout), then the play recap. A run's last host result
    is rarely the one that failed."""
    failed = []
    for play in data.get("plays", []):
        for entry in play.get("tasks", []):
            for host, res in entry.get("hosts", {}).items():
                if res.get("failed") or res.get("unreachable"):
                    failed.append({"task": entry["task"]["name"], "host": host, "msg": res.get("msg"),
                                   "rc": res.get("rc"), "stderr": str(res.get("stderr") or "")[-800:],
                                   "stdout": str(res.get("stdout") or "")[-800:]})
    return ("failed: %s\nrecap: %s" % (json.dumps(failed, indent=1), json.dumps(data.get("stats"))))[-limit:]


def write_playbook(directory, tasks, name="test.yml", vars=None):
    """A one-play playbook on localhost from a list of task dicts (written as JSON, which is YAML)."""
    path = os.path.join(str(directory), name)
    play = {"name": "test", "hosts": "localhost", "gather_facts": False, "tasks": tasks}
    if vars:
        play["vars"] = vars
    with open(path, "w") as handle:
        json.dump([play], handle, indent=1)
    return path
