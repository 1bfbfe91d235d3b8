"""A loopback HTTP front before a real S3 endpoint (moto) that fails the PUTs it is told to and
records what every PUT carried: fault injection for the upload transports."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def s3_error(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
    ).encode()


class FaultFront:
    """Loopback HTTP server in front of ``upstream``: the first PUTs get the scripted replies
    (status, body), every other request is forwarded. ``puts`` counts the PUTs it received,
    ``put_headers`` keeps their headers."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.script: list[tuple[int, bytes]] = []
        self.puts = 0
        self.put_headers: list[dict[str, str]] = []  # lower-case names, one dict per PUT
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with front.lock:
                    front.puts += 1
                    front.put_headers.append({k.lower(): v for k, v in self.headers.items()})
                    scripted = front.script.pop(0) if front.script else None
                if scripted is None:
                    self.forward(body)
                    return
                status, reply = scripted
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_GET(self) -> None:  # noqa: N802
                self.forward(b"")

            def do_HEAD(self) -> None:  # noqa: N802
                self.forward(b"")

            def forward(self, body: bytes) -> None:
                connection = http.client.HTTPConnection(
                    front.upstream.hostname, front.upstream.port, timeout=10
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                connection.request(self.command, self.path, body=body or None, headers=headers)
                reply = connection.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for name, value in reply.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
