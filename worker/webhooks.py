"""The finished-submission webhook: a JSON summary POSTed once, with retries and a timeout."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_ATTEMPTS = 5


def post_summary(
    url: str,
    summary: dict[str, Any],
    *,
    attempts: int = WEBHOOK_ATTEMPTS,
    timeout_s: float = WEBHOOK_TIMEOUT_S,
    backoff_s: float = 1.0,
) -> bool:
    """POST ``summary``; retries connection errors and 5xx/429 with exponential backoff.

    Returns True once the receiver answers 2xx. A 4xx other than 429 is final: the receiver
    understood and refused, and asking again would not change its mind.
    """
    import httpx

    for attempt in range(attempts):
        try:
            response = httpx.post(url, json=summary, timeout=timeout_s)
            if response.is_success:
                return True
            if response.status_code < 500 and response.status_code != 429:
                log.warning("webhook %s refused the summary: HTTP %d", url, response.status_code)
                return False
            reason = f"HTTP {response.status_code}"
        except httpx.HTTPError as error:
            reason = type(error).__name__
        log.info("webhook %s attempt %d failed (%s)", url, attempt + 1, reason)
        if attempt + 1 < attempts:
            time.sleep(backoff_s * 2**attempt)
    log.warning("webhook %s gave up after %d attempts", url, attempts)
    return False
