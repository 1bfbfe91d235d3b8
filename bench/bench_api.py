"""The HTTP API against the CLI, in one run, on real PostgreSQL, Redis and moto S3:

1. Bulk submit of an N-line JSONL file (default 100,000): ``loopfree submit FILE`` (a process)
   vs the Python client's ``submit_file`` to ``loopfree api`` (a process on loopback), the same
   file, alternately; jobs/s of each and their ratio. Both include validation, the insert
   (COPY) and the counters; the API adds the upload and its own process.
2. ``GET /v1/submissions/{id}`` latency (p50/p95 of 200 requests) while a worker renders.

    .venv/bin/python bench/bench_api.py [--lines 100000]

Leaves out: TLS, a network between client and API (loopback), a GPU (a tiny CPU model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import (  # noqa: E402
    PG_ADMIN_URL,
    REPO_ROOT,
    MotoServer,
    WorkerProcess,
    free_port,
    loopfree_env,
    new_bucket,
    run_cli,
    throwaway_database,
    wait_until,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = parser.parse_args()
    import os
    import tempfile

    from tests.harness import S3_TEST_ENV

    os.environ.update(S3_TEST_ENV)  # moto's static test credentials

    import httpx

    from loopfree_client import Client
    from worker.tiny import make_model

    folder = Path(tempfile.mkdtemp(prefix="bench-api-"))
    model = make_model(folder / "models" / "tiny", shape="tiny", seed=1)
    prompts = folder / "prompts.jsonl"
    with prompts.open("w") as out:
        for n in range(args.lines):
            out.write(json.dumps({"prompt": f"a watercolour fox, variation {n}", "seed": n}) + "\n")
    with MotoServer() as s3, throwaway_database(PG_ADMIN_URL, prefix="bench_api") as database:
        env = loopfree_env(
            home=folder / "home", database_url=database, broker_url=args.redis,
            storage_url=new_bucket(s3.url), s3_endpoint=s3.url, model=model,
            model_roots=json.dumps([str(model.parent)]), metrics_port=0, max_wait_ms=50,
        )  # fmt: skip
        token = run_cli(["tokens", "create", "--owner", "bench", "--admin"], env).stdout.strip()
        port = free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "loopfree.cli", "api", "--port", str(port)],
            cwd=REPO_ROOT, env={**__import__("os").environ, **env},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _up(url), timeout=60, what="the API")
            cli_s, api_s = [], []
            for _ in range(2):
                started = time.perf_counter()
                done = run_cli(["submit", str(prompts), "--new", "--owner", "bench"], env,
                               timeout=1800)  # fmt: skip
                assert done.returncode == 0, done.stderr
                cli_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                with Client(url, token, timeout_s=1800) as client:
                    run = client.submit_file(prompts)
                assert run.data["job_count"] == args.lines
                api_s.append(time.perf_counter() - started)
            cli, over_http = min(cli_s), min(api_s)
            print(f"bulk submit of {args.lines:,} lines: CLI {args.lines / cli:,.0f} jobs/s "
                  f"({cli:.1f} s), API {args.lines / over_http:,.0f} jobs/s ({over_http:.1f} s), "
                  f"API/CLI time {over_http / cli:.2f}x")  # fmt: skip
            with Client(url, token) as client:
                small = client.submit([f"a fox {n}" for n in range(2000)], seed=1)
            worker = WorkerProcess(env, folder / "worker.log")
            try:
                worker.wait_ready()
                latencies = []
                headers = {"Authorization": f"Bearer {token}"}
                with httpx.Client(base_url=url, headers=headers) as http:
                    for _ in range(200):
                        started = time.perf_counter()
                        assert http.get(f"/v1/submissions/{small.id}").status_code == 200
                        latencies.append((time.perf_counter() - started) * 1000)
                        time.sleep(0.02)
                running = http_status(url, headers, small.id)
            finally:
                worker.stop()
            latencies.sort()
            print(f"GET /v1/submissions/{{id}} while a worker renders ({running}): "
                  f"p50 {statistics.median(latencies):.1f} ms, "
                  f"p95 {latencies[int(len(latencies) * 0.95) - 1]:.1f} ms")  # fmt: skip
        finally:
            api.terminate()
            api.wait(30)


def _up(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def http_status(url: str, headers: dict[str, str], submission_id: str) -> str:
    import httpx

    counts = httpx.get(f"{url}/v1/submissions/{submission_id}", headers=headers).json()["counts"]
    return f"{counts['succeeded']} succeeded by the end"


if __name__ == "__main__":
    main()
