# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_freeze without freezing: mount table parsing and every refusal of a freeze plan.

The mount tables are data: samples captured from /proc/self/mountinfo on a machine with
loop filesystems (ext4, xfs, btrfs with subvolumes, bind mounts, shared propagation, an
overmount, names with a space, a tab, a newline and a backslash), and small tables written
here in the same format.
"""

import ast
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _devices
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "freeze")
FAKE = "/stillpoint-fake"


def _fixture(name):
    return _devices.read_mountinfo(os.path.join(FIXTURES, name))


def _by_mountpoint(entries, suffix):
    found = [e for e in entries if e["mountpoint"].endswith(suffix)]
    assert found, "no mount ending in %r" % suffix
    return found


def _table(*lines):
    """A mount table in mountinfo format: a root filesystem plus the given lines."""
    head = [
        "1 0 254:0 / / rw,relatime - ext4 /dev/vda rw",
        "20 1 0:21 / /proc rw,relatime - proc proc rw",
    ]
    return _devices.parse_mountinfo("\n".join(head + list(lines)) + "\n")


STANDARD = [
    "30 1 259:1 / {f}/data rw,relatime - xfs /dev/nvme1n1 rw,inode64",
    "31 1 259:2 / {f}/logs rw,relatime - ext4 /dev/nvme2n1 rw",
    "32 1 259:1 /sub {f}/data-bind rw,relatime - xfs /dev/nvme1n1 rw,inode64",
    "33 1 0:40 / {f}/btr rw,relatime - btrfs /dev/nvme3n1 rw,subvolid=5,subvol=/",
    "34 1 0:40 /@a {f}/btr-a rw,relatime - btrfs /dev/nvme3n1 rw,subvolid=256,subvol=/@a",
    "35 1 0:41 / {f}/scratch rw,relatime - tmpfs tmpfs rw,size=1024k",
    "36 1 0:42 / {f}/nfs rw,relatime - nfs4 server:/export rw,vers=4.2",
    "37 1 8:17 / {f}/fat rw,relatime - vfat /dev/sdb1 rw",
    "38 1 259:4 / {f}/ansible rw,relatime - ext4 /dev/nvme4n1 rw",
    "39 1 254:0 /srv/rootbind {f}/rootbind rw,relatime - ext4 /dev/vda rw",
    "40 1 0:44 / {f}/merged rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w",
]


def standard_table(*extra):
    return _table(*([line.format(f=FAKE) for line in STANDARD] + list(extra)))


def refusal(mountpoints, table, **kwargs):
    with pytest.raises(StillpointError) as info:
        _freeze.check_mountpoints(mountpoints, mountinfo=table, **kwargs)
    return info.value


# ------------------------------------------------------------------------------------------
# mountinfo parsing


def test_escapes_are_decoded_in_captured_sample():
    entries = _fixture("mountinfo-loop-btrfs-bind.txt")
    space = _by_mountpoint(entries, "/data one")[0]
    assert space["fstype"] == "ext4" and space["source"] == "/dev/loop0" and space["dev"] == "7:0"
    tab = _by_mountpoint(entries, "/tab\tdir")[0]
    assert tab["fstype"] == "xfs"
    assert "inode64" in tab["super_options"]
    back = _by_mountpoint(entries, "/back\\slash")[0]
    assert back["fstype"] == "tmpfs"
    assert not any("\\040" in e["mountpoint"] or "\\011" in e["mountpoint"] for e in entries)


def test_newline_and_optional_fields_in_captured_sample():
    entries = _fixture("mountinfo-shared-overmount.txt")
    newline = _by_mountpoint(entries, "/new\nline")[0]
    assert newline["fstype"] == "tmpfs"
    shared = _by_mountpoint(entries, "/srv")[0]
    assert shared["optional"] == ["shared:1"]
    assert shared["root"].endswith("/srv") and shared["root"] != "/"
    slave = _by_mountpoint(entries, "/slave")[0]
    assert slave["optional"] == ["master:1"]
    # fields after the separator are still found when optional fields are present
    assert shared["fstype"] == "ext4" and shared["source"] == "/dev/vda"
    root = [e for e in entries if e["mountpoint"] == "/"][0]
    assert root["optional"] == [] and root["mount_id"] == 27 and root["parent_id"] == 1


def test_btrfs_subvolumes_share_one_device():
    entries = _fixture("mountinfo-loop-btrfs-bind.txt")
    top = _by_mountpoint(entries, "/btr")[0]
    data = _by_mountpoint(entries, "/btr-data")[0]
    logs = _by_mountpoint(entries, "/btr-logs")[0]
    assert top["dev"] == data["dev"] == logs["dev"]
    assert (top["root"], data["root"], logs["root"]) == ("/", "/@data", "/@logs")
    assert "subvol=/@data" in data["super_options"]


def test_bind_mounts_keep_their_root():
    entries = _fixture("mountinfo-loop-btrfs-bind.txt")
    origin = _by_mountpoint(entries, "/data one")[0]
    sub = _by_mountpoint(entries, "/bind-sub")[0]
    whole = _by_mountpoint(entries, "/bind-root")[0]
    assert sub["dev"] == whole["dev"] == origin["dev"]
    assert sub["root"] == "/sub" and whole["root"] == "/"


def test_read_mountinfo_of_this_process_has_a_root():
    entries = _devices.read_mountinfo()
    assert any(e["mountpoint"] == "/" for e in entries)
    assert all(isinstance(e["mount_id"], int) and ":" in e["dev"] for e in entries)


def test_unparseable_mountinfo_line_is_an_error():
    with pytest.raises(StillpointError, match="Cannot parse mountinfo line 2"):
        _devices.parse_mountinfo("1 0 254:0 / / rw - ext4 /dev/vda rw\nthis is not mountinfo\n")


def test_missing_mountinfo_file_is_an_error(tmp_path):
    with pytest.raises(StillpointError, match="Cannot read the mount table"):
        _devices.read_mountinfo(str(tmp_path / "absent"))


# ------------------------------------------------------------------------------------------
# freeze plans that pass


def test_plan_keeps_the_given_order_and_reports_each_filesystem():
    plan = _freeze.check_mountpoints([FAKE + "/logs", FAKE + "/data", FAKE + "/btr-a"], mountinfo=standard_table())
    assert [p["mountpoint"] for p in plan] == [FAKE + "/logs", FAKE + "/data", FAKE + "/btr-a"]
    assert plan[0] == {"mountpoint": FAKE + "/logs", "fstype": "ext4", "source": "/dev/nvme2n1", "dev": "259:2",
                       "mount_id": 31}
    assert plan[1]["fstype"] == "xfs" and plan[2]["fstype"] == "btrfs"


def test_overmounted_path_resolves_to_the_top_mount():
    entries = _fixture("mountinfo-shared-overmount.txt")
    target = _by_mountpoint(entries, "/srv/data")[0]["mountpoint"]
    plan = _freeze.check_mountpoints([target], mountinfo=entries)
    assert plan[0]["dev"] == "7:1" and plan[0]["source"] == "/dev/loop1"


def test_symlink_to_a_mountpoint_is_resolved(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    link = tmp_path / "link"
    link.symlink_to(mnt)
    table = _table("50 1 7:3 / %s rw - ext4 /dev/loop3 rw" % mnt)
    plan = _freeze.check_mountpoints([str(link)], mountinfo=table)
    assert plan[0]["mountpoint"] == str(mnt)


def test_captured_filesystems_pass_when_named_once():
    entries = _fixture("mountinfo-loop-btrfs-bind.txt")
    names = [_by_mountpoint(entries, s)[0]["mountpoint"] for s in ("/data one", "/tab\tdir", "/btr-data")]
    plan = _freeze.check_mountpoints(names, mountinfo=entries)
    assert [p["fstype"] for p in plan] == ["ext4", "xfs", "btrfs"]


# ------------------------------------------------------------------------------------------
# refusals, each with its message


def test_refuses_root():
    err = refusal(["/"], standard_table())
    assert "/ is the root filesystem" in err.msg
    assert "freeze that" in err.msg  # says what to do
    assert err.details["refused"][0]["path"] == "/"


def test_refuses_a_bind_mount_of_root():
    err = refusal([FAKE + "/rootbind"], standard_table())
    assert "root filesystem (device 254:0) mounted a second time" in err.msg


def test_refuses_a_directory_inside_a_mountpoint_and_names_the_mountpoint(tmp_path):
    mnt = tmp_path / "mnt"
    (mnt / "inner").mkdir(parents=True)
    table = _table("50 1 7:3 / %s rw - ext4 /dev/loop3 rw" % mnt)
    err = refusal([str(mnt / "inner")], table)
    assert "is not a mountpoint" in err.msg
    assert "mounted at %s" % mnt in err.msg
    assert "name %s itself" % mnt in err.msg


def test_refuses_a_missing_path_and_names_where_it_would_be():
    err = refusal([FAKE + "/data/nope"], standard_table())
    assert "%s/data/nope does not exist" % FAKE in err.msg
    assert "mounted at %s/data" % FAKE in err.msg


def test_refuses_relative_paths():
    err = refusal(["data"], standard_table())
    assert "data is not an absolute path" in err.msg


@pytest.mark.parametrize("name,fstype", [("scratch", "tmpfs"), ("nfs", "nfs4"), ("fat", "vfat"), ("merged", "overlay")])
def test_refuses_filesystems_that_cannot_be_frozen(name, fstype):
    err = refusal([FAKE + "/" + name], standard_table())
    assert "is a %s filesystem, which cannot be frozen" % fstype in err.msg
    assert "leave it out" in err.msg


def test_refuses_proc():
    err = refusal(["/proc"], standard_table())
    assert "is a proc filesystem, which cannot be frozen" in err.msg


def test_refuses_the_same_path_twice():
    err = refusal([FAKE + "/logs", FAKE + "/logs"], standard_table())
    assert "same filesystem (device 259:2) as %s/logs named before it" % FAKE in err.msg


def test_refuses_a_bind_mount_of_a_filesystem_already_named():
    err = refusal([FAKE + "/data", FAKE + "/data-bind"], standard_table())
    assert "%s/data-bind is the same filesystem (device 259:1)" % FAKE in err.msg


def test_refuses_two_subvolumes_of_one_btrfs():
    err = refusal([FAKE + "/btr", FAKE + "/btr-a"], standard_table())
    assert "%s/btr-a is the same filesystem (device 0:40)" % FAKE in err.msg
    assert "subvolume" in err.msg


def test_refuses_two_captured_btrfs_subvolumes():
    entries = _fixture("mountinfo-loop-btrfs-bind.txt")
    names = [_by_mountpoint(entries, s)[0]["mountpoint"] for s in ("/btr-data", "/btr-logs")]
    err = refusal(names, entries)
    assert "is the same filesystem (device 0:39)" in err.msg


def test_refuses_the_filesystem_holding_a_protect_path():
    err = refusal([FAKE + "/ansible"], standard_table(), protect_paths=[FAKE + "/ansible/.ansible/tmp"])
    assert "holds %s/ansible/.ansible/tmp (a protected path)" % FAKE in err.msg
    assert "remote_tmp" in err.msg


def test_protect_path_reason_is_shown():
    err = refusal([FAKE + "/ansible"], standard_table(),
                  protect_paths=[(FAKE + "/ansible/tmp", "Ansible's remote tmp dir")])
    assert "(Ansible's remote tmp dir)" in err.msg


def test_always_refuses_the_filesystem_of_the_interpreter():
    bindir = os.path.dirname(sys.executable)
    table = _table("50 1 7:5 / %s rw - ext4 /dev/loop5 rw" % bindir)
    err = refusal([bindir], table)
    assert "the Python interpreter running this code" in err.msg


def test_always_refuses_the_filesystem_of_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = _table("50 1 7:6 / %s rw - ext4 /dev/loop6 rw" % tmp_path)
    err = refusal([str(tmp_path)], table)
    assert "the current working directory" in err.msg


def test_always_refuses_the_filesystem_of_the_stdlib():
    stdlib = os.path.dirname(os.__file__)
    table = _table("50 1 7:7 / %s rw - ext4 /dev/loop7 rw" % stdlib)
    err = refusal([stdlib], table)
    assert "the Python standard library" in err.msg


def test_names_every_refused_path_at_once():
    err = refusal(["/", FAKE + "/scratch", FAKE + "/logs", FAKE + "/data/x"], standard_table())
    refused = [r["path"] for r in err.details["refused"]]
    assert refused == ["/", FAKE + "/scratch", FAKE + "/data/x"]
    assert err.msg.startswith("refusing to freeze, nothing was frozen: ")
    assert FAKE + "/logs" not in refused


def test_refuses_an_empty_plan():
    with pytest.raises(StillpointError, match="no mountpoints to freeze"):
        _freeze.check_mountpoints([], mountinfo=standard_table())


def test_freezable_types():
    for fstype in ("ext4", "ext3", "xfs", "btrfs", "f2fs", "gfs2", "nilfs2", "jfs"):
        assert fstype in _freeze.FREEZABLE_FSTYPES
    for fstype in ("tmpfs", "nfs", "nfs4", "vfat", "overlay", "proc", "ocfs2", "fuse", "cifs"):
        assert fstype not in _freeze.FREEZABLE_FSTYPES


# ------------------------------------------------------------------------------------------
# the order of a parallel freeze: waves


def _plan(*paths):
    return [{"mountpoint": p} for p in paths]


def test_waves_of_separate_filesystems_are_one():
    assert _freeze.freeze_waves(_plan("/srv/a", "/srv/b", "/var/log/app", "/data")) == [[0, 1, 2, 3]]
    assert _freeze.freeze_waves(_plan("/srv/a")) == [[0]]


def test_waves_put_a_nested_filesystem_before_its_parent_whatever_the_given_order():
    assert _freeze.freeze_waves(_plan("/srv/a", "/srv/a/b", "/srv/a/b/c")) == [[2], [1], [0]]
    assert _freeze.freeze_waves(_plan("/srv/a/b/c", "/srv/a", "/srv/a/b")) == [[0], [2], [1]]


def test_waves_go_by_height_and_a_name_prefix_is_not_nesting():
    plan = _plan("/srv/a", "/srv/a/x", "/srv/a/y/z", "/srv/b", "/srv/ab", "/srv/b/q")
    # leaves first (a/x, a/y/z, ab, b/q), then what holds them; /srv/ab is beside /srv/a, not in it
    assert _freeze.freeze_waves(plan) == [[1, 2, 4, 5], [0, 3]]


def test_waves_sequential_keeps_the_same_order_one_at_a_time():
    plan = _plan("/srv/a", "/srv/a/x", "/srv/b")
    assert _freeze.freeze_waves(plan) == [[1, 2], [0]]
    assert _freeze.freeze_waves(plan, parallel=False) == [[1], [2], [0]]
    assert _freeze.freeze_waves([]) == []


def test_waves_of_a_checked_plan():
    table = _table("30 1 259:1 / /srv/data rw - ext4 /dev/nvme1n1 rw",
                   "31 30 259:2 / /srv/data/wal rw - xfs /dev/nvme2n1 rw",
                   "32 1 259:3 / /srv/logs rw - ext4 /dev/nvme3n1 rw")
    plan = _freeze.check_mountpoints(["/srv/data", "/srv/data/wal", "/srv/logs"], mountinfo=table, protect_paths=())
    assert _freeze.freeze_waves(plan) == [[1, 2], [0]]


def test_freeze_error_names_the_member_every_failure_and_what_was_thawed():
    err = _freeze._freeze_error({
        "ok": False, "error": "busy", "errno": 16, "errname": "EBUSY", "mountpoint": "/srv/b",
        "failed": [{"mountpoint": "/srv/b", "errno": 16, "errname": "EBUSY"},
                   {"mountpoint": "/srv/d", "errno": 16, "errname": "EBUSY"}],
        "rolled_back": ["/srv/c", "/srv/a"], "rollback_errors": []})
    assert err.msg.startswith("/srv/b is already frozen by someone else")
    assert "the 2 other filesystem(s) this call had frozen (/srv/c, /srv/a) were thawed again" in err.msg
    assert "FIFREEZE also failed on /srv/d (EBUSY)" in err.msg
    assert err.details["failed"][1]["mountpoint"] == "/srv/d"


def test_freeze_error_at_the_deadline_names_what_was_still_freezing():
    err = _freeze._freeze_error({
        "ok": False, "error": "deadline", "mountpoint": "/srv/a", "pending": ["/srv/a"], "rolled_back": ["/srv/b"],
        "rollback_errors": [], "msg": "freezing took longer than the deadline of 1s (reached while /srv/a was still "
                                      "freezing); everything was thawed again"})
    assert "reached while /srv/a was still freezing" in err.msg
    assert "stays until the FIFREEZE still blocked on /srv/a returns, and thaws it then" in err.msg
    assert err.details["pending"] == ["/srv/a"]


# ------------------------------------------------------------------------------------------
# guardian arguments (refused before any fork)


@pytest.mark.parametrize("deadline", [0, -1, 301, "soon"])
def test_guardian_refuses_bad_deadlines(deadline):
    plan = [{"mountpoint": "/nonexistent", "fstype": "ext4", "source": "x", "dev": "7:9", "mount_id": 1}]
    with pytest.raises(StillpointError, match="deadline"):
        _freeze.Guardian.start(plan, deadline=deadline)


def test_guardian_refuses_bad_token_and_empty_plan():
    plan = [{"mountpoint": "/nonexistent", "fstype": "ext4", "source": "x", "dev": "7:9", "mount_id": 1}]
    with pytest.raises(StillpointError, match="token"):
        _freeze.Guardian.start(plan, token="../../etc")
    with pytest.raises(StillpointError, match="nothing to freeze"):
        _freeze.Guardian.start([])


def test_guardian_start_fails_cleanly_when_a_mountpoint_cannot_be_opened(tmp_path):
    plan = [{"mountpoint": str(tmp_path / "gone"), "fstype": "ext4", "source": "x", "dev": "7:9", "mount_id": None}]
    with pytest.raises(StillpointError, match="cannot open .*nothing was frozen"):
        _freeze.Guardian.start(plan)


def test_connect_to_an_unknown_token_says_what_to_do():
    with pytest.raises(StillpointError) as info:
        _freeze.Guardian.connect("no-such-guardian-token")
    assert info.value.details.get("gone") is True
    assert "force=true" in info.value.msg


# ------------------------------------------------------------------------------------------
# the raw thaw script


def test_raw_thaw_script_is_stdlib_only():
    tree = ast.parse(_freeze.RAW_THAW_SCRIPT)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"json", "socket", "sys"}


def test_raw_thaw_script_reports_a_missing_guardian_as_json():
    proc = subprocess.run([sys.executable, "-I", "-c", _freeze.RAW_THAW_SCRIPT, "no-such-guardian-token", "status"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reply["gone"] is True and "force=true" in reply["msg"]


def test_raw_thaw_script_refuses_unknown_operations():
    proc = subprocess.run([sys.executable, "-I", "-c", _freeze.RAW_THAW_SCRIPT, "tok", "freeze"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1 and "unknown operation freeze" in proc.stdout
