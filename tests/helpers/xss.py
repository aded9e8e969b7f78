"""Hostile text for the admin pages: each value must be shown as text, never run.

A page passes when none of :data:`CORPUS` runs (the browser's ``window.__xss`` stays
unset and no dialog opens) and each value can be read back as the text it is.
"""

from __future__ import annotations

from typing import Any

#: Values a visitor, a form, a file name or amoCRM's answer could carry.
CORPUS = (
    "<script>window.__xss=1</script>",
    '"><img src=x onerror="window.__xss=2">',
    "'><svg onload=window.__xss=3>",
    "javascript:window.__xss=4",
    "{{ 7*7 }}<b>bold</b>",
    "</textarea><script>window.__xss=5</script>",
    '<a href="javascript:window.__xss=6">click</a>',
    "\u202eevil\u202c <iframe src=javascript:window.__xss=7>",
)


def watch(page: Any) -> list[str]:
    """Record every dialog the page opens (an ``alert()`` that ran) in the list
    returned, dismissing it."""
    opened: list[str] = []

    def on_dialog(dialog: Any) -> None:
        opened.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return opened


def assert_inert(page: Any, opened: list[str]) -> None:
    """Nothing of the corpus ran on ``page``."""
    assert page.evaluate("window.__xss === undefined"), "a hostile value ran"
    assert not opened, f"a dialog opened: {opened}"
