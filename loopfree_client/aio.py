"""The asynchronous twin of ``loopfree_client.client``: ``AsyncClient`` and ``AsyncSubmission``,
the same calls as coroutines (for asyncio or trio through anyio), the same retries.

    async with AsyncClient(url, token) as fleet:
        run = await fleet.submit(["a red fox in snow"])
        await run.wait()
        async for job, image in run.images():
            ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from loopfree_client import _common


class AsyncClient:
    """``Client``'s calls as coroutines."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = _common.DEFAULT_TIMEOUT_S,
        retries: int = _common.DEFAULT_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.retries = retries
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout_s, transport=transport
        )
        self._plain = httpx.AsyncClient(timeout=timeout_s, transport=transport)

    async def submit(
        self,
        jobs: Iterable[str | Mapping[str, Any]],
        *,
        model: str | None = None,
        seed: int | None = None,
        priority: str | None = None,
        key: str | None = None,
        **options: Any,
    ) -> AsyncSubmission:
        """As ``Client.submit``."""
        body = _common.submit_body(
            jobs, {"model": model, "seed": seed, "priority": priority, **options}
        )
        headers = {"Idempotency-Key": key or _common.new_key()}
        response = await self._call("POST", "/v1/submissions", json=body, headers=headers)
        return AsyncSubmission(self, response.json())

    async def submission(self, submission_id: str) -> AsyncSubmission:
        response = await self._call("GET", f"/v1/submissions/{submission_id}")
        return AsyncSubmission(self, response.json())

    async def job(self, job_id: str) -> dict[str, Any]:
        return (await self._call("GET", f"/v1/jobs/{job_id}")).json()

    async def image(self, job_id: str) -> bytes:
        response = await self._call("GET", f"/v1/jobs/{job_id}/image")
        if response.is_redirect:
            location = response.headers["location"]
            fetched = await self._retrying(lambda: self._plain.get(location))
            return fetched.content
        return response.content

    async def models(self) -> list[dict[str, Any]]:
        return (await self._call("GET", "/v1/models")).json()["models"]

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self._retrying(lambda: self._http.request(method, path, **kwargs))

    async def _retrying(self, attempt: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries),
            wait=_common.wait_for,
            retry=retry_if_exception_type(_common.TRANSIENT),
            reraise=True,
        )
        try:
            async for trial in retrying:
                with trial:
                    return _common.check(await attempt())
        except _common.Retry as spent:
            raise spent.error from None
        raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._plain.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncSubmission:
    """``Submission``'s calls as coroutines."""

    def __init__(self, client: AsyncClient, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data
        self.id: str = data["id"]

    async def status(self) -> dict[str, Any]:
        self.data = (await self.client._call("GET", f"/v1/submissions/{self.id}")).json()
        return self.data

    async def wait(self, *, poll_s: float = 1.0, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until no job is open; ``TimeoutError`` after ``timeout_s``."""
        with anyio.fail_after(timeout_s):
            while True:
                status = await self.status()
                if status["finished"]:
                    return status
                await anyio.sleep(poll_s)

    async def _page(self, after: int, status: list[str] | None, size: int) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": size, "after": after}
        if status:
            params["status"] = status
        response = await self.client._call("GET", f"/v1/submissions/{self.id}/jobs", params=params)
        return response.json()

    async def jobs(
        self, *, status: str | Iterable[str] | None = None, page_size: int = 500
    ) -> AsyncIterator[dict[str, Any]]:
        wanted = None if status is None else ([status] if isinstance(status, str) else list(status))
        after = -1
        while True:
            page = await self._page(after, wanted, page_size)
            for job in page["jobs"]:
                yield job
            if page["next_after"] is None:
                return
            after = page["next_after"]

    async def images(self) -> AsyncIterator[tuple[dict[str, Any], bytes]]:
        async for job in self.jobs(status="succeeded"):
            yield job, await self.client.image(job["id"])

    async def download(self, folder: str | Path) -> Any:
        """As ``Submission.download``: the same sync, run in a worker thread that asks this
        event loop for each page and image."""
        from status.download import sync_records

        def records() -> Iterator[dict[str, Any]]:
            after = -1
            while True:
                page = anyio.from_thread.run(self._page, after, None, 500)
                yield from page["jobs"]
                if page["next_after"] is None:
                    return
                after = page["next_after"]

        def fetch(record: dict[str, Any]) -> bytes:
            return anyio.from_thread.run(self.client.image, record["id"])

        return await anyio.to_thread.run_sync(sync_records, records(), fetch, Path(folder))

    async def cancel(self) -> dict[str, Any]:
        return (await self.client._call("DELETE", f"/v1/submissions/{self.id}")).json()
