"""Contract test: a published third-party amoCRM client talks to the sandbox.

The client is ``amocrm-api`` (Krukov/amocrm_api, import ``amocrm.v2``), not ours.
It hard-codes ``https://{subdomain}.amocrm.ru``; the test only redirects that base
URL to the sandbox. Everything else — OAuth code exchange and JWT expiry reading,
HAL parsing, paging, 204 handling, links — is the client's own code.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

v2 = pytest.importorskip(
    "amocrm.v2", reason="the third-party client amocrm-api is not installed"
)
from amocrm.v2 import exceptions, interaction, tokens  # noqa: E402
from amocrm.v2.entity.contact import Contact  # noqa: E402
from amocrm.v2.entity.lead import Lead  # noqa: E402
from amocrm.v2.entity.pipeline import Pipeline  # noqa: E402

AMO_BASE = "https://sandbox.amocrm.ru"


@pytest.fixture()
def krukov(sandbox, monkeypatch):
    """The Krukov client configured for the sandbox through OAuth."""
    sandbox.config(rate_limit=0)
    monkeypatch.setattr(
        interaction.BaseInteraction,
        "_get_url",
        lambda self, path: f"{sandbox.url}/api/v4/{path}",
    )
    real_post = requests.post

    def post(url: str, *args: Any, **kwargs: Any) -> requests.Response:
        return real_post(url.replace(AMO_BASE, sandbox.url), *args, **kwargs)

    monkeypatch.setattr(tokens.requests, "post", post)
    manager = tokens.default_token_manager
    monkeypatch.setattr(manager, "_storage", tokens.MemoryTokensStorage())
    manager(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        subdomain="sandbox",
        redirect_url="https://site.test/amo",
    )
    manager.init(code=sandbox.auth_code())
    yield manager
    interaction._session.close()


def test_third_party_client_round_trip(krukov, sandbox):
    assert krukov.get_access_token()
    pipelines = list(Pipeline.objects.all())
    assert {p.name for p in pipelines} == {"Sales", "Partners"}
    assert any(p.is_main for p in pipelines)

    lead = Lead(name="From Krukov", price=1500)
    lead.save()
    assert lead.id
    fetched = Lead.objects.get(lead.id)
    assert fetched.name == "From Krukov" and fetched.price == 1500
    assert fetched.pipeline.name == "Sales"
    assert fetched.status.name == "New"

    fetched.name = "Renamed"
    fetched.save()
    assert Lead.objects.get(lead.id).name == "Renamed"

    contact = Contact(name="Ivan")
    contact.save()
    fetched.contacts.append(contact, main=True)
    again = Lead.objects.get(lead.id)
    assert [c.id for c in again.contacts] == [contact.id]

    note = fetched.notes.objects.create(note_type="common", params={"text": "hi"})
    assert note.id
    assert sandbox.notes("leads")[0]["params"] == {"text": "hi"}

    found = list(Lead.objects.filter(query="Renamed"))
    assert [x.id for x in found] == [lead.id]
    assert list(Lead.objects.filter(query="nothing-like-this")) == []
    with pytest.raises(exceptions.NotFound):
        Lead.objects.get(lead.id + 1000)


def test_third_party_client_paginates(krukov, sandbox):
    requests.post(
        sandbox.url + "/api/v4/leads",
        headers={"Authorization": "Bearer sandbox-token"},
        json=[{"name": f"L{i}"} for i in range(250)],
    ).close()
    requests.post(
        sandbox.url + "/api/v4/leads",
        headers={"Authorization": "Bearer sandbox-token"},
        json=[{"name": "last"}],
    ).close()
    assert len(list(Lead.objects.all())) == 251
    pages = [
        e["query"]
        for e in sandbox.requests()
        if e["method"] == "GET" and e["path"] == "/api/v4/leads"
    ]
    assert len(pages) == 2
