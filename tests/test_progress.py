"""``Progress``: the typed ``event.remote``, read from every stored shape."""

from __future__ import annotations

from flask_amocrm.progress import Progress


def test_empty_and_none_read_as_nothing_done() -> None:
    for stored in (None, {}):
        progress = Progress.from_json(stored)
        assert progress.done is None and progress.ids() == {
            "lead": None,
            "contact": None,
            "company": None,
        }
        assert progress.to_json() == {}


def test_round_trip_of_a_full_record() -> None:
    stored = {
        "lead_id": 1,
        "contact_id": 2,
        "company_id": 3,
        "unsorted_uid": "u-1",
        "note_ids": {"leads": [7, 8]},
        "task_ids": [9],
        "done": ["lookup", "create"],
        "notes_done": ["leads"],
        "found": {"contact": 2},
        "duplicates": {"contact": [2, 5]},
        "duplicate_notes": {"contact": "Possible duplicates:"},
        "linked": ["lead-contact"],
        "merged": True,
        "sending": True,
        "found_again": True,
        "later": {"kept": 1},
    }
    progress = Progress.from_json(stored)
    assert progress.found == {"contact": 2} and progress.extra == {"later": {"kept": 1}}
    assert progress.to_json() == stored


def test_old_shapes() -> None:
    # Before steps were recorded: no "done" at all; ids may be null.
    old = Progress.from_json({"lead_id": "5", "contact_id": None})
    assert old.done is None and old.lead_id == 5 and old.contact_id is None
    assert old.ids()["lead"] == 5


def test_mark_done_returns_a_copy() -> None:
    progress = Progress()
    done = progress.mark_done("create").mark_done("create")
    assert progress.done is None and done.done == ["create"]
    assert done.is_done("create") and not done.is_done("tasks")
