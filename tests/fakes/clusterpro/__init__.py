# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The FAKE CLUSTERPRO: command-line executables (``bin/``) over a JSON state machine (``state.py``).

Use :func:`install` in a test: it writes a state file, and returns the environment (PATH with the
fake's ``bin/`` first, ``FAKE_CLUSTERPRO_STATE``, ``FAKE_CLUSTERPRO_NODE``, the Python to run).
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


def install(directory, node="server1", **state_kw):
    """Write a fresh state under ``directory``; return (state path, environment additions)."""
    path = os.path.join(str(directory), "fake-clusterpro-state.json")
    write_state(path, new_state(**state_kw))
    env = {ENV_STATE: path, ENV_NODE: node, ENV_PYTHON: sys.executable,
           "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    return path, env


__all__ = ["BIN", "ENV_NODE", "ENV_STATE", "ENV_PYTHON", "install", "locked", "new_state", "read_state", "write_state"]
