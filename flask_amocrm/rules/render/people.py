"""Who gets the entity, and where the lead goes: users, round-robin, pipeline, status.

``responsible`` names one user or a list taken in turn (round-robin: the turn comes
from :attr:`PlanEnv.pick <flask_amocrm.rules.plan.PlanEnv.pick>`). An unknown or
inactive user never fails the event: the entity goes to the rule's default user, else
to amoCRM's (the token's user), with a warning. An unknown pipeline or status does
fail it: a lead in the wrong pipeline is worse than a lead retried after the fix.
"""

from __future__ import annotations

from typing import Any

from ...errors import RuleError
from ...i18n import N_
from ..account import (
    INACTIVE_USER,
    find_pipeline,
    find_status,
    find_user,
    main_pipeline,
)
from ..fields import is_empty
from .builder import PlanBuilder


def user(b: PlanBuilder, value: Any, where: str, key: str | None) -> int | None:
    """A user id for ``responsible`` (one user or a round-robin list)."""
    choices = value if isinstance(value, list) else [value]
    if len(choices) > 1:
        pick = b.env.pick or (lambda _key, n: 0)
        choice = choices[pick(where, len(choices)) % len(choices)]
    else:
        choice = choices[0]
    wanted = b.render(choice, where)
    if is_empty(wanted):
        return default_user(b, where, key)
    user_id, why = find_user(b.env.meta(where), wanted)
    if user_id is not None:
        return user_id
    fallback = default_user(b, where, key, skip=value)
    if why == INACTIVE_USER:
        problem = N_(
            "%(where)s: %(user)s is not active", where=where, user=repr(wanted)
        )
    else:
        problem = N_(
            "%(where)s: %(user)s is not a user of the account",
            where=where,
            user=repr(wanted),
        )
    if fallback:
        b.warn(
            key,
            N_(
                "%(problem)s; the responsible is user %(id)s",
                problem=problem,
                id=fallback,
            ),
        )
    else:
        b.warn(
            key,
            N_(
                "%(problem)s; the responsible is amoCRM's default user", problem=problem
            ),
        )
    return fallback


def default_user(
    b: PlanBuilder, where: str, key: str | None, skip: Any = None
) -> int | None:
    """The rule's ``responsible`` (resolved once per event), or ``None``."""
    value = b.rule.get("responsible")
    if value is None or value == skip:
        return None
    done, user_id = b.default_user
    if not done:
        b.default_user = (True, None)  # no recursion through a bad default
        user_id = user(b, value, f"{b.where}.responsible", key)
        b.default_user = (True, user_id)
    return user_id


def responsible(
    b: PlanBuilder, section: dict[str, Any], where: str, key: str
) -> int | None:
    """The section's ``responsible``, else the rule's."""
    if "responsible" in section:
        return user(b, section["responsible"], f"{where}.responsible", key)
    return default_user(b, where, key)


def pipeline_status(
    b: PlanBuilder, section: dict[str, Any], where: str
) -> tuple[int | None, int | None]:
    """The lead's pipeline and status ids. A status alone is looked for in the main
    pipeline; unsorted mode leaves the status out."""
    if "pipeline" not in section and "status" not in section:
        return None, None
    names = b.env.meta(f"{where}.pipeline")
    pipeline_id = None
    if "pipeline" in section:
        wanted = b.render(section["pipeline"], f"{where}.pipeline")
        pipeline_id = find_pipeline(names, wanted)
        if pipeline_id is None:
            raise RuleError(
                N_(
                    "%(where)s.pipeline: there is no pipeline %(name)s in the "
                    "account (see 'flask amocrm check')",
                    where=where,
                    name=repr(wanted),
                )
            )
    status_id = None
    if "status" in section and not b.unsorted:
        wanted = b.render(section["status"], f"{where}.status")
        status_id = find_status(names, pipeline_id, wanted)
        if status_id is None:
            raise RuleError(
                N_(
                    "%(where)s.status: there is no status %(name)s in that "
                    "pipeline (see 'flask amocrm check')",
                    where=where,
                    name=repr(wanted),
                )
            )
        if pipeline_id is None:
            pipeline_id = main_pipeline(names)
    return pipeline_id, status_id


__all__ = ["default_user", "pipeline_status", "responsible", "user"]
