# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The strict EC2 endpoint: moto's server app behind our WSGI layer, plus the IMDSv2 emulator.

    python -m tests.ec2_endpoint.server --port 0 --imds-port 0 --state-dir DIR [--ready-file F]

One process, 127.0.0.1 only. Once listening it writes one JSON line
``{"pid", "url", "imds_url", "control_url", "region", "state_dir"}`` to ``--ready-file`` (atomically)
and to stdout. SIGTERM/SIGINT stop it; with ``--parent-pid`` it also stops when that process is gone.
On the way out it kills every qemu VM it booted for its qemu instances (by PID) and stops their
IMDS emulators, then detaches every loop device its local attach backend made and removes their links.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

# A few AMIs that moto ships, instead of the ~1300 it loads by default (1.7 s at the first call).
_AMI_COUNT = 3


def _write_amis(state_dir):
    from moto.utilities.utils import load_resource

    amis = [a for a in load_resource("ec2/resources/amis.json")
            if a.get("root_device_type") == "ebs" and not a.get("platform")]
    amis.sort(key=lambda a: (a.get("root_device_name") != "/dev/sda1", a["ami_id"]))
    path = os.path.join(state_dir, "amis.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(amis[:_AMI_COUNT], f)
    return path


def _prepare_environment(state_dir, region):
    """Settings that moto reads when it is imported, and a hermetic AWS environment for our own client."""
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = region
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"):
        os.environ.pop(name, None)
    if "MOTO_AMIS_PATH" not in os.environ:
        os.environ["MOTO_AMIS_PATH"] = _write_amis(state_dir)


def _watch_parent(parent_pid):
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _stop(signum, frame):
    raise SystemExit(0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.ec2_endpoint.server", description=__doc__.split("\n", 1)[0])
    p.add_argument("--port", type=int, default=0, help="EC2 endpoint port (0: any free port)")
    p.add_argument("--imds-port", type=int, default=0, help="IMDSv2 emulator port (0: any free port)")
    p.add_argument("--state-dir", required=True, help="where snapshot and volume images are kept")
    p.add_argument("--ready-file", help="write the ready JSON line here once listening")
    p.add_argument("--region", default="eu-west-1")
    p.add_argument("--pending-seconds", type=float, default=2.0, help="how long new snapshots stay pending")
    p.add_argument("--attach-seconds", type=float, default=0.2, help="how long AttachVolume stays attaching")
    p.add_argument("--detach-seconds", type=float, default=0.2, help="how long DetachVolume stays detaching")
    p.add_argument("--parent-pid", type=int, help="exit when this process is no longer our parent")
    p.add_argument("--iam", action="store_true",
                   help="enforce IAM: EC2 calls need an IAM user's key and policy (_iam.py; key 'testing' is root)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    state_dir = os.path.abspath(args.state_dir)
    os.makedirs(state_dir, exist_ok=True)
    _prepare_environment(state_dir, args.region)

    from werkzeug.serving import make_server
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

    from tests.ec2_endpoint import _world, _wsgi

    class QuietHandler(MotoRequestHandler):
        def log_request(self, code="-", size="-"):
            pass

    world = _world.World(state_dir, region=args.region, pending_seconds=args.pending_seconds,
                         attach_seconds=args.attach_seconds, detach_seconds=args.detach_seconds)
    if args.iam:
        from tests.ec2_endpoint import _iam

        _iam.install(world, enforce=True)
    app = _wsgi.Middleware(world, DomainDispatcherApplication(create_backend_app))
    httpd = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=QuietHandler)
    world.url = "http://127.0.0.1:%d" % httpd.server_port

    imds = None
    try:
        from tests.ec2_endpoint.imds import ImdsServer
    except ImportError as e:
        sys.stderr.write("stillpoint ec2 endpoint: no IMDS emulator (%s)\n" % e)
    else:
        imds = ImdsServer(region=args.region, host="127.0.0.1", port=args.imds_port).start()
    world.imds = imds
    for done in world.qemu_recovered:
        sys.stderr.write("stillpoint ec2 endpoint: killed VM %s (pid %s) left by an earlier server on %s\n"
                         % (done["vm"], done["pid"], state_dir))
    with world.lock:
        world.backend()  # build the region's backend (and its AMIs) before the first request

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()

    ready = {"pid": os.getpid(), "url": world.url, "imds_url": imds.url if imds else None,
             "control_url": world.url + _wsgi.CONTROL_PREFIX.rstrip("/"), "region": args.region,
             "state_dir": state_dir}
    line = json.dumps(ready)
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(line + "\n")
        os.replace(tmp, args.ready_file)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    threading.Thread(target=world.internal_client, daemon=True).start()  # warm up boto3 off the clock
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        # a second SIGTERM must not cut the release of the loop devices (or the VM kills) short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        httpd.server_close()
        try:
            for done in world.shutdown():
                if done.get("error") or done.get("lazy"):
                    sys.stderr.write("stillpoint ec2 endpoint: releasing %s: %s\n"
                                     % (done["device"], done.get("error") or "in use, detached lazily"))
            for done in world.qemu_stopped:
                if done.get("error") or done.get("pid") and not done.get("killed"):
                    sys.stderr.write("stillpoint ec2 endpoint: qemu instance %s: %s\n"
                                     % (done.get("instance_id"), done.get("error") or "VM pid %s not ours, left alone"
                                        % done.get("pid")))
        finally:
            if imds is not None:
                imds.stop()
    return 0


if __name__ == "__main__":
    try:
        CODE = main()
    except SystemExit as e:  # SIGTERM/SIGINT
        CODE = e.code if isinstance(e.code, int) else 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(CODE)  # skip tearing down moto's module graph (~0.7 s); nothing is left to flush
