"""The docs exist in English and Russian, kept in step, and document what the code has.

English: ``README.md`` and ``docs/*.md``; Russian: ``docs/ru/README.md`` and
``docs/ru/*.md``. Every page has its twin, links to it at the top, and its links
resolve. Every config key, signal, hook, CLI command and option, and rule key the code
defines is named in each language's docs; the lists are read from the code, so a new
key fails here until both languages document it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

import flask_amocrm
from flask_amocrm import AmoCRM, dedup, vocabulary
from flask_amocrm.cli import amocrm_cli
from flask_amocrm.config import DEFAULTS
from flask_amocrm.hooks import Hooks
from flask_amocrm.rules import schema
from flask_amocrm.sandbox.__main__ import command_line
from flask_amocrm.signals import SafeSignal

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RU = DOCS / "ru"
README = ROOT / "README.md"
LANGUAGES = {"English": "README.md and docs/*.md", "Russian": "docs/ru/*.md"}

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)"
)
HTML_LINK = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")


# -- the pages -----------------------------------------------------------------------


def english_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def russian_pages() -> list[Path]:
    return sorted(RU.glob("*.md"))


def twin(page: Path) -> Path:
    """The same page in the other language."""
    if page == README:
        return RU / "README.md"
    if page == RU / "README.md":
        return README
    if page.parent == RU:
        return DOCS / page.name
    return RU / page.name


def shown(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def pages(language: str) -> list[Path]:
    return english_pages() if language == "English" else russian_pages()


def text_of(language: str) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in pages(language))


def prose_and_code(text: str) -> tuple[list[str], list[str]]:
    """The page's lines outside code fences, and the lines inside them."""
    prose: list[str] = []
    code: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    return prose, code


# -- anchors, as GitHub makes them from headings -------------------------------------


def slug(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).lower().strip()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _code = prose_and_code(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    for name in re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", "\n".join(prose)):
        found.add(name)
    return found


def links(page: Path) -> Iterator[str]:
    prose, _code = prose_and_code(page.read_text(encoding="utf-8"))
    for line in prose:
        line = INLINE_CODE.sub("", line)
        yield from LINK.findall(line)
        yield from HTML_LINK.findall(line)


# -- the pages in both languages -----------------------------------------------------


def test_every_page_has_its_twin_in_the_other_language() -> None:
    problems = [
        f"{shown(page)} has no {'Russian' if page.parent != RU else 'English'} "
        f"twin: write {shown(twin(page))}"
        for page in [*english_pages(), *russian_pages()]
        if not twin(page).is_file()
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_page_links_to_its_twin_at_the_top(language: str) -> None:
    problems = []
    for page in pages(language):
        top = page.read_text(encoding="utf-8").lstrip().splitlines()[:1]
        other = Path(os.path.relpath(twin(page), page.parent)).as_posix()
        switch = "English | [Русский]" if language == "English" else "[English]"
        if not top or switch not in top[0] or f"({other})" not in top[0]:
            problems.append(
                f"{shown(page)}: the first line is not the language switch "
                f"({switch}...({other}) ... )"
            )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("language", LANGUAGES)
def test_links_between_pages_resolve(language: str) -> None:
    problems = []
    for page in pages(language):
        for target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                problems.append(f"{shown(page)}: {target} - no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(
                    f"{shown(page)}: {target} - no heading makes #{anchor} in "
                    f"{linked.relative_to(ROOT).as_posix()}"
                )
    problems = list(dict.fromkeys(problems))  # one line per broken link and page
    assert not problems, "\n".join(problems)


def test_the_russian_readme_keeps_the_two_setup_commands() -> None:
    """Like the English one, it sets up with ``make demo`` and ``make test``."""
    for page in (p for p in (README, RU / "README.md") if p.is_file()):
        _prose, code = prose_and_code(page.read_text(encoding="utf-8"))
        commands = {m[0] for line in code if (m := re.findall(r"^\s*(make \S+)", line))}
        assert commands == {"make demo", "make test"}, f"{shown(page)}: {commands}"


# -- the names the code defines ------------------------------------------------------


def config_keys() -> list[str]:
    return sorted(DEFAULTS)


def signals() -> list[str]:
    return sorted(
        name
        for name in flask_amocrm.__all__
        if isinstance(getattr(flask_amocrm, name), SafeSignal)
    )


def hooks() -> list[str]:
    """The decorators of :class:`AmoCRM` that register a hook."""
    names = [f.name for f in dataclasses.fields(Hooks)] + ["admin_auth"]
    for name in names:
        assert callable(getattr(AmoCRM, name, None)), f"AmoCRM.{name} is not a method"
    return names


def commands(group: click.Group = amocrm_cli, prefix: str = "") -> Iterator[str]:
    for name, command in sorted(group.commands.items()):
        yield prefix + name
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")


def options(group: click.Group = amocrm_cli, prefix: str = "") -> Iterator[str]:
    """``command --option`` for every option of every command."""
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from options(command, f"{prefix}{name} ")
            continue
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in (*param.opts, *param.secondary_opts):
                    if opt.startswith("--"):
                        yield f"{prefix}{name} {opt}"


def sandbox_options() -> list[str]:
    """The options of ``python -m flask_amocrm.sandbox``."""
    return [
        opt
        for action in command_line()._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    ]


def rule_keys() -> list[tuple[str, str]]:
    """(key, where it goes) for every key the rules take, and the words they use."""
    found: list[tuple[str, str]] = [(k, "the rules") for k in schema.TOP_KEYS]
    found += [(k, "a rule") for k in sorted(schema.RULE_KEYS)]
    found += [
        (k, f"a rule of {kind}s")
        for kind, keys in schema.EVENT_RULE_KEYS.items()
        for k in keys
    ]
    for entity, keys in schema.SECTION_KEYS.items():
        found += [(k, f"the {entity} section") for k in sorted(keys)]
    found += [(k, "a task") for k in sorted(schema.TASK_KEYS)]
    found += [(k, "a note table") for k in sorted(schema.NOTE_KEYS)]
    found += [(k, "unsorted") for k in sorted(schema.UNSORTED_KEYS)]
    for entity, keys in schema.DUPLICATES_KEYS.items():
        found += [(k, f"{entity}.duplicates") for k in sorted(keys)]
    found += [(k, "duplicates.strategy") for k in dedup.STRATEGIES]
    found += [(k, "duplicates.require") for k in dedup.REQUIRE]
    found += [(k, "duplicates.scope") for k in dedup.SCOPES]
    found += [(k, "files") for k in sorted(schema.FILES_KEYS)]
    found += [(k, "files.mode") for k in schema.FILES_MODES]
    found += [(k, "lock") for k in vocabulary.LOCK_KEYS]
    found += [(k, "tracking") for k in vocabulary.TRACKING_TAGS]
    found += [(k, "AMOCRM_AD_MARKS presets") for k in vocabulary.AD_MARK_PRESETS]
    return found


def named(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def code_of(text: str) -> str:
    """Only the code of a text: fenced blocks and inline code spans."""
    prose, code = prose_and_code(text)
    spans = [m.group(2) for line in prose for m in INLINE_CODE.finditer(line)]
    return "\n".join(code + spans)


def missing(language: str) -> list[str]:
    text = text_of(language)
    code = code_of(text)
    where = LANGUAGES[language]
    gaps = [f"config key {k}" for k in config_keys() if not named(k, text)]
    gaps += [f"signal {s}" for s in signals() if not named(s, code)]
    gaps += [f"hook {h}" for h in hooks() if not named(h, code)]
    gaps += [
        f"CLI command 'flask amocrm {c}'"
        for c in commands()
        if not named(f"amocrm {c}", text) and not named(c, code)
    ]
    gaps += [
        f"CLI option 'flask amocrm {o}'"
        for o in options()
        if not named(o.rsplit(" ", 1)[1], code)
    ]
    gaps += [
        f"sandbox option 'python -m flask_amocrm.sandbox {o}'"
        for o in sandbox_options()
        if not named(o, code)
    ]
    gaps += [
        f"rule key {k!r} ({what})" for k, what in rule_keys() if not named(k, code)
    ]
    return [f"{gap} is missing from the {language} docs ({where})" for gap in gaps]


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_docs_name_everything_the_code_has(language: str) -> None:
    gaps = missing(language)
    assert not gaps, "\n".join(gaps)


def test_the_lists_are_read_from_the_code() -> None:
    """The lists above are the code's, not empty: a broken import would pass."""
    assert "AMOCRM_BASE_URL" in config_keys()
    assert {"form_submitted", "lead_added"} <= set(signals())
    assert {"before_push", "spam_check", "admin_auth"} <= set(hooks())
    assert "webhooks install" in set(commands())
    assert "--seed-contacts" in sandbox_options()
    assert ("within", "lead.duplicates") in rule_keys()
