# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared pieces of the stillpoint.snapshots library.

Private to the collection. Library code raises :class:`StillpointError`; only a
module's ``main()`` turns it into ``fail_json``.
"""

from __future__ import annotations

import time

CREATOR = "stillpoint.snapshots"

# Consistency levels, weakest first (seed 004).
LEVELS = ("crash", "filesystem", "application")


class StillpointError(Exception):
    """The one error type of the library.

    ``msg`` says what was wrong and what to do; ``rc``/``stdout``/``stderr`` carry a failed
    command's output; ``details`` carries structured context (returned to the user as-is).
    """

    def __init__(self, msg, rc=None, stdout=None, stderr=None, **details):
        super().__init__(msg)
        self.msg = msg
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.details = details

    def fail_kwargs(self):
        """Keyword arguments for ``module.fail_json``."""
        out = dict(msg=self.msg)
        for key in ("rc", "stdout", "stderr"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.details)
        return out


def lower_level(a, b):
    """Return the weaker of two consistency levels."""
    return a if LEVELS.index(a) <= LEVELS.index(b) else b


def ms_since(t0, t1=None):
    """Milliseconds between two ``time.monotonic()`` readings, rounded to 0.001 ms."""
    if t1 is None:
        t1 = time.monotonic()
    return round((t1 - t0) * 1000.0, 3)


class CommandRunner:
    """Run argv lists through ``AnsibleModule.run_command`` with ``LC_ALL=C``.

    The library never spawns commands itself; modules hand it a runner built on their
    ``run_command`` so that tests can feed it recorded ``(rc, stdout, stderr)`` tuples.
    """

    def __init__(self, run_command, get_bin_path=None):
        self._run = run_command
        self._bin = get_bin_path

    def bin(self, name):
        if self._bin is None:
            return name
        return self._bin(name, required=True)

    def __call__(self, argv, check=True, data=None, what=None):
        kwargs = dict(environ_update={"LC_ALL": "C", "LANG": "C"})
        if data is not None:
            kwargs["data"] = data
        rc, out, err = self._run(list(argv), **kwargs)
        if check and rc != 0:
            raise StillpointError(
                "%s failed (rc=%s): %s" % (what or argv[0], rc, (err or out).strip()),
                rc=rc, stdout=out, stderr=err, cmd=list(argv),
            )
        return rc, out, err

    @classmethod
    def from_module(cls, module):
        return cls(module.run_command, module.get_bin_path)


class Recorder:
    """The one change recorder of the library: every command that changes state goes through
    :meth:`act`, every step that runs no command through :meth:`note`.

    ``actions`` is the result shape every module returns::

        [{"what": "assemble /dev/md0", "cmd": [...], "rc": 0, "ms": 12.5, "planned": False}, ...]

    In check mode an action is recorded with ``planned: True`` (``rc``/``ms`` None) and nothing runs,
    unless ``dry_run`` names the tool's own dry run (LVM's ``--test``), which then runs and is
    recorded as ``dry_run``/``dry_run_rc``/``dry_run_ms`` on the same entry.
    """

    def __init__(self, runner, check_mode=False, clock=time.monotonic):
        self.run = runner
        self.check_mode = check_mode
        self.clock = clock
        self.actions = []
        self.changed = False

    def probe(self, argv, data=None):
        """A read-only command (runs in check mode too); returns (rc, stdout, stderr)."""
        return self.run(list(argv), check=False, data=data)

    def act(self, what, argv, fail=None, changes=True, dry_run=None, data=None, **extra):
        """A command that changes state: planned in check mode, else run and recorded.

        Returns (rc, out, err); None in check mode (or the dry run's result when ``dry_run`` is
        given). A non-zero rc raises :class:`StillpointError` carrying ``actions`` - its message is
        ``fail`` (or "<what> failed") completed with the command and its output - unless ``fail``
        is False, in which case the caller judges the rc.
        """
        argv = list(argv)
        entry = dict(what=what, cmd=argv, rc=None, ms=None, planned=self.check_mode)
        entry.update(extra)
        self.actions.append(entry)
        if self.check_mode:
            if changes:
                self.changed = True
            if dry_run is None:
                return None
            t0 = self.clock()
            rc, out, err = self.run(list(dry_run), check=False, data=data)
            entry.update(dry_run=list(dry_run), dry_run_rc=rc, dry_run_ms=ms_since(t0, self.clock()))
            if rc != 0 and fail is not False:
                raise StillpointError(
                    "%s: the tool's own dry run refuses it (rc=%s): %s. Nothing was changed."
                    % (fail or what, rc, (err or out).strip()),
                    rc=rc, stdout=out, stderr=err, cmd=list(dry_run), actions=self.actions)
            return rc, out, err
        t0 = self.clock()
        rc, out, err = self.run(argv, check=False, data=data)
        entry.update(rc=rc, ms=ms_since(t0, self.clock()))
        if rc == 0 and changes:
            self.changed = True
        if rc != 0 and fail is not False:
            raise StillpointError(
                "%s: %s (rc=%s): %s" % (fail or ("%s failed" % what), " ".join(argv), rc, (err or out).strip()),
                rc=rc, stdout=out, stderr=err, cmd=argv, actions=self.actions)
        return rc, out, err

    def note(self, what, **extra):
        """A step that runs no command (a wait, a check), in the same list and shape."""
        entry = dict(what=what, cmd=[], rc=None, ms=None, planned=self.check_mode)
        entry.update(extra)
        self.actions.append(entry)
        return entry

    @property
    def planned(self):
        """The actions that check mode only planned."""
        return [a for a in self.actions if a["planned"]]
