"""Rules hardening (issue 11, items 10, 13, 22, 23) without Flask or network: the
template sandbox's bounds, signed entity ids, dates and prices as visitors write them,
the docs' quotes, and notes cut to amoCRM's limit."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flask_amocrm.errors import RuleError
from flask_amocrm.rules.clean import LONG_LIMIT, parse_number
from flask_amocrm.rules.fields import parse_when
from flask_amocrm.rules.plan import PlanEnv
from flask_amocrm.rules.render import build_plan
from flask_amocrm.rules.schema import validate_rules
from flask_amocrm.rules.templates import render

NESTED_RANGES = (
    "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "rules.md"


def _event(data: dict[str, Any]) -> Any:
    return SimpleNamespace(
        id=1,
        uid="u1",
        kind="form",
        source="f",
        data=data,
        files=[],
        remote={},
        attempts=1,
        context={"site": {"domain": "shop.test"}},
    )


def _plan(rule: dict[str, Any], data: dict[str, Any], **env: Any) -> Any:
    return build_plan(rule, _event(data), where="forms.f", env=PlanEnv(**env))


def _fails_fast(source: str, variables: dict[str, Any], words: str) -> str:
    """``source`` fails with a :class:`RuleError` containing ``words`` (a bound
    stops it: run out, these templates would take hours); the error's text. (How
    soon the bounds stop them is a matter of the clock, not of a test.)"""
    with pytest.raises(RuleError) as info:
        render(source, variables, where="forms.f.lead.name")
    message = str(info.value)
    assert "forms.f.lead.name" in message and words in message, message
    return message


# -- item 10: the sandbox is bounded and immutable -----------------------------------


def test_templates_cannot_mutate_their_inputs() -> None:
    data: dict[str, Any] = {"a": "1", "items": ["x"]}
    _fails_fast("{{ data.update({'a': 'forged'}) }}", {"data": data}, "unsafe")
    _fails_fast("{{ data['items'].append('y') }}", {"data": data}, "unsafe")
    assert data == {"a": "1", "items": ["x"]}


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 10**9 }}",
        "{{ 10**9 * 'a' }}",
        "{{ ['a'] * 10**9 }}",
        "{{ 'x' * (data.n | int) }}",
        "{{ ('x' * 900000) ~ ('x' * 900000) }}",
        "{{ ('x' * 900000) + ('x' * 900000) }}",
        "{{ 10 ** (10 ** 8) }}",
        "{{ (2 ** 9000) * (2 ** 9000) }}",
        "{{ '%0999999999d' | format(1) }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ '%*d' % (999999999, 1) }}",
        "{{ '{:0999999999}'.format(1) }}",
        "{{ 'a' | center(999999999) }}",
        "{{ 'a'.ljust(999999999) }}",
        "{{ 'a' | indent(999999999, true) }}",
        "{{ ('x' * 1000).replace('x', 'y' * 100000) }}",
        "{{ (['x' * 100000] * 1000) | join }}",
        "{{ (['x' * 100000] * 10) | map('upper') | join }}",
        "{{ range(100000) | map('string') | map('center', 9000) | list | length }}",
        "{{ dict(a='x' * 900000, b='y' * 900000).values() | join }}",
        NESTED_RANGES,
        "{% for a in data.l %}{% for b in data.l %}{% for c in data.l %}"
        "{% endfor %}{% endfor %}{% endfor %}",
    ],
)
def test_templates_are_bounded(source: str) -> None:
    variables = {"data": {"n": str(200_000_000), "l": list(range(1000))}}
    _fails_fast(source, variables, "bound")


def test_what_stays_within_the_bounds_still_works() -> None:
    variables = {"data": {"n": "3", "l": [1, 2, 3]}}
    assert render("{{ 'ab' * (data.n | int) }}", variables) == "ababab"
    assert render("{{ '%05d' | format(42) }}|{{ '%.2f' % 1.5 }}", variables) == (
        "00042|1.50"
    )
    assert render("{{ '{:>4}'.format('a') }}", variables) == "   a"
    assert render("{{ 2 ** 10 }} {{ 'a' ~ 'b' }} {{ 1 + 2 }}", variables) == "1024 ab 3"
    assert (
        render(
            "{% for a in data.l %}{% for b in data.l %}{{ a * b }},{% endfor %}"
            "{% endfor %}",
            variables,
        )
        == "1,2,3,2,4,6,3,6,9,"
    )
    assert render("{{ range(3) | join('-') }}", variables) == "0-1-2"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 10**9 }}",
        NESTED_RANGES,
        "{{ '%0999999999d' | format(1) }}",
    ],
)
def test_a_rules_cost_is_checked_at_load(source: str) -> None:
    with pytest.raises(RuntimeError) as info:
        validate_rules({"forms": {"a": {"lead": {"name": source}}}})
    assert "forms.a.lead.name" in str(info.value) and "bound" in str(info.value)


def test_rules_that_only_use_visitor_data_load() -> None:
    validate_rules(
        {
            "forms": {
                "a": {
                    "lead": {
                        "name": "{{ 'x' * (data.n | int) }}",
                        "note": "{% for k in data %}{{ k }}{% endfor %}",
                    }
                }
            }
        }
    )


# -- item 13: entity ids from the event are signed -----------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ data.contact_id }}",
        "{{ data.contact_id | default('') }}",
        "{{ data.contact_id | signed | int }}",
        "{% if data.a %}{{ data.a | signed }}{% endif %}",
        "{{ cookies.cid }}",
    ],
)
def test_an_id_from_the_event_must_be_signed(template: str) -> None:
    with pytest.raises(RuntimeError) as info:
        validate_rules({"forms": {"a": {"contact": {"id": template, "name": "x"}}}})
    message = str(info.value)
    assert "forms.a.contact.id" in message and "signed" in message, message


def test_signed_and_fixed_ids_load() -> None:
    validate_rules(
        {
            "forms": {
                "a": {
                    "contact": {
                        "id": "{{ data.contact_id | default('') | signed }}",
                        "name": "x",
                    },
                    "lead": {"id": "123", "name": "x"},
                    "company": {"id": 5, "name": "x"},
                }
            }
        }
    )


def test_a_signed_id_is_verified_with_the_sites_secret() -> None:
    from flask_amocrm.rules.signing import sign_id

    rule = {
        "contact": {"id": "{{ data.cid | default('') | signed }}", "name": "x"},
        "lead": {"id": "{{ data.lid | default('') | signed }}", "name": "x"},
    }
    good = {
        "cid": sign_id("contact", 42, "s3cret"),
        "lid": sign_id("lead", 7, "s3cret"),
    }
    plan = _plan(rule, good, secret_key="s3cret")
    assert plan.contact.id == 42 and plan.lead.id == 7
    assert _plan(rule, {}, secret_key="s3cret").contact.id is None  # empty: create
    forged = [
        {"cid": "42"},  # unsigned
        {"cid": sign_id("contact", 42, "other")},  # another site's key
        {"cid": sign_id("lead", 42, "s3cret")},  # a lead's id given as a contact's
        {"cid": sign_id("contact", 42, "s3cret")[:-1] + "x"},  # tampered
        {"cid": sign_id("contact", 42, "s3cret").replace("42", "43", 1)},
    ]
    for data in forged:
        with pytest.raises(RuleError) as info:
            _plan(rule, data, secret_key="s3cret")
        message = str(info.value)
        assert "forms.f.contact.id" in message and "signature" in message, message
    with pytest.raises(RuleError, match="secret"):
        _plan(rule, good)  # no secret key to verify with


def test_an_unsigned_id_template_is_refused_at_delivery_too() -> None:
    rule = {"contact": {"id": "{{ data.cid }}", "name": "x"}}
    with pytest.raises(RuleError, match="forms.f.contact.id.*signed"):
        _plan(rule, {"cid": "42"}, secret_key="s3cret")


def _toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOCS.read_text("utf-8"), re.S)


def test_the_docs_rule_examples_load() -> None:
    blocks = _toml_blocks()
    assert len(blocks) > 5
    checked = 0
    for block in blocks:
        loaded = tomllib.loads(block)
        if set(loaded) <= {"defaults", "forms", "mails"}:  # not a lone snippet
            validate_rules(loaded)
            checked += 1
    assert checked > 5


# -- item 22: what the docs promise --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("17 05 2024", "2024-05-17"),
        ("17 05 2024 14:30", "2024-05-17 14:30"),
        ("17.05.2024", "2024-05-17"),
    ],
)
def test_every_documented_date_format_is_read(text: str, expected: str) -> None:
    from datetime import UTC

    assert parse_when(text, tz=UTC) == parse_when(expected, tz=UTC) is not None


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("1500 руб.", 1500.0),
        ("1 500,50 руб.", 1500.5),
        ("1500р.", 1500.0),
        ("1500 р", 1500.0),
        ("1500 RUB", 1500.0),
        ("1 500 ₽", 1500.0),
        ("$20", 20.0),
        ("20 USD.", 20.0),
        ("руб. 1500", 1500.0),
        ("1500 руб. 50 коп.", None),
        ("12.05.2024", None),
        ("abc.", None),
    ],
)
def test_prices_are_read_as_visitors_write_them(text: str, number: Any) -> None:
    assert parse_number(text) == number


def test_the_docs_quote_the_messages_the_code_gives() -> None:
    docs = DOCS.read_text("utf-8")
    with pytest.raises(RuntimeError) as info:
        validate_rules({"forms": {"a": {"lead": {"nmae": "x"}}}})
    assert f"RuntimeError: {info.value}" in docs
    with pytest.raises(RuleError) as error:
        render(
            "Callback: {{ data.name }}", {"data": {}}, where="forms.callback.lead.name"
        )
    assert f"rule error: {error.value}" in docs
    assert f"Error: {error.value}" in docs
    # the messages of items 10 and 13 that docs/rules.md quotes
    from flask_amocrm.rules.signing import CHECK_VARIABLE, IdCheck

    with pytest.raises(RuleError) as error:
        render(
            "{{ 'x' * (data.n | int) }}",
            {"data": {"n": "200000000"}},
            where="forms.f.lead.name",
        )
    assert f"rule error: {error.value}" in docs
    with pytest.raises(RuleError) as error:
        render(
            "{{ data.contact_id | default('') | signed }}",
            {"data": {"contact_id": "5"}, CHECK_VARIABLE: IdCheck("contact", "k")},
            where="forms.again.contact.id",
        )
    assert f"rule error: {error.value}" in docs
    with pytest.raises(RuntimeError) as info:
        validate_rules(
            {"forms": {"again": {"contact": {"id": "{{ data.contact_id }}"}}}}
        )
    assert f"RuntimeError: {info.value}" in docs


# -- item 23: ungrouped notes are cut like grouped ones ------------------------------


@pytest.mark.parametrize("group", [True, False])
def test_every_note_is_cut_to_amocrms_limit(group: bool) -> None:
    rule = {
        "group": group,
        "lead": {
            "name": "{{ data.name }}",
            "notes": ["{{ data.a }}", "{{ data.b }}"],
        },
    }
    data = {"name": "N" * 30_000, "a": "a" * 15_000, "b": "b" * 15_000}
    plan = _plan(rule, data)
    assert plan.notes
    for note in plan.notes:
        assert len(note.text) <= LONG_LIMIT
    cut = [n.text for n in plan.notes if "characters were cut" in n.text]
    assert cut, [n.text[-200:] for n in plan.notes]
    assert any("was cut to 20000" in w for w in plan.warnings), plan.warnings


def test_ids_signed_before_a_secret_key_rotation_still_verify() -> None:
    from flask_amocrm.rules.signing import IdCheck, SignedIdError, sign_id

    old = sign_id("contact", 5, secret_key="old secret")
    rotated = IdCheck("contact", ["old secret", "new secret"])
    assert rotated.verify(old) == "5"
    assert rotated.verify(sign_id("contact", 6, secret_key="new secret")) == "6"
    with pytest.raises(SignedIdError):
        IdCheck("contact", ["new secret"]).verify(old)
