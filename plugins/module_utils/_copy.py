# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whole-set copies (backup_set_copy): a complete backup set copied to another region and/or account,
every member or none, found again by its tags on a re-run (docs/copies.md).

The planning is pure (:func:`plan_copy` and the functions it uses, over DescribeSnapshots items); the
calls are in :func:`copy_set`. Cross-account: the source snapshots are shared with the destination
account (createVolumePermission, source credentials), copied there (CopySnapshot in the destination
region, destination credentials), and the share is removed once the copy set is complete.

Encrypted sources across accounts (:func:`check_encryption`, before any change): EC2 cannot share a snapshot
encrypted with the AWS managed key (aws/ebs), only one encrypted with a customer managed key, and the
destination account needs that key shared with it (AWS, Amazon EBS User Guide: "Share an Amazon EBS snapshot",
"Share the KMS key used to encrypt a shared Amazon EBS snapshot"; "Copy an Amazon EBS snapshot"). Such a copy is
re-keyed with ``kms_key_id``, a key of the destination account in the destination region.
"""

from __future__ import annotations

import hashlib
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _retention as retention
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

# Tags a copy carries besides the source's catalog tags (docs/copies.md).
K_COPY_OF = catalog.PREFIX + "copy-of"  # "<source account>:<source region>:<source set id>", the re-run's key
K_SOURCE_SET_ID = catalog.PREFIX + "source-set-id"
K_SOURCE_REGION = catalog.PREFIX + "source-region"
K_SOURCE_ACCOUNT = catalog.PREFIX + "source-account"
K_SOURCE_SNAPSHOT = catalog.PREFIX + "source-snapshot"
K_KMS_KEY = catalog.PREFIX + "kms-key-id"  # the key the copy was re-keyed with ("" when none was given)
K_COMPLETION_MINUTES = catalog.PREFIX + "completion-minutes"
K_COPIED = catalog.PREFIX + "copied"  # when the copy was asked for (the data's time stays in stillpoint:created)

AWS_MANAGED_ALIAS_PREFIX = "alias/aws/"  # reserved for AWS managed keys (aws/ebs for EBS)
USABLE_KEY_STATES = ("Enabled",)
# what the destination account needs on the source's customer managed key (key policy or grant); AWS: "Share the
# KMS key used to encrypt a shared Amazon EBS snapshot"
SHARED_KEY_ACTIONS = ("kms:DescribeKey", "kms:CreateGrant", "kms:Decrypt", "kms:ReEncrypt*",
                      "kms:GenerateDataKeyWithoutPlaintext")

COPY_KEYS = (K_COPY_OF, K_SOURCE_SET_ID, K_SOURCE_REGION, K_SOURCE_ACCOUNT, K_SOURCE_SNAPSHOT, K_KMS_KEY,
             K_COMPLETION_MINUTES, K_COPIED)
MAX_TAGS = 50  # user tags EC2 allows on one resource
PERMISSION = "createVolumePermission"


# --------------------------------------------------------------------------- pure planning

def copy_key(source_account, source_region, source_set_id):
    return "%s:%s:%s" % (source_account, source_region, source_set_id)


def copy_set_id(source_set_id, source_account, source_region, dest_account, dest_region):
    """The copy's own set id: the source's time part (sets sort by the data's time) and a suffix derived
    from source and destination, so that every run names the same copy and a copy never takes the source's
    id (a copy copied back into the source region would otherwise merge with its source in the catalog)."""
    stamp = source_set_id[3:19] if catalog.SET_ID_RE.match(source_set_id) else None
    text = "%s|%s|%s|%s|%s" % (source_set_id, source_account, source_region, dest_account, dest_region)
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
    if stamp is None:
        return "bs-%s" % digest[:12]
    suffix = digest[:6]
    if suffix == source_set_id[-6:]:
        suffix = digest[6:12]
    return "bs-%s-%s" % (stamp, suffix)


def check_options(completion_minutes=None, wait_timeout=None):
    if completion_minutes is not None and (not 15 <= completion_minutes <= 2880 or completion_minutes % 15):
        raise StillpointError("completion_duration_minutes must be 15..2880 in steps of 15 (EC2's time-based copy); "
                              "got %s. Nothing was copied." % completion_minutes)
    if wait_timeout is not None and wait_timeout < 0:
        raise StillpointError("wait_timeout must not be negative")


def check_source(records, set_id, source_region, why_absent=None):
    """The one complete source set, or a refusal that says what to do (nothing changed)."""
    found = [r for r in records if r["set_id"] == set_id]
    if not found:
        why = why_absent(set_id) if why_absent else "set %s does not exist in this account and region" % set_id
        raise StillpointError("refused, nothing was copied: %s (source region %s). Check set_id and region; "
                              "backup_set_info lists the sets." % (why, source_region), refused=[why])
    rec = found[0]
    if not catalog.readable(rec):
        raise StillpointError("refused, nothing was copied: set %s was written with catalog schema %s, which this "
                              "version does not read" % (set_id, rec.get("schema") or "(missing)"))
    if rec["state"] != "complete":
        hint = ("wait for it to complete (re-run ebs_snapshot_set with set_id=%s) and copy it then" % set_id
                if rec["state"] == "pending" else "it can never become a valid backup; copy a complete set")
        raise StillpointError("refused, nothing was copied: set %s is %s (%s); only a complete set is copied, "
                              "never part of one: %s" % (set_id, rec["state"], "; ".join(rec["problems"]), hint),
                              set=rec)
    return rec


def check_destination(source_region, source_account, dest_region, dest_account):
    if source_region == dest_region and source_account == dest_account:
        raise StillpointError("refused, nothing was copied: the destination is the source itself (region %s, account "
                              "%s). Give destination_region, or destination credentials of another account"
                              % (source_region, source_account))


def encrypted_members(source_snaps):
    """``({key: [snapshot ids]}, [encrypted snapshot ids EC2 names no key for])`` of the encrypted members."""
    keys, unnamed = {}, []
    for snap in sorted(source_snaps, key=lambda s: s["SnapshotId"]):
        if not snap.get("Encrypted"):
            continue
        if snap.get("KmsKeyId"):
            keys.setdefault(snap["KmsKeyId"], []).append(snap["SnapshotId"])
        else:
            unnamed.append(snap["SnapshotId"])
    return keys, unnamed


def aws_managed(meta, aliases=()):
    """Whether a key (DescribeKey's KeyMetadata, its alias names) is an AWS managed key: KeyManager ``AWS``, or
    an ``alias/aws/*`` name (that prefix is reserved for AWS managed keys)."""
    return meta.get("KeyManager") == "AWS" or any(a.startswith(AWS_MANAGED_ALIAS_PREFIX) for a in aliases)


def arn_account(arn):
    """The account of a KMS ARN (``arn:aws:kms:<region>:<account>:key/...``), None for anything else."""
    parts = (arn or "").split(":")
    return parts[4] if len(parts) > 5 and parts[0] == "arn" and parts[2] == "kms" else None


def check_encryption(set_id, source_snaps, source_keys, kms_key_id, dest_key, source_account, dest_account,
                     dest_region, source_key_access=None):
    """Refuse (nothing changed) a cross-account copy the destination could not make or would not own: members
    encrypted with an AWS managed key (never shareable), with a key EC2 does not name or that is not usable,
    encrypted members without ``kms_key_id``, and a ``kms_key_id`` (``dest_key``: DescribeKey's KeyMetadata with
    the destination credentials in ``dest_region``) that is not an enabled key of the destination account.
    ``source_keys``: ``{key: (KeyMetadata, [alias names])}`` of the members' keys (source credentials).
    ``source_key_access``: ``{key: None, or why DescribeKey of its ARN with the destination credentials failed}``;
    a key the destination cannot describe is not shared with it (DescribeKey is among the actions sharing takes),
    and the copy is refused before the share. Returns what was checked (the module's ``encryption``)."""
    keys, unnamed = encrypted_members(source_snaps)
    out = dict(encrypted=sorted(sid for ids in keys.values() for sid in ids) + unnamed,
               source_keys=[dict(key_id=k, key_manager=source_keys[k][0].get("KeyManager"),
                                 aliases=list(source_keys[k][1]), snapshot_ids=ids) for k, ids in sorted(keys.items())],
               destination_key=None)
    if unnamed:
        raise StillpointError("refused, nothing was copied: EC2 reports %s of set %s encrypted but names no KMS key "
                              "(KmsKeyId), so it cannot be checked that the key can be shared with account %s"
                              % (", ".join(unnamed), set_id, dest_account), encryption=out)
    managed = [(k, ids) for k, ids in sorted(keys.items()) if aws_managed(*source_keys[k])]
    if managed:
        raise StillpointError(
            "refused, nothing was copied: %s of set %s %s encrypted with the AWS managed key %s of account %s, and "
            "EC2 does not share snapshots encrypted with an AWS managed key with another account (only with a "
            "customer managed key; AWS: 'Share an Amazon EBS snapshot'), so account %s cannot copy them. Re-encrypt "
            "with a customer managed key: copy the set to another region of account %s with kms_key_id set to a "
            "customer managed key there (backup_set_copy without destination credentials), share that key with "
            "account %s (key policy or grant: %s) and copy that copy set to account %s; for later sets make a "
            "customer managed key the volumes' EBS encryption key"
            % (", ".join(sid for _k, ids in managed for sid in ids), set_id,
               "is" if sum(len(ids) for _k, ids in managed) == 1 else "are",
               ", ".join("%s (%s)" % (k, ", ".join(source_keys[k][1]) or source_keys[k][0].get("KeyManager"))
                         for k, _ids in managed), source_account, dest_account, source_account, dest_account,
               ", ".join(SHARED_KEY_ACTIONS), dest_account), encryption=out)
    unusable = [k for k in sorted(keys) if source_keys[k][0].get("KeyState") not in USABLE_KEY_STATES]
    if unusable:
        raise StillpointError("refused, nothing was copied: the key of set %s's snapshots %s is %s, not Enabled: no "
                              "copy can be made with it" % (set_id, ", ".join(unusable), ", ".join(
                                  str(source_keys[k][0].get("KeyState")) for k in unusable)), encryption=out)
    if keys and not kms_key_id:
        raise StillpointError(
            "refused, nothing was copied: set %s's snapshots are encrypted with the customer managed key %s of "
            "account %s, and the copy to account %s names no kms_key_id. Give kms_key_id, a customer managed key of "
            "account %s in %s: the copies are re-keyed with it and owned by that account (without it EC2 encrypts "
            "them with whatever default key account %s has, and the catalog records none). Account %s also needs "
            "the source key shared with it (its key policy or a grant: %s; AWS: 'Share the KMS key used to encrypt "
            "a shared Amazon EBS snapshot', 'Copy an Amazon EBS snapshot')"
            % (set_id, ", ".join(sorted(keys)), source_account, dest_account, dest_account, dest_region, dest_account,
               dest_account, ", ".join(SHARED_KEY_ACTIONS)), encryption=out)
    denied = [k for k in sorted(keys) if (source_key_access or {}).get(k)]
    if denied:
        raise StillpointError(
            "refused, nothing was copied: account %s cannot use the key %s of set %s's snapshots: KMS DescribeKey of "
            "%s with the destination credentials answered %s. The key's owner (account %s) must share it with "
            "account %s (its key policy or a grant: %s; AWS: 'Share the KMS key used to encrypt a shared Amazon EBS "
            "snapshot'), and the destination credentials need the same actions on it (IAM)"
            % (dest_account, ", ".join(denied), set_id, ", ".join(source_keys[k][0].get("Arn") or k for k in denied),
               "; ".join(source_key_access[k] for k in denied), source_account, dest_account,
               ", ".join(SHARED_KEY_ACTIONS)), encryption=out)
    if kms_key_id and dest_key is not None:
        out["destination_key"] = dest_key.get("Arn")
        owner = dest_key.get("AWSAccountId") or arn_account(dest_key.get("Arn"))
        if owner != dest_account:
            raise StillpointError("refused, nothing was copied: kms_key_id %s is key %s of account %s, not of the "
                                  "destination account %s: the copies would depend on another account's key. Give a "
                                  "key of account %s in %s" % (kms_key_id, dest_key.get("Arn"), owner, dest_account,
                                                               dest_account, dest_region), encryption=out)
        if dest_key.get("KeyState") not in USABLE_KEY_STATES:
            raise StillpointError("refused, nothing was copied: kms_key_id %s (%s) is %s, not Enabled: CopySnapshot "
                                  "cannot encrypt with it" % (kms_key_id, dest_key.get("Arn"), dest_key.get("KeyState")),
                                  encryption=out)
    return out


def copy_tags(snapshot, copy_id, key, source_region, source_account, source_set_id, kms_key_id=None,
              completion_minutes=None, copied=None):
    """Tags of the copy of one member: the source's tags (not ``aws:*``), its own set id and state
    ``pending``, and where it came from. Refused (nothing copied) beyond EC2's 50 tags.

    The copy carries the member's own tags (``stillpoint:member``...) instead of the source set's member map: the
    map finds a member by the volume it was taken of, and a copy's ``VolumeId`` is not its source's."""
    # not aws:* (reserved), not the source's drill verdict (it proves the source, not the copy), not the member map
    drop = (catalog.K_DRILL, catalog.K_MEMBER_MAP)
    tags = dict((k, v) for k, v in catalog.tag_dict(snapshot.get("Tags")).items()
                if not k.startswith("aws:") and not any(k == d or k.startswith(d + ".") for d in drop))
    for k in COPY_KEYS:
        tags.pop(k, None)
    member = catalog.member_record(snapshot)
    tags.update(catalog.member_tags(member["index"], member["device"], member["source_volume"], member["mountpoints"]))
    tags.update({
        catalog.K_SET_ID: copy_id,
        catalog.K_STATE: "pending",
        K_COPY_OF: key,
        K_SOURCE_SET_ID: source_set_id,
        K_SOURCE_REGION: source_region,
        K_SOURCE_ACCOUNT: source_account,
        K_SOURCE_SNAPSHOT: snapshot["SnapshotId"],
        K_KMS_KEY: kms_key_id or "",
        K_COPIED: copied or catalog.utc_iso(),
    })
    if completion_minutes:
        tags[K_COMPLETION_MINUTES] = str(int(completion_minutes))
    if len(tags) > MAX_TAGS:
        raise StillpointError("the copy of %s would carry %d tags; EC2 allows %d. Remove some of the source's own tags; "
                              "nothing was copied" % (snapshot["SnapshotId"], len(tags), MAX_TAGS))
    return dict((k, catalog.check_tag_value(k, v)) for k, v in tags.items())


def _rank(snap):
    """Which copy of a member to keep: completed before pending, then the oldest."""
    started = catalog.parse_time(snap.get("StartTime"))
    return (0 if snap.get("State") == "completed" else 1, started.isoformat() if started else "", snap["SnapshotId"])


def plan_copy(source_rec, source_snaps, copies, key, kms_key_id=None):
    """What a run has to do, from the source set and the copies found in the destination (our own
    snapshots carrying ``stillpoint:copy-of=key``).

    Per member index: ``keep`` a ``completed`` copy, ``wait`` for a ``pending`` one, ``copy`` when there is
    none usable. Copies in ``error``, second copies of one member and copies of an index the source does
    not have go to ``delete``, and so do copies a roll-back could not delete (tagged ``partial``). Copies
    made with another key than ``kms_key_id`` are refused (nothing changed).
    Returns ``{"members": [...], "delete": [ids], "complete": bool, "marked_complete": bool}``.
    """
    by_id = dict((s["SnapshotId"], s) for s in source_snaps)
    count = source_rec["member_count"]
    by_index, delete = {}, []
    for snap in copies:
        index = catalog.as_int(catalog.tag_dict(snap.get("Tags")).get(catalog.K_MEMBER))
        given_up = catalog.tag_dict(snap.get("Tags")).get(catalog.K_STATE) == "partial"  # a roll-back left it
        if index is None or not 0 <= index < count or snap.get("State") not in ("completed", "pending") or given_up:
            delete.append(snap["SnapshotId"])
        else:
            by_index.setdefault(index, []).append(snap)
    wrong_key = []
    members = []
    for m in source_rec["members"]:
        index = m["index"]
        found = sorted(by_index.pop(index, []), key=_rank)
        chosen, extra = (found[0], found[1:]) if found else (None, [])
        delete.extend(s["SnapshotId"] for s in extra)
        entry = {"index": index, "source_snapshot_id": m["snapshot_id"], "device": m["device"],
                 "volume_size": m["volume_size"], "snapshot_id": None, "state": None, "progress": None}
        if chosen is None:
            entry["action"] = "copy"
        else:
            have = catalog.tag_dict(chosen.get("Tags")).get(K_KMS_KEY, "")
            if have != (kms_key_id or ""):
                wrong_key.append("%s (member %d) was copied with kms_key_id %s"
                                 % (chosen["SnapshotId"], index, have or "(none)"))
            entry.update(snapshot_id=chosen["SnapshotId"], state=chosen.get("State"), progress=chosen.get("Progress"),
                         action="keep" if chosen.get("State") == "completed" else "wait")
        if m["snapshot_id"] not in by_id:
            raise StillpointError("source member %d (%s) is not among the source set's snapshots"
                                  % (index, m["snapshot_id"]))
        members.append(entry)
    for rest in by_index.values():
        delete.extend(s["SnapshotId"] for s in rest)
    if wrong_key:
        raise StillpointError("refused, nothing was changed: copies of this set already exist with another key than "
                              "kms_key_id=%s: %s. Copy with that key, or delete those copies (backup_set_prune "
                              "set_ids in the destination) first" % (kms_key_id or "(none)", "; ".join(wrong_key)))
    kept = [e for e in members if e["action"] == "keep"]
    complete = len(kept) == len(members) and not delete
    marked = complete and all(catalog.tag_dict(s.get("Tags")).get(catalog.K_STATE) == "complete"
                              for s in copies if s["SnapshotId"] in set(e["snapshot_id"] for e in kept))
    return {"members": members, "delete": sorted(set(delete)), "complete": complete, "marked_complete": marked}


# --------------------------------------------------------------------------- calls

def destination_params(params, source_region):
    """``(region, the client parameters of the destination credentials, whether they are the destination's own)``."""
    region = params.get("destination_region") or source_region
    extra = {"region": region}
    endpoint = params.get("destination_endpoint_url") or params.get("endpoint_url")
    if endpoint:
        extra["endpoint"] = endpoint
    own = bool(params.get("destination_profile") or params.get("destination_access_key"))
    if params.get("destination_profile"):
        extra.update(profile_name=params["destination_profile"], aws_access_key_id=None, aws_secret_access_key=None,
                     aws_session_token=None)
    elif params.get("destination_access_key"):
        extra.update(profile_name=None, aws_access_key_id=params["destination_access_key"],
                     aws_secret_access_key=params.get("destination_secret_key"),
                     aws_session_token=params.get("destination_session_token") or None)
    return region, extra, own


def destination_clients(aws, params, source_region):
    """EC2 (and, to learn the account, STS) clients of the destination: ``aws`` is the AnsibleAWSModule
    (``aws.client`` = amazon.aws's client factory: retries, endpoint, credentials as users know them)."""
    region, extra, own = destination_params(params, source_region)
    ec2 = aws.client("ec2", retry_decorator=ebs.RETRY, **extra)
    sts = aws.client("sts", **extra) if own and not params.get("destination_account_id") else None
    return region, ec2, sts, own


def describe_key(kms, key_id, what):
    """DescribeKey's KeyMetadata; a refusal naming ``what`` when the key is not found or not allowed."""
    try:
        return kms.describe_key(KeyId=key_id, aws_retry=True)["KeyMetadata"]
    except ebs.aws_errors() as e:
        raise ebs.aws_error("refused, nothing was copied: KMS DescribeKey %s (%s)" % (key_id, what), e)


def key_aliases(kms, key_id, what):
    """The alias names of a key (ListAliases with KeyId)."""
    try:
        return sorted(a["AliasName"] for a in kms.list_aliases(KeyId=key_id, aws_retry=True).get("Aliases", []))
    except ebs.aws_errors() as e:
        raise ebs.aws_error("refused, nothing was copied: KMS ListAliases of %s (%s)" % (key_id, what), e)


def encryption_preflight(aws, params, set_id, source_snaps, source_account, dest_account, dest_region):
    """A cross-account copy's KMS checks (:func:`check_encryption`), read-only: DescribeKey and ListAliases of
    the members' keys with the source credentials; with the destination's, DescribeKey of each member's key by its
    ARN in the source region (may the destination account use it?) and of ``kms_key_id`` in the destination region.
    DescribeKey is the probe because it changes nothing and sharing a key for EBS grants it; a dry-run CreateGrant
    would be denied by the usual ``kms:GrantIsForAWSResource`` condition."""
    keys, _unnamed = encrypted_members(source_snaps)
    kms_key_id = params.get("kms_key_id")
    source_keys = {}
    if keys:
        src_kms = aws.client("kms", retry_decorator=ebs.RETRY)
        for key in sorted(keys):
            what = "the key of %s, source credentials, region %s" % (", ".join(keys[key]), aws.region)
            source_keys[key] = (describe_key(src_kms, key, what), key_aliases(src_kms, key, what))
    dest_key = None
    _region, extra, _own = destination_params(params, aws.region)
    access = source_key_access(aws.client("kms", retry_decorator=ebs.RETRY, **dict(extra, region=aws.region)),
                               source_keys) if source_keys else {}
    if kms_key_id:
        dest_kms = aws.client("kms", retry_decorator=ebs.RETRY, **extra)
        dest_key = describe_key(dest_kms, kms_key_id, "kms_key_id, destination credentials, region %s; give a key of "
                                "account %s in that region" % (dest_region, dest_account))
    return check_encryption(set_id, source_snaps, source_keys, kms_key_id, dest_key, source_account, dest_account,
                            dest_region, access)


# what KMS answers a principal whose account the key policy does not let use the key, or that names a key its
# Region does not hold (AWS KMS Developer Guide, "Allowing users in other accounts to use a KMS key")
NOT_SHARED_CODES = ("AccessDeniedException", "NotFoundException")


def source_key_access(dest_kms, source_keys):
    """``{key: None, or the refusal}``: DescribeKey of each member's key by its ARN with the destination
    credentials (``dest_kms``: a KMS client of the destination credentials in the source region)."""
    out = {}
    for key, (meta, _aliases) in sorted(source_keys.items()):
        arn = meta.get("Arn") or key
        try:
            dest_kms.describe_key(KeyId=arn, aws_retry=True)
            out[key] = None
        except ebs.aws_errors() as e:
            if ebs.error_code(e) not in NOT_SHARED_CODES:
                raise ebs.aws_error("KMS DescribeKey of the source key %s with the destination credentials" % arn, e)
            out[key] = str(e)
    return out


def caller_account(sts):
    try:
        return sts.get_caller_identity()["Account"]
    except ebs.aws_errors() as e:
        raise ebs.aws_error("STS GetCallerIdentity with the destination credentials (the destination account; "
                            "or give destination_account_id)", e)


def shared_with(client, snapshot_ids, account):
    """The source snapshots whose createVolumePermission names ``account`` (DescribeSnapshotAttribute)."""
    out = []
    for sid in snapshot_ids:
        try:
            perms = client.describe_snapshot_attribute(SnapshotId=sid, Attribute=PERMISSION,
                                                       aws_retry=True).get("CreateVolumePermissions", [])
        except ebs.aws_errors() as e:
            raise ebs.aws_error("DescribeSnapshotAttribute %s createVolumePermission (source account)" % sid, e)
        if any(p.get("UserId") == account for p in perms):
            out.append(sid)
    return out


def share(client, snapshot_ids, account, add=True):
    done = []
    for sid in snapshot_ids:
        try:
            client.modify_snapshot_attribute(SnapshotId=sid, Attribute=PERMISSION,
                                             OperationType="add" if add else "remove", UserIds=[account],
                                             aws_retry=True)
        except ebs.aws_errors() as e:
            raise ebs.aws_error("ModifySnapshotAttribute %s createVolumePermission %s account %s (source credentials)"
                                % (sid, "add" if add else "remove", account), e)
        done.append(sid)
    return done


def copy_call(client, source_snapshot_id, source_region, tags, description, kms_key_id=None,
              completion_minutes=None):
    kwargs = dict(SourceSnapshotId=source_snapshot_id, SourceRegion=source_region, Description=description,
                  TagSpecifications=[{"ResourceType": "snapshot", "Tags": catalog.to_tag_list(tags)}])
    if kms_key_id:
        kwargs.update(Encrypted=True, KmsKeyId=kms_key_id)
    if completion_minutes:
        kwargs["CompletionDurationMinutes"] = int(completion_minutes)
    return client.copy_snapshot(aws_retry=True, **kwargs)["SnapshotId"]


def find_copies(client, key):
    return ebs.describe_snapshots(client, filters=[{"Name": "tag:%s" % K_COPY_OF, "Values": [key]}])


def copy_set(aws, params, check_mode=False, log=None, sleep=time.sleep):
    """backup_set_copy: copy the complete set ``params["set_id"]`` of ``aws``'s region and account to the
    destination; every member or none. Returns the module's result; refusals raise before any change."""
    log = log or (lambda msg: None)
    check_options(params.get("completion_duration_minutes"), params.get("wait_timeout"))
    set_id = params["set_id"]
    source_region = aws.region
    if not source_region:
        raise StillpointError("no source region: give region (or set AWS_REGION)")
    src = aws.client("ec2", retry_decorator=ebs.RETRY)
    snaps = ebs.catalog_snapshots(src, set_id=set_id)
    rec = check_source(catalog.group_sets(snaps), set_id, source_region, lambda sid: retention.why_absent(src, sid, None, None))
    source_snaps = [s for s in snaps if s["SnapshotId"] in set(rec["snapshot_ids"])]
    source_account = source_snaps[0].get("OwnerId")
    dest_region, dest, sts, own = destination_clients(aws, params, source_region)
    dest_account = params.get("destination_account_id") or (caller_account(sts) if sts is not None else source_account)
    check_destination(source_region, source_account, dest_region, dest_account)
    cross_account = dest_account != source_account
    encryption = (encryption_preflight(aws, params, set_id, source_snaps, source_account, dest_account, dest_region)
                  if cross_account else None)
    key = copy_key(source_account, source_region, set_id)
    copy_id = copy_set_id(set_id, source_account, source_region, dest_account, dest_region)
    kms = params.get("kms_key_id")
    minutes = params.get("completion_duration_minutes")
    plan = plan_copy(rec, source_snaps, find_copies(dest, key), key, kms)
    by_id = dict((s["SnapshotId"], s) for s in source_snaps)
    to_copy = [m for m in plan["members"] if m["action"] == "copy"]
    need_share = [m["source_snapshot_id"] for m in plan["members"] if m["action"] != "keep"] if cross_account else []
    shared = shared_with(src, rec["snapshot_ids"], dest_account) if cross_account else []
    result = dict(changed=False, set_id=copy_id, source_set_id=set_id, source_region=source_region,
                  source_account=source_account, destination_region=dest_region, destination_account=dest_account,
                  cross_account=cross_account, kms_key_id=kms, completion_duration_minutes=minutes,
                  members=plan["members"], deleted=[], shared=[], unshared=[], copy_calls=0, progress=[],
                  encryption=encryption)
    tags = [copy_tags(by_id[m["source_snapshot_id"]], copy_id, key, source_region, source_account, set_id, kms, minutes)
            for m in to_copy]  # every tag checked before anything changes
    if check_mode:
        share_add = sorted(set(need_share) - set(shared))
        share_remove = sorted(shared) if not need_share else []
        result.update(
            changed=bool(to_copy or plan["delete"] or share_add or share_remove or not plan["marked_complete"]),
            state="complete" if plan["marked_complete"] else "pending",
            planned=dict(copy=[dict(index=m["index"], source_snapshot_id=m["source_snapshot_id"]) for m in to_copy],
                         wait=[m["snapshot_id"] for m in plan["members"] if m["action"] == "wait"],
                         delete=plan["delete"], share=share_add, unshare=share_remove,
                         mark_complete=not plan["marked_complete"]),
            snapshot_ids=[m["snapshot_id"] for m in plan["members"] if m["snapshot_id"]],
            msg="check mode: would copy %d of %d members of %s to %s (account %s) as set %s"
            % (len(to_copy), len(plan["members"]), set_id, dest_region, dest_account, copy_id))
        return result
    if plan["delete"]:
        gone, failed = ebs.delete_ours(dest, plan["delete"])
        result["deleted"] = gone
        result["changed"] = result["changed"] or bool(gone)
        if failed:
            why = "; ".join("%s: %s" % (f["snapshot_id"], f["error"]) for f in failed)
            raise StillpointError("could not delete stale copies (in error, partial or duplicates) of set %s in %s: %s; "
                                  "nothing was copied" % (set_id, dest_region, why), **result)
    if cross_account:
        added = share(src, sorted(set(need_share) - set(shared)), dest_account)
        result["shared"] = added
        result["changed"] = result["changed"] or bool(added)
        shared = sorted(set(shared) | set(added))
    made = []
    try:
        for m, member_tags in zip(to_copy, tags):
            desc = "stillpoint.snapshots copy of set %s member %d (%s, %s)" % (set_id, m["index"], m["source_snapshot_id"],
                                                                               source_region)
            sid = copy_call(dest, m["source_snapshot_id"], source_region, member_tags, desc, kms, minutes)
            result["copy_calls"] += 1
            made.append(sid)
            m.update(snapshot_id=sid, state="pending", progress="0%")
            log("backup_set_copy: member %d %s -> %s (%s)" % (m["index"], m["source_snapshot_id"], sid, dest_region))
    except ebs.aws_errors() as e:
        rb = ebs.rollback(dest, made)
        result["changed"] = True
        result["unshared"] = _unshare_quietly(src, shared, dest_account)
        err = ebs.aws_error("CopySnapshot of set %s member %d (%s) to %s failed; the %d copies this run made were %s"
                            % (set_id, m["index"], m["source_snapshot_id"], dest_region, len(made),
                               _rollback_words(rb)), e)
        err.details.update(result, rollback=rb)
        raise err
    result["changed"] = result["changed"] or bool(made)
    ids = [m["snapshot_id"] for m in plan["members"]]
    result["snapshot_ids"] = ids
    if plan["marked_complete"]:
        result["state"] = "complete"
    elif not params.get("wait", True) and not plan["complete"]:
        result["state"] = "pending"
        return result
    else:
        status, samples = ebs.wait_for(dest, ids, params.get("wait_timeout", 14400), params.get("poll_interval", 15.0),
                                       on_progress=lambda s: log("backup_set_copy progress %s" % s["progress"]),
                                       sleep=sleep)
        result["progress"] = samples
        last = samples[-1]
        for m in plan["members"]:
            m.update(state=last["states"].get(m["snapshot_id"]), progress=last["progress"].get(m["snapshot_id"]))
        if status == "timeout":
            result.update(state="pending", timed_out=True)
            if params.get("on_wait_timeout", "fail") == "fail":
                raise StillpointError("copy set %s of %s is still pending in %s after %ss; it stays pending in the "
                                      "catalog (a re-run waits for it, the share stays until it completes)"
                                      % (copy_id, set_id, dest_region, params.get("wait_timeout")), **result)
            return result
        if status == "error":
            failed = dict((sid, st) for sid, st in last["states"].items() if st != "completed")
            rb = ebs.rollback(dest, find_ids(dest, key, ids))
            result["changed"] = True
            result["unshared"] = _unshare_quietly(src, shared, dest_account)
            raise StillpointError("copy of set %s to %s failed: %s; the whole copy set %s was %s"
                                  % (set_id, dest_region, ", ".join("%s is %s" % kv for kv in sorted(failed.items())),
                                     copy_id, _rollback_words(rb)), rollback=rb, **result)
        ebs.tag(dest, ids, {catalog.K_STATE: "complete"})
        result.update(state="complete", changed=True)
    if cross_account and shared:
        result["unshared"] = share(src, shared, dest_account, add=False)
        result["changed"] = True
    return result


def find_ids(client, key, ids):
    """Every copy of the set now (this run's, earlier runs', any made meanwhile), plus ``ids``."""
    return sorted(set(ids) | set(s["SnapshotId"] for s in find_copies(client, key)))


def _rollback_words(rb):
    return "deleted" if not rb["left_partial"] else "deleted except %s, tagged partial" % ", ".join(rb["left_partial"])


def _unshare_quietly(client, snapshot_ids, account):
    """After a failure: remove the share, report what could not be removed instead of hiding the first error."""
    out = []
    for sid in snapshot_ids:
        try:
            share(client, [sid], account, add=False)
            out.append(sid)
        except StillpointError:
            pass
    return out
