# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Processes, read from /proc: whether one lives, waiting for it to end, the tree below one."""

from __future__ import annotations

import os
import time


def _stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name (state first, then the parent pid)."""
    with open("/proc/%d/stat" % pid) as handle:
        return handle.read().rsplit(")", 1)[1].split()


def alive(pid):
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pid, timeout=3.0):
    end = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def descendants(pid):
    """The pids whose parent chain leads to ``pid`` (read from /proc now)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat_fields(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        children = [p for p, parent in parents.items() if parent == current]
        out += children
        todo += children
    return out
