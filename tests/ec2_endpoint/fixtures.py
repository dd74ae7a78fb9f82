# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pytest fixtures for the strict EC2 endpoint; import them into a conftest with
``from tests.ec2_endpoint.fixtures import *  # noqa``.

* ``ec2_endpoint`` (session): one server per session, state under a tmp_path_factory directory,
  stopped by its PID at the end.
* ``ec2`` (function): the same Endpoint after ``reset()`` (no faults, latencies or overrides left,
  an empty call log); EC2 resources made by earlier tests stay.
"""

from __future__ import annotations

import pytest

from tests.ec2_endpoint import Endpoint

__all__ = ["ec2_endpoint", "ec2"]

PENDING_SECONDS = 1.0


@pytest.fixture(scope="session")
def ec2_endpoint(tmp_path_factory):
    endpoint = Endpoint()
    try:
        endpoint.start(tmp_path_factory.mktemp("ec2_endpoint"), pending_seconds=PENDING_SECONDS)
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture
def ec2(ec2_endpoint):
    ec2_endpoint.reset()
    yield ec2_endpoint
