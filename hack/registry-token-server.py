#!/usr/bin/env python3
"""A token server for Debian's docker-registry (distribution 2.8) in the registry lab.

    registry-token-server.py DIR USER PASSWORD

Makes an RSA key and a self-signed certificate (DIR/token.crt, which the registry's
`auth.token.rootcertbundle` names), listens on 127.0.0.1 on a port from the OS, writes
that port to DIR/token.port, and answers GET /token?service=..&scope=repository:NAME:pull
with an RS256 JWT (x5c = the certificate) granting pull and push on NAME when the request
carries Basic USER:PASSWORD; anonymous requests get a token with no access (the registry
then answers insufficient_scope), wrong credentials get 401. Each token request is logged
to DIR/token.log (never the password). Needs python3 with `cryptography` (the .venv has it).
"""

import base64
import datetime
import json
import os
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

DIR, USER, PASSWORD = sys.argv[1], sys.argv[2], sys.argv[3]
ISSUER = "ecsd-test-issuer"

key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (
    x509.CertificateBuilder()
    .subject_name(name)
    .issuer_name(name)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(key, hashes.SHA256())
)
with open(os.path.join(DIR, "token.crt"), "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(service: str, subject: str, access: list) -> str:
    header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
    t = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": subject,
        "aud": service,
        "exp": t + 300,
        "nbf": t - 10,
        "iat": t,
        "jti": uuid.uuid4().hex,
        "access": access,
    }
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        with open(os.path.join(DIR, "token.log"), "a") as f:
            f.write("%s %s\n" % (self.command, self.path.split("?")[0]))

    def answer(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/token":
            self.answer(404, {"error": "not found"})
            return
        query = parse_qs(url.query)
        service = query.get("service", [""])[0]
        subject = ""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                user, password = "", None
            if user != USER or password != PASSWORD:
                self.answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "wrong user name or password"}]})
                return
            subject = user
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            if kind == "repository" and subject:
                access.append({"type": "repository", "name": repo, "actions": ["pull", "push"]})
        self.answer(200, {"token": token(service, subject, access), "expires_in": 300})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(os.path.join(DIR, "token.port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.rename(os.path.join(DIR, "token.port.tmp"), os.path.join(DIR, "token.port"))
server.serve_forever()
