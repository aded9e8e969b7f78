"""The state of one rendering: the rule, the event, the plan so far, the warnings.

:class:`PlanBuilder` holds what every section of a rule needs while it is rendered:
the templates' variables, the plan being filled, the remarks per section (values that
could not go where the rule said end up in a note on that entity), and the field
lookup every section uses (:meth:`PlanBuilder.resolve_field`). The sections themselves
are rendered by the sibling modules.
"""

from __future__ import annotations

from typing import Any

from ...errors import RuleError
from ...i18n import N_
from ...vocabulary import ENTITY
from ..clean import NAME_LIMIT, clean_text
from ..fields import is_empty, known_field
from ..plan import Plan, PlanEnv
from ..templates import render_value


def template_variables(event: Any) -> dict[str, Any]:
    """The names a rule's templates see: the event's ``data``, ``form`` or ``event``
    (its source), ``mail``, the visit (``utm``, ``utm_first``, ``page``, ``site``,
    ``client``, ``cookies``, ``journey``), ``files``, ``sent_at``, ``event_uid``, and
    the consent evidence the worker recorded (``consent``: per field ``given``,
    ``value``, ``version``, ``at``, ``ip``; ``consent_text``: one line per field, for a
    note)."""
    context = event.context or {}
    data = event.data or {}
    mail = data.get("mail", {}) if event.kind == "mail" else {}
    return {
        "data": data,
        "data_text": "\n".join(
            f"{key}: {_flat(value)}"
            for key, value in data.items()
            if key != "mail" and not is_empty(value)
        ),
        "form": event.source if event.kind == "form" else None,
        "event": event.source if event.kind == "mail" else None,
        "source": event.source,
        "kind": event.kind,
        "mail": mail if isinstance(mail, dict) else {},
        "utm": context.get("utm", {}),
        "utm_first": context.get("utm_first", {}),
        "page": context.get("page", {}),
        "site": context.get("site", {}),
        "client": context.get("client", {}),
        "cookies": context.get("cookies", {}),
        "journey": context.get("journey") or {},
        "files": event.files or [],
        "sent_at": context.get("captured_at"),
        "event_uid": getattr(event, "uid", None),
        "consent": context.get("consent") or {},
        "consent_text": context.get("consent_text") or "",
    }


def _flat(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_flat(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items())
    return str(value)


def unsorted_on(rule: dict[str, Any]) -> bool:
    """Whether the rule sends incoming leads (``unsorted``) instead of leads."""
    value = rule.get("unsorted", False)
    if isinstance(value, dict):
        return bool(value.get("enabled", True))
    return bool(value)


class PlanBuilder:
    """One rule rendered for one event: the sections add to :attr:`plan`."""

    def __init__(
        self, rule: dict[str, Any], event: Any, where: str, env: PlanEnv
    ) -> None:
        self.rule = rule
        self.event = event
        #: The rule's path in the configuration (``forms.callback``), for messages.
        self.where = where
        self.env = env
        self.vars = template_variables(event)
        self.plan = Plan()
        #: Value problems per section: they become a note on that entity.
        self.remarks: dict[str, list[str]] = {"lead": [], "contact": [], "company": []}
        self.html = rule.get("format", "text") == "html"
        self.unsorted = unsorted_on(rule)
        #: The rule's default ``responsible``, once resolved: ``(done, user id)``.
        self.default_user: tuple[bool, int | None] = (False, None)
        #: Ad marks that go to a line of the lead's note (``tracking`` maps them to
        #: ``"note"``, or they have no standard tracking field): ``(mark, value)``.
        self.mark_lines: list[tuple[str, str]] = []

    def render(self, value: Any, where: str, *, escape: bool = False) -> Any:
        """``value`` with its templates rendered (lists and tables item by item)."""
        return render_value(value, self.vars, where=where, html=escape)

    def warn(self, key: str | None, text: str) -> None:
        """Log ``text`` for the event and, with a section ``key``, note it there."""
        self.plan.warnings.append(text)
        if key is not None:
            self.remarks[key].append(text)

    def text(
        self,
        value: Any,
        where: str,
        key: str | None,
        *,
        limit: int = NAME_LIMIT,
        multiline: bool = False,
        escape: bool = False,
    ) -> str:
        """``value`` rendered as clean text of at most ``limit`` characters; a cut
        is a warning for section ``key``."""
        rendered = self.render(value, where, escape=escape)
        if isinstance(rendered, list):
            rendered = " ".join(str(v) for v in rendered if not is_empty(v))
        notes: list[str] = []
        text = clean_text(
            rendered, limit=limit, multiline=multiline, where=where, warnings=notes
        )
        for note in notes:
            self.warn(key, note)
        return text

    def resolve_field(
        self, key: str, name: Any, where: str, *, required: bool = True
    ) -> dict[str, Any] | None:
        """The field of section ``key``'s entity that ``name`` (code, id or name)
        names; :class:`RuleError` when a ``required`` one is missing."""
        entity = ENTITY[key]
        static = known_field(entity, name)
        # A standard code the rule names itself is trusted without the metadata; an
        # optional one (a tracking tag) may be missing from the account, which only
        # the metadata tells, and sending it would get the whole lead rejected.
        if static is not None and required and not self.env.has_meta:
            return static
        found = self.env.meta(where).field(entity, name)
        if found is None and required:
            raise RuleError(
                N_(
                    "%(where)s: the %(entity)s of the account have no field "
                    "%(name)s (give its code, id or name; see 'flask amocrm check')",
                    where=where,
                    entity=entity,
                    name=repr(name),
                )
            )
        return found

    def entity_key(self, wanted: str) -> str | None:
        """``wanted`` if the plan has that entity, else the first one it has."""
        if self.plan.entity(wanted) is not None:
            return wanted
        for key in ("lead", "contact", "company"):
            if self.plan.entity(key) is not None:
                return key
        return None


__all__ = ["PlanBuilder", "template_variables", "unsorted_on"]
