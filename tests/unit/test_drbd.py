# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_drbd: the parsers on the lab's captured DRBD 8.4 output, and the Resource refusals.

fixtures/drbd/lab84/ holds real output (DRBD 8.4.11 kernel, drbd-utils 9.22, two VMs ``vma``/``vmb``):
``<name>.out``/``.err``/``.rc`` per command; a missing file was empty. fixtures/drbd/v9/ holds DRBD 9
``drbdsetup status --json`` samples written from the schema in drbd-utils (see its README): no DRBD 9
runs here. The expected values below are read from the captures, not from what the parser returns.

Resource tests replay the captures through a scripted ``run_command`` (every command must be the
next expected one) and an injected ``/proc/drbd`` reader that shows the capture paired with each
status reading.
"""

import json
import os
import re
import socket

import pytest

from ansible.module_utils import basic

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _drbd
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError
from ansible_collections.stillpoint.snapshots.plugins.modules import drbd_info, drbd_resource, drbd_skip_initial_sync

from tests.unit.utils import run_module

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "drbd")
LAB = os.path.join(FIX, "lab84")
V9 = os.path.join(FIX, "v9")
RES = "r0"


def _read(path):
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


def out(name):
    return _read(os.path.join(LAB, name + ".out"))


def cap(name):
    """A captured command as ``(rc, stdout, stderr)``."""
    return int(_read(os.path.join(LAB, name + ".rc")).strip()), out(name), _read(os.path.join(LAB, name + ".err"))


def v9(name):
    return _read(os.path.join(V9, name))


def numbers_in(text):
    return set(int(n) for n in re.findall(r"(?<![\w.])\d+(?![\w.])", text))


# The lab's resource definition, as `drbdadm dump r0` printed it (captured after blkid's answer in
# 84-blkid-b.out). The backing disk the tests expect `drbdadm sh-ll-dev` to print is taken from it.
DUMP = out("84-blkid-b")[out("84-blkid-b").index("# resource"):]
DISK = re.search(r"on vmb \{[^}]*?disk\s+(\S+);", DUMP).group(1)
OTHER_DISK = "/dev/nvme7n1"
# The same definition with dual-primary configured (constructed from the capture: one line added).
DUMP_TWO_PRIMARIES = DUMP.replace("protocol           C;", "protocol           C;\n        allow-two-primaries yes;")


# -- /proc/drbd ----------------------------------------------------------------------------------

def test_proc_drbd_sync_progress_eta_speed():
    text = out("84-proc-syncsource")
    # 0: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent ... sync'ed: 10.6% (942012/1048508)K
    # finish: 0:00:44 speed: 21,296 (21,296) K/sec
    parsed = _drbd.parse_proc_drbd(text)
    assert parsed["version"] == "8.4.11"
    m = parsed["minors"][0]
    assert (m["connection"], m["role"], m["peer_role"], m["disk"], m["peer_disk"]) == (
        "SyncSource", "Primary", "Secondary", "UpToDate", "Inconsistent")
    assert m["sync_percent"] == 10.6
    assert (m["sync_left_kib"], m["sync_total_kib"]) == (942012, 1048508)
    assert m["sync_eta_s"] == 44 and m["sync_speed_kib_s"] == 21296
    assert m["oos"] == 942012 and m["ns"] == 106496 and m["dr"] == 106496

    target = _drbd.parse_proc_drbd(out("84-proc-synctarget"))["minors"][0]
    # sync'ed: 14.5% (901052/1048508)K  finish: 0:00:42 speed: 21,064 (21,064) want: 20,480 K/sec
    assert (target["connection"], target["disk"], target["peer_disk"]) == ("SyncTarget", "Inconsistent", "UpToDate")
    assert (target["sync_percent"], target["sync_left_kib"], target["sync_total_kib"]) == (14.5, 901052, 1048508)
    assert (target["sync_eta_s"], target["sync_speed_kib_s"]) == (42, 21064)
    assert target["nr"] == 147456 and target["pe"] == 4


def test_proc_drbd_unconfigured():
    parsed = _drbd.parse_proc_drbd(out("84-proc-diskless-b"))
    assert parsed["version"] == "8.4.11"
    assert parsed["minors"] == {0: {"minor": 0, "connection": "Unconfigured"}}


PROC_STATES = [  # name, cs, ro, ds, oos (the line " 0: cs:.. ro:../.. ds:../.." and "oos:" of each capture)
    ("84-proc-uptodate", "Connected", ("Primary", "Secondary"), ("UpToDate", "UpToDate"), 0),
    ("84-proc-uptodate-b", "Connected", ("Secondary", "Primary"), ("UpToDate", "UpToDate"), 0),
    ("84-proc-connected-inconsistent", "Connected", ("Secondary", "Secondary"), ("Inconsistent", "Inconsistent"),
     1048508),
    ("84-proc-wfconnection", "WFConnection", ("Secondary", "Unknown"), ("Inconsistent", "DUnknown"), 1048508),
    ("84-proc-wfconnection-primary", "WFConnection", ("Primary", "Unknown"), ("UpToDate", "DUnknown"), 8200),
    ("84-proc-standalone-b", "StandAlone", ("Secondary", "Unknown"), ("UpToDate", "DUnknown"), 0),
    ("84-proc-outdated-b", "StandAlone", ("Secondary", "Unknown"), ("Outdated", "DUnknown"), 0),
    ("84-proc-a-after-primary-disconnect", "StandAlone", ("Primary", "Unknown"), ("UpToDate", "DUnknown"), 0),
    ("84-proc-b-after-primary-disconnect", "WFConnection", ("Secondary", "Unknown"), ("UpToDate", "DUnknown"), 0),
    ("84-proc-a-reconnected", "Connected", ("Primary", "Secondary"), ("UpToDate", "UpToDate"), 0),
    ("84-proc-b-reconnected", "Connected", ("Secondary", "Primary"), ("UpToDate", "UpToDate"), 0),
    ("84-proc-after-clear-bitmap", "Connected", ("Secondary", "Secondary"), ("UpToDate", "UpToDate"), 0),
    ("84-proc-after-clear-bitmap-b", "Connected", ("Secondary", "Secondary"), ("UpToDate", "UpToDate"), 0),
    ("84-proc-after-partial", "Connected", ("Secondary", "Primary"), ("UpToDate", "UpToDate"), 0),
    ("84-proc-resync-partial", "Connected", ("Secondary", "Primary"), ("UpToDate", "UpToDate"), 0),
    ("84-proc-after-replace-connect", "WFConnection", ("Primary", "Unknown"), ("UpToDate", "DUnknown"), 32),
    ("84-wait-connect", "Connected", ("Secondary", "Secondary"), ("Inconsistent", "Inconsistent"), 1048508),
]


@pytest.mark.parametrize("name, cs, ro, ds, oos", PROC_STATES, ids=[p[0] for p in PROC_STATES])
def test_proc_drbd_states(name, cs, ro, ds, oos):
    text = out(name)
    assert "cs:%s ro:%s/%s ds:%s/%s" % ((cs,) + ro + ds) in text  # the table above is the capture
    m = _drbd.parse_proc_drbd(text)["minors"][0]
    assert (m["connection"], m["role"], m["peer_role"], m["disk"], m["peer_disk"]) == (cs,) + ro + ds
    assert m["oos"] == oos and "sync_percent" not in m and "sync_eta_s" not in m


def test_proc_drbd_every_capture_parses():
    names = sorted(f[:-4] for f in os.listdir(LAB) if f.startswith("84-proc-") and f.endswith(".out"))
    covered = set(p[0] for p in PROC_STATES) | {"84-proc-syncsource", "84-proc-synctarget", "84-proc-diskless-b"}
    assert set(names) <= covered, "new /proc/drbd captures without a test: %s" % (set(names) - covered)
    for name in names:
        parsed = _drbd.parse_proc_drbd(out(name))
        assert parsed["version"] == "8.4.11" and list(parsed["minors"]) == [0]
        counters = {k: v for k, v in parsed["minors"][0].items() if k in ("ns", "nr", "dw", "dr", "al", "oos")}
        for key, value in counters.items():
            assert "%s:%d" % (key, value) in out(name)


# -- drbdsetup status (text) ---------------------------------------------------------------------

def summary_of_text(name):
    found = _drbd.parse_status_text(out(name))
    assert [r["name"] for r in found] == [RES]
    return _drbd.resource_summary(found[0]), found[0]


def test_status_text_syncsource_verbose():
    s, res = summary_of_text("84-status-syncsource-verbose")
    assert (s["role"], s["disk"], s["minor"], s["size_kib"]) == ("Primary", "UpToDate", 0, 1048508)
    assert (s["peer"], s["connection"], s["peer_role"], s["peer_disk"]) == ("peer", "Connected", "Secondary",
                                                                            "Inconsistent")
    assert (s["replication"], s["sync_percent"], s["syncing"], s["in_sync"]) == ("SyncSource", 21.10, True, False)
    assert (s["sent_kib"], s["received_kib"], s["out_of_sync_kib"]) == (221184, 0, 827324)
    assert res["devices"][0]["read_kib"] == 221184 and res["devices"][0]["written_kib"] == 0
    assert res["suspended"] is False


def test_status_text_synctarget_verbose():
    s, res = summary_of_text("84-status-synctarget-verbose")
    assert (s["role"], s["disk"], s["peer_role"], s["peer_disk"]) == ("Secondary", "Inconsistent", "Primary",
                                                                      "UpToDate")
    assert (s["replication"], s["sync_percent"], s["syncing"]) == ("SyncTarget", 25.39, True)
    assert (s["received_kib"], s["sent_kib"], s["out_of_sync_kib"]) == (266240, 0, 782268)
    assert res["devices"][0]["written_kib"] == 266240


def test_status_text_uptodate_verbose_and_short():
    s, _res = summary_of_text("84-status-uptodate-verbose")
    assert (s["role"], s["disk"], s["connection"], s["peer_role"], s["peer_disk"], s["replication"]) == (
        "Primary", "UpToDate", "Connected", "Secondary", "UpToDate", "Established")
    assert s["in_sync"] is True and s["syncing"] is False and s["sync_percent"] is None
    assert (s["sent_kib"], s["out_of_sync_kib"], s["size_kib"]) == (1048508, 0, 1048508)
    for short in ("84-status-uptodate", "84-status-all-uptodate"):  # `drbdadm status`: no minor, no counters
        t, _res = summary_of_text(short)
        assert (t["role"], t["disk"], t["connection"], t["peer_role"], t["peer_disk"], t["replication"]) == (
            "Primary", "UpToDate", "Connected", "Secondary", "UpToDate", "Established")
        assert t["in_sync"] is True and t["minor"] is None and t["size_kib"] is None


def test_status_text_syncsource_short():
    s, _res = summary_of_text("84-status-syncsource")
    expected = ("SyncSource", "Inconsistent", 17.38, False)
    assert (s["replication"], s["peer_disk"], s["sync_percent"], s["in_sync"]) == expected


def test_status_text_connecting_and_connected_inconsistent():
    s, res = summary_of_text("84-status-all")
    assert (s["disk"], s["connection"], s["peer_role"], s["peer_disk"], s["replication"]) == (
        "Inconsistent", "Connecting", "Unknown", "DUnknown", "Off")
    assert s["out_of_sync_kib"] == 1048508 and s["in_sync"] is False and s["syncing"] is False
    s, _res = summary_of_text("84-status-wfconnection-primary")
    assert (s["role"], s["disk"], s["connection"], s["replication"]) == ("Primary", "UpToDate", "Connecting", "Off")
    assert (s["sent_kib"], s["out_of_sync_kib"]) == (1071462, 8200)
    s, _res = summary_of_text("84-status-wfconnection")  # short form: "peer connection:Connecting", no peer device
    assert (s["disk"], s["connection"], s["peer_disk"], s["replication"]) == ("Inconsistent", "Connecting",
                                                                              "DUnknown", "Off")
    s, _res = summary_of_text("84-status-connected-inconsistent")
    assert (s["disk"], s["connection"], s["peer_role"], s["peer_disk"], s["replication"]) == (
        "Inconsistent", "Connected", "Secondary", "Inconsistent", "Established")
    assert s["in_sync"] is False and s["syncing"] is False and s["out_of_sync_kib"] == 1048508


@pytest.mark.parametrize("name, disk, size", [
    ("84-status-standalone-b", "UpToDate", 1048508), ("84-status-diskless-b", "Diskless", 1048508),
    ("84-status-after-replace-connect", "Diskless", 0), ("84-status-outdated-b", "Outdated", None)])
def test_status_text_no_connection_is_standalone(name, disk, size):
    s, res = summary_of_text(name)
    assert res["connections"] == []  # 8.4 prints no peer line for a StandAlone resource
    assert (s["role"], s["disk"], s["size_kib"]) == ("Secondary", disk, size)
    assert (s["connection"], s["peer_role"], s["peer_disk"], s["replication"], s["in_sync"]) == (
        "StandAlone", "Unknown", "DUnknown", "Off", False)


def test_status_text_values_come_from_the_capture():
    """Every number the parser reports for a verbose capture is printed in that capture."""
    for name in sorted(f[:-4] for f in os.listdir(LAB) if f.startswith("84-status-") and f.endswith(".out")
                       and "json" not in f):
        found = _drbd.parse_status_text(out(name))
        shown = numbers_in(out(name))
        reported = []
        for res in found:
            for dev in res["devices"]:
                reported += [v for k, v in dev.items() if k.endswith("_kib")]
            for conn in res["connections"]:
                for pd in conn["peer_devices"]:
                    reported += [v for k, v in pd.items() if k.endswith("_kib")]
        assert set(reported) <= shown, name


def test_status_text_refuses_garbage():
    with pytest.raises(StillpointError, match="before any resource line"):
        _drbd.parse_status_text("  disk:UpToDate\n")


# -- events2 ---------------------------------------------------------------------------------------

def test_events2_equals_status_text_of_the_same_moment():
    """events2 and status text of the same state report the same summary (same counters in the captures)."""
    for events, status in (("84-events2-uptodate", "84-status-uptodate-verbose"),
                           ("84-events2-wfconnection-primary", "84-status-wfconnection-primary")):
        from_events = _drbd.resource_summary(_drbd.parse_events2(out(events))[0])
        from_text, _res = summary_of_text(status)
        assert from_events == from_text, events


def test_events2_synctarget_and_fresh():
    res = _drbd.parse_events2(out("84-events2-synctarget"))
    assert [r["name"] for r in res] == [RES]
    s = _drbd.resource_summary(res[0])
    # exists connection ... connection:Connected role:Primary; peer-device ... replication:SyncTarget
    # peer-disk:UpToDate received:303104 out-of-sync:745404
    assert (s["role"], s["disk"], s["peer"], s["connection"], s["peer_role"], s["peer_disk"]) == (
        "Secondary", "Inconsistent", "peer", "Connected", "Primary", "UpToDate")
    assert (s["replication"], s["syncing"], s["received_kib"], s["out_of_sync_kib"]) == ("SyncTarget", True, 303104,
                                                                                         745404)
    assert res[0]["devices"][0]["written_kib"] == 303104 and s["size_kib"] == 1048508
    s = _drbd.resource_summary(_drbd.parse_events2(out("84-events2-now"))[0])
    assert (s["disk"], s["peer_disk"], s["connection"], s["replication"]) == ("Inconsistent", "Inconsistent",
                                                                              "Connected", "Established")
    assert s["out_of_sync_kib"] == 1048508


# -- get-gi ----------------------------------------------------------------------------------------

FLAG_LEGEND = {  # the legend drbdadm prints under the GI line (84-getgi-fresh) -> parser's flag names
    "Data consistency flag": "consistent", "Data was/is currently up-to-date": "was_up_to_date",
    "Node was/is currently primary": "primary", "Node was/is currently connected": "connected",
    "Node was in the progress of setting all bits in the bitmap": "full_sync",
    "The peer's disk was out-dated or inconsistent": "peer_out_of_date",
    "This node was a crashed primary, and has not seen its peer since": "crashed_primary",
}


def test_gi_fresh_with_legend():
    text = out("84-getgi-fresh")
    gi = _drbd.parse_gi(text)
    assert gi["current"] == _drbd.JUST_CREATED and gi["just_created"] is True
    assert gi["bitmap"] == "0" * 16 and gi["history"] == ["0" * 16, "0" * 16]
    legend = re.findall(r"-<\s+(.+?)\s+>--", text)
    assert [FLAG_LEGEND[x] for x in legend] == list(gi["flags"])  # same order as drbdadm's legend
    # "flags: Secondary, Connected, Inconsistent, peer Outdated"
    assert gi["flags"]["primary"] == 0 and gi["flags"]["connected"] == 1
    assert gi["flags"]["consistent"] == 0 and gi["flags"]["peer_out_of_date"] == 1
    assert _drbd.parse_gi(out("84-getgi-both-fresh")) == gi


def test_gi_generations():
    a, b = _drbd.parse_gi(out("84-getgi-uptodate")), _drbd.parse_gi(out("84-getgi-uptodate-b"))
    assert (a["current"], b["current"]) == ("037F930360DD618D", "037F930360DD618C")
    assert a["flags"]["primary"] == 1 and b["flags"]["primary"] == 0
    assert _drbd.same_generation(a["current"], b["current"])  # differ in the primary bit only: no resync
    assert not a["just_created"] and a["history"][-1] == _drbd.JUST_CREATED  # its first generation was fresh md
    sa, sb = _drbd.parse_gi(out("84-getgi-split-a")), _drbd.parse_gi(out("84-getgi-split-b"))
    assert not _drbd.same_generation(sa["current"], sb["current"])
    assert _drbd.same_generation(sa["bitmap"], sb["current"])  # A's bitmap UUID is B's current: partial resync
    assert sa["flags"]["connected"] == 0 and sb["flags"]["connected"] == 0
    syncing = _drbd.parse_gi(out("84-getgi-syncing"))
    assert syncing["bitmap"] == "2367856A7FB5420C" and syncing["flags"]["peer_out_of_date"] == 1
    after = _drbd.parse_gi(out("84-getgi-after-clear-bitmap"))
    assert after == _drbd.parse_gi(out("84-getgi-after-clear-bitmap-b"))  # both sides: one new generation
    assert not after["just_created"] and after["flags"]["consistent"] == 1 and after["bitmap"] == "0" * 16
    assert _drbd.parse_gi(out("84-getgi-b-after-primary-disconnect"))["flags"]["connected"] == 0


def test_gi_refuses_garbage():
    with pytest.raises(StillpointError, match="get-gi"):
        _drbd.parse_gi(out("84-getgi-replaced") or "No valid meta data found\n")


# -- DRBD 9 JSON (constructed samples, see fixtures/drbd/v9/README.md) -------------------------------

def summary_of_json(name):
    found = _drbd.parse_status_json(v9(name))
    assert [r["name"] for r in found] == [RES]
    return _drbd.resource_summary(found[0]), found[0]


def test_json_connected_uptodate():
    raw = json.loads(v9("status-connected-uptodate.json"))[0]
    s, res = summary_of_json("status-connected-uptodate.json")
    assert (s["role"], s["disk"], s["minor"], s["size_kib"]) == (raw["role"], raw["devices"][0]["disk-state"], 0,
                                                                 raw["devices"][0]["size"])
    conn = raw["connections"][0]
    assert (s["peer"], s["connection"], s["peer_role"]) == (conn["name"], "Connected", "Primary")
    assert (s["peer_disk"], s["replication"], s["in_sync"], s["syncing"]) == ("UpToDate", "Established", True, False)
    assert s["sync_percent"] is None  # percent-in-sync (100.0) is not a resync's progress
    assert res["suspended"] is False and res["devices"][0]["written_kib"] == raw["devices"][0]["written"]


def test_json_syncsource_mid_sync():
    pd = json.loads(v9("status-syncsource.json"))[0]["connections"][0]["peer_devices"][0]
    s, _res = summary_of_json("status-syncsource.json")
    expected = ("SyncSource", "Inconsistent", True, False)
    assert (s["replication"], s["peer_disk"], s["syncing"], s["in_sync"]) == expected
    assert (s["out_of_sync_kib"], s["sent_kib"]) == (pd["out-of-sync"], pd["sent"])
    assert s["sync_percent"] == pd["percent-resync-done"]


def test_json_partial_resync_reports_resync_progress():
    """A partial resync: percent-in-sync (device agreement, 99.61) is not how far the resync is (50.00).
    sync_percent means the resync's progress everywhere else (8.4 text ``done:``, /proc ``sync'ed:``)."""
    pd = json.loads(v9("status-syncsource-partial.json"))[0]["connections"][0]["peer_devices"][0]
    s, _res = summary_of_json("status-syncsource-partial.json")
    assert pd["percent-in-sync"] > 99 and pd["percent-resync-done"] == 50.0
    assert s["sync_percent"] == pd["percent-resync-done"]


def test_json_standalone():
    s, res = summary_of_json("status-standalone.json")
    assert len(res["connections"]) == 1  # DRBD 9 keeps the connection object, StandAlone
    assert (s["role"], s["disk"], s["connection"], s["peer_role"], s["peer_disk"], s["replication"]) == (
        "Primary", "UpToDate", "StandAlone", "Unknown", "DUnknown", "Off")
    assert s["in_sync"] is False and s["out_of_sync_kib"] == 8200


def test_json_three_nodes_summary_sees_every_peer():
    """The first peer's figures lead the summary, but ``in_sync``, ``syncing`` and the refusals look at every
    peer: with three nodes, the third node's initial sync makes the resource not in sync."""
    raw = json.loads(v9("status-three-nodes.json"))[0]
    s, res = summary_of_json("status-three-nodes.json")
    assert [c["peer"] for c in res["connections"]] == [c["name"] for c in raw["connections"]] == ["bravo", "charlie"]
    assert res["connections"][1]["peer_devices"][0]["replication"] == "SyncSource"
    assert (s["peer"], s["peer_disk"]) == ("bravo", "UpToDate")
    assert [p["peer"] for p in s["peers"]] == ["bravo", "charlie"]
    assert s["syncing"] is True and s["replication"] == "SyncSource"
    assert s["in_sync"] is False  # charlie is still syncing


def test_json_refuses_garbage():
    with pytest.raises(StillpointError, match="not JSON"):
        _drbd.parse_status_json(out("84-status-json-a"))


# -- the replaying runner ----------------------------------------------------------------------------

class Lab:
    """``run_command`` answering an ordered list of ``(argv, (rc, out, err))`` from the captures, and the
    ``/proc/drbd`` reader: a status step carries the /proc capture of its moment, shown from then on."""

    def __init__(self, steps, proc="84-proc-uptodate"):
        self.steps = [one for step in steps for one in (step if isinstance(step, list) else [step])]
        self.calls = []
        self.log = []  # commands and freezer events, in order
        self.proc_text = out(proc) if proc else None

    def __call__(self, argv, **kwargs):
        assert kwargs.get("environ_update", {}).get("LC_ALL") == "C"
        assert self.steps, "unexpected command %r" % (argv,)
        step = self.steps.pop(0)
        expected, answer = step[0], step[1]
        assert list(argv) == expected, "expected %r, got %r" % (expected, argv)
        if len(step) > 2:
            self.proc_text = step[2]
        self.calls.append(list(argv))
        self.log.append(" ".join(argv))
        return answer

    def proc(self):
        return self.proc_text

    def done(self):
        assert not self.steps, "commands not run: %r" % ([s[0] for s in self.steps],)


def status(name, proc=None):
    """One status reading on 8.4: ``drbdsetup status --verbose --statistics r0`` answering capture ``name``."""
    step = (["drbdsetup", "status", "--verbose", "--statistics", RES], cap(name))
    return step + ((out(proc),) if proc else ())


def status9(name):
    return (["drbdsetup", "status", "--json", RES], (0, v9(name), ""))


def adm(*args, answer=(0, "", "")):
    return (["drbdadm"] + list(args) + [RES], answer)


SH_LL_DEV = adm("sh-ll-dev", answer=(0, DISK + "\n", ""))


def blkid(name, device=DISK, wipefs=None):
    """blkid -p's captured answer; where it names DRBD metadata (or is ambivalent) the library also lists every
    signature with wipefs: ``wipefs`` is that listing (its format as seen in test_lab_drbd.py, one type a line;
    default: DRBD metadata alone)."""
    step = (["blkid", "-p", "-o", "export", device], cap(name))
    if "TYPE=drbd" not in step[1][1] and step[1][0] != 8:
        return step
    return [step, (["wipefs", "--no-act", "--noheadings", "--output", "TYPE", device],
                   (0, wipefs if wipefs is not None else "drbd\n", ""))]


def dump(text=DUMP):
    return adm("dump", answer=(0, text, ""))


def resource(steps, proc="84-proc-uptodate", check_mode=False, clock=None, sleep=None):
    lab = Lab(steps, proc=proc)
    kwargs = {}
    if clock:
        kwargs.update(clock=clock, sleep=sleep)
    res = _drbd.Resource(_drbd.Drbd(CommandRunner(lab), proc=lab.proc), RES, check_mode=check_mode, **kwargs)
    return res, lab


def resource9(steps, check_mode=False):
    lab = Lab(steps, proc=None)
    lab.proc_text = v9("proc-drbd9.txt")
    return _drbd.Resource(_drbd.Drbd(CommandRunner(lab), proc=lab.proc), RES, check_mode=check_mode), lab


# -- reading through Drbd ------------------------------------------------------------------------------

def test_drbd_84_status_merges_proc_eta_and_speed():
    res, lab = resource([status("84-status-syncsource-verbose", proc="84-proc-syncsource")])
    st = res.drbd.status(RES)
    lab.done()
    assert st["configured"] is True and st["syncing"] is True
    assert st["sync_percent"] == 21.10  # drbdsetup's own figure wins over /proc's (captured at another moment)
    assert (st["sync_eta_s"], st["sync_speed_kib_s"]) == (44, 21296)  # only /proc shows these on 8.4


def test_drbd_84_unconfigured_is_not_configured():
    res, lab = resource([status("84-status-unconfigured", proc="84-proc-diskless-b")])
    st = res.drbd.status(RES)
    lab.done()
    assert st["configured"] is False and st["connection"] is None and st["in_sync"] is False


def test_drbd_other_failures_raise():
    res, lab = resource([(["drbdsetup", "status", "--verbose", "--statistics", RES], (20, "", "boom"))])
    with pytest.raises(StillpointError, match="rc=20"):
        res.drbd.status(RES)


def test_drbd_9_kernel_with_84_tools_raises():
    """A DRBD 9 /proc/drbd but a drbdsetup that knows no --json (84-status-json-a): said, not guessed."""
    lab = Lab([(["drbdsetup", "status", "--json", RES], cap("84-status-json-a"))], proc=None)
    lab.proc_text = v9("proc-drbd9.txt")
    drbd = _drbd.Drbd(CommandRunner(lab), proc=lab.proc)
    assert drbd.kernel_version() == "9.2.12" and drbd.is_9()
    with pytest.raises(StillpointError, match="unrecognized option '--json'") as info:
        drbd.status(RES)
    assert info.value.rc == 20


def test_drbd_not_loaded():
    drbd = _drbd.Drbd(CommandRunner(Lab([])), proc=lambda: None)
    with pytest.raises(StillpointError, match="modprobe drbd"):
        drbd.kernel_version()


def test_signature_and_backing_disk_from_captures():
    lab = Lab([SH_LL_DEV, blkid("84-blkid-xfs"), blkid("84-blkid-b"), blkid("84-blkid-empty")])
    drbd = _drbd.Drbd(CommandRunner(lab), proc=lab.proc)
    assert drbd.backing_disk(RES) == DISK == "/dev/nvme0n1"
    assert drbd.signature(DISK)["TYPE"] == "xfs" and drbd.signature(DISK)["TYPE"] == "drbd"
    assert drbd.signature(DISK) == {}
    lab.done()


# -- promote --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, disk", [("84-status-connected-inconsistent", "Inconsistent"),
                                        ("84-status-outdated-b", "Outdated"), ("84-status-diskless-b", "Diskless")])
def test_promote_not_uptodate_refused_without_force(name, disk):
    res, lab = resource([status(name)])
    with pytest.raises(StillpointError, match="local disk is %s, not UpToDate" % disk):
        res.promote()
    lab.done()
    assert res.actions == [] and not any("primary" in c for c in lab.log)


def test_promote_force_diskless_refused():
    res, lab = resource([status("84-status-diskless-b")])
    with pytest.raises(StillpointError, match="no local disk"):
        res.promote(force=True)
    lab.done()


def test_promote_force_refused_when_peer_uptodate():
    """SyncTarget (Inconsistent) while the peer holds UpToDate data; dual-primary configured so that the
    peer-Primary check passes and the force check is the one that answers."""
    res, lab = resource([status("84-status-synctarget-verbose"), dump(DUMP_TWO_PRIMARIES)])
    with pytest.raises(StillpointError, match="peer peer \\(UpToDate\\) holds a good copy"):
        res.promote(force=True)
    lab.done()
    assert res.actions == []


@pytest.mark.parametrize("found", ["84-blkid-empty", "84-blkid-b"])
def test_promote_force_refused_when_disk_looks_empty(found):
    """blkid finds nothing (rc 2), or only DRBD's own metadata: no data to make the sync source."""
    res, lab = resource([status("84-status-connected-inconsistent"), SH_LL_DEV, blkid(found)])
    with pytest.raises(StillpointError, match="looks empty"):
        res.promote(force=True)
    lab.done()
    assert res.actions == []


def test_promote_force_with_data_runs_primary_force():
    res, lab = resource([status("84-status-outdated-b"), SH_LL_DEV, blkid("84-blkid-xfs"),
                         (["drbdadm", "primary", "--force", RES], cap("84-primary-force"))])
    assert res.promote(force=True) is True
    lab.done()
    assert res.actions[-1]["cmd"] == ["drbdadm", "primary", "--force", RES] and res.actions[-1]["rc"] == 0
    assert "xfs" in res.actions[-1]["what"] and res.warnings and "overwritten" in res.warnings[0]


def test_promote_refused_while_peer_primary():
    """The lab's dump has no allow-two-primaries; DRBD itself answers 84-primary-peer-primary."""
    assert "Multiple primaries not allowed" in cap("84-primary-peer-primary")[2]
    res, lab = resource([status("84-status-synctarget-verbose"), dump()])
    with pytest.raises(StillpointError, match="peer is Primary and dual-primary is not configured"):
        res.promote()
    lab.done()


def test_promote_allowed_with_two_primaries():
    res, lab = resource9([status9("status-connected-uptodate.json"), dump(DUMP_TWO_PRIMARIES),
                          adm("primary")])
    assert res.promote() is True
    lab.done()
    assert [a["cmd"] for a in res.actions] == [["drbdadm", "primary", RES]]


def test_promote_peer_primary_refused_on_9():
    res, lab = resource9([status9("status-connected-uptodate.json"), dump()])
    with pytest.raises(StillpointError, match="dual-primary"):
        res.promote()
    lab.done()


def test_promote_uptodate_secondary_and_drbd_refusal_passed_on():
    res, lab = resource([status("84-status-standalone-b"), adm("primary")])
    assert res.promote() is True
    lab.done()
    res, lab = resource([status("84-status-standalone-b"), adm("primary", answer=cap("84-primary-outdated"))])
    with pytest.raises(StillpointError, match="Need access to UpToDate data") as info:
        res.promote()
    assert info.value.rc == 17 and info.value.details["actions"][-1]["rc"] == 17


def test_promote_not_up_refused():
    res, lab = resource([status("84-status-unconfigured")])
    with pytest.raises(StillpointError, match="not up"):
        res.promote()


# three nodes: the refusal looks at every peer, not the first one only
def test_promote_force_three_nodes_another_peer_uptodate():
    res, lab = resource9([status9("status-three-nodes-outdated.json"), SH_LL_DEV, blkid("84-blkid-xfs"),
                          (["drbdadm", "primary", "--force", RES], (0, "", ""))])
    with pytest.raises(StillpointError, match="good copy"):
        res.promote(force=True)


# -- create-md ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("found, what", [("84-blkid-b", "DRBD metadata"),
                                         ("84-blkid-xfs", "a xfs signature \\(filesystem\\)")])
def test_create_md_refused_over_data(found, what):
    res, lab = resource([status("84-status-unconfigured"), SH_LL_DEV, blkid(found)])
    with pytest.raises(StillpointError, match="refusing create-md on %s \\(resource r0\\): it holds %s" % (DISK, what)):
        res.create_md()
    lab.done()
    assert res.actions == [] and not any("create-md" in c for c in lab.log)


@pytest.mark.parametrize("found, answer", [("84-blkid-b", "84-create-md-existing"), ("84-blkid-xfs", "84-create-md")])
def test_create_md_declared_replaced_disk(found, answer):
    res, lab = resource([status("84-status-unconfigured"), SH_LL_DEV, blkid(found),
                         (["drbdadm", "create-md", "--force", RES], cap("84-create-md"))])
    assert res.create_md(replaced_disk=DISK) is True
    lab.done()
    assert res.actions[-1]["cmd"] == ["drbdadm", "create-md", "--force", RES] and "declared replaced" in \
        res.actions[-1]["what"]


@pytest.mark.parametrize("found", ["84-blkid-b", "84-blkid-empty"])
def test_create_md_refused_when_replaced_disk_is_another(found):
    res, lab = resource([status("84-status-unconfigured"), SH_LL_DEV, blkid(found)])
    with pytest.raises(StillpointError, match="replaced_disk is %s but resource r0's backing disk is %s" % (
            OTHER_DISK, DISK)):
        res.create_md(replaced_disk=OTHER_DISK)
    lab.done()
    assert res.actions == []


def test_create_md_clean_disk_but_drbdmeta_finds_data():
    """blkid sees no signature, drbdmeta does ("Found some data", 84-create-md-empty): refused."""
    res, lab = resource([status("84-status-unconfigured"), SH_LL_DEV, blkid("84-blkid-empty"),
                         adm("create-md", answer=cap("84-create-md-empty"))])
    with pytest.raises(StillpointError, match="drbdmeta found data on it: .*Found some data") as info:
        res.create_md()
    lab.done()
    assert info.value.rc == 1 and "replaced_disk: %s" % DISK in info.value.msg


def test_create_md_clean_disk():
    clock = Clock()  # a clock that stands still: the command took 0 ms
    res, lab = resource([status("84-status-diskless-b"), SH_LL_DEV, blkid("84-blkid-empty"),
                         adm("create-md", answer=cap("84-create-md"))], clock=clock, sleep=clock.sleep)
    assert res.create_md() is True
    lab.done()
    assert res.actions == [{"what": "create metadata on %s" % DISK, "cmd": ["drbdadm", "create-md", RES], "rc": 0,
                            "ms": 0.0, "planned": False}]


def test_create_md_attached_is_left_alone():
    res, lab = resource([status("84-status-uptodate-verbose"), SH_LL_DEV])
    assert res.create_md(replaced_disk=DISK) is False
    lab.done()
    assert res.actions == []


# -- clear_bitmap (skip the initial resync) ---------------------------------------------------------------

PROOF = {"same_snapshot": True, "set_id": "set-x", "snapshot_id": "snap-0123456789abcdef0"}
GET_GI = ["drbdadm", "get-gi", RES]
CLEAR = ["drbdadm", "new-current-uuid", "--clear-bitmap", RES]


def test_clear_bitmap_allowed_on_fresh_connected_inconsistent():
    res, lab = resource([status("84-status-connected-inconsistent", proc="84-proc-connected-inconsistent"),
                         (GET_GI, cap("84-getgi-both-fresh")), (CLEAR, cap("84-clear-bitmap"))])
    assert res.clear_bitmap(PROOF) is True
    lab.done()
    assert res.actions[-1]["cmd"] == CLEAR and PROOF["snapshot_id"] in res.actions[-1]["what"]


@pytest.mark.parametrize("proof", [None, {}, {"same_snapshot": False}])
def test_clear_bitmap_refused_without_proof(proof):
    res, lab = resource([status("84-status-connected-inconsistent"), (GET_GI, cap("84-getgi-both-fresh"))])
    with pytest.raises(StillpointError, match="no proof that both backing devices come from one snapshot"):
        res.clear_bitmap(proof)
    lab.done()
    assert CLEAR not in lab.calls


@pytest.mark.parametrize("gi", ["84-getgi-syncing", "84-getgi-uptodate-b", "84-getgi-after-clear-bitmap",
                                "84-getgi-replaced"])
def test_clear_bitmap_refused_with_non_fresh_gi(gi):
    res, lab = resource([status("84-status-connected-inconsistent"), (GET_GI, cap(gi))])
    with pytest.raises(StillpointError, match="not freshly created") as info:
        res.clear_bitmap(PROOF)
    lab.done()
    assert "no proof" not in info.value.msg and "not connected" not in info.value.msg


@pytest.mark.parametrize("name", ["84-status-wfconnection", "84-status-all", "84-status-outdated-b"])
def test_clear_bitmap_refused_when_not_connected(name):
    res, lab = resource([status(name), (GET_GI, cap("84-getgi-fresh"))])
    with pytest.raises(StillpointError, match="not connected"):
        res.clear_bitmap(PROOF)
    lab.done()


@pytest.mark.parametrize("name, disks", [("84-status-synctarget-verbose", "Inconsistent/UpToDate"),
                                         ("84-status-syncsource-verbose", "UpToDate/Inconsistent")])
def test_clear_bitmap_refused_when_not_both_inconsistent(name, disks):
    res, lab = resource([status(name), (GET_GI, cap("84-getgi-fresh"))])
    with pytest.raises(StillpointError, match="the disks are %s, not Inconsistent/Inconsistent" % disks):
        res.clear_bitmap(PROOF)
    lab.done()


def test_clear_bitmap_in_sync_is_done():
    res, lab = resource([status("84-status-uptodate-verbose")])
    assert res.clear_bitmap(None) is False
    lab.done()


# -- disconnect inside a freeze ----------------------------------------------------------------------------

class Freezer:
    """Records freeze/thaw into the runner's log, answering like the guardian."""

    def __init__(self, lab, window_ms=12.5):
        self.lab = lab
        self.window_ms = window_ms
        self.frozen = False

    def freeze(self):
        self.lab.log.append("<freeze>")
        self.frozen = True
        return {"mounts": [{"mountpoint": "/srv/data", "freeze_ms": 1.0}]}

    def thaw(self):
        self.lab.log.append("<thaw>")
        self.frozen = False
        return {"mounts": [{"mountpoint": "/srv/data", "thaw_ms": 0.5}], "window_ms": self.window_ms,
                "deadline_thawed": False}


DISCONNECT = "drbdadm disconnect r0"


def test_disconnect_inside_a_freeze():
    res, lab = resource([status("84-status-uptodate-verbose"), adm("disconnect", answer=cap("84-disconnect-b"))])
    freezer = Freezer(lab)
    split = res.disconnect(freezer=freezer)
    lab.done()
    assert lab.log[-3:] == ["<freeze>", DISCONNECT, "<thaw>"]
    assert split["window_ms"] == 12.5 and split["deadline_thawed"] is False and split["split_time"].endswith("Z")
    assert not freezer.frozen


def test_disconnect_failure_still_thaws():
    res, lab = resource([status("84-status-uptodate-verbose"), adm("disconnect", answer=(10, "", "boom"))])
    freezer = Freezer(lab)
    with pytest.raises(StillpointError, match="boom"):
        res.disconnect(freezer=freezer)
    assert lab.log[-3:] == ["<freeze>", DISCONNECT, "<thaw>"] and not freezer.frozen


@pytest.mark.parametrize("name", ["84-status-syncsource-verbose", "84-status-connected-inconsistent"])
def test_disconnect_with_freezer_refused_when_not_in_sync(name):
    res, lab = resource([status(name)])
    freezer = Freezer(lab)
    with pytest.raises(StillpointError, match="not in sync"):
        res.disconnect(freezer=freezer)
    lab.done()
    assert "<freeze>" not in lab.log and res.actions == []


def test_disconnect_without_freezer_and_already_standalone():
    res, lab = resource([status("84-status-syncsource-verbose"), adm("disconnect")])
    assert "split_time" in res.disconnect()
    lab.done()
    res, lab = resource([status("84-status-standalone-b")])
    assert res.disconnect(freezer=Freezer(lab)) is None
    lab.done()
    assert "<freeze>" not in lab.log


# -- idempotence, up/down/connect ---------------------------------------------------------------------------

def test_idempotent_no_action():
    for method, name in (("promote", "84-status-uptodate-verbose"), ("connect", "84-status-uptodate-verbose"),
                         ("connect", "84-status-wfconnection"), ("down", "84-status-unconfigured"),
                         ("up", "84-status-standalone-b"), ("demote", "84-status-standalone-b"),
                         ("demote", "84-status-unconfigured")):
        res, lab = resource([status(name)])
        assert getattr(res, method)() is False, (method, name)
        lab.done()
        assert res.actions == []


def test_up_attach_connect_down():
    res, lab = resource([status("84-status-unconfigured"), adm("up", answer=cap("84-up-b"))])
    assert res.up() is True
    res, lab = resource([status("84-status-diskless-b"), adm("attach")])
    assert res.up() is True
    res, lab = resource([status("84-status-standalone-b"), adm("connect", answer=cap("84-connect-b"))])
    assert res.connect() is True
    res, lab = resource([status("84-status-standalone-b"), adm("down", answer=cap("84-down-b"))])
    assert res.down() is True
    lab.done()


def test_up_without_metadata_fails_with_drbds_words():
    res, lab = resource([status("84-status-unconfigured"), adm("up", answer=cap("84-up-empty-b"))])
    with pytest.raises(StillpointError, match="No valid meta data found"):
        res.up()


def test_down_primary_refused():
    res, lab = resource([status("84-status-uptodate-verbose")])
    with pytest.raises(StillpointError, match="Primary here: demote it"):
        res.down()
    lab.done()


def test_demote_mounted_passes_drbds_refusal_on():
    res, lab = resource([status("84-status-uptodate-verbose"), adm("secondary", answer=cap("84-secondary-mounted"))])
    with pytest.raises(StillpointError, match="held open by someone"):
        res.demote()


# -- check mode ---------------------------------------------------------------------------------------------

def test_check_mode_runs_no_changing_command():
    """Every change is planned in check mode; only reads (status, sh-ll-dev, blkid, wipefs --no-act, dump,
    get-gi) run."""
    cases = [
        ("promote", {}, [status("84-status-standalone-b")]),
        ("promote", {"force": True}, [status("84-status-outdated-b"), SH_LL_DEV, blkid("84-blkid-xfs")]),
        ("connect", {}, [status("84-status-standalone-b")]),
        ("disconnect", {}, [status("84-status-uptodate-verbose")]),
        ("up", {}, [status("84-status-unconfigured")]),
        ("down", {}, [status("84-status-standalone-b")]),
        ("demote", {}, [status("84-status-uptodate-verbose")]),
        ("create_md", {}, [status("84-status-unconfigured"), SH_LL_DEV, blkid("84-blkid-empty")]),
        ("create_md", {"replaced_disk": DISK}, [status("84-status-unconfigured"), SH_LL_DEV, blkid("84-blkid-b")]),
        ("clear_bitmap", {"proof": PROOF}, [status("84-status-connected-inconsistent"),
                                            (GET_GI, cap("84-getgi-both-fresh"))]),
    ]
    reads = ("drbdsetup status", "drbdadm sh-ll-dev", "blkid -p", "wipefs --no-act", "drbdadm dump", "drbdadm get-gi")
    for method, kwargs, steps in cases:
        res, lab = resource(steps, check_mode=True)
        result = getattr(res, method)(**kwargs)
        lab.done()
        assert all(c.startswith(reads) for c in lab.log), (method, lab.log)
        assert result, method
        assert len(res.actions) == 1, (method, res.actions)
        assert (res.actions[0]["planned"], res.actions[0]["rc"], res.actions[0]["ms"]) == (True, None, None), (
            method, res.actions)
        assert sorted(res.actions[0]) == ["cmd", "ms", "planned", "rc", "what"], (method, res.actions)


def test_check_mode_disconnect_with_freezer_does_not_freeze():
    res, lab = resource([status("84-status-uptodate-verbose")], check_mode=True)
    freezer = Freezer(lab)
    assert res.disconnect(freezer=freezer) == {"planned": True}
    assert "<freeze>" not in lab.log and "inside a freeze" in res.actions[0]["what"]
    res, lab = resource([status("84-status-syncsource-verbose")], check_mode=True)
    with pytest.raises(StillpointError, match="not in sync"):  # the refusal holds in check mode too
        res.disconnect(freezer=Freezer(lab))


def test_check_mode_refusals_hold():
    res, lab = resource([status("84-status-connected-inconsistent")], check_mode=True)
    with pytest.raises(StillpointError, match="not UpToDate"):
        res.promote()
    res, lab = resource([status("84-status-unconfigured"), SH_LL_DEV, blkid("84-blkid-xfs")], check_mode=True)
    with pytest.raises(StillpointError, match="xfs"):
        res.create_md()


# -- wait_sync ----------------------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_wait_sync_records_progress():
    clock = Clock()
    steps = [status("84-status-syncsource"), status("84-status-syncsource-verbose", proc="84-proc-syncsource"),
             status("84-status-syncsource-verbose"), status("84-status-uptodate-verbose", proc="84-proc-uptodate")]
    res, lab = resource(steps, clock=clock, sleep=clock.sleep)
    seen = []
    result = res.wait_sync(timeout=60, interval=5.0, on_progress=seen.append)
    lab.done()
    assert [p["percent"] for p in result["progress"]] == [17.38, 21.10]  # the repeated 21.10 is recorded once
    assert [p["t_s"] for p in result["progress"]] == [0.0, 5.0]
    assert result["progress"][1]["out_of_sync_kib"] == 827324
    assert seen == result["progress"] and clock.slept == [5.0, 5.0, 5.0]
    assert result["seconds"] == 15.0 and result["status"]["in_sync"] is True


def test_wait_sync_counts_what_was_sent():
    """From 21.10 % to UpToDate the SyncSource sent exactly what was out of sync at the start."""
    clock = Clock()
    res, lab = resource([status("84-status-syncsource-verbose"), status("84-status-uptodate-verbose")],
                        clock=clock, sleep=clock.sleep)
    result = res.wait_sync(timeout=60)
    lab.done()
    assert result["start"]["out_of_sync_kib"] == 827324
    assert result["sent_kib"] == result["start"]["out_of_sync_kib"]
    assert result["received_kib"] == 0


def test_wait_sync_timeout():
    clock = Clock()
    steps = [status("84-status-synctarget-verbose", proc="84-proc-synctarget")] * 4
    res, lab = resource(steps, clock=clock, sleep=clock.sleep)
    with pytest.raises(StillpointError, match="did not reach UpToDate/UpToDate within 25s \\(SyncTarget, 25.39%\\)") \
            as info:
        res.wait_sync(timeout=25, interval=10.0)
    lab.done()
    assert [p["percent"] for p in info.value.details["progress"]] == [25.39]
    assert clock.now - 100.0 == 30.0


def test_wait_connected_polls_until_the_peer_answers():
    clock = Clock()
    steps = [status("84-status-wfconnection"), status("84-status-wfconnection"),
             status("84-status-connected-inconsistent")]
    res, lab = resource(steps, clock=clock, sleep=clock.sleep)
    st = res.wait_connected(timeout=120)
    lab.done()
    assert st["connection"] == "Connected" and clock.slept == [1.0, 1.0] and res.actions == []


def test_wait_connected_gives_up_after_the_timeout():
    """The last status comes back unconnected; clear_bitmap's refusal ("not connected") then says why."""
    clock = Clock()
    res, lab = resource([status("84-status-wfconnection")] * 4, clock=clock, sleep=clock.sleep)
    st = res.wait_connected(timeout=2.5)
    lab.done()
    assert st["connection"] == "Connecting" and clock.slept == [1.0, 1.0, 1.0] and clock.now - 100.0 == 3.0


def test_wait_sync_standalone_cannot_sync():
    clock = Clock()
    res, lab = resource([status("84-status-standalone-b")], clock=clock, sleep=clock.sleep)
    with pytest.raises(StillpointError, match="cannot sync: StandAlone"):
        res.wait_sync(timeout=60)
    assert clock.slept == []


def test_promote_force_on_a_restored_disk_with_two_signatures():
    """A restored backing disk carries XFS at the start and DRBD metadata at the end; blkid -p may answer rc 8
    (ambivalent), so the signatures are listed with wipefs --no-act; the XFS makes it data, so a forced
    promotion may go ahead."""
    res, lab = resource([status("84-status-outdated-b"), SH_LL_DEV,
                         (["blkid", "-p", "-o", "export", DISK], (8, "", "")),
                         (["wipefs", "--no-act", "--noheadings", "--output", "TYPE", DISK], (0, "drbd\nxfs\n", "")),
                         (["drbdadm", "primary", "--force", RES], cap("84-primary-force"))])
    assert res.promote(force=True) is True
    lab.done()
    assert "xfs" in res.actions[-1]["what"]


def test_promote_force_when_blkid_names_only_the_drbd_metadata():
    """What blkid -p printed in the lab for a restored backing disk (TYPE=drbd, rc 0) although XFS starts it;
    wipefs lists both (the answer test_lab_drbd.py asserts on a real restored disk)."""
    res, lab = resource([status("84-status-outdated-b"), SH_LL_DEV, blkid("84-blkid-b", wipefs="drbd\nxfs\n"),
                         (["drbdadm", "primary", "--force", RES], cap("84-primary-force"))])
    assert res.promote(force=True) is True
    lab.done()
    assert "xfs" in res.actions[-1]["what"]


def test_drbd_status_of_resources_already_read_runs_no_command():
    res, lab = resource([status("84-status-syncsource-verbose", proc="84-proc-syncsource")])
    found = res.drbd.resources(RES)
    lab.done()  # every step used: the status below must not read again
    st = res.drbd.status(RES, found)
    assert st == res.drbd.status(RES, [dict(r) for r in found]) and st["syncing"] is True
    assert res.drbd.status("other", found)["configured"] is False


# -- the modules: main() builds the runner and calls the library; the result and its actions ---------------

ACTION_KEYS = ["cmd", "ms", "planned", "rc", "what"]


class Volumes:
    """A DeviceResolver stand-in: the EBS volume behind each disk path."""

    def __init__(self, volumes):
        self.volumes = volumes

    def volume_for_path(self, path):
        return self.volumes.get(path)

    def devices_for_volume(self, volume_id):
        return [p for p, v in self.volumes.items() if v == volume_id]


def run_drbd_module(monkeypatch, module, steps, args, check_mode=False, proc="84-proc-uptodate", volumes=None):
    """Run ``module.main`` in-process against the replayed lab commands; returns (result, lab)."""
    lab = Lab(steps, proc=proc)
    monkeypatch.setattr(basic.AnsibleModule, "run_command", lambda self, argv, **kw: lab(argv, **kw))
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, name, required=False, opt_dirs=None: name)
    monkeypatch.setattr(_drbd, "_read_proc", lab.proc)
    monkeypatch.setattr(_drbd, "DeviceResolver", lambda: Volumes(volumes or {}))
    return run_module(monkeypatch, module.main, args, check_mode=check_mode), lab


def test_module_promote_and_connect_actions_shape(monkeypatch):
    """A real run: every action carries what, cmd, rc, ms and planned false; status is read before and after."""
    steps = [status("84-status-standalone-b"), status("84-status-standalone-b"),  # before, up()
             status("84-status-standalone-b"), adm("connect", answer=cap("84-connect-b")),
             status("84-status-standalone-b"), adm("primary"),  # promote() reads before the peer answered
             status("84-status-wfconnection-primary")]  # after
    result, lab = run_drbd_module(monkeypatch, drbd_resource, steps, dict(name=RES, connection="connected",
                                                                          role="primary"))
    lab.done()
    assert result["changed"] is True and "failed" not in result, result
    assert [a["cmd"] for a in result["actions"]] == [["drbdadm", "connect", RES], ["drbdadm", "primary", RES]]
    for action in result["actions"]:
        assert sorted(action) == ACTION_KEYS and action["rc"] == 0 and action["planned"] is False
        assert isinstance(action["ms"], float) and action["ms"] >= 0
    assert (result["status"]["role"], result["status"]["disk"]) == ("Primary", "UpToDate")
    assert "diff" not in result and "warnings" not in result


def test_module_check_mode_plans_and_diffs(monkeypatch):
    steps = [status("84-status-standalone-b"), status("84-status-standalone-b"), status("84-status-standalone-b"),
             status("84-status-standalone-b")]  # before, up(), promote(), after: nothing else runs
    result, lab = run_drbd_module(monkeypatch, drbd_resource, steps, dict(name=RES, role="primary", _ansible_diff=True),
                                  check_mode=True)
    lab.done()
    assert result["changed"] is True
    assert result["actions"] == [{"what": "promote %s" % RES, "cmd": ["drbdadm", "primary", RES], "rc": None,
                                  "ms": None, "planned": True}]
    assert result["diff"]["before"] == result["diff"]["after"] == result["status"]
    assert result["status"]["role"] == "Secondary"


def test_module_idempotent(monkeypatch):
    steps = [status("84-status-uptodate-verbose")] * 4  # before, up(), promote(), after
    result, lab = run_drbd_module(monkeypatch, drbd_resource, steps, dict(name=RES, role="primary"))
    lab.done()
    assert result["changed"] is False and result["actions"] == []


def test_module_refusal_carries_the_actions_so_far(monkeypatch):
    """Connected first, then the promotion is refused (peer Primary, no dual-primary): the failure says why and
    lists the connect that did run."""
    steps = [status("84-status-standalone-b"), status("84-status-standalone-b"),
             status("84-status-standalone-b"), adm("connect", answer=cap("84-connect-b")),
             status("84-status-synctarget-verbose"), dump()]
    result, lab = run_drbd_module(monkeypatch, drbd_resource, steps, dict(name=RES, connection="connected",
                                                                          role="primary"))
    lab.done()
    assert result["failed"] and "peer is Primary and dual-primary is not configured" in result["msg"], result
    assert [(a["cmd"], a["rc"], a["planned"]) for a in result["actions"]] == [(["drbdadm", "connect", RES], 0, False)]


def test_module_failed_command_carries_rc_and_actions(monkeypatch):
    steps = [status("84-status-uptodate-verbose"), status("84-status-uptodate-verbose"),
             status("84-status-uptodate-verbose"), adm("secondary", answer=cap("84-secondary-mounted"))]
    result, lab = run_drbd_module(monkeypatch, drbd_resource, steps, dict(name=RES, role="secondary"))
    lab.done()
    assert result["failed"] and "held open by someone" in result["msg"]
    assert result["rc"] == cap("84-secondary-mounted")[0]
    assert result["cmd"] == ["drbdadm", "secondary", RES]
    assert [(a["what"], a["rc"]) for a in result["actions"]] == [("demote %s" % RES, result["rc"])]


@pytest.mark.parametrize("args, msg", [
    (dict(freeze=["/srv/data"]), "freeze is only used to split the mirror: set connection: disconnected with it"),
    (dict(replaced_disk=DISK), "replaced_disk only means something with create_md: true")])
def test_module_refuses_options_that_mean_nothing(monkeypatch, args, msg):
    result, lab = run_drbd_module(monkeypatch, drbd_resource, [], dict(name=RES, **args))
    lab.done()
    assert result["failed"] and result["msg"] == msg and lab.calls == []


def test_module_create_md_on_a_volume_id(monkeypatch):
    """replaced_disk as an EBS volume id is resolved to this host's disk (by the resolver) and must be the
    resource's backing disk."""
    volume = "vol-0123456789abcdef0"
    steps = [status("84-status-unconfigured"), status("84-status-unconfigured"), SH_LL_DEV, blkid("84-blkid-b"),
             (["drbdadm", "create-md", "--force", RES], cap("84-create-md")),
             status("84-status-unconfigured"), adm("up", answer=cap("84-up-b")), status("84-status-wfconnection")]
    result, lab = run_drbd_module(monkeypatch, drbd_resource, steps, dict(name=RES, create_md=True,
                                                                          replaced_disk=volume),
                                  volumes={DISK: volume})
    lab.done()
    assert result["changed"] is True
    assert [a["what"] for a in result["actions"]] == ["create metadata on %s (declared replaced)" % DISK,
                                                      "bring %s up (attach + connect)" % RES]
    missing, lab = run_drbd_module(monkeypatch, drbd_resource, [status("84-status-unconfigured")],
                                   dict(name=RES, create_md=True, replaced_disk=volume))
    assert missing["failed"] and "no disk of this EBS volume is attached" in missing["msg"]
    assert missing["actions"] == []


def test_module_proof_refused_when_this_disk_is_not_listed(monkeypatch):
    steps = [status("84-status-connected-inconsistent"), SH_LL_DEV]  # before, then the proof's local disk
    args = dict(name=RES, set_id="set-x", volume_ids=["vol-0aaaaaaaaaaaaaaa1", "vol-0aaaaaaaaaaaaaaa2"])
    result, lab = run_drbd_module(monkeypatch, drbd_skip_initial_sync, steps, args,
                                  volumes={DISK: "vol-0bbbbbbbbbbbbbbb1"})
    lab.done()
    assert result["failed"] and "is volume vol-0bbbbbbbbbbbbbbb1, which is not among volume_ids" in result["msg"]
    assert result["actions"] == []


def test_module_unreachable_ec2_is_a_clear_failure(monkeypatch):
    """No EC2 answer at all (nothing listens at endpoint_url): a failure naming the calls and what to check,
    not a traceback; nothing was changed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    volumes = ["vol-0aaaaaaaaaaaaaaa1", "vol-0aaaaaaaaaaaaaaa2"]
    steps = [status("84-status-connected-inconsistent"), SH_LL_DEV]
    args = dict(name=RES, set_id="set-x", volume_ids=volumes, endpoint_url="http://127.0.0.1:%d" % port,
                region="eu-west-1", access_key="testing", secret_key="testing")
    result, lab = run_drbd_module(monkeypatch, drbd_skip_initial_sync, steps, args, volumes={DISK: volumes[0]})
    lab.done()
    assert result["failed"], result
    assert result["msg"].startswith("DescribeSnapshots") and "EndpointConnectionError: " in result["msg"], result["msg"]
    assert "127.0.0.1:%d" % port in result["msg"] and "check endpoint_url, the credentials and the region" in \
        result["msg"]
    assert result["actions"] == [] and "exception" not in result


def test_info_module(monkeypatch):
    steps = [status("84-status-syncsource-verbose", proc="84-proc-syncsource"), SH_LL_DEV,
             (GET_GI, cap("84-getgi-syncing"))]
    result, lab = run_drbd_module(monkeypatch, drbd_info, steps, dict(name=RES, gi=True),
                                  volumes={DISK: "vol-0aaaaaaaaaaaaaaa1"})
    lab.done()
    assert result["changed"] is False and result["kernel_version"] == "8.4.11"
    assert [r["name"] for r in result["resources"]] == [RES] and result["summaries"][RES]["configured"] is True
    s = result["summary"]
    assert (s["replication"], s["sync_percent"], s["sync_eta_s"]) == ("SyncSource", 21.10, 44)
    assert (s["backing_disk"], s["volume_id"]) == (DISK, "vol-0aaaaaaaaaaaaaaa1")
    assert result["gi"] == {RES: _drbd.parse_gi(out("84-getgi-syncing"))}


def test_info_module_not_loaded(monkeypatch):
    result, lab = run_drbd_module(monkeypatch, drbd_info, [], dict(), proc=None)
    assert result["failed"] and "modprobe drbd" in result["msg"] and lab.calls == []
