# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""EC2 from an action plugin, on the controller, with amazon.aws's own plugin helpers."""

from __future__ import annotations

from ansible_collections.amazon.aws.plugins.plugin_utils.base import AWSPluginBase

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError


class TaskAWS(AWSPluginBase):
    """amazon.aws's plugin helper over a task's validated AWS options (credentials, region, endpoint_url, CA
    bundle, as modules take them); ``client("ec2")`` gives the boto3 client. Failures raise StillpointError."""

    def __init__(self, name, params):
        self.ansible_name = name
        self._params = params

    def get_options(self):
        return self._params

    def _do_fail(self, message):
        raise StillpointError(message)
