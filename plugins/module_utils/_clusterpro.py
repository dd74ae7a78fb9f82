# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""CLUSTERPRO / EXPRESSCLUSTER X: every command line in one table, parsers of their outputs,
the cluster read through them, the refusals decided from that state, and the clp.conf edits for
the mirror disk resource.

Private to the collection. Pure Python: commands go through a :class:`~._common.CommandRunner`
(``runner(argv, check=True)`` returns ``(rc, out, err)``); errors are :class:`StillpointError`.
The modules' runs (what changes, recorded) are in ``_clusterpro_run.py``; the EC2 proof of
refusal 3 in ``_clusterpro_proof.py``.

The command table :data:`COMMANDS` maps an operation to its argv per edition (``linux``,
``windows``) and major version (``4``, ``5``). Which lines are verified against which source is
in docs/clusterpro.md; :data:`VERIFIED` carries the same in short form.

Refusals (DOMAIN.md "What the automation must refuse"):

* 3: initial mirror construction is turned off only with a proof that both mirror volumes come
  from one backup set and one snapshot (:func:`validate_same_backup_set`);
* 4: a server is shut down for a standby snapshot only while every mirror is GREEN on every
  server (:func:`assert_mirrors_clean`);
* 5: forced mirror recovery only from a server whose copy is GREEN, and a group or mirror disk
  resource is started only on a server whose copy is GREEN (:func:`plan_control`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

EDITIONS = ("linux", "windows")
VERSIONS = ("4", "5")

ANY = "*"

# The options every CLUSTERPRO module takes (doc fragment stillpoint.snapshots.clusterpro, in matching form).
CLUSTERPRO_ARGS = dict(
    edition=dict(type="str", choices=list(EDITIONS), default="linux"),
    version=dict(type="str", default="4"),
)

# operation -> {(edition or ANY, major or ANY): argv template}. The most specific key wins.
# Placeholders: {group} {resource} {server} {md} {dir}.
COMMANDS = {
    "status": {(ANY, ANY): ["clpstat"]},
    "group_current": {(ANY, ANY): ["clpgrp", "-n", "{group}"]},
    "group_start": {(ANY, ANY): ["clpgrp", "-s", "{group}", "-h", "{server}"]},
    "group_stop": {(ANY, ANY): ["clpgrp", "-t", "{group}", "-h", "{server}"]},
    "resource_start": {(ANY, ANY): ["clprsc", "-s", "{resource}", "-h", "{server}"]},
    "resource_stop": {(ANY, ANY): ["clprsc", "-t", "{resource}", "-h", "{server}"]},
    "resource_stop_dependents": {(ANY, ANY): ["clprsc", "-t", "{resource}", "-f", "-h", "{server}"]},
    "service_start": {(ANY, ANY): ["clpcl", "-s", "-h", "{server}"]},
    "service_stop": {(ANY, ANY): ["clpcl", "-t", "-h", "{server}"]},
    "service_stop_all": {(ANY, ANY): ["clpcl", "-t", "-a"]},
    "server_shutdown": {(ANY, ANY): ["clpdown", "-h", "{server}"]},
    "cluster_shutdown": {(ANY, ANY): ["clpstdn"]},
    "mirror_list": {(ANY, ANY): ["clpmdstat", "-l"]},
    "mirror_status": {(ANY, ANY): ["clpmdstat", "-m", "{md}"]},
    "mirror_recover": {(ANY, ANY): ["clpmdctrl", "-r", "{md}"]},
    "mirror_force_recover": {("linux", ANY): ["clpmdctrl", "-f", "{server}", "{md}"],
                             ("windows", ANY): ["clpmdctrl", "--force", "{md}"]},
    "config_pull": {("linux", "4"): ["clpcfctrl", "--pull", "-l", "-x", "{dir}"],
                    ("windows", "4"): ["clpcfctrl", "--pull", "-w", "-x", "{dir}"],
                    (ANY, "5"): ["clpcfctrl", "--pull", "-x", "{dir}"]},
    "config_push": {("linux", "4"): ["clpcfctrl", "--push", "-l", "-x", "{dir}"],
                    ("windows", "4"): ["clpcfctrl", "--push", "-w", "-x", "{dir}"],
                    (ANY, "5"): ["clpcfctrl", "--push", "-x", "{dir}"]},
}

# operation -> where the line (options and output) was checked; details in docs/clusterpro.md.
# "verified": seen in NEC's own EXPRESSCLUSTER repositories on GitHub for that edition/version;
# "inferred": same option set assumed from another edition/version, not seen.
VERIFIED = {
    "status": "verified (output: Linux 4.x/5.x and Windows 5.x samples in EXPRESSCLUSTER repos)",
    "group_current": "verified (Windows X3.3, EXPRESSCLUSTER/ScheduleMirroring)",
    "group_start": "verified (Windows X3.3 ScheduleMirroring; Linux scripts)",
    "group_stop": "verified (Windows X3.3 ScheduleMirroring)",
    "resource_start": "verified form (DOMAIN.md from NEC scripts: clprsc -s <rsc> -h <host>)",
    "resource_stop": "verified form (DOMAIN.md from NEC scripts: clprsc -t <rsc> -h <host>)",
    "resource_stop_dependents": "verified (Windows X3.3 ScheduleMirroring: clprsc -t md -f -h primary)",
    "service_start": "verified (clpcl -s, -s -a in EXPRESSCLUSTER repos; -h from DOMAIN.md)",
    "service_stop": "verified (clpcl -t, -t -a in EXPRESSCLUSTER repos; -h from DOMAIN.md)",
    "service_stop_all": "verified (clpcl -t -a, Windows 4.x script in EXPRESSCLUSTER repos)",
    "server_shutdown": "inferred (clpdown -h <server> from the Reference Guide's synopsis, not seen in a script)",
    "cluster_shutdown": "verified name (DOMAIN.md); options not used",
    "mirror_list": "verified (clpmdstat -l, '<md>' lines, Linux perl scripts)",
    "mirror_status": "verified (clpmdstat -m <md>, 'Mirror Color A B' and 'Mirror Status:' lines, Linux and Windows)",
    "mirror_recover": "verified (clpmdctrl -r <md>, Linux perl script and Windows X3.3 bat)",
    "mirror_force_recover": "linux verified (clpmdctrl -f <server> <md>, EXPRESSCLUSTER iSCSI guide); windows inferred",
    "config_pull": "verified 4.x Linux (-l -x) and Windows (-x); 5.x without -l/-w inferred from 5.1 push",
    "config_push": "verified 4.x Linux (-l -x), Windows (-w -x), 5.1 Linux (-x, EXPRESSCLUSTER/Ansible)",
    # not a command line: the clp.conf element seed 001 steps 1 and 5 edit (pushed with config_push)
    "conf_group_start": "verified 4.x Linux/Windows (root/group@name/start 0 manual, 1 or absent automatic: "
                        "EXPRESSCLUSTER/CreateClusterOnLinux GroupParameters docs, clpcfset grpparam); 5.x UNVERIFIED",
}

MIRROR_COLORS = ("GREEN", "YELLOW", "RED", "ORANGE", "GRAY", "BLACK", "BLUE")
CLEAN = "GREEN"

_SET_ID_RE = re.compile(r"^bs-\d{8}T\d{6}Z-[0-9a-f]+$")
_SNAP_RE = re.compile(r"^snap-[0-9a-f]{8,17}$")
_VOL_RE = re.compile(r"^vol-[0-9a-f]{8,17}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,63}$")


# -- the command table ---------------------------------------------------------------------


def check_edition(edition, version):
    """Normalise ``edition`` and ``version`` (``4``, ``4.3``, ``5.1.0`` -> major)."""
    edition = (edition or "").lower()
    if edition not in EDITIONS:
        raise StillpointError("Unknown CLUSTERPRO edition %r: use one of %s." % (edition, ", ".join(EDITIONS)))
    major = str(version or "").split(".", maxsplit=1)[0]
    if major not in VERSIONS:
        raise StillpointError("Unsupported CLUSTERPRO version %r: this collection knows the command lines of the "
                              "major versions %s (X 4.x, X 5.x)." % (version, ", ".join(VERSIONS)))
    return edition, major


def command(name, edition, version, **values):
    """The argv of operation ``name`` for ``edition``/``version`` with placeholders filled."""
    edition, major = check_edition(edition, version)
    forms = COMMANDS.get(name)
    if forms is None:
        raise StillpointError("No CLUSTERPRO command line named %r." % (name,))
    for key in ((edition, major), (edition, ANY), (ANY, major), (ANY, ANY)):
        if key in forms:
            template = forms[key]
            break
    else:
        raise StillpointError("CLUSTERPRO %s %s.x has no command line for %s." % (edition, major, name))
    argv = []
    for part in template:
        try:
            argv.append(part.format(**values))
        except KeyError as e:
            raise StillpointError("CLUSTERPRO command %s needs a value for %s." % (name, e))
    return argv


def resolve(runner, argv):
    """``argv`` with its program resolved by ``runner.bin`` (get_bin_path) when the runner has one."""
    argv = list(argv)
    resolve_bin = getattr(runner, "bin", None)
    if resolve_bin is not None:
        argv[0] = resolve_bin(argv[0])
    return argv


def run(runner, name, edition, version, check=True, **values):
    """Run operation ``name`` (a read: changes go through ``_clusterpro_run``'s recorder)."""
    argv = command(name, edition, version, **values)
    return runner(resolve(runner, argv), check=check, what=" ".join(argv[:2]))


def validate_name(kind, value):
    if not value or not _NAME_RE.match(str(value)):
        raise StillpointError("Invalid %s name %r: CLUSTERPRO object names are 1-63 characters of "
                              "A-Z a-z 0-9 _ . @ -." % (kind, value))
    return value


# -- parsers ---------------------------------------------------------------------------------

_SECTION_RE = re.compile(r"^\s*<(server|group|monitor)>\s*$")
_ENTRY_RE = re.compile(r"^(?P<indent>\s*)(?P<star>\*?)(?P<name>\S+?)\s*\.*\s*:\s*(?P<value>.*?)\s*$")


def parse_clpstat(text):
    """``clpstat`` (and ``clpstat --long``) output -> servers, groups (current server,
    resources), monitors. Raises when the text is not a clpstat report."""
    if "CLUSTER STATUS" not in text:
        raise StillpointError("clpstat printed no CLUSTER STATUS report; is the cluster service installed and "
                              "is this a CLUSTERPRO server?", stdout=text)
    out = dict(cluster=None, local_server=None, servers={}, groups={}, monitors={})
    section = None
    top_indent = None
    item = None
    for line in text.splitlines():
        if not line.strip() or line.strip().startswith("="):
            continue
        m = _SECTION_RE.match(line)
        if m:
            section, top_indent, item = m.group(1), None, None
            continue
        m = _ENTRY_RE.match(line)
        if not m:
            continue
        name, value = m.group("name"), m.group("value")
        status = value.split("  ")[0].strip() if value else ""
        indent = len(m.group("indent")) + len(m.group("star"))
        if section is None:
            if name == "Cluster":
                out["cluster"] = value
            continue
        if section == "monitor":
            out["monitors"][name] = status
            continue
        if top_indent is None or indent <= top_indent:
            top_indent = indent
            if section == "server":
                item = out["servers"][name] = dict(status=status, local=bool(m.group("star")), heartbeats={})
                if m.group("star"):
                    out["local_server"] = name
            else:
                item = out["groups"][name] = dict(status=status, current=None, resources={})
            continue
        if item is None:
            continue
        if section == "server":
            item["heartbeats"][name] = status
        elif name == "current":
            item["current"] = None if value in ("", "None", "--") else value
        else:
            item["resources"][name] = status
    return out


def parse_group_current(text):
    """``clpgrp -n <group>``: the server the group is active on, or None."""
    value = text.strip().splitlines()[-1].strip() if text.strip() else ""
    return None if value in ("", "None", "--") else value


def parse_mdstat_list(text):
    """``clpmdstat -l``: the mirror disk resource names (``<md1>`` lines)."""
    return re.findall(r"^\s*<([^<>\s]+)>\s*$", text, re.M)


def parse_mdstat(text, md=None):
    """``clpmdstat -m <md>``: the mirror status line and, per server, color, last update time,
    break time, disk error and difference percent (columns in server order)."""
    status = None
    servers = []
    rows = {}
    labels = {"Mirror Color": "color", "Lastupdate Time": "last_update", "Break Time": "break_time",
              "Disk Error": "disk_error", "Difference Percent": "difference_percent"}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or set(stripped) <= set("-="):
            continue
        m = re.match(r"^Mirror Status\s*:\s*(.+)$", stripped)
        if m:
            status = m.group(1).strip()
            continue
        for label, key in labels.items():
            if stripped.startswith(label):
                rows[key] = [v for v in re.split(r"\s{2,}", stripped[len(label):].strip()) if v]
                break
        else:
            parts = stripped.split()
            if len(parts) >= 2 and (md is None or parts[0] == md) and not servers:
                md = md or parts[0]
                servers = parts[1:]
    colors = rows.get("color")
    if status is None or not colors:
        raise StillpointError("clpmdstat printed no mirror status for %s: expected a 'Mirror Status:' line and "
                              "a 'Mirror Color' row." % (md or "the mirror disk resource"), stdout=text)
    if not servers:
        servers = ["server%d" % (i + 1) for i in range(len(colors))]
    per_server = {}
    for index, server in enumerate(servers):
        entry = {}
        for key, values in rows.items():
            value = values[index] if index < len(values) else None
            entry[key] = None if value in (None, "--") else value
        per_server[server] = entry
    unknown = [c for c in colors if c not in MIRROR_COLORS]
    if unknown:
        raise StillpointError("clpmdstat reported unknown mirror colors %s for %s." % (unknown, md), stdout=text)
    return dict(name=md, status=status, servers=servers, colors=dict(zip(servers, colors)), details=per_server,
                clean=all(c == CLEAN for c in colors))


# -- reading the cluster ---------------------------------------------------------------------


def cluster_status(runner, edition, version):
    _rc, out, _err = run(runner, "status", edition, version)
    return parse_clpstat(out)


def mirror_names(runner, edition, version):
    _rc, out, _err = run(runner, "mirror_list", edition, version)
    return parse_mdstat_list(out)


def mirror_status(runner, edition, version, md):
    validate_name("mirror disk resource", md)
    _rc, out, _err = run(runner, "mirror_status", edition, version, md=md)
    return parse_mdstat(out, md)


def cluster_info(runner, edition, version, mirrors=None):
    """Servers, groups, resources, monitors and every (or the named) mirror's status and colors."""
    info = cluster_status(runner, edition, version)
    names = list(mirrors) if mirrors is not None else mirror_names(runner, edition, version)
    info["mirrors"] = dict((md, mirror_status(runner, edition, version, md)) for md in names)
    info["resources"] = {}
    for group, record in info["groups"].items():
        for resource, status in record["resources"].items():
            info["resources"][resource] = dict(group=group, status=status, server=record["current"])
    return info


def assert_mirrors_clean(info, mirrors=None):
    """Refusal 4: every (named) mirror GREEN on every server, or raise."""
    bad = {}
    for md, record in info["mirrors"].items():
        if mirrors is not None and md not in mirrors:
            continue
        if not record["clean"]:
            bad[md] = record["colors"]
    if bad:
        raise StillpointError(
            "Refused: mirror disk resources are not clean (GREEN on every server): %s. A standby copy taken now "
            "would not match the active server; wait for mirror recovery to finish (clpmdstat -m <md>) and "
            "try again." % ", ".join("%s %s" % (md, colors) for md, colors in sorted(bad.items())),
            mirrors=bad)


# -- control ---------------------------------------------------------------------------------

KINDS = ("group", "resource", "cluster_service", "server", "mirror")
STATES = {"group": ("started", "stopped"), "resource": ("started", "stopped"),
          "cluster_service": ("started", "stopped"), "server": ("shutdown",), "mirror": ("recovered",)}


def _server_online(info, server):
    record = info["servers"].get(server)
    if record is None:
        raise StillpointError("Unknown server %r: the cluster has %s." % (server, ", ".join(sorted(info["servers"]))))
    return record["status"] == "Online"


def _mirrors_of_group(info, group):
    return [r for r in info["groups"][group]["resources"] if r in info["mirrors"]]


def _require_green(info, server, mirrors, what):
    for md in mirrors:
        color = info["mirrors"][md]["colors"].get(server)
        if color != CLEAN:
            raise StillpointError(
                "Refused: %s on %s would activate mirror disk resource %s there, but its copy on %s is %s, not "
                "GREEN (not the latest data). Start it on the server whose copy is GREEN, or recover the mirror "
                "first." % (what, server, md, server, color), mirror=md, colors=info["mirrors"][md]["colors"])


def plan_control(info, kind, state, name=None, server=None, stop_dependents=False, force=False,
                 require_clean_mirrors=True, edition="linux"):
    """Decide what to run for one control request against the cluster state ``info``
    (from :func:`cluster_info`). Returns ``(operation, values)`` or ``None`` when nothing is to
    be done; raises for what CLUSTERPRO would reject and for the refusals."""
    if kind not in KINDS:
        raise StillpointError("Unknown kind %r: use one of %s." % (kind, ", ".join(KINDS)))
    if state not in STATES[kind]:
        raise StillpointError("state=%s does not apply to kind=%s: use %s." % (state, kind, " or ".join(STATES[kind])))
    if kind in ("group", "resource", "mirror"):
        validate_name(kind, name)
    if kind != "mirror" or force:
        if not server:
            raise StillpointError("kind=%s state=%s needs server." % (kind, state))
        validate_name("server", server)
        online = _server_online(info, server)

    if kind == "group":
        if name not in info["groups"]:
            raise StillpointError("Unknown group %r: the cluster has %s." % (name, ", ".join(sorted(info["groups"]))))
        record = info["groups"][name]
        if state == "started":
            if record["current"] == server and record["status"] == "Online":
                return None
            if record["current"] and record["current"] != server and record["status"] != "Offline":
                raise StillpointError("Group %s is active on %s; stop it there first (or move it) before starting "
                                      "it on %s." % (name, record["current"], server))
            if not online:
                raise StillpointError("Cannot start group %s on %s: the server is not Online in clpstat." % (name, server))
            _require_green(info, server, _mirrors_of_group(info, name), "starting group %s" % name)
            return "group_start", dict(group=name, server=server)
        if record["current"] != server or record["status"] == "Offline":
            return None
        return "group_stop", dict(group=name, server=server)

    if kind == "resource":
        group = next((g for g, r in info["groups"].items() if name in r["resources"]), None)
        if group is None:
            raise StillpointError("Unknown resource %r: no group of the cluster holds it." % (name,))
        record = info["groups"][group]
        status = record["resources"][name]
        if state == "started":
            if status == "Online" and record["current"] == server:
                return None
            if record["current"] and record["current"] != server and record["status"] != "Offline":
                raise StillpointError("Resource %s belongs to group %s, active on %s; it cannot be started on %s."
                                      % (name, group, record["current"], server))
            if not online:
                raise StillpointError("Cannot start resource %s on %s: the server is not Online." % (name, server))
            if name in info["mirrors"]:
                _require_green(info, server, [name], "starting resource %s" % name)
            return "resource_start", dict(resource=name, server=server)
        if status == "Offline" or record["current"] != server:
            return None
        return ("resource_stop_dependents" if stop_dependents else "resource_stop"), dict(resource=name, server=server)

    if kind == "cluster_service":
        if state == "started":
            return None if online else ("service_start", dict(server=server))
        return ("service_stop", dict(server=server)) if online else None

    if kind == "server":
        if not online:
            return None
        if require_clean_mirrors:
            assert_mirrors_clean(info)
        return "server_shutdown", dict(server=server)

    # mirror
    if name not in info["mirrors"]:
        raise StillpointError("Unknown mirror disk resource %r: clpmdstat lists %s."
                              % (name, ", ".join(sorted(info["mirrors"])) or "none"))
    record = info["mirrors"][name]
    if record["clean"]:
        return None
    if force:
        color = record["colors"].get(server)
        if color != CLEAN:
            raise StillpointError(
                "Refused: forced mirror recovery of %s from %s, whose copy is %s. Forced recovery copies from the "
                "server it runs for; only a GREEN copy (the latest data) may be the source, or the good copy is "
                "overwritten. Colors: %s." % (name, server, color, record["colors"]), colors=record["colors"])
        if edition == "windows" and info.get("local_server") != server:
            raise StillpointError(
                "Refused: on Windows clpmdctrl --force recovers from the server it runs on, which is %s, not %s; run "
                "the task on %s." % (info.get("local_server"), server, server))
        return "mirror_force_recover", dict(md=name, server=server)
    return "mirror_recover", dict(md=name)


# -- clp.conf: the mirror disk resource -----------------------------------------------------

DEFINITION_FORMAT = "stillpoint.clusterpro.md-definition/1"


def _parse_conf(text):
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise StillpointError("clp.conf is not well-formed XML (%s); pull the configuration again." % e)
    if root.tag != "root":
        raise StillpointError("clp.conf has root element <%s>, not <root>; is this a CLUSTERPRO configuration?" % root.tag)
    return root


def _serialize(root):
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def conf_servers(text):
    return [s.get("name") for s in _parse_conf(text).findall("server")]


def conf_mirrors(text):
    """Mirror disk resources in clp.conf: name -> dict(group, fullcopy, parameters)."""
    root = _parse_conf(text)
    out = {}
    for md in root.findall("resource/md"):
        name = md.get("name")
        group = next((g.get("name") for g in root.findall("group")
                      if any(r.get("name") == "md@" + name for r in g.findall("resource"))), None)
        fullcopy = md.findtext("parameters/fullcopy")
        out[name] = dict(group=group, initial_mirror_construction=(fullcopy or "1").strip() != "0",
                         data_partition=md.findtext("parameters/diskdev/dppath"),
                         cluster_partition=md.findtext("parameters/diskdev/cppath"),
                         mount_point=md.findtext("parameters/mount/point"))
    return out


def _monitor_targets(element, md):
    return any((node.text or "").strip() == md for node in element.iter() if node is not element)


def remove_md(text, md, manual_start=True):
    """Remove mirror disk resource ``md`` from clp.conf text. Returns ``(new_text, definition)``
    where ``definition`` holds everything needed to put it back unchanged: the resource element,
    its group entry and position, the dependencies other resources had on it, and the monitors of
    type mdw/mdnw that watched it (removed with it, as the WebUI does).

    With ``manual_start`` (seed 001 restore step 1) the groups that hold ``md`` or depend on it
    (:func:`mirror_start_groups`) are set to manual startup in the same text, and their previous
    start attribute is kept in ``definition["group_start"]`` for :func:`add_md` to put back."""
    root = _parse_conf(text)
    resources = root.find("resource")
    element = resources.find("md[@name='%s']" % md) if resources is not None else None
    if element is None:
        raise StillpointError("clp.conf has no mirror disk resource %r." % md)
    definition = dict(format=DEFINITION_FORMAT, name=md, element=ET.tostring(element, encoding="unicode"),
                      group=None, group_index=None, dependents=[], monitors=[], servers=conf_servers(text),
                      group_start=[])
    if manual_start:
        for name in _start_groups(root, md):
            group = _find_group(root, name)
            _group_start(group)  # refuses a value it does not know before anything is saved
            definition["group_start"].append(dict(group=name, start=_raw_start(group)))
            _put_raw_start(group, GROUP_START_RAW["manual"])
    for group in root.findall("group"):
        for index, entry in enumerate(group.findall("resource")):
            if entry.get("name") == "md@" + md:
                definition["group"], definition["group_index"] = group.get("name"), index
                group.remove(entry)
    for other in list(resources):
        if other is element:
            continue
        for dep in other.findall("depend"):
            if dep.get("name") == md:
                definition["dependents"].append(dict(type=other.tag, name=other.get("name")))
                other.remove(dep)
    resources.remove(element)
    monitors = root.find("monitor")
    if monitors is not None:
        for mon in list(monitors):
            if mon.tag in ("mdw", "mdnw") and _monitor_targets(mon, md):
                definition["monitors"].append(ET.tostring(mon, encoding="unicode"))
                monitors.remove(mon)
    return _serialize(root), definition


def add_md(text, definition, initial_mirror_construction):
    """Put a removed mirror disk resource back from ``definition`` (see :func:`remove_md`), every
    setting as it was except ``parameters/fullcopy`` (initial mirror construction)."""
    if not isinstance(definition, dict) or definition.get("format") != DEFINITION_FORMAT:
        raise StillpointError("The saved definition is not one this collection wrote (format %s); remove the "
                              "resource with clusterpro_mirror_config state=absent to save one." % DEFINITION_FORMAT)
    root = _parse_conf(text)
    md = definition["name"]
    resources = root.find("resource")
    if resources is None:
        resources = ET.SubElement(root, "resource")
    if resources.find("md[@name='%s']" % md) is not None:
        raise StillpointError("clp.conf already has a mirror disk resource %r." % md)
    element = ET.fromstring(definition["element"])
    set_fullcopy(element, initial_mirror_construction)
    resources.append(element)
    if definition.get("group"):
        group = root.find("group[@name='%s']" % definition["group"])
        if group is None:
            raise StillpointError("Group %s of mirror disk resource %s is no longer in clp.conf; restore the group "
                                  "first." % (definition["group"], md))
        entries = group.findall("resource")
        entry = ET.Element("resource", {"name": "md@" + md})
        index = definition.get("group_index")
        if index is None or index >= len(entries):
            group.append(entry)
        else:
            group.insert(list(group).index(entries[index]), entry)
    for dep in definition.get("dependents", []):
        other = resources.find("%s[@name='%s']" % (dep["type"], dep["name"]))
        if other is not None and not any(d.get("name") == md for d in other.findall("depend")):
            ET.SubElement(other, "depend", {"name": md})
    if definition.get("monitors"):
        monitors = root.find("monitor")
        if monitors is None:
            monitors = ET.SubElement(root, "monitor")
        for mon in definition["monitors"]:
            monitors.append(ET.fromstring(mon))
    for saved in definition.get("group_start") or []:
        group = _find_group(root, saved.get("group"))
        if group is None:
            continue  # a group that is gone has no start attribute to put back (reported by mirror_config)
        raw = saved.get("start")
        if raw is not None and raw not in GROUP_START_VALUES:
            raise StillpointError("The saved definition gives group %s the start attribute %r; expected 0 or 1."
                                  % (saved.get("group"), raw))
        _put_raw_start(group, raw)
    return _serialize(root)


def set_fullcopy(element, initial_mirror_construction):
    params = element.find("parameters")
    if params is None:
        params = ET.SubElement(element, "parameters")
    node = params.find("fullcopy")
    if node is None:
        node = ET.SubElement(params, "fullcopy")
    node.text = "1" if initial_mirror_construction else "0"


def set_md_fullcopy(text, md, initial_mirror_construction):
    root = _parse_conf(text)
    element = root.find("resource/md[@name='%s']" % md)
    if element is None:
        raise StillpointError("clp.conf has no mirror disk resource %r." % md)
    set_fullcopy(element, initial_mirror_construction)
    return _serialize(root)


# -- clp.conf: a group's start attribute -----------------------------------------------------
#
# root/group@<name>/start: 0 = manual startup, 1 = automatic startup; no element = automatic (the
# default). Seen in EXPRESSCLUSTER/CreateClusterOnLinux doc/jp/GroupParameters_{Linux,Windows}_jp.md
# ("start: グループ起動属性 0: 手動起動 1: 自動起動 (default)") for clpcreate/clpcfset
# ``add grpparam failover <group> start 0``, which writes /root/group@<group>/start (src/v2/clpcfset.c).
# The same tool documents group startup waits as root/group@<name>/depend/act/depend@<other group>.
# X 4.x (clpcfset, X 4.3+); X 5.x uses the same clp.conf but the element was not seen in a 5.x sample.

GROUP_START_VALUES = {"0": "manual", "1": "automatic"}
GROUP_START_RAW = {"manual": "0", "automatic": "1"}
GROUP_START_DEFAULT = "automatic"


def _find_group(root, name):
    return next((g for g in root.findall("group") if g.get("name") == name), None)


def _raw_start(group):
    node = group.find("start")
    return None if node is None else (node.text or "").strip()


def _group_start(group):
    raw = _raw_start(group)
    if raw is None:
        return GROUP_START_DEFAULT
    if raw not in GROUP_START_VALUES:
        raise StillpointError("Group %s has the start attribute %r in clp.conf; this collection knows 0 (manual "
                              "startup) and 1 (automatic startup). Set it in the Cluster WebUI and try again."
                              % (group.get("name"), raw))
    return GROUP_START_VALUES[raw]


def _put_raw_start(group, raw):
    """``raw`` None removes the element (the default, automatic); otherwise sets its text."""
    node = group.find("start")
    if raw is None:
        if node is not None:
            group.remove(node)
        return
    if node is None:
        node = ET.SubElement(group, "start")
    node.text = raw


def conf_group_start(text, group=None):
    """The start attribute (``automatic`` or ``manual``) of ``group``, or of every group as a dict."""
    root = _parse_conf(text)
    if group is None:
        return dict((g.get("name"), _group_start(g)) for g in root.findall("group"))
    element = _find_group(root, group)
    if element is None:
        raise StillpointError("clp.conf has no group %r." % (group,))
    return _group_start(element)


def set_group_start(text, group, start):
    """clp.conf text with ``group``'s start attribute set to ``automatic`` or ``manual``."""
    if start not in GROUP_START_RAW:
        raise StillpointError("Group start attribute %r: use automatic or manual." % (start,))
    root = _parse_conf(text)
    element = _find_group(root, group)
    if element is None:
        raise StillpointError("clp.conf has no group %r." % (group,))
    _put_raw_start(element, GROUP_START_RAW[start])
    return _serialize(root)


def _start_groups(root, md):
    """The group holding ``md``, the groups of the resources that depend on it, and every group whose
    startup waits for one of those (group/depend/act/depend@name), in clp.conf order."""
    entries = {}
    for group in root.findall("group"):
        for entry in group.findall("resource"):
            entries[entry.get("name", "").partition("@")[2]] = group.get("name")
    wanted = set()
    if md in entries:
        wanted.add(entries[md])
    resources = root.find("resource")
    for other in (list(resources) if resources is not None else []):
        if any(d.get("name") == md for d in other.findall("depend")) and other.get("name") in entries:
            wanted.add(entries[other.get("name")])
    changed = True
    while changed:
        changed = False
        for group in root.findall("group"):
            name = group.get("name")
            if name not in wanted and any(d.get("name") in wanted for d in group.findall("depend/act/depend")):
                wanted.add(name)
                changed = True
    return [g.get("name") for g in root.findall("group") if g.get("name") in wanted]


def mirror_start_groups(text, md):
    """The groups whose start attribute seed 001 sets to manual while ``md`` is removed."""
    return _start_groups(_parse_conf(text), md)


# -- refusal 3: initial mirror construction off ---------------------------------------------


def validate_same_backup_set(proof, servers):
    """Turning initial mirror construction off is allowed only when both mirror volumes were
    created from one snapshot of one backup set. ``proof``: ``dict(set_id, volumes=[dict(server,
    volume_id, snapshot_id, set_id)])``, one volume per mirror server. Returns the snapshot id."""
    if not proof:
        raise StillpointError(
            "Refused: initial mirror construction may be turned off only when both mirror volumes come from one "
            "snapshot of one backup set; give same_backup_set (set_id and, per server, volume_id, snapshot_id "
            "and set_id of the snapshot the volume was created from). Without it the copies may differ and the "
            "mirror would report GREEN over different data.")
    set_id = proof.get("set_id")
    if not set_id or not _SET_ID_RE.match(str(set_id)):
        raise StillpointError("Refused: same_backup_set.set_id %r is not a backup set id (bs-YYYYMMDDTHHMMSSZ-xxxxxx)."
                              % (set_id,))
    volumes = proof.get("volumes") or []
    by_server = {}
    for vol in volumes:
        server = vol.get("server")
        if server in by_server:
            raise StillpointError("Refused: same_backup_set names two volumes for server %s." % server)
        by_server[server] = vol
    missing = [s for s in servers if s not in by_server]
    extra = [s for s in by_server if s not in servers]
    if missing or extra or len(servers) < 2:
        raise StillpointError("Refused: same_backup_set must name exactly one volume per mirror server (%s); "
                              "missing %s, unknown %s." % (", ".join(servers), missing or "none", extra or "none"))
    snapshots = set()
    for server in servers:
        vol = by_server[server]
        if not _VOL_RE.match(str(vol.get("volume_id") or "")):
            raise StillpointError("Refused: volume_id %r of server %s is not an EBS volume id." % (vol.get("volume_id"), server))
        if not _SNAP_RE.match(str(vol.get("snapshot_id") or "")):
            raise StillpointError("Refused: snapshot_id %r of server %s is not an EBS snapshot id."
                                  % (vol.get("snapshot_id"), server))
        if vol.get("set_id") != set_id:
            raise StillpointError("Refused: the volume of server %s comes from backup set %r, not %r; both mirror "
                                  "volumes must come from the same set." % (server, vol.get("set_id"), set_id))
        snapshots.add(vol["snapshot_id"])
    if len(snapshots) != 1:
        raise StillpointError(
            "Refused: the mirror volumes come from different snapshots (%s). Initial mirror construction can be "
            "skipped only when both servers' volumes are created from ONE snapshot (seed 001: the standby's "
            "snapshot restored to both servers)." % ", ".join(sorted(snapshots)))
    ids = [by_server[s]["volume_id"] for s in servers]
    if len(set(ids)) != len(ids):
        raise StillpointError("Refused: same_backup_set names one volume (%s) for several servers." % ids[0])
    return snapshots.pop()
