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


KERNEL_61 = "6.1.0-56-cloud-amd64"      # the lab image's kernel, where the fixtures were captured
KERNEL_612 = "6.12.95+deb12-cloud-amd64"  # bookworm-backports' cloud kernel


def engine(steps, mountinfo=("base",), check_mode=False, kernel=KERNEL_61, freezer=None):
    script = Script(steps)
    tables = [mounts(m) for m in mountinfo]

    def mountinfo_fn():
        return tables.pop(0) if len(tables) > 1 else tables[0]
    made = []
    sets = _lvm.SnapshotSets(CommandRunner(script), check_mode=check_mode, mountinfo=mountinfo_fn,
                             makedirs=lambda path, exist_ok: made.append(path), kernel_release=lambda: kernel,
                             freezer=freezer)
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
    assert [a["dry_run_rc"] for a in sets.actions] == [0, 0, 0]
    assert all(a["planned"] and a["rc"] is None and a["dry_run"][1] == "--test" for a in sets.actions)


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


# -- across LVs: the kernel decides, the freeze wraps every lvcreate -----------------------------


class FakeFreezer:
    """Stands in for the guardian (no FIFREEZE on LVM here): records freeze/thaw in the command
    sequence, and refuses like check_mountpoints/the guardian when told to."""

    instances = []

    def __init__(self, script, refuse=None, busy=False, thaw_record=None):
        self.script, self.refuse, self.busy, self.thaw_record = script, refuse, busy, thaw_record

    def __call__(self, mountpoints, deadline, protect_paths, mountinfo):
        if self.refuse:
            raise StillpointError("refusing to freeze, nothing was frozen: %s" % self.refuse)
        self.mountpoints, self.deadline, self.protect_paths = list(mountpoints), deadline, protect_paths
        self.plan = [{"mountpoint": m} for m in mountpoints]
        self.frozen = False
        FakeFreezer.instances.append(self)
        return self

    def freeze(self):
        if self.busy:
            raise StillpointError("%s is already frozen by someone else (FIFREEZE returned EBUSY)" % self.mountpoints[0])
        self.script.calls.append(["<freeze>"] + self.mountpoints)
        self.frozen = True
        return {"mounts": [{"mountpoint": m, "freeze_ms": 1.5} for m in self.mountpoints], "presync_ms": 0.5,
                "frozen_at": 1.0, "deadline": 2.0}

    def thaw(self):
        self.script.calls.append(["<thaw>"] + self.mountpoints[::-1])
        self.frozen = False
        return self.thaw_record or {"mounts": [{"mountpoint": m, "thaw_ms": 0.2} for m in self.mountpoints[::-1]],
                                    "window_ms": 42.0, "deadline_thawed": False, "externally_thawed": [],
                                    "thaw_errors": []}


def frozen_engine(steps, kernel=KERNEL_612, check_mode=False, **fake):
    """An engine whose freezer logs into the same call list as the commands."""
    sets, script, made = engine(steps, kernel=kernel, check_mode=check_mode)
    freezer = FakeFreezer(script, **fake)
    sets._freezer = freezer
    return sets, script, freezer


@pytest.mark.parametrize("release, version, nests", [
    ("6.1.0-56-cloud-amd64", (6, 1), False), ("6.5.13", (6, 5), False), ("6.6.0", (6, 6), True),
    ("6.12.95+deb12-cloud-amd64", (6, 12), True), ("7.0-rc1", (7, 0), True), ("5.15.0-1051-aws", (5, 15), False),
    ("4.19.0", (4, 19), False), ("garbage", None, False), ("", None, False),
])
def test_kernel_probe(release, version, nests):
    assert _lvm.kernel_version(release) == version
    assert _lvm.kernel_nests_freeze(release) is nests


def test_running_kernel_is_the_probe_by_default():
    sets = _lvm.SnapshotSets(CommandRunner(Script([])))
    assert sets._kernel_release() == os.uname().release


STEPS_OK = [
    (["lvcreate", "--snapshot", "--name", "ext-snap-nightly"], ok()),
    (["lvcreate", "--snapshot", "--name", "xfs-snap-nightly"], ok()),
    (["lvcreate", "--snapshot", "--name", "thin-snap-nightly"], ok()),
]


def test_auto_on_a_nesting_kernel_freezes_around_every_lvcreate():
    sets, script, freezer = frozen_engine(read("base", "base") + STEPS_OK + read("set", "set"))
    res = sets.present("nightly", VOLUMES)
    script.done()
    # the freeze is the first thing after reading, the thaw the first after the last lvcreate
    kinds = [c[0] for c in script.calls]
    assert kinds == ["lvs", "vgs", "<freeze>", "lvcreate", "lvcreate", "lvcreate", "<thaw>", "lvs", "vgs"]
    mounted = dict((m["mountpoint"], m["fstype"]) for m in mounts("base"))
    assert freezer.mountpoints == ["/srv/ext", "/srv/xfs", "/srv/thin"]
    assert all(mounted[m] in _lvm.FREEZABLE for m in freezer.mountpoints)
    assert script.calls[6][1:] == ["/srv/thin", "/srv/xfs", "/srv/ext"]  # thawed in reverse
    assert freezer.deadline == _lvm.DEFAULT_DEADLINE
    tags = [script.calls[3][i + 1] for i, a in enumerate(script.calls[3]) if a == "--addtag"]
    assert "stillpoint-xlv.yes" in tags
    cross = res["cross_lv"]
    assert cross["requested"] == "auto" and cross["mechanism"] == "freeze" and cross["kernel"] == KERNEL_612
    assert cross["freeze_mountpoints"] == freezer.mountpoints and cross["kernel_nests_freeze"] is True
    assert res["freeze"]["window_ms"] == 42.0 and res["freeze"]["presync_ms"] == 0.5
    assert [(m["mountpoint"], m["freeze_ms"], m["thaw_ms"]) for m in res["freeze"]["mounts"]] == [
        (m, 1.5, 0.2) for m in freezer.mountpoints]
    assert all("frozen (FIFREEZE under the guardian)" in m["basis"] for m in res["plan"])
    assert not any("not consistent" in w for w in sets.warnings)
    assert "mechanism freeze, frozen 42.0 ms" in res["msg"]


def test_auto_on_61_stays_sequential_and_says_why():
    sets, script, freezer = frozen_engine(read("base", "base") + STEPS_OK + read("set", "set"), kernel=KERNEL_61)
    res = sets.present("nightly", VOLUMES)
    script.done()
    assert "<freeze>" not in [c[0] for c in script.calls] and freezer not in FakeFreezer.instances
    assert res["cross_lv"]["mechanism"] == "sequential" and "older than 6.6" in res["cross_lv"]["reason"]
    assert "freeze" not in res
    assert any("not consistent with each other" in w and "older than 6.6" in w for w in sets.warnings)


def test_sequential_when_asked_even_on_a_nesting_kernel():
    sets, script, freezer = frozen_engine(read("base", "base") + STEPS_OK + read("set", "set"))
    res = sets.present("nightly", VOLUMES, cross_lv="sequential")
    script.done()
    assert [c[0] for c in script.calls].count("<freeze>") == 0
    assert res["cross_lv"]["mechanism"] == "sequential"
    tags = [script.calls[2][i + 1] for i, a in enumerate(script.calls[2]) if a == "--addtag"]
    assert "stillpoint-xlv.no" in tags


def test_auto_with_one_member_in_use_needs_no_freeze():
    # only /srv/ext is mounted and open: the other origins cannot change between the members
    table = [m for m in mounts("base") if m["mountpoint"] not in ("/srv/xfs", "/srv/thin")]
    base = json.loads(fx("base.lvs.json"))
    for row in base["report"][0]["lv"]:
        if row["lv_name"] in ("xfs", "thin"):
            row["lv_attr"] = row["lv_attr"][:5] + "-" + row["lv_attr"][6:]
    steps = [(["lvs", "--reportformat", "json"], ok(json.dumps(base))),
             (["vgs", "--reportformat", "json"], ok(fx("base.vgs.json")))] + STEPS_OK + read("set", "set")
    script = Script(steps)
    sets = _lvm.SnapshotSets(CommandRunner(script), mountinfo=lambda: table, kernel_release=lambda: KERNEL_612,
                             freezer=FakeFreezer(script))
    res = sets.present("nightly", VOLUMES)
    script.done()
    assert res["cross_lv"]["mechanism"] == "sequential" and "at most one member is in use" in res["cross_lv"]["reason"]
    tags = [script.calls[2][i + 1] for i, a in enumerate(script.calls[2]) if a == "--addtag"]
    assert "stillpoint-xlv.yes" in tags and "<freeze>" not in [c[0] for c in script.calls]


def test_freeze_is_refused_on_61_before_anything_is_done():
    sets, script, freezer = frozen_engine([], kernel=KERNEL_61)
    with pytest.raises(StillpointError) as info:
        sets.present("nightly", VOLUMES, cross_lv="freeze")
    script.done()
    msg = info.value.msg
    assert "kernel %s" % KERNEL_61 in msg and "nothing was done" in msg
    assert "EBUSY" in msg and "half-made LV" in msg and "6.6" in msg and "cross_lv=auto or sequential" in msg
    assert script.calls == [] and sets.actions == [] and freezer not in FakeFreezer.instances


def test_freeze_refusals_of_the_guardian_apply():
    sets, script, freezer = frozen_engine(read("base", "base"), refuse="/srv/ext holds the module's tmp dir")
    with pytest.raises(StillpointError, match="cross_lv=freeze: refusing to freeze, nothing was frozen"):
        sets.present("nightly", VOLUMES, cross_lv="freeze")
    script.done()
    assert sets.actions == []
    # auto falls back to one after another, and says so
    sets, script, freezer = frozen_engine(read("base", "base") + STEPS_OK + read("set", "set"),
                                          refuse="/srv/ext holds the module's tmp dir")
    res = sets.present("nightly", VOLUMES)
    script.done()
    assert res["cross_lv"]["mechanism"] == "sequential" and "the freeze was refused" in res["cross_lv"]["reason"]
    assert any("falls back" in w for w in sets.warnings)


def test_freeze_busy_creates_nothing():
    sets, script, freezer = frozen_engine(read("base", "base"), busy=True)
    with pytest.raises(StillpointError, match="EBUSY"):
        sets.present("nightly", VOLUMES, cross_lv="freeze")
    script.done()
    assert sets.actions == [] and not freezer.frozen


def test_thaw_comes_before_the_rollback_when_a_member_fails():
    sets, script, freezer = frozen_engine(read("base", "base") + [
        (["lvcreate", "--snapshot", "--name", "ext-snap-nightly"], ok()),
        (["lvcreate", "--snapshot", "--name", "xfs-snap-nightly"], (5, "", "  Insufficient free space")),
    ] + read("partial", "set") + [
        (["lvremove", "--yes", "%s/xfs-snap-nightly" % VG], ok()),
        (["lvremove", "--yes", "%s/ext-snap-nightly" % VG], ok()),
    ])
    with pytest.raises(StillpointError) as info:
        sets.present("nightly", VOLUMES, cross_lv="freeze")
    script.done()
    kinds = [c[0] for c in script.calls]
    assert kinds == ["lvs", "vgs", "<freeze>", "lvcreate", "lvcreate", "<thaw>", "lvs", "vgs", "lvremove", "lvremove"]
    assert not freezer.frozen
    err = info.value
    assert "thawed before the rollback" in err.msg and err.details["freeze"]["window_ms"] == 42.0
    assert err.details["rolled_back"] == ["%s/xfs-snap-nightly" % VG, "%s/ext-snap-nightly" % VG]


def test_thaw_even_when_lvcreate_blows_up():
    def explode(argv, **kwargs):
        raise RuntimeError("runner died")
    sets, script, freezer = frozen_engine(read("base", "base"))
    steps = script.steps
    runner = CommandRunner(lambda argv, **kw: script(argv, **kw) if argv[0] != "lvcreate" else explode(argv))
    sets.run = sets.rec.run = runner
    with pytest.raises(RuntimeError):
        sets.present("nightly", VOLUMES, cross_lv="freeze")
    assert steps == [] and [c[0] for c in script.calls][-1] == "<thaw>" and not freezer.frozen


def test_deadline_thaw_rolls_the_set_back():
    record = {"mounts": [], "window_ms": 10500.0, "deadline_thawed": True, "externally_thawed": [], "thaw_errors": []}
    sets, script, freezer = frozen_engine(read("base", "base") + STEPS_OK + read("set", "set") + [
        (["lvremove", "--yes", s], ok()) for s in reversed(
            ["%s/ext-snap-nightly" % VG, "%s/xfs-snap-nightly" % VG, "%s/thin-snap-nightly" % VG])],
        thaw_record=record)
    with pytest.raises(StillpointError, match="outlived freeze_deadline .*Raise freeze_deadline") as info:
        sets.present("nightly", VOLUMES, freeze_deadline=10)
    script.done()
    assert len(info.value.details["rolled_back"]) == 3


def test_freeze_refused_for_a_raw_open_member():
    # xfs open (attr o) but not mounted: a freeze cannot hold what writes to it
    table = [m for m in mounts("base") if m["mountpoint"] != "/srv/xfs"]
    sets, script, freezer = frozen_engine(read("base", "base"))
    sets._mountinfo = lambda: table
    with pytest.raises(StillpointError, match="vgsp/xfs is open but not mounted"):
        sets.present("nightly", VOLUMES, cross_lv="freeze")
    sets, script, freezer = frozen_engine(read("base", "base") + STEPS_OK + read("set", "set"))
    sets._mountinfo = lambda: table
    res = sets.present("nightly", VOLUMES)
    assert res["cross_lv"]["mechanism"] == "sequential" and "raw device" in res["cross_lv"]["reason"]


@pytest.mark.parametrize("kwargs, message", [
    ({"cross_lv": "both"}, "cross_lv must be one of"), ({"freeze_deadline": 0}, "freeze_deadline must be"),
    ({"freeze_deadline": 301}, "freeze_deadline must be"),
])
def test_cross_lv_option_validation(kwargs, message):
    sets, script, freezer = frozen_engine([])
    with pytest.raises(StillpointError, match=message):
        sets.present("nightly", VOLUMES, **kwargs)


def test_check_mode_plans_the_freeze_and_freezes_nothing():
    answer = cmd("lvcreate-test")
    sets, script, freezer = frozen_engine(read("base", "base") + [
        (["lvcreate", "--test", "--snapshot"], (answer["rc"], answer["stdout"], answer["stderr"]))] * 3,
        check_mode=True)
    res = sets.present("nightly", VOLUMES)
    script.done()
    assert "<freeze>" not in [c[0] for c in script.calls] and not freezer.frozen
    assert res["cross_lv"]["mechanism"] == "freeze" and "freeze" not in res
    assert "would create 3 snapshot(s) of set nightly freezing /srv/ext, /srv/xfs, /srv/thin" in res["msg"]
    assert res["snapshot_set"]["cross_lv_consistent"] is True


# -- the module ------------------------------------------------------------------------------


def _module(monkeypatch, steps, args, check_mode=False, mountinfo="base", module=lvm_snapshot_set, kernel=KERNEL_61):
    script = Script(steps)
    monkeypatch.setattr(module.AnsibleModule, "run_command", lambda self, argv, **kw: script(argv, **kw))
    monkeypatch.setattr(module.AnsibleModule, "get_bin_path", lambda self, name, required=False: name)
    monkeypatch.setattr(_lvm, "read_mountinfo", lambda: mounts(mountinfo))
    monkeypatch.setattr(_lvm, "running_kernel", lambda: kernel)
    result = run_module(monkeypatch, module.main, args, check_mode=check_mode)
    script.done()
    return result


def test_module_refuses_freeze_on_61(monkeypatch):
    res = _module(monkeypatch, [], {"set_name": "nightly", "volumes": VOLUMES, "cross_lv": "freeze"})
    assert res["failed"] and "EBUSY" in res["msg"] and res["kernel"] == KERNEL_61 and res["actions"] == []


def test_module_check_mode_reports_the_mechanism(monkeypatch):
    answer = cmd("lvcreate-test")
    steps = read("base", "base") + [(["lvcreate", "--test"], (answer["rc"], answer["stdout"], answer["stderr"]))] * 3
    res = _module(monkeypatch, steps, {"set_name": "nightly", "volumes": VOLUMES}, check_mode=True)
    assert res["changed"] and res["cross_lv"]["mechanism"] == "sequential" and res["cross_lv"]["kernel"] == KERNEL_61


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
