# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The FAKE AWS VSS agent (tests only; not AWS software): see README.md.

* :class:`FakeVssAgent` behaves as AWS documents the AWS VSS components do when Systems Manager runs
  ``AWSEC2-CreateVssSnapshot``: one CreateSnapshots for the instance with the documented tags, or the
  documented failure shapes;
* :class:`FakeSsmProxy` is an endpoint on 127.0.0.1 that answers the SSM calls the controller makes
  (SendCommand, GetCommandInvocation) by running the FAKE agent, and forwards every other request (EC2)
  to the strict EC2 endpoint unchanged;
* :func:`fake_windows_facts` builds what the FAKE Windows host's module would return (from the fixtures
  under tests/unit/fixtures/vss), with the endpoint's volume ids as NVMe serial numbers.
"""

from tests.fakes.vss.agent import FakeVssAgent
from tests.fakes.vss.agent import SCENARIOS
from tests.fakes.vss.proxy import FakeSsmProxy
from tests.fakes.vss.windows import fake_windows_facts
from tests.fakes.vss.windows import FakeWindowsHost

__all__ = ["FakeVssAgent", "FakeSsmProxy", "FakeWindowsHost", "SCENARIOS", "fake_windows_facts"]
