# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/clusterpro_backup.yml and clusterpro_restore.yml (roles clusterpro_mirror_backup and
clusterpro_mirror_restore, seed 001) with ansible-playbook against the FAKE CLUSTERPRO
(tests/fakes/clusterpro, not NEC software) and the strict EC2 endpoint on 127.0.0.1.

Two EC2 instances of the endpoint stand for server1 and server2; each has one file-backed mirror
volume. With ``local=True`` they are loop devices on this host (by-id links in a directory per
server), so the restore's unmount, detach, attach and "device present" steps act on real block
devices. A small bridge thread plays what the real world does between the two: an EC2 start of a
server's instance boots it in the fake (its cluster service starts), a snapshot of a server's
volume records what that server's copy held, and a new volume at a server's mirror device is a
new disk under that server's copy, holding what its snapshot held. The bridge never runs a
CLUSTERPRO command and never calls a mutating EC2 action.
"""

import contextlib
import json
import os
import subprocess
import sys
import threading

import pytest

from tests.fakes.clusterpro import install
from tests.fakes.clusterpro import locked
from tests.fakes.clusterpro import read_state
from tests.fakes.clusterpro.state import read_topology
from tests.support.loopfs import missing_requirements
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import run_playbook
from tests.support.world import task

pytestmark = pytest.mark.skipif(missing_requirements("ext4") is not None, reason=str(missing_requirements("ext4")))

BACKUP = os.path.join(ROOT, "playbooks", "clusterpro_backup.yml")
RESTORE = os.path.join(ROOT, "playbooks", "clusterpro_restore.yml")
MD = "md1"
DEVICE = "/dev/sdf"
STEP4 = "Step 4 - snapshot the standby's mirror volume (one backup set, no freeze - the resource was stopped)"


class Bridge(threading.Thread):
    """EC2 <-> FAKE CLUSTERPRO, as the machines would link them (see the module docstring).

    EC2 is read outside the fake's lock; the lock is taken only to boot a server or put a new disk
    under a copy, so the bridge never holds up a CLUSTERPRO command while it waits for EC2."""

    def __init__(self, ec2, fake_path, servers, interval=0.1, device=DEVICE):
        super().__init__(daemon=True)
        self.device = device  # the mirror volume's device name on both servers
        self.client = ec2.client()
        self.path = fake_path
        self.servers = servers  # {server: instance_id}
        self.interval = interval
        self.snapshots = {}  # snapshot id -> content of the copy it was taken of
        self.stop_event = threading.Event()
        self.errors = []

    def run(self):
        while not self.stop_event.is_set():
            try:
                self.step()
            except Exception as e:  # reported by the test
                self.errors.append(repr(e))
            self.stop_event.wait(self.interval)

    def step(self):
        reservations = self.client.describe_instances(InstanceIds=list(self.servers.values()))["Reservations"]
        instances = dict((i["InstanceId"], i) for r in reservations for i in r["Instances"])
        disks = read_state(self.path)["disks"]
        ids = dict((disks[s][MD]["id"], s) for s in self.servers)
        # a snapshot of a server's volume holds what that server's copy holds (a stopped server's copy
        # does not change until the bridge itself boots it, below)
        for snap in self.client.describe_snapshots(OwnerIds=["self"], Filters=[
                {"Name": "volume-id", "Values": sorted(ids)}])["Snapshots"]:
            if snap["SnapshotId"] not in self.snapshots and snap["VolumeId"] in ids:
                self.snapshots[snap["SnapshotId"]] = disks[ids[snap["VolumeId"]]][MD]["content"]
        boot, replace = [], {}
        for server, iid in self.servers.items():
            inst = instances[iid]
            if inst["State"]["Name"] == "running":
                boot.append(server)
            at = [b["Ebs"]["VolumeId"] for b in inst.get("BlockDeviceMappings", []) if b["DeviceName"] == self.device]
            if at and at[0] != disks[server][MD]["id"]:
                vol = self.client.describe_volumes(VolumeIds=at)["Volumes"][0]
                replace[server] = (at[0], self.snapshots.get(vol.get("SnapshotId"), "unknown-%s" % at[0]))
        if not replace and all(read_state(self.path)["servers"][s]["up"] for s in boot):
            return
        with locked(self.path) as cluster:
            for server in boot:
                if not cluster.state["servers"][server]["up"]:
                    cluster.boot(server)
            for server, (volume_id, content) in replace.items():
                cluster.replace_disk(server, MD, volume_id, content)

    def stop(self):
        self.stop_event.set()
        self.join(5)


@contextlib.contextmanager
def make_world(ec2, tmp_path):
    """Two servers (EC2 instances with one local mirror volume each), the fake cluster, the bridge."""
    fake_path, fake_env = install(tmp_path, node="server1")
    with EmulatedInstance(ec2, n=1, local=True) as s1, EmulatedInstance(ec2, n=1, local=True) as s2:
        inst = {"server1": s1, "server2": s2}
        with locked(fake_path) as cluster:  # the fake's disks are these EBS volumes
            for server, em in inst.items():
                cluster.state["disks"][server][MD]["id"] = em.volume_ids[0]
                cluster.state["mirrors"][MD]["disk_ids"][server] = em.volume_ids[0]
            cluster.group_start("failover", "server1")
        for em in inst.values():  # the mirror partitions are not mounted while CLUSTERPRO holds the disk
            for fs in em.filesystems:
                subprocess.run(["umount", fs.mountpoint], check=True)
                fs._mounted = False
        inventory = tmp_path / "inventory.ini"
        lines = ["[cluster]"]
        for server, em in inst.items():
            lines.append("%s ansible_connection=local ansible_python_interpreter=%s clusterpro_mirror_restore_by_id_dir=%s"
                         % (server, sys.executable, em.by_id_dir))
        inventory.write_text("\n".join(lines) + "\n")
        bridge = Bridge(ec2, fake_path, {s: em.instance_id for s, em in inst.items()})
        bridge.start()
        try:
            yield dict(ec2=ec2, fake=fake_path, env=fake_env, inst=inst, inventory=str(inventory), bridge=bridge,
                       tmp=tmp_path)
        finally:
            bridge.stop()
            assert not bridge.errors, bridge.errors


@pytest.fixture
def world(ec2, tmp_path):
    """A fresh world for a test that changes the cluster in its own way."""
    with make_world(ec2, tmp_path) as w:
        yield w


@pytest.fixture(scope="module")
def backed_up(ec2_endpoint, tmp_path_factory):
    """ONE world and ONE backup (playbooks/clusterpro_backup.yml), shared by the backup's assertions and
    the restore tests (the refusals change nothing; the real restore runs last in this file)."""
    ec2_endpoint.reset()
    with make_world(ec2_endpoint, tmp_path_factory.mktemp("clusterpro-roles")) as w:
        written = write(w)
        before = len(read_state(w["fake"])["log"])
        rc, res, _raw = backup(w)
        assert rc == 0, json.dumps(res, indent=1)[-3000:]
        state = read_state(w["fake"])
        w.update(taken=task(res, STEP4), written=written, state=state, log=state["log"][before:],
                 colors=colors(w), calls=ec2_endpoint.calls())
        yield w


def servers(w):
    return [{"server": s, "instance_id": em.instance_id, "volume_id": em.volume_ids[0]} for s, em in w["inst"].items()]


def aws(w, prefix):
    return {prefix + "aws_endpoint_url": w["ec2"].url, prefix + "aws_region": w["ec2"].region}


def backup(w, **extra):
    """The backup playbook with short waits: snapshots complete after 0.2 s, polled every 0.2 s; the
    standby's return is checked without delay (the bridge boots it within 0.1 s of the EC2 start)."""
    w["ec2"].pending(0.2)  # reset() by the next test's ec2 fixture
    active, standby = servers(w)
    ev = dict(clusterpro_hosts="server1", clusterpro_become=False, clusterpro_mirror_backup_active=active,
              clusterpro_mirror_backup_standby=standby, clusterpro_mirror_backup_poll_interval=0.2,
              clusterpro_mirror_backup_rejoin_delay=0, clusterpro_mirror_backup_rejoin_retries=50,
              **aws(w, "clusterpro_mirror_backup_"))
    ev.update(extra)
    return run_playbook(BACKUP, w["ec2"], ev, env=w["env"], inventory=w["inventory"])


def restore(w, set_id, check=False, **extra):
    ev = dict(clusterpro_hosts="server1", clusterpro_become=False, clusterpro_mirror_restore_set_id=set_id,
              clusterpro_mirror_restore_saved_definition=str(w["tmp"] / "md1-definition.json"),
              clusterpro_mirror_restore_rejoin_delay=0, clusterpro_mirror_restore_poll_interval=0.1,
              **aws(w, "clusterpro_mirror_restore_"))
    ev.update(extra)
    return run_playbook(RESTORE, w["ec2"], ev, env=w["env"], inventory=w["inventory"], check=check)


def events(w, kind):
    return [e for e in read_state(w["fake"])["log"] if e["event"] == kind]


def colors(w):
    with locked(w["fake"]) as cluster:
        return dict((s, cluster.color(MD, s)) for s in ("server1", "server2"))


def write(w):
    with locked(w["fake"]) as cluster:
        return cluster.write(MD)


def tags_of(snapshot):
    return dict((t["Key"], t["Value"]) for t in snapshot.get("Tags", []))


# -- the backup role in worlds of their own (each changes the cluster its own way)


def test_backup_refused_unless_green_green(world):
    w = world
    with locked(w["fake"]) as cluster:
        cluster.state["auto_recovery"] = False
        cluster.shutdown("server2")
        cluster.write(MD)
        cluster.state["servers"]["server2"] = dict(up=True, service=True)  # back, but its copy is RED
    before = len(read_state(w["fake"])["log"])
    w["ec2"].clear_calls()
    rc, res, _raw = backup(w)
    assert rc != 0
    refusal = task(res, "Refuse unless the mirror is GREEN/GREEN and the group runs on the active server")
    assert "Refused before any change" in refusal["msg"] and "RED" in refusal["msg"]
    new = read_state(w["fake"])["log"][before:]
    assert [e["argv"][0] for e in new if e["event"] == "command"] == ["clpstat", "clpmdstat"]
    assert not [c for c in w["ec2"].calls() if c["action"] in ("CreateSnapshots", "CreateSnapshot", "StopInstances")]


def test_backup_failure_after_step1_restarts_the_business(world):
    w = world
    w["ec2"].fail_next("CreateSnapshots", "InternalError", "injected", status=500, count=10)
    rc, res, _raw = backup(w)
    assert rc != 0
    assert "Step 4" in task(res, "Report the failure (the business group was started again on the active server)")["msg"]
    state = read_state(w["fake"])
    assert state["groups"]["failover"]["current"] == "server1"
    assert sorted(state["groups"]["failover"]["online"]) == ["exec1", "fip1", "md1"]
    # the CreateSnapshots that failed was the real one (the DryRun before it passed), and no set is left
    assert [c["error_code"] for c in w["ec2"].calls("CreateSnapshots")] == ["InternalError"]
    standby = w["inst"]["server2"].volume_ids[0]
    assert not w["ec2"].client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "volume-id", "Values": [standby]}])["Snapshots"]


# -- one backup (module fixture), then the restore role: refusals first, the real restore last


def test_backup_from_the_shut_down_standby(backed_up):
    w = backed_up
    taken, state = w["taken"], w["state"]
    # the cluster: standby shut down and back, mirror recovered by a differential copy, business on server1
    cmds = [e["argv"] for e in w["log"] if e["event"] == "command"]
    assert ["clpdown", "-h", "server2"] in cmds
    assert ["clprsc", "-t", "md1", "-f", "-h", "server1"] in cmds
    assert state["groups"]["failover"]["current"] == "server1"
    assert sorted(state["groups"]["failover"]["online"]) == ["exec1", "fip1", "md1"]
    assert w["colors"] == {"server1": "GREEN", "server2": "GREEN"}
    assert not [e for e in w["log"] if e["event"] == "mirror_recovery" and e["mode"] != "differential"]
    # the catalog: one complete set of the standby's volume, procedure, level and servers recorded
    info = w["ec2"].client().describe_snapshots(SnapshotIds=taken["snapshot_ids"])["Snapshots"]
    assert [s["VolumeId"] for s in info] == [w["inst"]["server2"].volume_ids[0]]
    tags = tags_of(info[0])
    assert tags["stillpoint:procedure"] == "clusterpro-standby"
    assert tags["stillpoint:level"] == "filesystem" and tags["stillpoint:state"] == "complete"
    array = json.loads("".join(tags[k] for k in sorted(t for t in tags if t.startswith("stillpoint:array"))))
    assert array["mirror"] == MD and [s["server"] for s in array["servers"]] == ["server1", "server2"]
    assert [s["device"] for s in array["servers"]] == [DEVICE, DEVICE]
    assert [s["volume_id"] for s in array["servers"]] == [em.volume_ids[0] for em in w["inst"].values()]
    # the level is the set's own (ebs_snapshot_set quiesced_level): tagged with the snapshot, never crash first
    assert taken["level"] == "filesystem"
    levels = [c["params"][k[:-len("Key")] + "Value"] for c in w["calls"] if c["action"] in ("CreateSnapshots", "CreateTags")
              for k, v in c["params"].items() if k.endswith(".Key") and v == "stillpoint:level"]
    assert levels and set(levels) == {"filesystem"}, levels  # from CreateSnapshots on, never crash first
    # the snapshot holds what the standby's copy held when it was shut down: the last write before the backup
    assert w["bridge"].snapshots[taken["snapshot_ids"][0]] == w["written"]
    assert state["disks"]["server2"][MD]["content"] == w["written"]


@pytest.mark.parametrize("other", ["another_set", "blank"])
def test_restore_refused_unless_both_volumes_come_from_the_set(backed_up, ec2, other):
    w = backed_up
    taken = w["taken"]
    client = ec2.client()
    em = w["inst"]["server2"]
    if other == "another_set":
        # a second complete set of the same volume (ebs_snapshot_set's library: one CreateSnapshots, tags,
        # wait, complete mark), restored for server2 only
        second = second_set(ec2, em)
        vol = client.create_volume(SnapshotId=second, AvailabilityZone=em.info["az"])["VolumeId"]
    else:
        vol = client.create_volume(Size=1, AvailabilityZone=em.info["az"])["VolumeId"]
    client.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    conf = read_state(w["fake"])["conf"]
    ec2.clear_calls()
    rc, res, _raw = restore(w, taken["set_id"], clusterpro_mirror_restore_volume_ids={"server2": vol})
    assert rc != 0
    refusal = task(res, "Prove from EC2 that both volumes come from the set's one snapshot (before any change)")
    assert "Refused: initial mirror construction stays on" in refusal["msg"], refusal["msg"]
    assert vol in refusal["msg"]
    assert read_state(w["fake"])["conf"] == conf  # the resource was not removed, the cluster still runs
    assert all(s["service"] for s in read_state(w["fake"])["servers"].values())
    assert not [c for c in ec2.calls() if c["action"] in ("DetachVolume", "AttachVolume")]


def second_set(ec2, em):
    """Another complete clusterpro-standby set of ``em``'s mirror volume; returns its one snapshot."""
    from ansible_collections.amazon.aws.plugins.module_utils.retries import RetryingBotoClientWrapper
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs

    client = RetryingBotoClientWrapper(ec2.client(), ebs.RETRY)
    plan = ebs.plan_members(ebs.describe_instance(client, em.instance_id), include_volume_ids=em.volume_ids)
    ec2.pending(0, calls=1)
    result = ebs.SnapshotSetRun(client, plan, catalog.new_set_id(), name="clusterpro", host="server2",
                                procedure="clusterpro-standby").run(ebs.NoQuiesce(), wait=True, wait_timeout=30,
                                                                    poll_interval=0.1)
    assert result["state"] == "complete", result
    return result["members"][0]["snapshot_id"]


def test_restore_windows_path_in_check_mode(backed_up, ec2):
    """The Windows edition's path in check mode on hosts with ansible_connection=local: the catalog,
    the plan of the volumes (nothing created), and the printed plan run; the win_powershell tasks are
    inside the block that needs created volumes, so check mode never reaches them here."""
    w = backed_up
    write(w)
    rc, res, _raw = backup(w, clusterpro_mirror_backup_edition="windows",
                           clusterpro_mirror_backup_drive_letters={"1": "R", "2": "M"})
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    taken = task(res, STEP4)
    assert colors(w) == {"server1": "GREEN", "server2": "GREEN"}
    ec2.clear_calls()
    conf = read_state(w["fake"])["conf"]
    rc, res, _raw = restore(w, taken["set_id"], check=True)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    assert not [c for c in ec2.calls() if c["action"] in ("CreateVolume", "DetachVolume", "AttachVolume")]
    assert read_state(w["fake"])["conf"] == conf
    plan = task(res, "Plan (check mode, volumes not created yet)")
    assert "without initial mirror construction" in plan["msg"]
    assert task(res, "Remember the set, the servers and the mirror (all from the catalog)")[
        "ansible_facts"]["__clusterpro_mirror_restore_array"]["drive_letters"] == {"1": "R", "2": "M"}


def test_roles_included_twice_in_one_play_start_afresh(backed_up, ec2):
    """Each CLUSTERPRO role included twice in one play (check mode, nothing changes): the facts a run
    builds item by item (the servers the backup records, the restore's plan and its proof requests)
    are that run's own - the second run's are the same as the first's, not the first's plus the
    second's."""
    w = backed_up
    active, standby = servers(w)
    backup_vars = dict(clusterpro_mirror_backup_active=active, clusterpro_mirror_backup_standby=standby,
                       clusterpro_mirror_backup_poll_interval=0.2, clusterpro_mirror_backup_rejoin_delay=0,
                       **aws(w, "clusterpro_mirror_backup_"))
    restore_vars = dict(clusterpro_mirror_restore_set_id=w["taken"]["set_id"],
                        clusterpro_mirror_restore_saved_definition=str(w["tmp"] / "md1-definition.json"),
                        **aws(w, "clusterpro_mirror_restore_"))
    tasks = []
    for n in (1, 2):
        tasks += [
            {"name": "backup %d" % n, "vars": backup_vars,
             "ansible.builtin.include_role": {"name": "stillpoint.snapshots.clusterpro_mirror_backup"}},
            {"name": "after backup %d" % n,
             "ansible.builtin.debug": {"msg": "{{ __clusterpro_mirror_backup_servers }}"}}]
    for n in (1, 2):
        tasks += [
            {"name": "restore %d" % n, "vars": restore_vars,
             "ansible.builtin.include_role": {"name": "stillpoint.snapshots.clusterpro_mirror_restore"}},
            {"name": "after restore %d" % n,
             "ansible.builtin.debug": {"msg": {"plan": "{{ __clusterpro_mirror_restore_plan }}",
                                               "before": "{{ __clusterpro_mirror_restore_proof_before }}",
                                               "after": "{{ __clusterpro_mirror_restore_proof_after }}"}}}]
    playbook = w["tmp"] / "twice.yml"
    playbook.write_text(json.dumps([{"name": "twice", "hosts": "server1", "gather_facts": False, "tasks": tasks}]))
    conf = read_state(w["fake"])["conf"]
    ec2.clear_calls()
    rc, res, _raw = run_playbook(str(playbook), ec2, {"clusterpro_become": False}, env=w["env"],
                                 inventory=w["inventory"], check=True)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    first, second = task(res, "after backup 1")["msg"], task(res, "after backup 2")["msg"]
    assert [s["server"] for s in first] == ["server1", "server2"]
    assert second == first
    first, second = task(res, "after restore 1")["msg"], task(res, "after restore 2")["msg"]
    assert [p["server"] for p in first["plan"]] == ["server1", "server2"]
    assert [p["server"] for p in first["before"]] == [p["server"] for p in first["after"]] == ["server1", "server2"]
    assert second == first
    # check mode: nothing changed in the cluster or in EC2
    assert read_state(w["fake"])["conf"] == conf
    assert not [c for c in ec2.calls() if not c["action"].startswith("Describe")]


def test_restore_both_servers_from_one_set_without_a_full_copy(backed_up, ec2):
    """Runs last: it replaces both servers' volumes in the shared world."""
    w = backed_up
    taken = w["taken"]
    saved = w["bridge"].snapshots[taken["snapshot_ids"][0]]
    assert saved == w["written"]
    write(w)  # the disaster: both copies move on (the operator's mistake is mirrored)
    assert read_state(w["fake"])["disks"]["server1"][MD]["content"] != saved
    before = len(read_state(w["fake"])["log"])
    rc, res, _raw = restore(w, taken["set_id"])
    assert rc == 0, json.dumps(res, indent=1)[-4000:]
    state = read_state(w["fake"])
    new = state["log"][before:]
    # no copy at all: construction skipped over identical disks, no recovery
    assert [e for e in new if e["event"] == "initial_construction"] == [
        {"event": "initial_construction", "md": MD, "mode": "skipped", "copies_identical": True}]
    assert not [e for e in new if e["event"] == "mirror_recovery"]
    assert state["disks"]["server1"][MD]["content"] == saved == state["disks"]["server2"][MD]["content"]
    assert colors(w) == {"server1": "GREEN", "server2": "GREEN"}
    assert state["groups"]["failover"]["current"] == "server1"
    # EC2: each server's device holds a volume created from the set's one snapshot
    client = ec2.client()
    for server, em in w["inst"].items():
        inst = client.describe_instances(InstanceIds=[em.instance_id])["Reservations"][0]["Instances"][0]
        vid = [b["Ebs"]["VolumeId"] for b in inst["BlockDeviceMappings"] if b["DeviceName"] == DEVICE][0]
        assert vid != em.volume_ids[0]
        assert client.describe_volumes(VolumeIds=[vid])["Volumes"][0]["SnapshotId"] == taken["snapshot_ids"][0]
        assert state["disks"][server][MD]["id"] == vid
    added = task(res, "Step 5 - add the mirror disk resource back without initial mirror construction, group start "
                      "attribute back to automatic")
    assert added["proof"]["snapshot_id"] == taken["snapshot_ids"][0]
    # the group start attribute in the clp.conf of each push: manual in step 1's (md1 removed), automatic again in
    # step 5's (md1 added), and automatic in the cluster's configuration at the end
    pushes = [(e["removed"], e["added"], e["group_start"]) for e in new if e["event"] == "config_push"]
    assert pushes == [([MD], [], {"failover": "manual"}), ([], [MD], {"failover": "automatic"})]
    removed = task(res, "Step 1 - remove the mirror disk resource, dependent groups set to manual start (cluster stopped "
                        "first; definition saved)")
    assert removed["group_start"] == {"failover": {"before": "automatic", "after": "manual"}}
    assert added["group_start"] == {"failover": {"before": "manual", "after": "automatic"}}
    assert read_topology(state["conf"])["group_start"] == {"failover": "1"}
    # with automatic start the group started by itself on server1 once md1 was GREEN there; step 6's start of the
    # group on server1 then found it started and changed nothing
    starts = [(e["server"], e.get("reason")) for e in new if e["event"] == "group_start"]
    assert starts == [("server1", "automatic startup")]
    assert task(res, "Step 6 - start the group")["changed"] is False
