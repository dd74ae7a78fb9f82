# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A role's public variables as AWX surveys and ``-e key=value`` send them, made into typed values.

Private to the collection. :func:`normalise` takes a role's argument spec (the ``options`` of one entry point of
``meta/argument_specs.yml``), the values the play has for them and the role's defaults, and returns every option
typed: text lists (``"a, b"``, ``"a\\nb"``, a JSON list), booleans and numbers as text, ``""`` and ``null`` as
unset (the role's default applies). Anything else raises :class:`InputError` naming each variable, the value it
got and the value expected; nothing is returned in part. The role's own type rules then apply unchanged
(ansible-core's ``ArgumentSpecValidator``, in :func:`validate`): choices, required options, sub-options.
"""

from __future__ import annotations

import json

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.parsing.convert_bool import BOOLEANS_FALSE, BOOLEANS_TRUE

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

UNSET = ("", None)
TEXT = (str, bytes)
EXPECTED = {
    "bool": "true or false (also yes/no, on/off, 1/0 as text)",
    "int": "a whole number (also as text, e.g. \"7\")",
    "float": "a number (also as text, e.g. \"2.5\")",
    "str": "text",
    "path": "a path",
    "raw": "any value",
    "dict": "a mapping: a dict, a JSON object, or key=value pairs separated by commas",
    "list": "a list: a YAML/JSON list, or text separated by commas or new lines (\"/data, /logs\")",
}


class InputError(StillpointError):
    """One or more role variables are not what the role accepts (``problems``: one line per variable)."""

    def __init__(self, role, problems):
        super().__init__("%s: invalid input, nothing was changed:\n- %s" % (role, "\n- ".join(problems)),
                         problems=problems)
        self.problems = problems


class _Bad(ValueError):
    pass


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _show(value):
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def to_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, TEXT):
        word = _text(value).strip().lower()
        if word in BOOLEANS_TRUE:
            return True
        if word in BOOLEANS_FALSE:
            return False
    raise _Bad()


def to_int(value):
    if isinstance(value, bool):
        raise _Bad()
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, TEXT):
        text = _text(value).strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise _Bad() from None
            if number.is_integer():
                return int(number)
    raise _Bad()


def to_float(value):
    if isinstance(value, bool):
        raise _Bad()
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, TEXT):
        try:
            return float(_text(value).strip())
        except ValueError:
            raise _Bad() from None
    raise _Bad()


def to_str(value):
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise _Bad()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, TEXT):
        return _text(value).strip()
    raise _Bad()


def _json(text, kind):
    try:
        value = json.loads(text)
    except ValueError:
        raise _Bad() from None
    if not isinstance(value, kind):
        raise _Bad()
    return value


def to_dict(value):
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, TEXT):
        text = _text(value).strip()
        if text.startswith("{"):
            return _json(text, dict)
        out = {}
        for pair in _split(text):
            key, sep, item = pair.partition("=")
            if not sep or not key.strip():
                raise _Bad()
            out[key.strip()] = item.strip()
        return out
    raise _Bad()


def _split(text):
    """``"a, b"``/``"a\\nb"`` -> ``["a", "b"]``: items stripped, empty ones dropped."""
    return [item.strip() for line in text.splitlines() for item in line.split(",") if item.strip()]


def to_list(value, elements):
    if isinstance(value, TEXT):
        text = _text(value).strip()
        value = _json(text, list) if text.startswith("[") else _split(text)
    elif isinstance(value, tuple):
        value = list(value)
    elif not isinstance(value, list):
        # one scalar where a list is expected: a list of one (what ansible-core does)
        if isinstance(value, dict):
            raise _Bad()
        value = [value]
    convert = CONVERTERS.get(elements or "raw")
    out = []
    for item in value:
        if convert is not None:
            if item in UNSET:
                continue
            item = convert(item)
        out.append(item)
    return out


CONVERTERS = {
    "bool": to_bool,
    "int": to_int,
    "float": to_float,
    "str": to_str,
    "path": to_str,
    "dict": to_dict,
    "raw": None,
}


def convert(value, spec):
    """One value by its spec; raises ``_Bad`` when it is not of the spec's kind."""
    kind = spec.get("type", "str")
    if kind == "list":
        return to_list(value, spec.get("elements"))
    converter = CONVERTERS.get(kind)
    if converter is None:
        return value
    return converter(value)


def expected(spec):
    kind = spec.get("type", "str")
    text = EXPECTED.get(kind, kind)
    if kind == "list" and spec.get("elements") not in (None, "raw", "str"):
        text += " of %s" % spec["elements"]
    if spec.get("choices"):
        text += ", one of %s" % ", ".join(str(c) for c in spec["choices"])
    return text


def normalise(role, options, values, defaults):
    """Every option of ``options`` typed, from ``values`` (what the play has) and ``defaults`` (the role's
    defaults/main.yml). An unset value (missing, ``""``, ``null``) takes the default; an unset value without
    a default stays ``None``. Raises :class:`InputError` listing every variable that cannot be typed."""
    out, problems = {}, []
    for name, spec in sorted(options.items()):
        spec = spec or {}
        value = values.get(name)
        kind = spec.get("type", "str")
        if isinstance(value, TEXT) and kind != "raw" and not _text(value).strip():
            value = None
        if value in UNSET and kind != "raw":
            value = defaults.get(name)
            if value in UNSET:
                # a default of "" stays "" (the roles test `x or omit`), no default stays None
                out[name] = "" if kind in ("str", "path") and value == "" else None
                continue
        try:
            out[name] = convert(value, spec)
        except _Bad:
            problems.append("%s: got %s, expected %s" % (name, _show(value), expected(spec)))
    if problems:
        raise InputError(role, problems)
    return out


def validate(role, options, typed):
    """ansible-core's own checks on the typed values (choices, required, sub-options); raises
    :class:`InputError` with its messages. Returns the validated values (sub-option defaults applied)."""
    present = dict((k, v) for k, v in typed.items() if v is not None)
    result = ArgumentSpecValidator(options).validate(present)
    if result.error_messages:
        raise InputError(role, result.error_messages)
    out = dict(typed)
    out.update(result.validated_parameters)
    return out


def check(role, options, values, defaults):
    """:func:`normalise` then :func:`validate`: the role's inputs as its tasks use them."""
    return validate(role, options, normalise(role, options, values, defaults))
