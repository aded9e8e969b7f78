"""The seeded account: what a fresh sandbox (and every ``/_sandbox/reset``) holds.

IDs look like a real account's (large integers) but are fixed, so tests and demos
can rely on them. Field codes and enum codes are amoCRM's own.
"""

from __future__ import annotations

import time
from typing import Any

ACCOUNT_ID = 31000001
ADMIN_ID = 8000001

# Custom-field IDs start here; enum IDs have their own range.
FIELD_ID_START = 600001
ENUM_ID_START = 900001

TRACKING_CODES = [
    "UTM_SOURCE",
    "UTM_MEDIUM",
    "UTM_CAMPAIGN",
    "UTM_CONTENT",
    "UTM_TERM",
    "UTM_REFERRER",
    "GCLID",
    "YCLID",
    "FBCLID",
    "_YM_UID",
    "ROISTAT",
    "REFERRER",
]
PHONE_ENUMS = ["WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER"]
EMAIL_ENUMS = ["WORK", "PRIV", "OTHER"]
SMART_ADDRESS_ENUMS = [
    "address_line_1",
    "address_line_2",
    "city",
    "state",
    "zip",
    "country",
]

# Which field types each entity accepts. ``multitext`` is listed
# as contacts-only by Kommo's table, yet every real account has the predefined
# multitext PHONE/EMAIL on companies, so companies accept it too.
ENTITY_FIELD_TYPES: dict[str, set[str]] = {
    "leads": {
        "text",
        "numeric",
        "checkbox",
        "select",
        "multiselect",
        "date",
        "url",
        "textarea",
        "radiobutton",
        "streetaddress",
        "smart_address",
        "birthday",
        "legal_entity",
        "date_time",
        "tracking_data",
        "chained_list",
        "monetary",
        "file",
    },
    "contacts": {
        "text",
        "numeric",
        "checkbox",
        "select",
        "multiselect",
        "multitext",
        "date",
        "url",
        "textarea",
        "radiobutton",
        "streetaddress",
        "smart_address",
        "birthday",
        "legal_entity",
        "date_time",
        "monetary",
        "file",
    },
    "companies": {
        "text",
        "numeric",
        "checkbox",
        "select",
        "multiselect",
        "multitext",
        "date",
        "url",
        "textarea",
        "radiobutton",
        "streetaddress",
        "smart_address",
        "birthday",
        "legal_entity",
        "date_time",
        "monetary",
        "file",
    },
}

TASK_TYPES = [
    {"id": 1, "name": "Связаться", "color": None, "icon_id": None, "code": "FOLLOW_UP"},
    {"id": 2, "name": "Встреча", "color": None, "icon_id": None, "code": "MEETING"},
    {"id": 3, "name": "Отправить КП", "color": "#ffcc00", "icon_id": 5, "code": None},
]


def _rights(admin: bool) -> dict[str, Any]:
    letter = "A"
    return {
        "leads": {
            "view": letter,
            "edit": letter,
            "add": letter,
            "delete": letter,
            "export": letter,
        },
        "contacts": {
            "view": letter,
            "edit": letter,
            "add": letter,
            "delete": letter,
            "export": letter,
        },
        "companies": {
            "view": letter,
            "edit": letter,
            "add": letter,
            "delete": letter,
            "export": letter,
        },
        "tasks": {"edit": letter, "delete": letter},
        "mail_access": True,
        "catalog_access": True,
        "status_rights": [],
        "is_admin": admin,
        "is_free": False,
        "is_active": True,
        "group_id": None,
        "role_id": None,
    }


def _users() -> list[dict[str, Any]]:
    people = [
        (ADMIN_ID, "Администратор", "admin@example.com", True, True),
        (ADMIN_ID + 1, "Anna Petrova", "anna@example.com", False, True),
        (ADMIN_ID + 2, "Boris Ivanov", "boris@example.com", False, True),
        (ADMIN_ID + 3, "Vera Sidorova", "vera@example.com", False, True),
        (ADMIN_ID + 4, "Gleb Old", "gleb@example.com", False, False),
    ]
    users = []
    for uid, name, email, admin, active in people:
        rights = _rights(admin)
        rights["is_active"] = active
        users.append(
            {"id": uid, "name": name, "email": email, "lang": "ru", "rights": rights}
        )
    return users


def _pipelines(now: int) -> list[dict[str, Any]]:
    def statuses(pid: int, first: int, names: list[str]) -> list[dict[str, Any]]:
        out = [
            {
                "id": first,
                "name": "Неразобранное",
                "sort": 10,
                "is_editable": False,
                "pipeline_id": pid,
                "color": "#c1c1c1",
                "type": 1,
                "account_id": ACCOUNT_ID,
            }
        ]
        colors = ["#99ccff", "#ffff99", "#ffcc66", "#deff81", "#87f2c0"]
        for i, name in enumerate(names):
            out.append(
                {
                    "id": first + 1 + i,
                    "name": name,
                    "sort": 20 + 10 * i,
                    "is_editable": True,
                    "pipeline_id": pid,
                    "color": colors[i % len(colors)],
                    "type": 0,
                    "account_id": ACCOUNT_ID,
                }
            )
        out.append(
            {
                "id": 142,
                "name": "Успешно реализовано",
                "sort": 10000,
                "is_editable": False,
                "pipeline_id": pid,
                "color": "#CCFF66",
                "type": 0,
                "account_id": ACCOUNT_ID,
            }
        )
        out.append(
            {
                "id": 143,
                "name": "Закрыто и не реализовано",
                "sort": 11000,
                "is_editable": False,
                "pipeline_id": pid,
                "color": "#D5D8DB",
                "type": 0,
                "account_id": ACCOUNT_ID,
            }
        )
        return out

    return [
        {
            "id": 7000001,
            "name": "Sales",
            "sort": 1,
            "is_main": True,
            "is_unsorted_on": True,
            "is_archive": False,
            "account_id": ACCOUNT_ID,
            "statuses": statuses(
                7000001, 7100001, ["New", "Qualified", "Proposal", "Negotiation"]
            ),
        },
        {
            "id": 7000002,
            "name": "Partners",
            "sort": 2,
            "is_main": False,
            "is_unsorted_on": True,
            "is_archive": False,
            "account_id": ACCOUNT_ID,
            "statuses": statuses(7000002, 7200001, ["First contact", "Contract"]),
        },
    ]


class _Ids:
    def __init__(self) -> None:
        self.field = FIELD_ID_START
        self.enum = ENUM_ID_START

    def next_field(self) -> int:
        self.field += 1
        return self.field - 1

    def next_enum(self) -> int:
        self.enum += 1
        return self.enum - 1


def make_field(
    ids: _Ids,
    entity: str,
    name: str,
    type_: str,
    *,
    code: str | None = None,
    enums: list[tuple[str, str | None]] | None = None,
    sort: int = 500,
    predefined: bool = False,
    api_only: bool = False,
) -> dict[str, Any]:
    """One custom-field object as ``GET /custom_fields`` returns it."""
    field: dict[str, Any] = {
        "id": ids.next_field(),
        "name": name,
        "type": type_,
        "code": code,
        "sort": sort,
        "entity_type": entity,
        "is_predefined": predefined,
        "is_deletable": not predefined,
        "is_visible": True,
        "is_required": False,
        "is_api_only": api_only,
        "group_id": None,
        "required_statuses": [],
        "settings": None,
        "remind": "never" if type_ == "birthday" else None,
        "currency": "RUB" if type_ == "monetary" else None,
        "tracking_callback": None,
        "search_in": None,
        "hidden_statuses": [],
        "chained_lists": [] if type_ == "chained_list" else None,
        "account_id": ACCOUNT_ID,
        "enums": None,
    }
    if enums is not None:
        field["enums"] = [
            {"id": ids.next_enum(), "value": value, "sort": 10 * (i + 1), "code": c}
            for i, (value, c) in enumerate(enums)
        ]
    return field


def _one_of_each(ids: _Ids, entity: str, start_sort: int) -> list[dict[str, Any]]:
    """A custom field of every type ``entity`` accepts that the standard ones miss."""
    label = {"leads": "Lead", "contacts": "Contact", "companies": "Company"}[entity]
    plain = [
        ("text", "Comment"),
        ("numeric", "Quantity"),
        ("checkbox", "Agreed"),
        ("date", "Visit date"),
        ("url", "Profile link"),
        ("textarea", "Details"),
        ("streetaddress", "Short address"),
        ("birthday", "Birthday"),
        ("legal_entity", "Legal entity"),
        ("date_time", "Call time"),
        ("monetary", "Budget"),
        ("file", "Attachment"),
    ]
    out = []
    sort = start_sort
    for type_, name in plain:
        if type_ not in ENTITY_FIELD_TYPES[entity]:
            continue
        out.append(make_field(ids, entity, f"{label} {name}", type_, sort=sort))
        sort += 1
    with_enums = [
        (
            "Delivery type",
            "select",
            [("Courier", None), ("Pickup", None), ("Post", None)],
        ),
        (
            "Interests",
            "multiselect",
            [("Windows", None), ("Doors", None), ("Roofs", None)],
        ),
        (
            "Preferred contact",
            "radiobutton",
            [("Phone", None), ("E-mail", None), ("Messenger", None)],
        ),
        (f"{label} address", "smart_address", [(c, c) for c in SMART_ADDRESS_ENUMS]),
    ]
    for n, (name, type_, enums) in enumerate(with_enums, 1):
        out.append(make_field(ids, entity, name, type_, sort=sort + n, enums=enums))
    if entity == "leads":
        out.append(
            make_field(ids, entity, "Product list", "chained_list", sort=sort + 5)
        )
    return out


def _custom_fields() -> dict[str, list[dict[str, Any]]]:
    ids = _Ids()
    contacts = [
        make_field(
            ids,
            "contacts",
            "Телефон",
            "multitext",
            code="PHONE",
            enums=[(c, c) for c in PHONE_ENUMS],
            sort=4,
            predefined=True,
        ),
        make_field(
            ids,
            "contacts",
            "Email",
            "multitext",
            code="EMAIL",
            enums=[(c, c) for c in EMAIL_ENUMS],
            sort=6,
            predefined=True,
        ),
        make_field(
            ids,
            "contacts",
            "Должность",
            "text",
            code="POSITION",
            sort=2,
            predefined=True,
        ),
    ]
    contacts += _one_of_each(ids, "contacts", 100)
    companies = [
        make_field(
            ids,
            "companies",
            "Телефон",
            "multitext",
            code="PHONE",
            enums=[(c, c) for c in PHONE_ENUMS],
            sort=4,
            predefined=True,
        ),
        make_field(
            ids,
            "companies",
            "Email",
            "multitext",
            code="EMAIL",
            enums=[(c, c) for c in EMAIL_ENUMS],
            sort=6,
            predefined=True,
        ),
        make_field(ids, "companies", "Web", "url", code="WEB", sort=8, predefined=True),
        make_field(
            ids,
            "companies",
            "Адрес",
            "textarea",
            code="ADDRESS",
            sort=10,
            predefined=True,
        ),
    ]
    companies += _one_of_each(ids, "companies", 100)
    leads = [
        make_field(
            ids,
            "leads",
            code.lower(),
            "tracking_data",
            code=code,
            sort=1000 + i,
            predefined=True,
            api_only=True,
        )
        for i, code in enumerate(TRACKING_CODES)
    ]
    leads += _one_of_each(ids, "leads", 100)
    # Google Analytics' client id; made last so that the other fields keep their ids.
    leads.append(
        make_field(
            ids,
            "leads",
            "gclientid",
            "tracking_data",
            code="GCLIENTID",
            sort=1000 + len(TRACKING_CODES),
            predefined=True,
            api_only=True,
        )
    )
    return {"leads": leads, "contacts": contacts, "companies": companies}


def make_seed(subdomain: str = "sandbox") -> dict[str, Any]:
    """A fresh account state (see :class:`~flask_amocrm.sandbox.store.Store`)."""
    now = int(time.time())
    custom_fields = _custom_fields()
    return {
        "account": {
            "id": ACCOUNT_ID,
            "name": "Sandbox account",
            "subdomain": subdomain,
            "created_at": now,
            "created_by": ADMIN_ID,
            "updated_at": now,
            "updated_by": ADMIN_ID,
            "current_user_id": ADMIN_ID,
            "country": "RU",
            "currency": "RUB",
            "currency_symbol": "₽",
            "customers_mode": "disabled",
            "is_unsorted_on": True,
            "mobile_feature_version": 0,
            "is_loss_reason_enabled": True,
            "is_helpbot_enabled": False,
            "is_technical_account": False,
            "contact_name_display_order": 1,
            "amojo_id": "6a5c1b7e-0000-4000-8000-0000000000a1",
            "uuid": "4b8f2f4e-0000-4000-8000-000000000001",
            "version": 11,
        },
        "settings": {"duplicate_control": False},
        "users": _users(),
        "pipelines": _pipelines(now),
        "task_types": [dict(t) for t in TASK_TYPES],
        "custom_fields": custom_fields,
        "leads": {},
        "contacts": {},
        "companies": {},
        "notes": {"leads": {}, "contacts": {}, "companies": {}},
        "tasks": {},
        "tags": {"leads": {}, "contacts": {}, "companies": {}},
        "links": {},
        "unsorted": {},
        "sources": {},
        "counters": {
            "sources": 24001,
            "leads": 10000001,
            "contacts": 20000001,
            "companies": 30000001,
            "notes": 40000001,
            "tasks": 50000001,
            "tags": 60001,
            "field": FIELD_ID_START + 1000,
            "enum": ENUM_ID_START + 1000,
            "pipeline": 7000003,
            "status": 7300001,
        },
        "oauth": {"codes": {}, "refresh": {}},
    }
