# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consistency groups: the sets of several hosts at one instant, proved from the hosts' own clocks
(docs/groups.md).

CreateSnapshots stops at one instance, and Ansible's task boundaries cost seconds, so the hosts do not
wait on each other while frozen. Each is armed with the same instant ``C`` (seconds since the epoch,
on clocks that are meant to be synchronized), and on its own clock:

    wait (nothing frozen) -> freeze at C - lead -> one CreateSnapshots -> hold until C + hold -> thaw

A host's snapshots hold its disks' state of any moment of its frozen interval. If every host's frozen
interval, put on one time line with the clock offsets the run measured (before and after, from the
controller), contains one common instant, every host's set holds its state of that instant: a record
that causally follows another was written after it, so if it is in a set, so is the one it follows.
The margin is how much the intervals overlap beyond the offsets' error bounds; zero or less, and the
group is recorded ``inconsistent`` (each set stays a valid set of its own host). A host that failed to
freeze or call makes the group ``failed``: every set of the group is deleted (all or nothing).

The instant is chosen only once every host is ready: each host's module prepares (discovery, validation, its
DryRun), says so in a private run directory (:class:`Rendezvous`: ``<run_dir>/state``) and waits, nothing
frozen and nothing held, for the controller to hand it the instant (``<run_dir>/go``), or to release it. Each
host reads the instant on its own clock: ``C + offset`` with the offset the run measured before (so the frozen
intervals overlap in true time even when the clocks differ); the proof does not depend on it.

Host side: :class:`Rendezvous`, :class:`GroupQuiescer`. Controller side: :func:`arm`, :func:`offset_from_samples`,
:func:`clock_bound`, :func:`verdict` (pure), :func:`seal` (EC2).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

MAX_ARM_WAIT = 600.0  # seconds a host may wait for the freeze to start, once it has the instant
MAX_READY_WAIT = 3600.0  # seconds a ready host may wait for the instant (group.wait_s)
MIN_ARM = 1.0
GO_POLL = 0.02  # seconds between looks for the controller's answer, while ready
STATE, GO = "state", "go"
MEMBER = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_DRIFT = 100e-6  # 100 ppm: an undisciplined quartz clock; chrony keeps EC2 clocks far closer


# while a member waits for its instant (GroupQuiescer._drain): the rest between two short syncs, and the least
# time a sync is assumed to take, in leads
DRAIN_REST, DRAIN_FLOOR = 0.25, 0.05
# the freeze opens with a sync and then commits the journal: under a contended disk it took about twice the last
# sync before it (benchmarks/group_window.py under a dd writer on the same disk: 121-160 ms after syncs of 61-80 ms),
# so a member whose syncs are slow starts freezing earlier, LEAD_SYNCS of its last sync before the instant, where
# a lead of lead_ms would let its freeze end after the others had thawed; at most LEAD_CAP leads before it
LEAD_SYNCS, LEAD_CAP = 3.0, 4.0


def wait_until(target, clock=time.time, sleep=time.sleep):
    """Sleep until ``clock()`` reaches ``target`` (short sleeps near the end)."""
    while True:
        left = target - clock()
        if left <= 0:
            return
        sleep(min(left, 0.5) if left > 0.02 else left)


# --------------------------------------------------------------------------- host side

def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def _write(path, text):
    """``text`` to ``path`` atomically (a reader sees the old file, none, or the whole new one), mode 0600."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


class Rendezvous:
    """A host's half of arming after readiness (docs/groups.md), in its private run directory ``run_dir``
    (``<base>/<group id>/<member>``, 0700, made here; refused if it exists: a group id is new per run).

    ``state`` says ``starting <pid>``, then ``ready <pid>`` once the module has prepared (discovery, DryRun), or
    ``failed <pid>: <why>`` when it failed before; the controller waits for ``ready|failed`` on every host, then
    writes ``go`` (JSON): ``{"id", "instant", "lead_ms", "hold_ms"}`` (the instant on the controller's clock), or
    ``{"abort": why}`` when a host was not ready. A ready host waits at most ``wait_s`` seconds for it and then
    refuses, nothing frozen (counted on ``clock``, monotonic: a stepped real-time clock does not stretch it). The
    directory is removed once the answer is read (or the wait ended); leftovers of killed runs (their pid gone) under
    the same base are removed when the next one opens.
    """

    def __init__(self, group_id, run_dir, wait_s, clock=time.monotonic, sleep=time.sleep, poll=GO_POLL):
        run_dir = os.path.normpath(run_dir or "")
        member, gid = os.path.basename(run_dir), os.path.basename(os.path.dirname(run_dir))
        if not os.path.isabs(run_dir) or gid != group_id or not MEMBER.match(member) or not MEMBER.match(gid):
            raise StillpointError("group %s: run_dir must be an absolute path <base>/%s/<member> (letters, digits, "
                                  "'.', '_', '-'); got %r" % (group_id, group_id, run_dir))
        if not 0 < float(wait_s) <= MAX_READY_WAIT:
            raise StillpointError("group %s: wait_s must be more than 0 and at most %d s" % (group_id, MAX_READY_WAIT))
        self.id, self.dir, self.wait_s = group_id, run_dir, float(wait_s)
        self.base = os.path.dirname(os.path.dirname(run_dir))
        self.clock, self.sleep, self.poll = clock, sleep, poll
        self.opened = self.is_ready = self.answered = False
        self.ready_at = None
        self.pruned = []

    def _state(self, word, why=None):
        _write(os.path.join(self.dir, STATE), "%s %d%s\n" % (word, os.getpid(), ": %s" % why if why else ""))

    def open(self):
        """Make the run directory (and its parents, 0700) and say ``starting``; remove dead runs' leftovers."""
        self.prune()
        for attempt in (1, 2):
            try:
                os.makedirs(os.path.dirname(self.dir), mode=0o700, exist_ok=True)
                os.mkdir(self.dir, 0o700)
                break
            except FileExistsError as e:
                raise StillpointError("group %s: the run directory %s already exists (another run of this group id, "
                                      "or not ours); nothing was frozen" % (self.id, self.dir)) from e
            except FileNotFoundError:  # the group's directory, empty, removed by a member closing just then
                if attempt == 2:
                    raise
            except OSError as e:
                raise StillpointError("group %s: cannot make the run directory %s (%s): the group's members need a "
                                      "private directory there (become root, or another array_backup_group_run_dir); "
                                      "nothing was frozen" % (self.id, self.dir, e.strerror or e)) from e
        self.opened = True
        self._state("starting")

    def prune(self):
        """Member directories under the base whose module is gone (a killed run), with their group directory when
        empty. A directory without a readable state (being made) or with a live pid is left alone."""
        try:
            groups = os.listdir(self.base)
        except OSError:
            return
        for gid in groups:
            gdir = os.path.join(self.base, gid)
            if gid == self.id or not MEMBER.match(gid) or os.path.islink(gdir) or not os.path.isdir(gdir):
                continue
            for member in os.listdir(gdir):
                mdir = os.path.join(gdir, member)
                try:
                    with open(os.path.join(mdir, STATE)) as handle:
                        pid = int(handle.read().split()[1].rstrip(":"))
                except (OSError, ValueError, IndexError):
                    continue
                if not _pid_alive(pid) and not os.path.islink(mdir):
                    shutil.rmtree(mdir, ignore_errors=True)
                    self.pruned.append(mdir)
            try:
                os.rmdir(gdir)
            except OSError:
                pass

    def ready(self):
        self._state("ready")
        self.is_ready, self.ready_at = True, self.clock()

    def failed(self, why):
        """Before ready: tell the controller why (best effort; the directory stays for it to read)."""
        if self.opened and not self.is_ready:
            try:
                self._state("failed", " ".join(str(why).split())[:500])
            except OSError:
                pass

    def wait(self):
        """The controller's answer: ``{"instant", "lead_ms", "hold_ms"}``; raises on a release or when none came."""
        go = os.path.join(self.dir, GO)
        end = self.ready_at + self.wait_s
        try:
            while True:
                try:
                    with open(go) as handle:
                        text = handle.read()
                    break
                except FileNotFoundError:
                    pass
                if self.clock() >= end:
                    raise StillpointError(
                        "group %s: no instant from the controller within %.0f s of this host being ready (group.wait_s); "
                        "nothing was frozen or created. The controller died, or another host never became ready"
                        % (self.id, self.wait_s), waited_s=round(self.clock() - self.ready_at, 3))
                self.sleep(self.poll)
        finally:
            self.close()
        self.answered = True
        try:
            answer = json.loads(text)
        except ValueError as e:
            raise StillpointError("group %s: the controller's answer is not JSON: %r; nothing was frozen"
                                  % (self.id, text[:200])) from e
        if answer.get("abort"):
            raise StillpointError("group %s: released by the controller before any freeze (%s); nothing was frozen or "
                                  "created on this host" % (self.id, answer["abort"]), released=True)
        if answer.get("id") != self.id or not isinstance(answer.get("instant"), (int, float)):
            raise StillpointError("group %s: the controller's answer is for another group or has no instant: %r; "
                                  "nothing was frozen" % (self.id, answer))
        answer["waited_for_instant_ms"] = round((self.clock() - self.ready_at) * 1000.0, 3)
        return answer

    def close(self):
        """Remove the run directory (and the group's, when empty)."""
        if self.opened:
            shutil.rmtree(self.dir, ignore_errors=True)
            try:
                os.rmdir(os.path.dirname(self.dir))
            except OSError:
                pass
            self.opened = False


class GroupQuiescer:
    """Wraps the host's quiescer: the freeze starts at ``instant - lead``, the thaw waits until ``instant + hold``,
    both on this host's clock: the group's instant (controller time) plus this host's measured offset
    (``group["offset_s"]``, host minus controller; 0 when not given).

    Without ``group["instant"]`` a :class:`Rendezvous` is given: :meth:`ready` (called before the application is
    held, or at the freeze) says this host is ready and waits for the instant, then checks it (:meth:`check`).

    ``record`` holds this host's part after the thaw: its frozen interval on this host's real-time clock,
    taken after the freeze returned and before the thaw was asked (inside the true frozen interval).
    """

    def __init__(self, inner, group, clock=time.time, sleep=time.sleep, rendezvous=None, deadline=None):
        self.inner = inner
        self.group = dict(group)
        self.group.setdefault("offset_s", 0.0)
        self.clock = clock
        self.sleep = sleep
        self.rendezvous = rendezvous
        self.deadline = deadline
        self.answer = None
        self.record = None
        self.call_ok = False

    @property
    def level(self):
        return self.inner.level

    def _local(self):
        """The instant on this host's clock."""
        return self.group["instant"] + float(self.group.get("offset_s") or 0.0)

    def _start(self):
        return self._local() - self.group["lead_ms"] / 1000.0

    def ready(self):
        """Tell the controller this host is ready and wait (nothing frozen, nothing held) for the instant; once."""
        if self.rendezvous is None or self.answer is not None:
            return
        self.rendezvous.ready()
        self.answer = self.rendezvous.wait()
        self.group.update(instant=float(self.answer["instant"]), lead_ms=float(self.answer.get("lead_ms", 100.0)),
                          hold_ms=float(self.answer.get("hold_ms", 50.0)))
        self.check(self.deadline)

    def hooks(self, hooks):
        """``hooks`` (or None) so that the rendezvous comes before the application is held."""
        return None if hooks is None else _ReadyFirst(hooks, self)

    def check(self, deadline):
        """Refusals before anything is frozen (called from the module after its DryRun)."""
        late = self.clock() - self._start()
        if late > 0:
            raise StillpointError(
                "group %s: armed %.0f ms too late (the freeze was to start %.0f ms before the instant %.3f on this "
                "host's clock); nothing was frozen or created. Every host of a group must be waiting before the "
                "instant: give the play forks >= the group size and no serial, or a later instant (array_backup_group_arm_s)"
                % (self.group["id"], late * 1000.0, self.group["lead_ms"], self._local()), late_ms=round(late * 1000.0, 3))
        if -late > MAX_ARM_WAIT:
            raise StillpointError("group %s: the instant is %.0f s away (at most %d s); nothing was frozen"
                                  % (self.group["id"], -late, MAX_ARM_WAIT))
        if deadline is not None and (self.group["lead_ms"] + self.group["hold_ms"]) / 1000.0 >= deadline / 2.0:
            raise StillpointError("group %s: lead_ms + hold_ms (%.0f ms) must stay under half the freeze deadline "
                                  "(freeze_deadline=%s s); nothing was frozen"
                                  % (self.group["id"], self.group["lead_ms"] + self.group["hold_ms"], deadline))

    def freeze(self):
        if self.record is not None:
            raise StillpointError("group %s: one freeze cycle per group member" % self.group["id"])
        self.ready()
        start = self._start()
        if hasattr(self.inner, "prepare"):
            self.inner.prepare()  # the guardian's fork, before the wait, not inside the lead
        armed = self.clock()
        presync = None
        if hasattr(self.inner, "presync"):
            # the dirty data written out while waiting, nothing frozen, up to just before the freeze: the sync the
            # freeze makes first then has only the last moments' writes to flush. Without it a writer's backlog made
            # that sync outlast the lead (610 ms against a 500 ms lead in a TCG guest) and the host froze after the
            # instant; with syncs that stopped early, the backlog built up again before the freeze
            # (benchmarks/group_drain.py). Slow syncs also move the freeze's start earlier (LEAD_SYNCS)
            presync = self._drain(start)
            start = self._local() - presync["lead_ms"] / 1000.0
        wait_until(start, self.clock, self.sleep)
        began = self.clock()
        out = self.inner.freeze()
        frozen = self.clock()
        self.record = {"id": self.group["id"], "instant": self.group["instant"], "lead_ms": self.group["lead_ms"],
                       "hold_ms": self.group["hold_ms"], "offset_ms": round(float(self.group["offset_s"]) * 1000.0, 3),
                       "local_instant": round(self._local(), 6), "late_ms": round((began - start) * 1000.0, 3),
                       "waited_ms": round(max(0.0, start - armed) * 1000.0, 3), "presync": presync,
                       "frozen_after_instant_ms": round((frozen - self._local()) * 1000.0, 3),
                       "frozen": [frozen, None], "window_ms": None}
        if self.answer is not None:
            self.record["waited_for_instant_ms"] = self.answer.get("waited_for_instant_ms")
        return out

    def lead_for(self, last_ms):
        """How long before the instant the freeze starts, in ms, after a last sync of ``last_ms``: ``lead_ms``, or
        ``LEAD_SYNCS`` times that sync when longer, at most ``LEAD_CAP`` leads and never so long that lead and hold
        reach half the freeze deadline."""
        lead = self.group["lead_ms"]
        cap = LEAD_CAP * lead
        if self.deadline is not None:
            cap = min(cap, self.deadline * 500.0 - self.group["hold_ms"] - 1.0)
        return max(lead, min(cap, LEAD_SYNCS * last_ms))

    def _drain(self, until):
        """Syncs (``presync``: ``syncfs``, nothing frozen) from now until ``until``, the freeze's start: back to back
        while they are long (a backlog), then ``DRAIN_REST`` of a lead apart. A sync starts only with twice its
        estimate left before the freeze's start (the last sync's time, at least ``DRAIN_FLOOR`` of a lead: one that
        outlasts its estimate would delay the freeze), and the last rest is cut so that the last sync ends just
        before the freeze: the sync the freeze opens with then has only the writes made since. The start is
        ``until``, or earlier when the syncs are slow (:meth:`lead_for`). Returns a summary for the host's record
        (which goes into a tag, so not the list): ``{"syncs", "total_ms", "max_ms", "last_ms", "idle_ms",
        "lead_ms"}``, ``idle_ms`` from the end of the last sync to the start, ``lead_ms`` the start's distance to
        the instant."""
        rest = self.group["lead_ms"] * DRAIN_REST / 1000.0
        floor = self.group["lead_ms"] * DRAIN_FLOOR / 1000.0
        local = self._local()
        syncs, total, longest, last, ended = 0, 0.0, 0.0, 0.0, None
        while True:
            start = min(until, local - self.lead_for(last) / 1000.0)
            need = 2.0 * max(floor, last / 1000.0)
            if start - self.clock() < need:
                break
            if syncs and last / 1000.0 <= rest:  # the backlog is gone: rest, keeping it small
                self.sleep(max(0.0, min(rest, start - self.clock() - need)))
            last = float(self.inner.presync())
            ended = self.clock()
            syncs += 1
            total += last
            longest = max(longest, last)
        return {"syncs": syncs, "total_ms": round(total, 3), "max_ms": round(longest, 3), "last_ms": round(last, 3),
                "idle_ms": None if ended is None else round(max(0.0, start - ended) * 1000.0, 3),
                "lead_ms": round((local - start) * 1000.0, 3)}

    def called(self, ok):
        """The run tells whether the call succeeded: only then is the freeze held until the instant + hold."""
        self.call_ok = bool(ok)

    def catalog_tags(self):
        """This host's record for the catalog (``stillpoint:group-host``), once it has thawed: the set's run writes it
        with the level after the thaw, in the same CreateTags (a fleet run is bound by CreateTags, docs/throttling.md)."""
        if self.record is None or self.record["frozen"][1] is None:
            return {}
        return catalog.encode_json(catalog.K_GROUP_HOST, self.record, what="group host record")

    def thaw(self):
        if self.call_ok:
            wait_until(self._local() + self.group["hold_ms"] / 1000.0, self.clock, self.sleep)
        thawing = self.clock()
        out = self.inner.thaw()
        if self.record is not None:
            self.record["frozen"][1] = thawing
            self.record["window_ms"] = out.get("window_ms")
        return out


class _ReadyFirst:
    """The run's hooks (an application quiescer or pre/post hooks), with the group's rendezvous before ``pre``:
    the application is not held while the host waits for the instant."""

    def __init__(self, inner, quiescer):
        self._inner, self._quiescer = inner, quiescer

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def pre(self):
        self._quiescer.ready()
        return self._inner.pre()

    def post(self):
        return self._inner.post()


# --------------------------------------------------------------------------- controller side, pure

READY_LINE = re.compile(r"^(?P<status>ready|failed|pending)\b[ :]*(?P<rest>.*)$")


def readiness(hosts, waits):
    """Each host's member after the controller's wait: ``{"ready": [host...], "failed": {host: why}, "pending":
    {host: why}}``, from what each host's wait printed (``waits``, one text per host, in ``hosts``' order).

    The wait (role array_backup) prints one line: the member's state (``ready <pid>``, ``failed <pid>: <why>``),
    ``failed <pid>: ...`` for a member whose module ended without saying either (its pid gone, or its async job
    finished), or ``pending: <why>`` when the ready timeout ended first. A host whose wait printed none of these (its
    member never started: an earlier task failed there, or the host was unreachable) counts as failed."""
    if len(hosts) != len(waits):
        raise StillpointError("hosts and ready_states must have one item per host (%d, %d)" % (len(hosts), len(waits)))
    out = {"ready": [], "failed": {}, "pending": {}}
    for host, text in zip(hosts, waits):
        found = None
        for line in str(text or "").replace("\r", "\n").split("\n"):
            found = READY_LINE.match(line.strip()) or found
        if found is None:
            out["failed"][host] = "its member did not start or its wait reported nothing (an earlier task failed there, or the host was unreachable)"
        elif found.group("status") == "ready":
            out["ready"].append(host)
        else:
            rest = found.group("rest")
            why = rest.split(":", 1)[1].strip() if found.group("status") == "failed" and ":" in rest else rest
            out[found.group("status")][host] = why or found.group("status")
    return out


def released(summary):
    """Why the group is released (nothing frozen anywhere), naming each host that is not ready; None when all are."""
    parts = ["%s (failed: %s)" % (h, why) for h, why in sorted(summary["failed"].items())]
    parts += ["%s (%s)" % (h, why) for h, why in sorted(summary["pending"].items())]
    if not parts:
        return None
    return "not every host of the group was ready: %s" % "; ".join(parts)


def new_group_id():
    return catalog.new_set_id().replace("bs-", "bg-", 1)


def arm(errors_s, now, arm_s=20.0, lead_ms=100.0, hold_ms=50.0, group_id=None, since=None):
    """The group's id and instant, ``arm_s`` from ``now`` (controller clock), and the hold sized from the
    measured clock errors: the intervals must overlap by more than twice the largest error.

    ``since``: when the clocks were measured (the earliest ``measured_at``); a clock may drift by
    :data:`MAX_DRIFT` from then until the measurement after the freeze (taken as 30 s after the instant)."""
    if arm_s < MIN_ARM:
        raise StillpointError("arm_s must be at least %s s (every host must be waiting before the instant)" % MIN_ARM)
    worst = max([float(e) for e in errors_s] or [0.0])
    span = float(arm_s) + 30.0 + (max(0.0, now - float(since)) if since is not None else 0.0)
    # the bound used by the seal: the error measured, plus the drift allowed until the measurement after
    hold = max(float(hold_ms), 2000.0 * (worst + MAX_DRIFT * span) + 20.0)
    return {"id": group_id or new_group_id(), "instant": round(now + float(arm_s), 6),
            "lead_ms": float(lead_ms), "hold_ms": round(hold, 3), "clock_error_ms": round(worst * 1000.0, 3)}


def offset_from_samples(samples):
    """Clock offset of a host from ``[(sent, host_time, received), ...]`` (sent/received on the controller).

    The host read its clock between ``sent`` and ``received``; with the shortest round trip the offset
    (host minus controller) is ``host_time - midpoint``, within half that round trip, whatever the
    asymmetry of the path."""
    if not samples:
        raise StillpointError("no clock samples")
    sent, host, received = min(samples, key=lambda s: s[2] - s[0])
    rtt = max(0.0, received - sent)
    return {"offset_s": host - (sent + received) / 2.0, "error_s": rtt / 2.0, "rtt_s": rtt, "samples": len(samples),
            "measured_at": (sent + received) / 2.0}


def clock_bound(before, after):
    """The offset during the freeze, from a measurement before and one after it.

    Each measurement bounds the offset (``offset_s +- error_s``); the clock may drift between the two by at most
    :data:`MAX_DRIFT` (seconds per second, far above what a disciplined clock does) times the time between them
    (``measured_at``). The offset lies in both bounds so widened: their intersection. When they do not intersect,
    a clock was stepped between them, and no offset is known (None)."""
    elapsed = abs(float(after.get("measured_at", 0.0)) - float(before.get("measured_at", 0.0)))
    drift = MAX_DRIFT * elapsed
    lo = max(before["offset_s"] - before["error_s"], after["offset_s"] - after["error_s"]) - drift
    hi = min(before["offset_s"] + before["error_s"], after["offset_s"] + after["error_s"]) + drift
    if lo > hi:
        return None
    return {"offset_s": (lo + hi) / 2.0, "error_s": (hi - lo) / 2.0}


def member(set_result, clock_before, clock_after):
    """One host's part for :func:`verdict`, from what its tasks registered (ebs_snapshot_set, clock_offset x2)."""
    set_result, before, after = set_result or {}, clock_before or {}, clock_after or {}
    part = {"set_id": set_result.get("set_id"), "frozen": (set_result.get("group") or {}).get("frozen"), "failed": None}
    if set_result.get("failed") or not set_result:
        part["failed"] = set_result.get("msg") or "no result from ebs_snapshot_set"
    clocks = [c for c in (before, after) if "offset_s" in c and "error_s" in c and not c.get("failed")]
    if len(clocks) < 2:
        part["failed"] = part["failed"] or "its clock offset was not measured before and after the freeze"
        return part
    bound = clock_bound(*clocks)
    if bound is None:
        part["failed"] = part["failed"] or ("its clock moved between the measurements before and after the freeze "
                                            "(offset %.1f ms, then %.1f ms): stepped, not drifted"
                                            % (before["offset_s"] * 1000.0, after["offset_s"] * 1000.0))
        return part
    part.update(bound)
    return part


def host_parts(hosts, set_results, clocks_before, clocks_after):
    """``{host: part}`` from parallel lists (one item per host, as a play's hostvars give them)."""
    if not len(hosts) == len(set_results) == len(clocks_before) == len(clocks_after):
        raise StillpointError("hosts, set_results, clocks_before and clocks_after must have one item per host "
                              "(%d, %d, %d, %d)" % (len(hosts), len(set_results), len(clocks_before), len(clocks_after)))
    return dict((h, member(r, b, a)) for h, r, b, a in zip(hosts, set_results, clocks_before, clocks_after))


def verdict(members):
    """The group's verdict from each host's part.

    ``members``: ``{host: {"set_id", "frozen": [a, b] or None (host clock), "offset_s", "error_s", "failed": msg or None}}``.
    Returns ``{"verdict": consistent|inconsistent|failed, "instant", "margin_ms", "hosts": {...}, "problems": [...]}``
    with every interval on the controller's time line; the common instant is the middle of the overlap."""
    problems, hosts = [], {}
    for host in sorted(members):
        m = members[host]
        if m.get("failed") or not m.get("set_id") or not m.get("frozen") or m["frozen"][1] is None:
            problems.append("%s: %s" % (host, m.get("failed") or "no set or no frozen interval reported"))
            hosts[host] = {"set_id": m.get("set_id"), "failed": m.get("failed") or "no set"}
            continue
        o, e = float(m["offset_s"]), float(m["error_s"])
        a, b = m["frozen"][0] - o, m["frozen"][1] - o
        hosts[host] = {"set_id": m["set_id"], "frozen": [round(a, 6), round(b, 6)], "offset_ms": round(o * 1000.0, 3),
                       "error_ms": round(e * 1000.0, 3), "earliest": a + e, "latest": b - e}
    if problems:
        return {"verdict": "failed", "instant": None, "margin_ms": None, "hosts": _public(hosts), "problems": problems}
    if not hosts:
        return {"verdict": "failed", "instant": None, "margin_ms": None, "hosts": {}, "problems": ["no member"]}
    left = max(h["earliest"] for h in hosts.values())
    right = min(h["latest"] for h in hosts.values())
    margin = right - left
    out = {"verdict": "consistent" if margin > 0 else "inconsistent", "instant": round((left + right) / 2.0, 6),
           "margin_ms": round(margin * 1000.0, 3), "hosts": _public(hosts), "problems": []}
    if margin <= 0:
        first = max(hosts, key=lambda h: hosts[h]["earliest"])
        last = min(hosts, key=lambda h: hosts[h]["latest"])
        out["instant"] = None
        out["problems"].append(
            "the frozen intervals share no instant once the measured clock offsets and their error bounds are applied: "
            "%s was frozen from %.3f, %s thawed from %.3f (controller time, error bounds applied); margin %.1f ms"
            % (first, hosts[first]["earliest"], last, hosts[last]["latest"], margin * 1000.0))
    return out


def _public(hosts):
    return dict((h, dict((k, v) for k, v in rec.items() if k not in ("earliest", "latest"))) for h, rec in hosts.items())


# --------------------------------------------------------------------------- controller side, EC2

def seal(client, group_id, members, check_mode=False):
    """Record the verdict on every set of the group (tags), or delete them all when the group failed.

    Returns the module's result; raises when the group is not consistent (after recording it)."""
    out = verdict(members)
    records = ebs.catalog_sets(client, group_id=group_id)
    known = dict((r["set_id"], r) for r in records)
    named = set(h["set_id"] for h in out["hosts"].values() if h.get("set_id"))
    stray = sorted(set(known) - named)
    if stray and out["verdict"] != "failed":
        out["verdict"] = "failed"
        out["problems"].append("sets of group %s that no member reported: %s" % (group_id, ", ".join(stray)))
    absent = sorted(named - set(known))
    if absent and out["verdict"] != "failed":
        out["verdict"] = "failed"
        out["problems"].append("sets reported but not in the catalog: %s" % ", ".join(absent))
    result = dict(group_id=group_id, verdict=out["verdict"], instant=out["instant"], margin_ms=out["margin_ms"],
                  hosts=out["hosts"], problems=out["problems"], sets=sorted(known), changed=False)
    ids = [sid for r in records for sid in r["snapshot_ids"]]
    if out["verdict"] == "failed":
        if check_mode:
            return dict(result, changed=bool(ids), msg="check mode: would delete the group's %d set(s)" % len(known))
        rb = ebs.rollback(client, ids) if ids else {"deleted": [], "left_partial": [], "errors": []}
        details = dict(result)
        details.update(rollback=rb, changed=bool(ids))
        raise StillpointError("group %s failed (%s); all %d set(s) of the group were %s" % (
            group_id, "; ".join(out["problems"]), len(known),
            "deleted" if not rb["left_partial"] else "deleted except %s, tagged partial" % ", ".join(rb["left_partial"])),
            **details)
    sealed = [r for r in records if (r.get("group") or {}).get("verdict") in catalog.GROUP_SEALED]
    if len(sealed) == len(records) and records:
        result["msg"] = "group %s already sealed (%s)" % (group_id, sealed[0]["group"]["verdict"])
        result["verdict"] = sealed[0]["group"]["verdict"]
        return result
    if not check_mode:
        by_set = dict((h["set_id"], (name, h)) for name, h in out["hosts"].items())
        for rec in records:
            host, mine = by_set[rec["set_id"]]
            record = {"verdict": out["verdict"], "instant": out["instant"], "margin_ms": out["margin_ms"],
                      "size": len(records), "host": host, "frozen": mine["frozen"], "offset_ms": mine["offset_ms"],
                      "error_ms": mine["error_ms"]}
            ebs.tag(client, rec["snapshot_ids"], catalog.encode_json(catalog.K_GROUP, record, what="group record"))
    result["changed"] = True
    if out["verdict"] != "consistent":
        raise StillpointError("group %s is not consistent: %s. Its %d sets were recorded as a group that is not "
                              "consistent (each stays a valid set of its own host); a group restore refuses it"
                              % (group_id, "; ".join(out["problems"]), len(records)), **result)
    result["msg"] = "group %s: %d sets share the instant %.3f (margin %.1f ms)" % (
        group_id, len(records), out["instant"], out["margin_ms"])
    return result
