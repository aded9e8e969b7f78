"""Notes: the rule's notes, the uploaded files, and the values that did not fit.

Notes of one entity are joined into one note (``group``, on by default) so the card
stays readable. Files go to a url field (the first file) and/or a note (all of them),
or with ``files = "drive"`` into amoCRM's drive (:func:`drive`; the worker uploads
them and notes those that could not go there).
A value that could not go where the rule said (a label that matches nothing, a text
cut to amoCRM's limit) is kept in a note on its entity, so nothing the visitor sent is
lost. With ``format = "html"`` notes are HTML.
"""

from __future__ import annotations

import html
import os
import re
from typing import Any

from ...errors import RuleError
from ...i18n import N_, gettext, localize, site_locale
from ..clean import LONG_LIMIT
from ..fields import field_item
from ..plan import DriveFile, DriveSpec, NoteSpec
from ..schema import files_setting
from .builder import PlanBuilder

_SECTIONS = ("lead", "contact", "company")
_REMARKS_HEAD = N_("Flask-AmoCRM could not write some values as the rule says:")


def notes(b: PlanBuilder) -> None:
    """Add the event's notes to the plan, grouped per entity where the rule says."""
    group_rule = b.rule.get("group", True)
    pending: dict[tuple[str, bool, bool], list[str]] = {}
    order: list[tuple[str, bool, bool]] = []

    def add(key: str, text: str, unique: bool, group: bool) -> None:
        if not text:
            return
        unique = unique and not b.unsorted
        slot = (key, unique, group)
        if not group:
            b.plan.notes.append(NoteSpec(key, cut(b, key, text), unique))
            return
        if slot not in pending:
            pending[slot] = []
            order.append(slot)
        pending[slot].append(text)

    for key in _SECTIONS:
        section = b.rule.get(key) or {}
        if b.plan.entity(key) is None:
            continue
        group = section.get("group", group_rule)
        items = ([section["note"]] if "note" in section else []) + list(
            section.get("notes") or []
        )
        where = f"{b.where}.{key}"
        for i, note in enumerate(items):
            spec = note if isinstance(note, dict) else {"text": note}
            path = f"{where}.note" if i == 0 and "note" in section else f"{where}.notes"
            text = b.text(
                spec["text"],
                path,
                None,
                limit=LONG_LIMIT,
                multiline=True,
                escape=b.html,
            )
            add(
                key,
                text,
                bool(spec.get("unique", False)),
                bool(spec.get("group", group)),
            )
    visit = visit_lines(b)
    lead_key = b.entity_key("lead")
    if visit and lead_key:
        add(lead_key, join(b, visit), False, group_rule)
    files_key, files_text = files(b)
    if files_text:
        add(files_key, files_text, False, group_rule)
    # Values that could not go where the rule said are kept in a note.
    for key in _SECTIONS:
        remarks = b.remarks[key]
        target = b.entity_key(key)
        if remarks and target:
            lines = [line(b, r) for r in remarks]
            head = localize(_REMARKS_HEAD, site_locale())
            add(target, join(b, [head, *lines]), False, group_rule)
    for slot in order:
        key, unique, _group = slot
        b.plan.notes.append(
            NoteSpec(key, cut(b, key, join(b, pending[slot], blank=True)), unique)
        )


def visit_lines(b: PlanBuilder) -> list[str]:
    """The lines of the visit the lead's note carries: the ad marks without a
    tracking field (``Ad marks: gbraid=…``) and the visitor's path (``Path: /sofas
    → /sofas/aurora → /cart, 6 min``); ``visit_note = false`` leaves the path out,
    and the marks but those ``tracking`` maps to ``"note"``."""
    lines = []
    if b.mark_lines:
        marks = ", ".join(f"{k}={v}" for k, v in b.mark_lines)
        lines.append(gettext("Ad marks: %(marks)s", site_locale(), marks=marks))
    path = journey_text(b.vars["journey"]) if b.rule.get("visit_note", True) else ""
    if path:
        lines.append(path)
    return [html.escape(line) for line in lines] if b.html else lines


def journey_text(journey: Any) -> str:
    """``Path: /a → /b → /c, 6 min`` from the visit's ``journey``, or ``""``."""
    if not isinstance(journey, dict):
        return ""
    pages = [
        str(p.get("path"))
        for p in journey.get("pages") or []
        if isinstance(p, dict) and p.get("path")
    ]
    if not pages:
        return ""
    landing = journey.get("landing")
    if landing and landing != pages[0]:
        pages[:0] = [str(landing), "…"]
    seconds = int(journey.get("seconds") or 0)
    locale = site_locale()  # a stored text: the site's language, not a browser's
    if seconds < 60:
        spent = gettext("%(seconds)s s", locale, seconds=seconds)
    else:
        spent = gettext("%(minutes)s min", locale, minutes=round(seconds / 60))
    pages_text = " → ".join(pages)
    return gettext("Path: %(pages)s, %(time)s", locale, pages=pages_text, time=spent)


def files(b: PlanBuilder) -> tuple[str, str]:
    """Put the first file's link into the rule's url field (``files.field``), and
    return ``(section, text)`` of the note listing the files (an empty text when
    there is none to write)."""
    setting = files_setting(b.rule.get("files", {}))
    uploaded = [f for f in b.vars["files"] if isinstance(f, dict)]
    if setting is None or not uploaded:
        return "", ""
    if setting.get("mode") == "drive":
        uploaded = drive(b, setting, uploaded)
        if not uploaded:
            return "", ""
    key = b.entity_key(setting.get("entity", "lead"))
    if not key:
        return "", ""
    entity = b.plan.entity(key)
    assert entity is not None
    with_url = [f for f in uploaded if f.get("url")]
    if "field" in setting and with_url:
        where = f"{b.where}.files.field"
        fdef = b.resolve_field(key, setting["field"], where)
        assert fdef is not None
        item = field_item(
            fdef, with_url[0]["url"], where=where, warnings=[], tz=b.env.tz
        )
        if item is not None:
            values = entity.payload.setdefault("custom_fields_values", [])
            values[:] = [v for v in values if not _same_field(v, item)] + [item]
        if len(uploaded) == 1 and not setting.get("note", False):
            return "", ""
    if setting.get("note", True) is False:
        return "", ""
    lines = [localize(N_("Files:"), site_locale())]
    for f in uploaded:
        name = str(f.get("name") or f.get("field") or "file")
        url = f.get("url")
        if url and b.html:
            lines.append(f'• <a href="{html.escape(str(url))}">{html.escape(name)}</a>')
        elif url:
            lines.append(f"- {name}: {url}")
        else:
            why = f.get("error") or N_("not saved")
            lines.append(line(b, N_("%(name)s (%(why)s)", name=name, why=why)))
    return key, join(b, lines)


def drive(
    b: PlanBuilder, setting: dict[str, Any], uploaded: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``files = "drive"``: put the saved uploads into the plan's
    :class:`~..plan.DriveSpec`; return the files left for links (those the site
    passed as links, and those that were not saved)."""
    saved = [
        (i, f)
        for i, f in enumerate(b.vars["files"])
        if isinstance(f, dict) and f.get("path") and not f.get("error")
    ]
    if not saved:
        return uploaded
    folder = b.env.upload_folder
    first = setting.get("entity", "lead")
    attach = [
        k
        for k in dict.fromkeys(setting.get("attach") or [first])
        if b.plan.entity(k) is not None
    ] or [k for k in [b.entity_key(first)] if k]
    fields: dict[str, tuple[str, int]] = {}
    owner = b.entity_key(first)
    for form_field, name in (setting.get("fields") or {}).items():
        if owner is None:
            break
        where = f"{b.where}.files.fields.{form_field}"
        found = b.resolve_field(owner, name, where)
        assert found is not None
        if found.get("type") != "file":
            raise RuleError(
                N_(
                    "%(where)s: the field %(name)s is of type %(type)s, not 'file'",
                    where=where,
                    name=repr(name),
                    type=repr(found.get("type")),
                )
            )
        fields[str(form_field)] = (owner, int(found["id"]))
    b.plan.drive = DriveSpec(
        files=[
            DriveFile(
                index=i,
                name=str(f.get("name") or f.get("field") or "file"),
                path=_inside(folder, str(f["path"])),
                size=int(f.get("size") or 0),
                url=f.get("url"),
                field=str(f.get("field") or ""),
            )
            for i, f in saved
        ],
        attach=attach,
        fields=fields,
    )
    chosen = {id(f) for _, f in saved}
    return [f for f in uploaded if id(f) not in chosen]


def _inside(folder: str | None, relative: str) -> str | None:
    """The saved file's place on disk, or ``None`` when there is no upload folder
    or the stored path leads out of it (it is never read then)."""
    if not folder:
        return None
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, relative))
    return path if path.startswith(root + os.sep) else None


def _same_field(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("field_id") == b.get("field_id") and a.get("field_code") == b.get(
        "field_code"
    )


def cut(b: PlanBuilder, key: str, text: str) -> str:
    """``text`` cut to amoCRM's note limit (:data:`LONG_LIMIT`), ending with a line
    that says how much was cut; the cut is written to the event's log. (The event
    row keeps what the visitor sent in full.)"""
    if len(text) <= LONG_LIMIT:
        return text
    tail = ("<br>" if b.html else "\n") + (
        f"… {{}} more characters were cut (amoCRM keeps {LONG_LIMIT} in a note)"
    )
    # Room for the count: it has no more digits than the whole length.
    kept = text[: LONG_LIMIT - len(tail.format(len(text)))]
    if b.html:  # never leave half a tag or an entity behind
        kept = re.sub(r"<[^>]*$|&[#\w]*$", "", kept)
    b.plan.warnings.append(
        N_(
            "%(where)s.%(key)s: a note of %(length)s characters was cut to %(max)s",
            where=b.where,
            key=key,
            length=len(text),
            max=LONG_LIMIT,
        )
    )
    return kept + tail.format(len(text) - len(kept))


def line(b: PlanBuilder, text: str) -> str:
    """A list item of a note (in the site's language: amoCRM's users read it)."""
    text = localize(text, site_locale())
    return f"• {html.escape(text)}" if b.html else f"- {text}"


def join(b: PlanBuilder, parts: list[str], blank: bool = False) -> str:
    """Lines (``blank``: paragraphs) of a note."""
    if b.html:
        return ("<br><br>" if blank else "<br>").join(parts)
    return ("\n\n" if blank else "\n").join(parts)


__all__ = ["cut", "files", "join", "journey_text", "line", "notes", "visit_lines"]
