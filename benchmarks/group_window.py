# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Group window: each host's freeze window in a consistency group of 3 hosts vs a single host's, in one run.

Three emulated instances on this host (one ext4 loop filesystem each, volumes at the local EC2 endpoint),
one inventory host each, ``ansible_connection=local``. Single: playbooks/backup.yml on one of them, host mode,
no group. Group: the same playbook over the three with ``array_backup_group=true`` (clock measured, each host
ready, then armed, each host frozen from the instant - lead to the instant + hold on its own clock, sealed). The window is the guardian's
(freeze request to thaw end), as ebs_snapshot_set reports it (``freeze_window_ms``).

Target (issue 18): p99 host window in a 3-host group <= 3x the single-host window.

Usage: python benchmarks/group_window.py [--runs 5] [--arm 5] [--lead MS] [--hold MS]
Last line: ``group-window ratio p99-group/single-median=<x> (target <= 3)``
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.ec2_endpoint import Endpoint  # noqa: E402
from tests.support.world import EmulatedInstance  # noqa: E402
from tests.support.world import run_playbook  # noqa: E402
from tests.support.world import task_hosts  # noqa: E402

BACKUP = os.path.join(ROOT, "playbooks", "backup.yml")
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
GROUP_TAKE = ("Collect this host's member of the group (ready, armed, frozen at the instant, one CreateSnapshots call, "
              "thaw, wait, mark complete)")
SEAL = "Seal the group (the common instant from the hosts' frozen intervals and clocks, or all sets deleted)"
HOSTS = ("g1", "g2", "g3")


def per_host(raw, name):
    """The task's results per host, or none when the run stopped before it (a failed run is counted, not raised)."""
    try:
        return task_hosts(raw, name)
    except AssertionError:
        return {}


def inventory(workdir, instances):
    hosts = dict((name, {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                         "ansible_async_dir": os.path.join(workdir, "async"),  # see tests/integration/test_group.py
                         "array_backup_instance_id": inst.instance_id, "array_backup_mountpoints": inst.mountpoints,
                         "array_backup_by_id_dir": inst.by_id_dir}) for name, inst in zip(HOSTS, instances))
    path = os.path.join(workdir, "inventory.json")
    with open(path, "w") as handle:
        json.dump({"shards": {"hosts": hosts}, "single": {"hosts": {"g1": {}}}}, handle)
    return path


def p99(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def explain(run, seal, members):
    """Why a group was not consistent: the seal's problems, then each host's interval on the controller's time line
    (relative to the instant it was armed with) beside its own record (late start, freeze end after the instant)."""
    print("run %d: group %s: %s" % (run, seal.get("verdict"), "; ".join(seal.get("problems") or [seal.get("msg") or "no seal"])))
    hosts = seal.get("hosts") or {}
    for name in sorted(set(hosts) | set(members)):
        rec, own = hosts.get(name) or {}, (members.get(name) or {}).get("group") or {}
        instant = own.get("instant")
        frozen = rec.get("frozen") or [None, None]
        print("  %s: offset %s ms +- %s ms; frozen (controller time, from the instant) %s .. %s ms; late start %s ms, "
              "freeze returned %s ms after the instant, window %s ms, presync %s" % (
                  name, rec.get("offset_ms"), rec.get("error_ms"),
                  *["%.1f" % ((t - instant) * 1000.0) if t is not None and instant is not None else "-" for t in frozen],
                  own.get("late_ms"), own.get("frozen_after_instant_ms"), own.get("window_ms"),
                  json.dumps(own.get("presync"))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--arm", type=float, default=5.0, help="array_backup_group_arm_s (armed once the hosts are ready)")
    parser.add_argument("--lead", type=float, default=None, help="array_backup_group_lead_ms (default: the role's)")
    parser.add_argument("--hold", type=float, default=None, help="array_backup_group_hold_ms (default: the role's)")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="stillpoint-group-bench-")
    ec2 = Endpoint()
    ec2.start(os.path.join(workdir, "ec2"))
    instances = []
    try:
        instances = [EmulatedInstance(ec2, n=1, size_mb=64, fstype="ext4", local=True).create() for _h in HOSTS]
        inv = inventory(workdir, instances)
        common = {"backup_become": False, "array_backup_keep_last": 0, "array_backup_poll_interval": 0.2,
                  "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region}
        single, grouped, margins, verdicts, waited = [], [], [], [], []
        for run in range(args.runs):
            rc, _res, raw = run_playbook(BACKUP, ec2, dict(common, backup_hosts="single", array_backup_name="single"),
                                         inventory=inv)
            if rc != 0:
                raise SystemExit("single-host run %d failed" % run)
            single.extend(r["freeze_window_ms"] for r in per_host(raw, TAKE).values())
            rc, _res, raw = run_playbook(BACKUP, ec2, dict(common, backup_hosts="shards", array_backup_name="group",
                                                           array_backup_group=True, array_backup_group_arm_s=args.arm,
                                                           **dict((k, v) for k, v in (("array_backup_group_lead_ms", args.lead),
                                                                                      ("array_backup_group_hold_ms", args.hold)) if v)),
                                         inventory=inv)
            seal = next(iter(per_host(raw, SEAL).values()), {})
            verdicts.append(seal.get("verdict"))
            if seal.get("verdict") != "consistent":
                explain(run, seal, per_host(raw, GROUP_TAKE))
            if seal.get("margin_ms") is not None:
                margins.append(seal["margin_ms"])
            grouped.extend(r["freeze_window_ms"] for r in per_host(raw, GROUP_TAKE).values() if r.get("freeze_window_ms"))
            waited.extend(r["group"]["waited_ms"] for r in per_host(raw, GROUP_TAKE).values() if r.get("group"))
    finally:
        for inst in instances:
            inst.cleanup()
        ec2.stop()
    base = statistics.median(single)
    print("%-34s %8s %8s %8s %6s" % ("approach", "median", "p99", "max", "n"))
    print("%-34s %8.1f %8.1f %8.1f %6d" % ("single host (ms)", base, p99(single), max(single), len(single)))
    print("%-34s %8.1f %8.1f %8.1f %6d" % ("3-host group, each host (ms)", statistics.median(grouped), p99(grouped),
                                           max(grouped), len(grouped)))
    print("group verdicts: %s; margins (ms): %s" % (", ".join(str(v) for v in verdicts),
                                                    ", ".join("%.1f" % m for m in margins)))
    if waited:
        print("slack left of the arming (each host's wait, with its instant, for the freeze), ms: min %.0f, median %.0f"
              % (min(waited), statistics.median(waited)))
    print("group-window ratio p99-group/single-median=%.2f (target <= 3)" % (p99(grouped) / base))


if __name__ == "__main__":
    main()
