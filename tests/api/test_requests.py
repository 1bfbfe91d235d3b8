"""What the API does with requests, good and bad, on a real server and PostgreSQL: malformed
bodies are refused with problem documents and write nothing, the idempotency key means what
``--key`` means, ids are found by prefix, and the OpenAPI document it serves is valid."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.api.conftest import Fleet

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def token(fleet: Fleet) -> str:
    return fleet.token("requests-owner")


def _post(fleet: Fleet, token: str, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.post(f"{fleet.url}/v1/submissions", headers=headers, timeout=120, **kwargs)


def _written(fleet: Fleet) -> tuple[int, int]:
    return fleet.count("SELECT count(*) FROM submissions"), fleet.count("SELECT count(*) FROM jobs")


MALFORMED = {
    "bad JSON": dict(content=b'{"jobs": ["a fox",', headers={"Content-Type": "application/json"}),
    "not an object": dict(json=["a fox"]),
    "jobs not an array": dict(json={"jobs": "a fox"}),
    "no jobs": dict(json={"model": "x/y"}),
    "a job of the wrong type": dict(json={"jobs": ["a fox", {"prompt": 5}, 7]}),
    "an option of the wrong type": dict(json={"jobs": ["a fox"], "seed": "seven"}),
    "an unknown option": dict(json={"jobs": ["a fox"], "colour": "red"}),
    "NUL in JSON text": dict(
        content=b'{"jobs": ["a f\x00x"]}', headers={"Content-Type": "application/json"}
    ),
    "escaped NUL in a prompt": dict(json={"jobs": ["a f\u0000x"]}),
    "invalid UTF-8 in JSON": dict(
        content=b'{"jobs": ["a f\xffx"]}', headers={"Content-Type": "application/json"}
    ),
    "NUL in a prompt file": dict(
        content=b"a fox\na f\x00x\n", headers={"Content-Type": "text/plain"}
    ),
    "invalid UTF-8 in a prompt file": dict(
        content=b"a fox\na f\xffx\n", headers={"Content-Type": "text/plain"}
    ),
    "an unknown content type": dict(content=b"a fox", headers={"Content-Type": "image/png"}),
    "a multipart form without a file": dict(data={"seed": "1"}, files={"other": ("x", b"y")}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_body_gets_a_4xx_problem_that_says_what_to_do_and_writes_nothing(
    fleet: Fleet, token: str, case: str
) -> None:
    before = _written(fleet)
    response = _post(fleet, token, **MALFORMED[case])
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == response.status_code
    assert problem["type"].startswith("/v1/problems/") and problem["title"]
    assert len(problem["detail"]) > 20 and "Traceback" not in response.text
    assert _written(fleet) == before


def test_per_line_errors_name_the_elements_of_a_json_submission(fleet: Fleet, token: str) -> None:
    response = _post(fleet, token, json={"jobs": ["a fox", {"prompt": 5}, "ok", {"seed": 1}]})
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert [(e["index"], e["pointer"], e["line"]) for e in errors] == [
        (1, "/jobs/1", 2),
        (3, "/jobs/3", 4),
    ]
    assert "prompt" in errors[0]["detail"]


def test_a_200_mb_body_is_refused_413_with_the_limit_and_nothing_written(
    fleet: Fleet, token: str
) -> None:
    before = _written(fleet)
    line = b'{"prompt": "a red fox asleep in fresh snow, watercolour"}\n'
    body = line * (200 * 1024 * 1024 // len(line))

    def chunks():  # no Content-Length: the server counts as the bytes arrive
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    for content in (body, chunks()):
        response = _post(
            fleet, token, content=content, headers={"Content-Type": "application/jsonl"}
        )
        assert response.status_code == 413, response.text[:300]
        problem = response.json()
        assert problem["limit"] == fleet.settings.api_max_body_bytes
        assert "split" in problem["detail"]
    assert _written(fleet) == before


def test_the_same_idempotency_key_returns_the_same_submission_and_other_jobs_are_a_409(
    fleet: Fleet, token: str
) -> None:
    key = str(uuid.uuid4())
    body = {"jobs": ["a fox", "a whale"], "seed": 3}
    first = _post(fleet, token, json=body, headers={"Idempotency-Key": key})
    again = _post(fleet, token, json=body, headers={"Idempotency-Key": key})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert again.json()["intake"] == {**again.json()["intake"], "created": False, "inserted": 0}
    assert (
        fleet.count(f"SELECT count(*) FROM jobs WHERE submission_id = '{first.json()['id']}'") == 2
    )
    other = _post(fleet, token, json={**body, "seed": 4}, headers={"Idempotency-Key": key})
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    # Another owner's same key is another submission: keys are scoped to the owner.
    elsewhere = _post(
        fleet, fleet.token("someone-else"), json=body, headers={"Idempotency-Key": key}
    )
    assert elsewhere.status_code == 201 and elsewhere.json()["id"] != first.json()["id"]
    # Without a key every request is a new submission.
    assert (
        _post(fleet, token, json=body).json()["id"] != _post(fleet, token, json=body).json()["id"]
    )


def test_a_prompt_file_uploads_raw_or_multipart_with_the_clis_validation(
    fleet: Fleet, token: str
) -> None:
    jsonl = b'{"prompt": "a fox", "num_images": 2}\n{"prompt": "a whale", "steps": 2}\n'
    raw = _post(
        fleet, token, content=jsonl, params={"seed": "10", "source": "mine.jsonl"},
        headers={"Content-Type": "application/jsonl"},
    )  # fmt: skip
    assert raw.status_code == 201, raw.text
    assert (raw.json()["source"], raw.json()["job_count"]) == ("mine.jsonl", 3)
    form = _post(fleet, token, files={"file": ("p.csv", b"prompt,seed\na fox,1\na cat,2\n")},
                 data={"steps": "2"})  # fmt: skip
    assert form.status_code == 201, form.text
    assert form.json()["job_count"] == 2 and form.json()["owner"] == "requests-owner"
    skipped = _post(
        fleet, token, content=b"a fox\n\xff\nok\n", params={"skip_invalid": "true"},
        headers={"Content-Type": "text/plain"},
    )  # fmt: skip
    assert skipped.status_code == 201
    assert skipped.json()["intake"]["skipped"][0]["line"] == 2


def test_a_local_model_folder_outside_the_model_roots_is_refused(fleet: Fleet, token: str) -> None:
    response = _post(fleet, token, json={"jobs": ["a fox"], "model": "/etc"})
    assert response.status_code == 422 and "model" in response.json()["detail"]


def test_ids_resolve_by_unique_prefix_and_unknown_routes_are_problems(
    fleet: Fleet, token: str
) -> None:
    made = _post(fleet, token, json={"jobs": ["a prefix test"]}).json()
    auth = {"Authorization": f"Bearer {token}"}
    by_prefix = httpx.get(f"{fleet.url}/v1/submissions/{made['id'][:13]}", headers=auth)
    assert by_prefix.status_code == 200 and by_prefix.json()["id"] == made["id"]
    for path, status in (("/v1/nothing", 404), ("/v1/submissions/zz", 400)):
        response = httpx.get(f"{fleet.url}{path}", headers=auth)
        assert response.status_code == status
        assert response.headers["content-type"] == PROBLEM


def test_requests_without_a_valid_token_are_401(fleet: Fleet) -> None:
    for headers in ({}, {"Authorization": "Bearer lf_0123456789ab_" + "x" * 43},
                    {"Authorization": "Basic abc"}):  # fmt: skip
        response = httpx.get(f"{fleet.url}/v1/submissions", headers=headers)
        assert response.status_code == 401 and "WWW-Authenticate" in response.headers
        assert response.json()["status"] == 401
    assert httpx.get(f"{fleet.url}/healthz").text == "ok"
    assert httpx.get(f"{fleet.url}/readyz").text == "ready"


def test_the_served_openapi_document_is_valid_and_covers_every_endpoint(fleet: Fleet) -> None:
    from openapi_spec_validator import validate

    spec = httpx.get(f"{fleet.url}/v1/openapi.json").json()
    validate(spec)
    paths = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert {
        ("/v1/submissions", "post"), ("/v1/submissions", "get"),
        ("/v1/submissions/{submission_id}", "get"), ("/v1/submissions/{submission_id}", "delete"),
        ("/v1/submissions/{submission_id}/jobs", "get"), ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}/image", "get"), ("/v1/models", "get"), ("/readyz", "get"),
    } <= paths  # fmt: skip
    body = spec["paths"]["/v1/submissions"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/jsonl", "text/csv", "multipart/form-data"} <= set(body)
    assert "429" in spec["paths"]["/v1/submissions"]["post"]["responses"]


def test_the_answers_have_the_documented_shapes(fleet: Fleet, token: str) -> None:
    from api import schemas

    auth = {"Authorization": f"Bearer {token}"}
    made = _post(fleet, token, json={"jobs": ["a shape test"]}).json()
    schemas.SubmittedOut.model_validate(made)
    schemas.SubmissionOut.model_validate(
        httpx.get(f"{fleet.url}/v1/submissions/{made['id']}", headers=auth).json()
    )
    schemas.SubmissionsPageOut.model_validate(
        httpx.get(f"{fleet.url}/v1/submissions", headers=auth).json()
    )
    page = httpx.get(f"{fleet.url}/v1/submissions/{made['id']}/jobs", headers=auth).json()
    schemas.JobsPageOut.model_validate(page)
    schemas.ModelsOut.model_validate(httpx.get(f"{fleet.url}/v1/models", headers=auth).json())
    schemas.CancelOut.model_validate(
        httpx.delete(f"{fleet.url}/v1/submissions/{made['id']}", headers=auth).json()
    )
    assert json.dumps(page)  # plain JSON throughout
