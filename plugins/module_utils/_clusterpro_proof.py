# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""CLUSTERPRO refusal 3, read from EC2: initial mirror construction is turned off only when EC2 shows
that both servers' mirror volumes were created from one snapshot of one complete backup set.

Private to the collection; raises :class:`StillpointError`, never exits. Every EC2 failure (the
service's answer, or none at all) becomes a refusal that names the calls and what to check.
"""

from __future__ import annotations

from ansible_collections.amazon.aws.plugins.module_utils.botocore import gather_sdk_versions

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
# The proof that volumes were restored from one snapshot of one set is the restore side's
# (_restore.same_snapshot_proof, also used by drbd_resource); the CLUSTERPRO restore asks the same.
from ansible_collections.stillpoint.snapshots.plugins.module_utils._restore import same_snapshot_proof

NOT_PROVED = ("Refused: initial mirror construction stays on, the mirror volumes are not proved to come from one "
              "snapshot of backup set %s: %s")
EC2_UNREADABLE = ("Refused: initial mirror construction stays on, EC2 could not be read to prove that the mirror "
                  "volumes come from one snapshot of backup set %s (DescribeVolumes, DescribeSnapshots); nothing "
                  "was changed")


def prove_same_backup_set(aws, spec):
    """The same_backup_set proof, read from EC2: each volume's origin snapshot (DescribeVolumes), that
    snapshot's membership of the complete set (catalog tags, DescribeSnapshots), one snapshot for all,
    and each volume attached to its server's instance when one is named.

    ``aws`` has ``client(service, retry_decorator=...)``; ``spec`` is the module's ``same_backup_set``.
    Returns ``(checked, proof)``: the input of :func:`~._clusterpro.validate_same_backup_set` and what
    EC2 answered."""
    set_id = spec["set_id"]
    volumes = spec["volumes"] or []
    ids = [v["volume_id"] for v in volumes]
    client = aws.client("ec2", retry_decorator=ebs.RETRY)
    try:
        proof = same_snapshot_proof(client, set_id, ids)
        described = dict((v["VolumeId"], v) for v in ebs.describe_volumes(client, volume_ids=ids))
    except StillpointError as exc:
        # the EC2 layer turns a failed call into a StillpointError naming it (_ebs.aws_error), raised while
        # handling botocore's exception: that is "EC2 could not be read", anything else "not proved"
        if isinstance(exc.__cause__ or exc.__context__, ebs.aws_errors()):
            exc.msg = "%s: %s" % (EC2_UNREADABLE % set_id, exc.msg)
            exc.details.update(gather_sdk_versions())
        else:
            exc.msg = NOT_PROVED % (set_id, exc.msg)
        raise
    except ebs.aws_errors() as exc:
        error = ebs.aws_error(EC2_UNREADABLE % set_id, exc)
        error.details.update(gather_sdk_versions())
        raise error from exc
    for vol in volumes:
        if not vol.get("instance_id"):
            continue
        attached = [a.get("InstanceId") for a in described[vol["volume_id"]].get("Attachments") or []
                    if a.get("State") in ("attaching", "attached")]
        if vol["instance_id"] not in attached:
            raise StillpointError("Refused: volume %s of server %s is not attached to instance %s (attached to: %s); "
                                  "the proof must be about the disks the servers use." % (
                                      vol["volume_id"], vol["server"], vol["instance_id"], ", ".join(attached) or "none"))
    checked = dict(set_id=set_id, volumes=[
        dict(server=v["server"], volume_id=v["volume_id"], snapshot_id=proof["volumes"][v["volume_id"]], set_id=set_id)
        for v in volumes])
    return checked, proof
