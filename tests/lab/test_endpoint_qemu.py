# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The EC2 endpoint's qemu backend: an instance is a real VM, EBS calls move real blocks.

One VM, booted once by the endpoint (``make_qemu``); boto3 talks to the endpoint over HTTP. In
order: the guest reaches its own IMDSv2 and the endpoint through the forwards; AttachVolume hot-
plugs an NVMe disk with the EBS serial; CreateSnapshot while a guest writer keeps writing is a
qemu backup job, ``pending`` with real progress, holding the disk as of the call (a block the
guest overwrites after the call keeps its old content in the snapshot); DetachVolume unplugs;
a volume made from the snapshot, attached, reads the pattern back in the guest;
StopInstances/StartInstances power the VM off (its PID gone) and boot it with the volume
cold-plugged. Timings of each step are printed and go to the lab timing table.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time
import types

import pytest

from tests.ec2_endpoint import Endpoint
from tests.lab.vm import VM, Lab
from tests.support.procs import alive

pytestmark = pytest.mark.lab

MiB = 1 << 20
GiB = 1 << 30
PATTERN_AT = 512  # MiB: written before the snapshot
LATE_AT = 768  # MiB: written after the CreateSnapshot call, while the job still runs
BACKUP_SPEED = 128 * MiB  # bytes/s: 1 GiB takes 8 s, so the job is seen pending with rising progress
CRAWL_SPEED = 1 * MiB  # bytes/s while the guest makes its late write: the job stays well behind LATE_AT
BY_ID = "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_%s"
ZEROS_SHA = hashlib.sha256(bytes(MiB)).hexdigest()
MODULE = "test_endpoint_qemu"

STATE = {}  # what one test leaves for the next (they run in file order)
TIMINGS = {}


def timing(phase, seconds):
    TIMINGS[phase] = round(seconds, 2)
    print("%s: %s: %.2f s" % (MODULE, phase, seconds))
    try:
        from tests.lab.conftest import record_timing
    except ImportError:
        return
    record_timing(MODULE, phase, seconds)


def pattern(tag):
    """1 MiB of ASCII (``VM.ssh`` feeds text) that names what it is."""
    unit = ("%s-%s|" % (tag, secrets.token_hex(12))).encode()
    return (unit * (MiB // len(unit) + 1))[:MiB]


def serial_of(volume_id):
    return volume_id.replace("-", "")


def need(*keys):
    missing = [k for k in keys if k not in STATE]
    if missing:
        pytest.skip("an earlier step of this module failed (no %s)" % ", ".join(missing))
    return [STATE[k] for k in keys]


def wait_for(predicate, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out after %.0f s waiting for %s" % (timeout, what)
        time.sleep(interval)


def attachment_state(ec2, volume_id):
    vol = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    return vol["State"], ([a["State"] for a in vol["Attachments"]] or [None])[0]


def guest_sha(vm, device, offset_mib):
    out = vm.ssh("dd if=%s bs=1M skip=%d count=1 iflag=direct status=none | sha256sum" % (device, offset_mib)).stdout
    return out.split()[0]


def file_sha(path, offset_mib):
    with open(path, "rb") as f:
        f.seek(offset_mib * MiB)
        return hashlib.sha256(f.read(MiB)).hexdigest()


def appear(vm, path, timeout=90):
    """Start a guest-side wait for ``path`` (connected before returning, so SSH's start-up is not
    timed); ``.communicate()`` ends once it exists (prints ``seen``) or after ``timeout``."""
    proc = vm.popen("echo ready; i=0; while [ ! -e %s ] && [ $i -lt %d ]; do sleep 0.05; i=$((i+1)); done; "
                    "[ -e %s ] && echo seen" % (path, timeout * 20, path))
    assert proc.stdout.readline().strip() == "ready"
    return proc


def attach_and_see(lab, volume_id, device):
    """AttachVolume; returns (seconds until the guest has the by-id link, attachment states seen: the call's
    answer, then each change DescribeVolumes shows)."""
    waiter = appear(lab.vm, BY_ID % serial_of(volume_id))
    t0 = time.monotonic()
    answer = lab.ec2.attach_volume(VolumeId=volume_id, InstanceId=lab.instance_id, Device=device)
    # the call's own answer is the first state the API reports: on a quiet host the hot-plug (plus the endpoint's
    # 0.2 s --attach-seconds) can be over before the first DescribeVolumes (1 run in 30 saw only "attached")
    seen = [answer["State"]]

    def attached():
        state = attachment_state(lab.ec2, volume_id)[1]
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == "attached"
    wait_for(attached, 60, "%s attached" % volume_id)
    out = lab.vm.communicate(waiter, 120)[0]
    visible = time.monotonic() - t0
    assert "seen" in out, "the guest never saw %s" % (BY_ID % serial_of(volume_id))
    return visible, seen


# --------------------------------------------------------------------------- the VM

@pytest.fixture(scope="module")
def lab(tmp_path_factory, lab_image):
    image = lab_image  # the session's image and its resume template (conftest.py)
    workdir = tmp_path_factory.mktemp("endpoint_qemu")
    endpoint = Endpoint()
    vm = None
    others = []  # VMs a test leaves for the endpoint's stop to kill
    try:
        endpoint.start(str(workdir / "endpoint"), pending_seconds=0.5)
        made = endpoint.create_instance()
        spec = Lab(str(workdir / "vms"), image).vm("epq").spec
        t0 = time.monotonic()
        result = endpoint.make_qemu(made["instance_id"], spec, boot=True)
        vm = VM(result["spec"])
        vm.wait_ssh()
        timing("boot by make_qemu (to SSH)", time.monotonic() - t0)
        yield types.SimpleNamespace(endpoint=endpoint, ec2=endpoint.client(), instance_id=made["instance_id"],
                                    az=made["az"], vm=vm, made=result, others=others)
    finally:
        endpoint.stop()  # kills the VMs it booted, by PID
        left = [(v.name, v.pid) for v in [vm] + others if v is not None and v.pid is not None]
        for v in [vm] + others:
            if v is not None:
                v.kill()  # by the VM's own pidfile
        print("%s timings: %s" % (MODULE, json.dumps(TIMINGS)))
        assert not left, "the endpoint's stop left VMs running: %s" % left


# --------------------------------------------------------------------------- the steps

def test_guest_reaches_its_imds_and_the_endpoint(lab):
    """make_qemu's forwards: 10.0.2.100:80 is this instance's IMDSv2, 10.0.2.100:8080 the endpoint."""
    assert lab.made["imds_url"] == "http://10.0.2.100:80" and lab.made["ec2_url"] == "http://10.0.2.100:8080"
    forwards = {f["guest_port"]: f["host_port"] for f in lab.made["spec"]["forwards"]}
    assert forwards[80] == lab.made["imds_port"] and forwards[8080] == int(lab.endpoint.url.rsplit(":", 1)[1])
    script = (
        "import json, urllib.request as u\n"
        "t = u.urlopen(u.Request('http://10.0.2.100:80/latest/api/token', method='PUT',"
        " headers={'X-aws-ec2-metadata-token-ttl-seconds': '60'}), timeout=20).read().decode()\n"
        "h = {'X-aws-ec2-metadata-token': t}\n"
        "iid = u.urlopen(u.Request('http://10.0.2.100:80/latest/meta-data/instance-id', headers=h), timeout=20).read().decode()\n"
        "st = json.load(u.urlopen(u.Request('http://10.0.2.100:8080/_stillpoint/status', data=b'{}', method='POST',"
        " headers={'Content-Type': 'application/json'}), timeout=20))\n"
        "print(json.dumps({'instance_id': iid, 'endpoint_pid': st['pid']}))\n")
    seen = json.loads(lab.vm.ssh("python3 -", input=script).stdout)
    assert seen == {"instance_id": lab.instance_id, "endpoint_pid": lab.endpoint.pid}


def test_attach_hot_plugs_an_nvme_disk_with_the_ebs_serial(lab):
    volume_id = lab.ec2.create_volume(AvailabilityZone=lab.az, Size=1)["VolumeId"]
    visible, states = attach_and_see(lab, volume_id, "/dev/sdf")
    timing("AttachVolume 1 GiB -> disk visible in the guest", visible)
    assert states[0] == "attaching" and states[-1] == "attached", states
    serial = serial_of(volume_id)
    dev = lab.vm.ssh("readlink -f %s" % (BY_ID % serial)).stdout.strip()
    assert dev.startswith("/dev/nvme")
    assert lab.vm.ssh("cat /sys/block/%s/device/serial" % os.path.basename(dev)).stdout.strip() == serial
    assert int(lab.vm.ssh("blockdev --getsize64 %s" % dev).stdout) == GiB
    backend = lab.endpoint.calls("AttachVolume")[-1]["backend"]
    assert backend["kind"] == "qemu" and backend["op"] == "attach" and backend["hotplug"] is True
    assert backend["serial"] == serial and backend["device_id"] and backend["node"] and backend["vm"] == lab.vm.name
    image = lab.endpoint.volume_file(volume_id)
    assert image == backend["file"] and os.path.getsize(image) == GiB
    STATE["volume"] = volume_id


def test_snapshot_is_a_backup_job_at_the_point_of_the_call(lab):
    (volume_id,) = need("volume")
    dev = BY_ID % serial_of(volume_id)
    early, late = pattern("before-the-snapshot"), pattern("after-the-call")
    lab.vm.ssh("dd of=%s bs=1M seek=%d count=1 iflag=fullblock oflag=direct conv=notrunc status=none"
               % (dev, PATTERN_AT), input=early.decode())
    writer = lab.vm.popen(
        "rm -f /run/stop-writer; n=0; echo 0 > /dev/shm/writes; "
        "while [ ! -e /run/stop-writer ] && [ $n -lt 3000 ]; do "
        "dd if=/dev/urandom of=%s bs=1M count=4 seek=$(( (n %% 15) * 4 )) oflag=direct conv=notrunc status=none || exit 1; "
        "n=$((n+1)); echo $n > /dev/shm/writes; done" % dev)
    try:
        def writes():
            return int(lab.vm.ssh("cat /dev/shm/writes", check=False).stdout.strip() or 0)
        # a wait, not a deadline: a TCG guest on a loaded host can take minutes for its first 8 MiB
        wait_for(lambda: writes() >= 2, 600, "the guest writer to start", interval=0.3)
        lab.endpoint.qemu_backup_speed(BACKUP_SPEED)
        before = writes()
        t0 = time.monotonic()
        snap = lab.ec2.create_snapshot(VolumeId=volume_id)
        snapshot_id = snap["SnapshotId"]
        assert snap["State"] == "pending"
        # the job crawls while the guest writes (a slow guest on a loaded host cannot let the job pass
        # the block first: the test checks where the job was, it does not assume it)
        crawl = lab.endpoint.qemu_backup_speed(CRAWL_SPEED)
        assert snapshot_id in crawl["running_jobs"], crawl
        # the guest overwrites a block the job has not copied yet: the snapshot keeps the old content
        lab.vm.ssh("dd of=%s bs=1M seek=%d count=1 iflag=fullblock oflag=direct conv=notrunc status=none"
                   % (dev, LATE_AT), input=late.decode())
        late_progress = lab.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["Progress"]
        lab.endpoint.qemu_backup_speed(BACKUP_SPEED)
        seen = []

        def completed():
            s = lab.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
            seen.append((s["State"], int(s["Progress"].rstrip("%"))))
            assert s["State"] != "error", s.get("StateMessage")
            return s["State"] == "completed"
        wait_for(completed, 120, "%s completed" % snapshot_id, interval=0.2)
        took = time.monotonic() - t0
        after = writes()
    finally:
        stop = lab.vm.ssh("touch /run/stop-writer", check=False)
        # a stop signal that did not arrive leaves the writer running: the timeout says so
        lab.vm.communicate(writer, 60, note="the stop signal `touch /run/stop-writer` exited %d %s"
                           % (stop.returncode, (stop.stderr or "").strip()[-300:]))
    timing("CreateSnapshot 1 GiB at %d MiB/s (pending -> completed)" % (BACKUP_SPEED // MiB), took)
    pending = [p for state, p in seen if state == "pending"]
    assert pending and min(pending) < 100, seen
    assert pending == sorted(pending), "progress went backwards: %s" % seen
    assert int(late_progress.rstrip("%")) < LATE_AT * 100 // 1024, "the late write came after the job passed it"
    assert after > before, "the guest did not keep writing while the snapshot was pending"
    path = lab.endpoint.snapshot_file(snapshot_id)
    assert file_sha(path, PATTERN_AT) == hashlib.sha256(early).hexdigest()
    assert file_sha(path, LATE_AT) == ZEROS_SHA, "a write made after CreateSnapshot is in the snapshot"
    assert guest_sha(lab.vm, dev, LATE_AT) == hashlib.sha256(late).hexdigest()  # ... yet the volume has it
    st = os.stat(path)
    assert st.st_size == GiB and st.st_blocks * 512 < 256 * MiB, "the snapshot image is not sparse"
    backend = lab.endpoint.calls("CreateSnapshot")[-1]["backend"]
    assert backend["kind"] == "qemu" and backend["op"] == "snapshot" and backend["speed"] == BACKUP_SPEED
    assert backend["vm"] == lab.vm.name and backend["serial"] == serial_of(volume_id) and backend["transaction_ms"] >= 0
    (member,) = backend["members"]
    assert member["method"] == "blockdev-backup" and member["snapshot_id"] == snapshot_id and member["error"] is None
    STATE.update(snapshot=snapshot_id, early=early, late=late)

    # the same, without a speed limit: how long qemu takes for 1 GiB of mostly unwritten disk
    lab.endpoint.qemu_backup_speed(0)
    t0 = time.monotonic()
    fast = lab.ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    lab.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[fast], WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
    timing("CreateSnapshot 1 GiB, no speed limit (pending -> completed)", time.monotonic() - t0)
    assert file_sha(lab.endpoint.snapshot_file(fast), LATE_AT) == hashlib.sha256(late).hexdigest()
    lab.ec2.delete_snapshot(SnapshotId=fast)


def snapshot_state(ec2, snapshot_id):
    return ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"]


def test_detach_unplugs_the_disk_while_a_backup_job_still_reads_it(lab):
    """The guest loses the disk at once; the volume stays ``detaching`` until the job concluded."""
    volume_id, early, late = need("volume", "early", "late")
    link = BY_ID % serial_of(volume_id)
    lab.endpoint.qemu_backup_speed(2 * BACKUP_SPEED)  # 4 s for 1 GiB
    snapshot_id = lab.ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    gone = lab.vm.popen("echo ready; i=0; while [ -e %s ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
                        "[ -e %s ] || echo gone" % (link, link))
    assert gone.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    lab.ec2.detach_volume(VolumeId=volume_id)
    assert "gone" in lab.vm.communicate(gone, 60)[0], "the guest still has %s" % link
    timing("DetachVolume -> disk gone from the guest", time.monotonic() - t0)
    assert attachment_state(lab.ec2, volume_id) == ("in-use", "detaching")
    assert snapshot_state(lab.ec2, snapshot_id) == "pending"

    def available():
        state = attachment_state(lab.ec2, volume_id)
        return state == ("available", None) and snapshot_state(lab.ec2, snapshot_id)
    assert wait_for(available, 60, "%s available" % volume_id) == "completed"  # blockdev-del waited for the job
    timing("DetachVolume during a 4 s backup job -> available", time.monotonic() - t0)
    backend = lab.endpoint.calls("DetachVolume")[-1]["backend"]
    assert backend["kind"] == "qemu" and backend["op"] == "detach" and backend["hotplug"] is True
    assert backend["serial"] == serial_of(volume_id) and backend["error"] is None and backend["released_at"]
    assert backend["job_wait_ms"] > 500 and backend["device_del_ms"] < backend["detach_ms"]
    (inst,) = lab.endpoint.qemu_instances(lab.instance_id)
    assert volume_id not in [d["volume_id"] for d in inst["disks"]]
    path = lab.endpoint.snapshot_file(snapshot_id)
    assert file_sha(path, PATTERN_AT) == hashlib.sha256(early).hexdigest()
    assert file_sha(path, LATE_AT) == hashlib.sha256(late).hexdigest()
    lab.ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert not os.path.exists(path)


def test_volume_from_the_snapshot_reads_back_in_the_guest(lab):
    snapshot_id, early = need("snapshot", "early")
    restored = lab.ec2.create_volume(AvailabilityZone=lab.az, SnapshotId=snapshot_id)["VolumeId"]
    visible = attach_and_see(lab, restored, "/dev/sdg")[0]
    timing("AttachVolume (restored) -> disk visible in the guest", visible)
    dev = BY_ID % serial_of(restored)
    assert guest_sha(lab.vm, dev, PATTERN_AT) == hashlib.sha256(early).hexdigest()
    assert guest_sha(lab.vm, dev, LATE_AT) == ZEROS_SHA
    STATE["restored"] = restored


def test_stop_and_start_power_the_vm_off_and_boot_it(lab):
    """The power-off waits for the running backup job (it completes); a deleted pending snapshot's
    job is cancelled and not waited for; the VM boots again with the volume cold-plugged."""
    restored, early = need("restored", "early")
    pid = lab.vm.pid
    assert pid is not None
    waiter_config = {"Delay": 1, "MaxAttempts": 180}
    lab.endpoint.qemu_backup_speed(2 * BACKUP_SPEED)  # 4 s for 1 GiB
    kept = lab.ec2.create_snapshot(VolumeId=restored)["SnapshotId"]
    dropped = lab.ec2.create_snapshot(VolumeId=restored)["SnapshotId"]
    dropped_file = lab.endpoint.snapshot_file(dropped)
    lab.ec2.delete_snapshot(SnapshotId=dropped)  # pending: its job is cancelled
    assert not os.path.exists(dropped_file)
    t0 = time.monotonic()
    answer = lab.ec2.stop_instances(InstanceIds=[lab.instance_id])["StoppingInstances"][0]
    assert answer["CurrentState"]["Name"] == "stopping" and answer["PreviousState"]["Name"] == "running"
    state = lab.ec2.describe_instances(InstanceIds=[lab.instance_id])["Reservations"][0]["Instances"][0]["State"]
    assert state == {"Code": 64, "Name": "stopping"}  # the guest takes seconds to power off
    lab.ec2.get_waiter("instance_stopped").wait(InstanceIds=[lab.instance_id], WaiterConfig=waiter_config)
    timing("StopInstances (a 4 s backup job running) -> stopped", time.monotonic() - t0)
    assert lab.vm.pid is None and not alive(pid)
    backend = lab.endpoint.calls("StopInstances")[-1]["backend"]
    assert backend["kind"] == "qemu" and backend["op"] == "stop" and backend["pid"] == pid
    assert backend["how"] == "ssh poweroff" and backend["stopped_at"] and not backend["jobs_left"]
    timing("StopInstances: guest power-off alone", backend["poweroff_ms"] / 1000.0)
    assert backend["job_wait_ms"] > 1000
    assert snapshot_state(lab.ec2, kept) == "completed"  # a job cut short by the power-off would be `error`
    assert file_sha(lab.endpoint.snapshot_file(kept), PATTERN_AT) == hashlib.sha256(early).hexdigest()
    (inst,) = lab.endpoint.qemu_instances(lab.instance_id)
    cancelled = [j for j in inst["jobs"] if j["snapshot_id"] == dropped]
    assert cancelled and cancelled[0]["done"] and "cancelled" in cancelled[0]["error"]

    t0 = time.monotonic()
    answer = lab.ec2.start_instances(InstanceIds=[lab.instance_id])["StartingInstances"][0]
    assert answer["CurrentState"]["Name"] == "pending" and answer["PreviousState"]["Name"] == "stopped"
    lab.ec2.get_waiter("instance_running").wait(InstanceIds=[lab.instance_id], WaiterConfig=waiter_config)
    timing("StartInstances -> running (qemu runs)", time.monotonic() - t0)
    assert lab.vm.pid not in (None, pid)
    lab.vm.wait_ssh()
    timing("StartInstances -> SSH", time.monotonic() - t0)
    backend = lab.endpoint.calls("StartInstances")[-1]["backend"]
    assert backend["kind"] == "qemu" and backend["op"] == "start" and backend["pid"] == lab.vm.pid
    assert serial_of(restored) in [d["serial"] for d in backend["disks"]]
    dev = BY_ID % serial_of(restored)
    lab.vm.ssh("udevadm settle; test -e %s" % dev)  # there at boot, no hot-plug
    assert guest_sha(lab.vm, dev, PATTERN_AT) == hashlib.sha256(early).hexdigest()


def imds_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def boot_another(lab, name):
    """Another qemu instance, booted by the endpoint (qemu runs; SSH is not waited for)."""
    other = lab.endpoint.create_instance()
    spec = dict(lab.made["spec"], name=name, dir=os.path.join(os.path.dirname(lab.vm.dir), name))
    made = lab.endpoint.make_qemu(other["instance_id"], spec, boot=True)
    vm = VM(made["spec"])
    lab.others.append(vm)
    assert vm.pid is not None and made["pid"] == vm.pid
    return vm, made


def test_terminate_kills_the_vm_and_reset_kills_the_vms_it_booted(lab):
    """TerminateInstances kills the VM; ``reset(state=True)`` kills the VMs the endpoint booted
    (one that has not even reached SSH); the endpoint's stop (the fixture) kills the last one."""
    restored, = need("restored")
    pid = lab.vm.pid
    assert pid is not None and imds_answers(lab.made["imds_port"])
    t0 = time.monotonic()
    answer = lab.ec2.terminate_instances(InstanceIds=[lab.instance_id])["TerminatingInstances"][0]
    assert answer["CurrentState"]["Name"] == "shutting-down"
    lab.ec2.get_waiter("instance_terminated").wait(InstanceIds=[lab.instance_id],
                                                   WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    timing("TerminateInstances -> terminated (VM killed)", time.monotonic() - t0)
    assert lab.vm.pid is None and not alive(pid)
    assert not imds_answers(lab.made["imds_port"])
    assert attachment_state(lab.ec2, restored) == ("available", None)  # moto detached it; nothing to unplug
    backend = lab.endpoint.calls("TerminateInstances")[-1]["backend"]
    assert backend["kind"] == "qemu" and backend["op"] == "terminate" and backend["how"] == "kill"

    vm2, made = boot_another(lab, "epq2")
    pid2 = vm2.pid
    lab.endpoint.reset(state=True)
    assert vm2.pid is None and not alive(pid2)
    assert lab.endpoint.qemu_instances() == []
    assert not imds_answers(made["imds_port"])
    boot_another(lab, "epq3")  # left running: the fixture's endpoint.stop() must kill it
