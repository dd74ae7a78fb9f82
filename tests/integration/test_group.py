# -*- coding: utf-8 -*-
"""Consistency groups end to end (docs/groups.md): three emulated instances on this host (each its own
volumes at the local endpoint, loop devices, ext4), one inventory host each, driven by playbooks/backup.yml
with array_backup_group=true and restored as a group by playbooks/restore.yml with array_restore_group_id.

A writer appends a shared sequence number to the three hosts' filesystems in turn (record n+1 is written
after record n returned: the causal order across hosts). After a group restore, the records on the three
restored filesystems together must be exactly 1..k: no host holds a record that follows one missing on
another host. An injected clock offset (one host's Python reads a clock 0.5 s ahead, a sitecustomize on its
interpreter, outside the collection) is measured and corrected: each host reads the instant on its own clock
translated by its measured offset, and the group is consistent. The same offset makes the run refuse to call
the group consistent when the hosts trust their clocks (array_backup_group_correct_offsets=false): the proof
does not rely on the correction. A host whose freeze fails (its filesystem already frozen by someone else)
leaves no set of the group and every host thawed.

The group is armed only once every host is ready: a host that never becomes ready (a mountpoint that is not
one) releases the others with nothing frozen and nothing created; a run killed while its hosts wait, ready,
freezes nothing (the hosts give up after their budget and remove their run directories), and the next run,
started while they still wait, is not affected.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from tests.support.loopfs import missing_requirements
from tests.support.loopfs import probe_frozen
from tests.support.procs import alive
from tests.support.procs import descendants
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import ansible_env
from tests.support.world import run_playbook
from tests.support.world import task_hosts

pytestmark = pytest.mark.skipif(missing_requirements("ext4") is not None, reason=str(missing_requirements("ext4")))

BACKUP = os.path.join(ROOT, "playbooks", "backup.yml")
RESTORE = os.path.join(ROOT, "playbooks", "restore.yml")
TAKE = ("Collect this host's member of the group (ready, armed, frozen at the instant, one CreateSnapshots call, thaw, "
        "wait, mark complete)")
WAIT = "Wait until this host's member of the group is ready (planned, DryRun done), has failed or has died"
ARM = ("Arm the group once every host is ready (the instant arm_s away; the hold sized from the clock errors), or "
       "release it")
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

# a clock stepped after it was measured: this host's Python reads time 0.5 s ahead once the flag file exists
SKEW_AFTER = textwrap.dedent("""
    import os, time
    _real_time, _real_ns, _flag = time.time, time.time_ns, {flag!r}
    time.time = lambda: _real_time() + ({skew} if os.path.exists(_flag) else 0.0)
    time.time_ns = lambda: _real_ns() + (int({skew} * 1e9) if os.path.exists(_flag) else 0)
""")


def inventory(tmp_path, instances, skew=None, mountpoints=None, step_flag=None, host_vars=None):
    hosts = {}
    for name, inst in zip(HOSTS, instances):
        hosts[name] = {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            # the async job files in one named place: with a local connection async_status looks under the
            # user's home from the password database, the job writes under $HOME, and the two differ when
            # HOME is set elsewhere (as a CI job may)
            "ansible_async_dir": str(tmp_path / "async"),
            "array_backup_instance_id": inst.instance_id, "array_backup_mountpoints": inst.mountpoints,
            "array_backup_by_id_dir": inst.by_id_dir,
            "array_restore_instance_id": inst.instance_id, "array_restore_by_id_dir": inst.by_id_dir,
        }
    for name, mounts in (mountpoints or {}).items():
        hosts[name]["array_backup_mountpoints"] = mounts
    for name, more in (host_vars or {}).items():
        hosts[name].update(more)
    if skew:
        name, seconds = skew
        site = tmp_path / "skewed-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SKEW_AFTER.format(skew=seconds, flag=str(step_flag)) if step_flag
                                               else SKEW.format(skew=seconds))
        wrapper = tmp_path / "python-skewed"
        wrapper.write_text("#!/bin/sh\nPYTHONPATH=%s exec %s \"$@\"\n" % (site, sys.executable))
        wrapper.chmod(0o755)
        hosts[name]["ansible_python_interpreter"] = str(wrapper)
    path = tmp_path / ("inventory-%s%s%s%s.json" % (skew[0] if skew else "plain", "-mounts" if mountpoints else "",
                                                    "-step" if step_flag else "", "-vars" if host_vars else ""))
    path.write_text(json.dumps({"shards": {"hosts": hosts}}))
    return str(path)


def backup(ec2, inv, name, **extra):
    return run_playbook(BACKUP, ec2, dict({
        "backup_hosts": "shards", "backup_become": False, "array_backup_group": True,
        # armed once the three hosts are ready: the arm covers handing the instant over (one local task); a loaded
        # machine: room for the freezes before the instant; a host not ready within a minute fails the run
        "array_backup_group_arm_s": 8, "array_backup_group_lead_ms": 300, "array_backup_group_ready_timeout": 60,
        "array_backup_name": name, "array_backup_keep_last": 0,
        "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
        "array_backup_poll_interval": 0.2}, **extra), inventory=inv)


def sealed_why(raw):
    """For an assertion message: the seal's verdict and problems, and each host's own record of its part (when it
    started its freeze, how late, its syncs, its frozen interval), not the seal's module arguments."""
    seal = next(iter(task_hosts(raw, SEAL).values()))
    takes = task_hosts(raw, TAKE)
    keys = ("msg", "verdict", "margin_ms", "instant", "problems", "hosts", "rollback")
    return json.dumps({"seal": dict((k, seal.get(k)) for k in keys),
                       "hosts": dict((h, r.get("group") or r.get("msg")) for h, r in takes.items())},
                      indent=1, default=str)[:6000]


def group_snapshots(ec2, group_id):
    snaps = ec2.client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:stillpoint:group-id", "Values": [group_id]}])["Snapshots"]
    return [dict((t["Key"], t["Value"]) for t in s.get("Tags", [])) for s in snaps]


def create_tags_per_set(ec2, group_id):
    """``{set id: number of CreateTags requests that named a snapshot of it}`` for the group's sets, from the
    endpoint's request log (what the run asked EC2 for; the throttling bound of a fleet run, docs/throttling.md)."""
    snaps = ec2.client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:stillpoint:group-id", "Values": [group_id]}])["Snapshots"]
    set_of = dict((s["SnapshotId"], dict((t["Key"], t["Value"]) for t in s["Tags"])["stillpoint:set-id"]) for s in snaps)
    counts = dict((sid, 0) for sid in set_of.values())
    for call in ec2.calls("CreateTags"):
        named = set(set_of.get(v) for k, v in call["params"].items() if k.startswith("ResourceId."))
        for sid in named - {None}:
            counts[sid] += 1
    return counts


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
    assert rc == 0, sealed_why(raw)
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
    # each host's own record (its frozen interval on its clock) is on its set, written in the same CreateTags as the
    # level after the thaw (with the member map): per set the level, complete and the seal
    for t in tags:
        host = next(h for h in HOSTS if takes[h]["set_id"] == t["stillpoint:set-id"])
        assert catalog.decode_json(t, "stillpoint:group-host")["frozen"] == takes[host]["group"]["frozen"], t
    assert sorted(create_tags_per_set(ec2, group_id).values()) == [3, 3, 3], create_tags_per_set(ec2, group_id)
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
    # the hosts trust their clocks: each reads the common instant on its own clock, g3's being 0.5 s off
    rc, _res, raw = backup(ec2, inv, "group-skew", array_backup_group_correct_offsets=False)
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


def test_an_injected_clock_offset_is_measured_and_corrected_each_host_freezing_at_the_instant_on_its_own_clock(
        ec2, shards, tmp_path):
    inv = inventory(tmp_path, shards, skew=("g3", 0.5))
    rc, _res, raw = backup(ec2, inv, "group-skew-corrected")
    seal = next(iter(task_hosts(raw, SEAL).values()))
    assert rc == 0, sealed_why(raw)
    assert seal["verdict"] == "consistent" and seal["margin_ms"] > 0
    g3 = seal["hosts"]["g3"]
    assert abs(g3["offset_ms"] - 500.0) < g3["error_ms"] + 5.0, g3
    takes = task_hosts(raw, TAKE)
    for host, part in seal["hosts"].items():
        assert part["frozen"][0] < seal["instant"] < part["frozen"][1], (host, part, seal["instant"])
    # g3 read the armed instant 0.5 s later on its clock (its measured offset), and each host's own record of its
    # frozen interval (its clock) holds the group's common instant read on that clock. Not the distance between the
    # hosts' freezes: a member whose syncs are slow starts its freeze up to LEAD_CAP leads early (with four busy loops
    # beside the test g1 once froze 1.14 s before the armed instant, g3 0.43 s: their starts 1.2 s apart), and one
    # whose freeze ends late makes the common instant later than the armed one (g1 once 28.5 ms after it, the group
    # still consistent)
    assert abs(takes["g3"]["group"]["offset_ms"] - 500.0) < 50.0, takes["g3"]["group"]
    own = dict((host, takes[host]["group"]) for host in ("g1", "g3"))
    assert abs(own["g3"]["local_instant"] - own["g1"]["local_instant"] - 0.5) < 0.05, own
    for host, record in own.items():
        local = seal["instant"] + record["offset_ms"] / 1000.0
        error = seal["hosts"][host]["error_ms"] / 1000.0
        assert record["frozen"][0] - error < local < record["frozen"][1] + error, (host, record, seal["instant"])
    tags = group_snapshots(ec2, seal["group_id"])
    assert len(tags) == 3 and all(json.loads(t["stillpoint:group"])["verdict"] == "consistent" for t in tags)


def test_a_clock_stepped_after_its_measurement_makes_the_run_refuse_the_group(ec2, shards, tmp_path):
    """The correction uses the offset measured before; a clock stepped after that (here 0.5 s, once g3 is ready,
    before the freeze) puts g3's freeze 0.5 s away from the others in true time. The measurement after sees the step:
    no offset fits both, the group fails and every set is deleted."""
    flag = tmp_path / "stepped"
    inv = inventory(tmp_path, shards, skew=("g3", 0.5), step_flag=flag)
    run_dir = tmp_path / "run"
    stop = threading.Event()

    def step_when_ready():
        while not stop.is_set():
            for state in glob.glob(str(run_dir / "*" / "g3" / "state")):
                try:
                    with open(state) as handle:
                        if handle.read().startswith("ready"):
                            flag.write_text("now")
                            return
                except OSError:
                    pass
            time.sleep(0.01)

    stepper = threading.Thread(target=step_when_ready)
    stepper.start()
    try:
        rc, _res, raw = backup(ec2, inv, "group-step", array_backup_group_run_dir=str(run_dir))
    finally:
        stop.set()
        stepper.join()
    assert flag.exists(), "g3 never became ready"
    assert rc != 0
    seal = next(iter(task_hosts(raw, SEAL).values()))
    assert seal["failed"] and seal["verdict"] == "failed", seal
    assert any(p.startswith("g3:") and "stepped" in p for p in seal["problems"]), seal["problems"]
    assert len(seal["rollback"]["deleted"]) == 3
    assert group_snapshots(ec2, seal["group_id"]) == []
    for inst in shards:
        assert not probe_frozen(inst.mountpoints[0])


def test_a_host_that_never_becomes_ready_releases_the_others_with_nothing_frozen(ec2, shards, tmp_path):
    inv = inventory(tmp_path, shards, mountpoints={"g2": [str(tmp_path / "not-a-mountpoint")]})
    run_dir = tmp_path / "run"
    rc, _res, raw = backup(ec2, inv, "group-not-ready", array_backup_group_run_dir=str(run_dir))
    assert rc != 0
    takes = task_hosts(raw, TAKE)
    assert takes["g2"]["failed"] and "not-a-mountpoint" in takes["g2"]["msg"], takes["g2"]
    for host in ("g1", "g3"):
        assert takes[host]["failed"] and "released by the controller before any freeze" in takes[host]["msg"]
        assert "g2" in takes[host]["msg"] and "group" not in takes[host], takes[host]
    seal = next(iter(task_hosts(raw, SEAL).values()))
    assert seal["failed"] and seal["verdict"] == "failed" and seal["sets"] == []
    assert "g2" in " ".join(seal["problems"])
    # nothing was frozen or created: no CreateSnapshots call but the DryRun probes, no set, no run directory left
    assert ec2.calls("CreateSnapshots") == []
    assert len(ec2.calls("CreateSnapshots", dry_run=None)) == 2
    assert group_snapshots(ec2, seal["group_id"]) == []
    assert os.listdir(str(run_dir)) == []
    for inst in shards:
        assert not probe_frozen(inst.mountpoints[0])


def test_members_that_die_before_ready_release_the_others_at_once_naming_them(ec2, shards, tmp_path):
    """g2's module ends before it has a state to write (its run directory's base is a file: it cannot make it); g3's
    module is killed (SIGKILL) while it plans, before it says ready or failed. The controller's wait sees both at once
    (g3's pid gone, g2's async job finished), so g1 is released with nothing frozen, long before the ready timeout
    (600 s here: the run would end by its own timeout first), and the release names g2 and g3 and why."""
    run_dir, blocker = tmp_path / "run", tmp_path / "not-a-directory"
    blocker.write_text("")
    inv = inventory(tmp_path, shards, host_vars={
        "g1": {"array_backup_group_run_dir": str(run_dir)}, "g2": {"array_backup_group_run_dir": str(blocker)},
        "g3": {"array_backup_group_run_dir": str(run_dir)}})
    ec2.latency("DescribeInstances", 3000)  # every member plans for 3 s or more: g3 is killed inside its plan
    killed, stop = [], threading.Event()

    def kill_g3_while_it_plans():
        while not stop.is_set():
            for state in glob.glob(str(run_dir / "*" / "g3" / "state")):
                try:
                    with open(state) as handle:
                        word, pid = handle.read().split()[:2]
                except (OSError, ValueError):
                    continue
                if word == "starting":
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_g3_while_it_plans)
    killer.start()
    try:
        rc, _res, raw = backup(ec2, inv, "group-dead", array_backup_group_ready_timeout=600)
    finally:
        stop.set()
        killer.join()
        ec2.latency("DescribeInstances", 0)
    assert len(killed) == 1, "g3 was not seen starting (killed: %s)" % killed
    assert rc != 0
    waits = task_hosts(raw, WAIT)
    assert waits["g1"]["stdout"].startswith("ready ")
    assert waits["g2"]["stdout"].startswith("failed -: its module ended before it made its run directory"), waits["g2"]
    assert waits["g3"]["stdout"].startswith("failed %d: its module (pid %d) ended before it said ready" % (killed[0], killed[0]))
    armed = next(iter(task_hosts(raw, ARM).values()))  # the wait's outcome, per host, in the arming's result
    members = armed["members"]
    assert members["ready"] == ["g1"] and sorted(members["failed"]) == ["g2", "g3"] and members["pending"] == {}, armed
    assert "instant" not in armed and "cannot make the run directory" in members["failed"]["g2"]
    takes = task_hosts(raw, TAKE)
    assert "cannot make the run directory" in takes["g2"]["msg"] and takes["g3"]["failed"]
    released = takes["g1"]["msg"]
    assert takes["g1"]["failed"] and "released by the controller before any freeze" in released, takes["g1"]
    # named and why; not "not ready within" (the ready timeout did not run out)
    assert "g2 (failed: its module ended before it made its run directory" in released, released
    assert "g3 (failed: its module (pid %d) ended before it said ready or failed" % killed[0] in released, released
    assert "not ready within" not in released and "group" not in takes["g1"]
    seal = next(iter(task_hosts(raw, SEAL).values()))
    assert seal["failed"] and seal["verdict"] == "failed" and seal["sets"] == []
    # nothing frozen or created: the DryRun probe of g1 only, no set, no run directory left
    assert ec2.calls("CreateSnapshots") == [] and len(ec2.calls("CreateSnapshots", dry_run=None)) == 1
    assert group_snapshots(ec2, seal["group_id"]) == []
    assert os.listdir(str(run_dir)) == []
    for inst in shards:
        assert not probe_frozen(inst.mountpoints[0])


def test_a_run_killed_while_its_hosts_wait_ready_freezes_nothing_and_the_next_run_is_not_affected(ec2, shards, tmp_path):
    inv = inventory(tmp_path, shards)
    run_dir = tmp_path / "run"
    extra = {"backup_hosts": "shards", "backup_become": False, "array_backup_group": True,
             "array_backup_group_arm_s": 5, "array_backup_group_lead_ms": 300, "array_backup_group_ready_timeout": 10,
             "array_backup_group_run_dir": str(run_dir), "array_backup_name": "group-killed",
             "array_backup_keep_last": 0, "array_backup_aws_endpoint_url": ec2.url,
             "array_backup_aws_region": ec2.region, "array_backup_poll_interval": 0.2}
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inv, BACKUP, "-e", json.dumps(extra)]
    controller = subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(ec2), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waiting = {}
    try:
        deadline = time.time() + 300
        while len(waiting) < len(HOSTS) and time.time() < deadline and controller.poll() is None:
            waiting = {}
            for state in glob.glob(str(run_dir / "*" / "*" / "state")):
                with open(state) as handle:
                    text = handle.read().split()
                if text[:1] == ["ready"]:
                    waiting[os.path.basename(os.path.dirname(state))] = (int(text[1]), os.path.dirname(state))
            time.sleep(0.02)
        workers = descendants(controller.pid)
        controller.kill()  # the controller dies with every host ready and waiting for its instant
        controller.wait()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
    assert sorted(waiting) == list(HOSTS), waiting
    assert not any(os.path.exists(os.path.join(d, "go")) for _pid, d in waiting.values()), "the instant was handed over"
    members = [pid for pid, _d in waiting.values()]
    assert all(alive(pid) for pid in members)  # still waiting, nothing frozen
    for inst in shards:
        assert not probe_frozen(inst.mountpoints[0])

    # the next run, with a new group id, while the killed run's hosts still wait
    rc, _res, raw = backup(ec2, inv, "group-after-kill", array_backup_group_run_dir=str(run_dir))
    seal = next(iter(task_hosts(raw, SEAL).values()))
    takes = task_hosts(raw, TAKE)
    # each host of the next run froze for the next run's group, none took the killed run's (never handed) instant
    assert sorted(takes) == list(HOSTS) and all(
        (r.get("group") or {}).get("id") == seal["group_id"] for r in takes.values()), sealed_why(raw)
    assert len(ec2.calls("CreateSnapshots")) == 3  # the next run's; the killed run created nothing
    if seal.get("verdict") == "inconsistent":
        # What this test proves is the killed run's harmlessness; whether three emulated hosts on two shared cores
        # freeze around one instant is the machine's load (test_group_backup_at_one_instant... requires it). Once, in
        # a clean-clone run beside other tests (85016c2), g2 froze 325 ms after the instant (lead 300 ms); 7 runs of
        # this test here under busy loops (3 with a dd writer too) were consistent. The run then failed, its sets
        # recorded as a group that is not consistent (a group restore refuses it):
        assert rc != 0 and all("share no instant" in p for p in seal["problems"]), sealed_why(raw)
        tags = group_snapshots(ec2, seal["group_id"])
        assert tags and all(json.loads(t["stillpoint:group"])["verdict"] == "inconsistent" for t in tags), tags
        warnings.warn("the run after the killed one froze its hosts around no common instant (failed, recorded "
                      "inconsistent): %s" % sealed_why(raw))
    else:
        assert rc == 0 and seal["verdict"] == "consistent", sealed_why(raw)

    # the killed run's hosts give up after their budget (ready_timeout + arm_s + 30 s), remove their directories
    deadline = time.time() + 10 + 5 + 30 + 30
    while any(alive(pid) for pid in members) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(alive(pid) for pid in members)
    assert os.listdir(str(run_dir)) == []
    assert len(ec2.calls("CreateSnapshots")) == 3
    for inst in shards:
        assert not probe_frozen(inst.mountpoints[0])
