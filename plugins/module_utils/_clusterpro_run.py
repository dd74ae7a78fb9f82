# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runs of the CLUSTERPRO modules: one function per module from its validated parameters to its
result, and the argument specs they are validated against.

``clusterpro_info``, ``clusterpro_control`` and ``clusterpro_mirror_config`` call :func:`run_info`,
:func:`run_control` and :func:`run_mirror_config` on the cluster server; their action plugins call
the same functions on the controller for a Windows server (``plugins/plugin_utils/_clusterpro.py``),
with a runner and file access that work through Windows modules. Every changing command goes
through :class:`~._common.Recorder` (``actions``); reads run directly.

Private to the collection; raises :class:`StillpointError`, never exits.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _clusterpro as clp
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import Recorder
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError


def _with_clusterpro_args(**spec):
    return dict(copy.deepcopy(clp.CLUSTERPRO_ARGS), **spec)


INFO_ARGS = _with_clusterpro_args(
    mirrors=dict(type="list", elements="str"),
    require_clean=dict(type="bool", default=False),
)

CONTROL_ARGS = _with_clusterpro_args(
    kind=dict(type="str", required=True, choices=list(clp.KINDS)),
    name=dict(type="str"),
    server=dict(type="str"),
    state=dict(type="str", required=True, choices=["started", "stopped", "shutdown", "recovered"]),
    stop_dependents=dict(type="bool", default=False),
    force=dict(type="bool", default=False),
    require_clean_mirrors=dict(type="bool", default=True),
)

# keyword arguments of AnsibleModule / ArgumentSpecValidator besides the spec
CONTROL_RULES = dict(
    required_if=[
        ("kind", "group", ("name", "server")),
        ("kind", "resource", ("name", "server")),
        ("kind", "cluster_service", ("server",)),
        ("kind", "server", ("server",)),
        ("kind", "mirror", ("name",)),
        ("force", True, ("server",)),
    ],
)

VOLUME_ARGS = dict(
    server=dict(type="str", required=True),
    volume_id=dict(type="str", required=True),
    instance_id=dict(type="str"),
)

# amazon.aws's options (region, endpoint_url, credentials) come with AnsibleAWSModule / aws_argument_spec()
MIRROR_CONFIG_ARGS = _with_clusterpro_args(
    name=dict(type="str", required=True),
    state=dict(type="str", choices=["absent", "present"], default="present"),
    saved_definition=dict(type="path", required=True),
    initial_mirror_construction=dict(type="bool", default=True),
    same_backup_set=dict(type="dict", options=dict(
        set_id=dict(type="str", required=True),
        volumes=dict(type="list", elements="dict", required=True, options=VOLUME_ARGS),
    )),
    stop_cluster=dict(type="bool", default=False),
)

# what each changing operation of clp.COMMANDS does, for the recorded actions
WHAT = {
    "group_start": "start group {group} on {server}",
    "group_stop": "stop group {group} on {server}",
    "resource_start": "start resource {resource} on {server}",
    "resource_stop": "stop resource {resource} on {server}",
    "resource_stop_dependents": "stop resource {resource} and its dependents on {server}",
    "service_start": "start the cluster service on {server}",
    "service_stop": "stop the cluster service on {server}",
    "service_stop_all": "stop the cluster service on every server",
    "server_shutdown": "shut {server} down",
    "mirror_recover": "recover mirror {md}",
    "mirror_force_recover": "forced recovery of mirror {md} from {server}",
    "config_push": "push the configuration: {change}",
}


def _act(rec, name, edition, version, **values):
    """Run (or plan, in check mode) changing operation ``name``; returns its argv as the table gives it."""
    argv = clp.command(name, edition, version, **values)
    rec.act(WHAT[name].format(**values), clp.resolve(rec.run, argv))
    return argv


# -- clusterpro_info ---------------------------------------------------------------------------


def run_info(params, runner):
    """clusterpro_info's result for ``params`` (validated against INFO_ARGS)."""
    clp.check_edition(params["edition"], params["version"])
    info = clp.cluster_info(runner, params["edition"], params["version"], mirrors=params["mirrors"])
    if params["require_clean"]:
        clp.assert_mirrors_clean(info)
    info["clean"] = all(m["clean"] for m in info["mirrors"].values())
    info["changed"] = False
    return info


# -- clusterpro_control ------------------------------------------------------------------------


def _summary(info, kind, name, server):
    if kind == "group":
        record = info["groups"].get(name, {})
        return dict(status=record.get("status"), current=record.get("current"))
    if kind == "resource":
        return dict(info["resources"].get(name, {}))
    if kind == "mirror":
        record = info["mirrors"].get(name, {})
        return dict(status=record.get("status"), colors=record.get("colors"))
    return dict(status=info["servers"].get(server, {}).get("status"))


def run_control(params, runner, check_mode):
    """clusterpro_control's result for ``params`` (validated against CONTROL_ARGS and CONTROL_RULES):
    ``dict(changed, command, before, after, actions)``. One control request: the cluster is read, the
    request planned (with the refusals of :func:`~._clusterpro.plan_control`), its one command run."""
    p = params
    edition, version = clp.check_edition(p["edition"], p["version"])[0], p["version"]
    kind, name, server = p["kind"], p["name"], p["server"]
    rec = Recorder(runner, check_mode=check_mode)
    try:
        info = clp.cluster_info(runner, edition, version)
    except StillpointError as exc:
        # clpstat fails on a server whose cluster service is stopped: starting it is then the one
        # request that can go on (clpcl itself refuses a server that is already started)
        if kind != "cluster_service" or p["state"] != "started" or not server:
            raise
        plan = "service_start", dict(server=clp.validate_name("server", server))
        before = dict(status=None, unknown_because=exc.msg)
    else:
        plan = clp.plan_control(info, kind, p["state"], name=name, server=server, stop_dependents=p["stop_dependents"],
                                force=p["force"], require_clean_mirrors=p["require_clean_mirrors"], edition=edition)
        before = _summary(info, kind, name, server)
    result = dict(changed=plan is not None, command=None, before=before, after=before, actions=rec.actions)
    if plan is None:
        return result
    result["command"] = _act(rec, plan[0], edition, version, **plan[1])
    if check_mode:
        result["after"] = None
        return result
    try:
        result["after"] = _summary(clp.cluster_info(runner, edition, version), kind, name, server)
    except StillpointError:
        # e.g. the cluster service was just stopped on this server: clpstat answers no more
        result["after"] = dict(status=None)
    return result


# -- clusterpro_mirror_config ------------------------------------------------------------------
#
# The files clp.conf (in clpcfctrl's work directory) and saved_definition live on the cluster server.
# A module running there uses LocalFiles; the action plugins' Windows path passes its own file access
# (plugin_utils/_clusterpro.py: ModuleFiles) with the same methods.


class LocalFiles:
    """File operations on this machine (the module runs on the cluster server)."""

    join = staticmethod(os.path.join)

    @staticmethod
    def make_workdir():
        return tempfile.mkdtemp(prefix="stillpoint-clpconf-")

    @staticmethod
    def remove_workdir(path):
        shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def read(path):
        """The text of ``path``, or None when there is no such file."""
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return handle.read()

    @staticmethod
    def write(path, text):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)


def _pull(runner, edition, version, workdir, files):
    clp.run(runner, "config_pull", edition, version, dir=workdir)
    text = files.read(files.join(workdir, "clp.conf"))
    if text is None:
        raise StillpointError("clpcfctrl --pull left no clp.conf in %s." % workdir)
    return text


def _services_running(info):
    return sorted(s for s, r in info["servers"].items() if r["status"] == "Online")


def _read_definition(path, files):
    text = files.read(path) if path else None
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise StillpointError("%s is not a saved mirror disk resource definition (not JSON)." % path)


def _start_changes(text, new_text, definition):
    """{group: dict(before, after)} for the groups in ``definition["group_start"]`` (None: no such group)."""
    before, after = clp.conf_group_start(text), clp.conf_group_start(new_text)
    return dict((g["group"], dict(before=before.get(g["group"]), after=after.get(g["group"])))
                for g in definition.get("group_start") or [])


def _edit(text, name, state, saved_definition, initial_mirror_construction, same_backup_set, files, result):
    """The clp.conf text the request needs, or None when nothing is to change; fills ``result``
    (after, definition, group_start, snapshot_id) and returns ``(new_text, what the push does)``."""
    mirrors = clp.conf_mirrors(text)
    if state == "absent":
        if name not in mirrors:
            return None, None
        new_text, definition = clp.remove_md(text, name)
        previous = _read_definition(saved_definition, files)
        if previous is not None and previous.get("element") != definition["element"]:
            raise StillpointError("Refused: %s already holds a different saved definition of %s; move it away "
                                  "first (it may be the only copy of an earlier removal)." % (saved_definition, name))
        result.update(after=None, definition=definition, group_start=_start_changes(text, new_text, definition))
        return new_text, "remove mirror disk resource %s" % name
    fullcopy = "initial mirror construction %s" % ("on" if initial_mirror_construction else "off")
    if name in mirrors:
        if mirrors[name]["initial_mirror_construction"] == initial_mirror_construction:
            return None, None
        if not initial_mirror_construction:
            result["snapshot_id"] = clp.validate_same_backup_set(same_backup_set, clp.conf_servers(text))
        new_text = clp.set_md_fullcopy(text, name, initial_mirror_construction)
        change = "%s of %s" % (fullcopy, name)
    else:
        definition = _read_definition(saved_definition, files)
        if definition is None:
            raise StillpointError("Cannot add %s back: no saved definition at %s (remove it with state=absent "
                                  "first, which saves it)." % (name, saved_definition))
        if definition.get("name") != name:
            raise StillpointError("%s holds the definition of %r, not %r." % (saved_definition, definition.get("name"), name))
        if not initial_mirror_construction:
            result["snapshot_id"] = clp.validate_same_backup_set(same_backup_set,
                                                                 definition.get("servers") or clp.conf_servers(text))
        new_text = clp.add_md(text, definition, initial_mirror_construction)
        result["group_start"] = _start_changes(text, new_text, definition)
        change = "add mirror disk resource %s back, %s" % (name, fullcopy)
    result["after"] = clp.conf_mirrors(new_text).get(name)
    return new_text, change


def mirror_config(runner, edition, version, name, state, saved_definition, initial_mirror_construction=True,
                  same_backup_set=None, stop_cluster=False, check_mode=False, files=None):
    """Remove (``state=absent``) or add back (``state=present``) mirror disk resource ``name``
    through clpcfctrl pull/push. Removal saves the resource's definition to ``saved_definition``
    (a JSON file); adding back restores it unchanged except initial mirror construction.
    In the push that removes it, the groups that hold it or depend on it get manual startup (seed
    001 step 1); the push that adds it back restores their saved start attribute (step 5). Both are
    reported in ``group_start`` ({group: dict(before, after)}), in check mode too.
    A push that adds or removes a mirror disk resource needs the cluster service stopped on
    every server: refused unless ``stop_cluster`` (then ``clpcl -t -a`` runs first). Check mode
    pulls and edits, and plans the push without reading whether the cluster runs.
    ``files`` reaches clp.conf's work directory and ``saved_definition`` (default :class:`LocalFiles`)."""
    clp.check_edition(edition, version)
    clp.validate_name("mirror disk resource", name)
    if state not in ("absent", "present"):
        raise StillpointError("state must be absent or present, not %r." % (state,))
    if not saved_definition:
        raise StillpointError("saved_definition (a file path on the server) is required: removal writes the "
                              "resource's definition there and adding back reads it.")
    files = files or LocalFiles()
    rec = Recorder(runner, check_mode=check_mode)
    workdir = files.make_workdir()
    try:
        text = _pull(runner, edition, version, workdir, files)
        before = copy.deepcopy(clp.conf_mirrors(text).get(name))
        result = dict(changed=False, name=name, before=before, after=before, pushed=False, stopped_cluster=False,
                      saved_definition=saved_definition, group_start={}, actions=rec.actions)
        new_text, change = _edit(text, name, state, saved_definition, initial_mirror_construction, same_backup_set,
                                 files, result)
        if new_text is None:
            return result
        result["changed"] = True
        if not check_mode:
            try:
                info = clp.cluster_status(runner, edition, version)
            except StillpointError:
                # clpstat fails on a server whose cluster service is stopped; then clpcfctrl --push is the judge
                info = None
            running = _services_running(info) if info else []
            if running and not stop_cluster:
                raise StillpointError("Refused: adding or removing a mirror disk resource needs the cluster stopped, "
                                      "and the cluster service runs on %s. Stop it (clpcl -t -a) or set "
                                      "stop_cluster=true." % ", ".join(running), running=running)
            if running:
                _act(rec, "service_stop_all", edition, version)
                result["stopped_cluster"] = True
        if state == "absent":
            if not check_mode:
                files.write(saved_definition, json.dumps(result["definition"], indent=1, sort_keys=True))
            rec.note("save the definition of %s to %s" % (name, saved_definition))
        if not check_mode:
            files.write(files.join(workdir, "clp.conf"), new_text)
        _act(rec, "config_push", edition, version, dir=workdir, change=change)
        result["pushed"] = not check_mode
        return result
    finally:
        files.remove_workdir(workdir)


def run_mirror_config(params, runner, aws, check_mode, diff, files=None):
    """clusterpro_mirror_config's result for ``params`` (validated against MIRROR_CONFIG_ARGS and
    amazon.aws's options). ``aws`` has ``client(service, retry_decorator=...)`` (the AnsibleAWSModule,
    or amazon.aws's AWSPluginBase on the controller); ``files`` reaches the server's files (default:
    local). The same_backup_set proof is read from EC2 first, before anything is pulled."""
    p = params
    proof = checked = None
    if p["same_backup_set"] and p["state"] == "present" and not p["initial_mirror_construction"]:
        # imported only for the proof: botocore would cost every clusterpro_info/control task seconds of import
        from ansible_collections.stillpoint.snapshots.plugins.module_utils._clusterpro_proof import prove_same_backup_set
        checked, proof = prove_same_backup_set(aws, p["same_backup_set"])
    result = mirror_config(runner, p["edition"], p["version"], p["name"], p["state"], p["saved_definition"],
                           initial_mirror_construction=p["initial_mirror_construction"], same_backup_set=checked,
                           stop_cluster=p["stop_cluster"], check_mode=check_mode, files=files)
    if proof is not None:
        result["proof"] = proof
    if diff:
        starts = result["group_start"].items()
        result["diff"] = dict(before=dict(mirror=result["before"], group_start=dict((g, v["before"]) for g, v in starts)),
                              after=dict(mirror=result["after"], group_start=dict((g, v["after"]) for g, v in starts)))
    return result
