# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The FAKE CLUSTERPRO: command-line executables (``bin/``) over a JSON state machine (``state.py``).

Use :func:`install` in a test: it writes a state file, and returns the environment (PATH with the
fake's ``bin/`` first, ``FAKE_CLUSTERPRO_STATE``, ``FAKE_CLUSTERPRO_NODE``, the Python to run).

``windows_stand_in/`` (FAKE too) makes this POSIX host a stand-in Windows host for the CLUSTERPRO action
plugins: :data:`WINDOWS_SHELL` (host or task variables) and :func:`windows_stand_in_env` (the collections
path with the stand-ins first). See README.md, "The Windows path".
"""

import os
import sys

from tests.fakes.clusterpro.state import ENV_NODE
from tests.fakes.clusterpro.state import ENV_STATE
from tests.fakes.clusterpro.state import build_conf  # noqa: F401  (re-exported)
from tests.fakes.clusterpro.state import locked
from tests.fakes.clusterpro.state import new_state
from tests.fakes.clusterpro.state import read_state
from tests.fakes.clusterpro.state import write_state

BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin")
ENV_PYTHON = "FAKE_CLUSTERPRO_PYTHON"

WINDOWS_STAND_IN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "windows_stand_in")
# the shell plugin that reports the powershell family (windows_stand_in/.../stillpoint_fake/windows)
WINDOWS_SHELL = {"ansible_shell_type": "stillpoint_fake.windows.powershell"}


def windows_stand_in_env(collections_path):
    """ANSIBLE_COLLECTIONS_PATH with the stand-ins first: stillpoint_fake.windows (the shell) and a FAKE
    ansible.windows whose win_command, win_tempfile, win_stat, win_file and win_copy route to ansible.builtin."""
    return {"ANSIBLE_COLLECTIONS_PATH": WINDOWS_STAND_IN + os.pathsep + collections_path}


def install(directory, node="server1", **state_kw):
    """Write a fresh state under ``directory``; return (state path, environment additions)."""
    path = os.path.join(str(directory), "fake-clusterpro-state.json")
    write_state(path, new_state(**state_kw))
    env = {ENV_STATE: path, ENV_NODE: node, ENV_PYTHON: sys.executable,
           "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    return path, env


__all__ = ["BIN", "ENV_NODE", "ENV_STATE", "ENV_PYTHON", "WINDOWS_SHELL", "WINDOWS_STAND_IN", "install", "locked",
           "new_state", "read_state", "windows_stand_in_env", "write_state"]
