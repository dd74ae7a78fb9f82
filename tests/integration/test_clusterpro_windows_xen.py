# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/clusterpro_backup.yml and clusterpro_restore.yml, Windows edition, on a FAKE Xen instance pair.

Two EC2 instances of the strict endpoint (m4.large: Xen) stand for server1 and server2, the mirror volume of each at
xvdf; each server is a FAKE Windows host in Xen mode (tests/fakes/vss/disks.py, ``new_state(xen=True)``: Xen PV
disks, no volume id in the serial, Win32_DiskDrive target id by AWS's table, xvdf is target 5) whose disk scripts
(the backup's windows_ebs_disk EbsDisk.ps1 -Action Get; the restore's win_array_host scripts Get-EbsArrayDisks.ps1
and Set-EbsArrayDisks.ps1) are run by the FAKE win_powershell (tests/fakes/vss/windows_stand_in); the cluster is the
FAKE CLUSTERPRO, Windows edition (tests/fakes/clusterpro), linked to EC2 by the bridge of test_clusterpro_roles.py.
The play hosts are POSIX hosts (ansible_connection=local) given the edition, as in that file's Windows check-mode
test. win_array_host runs on Windows hosts only (shell family powershell): the restore's disk steps go to a second
inventory host per server (``server1-disks``: the same local connection with the test-only shell reporting the
powershell family, tests/fakes/clusterpro/windows_stand_in), named by clusterpro_mirror_restore_hosts. Each host's
FAKE Windows state file is named in its interpreter's environment. No PowerShell runs: this checks the roles'
wiring (the device name read from EC2 on the api host reaches the scripts) and the scripts' contract as the FAKE
implements it. The backup-and-restore test also runs on a Nitro pair (m5.large, NVMe disks found by serial).
"""

import json
import os
import sys

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _win_restore as win
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from tests.fakes.clusterpro import WINDOWS_STAND_IN
from tests.fakes.clusterpro import WINDOWS_SHELL
from tests.fakes.clusterpro import install
from tests.fakes.clusterpro import locked
from tests.fakes.clusterpro import read_state
from tests.fakes.vss import disks as fake
from tests.integration.test_clusterpro_roles import Bridge
from tests.support.world import COLLECTIONS
from tests.support.world import ROOT
from tests.support.world import run_playbook
from tests.support.world import task

AZ = "eu-west-1a"
MD = "md1"
DEVICE = "xvdf"  # Xen PV target 5 (AWS's table)
BACKUP = os.path.join(ROOT, "playbooks", "clusterpro_backup.yml")
RESTORE = os.path.join(ROOT, "playbooks", "clusterpro_restore.yml")
STAND_IN = os.path.join(ROOT, "tests", "fakes", "vss", "windows_stand_in")
STEP4 = "Step 4 - snapshot the standby's mirror volume (one backup set, no freeze - the resource was stopped)"
SIGNATURES = {"server1": "1a2b3c4d", "server2": "5e6f7a8b"}


def mirror_content(signature):
    """A basic MBR mirror disk: partition 1 the cluster partition, partition 2 the data partition."""
    content = fake.basic_content("MBR", signature, "CLUSTER", 20)
    content["volumes"].append(dict(content["volumes"][0], key="part2", label="DATA"))
    return content


@pytest.fixture
def world(ec2, tmp_path, request):
    """The Xen instance pair; ``world`` parametrized indirectly with ``"nvme"``: the same on Nitro (m5.large, NVMe disks
    found by the volume id in their serial) for the roles' NVMe path."""
    xen = getattr(request, "param", "xen") == "xen"
    ec2.pending(0.2)
    fake_path, fake_env = install(tmp_path, node="server1", edition="windows", version="4.3.0")
    insts = dict((s, ec2.create_instance(az=AZ, instance_type="m4.large" if xen else "m5.large", volumes=[{"size": 1, "device": DEVICE}]))
                 for s in ("server1", "server2"))
    vols = dict((s, i["volumes"][0]["volume_id"]) for s, i in insts.items())
    with locked(fake_path) as cluster:
        for server, vid in vols.items():
            cluster.state["disks"][server][MD]["id"] = vid
            cluster.state["mirrors"][MD]["disk_ids"][server] = vid
        cluster.group_start("failover", "server1")
    states, lines = {}, ["[cluster]"]
    for server, inst in insts.items():
        boot = fake.basic_content("MBR", "6a4b3c2d", "SYSTEM", 30)
        boot["volumes"] = []
        # every mirror disk's content, so that a volume made from the other server's snapshot carries it
        contents = dict((vid, mirror_content(SIGNATURES[s])) for s, vid in vols.items())
        contents[inst["boot_volume_id"]] = boot
        state = fake.new_state(ec2.url, ec2.region, inst["instance_id"], inst["boot_volume_id"], contents,
                               letters={vols[server]: {"part1": "R", "part2": "M"}}, xen=xen,
                               computer_name="FAKE-%s" % server.upper())
        states[server] = str(tmp_path / ("fake-windows-%s.json" % server))
        fake.FakeSingleDisk(state).save(states[server])
        python = tmp_path / ("python-%s" % server)  # this server's FAKE Windows state, for the modules run on it
        python.write_text("#!/bin/sh\nSTILLPOINT_FAKE_WINDOWS_STATE='%s' exec '%s' \"$@\"\n" % (states[server], sys.executable))
        python.chmod(0o755)
        lines.append("%s ansible_connection=local ansible_python_interpreter=%s" % (server, python))
        lines.append("%s-disks ansible_connection=local ansible_python_interpreter=%s ansible_shell_type=%s"
                     % (server, python, WINDOWS_SHELL["ansible_shell_type"]))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("\n".join(lines) + "\n")
    env = dict(fake_env, ANSIBLE_COLLECTIONS_PATH=os.pathsep.join([STAND_IN, WINDOWS_STAND_IN, COLLECTIONS]), STILLPOINT_FAKE_WINDOWS_ROOT=ROOT)
    bridge = Bridge(ec2, fake_path, dict((s, i["instance_id"]) for s, i in insts.items()), device=DEVICE)
    bridge.start()
    try:
        yield dict(xen=xen, ec2=ec2, fake=fake_path, env=env, insts=insts, vols=vols, states=states, inventory=str(inventory),
                   tmp=tmp_path)
    finally:
        bridge.stop()
        assert not bridge.errors, bridge.errors


def aws(w, prefix):
    return {prefix + "aws_endpoint_url": w["ec2"].url, prefix + "aws_region": w["ec2"].region}


def servers(w):
    return [{"server": s, "instance_id": w["insts"][s]["instance_id"], "volume_id": w["vols"][s]} for s in ("server1", "server2")]


def backup(w, **extra):
    active, standby = servers(w)
    ev = dict(clusterpro_hosts="server1", clusterpro_become=False, clusterpro_mirror_backup_active=active,
              clusterpro_mirror_backup_standby=standby, clusterpro_mirror_backup_poll_interval=0.2,
              clusterpro_mirror_backup_rejoin_delay=0, clusterpro_mirror_backup_rejoin_retries=50,
              clusterpro_mirror_backup_edition="windows", clusterpro_mirror_backup_version="4.3.0",
              **aws(w, "clusterpro_mirror_backup_"))
    ev.update(extra)
    return run_playbook(BACKUP, w["ec2"], ev, env=w["env"], inventory=w["inventory"], timeout=300)


def restore(w, set_id, **extra):
    ev = dict(clusterpro_hosts="server1", clusterpro_become=False, clusterpro_mirror_restore_set_id=set_id,
              clusterpro_mirror_restore_saved_definition=str(w["tmp"] / "md1-definition.json"),
              clusterpro_mirror_restore_rejoin_delay=0, clusterpro_mirror_restore_poll_interval=0.1,
              clusterpro_mirror_restore_hosts={"server1": "server1-disks", "server2": "server2-disks"},
              **aws(w, "clusterpro_mirror_restore_"))
    ev.update(extra)
    return run_playbook(RESTORE, w["ec2"], ev, env=w["env"], inventory=w["inventory"], timeout=300)


def host(w, server):
    return fake.FakeSingleDisk.load(w["states"][server])


def disk_changes(w, server, since=0):
    """The changes the FAKE host logged: the cmdlets of EbsDisk.ps1, the diskpart lines of win_array_host's scripts
    that change something."""
    out = []
    for e in host(w, server).state["log"][since:]:
        if e[0] in ("Set-Disk", "Set-Partition"):
            out.append(e)
        elif e[0] == "diskpart":
            out += [["diskpart", line] for line in e[1:] if not line.startswith(("list", "select", "detail"))]
    return out


def at_device(w, server):
    inst = w["ec2"].client().describe_instances(InstanceIds=[w["insts"][server]["instance_id"]])
    return [b["Ebs"]["VolumeId"] for b in inst["Reservations"][0]["Instances"][0]["BlockDeviceMappings"]
            if b["DeviceName"] == DEVICE][0]


def mirror_disk(w, server, vid):
    """``(disk record, {partition number: letter}, Get-Disk record)`` of ``vid`` on the server's FAKE host."""
    h = host(w, server)
    disks = h.disks()
    d = [x for x in disks if x["volume_id"] == vid][0]
    return d, dict((n, letter) for n, _key, letter in h.partitions(d)), h.get_disk([d])[0]


def found_at(w):
    """How the scripts find the mirror disk on this world's hosts: ``(found_by, pv_target)``."""
    return ("pv-target", 5) if w["xen"] else ("nvme-serial", None)


@pytest.mark.parametrize("world", ["xen", "nvme"], indirect=True)
def test_backup_and_restore_on_an_instance_pair(world):
    w = world
    for server in ("server1", "server2"):  # Xen: the serial holds no volume id; NVMe: it does
        _d, letters, got = mirror_disk(w, server, w["vols"][server])
        if w["xen"]:
            assert got["SerialNumber"] == "" and "PROD_PVDISK" in got["Path"].upper() and got["SCSITargetId"] == 5
        else:
            assert got["SerialNumber"].startswith(w["vols"][server].replace("-", "")) and "SCSITargetId" not in got
        assert letters == {1: "R", 2: "M"}

    # the backup reads the drive letters on the active server: its disk found at xvdf's location
    rc, res, _raw = backup(w)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    read = task(res, "Read the disks of the EBS volumes (by volume id in Get-Disk's serial number; on a Xen PV host by the "
                     "device's location)")
    assert [(r["volume_id"], r["found_by"], r["pv_target"]) for r in read["output"]] == [(w["vols"]["server1"],) + found_at(w)]
    taken = task(res, STEP4)
    assert taken["state"] == "complete", taken
    assert disk_changes(w, "server1") == [] and disk_changes(w, "server2") == [], "the backup changes no disk"

    # the restore (win_array_host): on each server the old disk (at xvdf's location) offline, the restored one online
    # with R: and M:
    since = dict((s, len(host(w, s).state["log"])) for s in ("server1", "server2"))
    rc, res, _raw = restore(w, taken["set_id"])
    assert rc == 0, json.dumps(res, indent=1)[-4000:]
    # the drive letters the backup read on the Xen host, as the catalog recorded them
    assert task(res, "Remember the set, the servers and the mirror (all from the catalog)")[
        "ansible_facts"]["__clusterpro_mirror_restore_array"]["drive_letters"] == {"1": "R", "2": "M"}
    new = {}
    for server in ("server1", "server2"):
        new[server] = at_device(w, server)
        assert new[server] != w["vols"][server]
        h = host(w, server)
        assert h.state["disk"][w["vols"][server]]["offline"] is True, "the old mirror disk was taken offline"
        assert not h.state["disk"][h.state["boot_volume_id"]]["offline"], "the boot disk stays online"
        d, letters, got = mirror_disk(w, server, new[server])
        assert got.get("SCSITargetId") == found_at(w)[1] and h.status(d) == "Online" and not d["state"]["read_only"]
        assert letters == {1: "R", 2: "M"}, "the recorded drive letters on the restored disk"
        ran = [line for _tool, line in disk_changes(w, server, since[server])]
        assert ran[:3] == ["offline disk", "online disk", "attributes disk clear readonly"], ran
        assert ran.count("offline disk") == 1 and "chkdsk" not in [e[0] for e in host(w, server).state["log"]]
    # the down step found the old disk at xvdf's location through the device name the role read on the api host (no
    # instance metadata asked), refuse_missing on
    down = task(res, "Step 3 - take the old mirror disk offline (Windows, win_array_host, by EBS volume id or Xen PV "
                     "location)")
    assert [r["changed"] for r in down["results"]] == [True, True]
    up = task(res, "Step 4 - bring the restored disk online with the recorded drive letters (Windows, win_array_host, by "
                   "partition number)")
    assert [sorted((v["partition"], v["target"]) for v in r["volumes"]) for r in up["results"]] == [
        [(1, "R:\\"), (2, "M:\\")]] * 2
    assert [r["chkdsk"] for r in up["results"]] == [[], []]
    # server1's restored disk carries server2's signature (a copy of the standby's volume): its partitions came up
    # with the letters Windows chose, removed, and were given R: and M:, each partition's volume re-checked before
    # assign; server2's own signature was remembered: no letter to move there
    assigned = [line for _tool, line in disk_changes(w, "server1", since["server1"]) if "letter=" in line]
    assert sorted(line for line in assigned if line.startswith("assign")) == ["assign letter=M", "assign letter=R"]
    assert [line for _tool, line in disk_changes(w, "server2", since["server2"]) if "letter=" in line] == []
    assert ["diskpart", "select disk 1", "select partition 1", "detail partition"] in host(w, "server1").state["log"]
    assert read_state(w["fake"])["groups"]["failover"]["current"] == "server1"

    # a re-run with the restored volumes (the CLUSTERPRO steps 1, 5 and 6 run again, the role's own behaviour): no disk
    # step changes anything, nothing is created, detached or attached
    w["ec2"].clear_calls()
    since = dict((s, len(host(w, s).state["log"])) for s in ("server1", "server2"))
    rc, res, _raw = restore(w, taken["set_id"], clusterpro_mirror_restore_volume_ids=new,
                            clusterpro_mirror_restore_saved_definition=str(w["tmp"] / "md1-definition-rerun.json"))
    assert rc == 0, json.dumps(res, indent=1)[-4000:]
    assert [c["action"] for c in w["ec2"].calls() if c["action"] in ("CreateVolume", "DetachVolume", "AttachVolume")] == []
    assert disk_changes(w, "server1", since["server1"]) == [] and disk_changes(w, "server2", since["server2"]) == []
    for server in ("server1", "server2"):
        assert at_device(w, server) == new[server] and mirror_disk(w, server, new[server])[1] == {1: "R", 2: "M"}


def test_restore_refuses_a_device_outside_aws_table_on_a_xen_host(world):
    """The restore's down step (win_array_host's library as the role calls it, the FAKE host's scripts): on a host with
    PV disks a device name AWS's table does not list is refused before any change; without a device name the lookup
    needs the instance metadata, which this host does not answer (refused); at a name where the host shows no PV disk,
    refused."""
    w = world
    path = w["states"]["server1"]
    vid = w["vols"]["server1"]

    def execute(name, params):
        out, err = fake.run_script(name, params, path)
        if err is not None:
            raise StillpointError(err)
        return out

    def down(**kw):
        p = dict((k, v.get("default")) for k, v in win.ARGUMENT_SPEC.items())
        p.update(state="down", volume_ids=[vid], refuse_missing=True, imds_endpoint="http://127.0.0.1:9", **kw)
        return win.down(p, execute, describe=lambda i: pytest.fail("DescribeInstances"))

    with pytest.raises(StillpointError, match=r"attached to .* at /dev/sdf: on a Xen instance .*cannot be located"):
        down(devices={vid: "/dev/sdf"})
    with pytest.raises(StillpointError, match="its instance metadata did not answer"):
        down()
    with pytest.raises(StillpointError, match=r"at /dev/xvdg, but the host shows no Xen PV disk at target 6"):
        down(devices={vid: "/dev/xvdg"})
    assert disk_changes(w, "server1") == []
    out, changed, err = fake.run_single_script({"Action": "Get", "VolumeId": [vid], "Device": ["/dev/xvdf"]}, path)
    assert err is None and not changed and out[0]["pv_target"] == 5 and out[0]["disk_number"] == 1


def test_restore_refuses_a_disk_host_that_does_not_show_the_old_volume(world):
    """clusterpro_mirror_restore_hosts names a wrong inventory host for server1 (a FAKE Xen Windows host whose xvdf
    location holds no disk): step 3's check (win_array_host state=down, refuse_missing, in check mode on every
    server first) refuses it before any disk is taken offline or any volume detached."""
    w = world
    rc, res, _raw = backup(w)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    taken = task(res, STEP4)
    boot = fake.basic_content("MBR", "6a4b3c2d", "SYSTEM", 30)
    boot["volumes"] = []
    stranger = fake.new_state(w["ec2"].url, w["ec2"].region, "i-0fffffffffffffff0", "vol-0fffffffffffffff0",
                              {"vol-0fffffffffffffff0": boot}, xen=True, computer_name="FAKE-STRANGER")
    stranger["attached"] = [["/dev/sda1", "vol-0fffffffffffffff0"]]
    path = str(w["tmp"] / "fake-windows-stranger.json")
    fake.FakeWindowsDisks(stranger).save(path)
    python = w["tmp"] / "python-stranger"
    python.write_text("#!/bin/sh\nSTILLPOINT_FAKE_WINDOWS_STATE='%s' exec '%s' \"$@\"\n" % (path, sys.executable))
    python.chmod(0o755)
    with open(w["inventory"], "a", encoding="utf-8") as handle:
        handle.write("stranger-disks ansible_connection=local ansible_python_interpreter=%s ansible_shell_type=%s\n"
                     % (python, WINDOWS_SHELL["ansible_shell_type"]))
    w["ec2"].clear_calls()
    rc, res, _raw = restore(w, taken["set_id"],
                            clusterpro_mirror_restore_hosts={"server1": "stranger-disks", "server2": "server2-disks"})
    assert rc != 0
    down = task(res, "Step 3 - check every Windows server's old mirror disk before any is taken offline (reads only)")
    assert down["failed"], down
    refused = [r for r in down["results"] if r.get("failed")]
    assert [r["item"]["server"] for r in refused] == ["server1"]
    assert "at xvdf, but the host shows no Xen PV disk at target 5" in refused[0]["msg"]
    assert [c["action"] for c in w["ec2"].calls() if c["action"] in ("DetachVolume", "AttachVolume")] == []
    assert disk_changes(w, "server1") == [] and disk_changes(w, "server2") == []
    assert fake.FakeWindowsDisks.load(path).state["log"] == [["diskpart", "list disk", "list volume"]]
