# -*- coding: utf-8 -*-
"""The set_module_args / AnsibleExitJson / AnsibleFailJson pattern for module tests."""

import contextlib
import json

from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes


class AnsibleExitJson(Exception):
    """Raised in place of exit_json; ``.result`` holds its kwargs."""

    def __init__(self, kwargs):
        super().__init__(kwargs)
        self.result = kwargs


class AnsibleFailJson(Exception):
    """Raised in place of fail_json; ``.result`` holds its kwargs."""

    def __init__(self, kwargs):
        super().__init__(kwargs)
        self.result = kwargs


def _exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise AnsibleExitJson(kwargs)


def _fail_json(self, **kwargs):
    kwargs["failed"] = True
    raise AnsibleFailJson(kwargs)


@contextlib.contextmanager
def set_module_args(args):
    """Feed ``args`` to the next AnsibleModule (ansible-core 2.17 .. 2.19 compatible)."""
    args = dict(args)
    args.setdefault("_ansible_remote_tmp", "/tmp")
    args.setdefault("_ansible_keep_remote_files", False)
    serialized = to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    saved = {name: getattr(basic, name) for name in ("_ANSIBLE_ARGS", "_ANSIBLE_PROFILE", "_PARSED_MODULE_ARGS")
             if hasattr(basic, name)}
    basic._ANSIBLE_ARGS = serialized
    if "_ANSIBLE_PROFILE" in saved:  # ansible-core >= 2.19
        basic._ANSIBLE_PROFILE = "legacy"
    if "_PARSED_MODULE_ARGS" in saved:
        basic._PARSED_MODULE_ARGS = None
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(basic, name, value)


@contextlib.contextmanager
def patched_exits(monkeypatch):
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", _exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", _fail_json)
    yield


def run_module(monkeypatch, main, args, check_mode=False):
    """Run a module's ``main`` in-process; return its exit_json/fail_json result."""
    import pytest  # pylint: disable=import-outside-toplevel

    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True
    with set_module_args(args), patched_exits(monkeypatch):
        with pytest.raises((AnsibleExitJson, AnsibleFailJson)) as info:
            main()
    return info.value.result
