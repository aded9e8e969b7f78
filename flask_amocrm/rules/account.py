"""The account's names, as rules see them: what a name in a rule resolves to.

Rules name users, pipelines, statuses, fields and task types the way people do; the
account's metadata turns them into ids. :class:`AccountNames` is all rules ask of it
(``flask_amocrm.amo.metadata.AccountMetadata`` has these methods), so rendering never
imports the client. The ``find_*`` functions below are the one place that decides
whether a name resolves: rendering (:mod:`.render`) and ``flask amocrm check``
(:mod:`.check`) both call them.
"""

from __future__ import annotations

from typing import Any, Protocol

#: Why :func:`find_user` found no user to give an entity to.
NO_USER = "is not a user of the account"
INACTIVE_USER = "is not active"


class AccountNames(Protocol):
    """Looking names up in one amoCRM account. Each method takes an id or a name (a
    user also by e-mail, a field or task type also by code), compared without case,
    and returns the item as the API describes it, or ``None``."""

    def user(self, key: Any) -> dict[str, Any] | None: ...

    def pipeline(self, key: Any) -> dict[str, Any] | None: ...

    def main_pipeline(self) -> dict[str, Any] | None: ...

    def status(self, pipeline_id: Any, key: Any) -> dict[str, Any] | None: ...

    def field(self, entity: str, key: Any) -> dict[str, Any] | None: ...

    def task_type(self, key: Any) -> dict[str, Any] | None: ...


def find_user(names: AccountNames, wanted: Any) -> tuple[int | None, str | None]:
    """``(id, None)`` for the active user ``wanted`` names, else ``(None, why)`` with
    :data:`NO_USER` or :data:`INACTIVE_USER`."""
    user = names.user(str(wanted).strip())
    if user is None:
        return None, NO_USER
    if not user.get("is_active", True):
        return None, INACTIVE_USER
    return int(user["id"]), None


def find_pipeline(names: AccountNames, wanted: Any) -> int | None:
    """The id of the pipeline ``wanted`` names."""
    pipeline = names.pipeline(str(wanted).strip())
    return int(pipeline["id"]) if pipeline is not None else None


def find_status(
    names: AccountNames, pipeline_id: int | None, wanted: Any
) -> int | None:
    """The id of the status ``wanted`` names in that pipeline (``None``: the main
    one)."""
    status = names.status(pipeline_id, str(wanted).strip())
    return int(status["id"]) if status is not None else None


def main_pipeline(names: AccountNames) -> int | None:
    """The id of the account's main pipeline."""
    main = names.main_pipeline()
    return int(main["id"]) if main else None


def find_task_type(names: AccountNames, wanted: Any) -> int | None:
    """The id of the task type ``wanted`` names."""
    found = names.task_type(str(wanted).strip())
    return int(found["id"]) if found is not None else None


__all__ = [
    "INACTIVE_USER",
    "NO_USER",
    "AccountNames",
    "find_pipeline",
    "find_status",
    "find_task_type",
    "find_user",
    "main_pipeline",
]
