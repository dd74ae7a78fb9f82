# -*- coding: utf-8 -*-
"""Consistency groups, the pure parts (plugins/module_utils/_group.py): the host's schedule around the instant
on an injected clock, the clock offset from round trips, and the verdict from the hosts' intervals."""

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _group as group
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError


class Clock:
    """A clock that only moves when slept on (or when told)."""

    def __init__(self, now):
        self.now = now
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds


class Inner:
    level = "filesystem"

    def __init__(self, clock, freeze_s=0.03):
        self.clock = clock
        self.freeze_s = freeze_s
        self.events = []

    def freeze(self):
        self.events.append(("freeze", self.clock()))
        self.clock.now += self.freeze_s
        return {"mounts": ["/data"]}

    def thaw(self):
        self.events.append(("thaw", self.clock()))
        return {"mounts": ["/data"], "window_ms": 123.0}


GROUP = {"id": "bg-20261204T100000Z-abcdef", "instant": 1000.0, "lead_ms": 50.0, "hold_ms": 80.0}


def test_freeze_starts_lead_before_the_instant_and_is_held_hold_after_it():
    clock = Clock(990.0)
    inner = Inner(clock)
    q = group.GroupQuiescer(inner, GROUP, clock=clock, sleep=clock.sleep)
    q.check(deadline=10.0)
    assert q.level == "filesystem"
    q.freeze()
    assert inner.events == [("freeze", pytest.approx(999.95))]
    clock.now += 0.01  # the call
    q.called(True)
    out = q.thaw()
    assert inner.events[1] == ("thaw", pytest.approx(1000.08))
    assert q.record["frozen"] == [pytest.approx(999.98), pytest.approx(1000.08)]
    assert q.record["late_ms"] == pytest.approx(0.0)
    assert out["window_ms"] == q.record["window_ms"] == 123.0


class SyncingInner(Inner):
    """A freezer that can write its dirty data out ahead of the freeze (GuardianQuiescer.presync)."""

    def presync(self):
        self.events.append(("presync", self.clock()))
        self.clock.now += 0.2
        return 200.0


def syncs_end_before(inner):
    """When each presync began (the event log opens with them); the events after them."""
    spans, events = [], list(inner.events)
    while events and events[0][0] == "presync":
        spans.append(events.pop(0)[1])
    return spans, events


def test_long_syncs_go_back_to_back_and_stop_with_twice_their_time_to_spare_so_the_freeze_starts_on_time():
    clock = Clock(990.0)
    inner = SyncingInner(clock)
    q = group.GroupQuiescer(inner, GROUP, clock=clock, sleep=clock.sleep)
    q.freeze()
    # lead 50 ms. Every sync takes 200 ms, longer than the lead: the freeze (which opens with such a sync) starts
    # earlier, at the cap of 4 leads (999.8), and a sync starts only with 400 ms left before it, so the last ends
    # 200-400 ms before the freeze, which starts on time, never while a sync runs
    began, after = syncs_end_before(inner)
    assert after == [("freeze", pytest.approx(999.8))]
    assert all(b == pytest.approx(a + 0.2) for a, b in zip(began, began[1:]))  # back to back, no rest
    assert 999.8 - 0.4 <= began[-1] + 0.2 <= 999.8 - 0.2 + 1e-9
    presync = q.record["presync"]
    assert presync["syncs"] == len(began) == 47
    assert presync["max_ms"] == presync["last_ms"] == 200.0
    assert presync["total_ms"] == pytest.approx(200.0 * len(began))
    assert presync["idle_ms"] == pytest.approx((999.8 - began[-1] - 0.2) * 1000.0)
    assert presync["lead_ms"] == pytest.approx(200.0)
    assert q.record["late_ms"] == pytest.approx(0.0)


class ContendedInner(SyncingInner):
    """A member on a contended disk (benchmarks/group_window.py beside a dd writer): every sync takes 80 ms, and the
    freeze, a sync and a journal commit, twice that."""

    def presync(self):
        self.events.append(("presync", self.clock()))
        self.clock.now += 0.08
        return 80.0

    def freeze(self):
        self.events.append(("freeze", self.clock()))
        self.clock.now += 0.16
        return {"mounts": ["/data"]}


def test_slow_syncs_start_the_freeze_earlier_so_it_ends_before_the_instant():
    # lead 100 ms, hold 50 ms: started at the lead, a 160 ms freeze would end 60 ms after the instant, after a
    # member thawing at the instant + hold had thawed (the group found inconsistent: margin -17.4 ms, measured).
    # Started 3 syncs (240 ms) before the instant, it ends 80 ms before it
    clock = Clock(990.0)
    inner = ContendedInner(clock)
    q = group.GroupQuiescer(inner, dict(GROUP, lead_ms=100.0, hold_ms=50.0), clock=clock, sleep=clock.sleep)
    q.freeze()
    _began, after = syncs_end_before(inner)
    assert after == [("freeze", pytest.approx(999.76))]
    assert q.record["presync"]["lead_ms"] == pytest.approx(240.0)
    assert q.record["frozen"][0] == pytest.approx(999.92)
    assert q.record["frozen_after_instant_ms"] == pytest.approx(-80.0)
    assert q.record["late_ms"] == pytest.approx(0.0)
    q.called(True)
    q.thaw()
    assert inner.events[-1] == ("thaw", pytest.approx(1000.05))  # held to the instant + hold, as every member


def test_the_earlier_start_keeps_lead_and_hold_under_half_the_freeze_deadline():
    # deadline 0.5 s, hold 50 ms: lead + hold stay under 250 ms, so the lead is at most 199 ms, not 3 x 80
    q = group.GroupQuiescer(Inner(Clock(990.0)), dict(GROUP, lead_ms=100.0, hold_ms=50.0), deadline=0.5)
    assert q.lead_for(80.0) == pytest.approx(199.0)
    assert q.lead_for(20.0) == 100.0  # fast syncs: the lead as armed
    assert group.GroupQuiescer(Inner(Clock(990.0)), dict(GROUP, lead_ms=100.0)).lead_for(1000.0) == 400.0  # 4 leads


class BacklogInner(Inner):
    """A freezer whose sync takes 50 ms per second of writes since the last one began (a writer's backlog), 2 s at
    most."""

    def __init__(self, clock):
        super().__init__(clock)
        self.synced = clock() - 60.0
        self.took = []

    def presync(self):
        self.events.append(("presync", self.clock()))
        took = min(2.0, 0.05 * (self.clock() - self.synced))
        self.synced = self.clock()  # what is written while it runs is left for the next one
        self.clock.now += took
        self.took.append(took)
        return round(took * 1000.0, 3)


def test_the_backlog_is_drained_and_kept_small_until_just_before_the_freeze():
    clock = Clock(990.0)
    inner = BacklogInner(clock)
    q = group.GroupQuiescer(inner, dict(GROUP, lead_ms=500.0), clock=clock, sleep=clock.sleep)
    q.freeze()
    began, after = syncs_end_before(inner)
    # a minute of writes: the first sync takes the 2 s cap, the next 100 ms (2 s of writes), then the backlog is
    # gone (under a quarter lead, 125 ms) and the syncs come a 125 ms rest apart, each flushing 7-11 ms, up to
    # the freeze at 999.5: the last ends with twice its floor (25 ms, a twentieth of the lead) or less to spare,
    # so the sync the freeze opens with has only those last milliseconds of writes
    assert inner.took[:2] == [2.0, pytest.approx(0.1)]
    assert all(took < 0.012 for took in inner.took[2:]) and len(inner.took) > 50
    assert all(b - a == pytest.approx(0.125, abs=0.01) for a, b in zip(began[3:-1], began[4:-1]))
    assert after == [("freeze", pytest.approx(999.5))]
    presync = q.record["presync"]
    assert presync["syncs"] == len(began) and presync["max_ms"] == 2000.0
    assert presync["lead_ms"] == 500.0  # the last syncs were short: the lead as armed
    assert 0.0 < presync["idle_ms"] <= 50.0
    assert presync["idle_ms"] == pytest.approx((999.5 - began[-1] - inner.took[-1]) * 1000.0)
    assert q.record["late_ms"] == pytest.approx(0.0)
    # the sync before the freeze had the writes since the one before it began: a rest and a little more
    assert presync["last_ms"] == pytest.approx(50.0 * (began[-1] - began[-2]))


def test_no_drain_when_the_wait_is_shorter_than_twice_the_floor():
    clock = Clock(999.945)
    inner = SyncingInner(clock)
    q = group.GroupQuiescer(inner, GROUP, clock=clock, sleep=clock.sleep)
    q.freeze()
    # 5 ms to the freeze, the floor is 2.5 ms (a twentieth of the 50 ms lead): none started
    assert q.record["presync"] == {"syncs": 0, "total_ms": 0.0, "max_ms": 0.0, "last_ms": 0.0, "idle_ms": None,
                                   "lead_ms": 50.0}
    assert inner.events == [("freeze", pytest.approx(999.95))]


def test_a_freezer_without_presync_is_not_drained():
    clock = Clock(990.0)
    q = group.GroupQuiescer(Inner(clock), GROUP, clock=clock, sleep=clock.sleep)
    q.freeze()
    assert q.record["presync"] is None


def test_the_hosts_record_is_offered_for_the_catalog_only_once_thawed():
    clock = Clock(990.0)
    q = group.GroupQuiescer(Inner(clock), GROUP, clock=clock, sleep=clock.sleep)
    assert q.catalog_tags() == {}
    q.freeze()
    assert q.catalog_tags() == {}  # frozen, not thawed: no interval yet
    q.called(True)
    q.thaw()
    tags = q.catalog_tags()
    assert set(tags) <= {"stillpoint:group-host"} | set("stillpoint:group-host.%d" % i for i in range(1, 8))
    assert catalog.decode_json(tags, "stillpoint:group-host") == json.loads(json.dumps(q.record))


def test_a_failed_call_thaws_at_once():
    clock = Clock(999.0)
    inner = Inner(clock)
    q = group.GroupQuiescer(inner, GROUP, clock=clock, sleep=clock.sleep)
    q.freeze()
    q.called(False)
    q.thaw()
    assert inner.events[1][1] == pytest.approx(999.98)  # not held to the instant + hold


def test_armed_too_late_or_too_early_or_too_long_is_refused_before_any_freeze():
    clock = Clock(999.96)
    inner = Inner(clock)
    with pytest.raises(StillpointError, match="too late.*forks"):
        group.GroupQuiescer(inner, GROUP, clock=clock, sleep=clock.sleep).check(deadline=10.0)
    with pytest.raises(StillpointError, match="away"):
        group.GroupQuiescer(inner, GROUP, clock=Clock(0.0)).check(deadline=10.0)
    with pytest.raises(StillpointError, match="half the freeze deadline"):
        group.GroupQuiescer(inner, dict(GROUP, hold_ms=5000.0), clock=Clock(990.0)).check(deadline=10.0)
    assert inner.events == []


def test_one_cycle_only():
    clock = Clock(990.0)
    q = group.GroupQuiescer(Inner(clock), GROUP, clock=clock, sleep=clock.sleep)
    q.freeze()
    q.thaw()
    with pytest.raises(StillpointError, match="one freeze cycle"):
        q.freeze()


def test_offset_from_the_shortest_round_trip():
    # host 2.0 s ahead; the second sample has the shortest round trip
    samples = [(10.0, 12.3, 10.4), (11.0, 13.01, 11.02), (12.0, 14.2, 12.3)]
    out = group.offset_from_samples(samples)
    assert out["offset_s"] == pytest.approx(2.0)
    assert out["error_s"] == pytest.approx(0.01)
    assert out["samples"] == 3 and out["measured_at"] == pytest.approx(11.01)
    with pytest.raises(StillpointError):
        group.offset_from_samples([])


def test_clock_bound_is_where_both_measurements_agree_widened_by_drift():
    before = {"offset_s": 0.010, "error_s": 0.004, "measured_at": 100.0}
    after = {"offset_s": 0.013, "error_s": 0.003, "measured_at": 120.0}
    out = group.clock_bound(before, after)
    # [0.006, 0.014] and [0.010, 0.016] meet in [0.010, 0.014], widened by 20 s x 100 ppm = 2 ms
    assert out["offset_s"] == pytest.approx(0.012)
    assert out["error_s"] == pytest.approx(0.004)
    assert group.clock_bound(dict(before, measured_at=120.0), after)["error_s"] == pytest.approx(0.002)


def test_a_clock_stepped_between_the_measurements_has_no_offset():
    before = {"offset_s": 0.0, "error_s": 0.005, "measured_at": 100.0}
    after = {"offset_s": 0.5, "error_s": 0.005, "measured_at": 110.0}
    assert group.clock_bound(before, after) is None
    assert "stepped" in group.member({"set_id": "bs-1", "group": {"frozen": [1, 2]}}, before, after)["failed"]


def test_arm_sizes_the_hold_from_the_clock_errors():
    armed = group.arm([0.004, 0.030], now=100.0, arm_s=15, lead_ms=40, hold_ms=50)
    assert armed["instant"] == pytest.approx(115.0)
    assert armed["hold_ms"] == pytest.approx(89.0)  # 2 x (30 ms + 45 s x 100 ppm) + 20 ms
    assert armed["id"].startswith("bg-")
    assert group.arm([0.001], now=0.0, arm_s=5, hold_ms=50)["hold_ms"] == 50.0
    with pytest.raises(StillpointError, match="arm_s"):
        group.arm([], now=0.0, arm_s=0.1)


def part(set_id, a, b, offset=0.0, error=0.002):
    return {"set_id": set_id, "frozen": [a, b], "offset_s": offset, "error_s": error, "failed": None}


def test_overlapping_intervals_are_consistent_at_the_middle_of_the_overlap():
    out = group.verdict({"a": part("bs-a", 0.00, 0.10), "b": part("bs-b", 0.03, 0.12), "c": part("bs-c", 0.02, 0.09)})
    assert out["verdict"] == "consistent"
    assert out["margin_ms"] == pytest.approx(56.0)  # [0.032, 0.088]
    assert out["instant"] == pytest.approx(0.06)
    assert out["hosts"]["b"]["frozen"] == [0.03, 0.12]


def test_a_clock_offset_moves_a_host_on_the_time_line():
    # host b's clock is 0.5 s ahead: what it calls [0.53, 0.62] was [0.03, 0.12] on the controller's line
    out = group.verdict({"a": part("bs-a", 0.0, 0.1), "b": part("bs-b", 0.53, 0.62, offset=0.5)})
    assert out["verdict"] == "consistent"
    # not measured (offset taken as 0): no shared instant
    out = group.verdict({"a": part("bs-a", 0.0, 0.1), "b": part("bs-b", 0.53, 0.62)})
    assert out["verdict"] == "inconsistent" and out["instant"] is None
    assert "share no instant" in out["problems"][0]


def test_error_bounds_eat_the_margin():
    out = group.verdict({"a": part("bs-a", 0.0, 0.1, error=0.03), "b": part("bs-b", 0.05, 0.15, error=0.03)})
    assert out["verdict"] == "inconsistent"  # overlap 50 ms, minus 2 x 30 ms
    assert out["margin_ms"] == pytest.approx(-10.0)


def test_a_failed_host_fails_the_group():
    out = group.verdict({"a": part("bs-a", 0.0, 0.1), "b": dict(part(None, 0, 0), frozen=None, failed="EBUSY")})
    assert out["verdict"] == "failed"
    assert out["problems"] == ["b: EBUSY"]


def test_member_from_registered_results():
    clock = {"offset_s": 0.001, "error_s": 0.002}
    ok = group.member({"set_id": "bs-1", "group": {"frozen": [1.0, 1.1]}}, clock, clock)
    assert ok["failed"] is None and ok["frozen"] == [1.0, 1.1] and ok["offset_s"] == pytest.approx(0.001)
    assert group.member({"failed": True, "msg": "boom"}, clock, clock)["failed"] == "boom"
    assert group.member({}, clock, clock)["failed"]
    assert "not measured" in group.member({"set_id": "bs-1", "group": {"frozen": [1, 2]}}, clock, {})["failed"]


# --------------------------------------------------------------------------- armed after the hosts are ready

GID = "bg-20261204T100000Z-abcdef"


def rendezvous(tmp_path, clock, member="h1", wait_s=30.0, gid=GID):
    return group.Rendezvous(gid, str(tmp_path / "run" / gid / member), wait_s, clock=clock, sleep=clock.sleep)


def answer(tmp_path, text, member="h1"):
    with open(str(tmp_path / "run" / GID / member / "go"), "w") as handle:
        handle.write(text)


def test_a_member_says_ready_then_reads_the_instant_on_its_own_clock_by_its_offset(tmp_path):
    clock = Clock(1000.0)
    rv = rendezvous(tmp_path, clock)
    rv.open()
    state = tmp_path / "run" / GID / "h1" / "state"
    assert state.read_text().split() == ["starting", str(os.getpid())]
    assert oct((tmp_path / "run" / GID / "h1").stat().st_mode & 0o777) == "0o700"
    inner = Inner(clock)
    # this host's clock is 2.0 s ahead of the controller's: the instant 1010.0 (controller) is 1012.0 here
    q = group.GroupQuiescer(inner, {"id": GID, "offset_s": 2.0}, clock=clock, sleep=clock.sleep, rendezvous=rv,
                            deadline=10.0)
    real_sleep = clock.sleep

    def sleep(seconds):  # the controller answers while this host waits
        if clock.now >= 1001.0 and state.exists() and not (state.parent / "go").exists():
            assert state.read_text().split()[0] == "ready"
            answer(tmp_path, json.dumps({"id": GID, "instant": 1010.0, "lead_ms": 50.0, "hold_ms": 80.0}))
        real_sleep(seconds)

    clock.sleep = rv.sleep = q.sleep = sleep
    q.freeze()
    assert inner.events == [("freeze", pytest.approx(1011.95))]
    q.called(True)
    q.thaw()
    assert inner.events[1] == ("thaw", pytest.approx(1012.08))
    assert q.record["instant"] == 1010.0 and q.record["local_instant"] == pytest.approx(1012.0)
    assert q.record["offset_ms"] == pytest.approx(2000.0)
    assert q.record["waited_for_instant_ms"] == pytest.approx(1000.0, abs=60.0)
    assert not (tmp_path / "run" / GID).exists()  # the member's directory (and the empty group's) removed


def test_ready_comes_before_the_application_is_held(tmp_path):
    clock = Clock(1000.0)
    rv = rendezvous(tmp_path, clock)
    rv.open()
    answer(tmp_path, json.dumps({"id": GID, "instant": 1010.0, "lead_ms": 50.0, "hold_ms": 80.0}))
    events = []

    class App:
        held = True

        def pre(self):
            events.append(("held", rv.is_ready))
            return True, {}

        def post(self):
            return True, {}

    q = group.GroupQuiescer(Inner(clock), {"id": GID}, clock=clock, sleep=clock.sleep, rendezvous=rv, deadline=10.0)
    hooks = q.hooks(App())
    assert hooks.held is True and q.hooks(None) is None
    hooks.pre()
    assert events == [("held", True)] and q.group["instant"] == 1010.0


def test_a_released_member_or_one_without_an_instant_refuses_with_nothing_frozen(tmp_path):
    clock = Clock(1000.0)
    rv = rendezvous(tmp_path, clock)
    rv.open()
    answer(tmp_path, json.dumps({"abort": "not every host of the group was ready: h2"}))
    inner = Inner(clock)
    q = group.GroupQuiescer(inner, {"id": GID}, clock=clock, sleep=clock.sleep, rendezvous=rv, deadline=10.0)
    with pytest.raises(StillpointError, match="released by the controller before any freeze.*h2"):
        q.freeze()
    assert inner.events == [] and not (tmp_path / "run" / GID).exists()

    rv = rendezvous(tmp_path, clock, wait_s=5.0)
    rv.open()
    q = group.GroupQuiescer(inner, {"id": GID}, clock=clock, sleep=clock.sleep, rendezvous=rv, deadline=10.0)
    with pytest.raises(StillpointError, match="no instant from the controller within 5 s"):
        q.freeze()
    assert inner.events == [] and clock.now == pytest.approx(1005.0, abs=0.05)
    assert not (tmp_path / "run" / GID).exists()

    # an answer that comes too late for the lead, or for another group: refused before the freeze
    for text, match in ((json.dumps({"id": GID, "instant": clock.now + 0.01, "lead_ms": 50.0, "hold_ms": 80.0}), "too late"),
                        (json.dumps({"id": "bg-other", "instant": clock.now + 5}), "another group"),
                        ("{", "not JSON")):
        rv = rendezvous(tmp_path, clock)
        rv.open()
        answer(tmp_path, text)
        q = group.GroupQuiescer(inner, {"id": GID}, clock=clock, sleep=clock.sleep, rendezvous=rv, deadline=10.0)
        with pytest.raises(StillpointError, match=match):
            q.freeze()
        assert inner.events == []


def test_a_member_that_fails_before_ready_says_why_and_leftovers_of_dead_runs_are_removed(tmp_path):
    clock = Clock(1000.0)
    rv = rendezvous(tmp_path, clock)
    rv.open()
    rv.failed("/data is not a\nmountpoint")
    text = (tmp_path / "run" / GID / "h1" / "state").read_text()
    assert text == "failed %d: /data is not a mountpoint\n" % os.getpid()
    # a killed run's member (its pid gone) and a live one of another group
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for gid, pid in (("bg-killed", dead.pid), ("bg-live", os.getpid())):
        path = tmp_path / "run" / gid / "h1"
        path.mkdir(parents=True)
        (path / "state").write_text("ready %d\n" % pid)
    nxt = rendezvous(tmp_path, clock, gid="bg-next")
    nxt.open()
    assert nxt.pruned == [str(tmp_path / "run" / "bg-killed" / "h1")]
    assert sorted(os.listdir(str(tmp_path / "run"))) == sorted(["bg-live", "bg-next", GID])  # GID's member is alive
    with pytest.raises(StillpointError, match="already exists"):
        rendezvous(tmp_path, clock, gid="bg-next").open()
    for bad in ("relative/bg-next/h1", str(tmp_path / "run" / "bg-other" / "h1"), str(tmp_path / "run" / "bg-next" / "h 1")):
        with pytest.raises(StillpointError, match="run_dir"):
            group.Rendezvous("bg-next", bad, 10.0)
    with pytest.raises(StillpointError, match="wait_s"):
        group.Rendezvous("bg-next", str(tmp_path / "run" / "bg-next" / "h1"), 0)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StillpointError, match="cannot make the run directory.*array_backup_group_run_dir"):
        group.Rendezvous("bg-next", str(tmp_path / "a-file" / "bg-next" / "h1"), 10.0).open()


def test_arm_counts_the_drift_since_the_clocks_were_measured():
    armed = group.arm([0.004, 0.030], now=100.0, arm_s=15, lead_ms=40, hold_ms=50, since=40.0, group_id="bg-x")
    assert armed["hold_ms"] == pytest.approx(101.0)  # 2 x (30 ms + (15 + 30 + 60) s x 100 ppm) + 20 ms
    assert armed["id"] == "bg-x"


# --------------------------------------------------------------------------- the persistent clock reader

class LocalConnection:
    """What clock_offset's action uses of ActionBase, on this host: a temporary directory and shell commands."""

    def __init__(self, tmp_path):
        self.tmp = str(tmp_path)
        self.commands = []

    def _make_tmp_path(self):
        return self.tmp

    def _low_level_execute_command(self, cmd, sudoable=True):
        assert not sudoable  # the clock needs no become
        self.commands.append(cmd)
        proc = subprocess.run(["/bin/sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=30, check=False)
        return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def test_one_reader_process_answers_every_sample_within_its_round_trip(tmp_path):
    from ansible_collections.stillpoint.snapshots.plugins.action.clock_offset import ActionModule

    conn = LocalConnection(tmp_path)
    out = ActionModule._measure_persistent(conn, 4, sys.executable)
    assert out["reader"] == "persistent" and out["samples"] == 4
    assert abs(out["offset_s"]) <= out["error_s"] + 0.001  # the same clock: no offset beyond the bound
    assert len(conn.commands) == 5 and sys.executable in conn.commands[0]
    assert all("python" not in cmd for cmd in conn.commands[1:])  # no Python started per sample
    assert sorted(os.listdir(str(tmp_path))) == ["answer", "ask"]


def _process_holding(path):
    """The pid of a process other than this one that has ``path`` open (read from /proc), or None."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
            if any(os.readlink("/proc/%s/fd/%s" % (pid, fd)) == path for fd in fds):
                return int(pid)
        except OSError:
            continue
    return None


def _running(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_sample_whose_read_meets_the_previous_answers_writer_still_open_reads_again(tmp_path):
    # the race a loaded CI run met ("the clock reader on the host did not answer sample 3"): the reader wrote the
    # previous answer, the sample's head read it and exited, and the next sample's head opened the reply FIFO before
    # the reader had closed it; that read ended empty at the close
    from ansible_collections.stillpoint.snapshots.plugins.action.clock_offset import sample_command

    ask, answer = str(tmp_path / "ask"), str(tmp_path / "answer")
    os.mkfifo(ask, 0o600)
    os.mkfifo(answer, 0o600)
    requests = os.open(ask, os.O_RDWR)
    stale = os.open(answer, os.O_RDWR)  # the previous answer's writer, its line already read
    sample = subprocess.Popen(["/bin/sh", "-c", sample_command("n0nce", str(tmp_path))], stdout=subprocess.PIPE,
                              text=True)
    try:
        nonce = b""
        while not nonce.endswith(b"\n"):
            nonce += os.read(requests, 1)
        assert nonce == b"n0nce\n"
        deadline = time.monotonic() + 30
        while _process_holding(answer) is None:  # the sample's read has met the stale writer
            assert time.monotonic() < deadline and sample.poll() is None
            time.sleep(0.01)
        first_read = _process_holding(answer)
        os.close(stale)  # its close ends that read empty
        stale = None
        while _running(first_read):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while True:  # the answer, once a read of the reply FIFO is open again (never, if the sample gave up)
            assert time.monotonic() < deadline and sample.poll() is None, "the sample gave up after the empty read"
            try:
                writer = os.open(answer, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                assert exc.errno == errno.ENXIO
                time.sleep(0.01)
        os.write(writer, b"n0nce 1796404438.5\n")
        os.close(writer)
        out = sample.communicate(timeout=30)[0]
        assert out.split() == ["n0nce", "1796404438.5"]
    finally:
        if stale is not None:
            os.close(stale)
        os.close(requests)
        if sample.poll() is None:
            sample.kill()
            sample.wait()


# --------------------------------------------------------------------------- the controller's wait for readiness

def wait_command(run_dir, results_file, ready_timeout):
    """The role's wait task (roles/array_backup/tasks/main.yml, one raw command per host), rendered for this host."""
    import shlex

    import jinja2
    import yaml

    with open(os.path.join(os.path.dirname(__file__), "..", "..", "roles", "array_backup", "tasks", "main.yml")) as handle:
        tasks = yaml.safe_load(handle)
    block = next(t["block"] for t in tasks if "block" in t)
    task = next(t for t in block if t["name"].startswith("Wait until this host's member of the group is ready"))
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["quote"] = lambda s: shlex.quote(str(s))
    return env.from_string(task["ansible.builtin.raw"]).render(
        __array_backup_run_dir=str(run_dir), __array_backup_set={"results_file": str(results_file)},
        __array_backup_in={"group_ready_timeout": ready_timeout})


def run_wait(run_dir, job, ready_timeout=60):
    started = time.monotonic()
    out = subprocess.run(["/bin/sh", "-c", wait_command(run_dir, job, ready_timeout)], capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout, time.monotonic() - started


def test_the_wait_ends_at_once_on_ready_failed_a_dead_member_or_a_finished_job_and_says_which(tmp_path):
    run_dir, job = tmp_path / "run" / GID / "h1", tmp_path / "job"
    job.write_text(json.dumps({"started": True, "finished": False, "ansible_job_id": "j1"}))  # async_wrapper's, no newline
    run_dir.mkdir(parents=True)
    state = run_dir / "state"
    state.write_text("ready 4242\n")
    assert run_wait(run_dir, job)[0] == "ready 4242\n"
    state.write_text("failed 4242: /data is not a mountpoint\n")
    assert run_wait(run_dir, job)[0] == "failed 4242: /data is not a mountpoint\n"
    # the member died before it said either (killed): its pid is gone, the job file still says started
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state.write_text("starting %d\n" % dead.pid)
    out, took = run_wait(run_dir, job)
    assert out.startswith("failed %d: its module (pid %d) ended before it said ready or failed" % (dead.pid, dead.pid))
    assert took < 5.0  # not the ready timeout (60 s)
    # it ended before it made its run directory: no state, its async job finished with its message
    os.remove(str(state))
    job.write_text(json.dumps({"failed": True, "msg": "group %s: cannot make the run directory /x (Not a directory): "
                                                      "become root\nmore" % GID, "invocation": {"module_args": {}}}))
    out, took = run_wait(run_dir, job)
    assert out == ("failed -: its module ended before it made its run directory: group %s: cannot make the run "
                   "directory /x (Not a directory): become root\n" % GID)
    summary = group.readiness(["h1", "h2", "h3", "h4"], ["ready 1\r\n", out, "", "pending: not ready within 0.3 s"])
    assert summary == {"ready": ["h1"], "pending": {"h4": "not ready within 0.3 s"}, "failed": {
        "h2": "its module ended before it made its run directory: group %s: cannot make the run directory /x (Not a "
              "directory): become root" % GID,
        "h3": "its member did not start or its wait reported nothing (an earlier task failed there, or the host was "
              "unreachable)"}}
    why = group.released(summary)
    assert why.startswith("not every host of the group was ready: h2 (failed: its module ended before it made its run")
    assert "h3 (failed: its member did not start" in why and why.endswith("h4 (not ready within 0.3 s)")
    assert group.released(group.readiness(["h1"], ["ready 1"])) is None


def test_the_wait_sees_a_live_member_until_it_says_ready_or_the_timeout(tmp_path):
    run_dir, job = tmp_path / "run" / GID / "h1", tmp_path / "job"
    job.write_text(json.dumps({"started": 1, "finished": 0, "ansible_job_id": "j1"}))  # ansible-core 2.17's
    run_dir.mkdir(parents=True)
    (run_dir / "state").write_text("starting %d\n" % os.getpid())  # alive: this process
    out, took = run_wait(run_dir, job, ready_timeout=0.3)
    assert out == "pending: not ready within 0.3 s (its state: starting %d)\n" % os.getpid() and took >= 0.3
    member = subprocess.Popen([sys.executable, "-c", "import os, sys, time; time.sleep(0.5); "
                               "open(sys.argv[1] + '.tmp', 'w').write('ready %d\\n' % os.getpid()); "
                               "os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(5)", str(run_dir / "state")])
    try:
        (run_dir / "state").write_text("starting %d\n" % member.pid)
        out, took = run_wait(run_dir, job)
        assert out == "ready %d\n" % member.pid and took < 5.0
    finally:
        member.kill()
        member.wait()
