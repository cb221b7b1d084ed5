#!/usr/bin/env python3
"""Docker Hub's token authentication in front of a Debian docker-registry, for the stand-ins.

Usage: stand-in-registry-auth.py BACKEND_PORT PRIVATE_REPOSITORY...
Env: STAND_IN_USERNAME, STAND_IN_PASSWORD: the Basic credentials a private repository needs.

Listens on 127.0.0.1 on a free port (printed on stdout once it listens). As Docker Hub does:
/v2/ without a bearer token answers 401 with `WWW-Authenticate: Bearer realm=...,service=...`;
/token?scope=repository:NAME:pull,push issues a token for NAME: for a public repository to
anyone (unlike Docker Hub, wrong credentials count as none), for a private one only with the
right Basic credentials; every /v2/NAME/... request needs a token for NAME. Authorized requests go on to the registry on BACKEND_PORT.
Started and stopped by scripts/stand-in-registry.
"""
import base64
import http.client
import http.server
import json
import os
import re
import secrets
import sys
import threading
import urllib.parse

SERVICE = "stand-in-registry"
REPOSITORY_PATH = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags)/")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "authorization"}


class Front(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 is short for a pull's burst of connections.
    request_queue_size = 128

    def __init__(self, backend_port, private, username, password):
        super().__init__(("127.0.0.1", 0), Handler)
        self.backend_port = backend_port
        self.private = set(private)
        self.credentials = f"{username}:{password}"
        self.tokens = {}  # token -> repositories it grants
        self.lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.handle_any()

    def do_HEAD(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def do_PUT(self):
        self.handle_any()

    def do_PATCH(self):
        self.handle_any()

    def do_DELETE(self):
        self.handle_any()

    def handle_any(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/token":
            return self.issue_token(urllib.parse.parse_qs(url.query))
        match = REPOSITORY_PATH.match(url.path)
        repository = match.group(1) if match else None
        granted = self.granted()
        if granted is None or (repository is not None and repository not in granted):
            return self.challenge(repository)
        self.forward()

    def granted(self):
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        with self.server.lock:
            return self.server.tokens.get(header[len("Bearer "):])

    def basic_credentials_match(self):
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[len("Basic "):]).decode()
        except ValueError:
            return False
        return secrets.compare_digest(given, self.server.credentials)

    def issue_token(self, query):
        self.drain_body()
        # Wrong credentials count as none: public repositories stay pullable whatever an
        # image's credentials are.
        authenticated = self.basic_credentials_match()
        granted = set()
        for scope in query.get("scope", []):
            parts = scope.split(":")
            if len(parts) == 3 and parts[0] == "repository":
                if parts[1] not in self.server.private or authenticated:
                    granted.add(parts[1])
        token = secrets.token_hex(16)
        with self.server.lock:
            self.server.tokens[token] = granted
        self.reply(200, {"token": token, "access_token": token, "expires_in": 3600})

    def challenge(self, repository):
        self.drain_body()
        host = self.headers.get("Host", "127.0.0.1:%d" % self.server.server_address[1])
        value = f'Bearer realm="http://{host}/token",service="{SERVICE}"'
        if repository is not None:
            value += f',scope="repository:{repository}:pull,push"'
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required",
                            "detail": None}]}
        self.reply(401, body, {"WWW-Authenticate": value})

    def reply(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def drain_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        backend = http.client.HTTPConnection("127.0.0.1", self.server.backend_port)
        try:
            # Header by header: clients send several Accept headers, which a dict would merge.
            backend.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    backend.putheader(name, value)
            if body is not None:
                backend.putheader("Content-Length", str(len(body)))
            backend.endheaders(body)
            response = backend.getresponse()
            self.send_response(response.status)
            data = response.read()
            for name, value in response.getheaders():
                # A HEAD's Content-Length is the size a GET would send: keep the backend's.
                if name.lower() in HOP_BY_HOP or (name.lower() == "content-length" and self.command != "HEAD"):
                    continue
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            backend.close()


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    front = Front(int(sys.argv[1]), sys.argv[2:], os.environ["STAND_IN_USERNAME"],
                  os.environ["STAND_IN_PASSWORD"])
    print(front.server_address[1], flush=True)
    front.serve_forever()


if __name__ == "__main__":
    main()
