#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: clock_offset
short_description: Measure a host's real-time clock against the controller's, with an error bound
version_added: 0.2.0
description:
  - Reads the host's clock O(samples) times through the task's connection, each time between two readings of the
    controller's clock, and keeps the reading with the shortest round trip. The offset (host minus controller) is
    the host's reading minus the middle of that round trip; the error bound is half the round trip, whatever the
    asymmetry of the path.
  - The clock is read by the host's Python interpreter (the one the modules run with), so the offset is that of
    the clock the collection's modules see.
  - With O(reader=persistent) one such Python process is started on the host (in the task's remote temporary
    directory, detached, ending after the samples or at the latest 30 s + 10 s a sample later) and answers every
    sample; each sample is one command through the connection that writes a nonce to the reader's request FIFO and
    reads its answer, so the round trip (and the error bound) no longer includes a Python start-up. The reader and
    the samples run as the connection's user, without C(become) (the real-time clock is the system's; a privilege
    escalation's start-up would be part of every round trip).
    O(reader=fresh) starts a new Python for each sample.
  - Used by consistency groups (M(stillpoint.snapshots.ebs_snapshot_group)) before and after the hosts' freezes.
  - An action plugin; the host needs only its Python interpreter. Changes nothing.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  samples:
    description: How many round trips to make (at least 1).
    type: int
    default: 5
  reader:
    description: V(persistent) - one reader process on the host answers every sample; V(fresh) - a new Python per sample.
    type: str
    choices: [persistent, fresh]
    default: persistent
extends_documentation_fragment:
  - stillpoint.snapshots.attributes.info_module
"""

EXAMPLES = r"""
- name: How far is this host's clock from the controller's?
  stillpoint.snapshots.clock_offset:
    samples: 7
  register: clock
"""

RETURN = r"""
offset_s:
  description: The host's clock minus the controller's, in seconds.
  returned: success
  type: float
  sample: 0.0021
error_s:
  description: The bound on the error of RV(offset_s) (half the shortest round trip).
  returned: success
  type: float
  sample: 0.0094
rtt_s:
  description: The shortest round trip.
  returned: success
  type: float
samples:
  description: How many round trips were made.
  returned: success
  type: int
reader:
  description: The reader used (O(reader)).
  returned: success
  type: str
measured_at:
  description: When the kept reading was made, on the controller's clock (epoch seconds).
  returned: success
  type: float
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(samples=dict(type="int", default=5),
                                              reader=dict(type="str", choices=["persistent", "fresh"],
                                                          default="persistent")),
                           supports_check_mode=True)
    module.fail_json(msg="stillpoint.snapshots.clock_offset runs as an action plugin (it needs the controller's clock)")


if __name__ == "__main__":
    main()
