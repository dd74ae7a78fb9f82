# -*- coding: utf-8 -*-
"""Consistency groups end to end (docs/groups.md): three emulated instances on this host (each its own
volumes at the local endpoint, loop devices, ext4), one inventory host each, driven by playbooks/backup.yml
with array_backup_group=true and restored as a group by playbooks/restore.yml with array_restore_group_id.

A writer appends a shared sequence number to the three hosts' filesystems in turn (record n+1 is written
after record n returned: the causal order across hosts). After a group restore, the records on the three
restored filesystems together must be exactly 1..k: no host holds a record that follows one missing on
another host. An injected clock offset (one host's Python reads a clock 0.5 s ahead, a sitecustomize on its
interpreter, outside the collection) makes the run refuse to call the group consistent; a host whose freeze
fails (its filesystem already frozen by someone else) leaves no set of the group and every host thawed.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.loopfs import missing_requirements
from tests.support.loopfs import probe_frozen
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import run_playbook
from tests.support.world import task_hosts

pytestmark = pytest.mark.skipif(missing_requirements("ext4") is not None, reason=str(missing_requirements("ext4")))

BACKUP = os.path.join(ROOT, "playbooks", "backup.yml")
RESTORE = os.path.join(ROOT, "playbooks", "restore.yml")
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
SEAL = "Seal the group (the common instant from the hosts' frozen intervals and clocks, or all sets deleted)"
HOSTS = ("g1", "g2", "g3")
RECORDS = "records"

WRITER = textwrap.dedent("""
    import os, sys, time
    stop, paths = sys.argv[1], sys.argv[2:]
    fds = [os.open(os.path.join(p, "records"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) for p in paths]
    n = 0
    while not os.path.exists(stop):
        n += 1
        os.write(fds[n % len(fds)], b"%d\\n" % n)   # returns before the next record is written: the causal order
        time.sleep(0.001)  # a few thousand records a second, not a full disk
    print(n)
""")

# the injected clock: this host's Python reads time 0.5 s ahead (the collection is not told)
SKEW = textwrap.dedent("""
    import time
    _real_time, _real_ns = time.time, time.time_ns
    time.time = lambda: _real_time() + {skew}
    time.time_ns = lambda: _real_ns() + int({skew} * 1e9)
""")


def inventory(tmp_path, instances, skew=None):
    hosts = {}
    for name, inst in zip(HOSTS, instances):
        hosts[name] = {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "array_backup_instance_id": inst.instance_id, "array_backup_mountpoints": inst.mountpoints,
            "array_backup_by_id_dir": inst.by_id_dir,
            "array_restore_instance_id": inst.instance_id, "array_restore_by_id_dir": inst.by_id_dir,
        }
    if skew:
        name, seconds = skew
        site = tmp_path / "skewed-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SKEW.format(skew=seconds))
        wrapper = tmp_path / "python-skewed"
        wrapper.write_text("#!/bin/sh\nPYTHONPATH=%s exec %s \"$@\"\n" % (site, sys.executable))
        wrapper.chmod(0o755)
        hosts[name]["ansible_python_interpreter"] = str(wrapper)
    path = tmp_path / ("inventory-%s.json" % (skew[0] if skew else "plain"))
    path.write_text(json.dumps({"shards": {"hosts": hosts}}))
    return str(path)


def backup(ec2, inv, name, **extra):
    return run_playbook(BACKUP, ec2, dict({
        "backup_hosts": "shards", "backup_become": False, "array_backup_group": True,
        # a loaded machine: room for three hosts' planning before the instant, and for their freezes before it
        "array_backup_group_arm_s": 30, "array_backup_group_lead_ms": 300, "array_backup_name": name, "array_backup_keep_last": 0,
        "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
        "array_backup_poll_interval": 0.2}, **extra), inventory=inv)


def group_snapshots(ec2, group_id):
    snaps = ec2.client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:stillpoint:group-id", "Values": [group_id]}])["Snapshots"]
    return [dict((t["Key"], t["Value"]) for t in s.get("Tags", [])) for s in snaps]


def read_records(mountpoint):
    with open(os.path.join(mountpoint, RECORDS)) as handle:
        return [int(line) for line in handle.read().split("\n") if line.strip().isdigit()]


@pytest.fixture
def shards(ec2):
    instances = [EmulatedInstance(ec2, n=1, size_mb=64, fstype="ext4", local=True) for _h in HOSTS]
    try:
        for inst in instances:
            inst.create()
        yield instances
    finally:
        for inst in instances:
            inst.cleanup()


def test_group_backup_at_one_instant_then_group_restore_holds_a_causal_prefix(ec2, shards, tmp_path):
    inv = inventory(tmp_path, shards)
    mounts = [inst.mountpoints[0] for inst in shards]
    stop = str(tmp_path / "stop-writer")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, stop] + mounts, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        rc, _res, raw = backup(ec2, inv, "group-ok")
        open(stop, "w").close()
        written = int(writer.communicate(timeout=30)[0])
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
    seal = task_hosts(raw, SEAL)
    assert rc == 0, json.dumps(seal, indent=1)[:3000]
    sealed = next(iter(seal.values()))
    assert sealed["verdict"] == "consistent" and sealed["margin_ms"] > 0
    takes = task_hosts(raw, TAKE)
    assert sorted(takes) == list(HOSTS)
    # every host's frozen interval, corrected, contains the common instant
    for host, part in sealed["hosts"].items():
        assert part["frozen"][0] < sealed["instant"] < part["frozen"][1], (host, part, sealed["instant"])
        assert takes[host]["group"]["frozen"][1] > takes[host]["group"]["frozen"][0]
        assert takes[host]["state"] == "complete"
    group_id = sealed["group_id"]
    tags = group_snapshots(ec2, group_id)
    assert len(tags) == 3 and len(set(t["stillpoint:set-id"] for t in tags)) == 3
    assert all(json.loads(t["stillpoint:group"])["verdict"] == "consistent" for t in tags)
    # the catalog counts the group's sets as complete only now, and finds them by group id
    rc, res, _raw = run_playbook(os.path.join(ROOT, "playbooks", "catalog.yml"), ec2, {
        "catalog_name": "group-ok", "catalog_aws_endpoint_url": ec2.url, "catalog_aws_region": ec2.region})
    assert rc == 0
    listed = next(v for k, v in res.items() if k.endswith("Read the catalog"))["result"]
    assert len(listed) == 3 and all(s["state"] == "complete" for s in listed), listed

    live = [read_records(m) for m in mounts]
    assert written > 100 and max(max(r) for r in live) == written
    for mount in mounts:  # the disaster
        with open(os.path.join(mount, RECORDS), "w") as handle:
            handle.write("gone\n")
    os.sync()

    # restore as a group: each host its own set of the group
    rc, res, raw = run_playbook(RESTORE, ec2, {
        "restore_hosts": "shards", "restore_become": False, "array_restore_group_id": group_id,
        "array_restore_check_host": False, "array_restore_aws_endpoint_url": ec2.url,
        "array_restore_aws_region": ec2.region, "array_restore_device_timeout": 30}, inventory=inv)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    restored = [read_records(m) for m in mounts]
    union = sorted(n for records in restored for n in records)
    k = union[-1]
    assert union == list(range(1, k + 1)), "a restored record follows one missing on another host"
    assert all(records for records in restored)
    assert 0 < k < written  # the instant lies inside the writer's run, not after it


def test_group_restore_refusals(ec2, shards, tmp_path):
    inv = inventory(tmp_path, shards)
    common = {"restore_hosts": "shards", "restore_become": False, "array_restore_check_host": False,
              "array_restore_aws_endpoint_url": ec2.url, "array_restore_aws_region": ec2.region}
    rc, res, _raw = run_playbook(RESTORE, ec2, common, inventory=inv)
    assert rc != 0 and "array_restore_group_id" in json.dumps(res)
    rc, res, _raw = run_playbook(RESTORE, ec2, dict(common, array_restore_group_id="bg-20260101T000000Z-000000"),
                                 inventory=inv)
    assert rc != 0 and "not in the catalog" in json.dumps(res)
    assert [c for c in ec2.calls() if not c["action"].startswith("Describe")] == []


def test_an_injected_clock_offset_makes_the_run_refuse_to_call_the_group_consistent(ec2, shards, tmp_path):
    inv = inventory(tmp_path, shards, skew=("g3", 0.5))
    rc, _res, raw = backup(ec2, inv, "group-skew")
    assert rc != 0
    seal = next(iter(task_hosts(raw, SEAL).values()))
    assert seal["failed"] and seal["verdict"] == "inconsistent", seal
    assert seal["margin_ms"] < 0
    # the run measured the offset it was not told about
    assert abs(seal["hosts"]["g3"]["offset_ms"] - 500.0) < seal["hosts"]["g3"]["error_ms"] + 5.0, seal["hosts"]["g3"]
    tags = group_snapshots(ec2, seal["group_id"])
    assert len(tags) == 3 and all(json.loads(t["stillpoint:group"])["verdict"] == "inconsistent" for t in tags)
    # a group restore refuses it
    rc, res, _raw = run_playbook(RESTORE, ec2, {
        "restore_hosts": "shards", "restore_become": False, "array_restore_group_id": seal["group_id"],
        "array_restore_check_host": False, "array_restore_aws_endpoint_url": ec2.url,
        "array_restore_aws_region": ec2.region}, inventory=inv)
    assert rc != 0 and "not a complete, consistent group" in json.dumps(res)


def test_one_host_failing_its_freeze_leaves_no_set_of_the_group_and_every_host_thawed(ec2, shards, tmp_path):
    inv = inventory(tmp_path, shards)
    busy = shards[1].mountpoints[0]
    subprocess.run(["fsfreeze", "--freeze", busy], check=True)  # someone else's freeze on g2
    try:
        rc, _res, raw = backup(ec2, inv, "group-fail")
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", busy], check=False)
    assert rc != 0
    takes = task_hosts(raw, TAKE)
    assert takes["g2"]["failed"]
    for host in ("g1", "g3"):
        assert not takes[host].get("failed"), takes[host]
        # held only until the instant + hold, far inside the freeze deadline (10 s)
        assert takes[host]["freeze_window_ms"] < 10000.0
    seal = next(iter(task_hosts(raw, SEAL).values()))
    assert seal["failed"] and seal["verdict"] == "failed"
    assert "g2" in " ".join(seal["problems"])
    assert len(seal["rollback"]["deleted"]) == 2
    assert group_snapshots(ec2, seal["group_id"]) == []
    for inst in shards:
        assert not probe_frozen(inst.mountpoints[0])
