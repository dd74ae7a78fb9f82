# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role array_restore on a Windows set (win_vss_snapshot_set), through ansible-playbook, against the strict EC2
endpoint, with a FAKE Windows host.

There is no Windows host here. The play host is localhost made a stand-in Windows host the way
test_clusterpro_windows_path.py does it (tests/fakes/clusterpro/windows_stand_in: the POSIX shell reporting the
powershell family), and a FAKE ansible.windows first on the collections path (tests/fakes/vss/windows_stand_in)
routes win_powershell to the FAKE Windows disk subsystem (tests/fakes/vss/disks.py): the disks are the volumes the
endpoint says are attached, diskpart/Get-Disk/chkdsk behave as Microsoft documents them, every command the
scripts would have run is logged. The set is taken by win_vss_snapshot_set's library with the FAKE VSS agent, as
in test_win_vss.py. The EC2 calls (create, detach, attach) are real calls at the endpoint.
"""

import json
import os

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _vss as vss
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._aws import TaskAWS
from tests.fakes.clusterpro import WINDOWS_STAND_IN
from tests.fakes.clusterpro import WINDOWS_SHELL
from tests.fakes.vss import FakeSsmProxy
from tests.fakes.vss import FakeVssAgent
from tests.fakes.vss import FakeWindowsHost
from tests.fakes.vss import disks as fake
from tests.fakes.vss import fake_windows_facts
from tests.support.world import COLLECTIONS
from tests.support.world import ROOT
from tests.support.world import run_playbook
from tests.support.world import task

AZ = "eu-west-1a"
DEVICES = ("/dev/sdf", "/dev/sdg", "/dev/sdh")  # E: spans sdf+sdg (a dynamic pack), F: is sdh (basic, GPT)
STAND_IN = os.path.join(ROOT, "tests", "fakes", "vss", "windows_stand_in")
UP = "Bring the restored disks up on the Windows host (online, foreign pack imported, drive letters back, chkdsk)"
DOWN = "Take the disks of the volumes to be replaced offline on the Windows host (by EBS volume id)"
CREATE = "Create the volumes from the set in the instance's zone (before any downtime)"
MUTATING = ("CreateVolume", "AttachVolume", "DetachVolume", "DeleteVolume")
GUID_F = "1a2b3c4d-5e6f-4701-8293-a4b5c6d7e8f9"


def take_set(ec2, inst, members=("E:", "F:"), facts=None):
    """A complete application set of ``members`` (win_vss_snapshot_set's library, FAKE agent and host; ``facts``:
    the FAKE host's module answer, by default the fixtures' E: and F:)."""
    vols = [v["volume_id"] for v in inst["volumes"]]
    client = ec2.client()
    agent = FakeVssAgent(client, "ok")
    proxy = FakeSsmProxy(ec2.url, agent).start()
    params = dict((k, v.get("default")) for k, v in vss.ARGUMENT_SPEC.items())
    params.update(members=list(members), name="sql01", wait_timeout=60, poll_interval=0.2, command_timeout=60)
    aws = TaskAWS(vss.WINDOWS_MODULE, dict(params, endpoint_url=proxy.url, region=ec2.region, access_key="testing",
                                           secret_key="testing", session_token=None, profile=None, aws_ca_bundle=None,
                                           aws_config=None, validate_certs=True, debug_botocore_endpoint_logs=False))
    try:
        res = vss.take(params, FakeWindowsHost(facts or fake_windows_facts(vols, boot_volume_id=inst["boot_volume_id"])),
                       aws, sleep=lambda s: None)
    finally:
        proxy.stop()
    assert res["state"] == "complete", res
    return res


def make_world(ec2, tmp_path, pack_volumes, pack_letters, members=None):
    """The instance, its FAKE Windows host (a dynamic pack of ``pack_volumes`` over sdf+sdg with ``pack_letters``,
    F: on sdh) and a set taken of it: by default from the fixtures' facts (E: and F:), with ``members`` from what the
    FAKE host itself shows (FakeWindowsDisks.vss_facts)."""
    inst = ec2.create_instance(az=AZ, volumes=[{"size": 1, "device": d} for d in DEVICES])
    vols = [v["volume_id"] for v in inst["volumes"]]
    pack = fake.dynamic_pack("grp-sql01", ["3f1e2d4c-5b6a-4789-8a9b-0c1d2e3f4a5b", "7a6b5c4d-3e2f-4109-8b7a-6c5d4e3f2a1b"],
                             pack_volumes)
    boot = fake.basic_content("MBR", "6a4b3c2d", "SYSTEM", 30)
    boot["volumes"] = []
    state = fake.new_state(ec2.url, ec2.region, inst["instance_id"], inst["boot_volume_id"],
                           {inst["boot_volume_id"]: boot, vols[0]: pack[0], vols[1]: pack[1],
                            vols[2]: fake.basic_content("GPT", GUID_F, "BACKUP")},
                           letters={vols[0]: pack_letters, vols[2]: {"part1": "F"}})
    path = str(tmp_path / "fake-windows.json")
    host = fake.FakeWindowsDisks(state)
    if members:
        facts = dict(fake_windows_facts(vols, boot_volume_id=inst["boot_volume_id"]),
                     **host.vss_facts([vss.normalize_member(m) for m in members]))
        taken = take_set(ec2, inst, members, facts)
    else:
        taken = take_set(ec2, inst)
    host.save(path)
    ec2.set_imds(instance_id=inst["instance_id"], az=inst["az"])
    return dict(inst, vols=vols, set_id=taken["set_id"], state=path, tmp=tmp_path, client=ec2.client())


@pytest.fixture
def world(ec2, tmp_path):
    return make_world(ec2, tmp_path, [{"key": "vE", "label": "SQLDATA", "type": "Spanned", "disks": [0, 1]}], {"vE": "E"})


def restore(ec2, w, check=False, **extra):
    playbook = w["tmp"] / "restore.yml"
    playbook.write_text(json.dumps([{"name": "restore", "hosts": "localhost", "gather_facts": False, "vars": WINDOWS_SHELL,
                                     "roles": ["stillpoint.snapshots.array_restore"]}]))
    extravars = dict({"array_restore_set_id": w["set_id"], "array_restore_mode": "controller",
                      "array_restore_aws_endpoint_url": ec2.url, "array_restore_aws_region": ec2.region,
                      "array_restore_imds_endpoint": ec2.imds_url, "array_restore_device_timeout": "30"}, **extra)
    env = {"ANSIBLE_COLLECTIONS_PATH": os.pathsep.join([STAND_IN, WINDOWS_STAND_IN, COLLECTIONS]),
           "STILLPOINT_FAKE_WINDOWS_STATE": w["state"], "STILLPOINT_FAKE_WINDOWS_ROOT": ROOT}
    return run_playbook(str(playbook), ec2, extravars, check=check, env=env, timeout=300)


def windows(w):
    return fake.FakeWindowsDisks.load(w["state"])


def changes(w, since=0):
    """The diskpart lines that change something, as the FAKE host logged them."""
    return [line for e in windows(w).state["log"][since:] for line in e[1:] if e[0] == "diskpart"
            and not line.startswith(("list", "select", "detail"))]


def letters(w):
    h = windows(w)
    return dict((h.state["letters"].get(v["key"]), sorted(d["volume_id"] for d in v["disks"])) for v in h.volumes())


def mapping(w):
    inst = w["client"].describe_instances(InstanceIds=[w["instance_id"]])["Reservations"][0]["Instances"][0]
    return dict((b["DeviceName"], b["Ebs"]["VolumeId"]) for b in inst["BlockDeviceMappings"])


def mutating(ec2):
    return [c["action"] for c in ec2.calls() if c["action"] in MUTATING]


def test_restore_check_mode_real_run_and_rerun(ec2, world):
    w = world
    before = mapping(w)
    ec2.clear_calls()
    rc, res, _raw = restore(ec2, w, check=True)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    assert mutating(ec2) == [] and mapping(w) == before and changes(w) == []
    assert len(task(res, CREATE)["volumes_to_create"]) == 3
    planned = task(res, DOWN)
    assert [a["planned"] for a in planned["actions"]] == [True] * 3

    ec2.clear_calls()
    since = len(windows(w).state["log"])
    rc, res, _raw = restore(ec2, w)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    new = dict((v["index"], v["volume_id"]) for v in task(res, CREATE)["volumes"])
    after = mapping(w)
    assert [after[d] for d in DEVICES] == [new[0], new[1], new[2]]
    assert sorted(mutating(ec2)) == sorted(["CreateVolume"] * 3 + ["DetachVolume"] * 3 + ["AttachVolume"] * 3)
    ran = changes(w, since)
    assert ran[:3] == ["offline disk"] * 3, "the old disks went offline before the swap"
    assert ran.count("online disk") == 3 and ran.count("attributes disk clear readonly") == 3  # SAN policy OfflineAll
    assert ran.count("import") == 1  # the restored dynamic pack came back foreign
    assert "assign letter=E" in ran and not [r for r in ran if r.startswith("uniqueid")]
    assert letters(w) == {"E": sorted([new[0], new[1]]), "F": [new[2]]}
    up = task(res, UP)
    assert up["changed"] and [(v["target"], v["type"]) for v in up["volumes"]] == [("E:\\", "Spanned"), ("F:\\", "Partition")]
    assert [(c["path"], c["rc"]) for c in up["chkdsk"]] == [("E:\\", 0), ("F:\\", 0)]
    assert ["chkdsk", "E:"] in windows(w).state["log"]

    rerun_changes_nothing(ec2, w)


def test_two_volumes_on_the_same_dynamic_disks_come_back_each_at_its_own_letter(ec2, tmp_path):
    # a data and a log volume in one dynamic pack: the catalog records each one's look, the restore goes by it
    w = make_world(ec2, tmp_path, [{"key": "vE", "label": "SQLDATA", "type": "Spanned", "disks": [0, 1], "size_gb": 13},
                                   {"key": "vG", "label": "SQLLOG", "type": "Stripe", "disks": [0, 1], "size_gb": 5}],
                   {"vE": "E", "vG": "G"}, members=("E:", "G:", "F:"))
    rc, res, _raw = restore(ec2, w)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    new = dict((v["index"], v["volume_id"]) for v in task(res, CREATE)["volumes"])
    h = windows(w)
    got = dict((h.state["letters"].get(v["key"]), (v["label"], sorted(d["volume_id"] for d in v["disks"])))
               for v in h.volumes())
    assert got == {"E": ("SQLDATA", sorted([new[0], new[1]])), "G": ("SQLLOG", sorted([new[0], new[1]])),
                   "F": ("BACKUP", [new[2]])}
    up = task(res, UP)
    assert sorted((v["target"], v["type"]) for v in up["volumes"]) == [
        ("E:\\", "Spanned"), ("F:\\", "Partition"), ("G:\\", "Stripe")]
    assert all(c["rc"] == 0 for c in up["chkdsk"]) and len(up["chkdsk"]) == 3
    rc, res, _raw = restore(ec2, w)
    assert rc == 0 and task(res, UP)["changed"] is False


def test_bad_survey_input_changes_nothing(ec2, world):
    w = world
    ec2.clear_calls()
    for bad in ({"array_restore_verify": "perhaps"}, {"array_restore_mode": "host"}):
        rc, res, _raw = restore(ec2, w, **bad)
        assert rc != 0
        failed = [r for r in res.values() if r.get("failed")]
        assert len(failed) == 1 and ("perhaps" in failed[0]["msg"] or "array_restore_mode=controller" in failed[0]["msg"])
    assert mutating(ec2) == [] and changes(w) == []


def test_interrupted_restore_converges(ec2, world):
    w = world
    ec2.clear_calls()
    # the run dies at the second attach (old disks offline, all three detached, one restored volume attached)
    ec2.fail_next("AttachVolume", "UnauthorizedOperation", "injected: attach interrupted", status=403, after=1)
    rc, res, _raw = restore(ec2, w)
    assert rc != 0 and "injected" in json.dumps(res)
    assert sorted(set(mutating(ec2))) == ["AttachVolume", "CreateVolume", "DetachVolume"]
    rc, res, _raw = restore(ec2, w)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    new = dict((v["index"], v["volume_id"]) for v in task(res, CREATE)["volumes"])
    assert letters(w) == {"E": sorted([new[0], new[1]]), "F": [new[2]]}
    assert [mapping(w)[d] for d in DEVICES] == [new[0], new[1], new[2]]


def test_copy_beside_its_source_refused_then_brought_up_with_a_new_signature(ec2, world):
    w = world
    src_f = w["vols"][2]
    c = w["client"]
    c.detach_volume(VolumeId=src_f)  # F:'s source moves to another device and stays attached
    c.get_waiter("volume_available").wait(VolumeIds=[src_f], WaiterConfig={"Delay": 0.2})
    c.attach_volume(VolumeId=src_f, InstanceId=w["instance_id"], Device="/dev/sdj")
    c.get_waiter("volume_in_use").wait(VolumeIds=[src_f], WaiterConfig={"Delay": 0.2})
    ec2.clear_calls()
    rc, res, _raw = restore(ec2, w)  # the swap refuses by default
    assert rc != 0 and [a for a in mutating(ec2) if a != "CreateVolume"] == []
    msg = [r for r in res.values() if r.get("failed")][0]["msg"]
    assert "would stay attached" in msg
    rc, res, _raw = restore(ec2, w, array_restore_allow_beside_source=True)  # the Windows step refuses
    assert rc != 0 and [a for a in mutating(ec2) if a != "CreateVolume"] == [] and changes(w) == []
    assert "stay attached to this host" in task(res, DOWN)["msg"]
    pm = {"E:": "X:", "F:": "G:"}
    rc, res, _raw = restore(ec2, w, array_restore_import_clone=True, array_restore_mountpoint_map=pm)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    new = dict((v["index"], v["volume_id"]) for v in task(res, CREATE)["volumes"])
    ran = changes(w)
    assert len([r for r in ran if r.startswith("uniqueid disk id=")]) == 1
    assert windows(w).state["content"][new[2]]["id"] != GUID_F
    assert letters(w) == {"F": [src_f], "X": sorted([new[0], new[1]]), "G": [new[2]]}
    since = len(windows(w).state["log"])
    rc, res, _raw = restore(ec2, w, array_restore_import_clone=True, array_restore_mountpoint_map=pm)
    assert rc == 0 and task(res, UP)["changed"] is False and changes(w, since) == []


def service_log(w, since=0):
    """The FAKE host's log reduced to service changes, disks going offline and chkdsk runs, in order."""
    out = []
    for e in windows(w).state["log"][since:]:
        if e[0] == "service":
            out.append("%s %s" % (e[1], e[2]))
        elif e[0] == "chkdsk":
            out.append("chkdsk")
        elif e[0] == "diskpart" and "offline disk" in e[1:]:
            out.append("offline")
    return out


def test_windows_services_stopped_before_the_disks_go_offline_and_started_after(ec2, world):
    w = world
    host = windows(w)
    host.state["services"] = {"MSSQLSERVER": {"state": "running", "dependencies": []},
                              "SQLSERVERAGENT": {"state": "running", "dependencies": ["MSSQLSERVER"]}}
    host.save(w["state"])
    survey = "MSSQLSERVER, SQLSERVERAGENT"  # AWX survey text

    def running():
        return dict((n, s["state"]) for n, s in windows(w).state["services"].items())

    # a service that is not installed: refused before any change
    ec2.clear_calls()
    rc, res, _raw = restore(ec2, w, array_restore_windows_services="MSSQLSERVER, MSSQLSERVR")
    assert rc != 0
    assert "MSSQLSERVR not installed" in [r for r in res.values() if r.get("failed")][0]["msg"]
    assert mutating(ec2) == [] and changes(w) == [] and service_log(w) == []
    assert running() == {"MSSQLSERVER": "running", "SQLSERVERAGENT": "running"}

    # check mode: planned, nothing stopped
    rc, res, _raw = restore(ec2, w, check=True, array_restore_windows_services=survey)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    assert service_log(w) == [] and running() == {"MSSQLSERVER": "running", "SQLSERVERAGENT": "running"}

    # interrupted at the second attach: the services were stopped before the disks went offline and stay stopped
    ec2.fail_next("AttachVolume", "UnauthorizedOperation", "injected: attach interrupted", status=403, after=1)
    rc, res, _raw = restore(ec2, w, array_restore_windows_services=survey)
    assert rc != 0 and "injected" in json.dumps(res)
    first = service_log(w)
    assert first[:2] == ["stop SQLSERVERAGENT", "stop MSSQLSERVER"], first  # the running dependent first
    assert first[2:] == ["offline"] * 3 and "chkdsk" not in first, first
    assert running() == {"MSSQLSERVER": "stopped", "SQLSERVERAGENT": "stopped"}

    # the re-run finishes the restore and starts them once the disks are up and checked, the agent's dependency first
    since = len(windows(w).state["log"])
    rc, res, _raw = restore(ec2, w, array_restore_windows_services=survey)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    second = service_log(w, since)
    assert second[-2:] == ["start MSSQLSERVER", "start SQLSERVERAGENT"], second
    assert "chkdsk" in second and second.index("chkdsk") < second.index("start MSSQLSERVER"), second
    assert not [s for s in second if s.startswith("stop")], second
    assert running() == {"MSSQLSERVER": "running", "SQLSERVERAGENT": "running"}

    # a third run: nothing to swap, the services are not touched (the read-only chkdsk runs again)
    since = len(windows(w).state["log"])
    rc, res, _raw = restore(ec2, w, array_restore_windows_services=survey)
    assert rc == 0 and set(service_log(w, since)) <= {"chkdsk"} and changes(w, since) == []
    print("\nWindows services: interrupted run %s; re-run %s" % (first, second))


XEN_DEVICES = ("xvdh", "xvdf", "xvdg")  # E: spans xvdh+xvdf (a dynamic pack), F: is xvdg: disk order is not volume order


def rerun_changes_nothing(ec2, w):
    """The restore run again: no mutating EC2 call, no change on the FAKE host, the host steps report no change."""
    ec2.clear_calls()
    since = len(windows(w).state["log"])
    rc, res, _raw = restore(ec2, w)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    assert mutating(ec2) == [] and changes(w, since) == []
    assert task(res, UP)["changed"] is False and task(res, DOWN).get("skipped")


def xen_host(ec2):
    """A FAKE Xen instance (m4: PV disks, no volume id in the serial, each at the target id of its device name) with
    E: (a spanned volume of a dynamic pack on xvdh + xvdf) and F: (xvdg): its instance, volumes, FAKE Windows host and
    the VSS module's facts for E: and F:."""
    inst = ec2.create_instance(az=AZ, instance_type="m4.large", volumes=[{"size": 1, "device": d} for d in XEN_DEVICES])
    vols = [v["volume_id"] for v in inst["volumes"]]
    host = fake.xen_sql_host(ec2, inst, GUID_F)
    facts = dict(fake_windows_facts(vols, boot_volume_id=inst["boot_volume_id"]), **host.vss_facts(["E:\\", "F:\\"]))
    return inst, vols, host, facts


def test_xen_instance_restore_maps_disks_by_pv_location(ec2, tmp_path):
    """A set taken on a FAKE Xen instance (PV disks: no volume id in the serial, each at the target id of its device
    name, as in test_win_vss.py) restored through the role: each disk found by its location through the instance's
    block device mappings of that moment, the restored volumes at the old targets."""
    inst, vols, host, facts = xen_host(ec2)
    assert all(vss.disk_volume_id(d) is None and vss.is_pv_disk(d) for d in facts["disks"])
    assert [d["SCSITargetId"] for d in facts["disks"]] == [0, 5, 6, 7]  # sda1, xvdf, xvdg, xvdh
    old_targets = dict((d["volume_id"], g["SCSITargetId"]) for d, g in zip(host.disks(), host.get_disk(host.disks())))
    taken = take_set(ec2, inst, facts=facts)
    path = str(tmp_path / "fake-windows.json")
    host.save(path)
    ec2.set_imds(instance_id=inst["instance_id"], az=inst["az"])
    w = dict(inst, vols=vols, set_id=taken["set_id"], state=path, tmp=tmp_path, client=ec2.client())
    rec = [s for s in w["client"].describe_snapshots(OwnerIds=["self"])["Snapshots"]
           if dict((t["Key"], t["Value"]) for t in s.get("Tags") or []).get("stillpoint:set-id") == w["set_id"]]
    assert sorted(s["VolumeId"] for s in rec) == sorted(vols)

    # check mode: nothing changes at the endpoint nor on the host; the down step is planned from the PV locations
    before = mapping(w)
    ec2.clear_calls()
    rc, res, _raw = restore(ec2, w, check=True)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    assert mutating(ec2) == [] and mapping(w) == before and changes(w) == []
    assert [a["planned"] for a in task(res, DOWN)["actions"]] == [True] * 3

    ec2.clear_calls()
    since = len(windows(w).state["log"])
    rc, res, _raw = restore(ec2, w)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    # new[i]: the restored copy of vols[i] (E: = vols[0] + vols[1] at xvdh + xvdf, F: = vols[2] at xvdg)
    by_source = dict((v["source_volume"], v["volume_id"]) for v in task(res, CREATE)["volumes"])
    new = [by_source[v] for v in vols]
    after = mapping(w)
    assert [after[d] for d in XEN_DEVICES] == new  # the swap kept the device names
    ran = changes(w, since)
    assert ran[:3] == ["offline disk"] * 3 and ran.count("online disk") == 3 and ran.count("import") == 1
    # each drive letter holds the right restored volume: E: the pack made of new[0]+new[1], F: new[2]
    assert letters(w) == {"E": sorted([new[0], new[1]]), "F": [new[2]]}
    h = windows(w)
    targets = dict((d["volume_id"], g["SCSITargetId"]) for d, g in zip(h.disks(), h.get_disk(h.disks())))
    assert [targets[v] for v in new] == [old_targets[v] for v in vols] == [7, 5, 6], "at the old volumes' targets"
    assert not set(vols) & set(targets), "the old volumes are gone from the host"
    up = task(res, UP)
    assert [(v["target"], v["type"]) for v in up["volumes"]] == [("E:\\", "Spanned"), ("F:\\", "Partition")]
    assert [(c["path"], c["rc"]) for c in up["chkdsk"]] == [("E:\\", 0), ("F:\\", 0)]
    assert ["chkdsk", "E:"] in h.state["log"] and ["chkdsk", "F:"] in h.state["log"]
    assert not any("/f" in " ".join(e) for e in h.state["log"]), "chkdsk read-only"
    # the mappings were read on the controller at every gather and before every round of steps
    assert len(ec2.calls("DescribeInstances")) > 6

    # a re-run changes nothing
    rerun_changes_nothing(ec2, w)

    # check mode after the restore changes nothing either
    ec2.clear_calls()
    since = len(windows(w).state["log"])
    rc, res, _raw = restore(ec2, w, check=True)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    assert mutating(ec2) == [] and changes(w, since) == [] and letters(w) == {"E": sorted([new[0], new[1]]), "F": [new[2]]}


def test_xen_instance_restore_refused_when_the_host_is_another_instance(ec2, tmp_path):
    """The host's instance metadata names another instance than the set's: the Windows step is refused before any
    disk or volume changes (the role's proof is skipped here, so win_array_host's own check is what refuses)."""
    inst, vols, host, facts = xen_host(ec2)
    taken = take_set(ec2, inst, facts=facts)
    path = str(tmp_path / "fake-windows.json")
    host.save(path)
    other = ec2.create_instance(az=AZ, instance_type="m4.large", volumes=[])
    ec2.set_imds(instance_id=other["instance_id"], az=inst["az"])
    w = dict(inst, vols=vols, set_id=taken["set_id"], state=path, tmp=tmp_path, client=ec2.client())
    ec2.clear_calls()
    rc, res, _raw = restore(ec2, w, array_restore_check_host=False)
    assert rc != 0
    msg = task(res, DOWN)["msg"]
    assert "is instance %s, not the instance the restore targets (%s)" % (other["instance_id"], inst["instance_id"]) in msg
    assert [a for a in mutating(ec2) if a != "CreateVolume"] == [] and changes(w) == []
