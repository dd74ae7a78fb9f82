# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ebs_snapshot_set procedure over a plan (_setplan): host mode whole (:func:`take_on_host`), and
the parts the action plugin's controller mode shares with it (:func:`check_mode_result`, :func:`take`).

Where the freeze and the hooks run is the caller's choice (a quiescer and a Hooks object: on this host
here, on a remote host in the action plugin); the set itself is _ebs.SnapshotSetRun.
"""

from __future__ import annotations

import socket

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _app_quiesce
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._group import GroupQuiescer
from ansible_collections.stillpoint.snapshots.plugins.module_utils._group import Rendezvous
from ansible_collections.stillpoint.snapshots.plugins.module_utils._quiesce import GuardianQuiescer
from ansible_collections.stillpoint.snapshots.plugins.module_utils._quiesce import Hooks
from ansible_collections.stillpoint.snapshots.plugins.module_utils._setplan import host_plan

HOOKS = (("pre_hook", "pre-freeze hook"), ("post_hook", "post-thaw hook"))


def still_pending(set_id, wait_timeout):
    return ("set %s is still pending after %ss; it stays pending in the catalog. Re-run with set_id=%s to keep "
            "waiting" % (set_id, wait_timeout, set_id))


def check_mode_result(plan, params, on=None):
    """What check mode returns: the plan, the hooks that would run (``actions``, planned), and a summary."""
    return dict(plan=plan["public"], instance_id=plan["members"]["instance_id"], changed=True,
                actions=[dict(what=what, cmd=list(params[key]), rc=None, ms=None, planned=True)
                         for key, what in HOOKS if params[key]]
                + ([dict(what="hold the %s lock across the freeze and the call" % params["application"],
                         cmd=list(params.get("application_hook") or []), rc=None, ms=None, planned=True)]
                   if params.get("application") else []),
                msg="check mode: would freeze %s%s and snapshot %d volumes of %s in one call"
                % (", ".join(plan["public"]["freeze"]) or "nothing", " on %s" % on if on else "",
                   len(plan["members"]["members"]), plan["members"]["instance_id"]))


def take(client, call_client, plan, params, quiescer, hooks, host, log=None, warn=None, on_progress=None):
    """One set from ``plan`` with the module's ``params``: freeze-call-thaw, tag, and wait when ``params["wait"]``.

    ``call_client`` makes the CreateSnapshots call (botocore retries off, see _ebs.no_retry_config).
    Returns the module's result; a wait that ends in a timeout raises when ``on_wait_timeout`` is ``fail``.
    """
    set_id = params["set_id"] or catalog.new_set_id()
    run = ebs.SnapshotSetRun(
        client, plan["members"], set_id, name=params["name"], host=host, description=params["description"],
        copy_tags_from_source=params["copy_tags_from_source"], procedure=params["procedure"], array=plan["layout"],
        mountpoints_by_volume=plan["mounts_by_volume"], extra_tags=params["tags"], log=log, call_client=call_client,
        max_cycles=params.get("max_freeze_cycles", 1), throttle_wait=params.get("throttle_wait", 60.0))
    out = run.run(quiescer, hooks=hooks, wait=params["wait"], wait_timeout=params["wait_timeout"],
                  poll_interval=params["poll_interval"], on_progress=on_progress)
    for warning in out.pop("warnings"):
        (warn or (lambda text: None))(warning)
    result = dict(out, plan=plan["public"], changed=True)
    if out.get("timed_out") and params["on_wait_timeout"] == "fail":
        raise StillpointError(still_pending(set_id, params["wait_timeout"]), **result)
    return result


def take_on_host(aws, params, runner, protect_paths=(), check_mode=False, log=None, warn=None):
    """The ebs_snapshot_set module (host mode): everything on this host, EC2 through ``aws.client(...)``
    (the AnsibleAWSModule). A known ``set_id`` is reported (or waited for) instead of taking another set.

    A group member without an instant (``group.run_dir``) says in its run directory when it is ready (after its
    plan and DryRun, before any application lock) and waits there for the instant (_group.Rendezvous); when it
    fails before, it says why there."""
    group = params.get("group")
    rendezvous = None
    if group and group.get("instant") is None and not check_mode:
        rendezvous = Rendezvous(group["id"], group["run_dir"], group["wait_s"])
        rendezvous.open()  # first: whatever fails after this is told to the controller
    try:
        client = aws.client("ec2", retry_decorator=ebs.RETRY)
        if params["set_id"]:
            found = ebs.existing_set(client, params["set_id"], check_mode, params["wait"], params["wait_timeout"],
                                     params["poll_interval"])
            if found is not None:
                if rendezvous is not None:
                    raise StillpointError("group %s: set %s exists already; a member of a group takes a new set at the "
                                          "group's instant" % (group["id"], params["set_id"]))
                return found
        return _take_on_host(aws, client, params, runner, protect_paths, check_mode, log, warn, rendezvous)
    except BaseException as e:  # also fail_json's SystemExit (AnsibleAWSModule.client, for one)
        if rendezvous is not None:
            rendezvous.failed(getattr(e, "msg", None) or ("the module failed before it was ready (its result says why)"
                                                          if isinstance(e, SystemExit) else repr(e)))
        raise
    finally:
        if rendezvous is not None and rendezvous.is_ready:
            rendezvous.close()


def _take_on_host(aws, client, params, runner, protect_paths, check_mode, log, warn, rendezvous):
    plan = host_plan(client, params, protect_paths=protect_paths, runner=runner)
    for warning in plan["warnings"]:
        (warn or (lambda text: None))(warning)
    hooks = _app_quiesce.from_params(params, mountpoints=plan["public"]["freeze"])  # checks its options; starts nothing
    if check_mode:
        return check_mode_result(plan, params)
    if hooks is None and (params["pre_hook"] or params["post_hook"]):
        hooks = Hooks(lambda argv: runner(argv, check=False), params["pre_hook"], params["post_hook"],
                      params["hook_timeout"], params["on_hook_failure"], timeout_bin=runner.bin("timeout"))
    if plan["freeze_plan"]:
        quiescer = GuardianQuiescer(plan["freeze_plan"], params["freeze_deadline"], level=plan["public"]["level"])
    else:
        quiescer = ebs.NoQuiesce(plan["public"]["level"])
    group = params.get("group")
    if group:
        if not plan["freeze_plan"]:
            raise StillpointError("group %s: this host has no filesystem to freeze, so it cannot hold its state at the "
                                  "group's instant; a group member needs freeze=true and mountpoints" % group["id"])
        quiescer = GroupQuiescer(quiescer, group, rendezvous=rendezvous, deadline=params["freeze_deadline"])
        if rendezvous is None:
            quiescer.check(params["freeze_deadline"])
        hooks = quiescer.hooks(hooks)  # ready (and waiting for the instant) before the application is held
        params = dict(params, max_freeze_cycles=1, tags=dict(params["tags"], **{catalog.K_GROUP_ID: group["id"]}))
    try:
        result = take(client, aws.client("ec2", config=ebs.no_retry_config()), plan, params, quiescer, hooks,
                      socket.gethostname(), log=log, warn=warn)
    except StillpointError as e:
        e.details.setdefault("plan", plan["public"])
        e.details.setdefault("instance_id", plan["members"]["instance_id"])
        if group and getattr(quiescer, "record", None):
            e.details.setdefault("group", quiescer.record)
        raise
    if group:
        result["group"] = quiescer.record  # also in the catalog (stillpoint:group-host), tagged with the level
    return result
