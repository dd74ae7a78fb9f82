# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE, tests only: stands in for ansible.windows.win_service on the stand-in Windows host.

It touches no service. It reads and changes the FAKE Windows services (tests/fakes/vss/services.py) kept in the
FAKE Windows host's state file STILLPOINT_FAKE_WINDOWS_STATE; the repository root (to import it) is
STILLPOINT_FAKE_WINDOWS_ROOT. Only ``name``, ``state`` (started, stopped) and ``force_dependent_services`` are
modelled; the result has win_service's shape.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: win_service
short_description: FAKE - ansible.windows.win_service on the FAKE Windows services (tests only)
description:
  - Reads, stops and starts the FAKE host's services. Tests only.
options:
  name:
    description: The service name.
    type: str
  state:
    description: started or stopped.
    type: str
  force_dependent_services:
    description: Stop running dependents first.
    type: bool
author:
  - stillpoint.snapshots maintainers (@stillpoint)
"""

import os
import sys

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(name=dict(type="str", required=True), state=dict(type="str"),
                                              force_dependent_services=dict(type="bool", default=False)),
                           supports_check_mode=True)
    sys.path.insert(0, os.environ["STILLPOINT_FAKE_WINDOWS_ROOT"])
    from tests.fakes.vss import disks, services  # noqa: E402 (the repository is only known at run time)

    path = os.environ["STILLPOINT_FAKE_WINDOWS_STATE"]
    host = disks.FakeWindowsDisks.load(path)
    try:
        out = services.FakeServices(host.state).run(module.params, module.check_mode)
    except services.ServiceError as e:
        module.fail_json(msg=str(e), exists=module.params["name"] in host.state.get("services", {}))
    if out["changed"] and not module.check_mode:
        host.save(path)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
