# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Freeze window: the stock approach vs host mode vs controller mode, in one run.

Stock (what users write today with amazon.aws): a task running ``fsfreeze -f`` on every
filesystem, one ``amazon.aws.ec2_snapshot`` task per volume (its default ``wait: true``), the thaw
in ``always``. Ours: ``stillpoint.snapshots.ebs_snapshot_set`` in host mode (freeze, one
CreateSnapshots, thaw in one module run) and controller mode (host freezes under the guardian,
controller calls, raw thaw).

All three run against the same local EC2 endpoint (moto server on 127.0.0.1, snapshots complete at
once, as in the issue's stock measurement), on real loop filesystems that this script creates, over
Ansible's local connection. The window is first freeze start -> last thaw end: for stock from
``date +%s%N`` around the fsfreeze commands, for ours from the guardian's monotonic clock.

The runs go in rounds: each round measures every volume count with every approach once (all the
instances exist for the whole run), so that other work on the machine's cores falls on all of them
alike; the figures are the medians over the rounds. (Measuring one volume count's runs, then the
next's, put the 1 and 16 filesystem runs minutes apart: on a shared 2-core machine three runs of
the same code gave a 16/1 ratio of 1.23x, 1.84x and 1.42x.)

The kernel freeze share is the part of the window spent freezing: for stock the fsfreeze loop, for
ours the guardian's ``freeze_span_ms`` (the freeze request to the end of the last FIFREEZE; the
guardian freezes the filesystems of a set at once, see plugins/module_utils/_freeze.py). With
``--layout filesystems`` the script also freezes the same filesystems through the guardian alone, once
with the parallel freeze and once with ``parallel=False`` (one after another, as before), to show
what the parallel freeze changes.

Usage: python benchmarks/freeze_window.py [--runs 5] [--volumes 1,4,16] [--layout array|filesystems]
Prints a table, the ratios (16/1 flatness against the target of 1.5x), and as its last line:
    freeze-window ratio host/stock=<x> controller/stock=<y>        (4 volumes)
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, ".build", "collections"))

# the collection's library, for the guardian-only comparison
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze  # noqa: E402

from tests.ec2_endpoint import Endpoint  # noqa: E402
from tests.support.loopfs import missing_requirements  # noqa: E402
from tests.support.world import EmulatedInstance  # noqa: E402
from tests.support.world import run_playbook  # noqa: E402
from tests.support.world import write_playbook  # noqa: E402


def stock_tasks(ec2, inst):
    mps = " ".join(inst.mountpoints)
    aws = {"endpoint_url": ec2.url, "region": ec2.region}
    return [{
        "name": "stock",
        "block": [
            {"name": "freeze", "ansible.builtin.shell":
                "date +%%s%%N; for m in %s; do fsfreeze -f $m; done; date +%%s%%N" % mps, "register": "fr"},
            {"name": "snapshot",
             "amazon.aws.ec2_snapshot": dict(aws, volume_id="{{ item }}", description="stock benchmark"),
             "loop": inst.volume_ids},
        ],
        "always": [
            {"name": "thaw", "ansible.builtin.shell":
                "for m in $(echo %s | tr ' ' '\\n' | tac); do fsfreeze -u $m; done; date +%%s%%N" % mps,
             "register": "th"},
        ],
    }]


def ours_task(ec2, inst, mode):
    return [{"name": "ours", "stillpoint.snapshots.ebs_snapshot_set": {
        "mode": mode, "mountpoints": inst.mountpoints, "by_id_dir": inst.by_id_dir,
        "endpoint_url": ec2.url, "region": ec2.region, "name": "bench-%s" % mode, "poll_interval": 0.1,
    }}]


def measure(approach, ec2, inst, workdir):
    tasks = stock_tasks(ec2, inst) if approach == "stock" else ours_task(ec2, inst, approach)
    book = write_playbook(workdir, tasks, name="%s.yml" % approach)
    ec2.clear_calls()
    t0 = time.monotonic()
    rc, results, _raw = run_playbook(book, ec2)
    wall = time.monotonic() - t0
    if rc != 0:
        raise SystemExit("%s run failed: %s" % (approach, json.dumps(results, indent=1)[-3000:]))
    if approach == "stock":
        start, frozen = (int(x) for x in results["freeze"]["stdout"].split()[:2])
        end = int(results["thaw"]["stdout"].split()[-1])
        return {"window_ms": (end - start) / 1e6, "wall_s": wall, "creates": len(ec2.calls("CreateSnapshot")),
                "kernel_freeze_ms": (frozen - start) / 1e6, "call_ms": None}
    res = results["ours"]
    freeze = res["freeze"]
    span = freeze.get("freeze_span_ms")
    if span is None and freeze["mounts"] and all("freeze_end" in m for m in freeze["mounts"]):
        # controller mode passes the per-mount instants on, not the span
        span = 1000.0 * (max(m["freeze_end"] for m in freeze["mounts"]) - min(m["freeze_start"] for m in freeze["mounts"]))
    return {"window_ms": res["freeze_window_ms"], "wall_s": wall, "creates": len(ec2.calls("CreateSnapshots")),
            "kernel_freeze_ms": span if span is not None else sum(m["freeze_ms"] for m in freeze["mounts"]),
            "call_ms": res["call_ms"]}


def guardian_only(mountpoints, runs, rest=1.0):
    """Freeze and thaw ``mountpoints`` through the guardian alone (no Ansible, no EC2), parallel and
    ``parallel=False`` in turn: {parallel: (median freeze span ms, median window ms)}. These are the
    benchmark's own loop filesystems.

    A filesystem frozen again right after a thaw freezes in a few ms: the kernel's rcu_sync of its
    freeze locks is still active and skips the RCU grace periods. A playbook run is seconds apart, so
    every run above pays them; here each freeze waits ``rest`` seconds after the last thaw, so that
    both ways pay them too, as in a real backup."""
    plan = _freeze.check_mountpoints(mountpoints)
    spans, windows = {True: [], False: []}, {True: [], False: []}
    for _run in range(runs):
        for parallel in (True, False):
            time.sleep(rest)
            with _freeze.Guardian.start(plan, deadline=30, parallel=parallel) as guardian:
                frozen = guardian.freeze()
                record = guardian.thaw()
            spans[parallel].append(frozen["freeze_span_ms"])
            windows[parallel].append(record["window_ms"])
    return dict((p, (statistics.median(spans[p]), statistics.median(windows[p]))) for p in (True, False))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--volumes", default="1,4,16")
    parser.add_argument("--layout", choices=["array", "filesystems"], default="array",
                        help="array: one filesystem striped over all the volumes (btrfs raid0 on loop devices, the "
                             "issue's multi-volume array); filesystems: one ext4 filesystem per volume")
    parser.add_argument("--image-dir", default="/tmp",
                        help="where the loop images live: /tmp is this machine's disk (every freeze pays a host disk "
                             "flush per filesystem), /dev/shm is memory (the freeze costs what the kernel does, and the "
                             "window shows what the procedure adds)")
    args = parser.parse_args()
    why = missing_requirements()
    if why:
        raise SystemExit("benchmark needs real loop filesystems: %s" % why)
    counts = [int(x) for x in args.volumes.split(",")]
    approaches = ["stock", "host", "controller"]
    table = {}
    direct = {}
    ec2 = Endpoint()
    with tempfile.TemporaryDirectory(prefix="stillpoint-bench-") as workdir:
        ec2.start(os.path.join(workdir, "ec2"), pending_seconds=0)
        try:
            with contextlib.ExitStack() as stack:
                instances = dict((n, stack.enter_context(EmulatedInstance(
                    ec2, n=n, size_mb=16, image_dir=args.image_dir, layout=args.layout))) for n in counts)
                # rounds: every volume count and approach once per round, so that what the machine does meanwhile
                # (other work on its cores) falls on all of them alike, not on one volume count's runs
                runs = dict(((a, n), []) for a in approaches for n in counts)
                for r in range(args.runs):
                    for n in counts:
                        # the instance metadata names the instance being measured (each EmulatedInstance set it
                        # to its own when it was made)
                        ec2.set_imds(instance_id=instances[n].info["instance_id"], az=instances[n].info["az"])
                        for approach in approaches:
                            runs[(approach, n)].append(measure(approach, ec2, instances[n], workdir))
                    print("round %d of %d done" % (r + 1, args.runs), flush=True)
                for (approach, n), done in runs.items():
                    row = dict((key, statistics.median(r[key] for r in done))
                               for key in ("window_ms", "wall_s", "kernel_freeze_ms"))
                    row["call_ms"] = (statistics.median(r["call_ms"] for r in done)
                                      if done[0]["call_ms"] is not None else None)
                    row["creates"] = sorted(set(r["creates"] for r in done))
                    table[(approach, n)] = row
                if args.layout == "filesystems":
                    for n in counts:
                        for parallel, row in guardian_only(instances[n].mountpoints, args.runs).items():
                            direct[(parallel, n)] = row
        finally:
            ec2.stop()

    print()
    print("median of %d runs (in rounds: each volume count and approach once a round), volumes %s, layout %s, loop "
          "images in %s, ansible local connection, endpoint on 127.0.0.1"
          % (args.runs, args.volumes, args.layout, args.image_dir))
    header = ("approach", "volumes", "window ms", "kernel freeze ms", "kernel share", "EC2 call ms", "wall s",
              "create calls/run")
    print("%-11s %8s %11s %17s %12s %12s %8s %17s" % header)
    for approach in approaches:
        for n in counts:
            row = table[(approach, n)]
            call = "%.1f" % row["call_ms"] if row["call_ms"] is not None else "-"
            print("%-11s %8d %11.1f %17.1f %11.0f%% %12s %8.2f %17s" % (
                approach, n, row["window_ms"], row["kernel_freeze_ms"], 100.0 * row["kernel_freeze_ms"] / row["window_ms"],
                call, row["wall_s"], ",".join(str(c) for c in row["creates"])))
    if direct:
        print()
        print("guardian alone (no Ansible, no EC2 call), median of %d, 1 s rest before each freeze: freeze span = "
              "freeze request to last FIFREEZE end" % args.runs)
        print("%8s %24s %26s %22s" % ("volumes", "parallel span/window ms", "sequential span/window ms",
                                      "sequential/parallel"))
        for n in counts:
            (pspan, pwin), (sspan, swin) = direct[(True, n)], direct[(False, n)]
            print("%8d %12.1f / %9.1f %13.1f / %10.1f %21.2fx" % (n, pspan, pwin, sspan, swin, sspan / pspan))
    print()
    for approach in ("host", "controller"):
        if 1 in counts and 16 in counts:
            ratio = table[(approach, 16)]["window_ms"] / table[(approach, 1)]["window_ms"]
            print("flatness %s: 16 volumes / 1 volume = %.2fx (target <= 1.5x: %s)" % (
                approach, ratio, "met" if ratio <= 1.5 else "NOT met"))
            print("kernel freeze %s: 16 volumes / 1 volume = %.2fx (%.1f ms / %.1f ms)" % (
                approach, table[(approach, 16)]["kernel_freeze_ms"] / table[(approach, 1)]["kernel_freeze_ms"],
                table[(approach, 16)]["kernel_freeze_ms"], table[(approach, 1)]["kernel_freeze_ms"]))
    for n in counts:
        stock = table[("stock", n)]["window_ms"]
        print("%2d volumes: host/stock=%.4f (1/%.0f) controller/stock=%.4f (1/%.0f)" % (
            n, table[("host", n)]["window_ms"] / stock, stock / table[("host", n)]["window_ms"],
            table[("controller", n)]["window_ms"] / stock, stock / table[("controller", n)]["window_ms"]))
    ref = 4 if 4 in counts else counts[0]
    stock = table[("stock", ref)]["window_ms"]
    print("freeze-window ratio host/stock=%.4f controller/stock=%.4f" % (
        table[("host", ref)]["window_ms"] / stock, table[("controller", ref)]["window_ms"] / stock))


if __name__ == "__main__":
    main()
