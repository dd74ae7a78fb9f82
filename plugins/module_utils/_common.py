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
