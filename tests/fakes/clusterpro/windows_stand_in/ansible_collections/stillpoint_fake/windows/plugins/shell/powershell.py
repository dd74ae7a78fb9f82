# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE, for tests only: the POSIX shell (ansible.builtin.sh) reporting the shell family ``powershell``.

With ``ansible_shell_type: stillpoint_fake.windows.powershell`` a POSIX host looks like a Windows host
to the CLUSTERPRO action plugins (which look at ``SHELL_FAMILY``), while every command, module and
path (``join_path``) stays POSIX; ansible-core itself decides Windows by ``_IS_WINDOWS``, which stays
False. See tests/fakes/clusterpro/README.md, "The Windows path".
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: powershell
short_description: FAKE - the POSIX shell reporting the powershell shell family (tests only)
description:
  - The ansible.builtin.sh shell plugin with C(SHELL_FAMILY) set to C(powershell). Tests only.
extends_documentation_fragment:
  - shell_common
"""

from ansible.plugins.shell.sh import ShellModule as PosixShell


class ShellModule(PosixShell):

    SHELL_FAMILY = "powershell"
    COMPATIBLE_SHELLS = frozenset()  # never chosen for an executable's name
