# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's pacer (plugins/plugin_utils/_pacer.py) against the endpoint's token buckets: the forks of one
ansible-playbook run take sets in controller mode; with the pacer they spend the CreateSnapshots tokens in turn
and no request is throttled, without it the same run meets the bucket's edge. In host mode the controller hands
the hosts their turns from the same pacer."""

from __future__ import annotations

import concurrent.futures
import json
import sys

from tests.support.world import run_playbook

HOSTS = 6
BUCKET = [2, 1.0]  # CreateSnapshots: 2 requests, 1 a second (EC2's 100/5 shrunk, so that a few hosts meet its edge)
# the pacer's own bucket: 4 tokens (two sets: probe and call each), 1 a second; 12 tokens through it, so the forks
# must queue. EC2's own bucket is 100 (50 sets).
PACED_BUCKET = [4, 1.0]
# the account's bucket, as the endpoint applies it, for the paced runs: the pacer counts the refill as if every fork
# spent its tokens the moment they were due, but a fork descheduled past its turn on a loaded machine spends them
# later, and while such forks hold the account's bucket at its cap, its refill is lost. With the account's bucket
# the pacer's size, two forks late at once were enough: the CI run of b50da6c, and 2 of 4 runs here with four
# busy loops beside the test (one fork's call RequestLimitExceeded). EC2's 100 tokens would need 50 sets late at
# once; here the account holds two sets more than the pacer, so four forks would have to be late together.
# Without the pacer the same 12 tokens meet BUCKET's edge (the next test)
ACCOUNT_BUCKET = [8, 1.0]


def fleet(ec2, tmp_path, count, prefix="pacer"):
    hosts = {}
    for i in range(count):
        inst = ec2.create_instance(volumes=[{"size": 1, "device": d} for d in ("/dev/sdf", "/dev/sdg")])
        hosts["%s-%d" % (prefix, i)] = {"instance_id": inst["instance_id"], "volume_ids": [v["volume_id"] for v in inst["volumes"]]}
    path = str(tmp_path / "inventory.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}, "hosts": hosts}}, handle)
    return hosts, path


def take_sets(tmp_path, ec2, inventory, pacer, mode="controller"):
    task = {"name": "take set", "register": "out", "stillpoint.snapshots.ebs_snapshot_set": {
        "mode": mode, "instance_id": "{{ instance_id }}", "volume_ids": "{{ volume_ids }}", "name": "paced",
        "endpoint_url": ec2.url, "region": ec2.region, "poll_interval": 0.2, "pacer": pacer}}
    book = str(tmp_path / "paced.yml")
    with open(book, "w", encoding="utf-8") as handle:
        json.dump([{"name": "fleet", "hosts": "all", "gather_facts": False, "tasks": [task]}], handle)
    rc, _last, data = run_playbook(book, ec2, inventory=inventory, env={"ANSIBLE_FORKS": str(HOSTS)})
    results = {}
    for play in data["plays"]:
        for entry in play["tasks"]:
            results.update(entry["hosts"])
    return rc, results


def complete_and_never_throttled(ec2, hosts, rc, results):
    """Every host's set complete in one freeze, one call each, and the endpoint throttled neither a probe nor a call;
    returns the CreateSnapshots requests (probes included)."""
    failed = dict((h, {k: r.get(k) for k in ("msg", "probes", "freeze_intervals", "pacer", "error_code")})
                  for h, r in results.items() if r.get("failed") or r.get("unreachable"))
    timeline = [(c["t_start"], c["dry_run"], c["error_code"]) for c in ec2.calls("CreateSnapshots", dry_run=True)]
    assert rc == 0, (failed or results, timeline)
    assert sorted(results) == sorted(hosts)
    assert all(r["state"] == "complete" and r["freeze_cycles"] == 1 for r in results.values())
    assert "CreateSnapshots RequestLimitExceeded" not in ec2.buckets()["throttled"]
    calls = ec2.calls("CreateSnapshots", dry_run=True)
    assert len([c for c in calls if not c["dry_run"]]) == len(hosts)
    assert all(c["error_code"] in (None, "DryRunOperation") for c in calls)
    return calls


def test_forks_of_a_run_share_the_pacer_and_no_request_is_throttled(tmp_path, ec2):
    hosts, inventory = fleet(ec2, tmp_path, HOSTS)
    ec2.buckets(on=True, overrides={"CreateSnapshots": ACCOUNT_BUCKET})
    rc, results = take_sets(tmp_path, ec2, inventory, {"size": PACED_BUCKET[0], "refill": PACED_BUCKET[1]})
    calls = complete_and_never_throttled(ec2, hosts, rc, results)
    # 12 tokens through a bucket of 4 refilled at 1 a second: the forks queued (outside any window) ...
    assert sum(r["pacer"]["waited_s"] for r in results.values()) > 0
    assert all(r["pacer"]["size"] == 4 and r["pacer"]["refill"] == 1.0 for r in results.values())
    # ... and the account's requests were spaced as the bucket allows: the k-th accepted one no earlier than (k-1)/1 s
    times = sorted(c["t_start"] for c in calls)
    assert times[-1] - times[0] >= (len(times) - PACED_BUCKET[0]) / PACED_BUCKET[1] - 0.5


def test_the_same_run_without_the_pacer_meets_the_buckets_edge(tmp_path, ec2):
    _hosts, inventory = fleet(ec2, tmp_path, HOSTS)
    ec2.buckets(on=True, overrides={"CreateSnapshots": BUCKET})
    _rc, results = take_sets(tmp_path, ec2, inventory, {"enabled": False})
    assert all("pacer" not in r for r in results.values())
    assert ec2.buckets()["throttled"].get("CreateSnapshots RequestLimitExceeded", 0) > 0


def test_host_mode_hosts_take_their_turns_from_the_controllers_pacer(tmp_path, ec2):
    hosts, inventory = fleet(ec2, tmp_path, HOSTS)
    ec2.buckets(on=True, overrides={"CreateSnapshots": ACCOUNT_BUCKET})
    rc, results = take_sets(tmp_path, ec2, inventory, {"size": PACED_BUCKET[0], "refill": PACED_BUCKET[1]}, mode="host")
    complete_and_never_throttled(ec2, hosts, rc, results)
    # 12 tokens through the pacer's 4 refilled at 1 a second: the hosts were started in turn, before any freeze
    assert all(r["pacer"]["admitted"] and r["pacer"]["size"] == 4 for r in results.values())
    assert sum(r["pacer"]["waited_s"] for r in results.values()) > 0


def test_job_slices_that_share_no_controller_split_the_bucket_and_none_is_throttled(tmp_path, ec2):
    # two slices of one job template: two ansible-playbook runs at once, each with its own local temporary directory
    # (its own pacer file), 3 hosts each. The account's bucket (10, 2 a second) is smaller than the two pacers'
    # together would be unsplit (8 + 8): with pacer.slices 2 each takes half of 8 (4, 1 a second)
    slices = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        slices.append(fleet(ec2, tmp_path / str(i), HOSTS // 2, prefix="slice%d" % i))
    ec2.buckets(on=True, overrides={"CreateSnapshots": [10, 2.0]})
    pacer = {"size": 8, "refill": 2.0, "slices": "2"}  # survey text, typed by the module
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda i: take_sets(tmp_path / str(i), ec2, slices[i][1], pacer), range(2)))
    hosts = dict(slices[0][0], **slices[1][0])
    results = dict(runs[0][1], **runs[1][1])
    complete_and_never_throttled(ec2, hosts, max(rc for rc, _r in runs), results)
    assert all(r["pacer"]["size"] == 4 and r["pacer"]["refill"] == 1.0 for r in results.values())
    assert sum(r["pacer"]["waited_s"] for r in results.values()) > 0  # 6 tokens a slice through 4: they queued


def test_a_bad_slices_count_is_refused_before_anything(tmp_path, ec2):
    hosts, inventory = fleet(ec2, tmp_path, 1)
    rc, results = take_sets(tmp_path, ec2, inventory, {"slices": 0})
    assert rc != 0
    only = list(results.values())[0]
    assert len(results) == 1 and only["failed"] and "pacer.slices must be an integer >= 1" in only["msg"]
    assert ec2.calls("CreateSnapshots", dry_run=True) == []
    volume_ids = list(hosts.values())[0]["volume_ids"]
    assert ec2.client().describe_snapshots(Filters=[{"Name": "volume-id", "Values": volume_ids}])["Snapshots"] == []
