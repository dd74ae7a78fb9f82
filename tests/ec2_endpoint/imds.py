# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An IMDSv2 emulator on 127.0.0.1 for tests and the demo.

Behaves like the metadata service of an instance that requires IMDSv2 (HttpTokens=required):

* ``PUT /latest/api/token`` needs ``X-aws-ec2-metadata-token-ttl-seconds`` (1..21600), else 400;
  a request carrying ``X-Forwarded-For`` is refused with 403 (the real service does this so that
  a proxy on the instance cannot fetch tokens);
* every ``GET`` needs a valid, unexpired ``X-aws-ec2-metadata-token``, else 401 (so IMDSv1, a GET
  without a token, is refused too);
* paths: ``/latest/meta-data/`` (listing), ``instance-id``, ``instance-type``, ``ami-id``,
  ``placement/availability-zone``, ``placement/region``, and
  ``/latest/dynamic/instance-identity/document`` (JSON). Anything else: 404.

Point the collection at it with ``AWS_EC2_METADATA_SERVICE_ENDPOINT=<server.url>``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_TTL = 21600
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


def random_instance_id():
    return "i-" + secrets.token_hex(9)[:17]


class _Handler(BaseHTTPRequestHandler):
    server_version = "EC2ws"
    sys_version = ""

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def _send(self, status, body="", content_type="text/plain", headers=None):
        data = body.encode("utf-8")
        # recorded before answering, so a client that has its answer also finds the record
        self.server.imds._record(self.command, self.path, status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_PUT(self):
        imds = self.server.imds
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path != "/latest/api/token":
            return self._send(404, "Not Found")
        if self.headers.get("X-Forwarded-For"):
            return self._send(403, "Forbidden")
        ttl = self.headers.get(TTL_HEADER)
        try:
            ttl = int(ttl)
        except (TypeError, ValueError):
            return self._send(400, "Bad Request")
        if not 1 <= ttl <= MAX_TTL:
            return self._send(400, "Bad Request")
        return self._send(200, imds._issue_token(ttl), headers={TTL_HEADER: str(ttl)})

    def do_GET(self):
        imds = self.server.imds
        if not imds._token_valid(self.headers.get(TOKEN_HEADER)):
            return self._send(401, "Unauthorized")
        status, body, ctype = imds._lookup(self.path.split("?", 1)[0])
        return self._send(status, body, ctype)

    def _refuse(self):
        self._send(405, "Method Not Allowed")

    do_POST = do_DELETE = do_PATCH = _refuse


class ImdsServer:
    """Threaded IMDSv2 emulator. ``start()`` binds (port 0: any free port) and sets ``url``."""

    def __init__(self, instance_id=None, region="eu-west-1", az=None, host="127.0.0.1", port=0,
                 instance_type="m5.large", account_id="123456789012", image_id="ami-0123456789abcdef0"):
        self.host = host
        self.port = port
        self.url = None
        self.instance_type = instance_type
        self.account_id = account_id
        self.image_id = image_id
        self.requests = []  # (method, path, status), in arrival order
        self._lock = threading.Lock()
        self._tokens = {}
        self._httpd = None
        self._thread = None
        self.instance_id = instance_id or random_instance_id()
        self.region = region
        self._az = az
        self.pending_time = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    # identity -------------------------------------------------------------------------------

    @property
    def availability_zone(self):
        return self._az or self.region + "a"

    def set_identity(self, instance_id=None, region=None, az=None):
        """Change what the service reports; None leaves a field as it is (an AZ that was never
        set explicitly follows the region)."""
        with self._lock:
            if instance_id is not None:
                self.instance_id = instance_id
            if region is not None:
                self.region = region
            if az is not None:
                self._az = az

    def identity_document(self):
        return {
            "accountId": self.account_id,
            "architecture": "x86_64",
            "availabilityZone": self.availability_zone,
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": self.image_id,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "kernelId": None,
            "pendingTime": self.pending_time,
            "privateIp": "10.0.0.10",
            "ramdiskId": None,
            "region": self.region,
            "version": "2017-09-30",
        }

    # tokens ---------------------------------------------------------------------------------

    def _issue_token(self, ttl):
        token = secrets.token_urlsafe(40)
        with self._lock:
            self._tokens[token] = time.monotonic() + ttl
        return token

    def _token_valid(self, token):
        if not token:
            return False
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and time.monotonic() < expiry

    def expire_tokens(self):
        """Invalidate every token issued so far (as after a TTL or a service restart)."""
        with self._lock:
            self._tokens.clear()

    # paths ----------------------------------------------------------------------------------

    def _lookup(self, path):
        with self._lock:
            leaves = {
                "instance-id": self.instance_id,
                "instance-type": self.instance_type,
                "ami-id": self.image_id,
                "placement/availability-zone": self.availability_zone,
                "placement/region": self.region,
            }
            doc = self.identity_document()
        if path == "/latest/dynamic/instance-identity/document":
            return 200, json.dumps(doc, indent=2), "text/plain"
        prefix = "/latest/meta-data/"
        if not path.startswith(prefix):
            return 404, "Not Found", "text/plain"
        rel = path[len(prefix):]
        if rel in leaves:
            return 200, leaves[rel], "text/plain"
        # directory listings: children of rel, directories with a trailing slash
        base = rel.rstrip("/")
        children = []
        for key in sorted(leaves):
            if base and not key.startswith(base + "/"):
                continue
            head = key[len(base) + 1 if base else 0:].split("/", 1)
            entry = head[0] + ("/" if len(head) > 1 else "")
            if entry not in children:
                children.append(entry)
        if children and (rel == "" or rel.endswith("/") or rel == base):
            return 200, "\n".join(children), "text/plain"
        return 404, "Not Found", "text/plain"

    def _record(self, method, path, status):
        with self._lock:
            self.requests.append((method, path, status))

    # lifecycle ------------------------------------------------------------------------------

    def start(self):
        if self._httpd is not None:
            return self
        httpd = ThreadingHTTPServer((self.host, self.port), _Handler)
        httpd.daemon_threads = True
        httpd.imds = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self.url = "http://%s:%d" % (self.host, self.port)
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05),
                                        name="imds-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
