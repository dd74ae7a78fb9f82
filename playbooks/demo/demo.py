# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo`: back up a small loop-device "EBS array" with playbooks/backup.yml, for real.

1. Starts the local EC2 endpoint (tests/ec2_endpoint: moto's server on 127.0.0.1, snapshots stay
   `pending` for a few seconds, instance metadata emulated on 127.0.0.1).
2. Builds an emulated instance: 4 ext4 filesystems on loop devices, registered there as the
   instance's EBS data volumes, with the udev-style by-id links a Nitro instance would have.
   Snapshots copy the loop images as of the CreateSnapshots call.
3. Writes files and a checksum manifest to each filesystem (not synced: the freeze flushes them),
   and starts a writer that appends and fsyncs a numbered line every few milliseconds on member 0.
4. Runs `ansible-playbook playbooks/backup.yml` (host mode, localhost, local connection), then
   `playbooks/catalog.yml`, both with their normal output.
5. Prints a summary read from the catalog (boto3 against the endpoint), opens every snapshot
   image read-only and checks the manifest inside it, and shows how long the writer was blocked.

Everything it made is removed on the way out (Ctrl-C included). Needs root: losetup, mount and
FIFREEZE. Nothing leaves 127.0.0.1.

    .venv/bin/python playbooks/demo/demo.py [--mode host|controller] [--keep-going]
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "stillpoint", "snapshots")

VOLUMES = 4
SIZE_MB = 16
PENDING_SECONDS = 4.0
SERIES = "demo"
FILES_PER_FS = 3
FILE_KB = 192
MANIFEST = "MANIFEST.sha256"
WRITER_FILE = "writer.log"
WRITER_PERIOD = 0.005
ANSIBLE_TIMEOUT = 300

NOT_ROOT = """\
make demo must run as root, and you are uid {uid}.

It does, for real, what the collection does on an EC2 instance:
  - losetup + mkfs + mount: four small ext4 filesystems on loop devices (the "EBS volumes"),
  - FIFREEZE/FITHAW ioctls: freezing them around the one CreateSnapshots call,
  - losetup + mount -o ro: opening each snapshot image to check what it holds.
All of these need root (CAP_SYS_ADMIN). Nothing was done. Run:

    sudo make demo
"""

# Appends "<n> <monotonic seconds>" and fsyncs, every few ms; stops when its parent is gone.
WRITER = r"""
import os, sys, time
path, parent, period = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
n = 0
while os.getppid() == parent:
    n += 1
    os.write(fd, b"%d %.6f\n" % (n, time.monotonic()))
    os.fsync(fd)
    time.sleep(period)
"""


class Stop(BaseException):
    """SIGTERM/SIGHUP: unwind through every finally like Ctrl-C does."""


def _on_signal(signum, _frame):
    raise Stop("signal %d" % signum)


def say(text=""):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def step(text):
    say()
    say("\033[1m==> %s\033[0m" % text if sys.stdout.isatty() else "==> %s" % text)


def run(argv, check=True, timeout=60):
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, env=dict(os.environ, LC_ALL="C"), check=False)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (rc=%s): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return proc


def stop_pid(proc, name, timeout=10.0):
    """Stop a child we started, by its PID: SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        say("  %s (pid %d) ignored SIGTERM; killing it" % (name, proc.pid))
        proc.kill()
        proc.wait(timeout)


# ------------------------------------------------------------------------------------ data


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def write_data(mountpoint, index):
    """A few files of random bytes and a sha256sum-style manifest; deliberately not synced."""
    lines = []
    for k in range(FILES_PER_FS):
        name = "data-%d.bin" % k
        with open(os.path.join(mountpoint, name), "wb") as handle:
            handle.write(("member %d file %d\n" % (index, k)).encode() + os.urandom(FILE_KB * 1024))
        lines.append("%s  %s\n" % (sha256_file(os.path.join(mountpoint, name)), name))
    with open(os.path.join(mountpoint, MANIFEST), "w", encoding="ascii") as handle:
        handle.writelines(lines)
    return len(lines)


def check_manifest(root):
    """(matching, total, [problems]) for the manifest under ``root``."""
    path = os.path.join(root, MANIFEST)
    if not os.path.exists(path):
        return 0, 0, ["%s is missing" % MANIFEST]
    good, total, bad = 0, 0, []
    with open(path, encoding="ascii") as handle:
        for line in handle:
            want, name = line.rstrip("\n").split("  ", 1)
            total += 1
            target = os.path.join(root, name)
            if not os.path.exists(target):
                bad.append("%s missing" % name)
            elif sha256_file(target) != want:
                bad.append("%s differs" % name)
            else:
                good += 1
    return good, total, bad


def read_writer_log(path):
    """[(n, t)] from the writer's file (a torn last line is skipped)."""
    out = []
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return out
    for line in data.split(b"\n"):
        parts = line.split()
        if len(parts) == 2:
            try:
                out.append((int(parts[0]), float(parts[1])))
            except ValueError:
                pass
    return out


class Writer:
    """A process appending + fsyncing to a file on one of the filesystems during the backup."""

    def __init__(self, path):
        self.path = path
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, self.path, str(os.getpid()), str(WRITER_PERIOD)],
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + 10
        while self.counter() < 20:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("the writer (pid %d) did not start writing %s" % (self.proc.pid, self.path))
            time.sleep(0.02)
        return self

    def counter(self):
        lines = read_writer_log(self.path)
        return lines[-1][0] if lines else 0

    def stop(self):
        stop_pid(self.proc, "writer")


class SnapshotImage:
    """A snapshot image attached read-only to a loop device and mounted ro,noload in a temp dir."""

    def __init__(self, image):
        self.image = image
        self.device = None
        self.mountpoint = None
        self.mounted = False

    def __enter__(self):
        try:
            self.device = run(["losetup", "--find", "--show", "--read-only", self.image]).stdout.strip()
            self.mountpoint = tempfile.mkdtemp(prefix="stillpoint-demo-snap-")
            run(["mount", "-t", "ext4", "-o", "ro,noload", self.device, self.mountpoint])
            self.mounted = True
        except BaseException:
            self.close()
            raise
        return self.mountpoint

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        if self.mountpoint and (self.mounted or os.path.ismount(self.mountpoint)):
            if run(["umount", self.mountpoint], check=False).returncode != 0:
                run(["umount", "-l", self.mountpoint], check=False)
            self.mounted = False
        if self.device:
            run(["losetup", "-d", self.device], check=False)
            self.device = None
        if self.mountpoint:
            shutil.rmtree(self.mountpoint, ignore_errors=True)
            self.mountpoint = None


# ------------------------------------------------------------------------------------ ansible


def ansible_env(endpoint):
    env = dict(os.environ)
    env.update(endpoint.env())  # credentials "testing", region, IMDS endpoint on 127.0.0.1
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"):
        env.pop(name, None)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "AWS_EC2_METADATA_DISABLED": "false",  # the emulated IMDS on 127.0.0.1 (set by endpoint.env())
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
    })
    return env


def ansible_playbook(playbook, extravars, env):
    """Run a playbook on localhost with its normal output on our terminal; return its exit code."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", json.dumps(extravars),
           os.path.join(ROOT, playbook)]
    say("$ ansible-playbook -i localhost, -c local %s -e '%s'" % (playbook, json.dumps(extravars)))
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    try:
        return proc.wait(ANSIBLE_TIMEOUT)
    except subprocess.TimeoutExpired:
        say("ansible-playbook ran longer than %ds; stopping it" % ANSIBLE_TIMEOUT)
        stop_pid(proc, "ansible-playbook")
        return -1
    finally:
        if proc.poll() is None:
            # Ctrl-C reached it too (same process group): give it a moment to end on its own, then
            # interrupt it the way Ctrl-C does (it stops its workers), then terminate it.
            for signum in (None, signal.SIGINT):
                if signum is not None:
                    proc.send_signal(signum)
                try:
                    proc.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    pass
            stop_pid(proc, "ansible-playbook")


def release_guardians(mountpoints):
    """End freeze guardians left holding our filesystems by an interrupted run.

    A module killed mid-task leaves its guardian running: it has thawed (the connection dropped) or
    thaws at its deadline (controller mode), then keeps its record for a grace period with fds open
    on the mountpoints, which keeps them busy. Find it (its fds on our mountpoints, its abstract
    socket ``@stillpoint-freeze-<token>``) and ask it to thaw: it thaws if needed and exits.
    """
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze
    from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

    wanted = set(os.path.realpath(m) for m in mountpoints)
    tokens = {}
    try:
        with open("/proc/net/unix", encoding="ascii", errors="replace") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 8 and parts[7].startswith("@" + _freeze.SOCKET_PREFIX):
                    tokens["socket:[%s]" % parts[6]] = parts[7][1 + len(_freeze.SOCKET_PREFIX):]
    except OSError:
        return
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        fd_dir = "/proc/%s/fd" % pid
        try:
            targets = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        token = next((tokens[t] for t in targets if t in tokens), None)
        if token is None or not wanted.intersection(targets):
            continue
        try:
            with _freeze.Guardian.connect(token) as guardian:
                record = guardian.thaw()
            say("  freeze guardian pid %s left by the interrupted run: thawed by %s, now exiting"
                % (pid, record.get("thawed_by")))
        except StillpointError as exc:
            say("  freeze guardian pid %s: %s" % (pid, exc.msg))
        end = time.monotonic() + 3
        while os.path.exists("/proc/%s" % pid) and time.monotonic() < end:
            time.sleep(0.02)
        if os.path.exists("/proc/%s" % pid):
            os.kill(int(pid), signal.SIGTERM)  # the guardian thaws (if frozen) and exits on SIGTERM


# ------------------------------------------------------------------------------------ summary


def read_set(endpoint, instance_id):
    """The newest set of the demo series, as backup_set_info derives it (_catalog.group_sets)."""
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog

    client = endpoint.client()
    snaps = client.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=[
        {"Name": "tag:%s" % catalog.K_CREATOR, "Values": [catalog.CREATOR]},
        {"Name": "tag:%s" % catalog.K_SET_NAME, "Values": [SERIES]},
        {"Name": "tag:%s" % catalog.K_INSTANCE, "Values": [instance_id]},
    ]).build_full_result().get("Snapshots", [])
    records = catalog.group_sets(snaps)
    return records[0] if records else None


def writer_report(lines, call):
    """Writes during the run, the pause across the CreateSnapshots call, the longest pause."""
    gaps = [(b[1] - a[1], a, b) for a, b in zip(lines, lines[1:])]
    if not gaps:
        return None
    longest = max(gaps)
    around = None
    if call is not None:
        for gap in gaps:
            if gap[1][1] <= call["t_start"] and gap[2][1] >= call["t_end"]:
                around = gap
                break
    normal = sorted(g[0] for g in gaps)[len(gaps) // 2]
    return {"longest": longest, "around": around, "median": normal}


def print_summary(record, checks, writer, call, started):
    step("Summary (read from the catalog: DescribeSnapshots on the endpoint, grouped as backup_set_info does)")
    say("  set id      %s" % record["set_id"])
    where = (record["name"], record["instance_id"], record["availability_zone"], record["host"])
    say("  series      %s, instance %s (%s), host %s" % where)
    problems = "" if not record["problems"] else "  (%s)" % "; ".join(record["problems"])
    say("  state       %s%s" % (record["state"], problems))
    say("  level       %s" % record["level"])
    say("  freeze      %s ms, first freeze to last thaw (guardian's clock); it includes flushing the unsynced"
        % record["freeze_ms"])
    say("              files to disk, which the freeze does before it holds")
    say("  members     %d" % record["member_count"])
    row = "    %-2s %-9s %-23s %-23s %s"
    say(row % ("#", "device", "source volume", "snapshot", "mountpoint"))
    for m in record["members"]:
        say(row % (m["index"], m["device"], m["source_volume"], m["snapshot_id"], ",".join(m["mountpoints"]) or "-"))
    say()
    say("  Inside each snapshot (image mounted read-only with a loop device, -o ro,noload):")
    for m in record["members"]:
        good, total, bad, tail = checks[m["index"]]
        verdict = "OK" if good == total and total else "MISMATCH: %s" % "; ".join(bad)
        extra = ""
        if tail is not None:
            extra = "; its %s ends at line %d" % (WRITER_FILE, tail[0])
            if call is not None:
                extra += " (the last write before the freeze, %.1f ms before the CreateSnapshots call)" % (
                    (call["t_start"] - tail[1]) * 1000.0)
        say("    #%d %s: %s %d/%d files match %s%s" % (m["index"], m["snapshot_id"], MANIFEST, good, total, verdict, extra))
    say("    (after the backup data-0.bin was rewritten on every live filesystem; the snapshots kept the old bytes)")
    if writer:
        say()
        say("  Writer on member 0 (append + fsync every %g ms, pid stopped afterwards):" % (WRITER_PERIOD * 1000))
        say("    counter %d when the backup started, %d when it ended: %d writes during the run"
            % (writer["before"], writer["after"], writer["after"] - writer["before"]))
        rep = writer["report"]
        if rep:
            say("    usual gap between writes %.1f ms; longest %.1f ms (after line %d)"
                % (rep["median"] * 1000, rep["longest"][0] * 1000, rep["longest"][1][0]))
            if rep["around"] is not None:
                say("    blocked across the freeze: line %d -> %d took %.1f ms, spanning the CreateSnapshots call "
                    "(%.1f ms on the endpoint)" % (rep["around"][1][0], rep["around"][2][0], rep["around"][0] * 1000,
                                                   (call["t_end"] - call["t_start"]) * 1000))
    say()
    say("  demo took %.1f s" % (time.monotonic() - started))


# ------------------------------------------------------------------------------------ main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mode", choices=["host", "controller"], default="host",
                        help="array_backup_mode: host (the instance calls EC2, default) or controller")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        sys.stderr.write(NOT_ROOT.format(uid=os.geteuid()))
        return 1
    for path in (ROOT, COLLECTIONS):
        if path not in sys.path:
            sys.path.insert(0, path)
    from tests.support.loopfs import missing_requirements
    why = missing_requirements("ext4")
    if why:
        sys.stderr.write("make demo cannot build loop filesystems here: %s. Nothing was done.\n" % why)
        return 1
    if not os.path.lexists(LINK):  # what `make link` does
        os.makedirs(os.path.dirname(LINK), exist_ok=True)
        os.symlink(ROOT, LINK)

    from tests.ec2_endpoint import Endpoint
    from tests.support.world import EmulatedInstance

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    started = time.monotonic()
    state_dir = tempfile.mkdtemp(prefix="stillpoint-demo-endpoint-")
    endpoint = Endpoint()
    inst = None
    writer = None
    failed = []
    try:
        step("Starting the local EC2 endpoint (127.0.0.1; snapshots stay pending %gs)" % PENDING_SECONDS)
        endpoint.start(state_dir, pending_seconds=PENDING_SECONDS)
        say("  EC2 %s, instance metadata %s, region %s, server pid %d"
            % (endpoint.url, endpoint.imds_url, endpoint.region, endpoint.pid))

        step("Building the array: %d ext4 filesystems on loop devices as the EBS volumes of one instance" % VOLUMES)
        inst = EmulatedInstance(endpoint, n=VOLUMES, size_mb=SIZE_MB, backed=True).create()
        for fs, vid, vol in zip(inst.filesystems, inst.volume_ids, inst.info["volumes"]):
            say("  %s  %-9s %-11s %s" % (vid, vol["device"], fs.device, fs.mountpoint))
        say("  instance %s in %s; by-id links in %s" % (inst.instance_id, inst.info["az"], inst.by_id_dir))

        step("Writing data and a checksum manifest to each filesystem (no sync: the freeze flushes it)")
        for i, fs in enumerate(inst.filesystems):
            n = write_data(fs.mountpoint, i)
            say("  %s: %d files of %d KiB + %s" % (fs.mountpoint, n, FILE_KB, MANIFEST))
        writer = Writer(os.path.join(inst.mountpoints[0], WRITER_FILE)).start()
        say("  writer pid %d appends + fsyncs a numbered line to %s every %g ms"
            % (writer.proc.pid, writer.path, WRITER_PERIOD * 1000))

        step("Backing up: ansible-playbook playbooks/backup.yml (%s mode)" % args.mode)
        env = ansible_env(endpoint)
        endpoint.clear_calls()
        before = writer.counter()
        rc = ansible_playbook("playbooks/backup.yml", {
            "backup_hosts": "localhost",
            "backup_become": False,
            "array_backup_mode": args.mode,
            "array_backup_mountpoints": inst.mountpoints,
            "array_backup_by_id_dir": inst.by_id_dir,
            "array_backup_aws_endpoint_url": endpoint.url,
            "array_backup_aws_region": endpoint.region,
            "array_backup_imds_endpoint": endpoint.imds_url,
            "array_backup_name": SERIES,
            "array_backup_poll_interval": 1,
        }, env)
        after = writer.counter()
        writer.stop()
        if rc != 0:
            failed.append("playbooks/backup.yml failed (rc=%s)" % rc)
            return 1
        calls = [c for c in endpoint.calls("CreateSnapshots") if c["status"] == 200] or [None]
        call = calls[-1]

        step("Listing the catalog: ansible-playbook playbooks/catalog.yml")
        rc = ansible_playbook("playbooks/catalog.yml", {
            "catalog_name": SERIES,
            "catalog_aws_endpoint_url": endpoint.url,
            "catalog_aws_region": endpoint.region,
        }, env)
        if rc != 0:
            failed.append("playbooks/catalog.yml failed (rc=%s)" % rc)

        record = read_set(endpoint, inst.instance_id)
        if record is None:
            failed.append("no set of series %r for %s in the catalog" % (SERIES, inst.instance_id))
            return 1

        # The live filesystems move on; the snapshots must not.
        for fs in inst.filesystems:
            with open(os.path.join(fs.mountpoint, "data-0.bin"), "wb") as handle:
                handle.write(b"changed after the backup\n")
        os.sync()

        checks = {}
        for m in record["members"]:
            image = endpoint.snapshot_file(m["snapshot_id"])
            if not image:
                checks[m["index"]] = (0, 0, ["the endpoint has no image for %s" % m["snapshot_id"]], None)
                continue
            with SnapshotImage(image) as root:
                good, total, bad = check_manifest(root)
                tail = None
                if os.path.exists(os.path.join(root, WRITER_FILE)):
                    lines = read_writer_log(os.path.join(root, WRITER_FILE))
                    tail = lines[-1] if lines else None
            checks[m["index"]] = (good, total, bad, tail)
            if bad or not total:
                failed.append("snapshot %s (member %d): %s" % (m["snapshot_id"], m["index"], "; ".join(bad) or "empty"))
        live_good = [check_manifest(fs.mountpoint)[0] for fs in inst.filesystems]
        if any(good == FILES_PER_FS for good in live_good):
            failed.append("a live filesystem still matches its manifest after data-0.bin was rewritten")

        report = writer_report(read_writer_log(writer.path), call)
        print_summary(record, checks, {"before": before, "after": after, "report": report}, call, started)
        if record["state"] != "complete":
            failed.append("the set is %s, not complete" % record["state"])
        return 1 if failed else 0
    except KeyboardInterrupt:
        say("\ninterrupted: cleaning up")
        return 130
    except Stop as exc:
        say("\nstopped (%s): cleaning up" % exc)
        return 143
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        problems = []
        if writer is not None:
            writer.stop()
        if inst is not None:
            release_guardians(inst.mountpoints)
            problems.extend(inst.cleanup())
        endpoint.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        say()
        if problems:
            say("CLEANUP PROBLEMS (fix by hand): %s" % "; ".join(problems))
        else:
            say("Cleaned up: endpoint stopped, filesystems unmounted, loop devices detached, temp dirs removed.")
        for problem in failed:
            say("DEMO FAILED: %s" % problem)


if __name__ == "__main__":
    sys.exit(main())
