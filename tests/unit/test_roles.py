# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The roles' inputs and plumbing, read from their files (nothing runs here; the integration tests run
the roles):

- a variable an argument spec marks required has no default (neither in defaults/main.yml nor in the
  spec), so argument validation refuses a run without it;
- every entry point's first task is ``stillpoint.snapshots.role_inputs`` registered as ``__<role>_in``, and
  no task reads a public variable of its role after that (survey text is typed before any change; AWX extra
  variables cannot be replaced in place, so the tasks read the typed copy);
- the specs carry types, not defaults (ansible-core's own check before the first task refuses ``null`` for a
  typed option that has a ``default`` in the spec); every optional variable has its default in defaults/main.yml;
- no role reads another role's files (shared files live in a role that both include);
- no task writes out the AWS connection (region, endpoint_url) or the CLUSTERPRO edition/version:
  every task of a module of the action groups ``aws`` and ``clusterpro`` (meta/runtime.yml) gets them
  from ``module_defaults`` of the group, set once per role or play."""

import os
import re

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES = sorted(os.listdir(os.path.join(ROOT, "roles")))
PLAYBOOKS = sorted(os.path.join("playbooks", f) for f in os.listdir(os.path.join(ROOT, "playbooks")) if f.endswith(".yml"))
BLOCK_KEYS = ("block", "rescue", "always")
GROUP_OPTIONS = {"aws": ("region", "endpoint_url", "aws_region", "ec2_url", "aws_endpoint_url"),
                 "clusterpro": ("edition", "version")}


def load(*parts):
    path = os.path.join(ROOT, *parts)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return yaml.safe_load(handle)


def groups():
    """{group: set of FQCNs} from meta/runtime.yml; amazon.aws's modules count as members of ``aws``,
    which extends amazon.aws.aws."""
    out = {}
    for group, members in load("meta", "runtime.yml")["action_groups"].items():
        out[group] = set("stillpoint.snapshots." + m for m in members if isinstance(m, str))
    return out


def in_group(module, group, members):
    return module in members[group] or (group == "aws" and module.startswith("amazon.aws."))


def tasks_of(tasks, defaults=None):
    """Yield ``(task, module, module_defaults in force)`` for every task of ``tasks``, blocks walked."""
    for entry in tasks or []:
        here = dict(defaults or {})
        here.update(entry.get("module_defaults") or {})
        if any(k in entry for k in BLOCK_KEYS):
            for key in BLOCK_KEYS:
                yield from tasks_of(entry.get(key), here)
            continue
        module = next((k for k in entry if "." in k), None)
        yield entry, module, here


def task_files():
    for role in ROLES:
        folder = os.path.join(ROOT, "roles", role, "tasks")
        for name in sorted(os.listdir(folder)):
            yield role, os.path.join("roles", role, "tasks", name), load("roles", role, "tasks", name), {}
    for playbook in PLAYBOOKS:
        for play in load(playbook):
            yield None, playbook, play.get("tasks"), play.get("module_defaults") or {}


@pytest.mark.parametrize("role", ROLES)
def test_required_role_variables_have_no_default(role):
    specs = load("roles", role, "meta", "argument_specs.yml")["argument_specs"]
    defaults = load("roles", role, "defaults", "main.yml") or {}
    required = [(entry, name, spec) for entry, body in specs.items() for name, spec in body.get("options", {}).items()
                if spec.get("required")]
    for entry, name, spec in required:
        assert name not in defaults, "%s: %s is required (entry point %s) but defaults/main.yml sets it" % (role, name, entry)
        assert "default" not in spec, "%s: %s is required (entry point %s) but has a default" % (role, name, entry)


def test_the_required_variables_are_checked_by_the_specs():
    """The roles that need a set, a resource or servers say so in their specs (what the asserts used to do)."""
    required = dict((role, sorted(name for body in load("roles", role, "meta", "argument_specs.yml")["argument_specs"].values()
                                  for name, spec in body.get("options", {}).items() if spec.get("required")))
                    for role in ROLES)
    # array_restore: array_restore_set_id or array_restore_group_id, one of the two (the role's first assert;
    # tests/integration/test_group.py runs it without either)
    assert required["array_restore"] == []
    assert required["clusterpro_mirror_backup"] == ["clusterpro_mirror_backup_active", "clusterpro_mirror_backup_standby"]
    assert required["clusterpro_mirror_restore"] == ["clusterpro_mirror_restore_set_id"]
    assert required["drbd_mirror_backup"] == ["drbd_mirror_backup_resource"]
    assert required["drbd_mirror_restore"] == ["drbd_mirror_restore_resource", "drbd_mirror_restore_set_id"]
    assert required["drbd_disk_replace"] == ["drbd_disk_replace_new_disk", "drbd_disk_replace_node",
                                             "drbd_disk_replace_resource"]


@pytest.mark.parametrize("role", ROLES)
def test_no_role_reads_another_roles_files(role):
    others = [r for r in ROLES if r != role]
    for top, _dirs, files in os.walk(os.path.join(ROOT, "roles", role)):
        for name in files:
            if not name.endswith((".yml", ".yaml", ".j2")):
                continue
            with open(os.path.join(top, name)) as handle:
                text = handle.read()
            where = os.path.relpath(os.path.join(top, name), ROOT)
            assert not re.search(r"role_path\s*}}\s*/\s*\.\.", text), "%s climbs out of its role_path" % where
            for other in others:
                assert not re.search(r"\.\./%s\b" % re.escape(other), text), "%s reads role %s's files" % (where, other)


@pytest.mark.parametrize("role,path,tasks,defaults", list(task_files()), ids=[f[1] for f in task_files()])
def test_group_options_come_from_module_defaults(role, path, tasks, defaults):
    members = groups()
    # roles with an AWS connection of their own must hand it to every AWS module through module_defaults
    spec = load("roles", role, "meta", "argument_specs.yml")["argument_specs"] if role else {}
    has_aws = any(name.endswith("_aws_region") for body in spec.values() for name in body.get("options", {}))
    for task, module, in_force in tasks_of(tasks, defaults):
        if module is None:
            continue
        args = task[module] if isinstance(task[module], dict) else {}
        for group, options in GROUP_OPTIONS.items():
            if not in_group(module, group, members):
                continue
            written = sorted(set(options) & set(args))
            assert not written, "%s: task %r passes %s itself; module_defaults group/stillpoint.snapshots.%s gives them" % (
                path, task.get("name"), written, group)
            if group == "clusterpro" or has_aws or role is None:
                assert "group/stillpoint.snapshots.%s" % group in in_force, (
                    "%s: task %r (%s) is not under module_defaults for group/stillpoint.snapshots.%s"
                    % (path, task.get("name"), module, group))


def test_the_walk_sees_the_aws_and_clusterpro_tasks():
    """The check above is not vacuous: it meets the modules it is about."""
    members = groups()
    seen = set()
    for _role, _path, tasks, defaults in task_files():
        for _task, module, _in_force in tasks_of(tasks, defaults):
            for group in GROUP_OPTIONS:
                if module and in_group(module, group, members):
                    seen.add((group, module))
    assert {("aws", "stillpoint.snapshots.ebs_snapshot_set"), ("aws", "amazon.aws.ec2_instance"),
            ("aws", "stillpoint.snapshots.backup_set_info"), ("clusterpro", "stillpoint.snapshots.clusterpro_control"),
            ("clusterpro", "stillpoint.snapshots.clusterpro_mirror_config")} <= seen


def entry_files(role):
    """(entry point, tasks file) of every entry point of the role's argument specs."""
    specs = load("roles", role, "meta", "argument_specs.yml")["argument_specs"]
    return [(entry, os.path.join("roles", role, "tasks", entry + ".yml")) for entry in sorted(specs)]


def public_names(role):
    specs = load("roles", role, "meta", "argument_specs.yml")["argument_specs"]
    return sorted(set(name for body in specs.values() for name in (body.get("options") or {})))


@pytest.mark.parametrize("role", ROLES)
def test_every_entry_point_types_its_inputs_first(role):
    for entry, path in entry_files(role):
        tasks = load(path)
        first = tasks[0]
        assert "stillpoint.snapshots.role_inputs" in first, "%s: the first task of %s is not role_inputs" % (role, path)
        assert first.get("register") == "__%s_in" % role, "%s: role_inputs is not registered as __%s_in" % (path, role)


@pytest.mark.parametrize("role", ROLES)
def test_no_task_reads_a_public_variable(role):
    """After the first task, only the typed copy (``__<role>_in.<name>``) is read; README/defaults may name them."""
    names = public_names(role)
    word = re.compile(r"(?<![\w.])(%s)\b" % "|".join(re.escape(n) for n in names))
    paths = [os.path.join(ROOT, "roles", role, d, n) for d in ("tasks", "vars", "handlers")
             if os.path.isdir(os.path.join(ROOT, "roles", role, d)) for n in os.listdir(os.path.join(ROOT, "roles", role, d))]
    assert paths
    for path in paths:
        name = os.path.relpath(path, os.path.join(ROOT, "roles", role))
        with open(path) as handle:
            text = handle.read()
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            for match in word.finditer(code):
                # a message may name the variable for the user; a template or condition may not read it
                templated = re.search(r"\{\{[^}]*%s" % re.escape(match.group(1)), code)
                bare = re.match(r"\s*(-\s+|(when|that|loop|until|changed_when|failed_when):\s*)%s" % re.escape(match.group(1)), code)
                assert not templated and not bare, "roles/%s/%s:%d reads %s directly: %s" % (
                    role, name, number, match.group(1), line.strip())


@pytest.mark.parametrize("role", ROLES)
def test_specs_carry_types_and_defaults_live_in_defaults(role):
    specs = load("roles", role, "meta", "argument_specs.yml")["argument_specs"]
    defaults = load("roles", role, "defaults", "main.yml") or {}
    for entry, body in specs.items():
        for name, spec in (body.get("options") or {}).items():
            assert "default" not in spec, "%s: %s (entry point %s) has a default in the spec; put it in defaults/main.yml" % (
                role, name, entry)
            assert spec.get("type"), "%s: %s (entry point %s) has no type" % (role, name, entry)
            if not spec.get("required"):
                assert name in defaults, "%s: optional %s (entry point %s) has no default in defaults/main.yml" % (
                    role, name, entry)
