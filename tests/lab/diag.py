# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a lab VM was doing when a command in it did not return: collected at the timeout, put in
the failure message (and in ``diag-<n>.txt`` in the VM directory).

A clean-clone CI run once saw two guest commands writing to hot-plugged NVMe disks never return
(an md/LVM/mkfs setup after 300 s, a ``dd oflag=direct`` loop after 60 s) with nothing to say why.
This report separates the places such a hang can be:

* the guest kernel: its ``dmesg`` tail (``nvme ... timeout, completion polled`` is a lost
  interrupt, ``timeout, aborting`` / ``reset controller`` a command the device never completed,
  ``blocked for more than`` a stuck task), the NVMe interrupt counts, requests in flight per disk,
  the tasks in D state with their kernel stacks - over a *fresh* SSH connection (not the shared
  master, in case that is what hangs);
* qemu: run state, per-disk block statistics (operations done, and ``idle_time_ns``: how long ago
  qemu last completed a request on that node - a device that is still being written has a small
  one), block jobs, and the host-side state of each qemu thread (a worker in D state with its
  ``wchan`` is qemu waiting on the host's file system);
* the host: load, CPU and I/O pressure, its kernel log's tail;
* the serial console's tail (what the guest kernel printed at level warning or above; the lab's
  resumed guests print warnings there, ``resume.ADOPT``).

Every part is bounded in time and a failing part says so instead of raising: the report never hides
the timeout it explains.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time

from .qmp import QMP

GUEST_SCRIPT = r"""
echo "## guest uptime: $(cat /proc/uptime)  date: $(date -u +%FT%TZ)"
echo "## dmesg (tail)"; dmesg | tail -n 40
echo "## nvme interrupts"; grep -i nvme /proc/interrupts
echo "## in flight (reads writes) per disk"
for f in /sys/block/nvme*/inflight /sys/block/md*/inflight /sys/block/dm-*/inflight; do
  [ -e "$f" ] && echo "$f: $(cat $f)"
done
echo "## nvme io_timeout: $(cat /sys/module/nvme_core/parameters/io_timeout 2>/dev/null)"
echo "## newest processes (is the command still running, and where does it wait?)"
ps -eo pid=,ppid=,stat=,etimes=,wchan:24=,args= --sort=start_time | grep -v -e ' ps -eo ' -e 'sh -s$' | tail -n 20 | cut -c1-200
echo "## tasks in D state"
for p in $(ps -eo pid=,stat= | awk '$2 ~ /^D/ {print $1}'); do
  echo "- $(ps -o pid=,etimes=,wchan:32=,args= -p $p)"
  head -n 12 /proc/$p/stack 2>/dev/null | sed 's/^/    /'
done
"""

_seq = itertools.count(1)


def _bounded(what, fn):
    try:
        return fn()
    except Exception as e:  # a diagnostic that fails says so; it never replaces the failure it explains
        return "(%s failed: %s: %s)" % (what, type(e).__name__, e)


def guest_report(vm, timeout=40):
    """Guest-side state over a new SSH connection (ControlPath=none: not the master)."""
    cmd = (["ssh", "-i", vm.key, "-p", str(vm.ssh_port), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=15", "-o", "ControlMaster=no", "-o", "ControlPath=none",
            "root@127.0.0.1", "sh -s"])
    try:
        r = subprocess.run(cmd, input=GUEST_SCRIPT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return out + "\n(no answer over a fresh SSH connection within %d s)" % timeout
    return r.stdout + ("" if r.returncode == 0 else "\n(ssh rc %d)" % r.returncode)


def qmp_report(vm, timeout=5.0):
    """qemu's view over the harness monitor: status, block statistics of the data disks, jobs."""
    lines = []
    with QMP(vm.lab_qmp_path, timeout=timeout) as q:
        lines.append("status: %s" % q.execute("query-status").get("status"))
        for dev in q.execute("query-blockstats", **{"query-nodes": False}):
            name = dev.get("qdev") or dev.get("device") or dev.get("node-name")
            s = dev.get("stats", {})
            idle = s.get("idle_time_ns")
            lines.append("%s: rd %s wr %s flush %s discard %s failed wr %s, idle %s" % (
                name, s.get("rd_operations"), s.get("wr_operations"), s.get("flush_operations"),
                s.get("unmap_operations"), s.get("failed_wr_operations"),
                "%.1f s" % (idle / 1e9) if idle is not None else "n/a"))
        jobs = q.execute("query-jobs")
        lines.append("jobs: %s" % (json.dumps(jobs) if jobs else "none"))
    return "\n".join(lines)


def threads_report(pid):
    """The host state of each qemu thread: a D state with its wchan is qemu blocked in the host kernel."""
    lines = []
    task_dir = "/proc/%d/task" % pid
    for tid in sorted(os.listdir(task_dir), key=int):
        try:
            with open(os.path.join(task_dir, tid, "stat")) as f:
                stat = f.read()
            with open(os.path.join(task_dir, tid, "wchan")) as f:
                wchan = f.read().strip()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state = stat[stat.rindex(")") + 2]
        lines.append("%s %s %s %s" % (tid, comm, state, wchan or "-"))
    return "\n".join(lines)


def master_report(vm):
    """The VM's SSH master (every harness command goes through it): ``ssh -O check``."""
    cmd = ["ssh", "-o", "ControlPath=" + vm.control_path, "-O", "check", "-p", str(vm.ssh_port), "root@127.0.0.1"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10, check=False)
    return "ssh -O check: rc %d %s" % (r.returncode, r.stdout.strip())


def host_report():
    out = []
    for path in ("/proc/loadavg", "/proc/pressure/io", "/proc/pressure/cpu"):
        try:
            with open(path) as f:
                out.append("%s: %s" % (path, " | ".join(f.read().split("\n")).strip(" |")))
        except OSError:
            pass
    # the host kernel's last words (I/O errors, hung tasks; loop-device chatter of other tests left out)
    r = subprocess.run(["dmesg"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=10, check=False)
    lines = [ln for ln in r.stdout.splitlines() if "loop" not in ln]
    out.append("host dmesg (tail, no loop devices):\n" + ("\n".join(lines[-8:]) if lines else "(unreadable or empty)"))
    return "\n".join(out)


def report(vm, what, waited, note=None):
    """The whole report for ``what`` (a command) that did not end within ``waited`` seconds (``note``:
    what the caller knows besides); also written to ``diag-<n>.txt`` in the VM directory."""
    t0 = time.monotonic()
    pid = vm.pid
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    shown = what if len(what) < 300 else what[:300] + "..."
    parts = [
        "lab diagnostics: %s: %r did not end within %s s (%s, boot mode %s, resume %s)" % (
            vm.name, shown, waited, now, vm.boot_mode or "unknown (started by another process)", vm.resume_seconds),
        "note: %s" % note if note else None,
        "# host\n" + _bounded("host", host_report),
        "# qemu (pid %s)\n" % pid + (_bounded("QMP", lambda: qmp_report(vm)) if pid else "(not running)"),
        "# SSH master\n" + _bounded("SSH master", lambda: master_report(vm)),
        "# qemu threads (tid comm state wchan)\n" + (_bounded("threads", lambda: threads_report(pid)) if pid else "-"),
        "# guest\n" + (_bounded("guest", lambda: guest_report(vm)) if pid else "(not running)"),
        "# serial console (tail)\n" + _bounded("console", lambda: vm.console_tail(25)),
    ]
    text = "\n".join(p for p in parts if p is not None) + "\n(diagnostics took %.1f s)" % (time.monotonic() - t0)
    try:
        with open(os.path.join(vm.dir, "diag-%d.txt" % next(_seq)), "w") as f:
            f.write(text + "\n")
    except OSError:
        pass
    return text


class GuestTimeout(subprocess.TimeoutExpired):
    """A guest command's timeout, its message followed by the lab diagnostics (still a
    ``subprocess.TimeoutExpired``: callers that handle one handle this)."""

    def __init__(self, original, diagnostics):
        super().__init__(original.cmd, original.timeout, output=original.output, stderr=original.stderr)
        self.diagnostics = diagnostics

    def __str__(self):
        return "%s\n%s" % (super().__str__(), self.diagnostics)
