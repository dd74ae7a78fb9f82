# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Application quiescers that HOLD their lock across the freeze and the CreateSnapshots call.

A database's backup lock lives as long as the session that took it, so a command that takes the lock
and exits holds nothing. A held quiescer keeps the application's own client running as a coprocess of
this module (its stdin is our pipe; on Linux it also gets ``PR_SET_PDEATHSIG=SIGKILL``): if the module
dies, the client dies, its session ends and the application releases the lock by itself.

The interface, shared with :class:`_quiesce.Hooks` so that ``_ebs.SnapshotSetRun`` drives both:

- ``pre()`` before the freeze: open the session, take the lock within ``lock_wait_timeout``; returns
  ``(ok, action)``; a failure raises (``on_failure == "abort"``, nothing frozen) or returns ``ok=False``
  (``continue``: the set is recorded at the level reached);
- ``post()`` after the thaw: confirm on the same session that the lock was held all along, release it,
  end the session; returns ``(ok, action)``; ``confirmed`` says whether ``application`` may be recorded;
- ``held = True``, ``on_failure``, ``summary()`` (the module's ``application`` result) and
  ``catalog_record()`` (what goes into the catalog tag ``stillpoint:app``).

:class:`HeldHook` is the generic one (any application: a user command that prints ``READY`` once its
lock is held, is kept running, and is told to finish by closing its stdin); the database ones live in
one file per application (``_mariadb.py``, ``_postgresql.py``).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import ms_since

APPLICATIONS = ("mariadb", "mysql", "postgresql", "held_hook")
# How a module reaches the database (ebs_snapshot_set at backup, app_recover at restore): the client's own
# option file, socket, host/port and user; the password only as no_log (it travels in the client's environment)
CONNECTION_ARGS = dict(
    application_login_user=dict(type="str"),
    application_login_password=dict(type="str", no_log=True),
    application_login_host=dict(type="str"),
    application_login_port=dict(type="int"),
    application_login_unix_socket=dict(type="path"),
    application_config_file=dict(type="path"),
    application_client=dict(type="path"),
)
READY = "READY"
PR_SET_PDEATHSIG = 1


def _die_with(parent):
    """preexec_fn: the child gets SIGKILL when ``parent`` (this module) dies, and exits if it already has."""
    def prepare():
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # not Linux: stdin EOF is then the only tie
            pass
        if os.getppid() != parent:
            os._exit(1)
    return prepare


class Coprocess:
    """A client program kept running as this process's child, talked to through pipes.

    The library otherwise runs commands through the module's ``run_command``; a held lock needs a process
    that outlives one call, which ``run_command`` cannot give, hence ``subprocess`` here (argv lists only).
    """

    def __init__(self, argv, env=None):
        self.argv = list(argv)
        self.env = env
        self.proc = None
        self.out = b""
        self.err = b""

    def start(self):
        env = dict(os.environ, LC_ALL="C", LANG="C")
        env.update(self.env or {})
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, close_fds=True,
                                         preexec_fn=_die_with(os.getpid()))
        except OSError as e:
            raise StillpointError("cannot start %s: %s" % (self.argv[0], e), cmd=self.argv)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send(self, text):
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):  # the client is gone
            return False

    def read_line(self, want, timeout):
        """Read stdout until a line equal to ``want`` (or, when ``want`` is a callable, a line it accepts).

        Returns ``(status, text_before, stderr_so_far)``; status is ``ok``, ``timeout`` or ``eof``.
        """
        accept = want if callable(want) else (lambda line: line == want)
        deadline = time.monotonic() + timeout
        streams = [self.proc.stdout, self.proc.stderr]
        while True:
            lines = self.out.decode(errors="replace").split("\n")
            for i, line in enumerate(lines[:-1]):
                if accept(line.rstrip("\r")):
                    self.out = "\n".join(lines[i + 1:]).encode()
                    self._drain_err()
                    return "ok", "\n".join(lines[:i]), self.err.decode(errors="replace")
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", self.out.decode(errors="replace"), self.err.decode(errors="replace")
            if not streams:
                return "eof", self.out.decode(errors="replace"), self.err.decode(errors="replace")
            ready, _w, _x = select.select(streams, [], [], left)
            for stream in ready:
                data = os.read(stream.fileno(), 65536)
                if not data:
                    streams.remove(stream)
                elif stream is self.proc.stdout:
                    self.out += data
                else:
                    self.err += data
            if self.proc.stdout not in streams:
                return "eof", self.out.decode(errors="replace"), self.err.decode(errors="replace")

    def _drain_err(self):
        while True:
            ready, _w, _x = select.select([self.proc.stderr], [], [], 0)
            if not ready:
                return
            data = os.read(self.proc.stderr.fileno(), 65536)
            if not data:
                return
            self.err += data

    def take_err(self):
        err, self.err = self.err.decode(errors="replace"), b""
        return err

    def finish(self, timeout=5.0):
        """Close stdin (the client's signal to end), wait; SIGKILL after ``timeout``. Returns the exit status."""
        if self.proc is None:
            return None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        return rc

    def kill(self):
        if self.alive():
            self.proc.kill()
        return self.finish(timeout=5.0)


class HeldQuiescer:
    """What every held quiescer shares: the failure policy, the timings and the result shapes."""

    held = True
    kind = None
    lock = None

    def __init__(self, lock_wait_timeout=10.0, on_failure="abort"):
        if on_failure not in ("abort", "continue"):
            raise StillpointError("on_quiesce_failure must be abort or continue, not %r" % on_failure)
        self.lock_wait_timeout = float(lock_wait_timeout)
        self.on_failure = on_failure
        self.confirmed = False
        self.locked = False
        self.problem = None
        self.lock_wait_ms = None
        self.held_ms = None
        self.locked_at = None  # epoch seconds (comparable with other processes' clocks on this host)
        self.released_at = None
        self.recorded = {}
        self._t_locked = None

    def refuse_or_continue(self, why, action, **details):
        """The lock could not be taken: nothing is frozen yet. Raise (abort) or report ok=False (continue)."""
        self.problem = why
        if self.on_failure == "abort":
            raise StillpointError(
                "%s; nothing was frozen or snapshotted. Fix it, raise lock_wait_timeout, or set "
                "on_quiesce_failure=continue to take the set at the filesystem level" % why,
                application=self.summary(), actions=[action], **details)
        return False, action

    def mark_locked(self):
        self.locked = True
        self._t_locked = time.monotonic()
        self.locked_at = time.time()

    def mark_released(self):
        self.released_at = time.time()
        if self._t_locked is not None:
            self.held_ms = ms_since(self._t_locked)

    def summary(self):
        return {"kind": self.kind, "lock": self.lock, "locked": self.locked, "confirmed": self.confirmed,
                "lock_wait_ms": self.lock_wait_ms, "held_ms": self.held_ms, "locked_at": self.locked_at,
                "released_at": self.released_at, "recorded": dict(self.recorded), "problem": self.problem,
                "lock_wait_timeout": self.lock_wait_timeout, "on_failure": self.on_failure}

    def catalog_record(self):
        """The catalog's ``stillpoint:app`` value: what was held, for how long, and what it recorded."""
        out = {"kind": self.kind, "lock": self.lock, "confirmed": self.confirmed, "held_ms": self.held_ms}
        out.update(self.recorded)
        return out


class SqlQuiescer(HeldQuiescer):
    """A held quiescer that speaks SQL through the database's own client (a :class:`Coprocess`): ``ask`` sends one
    statement and a marker ``SELECT`` and reads up to the marker's line. Subclasses name the client's flags
    (``CLIENT_FLAGS``) and how it prints an error (``ERROR_RE``)."""

    CLIENT_FLAGS = ()
    ERROR_RE = None
    MARK = "stillpoint-mark-"

    def __init__(self, client_argv, lock_wait_timeout=10.0, on_failure="abort", mountpoints=(), env=None):
        super().__init__(lock_wait_timeout, on_failure)
        self.argv = list(client_argv) + list(self.CLIENT_FLAGS)
        self.env = env
        self.mountpoints = list(mountpoints)
        self.co = None
        self._n = 0

    def close(self, action, t0, problems):
        """End the session after the thaw: the client gone, the lock released, ``confirmed`` only without
        ``problems``; returns ``(confirmed, action)``."""
        rc = self.co.finish()
        self.mark_released()
        action.update(rc=rc, ms=ms_since(t0))
        self.confirmed = not problems
        if problems:
            self.problem = "; ".join(problems)
        return self.confirmed, action

    def ask(self, sql, timeout):
        """One statement on the session; ``(status, stdout, error_text)``; status ok, error, timeout or eof."""
        self._n += 1
        mark = "%s%d" % (self.MARK, self._n)
        if not self.co.send("%s;\nSELECT '%s';\n" % (sql.rstrip().rstrip(";"), mark)):
            return "eof", "", self.co.take_err()
        status, out, _err = self.co.read_line(mark, timeout)
        err = self.co.take_err()
        if status == "ok" and self.ERROR_RE.search(err):
            return "error", out, err.strip()
        return status, out, err.strip()


class HeldHook(HeldQuiescer):
    """A user command holding any application's lock: started before the freeze, it prints a line ``READY``
    once the lock is held, stays running through the call, and is told to finish after the thaw by the end
    of its stdin. Its exit status then decides the level: 0 confirms; a hook that exited before it was told
    (died early) or fails never confirms; one that never prints ``READY`` within ``lock_wait_timeout`` is
    stopped and refused (or, with ``continue``, the set is taken at the filesystem level)."""

    kind = "held_hook"
    lock = "held_hook"

    def __init__(self, argv, lock_wait_timeout=10.0, on_failure="abort", finish_timeout=30.0):
        super().__init__(lock_wait_timeout, on_failure)
        if not argv:
            raise StillpointError("application=held_hook needs application_hook, the command (argv list) to run")
        self.argv = list(argv)
        self.finish_timeout = float(finish_timeout)
        self.co = None

    def pre(self):
        t0 = time.monotonic()
        action = dict(what="held hook: start and wait for READY", cmd=list(self.argv), rc=None, ms=None, planned=False)
        self.co = Coprocess(self.argv).start()
        status, before, err = self.co.read_line(lambda line: line.strip().upper() == READY, self.lock_wait_timeout)
        self.lock_wait_ms = action["ms"] = ms_since(t0)
        action.update(stdout=before, stderr=err)
        if status == "ok":
            self.mark_locked()
            action["rc"] = 0
            return True, action
        action["rc"] = self.co.kill()
        why = ("held hook %s exited (rc=%s) before printing %s" % (self.argv[0], action["rc"], READY) if status == "eof"
               else "held hook %s did not print %s within lock_wait_timeout=%gs (stopped)"
               % (self.argv[0], READY, self.lock_wait_timeout))
        return self.refuse_or_continue(why, action)

    def post(self):
        if not self.locked:  # pre() failed and the run went on (continue)
            return False, None
        t0 = time.monotonic()
        action = dict(what="held hook: end of stdin, wait for its exit", cmd=list(self.argv), rc=None, ms=None,
                      planned=False)
        early = not self.co.alive()
        rc = self.co.finish(timeout=self.finish_timeout)
        self.mark_released()
        action.update(rc=rc, ms=ms_since(t0), stdout=self.co.out.decode(errors="replace"), stderr=self.co.take_err())
        if early:
            self.problem = "held hook exited (rc=%s) before the thaw: its lock may have gone during the call" % rc
        elif rc != 0:
            self.problem = "held hook exited with rc=%s after the thaw" % rc
        self.confirmed = not early and rc == 0
        return self.confirmed, action


def from_params(params, mountpoints=()):
    """The held quiescer ``params`` ask for (``application``), or None."""
    app = params.get("application")
    if not app:
        return None
    if params.get("pre_hook") or params.get("post_hook"):
        raise StillpointError("application=%s holds the application itself: drop pre_hook/post_hook (or run your own "
                              "command as application=held_hook)" % app)
    if app == "held_hook":
        return HeldHook(params.get("application_hook"), params["lock_wait_timeout"], params["on_quiesce_failure"])
    # imported here: one file per application, loaded only when asked for
    if app == "postgresql":
        from ansible_collections.stillpoint.snapshots.plugins.module_utils import _postgresql
        return _postgresql.from_params(params, mountpoints)
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _mariadb
    return _mariadb.from_params(params, mountpoints)


# ------------------------------------------------------------------ controller mode: the freeze guardian holds it
# In controller mode (the action plugin of ebs_snapshot_set) the module that freezes returns before the call, so the
# held quiescer belongs to the freeze guardian (_freeze._GuardianProcess), which outlives it: it takes the lock when
# asked to freeze, right before the freeze, and releases it right after its thaw. The client is then the guardian's
# child and dies with it. These two run inside the guardian: no import, no log, nothing opened on what is frozen.

def take_in_guardian(quiescer):
    """The quiescer's ``pre()`` in the guardian, before its freeze. Returns ``(go, fields)``: ``go`` False refuses
    the freeze (nothing frozen; ``fields`` carry ``error``, ``msg``); ``fields`` hold ``application`` (the summary)
    and ``actions`` for the freeze's reply. ``continue`` after a failed lock goes on (``application.locked`` false)."""
    try:
        _ok, action = quiescer.pre()
    except StillpointError as e:
        return False, {"error": "quiesce", "msg": e.msg, "application": quiescer.summary(),
                       "actions": list(e.details.get("actions") or [])}
    except Exception as e:  # never a traceback in the guardian
        co = getattr(quiescer, "co", None)
        if co is not None and co.proc is not None:
            co.kill()
        quiescer.problem = "%s: the quiescer failed: %s: %s" % (quiescer.kind, type(e).__name__, e)
        return False, {"error": "quiesce", "msg": quiescer.problem + "; nothing was frozen or snapshotted",
                       "application": quiescer.summary(), "actions": []}
    return True, {"application": quiescer.summary(), "actions": [action] if action else []}


def release_in_guardian(quiescer, thawed_by):
    """After the guardian's thaw (or a failed freeze): confirm and release through the quiescer's ``post()`` once.
    Only a thaw the run asked for (``thawed_by == "client"``) can confirm: when the guardian thawed on its own
    (deadline, its owner gone, SIGTERM) the call may still have been running when the lock went. Returns
    ``application`` (summary), ``application_record`` (the catalog's, None when nothing was locked) and
    ``application_action`` for the thaw record."""
    action = None
    if quiescer.locked and quiescer.released_at is None:
        try:
            _ok, action = quiescer.post()
        except Exception as e:  # never a traceback in the guardian; the client dies with it anyway
            co = getattr(quiescer, "co", None)
            if co is not None and co.proc is not None:
                co.kill()
            quiescer.mark_released()
            quiescer.confirmed = False
            quiescer.problem = "releasing failed: %s: %s" % (type(e).__name__, e)
        if thawed_by != "client":
            quiescer.confirmed = False
            quiescer.problem = "; ".join(p for p in (
                "the freeze guardian thawed on its own (%s) and released the lock before the run asked for the thaw: "
                "the call may have outlived the lock" % thawed_by, quiescer.problem) if p)
    return {"application": quiescer.summary(), "application_action": action,
            "application_record": quiescer.catalog_record() if quiescer.locked else None}


class GuardedQuiescer:
    """The controller's view of a held quiescer that the host's freeze guardian runs (controller mode): the same
    interface as :class:`HeldQuiescer` for ``_ebs.SnapshotSetRun``, fed with what the guardian reported. The lock
    is taken inside the freeze request (``pre()`` only says so), the release comes with the thaw's record.

    ``confirmed`` only when the guardian's thaw record says the quiescer confirmed its lock after a thaw the run
    asked for (``thawed_by: client``); a guardian gone at the thaw (killed: its client session died with it),
    a deadline thaw or a lost lock never confirm."""

    held = True

    def __init__(self, kind, on_failure="abort"):
        if on_failure not in ("abort", "continue"):
            raise StillpointError("on_quiesce_failure must be abort or continue, not %r" % on_failure)
        self.kind = kind
        self.on_failure = on_failure
        self.confirmed = False
        self.problem = None
        self._summary = {"kind": kind, "locked": False, "confirmed": False}
        self._record = None
        self.lock_action = None
        self.release_action = None
        self._thaw = None

    def pre(self):
        return True, None  # the guardian takes the lock in the freeze request, right before it freezes

    def frozen(self, result):
        """fsfreeze's result (or failure) for the freeze request: what the lock did."""
        if result.get("application"):
            self._summary = dict(result["application"])
            self.problem = self._summary.get("problem")
        actions = result.get("actions") or []
        self.lock_action = actions[0] if actions else None

    def thawed(self, record):
        """The guardian's thaw record (the raw thaw's reply, or the fsfreeze module's result)."""
        self._thaw = dict(record or {})

    def post(self):
        self.confirmed = False
        if not self._summary.get("locked"):
            return False, self._action()
        record = self._thaw or {}
        app = record.get("application")
        if not app:
            self.problem = ("the freeze guardian on the host did not report the release (%s): its client session "
                            "ends with it, so the lock was not confirmed held to the end of the call"
                            % ("it was gone at the thaw: killed?" if record.get("guardian") == "gone" or record.get("gone")
                               else "no thaw record" if not record else "its thaw record has no application"))
            self._summary.update(confirmed=False, problem=self.problem)
            return False, self._action()
        self._summary = dict(app)
        self._record = record.get("application_record")
        self.release_action = record.get("application_action")
        self.confirmed = bool(app.get("confirmed")) and record.get("thawed_by") == "client"
        self.problem = app.get("problem")
        if not self.confirmed and not self.problem:
            self.problem = "the guardian's thaw was %s, not the run's" % record.get("thawed_by")
        self._summary.update(confirmed=self.confirmed, problem=self.problem)
        return self.confirmed, self._action()

    def _action(self):
        if self.lock_action is None and self.release_action is None:
            return None
        last = self.release_action or self.lock_action
        return dict(what="%s: held by the freeze guardian on the host (lock before the freeze, release after the thaw)"
                    % self.kind, cmd=list(last.get("cmd") or []), rc=last.get("rc"),
                    ms=sum(a.get("ms") or 0 for a in (self.lock_action, self.release_action) if a), planned=False,
                    lock=self.lock_action, release=self.release_action)

    def summary(self):
        return dict(self._summary)

    def catalog_record(self):
        out = dict(self._record) if self._record else {"kind": self.kind, "lock": self._summary.get("lock"),
                                                       "held_ms": self._summary.get("held_ms")}
        out["confirmed"] = self.confirmed
        return out
