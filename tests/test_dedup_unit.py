"""Duplicate control without network: normalisation, matching, rules, plans."""

from __future__ import annotations

from typing import Any

import pytest

from flask_amocrm.dedup import (
    Criterion,
    DuplicateRule,
    card_url,
    duplicates_note,
    entity_keys,
    normalize_email,
    normalize_phone,
    normalize_text,
    parse_within,
    phone_query,
    pick,
)
from flask_amocrm.progress import Progress
from flask_amocrm.rules.plan import PlanEnv
from flask_amocrm.rules.render import build_plan
from flask_amocrm.rules.schema import find_rule, validate_rules

NOW = 1_715_940_000.0


@pytest.mark.parametrize(
    "text",
    [
        "+7 912 345-67-89",
        "8 (912) 345 67 89",
        "89123456789",
        "912 345 67 89",
        "+79123456789",
        " 7-912-345-67-89 ",
    ],
)
def test_russian_phones_in_any_format_meet(text: str) -> None:
    assert normalize_phone(text) == "+79123456789"
    assert phone_query(text) == "9123456789"


def test_phone_region_and_foreign_numbers() -> None:
    assert normalize_phone("020 7946 0958", "GB") == "+442079460958"
    assert normalize_phone("+44 20 7946 0958") == "+442079460958"
    assert normalize_phone("8 912 345 67 89", "GB") != "+79123456789"
    assert normalize_phone("12") == "12"  # not a number: its digits
    assert normalize_phone("call me") is None and normalize_phone(None) is None


def test_emails_and_texts() -> None:
    assert normalize_email("  Ann@Example.COM ") == "ann@example.com"
    assert normalize_email("  ") is None
    assert normalize_text("  Order   #7 ") == normalize_text("order #7")
    assert normalize_text(3) == normalize_text("3") == normalize_text(3.0) == "3"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7d", 604800),
        ("12h", 43200),
        ("30m", 1800),
        ("2w", 1209600),
        ("90s", 90),
        (3600, 3600),
        (" 1 D ", 86400),
        ("0d", None),
        ("week", None),
        (True, None),
    ],
)
def test_time_windows(value: Any, seconds: int | None) -> None:
    assert parse_within(value) == seconds


def _contact(
    cid: int,
    created: int,
    phones: list[str] = (),
    emails: list[str] = (),
    name: str = "",
) -> dict[str, Any]:
    values = []
    if phones:
        values.append(
            {
                "field_id": 1,
                "field_code": "PHONE",
                "values": [{"value": p, "enum_id": 5} for p in phones],
            }
        )
    if emails:
        values.append(
            {
                "field_id": 2,
                "field_code": "EMAIL",
                "values": [{"value": e} for e in emails],
            }
        )
    return {
        "id": cid,
        "created_at": created,
        "name": name,
        "custom_fields_values": values,
    }


PHONE = Criterion(
    "PHONE", "field", "phone", None, "PHONE", ("+79123456789",), ("9123456789",)
)
EMAIL = Criterion(
    "EMAIL", "field", "email", None, "EMAIL", ("ann@example.com",), ("ann@example.com",)
)


def test_any_and_all_and_the_earliest_first() -> None:
    candidates = [
        _contact(3, 300, phones=["8 912 345 67 89"]),
        _contact(2, 200, emails=["ANN@example.com"]),
        _contact(1, 400, phones=["+7 912 345-67-89"], emails=["ann@example.com"]),
        # the phone only in the name: a full-text hit, not a duplicate
        _contact(4, 100, name="Call 89123456789"),
    ]
    anyone = DuplicateRule("contact", [PHONE, EMAIL], require="any")
    assert [c["id"] for c in pick(anyone, candidates)] == [2, 3, 1]
    both = DuplicateRule("contact", [PHONE, EMAIL], require="all")
    assert [c["id"] for c in pick(both, candidates)] == [1]
    assert anyone.matched_labels(candidates[2]) == ["PHONE", "EMAIL"]


def test_all_needs_every_value_and_any_one() -> None:
    empty_email = Criterion("EMAIL", "field", "email", None, "EMAIL")
    assert not DuplicateRule("contact", [PHONE, empty_email], require="all").active
    assert DuplicateRule("contact", [PHONE, empty_email], require="any").active
    rule = DuplicateRule("contact", [PHONE, empty_email], require="all")
    assert rule.searches() == [(PHONE, "9123456789")]
    assert DuplicateRule("contact", [PHONE, EMAIL]).searches() == [
        (PHONE, "9123456789"),
        (EMAIL, "ann@example.com"),
    ]


def test_lead_open_only_and_time_window() -> None:
    name = Criterion("name", "name", values=("order #7",), queries=("Order #7",))
    leads = [
        {"id": 1, "name": "Order #7", "status_id": 142, "created_at": NOW - 60},
        {
            "id": 2,
            "name": "order  #7",
            "status_id": 7200001,
            "created_at": NOW - 8 * 86400,
        },
        {"id": 3, "name": "Order #7", "status_id": 7200001, "created_at": NOW - 3600},
        {"id": 4, "name": "Order #8", "status_id": 7200001, "created_at": NOW},
    ]
    assert [x["id"] for x in pick(DuplicateRule("lead", [name], now=NOW), leads)] == [
        2,
        3,
        1,
    ]
    rule = DuplicateRule("lead", [name], open_only=True, within=7 * 86400, now=NOW)
    assert [x["id"] for x in pick(rule, leads)] == [3]
    assert rule.filters(name) == {"filter[created_at][from]": int(NOW - 7 * 86400)}


def test_index_keys_are_what_the_criteria_compare() -> None:
    contact = _contact(
        1,
        100,
        name="  Ann   LEE ",
        phones=["8 (912) 345-67-89", "+44 20 7946 0958"],
        emails=[" ANN@Example.com "],
    )
    keys = entity_keys(contact, "RU")
    assert keys == {
        ("name", "ann lee"),
        ("phone", "+79123456789"),
        ("phone", "+442079460958"),
        ("email", "ann@example.com"),
    }
    # every key the index holds is one the criterion's own comparison finds
    for kind, value in keys - {("name", "ann lee")}:
        criterion = PHONE if kind == "phone" else EMAIL
        assert value in criterion.candidate_values(contact, "RU")
    # a create item names its fields by code, first and last name apart
    item = {
        "first_name": "Ann",
        "last_name": "Lee",
        "custom_fields_values": [
            {"field_code": "PHONE", "values": [{"value": "912 345 67 89"}]}
        ],
    }
    assert entity_keys(item, "RU") == {("name", "ann lee"), ("phone", "+79123456789")}


def test_a_rule_the_index_can_answer() -> None:
    rule = DuplicateRule("contact", [PHONE, EMAIL])
    assert rule.index_keys() == [
        [("phone", "+79123456789")],
        [("email", "ann@example.com")],
    ]
    name = Criterion("name", "name", values=("ann",), queries=("Ann",))
    assert DuplicateRule("company", [name]).index_keys() == [[("name", "ann")]]
    # a field the index does not keep, or a lead: searched as before
    comment = Criterion("Comment", "field", "text", 600010, None, ("a-1",), ("A-1",))
    assert DuplicateRule("contact", [PHONE, comment]).index_keys() is None
    assert DuplicateRule("lead", [name]).index_keys() is None
    # an empty criterion asks nothing
    empty = Criterion("EMAIL", "field", "email", None, "EMAIL")
    assert DuplicateRule("contact", [PHONE, empty]).index_keys() == [
        [("phone", "+79123456789")]
    ]


def test_lock_keys_are_normalised() -> None:
    a = DuplicateRule("contact", [PHONE, EMAIL]).lock_keys()
    assert a == sorted(a) and len(a) == 2 and any("+79123456789" in k for k in a)
    assert len(DuplicateRule("contact", [PHONE, EMAIL], require="all").lock_keys()) == 1


def test_the_note_links_to_the_cards() -> None:
    assert (
        card_url("https://x.amocrm.ru/", "leads", 5)
        == "https://x.amocrm.ru/leads/detail/5"
    )
    text = duplicates_note(
        [("contacts", 7, ["PHONE"]), ("companies", 8, [])], "https://x.amocrm.ru"
    )
    assert text.splitlines() == [
        "Possible duplicates:",
        "- contact 7: https://x.amocrm.ru/contacts/detail/7 (same PHONE)",
        "- company 8: https://x.amocrm.ru/companies/detail/8",
    ]
    html = duplicates_note([("leads", 9, [])], "https://x.amocrm.ru", html_format=True)
    assert '<a href="https://x.amocrm.ru/leads/detail/9">lead 9</a>' in html


# -- the rules' ``duplicates`` ---------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        (
            {"phone": "x", "duplicates": {"strategy": "use"}},
            "duplicates.match",
            "is required",
        ),
        (
            {"phone": "x", "duplicates": {"match": ["PHONE"]}},
            "duplicates.strategy",
            "is required",
        ),
        (
            {"phone": "x", "duplicates": {"match": ["PHONE"], "strategy": "merge"}},
            "duplicates.strategy",
            "'note'",
        ),
        (
            {"phone": "x", "duplicates": {"match": ["EMAIL"], "strategy": "use"}},
            "duplicates.match",
            "does not fill",
        ),
        (
            {
                "phone": "x",
                "duplicates": {
                    "match": ["PHONE"],
                    "strategy": "use",
                    "require": "some",
                },
            },
            "duplicates.require",
            "'all'",
        ),
        (
            {
                "phone": "x",
                "duplicates": {"match": ["PHONE"], "strategy": "use", "scope": "all"},
            },
            "duplicates.scope",
            "not a setting of duplicates",
        ),
    ],
)
def test_contact_duplicates_are_validated(
    section: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(RuntimeError) as info:
        validate_rules({"forms": {"a": {"contact": section}}})
    assert f"forms.a.contact.{key}" in str(info.value)
    assert words in str(info.value)


def test_lead_duplicates_are_validated() -> None:
    ok = {
        "name": "x",
        "duplicates": {
            "match": ["name"],
            "strategy": "update",
            "scope": "all",
            "open_only": True,
            "within": "7d",
        },
    }
    validate_rules({"forms": {"a": {"lead": ok}}})
    for change, key in [
        ({"within": "soon"}, "within"),
        ({"open_only": 1}, "open_only"),
        ({"scope": "contact"}, "scope"),
    ]:
        bad = {**ok, "duplicates": {**ok["duplicates"], **change}}
        with pytest.raises(RuntimeError) as info:
            validate_rules({"forms": {"a": {"lead": bad}}})
        assert f"forms.a.lead.duplicates.{key}" in str(info.value)


def test_defaults_may_switch_duplicates_on_and_a_rule_off() -> None:
    rules = {
        "defaults": {
            "contact": {"duplicates": {"match": ["PHONE"], "strategy": "update"}}
        },
        "forms": {
            "a": {"contact": {"phone": "{{ data.phone }}"}},
            "b": {"contact": {"name": "x", "duplicates": False}},
        },
    }
    validate_rules(rules)
    event = _Event({"phone": "8 912 345 67 89"})
    a = build_plan(find_rule(rules, "form", "a"), event, where="forms.a")
    b = build_plan(find_rule(rules, "form", "b"), event, where="forms.b")
    # a: the defaults' duplicate control, on its phone
    assert a.contact is not None and a.contact.duplicates is not None
    assert a.contact.duplicates.strategy == "update"
    [phone] = a.contact.duplicates.criteria
    assert phone.values == ("+79123456789",)
    assert a.steps() == ["lookup", "create"]
    # b: switched off, so nothing is looked up before the contact is created
    assert b.contact is not None and b.contact.duplicates is None
    assert b.steps() == ["create"]


class _Event:
    id = 1
    uid = "u1"
    kind = "form"
    source = "callback"

    def __init__(self, data: dict[str, Any]) -> None:
        self.files: list[Any] = []
        self.data = data
        self.context = {"captured_at": NOW}


def test_a_plan_carries_normalised_values_and_steps_follow_the_lookup() -> None:
    rule = {
        "contact": {
            "name": "{{ data.name }}",
            "phone": "{{ data.phone }}",
            "email": "{{ data.email }}",
            "duplicates": {"match": ["phone", "EMAIL", "name"], "strategy": "update"},
        },
        "lead": {
            "name": "Callback",
            "note": "hi",
            "duplicates": {"match": ["name"], "strategy": "use"},
        },
    }
    plan = build_plan(
        rule,
        _Event(
            {
                "name": " Ann  Lee",
                "phone": "8 912 345 67 89",
                "email": "Ann@Example.com ",
            }
        ),
        where="forms.callback",
        env=PlanEnv(now=NOW),
    )
    assert plan.contact is not None and plan.contact.duplicates is not None
    phone, email, name = plan.contact.duplicates.criteria
    assert phone.values == ("+79123456789",) and phone.queries == ("9123456789",)
    assert email.values == ("ann@example.com",)
    assert name.values == ("ann lee",)
    assert plan.steps() == ["lookup", "create", "notes"]
    # the contact found and reused: it is updated, then linked to the new lead
    found = Progress(done=["lookup"], found={"contact": 5})
    assert plan.steps(found) == ["lookup", "update", "create", "notes"]
    assert plan.complex_item({"contact": 5})["_embedded"]["contacts"] == [{"id": 5}]
    # both found: nothing is created, the two are linked
    both = Progress(done=["lookup"], found={"contact": 5, "lead": 6})
    assert plan.steps(both) == ["lookup", "update", "link", "notes"]
    noted = Progress(done=["lookup"], duplicate_notes={"contact": "Possible..."})
    assert [
        n.text for _e, n, _b in plan.note_items({"contact": 9, "lead": 1}, noted)
    ] == ["hi", "Possible..."]
