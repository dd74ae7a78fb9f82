# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The FAKE Windows host's stand-in of the windows_ebs_disk single-disk script EbsDisk.ps1 -Action Get
(tests/fakes/vss/disks.py FakeSingleDisk, run_single_script), without an EC2 endpoint (``state["attached"]``): the
lookup by serial on an NVMe host (the device name ignored there), by location on a Xen host, and each refusal the
script states."""

import os

import pytest
import yaml

from tests.fakes.vss import disks as fake

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BOOT, MIRROR, OTHER = "vol-0aaaaaaaaaaaaaaa0", "vol-0bbbbbbbbbbbbbbb1", "vol-0ccccccccccccccc2"


def state_file(tmp_path, xen, devices=("/dev/sda1", "xvdf", "xvdg")):
    boot = fake.basic_content("MBR", "6a4b3c2d", "SYSTEM", 30)
    boot["volumes"] = []
    mirror = fake.basic_content("MBR", "1a2b3c4d", "CLUSTER")
    mirror["volumes"].append(dict(mirror["volumes"][0], key="part2", label="DATA"))
    state = fake.new_state("http://127.0.0.1:1", "eu-west-1", "i-0123456789abcdef0", BOOT,
                           {BOOT: boot, MIRROR: mirror, OTHER: fake.basic_content("GPT", "0f1e2d3c-0000-4000-8000-000000000001", "LOGS")},
                           letters={MIRROR: {"part1": "R", "part2": "M"}, OTHER: {"part1": "L"}}, xen=xen)
    state["attached"] = [list(a) for a in zip(devices, (BOOT, MIRROR, OTHER))]
    path = str(tmp_path / "state.json")
    fake.FakeSingleDisk(state).save(path)
    return path


def run(path, action, **params):
    return fake.run_single_script(dict(params, Action=action), path)


@pytest.mark.parametrize("device", [None, "/dev/sdf", "xvdf"])
def test_nvme_host_finds_by_serial_whatever_the_device(tmp_path, device):
    path = state_file(tmp_path, xen=False, devices=("/dev/sda1", "/dev/sdf", "/dev/sdg"))
    params = {"Action": "Get", "VolumeId": [MIRROR]}
    if device:
        params["Device"] = [device]
    out, changed, err = fake.run_single_script(params, path)
    assert err is None and not changed
    assert [(r["volume_id"], r["disk_number"], r["found_by"], r["pv_target"]) for r in out] == [(MIRROR, 1, "nvme-serial", None)]
    assert [(p["partition_number"], p["drive_letter"]) for p in out[0]["partitions"]] == [(1, "R"), (2, "M")]


def test_xen_host_reads_by_location(tmp_path):
    path = state_file(tmp_path, xen=True)
    out, changed, err = run(path, "Get", VolumeId=[MIRROR, OTHER], Device=["/dev/xvdf", "xvdg"])
    found = [(r["disk_number"], r["found_by"], r["pv_target"]) for r in out]
    assert err is None and not changed and found == [(1, "pv-target", 5), (2, "pv-target", 6)]
    assert out[0]["serial"] == "" and "PROD_PVDISK" in out[0]["path"].upper()
    assert [(p["partition_number"], p["drive_letter"]) for p in out[0]["partitions"]] == [(1, "R"), (2, "M")]
    assert fake.FakeSingleDisk.load(path).state["log"] == []


@pytest.mark.parametrize("params, message", [
    ({"VolumeId": [MIRROR], "Device": ["/dev/sdf"]}, "gives no Xen PV location"),
    ({"VolumeId": [MIRROR], "Device": ["xvdca"]}, "gives no Xen PV location"),
    ({"VolumeId": [MIRROR], "Device": ["xvdj"]}, "target 9, LUN 0"),
    ({"VolumeId": [MIRROR]}, "No disk has the serial number of EBS volume %s" % MIRROR),
    ({"VolumeId": ["vol-xyz"], "Device": ["xvdf"]}, "Invalid EBS volume id"),
    ({"VolumeId": [MIRROR], "Device": ["xvdf", "xvdg"]}, "2 device names for 1 volumes"),
])
def test_xen_host_refusals(tmp_path, params, message):
    path = state_file(tmp_path, xen=True)
    out, changed, err = run(path, "Get", **params)
    assert out is None and not changed and message in err
    assert fake.FakeSingleDisk.load(path).state["log"] == []


@pytest.mark.parametrize("action", ["Offline", "Online", "Format"])
def test_an_action_outside_the_scripts_set_is_refused(tmp_path, action):
    """Offline and Online were the CLUSTERPRO restore's steps; win_array_host runs them now (docs/clusterpro.md)."""
    path = state_file(tmp_path, xen=True)
    out, changed, err = run(path, action, VolumeId=MIRROR, Device="xvdf")
    assert out is None and not changed and 'does not belong to the set "Get"' in err
    assert fake.FakeSingleDisk.load(path).state["log"] == []


def test_the_entry_point_sends_the_one_script_with_its_action():
    """What the FAKE dispatches on is what the role sends: tasks_from disks runs EbsDisk.ps1 with the -Action of
    SINGLE_ACTIONS, the one value the script's ValidateSet accepts; the role has no other entry point."""
    role = os.path.join(ROOT, "roles", "windows_ebs_disk")
    assert sorted(os.listdir(os.path.join(role, "tasks"))) == ["disks.yml"]
    with open(os.path.join(role, "tasks", "disks.yml"), encoding="utf-8") as handle:
        run_task = [t for t in yaml.safe_load(handle) if "ansible.windows.win_powershell" in t][0]
    args = run_task["ansible.windows.win_powershell"]
    assert (args["path"], (args["parameters"]["Action"],)) == (fake.SINGLE_SCRIPT, fake.SINGLE_ACTIONS)
    with open(os.path.join(role, "files", fake.SINGLE_SCRIPT), encoding="utf-8") as handle:
        assert "[ValidateSet(%s)]" % ", ".join("'%s'" % a for a in fake.SINGLE_ACTIONS) in handle.read()
