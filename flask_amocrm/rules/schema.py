"""The shape of ``AMOCRM_RULES`` and its validation when the rules are loaded.

::

    {"defaults": {...},                       # merged under every rule
     "forms": {"callback": {...}},            # one rule per form id
     "mails": {"ORDER_NEW": {...}}}           # one rule per mail event

A rule has optional sections ``contact``, ``company`` and ``lead`` and the option
``tracking`` (campaign tags into the lead's tracking fields, on by default). Errors name the rule and the key.
"""

from __future__ import annotations

import copy
from typing import Any

#: Keys each part of a rule accepts in this release.
_RULE_KEYS = {"contact", "company", "lead", "tracking", "format"}
_SECTION_KEYS = {
    "contact": {"name", "first_name", "last_name", "fields", "responsible"},
    "company": {"name", "fields", "responsible"},
    "lead": {"name", "price", "pipeline", "status", "responsible", "tags", "fields",
             "visitor_uid"},
}
#: Keys of the design (DESIGN.md 3.1) that later releases implement; naming one now is
#: an error rather than a silently ignored setting.
_LATER_KEYS = {"duplicates", "note", "notes", "task", "lock", "id", "group", "unsorted"}
_KINDS = {"forms": "form", "mails": "mail"}


def _fail(where: str, problem: str) -> RuntimeError:
    return RuntimeError(f"AMOCRM_RULES: {where} {problem}")


def _check_rule(where: str, rule: Any) -> None:
    if not isinstance(rule, dict):
        raise _fail(where, f"must be a table of settings, not {rule!r}.")
    for key, value in rule.items():
        path = f"{where}.{key}"
        if key in _LATER_KEYS:
            raise _fail(path, "is not supported by this version of Flask-AmoCRM yet.")
        if key not in _RULE_KEYS:
            raise _fail(path, "is not a rule setting. Known: "
                        + ", ".join(sorted(_RULE_KEYS)) + ".")
        if key in _SECTION_KEYS:
            if not isinstance(value, dict):
                raise _fail(path, f"must be a table, not {value!r}.")
            for sub, subvalue in value.items():
                if sub in _LATER_KEYS:
                    raise _fail(f"{path}.{sub}",
                                "is not supported by this version of Flask-AmoCRM yet.")
                if sub not in _SECTION_KEYS[key]:
                    raise _fail(f"{path}.{sub}", "is not a setting of " + key
                                + ". Known: " + ", ".join(sorted(_SECTION_KEYS[key]))
                                + ".")
                if sub == "fields" and not isinstance(subvalue, dict):
                    raise _fail(f"{path}.{sub}", "must be a table of field: value.")
                if sub == "tags" and not isinstance(subvalue, list | str):
                    raise _fail(f"{path}.{sub}", "must be a list of tags.")
        elif key == "tracking" and not isinstance(value, bool):
            raise _fail(path, f"must be true or false, not {value!r}.")
        elif key == "format" and value not in {"text", "html"}:
            raise _fail(path, f"must be 'text' or 'html', not {value!r}.")


def validate_rules(rules: dict[str, Any]) -> None:
    """Raise :class:`RuntimeError` naming the rule and key if ``rules`` is invalid."""
    for top, value in rules.items():
        if top == "defaults":
            _check_rule("defaults", value)
        elif top in _KINDS:
            if not isinstance(value, dict):
                raise _fail(top, "must be a table of rules, one per "
                            + _KINDS[top] + ".")
            for name, rule in value.items():
                _check_rule(f"{top}.{name}", rule)
        else:
            raise _fail(top, "is not a section. Use 'defaults', 'forms' and 'mails'.")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def find_rule(rules: dict[str, Any], kind: str, source: str) -> dict[str, Any] | None:
    """The rule for an event (``defaults`` merged under it), or ``None``."""
    section = "forms" if kind == "form" else "mails"
    rule = rules.get(section, {}).get(source)
    if rule is None:
        return None
    return _merge(rules.get("defaults", {}), rule)
