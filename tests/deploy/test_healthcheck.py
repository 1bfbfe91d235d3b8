"""docker/healthcheck.py, the images' HEALTHCHECK, against a real local HTTP server."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from .helpers import DOCKER

SCRIPT = DOCKER / "healthcheck.py"


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status = 200 if self.path == "/metrics" else 500
        body = b"loopfree_worker_busy 0\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metrics_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=30, env=env
    )


def test_healthy_when_the_metrics_port_from_the_environment_answers(metrics_port):
    result = run(env={"LOOPFREE_METRICS_PORT": str(metrics_port)})
    assert result.returncode == 0, result.stderr


def test_healthy_when_an_explicit_url_answers(metrics_port):
    assert run(f"http://127.0.0.1:{metrics_port}/metrics").returncode == 0


def test_unhealthy_when_the_endpoint_answers_an_error(metrics_port):
    result = run(f"http://127.0.0.1:{metrics_port}/broken")
    assert result.returncode == 1
    assert "HTTP 500" in result.stderr


def test_unhealthy_when_nothing_listens():
    result = run(env={"LOOPFREE_METRICS_PORT": str(free_port())})
    assert result.returncode == 1
    assert "did not answer" in result.stderr


def test_its_default_port_is_the_workers_default_metrics_port():
    import re

    from core.settings import Settings

    text = (DOCKER / "healthcheck.py").read_text()
    [port] = re.findall(r"^DEFAULT_METRICS_PORT = (\d+)$", text, re.MULTILINE)
    assert int(port) == Settings.model_fields["metrics_port"].default
