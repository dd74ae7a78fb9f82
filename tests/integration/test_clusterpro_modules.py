# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""clusterpro_info, clusterpro_control and clusterpro_mirror_config against the FAKE CLUSTERPRO.

The FAKE (tests/fakes/clusterpro, not NEC software) is put on PATH: the modules run their real
command lines (clpstat, clpgrp, clprsc, clpcl, clpdown, clpmdstat, clpmdctrl, clpcfctrl) as
subprocesses through AnsibleModule.run_command, in-process with the set_module_args pattern, and
once through ansible-playbook. What the cluster did is read back from the fake's state file and
its event log, never from the modules' own answers alone. Seed 001 is followed: backup by standby
shutdown, recovery when the standby returns, and the restore of both servers from one snapshot
with initial mirror construction off, proved from real volumes and backup sets on the strict EC2
endpoint (127.0.0.1).
"""

import json
import os
import socket
import subprocess
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.amazon.aws.plugins.module_utils.retries import RetryingBotoClientWrapper

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.modules import clusterpro_control
from ansible_collections.stillpoint.snapshots.plugins.modules import clusterpro_info
from ansible_collections.stillpoint.snapshots.plugins.modules import clusterpro_mirror_config
from tests.fakes.clusterpro import build_conf
from tests.fakes.clusterpro import install
from tests.fakes.clusterpro import locked
from tests.fakes.clusterpro import read_state
from tests.fakes.clusterpro.state import read_topology
from tests.support.world import run_playbook
from tests.support.world import task
from tests.support.world import write_playbook
from tests.unit.utils import run_module

SNAP = "snap-0123456789abcdef0"  # the fake's disks only (no EC2 behind them)
AZ = "eu-west-1a"


class Fake:
    """One FAKE CLUSTERPRO cluster for a test: state file, environment, helpers."""

    def __init__(self, tmp_path, monkeypatch, **kw):
        self.path, self.env = install(tmp_path, **kw)
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        self.tmp = tmp_path

    @property
    def state(self):
        return read_state(self.path)

    def events(self, kind=None):
        return [e for e in self.state["log"] if kind is None or e["event"] == kind]

    def do(self, action, *args):
        with locked(self.path) as cluster:
            return getattr(cluster, action)(*args)

    def cli(self, *argv):
        env = dict(os.environ)
        env.update(self.env)
        return subprocess.run(list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              check=False)

    def colors(self, md="md1"):
        with locked(self.path) as cluster:
            return dict((s, cluster.color(md, s)) for s in cluster.topo["servers"])

    def online(self, group="failover"):
        record = self.state["groups"][group]
        return record["current"], sorted(record["online"])


@pytest.fixture
def fake(tmp_path, monkeypatch):
    return Fake(tmp_path, monkeypatch)


def info(monkeypatch, **args):
    return run_module(monkeypatch, clusterpro_info.main, args)


def control(monkeypatch, check_mode=False, **args):
    return run_module(monkeypatch, clusterpro_control.main, args, check_mode=check_mode)


def mirror_config(monkeypatch, check_mode=False, **args):
    return run_module(monkeypatch, clusterpro_mirror_config.main, args, check_mode=check_mode)


def test_info_reports_what_the_cluster_holds(fake, monkeypatch):
    fake.cli("clpgrp", "-s", "failover", "-h", "server1")
    result = info(monkeypatch)
    assert not result.get("failed"), result
    topo = read_topology(fake.state["conf"])
    assert sorted(result["servers"]) == sorted(topo["servers"]) and result["local_server"] == "server1"
    assert result["groups"]["failover"]["current"] == fake.online()[0] == "server1"
    assert sorted(result["groups"]["failover"]["resources"]) == sorted(topo["groups"]["failover"])
    assert result["resources"]["md1"] == {"group": "failover", "status": "Online", "server": "server1"}
    assert result["mirrors"]["md1"]["colors"] == fake.colors() and result["clean"] is True
    assert result["changed"] is False


def test_seed001_backup_by_standby_shutdown_and_differential_recovery(fake, monkeypatch):
    fake.cli("clpgrp", "-s", "failover", "-h", "server1")
    # step 1: stop the mirror disk resource on the active server; its dependents go with it (-f)
    args = dict(kind="resource", name="md1", server="server1", state="stopped")
    refused = fake.cli("clprsc", "-t", "md1", "-h", "server1")
    assert refused.returncode != 0 and "depend" in refused.stderr  # the FAKE rejects it as CLUSTERPRO does
    check = control(monkeypatch, check_mode=True, stop_dependents=True, **args)
    assert check["changed"] and check["command"] == ["clprsc", "-t", "md1", "-f", "-h", "server1"]
    assert [(a["what"], a["cmd"][1:], a["rc"], a["planned"]) for a in check["actions"]] == [
        ("stop resource md1 and its dependents on server1", ["-t", "md1", "-f", "-h", "server1"], None, True)]
    assert "md1" in fake.online()[1], "check mode changed nothing"
    done = control(monkeypatch, stop_dependents=True, **args)
    assert done["changed"] and done["after"]["status"] == "Offline"
    assert [(os.path.basename(a["cmd"][0]), a["cmd"][1:], a["rc"], a["planned"]) for a in done["actions"]] == [
        ("clprsc", ["-t", "md1", "-f", "-h", "server1"], 0, False)] and done["actions"][0]["ms"] >= 0
    assert fake.online() == ("server1", ["fip1"])
    again = control(monkeypatch, stop_dependents=True, **args)
    assert again["changed"] is False and again["actions"] == [] and again["command"] is None
    # step 2: shut the standby down (mirror clean)
    down = control(monkeypatch, kind="server", server="server2", state="shutdown")
    assert down["changed"] and fake.state["servers"]["server2"] == {"up": False, "service": False}
    assert control(monkeypatch, kind="server", server="server2", state="shutdown")["changed"] is False
    # step 3: the mirror disk resource and its dependents start again on the active server
    for name in ("md1", "exec1"):
        assert control(monkeypatch, kind="resource", name=name, server="server1", state="started")["changed"]
    assert fake.online() == ("server1", ["exec1", "fip1", "md1"])
    # the application writes while the standby is away (step 4 snapshots the standby meanwhile)
    written = fake.do("write", "md1")
    assert info(monkeypatch)["mirrors"]["md1"]["colors"] == {"server1": "GREEN", "server2": "GRAY"}
    # step 5: the standby boots and returns; the bitmap allows a differential recovery
    fake.do("boot", "server2")
    recovery = fake.events("mirror_recovery")
    assert [(e["source"], e["target"], e["mode"]) for e in recovery] == [("server1", "server2", "differential")]
    assert fake.state["disks"]["server2"]["md1"]["content"] == written
    assert info(monkeypatch, require_clean=True)["clean"] is True


def test_shutdown_refused_while_the_mirror_recovers(tmp_path, monkeypatch):
    fake = Fake(tmp_path, monkeypatch, recovery_steps=50)
    fake.cli("clpgrp", "-s", "failover", "-h", "server1")
    fake.cli("clpcl", "-t", "-h", "server2")
    fake.do("write", "md1")
    fake.cli("clpcl", "-s", "-h", "server2")
    assert fake.colors()["server2"] == "YELLOW"
    result = control(monkeypatch, kind="server", server="server2", state="shutdown")
    assert result["failed"] and "not clean" in result["msg"] and "YELLOW" in result["msg"]
    assert fake.state["servers"]["server2"]["up"] is True
    failed = info(monkeypatch, require_clean=True)
    assert failed["failed"] and "md1" in failed["mirrors"]


def test_wrong_node_refusals(tmp_path, monkeypatch):
    fake = Fake(tmp_path, monkeypatch)
    with locked(fake.path) as cluster:
        cluster.state["auto_recovery"] = False
    fake.cli("clpgrp", "-s", "failover", "-h", "server1")
    fake.cli("clpcl", "-t", "-h", "server2")
    fake.do("write", "md1")
    fake.cli("clpgrp", "-t", "failover", "-h", "server1")
    fake.cli("clpcl", "-s", "-h", "server2")
    assert fake.colors() == {"server1": "GREEN", "server2": "RED"}
    # activation on the stale copy: refused by the module, and by the FAKE when forced through
    result = control(monkeypatch, kind="group", name="failover", server="server2", state="started")
    assert result["failed"] and "not GREEN" in result["msg"]
    direct = fake.cli("clpgrp", "-s", "failover", "-h", "server2")
    assert direct.returncode != 0 and "RED" in direct.stderr and fake.online() == (None, [])
    # forced recovery from the stale copy: refused by both
    result = control(monkeypatch, kind="mirror", name="md1", server="server2", state="recovered", force=True)
    assert result["failed"] and "only a GREEN copy" in result["msg"]
    direct = fake.cli("clpmdctrl", "-f", "server2", "md1")
    assert direct.returncode != 0 and not fake.events("mirror_recovery")
    # forced recovery from the latest copy works: a full copy server1 -> server2
    check = control(monkeypatch, check_mode=True, kind="mirror", name="md1", server="server1", state="recovered",
                    force=True)
    assert check["command"] == ["clpmdctrl", "-f", "server1", "md1"] and not fake.events("mirror_recovery")
    done = control(monkeypatch, kind="mirror", name="md1", server="server1", state="recovered", force=True)
    assert done["changed"] and done["after"]["colors"] == {"server1": "GREEN", "server2": "GREEN"}
    assert [(e["source"], e["mode"], e["forced"]) for e in fake.events("mirror_recovery")] == [("server1", "full", True)]
    assert control(monkeypatch, kind="mirror", name="md1", state="recovered")["changed"] is False


def test_replaced_disk_means_full_recovery(fake, monkeypatch):
    fake.cli("clpgrp", "-s", "failover", "-h", "server1")
    fake.cli("clpdown", "-h", "server2")
    fake.do("write", "md1")
    fake.do("replace_disk", "server2", "md1", "disk-new", "empty")
    fake.do("boot", "server2")
    assert [e["mode"] for e in fake.events("mirror_recovery")] == ["full"]
    assert info(monkeypatch)["mirrors"]["md1"]["clean"]


def restore_both_from(fake, snapshot):
    """Seed 001 restore steps 2-4: both servers get a volume created from one snapshot."""
    for server in ("server1", "server2"):
        fake.do("replace_disk", server, "md1", "vol-from-%s-%s" % (snapshot, server), snapshot)


@pytest.fixture(scope="module")
def proof_sets(ec2_endpoint):
    """Two complete backup sets of one two-volume instance on the strict EC2 endpoint, made by
    ebs_snapshot_set's own library (one CreateSnapshots, member tags, wait, complete mark), and a way to
    create volumes from their snapshots: what clusterpro_mirror_config's same_backup_set is proved from."""
    ec2_endpoint.reset()
    raw = ec2_endpoint.client()
    client = RetryingBotoClientWrapper(raw, ebs.RETRY)
    world = ec2_endpoint.create_instance(az=AZ, volumes=[{"size": 1, "device": d} for d in ("/dev/sdf", "/dev/sdg")])
    sets = {}
    for label in ("a", "b"):
        plan = ebs.plan_members(ebs.describe_instance(client, world["instance_id"]))
        set_id = catalog.new_set_id()
        ec2_endpoint.pending(0, calls=1)  # this set's snapshots complete at once
        result = ebs.SnapshotSetRun(client, plan, set_id, name="clusterpro", host="server2",
                                    procedure="clusterpro-standby")
        result = result.run(ebs.NoQuiesce(), wait=True, wait_timeout=30, poll_interval=0.1)
        assert result["state"] == "complete", result
        sets[label] = (set_id, [m["snapshot_id"] for m in result["members"]])

    def volume(snapshot_id=None):
        kw = dict(SnapshotId=snapshot_id) if snapshot_id else dict(Size=1)
        return raw.create_volume(AvailabilityZone=AZ, VolumeType="gp3", **kw)["VolumeId"]
    return dict(raw=raw, sets=sets, volume=volume, instance_id=world["instance_id"])


def aws_args(ec2):
    return dict(endpoint_url=ec2.url, region=ec2.region, access_key="testing", secret_key="testing")


def same_set(set_id, **volume_ids):
    """same_backup_set as the restore role passes it: the set, and per server only its volume (and instance)."""
    return dict(set_id=set_id, volumes=[dict(server=server, **(v if isinstance(v, dict) else dict(volume_id=v)))
                                        for server, v in sorted(volume_ids.items())])


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_seed001_restore_without_initial_mirror_construction(fake, monkeypatch, ec2, proof_sets):
    m = proof_sets
    set_a, (snap, other_snap) = m["sets"]["a"]
    set_b, (snap_b, _vol_b) = m["sets"]["b"]
    saved = str(fake.tmp / "md1.json")
    base = dict(name="md1", saved_definition=saved)
    conf_before = fake.state["conf"]
    # step 1: remove the resource; refused while the cluster runs unless stop_cluster
    refused = mirror_config(monkeypatch, state="absent", **base)
    assert refused["failed"] and "cluster stopped" in refused["msg"] and fake.state["conf"] == conf_before
    assert read_topology(conf_before)["group_start"] == {"failover": "1"}  # no <start>: automatic, the default
    check = mirror_config(monkeypatch, check_mode=True, state="absent", stop_cluster=True, _ansible_diff=True, **base)
    assert check["changed"] and check["after"] is None and not os.path.exists(saved)
    assert [(a["what"], a["planned"]) for a in check["actions"]] == [
        ("save the definition of md1 to %s" % saved, True), ("push the configuration: remove mirror disk resource md1", True)]
    assert check["group_start"] == {"failover": {"before": "automatic", "after": "manual"}}
    assert check["diff"]["before"]["group_start"] == {"failover": "automatic"}
    assert check["diff"]["after"] == {"mirror": None, "group_start": {"failover": "manual"}}
    assert fake.state["conf"] == conf_before and all(s["service"] for s in fake.state["servers"].values())
    removed = mirror_config(monkeypatch, state="absent", stop_cluster=True, **base)
    assert removed["changed"] and removed["pushed"] and removed["stopped_cluster"]
    assert [(a["what"], a["cmd"][1:3], a["rc"], a["planned"]) for a in removed["actions"]] == [
        ("stop the cluster service on every server", ["-t", "-a"], 0, False),
        ("save the definition of md1 to %s" % saved, [], None, False),
        ("push the configuration: remove mirror disk resource md1", ["--push", "-l"], 0, False)]
    topo = read_topology(fake.state["conf"])
    assert "md1" not in topo["mirrors"] and topo["depends"]["exec1"] == []
    # step 1 "dependent groups set to manual start": in the same push that removed md1
    assert topo["group_start"] == {"failover": "0"} and removed["group_start"]["failover"]["after"] == "manual"
    assert [e["group_start"] for e in fake.events("config_push")] == [{"failover": "manual"}]
    with open(saved) as handle:
        assert json.load(handle)["group_start"] == [{"group": "failover", "start": None}]  # it had no element
    assert ("mdw", "mdw1") not in topo["monitors"] and "md1" not in fake.state["mirrors"]
    with open(saved) as handle:
        assert json.load(handle)["dependents"] == [{"type": "exec", "name": "exec1"}]
    again = mirror_config(monkeypatch, state="absent", **base)
    assert again["changed"] is False and not again.get("failed") and again["actions"] == []
    # steps 2-4: both servers get a real EBS volume created from the set's one snapshot (the standby's)
    vols = dict(server1=m["volume"](snap), server2=m["volume"](snap))
    for server, vid in vols.items():
        fake.do("replace_disk", server, "md1", vid, snap)  # the fake's content: what the volume was made from
    # step 5: add it back without initial construction: refused without proof, or when EC2 does not prove it
    other_member, from_set_b, blank = m["volume"](other_snap), m["volume"](snap_b), m["volume"]()
    ec2.clear_calls()
    refusals = (
        (None, "only when both mirror volumes"),
        (same_set(set_a, server1=vols["server1"], server2=other_member), "different snapshots of set %s" % set_a),
        (same_set(set_a, server1=vols["server1"], server2=from_set_b), "%s (from %s) were not created from a snapshot "
                                                                       "of backup set %s" % (from_set_b, snap_b, set_a)),
        (same_set(set_a, server1=vols["server1"], server2=blank), "%s (from no snapshot)" % blank),
        (same_set(set_b, **vols), "were not created from a snapshot of backup set %s" % set_b),  # the wrong set named
        (same_set(set_a, server1=vols["server1"], server2=vols["server1"]), "needs the backing volumes of both sides"),
        (same_set(set_a, server1=vols["server1"], server2="vol-0123456789abcdef0"), "vol-0123456789abcdef0 do not exist"),
        (same_set(catalog.new_set_id(), **vols), "is not in the catalog"),
        (same_set(set_a, server1=dict(volume_id=vols["server1"], instance_id=m["instance_id"]), server2=vols["server2"]),
         "is not attached to instance %s" % m["instance_id"]),
    )
    for bad, why in refusals:
        args = dict(base, state="present", initial_mirror_construction=False, **aws_args(ec2))
        if bad:
            args["same_backup_set"] = bad
        result = mirror_config(monkeypatch, **args)
        assert result["failed"] and why in result["msg"], (why, result)
        assert bad is None or result["msg"].startswith("Refused"), result["msg"]
        assert "md1" not in read_topology(fake.state["conf"])["mirrors"]
    # EC2 errors during the proof are refusals too; nothing changes
    ec2.fail_next("DescribeVolumes", "UnauthorizedOperation", "injected: not allowed", status=403)
    denied = mirror_config(monkeypatch, state="present", initial_mirror_construction=False,
                           same_backup_set=same_set(set_a, **vols), **dict(base, **aws_args(ec2)))
    assert denied["failed"] and "UnauthorizedOperation" in denied["msg"], denied
    assert denied["msg"].startswith("Refused: initial mirror construction stays on")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    unreachable = mirror_config(monkeypatch, state="present", initial_mirror_construction=False,
                                same_backup_set=same_set(set_a, **vols),
                                **dict(base, **dict(aws_args(ec2), endpoint_url="http://127.0.0.1:%d" % closed_port())))
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    assert unreachable["failed"] and unreachable["msg"].startswith(
        "Refused: initial mirror construction stays on, EC2 could not be read"), unreachable
    assert "Could not connect" in unreachable["msg"] and "boto3_version" in unreachable  # fail_json_aws
    assert "md1" not in read_topology(fake.state["conf"])["mirrors"]
    # proved from EC2: both volumes come from the one snapshot of the complete set
    added = mirror_config(monkeypatch, state="present", initial_mirror_construction=False,
                          same_backup_set=same_set(set_a, **vols), **dict(base, **aws_args(ec2)))
    assert added["changed"] and added["snapshot_id"] == snap and added["after"]["initial_mirror_construction"] is False
    assert [a["what"] for a in added["actions"]] == [
        "push the configuration: add mirror disk resource md1 back, initial mirror construction off"]
    sources = dict((v["VolumeId"], v["SnapshotId"]) for v in m["raw"].describe_volumes(VolumeIds=list(vols.values()))[
        "Volumes"])  # what EC2 says, read back independently of the module
    assert added["proof"]["volumes"] == sources == {vols["server1"]: snap, vols["server2"]: snap}
    assert added["proof"]["set_id"] == set_a and added["proof"]["member_index"] == 0
    topo = read_topology(fake.state["conf"])
    assert topo["mirrors"]["md1"]["fullcopy"] == "0" and topo["depends"]["exec1"] == ["md1"]
    assert ("mdw", "mdw1") in topo["monitors"] and topo["groups"]["failover"] == ["fip1", "md1", "exec1"]
    # step 5 "group start attribute back to automatic", in the push that added md1; the clp.conf group is as before
    assert topo["group_start"] == {"failover": "1"} and added["group_start"] == {
        "failover": {"before": "manual", "after": "automatic"}}
    assert fake.events("config_push")[-1]["added"] == ["md1"]
    assert fake.events("config_push")[-1]["group_start"] == {"failover": "automatic"}
    assert [ET.canonicalize(ET.tostring(g, encoding="unicode")) for g in ET.fromstring(fake.state["conf"]).findall("group")] == \
        [ET.canonicalize(ET.tostring(g, encoding="unicode")) for g in ET.fromstring(conf_before).findall("group")]
    assert mirror_config(monkeypatch, state="present", initial_mirror_construction=False,
                         same_backup_set=same_set(set_a, **vols), **dict(base, **aws_args(ec2)))["changed"] is False
    # the proof only reads EC2
    assert [c["action"] for c in ec2.calls() if not c["action"].startswith("Describe")] == []
    # step 6: start the cluster; no copy was made, the copies are identical. The group's start attribute is
    # automatic again, so it starts by itself on its first server once md1 is GREEN there (after the
    # construction, when the second server joins); starting it by hand then changes nothing
    assert control(monkeypatch, kind="cluster_service", server="server1", state="started")["changed"]
    assert fake.online() == (None, []), "md1 is not constructed yet (GRAY): the group waits"
    assert control(monkeypatch, kind="cluster_service", server="server2", state="started")["changed"]
    construction = fake.events("initial_construction")
    assert construction == [{"event": "initial_construction", "md": "md1", "mode": "skipped", "copies_identical": True}]
    assert not fake.events("mirror_recovery")
    assert [(e["server"], e.get("reason")) for e in fake.events("group_start")] == [("server1", "automatic startup")]
    assert control(monkeypatch, kind="group", name="failover", server="server1", state="started")["changed"] is False
    assert fake.online() == ("server1", ["exec1", "fip1", "md1"])
    assert fake.colors() == {"server1": "GREEN", "server2": "GREEN"}


def test_readding_with_initial_construction_copies_everything(fake, monkeypatch):
    saved = str(fake.tmp / "md1.json")
    mirror_config(monkeypatch, name="md1", saved_definition=saved, state="absent", stop_cluster=True)
    restore_both_from(fake, SNAP)
    fake.do("replace_disk", "server2", "md1", "vol-other", "snap-0fedcba987654321f")
    added = mirror_config(monkeypatch, name="md1", saved_definition=saved, state="present")
    assert added["changed"] and added["after"]["initial_mirror_construction"] is True
    fake.cli("clpcl", "-s", "-a")
    assert [(e["mode"], e["source"], e["target"]) for e in fake.events("initial_construction")] == \
        [("full", "server1", "server2")]
    assert fake.state["disks"]["server2"]["md1"]["content"] == SNAP


def conf_with_start_attributes():
    """failover (md1) may start on server2 first (policy); app waits for failover at startup and is manual
    already; other has nothing to do with md1."""
    root = ET.fromstring(build_conf(groups={"failover": [("fip", "fip1"), ("md", "md1"), ("exec", "exec1")],
                                            "app": [("exec", "exec2")], "other": [("exec", "exec3")]}))
    groups = dict((g.get("name"), g) for g in root.findall("group"))
    for order, server in enumerate(("server2", "server1")):
        ET.SubElement(ET.SubElement(groups["failover"], "policy", {"name": server}), "order").text = str(order)
    ET.SubElement(groups["app"], "start").text = "0"
    ET.SubElement(ET.SubElement(ET.SubElement(groups["app"], "depend"), "act"), "depend", {"name": "failover"})
    return ET.tostring(root, encoding="unicode")


def test_group_start_attribute_while_the_mirror_disk_is_removed(tmp_path, monkeypatch):
    fake = Fake(tmp_path, monkeypatch, conf=conf_with_start_attributes())
    args = dict(name="md1", saved_definition=str(tmp_path / "md1.json"), stop_cluster=True)
    removed = mirror_config(monkeypatch, state="absent", **args)
    assert removed["group_start"] == {"failover": {"before": "automatic", "after": "manual"},
                                      "app": {"before": "manual", "after": "manual"}}
    assert read_topology(fake.state["conf"])["group_start"] == {"failover": "0", "app": "0", "other": "1"}
    # the cluster starts without md1: only the unrelated automatic group starts by itself
    fake.cli("clpcl", "-s", "-a")
    assert [(e["group"], e["server"]) for e in fake.events("group_start")] == [("other", "server1")]
    assert fake.online("failover") == (None, []) and fake.online("app") == (None, [])
    added = mirror_config(monkeypatch, state="present", **args)
    assert added["changed"] and added["stopped_cluster"]
    assert added["group_start"] == {"failover": {"before": "manual", "after": "automatic"},
                                    "app": {"before": "manual", "after": "manual"}}
    assert read_topology(fake.state["conf"])["group_start"] == {"failover": "1", "app": "0", "other": "1"}
    again = mirror_config(monkeypatch, state="present", **args)
    assert again["changed"] is False and again["group_start"] == {}
    # now failover starts by itself, on the first server of its policy once md1 is constructed there
    fake.cli("clpcl", "-s", "-a")
    assert [e["mode"] for e in fake.events("initial_construction")] == ["full"]
    assert [(e["group"], e["server"], e.get("reason")) for e in fake.events("group_start")][1:] == [
        ("other", "server1", "automatic startup"), ("failover", "server2", "automatic startup")]
    assert fake.online("failover") == ("server2", ["exec1", "fip1", "md1"]) and fake.online("app") == (None, [])


@pytest.mark.parametrize("edition,version,flag", [("windows", "4.3.0", "-w"), ("linux", "5.1.2", None)])
def test_editions_and_versions_use_their_own_clpcfctrl_line(tmp_path, monkeypatch, edition, version, flag):
    fake = Fake(tmp_path, monkeypatch, edition=edition, version=version)
    saved = str(tmp_path / "md1.json")
    args = dict(name="md1", saved_definition=saved, state="absent", stop_cluster=True, edition=edition)
    wrong = mirror_config(monkeypatch, version="5" if version.startswith("4") else "4", **args)
    assert wrong["failed"] and "Invalid option" in wrong["msg"], "the FAKE rejects the other version's line"
    assert "md1" in read_topology(fake.state["conf"])["mirrors"]
    fake.cli("clpcl", "-s", "-a")
    done = mirror_config(monkeypatch, version=version, **args)
    assert done["pushed"] and "md1" not in read_topology(fake.state["conf"])["mirrors"]
    lines = [e["argv"] for e in fake.events("command") if e["argv"][0] == "clpcfctrl"]
    third = [flag] if flag else ["-x"]
    assert [line[:3] for line in lines] == [["clpcfctrl", "--pull"] + third, ["clpcfctrl", "--push"] + third]
    assert all(not os.path.exists(line[-1]) for line in lines), "the work directory is removed afterwards"


class NoEndpoint:
    """run_playbook's endpoint: these modules talk to no AWS endpoint."""

    @staticmethod
    def env():
        return {}


def test_modules_through_ansible_playbook(fake, tmp_path):
    playbook = write_playbook(tmp_path, [
        {"name": "info", "stillpoint.snapshots.clusterpro_info": {}, "register": "cluster"},
        {"name": "start group (check)", "check_mode": True,
         "stillpoint.snapshots.clusterpro_control": {"kind": "group", "name": "failover", "server": "server1",
                                                     "state": "started"}},
        {"name": "start group", "stillpoint.snapshots.clusterpro_control": {
            "kind": "group", "name": "{{ cluster.groups | first }}", "server": "{{ cluster.local_server }}",
            "state": "started"}},
        {"name": "start group again", "stillpoint.snapshots.clusterpro_control": {
            "kind": "group", "name": "failover", "server": "server1", "state": "started"}},
    ])
    rc, results, _raw = run_playbook(playbook, NoEndpoint(), env=fake.env, timeout=120)
    assert rc == 0, results
    assert task(results, "info")["mirrors"]["md1"]["clean"] is True
    assert task(results, "start group (check)")["changed"] is True
    assert task(results, "start group")["command"] == ["clpgrp", "-s", "failover", "-h", "server1"]
    assert task(results, "start group again")["changed"] is False
    assert fake.online() == ("server1", ["exec1", "fip1", "md1"])


def test_stopping_the_local_cluster_service(fake, monkeypatch):
    result = control(monkeypatch, kind="cluster_service", server="server1", state="stopped")
    assert result["changed"] and result["command"] == ["clpcl", "-t", "-h", "server1"]
    assert fake.state["servers"]["server1"] == {"up": True, "service": False}
    # clpstat fails on a server whose service is stopped; starting it still works, once
    started = control(monkeypatch, kind="cluster_service", server="server1", state="started")
    assert started["changed"] and started["after"]["status"] == "Online"
    assert control(monkeypatch, kind="cluster_service", server="server1", state="started")["changed"] is False
