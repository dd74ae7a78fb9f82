# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Group drain: how late a group member freezes after its instant with the drain and without it, in one run.

A consistency-group member freezes at ``instant - lead`` on its own clock and must be frozen by the instant
(docs/groups.md, step 7). The freeze opens with a sync of every filesystem; a writer's backlog of dirty data can
make that sync outlast the lead, and the host then froze after the instant (a lab run saw 610 ms against a
500 ms lead). The drain (``GroupQuiescer._drain``) writes the backlog out while the member waits, nothing frozen,
and keeps syncing until just before the freeze. This script isolates its effect: the same group member (the library's
``GroupQuiescer`` over a ``GuardianQuiescer``, exactly as ebs_snapshot_set builds it, without Ansible, EC2 or
other hosts) on the same loop filesystems under the same writers, alternately with the drain and with the inner
quiescer's ``presync`` hidden (so the group member skips the drain, as before it existed).

Setup: ``--filesystems`` ext4 loop filesystems this script makes (only those are frozen; everything is
removed in ``finally``), one writer thread per filesystem rewriting a ``--file-mb`` file at about ``--rate-mb``
MB/s with buffered writes and no fsync (a busy application's dirty data). Each run arms the instant
``--arm`` seconds ahead, lead ``--lead`` ms, hold 50 ms; 2 s rest between runs.

Measured per run, from the member's own record: ``frozen_after_instant_ms`` (the moment the freeze returned,
relative to the instant: > 0 is a host frozen after the common instant, which shrinks or breaks the group's
margin), ``late_ms`` (the freeze started after its planned time), the freeze window, and the drain's syncs.

Usage: python benchmarks/group_drain.py [--runs 5] [--filesystems 4] [--rate-mb 40] [--file-mb 96] [--lead 100]
Last line: ``group-drain frozen-after-instant median ms: drain=<x> no-drain=<y>; runs frozen after the instant:
drain=<a>/<n> no-drain=<b>/<n>``
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze  # noqa: E402
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _group  # noqa: E402
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _quiesce  # noqa: E402

from tests.support.loopfs import LoopFS  # noqa: E402
from tests.support.loopfs import missing_requirements  # noqa: E402

CHUNK = 1 << 20


class NoPresync:
    """The inner quiescer without ``presync``: GroupQuiescer then neither drains nor presyncs."""

    def __init__(self, inner):
        self._inner = inner
        self.level = inner.level

    def prepare(self):
        return self._inner.prepare()

    def freeze(self):
        return self._inner.freeze()

    def thaw(self):
        return self._inner.thaw()


class Writer(threading.Thread):
    """Rewrites one file at about ``rate`` bytes a second, buffered, never synced (a write blocks while frozen)."""

    def __init__(self, path, size, rate):
        super().__init__(daemon=True)
        self.path, self.size, self.rate = path, size, rate
        self.stop = threading.Event()
        self.written = 0

    def run(self):
        block = os.urandom(CHUNK)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            start, pos = time.monotonic(), 0
            while not self.stop.is_set():
                os.pwrite(fd, block, pos)
                self.written += CHUNK
                pos = (pos + CHUNK) % self.size
                ahead = self.written / float(self.rate) - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        finally:
            os.close(fd)


def one_run(plan, drain, arm_s, lead_ms):
    inner = _quiesce.GuardianQuiescer(plan, deadline=30)
    group = {"id": "bench-drain", "instant": time.time() + arm_s, "lead_ms": float(lead_ms), "hold_ms": 50.0,
             "offset_s": 0.0}
    member = _group.GroupQuiescer(inner if drain else NoPresync(inner), group)
    try:
        member.freeze()
        member.called(True)
    finally:
        member.thaw()
    rec = member.record
    return {"after": rec["frozen_after_instant_ms"], "late": rec["late_ms"], "window": rec["window_ms"],
            "presync": rec["presync"]}


def summary(rows, key):
    values = [r[key] for r in rows]
    return statistics.median(values), max(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--filesystems", type=int, default=4)
    parser.add_argument("--rate-mb", type=float, default=40.0, help="each writer's MB/s")
    parser.add_argument("--file-mb", type=int, default=96, help="the file each writer rewrites")
    parser.add_argument("--lead", type=float, default=100.0, help="lead_ms")
    parser.add_argument("--arm", type=float, default=4.0, help="seconds from arming to the instant")
    args = parser.parse_args()
    missing = missing_requirements("ext4")
    if missing:
        sys.exit("cannot run: %s" % missing)
    filesystems, writers = [], []
    rows = {True: [], False: []}
    try:
        for _index in range(args.filesystems):
            filesystems.append(LoopFS(size_mb=args.file_mb + 64).create())
        plan = _freeze.check_mountpoints([f.mountpoint for f in filesystems])
        for f in filesystems:
            writers.append(Writer(os.path.join(f.mountpoint, "load"), args.file_mb << 20, args.rate_mb * (1 << 20)))
        for w in writers:
            w.start()
        time.sleep(3.0)  # a backlog builds up
        for n in range(args.runs):
            for drain in ((True, False) if n % 2 == 0 else (False, True)):
                time.sleep(2.0)
                rows[drain].append(one_run(plan, drain, args.arm, args.lead))
                r = rows[drain][-1]
                print("run %d %-8s frozen after the instant %8.1f ms  late %7.1f ms  window %7.1f ms  presync %s"
                      % (n + 1, "drain" if drain else "no-drain", r["after"], r["late"], r["window"],
                         json.dumps(r["presync"], sort_keys=True)), flush=True)
    finally:
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(timeout=60)
        for f in reversed(filesystems):
            f.cleanup()
    written = sum(w.written for w in writers) / float(1 << 20)
    print("\n%d runs per mode, %d ext4 loop filesystems, a writer on each at %.0f MB/s (%.0f MB written in all), "
          "lead %.0f ms, hold 50 ms, instant %.1f s after arming"
          % (args.runs, args.filesystems, args.rate_mb, written, args.lead, args.arm))
    print("%-9s %28s %22s %22s" % ("mode", "frozen after instant ms", "late ms", "window ms"))
    for drain in (True, False):
        a, b, c = (summary(rows[drain], k) for k in ("after", "late", "window"))
        print("%-9s %17.1f (max %6.1f) %11.1f (max %6.1f) %11.1f (max %6.1f)"
              % ("drain" if drain else "no-drain", a[0], a[1], b[0], b[1], c[0], c[1]))
    after = dict((d, sum(1 for r in rows[d] if r["after"] > 0)) for d in (True, False))
    print("group-drain frozen-after-instant median ms: drain=%.1f no-drain=%.1f; runs frozen after the instant: "
          "drain=%d/%d no-drain=%d/%d"
          % (summary(rows[True], "after")[0], summary(rows[False], "after")[0], after[True], args.runs, after[False],
             args.runs))


if __name__ == "__main__":
    main()
