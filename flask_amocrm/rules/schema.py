"""The shape of ``AMOCRM_RULES`` and its validation when the rules are loaded.

::

    {"defaults": {...},                       # merged under every rule
     "forms": {"callback": {...}},            # one rule per form id
     "mails": {"ORDER_NEW": {...}}}           # one rule per mail event

A rule has the sections ``contact``, ``company`` and ``lead`` (each optional), ``task``
(one table or a list of them), and the options ``unsorted``, ``tracking``, ``files``
(``"links"``, ``"drive"``, ``false`` or a table),
``format``, ``group``, ``responsible`` and ``consent`` (``"required"``, a list of the
consent fields required, or ``false``); docs/rules.md shows them. Every template is
compiled here, so a syntax error is reported at start-up, naming the rule and the key,
not on the first visitor's event.

Duplicate control is a section's ``duplicates`` table (docs/duplicates.md)::

    duplicates = { match = ["PHONE", "EMAIL"],  # what to compare: PHONE, EMAIL, name,
                                                # a custom field; leads: name, price,
                                                # pipeline, status, custom fields
                   require = "any",             # any (default) | all
                   strategy = "update",         # note | update | use (required)
                   scope = "contact",           # leads: contact (default) | all
                   open_only = true,            # leads: leave won/lost leads out
                   within = "7d" }              # leads: created at most 7 days ago

``duplicates = false`` switches off what ``defaults`` switched on.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Collection
from datetime import UTC as _UTC
from typing import Any

from jinja2 import TemplateSyntaxError

from ..vocabulary import CAMPAIGN_KEYS, CORE_KEYS, STANDARD_FIELDS, fold
from .signing import unsigned_id
from .templates import check_cost, compile_template, signed_only

#: Keys of a rule (and of ``defaults``).
RULE_KEYS = {
    "contact",
    "company",
    "lead",
    "task",
    "unsorted",
    "tracking",
    "files",
    "format",
    "group",
    "responsible",
    "visit_note",
    "consent",
}
_COMMON = {
    "id",
    "name",
    "responsible",
    "tags",
    "fields",
    "note",
    "notes",
    "lock",
    "group",
    "duplicates",
}
#: Keys of each entity section.
SECTION_KEYS = {
    "contact": _COMMON
    | {"first_name", "last_name", "position", "phone", "email", "im"},
    "company": _COMMON | {"phone", "email", "web", "address"},
    "lead": _COMMON | {"price", "pipeline", "status", "visitor_uid"},
}
#: Keys of a task.
TASK_KEYS = {"entity", "type", "text", "deadline", "responsible", "duration"}
#: Keys of a note given as a table.
NOTE_KEYS = {"text", "unique", "group"}
#: Keys of ``unsorted`` given as a table.
UNSORTED_KEYS = {"enabled", "name", "source_name", "form_name"}
#: Keys of ``duplicates``, per entity section.
DUPLICATES_KEYS = {
    "contact": {"match", "require", "strategy"},
    "company": {"match", "require", "strategy"},
    "lead": {"match", "require", "strategy", "scope", "open_only", "within"},
}
#: Keys of ``files``.
FILES_KEYS = {"entity", "field", "note", "mode", "attach", "fields"}
#: Where uploaded files go (``files = "drive"``, or ``mode`` in the table).
FILES_MODES = ("links", "drive")
#: Keys of the design that a later release implements; naming one now is an error
#: rather than a silently ignored setting.
LATER_KEYS: set[str] = set()
_ENTITIES = ("contact", "company", "lead")
_KINDS = {"forms": "form", "mails": "mail"}
#: The tables of the rules: ``defaults``, merged under every rule, and the rules.
TOP_KEYS = ("defaults", *_KINDS)
#: Keys a form's or a mail event's own rule takes besides :data:`RULE_KEYS` (never
#: ``defaults``): ``enabled``, and a mail rule's ``subject``.
EVENT_RULE_KEYS = {"form": ("enabled",), "mail": ("enabled", "subject")}


def _fail(where: str, problem: str) -> RuntimeError:
    return RuntimeError(f"AMOCRM_RULES: {where} {problem}")


def _templates(where: str, value: Any) -> None:
    """Compile every string inside ``value``; a syntax error names its key."""
    if isinstance(value, str):
        try:
            compile_template(value)
        except TemplateSyntaxError as exc:
            raise _fail(
                where,
                f"has a template error: {exc.message} (line {exc.lineno}): {value!r}",
            ) from None
        problem = check_cost(value)
        if problem:
            raise _fail(where, f"breaks a bound: {problem}: {value!r}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _templates(f"{where}[{i}]", item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _templates(f"{where}.{key}", item)


def _check_keys(where: str, table: Any, known: set[str], what: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _fail(where, f"must be a table, not {table!r}.")
    for key in table:
        if key in LATER_KEYS:
            raise _fail(
                f"{where}.{key}",
                "is not supported by this version of Flask-AmoCRM yet.",
            )
        if key not in known:
            raise _fail(
                f"{where}.{key}",
                f"is not a setting of {what}. Known: " + ", ".join(sorted(known)) + ".",
            )
    return table


def _check_bool(where: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(where, f"must be true or false, not {value!r}.")


def _check_note(where: str, note: Any) -> None:
    if isinstance(note, str):
        _templates(where, note)
        return
    _check_keys(where, note, NOTE_KEYS, "a note")
    if not isinstance(note.get("text"), str):
        raise _fail(f"{where}.text", "is required: the note's text (a template).")
    _templates(f"{where}.text", note["text"])
    for key in ("unique", "group"):
        if key in note:
            _check_bool(f"{where}.{key}", note[key])


def _check_section(
    where: str, entity: str, section: Any, complete: bool = False
) -> None:
    _check_keys(where, section, SECTION_KEYS[entity], entity)
    for key, value in section.items():
        path = f"{where}.{key}"
        if key == "fields":
            if not isinstance(value, dict):
                raise _fail(
                    path,
                    "must be a table of field = value (a field's code, "
                    "id or name, and a template or a value).",
                )
            for field, item in value.items():
                if not isinstance(item, str | int | float | bool | list | dict):
                    raise _fail(
                        f"{path}.{field}", f"has a value of an unknown kind: {item!r}."
                    )
        elif key == "tags":
            if not isinstance(value, list | str):
                raise _fail(path, "must be a list of tags (templates).")
        elif key == "lock":
            if not isinstance(value, list) or not all(
                isinstance(v, str | int) for v in value
            ):
                raise _fail(
                    path,
                    "must be a list of the keys an update never "
                    "overwrites (name, price, PHONE, a field's name).",
                )
        elif key == "note":
            _check_note(path, value)
        elif key == "notes":
            if not isinstance(value, list):
                raise _fail(path, "must be a list of notes.")
            for i, note in enumerate(value):
                _check_note(f"{path}[{i}]", note)
        elif key == "group":
            _check_bool(path, value)
        elif key == "duplicates":
            _check_duplicates(path, entity, section, value, complete)
            continue  # not templates
        elif key == "price":
            if not isinstance(value, str | int | float | list):
                raise _fail(path, "must be a value or a list of values to add up.")
        elif key == "id":
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise _fail(path, "must be an entity id or a template.")
            if isinstance(value, str) and "{" in value:
                _templates(path, value)  # a syntax error first
                if not signed_only(value):
                    raise _fail(path, unsigned_id(entity))
        elif key in ("responsible",):
            if not isinstance(value, str | int | list) or value == []:
                raise _fail(
                    path,
                    "must be a user (name, e-mail or id) or a list of "
                    "users served in turn.",
                )
        elif not isinstance(value, str | int | float | list | dict):
            raise _fail(path, f"has a value of an unknown kind: {value!r}.")
        _templates(path, value)


def _check_duplicates(
    where: str, entity: str, section: dict[str, Any], value: Any, complete: bool
) -> None:
    from ..dedup import REQUIRE, SCOPES, STRATEGIES, parse_within

    if value is False:
        return
    _check_keys(where, value, DUPLICATES_KEYS[entity], "duplicates")
    match = value.get("match")
    if (
        not isinstance(match, list)
        or not match
        or not all(isinstance(m, str | int) and not isinstance(m, bool) for m in match)
    ):
        raise _fail(
            f"{where}.match",
            "is required: a list of what to compare ("
            + (
                "name, price, pipeline, status or a lead field"
                if entity == "lead"
                else "PHONE, EMAIL, name or a field"
            )
            + ").",
        )
    for item in match:
        # Only a whole rule (defaults merged in) shows what its section fills.
        if complete and not _fills(entity, section, item):
            raise _fail(
                f"{where}.match",
                f"names {item!r}, which this {entity} "
                "section does not fill, so there is nothing to compare.",
            )
    strategy = value.get("strategy")
    if strategy not in STRATEGIES:
        raise _fail(
            f"{where}.strategy",
            "is required: 'note' (create, and note "
            "the duplicates), 'update' (update the earliest duplicate) or "
            f"'use' (use it as it is), not {strategy!r}.",
        )
    if value.get("require", "any") not in REQUIRE:
        raise _fail(
            f"{where}.require", f"must be 'any' or 'all', not {value['require']!r}."
        )
    if value.get("scope", "contact") not in SCOPES:
        raise _fail(
            f"{where}.scope", f"must be 'contact' or 'all', not {value['scope']!r}."
        )
    if "open_only" in value:
        _check_bool(f"{where}.open_only", value["open_only"])
    if "within" in value and parse_within(value["within"]) is None:
        raise _fail(
            f"{where}.within",
            f"{value['within']!r} is not a time window; "
            "use '30m', '12h', '7d', '2w' or a number of seconds.",
        )


def _fills(entity: str, section: dict[str, Any], item: Any) -> bool:
    """Whether ``section`` fills what a ``duplicates.match`` item names."""
    text = str(item)
    if text in CORE_KEYS[entity]:
        if text == "name" and entity == "contact":
            return any(k in section for k in ("name", "first_name", "last_name"))
        return text in section
    fields = {str(k) for k in section.get("fields") or {}}
    for std, code in STANDARD_FIELDS[entity].items():
        if std in section:
            fields |= {std, code}
    standard = STANDARD_FIELDS[entity].get(text.lower())
    return text in fields or standard is not None and standard in fields


def _check_task(where: str, task: Any) -> None:
    _check_keys(where, task, TASK_KEYS, "a task")
    entity = task.get("entity", "lead")
    if entity not in _ENTITIES:
        raise _fail(
            f"{where}.entity", f"must be lead, contact or company, not {entity!r}."
        )
    if "text" in task and not isinstance(task["text"], str):
        raise _fail(f"{where}.text", "must be a text (a template).")
    if "deadline" in task:
        from .deadlines import is_static
        from .fields import parse_when

        value = task["deadline"]
        if not isinstance(value, str):
            raise _fail(f"{where}.deadline", "must be a text such as '+2h' or 'eod'.")
        if (
            "{" not in value
            and not is_static(value)
            and parse_when(value, tz=_UTC) is None
        ):
            raise _fail(
                f"{where}.deadline",
                f"{value!r} is not a deadline; use "
                "'+30m', '+2h', '+1d', 'eod', a date or a template.",
            )
    if "duration" in task and (
        isinstance(task["duration"], bool) or not isinstance(task["duration"], int)
    ):
        raise _fail(f"{where}.duration", "must be a number of seconds.")
    _templates(where, task)


def _check_files(where: str, value: Any) -> None:
    """``files``: ``"links"`` (the default), ``"drive"``, ``false`` or a table."""
    if value is False:
        return
    given_as_text = isinstance(value, str)
    if given_as_text:
        value = {"mode": value}
    elif not isinstance(value, dict):
        raise _fail(
            where,
            f"must be 'links', 'drive', false or a table, not {value!r}.",
        )
    _check_keys(where, value, FILES_KEYS, "files")
    mode = value.get("mode", "links")
    if mode not in FILES_MODES:
        raise _fail(
            where if given_as_text else f"{where}.mode",
            "must be 'links' (links to the files saved on the site) or 'drive' "
            f"(the files uploaded to amoCRM's drive), not {mode!r}.",
        )
    if value.get("entity", "lead") not in _ENTITIES:
        raise _fail(f"{where}.entity", "must be lead, contact or company.")
    if "note" in value:
        _check_bool(f"{where}.note", value["note"])
    if "attach" in value:
        attach = value["attach"]
        if (
            not isinstance(attach, list)
            or not attach
            or any(a not in _ENTITIES for a in attach)
        ):
            raise _fail(
                f"{where}.attach",
                "must be a list of lead, contact, company: the entities the "
                f"drive's files are attached to, not {attach!r}.",
            )
    if "fields" in value:
        fields = value["fields"]
        if not isinstance(fields, dict) or not all(
            isinstance(v, str | int) and not isinstance(v, bool)
            for v in fields.values()
        ):
            raise _fail(
                f"{where}.fields",
                "must be a table of form file field = custom field of type "
                "file (its name, code or id).",
            )
    if mode != "drive":
        for key in ("attach", "fields"):
            if key in value:
                raise _fail(f"{where}.{key}", "needs mode = 'drive'.")


def _check_consent(where: str, value: Any) -> None:
    """``consent``: ``"required"`` (every field of ``AMOCRM_CONSENT_FIELDS``), a
    list of the consent fields required, or ``false``/``"optional"``."""
    if value is False or value in ("required", "optional"):
        return
    if (
        isinstance(value, list)
        and value
        and all(isinstance(name, str) and name.strip() for name in value)
    ):
        return
    raise _fail(
        where,
        "must be 'required' (every consent field of AMOCRM_CONSENT_FIELDS), a list "
        f"of the consent fields required, or false, not {value!r}.",
    )


def consent_required(rule: dict[str, Any], configured: Any) -> list[str]:
    """The consent fields an event of ``rule`` must carry agreed: every one of
    ``configured`` (the names of ``AMOCRM_CONSENT_FIELDS``) for
    ``consent = "required"``, the names listed, or none."""
    value = rule.get("consent", False)
    if value == "required":
        return list(configured)
    if isinstance(value, list):
        return [str(name).strip() for name in value]
    return []


def check_consent_fields(rules: dict[str, Any], configured: Any) -> None:
    """Raise :class:`RuntimeError` when a rule requires a consent field that
    ``AMOCRM_CONSENT_FIELDS`` (the names ``configured``) does not name."""
    names = list(configured)
    for kind, name, where in rule_names(rules):
        rule = find_rule(rules, kind, name) or {}
        value = rule.get("consent", False)
        if value == "required" and not names:
            raise RuntimeError(
                f"AMOCRM_CONSENT_FIELDS names no consent field, but {where}.consent "
                "is 'required': name the form's consent fields in "
                "AMOCRM_CONSENT_FIELDS."
            )
        unknown = [n for n in consent_required(rule, names) if n not in names]
        if unknown:
            raise RuntimeError(
                f"AMOCRM_CONSENT_FIELDS does not name {', '.join(unknown)}, which "
                f"{where}.consent requires: add it to AMOCRM_CONSENT_FIELDS."
            )


def files_setting(value: Any) -> dict[str, Any] | None:
    """A rule's ``files`` as a table (``"drive"`` is ``{mode = "drive"}``), or
    ``None`` for ``files = false``."""
    if value is False:
        return None
    if isinstance(value, str):
        return {"mode": value}
    return value if isinstance(value, dict) else {}


def _check_rule(where: str, rule: Any, complete: bool = False) -> None:
    """``complete``: ``rule`` has ``defaults`` merged in (what an event will use)."""
    _check_keys(where, rule, RULE_KEYS, "a rule")
    lead_dups = (
        (rule.get("lead") or {}).get("duplicates")
        if isinstance(rule.get("lead"), dict)
        else None
    )
    if (
        complete
        and isinstance(lead_dups, dict)
        and lead_dups.get("scope", "contact") == "contact"
        and "contact" not in rule
    ):
        raise _fail(
            f"{where}.lead.duplicates.scope",
            "is 'contact' (the default), "
            "but the rule has no contact section: use scope = 'all' or add "
            "the contact.",
        )
    for key, value in rule.items():
        path = f"{where}.{key}"
        if key in _ENTITIES:
            _check_section(path, key, value, complete)
        elif key == "task":
            tasks = value if isinstance(value, list) else [value]
            for i, task in enumerate(tasks):
                _check_task(
                    path if not isinstance(value, list) else f"{path}[{i}]", task
                )
        elif key == "unsorted":
            if isinstance(value, dict):
                _check_keys(path, value, UNSORTED_KEYS, "unsorted")
                if "enabled" in value:
                    _check_bool(f"{path}.enabled", value["enabled"])
                _templates(path, value)
            else:
                _check_bool(path, value)
        elif key == "tracking":
            if isinstance(value, dict):
                for tag, field in value.items():
                    if field is not False and not isinstance(field, str | int):
                        raise _fail(
                            f"{path}.{tag}",
                            "must be a lead field (code, name or id), 'note' or false.",
                        )
            else:
                _check_bool(path, value)
        elif key == "visit_note":
            _check_bool(path, value)
        elif key == "files":
            _check_files(path, value)
        elif key == "format":
            if value not in {"text", "html"}:
                raise _fail(path, f"must be 'text' or 'html', not {value!r}.")
        elif key == "group":
            _check_bool(path, value)
        elif key == "consent":
            _check_consent(path, value)
        elif key == "responsible":
            if not isinstance(value, str | int | list) or value == []:
                raise _fail(path, "must be a user (name, e-mail or id) or a list.")
            _templates(path, value)


def validate_rules(
    rules: dict[str, Any],
    *,
    secret_key: Any = ...,
    marks: Collection[str] = CAMPAIGN_KEYS,
) -> None:
    """Raise :class:`RuntimeError` naming the rule and key if ``rules`` is invalid.

    Each rule is checked with ``defaults`` merged under it, as it will be used.
    ``secret_key``: the app's ``SECRET_KEY``, which signed ids need (not checked when
    not given). ``marks``: the ad marks the site keeps (``AMOCRM_AD_MARKS``), the
    names a ``tracking`` table may map besides ``referrer``.
    """
    if not isinstance(rules, dict):
        raise _fail("", "must be a table with 'defaults', 'forms' and 'mails'.")
    _check_all(rules)
    _check_tracking_tags(rules, {*marks, "referrer"})
    if secret_key is not ... and not secret_key:
        for where in _signed_ids(rules):
            raise _fail(
                where,
                "verifies a signed id, which needs the app's SECRET_KEY: set it.",
            )


def _signed_ids(rules: dict[str, Any]) -> list[str]:
    """Where the rules verify a signed id (``| signed``)."""
    out = []
    for top in ("defaults", *_KINDS):
        section = rules.get(top) or {}
        named = {"defaults": section} if top == "defaults" else section
        for name, rule in named.items():
            if not isinstance(rule, dict):
                continue
            for key in _ENTITIES:
                value = (rule.get(key) or {}).get("id")
                if isinstance(value, str) and "signed" in value:
                    where = "defaults" if top == "defaults" else f"{top}.{name}"
                    out.append(f"{where}.{key}.id")
    return out


def _check_tracking_tags(rules: dict[str, Any], known: set[str]) -> None:
    """Every name a ``tracking`` table maps is a mark the site keeps."""
    found: list[tuple[str, Any]] = [("defaults", rules.get("defaults"))]
    for top in _KINDS:
        found += [(f"{top}.{n}", r) for n, r in (rules.get(top) or {}).items()]
    for where, rule in found:
        table = rule.get("tracking") if isinstance(rule, dict) else None
        for tag in table if isinstance(table, dict) else ():
            if tag not in known:
                raise _fail(
                    f"{where}.tracking.{tag}",
                    "is not a campaign tag the site keeps (AMOCRM_AD_MARKS). Known: "
                    + ", ".join(sorted(known))
                    + ".",
                )


def _check_all(rules: dict[str, Any]) -> None:
    for top, value in rules.items():
        if top == "defaults":
            if isinstance(value, dict) and "enabled" in value:
                raise _fail(
                    "defaults.enabled",
                    "switches one rule off, so it belongs in a rule; to hold every "
                    "event's delivery set AMOCRM_ENABLED = False.",
                )
            _check_rule("defaults", value)
        elif top in _KINDS:
            if not isinstance(value, dict):
                raise _fail(
                    top, "must be a table of rules, one per " + _KINDS[top] + "."
                )
            for name, rule in value.items():
                if top == "mails" and isinstance(rule, dict) and "subject" in rule:
                    _check_subject(f"mails.{name}.subject", rule["subject"])
                    rule = {k: v for k, v in rule.items() if k != "subject"}
                if isinstance(rule, dict) and "enabled" in rule:
                    _check_bool(f"{top}.{name}.enabled", rule["enabled"])
                    rule = {k: v for k, v in rule.items() if k != "enabled"}
                _check_rule(f"{top}.{name}", rule)
                _check_rule(
                    f"{top}.{name}",
                    _merge(rules.get("defaults") or {}, rule),
                    complete=True,
                )
        else:
            raise _fail(top, "is not a section. Use 'defaults', 'forms' and 'mails'.")


def _check_subject(where: str, pattern: Any) -> None:
    if not isinstance(pattern, str) or not pattern.strip():
        raise _fail(
            where,
            "must be a subject pattern such as 'Order #*' "
            "(* matches anything, ? one character).",
        )


def find_mail_event(rules: dict[str, Any], subject: Any) -> str | None:
    """The mail event whose rule's ``subject`` pattern matches ``subject`` (case is
    ignored; ``*`` matches anything, ``?`` one character), or ``None``. For mails the
    site sends without an ``X-AmoCRM-Event`` header."""
    if not subject:
        return None
    text = fold(subject)
    for name, rule in (rules.get("mails") or {}).items():
        pattern = rule.get("subject") if isinstance(rule, dict) else None
        if pattern and fnmatch.fnmatchcase(text, fold(pattern)):
            return str(name)
    return None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    if isinstance(merged.get("files"), str):
        merged["files"] = files_setting(merged["files"])
    for key, value in over.items():
        if key == "files" and isinstance(value, str):
            value = files_setting(value)
        if (
            isinstance(value, dict)
            and isinstance(merged.get(key), dict)
            and key != "fields"
        ):
            merged[key] = _merge(merged[key], value)
        elif (
            key == "fields"
            and isinstance(merged.get(key), dict)
            and isinstance(value, dict)
        ):
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def find_rule(rules: dict[str, Any], kind: str, source: str) -> dict[str, Any] | None:
    """The rule for an event (``defaults`` merged under it), or ``None``."""
    section = "forms" if kind == "form" else "mails"
    rule = (rules.get(section) or {}).get(source)
    if rule is None:
        return None
    return _merge(rules.get("defaults") or {}, rule)


def disabled_rules(rules: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(kind, source, where)`` of every rule switched off with ``enabled =
    false``: the delivery of its events waits until it is switched on again."""
    return [
        (kind, name, where)
        for kind, name, where in rule_names(rules)
        if ((rules.get(f"{kind}s") or {}).get(name) or {}).get("enabled") is False
    ]


def rule_names(rules: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(kind, source, where)`` of every rule: ``("form", "callback",
    "forms.callback")``."""
    out = []
    for section, kind in _KINDS.items():
        for name in rules.get(section) or {}:
            out.append((kind, name, f"{section}.{name}"))
    return out
