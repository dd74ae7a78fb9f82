# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""docs/architecture.md is generated from the code (docs/gen_architecture.py) and must stay current.

A new module, role, library file or playbook that is not in the page, or a page that no longer
matches the code, fails here with the command that regenerates it. The generator's layering check
(no action plugin imports a module, no module imports another module, no library file imports a
layer above it) is asserted here too.
"""

from __future__ import annotations

import importlib.util
import os
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "architecture.md")


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_architecture", os.path.join(ROOT, "docs", "gen_architecture.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _doc_text():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def test_doc_is_generated_from_the_current_code():
    problems = gen.check(ROOT)
    assert not problems, "docs/architecture.md does not match the code; regenerate it with `%s`:\n%s" % (
        gen.REGENERATE, "\n".join(problems))


def test_every_module_and_role_is_named_in_the_doc():
    text = _doc_text()
    modules = sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(ROOT, "plugins", "modules"))
                     if n.endswith(".py") and n != "__init__.py")
    roles = sorted(n for n in os.listdir(os.path.join(ROOT, "roles")) if os.path.isdir(os.path.join(ROOT, "roles", n)))
    assert modules and roles
    missing = ["module %s" % m for m in modules if "`%s`" % m not in text]
    missing += ["role %s" % r for r in roles if "`%s`" % r not in text]
    assert not missing, "missing from docs/architecture.md: %s; regenerate it with `%s`" % (
        ", ".join(missing), gen.REGENERATE)


def test_no_import_goes_against_the_layers():
    violations = gen.layering_violations(ROOT)
    assert not violations, "imports against the layers (see docs/architecture.md, Layers):\n" + "\n".join(violations)


# The checks themselves, on a small tree of their own: they must catch what they are meant to catch.

def _write(root, rel, text):
    path = os.path.join(str(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text).lstrip("\n"))


P = "ansible_collections.stillpoint.snapshots.plugins"


@pytest.fixture
def tiny(tmp_path):
    _write(tmp_path, "plugins/module_utils/_lib.py", '''
        """One concern.

        More text.
        """
        from %s.module_utils._base import X
        ''' % P)
    _write(tmp_path, "plugins/module_utils/_base.py", '"""The base."""\nX = 1\n')
    _write(tmp_path, "plugins/modules/alpha.py", '''
        DOCUMENTATION = r"""
        module: alpha
        short_description: Does alpha | things
        extends_documentation_fragment:
          - stillpoint.snapshots.attrs
        """
        from %s.module_utils import _lib as lib
        ''' % P)
    _write(tmp_path, "plugins/modules/beta.py", '''
        DOCUMENTATION = "short_description: Does beta"
        def main():
            from %s.modules.alpha import DOCUMENTATION
        ''' % P)
    _write(tmp_path, "plugins/action/alpha.py", '''
        """Controller side of alpha."""
        from %s.modules import alpha
        from ..module_utils._lib import X
        ''' % P)
    _write(tmp_path, "plugins/doc_fragments/attrs.py", '''
        class ModuleDocFragment:
            DOCUMENTATION = r"""
        attributes:
          check_mode: {description: x}
        """
        ''')
    _write(tmp_path, "roles/one/meta/argument_specs.yml", '''
        argument_specs:
          main:
            short_description: The first role
        ''')
    _write(tmp_path, "roles/one/tasks/main.yml", '''
        - name: Call alpha
          module_defaults:
            group/stillpoint.snapshots.aws: {region: x}
          block:
            - stillpoint.snapshots.alpha: {}
            - ansible.builtin.include_role:
                name: stillpoint.snapshots.two
        ''')
    _write(tmp_path, "playbooks/run.yml", '''
        - name: Run one
          hosts: all
          roles:
            - role: stillpoint.snapshots.one
        ''')
    return str(tmp_path)


def test_layering_check_catches_action_and_module_imports(tiny):
    violations = gen.layering_violations(tiny)
    assert violations == [
        "`plugins/action/alpha.py` imports `plugins/modules/alpha.py`: an action plugin imports a module "
        "(action plugins import only module_utils and plugin_utils)",
        "`plugins/modules/beta.py` imports `plugins/modules/alpha.py`: a module imports another module "
        "(shared code belongs in module_utils)",
    ]


def test_tables_come_from_the_tree(tiny):
    tree = gen.collect(tiny)
    assert tree["modules"]["alpha"]["short_description"] == "Does alpha | things"
    assert tree["modules"]["alpha"]["imports"] == [("module_utils", "_lib")]
    assert tree["modules"]["alpha"]["fragments"] == ["stillpoint.snapshots.attrs"]
    assert tree["action"]["alpha"]["imports"] == [("module_utils", "_lib"), ("modules", "alpha")]
    assert tree["module_utils"]["_lib"]["doc"] == "One concern."
    assert tree["module_utils"]["_lib"]["imports"] == [("module_utils", "_base")]
    assert tree["roles"]["one"]["entry_points"] == {"main": "The first role"}
    assert tree["roles"]["one"]["calls"] == ["alpha"]
    assert tree["roles"]["one"]["roles"] == ["stillpoint.snapshots.two"]
    assert tree["roles"]["one"]["defaults"] == ["group/stillpoint.snapshots.aws"]
    assert tree["playbooks"]["run.yml"]["roles"] == ["stillpoint.snapshots.one"]
    text = gen.render(tiny)
    assert text == gen.render(tiny, tree)
    assert "| `alpha` | Does alpha \\| things | yes |" in text
    assert "`stillpoint.snapshots.attrs`" in text


def test_check_names_what_is_missing_and_stale(tiny):
    assert gen.check(tiny) == ["docs/architecture.md does not exist: run %s" % gen.REGENERATE]
    assert gen.main(["--root", tiny]) == 0
    assert gen.check(tiny) == []
    assert gen.main(["--root", tiny, "--check"]) == 0
    text = gen.render(tiny).replace("`beta`", "`gamma`")
    problems = gen.check(tiny, text)
    assert problems[0] == "module `beta` is missing from docs/architecture.md"
    assert problems[-1].startswith("docs/architecture.md is stale (2 changed lines): run %s" % gen.REGENERATE)
    with open(os.path.join(tiny, "docs", "architecture.md"), "w", encoding="utf-8") as f:
        f.write(text)
    assert gen.main(["--root", tiny, "--check"]) == 1
    assert gen.main(["--root", tiny, "--layering"]) == 1
