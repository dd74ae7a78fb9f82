# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Windows path of the clusterpro_info, clusterpro_control and clusterpro_mirror_config action plugins.

There is no Windows host here. ansible-playbook runs on localhost made a stand-in Windows host by
tests/fakes/clusterpro/windows_stand_in (FAKE, tests only): ``ansible_shell_type`` names a shell plugin of
the POSIX shell that reports the ``powershell`` family, so the shipped action plugins take their Windows
path (library on the controller, every CLUSTERPRO command through ansible.windows.win_command, files
through win_tempfile/win_stat/slurp/win_copy/win_file); a FAKE ansible.windows first on the collections
path routes those Windows modules to ansible.builtin.command/tempfile/stat/file/copy. The target is the
FAKE CLUSTERPRO, Windows edition (tests/fakes/clusterpro, not NEC software); what ran is read back from
its state file and command log. The same_backup_set proof reads the strict EC2 endpoint on 127.0.0.1
from the controller.
"""

import base64
import json
import os
import socket
import subprocess
import sys

import pytest

from ansible_collections.amazon.aws.plugins.module_utils.retries import RetryingBotoClientWrapper

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._clusterpro_run import LocalFiles
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._clusterpro import ModuleFiles
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._clusterpro import ModuleRunner
from tests.fakes.clusterpro import WINDOWS_SHELL
from tests.fakes.clusterpro import install
from tests.fakes.clusterpro import locked
from tests.fakes.clusterpro import read_state
from tests.fakes.clusterpro import windows_stand_in_env
from tests.fakes.clusterpro.state import read_topology
from tests.support.world import COLLECTIONS
from tests.support.world import run_playbook
from tests.support.world import task
from tests.support.world import write_playbook

AZ = "eu-west-1a"
READS = ("clpstat", "clpmdstat")


class NoEndpoint:
    @staticmethod
    def env():
        return {}


def commands(path, since=0):
    return [e["argv"] for e in read_state(path)["log"][since:] if e["event"] == "command"]


def changes(path, since=0):
    """The command lines that are not reads."""
    return [argv for argv in commands(path, since) if argv[0] not in READS and argv[:2] != ["clpcfctrl", "--pull"]]


def colors(path, md="md1"):
    with locked(path) as cluster:
        return dict((s, cluster.color(md, s)) for s in cluster.topo["servers"])


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def on_windows_path(result):
    """The Windows path returns the library's result; a module's exit_json adds ``invocation``."""
    return "invocation" not in result


def play(tmp_path, tasks, env, endpoint=None, name="test.yml"):
    playbook = write_playbook(tmp_path, tasks, name=name, vars=WINDOWS_SHELL)
    env = dict(env, **windows_stand_in_env(COLLECTIONS))
    rc, results, raw = run_playbook(playbook, endpoint or NoEndpoint(), env=env, timeout=120)
    return rc, results, raw


def cp(module, args, name, **task_kw):
    args = dict(args, edition="windows")
    return dict({"name": name, "stillpoint.snapshots.clusterpro_" + module: args}, **task_kw)


def test_info_and_control_through_the_windows_path(tmp_path):
    path, env = install(tmp_path, edition="windows", version="4.3.0")
    fenv = dict(os.environ, **env)

    def cli(*argv):
        return subprocess.run(list(argv), env=fenv, capture_output=True, text=True, check=False)
    # server2's copy goes stale (RED) while the group is stopped (as in test_wrong_node_refusals)
    with locked(path) as cluster:
        cluster.state["auto_recovery"] = False
    cli("clpgrp", "-s", "failover", "-h", "server1")
    cli("clpcl", "-t", "-h", "server2")
    with locked(path) as cluster:
        cluster.write("md1")
    cli("clpgrp", "-t", "failover", "-h", "server1")
    cli("clpcl", "-s", "-h", "server2")
    assert colors(path) == {"server1": "GREEN", "server2": "RED"}
    since = len(read_state(path)["log"])
    group = dict(kind="group", name="failover", state="started")
    force = dict(kind="mirror", name="md1", state="recovered", force=True)
    rc, res, _raw = play(tmp_path, [
        cp("info", {}, "info"),
        cp("control", dict(group, server="server2"), "start on the stale copy", ignore_errors=True),
        cp("control", dict(force, server="server1"), "force (check)", check_mode=True),
        cp("control", dict(force, server="server1"), "force"),
        cp("control", dict(group, server="server1"), "start (check)", check_mode=True),
        cp("control", dict(group, server="server1"), "start"),
        cp("control", dict(group, server="server1"), "start again"),
        cp("control", dict(kind="group", state="started"), "required_if", ignore_errors=True),
        cp("control", dict(group, server="server1", colour="red"), "unknown option", ignore_errors=True),
        cp("control", dict(group, server="server1", state="stopped"), "stop"),
        # with the POSIX shell the module itself runs on the target
        cp("info", {}, "module on a POSIX target", vars={"ansible_shell_type": "sh"}),
    ], env)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    info = task(res, "info")
    assert on_windows_path(info) and info["changed"] is False and not info.get("failed")
    topo = read_topology(read_state(path)["conf"])
    assert sorted(info["servers"]) == sorted(topo["servers"]) and info["local_server"] == "server1"
    assert info["mirrors"]["md1"]["colors"] == {"server1": "GREEN", "server2": "RED"} and info["clean"] is False
    assert sorted(info["groups"]["failover"]["resources"]) == sorted(topo["groups"]["failover"])
    # a refusal of the library's (plan_control), before any change
    stale = task(res, "start on the stale copy")
    assert stale["failed"] and "not GREEN" in stale["msg"] and on_windows_path(stale)
    # forced recovery: the Windows form (from the server it runs on), check mode runs nothing
    check = task(res, "force (check)")
    assert check["changed"] and check["command"] == ["clpmdctrl", "--force", "md1"] and check["after"] is None
    assert check["actions"] == [dict(what="forced recovery of mirror md1 from server1", cmd=["clpmdctrl", "--force", "md1"],
                                     rc=None, ms=None, planned=True)]
    done = task(res, "force")
    assert done["changed"] and done["after"]["colors"] == {"server1": "GREEN", "server2": "GREEN"}
    assert [(a["cmd"], a["rc"], a["planned"]) for a in done["actions"]] == [(["clpmdctrl", "--force", "md1"], 0, False)]
    assert task(res, "start (check)")["changed"] and task(res, "start (check)")["after"] is None
    started = task(res, "start")
    assert started["changed"] and started["command"] == ["clpgrp", "-s", "failover", "-h", "server1"]
    assert started["after"] == {"status": "Online", "current": "server1"}
    assert task(res, "start again")["changed"] is False
    # the module's own argument spec and rules
    assert "missing: name, server" in task(res, "required_if")["msg"]
    assert "colour" in task(res, "unknown option")["msg"] and task(res, "unknown option")["failed"]
    assert task(res, "stop")["command"] == ["clpgrp", "-t", "failover", "-h", "server1"]
    module_run = task(res, "module on a POSIX target")
    assert not on_windows_path(module_run) and set(module_run) - {"invocation"} == set(info), "same result shape"
    assert module_run["mirrors"]["md1"]["colors"] == done["after"]["colors"]
    # what the FAKE ran: reads, and exactly the three changes (Windows forms); none from the check-mode tasks
    ran = commands(path, since)
    assert {argv[0] for argv in ran} <= {"clpstat", "clpmdstat", "clpmdctrl", "clpgrp"}
    assert changes(path, since) == [["clpmdctrl", "--force", "md1"], ["clpgrp", "-s", "failover", "-h", "server1"],
                                    ["clpgrp", "-t", "failover", "-h", "server1"]]
    state = read_state(path)
    assert [(e["source"], e["mode"], e["forced"]) for e in state["log"][since:] if e["event"] == "mirror_recovery"] == \
        [("server1", "full", True)]
    assert state["groups"]["failover"]["current"] is None and colors(path) == {"server1": "GREEN", "server2": "GREEN"}


@pytest.fixture(scope="module")
def backup_set(ec2_endpoint):
    """One complete two-volume backup set on the strict EC2 endpoint (ebs_snapshot_set's library)."""
    ec2_endpoint.reset()
    raw = ec2_endpoint.client()
    client = RetryingBotoClientWrapper(raw, ebs.RETRY)
    world = ec2_endpoint.create_instance(az=AZ, volumes=[{"size": 1, "device": d} for d in ("/dev/sdf", "/dev/sdg")])
    plan = ebs.plan_members(ebs.describe_instance(client, world["instance_id"]))
    set_id = catalog.new_set_id()
    ec2_endpoint.pending(0, calls=1)
    result = ebs.SnapshotSetRun(client, plan, set_id, name="clusterpro", host="server2", procedure="clusterpro-standby")
    result = result.run(ebs.NoQuiesce(), wait=True, wait_timeout=30, poll_interval=0.1)
    assert result["state"] == "complete", result

    def volume(snapshot_id):
        return raw.create_volume(AvailabilityZone=AZ, VolumeType="gp3", SnapshotId=snapshot_id)["VolumeId"]
    return dict(raw=raw, set_id=set_id, snapshots=[m["snapshot_id"] for m in result["members"]], volume=volume)


def test_mirror_config_remove_and_add_back_through_the_windows_path(tmp_path, ec2, backup_set):
    path, env = install(tmp_path, edition="windows", version="4.3.0")
    saved = str(tmp_path / "md1.json")
    base = dict(name="md1", saved_definition=saved)
    # seed 001 restore step 1
    rc, res, _raw = play(tmp_path, [
        cp("mirror_config", dict(base, state="absent"), "refused while the cluster runs", ignore_errors=True),
        cp("mirror_config", dict(base, state="absent", stop_cluster=True), "remove (check)", check_mode=True, diff=True),
        cp("mirror_config", dict(base, state="absent", stop_cluster=True), "remove"),
        cp("mirror_config", dict(base, state="absent"), "remove again"),
    ], env, name="remove.yml")
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    refused = task(res, "refused while the cluster runs")
    assert refused["failed"] and "cluster stopped" in refused["msg"] and on_windows_path(refused)
    check = task(res, "remove (check)")
    assert check["changed"] and check["after"] is None and not check["pushed"]
    assert check["diff"] == {"before": {"mirror": check["before"], "group_start": {"failover": "automatic"}},
                             "after": {"mirror": None, "group_start": {"failover": "manual"}}}
    removed = task(res, "remove")
    assert removed["changed"] and removed["pushed"] and removed["stopped_cluster"] and on_windows_path(removed)
    assert [(a["what"], a["cmd"][:3], a["rc"]) for a in removed["actions"]] == [
        ("stop the cluster service on every server", ["clpcl", "-t", "-a"], 0),
        ("save the definition of md1 to %s" % saved, [], None),
        ("push the configuration: remove mirror disk resource md1", ["clpcfctrl", "--push", "-w"], 0)]
    assert task(res, "remove again")["changed"] is False
    state = read_state(path)
    topo = read_topology(state["conf"])
    assert "md1" not in topo["mirrors"] and topo["group_start"] == {"failover": "0"} and "md1" not in state["mirrors"]
    with open(saved) as handle:  # written through the copy action, read back here
        definition = json.load(handle)
    assert definition == removed["definition"] and definition["group_start"] == [{"group": "failover", "start": None}]
    pulls = [argv for argv in commands(path) if argv[:2] == ["clpcfctrl", "--pull"]]
    assert changes(path) == [["clpcl", "-t", "-a"], ["clpcfctrl", "--push", "-w", "-x", pulls[2][-1]]]
    assert [argv[:4] for argv in pulls] == [["clpcfctrl", "--pull", "-w", "-x"]] * 4  # one pull per task
    assert len({argv[-1] for argv in pulls}) == 4 and not any(os.path.exists(argv[-1]) for argv in pulls)
    assert [e["group_start"] for e in state["log"] if e["event"] == "config_push"] == [{"failover": "manual"}]
    # steps 2-4: both servers get a volume created from the set's one snapshot (the standby's)
    snap, other = backup_set["snapshots"]
    vols = dict(server1=backup_set["volume"](snap), server2=backup_set["volume"](snap))
    for server, vid in vols.items():
        with locked(path) as cluster:
            cluster.replace_disk(server, "md1", vid, snap)
    mixed = dict(server1=vols["server1"], server2=backup_set["volume"](other))
    aws = dict(endpoint_url=ec2.url, region=ec2.region, access_key="testing", secret_key="testing")

    def proof(volumes):
        return dict(set_id=backup_set["set_id"], volumes=[dict(server=s, volume_id=v) for s, v in sorted(volumes.items())])
    add = dict(base, state="present", initial_mirror_construction=False, **aws)
    ec2.clear_calls()
    ec2.fail_next("DescribeVolumes", "UnauthorizedOperation", "injected: not allowed", status=403)
    since = len(read_state(path)["log"])
    rc, res, _raw = play(tmp_path, [
        cp("mirror_config", dict(add, same_backup_set=proof(vols)), "EC2 denies", ignore_errors=True),
        cp("mirror_config", dict(add, same_backup_set=proof(vols), endpoint_url="http://127.0.0.1:%d" % closed_port()),
           "EC2 unreachable", ignore_errors=True),
        cp("mirror_config", dict(add, same_backup_set=proof(mixed)), "different snapshots", ignore_errors=True),
        cp("mirror_config", dict(add, same_backup_set=proof(vols)), "add back (check)", check_mode=True),
        cp("mirror_config", dict(add, same_backup_set=proof(vols)), "add back"),
        cp("mirror_config", dict(add, same_backup_set=proof(vols)), "add back again"),
    ], dict(env, AWS_MAX_ATTEMPTS="1"), endpoint=ec2, name="add.yml")
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    denied = task(res, "EC2 denies")
    assert denied["failed"] and denied["msg"].startswith("Refused: initial mirror construction stays on")
    assert "UnauthorizedOperation" in denied["msg"]
    unreachable = task(res, "EC2 unreachable")
    assert unreachable["failed"] and unreachable["msg"].startswith(
        "Refused: initial mirror construction stays on, EC2 could not be read"), unreachable
    assert "Could not connect" in unreachable["msg"]
    mixed_res = task(res, "different snapshots")
    assert mixed_res["failed"] and "different snapshots of set %s" % backup_set["set_id"] in mixed_res["msg"]
    check = task(res, "add back (check)")
    assert check["changed"] and not check["pushed"] and check["after"]["initial_mirror_construction"] is False
    added = task(res, "add back")
    assert added["changed"] and added["pushed"] and added["snapshot_id"] == snap and on_windows_path(added)
    sources = dict((v["VolumeId"], v["SnapshotId"]) for v in backup_set["raw"].describe_volumes(
        VolumeIds=list(vols.values()))["Volumes"])  # what EC2 says, read back independently
    assert added["proof"]["volumes"] == sources == {vols["server1"]: snap, vols["server2"]: snap}
    assert added["group_start"] == {"failover": {"before": "manual", "after": "automatic"}}
    assert task(res, "add back again")["changed"] is False
    state = read_state(path)
    topo = read_topology(state["conf"])
    assert topo["mirrors"]["md1"]["fullcopy"] == "0" and topo["group_start"] == {"failover": "1"}
    assert topo["depends"]["exec1"] == ["md1"] and ("mdw", "mdw1") in topo["monitors"]
    pushes = [e for e in state["log"][since:] if e["event"] == "config_push"]
    assert [(p["added"], p["group_start"]) for p in pushes] == [(["md1"], {"failover": "automatic"})]
    ran = changes(path, since)
    assert len(ran) == 1 and ran[0][:4] == ["clpcfctrl", "--push", "-w", "-x"] and not os.path.exists(ran[0][-1])
    # the proof only read EC2, from the controller
    assert [c["action"] for c in ec2.calls() if not c["action"].startswith("Describe")] == []
    # start the cluster: no copy is made, the copies are identical
    subprocess.run(["clpcl", "-s", "-a"], env=dict(os.environ, **env), capture_output=True, check=True)
    assert [(e["mode"], e["copies_identical"]) for e in read_state(path)["log"] if e["event"] == "initial_construction"] \
        == [("skipped", True)]


# -- the adapters, with an executor that does what the modules do, here -------------------------


def local_execute(calls):
    """``execute(module, args)`` doing, on this machine, what the named modules do."""
    def execute(module, args):
        calls.append((module, args))
        if module == "command":
            try:
                proc = subprocess.run(args["argv"], input=args.get("stdin"), capture_output=True, text=True, check=False)
            except OSError as exc:
                return dict(failed=True, msg=str(exc))
            return dict(rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr, failed=proc.returncode != 0)
        if module == "stat":
            return dict(stat=dict(exists=os.path.exists(args["path"])))
        if module == "slurp":
            with open(args["src"], "rb") as handle:
                return dict(content=base64.b64encode(handle.read()).decode(), encoding="base64")
        if module == "file":
            return dict(failed=True, msg="refused by the test") if args["path"].endswith("keep") else dict(changed=True)
        raise AssertionError(module)
    return execute


def test_module_runner():
    calls = []
    runner = ModuleRunner(local_execute(calls), "command")
    assert runner.bin("clpstat") == "clpstat"
    rc, out, _err = runner([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"], data="green")
    assert (rc, out) == (0, "GREEN\n") and calls[-1][1]["stdin"] == "green"
    fail = [sys.executable, "-c", "import sys; sys.stderr.write('no such group'); sys.exit(3)"]
    with pytest.raises(StillpointError) as info:
        runner(fail, what="clpgrp -s")
    assert info.value.rc == 3 and "clpgrp -s failed (rc=3): no such group" in info.value.msg
    assert runner(fail, check=False)[0] == 3
    with pytest.raises(StillpointError) as info:
        runner(["/nonexistent/clpstat"], check=False)
    assert "could not run /nonexistent/clpstat" in info.value.msg and info.value.rc is None


def test_module_files(tmp_path):
    calls = []
    written = []

    def write(path, text):
        written.append(path)
        if path.endswith("readonly"):
            return dict(failed=True, msg="access denied")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return dict(changed=True)
    files = ModuleFiles(local_execute(calls), dict(stat="stat", slurp="slurp", file="file", tempfile="tempfile"),
                        write, os.path.join)
    target = str(tmp_path / "md1.json")
    assert files.read(target) is None and [c[0] for c in calls] == ["stat"]  # no slurp of a missing file
    files.write(target, "{\"name\": \"md\u00e91\"}")
    assert files.read(target) == "{\"name\": \"md\u00e91\"}"
    with pytest.raises(StillpointError) as info:
        files.write(str(tmp_path / "readonly"), "x")
    assert "access denied" in info.value.msg
    files.remove_workdir(str(tmp_path / "keep"))
    assert files.warnings and "could not remove the work directory" in files.warnings[0]
    assert LocalFiles.read(str(tmp_path / "absent")) is None
