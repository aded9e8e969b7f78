"""A large account in a moment: ``POST /_sandbox/seed`` adds made-up contacts and
companies, as an account that has been used for years holds them.

The people look real enough for duplicate control to have work: Russian and Latin
names, Russian phones in every spelling people type (``+7 (912) 345-67-89``,
``8 912 345 67 89``, ``9123456789``) and some foreign ones, e-mails in mixed case,
a company for some, and a share of duplicates (the same person entered twice, the
phone written another way, or by e-mail only). Creation times are spread over the
last two years, so a poll of what changed recently does not see them all.

Built straight into the store (no validation, no webhooks): 20,000 contacts take
about a second. The generator is seeded, so one ``seed`` value gives one account.
"""

from __future__ import annotations

import random
from typing import Any

from .records import add_link, new_entity
from .store import Store, now

FIRST = [
    "Иван", "Анна", "Сергей", "Мария", "Алексей", "Ольга", "Дмитрий", "Елена",
    "Павел", "Наталья", "Андрей", "Татьяна", "Николай", "Ирина", "Михаил",
    "Светлана", "John", "Emma", "Liam", "Olivia", "Noah", "Sofia", "Lukas", "Mia",
]  # fmt: skip
LAST = [
    "Иванов", "Смирнов", "Кузнецов", "Попов", "Васильев", "Петров", "Соколов",
    "Михайлов", "Новиков", "Фёдоров", "Морозов", "Волков", "Smith", "Müller",
    "García", "Rossi", "Dubois", "Kowalski", "Nowak", "Jensen",
]  # fmt: skip
LATIN = {
    "Иван": "ivan", "Анна": "anna", "Сергей": "sergey", "Мария": "maria",
    "Алексей": "alexey", "Ольга": "olga", "Дмитрий": "dmitry", "Елена": "elena",
    "Павел": "pavel", "Наталья": "natalia", "Андрей": "andrey", "Татьяна": "tatiana",
    "Николай": "nikolay", "Ирина": "irina", "Михаил": "mikhail",
    "Светлана": "svetlana",
}  # fmt: skip
DOMAINS = ["mail.ru", "yandex.ru", "gmail.com", "bk.ru", "example.com", "inbox.ru"]
COMPANY_WORDS = [
    "Ромашка", "Вектор", "Север", "Альфа", "Техно", "Строй", "Логистик", "Nord",
    "Blue", "Prime", "Smart", "Green",
]  # fmt: skip
COMPANY_KINDS = ["ООО", "АО", "ИП", "LLC", "GmbH"]
#: Foreign numbers: country code, then a national number of the right length.
FOREIGN = [("+1", 10), ("+44", 10), ("+49", 11), ("+375", 9), ("+380", 9)]


def _russian_phone(rng: random.Random) -> str:
    """A Russian mobile number in one of the ways people write it."""
    digits = f"9{rng.randrange(10**9):09d}"
    a, b, c, d = digits[:3], digits[3:6], digits[6:8], digits[8:]
    style = rng.randrange(6)
    if style == 0:
        return f"+7 ({a}) {b}-{c}-{d}"
    if style == 1:
        return f"8 {a} {b} {c} {d}"
    if style == 2:
        return f"+7{digits}"
    if style == 3:
        return f"8({a}){b}{c}{d}"
    if style == 4:
        return digits
    return f"7-{a}-{b}-{c}-{d}"


def _respell(phone: str) -> str:
    """The same Russian number written another way (a duplicate's phone)."""
    digits = "".join(ch for ch in phone if ch.isdigit())[-10:]
    if phone.startswith("+7"):
        return f"8 {digits[:3]} {digits[3:6]}-{digits[6:8]}-{digits[8:]}"
    return f"+7 {digits[:3]} {digits[3:6]} {digits[6:]}"


def _foreign_phone(rng: random.Random) -> str:
    code, length = rng.choice(FOREIGN)
    number = "".join(str(rng.randrange(10)) for _ in range(length))
    number = str(rng.randrange(2, 10)) + number[1:]
    return f"{code} {number[:3]} {number[3:]}"


def _email(rng: random.Random, first: str, last: str, n: int) -> str:
    name = LATIN.get(first, first.lower())
    user = f"{name}.{n}" if rng.random() < 0.5 else f"{name[0]}{n}"
    if rng.random() < 0.2:
        user = user.capitalize()
    return f"{user}@{rng.choice(DOMAINS)}"


def _fields(store: Store, entity: str) -> dict[str, dict[str, Any]]:
    return {f["code"]: f for f in store.fields(entity) if f.get("code")}


def _multitext(field: dict[str, Any], values: list[str]) -> dict[str, Any]:
    enum = field["enums"][0]
    return {
        "field_id": field["id"],
        "field_name": field["name"],
        "field_code": field["code"],
        "field_type": field["type"],
        "values": [
            {"value": v, "enum_id": enum["id"], "enum_code": enum.get("code")}
            for v in values
        ],
    }


def seed_bulk(
    store: Store, contacts: int, companies: int = 0, *, seed: int = 1
) -> dict[str, Any]:
    """Add ``contacts`` contacts and ``companies`` companies to the account; about
    one contact in twenty is a duplicate of an earlier one. Returns what was added:
    counts, and a few sample phones and e-mails of added contacts."""
    rng = random.Random(seed)
    end = now()
    start = end - 2 * 365 * 86400
    step = (end - 3600 - start) / max(contacts + companies, 1)
    cfields, kfields = _fields(store, "contacts"), _fields(store, "companies")
    with store.lock:
        company_ids: list[int] = []
        at = float(start)
        for n in range(companies):
            at += step
            obj = new_entity(store, "companies", int(at))
            obj["name"] = (
                f"{rng.choice(COMPANY_KINDS)} «{rng.choice(COMPANY_WORDS)}"
                f" {rng.choice(COMPANY_WORDS)}» {n}"
            )
            obj["custom_fields_values"] = [
                _multitext(kfields["PHONE"], [_russian_phone(rng)]),
                _multitext(kfields["EMAIL"], [f"office{n}@{rng.choice(DOMAINS)}"]),
            ]
            store.entities("companies")[obj["id"]] = obj
            company_ids.append(obj["id"])
        people: list[tuple[str, str, str | None, str | None]] = []
        duplicates = 0
        for n in range(contacts):
            at += step
            if people and rng.random() < 0.05:
                name, _, phone, email = rng.choice(people)
                duplicates += 1
                if phone is not None and rng.random() < 0.6:
                    phone = _respell(phone)
                elif rng.random() < 0.5:
                    phone = None
                if email is not None and rng.random() < 0.5:
                    email = email.upper()
                first = name
            else:
                first_name, last_name = rng.choice(FIRST), rng.choice(LAST)
                first = f"{first_name} {last_name}"
                phone = (
                    _russian_phone(rng) if rng.random() < 0.85 else _foreign_phone(rng)
                )
                email = (
                    _email(rng, first_name, last_name, n)
                    if rng.random() < 0.7
                    else None
                )
                people.append((first, last_name, phone, email))
            obj = new_entity(store, "contacts", int(at))
            obj["name"] = first
            obj["first_name"], _, obj["last_name"] = first.partition(" ")
            values = []
            if phone:
                values.append(_multitext(cfields["PHONE"], [phone]))
            if email:
                values.append(_multitext(cfields["EMAIL"], [email]))
            obj["custom_fields_values"] = values or None
            store.entities("contacts")[obj["id"]] = obj
            if company_ids and rng.random() < 0.2:
                add_link(
                    store, "contacts", obj["id"], "companies", rng.choice(company_ids)
                )
        store.touch()
        sample = [p for p in people[:: max(len(people) // 5, 1)]][:5]
        return {
            "contacts": contacts,
            "companies": companies,
            "duplicates": duplicates,
            "sample": [{"name": p[0], "phone": p[2], "email": p[3]} for p in sample],
        }


def delete_entity(store: Store, entity: str, entity_id: int) -> bool:
    """Delete an entity as a person does in amoCRM (it goes to the trash: lists and
    reads no longer show it). Whether there was one to delete."""
    with store.lock:
        obj = store.entities(entity).get(entity_id)
        if obj is None or obj.get("is_deleted"):
            return False
        obj["is_deleted"] = True
        obj["updated_at"] = now()
        store.touch()
        return True
