# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The endpoint's local attach backend moves real blocks on this host.

AttachVolume to a local instance makes a loop device of the volume's file and the by-id link;
DetachVolume removes both, stays busy while the device is mounted (Force detaches anyway); a
snapshot restored to a second local instance holds the first one's data as of the snapshot; a
stopped server (SIGTERM or its parent gone) and ``reset(state=True)`` leave no loop device behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import botocore.exceptions
import pytest

from tests.ec2_endpoint import ROOT, Endpoint
from tests.ec2_endpoint._local import LocalBackend
from tests.support.loopfs import missing_requirements
from tests.support.world import EmulatedInstance
from tests.support.procs import alive

pytestmark = pytest.mark.skipif(missing_requirements() is not None,
                                reason="loop devices unavailable: %s" % missing_requirements())

MiB = 1 << 20
LINK_PREFIX = "nvme-Amazon_Elastic_Block_Store_"


# --------------------------------------------------------------------------- helpers

def link_of(by_id_dir, volume_id):
    return os.path.join(str(by_id_dir), LINK_PREFIX + volume_id.replace("-", ""))


def loops_of(image):
    """Loop devices bound to ``image`` right now, from the kernel (``losetup -j``)."""
    out = subprocess.run(["losetup", "-j", str(image)], stdout=subprocess.PIPE, text=True, check=True).stdout
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


def mounted_sources():
    with open("/proc/self/mountinfo") as f:
        return {line.split(" - ", 1)[1].split()[1]: line.split()[4] for line in f if " - " in line}


def attachment(client, volume_id):
    """(volume state, attachment state or None)."""
    vol = client.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    states = [a["State"] for a in vol["Attachments"]]
    return vol["State"], (states[0] if states else None)


def wait_for(predicate, timeout=5.0, interval=0.03, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(interval)


def image_with(path, size, chunks):
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in chunks.items():
            f.seek(offset)
            f.write(data)
    return str(path)


def read_at(path, offset, size):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def backend_of(ec2, action, volume_id):
    entries = [c for c in ec2.calls(action) if c["params"].get("VolumeId") == volume_id and "backend" in c]
    assert entries, "no %s of %s with a backend record in the call log" % (action, volume_id)
    return entries[-1]["backend"]


# --------------------------------------------------------------------------- attach / detach

def test_attach_makes_loop_device_and_link_with_the_image_content(ec2, tmp_path):
    chunks = {0: b"first block of the volume", 5 * MiB + 17: b"deep inside"}
    image = image_with(tmp_path / "vol.img", 8 * MiB, chunks)
    by_id = tmp_path / "by-id"
    instance = ec2.create_instance(volumes=[])
    ec2.make_local(instance["instance_id"], by_id)
    client = ec2.client()
    volume_id = client.create_volume(Size=1, AvailabilityZone=instance["az"])["VolumeId"]
    ec2.back_volume(volume_id, image)
    link = link_of(by_id, volume_id)
    ec2.delays(attach_seconds=0.4)
    try:
        answer = client.attach_volume(VolumeId=volume_id, InstanceId=instance["instance_id"], Device="/dev/sdf")
        assert answer["State"] == "attaching"
        seen = []
        while True:  # "attached" only once the link exists; the link comes during "attaching"
            state = attachment(client, volume_id)[1]
            has_link = os.path.islink(link)
            seen.append((state, has_link))
            if state == "attached":
                assert has_link
                break
            assert state == "attaching", seen
            assert len(seen) < 200, seen
            time.sleep(0.02)
        assert ("attaching", False) in seen and ("attaching", True) in seen, seen  # the link came meanwhile

        device = os.readlink(link)
        record = backend_of(ec2, "AttachVolume", volume_id)
        assert record["loop_device"] == device and record["image"] == image and record["link"] == link
        assert loops_of(image) == [device]
        for offset, data in chunks.items():  # the device is the image
            assert read_at(device, offset, len(data)) == data
        with open(device, "r+b") as f:  # and writes through it land in the image
            f.seek(3 * MiB)
            f.write(b"written through the loop device")
            f.flush()
            os.fsync(f.fileno())
        assert read_at(image, 3 * MiB, 31) == b"written through the loop device"
        assert [d["loop_device"] for d in ec2.local_devices(instance["instance_id"])] == [device]

        client.detach_volume(VolumeId=volume_id, InstanceId=instance["instance_id"])
        wait_for(lambda: attachment(client, volume_id) == ("available", None), what="available")
        assert not os.path.lexists(link)
        assert loops_of(image) == []
        record = backend_of(ec2, "DetachVolume", volume_id)
        assert record["loop_device"] == device and record["detached"] and not record["lazy"] and not record["busy"]
    finally:
        for device in loops_of(image):
            subprocess.run(["losetup", "-d", device], check=False)


def test_detach_of_a_mounted_volume_stays_busy_until_unmounted(ec2):
    client = ec2.client()
    with EmulatedInstance(ec2, n=1, size_mb=16, local=True) as inst:
        fs = inst.filesystems[0]
        volume_id = inst.volume_ids[0]
        link = inst.link_path(volume_id)
        assert os.readlink(link) == fs.device == inst.info["volumes"][0]["loop_device"]
        assert mounted_sources().get(fs.device) == fs.mountpoint
        assert loops_of(fs.image) == [fs.device]

        client.detach_volume(VolumeId=volume_id, InstanceId=inst.instance_id)
        record = backend_of(ec2, "DetachVolume", volume_id)
        assert record["busy"] and any(fs.mountpoint in why for why in record["users"]), record
        time.sleep(0.6)  # three times the detach delay: a free device would be gone by now
        assert attachment(client, volume_id) == ("in-use", "busy")
        assert os.readlink(link) == fs.device and loops_of(fs.image) == [fs.device]
        with pytest.raises(botocore.exceptions.ClientError) as info:  # still in use: cannot be attached again
            client.attach_volume(VolumeId=volume_id, InstanceId=inst.instance_id, Device="/dev/sdg")
        assert info.value.response["Error"]["Code"] == "IncorrectState"

        subprocess.run(["umount", fs.mountpoint], check=True)
        t0 = time.monotonic()
        wait_for(lambda: attachment(client, volume_id) == ("available", None), what="released after umount")
        assert time.monotonic() - t0 < 2.0
        assert not os.path.lexists(link) and loops_of(fs.image) == []
        assert backend_of(ec2, "DetachVolume", volume_id)["released_at"] is not None
        image, by_id = fs.image, inst.by_id_dir
    assert not os.path.exists(image) and not os.path.exists(by_id)


def test_force_detach_of_a_busy_volume(ec2):
    client = ec2.client()
    with EmulatedInstance(ec2, n=2, size_mb=16, local=True) as inst:
        stuck, forced = inst.filesystems
        stuck_id, forced_id = inst.volume_ids
        # one stuck in busy, then forced; the other forced at once
        client.detach_volume(VolumeId=stuck_id)
        wait_for(lambda: attachment(client, stuck_id)[1] == "busy", what="busy")
        client.detach_volume(VolumeId=stuck_id, Force=True)
        client.detach_volume(VolumeId=forced_id, Force=True)
        for volume_id, fs in ((stuck_id, stuck), (forced_id, forced)):
            wait_for(lambda: attachment(client, volume_id) == ("available", None), what="forced detach")
            assert not os.path.lexists(inst.link_path(volume_id))
            record = backend_of(ec2, "DetachVolume", volume_id)
            assert record["force"] and record["lazy"] and record["detached"], record
            # still mounted: the kernel keeps the loop device until the last user goes (autoclear)
            assert mounted_sources().get(fs.device) == fs.mountpoint
            with open("/sys/block/%s/loop/autoclear" % os.path.basename(fs.device)) as f:
                assert f.read().strip() == "1"
        images = list(inst.images)
    assert all(loops_of(image) == [] for image in images)


# --------------------------------------------------------------------------- snapshot -> restore -> attach

def test_snapshot_restored_to_a_second_local_instance_holds_the_data_as_of_the_snapshot(ec2, tmp_path):
    client = ec2.client()
    mnt = tmp_path / "restored"
    mnt.mkdir()
    with EmulatedInstance(ec2, n=1, size_mb=16, local=True) as first, \
            EmulatedInstance(ec2, n=0, local=True) as second:
        fs = first.filesystems[0]
        data = os.path.join(fs.mountpoint, "data.txt")
        with open(data, "w") as f:
            f.write("as of the snapshot\n")
        ec2.pending(0, calls=1)
        fs.freeze()
        try:
            snapshot_id = client.create_snapshot(VolumeId=first.volume_ids[0])["SnapshotId"]
        finally:
            fs.thaw()
        with open(data, "w") as f:
            f.write("overwritten after the snapshot\n")
            f.flush()
            os.fsync(f.fileno())

        restored = client.create_volume(SnapshotId=snapshot_id, AvailabilityZone=second.info["az"])["VolumeId"]
        image = ec2.volume_file(restored)
        assert image and image not in (fs.image, ec2.snapshot_file(snapshot_id))  # a copy of its own
        client.attach_volume(VolumeId=restored, InstanceId=second.instance_id, Device="/dev/sdf")
        wait_for(lambda: attachment(client, restored) == ("in-use", "attached"), what="restored attached")
        device = second.wait_link(restored)
        assert backend_of(ec2, "AttachVolume", restored)["loop_device"] == device
        subprocess.run(["mount", "-o", "ro", device, str(mnt)], check=True)
        try:
            with open(mnt / "data.txt") as f:
                assert f.read() == "as of the snapshot\n"
            with open(data) as f:
                assert f.read() == "overwritten after the snapshot\n"
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    # the second instance's cleanup detached the volume it was given later, through the API
    assert attachment(client, restored) == ("available", None)
    assert loops_of(image) == []


def test_array_layout_makes_btrfs_over_the_attached_devices(ec2):
    with EmulatedInstance(ec2, n=2, layout="array", local=True) as inst:
        array = inst.filesystems[0]
        assert array.devices == inst.member_devices
        assert [os.readlink(inst.link_path(v)) for v in inst.volume_ids] == inst.member_devices
        assert mounted_sources().get(inst.member_devices[0]) == array.mountpoint
        with open(os.path.join(array.mountpoint, "f"), "wb") as f:
            f.write(b"x" * MiB)
        images, mountpoint = list(inst.images), array.mountpoint
    assert all(loops_of(image) == [] for image in images)
    assert mountpoint not in mounted_sources().values()


def test_local_instance_that_fails_half_built_leaves_nothing_behind(ec2, monkeypatch):
    from tests.support import world

    made = []
    real_create = world._AttachedFS.create

    def create_then_fail(fs):
        real_create(fs)
        made.append(fs)
        if len(made) == 2:  # the second filesystem is mounted, then the build fails
            raise RuntimeError("injected failure after mounting %s" % fs.mountpoint)
        return fs

    monkeypatch.setattr(world._AttachedFS, "create", create_then_fail)
    inst = EmulatedInstance(ec2, n=3, size_mb=16, local=True)
    with pytest.raises(RuntimeError, match="injected failure"):
        inst.create()
    assert len(made) == 2 and inst.filesystems == []
    assert all(loops_of(image) == [] for image in inst.images)
    assert not any(fs.mountpoint in mounted_sources().values() for fs in made)
    assert inst.by_id_dir is None and inst.workdir is None
    client = ec2.client()
    assert [attachment(client, v) for v in inst.volume_ids] == [("available", None)] * 3
    assert ec2.local_devices(inst.instance_id) == []


# --------------------------------------------------------------------------- server stop, reset

def _backed_volumes(tmp_path, n, prefix):
    return [{"size": 1, "device": "/dev/sd%s" % "fgh"[i],
             "backing_file": image_with(tmp_path / ("%s%d.img" % (prefix, i)), 4 * MiB, {0: b"%d" % i})}
            for i in range(n)]


def test_reset_and_server_stop_release_every_loop_device(tmp_path):
    by_id = tmp_path / "by-id"
    ep = Endpoint().start(tmp_path / "endpoint", pending_seconds=0.2)
    images = []
    try:
        made = ep.create_instance(volumes=_backed_volumes(tmp_path, 2, "a"), local=True, by_id_dir=by_id)
        images += [v["backing_file"] for v in made["volumes"]]
        assert all(loops_of(v["backing_file"]) == [v["loop_device"]] for v in made["volumes"])
        ep.reset(state=True)
        assert all(loops_of(image) == [] for image in images) and os.listdir(by_id) == []

        made = ep.create_instance(volumes=_backed_volumes(tmp_path, 2, "b"), local=True, by_id_dir=by_id)
        images += [v["backing_file"] for v in made["volumes"]]
        # one more, caught in the middle of "attaching" (loop device made, link not yet)
        client = ep.client()
        extra = client.create_volume(Size=1, AvailabilityZone=made["az"])["VolumeId"]
        images.append(ep.back_volume(extra, image_with(tmp_path / "c.img", 4 * MiB, {0: b"c"})))
        ep.delays(attach_seconds=30)
        client.attach_volume(VolumeId=extra, InstanceId=made["instance_id"], Device="/dev/sdh")
        assert attachment(client, extra)[1] == "attaching"
        assert all(len(loops_of(image)) == 1 for image in images[2:])
    finally:
        ep.stop()
        leftover = {image: loops_of(image) for image in images}
        for devices in leftover.values():
            for device in devices:
                subprocess.run(["losetup", "-d", device], check=False)
    assert leftover == {image: [] for image in images}
    assert os.listdir(by_id) == []


def test_server_whose_parent_dies_releases_its_loop_devices(tmp_path):
    """The server runs under a shell (its parent, --parent-pid); SIGKILL the shell: the server
    notices, stops, and detaches its loop devices."""
    state = tmp_path / "endpoint"
    state.mkdir()
    ready = state / "ready.json"
    server = [sys.executable, "-m", "tests.ec2_endpoint.server", "--state-dir", str(state), "--ready-file",
              str(ready), "--pending-seconds", "0.2"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    log = open(state / "server.log", "wb")
    shell = subprocess.Popen(["sh", "-c", '"$@" --parent-pid $$ & wait', "sh"] + server, cwd=ROOT, env=env,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    pid = None
    images = []
    try:
        wait_for(ready.exists, timeout=30, what="server ready")
        info = json.loads(ready.read_text())
        pid = info["pid"]
        ep = Endpoint()
        ep.url, ep.control_url = info["url"], info["control_url"]
        made = ep.create_instance(volumes=_backed_volumes(tmp_path, 1, "p"), local=True, by_id_dir=tmp_path / "by-id")
        images = [v["backing_file"] for v in made["volumes"]]
        assert loops_of(images[0]) == [made["volumes"][0]["loop_device"]]
        shell.kill()
        shell.wait()
        wait_for(lambda: not alive(pid), timeout=10, what="server exit after its parent died")
        pid = None
        assert loops_of(images[0]) == [] and os.listdir(tmp_path / "by-id") == []
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
        log.close()
        for image in images:
            for device in loops_of(image):
                subprocess.run(["losetup", "-d", device], check=False)


def test_a_later_server_on_the_same_state_dir_releases_what_a_killed_one_left(tmp_path):
    """The registry (``<state>/local/loops.json``) outlives a SIGKILLed server: the next World
    releases those loop devices, and only while they are still bound to the recorded image."""
    image = image_with(tmp_path / "left.img", 4 * MiB, {0: b"left behind"})
    directory = tmp_path / "state" / "local"
    killed = LocalBackend(directory)
    rec = killed.attach("vol-0123456789abcdef0", "i-0123456789abcdef0", image, tmp_path / "by-id")
    try:
        killed.link(rec)
        assert loops_of(image) == [rec["device"]] and os.readlink(rec["link"]) == rec["device"]
        done = LocalBackend(directory).recover()
        assert [d["device"] for d in done if d["detached"]] == [rec["device"]]
        assert loops_of(image) == [] and not os.path.lexists(rec["link"])
        assert LocalBackend(directory).recover() == []
    finally:
        for device in loops_of(image):
            subprocess.run(["losetup", "-d", device], check=False)
