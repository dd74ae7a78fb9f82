# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore of a backup set onto two nodes: the stock amazon.aws way vs playbooks/restore.yml, in one run.

Both run against the same local EC2 endpoint (moto server on 127.0.0.1, snapshots complete at once,
attachments ``attaching``/``detaching`` for --attach-seconds/--detach-seconds, as on EC2 but
shorter). Each node is an ``EmulatedInstance(local=True)``: its volumes are loop devices that the
endpoint attaches and detaches for real, so a restore brings the backup's bytes back onto the
node's mountpoints. The two nodes are two hosts of one inventory (local connection), so Ansible
works on them in parallel, as on real nodes.

Stock (what users write today with amazon.aws only), per node: look up what is attached at the
set's device names (``ec2_instance_info``), ``ec2_vol`` create per member from its snapshot in the
node's AZ (no name), unmount, ``ec2_vol`` detach per old volume (``instance: None``), ``ec2_vol``
attach per new volume, mount. The snapshot of each device comes from the catalog; a stock user
would look it up by hand, so the playbook gets it as variables and is not charged for it. Ours:
``playbooks/restore.yml`` with ``array_restore_set_id`` per host.

Every run of each approach starts from the same state: known data written, a fresh backup set per
node taken with ``playbooks/backup.yml`` (its members are the volumes attached now), the data
destroyed; then the restore, the checksums compared with the backup's, and the same playbook
again (the re-run), whose EC2 calls and new volumes are counted. The approaches alternate in
order from run to run.

Downtime per node (from the endpoint's call log, monotonic clock): the node's first DetachVolume
request -> its last attachment confirmed, i.e. the end of the last DescribeVolumes call naming one
of the node's new volumes after its AttachVolume calls (ours: the swap's own confirming poll; stock:
ec2_vol's last call of its last attach), but never before the endpoint turns the last attachment
``attached`` (ec2_vol's VolumeInUse waiter accepts ``in-use``, which EC2 reports while still
``attaching``). Ours is cross-checked with the ``downtime_ms`` that ebs_volume_swap returns.

Usage: python benchmarks/restore.py [--nodes 2] [--volumes 4] [--runs 3] [--layout filesystems]
Prints a table, the ratios, and as its last line:
    restore downtime ratio ours/stock=<x> re-run creates stock=<n> ours=<m> detaches stock=<a> ours=<b>
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.ec2_endpoint import Endpoint  # noqa: E402
from tests.ec2_endpoint.imds import ImdsServer  # noqa: E402
from tests.support.loopfs import missing_requirements  # noqa: E402
from tests.support.world import LINK_PREFIX  # noqa: E402
from tests.support.world import EmulatedInstance  # noqa: E402
from tests.support.world import checksum  # noqa: E402
from tests.support.world import destroy  # noqa: E402
from tests.support.world import write_data  # noqa: E402
from tests.support.world import ansible_env  # noqa: E402

BACKUP = os.path.join(ROOT, "playbooks", "backup.yml")
RESTORE = os.path.join(ROOT, "playbooks", "restore.yml")
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
SWAP = "Swap the volumes at the recorded device names"
DOWN = "Take the filesystems down on the host (stop the application, unmount, deactivate)"
UP = "Bring the filesystems up on the restored volumes (assemble, activate, verify, mount, start)"
COUNTED = ("CreateVolume", "DetachVolume", "AttachVolume")
APPROACHES = ("stock", "ours")
NAMESPACE_MARK = "STILLPOINT_BENCH_PRIVATE_MOUNTS"


# --------------------------------------------------------------------------- ansible with an inventory

def run_inventory(playbook, ec2, inventory, extravars=None, timeout=1800):
    """ansible-playbook -i ``inventory``; returns (rc, {host: {task name: result}}, raw json, wall seconds)."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory, playbook]
    if not os.path.exists(cmd[0]):
        cmd[0] = "ansible-playbook"
    if extravars:
        cmd += ["-e", json.dumps(extravars)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(ec2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, check=False)
    wall = time.monotonic() - t0
    lines = proc.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line == "{"), 0)
    try:
        raw = json.loads("\n".join(lines[start:]))
    except ValueError as e:
        raise SystemExit("ansible-playbook output is not JSON (rc=%s)\nstdout:\n%s\nstderr:\n%s"
                         % (proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:])) from e
    results = {}
    for play in raw.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in task.get("hosts", {}).items():
                results.setdefault(host, {})[short(task["task"]["name"])] = res
    return proc.returncode, results, raw, wall


def short(name):
    """A role task's name without its ``role : `` prefix."""
    return name.split(" : ", 1)[1] if " : " in name else name


def write_inventory(workdir, hostvars, name):
    """A YAML inventory (written as JSON, which is YAML): every host local, with its own variables."""
    path = os.path.join(workdir, name)
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                         "hosts": hostvars}}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(inventory, handle, indent=1)
    return path


def task_window(raw, first, last):
    """Wall seconds from the start of task ``first`` to the end of task ``last`` (linear strategy: the
    start is the same for every host, the end is the last host's)."""
    found = {}
    for play in raw.get("plays", []):
        for task in play.get("tasks", []):
            found.setdefault(short(task["task"]["name"]), task["task"]["duration"])
    return _iso(found[last]["end"]) - _iso(found[first]["start"])


def _iso(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- data on the nodes


def check_mounted(nodes):
    """Every node's mountpoints are mounted (a restore must leave them so)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        mounted = set(line.split()[4] for line in handle)
    gone = [mp for inst in nodes.values() for mp in inst.mountpoints if mp not in mounted]
    if gone:
        raise SystemExit("not mounted any more: %s. Something outside this benchmark unmounted them (see "
                         "--shared-mounts)" % ", ".join(gone))


def verified(sums):
    return all(checksum(path) == digest for path, digest in sums.items())


# --------------------------------------------------------------------------- the two approaches

def aws_args(ec2):
    return {"endpoint_url": ec2.url, "region": ec2.region}


def stock_playbook(ec2, workdir):
    """The restore with amazon.aws modules only; node specifics come from host variables."""
    aws = aws_args(ec2)
    wait = ('w() { n=0; until [ -b "$1" ]; do n=$((n+1)); [ $n -le 1200 ] || { echo "no device at $1" >&2; '
            'return 1; }; sleep 0.05; done; readlink -f "$1"; }\n')
    links = ("{% for r in created.results %}d{{ loop.index0 }}=$(w {{ stock_by_id_dir }}/" + LINK_PREFIX
             + "{{ r.volume_id | replace('-', '') }})\n{% endfor %}")
    mounts = ("{% if stock_layout == 'array' %}"
              "mount -t btrfs -o {% for r in created.results %}device=$d{{ loop.index0 }}{{ '' if loop.last else ',' }}"
              "{% endfor %} $d0 {{ stock_mountpoints[0] }}\n"
              "{% else %}{% for r in created.results %}mount $d{{ loop.index0 }} "
              "{{ stock_mountpoint_of[r.item.device] }}\n{% endfor %}{% endif %}")
    bdm = "found.instances[0].block_device_mappings"
    tasks = [
        {"name": "look up what is attached now", "register": "found",
         "amazon.aws.ec2_instance_info": dict(aws, instance_ids=["{{ stock_instance }}"])},
        {"name": "current volume per device", "ansible.builtin.set_fact": {
            "current": "{{ dict(%s | map(attribute='device_name') | zip(%s | map(attribute='ebs.volume_id'))) }}"
                       % (bdm, bdm)}},
        {"name": "create", "register": "created", "loop": "{{ stock_members }}",
         "amazon.aws.ec2_vol": dict(aws, snapshot="{{ item.snapshot }}", zone="{{ stock_az }}", volume_type="gp3")},
        {"name": "unmount", "ansible.builtin.shell": "umount {{ stock_mountpoints | reverse | join(' ') }}"},
        {"name": "detach", "loop": "{{ stock_members }}",
         "amazon.aws.ec2_vol": dict(aws, id="{{ current[item.device] }}", instance="None")},
        {"name": "attach", "loop": "{{ created.results }}",
         "amazon.aws.ec2_vol": dict(aws, id="{{ item.volume_id }}", instance="{{ stock_instance }}",
                                    device_name="{{ item.item.device }}")},
        {"name": "mount", "ansible.builtin.shell": {"cmd": "set -e\n" + wait + links + mounts,
                                                    "executable": "/bin/bash"}},
    ]
    play = {"name": "stock restore", "hosts": "all", "gather_facts": False, "tasks": tasks}
    path = os.path.join(workdir, "stock.yml")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump([play], handle, indent=1)
    return path


def backup(ec2, nodes, workdir):
    """One fresh set per node (playbooks/backup.yml over the inventory); returns {host: set result}."""
    hostvars = dict((host, {"array_backup_instance_id": inst.instance_id, "array_backup_mountpoints": inst.mountpoints,
                            "array_backup_by_id_dir": inst.by_id_dir}) for host, inst in nodes.items())
    inventory = write_inventory(workdir, hostvars, "backup-inventory.yml")
    rc, results, _raw, _wall = run_inventory(BACKUP, ec2, inventory, {
        "backup_hosts": "all", "backup_become": False, "array_backup_mode": "host", "array_backup_name": "bench-restore",
        "array_backup_keep_last": 0, "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
        "array_backup_poll_interval": 0.2})
    if rc != 0:
        raise SystemExit("backup failed: %s" % json.dumps(results, indent=1, default=str)[-4000:])
    return dict((host, results[host][TAKE]) for host in nodes)


def restore_inventory(approach, ec2, nodes, sets, workdir):
    hostvars = {}
    for host, inst in nodes.items():
        if approach == "stock":
            members = sorted(sets[host]["members"], key=lambda m: m["index"])
            hostvars[host] = {
                "stock_instance": inst.instance_id, "stock_az": inst.info["az"], "stock_by_id_dir": inst.by_id_dir,
                "stock_layout": inst.layout, "stock_mountpoints": inst.mountpoints,
                "stock_mountpoint_of": dict((v["device"], mp) for v, mp in zip(inst.info["volumes"], inst.mountpoints)),
                "stock_members": [{"device": m["device"], "snapshot": m["snapshot_id"]} for m in members]}
        else:
            # each node proves it is its set's instance from an IMDS of its own (the endpoint's one IMDS
            # emulator can be only one of the nodes)
            hostvars[host] = {"array_restore_set_id": sets[host]["set_id"], "array_restore_by_id_dir": inst.by_id_dir,
                              "array_restore_imds_endpoint": inst.imds.url}
    return write_inventory(workdir, hostvars, "%s-inventory.yml" % approach)


OURS_VARS = {"restore_hosts": "all", "restore_become": False, "array_restore_mode": "host", "array_restore_device_timeout": 60}


def run_restore(approach, ec2, inventory, workdir):
    if approach == "stock":
        return run_inventory(stock_playbook(ec2, workdir), ec2, inventory)
    extravars = dict(OURS_VARS, array_restore_aws_endpoint_url=ec2.url, array_restore_aws_region=ec2.region)
    return run_inventory(RESTORE, ec2, inventory, extravars)


def losetup_all():
    proc = subprocess.run(["losetup", "-a"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    return [line for line in proc.stdout.splitlines() if line.startswith("/dev/loop")]


def leftover_loops(dirs):
    """``losetup -a`` lines whose backing file lies under one of ``dirs``."""
    return [line for line in losetup_all() if any("(%s/" % d.rstrip("/") in line for d in dirs)]


def all_volume_ids(ec2):
    paginator = ec2.client().get_paginator("describe_volumes")
    return set(v["VolumeId"] for page in paginator.paginate() for v in page["Volumes"])


def attached_now(ec2, instance_id):
    inst = ec2.client().describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return dict((b["DeviceName"], b["Ebs"]["VolumeId"]) for b in inst["BlockDeviceMappings"])


def node_downtime(calls, instance_id, new_ids, attach_seconds):
    """One node's figures from the call log, seconds from its first DetachVolume request: ``downtime``
    (see the module docstring), ``ec2_side`` (last AttachVolume request + attaching time), ``confirmed``
    (end of the last DescribeVolumes naming a new volume), ``detach_phase`` (until the first AttachVolume)."""
    def names(call, ids):
        return any(value in ids for value in call["params"].values())

    detaches = [c for c in calls if c["action"] == "DetachVolume" and c["params"].get("InstanceId") == instance_id]
    attaches = [c for c in calls if c["action"] == "AttachVolume" and c["params"].get("InstanceId") == instance_id]
    if not detaches or not attaches:
        return dict.fromkeys(("downtime", "ec2_side", "confirmed", "detach_phase"))
    first = min(c["t_start"] for c in detaches)
    last_attach = max(c["t_start"] for c in attaches)
    confirms = [c["t_end"] for c in calls if c["action"] == "DescribeVolumes" and c["t_start"] > last_attach
                and names(c, new_ids)]
    ec2_done = last_attach + attach_seconds
    return {"downtime": max(confirms + [ec2_done]) - first, "ec2_side": ec2_done - first,
            "confirmed": (max(confirms) - first) if confirms else None,
            "detach_phase": min(c["t_start"] for c in attaches) - first}


def measure(approach, ec2, nodes, workdir, attach_seconds):
    """One restore of a fresh set per node, then the same playbook again; returns the figures."""
    check_mounted(nodes)
    sums = dict((host, write_data(inst.mountpoints, files_per_mount=2)) for host, inst in nodes.items())
    sets = backup(ec2, nodes, workdir)
    for host_sums in sums.values():
        destroy(host_sums)
    before = dict((host, attached_now(ec2, inst.instance_id)) for host, inst in nodes.items())
    inventory = restore_inventory(approach, ec2, nodes, sets, workdir)

    ec2.clear_calls()
    rc, results, raw, wall = run_restore(approach, ec2, inventory, workdir)
    calls = ec2.calls()
    if rc != 0:
        raise SystemExit("%s restore failed: %s" % (approach, json.dumps(results, indent=1, default=str)[-6000:]))
    row = {"wall_s": wall, "verified": all(verified(s) for s in sums.values()), "downtime_s": {}, "ec2_side_s": {},
           "confirmed_s": {}, "detach_phase_s": {}, "swap_s": {}, "detach_wait_s": {}, "attach_wait_s": {}}
    for host, inst in nodes.items():
        after = attached_now(ec2, inst.instance_id)
        new_ids = set(after[d] for d in before[host] if after.get(d) != before[host][d])
        if len(new_ids) != inst.n:
            raise SystemExit("%s: %s has %d new volumes at the set's devices, expected %d"
                             % (approach, host, len(new_ids), inst.n))
        for key, value in node_downtime(calls, inst.instance_id, new_ids, attach_seconds).items():
            row[key + "_s"][host] = value
        if approach == "ours":
            swap = results[host][SWAP]
            row["swap_s"][host] = swap["downtime_ms"] / 1000.0
            row["detach_wait_s"][host] = swap["detach_ms"] / 1000.0
            row["attach_wait_s"][host] = swap["attach_ms"] / 1000.0
    row["fs_down_s"] = task_window(raw, "unmount", "mount") if approach == "stock" else task_window(raw, DOWN, UP)
    row["calls"] = len(calls)

    # the same playbook right after
    check_mounted(nodes)
    volumes = all_volume_ids(ec2)
    ec2.clear_calls()
    rc, results, raw, wall = run_restore(approach, ec2, inventory, workdir)
    calls = ec2.calls()
    if rc != 0:
        raise SystemExit("%s re-run failed: %s" % (approach, json.dumps(results, indent=1, default=str)[-6000:]))
    row["rerun_wall_s"] = wall
    row["rerun"] = dict((action, len([c for c in calls if c["action"] == action and not c.get("error_code")]))
                        for action in COUNTED)
    row["rerun"]["calls"] = len(calls)
    row["rerun"]["new_volumes"] = len(all_volume_ids(ec2) - volumes)
    row["rerun_verified"] = all(verified(s) for s in sums.values())
    return row


# --------------------------------------------------------------------------- report

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def per_node(rows, key):
    return [v for row in rows for v in row[key].values()]


def fmt(value, pattern="%.2f"):
    return "-" if value is None else pattern % value


def summarize(rows):
    out = {
        "wall_s": med(r["wall_s"] for r in rows),
        "downtime_s": med(per_node(rows, "downtime_s")),
        "downtime_max_s": max(per_node(rows, "downtime_s")),
        "ec2_side_s": med(per_node(rows, "ec2_side_s")),
        "confirmed_s": med(per_node(rows, "confirmed_s")),
        "detach_phase_s": med(per_node(rows, "detach_phase_s")),
        "swap_s": med(per_node(rows, "swap_s")),
        "detach_wait_s": med(per_node(rows, "detach_wait_s")),
        "attach_wait_s": med(per_node(rows, "attach_wait_s")),
        "fs_down_s": med(r["fs_down_s"] for r in rows),
        "calls": med(r["calls"] for r in rows),
        "verified": all(r["verified"] and r["rerun_verified"] for r in rows),
        "rerun_wall_s": med(r["rerun_wall_s"] for r in rows),
    }
    for key in COUNTED + ("calls", "new_volumes"):
        out["rerun_" + key] = sorted(set(r["rerun"][key] for r in rows))
    return out


def counts(values):
    return ",".join(str(v) for v in values)


def report(args, table, raw_rows):
    print()
    print("%d nodes x %d volumes (%s layout, loop images in %s), median of %d runs; endpoint on 127.0.0.1: "
          "attaching %.1f s, detaching %.1f s, snapshots complete at once; ansible local connection, both nodes "
          "in one inventory (linear strategy, forks 5: the nodes run in parallel); mounts in %s"
          % (args.nodes, args.volumes, args.layout, args.image_dir, args.runs, args.attach_seconds,
             args.detach_seconds, "a private mount namespace (unshare)" if os.environ.get(NAMESPACE_MARK) == "1"
             else "the shared mount namespace"))
    print("downtime: per node, first DetachVolume request -> last attachment confirmed (call log); median over "
          "nodes x runs, and the max")
    print("EC2 side: first DetachVolume -> last AttachVolume + attaching time (what the endpoint imposes); "
          "fs down: unmount task start -> mount task end")
    header = ("approach", "wall s", "downtime s", "max s", "EC2 side s", "swap s", "fs down s", "calls",
              "data ok")
    print("%-9s %8s %11s %7s %11s %7s %10s %6s %8s" % header)
    for approach in APPROACHES:
        row = table[approach]
        print("%-9s %8.2f %11.2f %7.2f %11.2f %7s %10.2f %6d %8s" % (
            approach, row["wall_s"], row["downtime_s"], row["downtime_max_s"], row["ec2_side_s"],
            fmt(row["swap_s"]), row["fs_down_s"], row["calls"], "yes" if row["verified"] else "NO"))
    print()
    print("re-run of the same playbook right after (per run, both nodes; distinct values over the runs):")
    header = ("approach", "wall s", "CreateVolume", "DetachVolume", "AttachVolume", "new volumes", "EC2 calls")
    print("%-9s %8s %13s %13s %13s %12s %10s" % header)
    for approach in APPROACHES:
        row = table[approach]
        print("%-9s %8.2f %13s %13s %13s %12s %10s" % (
            approach, row["rerun_wall_s"], counts(row["rerun_CreateVolume"]), counts(row["rerun_DetachVolume"]),
            counts(row["rerun_AttachVolume"]), counts(row["rerun_new_volumes"]), counts(row["rerun_calls"])))
    print()
    print("where the downtime goes (median per node, seconds from the first DetachVolume request):")
    for approach in APPROACHES:
        row = table[approach]
        print("  %-5s detach phase (-> first AttachVolume request) %6.2f; attach phase %6.2f; the tool's last "
              "DescribeVolumes of the new volumes ends at %6.2f, the endpoint's last attachment is attached at %6.2f"
              % (approach, row["detach_phase_s"], row["downtime_s"] - row["detach_phase_s"], row["confirmed_s"],
                 row["ec2_side_s"]))
    ours = table["ours"]
    print("ours, where the downtime goes (median per node): detach wait %.2f s + attach wait %.2f s (swap "
          "downtime_ms %.2f s; call log %.2f s; EC2 side %.2f s; poll_interval 1.0 s)"
          % (ours["detach_wait_s"], ours["attach_wait_s"], ours["swap_s"], ours["downtime_s"], ours["ec2_side_s"]))
    gaps = [abs(r["downtime_s"][h] - r["swap_s"][h]) * 1000 for r in raw_rows["ours"] for h in r["swap_s"]]
    print("cross-check ours: call-log downtime vs swap downtime_ms differ by at most %.0f ms" % max(gaps))
    stock = table["stock"]
    print("ratios ours/stock: wall %.3f, downtime %.3f (1/%.1f), fs down %.3f" % (
        ours["wall_s"] / stock["wall_s"], ours["downtime_s"] / stock["downtime_s"],
        stock["downtime_s"] / ours["downtime_s"], ours["fs_down_s"] / stock["fs_down_s"]))
    print("restore downtime ratio ours/stock=%.4f re-run creates stock=%s ours=%s detaches stock=%s ours=%s" % (
        ours["downtime_s"] / stock["downtime_s"], counts(stock["rerun_new_volumes"]), counts(ours["rerun_new_volumes"]),
        counts(stock["rerun_DetachVolume"]), counts(ours["rerun_DetachVolume"])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layout", choices=["filesystems", "array"], default="filesystems",
                        help="filesystems: one ext4 filesystem per volume; array: one btrfs (raid0) over the volumes")
    parser.add_argument("--attach-seconds", type=float, default=1.0, help="how long an attachment stays attaching")
    parser.add_argument("--detach-seconds", type=float, default=1.0, help="how long a detach stays detaching")
    parser.add_argument("--image-dir", default="/tmp", help="where the nodes' loop images live")
    parser.add_argument("--shared-mounts", action="store_true",
                        help="stay in this mount namespace. By default the benchmark re-runs itself under `unshare "
                             "--mount --propagation private`, so that its mounts are its own: another test's cleanup "
                             "that unmounts by loop device name (a number the kernel reuses) cannot unmount them")
    args = parser.parse_args()
    if not args.shared_mounts and os.environ.get(NAMESPACE_MARK) != "1" and shutil.which("unshare"):
        os.execvpe("unshare", ["unshare", "--mount", "--propagation", "private", sys.executable,
                               os.path.abspath(__file__)] + sys.argv[1:], dict(os.environ, **{NAMESPACE_MARK: "1"}))
    why = missing_requirements("btrfs" if args.layout == "array" else "ext4")
    if why:
        raise SystemExit("benchmark needs real loop filesystems: %s" % why)
    rows = dict((approach, []) for approach in APPROACHES)
    ec2 = Endpoint()
    nodes = {}
    problems = []
    with tempfile.TemporaryDirectory(prefix="stillpoint-bench-restore-") as workdir:
        ec2.start(os.path.join(workdir, "ec2"), pending_seconds=0, attach_seconds=args.attach_seconds,
                  detach_seconds=args.detach_seconds)
        try:
            ec2.delays(attach_seconds=args.attach_seconds, detach_seconds=args.detach_seconds)
            for k in range(args.nodes):
                inst = EmulatedInstance(ec2, n=args.volumes, layout=args.layout, image_dir=args.image_dir, local=True)
                nodes["node%d" % (k + 1)] = inst
                inst.create()
                inst.imds = ImdsServer(instance_id=inst.instance_id, region=ec2.region, az=inst.info["az"]).start()
            for run in range(args.runs):
                order = APPROACHES if run % 2 == 0 else tuple(reversed(APPROACHES))
                for approach in order:
                    row = measure(approach, ec2, nodes, workdir, args.attach_seconds)
                    rows[approach].append(row)
                    print("run %d %-5s wall %6.2f s  downtime %s  fs down %6.2f s  data %s  | re-run wall %6.2f s "
                          "creates %d detaches %d attaches %d new volumes %d data %s" % (
                              run + 1, approach, row["wall_s"],
                              " ".join("%s %.2f s" % (h, v) for h, v in sorted(row["downtime_s"].items())),
                              row["fs_down_s"], "ok" if row["verified"] else "WRONG", row["rerun_wall_s"],
                              row["rerun"]["CreateVolume"], row["rerun"]["DetachVolume"],
                              row["rerun"]["AttachVolume"], row["rerun"]["new_volumes"],
                              "ok" if row["rerun_verified"] else "WRONG"), flush=True)
        finally:
            dirs = [inst.workdir for inst in nodes.values() if inst.workdir] + [os.path.join(workdir, "ec2")]
            for inst in nodes.values():
                if getattr(inst, "imds", None) is not None:
                    inst.imds.stop()
                problems.extend(inst.cleanup() or [])
            ec2.stop()
            left = leftover_loops(dirs)
    if problems:
        print("cleanup problems: %s" % "; ".join(problems))
    print("cleanup: loop devices of this benchmark left: %s (losetup -a lists %d other loop devices, not this "
          "benchmark's)" % (", ".join(left) or "none", len(losetup_all()) - len(left)))
    table = dict((approach, summarize(rows[approach])) for approach in APPROACHES)
    report(args, table, rows)


if __name__ == "__main__":
    main()
