"""Typed errors, 204, retries and batches, against the sandbox over HTTP."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from flask_amocrm.amo import AmoClient, client_for
from flask_amocrm.errors import (
    AccountBlockedError,
    AuthError,
    NotFoundError,
    PaymentRequiredError,
    ServerError,
    TransportError,
    ValidationError,
)
from flask_amocrm.state import get_state
from tests.helpers.client import fast


@pytest.fixture()
def client(amo_app: Any) -> Any:
    app = amo_app(AMOCRM_LOG_REQUESTS=False, AMOCRM_TIMEOUT=0.5)
    with app.app_context():
        yield fast(client_for(get_state()))


def _calls(sandbox: Any, method: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in sandbox.requests()
        if r["path"].startswith("/api/v4") and method in (None, r["method"])
    ]


def test_204_is_an_empty_result(sandbox: Any, client: AmoClient) -> None:
    assert client.get("/api/v4/leads") is None
    assert client.get_all("/api/v4/leads", "leads") == []
    assert client.get("/api/v4/contacts", query="nobody-has-this") is None


def test_validation_error_carries_the_parsed_errors(client: AmoClient) -> None:
    with pytest.raises(ValidationError) as info:
        client.post(
            "/api/v4/leads",
            [
                {
                    "name": "x",
                    "custom_fields_values": [
                        {"field_id": 1, "values": [{"value": "y"}]}
                    ],
                    "request_id": "r1",
                }
            ],
        )
    exc = info.value
    assert exc.status == 400 and not exc.retryable
    assert exc.errors and exc.errors[0]["request_id"] == "r1"
    assert "r1" in str(exc)


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (402, PaymentRequiredError, True),
        (403, AccountBlockedError, True),
        (404, NotFoundError, False),
        (500, ServerError, True),
    ],
)
def test_statuses_become_typed_errors(
    sandbox: Any,
    client: AmoClient,
    status: int,
    error: type[Exception],
    retryable: bool,
) -> None:
    sandbox.faults(status=status, count=1, method="POST")
    with pytest.raises(error) as info:
        client.post("/api/v4/leads", [{"name": "x"}])
    assert info.value.retryable is retryable  # type: ignore[attr-defined]
    assert len(_calls(sandbox, "POST")) == 1  # a write is never sent twice


def test_long_lived_token_401_is_final(sandbox: Any, amo_app: Any) -> None:
    app = amo_app(AMOCRM_TOKEN="wrong-token", AMOCRM_LOG_REQUESTS=False)
    with app.app_context(), pytest.raises(AuthError) as info:
        client_for(get_state()).get("/api/v4/account")
    assert info.value.retryable and info.value.status == 401
    assert len(_calls(sandbox)) == 1


def test_get_is_retried_on_5xx_and_dropped_connections(
    sandbox: Any, client: AmoClient
) -> None:
    sandbox.faults(status=503, count=2)
    assert client.get("/api/v4/account")["id"]
    assert [r["status"] for r in _calls(sandbox)] == [503, 503, 200]
    sandbox.reset()
    sandbox.faults(drop=True, count=2)
    assert client.get("/api/v4/account")["id"]
    assert len(_calls(sandbox)) == 3


def test_get_gives_up_after_bounded_retries(sandbox: Any, client: AmoClient) -> None:
    sandbox.faults(status=502, count=10)
    with pytest.raises(ServerError):
        client.get("/api/v4/account")
    assert len(_calls(sandbox)) == 1 + client.retries
    sandbox.faults(clear=True)


def test_get_is_retried_after_a_read_timeout(sandbox: Any, client: AmoClient) -> None:
    sandbox.faults(latency_ms=1500, count=1)
    assert client.get("/api/v4/account")["id"]


def test_post_is_not_retried_after_a_dropped_connection(
    sandbox: Any, client: AmoClient, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.faults(drop=True, count=1, method="POST")
    with pytest.raises(TransportError) as info:
        client.post("/api/v4/leads", [{"name": "maybe created"}])
    assert info.value.sent is True and info.value.retryable
    # One attempt only (counted on our side: the sandbox does not always log drops).
    assert caplog.text.count("amoCRM POST /api/v4/leads failed") == 1
    assert "retry" not in caplog.text
    assert len(_calls(sandbox, "POST")) <= 1


def test_post_is_retried_when_it_never_left(client: AmoClient) -> None:
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client.base_url = f"http://127.0.0.1:{port}"
    with pytest.raises(TransportError) as info:
        client.post("/api/v4/leads", [{"name": "never sent"}])
    assert info.value.sent is False


def test_writes_are_chunked_and_matched_by_request_id(
    sandbox: Any, client: AmoClient
) -> None:
    items = [{"name": f"Lead {i}", "request_id": f"ev-{i}"} for i in range(120)]
    results = client.create("leads", items)
    assert [len(r["body"]) for r in _calls(sandbox, "POST")] == [50, 50, 20]
    assert all(
        r is not None and r["request_id"] == f"ev-{i}" for i, r in enumerate(results)
    )
    names = {lead["id"]: lead["name"] for lead in sandbox.leads()}
    assert [names[r["id"]] for r in results] == [f"Lead {i}" for i in range(120)]


def test_complex_matches_the_bare_array_answer(sandbox: Any, client: AmoClient) -> None:
    items = [
        {
            "name": f"Deal {i}",
            "_embedded": {"contacts": [{"first_name": f"Person {i}"}]},
        }
        for i in range(3)
    ]
    results = client.create_complex(items)
    assert all(r and r["id"] and r["contact_id"] for r in results)
    assert len({r["id"] for r in results if r}) == 3


def test_504_on_a_batch_splits_it(sandbox: Any, client: AmoClient) -> None:
    sandbox.faults(status=504, count=1, method="POST")
    items = [{"name": f"Lead {i}"} for i in range(6)]
    results = client.create("leads", items)
    sizes = [(r["status"], len(r["body"])) for r in _calls(sandbox, "POST")]
    assert sizes == [(504, 6), (200, 3), (200, 3)]
    assert all(results) and len(sandbox.leads()) == 6
