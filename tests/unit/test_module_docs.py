# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every module's DOCUMENTATION, EXAMPLES and RETURN are YAML that parses (a stray ": " in a description breaks
ansible-doc and ansible-test's validate-modules, which run only in later tiers; caught here in a second)."""

import ast
import os

import pytest
import yaml

from tests.unit.test_roles import ROOT

MODULES = sorted(f for f in os.listdir(os.path.join(ROOT, "plugins", "modules")) if f.endswith(".py"))


@pytest.mark.parametrize("name", MODULES)
def test_module_docs_parse(name):
    with open(os.path.join(ROOT, "plugins", "modules", name)) as handle:
        tree = ast.parse(handle.read())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
                found[node.targets[0].id] = node.value.value
    assert sorted(found) == ["DOCUMENTATION", "EXAMPLES", "RETURN"], name
    for key, text in found.items():
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as exc:
            pytest.fail("%s %s is not valid YAML: %s" % (name, key, exc))
    assert yaml.safe_load(found["DOCUMENTATION"])["module"] == name[:-3]
