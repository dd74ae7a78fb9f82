# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WSGI layer in front of moto's app: the control API, fault injection, the call log.

* ``/_stillpoint/<op>`` (POST, JSON body, JSON answer): ``World.op_<op>(**body)``.
* EC2 requests (SigV4 credential scope ``.../ec2/...``): latency, then an injected error if one is
  queued for the action (the real EC2 XML error shape, so botocore parses the code), else moto
  under ``World.lock``; every request is logged with its action, parameters, HTTP status, error
  code and monotonic start/end times (CLOCK_MONOTONIC is system-wide, so a test process can
  compare them with its own ``time.monotonic()``); what the local attach backend did for the
  request (loop device, link, users of a busy device) goes in the entry as ``backend``.
* Requests carrying the server's internal token (its own calls while building the world) skip
  faults and the log.
* Anything else goes to moto untouched.
"""

from __future__ import annotations

import http
import io
import json
import re
import time
import traceback
import uuid
from urllib.parse import parse_qsl
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from . import _world

CONTROL_PREFIX = "/_stillpoint/"
_SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/([^/,]+)/([^/,]+)/aws4_request")
_CODE = re.compile(rb"<Code>(.*?)</Code>", re.S)
_MESSAGE = re.compile(rb"<Message>(.*?)</Message>", re.S)
_XMLNS = re.compile(rb'xmlns="([^"]+)"')


def _volumes_have_snapshot_id(body):
    """EC2's DescribeVolumes gives every volume a ``snapshotId`` (empty when it was not created from a
    snapshot); moto leaves the element out, and clients that index it (amazon.aws ec2_vol_info) crash."""
    m = _XMLNS.search(body)
    if m is None or b"<volumeSet>" not in body:
        return body
    ns = m.group(1).decode()
    ElementTree.register_namespace("", ns)
    root = ElementTree.fromstring(body)
    changed = False
    for item in root.findall("{%s}volumeSet/{%s}item" % (ns, ns)):
        if item.find("{%s}snapshotId" % ns) is None:
            ElementTree.SubElement(item, "{%s}snapshotId" % ns).text = ""
            changed = True
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True) if changed else body


def _status_line(status):
    try:
        return "%d %s" % (status, http.HTTPStatus(status).phrase)
    except ValueError:
        return "%d Error" % status


def ec2_error(code, message):
    """EC2's error document (query protocol)."""
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>%s</Code>'
            '<Message>%s</Message></Error></Errors><RequestID>%s</RequestID></Response>'
            % (escape(code), escape(message), uuid.uuid4()))
    return body.encode("utf-8")


class Middleware:
    def __init__(self, world, app):
        self.world = world
        self.app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL_PREFIX):
            return self._control(path[len(CONTROL_PREFIX):].strip("/"), environ, start_response)
        scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        if scope is None or scope.group(2) != "ec2" or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        body = self._read_body(environ)
        params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        internal = environ.get("HTTP_X_STILLPOINT_INTERNAL") == self.world.internal_token
        return self._ec2(environ, start_response, params, scope.group(1), internal)

    @staticmethod
    def _read_body(environ):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return body

    # ------------------------------------------------------------------ EC2

    def _ec2(self, environ, start_response, params, region, internal):
        world = self.world
        action = params.get("Action", "")
        entry = {
            "action": action,
            "region": region,
            "params": dict((k, v) for k, v in params.items() if k not in ("Action", "Version")),
            "t_start": time.monotonic(),
            "wall_start": time.time(),
            "injected": None,
            "dry_run": params.get("DryRun", "").lower() == "true",
        }
        # Injected latency and faults target real calls: a DryRun (a permission and parameter check,
        # which the collection makes before freezing) passes through untouched, and is logged as such.
        # EC2's token buckets (_buckets.py, off by default) see DryRun requests too when they consume tokens.
        fault = None if internal else world.buckets.take(environ, action, region, params, entry["dry_run"])
        if not internal and (not entry["dry_run"] or fault is not None):
            if not entry["dry_run"]:
                world.receive(action)
            if fault is None:
                delay = world.latency_for(action)
                if delay:
                    time.sleep(delay / 1000.0)
                    entry["latency_ms"] = delay
                fault = world.take_fault(action)
            if fault is not None:
                body = ec2_error(fault["code"], fault["message"])
                entry.update(status=fault["status"], error_code=fault["code"], error_message=fault["message"],
                             injected=fault["kind"], t_end=time.monotonic())
                world.record(entry)
                start_response(_status_line(fault["status"]), [
                    ("Content-Type", "text/xml;charset=UTF-8"), ("Content-Length", str(len(body))),
                    ("x-amzn-RequestId", str(uuid.uuid4()))])
                return [body]

        with world.lock:
            _world.CTX.action = action
            _world.CTX.internal = internal
            takes_pending = action in _world.SNAPSHOT_ACTIONS and not internal and not entry["dry_run"]
            _world.CTX.pending = world.take_pending() if takes_pending else 0.0
            _world.CTX.params = params
            _world.CTX.backend = None
            try:
                status, headers, body = self._run(environ)
            finally:
                backend = _world.CTX.backend
                _world.CTX.action = None
                _world.CTX.internal = False
                _world.CTX.pending = 0.0
                _world.CTX.params = None
                _world.CTX.backend = None
        if backend is not None:
            entry["backend"] = backend
        entry["status"] = int(status.split(None, 1)[0])
        if action == "DescribeVolumes" and entry["status"] == 200:
            body = _volumes_have_snapshot_id(body)
        entry["error_code"] = entry["error_message"] = None
        if entry["status"] >= 400:
            code = _CODE.search(body)
            message = _MESSAGE.search(body)
            entry["error_code"] = code.group(1).decode("utf-8", "replace") if code else None
            entry["error_message"] = message.group(1).decode("utf-8", "replace") if message else None
        entry["t_end"] = time.monotonic()
        if not internal:
            world.record(entry)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    def _run(self, environ):
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"] = status
            captured["headers"] = list(headers)
            return chunks.append

        chunks = []
        result = self.app(environ, capture)
        try:
            for chunk in result:
                chunks.append(chunk)
        finally:
            if hasattr(result, "close"):
                result.close()
        return captured["status"], captured["headers"], b"".join(chunks)

    # ------------------------------------------------------------------ control

    def _control(self, op, environ, start_response):
        try:
            raw = self._read_body(environ)
            args = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            if not isinstance(args, dict):
                raise _world.ControlError("the body must be a JSON object")
            handler = getattr(self.world, "op_" + op, None) if re.match(r"^[a-z_]+$", op) else None
            if handler is None:
                status, answer = 404, {"error": "no control operation %r" % op}
            else:
                status, answer = 200, handler(**args)
        except _world.ControlError as e:
            status, answer = 400, {"error": str(e)}
        except TypeError as e:
            status, answer = 400, {"error": "%s: %s" % (op, e)}
        except Exception as e:  # report, do not kill the server
            status, answer = 500, {"error": "%s: %s" % (type(e).__name__, e), "traceback": traceback.format_exc()}
        body = json.dumps(answer, default=str).encode("utf-8")
        start_response(_status_line(status), [("Content-Type", "application/json"),
                                              ("Content-Length", str(len(body)))])
        return [body]
