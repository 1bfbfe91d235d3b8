"""The synchronous client: ``Client(url, token)`` and the ``Submission`` it hands back.

    from loopfree_client import Client

    with Client("http://127.0.0.1:8401", token="lf_...") as fleet:
        run = fleet.submit(["a red fox in snow", "a lighthouse at dusk"], seed=7)
        run.wait(progress=True)
        report = run.download("./foxes")       # the CLI's sync: 00000.png, ..., manifest.jsonl

It talks HTTP only (httpx), imports nothing of the server, and retries as ``_common`` says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from loopfree_client import _common
from loopfree_client.errors import ApiError

T = TypeVar("T")


class Client:
    """A connection to one ``loopfree api``, acting for the owner of ``token``."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = _common.DEFAULT_TIMEOUT_S,
        retries: int = _common.DEFAULT_RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.retries = retries
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout_s, transport=transport
        )
        # Presigned image URLs go to the store, never with the token.
        self._plain = httpx.Client(timeout=timeout_s, transport=transport)

    # -- submitting ---------------------------------------------------------------------------

    def submit(
        self,
        jobs: Iterable[str | Mapping[str, Any]],
        *,
        model: str | None = None,
        seed: int | None = None,
        priority: str | None = None,
        key: str | None = None,
        **options: Any,
    ) -> Submission:
        """Submit prompts (strings) or jobs (dicts with JSONL fields: prompt, seed, height, width,
        steps, num_images, model, priority, metadata, image_format, image_quality). ``options``:
        height, width, steps, num_images, metadata, format, quality, webhook_url, skip_invalid,
        source. ``key``: the idempotency key (a fresh one by default, so retries are safe; give
        your own to make a resubmit after a crash return the same submission)."""
        body = _common.submit_body(
            jobs, {"model": model, "seed": seed, "priority": priority, **options}
        )
        headers = {"Idempotency-Key": key or _common.new_key()}
        response = self._call("POST", "/v1/submissions", json=body, headers=headers)
        return Submission(self, response.json())

    def submit_file(
        self, path: str | Path, *, key: str | None = None, **options: Any
    ) -> Submission:
        """Submit a prompt file (.jsonl, .csv, .txt), streamed from disk; ``options`` as for
        ``submit`` (model, seed, priority, ...)."""
        path = Path(path)
        kind, params = _common.file_upload(path, options)
        headers = {"Idempotency-Key": key or _common.new_key(), "Content-Type": kind}

        def attempt() -> httpx.Response:
            with path.open("rb") as file:
                return self._http.post(
                    "/v1/submissions", content=file, params=params, headers=headers
                )

        return Submission(self, self._retrying(attempt).json())

    # -- reading ------------------------------------------------------------------------------

    def submission(self, submission_id: str) -> Submission:
        """A submission by id or unique prefix (404 ``NotFound`` if not this token's)."""
        return Submission(self, self._call("GET", f"/v1/submissions/{submission_id}").json())

    def submissions(self, *, owner: str | None = None, page_size: int = 25) -> Iterator[Submission]:
        """This token's submissions (an admin's: everyone's, or ``owner``'s), newest first."""
        params: dict[str, Any] = {"limit": page_size}
        if owner:
            params["owner"] = owner
        while True:
            page = self._call("GET", "/v1/submissions", params=params).json()
            for record in page["submissions"]:
                yield Submission(self, record)
            if not page["next_before"]:
                return
            params["before"] = page["next_before"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def image(self, job_id: str) -> bytes:
        """A job's image bytes (following the redirect to the store without the token)."""
        response = self._call("GET", f"/v1/jobs/{job_id}/image")
        if response.is_redirect:
            location = response.headers["location"]
            return self._retrying(lambda: _common.check(self._plain.get(location))).content
        return response.content

    def models(self) -> list[dict[str, Any]]:
        """Models with live workers or open jobs: workers, queued, running, images/s."""
        return self._call("GET", "/v1/models").json()["models"]

    # -- plumbing -----------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._retrying(lambda: _common.check(self._http.request(method, path, **kwargs)))

    def _retrying(self, attempt: Callable[[], T]) -> T:
        def checked() -> Any:
            result = attempt()
            return _common.check(result) if isinstance(result, httpx.Response) else result

        retrying = Retrying(
            stop=stop_after_attempt(self.retries),
            wait=_common.wait_for,
            retry=retry_if_exception_type(_common.TRANSIENT),
            reraise=True,
        )
        try:
            return retrying(checked)
        except _common.Retry as spent:
            raise spent.error from None

    def close(self) -> None:
        self._http.close()
        self._plain.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Submission:
    """One submission: ``data`` is where it stood when last read (``status()`` reads again)."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data
        self.id: str = data["id"]

    def __repr__(self) -> str:
        return f"<Submission {self.id[:8]} {self.data.get('counts')}>"

    @property
    def intake(self) -> dict[str, Any] | None:
        """What the submit did (created, jobs, skipped lines, warnings); None once re-read."""
        return self.data.get("intake")

    def status(self) -> dict[str, Any]:
        """Counts by stage, rate, ETA: what ``loopfree status ID --json`` prints."""
        self.data = self.client._call("GET", f"/v1/submissions/{self.id}").json()
        return self.data

    def wait(
        self, *, progress: bool = False, poll_s: float = 1.0, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Poll until no job is open; returns the final status. ``progress``: a progress bar
        (rich; in a notebook too). ``TimeoutError`` after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with _Progress(progress, self) as bar:
            while True:
                status = self.status()
                bar.update(status)
                if status["finished"]:
                    return status
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"submission {self.id} still has {status['open']} open jobs after "
                        f"{timeout_s} s"
                    )
                time.sleep(poll_s)

    def jobs(
        self, *, status: str | Iterable[str] | None = None, page_size: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Its job records in position order, a page at a time; only those in ``status``
        (queued, claimed, rendering, running, succeeded, failed, cancelled) if given."""
        params: dict[str, Any] = {"limit": page_size, "after": -1}
        if status is not None:
            params["status"] = [status] if isinstance(status, str) else list(status)
        while True:
            page = self.client._call("GET", f"/v1/submissions/{self.id}/jobs", params=params)
            body = page.json()
            yield from body["jobs"]
            if body["next_after"] is None:
                return
            params["after"] = body["next_after"]

    def images(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        """``(job, image bytes)`` of each succeeded job, in position order."""
        for job in self.jobs(status="succeeded"):
            yield job, self.client.image(job["id"])

    def download(self, folder: str | Path) -> Any:
        """Sync its images into ``folder`` as ``loopfree results ID --download`` does (the same
        code: ``00000.png``, ..., ``manifest.jsonl``; files whose sha256 already matches are
        left alone). Returns the ``SyncReport`` (downloaded, unchanged, not_downloaded)."""
        from status.download import sync_records

        return sync_records(
            self.jobs(), lambda record: self.client.image(record["id"]), Path(folder)
        )

    def cancel(self) -> dict[str, Any]:
        """Cancel what is still queued (``loopfree cancel``); returns what was cancelled."""
        return self.client._call("DELETE", f"/v1/submissions/{self.id}").json()


class _Progress:
    """A rich progress bar of jobs done, or nothing."""

    def __init__(self, show: bool, submission: Submission) -> None:
        self.show = show
        self.submission = submission
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._bar = Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn())  # fmt: skip
            self._bar.__enter__()
            total = self.submission.data.get("job_count")
            self._task = self._bar.add_task(f"submission {self.submission.id[:8]}", total=total)
        return self

    def update(self, status: dict[str, Any]) -> None:
        if self._bar is None:
            return
        counts = status["counts"]
        rate = status.get("images_per_s")
        said = f" {rate:.2f} img/s" if rate else ""
        self._bar.update(
            self._task,
            completed=status["done"],
            total=status["job_count"],
            description=f"{self.id_text} rendering={counts['rendering']} "
            f"failed={counts['failed']}{said}",
        )

    @property
    def id_text(self) -> str:
        return self.submission.id[:8]

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc_info)


__all__ = ["ApiError", "Client", "Submission"]
