# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the artifact checks run by make (tests/galaxy/check.py, tests/ee/check.py) share: the failure type, a
scratch directory emptied first, and steps that print their seconds. Standard library only."""

from __future__ import annotations

import os
import shutil
import time


class CheckFailed(Exception):
    """A check's reason to exit 1."""


def scratch(work):
    """``work`` made absolute and emptied, with a ``tmp`` directory inside."""
    work = os.path.abspath(work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "tmp"))
    return work


def stepper(prefix):
    """A ``step(what, func, *args)`` that runs ``func(*args)``, prints ``<prefix>: <what> <seconds>`` and returns
    its result."""
    def step(what, func, *fargs):
        began = time.monotonic()
        out = func(*fargs)
        print("%s: %-46s %5.1f s" % (prefix, what, time.monotonic() - began), flush=True)
        return out
    return step
