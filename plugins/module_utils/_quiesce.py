# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Quiescing on the host: application hooks and the filesystem freeze as one "quiescer".

Seed 000's order: the application first (pre-freeze hook), then the filesystems / volume
manager (freeze), then the snapshot; afterwards thaw, then the post-thaw hook.
"""

from __future__ import annotations

import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import ms_since


def _freeze():
    """The freeze library, imported on first use: the restore's host steps use :class:`Hooks` and never freeze,
    and the freeze library is the largest file of all (compiling it is a fifth of a second of every module start
    in a small guest)."""
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze as freeze
    return freeze


class Hooks:
    """Pre-freeze and post-thaw commands (argv lists), each under its own time budget.

    ``run_argv(argv) -> (rc, stdout, stderr)``; the budget is enforced with coreutils
    ``timeout`` so that a hung hook cannot hold the procedure (``timeout_bin`` is its path).
    A failing pre-hook raises unless ``on_failure == "continue"``, in which case the caller
    records a lower consistency level.
    """

    def __init__(self, run_argv, pre=None, post=None, timeout=30.0, on_failure="abort", timeout_bin="timeout"):
        if on_failure not in ("abort", "continue"):
            raise StillpointError("on_hook_failure must be abort or continue, not %r" % on_failure)
        self.run_argv = run_argv
        self.pre_cmd = list(pre or [])
        self.post_cmd = list(post or [])
        self.timeout = float(timeout)
        self.on_failure = on_failure
        self.timeout_bin = timeout_bin

    def _run(self, argv):
        t0 = time.monotonic()
        full = [self.timeout_bin, "--kill-after=5", "%g" % self.timeout] + list(argv)
        rc, out, err = self.run_argv(full)
        report = {"cmd": list(argv), "rc": rc, "ms": ms_since(t0), "stdout": out, "stderr": err,
                  "timed_out": rc == 124 or rc == 137}
        return rc == 0, report

    def pre(self):
        if not self.pre_cmd:
            return True, None
        ok, report = self._run(self.pre_cmd)
        if not ok and self.on_failure == "abort":
            raise StillpointError(
                "pre-freeze hook %s %s (rc=%s); nothing was frozen or snapshotted. Fix the hook, or set "
                "on_hook_failure=continue to take the set anyway at a lower consistency level"
                % (self.pre_cmd, "timed out after %gs" % self.timeout if report["timed_out"] else "failed", report["rc"]),
                rc=report["rc"], stdout=report["stdout"], stderr=report["stderr"])
        return ok, report

    def post(self):
        if not self.post_cmd:
            return True, None
        return self._run(self.post_cmd)

    @property
    def level(self):
        return "application" if self.pre_cmd else None


class GuardianQuiescer:
    """Freeze/thaw through a fresh guardian per cycle (host mode)."""

    def __init__(self, freeze_plan, deadline, level="filesystem"):
        self.freeze_plan = freeze_plan
        self.deadline = deadline
        self.level = level
        self._guardian = None

    def prepare(self):
        """Start the guardian now (a fork), so that a later :meth:`freeze` is only the sync and the FIFREEZEs;
        its deadline counts from the freeze."""
        if self._guardian is None:
            self._guardian = _freeze().Guardian.start(self.freeze_plan, deadline=self.deadline)

    def presync(self):
        """Write the plan's dirty data out now (``syncfs``, nothing frozen); the milliseconds it took. A caller that
        waits for an instant calls it just before, so the sync that opens :meth:`freeze` has little left to flush."""
        return _freeze().presync_filesystems([p["mountpoint"] for p in self.freeze_plan])

    def freeze(self):
        self.prepare()
        try:
            return self._guardian.freeze()
        except Exception:
            # the guardian already thawed whatever it froze in this call; let it go
            guardian, self._guardian = self._guardian, None
            guardian.close()
            raise

    def thaw(self):
        guardian, self._guardian = self._guardian, None
        try:
            return guardian.thaw()
        finally:
            guardian.close()
