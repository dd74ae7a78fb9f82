# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What Galaxy and Automation Hub show of the roles stays true to the roles (nothing runs here):

- every role has a README.md (galaxy-importer refuses a collection with "No role readme found");
- its variable tables list exactly the options of the role's argument specs, with the spec's type and the
  default of defaults/main.yml (a renamed, added or removed variable, or a changed default, fails here, not in a
  user's play);
- the links it makes to files of the collection (docs/...) resolve;
- every entry point says in which collection version it was added (``version_added``), no later than
  galaxy.yml's version."""

import os
import re

import pytest
import yaml

from tests.unit.test_roles import ROLES, ROOT, load

# | `name` | type | default | meaning |
ROW = re.compile(r"^\| `(?P<name>[a-z0-9_]+)` \| (?P<type>[^|]+) \| (?P<default>[^|]+) \|", re.M)
LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(?:#[^)]*)?\)")


def readme(role):
    path = os.path.join(ROOT, "roles", role, "README.md")
    assert os.path.isfile(path), "roles/%s has no README.md (galaxy-importer: No role readme found)" % role
    with open(path) as handle:
        return handle.read()


def options(role):
    """{name: spec} over every entry point of the role."""
    out = {}
    for body in load("roles", role, "meta", "argument_specs.yml")["argument_specs"].values():
        out.update(body.get("options") or {})
    return out


def shown_type(spec):
    kind = spec.get("type", "str")
    return "list of %s" % spec.get("elements", "raw") if kind == "list" else kind


def shown_default(spec, defaults, name):
    if spec.get("required"):
        return "**required**"
    value = defaults.get(name)
    if value == "":
        return '`""`'
    if isinstance(value, bool):
        return "`%s`" % str(value).lower()
    if isinstance(value, (list, dict)):
        return "`%s`" % yaml.safe_dump(value, default_flow_style=True).strip()
    return "`%s`" % value


@pytest.mark.parametrize("role", ROLES)
def test_readme_lists_exactly_the_spec_variables(role):
    rows = dict((m.group("name"), (m.group("type").strip(), m.group("default").strip()))
                for m in ROW.finditer(readme(role)))
    spec = options(role)
    defaults = load("roles", role, "defaults", "main.yml") or {}
    assert sorted(rows) == sorted(spec), "roles/%s/README.md lists %s; the argument specs have %s" % (
        role, sorted(rows), sorted(spec))
    for name, (kind, default) in rows.items():
        assert kind == shown_type(spec[name]), "%s: README says type %r, the spec %r" % (name, kind, shown_type(spec[name]))
        assert default == shown_default(spec[name], defaults, name), (
            "%s: README says default %s, defaults/main.yml %s" % (name, default, shown_default(spec[name], defaults, name)))


@pytest.mark.parametrize("role", ROLES)
def test_readme_links_resolve(role):
    for match in LINK.finditer(readme(role)):
        target = match.group("target")
        if re.match(r"^[a-z]+:", target):
            continue
        path = os.path.normpath(os.path.join(ROOT, "roles", role, target))
        assert os.path.exists(path), "roles/%s/README.md links to %s, which does not exist" % (role, target)


def version(text):
    return tuple(int(part) for part in str(text).split("."))


@pytest.mark.parametrize("role", ROLES)
def test_entry_points_have_version_added(role):
    collection = version(load("galaxy.yml")["version"])
    for entry, body in load("roles", role, "meta", "argument_specs.yml")["argument_specs"].items():
        added = body.get("version_added")
        assert isinstance(added, str) and re.match(r"^\d+\.\d+\.\d+$", added), (
            "%s entry point %s: version_added %r is not a collection version (x.y.z, a string)" % (role, entry, added))
        assert version(added) <= collection, "%s entry point %s: version_added %s is after galaxy.yml's %s" % (
            role, entry, added, ".".join(map(str, collection)))
