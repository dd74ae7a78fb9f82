# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet run: stock amazon.aws vs ebs_snapshot_set over many instances, against EC2's token buckets.

The local EC2 endpoint (tests/ec2_endpoint, moto's server on 127.0.0.1) with its token buckets on
(tests/ec2_endpoint/_buckets.py: EC2's documented sizes and refill rates per action category, one
bucket per account and Region shared by every client; ``--scale`` multiplies every size and refill
rate, and every figure below is computed in that scale). ``--instances`` emulated instances with 4
data volumes each; they only take snapshots (no loop devices, no freeze): each host is an inventory
host on Ansible's local connection carrying its ``instance_id`` and ``volume_ids``.

Driven as AWX would: the inventory split in ``--slices`` job slices (AWX's split: host i goes to
slice i mod N), each slice one ``ansible-playbook -f FORKS`` run, all slices at once. Both approaches
in one run, one after the other, each starting with full buckets (the buckets and their per-volume
memory are reset in between):

* stock: ``amazon.aws.ec2_snapshot`` once per volume (a loop over the host's volumes, its default
  ``wait: true``), what users write today;
* ours: ``stillpoint.snapshots.ebs_snapshot_set`` in controller mode with ``volume_ids`` (one
  CreateSnapshots per host, its DryRun probe before the call, ``max_freeze_cycles`` as given), its
  pacer told the CreateSnapshots bucket's numbers in the endpoint's scale (plugins/plugin_utils/_pacer.py:
  one bucket per slice, shared by the slice's forks; the slices do not know of each other);
* ours-nopacer (``--approaches stock,ours-nopacer,ours``): the same with ``pacer: {enabled: false}``.
* ours-split (``--approaches ours,ours-split``): the same with ``pacer: {slices: N}`` (N = ``--slices``): each
  slice's pacer takes 1/N of the bucket, as an AWX job template with ``job_slice_count`` N would be set up.

Per approach: wall time (first slice started to last slice ended); the window per host, median and
p99: for ours what the module reports (the CreateSnapshots call's ``call_ms`` in each freeze cycle,
summed: with ``freeze: true`` that is what the filesystems would stay frozen beyond the freeze and
thaw themselves), for stock the span from the first to the last CreateSnapshot request of the
host's volumes as the endpoint logged them (what a freeze around them would cost at least); freeze
cycles per set; throttled requests as the endpoint counted them (all actions, and those inside a
window: a real CreateSnapshot(s) answered RequestLimitExceeded or
SnapshotCreationPerVolumeRateExceeded); sets complete. Then the best wall time the buckets allow
for the requests the approach needs (per bucket: (tokens - size) / refill, the largest), and the
issue's targets as ratios: every set complete, freeze cycles per set <= 1.05, p99 window <= 2x the
single-host window (one host alone, measured in the same run before the fleet), wall <= 1.5x the
bucket bound.

Usage: python benchmarks/fleet.py [--instances 200] [--forks 25] [--slices 4] [--scale 1.0] [--quick]
                                 [--approaches stock,ours] [--max-freeze-cycles 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.ec2_endpoint import Endpoint  # noqa: E402
from tests.ec2_endpoint import _buckets  # noqa: E402
from tests.support.world import ansible_env  # noqa: E402

DEVICES = ("/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi")
THROTTLES = ("RequestLimitExceeded", "SnapshotCreationPerVolumeRateExceeded")
SNAPSHOT_CALLS = ("CreateSnapshot", "CreateSnapshots")
POLLS = ("DescribeSnapshots",)  # waiting: at best one request per snapshot (stock) or set (ours)
APPROACHES = ("stock", "ours-nopacer", "ours", "ours-split")


def build_fleet(ec2, count, prefix):
    hosts = []
    for i in range(count):
        inst = ec2.create_instance(volumes=[{"size": 1, "device": d} for d in DEVICES])
        hosts.append({"name": "%s-%03d" % (prefix, i), "instance_id": inst["instance_id"],
                      "volume_ids": [v["volume_id"] for v in inst["volumes"]]})
    return hosts


def write_inventory(path, hosts):
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                         "hosts": dict((h["name"], {"instance_id": h["instance_id"], "volume_ids": h["volume_ids"]})
                                       for h in hosts)}}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(inventory, handle, indent=1)
    return path


def write_playbooks(workdir, ec2, args):
    aws = {"endpoint_url": ec2.url, "region": ec2.region}
    ours = dict(aws, mode="controller", instance_id="{{ instance_id }}", volume_ids="{{ volume_ids }}", freeze=False,
                name="fleet", poll_interval=3.0, max_freeze_cycles=args.max_freeze_cycles)
    size, refill = _buckets.UNCATEGORIZED["CreateSnapshots"]
    if args.scale != 1.0:  # the time budget in the same scale: 60 s at EC2's rates
        ours["throttle_wait"] = 60.0 / args.scale
    paced = {"size": int(max(1, round(size * args.scale))), "refill": refill * args.scale}
    tasks = {
        "stock": {"name": "snapshot", "loop": "{{ volume_ids }}", "amazon.aws.ec2_snapshot": dict(
            aws, volume_id="{{ item }}", description="fleet stock {{ inventory_hostname }}",
            snapshot_tags={"fleet": "{{ inventory_hostname }}"})},
        # the pacer told the bucket's numbers in the endpoint's scale (EC2's documented ones at scale 1)
        "ours": {"name": "snapshot", "stillpoint.snapshots.ebs_snapshot_set": dict(ours, pacer=paced)},
        "ours-nopacer": {"name": "snapshot", "stillpoint.snapshots.ebs_snapshot_set": dict(
            ours, pacer={"enabled": False})},
        # the same, each slice's pacer told it is one of --slices runs (pacer.slices: 1/N of the bucket each)
        "ours-split": {"name": "snapshot", "stillpoint.snapshots.ebs_snapshot_set": dict(
            ours, pacer=dict(paced, slices=args.slices))},
    }
    paths = {}
    for approach, task in tasks.items():
        paths[approach] = os.path.join(workdir, "%s.yml" % approach)
        with open(paths[approach], "w", encoding="utf-8") as handle:
            json.dump([{"name": approach, "hosts": "all", "gather_facts": False, "tasks": [task]}], handle, indent=1)
    return paths


def run_slices(ec2, playbook, inventories, args, workdir, tag):
    """Every slice at once (under ``nice -n args.nice``); returns (wall seconds, {host: task result}, [rc])."""
    env = ansible_env(ec2, {"ANSIBLE_PIPELINING": "True", "ANSIBLE_FORKS": str(args.forks)})
    cmd = ["nice", "-n", str(args.nice), os.path.join(os.path.dirname(sys.executable), "ansible-playbook")]
    forks = args.forks
    procs = []
    t0 = time.monotonic()
    for k, inventory in enumerate(inventories):
        out = open(os.path.join(workdir, "%s-slice%d.json" % (tag, k)), "w+", encoding="utf-8")
        err = open(os.path.join(workdir, "%s-slice%d.err" % (tag, k)), "w+", encoding="utf-8")
        procs.append((subprocess.Popen(cmd + ["-i", inventory, "-f", str(forks), playbook], cwd=ROOT, env=env,
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=err), out, err))
    rcs = [proc.wait() for proc, _out, _err in procs]
    wall = time.monotonic() - t0
    results = {}
    for (proc, out, err), rc in zip(procs, rcs):
        out.seek(0)
        lines = out.read().splitlines()
        start = next((i for i, line in enumerate(lines) if line == "{"), None)
        if start is None:
            err.seek(0)
            raise SystemExit("%s: ansible-playbook rc=%s printed no JSON:\n%s" % (tag, rc, err.read()[-3000:]))
        data = json.loads("\n".join(lines[start:]))
        for play in data.get("plays", []):
            for task in play.get("tasks", []):
                results.update(task.get("hosts", {}))
        out.close()
        err.close()
    return wall, results, rcs


def percentile(values, q):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, int(math.ceil(q / 100.0 * len(ordered))) - 1)]


def bucket_of(call, scale):
    name, size, refill = _buckets.category(call["action"], call["params"])
    return ("%s/%s" % (call["action"], name)), max(1.0, round(size * scale)), refill * scale


def bucket_bound(calls, units, scale):
    """Best wall time the buckets allow for the accepted requests of a run: per bucket
    max(0, (tokens - size) / refill), tokens = requests accepted (DescribeSnapshots: one per ``units``,
    at best one poll per snapshot or set). Returns (seconds, binding bucket, {bucket: (tokens, size, refill)})."""
    tokens = {}
    for call in calls:
        if call.get("error_code") in THROTTLES:
            continue  # a throttled request takes no token
        key, size, refill = bucket_of(call, scale)
        entry = tokens.setdefault(key, [0, size, refill, call["action"]])
        entry[0] += 1
    bound, binding = 0.0, None
    for key, entry in tokens.items():
        if entry[3] in POLLS:
            entry[0] = min(entry[0], units)
        need = max(0.0, (entry[0] - entry[1]) / entry[2])
        if need >= bound:
            bound, binding = need, key
    return bound, binding, dict((k, tuple(v[:3])) for k, v in tokens.items())


def host_windows(approach, hosts, results, calls):
    """{host: window ms}, {host: freeze cycles}, {host: complete}, {host: window ms at the endpoint}."""
    windows, cycles, complete, server = {}, {}, {}, {}
    by_volume = dict((v, h["name"]) for h in hosts for v in h["volume_ids"])
    if approach == "stock":
        spans = {}
        for call in calls:
            if call["action"] == "CreateSnapshot" and not call.get("dry_run"):
                host = by_volume.get(call["params"].get("VolumeId"))
                if host is None:
                    continue
                first, last = spans.get(host, (call["t_start"], call["t_end"]))
                spans[host] = (min(first, call["t_start"]), max(last, call["t_end"]))
        for h in hosts:
            res = results.get(h["name"]) or {}
            items = res.get("results") or []
            complete[h["name"]] = len(items) == len(h["volume_ids"]) and not any(i.get("failed") for i in items)
            if h["name"] in spans:
                windows[h["name"]] = 1000.0 * (spans[h["name"]][1] - spans[h["name"]][0])
            cycles[h["name"]] = 1  # one freeze around the tasks (botocore retries a throttle inside it)
        return windows, cycles, complete, dict(windows)
    by_instance = dict((h["instance_id"], h["name"]) for h in hosts)
    for call in calls:
        if call["action"] == "CreateSnapshots" and not call.get("dry_run"):
            host = by_instance.get(call["params"].get("InstanceSpecification.InstanceId"))
            if host is not None:
                server[host] = server.get(host, 0.0) + 1000.0 * (call["t_end"] - call["t_start"])
                cycles[host] = cycles.get(host, 0) + 1  # one real call per freeze cycle, failed sets included
    for h in hosts:
        res = results.get(h["name"]) or {}
        intervals = res.get("freeze_intervals") or []
        if intervals:
            windows[h["name"]] = sum(i.get("call_ms") or 0.0 for i in intervals)
        cycles.setdefault(h["name"], 0)
        complete[h["name"]] = res.get("state") == "complete" and not res.get("failed")
    return windows, cycles, complete, server


def measure(ec2, approach, playbook, hosts, inventories, args, workdir, tag):
    ec2.buckets(reset=True, on=True, scale=args.scale)
    ec2.clear_calls()
    wall, results, rcs = run_slices(ec2, playbook, inventories, args, workdir, tag)
    calls = ec2.calls(dry_run=True)
    state = ec2.buckets()
    windows, cycles, complete, server = host_windows(approach, hosts, results, calls)
    units = len(hosts) * (len(DEVICES) if approach == "stock" else 1)
    bound, binding, tokens = bucket_bound(calls, units, args.scale)
    in_window = [c for c in calls if c["action"] in SNAPSHOT_CALLS and not c.get("dry_run")
                 and c.get("error_code") in THROTTLES]
    waits = [(results.get(h["name"]) or {}).get("pacer", {}).get("waited_s") for h in hosts]
    failures = sorted(set((results.get(h["name"]) or {}).get("msg", "no result")[:160]
                          for h in hosts if not complete[h["name"]]))
    return {"wall_s": wall, "rcs": rcs, "windows": windows, "cycles": cycles, "complete": complete, "server": server,
            "throttled": sum(state["throttled"].values()), "throttled_by": state["throttled"],
            "throttled_in_window": len(in_window), "bound_s": bound, "binding": binding, "tokens": tokens,
            "requests": len(calls), "failures": failures, "pacer_waits": [w for w in waits if w is not None]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--forks", type=int, default=25)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies every bucket size and refill rate of the endpoint (1.0: EC2's documented numbers)")
    parser.add_argument("--max-freeze-cycles", type=int, default=3, help="ebs_snapshot_set's max_freeze_cycles")
    parser.add_argument("--solo-runs", type=int, default=3, help="single-host runs per approach (median)")
    parser.add_argument("--pending-seconds", type=float, default=1.0, help="how long a new snapshot stays pending")
    parser.add_argument("--nice", type=int, default=19,
                        help="niceness of the ansible-playbook runs: the emulated EC2 endpoint shares this machine's CPU "
                             "with the emulated fleet and its controller, and must not starve behind them")
    parser.add_argument("--quick", action="store_true", help="20 instances (a fast check)")
    parser.add_argument("--approaches", default="stock,ours",
                        help="comma-separated, in order, from: %s (ours-nopacer: ours with pacer.enabled false; "
                             "ours-split: ours with pacer.slices = --slices)" % ", ".join(APPROACHES))
    args = parser.parse_args()
    if args.quick:
        args.instances = 20
    approaches = [a for a in args.approaches.split(",") if a]
    if not approaches or any(a not in APPROACHES for a in approaches):
        parser.error("--approaches: choose from %s" % ", ".join(APPROACHES))
    ec2 = Endpoint()
    table, solo = {}, {}
    with tempfile.TemporaryDirectory(prefix="stillpoint-fleet-") as workdir:
        ec2.start(os.path.join(workdir, "ec2"), pending_seconds=args.pending_seconds)
        try:
            playbooks = write_playbooks(workdir, ec2, args)
            for approach in approaches:
                # every approach on a fresh endpoint (no snapshots of the one before to filter through)
                ec2.reset(state=True)
                t0 = time.monotonic()
                fleet = build_fleet(ec2, args.instances, "fleet")
                alone = build_fleet(ec2, 1, "solo")
                print("%s: built %d instances x %d volumes (+1 single-host) in %.1f s" % (
                    approach, args.instances, len(DEVICES), time.monotonic() - t0), flush=True)
                inventories = [write_inventory(os.path.join(workdir, "slice%d.json" % k), fleet[k::args.slices])
                               for k in range(args.slices)]
                inventory = write_inventory(os.path.join(workdir, "solo.json"), alone)
                runs = []
                for r in range(args.solo_runs):
                    m = measure(ec2, approach, playbooks[approach], alone, [inventory], args, workdir,
                                "solo-%s-%d" % (approach, r))
                    if not all(m["complete"].values()):
                        raise SystemExit("single-host %s run failed: %s" % (approach, m["failures"]))
                    runs.extend(m["windows"].values())
                solo[approach] = statistics.median(runs)
                print("single host %-12s: window %.1f ms (median of %d)" % (approach, solo[approach], len(runs)),
                      flush=True)
                table[approach] = measure(ec2, approach, playbooks[approach], fleet, inventories, args, workdir, approach)
                row = table[approach]
                print("fleet %-12s: wall %.1f s, %d/%d sets complete, %d throttled (%d inside a window), rcs %s" % (
                    approach, row["wall_s"], sum(row["complete"].values()), len(fleet), row["throttled"],
                    row["throttled_in_window"], row["rcs"]), flush=True)
        finally:
            ec2.stop()
    report(args, table, solo, len(fleet))


def report(args, table, solo, count):
    print()
    print("%d instances x %d volumes, %d slices at once x %d forks (ansible-playbook under nice %d, local connection, pipelining), "
          "endpoint buckets on at scale %g (sizes and refill rates x %g), snapshots pending %.1f s, "
          "ours: controller mode, volume_ids, max_freeze_cycles %d" % (
              count, len(DEVICES), args.slices, args.forks, args.nice, args.scale, args.scale, args.pending_seconds,
              args.max_freeze_cycles))
    header = ("approach", "wall s", "bound s", "wall/bound", "window med ms", "window p99 ms", "solo ms",
              "p99/solo", "cycles/set", "throttled", "in window", "complete")
    print("%-12s %8s %8s %10s %13s %13s %9s %8s %10s %9s %9s %9s" % header)
    for approach, row in table.items():
        values = list(row["windows"].values()) or [float("nan")]
        cycles = list(row["cycles"].values())
        row["p99"] = percentile(values, 99)
        row["cycles_per_set"] = sum(cycles) / float(len(cycles)) if cycles else float("nan")
        print("%-12s %8.1f %8.1f %9.2fx %13.1f %13.1f %9.1f %7.2fx %10.3f %9d %9d %5d/%d" % (
            approach, row["wall_s"], row["bound_s"], row["wall_s"] / row["bound_s"] if row["bound_s"] else float("inf"),
            statistics.median(values), row["p99"], solo[approach], row["p99"] / solo[approach], row["cycles_per_set"],
            row["throttled"], row["throttled_in_window"], sum(row["complete"].values()), count))
    print()
    for approach, row in table.items():
        print("%s: bucket bound %.1f s set by %s; tokens taken (bucket: tokens, size, refill/s): %s" % (
            approach, row["bound_s"], row["binding"], ", ".join(
                "%s: %d, %g, %g" % (k, v[0], v[1], v[2]) for k, v in sorted(row["tokens"].items()))))
        print("%s: throttled by the endpoint: %s" % (approach, json.dumps(row["throttled_by"], sort_keys=True)))
        server = list(row["server"].values()) or [float("nan")]
        print("%s: window at the endpoint (request arrival to answer, summed over cycles) median %.1f ms, p99 %.1f ms%s" % (
            approach, statistics.median(server), percentile(server, 99),
            "; pacer waits before the probe (outside any window) median %.2f s, max %.2f s" % (
                statistics.median(row["pacer_waits"]), max(row["pacer_waits"])) if row["pacer_waits"] else ""))
        if row["failures"]:
            print("%s: failures: %s" % (approach, " | ".join(row["failures"][:5])))
    print()
    for approach, row in table.items():
        checks = [
            ("every set complete", sum(row["complete"].values()) == count,
             "%d/%d" % (sum(row["complete"].values()), count)),
            ("freeze cycles/set <= 1.05", row["cycles_per_set"] <= 1.05, "%.3f" % row["cycles_per_set"]),
            ("p99 window <= 2x single host", row["p99"] <= 2.0 * solo[approach],
             "%.2fx" % (row["p99"] / solo[approach])),
            ("wall <= 1.5x bucket bound", row["bound_s"] > 0 and row["wall_s"] <= 1.5 * row["bound_s"],
             "%.2fx" % (row["wall_s"] / row["bound_s"]) if row["bound_s"] else "bound 0"),
        ]
        verdicts = ["%s: %s (%s)" % (name, "met" if ok else "NOT met", value) for name, ok, value in checks]
        print("targets %s: %s" % (approach, "; ".join(verdicts)))


if __name__ == "__main__":
    main()
