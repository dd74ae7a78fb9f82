# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Planning a snapshot set: options shared by the module and the action plugin, host-side
resolution (mountpoints -> volumes, freeze checks) and API-side planning (members, level)."""

from __future__ import annotations

import socket

from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_quiesce import APPLICATIONS
from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_quiesce import CONNECTION_ARGS
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import DeviceResolver
from ansible_collections.stillpoint.snapshots.plugins.module_utils._discovery import discover_stacks
from ansible_collections.stillpoint.snapshots.plugins.module_utils._imds import Imds

ARGUMENT_SPEC = dict(
    mode=dict(type="str", choices=["host", "controller"], default="host"),
    instance_id=dict(type="str"),
    mountpoints=dict(type="list", elements="path", default=[]),
    volume_ids=dict(type="list", elements="str", default=[]),
    exclude_volume_ids=dict(type="list", elements="str", default=[]),
    exclude_mountpoints=dict(type="list", elements="path", default=[]),
    exclude_boot_volume=dict(type="bool", default=True),
    freeze=dict(type="bool", default=True),
    freeze_deadline=dict(type="float", default=10.0),
    protect_paths=dict(type="list", elements="path", default=[]),
    by_id_dir=dict(type="path", default="/dev/disk/by-id"),
    imds_endpoint=dict(type="str"),
    name=dict(type="str", default="default"),
    set_id=dict(type="str"),
    description=dict(type="str"),
    tags=dict(type="dict", default={}),
    copy_tags_from_source=dict(type="bool", default=False),
    array=dict(type="dict"),
    procedure=dict(type="str", default="ebs_snapshot_set"),
    quiesced_level=dict(type="str", choices=["crash", "filesystem", "application"]),
    pre_hook=dict(type="list", elements="str", default=[]),
    post_hook=dict(type="list", elements="str", default=[]),
    hook_timeout=dict(type="float", default=30.0),
    on_hook_failure=dict(type="str", choices=["abort", "continue"], default="abort"),
    application=dict(type="str", choices=list(APPLICATIONS)),
    application_hook=dict(type="list", elements="str", default=[]),
    lock_wait_timeout=dict(type="float", default=10.0),
    on_quiesce_failure=dict(type="str", choices=["abort", "continue"], default="abort"),
    wait=dict(type="bool", default=True),
    wait_timeout=dict(type="int", default=14400),
    poll_interval=dict(type="float", default=15.0),
    on_wait_timeout=dict(type="str", choices=["fail", "return"], default="fail"),
    max_freeze_cycles=dict(type="int", default=1),
    throttle_wait=dict(type="float", default=60.0),
    pacer=dict(type="dict", default={}, options=dict(
        enabled=dict(type="bool", default=True),
        size=dict(type="int", default=100),
        refill=dict(type="float", default=5.0),
        slices=dict(type="int", default=1),
    )),
    group=dict(type="dict", options=dict(
        id=dict(type="str", required=True),
        instant=dict(type="float"),
        lead_ms=dict(type="float", default=100.0),
        hold_ms=dict(type="float", default=50.0),
        offset_s=dict(type="float", default=0.0),
        run_dir=dict(type="path"),
        wait_s=dict(type="float", default=300.0),
    ), required_one_of=[("instant", "run_dir")], mutually_exclusive=[("instant", "run_dir")]),
    **CONNECTION_ARGS
)


def resolve_on_host(params, protect_paths=(), runner=None, resolver=None):
    """Host side: mountpoints -> EBS volumes, and the freeze plan (all refusals happen here).

    With a ``runner`` (a CommandRunner), the md arrays and LVM volume groups under the mountpoints
    are discovered too (each mount gets a ``stack``, see ``_discovery.StackDiscovery``), and the
    mounts' volume ids follow the stack order (md role order, PV order; every PV of a volume group)."""
    resolver = resolver or DeviceResolver(by_id_dir=params["by_id_dir"])
    mounts = resolver.resolve(params["mountpoints"]) if params["mountpoints"] else []
    warnings = discover_stacks(runner, resolver, mounts) if runner is not None and mounts else []
    excluded = resolver.resolve(params["exclude_mountpoints"]) if params["exclude_mountpoints"] else []
    freeze_plan = None
    if params["freeze"] and params["mountpoints"]:
        # imported here: only a plan that freezes needs the freeze library, the largest file of all (ebs_mount_info's
        # reads would compile it in every start)
        from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze

        freeze_plan = _freeze.check_mountpoints(params["mountpoints"],
                                                protect_paths=list(params["protect_paths"]) + list(protect_paths))
    return {"mounts": mounts, "exclude_mounts": excluded, "freeze_plan": freeze_plan, "warnings": warnings}


def mount_info(params, runner, protect_paths=(), resolver=None, warn=None):
    """The ebs_mount_info module: :func:`resolve_on_host` of ``mountpoints`` (md/LVM discovery included;
    the freeze checks with ``check_freeze``) and, for ``volume_ids``, each volume's disks and mounts on this
    host (``volumes``); with ``hostname``. ``warn(text)`` gets each of the discovery's warnings."""
    resolver = resolver or DeviceResolver(by_id_dir=params["by_id_dir"])
    host = resolve_on_host(dict(params, freeze=params["check_freeze"]), protect_paths=protect_paths, runner=runner,
                           resolver=resolver)
    host["volumes"] = resolver.volume_mounts(params["volume_ids"])
    for warning in host.pop("warnings"):
        (warn or (lambda text: None))(warning)
    return dict(host, changed=False, hostname=socket.gethostname())


def build_plan(client, params, host, instance_id=None):
    """API side: choose members, refuse a partial array, decide the level the run can reach.

    ``host`` is :func:`resolve_on_host`'s result (possibly computed on another machine).
    """
    # imported here, not at the top: _ebs brings botocore, which ebs_mount_info (host side only) never needs
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
    mount_volumes, mounts_by_volume = [], {}
    for mount in host["mounts"]:
        for vid in mount["volume_ids"]:
            mounts_by_volume.setdefault(vid, []).append(mount["mountpoint"])
            if vid not in mount_volumes:
                mount_volumes.append(vid)
    exclude = list(params["exclude_volume_ids"])
    for mount in host["exclude_mounts"]:
        exclude.extend(mount["volume_ids"])
    split = sorted(set(mount_volumes) & set(exclude))
    if split:
        raise StillpointError(
            "refusing to snapshot part of a filesystem or array: %s lie under %s and are also excluded. A set "
            "must hold every volume of each filesystem it freezes; drop the exclusion or the mountpoint"
            % (", ".join(split), ", ".join(sorted(set(m for v in split for m in mounts_by_volume[v])))))
    include = None
    if mount_volumes or params["volume_ids"]:
        include = list(params["volume_ids"]) + [v for v in mount_volumes if v not in params["volume_ids"]]
    if instance_id is None:
        instance_id = params["instance_id"]
    if instance_id is None and include:
        instance_id = ebs.instance_for_volumes(client, include)
    if instance_id is None:
        raise StillpointError("no instance: give instance_id, mountpoints or volume_ids")
    instance = ebs.describe_instance(client, instance_id)
    # members in array order: the given volume_ids, then the discovered md/LVM order
    order = list(params["volume_ids"])
    for mount in host["mounts"]:
        if mount.get("stack") and (mount["stack"]["md"] or mount["stack"]["lvm"]):
            order.extend(v for v in mount["volume_ids"] if v not in order)
    members = ebs.plan_members(instance, include, exclude, params["exclude_boot_volume"],
                               member_order=order or None)
    frozen = host["freeze_plan"] is not None
    covered = frozen and all(m["volume_id"] in mounts_by_volume for m in members["members"])
    if covered:
        level = "application" if params["pre_hook"] or params.get("application") else "filesystem"
    else:
        level = "crash"
    if params.get("quiesced_level"):
        if frozen:
            raise StillpointError(
                "quiesced_level is for sets taken without a freeze (volumes nobody writes to now); this run freezes "
                "%s: drop quiesced_level or set freeze: false" % ", ".join(p["mountpoint"] for p in host["freeze_plan"]))
        level = params["quiesced_level"]
    public = dict(members, freeze=[p["mountpoint"] for p in (host["freeze_plan"] or [])], level=level,
                  mountpoints_by_volume=mounts_by_volume)
    return {"members": members, "freeze_plan": host["freeze_plan"], "mounts_by_volume": mounts_by_volume,
            "layout": layout(params.get("array"), host["mounts"], members), "public": public}


def layout(array, mounts, members):
    """The array descriptor recorded in the catalog: what the user gave, plus the filesystems that
    live on the members (mountpoint, type, mount options, member indexes in disk order), which a
    restore needs to bring them back, plus the md arrays and LVM volume groups discovered under them
    (keys ``md``, ``lvm`` and each filesystem's ``device``/``partition``, as ``_layout.Layout``
    reads them; docs/catalog.md). A key the user gave is never replaced: when the user's ``array``
    has ``md`` or ``lvm``, nothing discovered about the stacks is added."""
    out = dict(array or {})
    index = dict((m["volume_id"], m["index"]) for m in members["members"])
    stacks = "md" not in out and "lvm" not in out and any(m.get("stack") for m in mounts)
    mds, vgs, filesystems = [], [], []
    for mount in mounts:
        entry = {"mountpoint": mount["mountpoint"], "fstype": mount["fstype"],
                 "options": mount.get("options", ""),
                 "members": [index[v] for v in mount["volume_ids"] if v in index]}
        stack = mount.get("stack") if stacks else None
        if stack:
            _member_indexes(stack["volume_ids"], index, mount["mountpoint"])
            if stack["device"]:
                entry["device"] = stack["device"]
            if stack["partition"]:
                entry["partition"] = stack["partition"]
            for md in stack["md"]:
                if md["device"] not in [m["device"] for m in mds]:
                    mds.append(dict(md, members=_member_indexes(md["members"], index, mount["mountpoint"])))
            for vg in stack["lvm"]:
                if vg["vg"] not in [v["vg"] for v in vgs]:
                    pvs = [pv if pv.startswith("/dev/") else _member_indexes([pv], index, mount["mountpoint"])[0]
                           for pv in vg["pvs"]]
                    vgs.append(dict(vg, pvs=pvs))
        filesystems.append(entry)
    if mds:
        out["md"] = mds
    if vgs:
        out["lvm"] = vgs
    if filesystems:
        out.setdefault("filesystems", filesystems)
    return out or None


def _member_indexes(volume_ids, index, mountpoint):
    missing = [v for v in volume_ids if v not in index]
    if missing:
        raise StillpointError(
            "%s sits on an md array or LVM volume group that also uses %s, which is not a member of the set "
            "(excluded?). A restore could not assemble or activate it from part of its volumes; drop the "
            "exclusion." % (mountpoint, ", ".join(missing)))
    return [index[v] for v in volume_ids]


def host_plan(client, params, protect_paths=(), runner=None):
    """Host mode: resolve here (with ``runner``, md/LVM discovery too), find the instance from IMDS
    if needed, plan. The plan's ``warnings`` are the discovery's."""
    host = resolve_on_host(params, protect_paths, runner=runner)
    instance_id = params["instance_id"]
    if instance_id is None:  # the instance this module runs on
        instance_id = Imds(params["imds_endpoint"]).instance_identity()["instance_id"]
    plan = build_plan(client, params, host, instance_id)
    plan["warnings"] = list(host.get("warnings") or [])
    return plan
