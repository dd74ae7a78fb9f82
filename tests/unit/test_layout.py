# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Discovery of md/LVM stacks at backup time (_discovery.StackDiscovery, _setplan.layout).

The command output is real: captured from mdadm 4.2 and lvm2 2.03 in the lab VM
(tests/lab/test_lab_md_lvm.py with STILLPOINT_LAB_CAPTURE, into fixtures/hostops/lab-md-lvm.txt),
an md RAID0 over two NVMe EBS volumes created in the opposite order of their names, LVM on the
array, XFS on the LV. The sysfs tree is the same host's, rebuilt in tmp_path. What discovery
records must be what _layout.Layout reads at restore time.
"""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._discovery import discover_stacks
from ansible_collections.stillpoint.snapshots.plugins.module_utils._layout import Layout
from ansible_collections.stillpoint.snapshots.plugins.module_utils._layout import clone_layout
from ansible_collections.stillpoint.snapshots.plugins.module_utils._lvm_report import parse_lvm_report
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import md_detail_devices
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import md_uuid_key
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import parse_export
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _setplan
from tests.unit.test_hostops import FakeHost
from tests.unit.test_hostops import Recorded
from tests.unit.test_hostops import cmd
from tests.unit.test_hostops import section

LAB = "lab-md-lvm.txt"
LVS = ["lvs", "--reportformat", "json", "-o",
       "vg_name,vg_uuid,lv_name,lv_uuid,lv_kernel_major,lv_kernel_minor,lv_attr"]
PVS = ["pvs", "--reportformat", "json", "-o", "pv_name,pv_uuid,vg_name,vg_uuid"]


def lab(name):
    return section(LAB, name)


def _facts():
    """Names, numbers and ids of the captured host's sysfs (section [facts])."""
    facts = {}
    for line in lab("facts")[1].splitlines():
        key, value = line.split("=", 1)
        facts[key] = value
    return facts


FACTS = _facts()


@pytest.fixture
def host(tmp_path):
    """The lab VM's stack: two NVMe EBS disks, md0 over them, dm-0 (the LV) over md0, XFS mounted."""
    h = FakeHost(tmp_path)
    for i in (0, 1):
        h.disk(FACTS["disk%d" % i], FACTS["disk%d_dev" % i], serial=FACTS["vol%d" % i])
    h.md("md0", FACTS["md0_dev"], state="clean")
    h.stack("md0", [FACTS["disk0"], FACTS["disk1"]])
    with open(h.sys + "/block/md0/md/chunk_size", "w") as f:
        f.write(FACTS["chunk_size"] + "\n")
    h.disk("dm-0", FACTS["dm0_dev"])
    h.stack("dm-0", ["md0"])
    os.makedirs(h.sys + "/block/dm-0/dm")
    with open(h.sys + "/block/dm-0/dm/uuid", "w") as f:
        f.write(FACTS["dm0_uuid"] + "\n")
    h.mount(FACTS["dm0_dev"], "/srv/data", "xfs", "/dev/mapper/data-lv")
    return h


def resolved(host):
    return host.resolver().resolve(["/srv/data"])


def script():
    return [cmd(LVS, lab("lvs")), cmd(PVS, lab("pvs")),
            cmd(["mdadm", "--detail", "--export", "/dev/md0"], lab("detail-md0"))]


def test_discovers_md_and_lvm_from_the_real_output(host):
    mounts = resolved(host)
    rec = Recorded(script())
    warnings = discover_stacks(CommandRunner(rec), host.resolver(), mounts)
    rec.done()
    assert warnings == []
    stack = mounts[0]["stack"]
    md_uuid = [line.split("=", 1)[1] for line in lab("detail-md0")[1].splitlines() if line.startswith("MD_UUID=")][0]
    vg = json.loads(lab("pvs")[1])["report"][0]["pv"][0]
    # md role order (role 0 is disk1: created in the opposite order of the names), not name order
    roles = FACTS["md_role_order"].split(",")
    vols = [FACTS["vol%d" % [FACTS["disk0"], FACTS["disk1"]].index(d)] for d in roles]
    assert stack["md"] == [{"device": "/dev/md0", "uuid": md_uuid, "level": "raid0", "chunk": "64K",
                            "members": vols}]
    assert stack["lvm"] == [{"vg": "data", "uuid": vg["vg_uuid"], "pvs": ["/dev/md0"], "lvs": ["lv"]}]
    assert stack["device"] == "/dev/data/lv" and stack["volume_ids"] == vols
    assert mounts[0]["volume_ids"] == vols


def members_of(vols):
    return {"members": [{"index": i, "volume_id": v} for i, v in enumerate(vols)]}


def test_layout_records_what_the_restore_reads(host):
    mounts = resolved(host)
    discover_stacks(CommandRunner(Recorded(script())), host.resolver(), mounts)
    vols = mounts[0]["volume_ids"]
    raw = _setplan.layout(None, mounts, members_of(vols))
    assert raw["md"][0]["members"] == [0, 1]
    assert raw["lvm"][0]["pvs"] == ["/dev/md0"]
    assert raw["filesystems"] == [{"mountpoint": "/srv/data", "fstype": "xfs", "options": "rw,noatime",
                                   "members": [0, 1], "device": "/dev/data/lv"}]
    layout = Layout(json.loads(json.dumps(raw)))  # through the catalog's JSON
    assert layout.filesystems[0]["kind"] == "lv" and layout.member_indexes() == [0, 1]
    # what the user gives wins: no discovered md/lvm beside a given one
    given = _setplan.layout({"md": [{"device": "/dev/md9", "members": [1, 0]}]}, mounts, members_of(vols))
    assert given["md"] == [{"device": "/dev/md9", "members": [1, 0]}] and "lvm" not in given
    assert "device" not in given["filesystems"][0]


def test_layout_refuses_a_stack_with_a_volume_outside_the_set(host):
    mounts = resolved(host)
    discover_stacks(CommandRunner(Recorded(script())), host.resolver(), mounts)
    with pytest.raises(StillpointError, match=r"also uses vol-\w+, which is not a member of the set"):
        _setplan.layout(None, mounts, members_of(mounts[0]["volume_ids"][:1]))


def test_plan_numbers_members_in_md_order(host, monkeypatch):
    mounts = resolved(host)
    discover_stacks(CommandRunner(Recorded(script())), host.resolver(), mounts)
    vols = mounts[0]["volume_ids"]
    by_name = sorted(vols, key=lambda v: FACTS["vol0"] != v)  # device-name order: disk0's volume first
    instance = {"InstanceId": "i-0123456789abcdef0", "RootDeviceName": "/dev/xvda",
                "BlockDeviceMappings": [{"DeviceName": "/dev/sd%s" % c, "Ebs": {"VolumeId": v}}
                                        for c, v in zip("fg", by_name)]}
    monkeypatch.setattr(_ebs, "describe_instance", lambda client, iid: instance)  # build_plan imports _ebs when called
    params = dict((k, v.get("default")) for k, v in _setplan.ARGUMENT_SPEC.items())
    plan = _setplan.build_plan(None, params, {"mounts": mounts, "exclude_mounts": [], "freeze_plan": [{"mountpoint": "/srv/data"}]},
                               "i-0123456789abcdef0")
    assert [m["volume_id"] for m in plan["members"]["members"]] == vols
    assert plan["layout"]["md"][0]["members"] == [0, 1]


def test_a_partition_under_md_is_not_recorded(host):
    host.disk("nvme9n1", "259:90", serial="vol-0aaaaaaaaaaaaaaaa")
    part = host.sys + "/block/nvme9n1/nvme9n1p1"
    os.makedirs(part + "/holders")
    with open(part + "/partition", "w") as f:
        f.write("1\n")
    with open(part + "/dev", "w") as f:
        f.write("259:91\n")
    os.symlink("../../block/nvme9n1/nvme9n1p1", host.sys + "/class/block/nvme9n1p1")
    os.symlink("../../block/nvme9n1/nvme9n1p1", host.sys + "/dev/block/259:91")
    host.md("md5", "9:5", state="clean")
    host.stack("md5", [])
    os.symlink("../../nvme9n1/nvme9n1p1", host.sys + "/block/md5/slaves/nvme9n1p1")
    host.mount("9:5", "/srv/p", "ext4", "/dev/md5")
    mounts = host.resolver().resolve(["/srv/p"])
    detail = "MD_LEVEL=raid1\nMD_DEVICES=1\nMD_UUID=01234567:89abcdef:01234567:89abcdef\n" \
             "MD_DEVICE_ev_nvme9n1p1_ROLE=0\nMD_DEVICE_ev_nvme9n1p1_DEV=/dev/nvme9n1p1\n"
    rec = Recorded([cmd(["mdadm", "--detail", "--export", "/dev/md5"], (0, detail, ""))])
    warnings = discover_stacks(CommandRunner(rec), host.resolver(), mounts)
    assert mounts[0]["stack"] is None
    assert "nvme9n1p1, which is not a whole EBS volume" in warnings[0]
    assert "md" not in (_setplan.layout(None, mounts, members_of(mounts[0]["volume_ids"])) or {})


def test_the_real_output_of_an_imported_clone_reads_as_the_restore_expects():
    """What array_host's probes see once import_clone brought a copy up beside its source (lab capture)."""
    detail = parse_export(section("lab-clone.txt", "detail-clone")[1])
    source = parse_export(lab("detail-md0")[1])
    assert md_uuid_key(detail["MD_UUID"]) != md_uuid_key(source["MD_UUID"])  # --update=uuid gave it a new one
    assert md_detail_devices(detail) == [{"dev": "/dev/nvme2n1", "role": 0}, {"dev": "/dev/nvme3n1", "role": 1}]
    vgs = dict((v["vg_name"], v["vg_uuid"]) for v in parse_lvm_report(section("lab-clone.txt", "vgs")[1], "vg"))
    assert sorted(vgs) == ["data", "data_clone"] and vgs["data"] != vgs["data_clone"]
    pvs = parse_lvm_report(section("lab-clone.txt", "pvs")[1], "pv")
    assert [(p["pv_name"], p["vg_name"]) for p in pvs] == [("/dev/md0", "data"), ("/dev/md127", "data_clone")]
    lv, = parse_lvm_report(section("lab-clone.txt", "lvs")[1], "lv")
    assert lv["lv_attr"][4] == "a"
    # the source's layout turned into the copy's: the names the probes above show
    copy = Layout(clone_layout(_setplan_array(), {"/srv/data": "/srv/copy"}))
    assert copy.md[0]["device"] == "/dev/md/md0_clone" and copy.lvm[0]["vg"] == "data_clone"
    assert copy.md[0]["clone_of"] == source["MD_UUID"]


def _setplan_array():
    """The descriptor the lab's backup recorded for the captured source (see the lab test)."""
    pv = json.loads(lab("pvs")[1])["report"][0]["pv"][0]
    return {"md": [{"device": "/dev/md0", "uuid": parse_export(lab("detail-md0")[1])["MD_UUID"], "level": "raid0",
                    "chunk": "64K", "members": [0, 1]}],
            "lvm": [{"vg": "data", "uuid": pv["vg_uuid"], "pvs": ["/dev/md0"], "lvs": ["lv"]}],
            "filesystems": [{"mountpoint": "/srv/data", "fstype": "xfs", "options": "rw,relatime", "members": [0, 1],
                             "device": "/dev/data/lv"}]}
