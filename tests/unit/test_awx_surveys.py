# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX resources as code (awx/job_templates.yml, awx/surveys/*.yml, applied by awx/setup.yml), read from
their files against what the playbooks accept:

- every job template's playbook exists, and every entry playbook under playbooks/ (demo/ aside) has a job
  template; every survey file is used; the workflow's nodes name job templates and link to nodes that exist;
- every survey question is a variable of its playbook: the playbook's host variable (``hosts: "{{ x ... }}"``),
  a variable of a role the playbook runs (``roles:``, ``include_role``/``import_role``; its
  ``meta/argument_specs.yml``), or, for a playbook without roles, a variable fed to an option of a
  stillpoint.snapshots module of its tasks (the module's ``DOCUMENTATION``);
- the question's type is the one that variable's type maps to (str/path -> text, or multiplechoice when the
  spec has choices; list -> text or textarea, comma-separated; bool -> multiplechoice "true"/"false";
  int -> integer; float -> float; dict -> textarea, JSON); ``required`` and the choices are the spec's; the
  default is the role's defaults/main.yml value (for a playbook without roles, its play ``vars:``, else blank)
  written as survey text;
- the host variable is asked, as required, and so is every variable the role's spec requires (neither has a
  default); a workflow survey question is a variable of one of its nodes' playbooks, checked the same way;
- every variable a job template's playbook accepts is either asked or named in its survey file's ``# Not asked:``
  comment (with why), so a role input added to the spec is never silently missing from AWX."""

import ast
import json
import os
import re

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AWX = os.path.join(ROOT, "awx")
COLLECTION = "stillpoint.snapshots."
TASK_LISTS = ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always")
# Question types AWX knows (awx/main/models/mixins.py SurveyJobTemplateMixin).
AWX_TYPES = ("text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect")
ROLE_TYPE_TO_SURVEY = {"str": ("text",), "path": ("text",), "raw": ("text",), "list": ("text", "textarea"),
                       "bool": ("multiplechoice",), "int": ("integer",), "float": ("float",), "dict": ("textarea",)}


def load(*parts):
    with open(os.path.join(ROOT, *parts)) as handle:
        return yaml.safe_load(handle)


DEFINITIONS = load("awx", "job_templates.yml")
JOB_TEMPLATES = DEFINITIONS["stillpoint_awx_job_templates"]
WORKFLOWS = DEFINITIONS["stillpoint_awx_workflows"]


def entry_playbooks():
    return sorted("playbooks/" + f for f in os.listdir(os.path.join(ROOT, "playbooks"))
                  if f.endswith((".yml", ".yaml")) and os.path.isfile(os.path.join(ROOT, "playbooks", f)))


def survey(name):
    return load("awx", "surveys", name + ".yml")


def walk_tasks(tasks):
    for task in tasks or []:
        yield task
        for key in TASK_LISTS:
            if isinstance(task.get(key), list):
                yield from walk_tasks(task[key])


def module_options(module):
    """The options of a module of this collection, from its DOCUMENTATION."""
    with open(os.path.join(ROOT, "plugins", "modules", module + ".py")) as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DOCUMENTATION" for t in node.targets):
            return yaml.safe_load(node.value.value)["options"]
    raise AssertionError("no DOCUMENTATION in %s" % module)


def variables(playbook):
    """{variable: dict(type, required, choices, default, has_default, origin)} of what ``playbook`` accepts."""
    out = {}
    for play in load(playbook):
        host = re.match(r"^\{\{\s*(\w+)", str(play.get("hosts", "")))
        if host:
            out[host.group(1)] = dict(type="str", required=True, choices=None, default=None, has_default=False,
                                      origin="the host variable of %s" % playbook)
        roles = [r["role"] if isinstance(r, dict) else r for r in play.get("roles", [])]
        tasks = [t for group in (play.get(k) or [] for k in ("pre_tasks", "tasks", "post_tasks")) for t in walk_tasks(group)]
        for task in tasks:
            for key in ("ansible.builtin.include_role", "ansible.builtin.import_role", "include_role", "import_role"):
                if isinstance(task.get(key), dict):
                    roles.append(task[key]["name"])
        for role in roles:
            role = role[len(COLLECTION):] if role.startswith(COLLECTION) else role
            spec = load("roles", role, "meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
            defaults = load("roles", role, "defaults", "main.yml") or {}
            for name, option in spec.items():
                out[name] = dict(type=option.get("type", "str"), required=bool(option.get("required")),
                                 choices=option.get("choices"), default=defaults.get(name),
                                 has_default=name in defaults, origin="role %s" % role)
        play_vars = play.get("vars") or {}
        # normalised copies (set_fact of prune.yml): a module option fed with __x is fed by the variables of x's expression
        through = {}
        sub = {}  # a variable written as a dict entry ('mode': prune_lock_mode) is typed by that sub-option
        for task in tasks:
            for fact, expression in (task.get("ansible.builtin.set_fact") or {}).items():
                through[fact] = re.findall(r"\b([a-z]\w*)\b", str(expression))
                sub.update((var, key) for key, var in re.findall(r"'(\w+)':\s*([a-z]\w*)", str(expression)))
        for task in tasks:
            modules = [k for k in task if k.startswith(COLLECTION)]
            if not modules:
                continue
            options = module_options(modules[0][len(COLLECTION):])
            for option, value in (task[modules[0]] or {}).items():
                names = re.findall(r"\{\{\s*(\w+)", str(value))
                names += [n for fact in names for n in through.get(fact, ()) if n in play_vars]
                for name in names:
                    if name.startswith("__") or name in out:
                        continue
                    spec = options[option]
                    subs = spec.get("suboptions") or {}
                    if sub.get(name) in subs:
                        spec = dict(subs[sub[name]], required=False)  # the whole dict is optional
                    out[name] = dict(type=spec.get("type", "str"), required=bool(spec.get("required")),
                                     choices=spec.get("choices"), default=play_vars.get(name),
                                     has_default=True, origin="option %s of %s" % (option, modules[0]))
    return out


def survey_text(value, kind):
    """A defaults/main.yml value as a survey default."""
    if value is None:
        return ""
    if kind == "bool":
        return "true" if value else "false"
    if kind == "list":
        return ", ".join(str(v) for v in value)
    if kind == "dict":
        return json.dumps(value)
    return value if kind in ("int", "float") else str(value)


def same_default(question, expected, kind):
    got = question.get("default", "")
    if kind in ("int", "float"):
        return got != "" and float(got) == float(expected)
    if kind == "dict":
        return got != "" and json.loads(got) == json.loads(expected)
    if kind == "list":
        return [s.strip() for s in str(got).split(",") if s.strip()] == [s.strip() for s in expected.split(",") if s.strip()]
    return str(got) == expected


NO_BLANK = ("bool", "int", "float", "dict")


def check_question(question, accepted, where):
    name = question["variable"]
    assert name in accepted, "%s: %s is no variable of %s" % (where, name, sorted(accepted))
    var = accepted[name]
    kind, qtype = var["type"], question["type"]
    problems = []
    allowed = ("multiplechoice",) if kind in ("str", "path") and var["choices"] else ROLE_TYPE_TO_SURVEY[kind]
    if qtype not in allowed:
        problems.append("type %s, %s (%s) asks for %s" % (qtype, kind, var["origin"], " or ".join(allowed)))
    # a role variable ansible-core types before the role's first task (bool, int, float, dict) cannot take "" (a
    # blank optional field): its question is required and pre-filled with the role's default, so AWX never sends ""
    untypable_blank = var["origin"].startswith("role ") and kind in NO_BLANK
    if untypable_blank and not (question.get("required")
                                and (var["required"] or question.get("default") not in (None, ""))):
        problems.append("a %s of %s must be asked as required with its default filled in (\"\" is no %s for "
                        "ansible-core's argument check)" % (kind, var["origin"], kind))
    elif not untypable_blank and bool(question.get("required")) != var["required"]:
        problems.append("required %s, %s says %s" % (question.get("required"), var["origin"], var["required"]))
    if qtype == "multiplechoice":
        want = ["true", "false"] if kind == "bool" else [str(c) for c in var["choices"] or []]
        if sorted(question.get("choices") or []) != sorted(want):
            problems.append("choices %s, expected %s" % (question.get("choices"), want))
        if question.get("default") not in (None, "") and question["default"] not in want:
            problems.append("default %r is not among the choices" % question["default"])
    if var["has_default"]:
        expected = survey_text(var["default"], kind)
        if not same_default(question, expected, kind):
            problems.append("default %r, %s has %r" % (question.get("default"), var["origin"], expected))
    elif question.get("default") not in (None, ""):
        problems.append("default %r for a variable that has none" % question["default"])
    assert not problems, "%s: %s: %s" % (where, name, "; ".join(problems))


def check_shape(spec, where):
    names = [q["variable"] for q in spec["spec"]]
    assert len(names) == len(set(names)), "%s: a variable asked twice: %s" % (where, names)
    for q in spec["spec"]:
        assert q.get("question_name") and q["type"] in AWX_TYPES, "%s: %s" % (where, q)
        if "min" in q and "max" in q:
            assert q["min"] <= q["max"], "%s: %s min > max" % (where, q["variable"])
        if q["type"] in ("text", "textarea") and q.get("required"):
            assert q.get("min", 0) >= 1, "%s: %s is required but may be blank (min 0)" % (where, q["variable"])


def test_every_job_template_playbook_exists():
    missing = [jt["playbook"] for jt in JOB_TEMPLATES if not os.path.isfile(os.path.join(ROOT, jt["playbook"]))]
    assert not missing


def test_every_entry_playbook_has_a_job_template():
    templated = set(jt["playbook"] for jt in JOB_TEMPLATES)
    assert entry_playbooks() and not set(entry_playbooks()) - templated, set(entry_playbooks()) - templated
    assert len(templated) == len(JOB_TEMPLATES), "two job templates for one playbook"


def test_every_survey_file_is_used():
    used = set(jt["survey"] for jt in JOB_TEMPLATES) | set(w["survey"] for w in WORKFLOWS)
    files = set(os.path.splitext(f)[0] for f in os.listdir(os.path.join(AWX, "surveys")))
    assert files == used, (files - used, used - files)


@pytest.mark.parametrize("jt", JOB_TEMPLATES, ids=[jt["survey"] for jt in JOB_TEMPLATES])
def test_job_template_survey(jt):
    spec = survey(jt["survey"])
    where = "awx/surveys/%s.yml" % jt["survey"]
    check_shape(spec, where)
    accepted = variables(jt["playbook"])
    for question in spec["spec"]:
        check_question(question, accepted, where)
    asked = set(q["variable"] for q in spec["spec"])
    needed = sorted(n for n, v in accepted.items() if v["required"])
    assert not set(needed) - asked, "%s: required without a default but not asked: %s" % (where, set(needed) - asked)


def not_asked(name):
    """The variables (``x_y``) and prefixes (``x_y_*``) a survey file's header comment names after ``Not asked:``
    (the inputs left to the inventory or the job template's extra variables, with why)."""
    with open(os.path.join(AWX, "surveys", name + ".yml")) as handle:
        header = "\n".join(line for line in handle.read().splitlines() if line.startswith("#"))
    m = re.search(r"Not asked:(.*)", header, re.S)
    words = re.findall(r"\b([a-z][a-z0-9]*_[a-z0-9_]*\*?)", m.group(1)) if m else []
    return set(w for w in words if not w.endswith("*")), tuple(w[:-1] for w in words if w.endswith("*"))


@pytest.mark.parametrize("jt", JOB_TEMPLATES, ids=[jt["survey"] for jt in JOB_TEMPLATES])
def test_job_template_survey_covers_its_playbook(jt):
    accepted = variables(jt["playbook"])
    asked = set(q["variable"] for q in survey(jt["survey"])["spec"])
    names, prefixes = not_asked(jt["survey"])
    where = "awx/surveys/%s.yml" % jt["survey"]
    both = sorted(n for n in asked if n in names or n.startswith(prefixes or ("\0",)))
    assert not both, "%s: asked and also named under 'Not asked': %s" % (where, both)
    missing = sorted(n for n in set(accepted) - asked - names if not n.startswith(prefixes or ("\0",)))
    assert missing == [], "%s: inputs of %s neither asked nor named under 'Not asked' (ask them, or say why not): %s" % (
        where, jt["playbook"], missing)


def test_drill_survey_asks_the_application_check():
    """The drill's application inputs (the private server on the copy) are asked, typed as the spec says."""
    questions = dict((q["variable"], q) for q in survey("drill")["spec"])
    assert questions["restore_drill_application"]["type"] == "multiplechoice"
    assert sorted(questions["restore_drill_application"]["choices"]) == ["auto", "skip"]
    for name, default in (("restore_drill_application_recovery_timeout", 600),
                          ("restore_drill_application_check_timeout", 1800)):
        assert (questions[name]["type"], questions[name]["required"], questions[name]["default"]) == (
            "float", True, default), questions[name]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w["survey"] for w in WORKFLOWS])
def test_workflow(workflow):
    by_name = dict((jt["name"], jt) for jt in JOB_TEMPLATES)
    ids = [n["identifier"] for n in workflow["nodes"]]
    assert len(ids) == len(set(ids))
    for node in workflow["nodes"]:
        assert node["job_template"] in by_name, node
        assert node.get("success", ids[0]) in ids, node
    accepted = {}
    for node in workflow["nodes"]:
        accepted.update(variables(by_name[node["job_template"]]["playbook"]))
    where = "awx/surveys/%s.yml" % workflow["survey"]
    spec = survey(workflow["survey"])
    check_shape(spec, where)
    for question in spec["spec"]:
        check_question(question, accepted, where)
    # the nodes' required variables without a survey default of their own come from the workflow's survey
    for node in workflow["nodes"]:
        jt = by_name[node["job_template"]]
        blank_required = [q["variable"] for q in survey(jt["survey"])["spec"] if q.get("required") and q.get("default") in (None, "")]
        missing = set(blank_required) - set(q["variable"] for q in spec["spec"])
        assert not missing, "%s: node %s needs %s" % (where, node["identifier"], missing)


def test_backup_workflow_order():
    """Backup first, then the catalog report, then retention (issue 14)."""
    by_name = dict((jt["name"], jt["playbook"]) for jt in JOB_TEMPLATES)
    for workflow in WORKFLOWS:
        nodes = dict((n["identifier"], n) for n in workflow["nodes"])
        order, node = [], workflow["nodes"][0]
        while node:
            order.append(by_name[node["job_template"]])
            node = nodes.get(node.get("success"))
        assert order == ["playbooks/backup.yml", "playbooks/catalog.yml", "playbooks/prune.yml"], order
