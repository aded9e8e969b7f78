"""Rendering rule values: Jinja2 templates in a sandboxed environment.

Rules are written by site owners but filled with visitors' input, so templates run in
:class:`jinja2.sandbox.SandboxedEnvironment` (no ``{{ ''.__class__ }}`` escapes, no
``str.format`` tricks) with :class:`jinja2.StrictUndefined`: a misspelt variable is an
error on the event, not an empty value. Use ``{{ data.x | default('') }}`` for optional
fields.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from ..errors import RuleError

#: A rendered value longer than this is cut: no amoCRM field holds more, and a template
#: looping over visitor input must not build megabytes.
MAX_OUTPUT = 100_000

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
#: For notes written as HTML (``format = "html"``): what visitors typed is escaped.
_html_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


@lru_cache(maxsize=1024)
def compile_template(source: str, html: bool = False) -> Template:
    """The compiled template (cached); raises :class:`jinja2.TemplateSyntaxError`.
    ``html``: values are HTML-escaped as they are put in."""
    return (_html_env if html else _env).from_string(source)


def render(
    source: str, variables: dict[str, Any], *, where: str = "", html: bool = False
) -> str:
    """Render one template string; :class:`RuleError` naming ``where`` on error."""
    if "{" not in source:
        return source
    label = f" in {where}" if where else ""
    try:
        text = compile_template(source, html).render(variables)
    except TemplateError as exc:
        raise RuleError(
            f"template error{label}: {exc} (template: {source!r})"
        ) from None
    except Exception as exc:  # a filter fed the wrong thing: still the rule's fault
        raise RuleError(
            f"template error{label}: {type(exc).__name__}: {exc} (template: {source!r})"
        ) from None
    return text[:MAX_OUTPUT]


def render_value(
    value: Any, variables: dict[str, Any], *, where: str = "", html: bool = False
) -> Any:
    """Render strings inside lists and dicts; leave numbers and booleans as they are."""
    if isinstance(value, str):
        return render(value, variables, where=where, html=html)
    if isinstance(value, list):
        return [
            render_value(v, variables, where=f"{where}[{i}]", html=html)
            for i, v in enumerate(value)
        ]
    if isinstance(value, dict):
        return {
            k: render_value(v, variables, where=f"{where}.{k}", html=html)
            for k, v in value.items()
        }
    return value
