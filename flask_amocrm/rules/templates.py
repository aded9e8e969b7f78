"""Rendering rule values: Jinja2 templates in a bounded, immutable sandbox.

Rules are written by site owners but filled with visitors' input, so templates run in
:class:`jinja2.sandbox.ImmutableSandboxedEnvironment` (no ``{{ ''.__class__ }}``
escapes, no ``str.format`` tricks, no ``data.update(...)``: a template cannot change
what it reads) with :class:`jinja2.StrictUndefined`: a misspelt variable is an error
on the event, not an empty value. Use ``{{ data.x | default('') }}`` for optional
fields.

The sandbox is bounded, because a visitor's number can reach an operator
(``{{ 'x' * (data.n | int) }}``): no operation builds more than :data:`MAX_SIZE`
characters or items (repetition, ``+``, ``~``, ``join``, ``replace``, padding), no
format width or precision is over :data:`MAX_WIDTH` (``'%0999999999d' | format(1)``,
``'{:>999999999}'.format(x)``, ``center``, ``ljust`` ...), no ``**`` or ``*`` of whole
numbers makes one over :data:`MAX_BITS` bits, and one rendering runs at most
:data:`MAX_STEPS` loop iterations and calls (nested ``range`` loops, recursive macros)
and builds at most :data:`MAX_BUILT` characters with those operations in all.
A template that goes over a bound raises :class:`BoundError`, which fails that event
with the reason (a :class:`~flask_amocrm.errors.RuleError`), not the worker.
:func:`check_cost` runs each template once when the rules are loaded, with every
variable empty, so one that breaks a bound on its own (``{{ 'a' * 10**9 }}``) is
refused at ``init_app``, at once.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from jinja2 import (
    ChainableUndefined,
    StrictUndefined,
    Template,
    TemplateError,
    nodes,
    pass_context,
    pass_eval_context,
)
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from ..errors import RuleError
from ..i18n import N_

#: A rendered value longer than this is cut: no amoCRM field holds more, and a template
#: looping over visitor input must not build megabytes.
MAX_OUTPUT = 100_000
#: The most characters (or list items) one operation of a template may build.
MAX_SIZE = 1_000_000
#: The widest format width or precision (``%5d``, ``{:>5}``, ``center(5)``).
MAX_WIDTH = 10_000
#: The most bits a whole number built by ``*`` or ``**`` may have.
MAX_BITS = 10_000
#: Loop iterations plus calls one rendering may make.
MAX_STEPS = 100_000
#: The most characters the bounded operations of one rendering may build in all.
MAX_BUILT = 10 * MAX_SIZE


class BoundError(SecurityError):
    """A template went over one of the sandbox's bounds."""


#: ``[steps, characters]`` left to the rendering under way (one list per rendering).
_steps: ContextVar[list[int] | None] = ContextVar("amocrm_template_steps", default=None)


def _spend(budget: int, amount: int, what: str) -> None:
    """Take ``amount`` from budget ``budget`` (0: steps, 1: characters) of the
    rendering under way; :class:`BoundError` naming ``what`` when it runs out."""
    left = _steps.get()
    if left is None:
        return
    left[budget] -= amount
    if left[budget] < 0:
        raise BoundError(f"the template {what} (a bound of the template sandbox)")


def _step(count: int = 1) -> None:
    _spend(0, count, f"makes more than {MAX_STEPS} loop iterations and calls")


def _charge(size: int) -> None:
    _spend(1, size, f"builds more than {MAX_BUILT} characters in all")


def _size(what: str, size: int, *, charge: bool = True) -> None:
    """An operation is about to build ``size`` characters or items."""
    if size > MAX_SIZE:
        raise BoundError(
            f"the template builds {what} of {size} characters or items; a template "
            f"may build at most {MAX_SIZE} (a bound of the template sandbox)"
        )
    if charge:
        _charge(size)


def _width(width: Any) -> None:
    if isinstance(width, bool) or not isinstance(width, int):
        return
    if width > MAX_WIDTH:
        raise BoundError(
            f"the template asks for a width of {width}; at most {MAX_WIDTH} "
            "(a bound of the template sandbox)"
        )
    _charge(max(width, 0))


def _bits(bits: int) -> None:
    """``bits``: at most how many bits a whole number about to be built has."""
    if bits > MAX_BITS:
        raise BoundError(
            f"the template builds a number of up to {bits} bits; at most {MAX_BITS} "
            "(a bound of the template sandbox)"
        )


_PERCENT = re.compile(r"%(?:%|(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?)")


def _check_percent(fmt: str) -> None:
    """Widths of a ``%`` format: none from the values (``*``), none too wide."""
    for found in _PERCENT.finditer(fmt):
        for part in found.groups():
            if part == "*":
                raise BoundError(
                    "the template takes a format width from a value ('*'); write it "
                    "as a number (a bound of the template sandbox)"
                )
            if part:
                _width(int(part))


def _check_braces(fmt: str) -> None:
    """Widths of a ``str.format`` format: none from the values, none too wide."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format itself says what is wrong
    for _literal, _name, spec, _conversion in fields:
        if not spec:
            continue
        if "{" in spec:
            raise BoundError(
                "the template takes a format width from a value ('{:{w}}'); write "
                "it as a number (a bound of the template sandbox)"
            )
        for digits in re.findall(r"\d+", spec):
            _width(int(digits))


def _sized(value: Any) -> int | None:
    if isinstance(value, str | list | tuple | bytes):
        return len(value)
    return None


def _check_str_call(text: str, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Bound a call of a string method; the arguments to call it with."""
    if name in ("ljust", "rjust", "center", "zfill") and args:
        _width(args[0])
    elif name == "expandtabs":
        tabsize = args[0] if args else 8
        if isinstance(tabsize, int) and not isinstance(tabsize, bool):
            _width(tabsize)
            _size("a text", len(text) + text.count("\t") * tabsize)
    elif name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        times = text.count(old) if old else len(text) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            times = min(times, args[2])
        _size("a text", len(text) + times * max(len(new) - len(old), 0))
    elif name == "join" and args:
        return (_collect(args[0], len(text)), *args[1:])
    return args


def _collect(items: Iterable[Any], separator: int) -> list[Any]:
    """``items`` as a list, stopped as soon as joining them would go over a bound."""
    out: list[Any] = []
    total = 0
    for item in items:
        total += len(item if isinstance(item, str) else str(item)) + separator
        if total > MAX_SIZE:
            _size("a text", total)
        out.append(item)
    _size("a text", total)
    return out


def _repeat(seq: Any, times: Any) -> None:
    size = _sized(seq)
    if size is not None and isinstance(times, int) and not isinstance(times, bool):
        if isinstance(seq, list | tuple):  # [big] * n: n references, joined later
            size += sum(len(item) for item in seq if isinstance(item, str))
        _size("a text or list", size * times)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Bounded(NodeTransformer):
    """Counts every loop iteration (:func:`_counted`) and bounds ``~``."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(
            node.iter, "_amocrm_steps", [], [], None, None, lineno=node.lineno
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        parts = nodes.List(list(node.nodes), lineno=node.lineno)
        return nodes.Filter(
            parts, "_amocrm_concat", [], [], None, None, lineno=node.lineno
        )


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _step()
        yield item


@pass_context
def _steps_filter(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    return _counted(iterable)


@pass_context
def _concat_filter(context: Context, parts: list[Any]) -> str:
    _size("a text", sum(len(p) for p in parts if isinstance(p, str)))
    joined: str = (markup_join if context.eval_ctx.autoescape else str_join)(parts)
    _size("a text", len(joined), charge=False)
    return joined


@pass_eval_context
def _join_filter(
    eval_ctx: EvalContext, value: Any, d: str = "", attribute: Any = None
) -> str:
    join = FILTERS["join"]
    if attribute is not None:
        joined: str = join(eval_ctx, value, d, attribute)
        _size("a text", len(joined))
        return joined
    result: str = join(eval_ctx, _collect(value, len(str(d))), d)
    return result


def _bounded_filter(name: str, check: Callable[..., None]) -> Callable[..., Any]:
    """Jinja2's filter ``name``, after ``check`` of its arguments."""
    original = FILTERS[name]

    def bounded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    for attr in ("jinja_pass_arg",):  # keep pass_eval_context and the like
        if hasattr(original, attr):
            setattr(bounded, attr, getattr(original, attr))
    return bounded


def _check_format(value: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(value, str):
        _check_percent(value)


def _check_center(value: Any, width: Any = 80) -> None:
    _width(width)


def _check_indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    lines = str(value).count("\n") + 1
    if _is_int(width):
        _width(width)
        _size("a text", len(str(value)) + lines * width)
    else:
        _size("a text", len(str(value)) + lines * len(str(width)))


def _check_replace(
    eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None
) -> None:
    _check_str_call(str(s), "replace", (old, new, -1 if count is None else count))


def _check_fill(value: Any, count: Any, fill_with: Any = None) -> None:
    if _is_int(count):
        _size("a list", count)


def _check_wordwrap(
    environment: Any,
    s: Any,
    width: Any = 79,
    break_long_words: Any = True,
    wrapstring: Any = None,
    *args: Any,
    **kwargs: Any,
) -> None:
    if wrapstring:
        _size("a text", len(str(s)) * (1 + len(str(wrapstring))))


class _Environment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the bounds above."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.pop("lipsum", None)  # lipsum(n=10**9)
        self.filters.update(
            _amocrm_steps=_steps_filter,
            _amocrm_concat=_concat_filter,
            format=_bounded_filter("format", _check_format),
            center=_bounded_filter("center", _check_center),
            indent=_bounded_filter("indent", _check_indent),
            join=_join_filter,
            replace=_bounded_filter("replace", _check_replace),
            batch=_bounded_filter("batch", _check_fill),
            slice=_bounded_filter("slice", _check_fill),
            wordwrap=_bounded_filter("wordwrap", _check_wordwrap),
        )
        from .signing import signed

        self.filters["signed"] = signed

    def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
        tree = _Bounded().visit(super()._parse(source, name, filename))
        tree.set_environment(self)
        return tree

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _repeat(left, right)
            _repeat(right, left)
            if _is_int(left) and _is_int(right):
                _bits(left.bit_length() + right.bit_length())
        elif operator == "**":
            if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
                _bits(left.bit_length() * right)
        elif operator == "+":
            a, b = _sized(left), _sized(right)
            if a is not None and b is not None:
                _size("a text or list", a + b)
        elif operator == "%" and isinstance(left, str):
            _check_percent(left)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _step()
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            args = _check_str_call(owner, getattr(obj, "__name__", ""), args)
            if kwargs.get("width") is not None:
                _width(kwargs["width"])
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is not None:
            _check_braces(str(value.__self__))
        return wrapper


_env = _Environment(undefined=StrictUndefined, autoescape=False)
#: For notes written as HTML (``format = "html"``): what visitors typed is escaped.
_html_env = _Environment(undefined=StrictUndefined, autoescape=True)
#: For :func:`check_cost`: every variable is empty.
_probe_env = _Environment(undefined=ChainableUndefined, autoescape=False)


@lru_cache(maxsize=1024)
def compile_template(source: str, html: bool = False) -> Template:
    """The compiled template (cached); raises :class:`jinja2.TemplateSyntaxError`.
    ``html``: values are HTML-escaped as they are put in."""
    return (_html_env if html else _env).from_string(source)


def _run(template: Template, variables: dict[str, Any]) -> str:
    """Render within the bounds; the output stops a little past :data:`MAX_OUTPUT`."""
    token = _steps.set([MAX_STEPS, MAX_BUILT])
    chunks: list[str] = []
    total = 0
    stream = template.generate(variables)
    try:
        for chunk in stream:
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_OUTPUT:
                break
    finally:
        close = getattr(stream, "close", None)  # a generator: stop it now
        if close is not None:
            close()
        _steps.reset(token)
    return "".join(chunks)


@lru_cache(maxsize=1024)
def check_cost(source: str) -> str | None:
    """Why ``source`` breaks a bound of the sandbox on its own (rendered with every
    variable empty), else ``None``. Other errors are left to delivery, where the
    event's values are known."""
    if "{" not in source:
        return None
    try:
        _run(_probe_env.from_string(source), {})
    except BoundError as exc:
        return str(exc.message)
    except Exception:
        return None
    return None


def render(
    source: str, variables: dict[str, Any], *, where: str = "", html: bool = False
) -> str:
    """Render one template string; :class:`RuleError` naming ``where`` on error."""
    if "{" not in source:
        return source
    try:
        text = _run(compile_template(source, html), variables)
    except Exception as exc:  # a filter fed the wrong thing: still the rule's fault
        error: Any = exc
        if not isinstance(exc, TemplateError):
            error = f"{type(exc).__name__}: {exc}"
        if where:
            raise RuleError(
                N_(
                    "template error in %(where)s: %(error)s (template: %(template)s)",
                    where=where,
                    error=error,
                    template=repr(source),
                )
            ) from None
        raise RuleError(
            N_(
                "template error: %(error)s (template: %(template)s)",
                error=error,
                template=repr(source),
            )
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


@lru_cache(maxsize=256)
def signed_only(source: str) -> bool:
    """Whether an ``id`` template takes nothing from the event unless through the
    ``signed`` filter: fixed text, or outputs each ending in ``| signed``."""
    from jinja2 import meta

    tree = _env.parse(source)
    if not meta.find_undeclared_variables(tree):
        return True
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return False
        for item in node.nodes:
            if isinstance(item, nodes.TemplateData):
                continue
            if not (isinstance(item, nodes.Filter) and item.name == "signed"):
                return False
    return True
