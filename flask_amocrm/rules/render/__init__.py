"""Rendering: a rule and an event become a :class:`~flask_amocrm.rules.plan.Plan`.

Pure code: no Flask, no network. Names in the rule (pipelines, users, fields, enum
labels, task types) are turned into ids through the account's names
(:class:`~flask_amocrm.rules.account.AccountNames`), which are asked for only when a
rule needs them (:class:`~flask_amocrm.rules.plan.PlanEnv`). Each section has its
module:

- :mod:`.entities`: the lead, contact and company (names, price, fields, tracking
  tags, tags, lock);
- :mod:`.people`: responsible users, round-robin, pipeline and status;
- :mod:`.duplicates`: the duplicate-control criteria;
- :mod:`.notes`: notes and files;
- :mod:`.tasks`: tasks and their deadlines;
- :mod:`.unsorted`: the incoming-lead item;

and :class:`~.builder.PlanBuilder` holds what they share.
"""

from __future__ import annotations

from typing import Any

from ...errors import RuleError
from ...i18n import N_
from ..plan import Plan, PlanEnv
from .builder import PlanBuilder, template_variables
from .entities import cap_fields, lead, person
from .notes import notes
from .tasks import tasks
from .unsorted import unsorted_item


def build_plan(
    rule: dict[str, Any], event: Any, *, where: str, env: PlanEnv | None = None
) -> Plan:
    """Render ``rule`` for ``event``. Raises :class:`RuleError` naming the key."""
    b = PlanBuilder(rule, event, where, env or PlanEnv())
    plan = b.plan
    plan.html = b.html
    plan.lead = lead(b)
    for key in ("contact", "company"):
        if key in rule:
            setattr(plan, key, person(b, key))
    if not plan.entities():
        raise RuleError(
            N_(
                "%(where)s: the rule makes nothing of this event (no lead, and "
                "the contact and company values are all empty)",
                where=where,
            )
        )
    cap_fields(b)
    if b.unsorted:
        unsorted_item(b)
    tasks(b)
    notes(b)
    return plan


__all__ = ["PlanBuilder", "build_plan", "template_variables"]
