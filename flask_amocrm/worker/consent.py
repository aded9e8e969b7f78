"""Consent evidence: what a visitor agreed to, kept on the event, and a rule's
``consent = "required"``.

The consent fields are ``AMOCRM_CONSENT_FIELDS`` (a list of form fields, or a mapping
of each field to the version, name or hash of the consent text it agrees to). Before
an event's first request the worker writes, once, into its context:

- ``consent``: per field ``given`` (a checked box, ``yes``, ``1``…), ``value`` (what
  the form sent), ``version`` (as configured then), ``at`` (when the visitor sent the
  form, ISO 8601 UTC) and ``ip`` (the visitor's address, as capture read it);
- ``consent_text``: the same as one line per field, in ``AMOCRM_LOCALE``, for a note.

Capture refuses nothing; a rule whose ``consent`` names fields an event lacks makes
the event end ``failed`` with that reason, before anything reaches amoCRM.
docs/consent.md tells what this does and does not cover.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..i18n import format_datetime, gettext
from ..models import Event
from ..rules.schema import consent_required
from ..state import AppState
from ..vocabulary import LOCALES

#: Values of a consent field that mean "not agreed" (case and spaces aside); an
#: absent field, ``None``, ``False`` and an empty list too.
NOT_GIVEN = frozenset({"", "0", "false", "no", "off", "n", "none", "null", "нет"})
#: The longest value kept as the field's ``value``, in characters.
VALUE_LIMIT = 200


def is_given(value: Any) -> bool:
    """Whether a consent field's value says the visitor agreed."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, list | tuple):
        return any(is_given(item) for item in value)
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, dict):
        return False
    return str(value).strip().lower() not in NOT_GIVEN


def sent_at(event: Event) -> datetime:
    """When the visitor sent the form (naive UTC): capture's ``captured_at``, else
    the moment the event was stored."""
    captured = (event.context or {}).get("captured_at")
    if isinstance(captured, int | float) and not isinstance(captured, bool):
        try:
            return datetime.fromtimestamp(captured, UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            pass
    return event.created_at


def _locale(state: AppState) -> str:
    return state.settings.locale or LOCALES[0]


def record_consent(state: AppState, event: Event) -> None:
    """Write the event's consent evidence into its context, once (a retry keeps
    what the first attempt wrote, even if the configuration changed since)."""
    fields = state.settings.consent_fields
    context = dict(event.context or {})
    if not fields or event.kind != "form" or "consent" in context:
        return
    data = event.data or {}
    client = context.get("client") or {}
    ip = str(client.get("ip") or "") or None if isinstance(client, dict) else None
    when = sent_at(event)
    at = when.replace(microsecond=0).isoformat() + "Z"
    evidence: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    locale = _locale(state)
    shown = format_datetime(when, state.settings.timezone) + (
        f" ({state.settings.timezone})"
    )
    for name, version in fields:
        value = data.get(name)
        given = is_given(value)
        evidence[name] = {
            "given": given,
            "value": None if value is None else str(value)[:VALUE_LIMIT],
            "version": version,
            "at": at,
            "ip": ip,
        }
        if not given:
            lines.append(
                gettext("Consent %(field)s: not given", locale=locale, field=name)
            )
            continue
        parts = [
            gettext(
                "Consent %(field)s: given %(at)s", locale=locale, field=name, at=shown
            )
        ]
        if ip:
            parts.append(gettext("IP %(ip)s", locale=locale, ip=ip))
        if version:
            parts.append(gettext("text: %(version)s", locale=locale, version=version))
        lines.append(", ".join(parts))
    context["consent"] = evidence
    context["consent_text"] = "\n".join(lines)
    event.context = context


def missing_consent(state: AppState, rule: dict[str, Any], event: Event) -> str | None:
    """Why the event may not be delivered under ``rule`` (``consent`` names a
    field it lacks), in ``AMOCRM_LOCALE``; ``None`` when nothing is missing."""
    names = [name for name, _ in state.settings.consent_fields]
    required = consent_required(rule, names)
    if not required:
        return None
    if not names and rule.get("consent") == "required":
        return gettext(
            "The rule requires consent, but AMOCRM_CONSENT_FIELDS names no "
            "consent field.",
            locale=_locale(state),
        )
    data = event.data or {}
    missing = [name for name in required if not is_given(data.get(name))]
    if not missing:
        return None
    return gettext(
        "No consent: %(fields)s not given, and the rule requires it.",
        locale=_locale(state),
        fields=", ".join(missing),
    )


__all__ = ["is_given", "missing_consent", "record_consent", "sent_at"]
