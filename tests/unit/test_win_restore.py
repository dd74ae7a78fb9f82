# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""win_array_host's parsers, planners and procedures (module_utils/_win_restore.py) against the FAKE Windows disk
subsystem (tests/fakes/vss/disks.py: Get-Disk, diskpart and chkdsk as Microsoft documents them, rendered in the
layout of the fixtures under fixtures/vss and fixtures/win_restore). No Windows runs here."""

import copy
import os

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _vss as vss
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _win_restore as win
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from tests.fakes.vss import disks as fake
from tests.fakes.vss import fake_windows_facts

BOOT, A, B, C = "vol-0aaaaaaaaaaaaaaa0", "vol-0bbbbbbbbbbbbbbb1", "vol-0ccccccccccccccc2", "vol-0ddddddddddddddd3"
NA, NB, NC = "vol-01111111111111111", "vol-02222222222222222", "vol-03333333333333333"
GUID_F = "1a2b3c4d-5e6f-4701-8293-a4b5c6d7e8f9"
LAYOUT = {"kind": "windows-volumes", "volumes": [{"path": "E:\\", "volume_ids": [A, B]}, {"path": "F:\\", "volume_ids": [C]}]}
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "win_restore")


def host(**kw):
    """The FAKE host at backup time: E: spanned over A+B (a dynamic pack), F: a basic GPT disk C."""
    pack = fake.dynamic_pack("grp1", ["3f1e2d4c-5b6a-4789-8a9b-0c1d2e3f4a5b", "7a6b5c4d-3e2f-4109-8b7a-6c5d4e3f2a1b"],
                             [{"key": "vE", "label": "SQLDATA", "type": "Spanned", "disks": [0, 1]}])
    contents = {BOOT: fake.basic_content("MBR", "6a4b3c2d", "SYSTEM", 30), A: pack[0], B: pack[1],
                C: fake.basic_content("GPT", GUID_F, "BACKUP", **kw)}
    contents[BOOT]["volumes"] = []
    state = fake.new_state("http://unused", "eu-west-1", "i-0123", BOOT, contents,
                           letters={A: {"vE": "E"}, C: {"part1": "F"}})
    state["attached"] = [["/dev/sda1", BOOT], ["/dev/sdf", A], ["/dev/sdg", B], ["/dev/sdh", C]]
    state["origin"] = {NA: A, NB: B, NC: C}
    return fake.FakeWindowsDisks(state)


def executor(h, calls=None):
    def execute(name, params):
        if calls is not None:
            calls.append((name, copy.deepcopy(params)))
        out = h.gather(params) if name == win.GATHER else h.apply(params)
        return out
    return execute


def swap(h, pairs):
    """What the EC2 swap does, as the host sees it: the old volume's disk gone, the new one arrived."""
    now = dict((v, d) for d, v in h.state["attached"])
    for old, new in pairs:
        dev = now.pop(old)
        h.state["attached"] = [a for a in h.state["attached"] if a[1] != old] + [[dev, new]]


def params(**kw):
    out = dict((k, v.get("default")) for k, v in win.ARGUMENT_SPEC.items())
    out.update(layout=LAYOUT, volume_ids=[NA, NB, NC], source_volume_ids=[A, B, C], device_timeout=0)
    out.update(kw)
    return out


def letters(h):
    vols = h.volumes()
    return dict((h.state["letters"].get(v["key"]), sorted(d["volume_id"] for d in v["disks"])) for v in vols)


def diskpart_lines(h, since=0):
    return [line for entry in h.state["log"][since:] for line in entry[1:] if entry[0] == "diskpart"
            and not line.startswith(("list", "select", "detail"))]


def test_parsers_on_the_fixture():
    with open(os.path.join(FIXTURES, "diskpart_list_volume.txt"), encoding="utf-8") as handle:
        rows = win.parse_list_volume(handle.read())
    assert [(r["number"], r["letter"], r["type"], r["status"]) for r in rows] == [
        (0, "C", "Partition", "Healthy"), (1, None, "Spanned", "Healthy"), (2, "F", "Partition", "Healthy"),
        (3, "G", "Mirror", "Failed Rd")]
    assert rows[0]["info"] == "Boot" and rows[1]["label"] == "SQLDATA"


def test_host_facts_map_disks_and_volumes_by_volume_id():
    h = host()
    facts = win.host_facts(h.gather({"Path": ["E:\\", "F:\\", "C:\\mnt\\none\\"]}))
    assert sorted(facts["disks"]) == sorted([BOOT, A, B, C]) and facts["disks"][A]["dynamic"]
    assert facts["disks"][C]["style"] == "GPT" and facts["disks"][C]["guid"] == GUID_F
    vols = dict((v["letter"], v) for v in facts["volumes"])
    assert sorted(vols["E"]["disks"]) == [A, B] and vols["E"]["type"] == "Spanned" and vols["F"]["disks"] == [C]
    assert facts["paths"]["C:\\mnt\\none\\"] is None and facts["paths"]["E:\\"] == vols["E"]["number"]


def test_down_up_in_place_imports_the_foreign_pack_and_gives_the_letters_back():
    h = host()
    down = win.down(params(volume_ids=[A, B, C]), executor(h))
    assert [a["what"] for a in down["actions"]] == [
        "disk 1 (%s) offline" % A, "disk 2 (%s) offline" % B, "disk 3 (%s) offline" % C]
    assert diskpart_lines(h) == ["offline disk"] * 3
    assert win.down(params(volume_ids=[A, B, C]), executor(h))["changed"] is False  # idempotent
    swap(h, [(A, NA), (B, NB), (C, NC)])
    # check mode: the first round's steps, nothing done
    since = len(h.state["log"])
    plan = win.up(params(), executor(h), check_mode=True)
    assert plan["changed"] and diskpart_lines(h, since) == []
    assert [a["what"].split(" (", maxsplit=1)[0] for a in plan["actions"]][:3] == ["disk 1", "disk 1", "disk 2"]
    done = win.up(params(), executor(h))
    ran = diskpart_lines(h, since)
    assert ran.count("online disk") == 3 and ran.count("attributes disk clear readonly") == 3
    assert ran.count("import") == 1, "one import takes the whole foreign group"
    assert "remove letter=D" in ran and "assign letter=E" in ran  # the pack's volume came up as D:, got E: back
    assert letters(h) == {"E": [NA, NB], "F": [NC]}  # F: came back by itself (same GUID, known partition)
    assert [(v["target"], v["type"]) for v in done["volumes"]] == [("E:\\", "Spanned"), ("F:\\", "Partition")]
    assert [(c["path"], c["rc"], c["ok"]) for c in done["chkdsk"]] == [("E:\\", 0, True), ("F:\\", 0, True)]
    assert ["chkdsk", "E:"] in h.state["log"] and not any("/f" in " ".join(e) for e in h.state["log"])
    since = len(h.state["log"])
    again = win.up(params(), executor(h))
    assert again["changed"] is False and diskpart_lines(h, since) == []
    since = len(h.state["log"])
    checked = win.up(params(), executor(h), check_mode=True)  # check mode sends no step script, not even chkdsk
    assert checked["changed"] is False and checked["chkdsk"] == [] and h.state["log"][since:] == [
        ["diskpart", "list disk", "list volume"]] + [["diskpart", 'select volume="%s"' % t, "detail volume"] for t in "EF"]


def shared_pack_host(log_label="SQLLOG", log_size_gb=5):
    """E: (spanned) and G: (striped) on the same two dynamic disks A+B; F: alone on C."""
    pack = fake.dynamic_pack("grp1", ["3f1e2d4c-5b6a-4789-8a9b-0c1d2e3f4a5b", "7a6b5c4d-3e2f-4109-8b7a-6c5d4e3f2a1b"],
                             [{"key": "vE", "label": "SQLDATA", "type": "Spanned", "disks": [0, 1], "size_gb": 13},
                              {"key": "vG", "label": log_label, "type": "Stripe", "disks": [0, 1],
                               "size_gb": log_size_gb}])
    h = host()
    h.state["content"][A], h.state["content"][B] = pack
    h.state["letters"] = {h.volume_key(A, "vE"): "E", h.volume_key(A, "vG"): "G", h.volume_key(C, "part1"): "F"}
    return h


def shared_pack_layout(h):
    """The set's array descriptor as win_vss_snapshot_set records it, from the FAKE host's own diskpart output."""
    raw = dict(fake_windows_facts([A, B, C], boot_volume_id=BOOT), **h.vss_facts(["E:\\", "G:\\", "F:\\"]))
    return vss.layout(vss.preflight(raw, ["E:", "G:", "F:"]))


def test_volumes_on_the_same_disks_are_told_apart_by_what_the_catalog_recorded():
    h = shared_pack_host()
    layout = shared_pack_layout(h)
    assert [(v["path"], v["volume_ids"], v["identity"]) for v in layout["volumes"]] == [
        ("E:\\", [A, B], {"label": "SQLDATA", "fs": "NTFS", "size": "13 GB"}),
        ("G:\\", [A, B], {"label": "SQLLOG", "fs": "NTFS", "size": "5 GB"}),
        ("F:\\", [C], {"label": "BACKUP", "fs": "NTFS", "size": "19 GB"})]
    win.down(params(layout=layout, volume_ids=[A, B, C]), executor(h))
    swap(h, [(A, NA), (B, NB), (C, NC)])
    since = len(h.state["log"])
    done = win.up(params(layout=layout), executor(h))
    # the imported pack's two volumes arrived with letters Windows chose (the log volume took E:, the data volume
    # D:); each got its own back, by its look: E: freed from the sibling first, never from a volume not restored
    assert diskpart_lines(h, since)[-4:] == ["remove letter=E", "remove letter=D", "assign letter=E", "assign letter=G"]
    vols = dict((h.state["letters"].get(v["key"]), v["label"]) for v in h.volumes())
    assert vols == {"E": "SQLDATA", "G": "SQLLOG", "F": "BACKUP"}
    assert sorted((v["target"], v["type"]) for v in done["volumes"]) == [
        ("E:\\", "Spanned"), ("F:\\", "Partition"), ("G:\\", "Stripe")]
    assert sorted(c["path"] for c in done["chkdsk"] if c["ok"]) == ["E:\\", "F:\\", "G:\\"]
    assert win.up(params(layout=layout), executor(h))["changed"] is False


def test_volumes_on_the_same_disks_are_refused_when_the_catalog_cannot_tell_them_apart():
    # a set taken before the catalog recorded the volumes' look
    h = shared_pack_host()
    old = {"kind": "windows-volumes", "volumes": [dict((k, v[k]) for k in ("path", "volume_ids"))
                                                  for v in shared_pack_layout(h)["volumes"]]}
    win.down(params(layout=old, volume_ids=[A, B, C]), executor(h))
    swap(h, [(A, NA), (B, NB), (C, NC)])
    with pytest.raises(StillpointError, match=r"E:\\: 2 volumes lie on .*which one was E:\\ is not recorded"):
        win.up(params(layout=old), executor(h))
    # two volumes that look alike (same label, file system and size): refused too, never guessed
    twin = shared_pack_host(log_label="SQLDATA", log_size_gb=13)
    layout = shared_pack_layout(twin)
    win.down(params(layout=layout, volume_ids=[A, B, C]), executor(twin))
    swap(twin, [(A, NA), (B, NB), (C, NC)])
    with pytest.raises(StillpointError, match=r"the catalog's record of it \(fs NTFS, label SQLDATA, size 13 GB\) "
                                              r"fits each of them"):
        win.up(params(layout=layout), executor(twin))
    assert not any(line.startswith("assign letter=E") for line in diskpart_lines(twin))


def test_copy_beside_its_source_refused_then_brought_up_with_a_new_signature():
    h = host()
    # F:'s source stays attached (at another device) while its copy arrives: the copy collides
    with pytest.raises(StillpointError, match="stay attached to this host"):
        win.down(params(volume_ids=[A, B]), executor(h))
    assert diskpart_lines(h) == []  # refused before any change
    win.down(params(volume_ids=[A, B], import_clone=True), executor(h))
    swap(h, [(A, NA), (B, NB)])
    h.state["attached"].append(["/dev/sdi", NC])
    since = len(h.state["log"])
    with pytest.raises(StillpointError, match="same disk GUID as disk 3"):
        win.up(params(), executor(h))
    assert h.state["disk"][NC]["reason"] == "Collision"
    with pytest.raises(StillpointError, match="import_clone needs a new drive letter"):
        win.up(params(import_clone=True), executor(h))
    pm = {"E:": "X:", "F:\\": "G:"}
    done = win.up(params(import_clone=True, path_map=pm), executor(h))
    ran = diskpart_lines(h, since)
    assert len([r for r in ran if r.startswith("uniqueid disk id=")]) == 1 and ran.count("import") == 1
    assert h.state["content"][NC]["id"] != GUID_F
    assert letters(h) == {"F": [C], "X": [NA, NB], "G": [NC]}
    assert [v["target"] for v in done["volumes"]] == ["G:\\", "X:\\"]
    assert win.up(params(import_clone=True, path_map=pm), executor(h))["changed"] is False


def test_dynamic_copy_beside_its_source_is_refused_even_with_import_clone():
    h = host()
    h.state["attached"] += [["/dev/sdi", NA], ["/dev/sdj", NB], ["/dev/sdk", NC]]
    with pytest.raises(StillpointError, match="never brought up beside its source"):
        win.up(params(import_clone=True, path_map={"E:": "X:", "F:": "G:"}), executor(h))


def test_a_letter_held_by_another_volume_is_refused_never_taken():
    h = host()
    win.down(params(volume_ids=[A, B], source_volume_ids=[A, B]), executor(h))
    swap(h, [(A, NA), (B, NB)])
    layout = {"volumes": [{"path": "F:\\", "volume_ids": [A, B]}]}  # the pack's volume wants F:, held by disk C
    with pytest.raises(StillpointError, match="drive letter F: is held by volume"):
        win.up(params(layout=layout, volume_ids=[NA, NB], source_volume_ids=[A, B]), executor(h))
    assert letters(h)["F"] == [C]


def test_chkdsk_problems_fail_the_step():
    h = host(errors=True)
    win.down(params(volume_ids=[C], source_volume_ids=[C]), executor(h))
    swap(h, [(C, NC)])
    layout = {"volumes": [{"path": "F:\\", "volume_ids": [C]}]}
    with pytest.raises(StillpointError, match="F:.* rc=3") as info:
        win.up(params(layout=layout, volume_ids=[NC], source_volume_ids=[C]), executor(h))
    assert info.value.details["chkdsk"][0]["tail"][-1] == "Errors found. CHKDSK cannot continue in read-only mode."
    again = win.up(params(layout=layout, volume_ids=[NC], source_volume_ids=[C], verify=False), executor(h))
    assert again["changed"] is False and again["chkdsk"] == []


def test_missing_disk_times_out_and_the_host_identity_is_checked():
    h = host()
    with pytest.raises(StillpointError, match="did not appear as disks"):
        win.up(params(), executor(h))
    with pytest.raises(StillpointError, match="could not prove that it is the target instance i-0999"):
        win.info(dict(expect_instance_id="i-0999", imds_endpoint="http://127.0.0.1:9"), executor(h))


def test_system_disk_is_never_taken_offline():
    h = host()
    with pytest.raises(StillpointError, match="holds the running system"):
        win.down(params(volume_ids=[BOOT]), executor(h))


XEN = [["/dev/sda1", BOOT], ["xvdf", A], ["xvdg", B], ["xvdh", C]]  # PV targets 0, 5, 6, 7


def xen_host(attached=None, imds="i-0123"):
    """The FAKE host on a Xen instance (i-0123): PV disks at the targets of their device names, no volume id in the
    serial; the instance metadata answers ``imds`` (None: no answer)."""
    h = host()
    h.state["xen"] = True
    h.state["attached"] = copy.deepcopy(attached or XEN)
    h.state["imds"] = {"instance_id": imds} if imds else {"error": "FAKE: timed out"}
    return h


def describer(h, calls=None, change=None):
    """DescribeInstances as the action plugin's ``describe`` (the FAKE's block device mappings); ``change(instance,
    n)`` may alter the n-th answer (0-based)."""
    def describe(instance_id):
        inst = h.describe_instance(instance_id)
        if calls is not None:
            calls.append(instance_id)
        return change(inst, len(calls or [0]) - 1) if change else inst
    return describe


def sent_steps(calls):
    return [s for name, p in calls if name == win.APPLY for s in p["Steps"]]


def test_xen_down_up_maps_disks_by_their_pv_location_through_the_current_mappings():
    h = xen_host()
    gets = h.gather({})["disks"]
    assert all(vss.disk_volume_id(d) is None and vss.is_pv_disk(d) for d in gets)
    assert [d["SCSITargetId"] for d in gets] == [0, 5, 6, 7]
    facts = win.host_facts(h.gather({}), h.describe_instance("i-0123"))
    assert dict((v, (d["number"], d["pv_target"], d["device"])) for v, d in facts["disks"].items()) == {
        BOOT: (0, 0, "/dev/sda1"), A: (1, 5, "xvdf"), B: (2, 6, "xvdg"), C: (3, 7, "xvdh")}
    calls, described = [], []
    p = params(volume_ids=[A, B, C], instance_id="i-0123")
    plan = win.down(p, executor(h, calls), check_mode=True, describe=describer(h, described))
    assert [a["what"] for a in plan["actions"]] == [
        "disk 1 (%s) offline" % A, "disk 2 (%s) offline" % B, "disk 3 (%s) offline" % C]
    assert diskpart_lines(h) == [] and [n for n, _p in calls] == [win.GATHER]
    down = win.down(p, executor(h, calls), describe=describer(h, described))
    assert down["changed"] and diskpart_lines(h) == ["offline disk"] * 3
    # each step names the disk's location, the mappings were read at the gather and again right before the steps
    assert [(s["op"], s["volume_id"], s["pv_target"]) for s in sent_steps(calls)] == [
        ("offline", A, 5), ("offline", B, 6), ("offline", C, 7)]
    assert described == ["i-0123"] * 3
    assert win.down(p, executor(h), describe=describer(h))["changed"] is False
    swap(h, [(A, NA), (B, NB), (C, NC)])  # the restored volumes at the old device names: the same targets
    up = params(instance_id="i-0123")
    since = len(h.state["log"])
    planned = win.up(up, executor(h), check_mode=True, describe=describer(h))
    assert planned["changed"] and diskpart_lines(h, since) == []
    calls = []
    done = win.up(up, executor(h, calls), describe=describer(h))
    ran = diskpart_lines(h, since)
    assert ran.count("online disk") == 3 and ran.count("import") == 1 and "assign letter=E" in ran
    assert letters(h) == {"E": [NA, NB], "F": [NC]}
    steps = sent_steps(calls)
    assert all(s["pv_target"] == {NA: 5, NB: 6, NC: 7}[s["volume_id"]] for s in steps if "volume_id" in s)
    assert [(s["disks"], s["pv_targets"]) for s in steps if s["op"] == "assign"] == [([NA, NB], [5, 6])]
    assert [(c["path"], c["rc"]) for c in done["chkdsk"]] == [("E:\\", 0), ("F:\\", 0)]
    since = len(h.state["log"])
    assert win.up(up, executor(h), describe=describer(h))["changed"] is False and diskpart_lines(h, since) == []


def test_nvme_steps_carry_no_location_and_read_no_mappings():
    h = host()
    calls = []
    win.down(params(volume_ids=[A, B, C]), executor(h, calls), describe=lambda i: pytest.fail("DescribeInstances"))
    assert sent_steps(calls) and not [s for s in sent_steps(calls) if "pv_target" in s or "pv_targets" in s]


def no_change(h, run, match):
    """``run`` is refused with ``match`` and nothing on the host changed."""
    before = len(h.state["log"])
    with pytest.raises(StillpointError, match=match) as info:
        run()
    assert diskpart_lines(h, before) == []
    return info.value


def test_xen_refused_without_the_instance_id_from_the_metadata_or_with_another_one():
    h = xen_host(imds=None)
    for run in (lambda: win.info(params(), executor(h), describer(h)),
                lambda: win.down(params(volume_ids=[A, B, C]), executor(h), describe=describer(h)),
                lambda: win.up(params(), executor(h), describe=describer(h))):
        exc = no_change(h, run, r"has Xen PV disks \(disk\(s\) 0, 1, 2, 3: .*its instance metadata did not answer "
                                r"\(FAKE: timed out\)\. Refusing, never guessed")
        assert exc.details["pv_disks"] == [0, 1, 2, 3]
    h = xen_host(imds="i-0999")  # the metadata names another instance than the one the restore targets
    no_change(h, lambda: win.down(params(volume_ids=[A, B, C], instance_id="i-0123"), executor(h), describe=describer(h)),
              r"is instance i-0999, not the instance the restore targets \(i-0123\)")
    no_change(h, lambda: win.down(params(volume_ids=[A, B, C], expect_instance_id="i-0123"), executor(h),
                                  describe=describer(h)), "is instance i-0999, not the target instance i-0123")


def test_xen_refused_for_a_device_name_in_no_mapping_or_in_two():
    h = xen_host()

    def drop_g(inst, _n):
        return dict(inst, BlockDeviceMappings=[b for b in inst["BlockDeviceMappings"] if b["DeviceName"] != "xvdg"])

    def twice_g(inst, _n):
        return dict(inst, BlockDeviceMappings=inst["BlockDeviceMappings"] + [
            {"DeviceName": "/dev/xvdg", "Ebs": {"VolumeId": NB, "Status": "attached"}}])

    no_change(h, lambda: win.down(params(volume_ids=[A, B, C]), executor(h), describe=describer(h, change=drop_g)),
              r"disk 2 is not mapped to an EBS volume: its device name xvdg \(Xen PV target 6\) is in none of instance "
              r"i-0123's block device mappings")
    no_change(h, lambda: win.down(params(volume_ids=[A, B, C]), executor(h), describe=describer(h, change=twice_g)),
              r"disk 2 is not mapped to an EBS volume: its device name xvdg matches 2 block device mappings")


def test_xen_refused_for_two_disks_at_one_location():
    h = xen_host(attached=XEN + [["/dev/xvdg", NB]])  # two names AWS's table reads as target 6
    no_change(h, lambda: win.info(params(), executor(h), describer(h)),
              r"disks 1 and 3 are both at Xen PV bus 0, target 6, LUN 0 \(device name xvdg\): refusing to guess")


def test_xen_refused_for_a_volume_at_an_instance_store_location():
    h = xen_host(attached=[["/dev/sda1", BOOT], ["xvdf", A], ["xvdg", B], ["xvdca", C]])
    assert [d["SCSITargetId"] for d in h.gather({})["disks"]] == [0, 78, 5, 6]  # numbered by device name
    no_change(h, lambda: win.down(params(volume_ids=[A, B, C]), executor(h), describe=describer(h)),
              r"volume %s is attached to i-0123 at xvdca: on a Xen instance .*cannot be located" % C)
    h = xen_host()
    win.down(params(volume_ids=[A, B, C]), executor(h), describe=describer(h))
    swap(h, [(A, NA), (B, NB)])
    h.state["attached"] = [a for a in h.state["attached"] if a[1] != C] + [["xvdca", NC]]
    no_change(h, lambda: win.up(params(), executor(h), describe=describer(h)),
              r"refusing to bring the restored disks up .*volume %s is attached to i-0123 at xvdca" % NC)


def test_xen_restored_volume_not_at_its_location_within_the_wait():
    h = xen_host()
    win.down(params(volume_ids=[A, B, C]), executor(h), describe=describer(h))
    swap(h, [(A, NA), (B, NB)])
    h.state["attached"] = [a for a in h.state["attached"] if a[1] != C]  # the host does not show the third one yet

    def attached_in_ec2(inst, _n):
        return dict(inst, BlockDeviceMappings=inst["BlockDeviceMappings"] + [
            {"DeviceName": "xvdh", "Ebs": {"VolumeId": NC, "Status": "attached"}}])

    slept = []
    clock = iter([0.0, 1.0, 3.0, 5.0, 7.0])
    no_change(h, lambda: win.up(params(device_timeout=4), executor(h), sleep=slept.append, clock=lambda: next(clock),
                                describe=describer(h, change=attached_in_ec2)),
              r"the restored volumes did not appear at their Xen PV locations within 4 s: %s, expected at xvdh "
              r"\(Xen PV target 7\)\. Refused, never guessed" % NC)
    assert slept == [2.0, 2.0]


def test_xen_mappings_that_change_before_the_steps_are_sent_refuse_the_round():
    h = xen_host()
    calls = []

    def swapped_meanwhile(inst, n):
        if n == 0:
            return inst
        return dict(inst, BlockDeviceMappings=[b if b["DeviceName"] != "xvdg" else
                                               {"DeviceName": "xvdg", "Ebs": {"VolumeId": NB, "Status": "attached"}}
                                               for b in inst["BlockDeviceMappings"]])

    exc = no_change(h, lambda: win.down(params(volume_ids=[A, B, C]), executor(h, calls),
                                        describe=describer(h, [], change=swapped_meanwhile)),
                    r"instance i-0123's block device mappings changed since the host was read: xvdg \(Xen PV target 6\) "
                    r"holds %s, not %s; refusing the round \(none of its steps was sent\)" % (NB, B))
    assert exc.details["problems"] and [n for n, _p in calls] == [win.GATHER]


def test_xen_script_finds_the_disk_at_its_location_never_by_serial():
    # the FAKE stands in for Set-EbsArrayDisks.ps1: a Xen disk is not found by a volume id, and at an empty location
    h = xen_host()
    with pytest.raises(fake.DiskpartError, match="Expected exactly one disk with the serial of"):
        h.apply({"Steps": [{"op": "offline", "volume_id": A}]})
    with pytest.raises(fake.DiskpartError, match="Expected exactly one disk at Xen PV bus 0, target 9, LUN 0"):
        h.apply({"Steps": [{"op": "offline", "volume_id": A, "pv_target": 9}]})
    assert diskpart_lines(h) == []


MIRROR_OLD, MIRROR_SRC, MIRROR_NEW, STRANGER = (
    "vol-0aaaaaaaaaaaaaaa1", "vol-0bbbbbbbbbbbbbbb2", "vol-0ccccccccccccccc3", "vol-0ddddddddddddddd4")


def mirror_host(xen=False, other_letter=None):
    """FAKE: a CLUSTERPRO server (seed 001) - its mirror disk MIRROR_OLD at xvdf, one basic MBR disk with the cluster
    partition (1, R:) and the data partition (2, M:); the restored MIRROR_NEW is a copy of the other server's mirror
    volume MIRROR_SRC (another signature). ``other_letter``: a basic disk at xvdg holding that letter (then not the
    mirror's)."""
    def mirror(signature):
        content = fake.basic_content("MBR", signature, "CLUSTER")
        content["volumes"].append(dict(content["volumes"][0], key="part2", label="DATA"))
        return content
    boot = fake.basic_content("MBR", "6a4b3c2d", "SYSTEM", 30)
    boot["volumes"] = []
    contents = {BOOT: boot, MIRROR_OLD: mirror("1a2b3c4d"), MIRROR_SRC: mirror("5e6f7a8b")}
    letters = {MIRROR_OLD: dict((k, v) for k, v in (("part1", "R"), ("part2", "M")) if v != other_letter)}
    attached = [["/dev/sda1", BOOT], ["xvdf", MIRROR_OLD]]
    if other_letter:
        contents[C] = fake.basic_content("GPT", GUID_F, "LOGS")
        letters[C] = {"part1": other_letter}
        attached.append(["xvdg", C])
    state = fake.new_state("http://unused", "eu-west-1", "i-0123", BOOT, contents, letters=letters, xen=xen)
    state["attached"] = attached
    state["origin"] = {MIRROR_NEW: MIRROR_SRC}
    if xen:
        state["imds"] = {"error": "FAKE: the metadata is not asked when the device names are given"}
    return fake.FakeWindowsDisks(state)


def mirror_params(**kw):
    return params(**dict({"layout": {}, "volume_ids": [MIRROR_NEW], "source_volume_ids": [], "verify": False,
                          "partition_letters": {MIRROR_NEW: {"1": "R", "2": "M"}}}, **kw))


def partition_letters(h, vid):
    d = [x for x in h.disks() if x["volume_id"] == vid][0]
    return dict((n, h.state["letters"].get(h.volume_key(vid, v["key"]))) for n, v, _o in h.partition_table(d))


@pytest.mark.parametrize("xen", [False, True], ids=["nvme", "xen-devices-given"])
def test_a_clusterpro_mirror_disk_by_partition_number(xen):
    """The CLUSTERPRO restore's Windows disk steps through win_array_host (docs/clusterpro.md, "Windows disk steps"):
    one basic disk, its letters by partition number as the catalog records them; on a Xen host the device name the
    caller read from EC2 (``devices``), no instance metadata and no DescribeInstances."""
    h = mirror_host(xen=xen)
    no_ec2 = dict(describe=lambda i: pytest.fail("DescribeInstances"))
    dev = (lambda vid: {"devices": {vid: "xvdf"}}) if xen else (lambda vid: {})
    # down, a volume the host does not show: NVMe - passed over by default, refused with refuse_missing; Xen - no PV
    # disk at the location of its device name: refused either way. Nothing changes.
    stranger = {"devices": {STRANGER: "xvdj"}} if xen else {}
    if not xen:
        assert win.down(params(volume_ids=[STRANGER]), executor(h), **no_ec2) == {
            "changed": False, "actions": [], "instance_id": None}
    for refuse in (True, False) if xen else (True,):
        no_change(h, lambda: win.down(params(volume_ids=[STRANGER], refuse_missing=refuse, **stranger), executor(h),
                                      **no_ec2),
                  r"volume %s is attached to .* at xvdj, but the host shows no Xen PV disk at target 9" % STRANGER if xen
                  else r"shows no disk of %s, which is attached to the instance this host should be" % STRANGER)
    plan = win.down(params(volume_ids=[MIRROR_OLD], refuse_missing=True, **dev(MIRROR_OLD)), executor(h),
                    check_mode=True, **no_ec2)
    assert plan["changed"] and [a["planned"] for a in plan["actions"]] == [True] and diskpart_lines(h) == []
    calls = []
    win.down(params(volume_ids=[MIRROR_OLD], refuse_missing=True, **dev(MIRROR_OLD)), executor(h, calls), **no_ec2)
    assert diskpart_lines(h) == ["offline disk"]
    assert [s.get("pv_target") for s in sent_steps(calls)] == ([5] if xen else [None])
    assert all(p["SkipMetadata"] is xen for _n, p in calls if _n == win.GATHER)
    swap(h, [(MIRROR_OLD, MIRROR_NEW)])
    since = len(h.state["log"])
    planned = win.up(mirror_params(**dev(MIRROR_NEW)), executor(h), check_mode=True, **no_ec2)
    assert planned["changed"] and diskpart_lines(h, since) == []
    calls = []
    done = win.up(mirror_params(**dev(MIRROR_NEW)), executor(h, calls), **no_ec2)
    assert partition_letters(h, MIRROR_NEW) == {1: "R", 2: "M"}
    # the copy came up with letters Windows chose: each partition's volume got its letter, re-checked before assign
    assigned = [s for s in sent_steps(calls) if s["op"] == "assign"]
    assert sorted((s["partition"], s["letter"]) for s in assigned) == [(1, "R"), (2, "M")]
    assert all(s["offset"] and s["disks"] == [MIRROR_NEW] for s in assigned)
    assert [line for e in h.state["log"][since:] for line in e[1:] if e[0] == "diskpart"].count("detail partition") >= 4
    assert done["chkdsk"] == [] and "chkdsk" not in [e[0] for e in h.state["log"]]
    assert sorted((v["path"], v["partition"]) for v in done["volumes"]) == [("M:\\", 2), ("R:\\", 1)]
    since = len(h.state["log"])
    again = win.up(mirror_params(**dev(MIRROR_NEW)), executor(h), **no_ec2)
    assert again["changed"] is False and diskpart_lines(h, since) == []
    if not xen:  # on Xen the device names given are what EC2 says now: xvdf holds MIRROR_NEW (the role skips the step)
        assert win.down(params(volume_ids=[MIRROR_OLD]), executor(h), **no_ec2)["changed"] is False


def test_a_partition_letter_held_by_another_disk_is_refused_never_taken():
    h = mirror_host(other_letter="M")
    win.down(params(volume_ids=[MIRROR_OLD], source_volume_ids=[]), executor(h))
    swap(h, [(MIRROR_OLD, MIRROR_NEW)])
    with pytest.raises(StillpointError, match=r"drive letter M: is held by volume \d+ \(on %s\), not by the restored M:" % C):
        win.up(mirror_params(), executor(h))
    assert "remove letter=M" not in diskpart_lines(h)


def test_partition_numbers_that_diskpart_and_get_partition_disagree_on_are_refused():
    h = mirror_host()
    win.down(params(volume_ids=[MIRROR_OLD]), executor(h))
    swap(h, [(MIRROR_OLD, MIRROR_NEW)])
    execute = executor(h)

    def shifted(name, p):
        out = execute(name, p)
        if name == win.GATHER:
            for part in out.get("partitions") or []:
                part["Offset"] += 512
        return out

    before = len(h.state["log"])
    with pytest.raises(StillpointError, match=r"partition 1 of disk 1 \(%s\): Get-Partition puts it at offset \d+, "
                                              r"diskpart's partition 1 at \d+; their numbering differs" % MIRROR_NEW):
        win.up(mirror_params(), shifted)
    assert [line for line in diskpart_lines(h, before) if "assign" in line] == []
    for bad, match in (({"vol-0eeeeeeeeeeeeeee5": {"1": "R"}}, "not one of the restored volumes"),
                       ({MIRROR_NEW: {"1": "C"}}, "one of D to Z expected"),
                       ({MIRROR_NEW: {"1": "R", "2": "R"}}, r"R:\\ is wanted twice")):
        no_change(h, lambda: win.up(mirror_params(partition_letters=bad), executor(h)), match)


def test_the_step_script_rechecks_the_partition_before_assign():
    """The FAKE of Set-EbsArrayDisks.ps1's Assert-PartitionVolume: another offset, or another volume on the partition,
    refuses the step before the assign."""
    h = mirror_host()
    disks, vols = h.numbered()
    mine = [n for n, v in vols if h.volume_key(MIRROR_OLD, "part1") == v["key"]][0]
    step = {"op": "assign", "volume": mine, "disks": [MIRROR_OLD], "letter": "S", "partition": 1, "offset": 1 << 20}
    with pytest.raises(fake.DiskpartError, match="starts at 1048576, not at 4096"):
        h.apply({"Steps": [dict(step, offset=4096)]})
    with pytest.raises(fake.DiskpartError, match="holds volume"):
        h.apply({"Steps": [dict(step, partition=2, offset=h.partition_table(disks[1])[1][2])]})
    assert "assign letter=S" not in diskpart_lines(h)
