# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The end every controller-side action run shares: the library's error becomes the task's
failure (its ``msg`` and context), and the task's remote temporary directory is removed in any case."""

from __future__ import annotations

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError


def run_on_controller(action, result, work):
    """``result`` updated with ``work()`` (a dict), or with the StillpointError it raised."""
    try:
        result.update(work())
    except StillpointError as exc:
        result.update(exc.fail_kwargs())
        result["failed"] = True
    finally:
        action._remove_tmp_path(action._connection._shell.tmpdir)
    return result
