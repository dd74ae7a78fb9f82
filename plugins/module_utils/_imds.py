# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small IMDSv2 client: where am I (instance id, region, availability zone)?

Private to the collection. Standard library only (``urllib``), short timeouts, one attempt per
request (a rejected token is renewed once), never through an HTTP proxy. The endpoint is the
explicit option, else ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (botocore's own variable, so tests
and the demo can point it at the emulator on 127.0.0.1), else the link-local default.
"""

from __future__ import annotations

import json
import os
import time
from urllib.error import HTTPError, URLError
from urllib.request import ProxyHandler, Request, build_opener

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

DEFAULT_ENDPOINT = "http://169.254.169.254"
DEFAULT_ENDPOINT_IPV6 = "http://[fd00:ec2::254]"
ENV_ENDPOINT = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
ENV_ENDPOINT_MODE = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"
ENV_DISABLED = "AWS_EC2_METADATA_DISABLED"

TOKEN_PATH = "/latest/api/token"
IDENTITY_PATH = "/latest/dynamic/instance-identity/document"
TOKEN_TTL = 21600
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


def endpoint_from_env(explicit=None):
    """The IMDS endpoint: ``explicit``, else ``$AWS_EC2_METADATA_SERVICE_ENDPOINT``, else the
    default (IPv6 when ``$AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE`` is ``IPv6``). No trailing slash."""
    value = explicit or os.environ.get(ENV_ENDPOINT)
    if not value:
        if os.environ.get(ENV_ENDPOINT_MODE, "").strip().lower() == "ipv6":
            return DEFAULT_ENDPOINT_IPV6
        return DEFAULT_ENDPOINT
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise StillpointError(
            "Invalid instance metadata endpoint %r: it must be a URL such as %s." % (value, DEFAULT_ENDPOINT)
        )
    return value


class Imds:
    """IMDSv2: a session token from ``PUT /latest/api/token``, then GETs carrying it."""

    def __init__(self, endpoint=None, timeout=2.0, hint=None):
        self.endpoint = endpoint_from_env(endpoint)
        self.timeout = timeout
        self.hint = hint
        self._token = None
        self._token_expiry = 0.0
        # IMDS is link-local: never send it (or its token) through an HTTP proxy.
        self._opener = build_opener(ProxyHandler({}))

    def _hint(self):
        if self.hint:
            return self.hint
        return (
            "Pass instance_id explicitly, or set %s to a reachable instance metadata service."
            % ENV_ENDPOINT
        )

    def _disabled(self):
        return os.environ.get(ENV_DISABLED, "").strip().lower() == "true"

    def _request(self, method, path, headers):
        url = self.endpoint + path
        if self._disabled():
            raise StillpointError(
                "Instance metadata is disabled (%s=true); cannot %s %s. %s"
                % (ENV_DISABLED, method, url, self._hint()),
                endpoint=self.endpoint,
            )
        req = Request(url, method=method, headers=headers, data=b"" if method == "PUT" else None)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.read().decode("utf-8")
        except HTTPError as e:
            raise StillpointError(
                "IMDS at %s: HTTP %s %s for %s %s. %s"
                % (self.endpoint, e.code, e.reason, method, path, self._hint()),
                endpoint=self.endpoint, status=e.code,
            )
        except (URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise StillpointError(
                "IMDS at %s: not reachable (%s %s: %s). %s"
                % (self.endpoint, method, path, reason, self._hint()),
                endpoint=self.endpoint,
            )

    def token(self):
        """A fresh IMDSv2 session token (``PUT /latest/api/token``)."""
        value = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(TOKEN_TTL)}).strip()
        if not value:
            raise StillpointError(
                "IMDS at %s: empty session token. %s" % (self.endpoint, self._hint()),
                endpoint=self.endpoint,
            )
        self._token = value
        # Renew well before the service expires it.
        self._token_expiry = time.monotonic() + TOKEN_TTL - 60
        return value

    def _get_path(self, path):
        if self._token is None or time.monotonic() >= self._token_expiry:
            self.token()
        try:
            return self._request("GET", path, {TOKEN_HEADER: self._token})
        except StillpointError as e:
            if e.details.get("status") != 401:
                raise
        # The token was refused (expired, or the service restarted): renew it once.
        self.token()
        return self._request("GET", path, {TOKEN_HEADER: self._token})

    def get(self, path):
        """``GET /latest/meta-data/<path>`` with the session token; the body as text."""
        return self._get_path("/latest/meta-data/" + path.lstrip("/"))

    def instance_identity(self):
        """``{"instance_id", "region", "availability_zone"}`` from the instance identity
        document; StillpointError naming the endpoint and the remedy when that fails."""
        try:
            text = self._get_path(IDENTITY_PATH)
        except StillpointError as e:
            prefix = "IMDS at %s: " % self.endpoint
            reason = e.msg[len(prefix):] if e.msg.startswith(prefix) else e.msg
            raise StillpointError(
                "Could not find the instance id from IMDS at %s: %s" % (self.endpoint, reason),
                **e.details
            )
        try:
            doc = json.loads(text)
            out = dict(
                instance_id=doc["instanceId"],
                region=doc["region"],
                availability_zone=doc["availabilityZone"],
            )
        except (ValueError, KeyError, TypeError) as e:
            raise StillpointError(
                "Could not find the instance id from IMDS at %s: the instance identity document "
                "is not valid (%s: %s). %s" % (self.endpoint, type(e).__name__, e, self._hint()),
                endpoint=self.endpoint,
            )
        if not all(isinstance(v, str) and v for v in out.values()):
            raise StillpointError(
                "Could not find the instance id from IMDS at %s: the identity document lacks "
                "instanceId, region or availabilityZone. %s" % (self.endpoint, self._hint()),
                endpoint=self.endpoint,
            )
        return out


def check_instance(expected, endpoint=None, timeout=2.0):
    """Prove that this machine is instance ``expected`` from its own IMDSv2 identity document.

    Returns ``{"instance_id", "region", "availability_zone", "endpoint"}`` when it is. Raises
    StillpointError when it is another instance (the message names both, ``details["instance"]``
    carries what IMDS said) or when the metadata service cannot tell (the message names the
    endpoint; ``details["instance"]`` is None), so a caller can refuse before it changes anything.
    """
    expected = (expected or "").strip()
    if not expected.startswith("i-") or len(expected) < 3:
        raise StillpointError(
            "Invalid instance id to check this host against: %r (expected i-...)." % (expected,),
            instance=None, expected_instance_id=expected,
        )
    hint = "Point imds_endpoint (or %s) at this host's instance metadata service." % ENV_ENDPOINT
    try:
        imds = Imds(endpoint, timeout=timeout, hint=hint)
        identity = imds.instance_identity()
    except StillpointError as e:
        details = dict(e.details, instance=None, expected_instance_id=expected)
        raise StillpointError(
            "Could not prove that this host is instance %s: %s" % (expected, e.msg), **details
        )
    identity = dict(identity, endpoint=imds.endpoint)
    if identity["instance_id"] != expected:
        raise StillpointError(
            "This host is instance %s (instance metadata at %s), not %s." % (identity["instance_id"], imds.endpoint, expected),
            instance=identity, expected_instance_id=expected,
        )
    return identity
