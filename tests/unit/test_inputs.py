# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugins/module_utils/_inputs.py: a role's variables as AWX surveys and ``-e key=value`` send them, typed; each
bad value named with what was expected; the real roles' specs and defaults pass through unchanged."""

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _inputs as inputs
from tests.unit.test_roles import ROLES, load

SPEC = {
    "r_wait": {"type": "bool"},
    "r_keep": {"type": "int"},
    "r_days": {"type": "float"},
    "r_name": {"type": "str"},
    "r_mode": {"type": "str", "choices": ["host", "controller"]},
    "r_paths": {"type": "list", "elements": "str"},
    "r_ids": {"type": "list", "elements": "int"},
    "r_tags": {"type": "dict"},
    "r_set": {"type": "str", "required": True},
}
DEFAULTS = {"r_wait": True, "r_keep": 7, "r_days": 0, "r_name": "default", "r_mode": "host", "r_paths": [],
            "r_ids": [], "r_tags": {}}

# (variable, as typed, as a survey / -e sends it, the typed value)
SAME = [
    ("r_wait", False, "false", False),
    ("r_wait", False, "no", False),
    ("r_wait", False, "0", False),
    ("r_wait", True, " True ", True),
    ("r_keep", 0, "0", 0),
    ("r_keep", 3, " 3 ", 3),
    ("r_keep", 3, "3.0", 3),
    ("r_days", 2.5, "2.5", 2.5),
    ("r_days", 1.0, "1", 1.0),
    ("r_name", "2024", 2024, "2024"),
    ("r_paths", ["/data", "/logs"], "/data,/logs", ["/data", "/logs"]),
    ("r_paths", ["/data", "/logs"], "/data, /logs", ["/data", "/logs"]),
    ("r_paths", ["/data", "/logs"], "/data\n/logs\n", ["/data", "/logs"]),
    ("r_paths", ["/data", "/logs"], '["/data", "/logs"]', ["/data", "/logs"]),
    ("r_paths", ["/data", "/logs"], [" /data", "/logs ", ""], ["/data", "/logs"]),
    ("r_paths", ["/data"], "/data", ["/data"]),
    ("r_ids", [1, 2], "1, 2", [1, 2]),
    ("r_tags", {"team": "db", "tier": "1"}, "team=db, tier=1", {"team": "db", "tier": "1"}),
    ("r_tags", {"team": "db"}, '{"team": "db"}', {"team": "db"}),
]

# unset: "" and null take the default, as leaving the variable out does
UNSET = [(name, value) for name in ("r_wait", "r_keep", "r_days", "r_name", "r_paths", "r_tags") for value in ("", None, "  ")]

BAD = [
    ("r_wait", "maybe", "r_wait: got \"maybe\", expected true or false"),
    ("r_wait", 2, "r_wait: got 2, expected true or false"),
    ("r_keep", "seven", "r_keep: got \"seven\", expected a whole number"),
    ("r_keep", "2.5", "r_keep: got \"2.5\", expected a whole number"),
    ("r_keep", True, "r_keep: got true, expected a whole number"),
    ("r_days", "soon", "r_days: got \"soon\", expected a number"),
    ("r_name", ["a"], "r_name: got [\"a\"], expected text"),
    ("r_paths", '["/data"', "r_paths: got \"[\\\"/data\\\"\", expected a list"),
    ("r_paths", {"a": 1}, "r_paths: got {\"a\": 1}, expected a list"),
    ("r_ids", "1, two", "r_ids: got \"1, two\", expected a list"),
    ("r_tags", "team", "r_tags: got \"team\", expected a mapping"),
    ("r_tags", "[1]", "r_tags: got \"[1]\", expected a mapping"),
]


def run(**values):
    values.setdefault("r_set", "bs-1")
    return inputs.check("r", SPEC, values, DEFAULTS)


@pytest.mark.parametrize("name,typed,survey,expected", SAME, ids=["%s=%r" % (s[0], s[2]) for s in SAME])
def test_survey_text_and_typed_values_give_the_same_inputs(name, typed, survey, expected):
    assert run(**{name: typed})[name] == expected
    assert run(**{name: survey})[name] == expected
    assert run(**{name: typed}) == run(**{name: survey})


@pytest.mark.parametrize("name,value", UNSET, ids=["%s=%r" % u for u in UNSET])
def test_empty_and_null_mean_unset(name, value):
    assert run(**{name: value}) == run()
    assert run()[name] == DEFAULTS[name]


@pytest.mark.parametrize("name,value,message", BAD, ids=["%s=%r" % b[:2] for b in BAD])
def test_a_bad_value_is_named_with_what_was_expected(name, value, message):
    with pytest.raises(inputs.InputError) as info:
        run(**{name: value})
    assert message in info.value.msg, info.value.msg
    assert "nothing was changed" in info.value.msg


def test_every_bad_variable_is_reported_at_once():
    with pytest.raises(inputs.InputError) as info:
        run(r_wait="maybe", r_keep="x", r_tags="oops")
    assert [p.split(":")[0] for p in info.value.problems] == ["r_keep", "r_tags", "r_wait"]


def test_choices_and_required_are_ansible_cores_checks_on_the_typed_values():
    with pytest.raises(inputs.InputError) as info:
        run(r_mode=" sideways ")
    assert "r_mode" in info.value.msg and "host, controller" in info.value.msg
    assert run(r_mode=" controller ")["r_mode"] == "controller"
    with pytest.raises(inputs.InputError) as info:
        inputs.check("r", SPEC, {"r_set": None}, DEFAULTS)
    assert "r_set" in info.value.msg
    with pytest.raises(inputs.InputError):
        inputs.check("r", SPEC, {"r_set": ""}, DEFAULTS)


def test_an_unset_variable_without_a_default_stays_none():
    spec = {"r_opt": {"type": "int"}, "r_text": {"type": "str"}}
    assert inputs.check("r", spec, {"r_opt": "", "r_text": None}, {}) == {"r_opt": None, "r_text": None}


@pytest.mark.parametrize("role", ROLES)
def test_each_roles_own_defaults_pass_unchanged(role):
    """The shipped defaults are already typed: running a role without any variable changes none of them."""
    specs = load("roles", role, "meta", "argument_specs.yml")["argument_specs"]
    defaults = load("roles", role, "defaults", "main.yml") or {}
    for entry, body in specs.items():
        options = body.get("options") or {}
        values = dict((name, "x") for name, spec in options.items() if spec.get("required") and spec.get("type") == "str")
        values.update((name, {}) for name, spec in options.items() if spec.get("required") and spec.get("type") == "dict"
                      and not spec.get("options"))
        if any(spec.get("required") and name not in values for name, spec in options.items()):
            continue  # required sub-options: covered by the integration tests
        typed = inputs.check(role, options, values, defaults)
        for name, value in defaults.items():
            if name in options and "{{" not in str(value):
                assert typed[name] == value, "%s: default %s=%r came out as %r" % (role, name, value, typed[name])
