# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE SSM endpoint in front of the strict EC2 endpoint (tests only; not AWS software).

Requests with ``X-Amz-Target: AmazonSSM.<Action>`` (the SSM JSON 1.1 protocol botocore speaks) are answered
here: SendCommand of ``AWSEC2-CreateVssSnapshot`` runs the FAKE VSS agent in a thread (the command is
``InProgress`` until it ends), GetCommandInvocation reports it (``InvocationDoesNotExist`` for an unknown
command). Every other request goes unchanged to the strict EC2 endpoint, so EC2 calls are logged there.
"""

import json
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer


class FakeSsmProxy:

    def __init__(self, ec2_url, agent):
        self.ec2_url = ec2_url.rstrip("/")
        self.agent = agent
        self.commands = {}
        self.sent = []
        self._server = None
        self._thread = None
        self.url = None

    def start(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target") or ""
                if target.startswith("AmazonSSM."):
                    status, answer = proxy.ssm(target.split(".", 1)[1], json.loads(body or b"{}"))
                    data = json.dumps(answer).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                headers = dict((k, v) for k, v in self.headers.items() if k.lower() not in ("content-length", "connection"))
                request = urllib.request.Request(proxy.ec2_url + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, data, ctype = response.status, response.read(), response.headers.get("Content-Type")
                except urllib.error.HTTPError as e:
                    status, data, ctype = e.code, e.read(), e.headers.get("Content-Type")
                self.send_response(status)
                self.send_header("Content-Type", ctype or "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ssm(self, action, body):
        if action == "SendCommand":
            if body.get("DocumentName") != "AWSEC2-CreateVssSnapshot" or len(body.get("InstanceIds") or []) != 1:
                return 400, {"__type": "InvalidDocument", "message": "FAKE SSM runs AWSEC2-CreateVssSnapshot on one instance"}
            cid = str(uuid.uuid4())
            iid = body["InstanceIds"][0]
            self.sent.append(dict(body, CommandId=cid))
            self.commands[cid] = {"InstanceId": iid, "Status": "InProgress", "StandardOutputContent": "",
                                  "StandardErrorContent": "", "ResponseCode": -1}

            def work():
                try:
                    status, out, err = self.agent.run(iid, body.get("Parameters"))
                except Exception as exc:  # the FAKE's own failure shows as a failed command
                    status, out, err = "Failed", "", "FAKE agent crashed: %r" % exc
                self.commands[cid].update(Status=status, StatusDetails=status, StandardOutputContent=out,
                                          StandardErrorContent=err, ResponseCode=0 if status == "Success" else 1)
            threading.Thread(target=work, daemon=True).start()
            return 200, {"Command": {"CommandId": cid, "DocumentName": body["DocumentName"], "InstanceIds": [iid],
                                     "Status": "Pending"}}
        if action == "GetCommandInvocation":
            cmd = self.commands.get(body.get("CommandId"))
            if cmd is None or cmd["InstanceId"] != body.get("InstanceId"):
                return 400, {"__type": "InvocationDoesNotExist", "message": "no such invocation"}
            return 200, dict(cmd, CommandId=body["CommandId"], DocumentName="AWSEC2-CreateVssSnapshot",
                             StatusDetails=cmd.get("StatusDetails", cmd["Status"]))
        return 400, {"__type": "InvalidAction", "message": "FAKE SSM does not implement %s" % action}
