"""The webhook sender: a thread per worker process that drains the outbox.

Deliveries are rows (``storage.webhooks``), written when a submission finishes. This thread, and
the few attempt threads it runs, are the only ones that talk to receivers: the threads that
sample, upload and record never wait on a webhook, so a receiver that is slow, down or trickling
bytes costs them nothing. Each attempt ends by its deadline (``notify.post``); a failure is
retried with backoff for ``LOOPFREE_WEBHOOK_RETRY_S``.

Delivery is at least once: a claim is a lease, so the delivery of a sender that died mid-attempt
(or of a worker that restarted) is sent by whichever sender claims it next. A receiver that must
act once dedupes by ``X-Loopfree-Delivery``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.webhooks import WebhookPolicy, redact_url
from notify.post import Outcome, body_of, post, signed_headers
from storage import webhooks as outbox
from storage.db import session_scope

if TYPE_CHECKING:
    from core.settings import Settings
    from storage.db import Engine

log = logging.getLogger(__name__)

PARALLEL_ATTEMPTS = 4
"""Attempts in flight per worker: a few receivers at their deadline do not hold up the rest."""
POLL_S = 5.0
"""How often the thread looks for due deliveries when nothing woke it (a cancel, another
worker's finish, a retry coming due)."""
LEASE_MARGIN_S = 30.0
"""A claim outlives its attempt's deadline by this much before another sender may take it."""

_warned_unsigned = False


@dataclass(frozen=True)
class WebhookConfig:
    """What the sender needs from ``Settings``; the defaults are the settings' defaults."""

    policy: WebhookPolicy = WebhookPolicy()
    secret: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    retry_window_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookConfig:
        return cls(
            policy=settings.webhook_policy,
            secret=(
                settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
            ),
            timeout_s=settings.webhook_timeout_s,
            retry_window_s=settings.webhook_retry_s,
        )


class WebhookSender:
    """Claims due deliveries, POSTs them a few at a time, records each outcome.

    ``wake`` after a finish (no waiting for the next poll); ``drain`` sends what is due now;
    ``close`` stops the thread (after draining for up to ``drain_s``). Pending deliveries stay
    in the outbox for the next sender.
    """

    def __init__(
        self,
        engine: Engine,
        config: WebhookConfig | None = None,
        *,
        parallel: int = PARALLEL_ATTEMPTS,
        poll_s: float = POLL_S,
        start: bool = True,
    ) -> None:
        self.engine = engine
        self.config = config or WebhookConfig()
        self.parallel = parallel
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._attempts = ThreadPoolExecutor(parallel, thread_name_prefix="loopfree-webhook")
        self._thread = threading.Thread(
            target=self._loop, name="loopfree-webhook-sender", daemon=True
        )
        if start:
            self._thread.start()

    def wake(self) -> None:
        """Look for due deliveries now (a submission just finished)."""
        self._wake.set()

    def send_due(self) -> int:
        """One round: claim up to ``parallel`` due deliveries, attempt them, record the outcomes.
        Returns how many were attempted."""
        lease_s = self.config.timeout_s + LEASE_MARGIN_S
        with session_scope(self.engine) as session:
            claims = outbox.claim_due(session, limit=self.parallel, lease_s=lease_s)
        for future in [self._attempts.submit(self._attempt, claim) for claim in claims]:
            future.result()
        return len(claims)

    def drain(self, timeout_s: float) -> bool:
        """Send rounds until nothing is due or ``timeout_s`` passed; True if nothing is due."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.send_due() == 0:
                return True
        return False

    def close(self, drain_s: float = 0.0) -> None:
        """Stop the thread, then send what is due for up to ``drain_s``. Safe to call twice."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        if drain_s > 0:
            try:
                self.drain(drain_s)
            except Exception as error:  # noqa: BLE001 - what is left stays in the outbox
                log.warning("could not send the due webhooks before stopping: %s", error)
        self._attempts.shutdown(wait=True)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                attempted = self.send_due()
                failures = 0
                if attempted:
                    continue
                with session_scope(self.engine) as session:
                    due_in = outbox.next_due_in_s(session)
                wait_s = self.poll_s if due_in is None else min(self.poll_s, due_in)
            except Exception as error:  # noqa: BLE001 - the thread must outlive a database blip
                failures += 1
                wait_s = min(self.poll_s * failures, 60.0)
                log.warning("webhook sender: %s (next try in %.0f s)", error, wait_s)
            self._wake.wait(wait_s)
            self._wake.clear()

    def _attempt(self, claim: outbox.ClaimedDelivery) -> Outcome:
        global _warned_unsigned
        if self.config.secret is None and not _warned_unsigned:
            # Said at the first unsigned POST, not at start: a worker whose submissions have no
            # webhook has nothing to warn about.
            _warned_unsigned = True
            log.warning(
                "LOOPFREE_WEBHOOK_SECRET is not set: webhooks go out unsigned, and receivers "
                "cannot tell them from forgeries"
            )
        body = body_of(claim.payload)
        headers = signed_headers(
            body, secret=self.config.secret, event=claim.event, delivery_id=claim.id
        )
        outcome = post(
            claim.url, body, headers, policy=self.config.policy, deadline_s=self.config.timeout_s
        )
        with session_scope(self.engine) as session:
            if outcome.sent:
                outbox.mark_sent(session, claim)
                status: str | None = outbox.SENT
            else:
                status = outbox.mark_failed(
                    session,
                    claim,
                    outcome.detail,
                    retry=outcome.retry,
                    retry_window_s=self.config.retry_window_s,
                )
        if outcome.sent:
            log.info("webhook %s sent (%s)", redact_url(claim.url), outcome.detail)
        else:
            log.warning(
                "webhook %s attempt %d failed (%s): %s",
                redact_url(claim.url), claim.attempt, outcome.detail,
                "will retry" if status == outbox.PENDING else "gave up",
            )  # fmt: skip
        return outcome
