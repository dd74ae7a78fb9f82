# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""No freeze without a token: one CreateSnapshots pacer shared by every fork of one run.

EC2 throttles per account and Region with token buckets; CreateSnapshots has its own, 100 requests
refilled at 5 a second (docs/throttling.md). The forks of an ansible-playbook run that all take sets
in controller mode meet that bucket's edge at random unless they spend the tokens in turn. The
pacer is a token bucket of the same numbers in a file, locked with ``fcntl.flock``, under the run's
own local temporary directory (``ansible.constants.DEFAULT_LOCAL_TMP``: made by the ansible-playbook
process, inherited by its forks, removed when the run ends), one file per endpoint, Region and
access key (the account's stand-in: an STS call would need a permission the IAM policies do not
give). A set takes two tokens before its DryRun probe: the probe's and the call's, since EC2 may
charge DryRun to the bucket (not documented); the probe, the freeze and the call then follow at once.

Tokens are reserved: a fork that finds the bucket empty takes its tokens on credit and sleeps until
they have accrued, so the forks go in the order they asked, one refill interval apart, without polling.
Runs that draw from one account at the same time and share no file (AWX job slices, each its own
ansible-playbook run, possibly on another node) split the bucket: ``pacer.slices`` = N gives each run's
pacer 1/N of its size and refill (:func:`share`), a schedule fixed before the run rather than learnt from
throttles. The pacer cannot see other clients of the account (other tools): a throttled
request tells it that the real bucket is empty, so it empties its own and halves its rate (at most once
per set's worth of tokens at that rate, however many forks saw the throttle; never below a twentieth of
the refill); each call that gets through adds a twentieth of the refill back (AIMD, as TCP shares a link
it cannot see). A probe that EC2 lets through takes the token the call needs next when the real bucket
is at its edge: the pacer keeps it off the edge rather than at it (benchmarks/fleet.py: a gentler
decrease, with the rate growing back with time, finished sooner but re-froze more).

In controller mode the pacer sits in front of the client that calls (:func:`pace`). In host mode the host calls
EC2 itself: the action plugin takes the set's tokens before it starts the module on the host (:func:`admit`) and
learns from what the module reports (:func:`learn`). A group's members are not paced: they call at one instant.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

SIZE = 100  # EC2's documented CreateSnapshots bucket (requests) ...
REFILL = 5.0  # ... and its refill (requests a second)
TOKENS_PER_SET = 2.0  # the DryRun probe and the call
THROTTLE_CODES = ("RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException")
MIN_SHARE = 0.05  # the rate never drops below this share of the refill ...
STEP = 0.05  # ... and each call that gets through adds this share back


def pacer_path(directory, endpoint_url, region, access_key):
    """The pacer file of one endpoint, Region and access key under ``directory``."""
    key = json.dumps([endpoint_url or "aws", region or "", access_key or ""])
    return os.path.join(directory, "stillpoint-pacer-%s.json" % hashlib.sha256(key.encode("utf-8")).hexdigest()[:16])


def run_directory():
    """The run's local temporary directory (made by ansible-playbook, shared by its forks, removed at its end)."""
    from ansible import constants as C  # pylint: disable=import-outside-toplevel
    return C.DEFAULT_LOCAL_TMP


class Pacer:
    """A token bucket in a file that every process of a run shares (``fcntl.flock`` around each update).

    ``clock`` must be one clock for all of them: ``time.monotonic`` (CLOCK_MONOTONIC is system-wide)."""

    def __init__(self, path, size=SIZE, refill=REFILL, clock=time.monotonic, sleep=time.sleep):
        if size < 1 or refill <= 0:
            raise StillpointError("pacer: size must be >= 1 and refill > 0 (got %s, %s)" % (size, refill))
        self.path = path
        self.size = float(size)
        self.refill = float(refill)
        self.clock = clock
        self.sleep = sleep

    def _update(self, change):
        """Lock the file, bring the bucket up to now, apply ``change(state, now)`` (which may edit ``state``
        and returns the answer), write it back."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.read(fd, 4096)
            now = self.clock()
            try:
                state = json.loads(raw.decode("utf-8")) if raw else None
            except ValueError:
                state = None
            if not isinstance(state, dict) or state.get("size") != self.size or state.get("refill") != self.refill:
                state = {"size": self.size, "refill": self.refill, "level": self.size, "rate": self.refill, "t": now,
                         "cut": None}
            if now > state["t"]:
                state["level"] = min(self.size, state["level"] + (now - state["t"]) * state["rate"])
                state["t"] = now
            answer = change(state, now)
            data = json.dumps(state).encode("utf-8")
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, data)
            return answer
        finally:
            os.close(fd)  # releases the lock

    def reserve(self, tokens=TOKENS_PER_SET, timeout=None):
        """Take ``tokens`` (on credit if the bucket lacks them); returns the seconds to wait before using them,
        or None (nothing taken) if that would be more than ``timeout``."""
        def change(state, now):
            wait = max(0.0, (tokens - state["level"]) / state["rate"])
            if timeout is not None and wait > timeout:
                return None
            state["level"] -= tokens
            return wait
        return self._update(change)

    def acquire(self, tokens=TOKENS_PER_SET, timeout=None):
        """:meth:`reserve`, then sleep until the tokens are there; returns the seconds waited (None: refused)."""
        wait = self.reserve(tokens, timeout)
        if wait:
            self.sleep(wait)
        return wait

    def throttled(self):
        """EC2 answered RequestLimitExceeded: its bucket is empty now (others draw from it too)."""
        def change(state, now):
            state["level"] = min(state["level"], 0.0)
            if state.get("cut") is None or now - state["cut"] >= TOKENS_PER_SET / state["rate"]:
                state["rate"] = max(self.refill * MIN_SHARE, state["rate"] / 2.0)
                state["cut"] = now
        self._update(change)

    def passed(self):
        """A call got through: the rate creeps back towards the refill."""
        def change(state, now):
            state["rate"] = min(self.refill, state["rate"] + self.refill * STEP)
        self._update(change)

    def state(self):
        return self._update(lambda state, now: dict(state))


def _error_code(exc):
    try:
        return exc.response["Error"]["Code"]
    except (AttributeError, KeyError, TypeError):
        return None


class PacedClient:
    """The client that makes a set's CreateSnapshots calls, with the run's pacer in front: each DryRun probe
    (made before each freeze) first takes the tokens of the probe and of the call that follows it, waiting for
    them at most ``timeout`` seconds (outside any freeze); throttled answers teach the pacer. Every other
    attribute is the client's."""

    def __init__(self, client, pacer, timeout, tokens=TOKENS_PER_SET):
        self._client = client
        self.pacer = pacer
        self.timeout = timeout
        self.tokens = tokens
        self.waits = []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_snapshots(self, **kwargs):
        dry_run = bool(kwargs.get("DryRun"))
        if dry_run:
            self.waits.append(round(_turn(self.pacer, self.tokens, self.timeout, "forks"), 3))
        try:
            out = self._client.create_snapshots(**kwargs)
        except Exception as exc:  # botocore's ClientError; anything else passes through untouched
            if _error_code(exc) in THROTTLE_CODES:
                self.pacer.throttled()
            raise
        if not dry_run:
            self.pacer.passed()
        return out

    def report(self):
        """What the result says about the pacing: seconds waited for tokens before each probe (outside any freeze)."""
        return _report(self.pacer, self.waits)


def _report(pacer, waits):
    return {"waited_s": round(sum(waits), 3), "waits": list(waits), "size": pacer.size, "refill": pacer.refill}


def _turn(pacer, tokens, timeout, who):
    """Wait for ``tokens`` (outside any freeze); the seconds waited, or refused when that would exceed ``timeout``."""
    waited = pacer.acquire(tokens, timeout=timeout)
    if waited is None:
        raise StillpointError(
            "no CreateSnapshots token for this run within %.1f s (throttle_wait): the %s of this run queue for the "
            "account's CreateSnapshots bucket (pacer: %g requests, %g a second); nothing was frozen or created. Give "
            "the run fewer hosts, or more throttle_wait (docs/throttling.md)" % (timeout, who, pacer.size, pacer.refill))
    return waited


def _enabled(params):
    return (params.get("pacer") or {}).get("enabled", True)


def share(options):
    """``(size, refill)`` of this run's pacer: the bucket's numbers, divided by ``slices`` when the run is one of
    several runs that draw from the same account's bucket at the same time (AWX job slices: each slice is its own
    ansible-playbook run, possibly on another node, with no file in common), so that together they stay within it."""
    slices = 1 if options.get("slices") is None else options["slices"]
    if not isinstance(slices, int) or isinstance(slices, bool) or slices < 1:
        raise StillpointError("pacer.slices must be an integer >= 1 (the number of runs sharing the account's "
                              "CreateSnapshots bucket at once, e.g. the AWX job template's job_slice_count); got %r"
                              % (slices,))
    size = float(options.get("size") or SIZE)
    refill = float(options.get("refill") or REFILL)
    return max(1.0, size / slices), refill / slices


def _for(endpoint_url, region, params, directory=None):
    size, refill = share(params.get("pacer") or {})
    path = pacer_path(directory or run_directory(), endpoint_url, region, params.get("access_key") or params.get("profile"))
    return Pacer(path, size=size, refill=refill)


def for_run(client, params, directory=None):
    """The pacer of this run for ``client`` (its endpoint and Region) and the task's credentials."""
    return _for(getattr(client.meta, "endpoint_url", None), getattr(client.meta, "region_name", None), params,
                directory)


def admit(params, directory=None):
    """Host mode: the host makes its own calls, so the controller admits its set only once the run's pacer has the
    set's tokens (the schedule the controller hands out: the module starts when its turn comes, nothing frozen
    before). Keyed by the task's ``endpoint_url`` and ``region`` (the host's own when not given). Returns
    ``(pacer, seconds waited)``, ``(None, None)`` when ``pacer.enabled`` is false; raises when the turn would come
    after ``throttle_wait``."""
    if not _enabled(params):
        return None, None
    pacer = _for(params.get("endpoint_url"), params.get("region"), params, directory)
    return pacer, _turn(pacer, TOKENS_PER_SET, params["throttle_wait"], "hosts")


def admitted(pacer, waited):
    """Host mode: what the result says about the pacing (:meth:`PacedClient.report`'s shape): the wait before the
    module started on the host."""
    return dict(_report(pacer, [round(waited, 3)]), admitted=True)


def learn(pacer, result):
    """Host mode: what the host met teaches the run's pacer, as :class:`PacedClient` learns in controller mode
    (a throttled probe or call: EC2's bucket is empty; a call that got through: the rate creeps back)."""
    codes = [c.get("error") for c in result.get("freeze_intervals") or []]
    if any(p.get("throttled") for p in result.get("probes") or []) or any(c in THROTTLE_CODES for c in codes):
        pacer.throttled()
    elif result.get("create_calls") and not result.get("failed"):
        pacer.passed()


def pace(client, params):
    """``client`` behind the run's pacer (a :class:`PacedClient`), or as it is when ``pacer.enabled`` is false."""
    if not _enabled(params):
        return client
    return PacedClient(client, for_run(client, params), params["throttle_wait"])


def report(client):
    """``{"pacer": ...}`` for the result when ``client`` is paced, else ``{}``."""
    return {"pacer": client.report()} if isinstance(client, PacedClient) else {}
