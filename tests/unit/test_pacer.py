# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's CreateSnapshots pacer (plugins/plugin_utils/_pacer.py): one token bucket in a file that the
forks of a run share, tokens reserved in turn, a throttle empties it and halves its rate."""

from __future__ import annotations

import multiprocessing
import os
import time

import botocore.exceptions
import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils import _pacer


class Clock:
    def __init__(self):
        self.t = 500.0
        self.slept = []

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.slept.append(round(seconds, 6))
        self.t += seconds


def make(tmp_path, size=4, refill=2.0, name="p.json"):
    clock = Clock()
    return _pacer.Pacer(str(tmp_path / name), size=size, refill=refill, clock=clock, sleep=clock.sleep), clock


def test_burst_then_one_refill_interval_apart_in_the_order_asked(tmp_path):
    pacer, clock = make(tmp_path)
    # four forks ask at the same instant for a set's two tokens each: the bucket (4) covers two, the others queue
    assert [pacer.reserve(2) for _i in range(4)] == [0.0, 0.0, 1.0, 2.0]
    clock.t += 2.0  # the queue drained: the bucket is empty, not negative
    assert pacer.reserve(2) == pytest.approx(1.0)
    clock.t += 3600.0
    assert pacer.state()["level"] == 4.0  # never above its size


def test_acquire_sleeps_until_the_tokens_are_there(tmp_path):
    pacer, clock = make(tmp_path, size=2, refill=5.0)
    assert pacer.acquire(2) == 0.0 and not clock.slept
    assert pacer.acquire(2) == pytest.approx(0.4)
    assert clock.slept == [0.4]


def test_a_wait_beyond_the_timeout_takes_nothing(tmp_path):
    pacer, clock = make(tmp_path, size=2, refill=1.0)
    assert pacer.reserve(2, timeout=0.0) == 0.0
    assert pacer.reserve(2, timeout=1.5) is None  # would need 2 s
    assert pacer.state()["level"] == 0.0  # the refused request took no token
    assert pacer.acquire(2, timeout=1.5) is None and not clock.slept
    clock.t += 1.0
    assert pacer.acquire(2, timeout=1.5) == pytest.approx(1.0)


def test_throttle_empties_the_bucket_and_halves_the_rate_calls_bring_it_back(tmp_path):
    pacer, clock = make(tmp_path, size=100, refill=5.0)
    assert pacer.reserve(2) == 0.0  # full: a pacer alone believes it has 100 tokens
    pacer.throttled()  # EC2 says its bucket is empty (other clients)
    state = pacer.state()
    assert state["level"] == 0.0 and state["rate"] == 2.5
    assert pacer.reserve(2) == pytest.approx(0.8)  # 2 tokens at 2.5 a second
    for _i in range(5):
        pacer.throttled()  # several forks saw the same empty bucket: one cut
    assert pacer.state()["rate"] == 2.5
    for _i in range(10):
        clock.t += 100.0
        pacer.throttled()
    assert pacer.state()["rate"] == pytest.approx(5.0 * _pacer.MIN_SHARE)  # never below the floor
    for _i in range(100):
        pacer.passed()
    assert pacer.state()["rate"] == 5.0  # never above the refill


def test_one_file_per_endpoint_region_and_key_and_a_changed_size_starts_afresh(tmp_path):
    paths = set(_pacer.pacer_path(str(tmp_path), url, region, key) for url, region, key in [
        ("http://a", "eu-west-1", "AK1"), ("http://b", "eu-west-1", "AK1"), ("http://a", "us-east-1", "AK1"),
        ("http://a", "eu-west-1", "AK2"), (None, "eu-west-1", None)])
    assert len(paths) == 5
    assert _pacer.pacer_path("/d", "http://a", "r", "k") == _pacer.pacer_path("/d", "http://a", "r", "k")
    pacer, clock = make(tmp_path, size=4, refill=2.0)
    pacer.reserve(4)
    other = _pacer.Pacer(pacer.path, size=10, refill=2.0, clock=clock, sleep=clock.sleep)
    assert other.reserve(2) == 0.0 and other.state()["level"] == 8.0
    with pytest.raises(StillpointError):
        _pacer.Pacer(pacer.path, size=0, refill=1.0)


def _fork_acquire(path, start, out):
    pacer = _pacer.Pacer(path, size=2, refill=10.0)
    while time.monotonic() < start:
        time.sleep(0.001)
    pacer.acquire(1)
    out.put(time.monotonic())


def test_processes_share_one_bucket(tmp_path):
    """Eight processes (as Ansible forks its workers) take a token each from one file: two at once (the size),
    then one every 0.1 s (the refill), whatever process asks."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    path = str(tmp_path / "shared.json")
    start = time.monotonic() + 0.3
    procs = [ctx.Process(target=_fork_acquire, args=(path, start, out)) for _i in range(8)]
    for proc in procs:
        proc.start()
    times = sorted(out.get(timeout=30) - start for _proc in procs)
    for proc in procs:
        proc.join(10)
        assert proc.exitcode == 0
    for k, t in enumerate(times):
        assert t >= (k + 1 - 2) / 10.0 - 0.02, times  # never ahead of the shared bucket
    assert times[-1] < 0.6 + 1.0, times  # and not serialised much beyond it
    assert os.path.exists(path)


class FakeClient:
    class meta:  # pylint: disable=invalid-name
        endpoint_url = "http://127.0.0.1:1"
        region_name = "eu-west-1"

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def create_snapshots(self, **kwargs):
        self.calls.append(bool(kwargs.get("DryRun")))
        code = self.answers.pop(0)
        if code is None:
            return {"Snapshots": []}
        raise botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}}, "CreateSnapshots")

    def describe_snapshots(self, **kwargs):
        return "passed through"


def test_paced_client_takes_two_tokens_before_each_probe_and_learns_from_throttles(tmp_path):
    pacer, clock = make(tmp_path, size=4, refill=2.0)
    client = _pacer.PacedClient(FakeClient(["DryRunOperation", None, "DryRunOperation", "RequestLimitExceeded",
                                            "DryRunOperation", None]), pacer, timeout=60.0)
    for answers in ((True, "DryRunOperation"), (False, None), (True, "DryRunOperation")):
        try:
            client.create_snapshots(DryRun=answers[0], InstanceSpecification={"InstanceId": "i-1"})
        except botocore.exceptions.ClientError as e:
            assert e.response["Error"]["Code"] == answers[1]
    assert not clock.slept and pacer.state()["level"] == 0.0  # two sets' tokens, the real call took none
    with pytest.raises(botocore.exceptions.ClientError):
        client.create_snapshots(InstanceSpecification={"InstanceId": "i-1"})  # throttled inside the window
    assert pacer.state()["rate"] == 1.0
    pacer.throttled()  # another fork saw it too, within the same set's worth of time: no second cut
    assert pacer.state()["rate"] == 1.0
    with pytest.raises(botocore.exceptions.ClientError):
        client.create_snapshots(DryRun=True)
    assert clock.slept == [2.0]  # 2 tokens at the halved rate, waited before the probe
    client.create_snapshots()
    assert pacer.state()["rate"] == pytest.approx(1.1)
    assert client.describe_snapshots() == "passed through"
    assert client.report()["waits"] == [0.0, 0.0, 2.0] and client.report()["waited_s"] == 2.0
    assert _pacer.report(client) == {"pacer": client.report()} and _pacer.report(client._client) == {}


def test_paced_client_refuses_before_the_probe_when_the_queue_is_longer_than_throttle_wait(tmp_path):
    pacer, _clock = make(tmp_path, size=2, refill=0.1)
    fake = FakeClient(["DryRunOperation"])
    client = _pacer.PacedClient(fake, pacer, timeout=5.0)
    with pytest.raises(botocore.exceptions.ClientError):
        client.create_snapshots(DryRun=True)
    with pytest.raises(StillpointError) as info:
        client.create_snapshots(DryRun=True)
    assert "throttle_wait" in info.value.msg and "nothing was frozen or created" in info.value.msg
    assert fake.calls == [True]  # the refused probe never reached EC2


def test_for_run_keys_the_file_by_the_clients_endpoint_region_and_key(tmp_path):
    params = {"access_key": "AK1", "pacer": {"enabled": True, "size": 7, "refill": 3.0}}
    one = _pacer.for_run(FakeClient([]), params, directory=str(tmp_path))
    assert (one.size, one.refill) == (7.0, 3.0) and os.path.dirname(one.path) == str(tmp_path)
    assert one.path == _pacer.pacer_path(str(tmp_path), "http://127.0.0.1:1", "eu-west-1", "AK1")
    other = _pacer.for_run(FakeClient([]), dict(params, access_key="AK2"), directory=str(tmp_path))
    assert other.path != one.path


def test_pace_wraps_unless_disabled(tmp_path, monkeypatch):
    monkeypatch.setattr(_pacer, "run_directory", lambda: str(tmp_path))
    raw = FakeClient([])
    paced = _pacer.pace(raw, {"throttle_wait": 7.0, "pacer": {"enabled": True, "size": 3, "refill": 1.0}})
    assert isinstance(paced, _pacer.PacedClient) and paced.timeout == 7.0 and paced.pacer.size == 3.0
    assert os.path.dirname(paced.pacer.path) == str(tmp_path)
    assert _pacer.pace(raw, {"throttle_wait": 7.0, "pacer": {"enabled": False}}) is raw


def test_host_mode_admits_a_set_on_the_runs_pacer_and_refuses_past_throttle_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(_pacer, "run_directory", lambda: str(tmp_path))
    params = {"endpoint_url": "http://127.0.0.1:1", "region": "eu-west-1", "access_key": "AK1", "throttle_wait": 5.0,
              "pacer": {"enabled": True, "size": 4, "refill": 0.1}}
    pacer, waited = _pacer.admit(params)
    assert waited == 0.0 and pacer.path == _pacer.pacer_path(str(tmp_path), "http://127.0.0.1:1", "eu-west-1", "AK1")
    assert _pacer.admit(params)[1] == 0.0  # the bucket's 4 tokens: two sets
    with pytest.raises(StillpointError) as info:  # the third set's turn is 20 s away, throttle_wait is 5
        _pacer.admit(params)
    assert "throttle_wait" in info.value.msg and "nothing was frozen or created" in info.value.msg
    assert pacer.state()["level"] == pytest.approx(0.0, abs=0.01)  # the refused turn took nothing
    assert _pacer.admit(dict(params, pacer={"enabled": False})) == (None, None)


def test_host_mode_learns_from_what_the_module_met(tmp_path):
    pacer, _clock = make(tmp_path, size=4, refill=2.0)
    _pacer.learn(pacer, {"probes": [{"cycle": 1, "throttled": 2}], "create_calls": 1})  # the probe was throttled
    assert pacer.state()["rate"] == 1.0 and pacer.state()["level"] == 0.0
    _pacer.learn(pacer, {"probes": [{"throttled": 0}], "create_calls": 1, "state": "complete"})
    assert pacer.state()["rate"] == pytest.approx(1.1)
    pacer2, _clock = make(tmp_path, size=4, refill=2.0, name="q.json")
    _pacer.learn(pacer2, {"failed": True, "probes": [{"throttled": 0}], "create_calls": 1,
                          "freeze_intervals": [{"cycle": 1, "error": "RequestLimitExceeded"}]})  # the call, frozen
    assert pacer2.state()["rate"] == 1.0
    _pacer.learn(pacer2, {"failed": True, "msg": "refused before any call", "create_calls": 0})
    assert pacer2.state()["rate"] == 1.0  # nothing learnt


def test_slices_split_the_bucket_so_that_the_runs_together_stay_within_it(tmp_path):
    # four AWX job slices, each its own run with its own directory: each pacer gets a quarter of the bucket
    params = {"access_key": "AK1", "pacer": {"enabled": True, "size": 100, "refill": 5.0, "slices": 4}}
    runs = [_pacer.for_run(FakeClient([]), params, directory=str(tmp_path / str(i))) for i in range(4)]
    assert [(p.size, p.refill) for p in runs] == [(25.0, 1.25)] * 4
    for i in range(4):
        os.mkdir(str(tmp_path / str(i)))
    # over 60 s every slice asks for a set's two tokens as fast as its pacer lets it; together they never take more
    # than the account's bucket allows in that time (100 + 60 * 5 = 400 tokens)
    clock = Clock()
    paced = [_pacer.Pacer(p.path, size=p.size, refill=p.refill, clock=clock, sleep=clock.sleep) for p in runs]
    taken = 0
    while clock.t < 560.0:
        waits = [p.reserve(2) for p in paced]
        taken += 2 * len(paced)
        clock.t += max(waits) or 0.0
    assert taken <= 100 + 60 * 5 + 4 * 2  # one set per slice may be on credit at the end
    assert _pacer.share({"size": 3, "slices": 8}) == (1.0, 5.0 / 8)  # never a bucket below one token
    assert _pacer.share({}) == (100.0, 5.0)


@pytest.mark.parametrize("slices", [0, -2, "4", True])
def test_slices_must_be_a_whole_number_of_runs(slices):
    with pytest.raises(StillpointError) as info:
        _pacer.share({"slices": slices})
    assert "pacer.slices must be an integer >= 1" in info.value.msg and "job_slice_count" in info.value.msg
