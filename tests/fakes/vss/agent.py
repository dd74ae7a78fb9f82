# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE AWS VSS agent (tests only). What it does, and the AWS documentation each behaviour follows
(Amazon EC2 User Guide, "Application consistent Windows VSS based Amazon EBS snapshots" and its pages
"Create VSS based EBS snapshots", "Troubleshoot", "AWS VSS solution version history"):

* one CreateSnapshots call for the instance ("This package utilizes the EC2 CreateSnapshots API action",
  version 2.1.0 "Added support for using the CreateSnapshots API"), the boot volume excluded with
  ``ExcludeBootVolume=True`` ("You can't create a VSS-enabled EBS snapshot for a specific volume");
* tags at creation: the caller's ``tags`` parameter (``Key=k,Value=v;...``), ``AwsVssConfig`` ("includes meta
  information such as the AwsVssComponents version, and the Snapshot Set ID"; its exact format is NOT
  documented: this FAKE writes ``FAKE-AwsVssComponents=<version>;SnapshotSetId={guid}``), ``AppConsistent=true``
  only on success ("If the system encounters an error, the snapshot created by this process does not include
  the AppConsistent:true tag"), then ``Device`` per snapshot ("the device name of the EBS volume");
* failure modes: ``writer_timeout`` and ``hold_exceeded`` (snapshots made, no AppConsistent, command Failed; the
  troubleshooting page's "Thaw pipe connection timed out ... timeout waiting for VSS Freeze"), ``in_progress``
  (refused before anything is made: VSS_E_SNAPSHOT_SET_IN_PROGRESS, Microsoft's VSS error for a second set),
  ``member_missing`` (one data volume not in the call, e.g. detached between preflight and snapshot: not an AWS
  documented case, a fault injection).
The command's output texts are this FAKE's own; AWS does not document them.
"""

import uuid

SCENARIOS = ("ok", "writer_timeout", "hold_exceeded", "in_progress", "member_missing")
FAKE_VERSION = "2.5.1"


def parse_tags(value):
    """``Key=a,Value=b;Key=c,Value=d`` -> ``{"a": "b", "c": "d"}`` (the documents' tags parameter)."""
    out = {}
    for part in [p for p in (value or "").split(";") if p]:
        fields = dict(f.split("=", 1) for f in part.split(","))
        out[fields["Key"]] = fields.get("Value", "")
    return out


class FakeVssAgent:
    """``run(instance_id, parameters)`` -> ``(status, stdout, stderr)``; ``runs`` records every run."""

    def __init__(self, ec2_client, scenario="ok", missing_volume_id=None):
        self.ec2 = ec2_client
        self.scenario = scenario
        self.missing_volume_id = missing_volume_id
        self.runs = []

    def run(self, instance_id, parameters):
        params = dict((k, (v[0] if isinstance(v, list) else v)) for k, v in (parameters or {}).items())
        record = {"instance_id": instance_id, "parameters": params, "scenario": self.scenario, "snapshot_ids": []}
        self.runs.append(record)
        if self.scenario == "in_progress":
            return ("Failed", "FAKE ec2-vss-agent: VSS_E_SNAPSHOT_SET_IN_PROGRESS: another shadow copy creation is "
                    "already in progress\n", "")
        set_id = "{%s}" % uuid.uuid4()
        tags = parse_tags(params.get("tags"))
        tags["AwsVssConfig"] = "FAKE-AwsVssComponents=%s;SnapshotSetId=%s" % (FAKE_VERSION, set_id)
        ok = self.scenario in ("ok", "member_missing")
        if ok:
            tags["AppConsistent"] = "true"
        spec = {"InstanceId": instance_id, "ExcludeBootVolume": params.get("ExcludeBootVolume", "False") == "True"}
        if self.scenario == "member_missing" and self.missing_volume_id:
            spec["ExcludeDataVolumeIds"] = [self.missing_volume_id]
        items = self.ec2.create_snapshots(
            InstanceSpecification=spec, Description=params.get("description") or "FAKE VSS",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )["Snapshots"]
        devices = {}
        for res in self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]:
            for inst in res["Instances"]:
                for bdm in inst.get("BlockDeviceMappings", []):
                    devices[bdm["Ebs"]["VolumeId"]] = bdm["DeviceName"]
        for it in items:
            self.ec2.create_tags(Resources=[it["SnapshotId"]], Tags=[{"Key": "Device", "Value": devices.get(it["VolumeId"], "")}])
        record["snapshot_ids"] = [it["SnapshotId"] for it in items]
        record["vss_set_id"] = set_id
        if self.scenario == "writer_timeout":
            return ("Failed", "FAKE ec2-vss-agent: writer SqlServerWriter failed: VSS_E_WRITERERROR_TIMEOUT\n", "")
        if self.scenario == "hold_exceeded":
            return ("Failed", "FAKE ec2-vss-agent: Thaw pipe connection timed out; the 10 s freeze window was exceeded\n", "")
        return ("Success", "FAKE ec2-vss-agent: created %d snapshots, snapshot set %s\n" % (len(items), set_id), "")
