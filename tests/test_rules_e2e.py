"""Rules end to end: events delivered to the sandbox, and what it holds afterwards."""

from __future__ import annotations

import io
import re
import time
from typing import Any

from werkzeug.datastructures import FileStorage

from flask_amocrm import Event, mail_sent, sign_id
from flask_amocrm.sandbox.seed import ADMIN_ID
from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import field_values, form_site, stored_events

ANNA, BORIS, GLEB = ADMIN_ID + 1, ADMIN_ID + 2, ADMIN_ID + 4


def _tags(entity: dict[str, Any]) -> list[str]:
    return sorted(t["name"] for t in (entity.get("_embedded") or {}).get("tags") or [])


def _note_texts(sandbox: Any, entity: str) -> list[str]:
    return [n["params"]["text"] for n in sandbox.notes(entity)]


def _linked(sandbox: Any, entity: str, entity_id: int, to: str) -> list[int]:
    links = sandbox.state()["links"].get(f"{entity}:{entity_id}", [])
    return [link["to_entity_id"] for link in links if link["to_entity_type"] == to]


ORDER_RULES: dict[str, Any] = {
    "defaults": {"format": "text", "responsible": "Vera Sidorova"},
    "forms": {
        "order": {
            "contact": {
                "name": "{{ data.name }}",
                "position": "{{ data.position }}",
                "phone": "{{ data.phone }}",
                "email": "{{ data.email }}",
                "fields": {
                    "Contact Birthday": "{{ data.birthday }}",
                    "Interests": {"enum": "Roofs"},
                },
                "tags": ["customer"],
                "note": {"text": "Came from {{ site.domain }}", "unique": True},
            },
            "company": {
                "name": "{{ data.company }}",
                "web": "https://acme.example",
                "address": "Tverskaya 1\nMoscow",
                "fields": {"Delivery type": {"enum": "Pickup"}},
            },
            "lead": {
                "name": "Order from {{ data.name }}",
                "pipeline": "Partners",
                "status": "Contract",
                "responsible": "Anna Petrova",
                "price": [
                    "{{ data.amount }}",
                    "{{ data.delivery }}",
                    "{{ data.extra }}",
                ],
                "tags": ["site", "{{ utm.utm_source | default('') }}"],
                "fields": {
                    "Lead Comment": "{{ data.comment }}",
                    "Lead Quantity": "{{ data.qty }}",
                    "Lead Agreed": "{{ data.agree }}",
                    "Delivery type": "{{ data.delivery_type }}",
                    "Interests": ["Windows", "doors", "Gates"],
                    "Preferred contact": {"enum": "Phone"},
                    "Lead Visit date": "17.05.2024",
                    "Lead Call time": "2024-05-17 14:30",
                    "Lead Profile link": "https://example.com/u/1",
                    "Lead Details": "line one\nline two",
                    "Lead Short address": "Tverskaya 1",
                    "Lead address": {"city": "Moscow", "zip": "101000"},
                    "Lead Legal entity": {"name": "ACME LLC", "vat_id": "7700000000"},
                    "Lead Budget": "1 500,50",
                },
                "note": "Comment: {{ data.comment }}",
                "notes": ["Page: {{ page.url }}"],
            },
            "task": {
                "entity": "lead",
                "type": "Встреча",
                "text": "Call {{ data.name }}",
                "deadline": "+2h",
            },
        }
    },
}

ORDER_FORM = {
    "name": "Ann Smith",
    "position": "CTO",
    "phone": "+7 912 000-11-22",
    "email": "ann@example.com",
    "birthday": "01.02.1990",
    "company": "ACME",
    "amount": "1000",
    "delivery": "250,5",
    "extra": "free",
    "comment": "Ring after 5",
    "qty": "3",
    "agree": "on",
    "delivery_type": "Courer",
}


def test_a_form_becomes_lead_contact_company_notes_and_task(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    app = form_site(make_app, ORDER_RULES)
    started = time.time()
    app.test_client().post(
        "/form/order?utm_source=google&utm_campaign=spring", data=ORDER_FORM
    )
    assert deliver_pending(app)["delivered"] == 1
    [event] = stored_events(app)
    assert event.status == "delivered", event.last_error
    assert event.remote["done"] == ["create", "notes", "tasks"]

    [lead] = sandbox.leads()
    assert lead["id"] == event.remote["lead_id"]
    assert lead["name"] == "Order from Ann Smith"
    assert lead["pipeline_id"] == 7000002 and lead["status_id"] == 7200003
    assert lead["responsible_user_id"] == ANNA
    assert lead["price"] == 1250  # 1000 + 250.5, rounded; "free" reported
    assert _tags(lead) == ["google", "site"]
    assert field_values(lead, "UTM_SOURCE") == ["google"]
    assert field_values(lead, "UTM_CAMPAIGN") == ["spring"]
    assert field_values(lead, "Lead Comment") == ["Ring after 5"]
    assert field_values(lead, "Lead Quantity") in (["3"], [3])
    assert field_values(lead, "Lead Agreed") == [True]
    assert field_values(lead, "Delivery type") == []  # "Courer" matches no value
    assert sorted(field_values(lead, "Interests")) == ["Doors", "Windows"]
    assert field_values(lead, "Preferred contact") == ["Phone"]
    assert field_values(lead, "Lead Visit date") == [1715904000]
    assert field_values(lead, "Lead Call time") == [1715956200]
    assert field_values(lead, "Lead Profile link") == ["https://example.com/u/1"]
    assert field_values(lead, "Lead Details") == ["line one\nline two"]
    assert sorted(field_values(lead, "Lead address")) == ["101000", "Moscow"]
    assert field_values(lead, "Lead Legal entity") == [
        {"name": "ACME LLC", "vat_id": "7700000000"}
    ]
    assert field_values(lead, "Lead Budget") in (["1500.5"], [1500.5])

    [contact] = sandbox.contacts()
    assert contact["id"] == event.remote["contact_id"]
    assert contact["name"] == "Ann Smith"
    assert contact["responsible_user_id"] == ADMIN_ID + 3  # the rule's default
    assert field_values(contact, "PHONE") == ["+7 912 000-11-22"]
    assert field_values(contact, "EMAIL") == ["ann@example.com"]
    assert field_values(contact, "POSITION") == ["CTO"]
    assert field_values(contact, "Contact Birthday") == [633830400]
    assert field_values(contact, "Interests") == ["Roofs"]
    assert _tags(contact) == ["customer"]
    [company] = sandbox.companies()
    assert company["name"] == "ACME"
    assert field_values(company, "WEB") == ["https://acme.example"]
    assert field_values(company, "ADDRESS") == ["Tverskaya 1\nMoscow"]
    assert field_values(company, "Delivery type") == ["Pickup"]
    assert _linked(sandbox, "leads", lead["id"], "contacts") == [contact["id"]]
    assert _linked(sandbox, "leads", lead["id"], "companies") == [company["id"]]
    assert _linked(sandbox, "contacts", contact["id"], "companies") == [company["id"]]

    # The lead's notes, the unknown label and the bad price part are one note.
    [lead_note] = sandbox.notes("leads")
    text = lead_note["params"]["text"]
    assert lead_note["entity_id"] == lead["id"]
    assert "Comment: Ring after 5" in text
    assert "Page: http://localhost/form/order" in text
    assert "'Courer' is not one of its values" in text
    assert "'Gates'" in text and "'free' is not a number" in text
    assert _note_texts(sandbox, "contacts") == ["Came from localhost"]

    [task] = sandbox.tasks()
    assert task["entity_id"] == lead["id"] and task["entity_type"] == "leads"
    assert task["task_type_id"] == 2
    assert task["text"] == "Call Ann Smith"
    assert task["responsible_user_id"] == ANNA
    assert started + 7200 - 5 <= task["complete_till"] <= time.time() + 7200 + 5
    assert any("rounded" in line for line in event.log)


def test_incoming_lead_mode(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "callback": {
                "unsorted": {
                    "name": "Call back {{ data.name }}",
                    "form_name": "Callback",
                },
                "contact": {
                    "name": "{{ data.name }}",
                    "phone": "{{ data.phone }}",
                    "note": {"text": "Wants a call", "unique": True},
                },
                "company": {"name": "{{ data.company | default('') }}"},
                "lead": {"pipeline": "Partners", "tags": ["web"]},
                "task": {"text": "never made"},
            }
        }
    }
    app = form_site(make_app, rules, AMOCRM_SITE_NAME="Shop")
    app.test_client().post(
        "/form/callback?utm_source=ya",
        data={"name": "Bob", "phone": "+79990001122", "visitor_uid": "v-42"},
        headers={"Referer": "https://ya.ru/search"},
    )
    assert deliver_pending(app)["delivered"] == 1
    [event] = stored_events(app)
    [item] = sandbox.unsorted()
    assert item["uid"] == event.remote["unsorted_uid"]
    assert item["category"] == "forms" and item["pipeline_id"] == 7000002
    assert item["source_name"] == "Shop"
    meta = item["metadata"]
    assert meta["form_id"] == "callback" and meta["form_name"] == "Callback"
    assert meta["form_page"] == "http://localhost/form/callback?utm_source=ya"
    assert meta["referer"] == "https://ya.ru/search"
    assert meta["visitor_uid"] == "v-42"
    assert meta["ip"] == "127.0.0.1" and meta["form_sent_at"] > 0
    [lead] = sandbox.leads()
    assert lead["name"] == "Call back Bob" and lead["pipeline_id"] == 7000002
    assert lead["status_id"] == 7200001  # the pipeline's incoming-leads stage
    assert _tags(lead) == ["web"] and field_values(lead, "UTM_SOURCE") == ["ya"]
    [contact] = sandbox.contacts()
    assert field_values(contact, "PHONE") == ["+79990001122"]
    assert sandbox.companies() == []  # nothing was typed for it
    assert sandbox.tasks() == []
    assert _note_texts(sandbox, "contacts") == ["Wants a call"]
    assert any("incoming leads take no tasks" in line for line in event.log)


def test_update_by_id_keeps_locked_fields_and_adds_phones(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "signup": {
                "contact": {
                    "name": "{{ data.name }}",
                    "phone": "{{ data.phone }}",
                    "note": {"text": "Known customer", "unique": True},
                },
                "lead": {"name": "Signup {{ data.name }}", "price": "100"},
            },
            "again": {
                "contact": {
                    "id": "{{ data.contact_id | signed }}",
                    "name": "{{ data.name }}",
                    "phone": "{{ data.phone }}",
                    "lock": ["name"],
                    "note": {"text": "Known customer", "unique": True},
                },
                "lead": {
                    "id": "{{ data.lead_id | signed }}",
                    "name": "Renamed",
                    "price": "900",
                    "lock": ["price"],
                    "tags": ["again"],
                },
            },
        }
    }
    app = form_site(make_app, rules)
    client = app.test_client()
    client.post("/form/signup", data={"name": "Ann", "phone": "+79120001122"})
    deliver_pending(app)
    [first] = stored_events(app)
    client.post(
        "/form/again",
        data={
            "name": "Someone else",
            "phone": "+79995556677",
            "contact_id": sign_id("contact", first.remote["contact_id"], "test"),
            "lead_id": sign_id("lead", first.remote["lead_id"], "test"),
        },
    )
    assert deliver_pending(app)["delivered"] == 1
    second = stored_events(app)[1]
    assert second.remote["done"] == ["update", "link", "notes"]
    [contact] = sandbox.contacts()
    assert contact["name"] == "Ann"
    assert field_values(contact, "PHONE") == ["+79120001122", "+79995556677"]
    [lead] = sandbox.leads()
    assert lead["name"] == "Renamed" and lead["price"] == 100
    assert _tags(lead) == ["again"]
    assert _note_texts(sandbox, "contacts") == ["Known customer"]  # unique: once


def test_an_unknown_id_fails_the_event(make_app: Any, fast_sandbox: Any) -> None:
    rules = {"forms": {"f": {"lead": {"id": "{{ data.id | signed }}", "name": "x"}}}}
    app = form_site(make_app, rules)
    app.test_client().post("/form/f", data={"id": sign_id("lead", 999, "test")})
    assert deliver_pending(app)["failed"] == 1
    [event] = stored_events(app)
    assert "no such lead" in event.last_error


def test_contact_and_company_without_lead_are_linked(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "subscribe": {
                "contact": {
                    "first_name": "{{ data.first }}",
                    "last_name": "{{ data.last }}",
                    "email": "{{ data.email }}",
                },
                "company": {"name": "{{ data.company }}", "email": "{{ data.email }}"},
                "task": {
                    "entity": "company",
                    "text": "Send the price list",
                    "deadline": "eod",
                },
            }
        }
    }
    app = form_site(make_app, rules)
    app.test_client().post(
        "/form/subscribe",
        data={
            "first": "Ann",
            "last": "Lee",
            "email": "ann@acme.test",
            "company": "ACME",
        },
    )
    assert deliver_pending(app)["delivered"] == 1
    assert sandbox.leads() == []
    [contact] = sandbox.contacts()
    assert (contact["first_name"], contact["last_name"]) == ("Ann", "Lee")
    [company] = sandbox.companies()
    assert _linked(sandbox, "contacts", contact["id"], "companies") == [company["id"]]
    [task] = sandbox.tasks()
    assert task["entity_type"] == "companies" and task["entity_id"] == company["id"]
    assert task["complete_till"] > time.time()


def test_round_robin_and_inactive_users(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "rr": {
                "lead": {
                    "name": "{{ data.n }}",
                    "responsible": ["Anna Petrova", "boris@example.com"],
                }
            },
            "old": {
                "responsible": "Anna Petrova",
                "lead": {"name": "old", "responsible": "Gleb Old"},
            },
        }
    }
    app = form_site(make_app, rules)
    client = app.test_client()
    for n in range(4):
        client.post("/form/rr", data={"n": str(n)})
    client.post("/form/old", data={})
    assert deliver_pending(app)["delivered"] == 5
    by_name = {lead["name"]: lead for lead in sandbox.leads()}
    assert [by_name[str(n)]["responsible_user_id"] for n in range(4)] == [
        ANNA,
        BORIS,
        ANNA,
        BORIS,
    ]
    assert by_name["old"]["responsible_user_id"] == ANNA
    [note] = sandbox.notes("leads")
    assert "'Gleb Old' is not active" in note["params"]["text"]


def test_rule_errors_fail_the_event_with_the_reason(
    make_app: Any, fast_sandbox: Any
) -> None:
    rules = {
        "forms": {
            "pipe": {"lead": {"name": "x", "pipeline": "{{ data.p }}"}},
            "tpl": {"lead": {"name": "{{ data.name | int // 0 }}"}},
            "esc": {"lead": {"name": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}},
        }
    }
    app = form_site(make_app, rules)
    client = app.test_client()
    client.post("/form/pipe", data={"p": "Nope"})
    client.post("/form/tpl", data={"name": "5"})
    client.post("/form/esc", data={})
    assert deliver_pending(app)["failed"] == 3
    pipe, tpl, esc = stored_events(app)
    assert "forms.pipe.lead.pipeline" in pipe.last_error and "'Nope'" in pipe.last_error
    assert "forms.tpl.lead.name" in tpl.last_error
    assert "ZeroDivisionError" in tpl.last_error
    assert "forms.esc.lead.name" in esc.last_error and "unsafe" in esc.last_error
    assert fast_sandbox.leads() == []


def test_bad_input_is_cleaned_cut_and_noted(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "f": {
                "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
                "lead": {
                    "name": "{{ data.name }}",
                    "fields": {
                        "Lead Quantity": "{{ data.qty }}",
                        "Lead Visit date": "{{ data.date }}",
                    },
                },
            }
        }
    }
    app = form_site(make_app, rules)
    long_name = "Ann\x00\x07 " + "x" * 400
    app.test_client().post(
        "/form/f",
        data={
            "name": long_name,
            "phone": "+7\x1b912",
            "qty": "many",
            "date": "someday",
        },
    )
    assert deliver_pending(app)["delivered"] == 1
    [lead] = sandbox.leads()
    assert lead["name"].startswith("Ann x") and len(lead["name"]) == 255
    [contact] = sandbox.contacts()
    assert field_values(contact, "PHONE") == ["+7912"]
    assert field_values(lead, "Lead Quantity") == []
    assert field_values(lead, "Lead Visit date") == []
    text = "\n".join(_note_texts(sandbox, "leads"))
    assert "'many' is not a number" in text and "'someday' is not a date" in text
    assert "cut to 255" in text and "x" * 400 in text


def test_mail_events_are_mapped_like_forms(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {
        "mails": {
            "ORDER_NEW": {
                "contact": {"email": "{{ mail.recipients[0] }}"},
                "lead": {
                    "price": "{{ data.total }}",
                    "note": "{{ mail.subject }}\n{{ mail.body }}",
                },
            }
        }
    }
    app = form_site(make_app, rules)

    class Message:
        subject = "Order #7"
        sender = "shop@example.com"
        recipients = ["buyer@example.com"]
        body = "Thank you"
        html = None

    with app.app_context():
        mail_sent.send(app, event="ORDER_NEW", data={"total": "70"}, message=Message())
    assert deliver_pending(app)["delivered"] == 1
    [lead] = sandbox.leads()
    assert lead["name"] == "Order #7" and lead["price"] == 70
    [contact] = sandbox.contacts()
    assert field_values(contact, "EMAIL") == ["buyer@example.com"]
    assert _note_texts(sandbox, "leads") == ["Order #7\nThank you"]


def test_uploads_are_saved_and_linked(
    make_app: Any, fast_sandbox: Any, tmp_path: Any
) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "cv": {
                "lead": {"name": "CV"},
                "files": {"field": "Lead Profile link", "note": True},
                "format": "html",
            }
        }
    }
    folder = tmp_path / "uploads"
    app = form_site(
        make_app,
        rules,
        AMOCRM_UPLOAD_FOLDER=str(folder),
        AMOCRM_UPLOAD_URL="/uploads",
        SERVER_NAME="localhost",
        AMOCRM_UPLOAD_MAX_SIZE=1000,
    )
    app.test_client().post(
        "/form/cv",
        data={
            "cv": FileStorage(io.BytesIO(b"%PDF-1.4 cv"), "../../etc/My CV.pdf"),
            "photo": FileStorage(io.BytesIO(b"<svg/>"), "x.svg"),
            "big": FileStorage(io.BytesIO(b"x" * 2000), "big.txt"),
        },
        content_type="multipart/form-data",
    )
    [event] = stored_events(app)
    saved = [f for f in event.files if f.get("url")]
    assert [f["name"] for f in saved] == ["My CV.pdf"]
    url = saved[0]["url"]
    assert url.startswith("http://localhost/uploads/") and url.endswith(".pdf")
    [path] = [p for p in folder.rglob("*") if p.is_file()]
    # saved under a random name of its own: nothing of the visitor's name or path
    assert path.read_bytes() == b"%PDF-1.4 cv"
    assert re.fullmatch(r"[A-Za-z0-9_-]{24}\.pdf", path.name)
    assert deliver_pending(app)["delivered"] == 1
    [lead] = sandbox.leads()
    assert field_values(lead, "Lead Profile link") == [url]
    [note] = _note_texts(sandbox, "leads")
    assert f'<a href="{url}">My CV.pdf</a>' in note
    assert "x.svg (files of type .svg are not accepted)" in note
    assert "big.txt (larger than 1000 bytes)" in note


def test_a_retry_resumes_without_doubling(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "f": {
                "contact": {"name": "{{ data.name }}"},
                "lead": {"name": "L", "note": "hello"},
                "task": {"text": "call"},
            }
        }
    }
    app = form_site(make_app, rules)
    app.test_client().post("/form/f", data={"name": "Ann"})
    # the notes call fails: the lead exists, the event waits
    sandbox.faults(status=503, count=1, path="/api/v4/leads/notes")
    assert deliver_pending(app)["retrying"] == 1
    [event] = stored_events(app)
    assert event.remote["done"] == ["create"]
    with app.app_context(), app.extensions["amocrm"].session() as session:
        session.get(Event, event.id).next_attempt_at = None
        session.commit()
    assert deliver_pending(app)["delivered"] == 1
    assert len(sandbox.leads()) == 1 and len(sandbox.contacts()) == 1
    assert _note_texts(sandbox, "leads") == ["hello"]
    assert len(sandbox.tasks()) == 1


def test_a_batch_shares_calls(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "f": {
                "contact": {"name": "{{ data.name }}"},
                "lead": {"name": "L {{ data.name }}", "note": "n {{ data.name }}"},
                "task": {"text": "call"},
            }
        }
    }
    app = form_site(make_app, rules)
    for n in range(5):
        app.test_client().post("/form/f", data={"name": f"p{n}"})
    before = len(sandbox.requests())
    assert deliver_pending(app)["delivered"] == 5
    writes = [r for r in sandbox.requests()[before:] if r["method"] != "GET"]
    # the first delivery to an account also creates the event-id field, once
    assert sorted(r["path"] for r in writes) == [
        "/api/v4/leads/complex",
        "/api/v4/leads/custom_fields",
        "/api/v4/leads/notes",
        "/api/v4/tasks",
    ]
    assert len(sandbox.leads()) == 5 and len(sandbox.tasks()) == 5
