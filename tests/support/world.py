# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An emulated EC2 instance on this host, shared by the integration tests, the demo and the benchmark.

Each "EBS volume" is a real filesystem on a loop device (tests/support/loopfs.py) and a real
volume at the local EC2 endpoint (tests/ec2_endpoint), attached to an instance there. The udev link
``nvme-Amazon_Elastic_Block_Store_vol<id>`` that a Nitro instance would have is made in a
directory of our own (passed as ``by_id_dir``), pointing at the loop device. The emulated instance
metadata service answers with the instance's identity.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from tests.support.loopfs import LoopArray
from tests.support.loopfs import LoopFS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")


class EmulatedInstance:
    """``n`` loop devices registered as the data volumes of one instance at ``endpoint``.

    ``layout="filesystems"``: one filesystem (``fstype``) per volume. ``layout="array"``: one btrfs
    filesystem striped over all ``n`` volumes (``-d raid0``), the multi-volume array of seed 000.
    """

    def __init__(self, endpoint, n=4, size_mb=16, fstype="ext4", az=None, backed=False, image_dir=None,
                 layout="filesystems"):
        if layout not in ("filesystems", "array"):
            raise ValueError("layout is filesystems or array, not %r" % layout)
        self.layout = layout
        self.endpoint = endpoint
        self.n = n
        self.size_mb = size_mb
        self.fstype = fstype
        self.az = az
        self.backed = backed
        self.image_dir = image_dir  # where the loop images live (default /tmp)
        self.filesystems = []
        self.by_id_dir = None
        self.info = None

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.cleanup()
        return False

    def create(self):
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
        errors = []
        for fs in reversed(self.filesystems):
            fs.cleanup()
            errors.extend(fs.cleanup_errors)
        self.filesystems = []
        if self.by_id_dir:
            shutil.rmtree(self.by_id_dir, ignore_errors=True)
            self.by_id_dir = None
        return errors


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


def run_playbook(playbook, endpoint, extravars=None, check=False, env=None, timeout=600):
    """Run ``playbook`` (a path) on localhost; return (rc, {task name: host result}, raw json)."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
           "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable, playbook]
    if not os.path.exists(cmd[0]):
        cmd[0] = "ansible-playbook"
    if extravars:
        cmd += ["-e", json.dumps(extravars)]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(endpoint, env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, check=False)
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
    return proc.returncode, results, data


def write_playbook(directory, tasks, name="test.yml", vars=None):
    """A one-play playbook on localhost from a list of task dicts (written as JSON, which is YAML)."""
    path = os.path.join(str(directory), name)
    play = {"name": "test", "hosts": "localhost", "gather_facts": False, "tasks": tasks}
    if vars:
        play["vars"] = vars
    with open(path, "w") as handle:
        json.dump([play], handle, indent=1)
    return path
