# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Client side of the strict EC2 endpoint for tests (standard library + boto3 only).

    ep = Endpoint().start(state_dir, pending_seconds=1.0)
    try:
        ec2 = ep.client()
        world = ep.create_instance(volumes=[{"size": 1, "device": "/dev/sdf", "backing_file": img}])
        ep.throttle("CreateSnapshots", 1)
        ...
        assert len(ep.calls("CreateSnapshots")) == 1
    finally:
        ep.stop()

The server (``python -m tests.ec2_endpoint.server``) runs as a subprocess; the control API is
``POST <url>/_stillpoint/<op>`` with a JSON body. See README.md in this directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
ACCOUNT_ID = "123456789012"  # the account of CREDENTIALS
SECOND_ACCOUNT_ID = "210987654321"  # the default second account of ``account_credentials``


class EndpointError(Exception):
    """The endpoint did not start, or refused a control request."""


class Endpoint:
    """One strict EC2 endpoint server process and its control API."""

    def __init__(self, region="eu-west-1"):
        self.region = region
        self.url = None
        self.imds_url = None
        self.control_url = None
        self.pid = None
        self.state_dir = None
        self._proc = None
        self._log = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, state_dir, pending_seconds=1.0, attach_seconds=0.2, detach_seconds=0.2, timeout=30.0,
              port=0, imds_port=0, detached=False, iam=False):
        """Spawn the server (``sys.executable -m tests.ec2_endpoint.server``) and wait until it listens.

        The server stops when this process is gone, unless ``detached`` (then stop it by its PID).
        ``iam``: enforce IAM on EC2 calls (``_iam.py``): IAM users' keys need a policy that allows the
        call on its resources; the key ``testing`` stays the unrestricted root user."""
        if self._proc is not None:
            raise EndpointError("endpoint already started (pid %s)" % self.pid)
        self.state_dir = os.path.abspath(str(state_dir))
        os.makedirs(self.state_dir, exist_ok=True)
        ready_file = os.path.join(self.state_dir, "ready.json")
        if os.path.exists(ready_file):
            os.unlink(ready_file)
        argv = [sys.executable, "-m", "tests.ec2_endpoint.server", "--port", str(port), "--imds-port",
                str(imds_port), "--state-dir", self.state_dir, "--ready-file", ready_file, "--region",
                self.region, "--pending-seconds", str(pending_seconds), "--attach-seconds", str(attach_seconds),
                "--detach-seconds", str(detach_seconds)]
        if not detached:
            argv += ["--parent-pid", str(os.getpid())]
        if iam:
            argv.append("--iam")
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log_path = os.path.join(self.state_dir, "server.log")
        self._log = open(log_path, "ab")
        self._proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT)
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready_file):
            if self._proc.poll() is not None:
                self._cleanup()
                raise EndpointError("the endpoint exited with %s before it was ready:\n%s"
                                    % (self._proc.returncode, _tail(log_path)))
            if time.monotonic() > deadline:
                self.stop()
                raise EndpointError("the endpoint was not ready within %ss:\n%s" % (timeout, _tail(log_path)))
            time.sleep(0.02)
        with open(ready_file, encoding="utf-8") as f:
            ready = json.loads(f.read())
        self.url = ready["url"]
        self.imds_url = ready.get("imds_url")
        self.control_url = ready["control_url"]
        if ready["pid"] != self.pid:
            self.stop()
            raise EndpointError("ready file names pid %s, we started %s" % (ready["pid"], self.pid))
        return self

    def stop(self, timeout=10.0):
        """Terminate the server by its PID (SIGTERM, then SIGKILL) and wait for it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._cleanup()

    def _cleanup(self):
        if self._log is not None:
            self._log.close()
            self._log = None
        self._proc = None

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # ------------------------------------------------------------------ talking to it

    def env(self):
        """Environment for a process (e.g. ansible) that should use this endpoint's credentials,
        region and IMDS. The EC2 endpoint URL itself is not in it: pass ``self.url`` explicitly."""
        env = dict(CREDENTIALS)
        env["AWS_DEFAULT_REGION"] = self.region
        if self.imds_url:
            env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = self.imds_url
        return env

    def client(self, service="ec2", region=None, credentials=None, **config):
        """A boto3 client pointed at the endpoint; ``config`` goes to ``botocore.config.Config``
        (e.g. ``retries={"total_max_attempts": 1}``). ``region``: another region than the endpoint's;
        ``credentials``: an environment-style dict (``account_credentials``) instead of ``testing``."""
        import boto3
        from botocore.config import Config

        creds = dict((k, v) for k, v in (credentials or CREDENTIALS).items() if k.startswith("AWS_"))
        session = boto3.session.Session(region_name=region or self.region,
                                        **{k.lower(): v for k, v in creds.items() if k != "AWS_DEFAULT_REGION"})
        return session.client(service, endpoint_url=self.url, config=Config(**config) if config else None)

    def account_credentials(self, account_id=SECOND_ACCOUNT_ID, role="stillpoint-dr"):
        """Credentials of another account: moto 5.2.5 picks a request's account by its access key
        (``moto.iam.models.get_account_id_from``: the IAM account that holds the key, else the default
        123456789012), and STS AssumeRole into ``arn:aws:iam::<account_id>:role/<role>`` (the role need
        not exist) returns a key held by that account. Returns the environment-style dict
        (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) plus ``account_id``;
        EC2 calls with it act in that account. ``reset(state=True)`` forgets the key."""
        sts = self.client("sts")
        creds = sts.assume_role(RoleArn="arn:aws:iam::%s:role/%s" % (account_id, role),
                                RoleSessionName="stillpoint-tests")["Credentials"]
        return {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
                "AWS_SESSION_TOKEN": creds["SessionToken"], "account_id": str(account_id)}

    def control(self, op, _timeout=30, **args):
        """Call a control operation; returns its JSON answer, raises EndpointError on refusal."""
        if self.control_url is None:
            raise EndpointError("endpoint not started")
        data = json.dumps(args).encode("utf-8")
        request = urllib.request.Request("%s/%s" % (self.control_url, op), data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=_timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            try:
                answer = json.loads(e.read().decode("utf-8"))
            except ValueError:
                answer = {"error": str(e)}
            raise EndpointError("control %s refused (HTTP %s): %s" % (op, e.code, answer.get("error")))

    # ------------------------------------------------------------------ control operations

    def status(self):
        return self.control("status")

    def reset(self, state=False):
        """Clear faults, latencies, pending/delay overrides, the qemu backup speed and the call log;
        ``state=True``: also every EC2 resource and every image file the endpoint made, every loop
        device of its local backend, every qemu VM it booted (killed by PID) and their IMDS emulators."""
        self.control("reset", state=bool(state))

    def throttle(self, action, count=1, code="RequestLimitExceeded", message=None, status=None):
        """The next ``count`` calls of ``action`` (``"*"``: any action) fail with ``code``
        (RequestLimitExceeded: HTTP 503; SnapshotCreationPerVolumeRateExceeded: HTTP 400)."""
        return self.control("throttle", action=action, count=count, code=code, message=message,
                            status=status)["fault"]

    def buckets(self, on=None, scale=None, overrides=None, dry_run_consumes=None, per_volume_interval=None,
                levels=None, advance=None, region=None, account_id=None, reset=False):
        """EC2's token buckets (``_buckets.py``; off by default, ``reset()`` turns them off again).

        ``on``: throttle as EC2 documents (per account and region, one bucket per action, sizes and refill
        rates by category, resource buckets of Run/Start/Stop/TerminateInstances, one snapshot per volume per
        ``per_volume_interval`` s); ``scale`` multiplies every size and refill rate; ``overrides``:
        ``{action: (size, refill)}`` (``"<action>/resource"``, ``"<action>/unfiltered"`` for those buckets);
        ``dry_run_consumes``: whether DryRun requests take tokens (default True: AWS does not document it);
        ``levels``: ``{action: tokens}`` sets current levels (0 drains) of ``account_id``/``region`` (default the
        endpoint's); ``advance``: seconds added to the buckets' clock. Nothing given: only reads.
        Returns ``{"on", "scale", "overrides", "dry_run_consumes", "per_volume_interval", "clock", "levels":
        [{"account_id", "region", "action", "kind", "level", "size", "refill"}], "throttled": {"<action> <code>": n}}``."""
        args = dict(on=on, scale=scale, overrides=overrides, dry_run_consumes=dry_run_consumes,
                    per_volume_interval=per_volume_interval, levels=levels, advance=advance, region=region,
                    account_id=account_id, reset=bool(reset))
        return self.control("buckets", **dict((k, v) for k, v in args.items() if v is not None))

    def bucket_level(self, action, kind="request", region=None, account_id=None):
        """The current level of one bucket (None if it was never used)."""
        for b in self.buckets()["levels"]:
            if (b["action"], b["kind"]) == (action, kind) and b["region"] == (region or self.region) \
                    and b["account_id"] == (account_id or ACCOUNT_ID):
                return b["level"]
        return None

    def fail_next(self, action, code, message=None, status=None, count=1, after=0):
        """The next call (``count`` calls) of ``action`` fails with ``code``/``message`` (HTTP ``status``, default
        400); with ``after``, only once that many calls of ``action`` went through."""
        return self.control("fail_next", action=action, code=code, message=message, status=status,
                            count=count, after=after)["fault"]

    def fail_member(self, k, message=None):
        """Member ``k`` (0-based, in the order of the response) of the next CreateSnapshots ends in
        ``error`` at the end of its pending time."""
        self.control("fail_member", k=k, message=message)

    def fail_copy(self, k=0, message=None):
        """The copy made by the ``k``-th (0-based) CopySnapshot call from now ends in ``error`` at the
        end of its pending time."""
        self.control("fail_copy", k=k, message=message)

    def fail_snapshot(self, snapshot_id, message=None):
        """An existing snapshot ends in ``error`` (at the end of its pending time, or now)."""
        return self.control("fail_snapshot", snapshot_id=snapshot_id, message=message)["state"]

    def latency(self, action, ms):
        """Delay every call of ``action`` (``"*"``: any) by ``ms`` milliseconds (0 removes)."""
        self.control("latency", action=action, ms=ms)

    def pending(self, seconds, calls=None, snapshot_ids=None):
        """How long snapshots stay ``pending``: new default; or only the next ``calls`` snapshot-
        creating calls; or restart ``snapshot_ids`` now (``pending(0, snapshot_ids=[...])`` completes them)."""
        self.control("pending", seconds=seconds, calls=calls, snapshot_ids=snapshot_ids)

    def delays(self, attach_seconds=None, detach_seconds=None):
        """How long AttachVolume/DetachVolume show ``attaching``/``detaching``."""
        self.control("delays", attach_seconds=attach_seconds, detach_seconds=detach_seconds)

    def calls(self, action=None, dry_run=False):
        """The logged EC2 requests (oldest first): ``{"seq", "action", "params", "region", "status",
        "error_code", "error_message", "injected", "dry_run", "t_start", "t_end", "wall_start"}``;
        times are ``time.monotonic()`` of the server (system-wide clock). DryRun requests are left
        out unless ``dry_run`` is true (``None`` lists only them)."""
        calls = self.control("calls", action=action)["calls"]
        if dry_run is True:
            return calls
        return [c for c in calls if bool(c.get("dry_run")) == (dry_run is None)]

    def clear_calls(self):
        self.control("clear_calls")

    def received(self, action):
        """How many real (not DryRun) calls of ``action`` arrived since the last reset, including
        those still in flight (``calls`` lists only finished ones)."""
        return self.control("received", action=action)["count"]

    def create_instance(self, az=None, boot=True, volumes=(), tags=None, instance_type="m5.large", boot_size=8,
                        local=False, by_id_dir=None, region=None):
        """An instance with attached volumes, built through RunInstances/CreateVolume/AttachVolume.

        ``volumes``: ``[{"size": GiB, "device": "/dev/sdf", "backing_file": path, "tags": {...}}]``.
        Returns ``{"instance_id", "az", "boot_volume_id", "root_device_name", "image_id",
        "volumes": [{"volume_id", "device", ["backing_file"], ["loop_device", "link"]}]}``.
        ``local=True`` (needs ``by_id_dir``): the instance is local (see ``make_local``) before its
        volumes are attached, so each file-backed one is a loop device with its link on return.
        ``region``: build it in another region of the endpoint (e.g. where a set was copied to).
        """
        args = dict(az=az, boot=boot, volumes=list(volumes or ()), tags=tags, instance_type=instance_type,
                    boot_size=boot_size, region=region)
        if local:
            args.update(local=True, by_id_dir=None if by_id_dir is None else os.path.abspath(str(by_id_dir)))
        return self.control("create_instance", **args)

    def make_local(self, instance_id, by_id_dir):
        """Mark ``instance_id`` local: AttachVolume of a file-backed volume to it runs ``losetup`` on
        this host and makes ``<by_id_dir>/nvme-Amazon_Elastic_Block_Store_vol<id>`` -> ``/dev/loopN``
        during ``attaching``; DetachVolume removes both, and stays ``busy`` while the device is
        mounted or open (``Force=True`` detaches anyway, lazily). File-backed volumes already
        attached to it become loop devices now. Returns ``{"instance_id", "by_id_dir", "devices"}``."""
        return self.control("make_local", instance_id=instance_id, by_id_dir=os.path.abspath(str(by_id_dir)))

    def make_qemu(self, instance_id, vm_spec, boot=True, timeout=300):
        """Make ``instance_id`` a qemu instance whose machine is the lab VM described by ``vm_spec``
        (a ``tests/lab/vm.py`` spec). The endpoint starts an IMDSv2 emulator for it and adds two
        forwards to the spec: guest ``10.0.2.100:80`` -> that emulator, ``10.0.2.100:8080`` -> this
        endpoint. Attached data volumes without a file get a sparse image of their size. With
        ``boot`` and the instance running, the endpoint boots the VM now with those volumes
        cold-plugged as NVMe disks (serial ``vol<hex>``); it does not wait for SSH. From then on
        AttachVolume/DetachVolume hot-plug, CreateSnapshot(s) are qemu backup jobs, and
        Stop/Start/TerminateInstances power the VM off, boot it, kill it. Returns ``{"instance_id",
        "spec", "pid", "imds_url", "ec2_url", "imds_port"}``: ``vm = VM(result["spec"]); vm.wait_ssh()``."""
        return self.control("make_qemu", _timeout=timeout, instance_id=instance_id, vm_spec=vm_spec, boot=bool(boot))

    def qemu_backup_speed(self, bytes_per_s):
        """Limit qemu backup jobs (snapshots of disks in running VMs) to ``bytes_per_s``, the new
        ones and those running; 0 removes the limit (so does ``reset``). Returns ``{"bytes_per_s",
        "running_jobs"}``."""
        return self.control("qemu_backup_speed", bytes_per_s=int(bytes_per_s or 0))

    def qemu_instances(self, instance_id=None):
        """The qemu instances: ``[{"instance_id", "vm", "pid", "spec", "imds_port", "disks": [{"volume_id",
        "node", "device_id", "serial", "file", "present", "ready", "detach"}], "jobs": [...], "events"}]``."""
        return self.control("qemu_instances", instance_id=instance_id)["instances"]

    def local_devices(self, instance_id=None, region=None):
        """Loop devices of local attachments not yet released: ``[{"volume_id", "instance_id",
        "device", "loop_device", "image", "link", "linked", "state", "users"}]``."""
        return self.control("local_devices", instance_id=instance_id, region=region)["devices"]

    def back_volume(self, volume_id, path):
        """Back ``volume_id`` by the host file ``path`` (a loop image); snapshots copy it as of the call."""
        return self.control("back_volume", volume_id=volume_id, path=None if path is None else str(path))["path"]

    def volume_file(self, volume_id):
        """The file behind a volume (a backing file, or the endpoint's copy for a restored volume), or None."""
        return self.control("volume_file", volume_id=volume_id)["path"]

    def snapshot_file(self, snapshot_id):
        """The endpoint's copy of a snapshot's content, or None."""
        return self.control("snapshot_file", snapshot_id=snapshot_id)["path"]

    def add_foreign_snapshot(self, owner_id="210987654321", volume_id=None, size=8, description="", tags=None):
        """A completed snapshot owned by another account; returns its id."""
        return self.control("add_foreign_snapshot", owner_id=owner_id, volume_id=volume_id, size=size,
                            description=description, tags=tags)["snapshot_id"]

    def iam(self, enforce=None):
        """IAM enforcement of an endpoint started with ``iam=True``: ``enforce`` turns it on/off (None
        leaves it); returns ``{"enforce", "root_access_keys"}``."""
        return self.control("iam", enforce=enforce)

    def iam_user(self, name, policy_document):
        """An IAM user with ``policy_document`` (a dict) as its one managed policy, and an access key;
        returns the environment that makes boto3/ansible use it (``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``). Made with the root key, so it works while enforcing."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        arn = iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(policy_document))["Policy"]["Arn"]
        iam.attach_user_policy(UserName=name, PolicyArn=arn)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    def set_imds(self, instance_id=None, az=None, region=None):
        """What the IMDS emulator reports (None keeps a field)."""
        return self.control("set_imds", instance_id=instance_id, az=az, region=region)


def _tail(path, limit=4000):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")
