"""Contract test: a second published amoCRM client runs its ordinary flows against
the sandbox, beside ``amocrm-api`` in ``test_sandbox_contract.py``.

The client is ``aioamocrm`` 0.1.1 (async, httpx and pydantic), not ours. The only
thing pointed at the sandbox is its ``base_url``; the OAuth code exchange and
refresh, HAL parsing, paging by ``_links.next``, 204 handling, batching, links,
notes, tasks, custom fields, pipelines and its webhook parser are its own code.
Where a flow fails because the client is wrong about the real API, it is skipped
with the reason; where the sandbox was wrong, the sandbox is fixed.

(``amocrm-api-wrapper`` 1.0.1 was tried first and rejected: it passes ``json=`` to
``httpx.Client.get``, so every GET raises ``TypeError`` before reaching any server.)
"""

from __future__ import annotations

import asyncio
import time

import pytest

aioamocrm = pytest.importorskip(
    "aioamocrm", reason="the third-party client aioamocrm is not installed"
)
from aioamocrm import (  # noqa: E402
    AmoCRMClient,
    Lead,
    LongLivedToken,
    Note,
    NotFoundError,
    OAuth2,
    Task,
    parse_webhook,
)


def run(sandbox, flow, *, oauth=False):
    """Run ``flow(amo)`` with a client on the sandbox (long-lived token or OAuth)."""
    sandbox.config(rate_limit=0)  # endpoints under test, not the limit

    async def main():
        auth = (
            OAuth2("sandbox-client", "sandbox-secret", "https://site.test/amo")
            if oauth
            else LongLivedToken(sandbox.token)
        )
        async with AmoCRMClient(base_url=sandbox.url, auth=auth) as amo:
            if oauth:
                await amo.exchange_code(sandbox.auth_code())
            return await flow(amo)

    return asyncio.run(main())


async def _collect(iterator):
    return [item async for item in iterator]


def test_oauth_account_users_and_pipelines(sandbox):
    async def flow(amo):
        account = await amo.account.get(with_=["task_types"])
        assert account.subdomain == "sandbox"
        users = await _collect(amo.users.iterate(limit=2))  # pages by _links.next
        assert len(users) == 5
        assert (await amo.users.get(users[0].id)).id == users[0].id
        pipelines = await amo.pipelines.list()
        assert {p.name for p in pipelines} == {"Sales", "Partners"}
        main = next(p for p in pipelines if p.is_main)
        assert (await amo.pipelines.get(main.id)).name == "Sales"
        statuses = await amo.pipelines.statuses(main.id)
        assert {142, 143} <= {s.id for s in statuses}

    run(sandbox, flow, oauth=True)


def test_create_read_update_search_and_paginate_leads(sandbox):
    async def flow(amo):
        refs = await amo.leads.create(
            [Lead(name=f"Lead {i}", price=100 * i) for i in range(7)], batch_size=3
        )
        ids = [ref.id for ref in refs]
        assert len(ids) == 7 and all(ids)
        lead = await amo.leads.get(ids[3], with_=["contacts"])
        assert (lead.name, lead.price) == ("Lead 3", 300)
        await amo.leads.update([Lead(id=ids[3], name="Renamed")])
        assert (await amo.leads.get(ids[3])).name == "Renamed"
        found = await _collect(amo.leads.iterate(limit=3, filter={"id": ids}))
        assert sorted(lead.id for lead in found) == sorted(ids)
        page = await amo.leads.get_page(3, limit=3, filter={"id": ids})
        assert len(page) == 1 and not page.has_next
        hits = await amo.leads.get_page(query="Renamed")
        assert [lead.id for lead in hits] == [ids[3]]
        none = await amo.leads.get_page(query="no such lead anywhere")  # 204
        assert len(none) == 0
        now = int(time.time())
        recent = await _collect(
            amo.leads.iterate(filter={"updated_at": {"from": now - 60, "to": now + 60}})
        )
        assert set(ids) <= {lead.id for lead in recent}
        ordered = await amo.leads.get_page(order={"id": "desc"}, filter={"id": ids})
        assert [lead.id for lead in ordered] == sorted(ids, reverse=True)
        with pytest.raises(NotFoundError):
            await amo.leads.get(999999999)

    run(sandbox, flow)


def test_a_fetched_lead_sent_back_whole(sandbox):
    async def flow(amo):
        [ref] = await amo.leads.create([Lead(name="Round trip")])
        lead = await amo.leads.get(ref.id)
        lead.name = "Round trip 2"
        await amo.leads.update([lead])  # "sends back every field it was read with"
        assert (await amo.leads.get(ref.id)).name == "Round trip 2"

    run(sandbox, flow)


def test_contacts_links_and_complex(sandbox):
    async def flow(amo):
        [lead] = await amo.leads.create([{"name": "Deal"}])
        [contact] = await amo.contacts.create(
            [{"first_name": "Anna", "last_name": "Petrova"}]
        )
        assert (await amo.contacts.get(contact.id)).name == "Anna Petrova"
        await amo.leads.link(
            lead.id, "contacts", contact.id, metadata={"is_main": True}
        )
        links = await amo.leads.links(lead.id)
        assert [(lk.to_entity_id, lk.to_entity_type) for lk in links] == [
            (contact.id, "contacts")
        ]
        got = await amo.leads.get(lead.id, with_=["contacts"])
        assert [c.id for c in got.embedded.contacts] == [contact.id]
        await amo.leads.unlink(lead.id, "contacts", contact.id)
        assert await amo.leads.links(lead.id) == []
        [result] = await amo.leads.create_complex(
            [{"name": "Complex", "_embedded": {"contacts": [{"first_name": "Ivan"}]}}]
        )
        assert result.id and result.contact_id
        links = await amo.leads.links(result.id, filter={"to_entity_type": "contacts"})
        assert [lk.to_entity_id for lk in links] == [result.contact_id]

    run(sandbox, flow)


def test_links_filtered_by_entity_id(sandbox):
    async def flow(amo):
        [lead] = await amo.leads.create([{"name": "Deal"}])
        [contact] = await amo.contacts.create([{"name": "Anna"}])
        await amo.leads.link(lead.id, "contacts", contact.id)
        links = await amo.leads.links(lead.id, filter={"to_entity_id": [contact.id]})
        assert [lk.to_entity_id for lk in links] == [contact.id]

    run(sandbox, flow)


def test_notes(sandbox):
    async def flow(amo):
        [lead] = await amo.leads.create([{"name": "Noted"}])
        [ref] = await amo.leads.notes.create([Note.common(lead.id, "hello")])
        assert ref.id and ref.entity_id == lead.id
        note = await amo.leads.notes.get(ref.id, entity_id=lead.id)
        assert note.params["text"] == "hello" and note.note_type == "common"
        of_lead = await _collect(amo.leads.notes.iterate(entity_id=lead.id))
        assert [n.id for n in of_lead] == [ref.id]
        typed = await amo.leads.notes.get_page(filter={"note_type": "common"})
        assert ref.id in [n.id for n in typed]
        [contact] = await amo.contacts.create([{"name": "Anna"}])
        await amo.contacts.notes.create([Note.common(contact.id, "call her")])
        assert (
            len(await _collect(amo.contacts.notes.iterate(entity_id=contact.id))) == 1
        )

    run(sandbox, flow)


def test_tasks(sandbox):
    async def flow(amo):
        [lead] = await amo.leads.create([{"name": "Call me"}])
        due = int(time.time()) + 3600
        [ref] = await amo.tasks.create(
            [
                Task(
                    text="Call back",
                    complete_till=due,
                    entity_id=lead.id,
                    entity_type="leads",
                )
            ]
        )
        task = await amo.tasks.get(ref.id)
        assert (task.text, task.complete_till, task.is_completed) == (
            "Call back",
            due,
            False,
        )
        listed = await _collect(
            amo.tasks.iterate(filter={"entity_type": "leads", "entity_id": [lead.id]})
        )
        assert [t.id for t in listed] == [ref.id]
        await amo.tasks.update([Task(id=ref.id, text="Call back at 6")])
        await amo.tasks.complete(ref.id, result="Done")
        done = await amo.tasks.get(ref.id)
        assert done.is_completed is True and done.result.text == "Done"
        assert done.text == "Call back at 6"
        open_ = await amo.tasks.get_page(filter={"is_completed": 0})
        assert ref.id not in [t.id for t in open_]

    run(sandbox, flow)


def test_custom_fields(sandbox):
    async def flow(amo):
        fields = await _collect(amo.leads.custom_fields.iterate(limit=5))
        ids = [f.id for f in fields]
        assert len(ids) == len(set(ids)) > 5  # every page, by _links.next
        codes = {f.code for f in await _collect(amo.contacts.custom_fields.iterate())}
        assert {"PHONE", "EMAIL"} <= codes
        select = next(f for f in fields if f.type == "select")
        assert (await amo.leads.custom_fields.get(select.id)).enums
        [lead] = await amo.leads.create(
            [
                {
                    "name": "With field",
                    "custom_fields_values": [
                        {
                            "field_id": select.id,
                            "values": [{"enum_id": select.enums[0].id}],
                        }
                    ],
                }
            ]
        )
        got = await amo.leads.get(lead.id)
        [value] = got.custom_fields_values
        assert value.field_id == select.id
        assert value.values[0].enum_id == select.enums[0].id

    run(sandbox, flow)


def test_its_webhook_parser_reads_the_sandboxs_webhooks(sandbox, amo):
    # The client has no webhook registration; its parser reads what amoCRM sends.
    amo.post(
        "/webhooks",
        json={
            # Nothing listens there: the delivery is recorded all the same.
            "destination": "http://127.0.0.1:9/hook",
            "settings": ["add_lead", "status_lead", "add_contact"],
        },
    )
    fields = amo.get("/leads/custom_fields").json()["_embedded"]["custom_fields"]
    text = next(f for f in fields if f["type"] == "text")
    lead = amo.post(
        "/leads",
        json=[
            {
                "name": "Hooked",
                "custom_fields_values": [
                    {"field_id": text["id"], "values": [{"value": "hello"}]}
                ],
            }
        ],
    ).json()["_embedded"]["leads"][0]
    amo.patch(f"/leads/{lead['id']}", json={"status_id": 142})
    amo.post("/contacts", json=[{"name": "Anna"}])
    deadline = time.time() + 5
    while len(sandbox.webhook_deliveries()) < 3 and time.time() < deadline:
        time.sleep(0.02)
    hooks = [parse_webhook(d["body"]) for d in sandbox.webhook_deliveries()]
    assert [(e.entity, e.action) for h in hooks for e in h.events] == [
        ("leads", "add"),
        ("leads", "status"),
        ("contacts", "add"),
    ]
    added, moved, contact = (h.events[0] for h in hooks)
    assert added.id == lead["id"] and added.payload["name"] == "Hooked"
    assert added.field_value(text["id"]) == "hello"
    assert moved.payload["status_id"] == "142" and moved.payload["old_status_id"]
    assert contact.payload["type"] == "contact"
    assert hooks[0].subdomain == "sandbox" and hooks[0].account_id
