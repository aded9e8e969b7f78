"""The rules: what ``flask amocrm check`` says of them, the rules themselves, and a
preview of the calls one rule makes for sample data (``flask amocrm preview``).

The check reads the account's metadata from amoCRM, so it runs when asked
(``?check=1``), not on every visit; when amoCRM cannot be read the page says why. The
preview runs the real delivery code against a recording client
(:func:`flask_amocrm.worker.preview.preview`): nothing is sent, nothing is stored.
"""

from __future__ import annotations

import json
from typing import Any

from flask import render_template, request

from ..errors import AmoCRMError, RuleError
from ..i18n import gettext
from ..rules.schema import find_rule, rule_names
from ..state import get_state
from ..worker.health import check_account
from ..worker.preview import Preview, preview
from .blueprint import bp

#: The most characters of sample data a preview takes.
SAMPLE_LIMIT = 20000


class SampleError(ValueError):
    """Sample data that cannot be read; the message says where."""


def parse_sample(text: str) -> dict[str, Any]:
    """The sample data of the preview form: a JSON object, or ``key=value`` lines
    (blank lines and lines starting with ``#`` are skipped)."""
    text = text.strip()
    if len(text) > SAMPLE_LIMIT:
        raise SampleError(
            gettext(
                "The sample data is too long (at most %(n)s characters).",
                n=SAMPLE_LIMIT,
            )
        )
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SampleError(
                gettext("The sample data is not valid JSON: %(error)s", error=str(exc))
            ) from None
        if not isinstance(data, dict):
            raise SampleError(gettext("The sample data must be a JSON object."))
        return data
    data = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SampleError(
                gettext(
                    "Line %(n)s of the sample data is not key=value: %(line)s",
                    n=number,
                    line=line[:200],
                )
            )
        data[key.strip()] = value.strip()
    return data


def _rules() -> list[dict[str, Any]]:
    rules = get_state().settings.rules
    out = []
    for kind, source, where in rule_names(rules):
        section = "forms" if kind == "form" else "mails"
        written = (rules.get(section) or {}).get(source)
        out.append(
            {
                "value": f"{kind}:{source}",
                "kind": kind,
                "source": source,
                "where": where,
                "text": json.dumps(written, ensure_ascii=False, indent=2, default=str),
            }
        )
    return out


def _check() -> dict[str, Any]:
    try:
        return {"problems": check_account(get_state())}
    except AmoCRMError as exc:
        return {"error": str(exc)}


def _dump(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False, indent=2, default=str)


def _render(**context: Any) -> str:
    rules = get_state().settings.rules
    defaults = rules.get("defaults")
    return render_template(
        "amocrm_admin/rules.html",
        rules=_rules(),
        defaults=_dump(defaults) if defaults else None,
        dump=_dump,
        **context,
    )


@bp.get("/rules")
def rules() -> str:
    """The rules, the check when asked, and the preview form."""
    check = _check() if request.args.get("check") else None
    return _render(check=check, chosen=None, sample="", page_url="")


@bp.post("/rules/preview")
def rules_preview() -> str:
    """The calls the chosen rule would make for the sample data."""
    state = get_state()
    chosen = request.form.get("rule", "")
    sample = request.form.get("data", "")
    page_url = request.form.get("page", "").strip()
    kind, _sep, source = chosen.partition(":")
    rule = (
        find_rule(state.settings.rules, kind, source)
        if kind in ("form", "mail")
        else None
    )
    result: Preview | None = None
    error = None
    if rule is None:
        error = gettext("Choose one of the rules.")
    else:
        try:
            data = parse_sample(sample)
            result = preview(
                state, rule, kind=kind, source=source, data=data, page=page_url or None
            )
        except SampleError as exc:
            error = str(exc)
        except RuleError as exc:
            error = gettext("The rule cannot be rendered: %(error)s", error=str(exc))
        except AmoCRMError as exc:
            error = gettext("The preview could not be made: %(error)s", error=str(exc))
    return _render(
        check=None,
        chosen=chosen,
        sample=sample,
        page_url=page_url,
        result=result,
        preview_error=error,
    )
