"""Entity ids a form carries, signed with the site's secret key.

A rule may update an existing lead, contact or company named by the event
(``id = "{{ data.contact_id }}"``), but amoCRM's ids are sequential: taken as the
visitor sent it, any visitor could add their phone, tags and notes to anyone's
contact. So an id that comes from the event must carry the site's signature: the site
signs the ids it renders into its own pages with :func:`sign_id` (an
:class:`itsdangerous.Signer` keyed with the app's ``SECRET_KEY``, salted per entity,
so a lead's signed id is no contact's), and the rule verifies it with the ``signed``
filter::

    id = "{{ data.contact_id | default('') | signed }}"

A template that takes an id from the event without ``signed`` is refused when the
rules are loaded (:func:`~flask_amocrm.rules.templates.signed_only`); a value without
a valid signature fails the event with the reason, and nothing is updated.
"""

from __future__ import annotations

from typing import Any

from itsdangerous import BadSignature, Signer
from jinja2 import Undefined, pass_context
from jinja2.exceptions import TemplateRuntimeError
from jinja2.runtime import Context

from ..i18n import N_

#: The entities a section's ``id`` names.
ENTITIES = ("lead", "contact", "company")
#: The name under which the section's :class:`IdCheck` reaches its ``id`` template.
CHECK_VARIABLE = "_amocrm_id_check"


def unsigned_id(entity: str) -> str:
    """Why an ``id`` template that takes the id from the event as it is is refused."""
    return N_(
        "takes the entity's id from the event without the site's signature, so any "
        "visitor could update anyone's entity (ids are sequential): render the id "
        "into your form signed (flask_amocrm.sign_id('%(entity)s', id)) and verify it "
        "here with the signed filter: \"{{ data.%(entity)s_id | default('') | "
        'signed }}" (docs/rules.md, section keys)',
        entity=entity,
    )


#: A secret key, or several (older ones first, the current one last: ids signed with
#: any of them verify, new ones are signed with the last).
SecretKey = str | bytes | list[str | bytes]


def _signer(entity: str, secret_key: SecretKey) -> Signer:
    keys = secret_key if isinstance(secret_key, list) else [secret_key]
    as_bytes = [k.encode() if isinstance(k, str) else k for k in keys]
    return Signer(as_bytes, salt=f"flask-amocrm.{entity}-id")


def sign_id(
    entity: str, entity_id: int | str, secret_key: str | bytes | None = None
) -> str:
    """``entity_id`` of a ``lead``, ``contact`` or ``company``, signed for a rule's
    ``id = "{{ data.x | signed }}"``: put it in a hidden field of a form the site
    renders. ``secret_key``: the app's ``SECRET_KEY`` (of the current app when not
    given)."""
    if entity not in ENTITIES:
        raise ValueError(f"entity must be one of {', '.join(ENTITIES)}, not {entity!r}")
    text = str(entity_id).strip()
    if not text.isdigit():
        raise ValueError(f"an entity id is a whole number, not {entity_id!r}")
    if secret_key is None:
        from flask import current_app

        secret_key = current_app.secret_key
        if not secret_key:
            raise RuntimeError("sign_id needs the app's SECRET_KEY to be set.")
    return _signer(entity, secret_key).sign(str(int(text))).decode("ascii")


class SignedIdError(TemplateRuntimeError):
    """A section's ``id`` did not carry the site's signature."""


class IdCheck:
    """What the ``signed`` filter verifies a section's id with (the template sees
    no key: attributes starting with ``_`` are closed to the sandbox)."""

    __slots__ = ("_entity", "_secret_key")

    def __init__(self, entity: str, secret_key: SecretKey | None) -> None:
        self._entity = entity
        self._secret_key = secret_key

    def __repr__(self) -> str:
        return f"<signed {self._entity} id check>"

    def verify(self, value: Any) -> str:
        """The id ``value`` carries, if the site signed it for this entity."""
        if not self._secret_key:
            raise SignedIdError(
                N_(
                    "the %(entity)s id is signed, but the app has no secret key "
                    "(SECRET_KEY) to verify it with",
                    entity=self._entity,
                )
            )
        try:
            raw = _signer(self._entity, self._secret_key).unsign(str(value).strip())
        except BadSignature:
            raise SignedIdError(
                N_(
                    "the %(entity)s id sent does not carry the site's signature "
                    "(sign_id('%(entity)s', id) with the app's SECRET_KEY); it was "
                    "changed or signed for something else, so nothing was updated",
                    entity=self._entity,
                )
            ) from None
        return raw.decode("ascii")


@pass_context
def signed(context: Context, value: Any) -> Any:
    """The ``signed`` filter: the id a signed value carries; empty stays empty."""
    if isinstance(value, Undefined) or value is None or not str(value).strip():
        return ""
    check = context.get(CHECK_VARIABLE)
    if not isinstance(check, IdCheck):
        raise SignedIdError(N_("the 'signed' filter is for a section's 'id' only"))
    return check.verify(value)


__all__ = [
    "CHECK_VARIABLE",
    "ENTITIES",
    "IdCheck",
    "SignedIdError",
    "sign_id",
    "signed",
    "unsigned_id",
]
