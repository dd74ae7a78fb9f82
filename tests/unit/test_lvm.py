# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_lvm and lvm_snapshot_set on real command output.

Every ``*.lvs.json``/``*.vgs.json``/``*.mountinfo`` under fixtures/lvm/ was captured in the lab VM
(Debian bookworm, kernel 6.1, lvm2 2.03.16, ``LC_ALL=C``, ``--reportformat json --units b
--nosuffix``) at the step its name says; ``*.cmd.json`` hold a command's real rc/stdout/stderr.
See fixtures/lvm/README.md. Commands are fed in order to a scripted ``run_command``.
"""

import json
import os

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _lvm
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import parse_mountinfo
from ansible_collections.stillpoint.snapshots.plugins.modules import lvm_snapshot_set, lvm_snapshot_set_info

from tests.unit.utils import run_module

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "lvm")
VG = "vgsp"
VOLUMES = [{"vg": VG, "lv": "ext", "size": "48m"}, {"vg": VG, "lv": "xfs", "percent_origin": 15},
           {"vg": VG, "lv": "thin"}]
SNAPS = ["%s/ext-snap-nightly" % VG, "%s/xfs-snap-nightly" % VG, "%s/thin-snap-nightly" % VG]


def fx(name):
    with open(os.path.join(FIX, name)) as f:
        return f.read()


def cmd(name):
    return json.loads(fx(name + ".cmd.json"))


def mounts(name):
    return parse_mountinfo(fx(name + ".mountinfo"))


class Script:
    """``run_command`` answering an ordered list of ``(argv prefix, (rc, out, err))``."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.calls = []

    def __call__(self, argv, **kwargs):
        assert kwargs.get("environ_update", {}).get("LC_ALL") == "C"
        assert self.steps, "unexpected command %r" % (argv,)
        prefix, answer = self.steps.pop(0)
        assert argv[:len(prefix)] == prefix, "expected %r..., got %r" % (prefix, argv)
        self.calls.append(list(argv))
        return answer

    def done(self):
        assert not self.steps, "commands not run: %r" % (self.steps,)


def read(lvs, vgs):
    """The two commands of one state reading."""
    return [(["lvs", "--reportformat", "json"], (0, fx(lvs + ".lvs.json"), "")),
            (["vgs", "--reportformat", "json"], (0, fx(vgs + ".vgs.json"), ""))]


def engine(steps, mountinfo=("base",), check_mode=False):
    script = Script(steps)
    tables = [mounts(m) for m in mountinfo]

    def mountinfo_fn():
        return tables.pop(0) if len(tables) > 1 else tables[0]
    made = []
    sets = _lvm.SnapshotSets(CommandRunner(script), check_mode=check_mode, mountinfo=mountinfo_fn,
                             makedirs=lambda path, exist_ok: made.append(path))
    return sets, script, made


def ok(out=""):
    return (0, out, "")


# -- pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("48m", 48 << 20), ("48M", 48 << 20), ("1.5g", 3 << 29), ("512k", 512 << 10), ("2048s", 1 << 20),
    ("100", 100 << 20), ("7b", 7), (" 2G ", 2 << 30),
])
def test_parse_size(text, expected):
    assert _lvm.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "m", "-1m", "1x", "1 0m", "1e3"])
def test_parse_size_refuses(text):
    with pytest.raises(StillpointError, match="Invalid size"):
        _lvm.parse_size(text)


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 65, "a:b"])
def test_set_name_refused(name):
    with pytest.raises(StillpointError, match="Invalid set_name"):
        _lvm.validate_set_name(name)


def test_volumes_validation():
    with pytest.raises(StillpointError, match="not both"):
        _lvm.normalize_volumes([{"vg": VG, "lv": "ext", "size": "1g", "percent_origin": 10}])
    with pytest.raises(StillpointError, match="twice"):
        _lvm.normalize_volumes([{"vg": VG, "lv": "ext"}, {"vg": VG, "lv": "ext"}])
    with pytest.raises(StillpointError, match="percent_origin"):
        _lvm.normalize_volumes([{"vg": VG, "lv": "ext", "percent_origin": 150}])
    assert _lvm.normalize_volumes(VOLUMES)[0]["size"] == 48 << 20


# -- reading real reports --------------------------------------------------------------------


def test_state_of_the_lab_vg_before_any_set():
    state = _lvm.LvmState.from_text(fx("base.lvs.json"), fx("base.vgs.json"), mounts("base"))
    assert state.set_names() == []
    for lv, fstype in (("ext", "ext4"), ("xfs", "xfs"), ("thin", "ext4")):
        origin = state.lv(VG, lv)
        assert origin is not None and not _lvm.is_snapshot(origin)
        assert _lvm.is_open(origin)
        assert [m["fstype"] for m in state.mounts_of(origin)] == [fstype]
        level, basis = _lvm.member_level(state, origin)
        assert level == "filesystem" and "device-mapper freezes" in basis
    assert _lvm.is_thin(state.lv(VG, "thin")) and not _lvm.is_thin(state.lv(VG, "ext"))
    # the pool is not mounted and not a volume to snapshot
    assert state.mounts_of(state.lv(VG, "pool")) == []


def test_a_created_set_as_lvm_reports_it():
    state = _lvm.LvmState.from_text(fx("set.lvs.json"), fx("set.vgs.json"), mounts("base"))
    assert state.set_names() == ["nightly"]
    desc = state.describe_set("nightly")
    assert desc["complete"] and desc["expected_members"] == 3
    by_lv = dict((m["lv"], m) for m in desc["members"])
    assert sorted(by_lv) == ["ext", "thin", "xfs"]
    assert by_lv["ext"]["kind"] == "classic" and by_lv["xfs"]["kind"] == "classic" and by_lv["thin"]["kind"] == "thin"
    assert by_lv["ext"]["size"] == 48 << 20
    assert by_lv["xfs"]["size"] == 48 << 20  # 15 % of 80 extents -> 12 extents of 4 MiB
    assert by_lv["ext"]["active"] and not by_lv["thin"]["active"]  # thin snapshots skip activation
    assert desc["level"] == "filesystem" and desc["cross_lv_consistent"] is False
    assert all(not m["invalid"] and not m["merging"] and m["mounted_at"] == [] for m in desc["members"])
    assert [m["path"] for m in desc["members"]] == sorted("/dev/%s" % s for s in SNAPS)


def test_partial_and_invalid_and_merging_sets():
    partial = _lvm.LvmState.from_text(fx("partial.lvs.json"), fx("set.vgs.json"), mounts("base"))
    desc = partial.describe_set("nightly")
    assert desc["exists"] and not desc["complete"] and desc["expected_members"] == 3 and len(desc["members"]) == 2

    invalid = _lvm.LvmState.from_text(fx("invalid.lvs.json"), fx("set.vgs.json"), mounts("base"))
    row = invalid.lv(VG, "tiny")
    assert _lvm.is_snapshot(row) and _lvm.is_invalid(row)

    merging = _lvm.LvmState.from_text(fx("merging.lvs.json"), fx("set.vgs.json"), mounts("base"))
    rows = [r for r in merging.lvs if _lvm.is_merging(r)]
    assert [r["lv_name"] for r in rows] == ["ext-snap-nightly"]
    assert merging.describe_set("nightly")["members"][0]["merging"] is True


# -- planning and the space check ------------------------------------------------------------


def test_plan_extents_and_kinds():
    state = _lvm.LvmState.from_text(fx("base.lvs.json"), fx("base.vgs.json"), mounts("base"))
    extent = int(state.vgs[VG]["vg_extent_size"])
    plan = _lvm.plan_members(state, "nightly", _lvm.normalize_volumes(VOLUMES))
    assert [(m["snapshot"], m["kind"]) for m in plan] == [
        ("ext-snap-nightly", "classic"), ("xfs-snap-nightly", "classic"), ("thin-snap-nightly", "thin")]
    assert plan[0]["extents"] == (48 << 20) // extent
    origin_extents = int(state.lv(VG, "xfs")["lv_size"]) // extent
    assert plan[1]["extents"] == -(-origin_extents * 15 // 100)
    assert plan[2]["pool"] == "pool" and plan[2]["extents"] == 0


@pytest.mark.parametrize("volumes, message", [
    ([{"vg": VG, "lv": "thin", "size": "8m"}], "thin LV"),
    ([{"vg": VG, "lv": "ext"}], "needs size or percent_origin"),
    ([{"vg": VG, "lv": "nope", "size": "8m"}], "vgsp/nope does not exist"),
    ([{"vg": "vgx", "lv": "ext", "size": "8m"}], "volume group vgx does not exist"),
    ([{"vg": VG, "lv": "pool", "size": "8m"}], "pool LV"),
])
def test_plan_refusals(volumes, message):
    state = _lvm.LvmState.from_text(fx("base.lvs.json"), fx("base.vgs.json"), mounts("base"))
    with pytest.raises(StillpointError, match=message):
        _lvm.plan_members(state, "nightly", _lvm.normalize_volumes(volumes))


def test_space_refusal_says_what_is_missing():
    state = _lvm.LvmState.from_text(fx("full.lvs.json"), fx("full.vgs.json"), mounts("base"))
    row = state.vgs[VG]
    free, extent = int(row["vg_free_count"]), int(row["vg_extent_size"])
    plan = _lvm.plan_members(state, "nightly", _lvm.normalize_volumes(VOLUMES))
    need = plan[0]["extents"] + plan[1]["extents"]
    assert need > free
    with pytest.raises(StillpointError) as info:
        _lvm.check_space(state, plan, 80.0)
    msg = info.value.msg
    assert "has %d free extents" % free in msg
    assert "need %d" % need in msg
    assert "%d extents (%s) are missing" % (need - free, _lvm.human((need - free) * extent)) in msg
    assert info.value.details["space"][0]["needed_extents"] == need


def test_thin_pool_threshold():
    state = _lvm.LvmState.from_text(fx("base.lvs.json"), fx("base.vgs.json"), mounts("base"))
    pool = state.lv(VG, "pool")
    data = float(pool["data_percent"])
    assert data > 0
    plan = _lvm.plan_members(state, "nightly", _lvm.normalize_volumes(VOLUMES[2:]))
    report = _lvm.check_space(state, plan, 80.0)
    assert report[0]["pool"] == "pool" and report[0]["data_percent"] == data
    limit = data / 2
    with pytest.raises(StillpointError) as info:
        _lvm.check_space(state, plan, limit)
    size = int(pool["lv_size"])
    missing = int(-(-(size * data / 100.0 * 100.0 / limit - size) // 1))
    assert "data is %.2f%% full" % data in info.value.msg
    assert "it lacks %s" % _lvm.human(missing) in info.value.msg


# -- the engine ------------------------------------------------------------------------------


def test_present_creates_all_members_with_tags():
    sets, script, dummy = engine(read("base", "base") + [
        (["lvcreate", "--snapshot", "--name", "ext-snap-nightly", "--extents", "12"], ok()),
        (["lvcreate", "--snapshot", "--name", "xfs-snap-nightly", "--extents", "12"], ok()),
        (["lvcreate", "--snapshot", "--name", "thin-snap-nightly", "--addtag"], ok()),
    ] + read("set", "set"))
    res = sets.present("nightly", VOLUMES)
    script.done()
    assert res["changed"] and res["snapshot_set"]["complete"]
    first = script.calls[2]
    assert first[-1] == "%s/ext" % VG
    tags = [first[i + 1] for i, a in enumerate(first) if a == "--addtag"]
    assert tags == ["stillpoint-set.nightly", "stillpoint-count.3", "stillpoint-xlv.no", "stillpoint-level.filesystem"]
    assert "--extents" not in script.calls[4]  # thin: no size
    assert [m["level"] for m in res["plan"]] == ["filesystem"] * 3
    assert res["snapshot_set"]["cross_lv_consistent"] is False
    assert any("not consistent with each other" in w for w in sets.warnings)
    assert [a["rc"] for a in sets.actions] == [0, 0, 0]


def test_present_again_changes_nothing():
    sets, script, dummy = engine(read("set", "set"))
    res = sets.present("nightly", VOLUMES)
    script.done()
    assert res["changed"] is False and sets.actions == []


def test_present_check_mode_uses_lvm_test():
    answer = cmd("lvcreate-test")
    sets, script, dummy = engine(read("base", "base") + [
        (["lvcreate", "--test", "--snapshot"], (answer["rc"], answer["stdout"], answer["stderr"]))] * 3,
        check_mode=True)
    res = sets.present("nightly", VOLUMES)
    script.done()
    assert answer["rc"] == 0 and "TEST MODE" in (answer["stdout"] + answer["stderr"]).upper()
    assert res["changed"] is True and not sets.changed
    assert all(c[1] == "--test" for c in script.calls[2:])


def test_present_refuses_partial_set():
    sets, script, dummy = engine(read("partial", "set"))
    with pytest.raises(StillpointError, match="is partial: it has 2 member") as info:
        sets.present("nightly", VOLUMES)
    script.done()
    assert "state=absent" in info.value.msg
    assert sets.actions == []


def test_present_refuses_without_space_before_any_change():
    sets, script, dummy = engine(read("full", "full"))
    with pytest.raises(StillpointError, match="are missing"):
        sets.present("weekly", VOLUMES)
    script.done()
    assert sets.actions == []


def test_present_rolls_back_when_a_member_fails():
    failed = cmd("lvcreate-thin-frozen")  # a thin snapshot of a filesystem held frozen by fsfreeze: EBUSY
    assert failed["rc"] != 0
    sets, script, dummy = engine(read("base", "base") + [
        (["lvcreate", "--snapshot", "--name", "ext-snap-nightly"], ok()),
        (["lvcreate", "--snapshot", "--name", "xfs-snap-nightly"], ok()),
        (["lvcreate", "--snapshot", "--name", "thin-snap-nightly"],
         (failed["rc"], failed["stdout"], failed["stderr"])),
    ] + read("partial", "set") + [
        (["lvremove", "--yes", "%s/xfs-snap-nightly" % VG], ok()),
        (["lvremove", "--yes", "%s/ext-snap-nightly" % VG], ok()),
    ])
    with pytest.raises(StillpointError) as info:
        sets.present("nightly", VOLUMES)
    script.done()
    err = info.value
    assert err.rc == failed["rc"] and "rolled back" in err.msg
    assert err.details["rolled_back"] == ["%s/xfs-snap-nightly" % VG, "%s/ext-snap-nightly" % VG]
    assert err.details["left_behind"] == []
    assert "Device or resource busy" in err.msg


def test_half_made_classic_snapshot_is_rolled_back_with_a_warning():
    failed = cmd("lvcreate-frozen")  # classic snapshot of a frozen XFS: lvcreate leaves a half-made LV
    assert "Manual intervention required" in failed["stderr"]
    sets, script, dummy = engine(read("base", "base") + [
        (["lvcreate", "--snapshot", "--name", "ext-snap-nightly"], ok()),
        (["lvcreate", "--snapshot", "--name", "xfs-snap-nightly"], (failed["rc"], failed["stdout"], failed["stderr"])),
    ] + read("partial", "set") + [
        (["lvremove", "--yes", "%s/xfs-snap-nightly" % VG], ok()),
        (["lvremove", "--yes", "%s/ext-snap-nightly" % VG], ok()),
    ])
    with pytest.raises(StillpointError, match="All or nothing: rolled back vgsp/xfs-snap-nightly, vgsp/ext-snap-nightly"):
        sets.present("nightly", VOLUMES)
    script.done()
    assert any("half-made" in w and "vgsp-xfs-real" in w for w in sets.warnings)


def test_rollback_failure_is_reported():
    sets, script, dummy = engine(read("base", "base") + [
        (["lvcreate"], ok()), (["lvcreate"], ok()), (["lvcreate"], (5, "", "boom")),
    ] + read("partial", "set") + [
        (["lvremove"], (5, "", "  Logical volume vgsp/xfs-snap-nightly in use.")),
        (["lvremove"], ok()),
    ])
    with pytest.raises(StillpointError, match="COULD NOT REMOVE vgsp/xfs-snap-nightly") as info:
        sets.present("nightly", VOLUMES)
    script.done()
    assert info.value.details["left_behind"] == ["%s/xfs-snap-nightly" % VG]


def test_absent_removes_members_only():
    sets, script, dummy = engine(read("set", "set") + [
        (["lvremove", "--yes", s], ok()) for s in sorted(SNAPS)] + read("base", "base"))
    res = sets.absent("nightly")
    script.done()
    assert res["changed"] and res["removed"] == sorted(SNAPS)
    assert res["snapshot_set"]["exists"] is False
    sets, script, dummy = engine(read("base", "base"))
    assert sets.absent("nightly")["changed"] is False


def test_absent_refuses_a_mounted_set():
    sets, script, dummy = engine(read("set-active", "set"), mountinfo=("mounted",))
    with pytest.raises(StillpointError, match="is mounted .*state=unmounted"):
        sets.absent("nightly")
    assert sets.actions == []


def test_mounted_activates_thin_and_mounts_read_only():
    blkid = {"ext": "ext4", "xfs": "xfs", "thin": "ext4"}
    order = ["ext", "thin", "xfs"]  # lvs order of the members
    steps = read("set", "set") + [
        (["lvchange", "--activate", "y", "--ignoreactivationskip", "%s/thin-snap-nightly" % VG], ok()),
    ] + read("set-active", "set")
    for lv in order:
        steps.append((["blkid", "-o", "value", "-s", "TYPE", "/dev/%s/%s-snap-nightly" % (VG, lv)], ok(blkid[lv] + "\n")))
        steps.append((["mount", "-t", blkid[lv]], ok()))
    steps += read("set-active", "set")
    sets, script, made = engine(steps, mountinfo=("base", "base", "mounted"))
    res = sets.mounted("nightly", "/mnt/nightly")
    script.done()
    assert res["changed"]
    mount_calls = [c for c in script.calls if c[0] == "mount"]
    by_lv = dict((c[-1].rsplit("/", 1)[1], c) for c in mount_calls)
    assert by_lv["xfs"][4] == "ro,nouuid,norecovery" and by_lv["ext"][4] == "ro,noload"
    assert made == ["/mnt/nightly/%s/%s" % (VG, lv) for lv in order]
    assert all(m["mounted_at"] for m in res["snapshot_set"]["members"])


def test_mounted_again_changes_nothing():
    sets, script, dummy = engine(read("set-active", "set"), mountinfo=("mounted",))
    res = sets.mounted("nightly", "/mnt/nightly")
    script.done()
    assert res["changed"] is False and sets.actions == []


def test_unmounted():
    table = mounts("mounted")
    targets = [m["mountpoint"] for m in table if m["mountpoint"].startswith("/mnt/nightly/")]
    assert len(targets) == 3
    steps = read("set-active", "set") + [(["umount"], ok())] * 3 + read("set-active", "set")
    sets, script, dummy = engine(steps, mountinfo=("mounted", "base"))
    res = sets.unmounted("nightly")
    script.done()
    assert res["changed"] and sorted(res["unmounted"]) == sorted(targets)
    sets, script, dummy = engine(read("set-active", "set"))
    assert sets.unmounted("nightly")["changed"] is False


def test_reverted_refuses_open_origins_then_merges_all():
    sets, script, dummy = engine(read("set", "set"))
    with pytest.raises(StillpointError, match="are open") as info:
        sets.reverted("nightly")
    assert sorted(info.value.details["open"]) == ["%s/%s" % (VG, lv) for lv in ("ext", "thin", "xfs")]
    assert sets.actions == []

    names = sorted(SNAPS)
    steps = read("set-closed", "set")
    steps += [(["lvconvert", "--test", "--merge", "--background", n], ok()) for n in names]
    steps += [(["lvconvert", "--merge", "--interval", "1", n], ok()) for n in names]
    steps += read("base", "base")
    sets, script, dummy = engine(steps, mountinfo=("unmounted-origins", "unmounted-origins"))
    res = sets.reverted("nightly")
    script.done()
    assert res["changed"] and res["merged"] == names and res["deferred"] == []


def test_reverted_dry_run_failure_merges_nothing():
    steps = read("set-closed", "set") + [(["lvconvert", "--test"], ok()), (["lvconvert", "--test"], (5, "", "  nope"))]
    sets, script, dummy = engine(steps, mountinfo=("unmounted-origins",))
    with pytest.raises(StillpointError, match="No member was merged"):
        sets.reverted("nightly")
    script.done()


def test_reverted_partial_or_gone():
    sets, script, dummy = engine(read("partial", "set"), mountinfo=("unmounted-origins",))
    with pytest.raises(StillpointError, match="Refusing to merge part of a set"):
        sets.reverted("nightly")
    sets, script, dummy = engine(read("base", "base"))
    assert sets.reverted("nightly")["changed"] is False


def test_info_lists_sets():
    sets, script, dummy = engine(read("set", "set"))
    res = sets.info()
    assert [s["name"] for s in res["sets"]] == ["nightly"] and res["changed"] is False


# -- the module ------------------------------------------------------------------------------


def _module(monkeypatch, steps, args, check_mode=False, mountinfo="base", module=lvm_snapshot_set):
    script = Script(steps)
    monkeypatch.setattr(module.AnsibleModule, "run_command", lambda self, argv, **kw: script(argv, **kw))
    monkeypatch.setattr(module.AnsibleModule, "get_bin_path", lambda self, name, required=False: name)
    monkeypatch.setattr(_lvm, "read_mountinfo", lambda: mounts(mountinfo))
    result = run_module(monkeypatch, module.main, args, check_mode=check_mode)
    script.done()
    return result


def test_module_idempotent_present(monkeypatch):
    res = _module(monkeypatch, read("set", "set"), {"set_name": "nightly", "volumes": VOLUMES})
    assert res["changed"] is False and not res.get("failed")
    assert res["snapshot_set"]["complete"] and res["actions"] == []


def test_module_failure_carries_the_message(monkeypatch):
    res = _module(monkeypatch, read("full", "full"), {"set_name": "weekly", "volumes": VOLUMES})
    assert res["failed"] and "are missing" in res["msg"] and res["space"]


def test_module_volumes_must_match_for_other_states(monkeypatch):
    args = {"set_name": "nightly", "state": "absent", "volumes": VOLUMES[:1]}
    res = _module(monkeypatch, read("set", "set"), args)
    assert res["failed"] and "not the volumes given" in res["msg"]


@pytest.mark.parametrize("check_mode", [False, True])
def test_info_module_lists_every_set(monkeypatch, check_mode):
    res = _module(monkeypatch, read("set-active", "set"), {}, check_mode=check_mode, mountinfo="mounted",
                  module=lvm_snapshot_set_info)
    assert res["changed"] is False and not res.get("failed")
    [found] = res["sets"]
    assert found["name"] == "nightly" and found["complete"] and found["expected_members"] == 3
    assert sorted("%s/%s" % (m["vg"], m["snapshot"]) for m in found["members"]) == sorted(SNAPS)
    assert all(m["mounted_at"] for m in found["members"])


def test_info_module_one_set_or_none(monkeypatch):
    res = _module(monkeypatch, read("set", "set"), {"set_name": "nightly"}, module=lvm_snapshot_set_info)
    assert [s["name"] for s in res["sets"]] == ["nightly"] and res["sets"][0]["exists"]
    res = _module(monkeypatch, read("base", "base"), {"set_name": "nightly"}, module=lvm_snapshot_set_info)
    assert res["changed"] is False and res["sets"][0]["exists"] is False and res["sets"][0]["members"] == []
    res = _module(monkeypatch, read("base", "base"), {}, module=lvm_snapshot_set_info)
    assert res["sets"] == []
