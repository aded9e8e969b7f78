"""Files into amoCRM's drive (``files = "drive"``), against the sandbox over HTTP:
the upload, the attach made once whatever answer is lost, the bytes read back, the
``file`` field, what cannot go to the drive, and ``files = "links"`` as before."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from flask_amocrm.models import DELIVERED, RETRYING, Event
from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import field_values, form_site, stored_events

#: A small PDF, larger than the part size the tests set, so it goes in three parts.
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 10 + b"\n%%EOF\n"
PART = 1024


def _rules(files: Any = "drive", **lead: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "contact": {"name": "{{ data.name }}"},
        "lead": {"name": "CV from {{ data.name }}", **lead},
    }
    if files is not None:
        rule["files"] = files
    return {"forms": {"cv": rule}}


def _site(make_app: Any, tmp_path: Path, rules: dict[str, Any], **config: Any) -> Flask:
    return form_site(
        make_app,
        rules,
        AMOCRM_UPLOAD_FOLDER=str(tmp_path / "uploads"),
        AMOCRM_UPLOAD_URL="https://shop.example.com/uploads",
        **config,
    )


def _send(app: Flask, content: bytes = PDF, name: str = "offer.pdf") -> None:
    answer = app.test_client().post(
        "/form/cv",
        data={"name": "Anna", "cv": (io.BytesIO(content), name)},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 200


def _make_due(app: Flask) -> None:
    from datetime import timedelta

    from flask_amocrm.models import utcnow

    with app.app_context(), app.extensions["amocrm"].session() as session:
        for event in session.query(Event).filter(Event.status == RETRYING):
            event.next_attempt_at = utcnow() - timedelta(seconds=1)
        session.commit()


def _deliver(app: Flask) -> dict[str, int]:
    """Deliver what is due; the outcomes that happened."""
    return {k: v for k, v in deliver_pending(app).items() if v}


class Amo:
    """The sandbox's API as a client of amoCRM sees it (the token, over HTTP)."""

    def __init__(self, sandbox: Any) -> None:
        self.url = sandbox.url
        self.headers = {"Authorization": f"Bearer {sandbox.token}"}

    def get(self, url: str) -> requests.Response:
        return requests.get(url, headers=self.headers, timeout=10)

    def drive(self) -> str:
        answer = self.get(f"{self.url}/api/v4/account?with=drive_url").json()
        return str(answer["drive_url"])

    def drive_files(self) -> list[dict[str, Any]]:
        answer = self.get(f"{self.drive()}/v1.0/files")
        if answer.status_code == 204:
            return []
        return list(answer.json()["_embedded"]["files"])

    def entity_files(self, entity: str, entity_id: int) -> list[dict[str, Any]]:
        answer = self.get(f"{self.url}/api/v4/{entity}/{entity_id}/files")
        if answer.status_code == 204:
            return []
        return list(answer.json()["_embedded"]["files"])

    def content(self, file_uuid: str) -> bytes:
        found = self.get(f"{self.drive()}/v1.0/files/{file_uuid}").json()
        return self.get(found["_links"]["download"]["href"]).content


def _last_part_answer_lost(make_app: Any, fast_sandbox: Any, tmp_path: Path) -> Flask:
    """A site whose one event's file went up in one part (the default part size is
    512 KB) whose answer, the file, was lost: the event is left retrying."""
    app = _site(make_app, tmp_path, _rules())
    _send(app)
    fast_sandbox.faults(lose_answer=True, count=1, path="/drive/v1.0/sessions/upload/")
    assert _deliver(app) == {"retrying": 1}
    return app


def _puts(sandbox: Any) -> list[dict[str, Any]]:
    return [
        r
        for r in sandbox.requests()
        if r["method"] == "PUT" and r["path"].endswith("/files")
    ]


def test_a_pdf_lands_in_the_drive_and_on_the_lead_once_when_the_answer_is_lost(
    make_app: Any, fast_sandbox: Any, tmp_path: Path, database_uri: str
) -> None:
    fast_sandbox.config(drive_max_part_size=PART)
    app = _site(make_app, tmp_path, _rules(), AMOCRM_DATABASE_URI=database_uri)
    _send(app)
    fast_sandbox.faults(lose_answer=True, count=1, method="PUT", path="/api/v4/leads/")
    assert _deliver(app) == {"retrying": 1}
    [lead] = fast_sandbox.leads()
    amo = Amo(fast_sandbox)
    assert len(amo.entity_files("leads", lead["id"])) == 1  # amoCRM did attach it

    _make_due(app)
    assert _deliver(app) == {"delivered": 1}
    [stored] = amo.drive_files()
    assert stored["name"] == "offer.pdf"
    assert stored["size"] == len(PDF)
    assert stored["type"] == "document"
    assert amo.content(stored["uuid"]) == PDF
    assert [f["file_uuid"] for f in amo.entity_files("leads", lead["id"])] == [
        stored["uuid"]
    ]
    assert len(_puts(fast_sandbox)) == 1  # the retry read the lead's files instead
    parts = [
        r
        for r in fast_sandbox.requests()
        if r["path"].startswith("/drive/v1.0/sessions/upload/")
    ]
    assert len(parts) == 3  # 2 580 bytes in parts of 1 024
    [event] = stored_events(app)
    assert event.status == DELIVERED
    assert event.remote["files"]["0"]["uuid"] == stored["uuid"]
    # Attached, so no note links to the site's copy.
    assert not any(
        "shop.example.com" in n["params"].get("text", "")
        for n in fast_sandbox.notes("leads")
    )


def test_a_503_on_a_part_upload_is_retried_without_a_second_file(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    fast_sandbox.config(drive_max_part_size=PART)
    app = _site(make_app, tmp_path, _rules())
    _send(app)
    fast_sandbox.faults(status=503, count=1, path="/drive/v1.0/sessions/upload/")
    assert _deliver(app) == {"retrying": 1}
    _make_due(app)
    assert _deliver(app) == {"delivered": 1}
    amo = Amo(fast_sandbox)
    [stored] = amo.drive_files()
    assert amo.content(stored["uuid"]) == PDF
    [lead] = fast_sandbox.leads()
    assert len(amo.entity_files("leads", lead["id"])) == 1


def test_a_lost_answer_to_the_last_part_does_not_upload_the_file_twice(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    app = _last_part_answer_lost(make_app, fast_sandbox, tmp_path)
    amo = Amo(fast_sandbox)
    assert len(amo.drive_files()) == 1  # the drive made it; we did not hear
    _make_due(app)
    assert _deliver(app) == {"delivered": 1}
    [stored] = amo.drive_files()
    [lead] = fast_sandbox.leads()
    assert [f["file_uuid"] for f in amo.entity_files("leads", lead["id"])] == [
        stored["uuid"]
    ]
    [event] = stored_events(app)
    assert event.remote["files"]["0"]["found_again"] is True


def test_files_attach_to_the_contact_too_and_fill_the_file_field(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    rules = _rules(
        {
            "mode": "drive",
            "attach": ["lead", "contact"],
            "fields": {"cv": "Lead Attachment"},
        }
    )
    app = _site(make_app, tmp_path, rules)
    _send(app)
    assert _deliver(app) == {"delivered": 1}
    amo = Amo(fast_sandbox)
    [stored] = amo.drive_files()
    [lead] = fast_sandbox.leads()
    [contact] = fast_sandbox.contacts()
    assert [f["file_uuid"] for f in amo.entity_files("leads", lead["id"])] == [
        stored["uuid"]
    ]
    assert [f["file_uuid"] for f in amo.entity_files("contacts", contact["id"])] == [
        stored["uuid"]
    ]
    [value] = field_values(lead, "Lead Attachment")
    assert value["file_uuid"] == stored["uuid"]
    assert value["version_uuid"] == stored["version_uuid"]
    assert value["file_name"] == "offer.pdf"
    assert value["file_size"] == len(PDF)


def test_links_still_go_into_a_note(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    for files in (None, "links"):
        fast_sandbox.reset()
        fast_sandbox.config(rate_limit=0)
        app = _site(make_app, tmp_path, _rules(files))
        _send(app)
        assert _deliver(app) == {"delivered": 1}
        assert Amo(fast_sandbox).drive_files() == []
        [note] = fast_sandbox.notes("leads")
        [saved] = stored_events(app)[0].files
        assert f"- offer.pdf: {saved['url']}" in note["params"]["text"]
        assert saved["url"].startswith("https://shop.example.com/uploads/")


def test_a_file_too_large_for_the_drive_is_a_remark_and_a_link(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    fast_sandbox.config(drive_max_file_size=1000)
    app = _site(make_app, tmp_path, _rules())
    _send(app)
    assert _deliver(app) == {"delivered": 1}
    [lead] = fast_sandbox.leads()
    assert lead["name"] == "CV from Anna"
    assert Amo(fast_sandbox).drive_files() == []
    [event] = stored_events(app)
    assert event.status == DELIVERED
    assert any(
        "offer.pdf was not put into amoCRM's drive: amoCRM's drive refused it" in line
        and "1000" in line
        for line in event.log
    ), event.log
    [note] = fast_sandbox.notes("leads")
    assert note["entity_id"] == lead["id"]
    text = note["params"]["text"]
    assert text.startswith("Files not in amoCRM's drive:")
    assert event.files[0]["url"] in text


def test_a_file_gone_from_the_disk_is_a_remark_and_a_link(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    app = _site(make_app, tmp_path, _rules())
    _send(app)
    [event] = stored_events(app)
    (tmp_path / "uploads" / event.files[0]["path"]).unlink()
    assert _deliver(app) == {"delivered": 1}
    assert Amo(fast_sandbox).drive_files() == []
    [event] = stored_events(app)
    assert (
        "files: offer.pdf was not put into amoCRM's drive: the file is no longer "
        "on the site's disk" in event.log
    )
    [note] = fast_sandbox.notes("leads")
    assert event.files[0]["url"] in note["params"]["text"]


@pytest.mark.parametrize(
    ("files", "where"),
    [
        ("cloud", "forms.cv.files"),
        ({"mode": "ftp"}, "forms.cv.files.mode"),
        ({"attach": ["lead"]}, "forms.cv.files.attach"),
        ({"mode": "drive", "attach": ["deal"]}, "forms.cv.files.attach"),
        (7, "forms.cv.files"),
    ],
)
def test_a_bad_files_value_fails_naming_the_rule(
    make_app: Any, files: Any, where: str
) -> None:
    with pytest.raises(RuntimeError) as caught:
        make_app(AMOCRM_RULES=_rules(files))
    assert f"AMOCRM_RULES: {where} " in str(caught.value)
    if files == "cloud":  # the message docs/rules.md quotes
        docs = Path(__file__).parent.parent / "docs" / "rules.md"
        assert f"RuntimeError: {caught.value}" in docs.read_text("utf-8")


def test_drive_in_defaults_applies_under_a_rules_own_files_table(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    rules = _rules({"entity": "lead"})
    rules["defaults"] = {"files": "drive"}
    app = _site(make_app, tmp_path, rules)
    _send(app)
    assert _deliver(app) == {"delivered": 1}
    assert len(Amo(fast_sandbox).drive_files()) == 1


def test_check_names_a_files_field_that_is_not_a_file_field(
    make_app: Any, fast_sandbox: Any
) -> None:
    rules = _rules(
        {"mode": "drive", "fields": {"cv": "Lead Comment", "photo": "Lead Attachment"}}
    )
    app = make_app(AMOCRM_RULES=rules)
    result = app.test_cli_runner().invoke(args=["amocrm", "check"])
    assert result.exit_code == 1
    assert (
        "forms.cv.files.fields.cv: the leads have no field 'Lead Comment' of type file"
        in result.output
    )
    assert "files.fields.photo" not in result.output


def test_a_stored_path_outside_the_upload_folder_is_never_read(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.pdf"
    secret.write_bytes(b"%PDF not for amoCRM")
    app = _site(make_app, tmp_path, _rules())
    _send(app)
    with app.app_context(), app.extensions["amocrm"].session() as session:
        event = session.query(Event).one()
        event.files = [dict(event.files[0], path="../secret.pdf")]
        session.commit()
    assert _deliver(app) == {"delivered": 1}
    assert Amo(fast_sandbox).drive_files() == []
    [event] = stored_events(app)
    assert any("not in the upload folder" in line for line in event.log), event.log


def test_the_api_log_keeps_the_sizes_of_files_not_their_bytes(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    from flask_amocrm.models import ApiLog

    app = _last_part_answer_lost(make_app, fast_sandbox, tmp_path)
    # The retry reads the file back to compare it.
    _make_due(app)
    assert _deliver(app) == {"delivered": 1}
    with app.app_context(), app.extensions["amocrm"].session() as session:
        rows = session.query(ApiLog).all()
    parts = [r for r in rows if "/sessions/upload/" in r.path]
    downloads = [r for r in rows if "/download/" in r.path]
    assert parts and downloads
    assert {r.request_body for r in parts} == {f"[{len(PDF)} bytes]"}
    assert downloads[0].response_body == f"[{len(PDF)} bytes of application/pdf]"
    assert not any(
        "%PDF" in (r.request_body or "") + (r.response_body or "") for r in rows
    )


def test_incoming_leads_get_their_files_too(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    rules = _rules()
    rules["forms"]["cv"]["unsorted"] = True
    app = _site(make_app, tmp_path, rules)
    _send(app)
    assert _deliver(app) == {"delivered": 1}
    amo = Amo(fast_sandbox)
    [stored] = amo.drive_files()
    [lead] = fast_sandbox.leads()
    assert [f["file_uuid"] for f in amo.entity_files("leads", lead["id"])] == [
        stored["uuid"]
    ]


def test_with_html_notes_the_link_of_a_file_not_in_the_drive_is_a_link(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    fast_sandbox.config(drive_max_file_size=1000)
    rules = _rules()
    rules["forms"]["cv"]["format"] = "html"
    app = _site(make_app, tmp_path, rules)
    _send(app, name="a&b <1>.pdf")
    assert _deliver(app) == {"delivered": 1}
    [note] = fast_sandbox.notes("leads")
    [saved] = stored_events(app)[0].files
    text = note["params"]["text"]
    assert text.startswith("Files not in amoCRM's drive:<br>• ")
    assert f'<a href="{saved["url"]}">a&amp;b &lt;1&gt;.pdf</a>' in text


def test_why_a_file_is_not_in_the_drive_is_said_in_the_sites_language(
    make_app: Any, fast_sandbox: Any, tmp_path: Path
) -> None:
    app = _site(make_app, tmp_path, _rules(), AMOCRM_LOCALE="ru")
    _send(app)
    [event] = stored_events(app)
    (tmp_path / "uploads" / event.files[0]["path"]).unlink()
    assert _deliver(app) == {"delivered": 1}
    [event] = stored_events(app)
    assert (
        "файлы: offer.pdf не загружен на Диск amoCRM: файла больше нет на диске сайта"
        in event.log
    ), event.log
    [note] = fast_sandbox.notes("leads")
    text = note["params"]["text"]
    assert text.startswith("Файлы, которые не попали на Диск amoCRM:")
    assert "(файла больше нет на диске сайта)" in text
    assert "disk" not in text
