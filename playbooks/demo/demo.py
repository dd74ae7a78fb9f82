# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo`: back up a small loop-device "EBS array" with playbooks/backup.yml, destroy its data and
restore it with playbooks/restore.yml, for real.

1. Starts the local EC2 endpoint (tests/ec2_endpoint: moto's server on 127.0.0.1, snapshots stay
   `pending` for a few seconds, instance metadata emulated on 127.0.0.1).
2. Builds an emulated instance that is local at the endpoint: 4 file-backed EBS data volumes, which
   the endpoint attaches, as EC2 and udev would, as loop devices with the by-id links a Nitro
   instance has; an ext4 filesystem on each. Snapshots copy the images as of the CreateSnapshots
   call; a volume created from a snapshot gets an image of its own, a loop device when attached.
3. Writes files and a checksum manifest to each filesystem (not synced: the freeze flushes them),
   and starts a writer that appends and fsyncs a numbered line every few milliseconds on member 0.
4. Runs `ansible-playbook playbooks/backup.yml` (host mode, localhost, local connection), then
   `playbooks/catalog.yml`, both with their normal output.
5. Records the checksum of every file on every filesystem, destroys the data (overwrites and
   deletes files) and shows that the checksums no longer match. Prints a summary of the set read
   from the catalog (boto3 against the endpoint), opens every snapshot image read-only and checks
   the manifest inside it, and shows how long the writer was blocked.
6. Runs `playbooks/restore.yml --check`: it prints the plan; the endpoint's volumes, attachments
   and loop devices, the host's mounts and the files are compared before and after.
7. Runs `playbooks/restore.yml`, then prints the checksums before and after, which volume sits at
   which device (before -> after) and the downtime.
8. Runs `playbooks/restore.yml` again: nothing changes (its recap, the endpoint's call log).

Everything it made is removed on the way out (Ctrl-C included). Needs root: losetup, mount and
FIFREEZE. Nothing leaves 127.0.0.1.

    .venv/bin/python playbooks/demo/demo.py [--mode host|controller]
"""

import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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
MUTATING = ("CreateVolume", "DetachVolume", "AttachVolume", "DeleteVolume")
MOUNT_POLL = 0.01
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

NOT_ROOT = """\
make demo must run as root, and you are uid {uid}.

It does, for real, what the collection does on an EC2 instance:
  - losetup + mkfs + mount: four small ext4 filesystems on loop devices (the "EBS volumes"; the
    local EC2 endpoint attaches them, and later the restored volumes, as EC2 and udev would),
  - FIFREEZE/FITHAW ioctls: freezing them around the one CreateSnapshots call,
  - losetup + mount -o ro: opening each snapshot image to check what it holds,
  - umount, fsck -n, mount: taking the filesystems down and up again around the volume swap.
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


def file_sums(mountpoints):
    """{(mountpoint, relative path): sha256} of every regular file on the filesystems but the writer's log."""
    sums = {}
    for mountpoint in mountpoints:
        for dirpath, _dirnames, filenames in os.walk(mountpoint):
            for name in filenames:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, mountpoint)
                if rel != WRITER_FILE and os.path.isfile(path) and not os.path.islink(path):
                    sums[(mountpoint, rel)] = sha256_file(path)
    return sums


def sums_now(recorded):
    """The checksums of the recorded files as they are now (None: the file is gone)."""
    out = {}
    for mountpoint, rel in recorded:
        path = os.path.join(mountpoint, rel)
        out[(mountpoint, rel)] = sha256_file(path) if os.path.isfile(path) else None
    return out


def destroy_data(mountpoint):
    """Overwrite some files, delete the others; return what was done, in words."""
    done = []
    for k in range(FILES_PER_FS):
        path = os.path.join(mountpoint, "data-%d.bin" % k)
        if k % 3 == 0:
            size = os.path.getsize(path)
            with open(path, "r+b") as handle:
                handle.write(b"\0" * size)
            done.append("data-%d.bin overwritten with zeros" % k)
        elif k % 3 == 1:
            with open(path, "wb") as handle:
                handle.write(b"destroyed by the demo\n")
            done.append("data-%d.bin truncated to one line" % k)
        else:
            os.unlink(path)
            done.append("data-%d.bin deleted" % k)
    for name in (MANIFEST, WRITER_FILE):
        if os.path.exists(os.path.join(mountpoint, name)):
            os.unlink(os.path.join(mountpoint, name))
            done.append("%s deleted" % name)
    return done


def short(digest):
    return "-- gone --" if digest is None else digest[:16]


def print_sums(before, after, after_label):
    """Side by side, one file a line; returns the number of files whose checksum matches."""
    row = "    %-24s %-16s  %-16s  %s"
    say(row % ("file", "recorded", after_label, ""))
    same = 0
    for key in sorted(before):
        mountpoint, rel = key
        match = before[key] == after.get(key)
        same += match
        say(row % (os.path.join(os.path.basename(mountpoint), rel), short(before[key]), short(after.get(key)),
                   "OK" if match else ("MISSING" if after.get(key) is None else "DIFFERS")))
    return same


def mounts():
    """{mountpoint: source} from /proc/self/mountinfo (octal escapes undone)."""
    out = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            left, sep, right = line.partition(" - ")
            if sep and len(left.split()) > 4 and len(right.split()) > 1:
                unescape = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f)
                            for f in (left.split()[4], right.split()[1])]
                out[unescape[0]] = unescape[1]
    return out


class MountWatch:
    """Polls (in a thread, every few ms) whether all the filesystems are mounted: when the first one went
    away, when the last one came back."""

    def __init__(self, mountpoints, period=MOUNT_POLL):
        self.mountpoints = list(mountpoints)
        self.period = period
        self.down_at = None
        self.up_at = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        return False

    def _run(self):
        was_up = True
        while not self._stop.is_set():
            now = time.monotonic()
            up = all(os.path.ismount(m) for m in self.mountpoints)
            if not up and self.down_at is None:
                self.down_at = now
            if up and not was_up:
                self.up_at = now
            was_up = up
            self._stop.wait(self.period)

    @property
    def seconds(self):
        if self.down_at is None or self.up_at is None or self.up_at < self.down_at:
            return None
        return self.up_at - self.down_at


# ------------------------------------------------------------------------------------ endpoint


def mapping(endpoint, instance_id):
    """{device name: volume id} of the instance, as DescribeInstances reports it."""
    inst = endpoint.client().describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {b["DeviceName"]: b["Ebs"]["VolumeId"] for b in inst["BlockDeviceMappings"]}


def endpoint_state(endpoint):
    """Every volume with its state and attachments, and every loop device the endpoint holds."""
    volumes = endpoint.client().get_paginator("describe_volumes").paginate().build_full_result()["Volumes"]

    def attachments(vol):
        return tuple(sorted((a["InstanceId"], a["Device"], a["State"]) for a in vol.get("Attachments", [])))

    return {
        "volumes": sorted((v["VolumeId"], v["State"], attachments(v)) for v in volumes),
        "loop devices": sorted((d["volume_id"], d["loop_device"], d["state"]) for d in endpoint.local_devices()),
    }


def volume_tags(endpoint, volume_ids):
    """{volume id: ({tag: value}, state)}."""
    if not volume_ids:
        return {}
    vols = endpoint.client().describe_volumes(VolumeIds=sorted(volume_ids))["Volumes"]
    return {v["VolumeId"]: ({t["Key"]: t["Value"] for t in v.get("Tags", [])}, v["State"]) for v in vols}


def call_summary(calls):
    counts = collections.Counter(c["action"] for c in calls)
    return ", ".join("%s x%d" % (action, n) for action, n in sorted(counts.items())) or "none"


def mutating(calls):
    return [c["action"] for c in calls if c["action"] in MUTATING]


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
    if sys.stdout.isatty():
        env["ANSIBLE_FORCE_COLOR"] = "1"  # its output goes through a pipe to our terminal
    return env


def _copy_output(stream, lines):
    """Copy the playbook's output to our terminal as it comes, and keep it."""
    for raw in iter(stream.readline, b""):
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        lines.append(raw.decode("utf-8", "replace"))


def ansible_playbook(playbook, extravars, env, check=False):
    """Run a playbook on localhost with its normal output on our terminal; return (exit code, output)."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", json.dumps(extravars),
           os.path.join(ROOT, playbook)] + (["--check"] if check else [])
    say("$ ansible-playbook -i localhost, -c local %s%s -e '%s'" % (playbook, " --check" if check else "",
                                                                    json.dumps(extravars)))
    sys.stdout.flush()
    lines = []
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    copier = threading.Thread(target=_copy_output, args=(proc.stdout, lines), daemon=True)
    copier.start()
    rc = -1
    try:
        rc = proc.wait(ANSIBLE_TIMEOUT)
    except subprocess.TimeoutExpired:
        say("ansible-playbook ran longer than %ds; stopping it" % ANSIBLE_TIMEOUT)
        stop_pid(proc, "ansible-playbook")
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
        copier.join(5)
        if not copier.is_alive():
            proc.stdout.close()
    return rc, ANSI.sub("", "".join(lines))


def recap(output):
    """{host: {"ok": n, "changed": n, ...}} from the PLAY RECAP of a playbook's output."""
    out = {}
    for match in re.finditer(r"^(\S+)\s+:\s+((?:[a-z]+=\d+\s*)+)$", output, re.M):
        out[match.group(1)] = {k: int(v) for k, v in re.findall(r"([a-z]+)=(\d+)", match.group(2))}
    return out


def reported_downtime(output):
    """The swap's downtime in ms from the role's "Report the restore" message (ebs_volume_swap's downtime_ms)."""
    found = re.findall(r"downtime ([0-9.]+) ms", output)
    return float(found[-1]) if found else None


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


def print_summary(record, checks, writer, call):
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
    say("    (checked after the live data was destroyed: the snapshots kept the bytes of the backup)")
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


def ours(mountpoints):
    """{mountpoint: source} of the demo's filesystems now (other mounts on this host are not ours)."""
    return {m: s for m, s in mounts().items() if m in mountpoints}


def report_check_mode(endpoint, before, after, calls, mountpoints):
    """What restore.yml --check did to the endpoint and the host: nothing, or the problems."""
    problems = []
    attachments = sum(len(v[2]) for v in before["state"]["volumes"])
    say("  endpoint before: %d volumes, %d attachments, %d loop devices; after: %s"
        % (len(before["state"]["volumes"]), attachments, len(before["state"]["loop devices"]),
           "the same" if after["state"] == before["state"] else "CHANGED"))
    if after["state"] != before["state"]:
        for key in before["state"]:
            gone = sorted(set(before["state"][key]) - set(after["state"][key]))
            new = sorted(set(after["state"][key]) - set(before["state"][key]))
            if gone or new:
                problems.append("check mode changed the endpoint's %s: %s -> %s" % (key, gone, new))
    say("  EC2 calls: %s" % call_summary(calls))
    dry = endpoint.calls(dry_run=None)
    if dry:
        say("  DryRun requests (EC2 checks permissions, changes nothing): %s" % call_summary(dry))
    changing = mutating(calls)
    say("  of them CreateVolume/DetachVolume/AttachVolume/DeleteVolume: %s" % (", ".join(changing) or "none"))
    if changing:
        problems.append("check mode called %s" % ", ".join(changing))
    same_mounts = after["mounts"] == before["mounts"]
    same_files = after["sums"] == before["sums"]
    say("  host: mounts of the %d filesystems %s; the destroyed files %s"
        % (len(mountpoints), "unchanged" if same_mounts else "CHANGED",
           "are still as destroyed" if same_files else "CHANGED"))
    if not same_mounts:
        problems.append("check mode changed the mounts: %s -> %s" % (before["mounts"], after["mounts"]))
    if not same_files:
        problems.append("check mode changed files on the filesystems")
    return problems


def report_restore(endpoint, record, inst, recorded, tails, before, calls, output, watch):
    """Checksums before/after, the volumes at each device before -> after, the downtime; returns problems."""
    problems = []
    say("  Checksums: recorded before the data was destroyed -> on the restored filesystems now")
    now = sums_now(recorded)
    same = print_sums(recorded, now, "after restore")
    say("    %d/%d files match" % (same, len(recorded)))
    if same != len(recorded):
        problems.append("%d of %d files differ after the restore" % (len(recorded) - same, len(recorded)))
    restored = read_writer_log(os.path.join(inst.mountpoints[0], WRITER_FILE))
    snap_tail, live_last = tails
    if snap_tail is not None:
        got = restored[-1][0] if restored else None
        say("    %s on member 0 ends at line %s: %s (the last write before the freeze; the live file had reached"
            " line %d when it was deleted)" % (WRITER_FILE, got, "as in the snapshot, OK" if got == snap_tail[0]
                                               else "the snapshot's ends at line %d: DIFFERS" % snap_tail[0], live_last))
        if got != snap_tail[0]:
            problems.append("%s came back ending at line %s, not %d" % (WRITER_FILE, got, snap_tail[0]))

    after_map = mapping(endpoint, inst.instance_id)
    loops = {d["volume_id"]: d["loop_device"] for d in endpoint.local_devices(instance_id=inst.instance_id)}
    mounted = ours(inst.mountpoints)
    olds = [before["map"].get(m["device"]) for m in record["members"]]
    news = [after_map.get(m["device"]) for m in record["members"]]
    tags = volume_tags(endpoint, [v for v in olds + news if v])
    say()
    say("  Volumes at the set's device names (DescribeInstances), before -> after, and what is mounted now:")
    row = "    %-9s %-36s %-39s %s"
    say(row % ("device", "before", "after", "mounted"))
    for member, old, new in zip(record["members"], olds, news):
        mountpoint = (member["mountpoints"] or ["-"])[0]
        source = mounted.get(mountpoint)
        say(row % (member["device"], "%s on %s" % (old, before["loops"].get(old, "-")),
                   "-> %s on %s" % (new, loops.get(new, "-")), "%s from %s" % (mountpoint, source or "NOT MOUNTED")))
        new_tags = tags.get(new, ({}, None))[0]
        if new == old or new_tags.get("stillpoint:set-id") != record["set_id"]:
            problems.append("%s holds %s, not a volume restored from %s" % (member["device"], new, record["set_id"]))
        elif source is None or source != loops.get(new):
            problems.append("%s is mounted from %s, not from %s's device %s" % (mountpoint, source, new, loops.get(new)))
    new_tags = tags.get(news[0], ({}, None))[0] if news and news[0] else {}
    say("    restored volumes tagged stillpoint:set-id=%s, stillpoint:restore-id=%s"
        % (new_tags.get("stillpoint:set-id"), new_tags.get("stillpoint:restore-id")))
    replaced = []
    for old in olds:
        old_tags, state = tags.get(old, ({}, "?"))
        replaced.append("%s %s, stillpoint:replaced-by=%s" % (old, state, old_tags.get("stillpoint:replaced-by")))
    say("    replaced volumes (kept): %s" % "; ".join(replaced))

    say()
    downtime = reported_downtime(output)
    say("  Downtime:")
    say("    swap (ebs_volume_swap's downtime_ms: first DetachVolume -> last restored volume attached): %s"
        % ("%.0f ms" % downtime if downtime is not None else "not found in the output"))
    if watch.seconds is not None:
        say("    filesystems away (polled every %g ms: first unmount -> all mounted again; includes the unmount,"
            " the swap, fsck -n and the mounts): %.0f ms" % (MOUNT_POLL * 1000, watch.seconds * 1000))
    say("    EC2 calls of the run: %s" % call_summary(calls))
    if downtime is None:
        problems.append("no downtime in the output of restore.yml")
    return problems


def report_rerun(endpoint, output, calls, before, after, recorded):
    """What the second run did: nothing, or the problems."""
    problems = []
    rec = recap(output).get("localhost")
    say("  recap: %s" % (" ".join("%s=%d" % kv for kv in rec.items()) if rec else "NOT FOUND"))
    if not rec or rec.get("changed") != 0 or rec.get("failed") != 0:
        problems.append("the second run of restore.yml reported %s" % rec)
    say("  EC2 calls: %s" % call_summary(calls))
    changing = mutating(calls)
    say("  of them CreateVolume/DetachVolume/AttachVolume/DeleteVolume: %s" % (", ".join(changing) or "none"))
    if changing:
        problems.append("the second run called %s" % ", ".join(changing))
    say("  volumes, attachments, loop devices: %s" % ("unchanged" if after["state"] == before["state"] else "CHANGED"))
    if after["state"] != before["state"]:
        problems.append("the second run changed the endpoint's volumes or attachments")
    same = sum(recorded[k] == v for k, v in sums_now(recorded).items())
    say("  checksums: %d/%d files still match" % (same, len(recorded)))
    if same != len(recorded):
        problems.append("after the second run %d files differ" % (len(recorded) - same))
    return problems


# ------------------------------------------------------------------------------------ main


def leftovers(paths):
    """Loop devices, mounts and directories of the demo still on this host after its cleanup."""
    paths = [p for p in paths if p]
    under = [p.rstrip("/") + "/" for p in paths]
    left = []
    try:
        lines = run(["losetup", "-a"], check=False).stdout.splitlines()
    except (OSError, subprocess.SubprocessError) as exc:
        lines = []
        left.append("losetup -a: %s" % exc)
    left.extend("loop device %s" % line for line in lines if any(u in line for u in under))
    left.extend("mount %s" % m for m in mounts() if any((m + "/").startswith(u) for u in under))
    left.extend("directory %s" % p for p in paths if os.path.exists(p))
    return left


def forget_released_devices(inst):
    """Keep in ``inst.member_devices`` only the loop devices still backed by the instance's images.

    EmulatedInstance's cleanup unmounts whatever is mounted from its member devices; after the swap
    the endpoint has released the original volumes' loop devices, and their numbers may belong to
    someone else's filesystem by now. The restored volumes' devices come from the endpoint's
    current list, which the cleanup asks for itself.
    """
    keep = []
    for device in inst.member_devices:
        try:
            with open("/sys/block/%s/loop/backing_file" % os.path.basename(device), encoding="utf-8") as handle:
                backing = handle.read().strip()
        except OSError:
            continue
        if any(backing == image or backing.startswith(image + " ") for image in inst.images):
            keep.append(device)
    inst.member_devices = keep


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mode", choices=["host", "controller"], default="host",
                        help="array_backup_mode and array_restore_mode: host (the instance calls EC2, default) or controller")
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
    made = [state_dir]  # what must be gone (no loop device, no mount, no directory) after the cleanup
    endpoint = Endpoint()
    inst = None
    writer = None
    failed = []
    try:
        step("Starting the local EC2 endpoint (127.0.0.1; snapshots stay pending %gs)" % PENDING_SECONDS)
        endpoint.start(state_dir, pending_seconds=PENDING_SECONDS)
        say("  EC2 %s, instance metadata %s, region %s, server pid %d"
            % (endpoint.url, endpoint.imds_url, endpoint.region, endpoint.pid))

        step("Building the array: %d EBS volumes of one instance, attached by the endpoint as loop devices, ext4 on each"
             % VOLUMES)
        inst = EmulatedInstance(endpoint, n=VOLUMES, size_mb=SIZE_MB, local=True)
        try:
            inst.create()
        finally:
            made.extend([inst.workdir, inst.by_id_dir])
        for fs, vol in zip(inst.filesystems, inst.info["volumes"]):
            say("  %s  %-9s %-11s %s" % (vol["volume_id"], vol["device"], fs.device, fs.mountpoint))
        say("  instance %s in %s; by-id links (made by the endpoint at AttachVolume, as udev would) in %s"
            % (inst.instance_id, inst.info["az"], inst.by_id_dir))

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
        rc, _output = ansible_playbook("playbooks/backup.yml", {
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
        rc, _output = ansible_playbook("playbooks/catalog.yml", {
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

        report = writer_report(read_writer_log(writer.path), call)  # before the log goes with the rest

        step("Recording the checksum of every file on every filesystem")
        recorded = file_sums(inst.mountpoints)
        say("  sha256 of %d files on %d filesystems, unchanged since the backup (%s on member 0 is left out: the"
            % (len(recorded), len(inst.mountpoints), WRITER_FILE))
        say("  writer went on after the freeze; it is compared by its last line, line %d now)" % after)

        step("Destroying the data on every filesystem")
        for mountpoint in inst.mountpoints:
            say("  %s: %s" % (mountpoint, ", ".join(destroy_data(mountpoint))))
        os.sync()
        say("  synced. Checksums recorded -> now:")
        same = print_sums(recorded, sums_now(recorded), "now")
        say("    %d/%d files match: the data is gone" % (same, len(recorded)))
        if same:
            failed.append("%d files still match their checksums after the data was destroyed" % same)

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

        print_summary(record, checks, {"before": before, "after": after, "report": report}, call)
        if record["state"] != "complete":
            failed.append("the set is %s, not complete" % record["state"])
            return 1

        restore_vars = {
            "restore_hosts": "localhost",
            "restore_become": False,
            "array_restore_set_id": record["set_id"],
            "array_restore_by_id_dir": inst.by_id_dir,
            "array_restore_aws_endpoint_url": endpoint.url,
            "array_restore_aws_region": endpoint.region,
        }
        if args.mode != "host":
            restore_vars["array_restore_mode"] = args.mode

        def observe():
            return {"state": endpoint_state(endpoint), "mounts": ours(inst.mountpoints), "sums": sums_now(recorded),
                    "map": mapping(endpoint, inst.instance_id),
                    "loops": {d["volume_id"]: d["loop_device"] for d in endpoint.local_devices(instance_id=inst.instance_id)}}

        step("Restore, check mode: ansible-playbook playbooks/restore.yml --check (prints the plan, touches nothing)")
        seen = observe()
        endpoint.clear_calls()
        rc, _output = ansible_playbook("playbooks/restore.yml", restore_vars, env, check=True)
        calls = endpoint.calls()
        step("What the check-mode run touched (compared before and after)")
        problems = report_check_mode(endpoint, seen, observe(), calls, inst.mountpoints)
        if rc != 0:
            problems.insert(0, "playbooks/restore.yml --check failed (rc=%s)" % rc)
        if problems:
            failed.extend(problems)
            return 1

        step("Restoring: ansible-playbook playbooks/restore.yml")
        seen = observe()
        endpoint.clear_calls()
        with MountWatch(inst.mountpoints) as watch:
            rc, output = ansible_playbook("playbooks/restore.yml", restore_vars, env)
        calls = endpoint.calls()
        if rc != 0:
            failed.append("playbooks/restore.yml failed (rc=%s)" % rc)
            return 1

        step("Restore summary")
        failed.extend(report_restore(endpoint, record, inst, recorded, (checks.get(0, (0, 0, [], None))[3], after),
                                     seen, calls, output, watch))

        step("Running playbooks/restore.yml again: nothing is left to do")
        seen = observe()
        endpoint.clear_calls()
        rc, output = ansible_playbook("playbooks/restore.yml", restore_vars, env)
        calls = endpoint.calls()
        step("What the second run changed")
        if rc != 0:
            failed.append("the second run of playbooks/restore.yml failed (rc=%s)" % rc)
        failed.extend(report_rerun(endpoint, output, calls, seen, observe(), recorded))
        say()
        say("demo took %.1f s" % (time.monotonic() - started))
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
            forget_released_devices(inst)
            problems.extend(inst.cleanup())
        endpoint.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
        problems.extend("left behind: %s" % thing for thing in leftovers(made))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        say()
        if problems:
            say("CLEANUP PROBLEMS (fix by hand): %s" % "; ".join(problems))
        else:
            say("Cleaned up: endpoint stopped, filesystems unmounted, loop devices detached (the original and the"
                " restored volumes'), temp dirs removed: none of them left (losetup -a, mountinfo).")
        for problem in failed:
            say("DEMO FAILED: %s" % problem)


if __name__ == "__main__":
    sys.exit(main())
