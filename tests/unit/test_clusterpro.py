# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_clusterpro: the command table per edition/version, the parsers on the samples in
fixtures/clusterpro (reconstructed from documentation, see its README.md), the clp.conf edits,
and the refusals (DOMAIN.md 3, 4, 5) decided from parsed state."""

import os
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _clusterpro as clp
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "clusterpro")
SET = "bs-20261121T101500Z-3f2a1c"


def sample(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


# -- command lines ---------------------------------------------------------------------------

VALUES = dict(group="failover", resource="md1", server="server2", md="md1", dir="/tmp/x")


@pytest.mark.parametrize("edition", clp.EDITIONS)
@pytest.mark.parametrize("version", ["4", "4.3.2", "5", "5.1"])
def test_every_operation_has_a_line_for_every_edition_and_version(edition, version):
    for name in clp.COMMANDS:
        argv = clp.command(name, edition, version, **VALUES)
        assert argv[0].startswith("clp") and all("{" not in part for part in argv)
        assert name in clp.VERIFIED, "every line says where it was checked"


@pytest.mark.parametrize("edition,version,flag", [("linux", "4.3", ["-l"]), ("windows", "4.2", ["-w"]),
                                                  ("linux", "5.1", []), ("windows", "5.0", [])])
def test_clpcfctrl_format_flag_only_on_4x(edition, version, flag):
    assert clp.command("config_push", edition, version, dir="/d") == ["clpcfctrl", "--push"] + flag + ["-x", "/d"]
    assert clp.command("config_pull", edition, version, dir="/d") == ["clpcfctrl", "--pull"] + flag + ["-x", "/d"]


def test_forced_recovery_line_per_edition():
    assert clp.command("mirror_force_recover", "linux", "4", md="md1", server="s1") == ["clpmdctrl", "-f", "s1", "md1"]
    assert clp.command("mirror_force_recover", "windows", "4", md="md1", server="s1") == ["clpmdctrl", "--force", "md1"]


def test_control_lines():
    assert clp.command("group_start", "linux", "4", **VALUES) == ["clpgrp", "-s", "failover", "-h", "server2"]
    assert clp.command("resource_stop_dependents", "windows", "5", **VALUES) == ["clprsc", "-t", "md1", "-f", "-h", "server2"]
    assert clp.command("server_shutdown", "linux", "5", **VALUES) == ["clpdown", "-h", "server2"]
    assert clp.command("mirror_status", "linux", "4", **VALUES) == ["clpmdstat", "-m", "md1"]


@pytest.mark.parametrize("edition,version", [("aix", "4"), ("linux", "3.3"), ("linux", "6"), ("windows", "")])
def test_unknown_edition_or_version_is_refused(edition, version):
    with pytest.raises(StillpointError) as info:
        clp.command("status", edition, version)
    assert "edition" in info.value.msg or "version" in info.value.msg


def test_missing_placeholder_value():
    with pytest.raises(StillpointError, match="needs a value"):
        clp.command("group_start", "linux", "4", group="g")


class Recorder:
    """A runner in the CommandRunner shape: records argv, answers from a list."""

    def __init__(self, answers=None):
        self.calls = []
        self.answers = list(answers or [])

    def bin(self, name):
        return "/opt/nec/clusterpro/bin/" + name

    def __call__(self, argv, check=True, data=None, what=None):
        self.calls.append(list(argv))
        return self.answers.pop(0) if self.answers else (0, "", "")


def test_run_resolves_the_program_with_the_runner():
    runner = Recorder()
    clp.run(runner, "mirror_recover", "linux", "4", md="md1")
    assert runner.calls == [["/opt/nec/clusterpro/bin/clpmdctrl", "-r", "md1"]]


# -- parsers ---------------------------------------------------------------------------------


def test_clpstat_linux():
    info = clp.parse_clpstat(sample("clpstat_linux_5x.txt"))
    assert info["cluster"] == "dbcluster" and info["local_server"] == "node-a"
    assert {s: r["status"] for s, r in info["servers"].items()} == {"node-a": "Online", "node-b": "Online"}
    assert info["servers"]["node-b"]["heartbeats"] == {"lankhb1": "Normal", "lankhb2": "Normal"}
    group = info["groups"]["failover-db"]
    assert group["current"] == "node-a" and group["status"] == "Online"
    assert list(group["resources"]) == ["fip-db", "md-data", "exec-db"]
    assert set(info["monitors"]) == {"fipw1", "mdnw1", "mdw1", "userw"}


def test_clpstat_windows_long_local_marker_on_second_server():
    info = clp.parse_clpstat(sample("clpstat_windows_long.txt"))
    assert info["local_server"] == "win-02" and not info["servers"]["win-01"]["local"]
    assert info["groups"]["failover"] == dict(status="Online", current="win-01",
                                              resources={"md": "Online", "script-app": "Online"})


def test_clpstat_offline_cluster_has_no_current_server():
    info = clp.parse_clpstat(sample("clpstat_offline.txt"))
    assert all(g["current"] is None and g["status"] == "Offline" for g in info["groups"].values())
    assert info["servers"]["lab02"]["heartbeats"]["pingnp1"] == "Offline"


def test_clpstat_truncated_group_name():
    assert list(clp.parse_clpstat(sample("clpstat_truncated.txt"))["groups"]) == ["appgroup-recover"]


def test_clpstat_garbage_is_an_error():
    with pytest.raises(StillpointError, match="CLUSTER STATUS"):
        clp.parse_clpstat("clpstat: command not found\n")


def test_mdstat_normal_is_clean():
    md = clp.parse_mdstat(sample("clpmdstat_m_normal.txt"), "md-data")
    assert md["status"] == "Normal" and md["servers"] == ["node-a", "node-b"] and md["clean"]
    assert md["details"]["node-b"]["difference_percent"] == "0%"


def test_mdstat_red_gray_keeps_timestamps_with_spaces():
    md = clp.parse_mdstat(sample("clpmdstat_m_red_gray.txt"), "md-data")
    assert md["colors"] == {"node-a": "RED", "node-b": "GRAY"} and not md["clean"]
    assert md["details"]["node-a"]["last_update"] == "2026/11/20 10:41:07"
    assert md["details"]["node-b"]["disk_error"] is None


def test_mdstat_no_construction():
    md = clp.parse_mdstat(sample("clpmdstat_m_no_construction.txt"))
    assert md["status"] == "No Construction" and md["name"] == "md1" and not md["clean"]


def test_mdstat_without_color_row_is_an_error():
    with pytest.raises(StillpointError, match="no mirror status"):
        clp.parse_mdstat(" Mirror Status: Normal\n", "md1")


def test_mdstat_unknown_color_is_an_error():
    text = sample("clpmdstat_m_normal.txt").replace("GREEN                GREEN", "GREEN                PURPLE")
    with pytest.raises(StillpointError, match="unknown mirror colors"):
        clp.parse_mdstat(text, "md-data")


def test_mdstat_list_and_group_current():
    assert clp.parse_mdstat_list(sample("clpmdstat_l.txt")) == ["md-data", "md-logs"]
    assert clp.parse_group_current("server1\n") == "server1"
    assert clp.parse_group_current("None\n") is None


# -- clp.conf --------------------------------------------------------------------------------


def canonical(text):
    return ET.canonicalize(text, strip_text=True)


def test_remove_md_takes_its_group_entry_dependencies_and_monitors():
    text = sample("clp.conf")
    new, definition = clp.remove_md(text, "md-data")
    assert "md-data" not in clp.conf_mirrors(new)
    root = ET.fromstring(new)
    assert [r.get("name") for r in root.findall("group/resource")] == ["fip@fip-db", "exec@exec-db"]
    assert [d.get("name") for d in root.findall("resource/exec/depend")] == ["fip-db"]
    assert [m.tag for m in root.find("monitor")] == ["userw"]
    assert definition["group"] == "failover-db" and definition["group_index"] == 1
    assert definition["dependents"] == [{"type": "exec", "name": "exec-db"}]
    assert len(definition["monitors"]) == 2 and definition["servers"] == ["node-a", "node-b"]


def test_add_md_back_restores_everything_but_fullcopy():
    text = sample("clp.conf")
    removed, definition = clp.remove_md(text, "md-data")
    back = clp.add_md(removed, definition, initial_mirror_construction=False)
    assert clp.conf_mirrors(back)["md-data"]["initial_mirror_construction"] is False
    root = ET.fromstring(back)
    assert [r.get("name") for r in root.findall("group/resource")] == ["fip@fip-db", "md@md-data", "exec@exec-db"]
    md = root.find("resource/md")
    assert md.findtext("parameters/mount/option") == "rw,noatime" and md.findtext("comment") == "data of the database"
    # with fullcopy put back to 1 the document is the original one, element for element (order of
    # the depend children and monitors may move to the end: compare as sets of canonical subtrees)
    again = clp.add_md(removed, definition, initial_mirror_construction=True)
    orig, new = ET.fromstring(text), ET.fromstring(again)
    assert canonical(ET.tostring(orig.find("resource/md"), encoding="unicode")) == \
        canonical(ET.tostring(new.find("resource/md"), encoding="unicode"))
    assert sorted(d.get("name") for d in new.findall("resource/exec/depend")) == ["fip-db", "md-data"]
    assert sorted(canonical(ET.tostring(m, encoding="unicode")) for m in new.find("monitor")) == \
        sorted(canonical(ET.tostring(m, encoding="unicode")) for m in orig.find("monitor"))


def test_add_md_refuses_a_foreign_definition_and_a_duplicate():
    text = sample("clp.conf")
    with pytest.raises(StillpointError, match="not one this collection wrote"):
        clp.add_md(text, {"name": "md-data"}, True)
    _removed, definition = clp.remove_md(text, "md-data")
    with pytest.raises(StillpointError, match="already has"):
        clp.add_md(text, definition, True)


def with_groups(text, *extra):
    """The sample with more groups: ``extra`` is XML of <group> elements, put after the first group."""
    head, sep, tail = text.partition("</group>")
    return head + sep + "".join(extra) + tail


def test_group_start_attribute_read_and_set():
    text = with_groups(sample("clp.conf"), '<group name="batch"><start>0</start></group>',
                       '<group name="web"><start>1</start></group>')
    # no <start> element: automatic startup, the documented default
    assert clp.conf_group_start(text) == {"failover-db": "automatic", "batch": "manual", "web": "automatic"}
    manual = clp.set_group_start(text, "failover-db", "manual")
    assert ET.fromstring(manual).find("group[@name='failover-db']/start").text == "0"
    assert clp.conf_group_start(manual, "failover-db") == "manual"
    back = clp.set_group_start(manual, "failover-db", "automatic")
    assert ET.fromstring(back).find("group[@name='failover-db']/start").text == "1"
    assert clp.conf_group_start(back) == clp.conf_group_start(text)
    assert clp.conf_group_start(clp.set_group_start(text, "batch", "manual"), "batch") == "manual"
    # nothing else in the document moves
    assert canonical(clp.set_group_start(back, "failover-db", "automatic")) == canonical(back)


@pytest.mark.parametrize("group,start,match", [("nope", "manual", "no group 'nope'"),
                                               ("failover-db", "0", "use automatic or manual"),
                                               ("failover-db", "auto", "use automatic or manual")])
def test_group_start_bad_input(group, start, match):
    with pytest.raises(StillpointError, match=match):
        clp.set_group_start(sample("clp.conf"), group, start)


def test_group_start_unknown_value_is_an_error():
    text = with_groups(sample("clp.conf"), '<group name="odd"><start>2</start></group>')
    with pytest.raises(StillpointError, match="start attribute '2'"):
        clp.conf_group_start(text, "odd")
    with pytest.raises(StillpointError, match="no group"):
        clp.conf_group_start(text, "missing")


def test_removal_sets_the_groups_of_the_mirror_to_manual_and_adding_back_restores_them():
    waits = '<group name="report"><start>0</start><depend><act><depend name="failover-db"/></act></depend></group>'
    chain = '<group name="mail"><depend><act><depend name="report"/></act></depend></group>'
    text = with_groups(sample("clp.conf"), waits, chain, '<group name="other"/>')
    assert clp.mirror_start_groups(text, "md-data") == ["failover-db", "report", "mail"]
    removed, definition = clp.remove_md(text, "md-data")
    assert clp.conf_group_start(removed) == {"failover-db": "manual", "report": "manual", "mail": "manual",
                                             "other": "automatic"}
    assert definition["group_start"] == [{"group": "failover-db", "start": None}, {"group": "report", "start": "0"},
                                         {"group": "mail", "start": None}]
    back = clp.add_md(removed, definition, initial_mirror_construction=True)
    assert clp.conf_group_start(back) == clp.conf_group_start(text)
    orig, new = ET.fromstring(text), ET.fromstring(back)
    for name in ("failover-db", "report", "mail", "other"):  # the group elements are the original ones again
        assert canonical(ET.tostring(orig.find("group[@name='%s']" % name), encoding="unicode")) == \
            canonical(ET.tostring(new.find("group[@name='%s']" % name), encoding="unicode"))
    # without manual_start (and for definitions saved before group_start existed) no group is touched
    kept, plain = clp.remove_md(text, "md-data", manual_start=False)
    assert plain["group_start"] == [] and clp.conf_group_start(kept) == clp.conf_group_start(text)
    plain.pop("group_start")
    assert clp.conf_group_start(clp.add_md(removed, plain, True))["failover-db"] == "manual"


def test_removal_refuses_an_unknown_start_value_before_saving_anything():
    text = sample("clp.conf").replace('<group name="failover-db">', '<group name="failover-db"><start>x</start>')
    with pytest.raises(StillpointError, match="start attribute 'x'"):
        clp.remove_md(text, "md-data")
    removed, definition = clp.remove_md(sample("clp.conf"), "md-data")
    definition["group_start"] = [{"group": "failover-db", "start": "manual"}]
    with pytest.raises(StillpointError, match="expected 0 or 1"):
        clp.add_md(removed, definition, True)
    definition["group_start"] = [{"group": "gone", "start": "1"}]  # a group that is gone is skipped
    assert "md-data" in clp.conf_mirrors(clp.add_md(removed, definition, True))


def test_conf_that_is_not_clusterpro():
    with pytest.raises(StillpointError, match="not <root>"):
        clp.conf_mirrors("<config/>")
    with pytest.raises(StillpointError, match="well-formed"):
        clp.conf_mirrors("<root>")


# -- refusal 3 -------------------------------------------------------------------------------


def proof(snap_a="snap-0123456789abcdef0", snap_b="snap-0123456789abcdef0", set_a=SET, set_b=SET, servers=("a", "b")):
    return dict(set_id=SET, volumes=[
        dict(server=servers[0], volume_id="vol-0a1b2c3d4e5f60718", snapshot_id=snap_a, set_id=set_a),
        dict(server=servers[1], volume_id="vol-0f1e2d3c4b5a69788", snapshot_id=snap_b, set_id=set_b)])


def test_same_backup_set_accepted():
    assert clp.validate_same_backup_set(proof(), ["a", "b"]) == "snap-0123456789abcdef0"


@pytest.mark.parametrize("bad,match", [
    (None, "only when both mirror volumes"),
    (dict(proof(), set_id="weekly"), "not a backup set id"),
    (proof(snap_b="snap-0fedcba987654321f"), "different snapshots"),
    (proof(set_b="bs-20261120T101500Z-aaaaaa"), "same set"),
    (proof(servers=("a", "c")), "exactly one volume per mirror server"),
    (proof(servers=("a", "a")), "two volumes"),
    (proof(snap_a="ami-1234"), "not an EBS snapshot id"),
])
def test_same_backup_set_refusals(bad, match):
    with pytest.raises(StillpointError, match=match):
        clp.validate_same_backup_set(bad, ["a", "b"])


def test_same_volume_for_both_servers_refused():
    bad = proof()
    bad["volumes"][1]["volume_id"] = bad["volumes"][0]["volume_id"]
    with pytest.raises(StillpointError, match="one volume"):
        clp.validate_same_backup_set(bad, ["a", "b"])


# -- refusals 4 and 5, idempotence ----------------------------------------------------------


def state(colors=("GREEN", "GREEN"), current="node-a", local="node-a", online=("Online", "Online")):
    info = clp.parse_clpstat(sample("clpstat_linux_5x.txt").replace("*node-a", " node-a"))
    info["local_server"] = local
    for server, status in zip(("node-a", "node-b"), online):
        info["servers"][server]["status"] = status
    info["groups"]["failover-db"]["current"] = current
    if current is None:
        info["groups"]["failover-db"]["status"] = "Offline"
    text = sample("clpmdstat_m_normal.txt").replace("GREEN                GREEN", "%-21s%s" % colors)
    info["mirrors"] = {"md-data": clp.parse_mdstat(text, "md-data")}
    return info


def test_group_start_is_idempotent_and_planned():
    assert clp.plan_control(state(), "group", "started", "failover-db", "node-a") is None
    assert clp.plan_control(state(current=None), "group", "started", "failover-db", "node-b") == \
        ("group_start", dict(group="failover-db", server="node-b"))


def test_group_start_on_a_red_copy_is_refused():
    with pytest.raises(StillpointError, match="not GREEN"):
        clp.plan_control(state(colors=("GREEN", "RED"), current=None), "group", "started", "failover-db", "node-b")


def test_group_start_on_an_offline_server_is_refused():
    with pytest.raises(StillpointError, match="not Online"):
        clp.plan_control(state(current=None, online=("Online", "Offline")), "group", "started", "failover-db", "node-b")


def test_shutdown_needs_clean_mirrors():
    with pytest.raises(StillpointError, match="not clean"):
        clp.plan_control(state(colors=("GREEN", "YELLOW")), "server", "shutdown", server="node-b")
    assert clp.plan_control(state(colors=("GREEN", "YELLOW")), "server", "shutdown", server="node-b",
                            require_clean_mirrors=False) == ("server_shutdown", dict(server="node-b"))


def test_forced_recovery_from_the_stale_copy_is_refused():
    with pytest.raises(StillpointError, match="only a GREEN copy"):
        clp.plan_control(state(colors=("GREEN", "RED")), "mirror", "recovered", "md-data", "node-b", force=True)
    assert clp.plan_control(state(colors=("GREEN", "RED")), "mirror", "recovered", "md-data", "node-a", force=True) == \
        ("mirror_force_recover", dict(md="md-data", server="node-a"))
    assert clp.plan_control(state(colors=("GREEN", "RED")), "mirror", "recovered", "md-data") == \
        ("mirror_recover", dict(md="md-data"))


def test_forced_recovery_on_windows_runs_on_the_source():
    with pytest.raises(StillpointError, match="run the task on node-a"):
        clp.plan_control(state(colors=("GREEN", "RED"), local="node-b"), "mirror", "recovered", "md-data", "node-a",
                         force=True, edition="windows")


def test_resource_stop_with_dependents_uses_f():
    assert clp.plan_control(state(), "resource", "stopped", "md-data", "node-a", stop_dependents=True) == \
        ("resource_stop_dependents", dict(resource="md-data", server="node-a"))
    assert clp.plan_control(state(current=None), "resource", "stopped", "md-data", "node-a") is None


def test_bad_kind_state_combination():
    with pytest.raises(StillpointError, match="does not apply"):
        clp.plan_control(state(), "server", "started", server="node-a")
