# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Application stall: how long MariaDB's writers wait, ours vs the stock ec2-consistent-snapshot way, in one run.

A private mariadbd (Debian's MariaDB, tests/support/dbservers.py) keeps its files on
loop-device filesystems that are the EBS volumes of an emulated instance at a local EC2 endpoint (127.0.0.1):

- 2 volumes: datadir on volume 1, binary log on volume 2 (as the integration test);
- 4 volumes: datadir (table ``a``, system tables) on 1, binary log on 2, InnoDB redo log
  (``innodb_log_group_home_dir``) on 3, table ``b`` (``DATA DIRECTORY``) on 4.

One filesystem (ext4) per volume, no md/btrfs. The integration test's writer thread commits numbered two-table
transactions back to back on one session and records when each COMMIT returned; the stall is read from those
commits only: the longest gap between consecutive commits, and the sum of the gaps above ``--threshold-ms``,
over the commits that returned between the start of the backup and 1 s after it (so the first commit after the
release is included).

- ours: ``ebs_snapshot_set`` in host mode with ``application: mariadb`` (BACKUP STAGE ... BLOCK_COMMIT held by
  the module's client), run as the integration test runs it (the module file with an args file, ``wait: false``);
  its own ``freeze_window_ms`` and ``application.held_ms`` are reported too;
- stock, the way ec2-consistent-snapshot does it: one client session takes ``FLUSH TABLES WITH READ LOCK`` and
  reads ``SHOW MASTER STATUS``, ``fsfreeze -f`` every filesystem, one boto3 ``create_snapshot`` per volume
  (client made and connected before the lock), ``fsfreeze -u``, ``UNLOCK TABLES``.

Each repetition runs both (alternating which goes first) on the same server and writer. Only the filesystems
this script made are frozen. Everything started (endpoint, servers, loop devices) is stopped in ``finally``.

``--busy-s S`` (default 0: none) adds a long write statement to each backup: another session runs
``UPDATE w.c SET n = n + 1 WHERE SLEEP(S) = 0`` on a table the writer never touches, started before the backup
and seen running in the process list. What the two locks do with it is the server's: the run prints the writer's
stall either way. (A 3 s ``SELECT SLEEP(3) FROM w.a`` was tried first: Debian's MariaDB let
``FLUSH TABLES WITH READ LOCK`` through at once, stock's stall stayed its freeze window; a SELECT is not the lock
queue.) The scenario and S are this script's choice, not a measured workload.

Usage: python benchmarks/app_quiesce.py [--runs 3] [--volumes 2,4] [--threshold-ms 25] [--call-latency-ms 0]
       [--busy-s 0]
Last line:  app-stall ratio ours/stock=<x> (2 volumes) <y> (4 volumes); ours/filesystem-freeze-window=<z>
(x, y: median longest commit gap, ours over stock; z: ours' median longest commit gap over the module's median
freeze_window_ms, the larger of the volume counts measured).
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.ec2_endpoint import Endpoint  # noqa: E402
from tests.support.dbservers import MariaDBServer  # noqa: E402
from tests.support.dbservers import mariadb_missing  # noqa: E402
from tests.integration.test_app_mariadb import module_args  # noqa: E402
from tests.support.world import EmulatedInstance  # noqa: E402

AFTER_S = 1.0  # commits returning this long after the backup ended still count (the first one after the release)


class SpreadServer(MariaDBServer):
    """The tests' MariaDBServer (tests/support/dbservers.py), with the InnoDB redo log in a directory of its own (a third volume)."""

    def __init__(self, datadir, binlog_dir, redo_dir=None):
        super().__init__(datadir, binlog_dir)
        self.redo_dir = redo_dir

    def options(self):
        opts = super().options()
        if self.redo_dir:
            opts.append("--innodb-log-group-home-dir=%s" % self.redo_dir)
        return opts

    def install(self):
        if self.redo_dir:
            os.makedirs(self.redo_dir, exist_ok=True)
        return super().install()


def make_server(inst):
    mps = inst.mountpoints
    redo = os.path.join(mps[2], "redo") if len(mps) >= 4 else None
    server = SpreadServer(os.path.join(mps[0], "mysql"), os.path.join(mps[1], "binlog"), redo)
    server.install().start()
    b_dir = ""
    if len(mps) >= 4:
        os.makedirs(os.path.join(mps[3], "tables"), exist_ok=True)
        b_dir = " DATA DIRECTORY='%s'" % os.path.join(mps[3], "tables")
    server.sql("CREATE DATABASE w; CREATE TABLE w.a (n INT PRIMARY KEY) ENGINE=InnoDB; "
               "CREATE TABLE w.b (n INT PRIMARY KEY) ENGINE=InnoDB%s" % b_dir)
    return server


def stall(writer, t0, t1, threshold_ms):
    """Longest commit gap and the sum of gaps above the threshold (ms), commits returning in [t0, t1 + AFTER_S]."""
    done = list(writer.done)
    gaps = [(t - prev) * 1000.0 for (_n0, prev), (_n, t) in zip(done, done[1:]) if t0 <= t <= t1 + AFTER_S]
    if not gaps:
        raise SystemExit("no commit returned around the backup: the writer is stuck")
    return max(gaps), sum(g for g in gaps if g > threshold_ms), len(gaps)


def settle(writer, seconds):
    n = len(writer.done)
    time.sleep(seconds)
    writer.wait_for(n + 20)


def run_ours(workdir, inst, ec2, server):
    argv, env = module_args(workdir, inst, ec2, server, name="bench-app", lock_wait_timeout=5)
    t0 = time.time()
    proc = subprocess.run(argv, env=env, cwd=str(workdir), capture_output=True, text=True, timeout=120, check=False)
    t1 = time.time()
    try:
        res = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit("ours: module output is not JSON: %s %s" % (proc.stdout[-2000:], proc.stderr[-2000:]))
    if res.get("failed") or res.get("level") != "application" or not res["application"].get("confirmed"):
        raise SystemExit("ours: %s" % json.dumps(res, indent=1)[-3000:])
    return t0, t1, {"freeze_ms": res["freeze_window_ms"], "held_ms": res["application"]["held_ms"],
                    "creates": len(ec2.calls("CreateSnapshots"))}


def run_stock(inst, ec2, server):
    client = ec2.client()
    client.describe_volumes(VolumeIds=inst.volume_ids)  # connected before the lock, as the tool is
    session = subprocess.Popen(server.client() + ["--unbuffered"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, bufsize=1)
    frozen = []
    t0 = time.time()
    try:
        session.stdin.write("FLUSH TABLES WITH READ LOCK; SHOW MASTER STATUS; SELECT 'locked';\n")
        session.stdin.flush()
        while True:
            line = session.stdout.readline()
            if not line:
                raise SystemExit("stock: the session ended: %s" % session.stderr.read())
            if line.strip() == "locked":
                break
        t_locked = time.time()
        subprocess.run(["sync"], check=True)
        t_freeze = time.time()
        for mp in inst.mountpoints:
            subprocess.run(["fsfreeze", "-f", mp], check=True)
            frozen.append(mp)
        for vid in inst.volume_ids:
            client.create_snapshot(VolumeId=vid, Description="stock ec2-consistent-snapshot way (benchmark)")
    finally:
        for mp in reversed(frozen):
            subprocess.run(["fsfreeze", "-u", mp], check=False)
        t_thawed = time.time()
        if session.poll() is None:
            session.stdin.write("UNLOCK TABLES; SELECT 'unlocked';\n")
            session.stdin.flush()
            session.stdout.readline()
            t1 = time.time()
            session.stdin.close()
            session.wait(timeout=30)
        else:
            t1 = time.time()
    return t0, t1, {"freeze_ms": (t_thawed - t_freeze) * 1000.0, "held_ms": (t1 - t_locked) * 1000.0,
                    "creates": len(ec2.calls("CreateSnapshot"))}


def start_busy(server, seconds):
    """A session running one write statement for ``seconds`` on table ``c`` (the writer never touches it); returns once
    the server runs it."""
    server.sql("CREATE TABLE IF NOT EXISTS w.c (n INT PRIMARY KEY) ENGINE=InnoDB; INSERT IGNORE INTO w.c VALUES (1)")
    busy = subprocess.Popen(server.client() + ["-e", "UPDATE w.c SET n = n + 1 WHERE SLEEP(%g) = 0" % seconds],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10.0
    while time.time() < deadline:
        _rc, out, _err = server.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'UPDATE w.c %'")
        if out.strip() not in ("", "0"):
            time.sleep(0.3)
            return busy
        time.sleep(0.05)
    busy.kill()
    raise SystemExit("the long write statement did not start: %s" % busy.stderr.read())


def measure(approach, workdir, inst, ec2, server, writer, threshold_ms, busy_s=0.0):
    settle(writer, 0.5)
    ec2.clear_calls()
    started = time.time()
    busy = start_busy(server, busy_s) if busy_s > 0 else None
    try:
        if approach == "ours":
            t0, t1, row = run_ours(workdir, inst, ec2, server)
        else:
            t0, t1, row = run_stock(inst, ec2, server)
    finally:
        if busy is not None:
            busy.wait(timeout=busy_s + 60)
    busy_ran = time.time() - started if busy is not None else 0.0
    writer.wait_for(len(writer.done) + 10)
    time.sleep(AFTER_S)
    row["max_gap_ms"], row["over_ms"], row["commits"] = stall(writer, t0, t1, threshold_ms)
    row["wall_s"] = t1 - t0
    row["busy_s"] = busy_ran  # from its start to its end (its statement, and the client around it)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--volumes", default="2,4")
    parser.add_argument("--threshold-ms", type=float, default=25.0)
    parser.add_argument("--call-latency-ms", type=int, default=0,
                        help="added by the endpoint to every CreateSnapshot and CreateSnapshots call (default 0: the "
                             "local endpoint answers in a few ms; EC2's own latency is not modelled)")
    parser.add_argument("--busy-s", type=float, default=0.0,
                        help="a write statement on another table runs this many seconds when each backup starts "
                             "(0: none)")
    args = parser.parse_args()
    missing = mariadb_missing()
    if missing:
        raise SystemExit("benchmark needs loop filesystems and MariaDB: %s" % missing)
    counts = [int(x) for x in args.volumes.split(",")]
    approaches = ("ours", "stock")
    table, baseline = {}, {}
    ec2 = Endpoint()
    with tempfile.TemporaryDirectory(prefix="stillpoint-bench-app-") as workdir:
        ec2.start(os.path.join(workdir, "ec2"), pending_seconds=0)
        try:
            for action in ("CreateSnapshot", "CreateSnapshots"):
                ec2.latency(action, args.call_latency_ms)
            for n in counts:
                with EmulatedInstance(ec2, n=n, size_mb=256, layout="filesystems") as inst:
                    server = writer = None
                    try:
                        server = make_server(inst)
                        writer = server.writer()
                        writer.start()
                        writer.wait_for(50)
                        t0 = time.time()
                        settle(writer, 2.0)
                        baseline[n] = stall(writer, t0, time.time() - AFTER_S, args.threshold_ms)
                        base_gaps = [(t - p) * 1000.0 for (_a, p), (_b, t) in zip(writer.done, writer.done[1:])
                                     if t >= t0]
                        baseline[n] += (statistics.median(base_gaps),)
                        runs = dict((a, []) for a in approaches)
                        for rep in range(args.runs):
                            order = approaches if rep % 2 == 0 else tuple(reversed(approaches))
                            for approach in order:
                                row = measure(approach, pathlib.Path(workdir), inst, ec2, server, writer,
                                              args.threshold_ms, args.busy_s)
                                runs[approach].append(row)
                                print("run %d %-5s %d volumes: longest commit gap %8.1f ms, sum over %g ms %8.1f ms, "
                                      "freeze %7.1f ms, held %7.1f ms, create calls %d%s"
                                      % (rep + 1, approach, n, row["max_gap_ms"], args.threshold_ms, row["over_ms"],
                                         row["freeze_ms"], row["held_ms"], row["creates"],
                                         ", the write statement ran %.2f s" % row["busy_s"] if row["busy_s"] else ""),
                                      flush=True)
                        for approach in approaches:
                            table[(approach, n)] = dict(
                                (key, statistics.median(r[key] for r in runs[approach]))
                                for key in ("max_gap_ms", "over_ms", "freeze_ms", "held_ms", "wall_s", "creates"))
                        writer.finish()
                    finally:
                        if writer is not None and writer.is_alive():
                            writer.stop_event.set()
                            writer.proc.kill()
                        if server is not None:
                            server.cleanup()
        finally:
            ec2.stop()

    print()
    print("median of %d runs; MariaDB writer (one session, two-table transactions, sync_binlog=1) on ext4 loop "
          "filesystems in /tmp, one per volume; endpoint on 127.0.0.1, snapshots complete at once, added call latency %d ms; "
          "%s" % (args.runs, args.call_latency_ms, "a %g s write statement on another table running at each backup"
                  % args.busy_s if args.busy_s > 0 else "no other statement"))
    for n in counts:
        b_max, b_over, b_commits, b_med = baseline[n]
        print("baseline %d volumes (2 s, no backup): median commit %.1f ms, longest %.1f ms, sum over %g ms %.1f ms "
              "(%d commits)" % (n, b_med, b_max, args.threshold_ms, b_over, b_commits))
    header = ("approach", "volumes", "longest gap ms", "sum>%gms ms" % args.threshold_ms, "fs freeze ms",
              "lock held ms", "wall s", "create calls")
    print("%-9s %8s %15s %14s %13s %13s %7s %13s" % header)
    for approach in approaches:
        for n in counts:
            row = table[(approach, n)]
            print("%-9s %8d %15.1f %14.1f %13.1f %13.1f %7.2f %13d" % (
                approach, n, row["max_gap_ms"], row["over_ms"], row["freeze_ms"], row["held_ms"], row["wall_s"],
                row["creates"]))
    print()
    ratios, windows = [], []
    for n in counts:
        ours, stock = table[("ours", n)], table[("stock", n)]
        ratios.append(ours["max_gap_ms"] / stock["max_gap_ms"])
        windows.append(ours["max_gap_ms"] / ours["freeze_ms"])
        print("%d volumes: longest gap ours/stock=%.3f (1/%.1f), sum over threshold ours/stock=%.3f, "
              "ours longest gap / ours freeze window=%.2f" % (
                  n, ratios[-1], 1 / ratios[-1], ours["over_ms"] / stock["over_ms"] if stock["over_ms"] else float("nan"),
                  windows[-1]))
    print("app-stall ratio%s ours/stock=%s; ours/filesystem-freeze-window=%.2f" % (
        " with a %g s write statement" % args.busy_s if args.busy_s > 0 else "",
        " ".join("%.3f (%d volumes)" % (r, n) for r, n in zip(ratios, counts)), max(windows)))


if __name__ == "__main__":
    main()
