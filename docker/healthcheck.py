#!/usr/bin/env python3
"""Container healthcheck: exit 0 when a metrics endpoint answers 200, else 1.

Installed in the images as ``loopfree-healthcheck``. The images carry no curl, and a worker that
serves ``/metrics`` is a worker whose process is alive and whose HTTP thread runs.

    loopfree-healthcheck                                   # http://127.0.0.1:$LOOPFREE_METRICS_PORT/metrics
    loopfree-healthcheck http://127.0.0.1:9500/metrics     # any URL, e.g. the exporter's

Standard library only: it must run in every image, with or without the project installed.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

# Shorter than the HEALTHCHECK --timeout (5 s), so a hung endpoint reports as unhealthy with a
# message instead of being killed by Docker without one.
TIMEOUT_S = 3.0

# The worker's metrics port when LOOPFREE_METRICS_PORT is unset (core.settings' default; the
# images set it explicitly too). In a container nothing else takes it, so the worker is there.
DEFAULT_METRICS_PORT = 9400


def default_url() -> str:
    """The worker's metrics URL on this container, from LOOPFREE_METRICS_PORT."""
    port = os.environ.get("LOOPFREE_METRICS_PORT") or str(DEFAULT_METRICS_PORT)
    return f"http://127.0.0.1:{port}/metrics"


def check(url: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """Return None when ``url`` answers 200, else a one-line reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status != 200:
                return f"{url} answered HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url} did not answer: {exc}"
    return None


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else default_url()
    reason = check(url)
    if reason is not None:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
