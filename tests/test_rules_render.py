"""Rules without Flask or network: schema, templates, value shapes, dates, plans."""

from __future__ import annotations

from datetime import UTC, time
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from flask_amocrm.amo.metadata import AccountMetadata
from flask_amocrm.errors import RuleError
from flask_amocrm.progress import Progress
from flask_amocrm.rules.clean import clean_text, parse_number
from flask_amocrm.rules.deadlines import deadline, end_of_working_day
from flask_amocrm.rules.fields import field_item, parse_when
from flask_amocrm.rules.plan import PlanEnv
from flask_amocrm.rules.render import build_plan
from flask_amocrm.rules.schema import find_rule, validate_rules
from flask_amocrm.rules.signing import sign_id
from flask_amocrm.rules.templates import render
from flask_amocrm.sandbox.seed import make_seed

MSK = ZoneInfo("Europe/Moscow")
# Friday 2024-05-17 12:00 in Moscow.
FRIDAY_NOON = 1715936400


@pytest.fixture(scope="module")
def meta() -> AccountMetadata:
    seed = make_seed()
    return AccountMetadata.from_api(
        pipelines=seed["pipelines"],
        users=seed["users"],
        fields=seed["custom_fields"],
        task_types=seed["task_types"],
        account=seed["account"],
    )


def _event(data: dict[str, Any] | None = None, **context: Any) -> Any:
    return SimpleNamespace(
        id=1,
        uid="u1",
        kind="form",
        source="callback",
        data=data or {},
        files=[],
        remote={},
        attempts=1,
        context={
            "utm": {},
            "page": {},
            "site": {"domain": "shop.test"},
            "client": {},
            "cookies": {},
            "captured_at": FRIDAY_NOON,
            **context,
        },
    )


def _plan(
    rule: dict[str, Any],
    data: dict[str, Any] | None = None,
    meta: AccountMetadata | None = None,
    **env: Any,
) -> Any:
    return build_plan(
        rule,
        _event(data),
        where="forms.callback",
        env=PlanEnv(metadata=meta, now=FRIDAY_NOON, tz=MSK, **env),
    )


# -- schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "key", "words"),
    [
        (
            {"forms": {"a": {"lead": {"nmae": "x"}}}},
            "forms.a.lead.nmae",
            "not a setting of lead",
        ),
        (
            {"forms": {"a": {"contact": {"duplicates": {}}}}},
            "forms.a.contact.duplicates.match",
            "is required",
        ),
        (
            {"forms": {"a": {"lead": {"name": "{{ data.x "}}}},
            "forms.a.lead.name",
            "template error",
        ),
        (
            {"forms": {"a": {"task": {"deadline": "tomorrowish"}}}},
            "forms.a.task.deadline",
            "not a deadline",
        ),
        (
            {"forms": {"a": {"task": {"entity": "deal"}}}},
            "forms.a.task.entity",
            "lead, contact or company",
        ),
        ({"forms": {"a": {"format": "md"}}}, "forms.a.format", "'text' or 'html'"),
        (
            {"forms": {"a": {"tracking": {"utm_sauce": "X"}}}},
            "forms.a.tracking.utm_sauce",
            "not a campaign tag",
        ),
        (
            {"defaults": {"lead": {"responsible": []}}},
            "defaults.lead.responsible",
            "a user",
        ),
        (
            {"mails": {"M": {"lead": {"notes": [{"unique": True}]}}}},
            "mails.M.lead.notes[0].text",
            "is required",
        ),
        ({"forms": {"a": {"unsorted": "yes"}}}, "forms.a.unsorted", "true or false"),
    ],
)
def test_rule_errors_name_the_rule_and_key(
    rules: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(RuntimeError) as info:
        validate_rules(rules)
    assert key in str(info.value) and words in str(info.value)


def test_defaults_are_merged_under_each_rule() -> None:
    rules = {
        "defaults": {
            "format": "html",
            "lead": {"tags": ["site"], "fields": {"A": "1"}},
        },
        "forms": {"f": {"lead": {"fields": {"B": "2"}}}},
    }
    validate_rules(rules)
    rule = find_rule(rules, "form", "f")
    assert rule == {
        "format": "html",
        "lead": {"tags": ["site"], "fields": {"A": "1", "B": "2"}},
    }
    assert find_rule(rules, "mail", "f") is None


# -- templates and cleaning ----------------------------------------------------------


def test_templates_are_sandboxed_and_strict() -> None:
    with pytest.raises(RuleError, match="unsafe"):
        render("{{ ''.__class__.__mro__ }}", {}, where="x")
    with pytest.raises(
        RuleError, match="in lead.name: 'dict object' has no attribute 'nope'"
    ):
        render("{{ data.nope }}", {"data": {}}, where="lead.name")
    assert render("{{ data.a | default('-') }}", {"data": {}}) == "-"


def test_clean_text() -> None:
    warnings: list[str] = []
    assert clean_text("a\x00b\x1b  c\r\nd\udcff") == "ab c d\ufffd"
    assert clean_text("a\r\n\x07b", multiline=True) == "a\nb"
    assert clean_text("x" * 10, limit=5, where="k", warnings=warnings) == "xxxx…"
    assert warnings == [
        "k: the value was 10 characters, cut to 5; in full: " + "x" * 10
    ]


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("1 500,50", 1500.5),
        ("1,500.50", 1500.5),
        ("1.500,50", 1500.5),
        ("1500 ₽", 1500.0),
        ("$20", 20.0),
        ("-3", -3.0),
        (7, 7.0),
        ("abc", None),
        ("", None),
        ("nan", None),
        (True, None),
    ],
)
def test_parse_number(text: Any, number: float | None) -> None:
    assert parse_number(text) == number


# -- dates and deadlines -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["2024-05-17", "17.05.2024", "17.05.24", "17/05/2024", "05/17/2024", "2024/05/17"],
)
def test_dates_in_common_formats(text: str) -> None:
    assert parse_when(text, tz=UTC) == 1715904000


def test_date_times_and_time_zones() -> None:
    assert parse_when("2024-05-17 14:30", tz=UTC) == 1715956200
    assert parse_when("17.05.2024 14:30", tz=MSK) == 1715956200 - 3 * 3600
    assert parse_when("2024-05-17T14:30:00+03:00", tz=UTC) == 1715945400
    assert parse_when("1715945400", tz=UTC) == 1715945400
    assert parse_when("2024-05-17 14:30", tz=UTC, with_time=False) == 1715904000
    assert parse_when("someday", tz=UTC) is None


def test_deadlines() -> None:
    kw = {"now": FRIDAY_NOON, "tz": MSK, "workday_end": time(18, 0), "where": "t"}
    assert deadline("+2h", **kw) == FRIDAY_NOON + 7200
    assert deadline("+1d 30m", **kw) == FRIDAY_NOON + 86400 + 1800
    assert deadline("eod", **kw) == FRIDAY_NOON + 6 * 3600
    # after 18:00 on Friday the next end of a working day is Monday's
    late = FRIDAY_NOON + 7 * 3600
    monday_6pm = FRIDAY_NOON + 3 * 86400 + 6 * 3600
    assert end_of_working_day(now=late, tz=MSK, workday_end=time(18)) == monday_6pm
    assert deadline("2024-05-20 10:00", **kw) == parse_when("2024-05-20 10:00", tz=MSK)
    with pytest.raises(RuleError, match="t: 'soon' is not a deadline"):
        deadline("soon", **kw)


# -- value shapes --------------------------------------------------------------------


def _item(
    meta: AccountMetadata,
    entity: str,
    name: str,
    value: Any,
    warnings: list[str] | None = None,
) -> Any:
    field = meta.field(entity, name)
    assert field is not None, name
    return field_item(
        field,
        value,
        where=name,
        warnings=warnings if warnings is not None else [],
        tz=UTC,
    )


def test_value_shapes_per_type(meta: AccountMetadata) -> None:
    def values(name: str, value: Any, entity: str = "leads") -> Any:
        item = _item(meta, entity, name, value)
        return item and item["values"]

    enum = {
        e["value"]: e["id"]
        for f in meta.fields("leads")
        if f["enums"]
        for e in f["enums"]
    }
    assert values("Lead Comment", "  hi  ") == [{"value": "hi"}]
    assert values("Lead Quantity", "1 200") == [{"value": 1200}]
    assert values("Lead Budget", "99,90") == [{"value": 99.9}]
    assert values("Lead Agreed", "да") == [{"value": True}]
    assert values("Lead Agreed", "0") == [{"value": False}]
    assert values("Delivery type", "courier") == [{"enum_id": enum["Courier"]}]
    assert values("Delivery type", {"enum_id": enum["Post"]}) == [
        {"enum_id": enum["Post"]}
    ]
    assert values("Preferred contact", {"enum": "E-mail"}) == [
        {"enum_id": enum["E-mail"]}
    ]
    assert values("Interests", ["Windows", "Roofs"]) == [
        {"enum_id": enum["Windows"]},
        {"enum_id": enum["Roofs"]},
    ]
    assert values("Lead Visit date", "17.05.2024") == [{"value": 1715904000}]
    assert values("Lead Birthday", "1990-02-01") == [{"value": 633830400}]
    assert values("Lead Details", "a\r\nb") == [{"value": "a\nb"}]
    assert values("Lead address", {"city": "Moscow", "zip": 101000}) == [
        {"value": "Moscow", "enum_code": "city"},
        {"value": "101000", "enum_code": "zip"},
    ]
    assert values("Lead address", "Tverskaya 1") == [
        {"value": "Tverskaya 1", "enum_code": "address_line_1"}
    ]
    assert values("Lead Legal entity", {"name": "ACME", "entity_type": "2"}) == [
        {"value": {"name": "ACME", "entity_type": 2}}
    ]
    assert values("UTM_SOURCE", "google") == [{"value": "google"}]
    phone = meta.field("contacts", "PHONE")
    mob = next(e["id"] for e in phone["enums"] if e["code"] == "MOB")
    work = next(e["id"] for e in phone["enums"] if e["code"] == "WORK")
    assert values(
        "PHONE", ["+7 1", {"value": "+7 2", "enum_code": "MOB"}], "contacts"
    ) == [{"value": "+7 1", "enum_id": work}, {"value": "+7 2", "enum_id": mob}]
    assert values("Lead Comment", "") is None


def test_values_that_do_not_fit_are_reported_not_sent(meta: AccountMetadata) -> None:
    warnings: list[str] = []
    assert _item(meta, "leads", "Delivery type", "Drone", warnings) is None
    assert _item(meta, "leads", "Lead Quantity", "lots", warnings) is None
    assert _item(meta, "leads", "Lead Visit date", "soon", warnings) is None
    assert _item(meta, "leads", "Lead Agreed", "maybe", warnings) is None
    item = _item(meta, "leads", "Interests", ["Doors", "Gates"], warnings)
    assert len(item["values"]) == 1
    assert [w.split(":")[0] for w in warnings] == [
        "Delivery type",
        "Lead Quantity",
        "Lead Visit date",
        "Lead Agreed",
        "Interests",
    ]
    assert "'Drone' is not one of its values (Courier, Pickup, Post)" in warnings[0]


# -- plans ---------------------------------------------------------------------------


def test_a_rule_with_codes_only_needs_no_metadata() -> None:
    rule = {
        "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
        "lead": {
            "name": "Call {{ data.name }}",
            "price": ["10", "2.5"],
            "tags": ["site", ""],
        },
    }
    plan = _plan(rule, {"name": "Ann", "phone": "+7 912"})
    assert plan.steps() == ["create"]
    item = plan.complex_item({})
    assert item == {
        "name": "Call Ann",
        "price": 12,
        "_embedded": {
            "tags": [{"name": "site"}],
            "contacts": [
                {
                    "name": "Ann",
                    "custom_fields_values": [
                        {
                            "field_code": "PHONE",
                            "values": [{"value": "+7 912", "enum_code": "WORK"}],
                        }
                    ],
                }
            ],
        },
    }
    assert plan.warnings == ["forms.callback.lead.price: 12.5 was rounded to 12"]
    assert plan.done(Progress(done=["create"])) and not plan.done(Progress())


def test_names_need_metadata() -> None:
    with pytest.raises(
        RuleError, match="forms.callback.lead.pipeline needs the account's metadata"
    ):
        _plan({"lead": {"pipeline": "Sales"}})


def test_plan_resolves_names(meta: AccountMetadata) -> None:
    rule = {
        "responsible": "anna@example.com",
        "lead": {
            "pipeline": "Partners",
            "status": "first contact",
            "fields": {"Lead Comment": "x"},
        },
        "task": {"type": "MEETING", "deadline": "eod", "text": "t"},
    }
    plan = _plan(rule, meta=meta)
    lead = plan.lead.payload
    assert (lead["pipeline_id"], lead["status_id"]) == (7000002, 7200002)
    assert lead["responsible_user_id"] == 8000002
    [task] = plan.tasks
    assert task.payload == {
        "text": "t",
        "complete_till": FRIDAY_NOON + 6 * 3600,
        "task_type_id": 2,
        "responsible_user_id": 8000002,
    }
    with pytest.raises(RuleError, match="no status 'Won' in that pipeline"):
        _plan({"lead": {"pipeline": "Partners", "status": "Won"}}, meta=meta)
    with pytest.raises(RuleError, match="have no field 'Colour'"):
        _plan({"lead": {"fields": {"Colour": "red"}}}, meta=meta)
    with pytest.raises(RuleError, match="no task type 'Lunch'"):
        _plan({"lead": {}, "task": {"type": "Lunch"}}, meta=meta)


def test_round_robin_uses_the_shared_turn(meta: AccountMetadata) -> None:
    turns: list[tuple[str, int]] = []

    def pick(key: str, count: int) -> int:
        turns.append((key, count))
        return len(turns) - 1

    rule = {"lead": {"responsible": ["Anna Petrova", "Boris Ivanov", "Vera Sidorova"]}}
    ids = [
        _plan(rule, meta=meta, pick=pick).lead.payload["responsible_user_id"]
        for _ in range(4)
    ]
    assert ids == [8000002, 8000003, 8000004, 8000002]
    assert turns[0] == ("forms.callback.lead.responsible", 3)


def test_notes_are_grouped_per_entity_unless_told(meta: AccountMetadata) -> None:
    rule = {
        "contact": {
            "name": "A",
            "note": {"text": "c1", "unique": True},
            "notes": [{"text": "c2", "unique": True}],
        },
        "lead": {"note": "l1", "notes": ["l2", {"text": "l3", "group": False}]},
    }
    plan = _plan(rule, meta=meta)
    assert [(n.key, n.text, n.unique) for n in plan.notes] == [
        ("lead", "l3", False),
        ("lead", "l1\n\nl2", False),
        ("contact", "c1\n\nc2", True),
    ]
    plan = _plan({**rule, "group": False}, meta=meta)
    assert len(plan.notes) == 5


def test_unsorted_plan(meta: AccountMetadata) -> None:
    rule = {
        "unsorted": True,
        "contact": {"name": "{{ data.name }}", "note": {"text": "n", "unique": True}},
        "lead": {"status": "New", "pipeline": "Sales"},
    }
    plan = _plan(rule, {"name": "Ann"}, meta=meta)
    assert plan.steps() == ["create", "notes"]
    assert plan.notes[0].unique is False  # no uniqueness for incoming leads
    item = plan.unsorted_item()
    assert item["source_uid"] == "u1" and item["pipeline_id"] == 7000001
    assert item["metadata"] == {
        "form_id": "callback",
        "form_name": "callback",
        "form_page": "https://shop.test",
        "form_sent_at": FRIDAY_NOON,
    }
    assert item["_embedded"] == {
        "leads": [{"name": "callback"}],
        "contacts": [{"name": "Ann"}],
    }


def test_update_payload_respects_locks_and_merges_phones() -> None:
    rule = {
        "contact": {
            "id": "{{ data.id | signed }}",
            "name": "{{ data.name }}",
            "phone": "{{ data.phone }}",
            "tags": ["x"],
            "lock": ["name", "responsible"],
        }
    }
    data = {
        "id": sign_id("contact", 42, "k"),
        "name": "New",
        "phone": "+7 999 111-22-33",
    }
    plan = _plan(rule, data, secret_key="k")
    contact = plan.contact
    assert contact.id == 42 and plan.steps() == ["update"]
    current = {
        "custom_fields_values": [
            {
                "field_code": "PHONE",
                "field_type": "multitext",
                "values": [
                    {"value": "+79991112233", "enum_id": 5},
                    {"value": "+7 000", "enum_id": 5},
                ],
            }
        ]
    }
    body = contact.update_payload(42, current)
    assert body == {
        "id": 42,
        "tags_to_add": [{"name": "x"}],
        "custom_fields_values": [
            {
                "field_code": "PHONE",
                "values": [
                    {"value": "+79991112233", "enum_id": 5},
                    {"value": "+7 000", "enum_id": 5},
                ],
            }
        ],
    }


def test_tracking_tags_fill_lead_fields(meta: AccountMetadata) -> None:
    event = _event(
        utm={"utm_source": "google", "gclid": "g1"},
        page={"referrer": "https://google.com/"},
    )
    plan = build_plan(
        {"lead": {}, "tracking": {"gclid": "Lead Comment"}},
        event,
        where="f",
        env=PlanEnv(metadata=meta),
    )
    values = {
        v.get("field_id"): v["values"][0]["value"]
        for v in plan.lead.payload["custom_fields_values"]
    }
    assert values[meta.field("leads", "UTM_SOURCE")["id"]] == "google"
    assert values[meta.field("leads", "REFERRER")["id"]] == "https://google.com/"
    assert values[meta.field("leads", "Lead Comment")["id"]] == "g1"
    plan = build_plan({"lead": {}, "tracking": False}, event, where="f")
    assert "custom_fields_values" not in plan.lead.payload


def test_a_rule_that_makes_nothing_is_an_error() -> None:
    with pytest.raises(RuleError, match="makes nothing"):
        _plan({"contact": {"name": "{{ data.name | default('') }}"}})
    with pytest.raises(RuleError, match="task is for the company"):
        _plan({"lead": {}, "task": {"entity": "company"}})


def test_html_notes_escape_what_visitors_typed() -> None:
    from types import SimpleNamespace

    from flask_amocrm.rules.render import build_plan

    event = SimpleNamespace(
        id=1,
        uid="u1",
        kind="form",
        source="f",
        files=[],
        context={},
        remote={},
        data={"name": "<script>alert(1)</script>", "comment": "5 > 3 & <b>bold</b>"},
        created_at=None,
    )
    rule = {
        "format": "html",
        "lead": {
            "name": "{{ data.name }}",
            "note": "<b>Comment:</b> {{ data.comment }}",
        },
    }
    plan = build_plan(rule, event, where="forms.f")
    [note] = plan.notes
    assert note.text == "<b>Comment:</b> 5 &gt; 3 &amp; &lt;b&gt;bold&lt;/b&gt;"
    # the lead's name is not HTML: it is kept as typed
    assert plan.lead is not None
    assert plan.lead.payload["name"] == "<script>alert(1)</script>"


def test_field_values_over_amocrms_limit_go_into_a_note() -> None:
    from flask_amocrm.rules.render.entities import MAX_FIELD_VALUES

    seed = make_seed()
    text_field = next(f for f in seed["custom_fields"]["leads"] if f["type"] == "text")
    extra = [
        dict(text_field, id=900000 + n, name=f"Extra {n}", code=None) for n in range(45)
    ]
    meta = AccountMetadata.from_api(
        pipelines=seed["pipelines"],
        users=seed["users"],
        fields={
            **seed["custom_fields"],
            "leads": seed["custom_fields"]["leads"] + extra,
        },
        task_types=seed["task_types"],
        account=seed["account"],
    )
    fields = {f"Extra {n}": f"v{n}" for n in range(45)}
    plan = _plan(
        {"lead": {"name": "x", "fields": fields}, "tracking": False}, meta=meta
    )
    sent = plan.lead.payload["custom_fields_values"]
    assert len(sent) == MAX_FIELD_VALUES - 2  # room for a file link and the marker
    assert [v["field_id"] for v in sent] == [900000 + n for n in range(38)]
    [note] = plan.notes
    assert "field 900044 not sent" in note.text and "v44" in note.text
    assert "field 900037 not sent" not in note.text
