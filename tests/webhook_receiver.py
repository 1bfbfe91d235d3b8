"""A real webhook receiver on loopback for tests and benchmarks: answers with given statuses, or
trickles its answer one byte at a time, and records every request it got."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """What the server does: ``statuses`` in turn (the last one repeats), or, with
    ``trickle_s``, an answer sent one byte every ``trickle_s`` seconds."""

    statuses: list[int] = field(default_factory=lambda: [204])
    trickle_s: float | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/done?token=s3cret"

    def count(self) -> int:
        with self.lock:
            return len(self.received)


@contextmanager
def webhook_receiver(
    statuses: list[int] | None = None, *, trickle_s: float | None = None
) -> Iterator[Receiver]:
    receiver = Receiver(statuses=list(statuses or [204]), trickle_s=trickle_s)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.received.append(Received(self.path, dict(self.headers), body))
                status = (
                    receiver.statuses.pop(0)
                    if len(receiver.statuses) > 1
                    else (receiver.statuses[0])
                )
            if receiver.trickle_s is None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + b"X-Slow: " + b"." * 10_000
            try:
                for i in range(len(answer)):
                    self.wfile.write(answer[i : i + 1])
                    self.wfile.flush()
                    if receiver.stop.wait(receiver.trickle_s):
                        return
            except OSError:  # the client hung up: what a deadline does
                return

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.stop.set()
        server.shutdown()
        server.server_close()
