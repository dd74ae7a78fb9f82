# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of stillpoint.snapshots.clock_offset: the host's clock read by its Python interpreter through the
task's connection, between two readings of the controller's clock (plugins/module_utils/_group.py).

``reader=persistent`` (default): one Python process started on the host (daemonized, in the task's remote temporary
directory, ending after the samples or its lifetime) answers each sample: the sample's command only writes a nonce to
its request FIFO and reads the answer (``<nonce> <time>``) from its reply FIFO, so a round trip is the connection's
and a shell's, not a Python start-up's. The reading is taken after the nonce arrived (after the controller's first
reading) and before the answer left (before its second). The reader and the samples run as the connection's user,
without become (the real-time clock is the system's; sudo would add its start-up to every round trip).
``reader=fresh``: a new Python per sample (with the task's become, as before)."""

from __future__ import annotations

import binascii
import os
import shlex
import time

from ansible.plugins.action import ActionBase

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _group as group
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._action import run_on_controller

READ = "import time; print(repr(time.time()))"

# argv: directory, samples, lifetime (s). Makes the FIFOs, forks, prints "started" and returns; the child answers.
READER = r"""
import os, signal, sys, time
d, count, life = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ask, answer = os.path.join(d, "ask"), os.path.join(d, "answer")
os.mkfifo(ask, 0o600)
os.mkfifo(answer, 0o600)
if os.fork():
    print("started")
    sys.stdout.flush()
    os._exit(0)
os.setsid()
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
signal.alarm(life)
fin = os.open(ask, os.O_RDWR)
for _i in range(count):
    nonce = b""
    while not nonce.endswith(b"\n"):
        nonce += os.read(fin, 1)
    now = time.time()
    try:
        out = os.open(answer, os.O_WRONLY)
        os.write(out, nonce.strip() + b" " + repr(now).encode() + b"\n")
        os.close(out)
    except OSError:
        pass
"""


def sample_command(nonce, directory):
    """The shell command of one sample: the nonce to the reader's request FIFO, its answer line from the reply FIFO.

    The previous answer's writer may still hold the reply FIFO open after its line was read (the reader closes after
    writing): a read opened in that moment ends empty at that close, so an empty read is tried again (it then waits
    for this nonce's writer)."""
    return ("printf '%%s\\n' %s > %s && for _t in 1 2 3; do l=$(head -n 1 %s); [ -n \"$l\" ] && break; done; "
            "printf '%%s\\n' \"$l\"" % (nonce, shlex.quote(directory + "/ask"), shlex.quote(directory + "/answer")))


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _supports_check_mode = True

    def _python(self, task_vars):
        if task_vars.get("ansible_python_interpreter"):
            return self._templar.template(task_vars["ansible_python_interpreter"])
        discovered = (task_vars.get("ansible_facts") or {}).get("discovered_interpreter_python")
        return discovered or "/usr/bin/python3"

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = self.validate_argument_spec(argument_spec=dict(
            samples=dict(type="int", default=5), reader=dict(type="str", choices=["persistent", "fresh"],
                                                             default="persistent")))[1]
        task_vars = task_vars or {}
        count, python = max(1, args["samples"]), self._python(task_vars)
        measure = self._measure_persistent if args["reader"] == "persistent" else self._measure
        return run_on_controller(self, result, lambda: measure(count, python))

    def _measure_persistent(self, count, python):
        """N samples answered by one reader process on the host (see the module's docstring)."""
        tmp = self._make_tmp_path()
        start = "%s -c %s %s %d %d" % (shlex.quote(python), shlex.quote(READER), shlex.quote(tmp), count, 30 + 10 * count)
        # as the connection's user, without become: reading the clock needs no privilege, and sudo's start-up would
        # be part of every round trip (the remote tmp is the connection user's too)
        res = self._low_level_execute_command(start, sudoable=False)
        if res.get("rc") != 0 or "started" not in res.get("stdout", ""):
            raise StillpointError("starting the clock reader on the host with %s failed" % python, rc=res.get("rc"),
                                  stdout=res.get("stdout"), stderr=res.get("stderr"))
        samples = []
        for i in range(count):
            nonce = binascii.hexlify(os.urandom(8)).decode()
            cmd = sample_command(nonce, tmp)
            sent = time.time()
            res = self._low_level_execute_command(cmd, sudoable=False)
            received = time.time()
            words = (res.get("stdout") or "").split()
            if res.get("rc") != 0 or len(words) != 2 or words[0] != nonce:
                raise StillpointError("the clock reader on the host did not answer sample %d" % (i + 1),
                                      rc=res.get("rc"), stdout=res.get("stdout"), stderr=res.get("stderr"))
            try:
                samples.append((sent, float(words[1]), received))
            except ValueError as exc:
                raise StillpointError("the host's clock reading is not a number: %r" % words[1]) from exc
        out = group.offset_from_samples(samples)
        out["reader"] = "persistent"
        return dict(changed=False, **dict((k, round(v, 6) if isinstance(v, float) else v) for k, v in out.items()))

    def _measure(self, count, python):
        cmd = "%s -c %s" % (shlex.quote(python), shlex.quote(READ))
        samples = []
        for _i in range(count):
            sent = time.time()
            res = self._low_level_execute_command(cmd)
            received = time.time()
            if res.get("rc") != 0:
                raise StillpointError("reading the host's clock with %s failed" % python, rc=res.get("rc"),
                                      stdout=res.get("stdout"), stderr=res.get("stderr"))
            try:
                samples.append((sent, float(res["stdout"].strip().splitlines()[-1]), received))
            except (ValueError, IndexError) as exc:
                raise StillpointError("the host's clock reading is not a number: %r" % res.get("stdout"),
                                      stdout=res.get("stdout")) from exc
        out = group.offset_from_samples(samples)
        out["reader"] = "fresh"
        return dict(changed=False, **dict((k, round(v, 6) if isinstance(v, float) else v) for k, v in out.items()))
