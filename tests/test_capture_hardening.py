"""The spool as a journal, imports that survive bad rows, upload files purged with
their events, and the README's quick start."""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from flask_amocrm import Event
from flask_amocrm.models import DELIVERED, utcnow
from flask_amocrm.state import get_state
from flask_amocrm.worker.agent import process
from flask_amocrm.worker.retention import purge_events
from tests.helpers.e2e import form_site, stored_events
from tests.helpers.process import ROOT


def _record(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "form",
        "source": "callback",
        "data": {"name": name, "phone": "+79160000000", **extra},
        "files": [],
        "context": {},
        "dedupe_key": None,
    }


def _process(app: Any) -> dict[str, int]:
    with app.app_context():
        return process(get_state(app))


def test_the_spool_survives_any_line(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = make_app(AMOCRM_DATABASE_URI=database_uri)
    os.makedirs(app.instance_path, exist_ok=True)
    spool = os.path.join(app.instance_path, "amocrm-spool.jsonl")
    lines = [
        json.dumps(_record("First")),
        '{"kind": "form", "source": "callback", '
        '"data": {"name": "Nan", "phone": "1", "n": NaN}}',
        "{not json at all",
        "[" * 5000,
        json.dumps(["a list"]),
        json.dumps(_record("Last")),
    ]
    with open(spool, "w", encoding="utf-8") as fp:
        fp.write("\n".join(lines) + "\n")
    counts = _process(app)
    assert counts["spooled"] == 3, counts
    events = stored_events(app)
    assert counts.get("delivered") == 3, [(e.data, e.last_error) for e in events]
    assert [e.data["name"] for e in events] == ["First", "Nan", "Last"]
    assert events[1].data["n"] == "NaN"
    assert not os.path.exists(spool)
    leftovers = [n for n in os.listdir(app.instance_path) if n.endswith(".loading")]
    assert leftovers == []
    rejected = os.path.join(app.instance_path, "amocrm-spool.rejected.jsonl")
    with open(rejected, encoding="utf-8") as fp:
        kept = [json.loads(line) for line in fp]
    assert [k["line"] for k in kept] == [3, 4, 5]
    assert [k["text"][:5] for k in kept] == ["{not ", "[[[[[", '["a l']
    assert all(k["reason"] for k in kept)
    # a second run in the same process finds nothing new and loses nothing
    assert _process(app)["spooled"] == 0
    assert len(stored_events(app)) == 3
    with open(rejected, encoding="utf-8") as fp:
        assert len(fp.readlines()) == 3


def test_a_file_a_stopped_run_left_is_loaded_not_overwritten(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = make_app(AMOCRM_DATABASE_URI=database_uri)
    os.makedirs(app.instance_path, exist_ok=True)
    spool = os.path.join(app.instance_path, "amocrm-spool.jsonl")
    # what the loader leaves when it stops half-way (its name ends in the pid)
    stranded = f"{spool}.{os.getpid()}.loading"
    with open(stranded, "w", encoding="utf-8") as fp:
        fp.write(json.dumps(_record("Stranded")) + "\n")
    with open(spool, "w", encoding="utf-8") as fp:
        fp.write(json.dumps(_record("Fresh")) + "\n")
    counts = _process(app)
    assert counts["spooled"] == 2, counts
    assert sorted(e.data["name"] for e in stored_events(app)) == ["Fresh", "Stranded"]
    assert not os.path.exists(stranded)
    assert _process(app)["spooled"] == 0
    assert len(stored_events(app)) == 2


def test_a_spooled_record_is_stored_once_even_if_loaded_twice(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    """A run killed after storing a line but before removing its file must not
    store that line again on the next run."""
    app = make_app(AMOCRM_DATABASE_URI=database_uri)
    os.makedirs(app.instance_path, exist_ok=True)
    spool = os.path.join(app.instance_path, "amocrm-spool.jsonl")
    record = {**_record("Once"), "uid": "0" * 31 + "1"}
    with open(spool, "w", encoding="utf-8") as fp:
        fp.write(json.dumps(record) + "\n")
    assert _process(app)["spooled"] == 1
    with open(f"{spool}.999999.loading", "w", encoding="utf-8") as fp:
        fp.write(json.dumps(record) + "\n")
    _process(app)
    assert [e.data["name"] for e in stored_events(app)] == ["Once"]


def test_import_skips_bad_rows_and_reports_their_lines(
    make_app: Any, database_uri: str, tmp_path: Any
) -> None:
    app = make_app(AMOCRM_DATABASE_URI=database_uri)
    jsonl = tmp_path / "rows.jsonl"
    prefix = "x" * 250
    rows = [
        {"source": "callback", "id": "good-1", "fields": {"name": "A"}},
        {"source": "callback", "time": 10**20, "fields": {"name": "huge time"}},
        {"source": "callback", "time": True, "fields": {"name": "bool time"}},
        {"source": "s" * 300, "fields": {"name": "long source"}},
        {"source": "callback", "id": prefix + "1", "fields": {"name": "long id 1"}},
        {"source": "callback", "id": prefix + "2", "fields": {"name": "long id 2"}},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, '{"source": "callback", "time": NaN, "fields": {}}')
    lines.insert(3, '{"source": "callback", "fields": ' + "[" * 3000 + "]" * 3000)
    lines.append(json.dumps({"source": "callback", "fields": {"name": "last"}}))
    jsonl.write_text("\n".join(lines) + "\n")
    result = app.test_cli_runner().invoke(args=["amocrm", "import", str(jsonl)])
    assert "Traceback" not in result.output
    for number in (2, 3, 4, 5, 6):
        assert re.search(rf"line {number}\b", result.output), result.output
    assert "4 event(s) imported" in result.output, result.output
    names = sorted(e.data["name"] for e in stored_events(app))
    assert names == ["A", "last", "long id 1", "long id 2"]

    csv_file = tmp_path / "rows.csv"
    csv_file.write_text(
        f"source,time,name,comment\ncallback,,Big,{'c' * 200_000}\ncallback,,After,ok\n"
    )
    result = app.test_cli_runner().invoke(args=["amocrm", "import", str(csv_file)])
    assert "Traceback" not in result.output
    assert "2 event(s) imported" in result.output, result.output
    big = [e for e in stored_events(app) if e.data.get("name") == "Big"][0]
    assert 0 < len(big.data["comment"]) <= 200_000


def test_imported_events_get_the_sites_context(
    make_app: Any, fast_sandbox: Any, database_uri: str, tmp_path: Any
) -> None:
    rules = {
        "forms": {
            "callback": {
                "lead": {
                    "name": "From {{ site.name }}",
                    "note": "Page: {{ page.url }} / "
                    "{{ utm.utm_source | default('-') }}",
                }
            }
        }
    }
    app = form_site(
        make_app,
        rules,
        AMOCRM_DATABASE_URI=database_uri,
        AMOCRM_SITE_NAME="Shop",
    )
    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps({"source": "callback", "fields": {"name": "No page"}})
        + "\n"
        + json.dumps(
            {
                "source": "callback",
                "fields": {"name": "With page"},
                "page_url": "https://shop.example/promo",
                "utm_source": "mail",
            }
        )
        + "\n"
    )
    result = app.test_cli_runner().invoke(args=["amocrm", "import", str(path)])
    assert result.exit_code == 0, result.output
    assert _process(app).get("delivered") == 2
    leads = fast_sandbox.leads()
    assert [lead["name"] for lead in leads] == ["From Shop", "From Shop"]
    texts = [n["params"]["text"] for n in fast_sandbox.notes("leads")]
    assert any("Page: https://shop.example/promo / mail" in t for t in texts), texts


def test_upload_files_are_purged_with_their_events(
    make_app: Any, fast_sandbox: Any, database_uri: str, tmp_path: Any
) -> None:
    folder = tmp_path / "uploads"
    app = form_site(
        make_app,
        {"forms": {"cv": {"lead": {"name": "CV"}}}},
        AMOCRM_DATABASE_URI=database_uri,
        AMOCRM_UPLOAD_FOLDER=str(folder),
        AMOCRM_UPLOAD_URL="https://files.example.com/up/",
    )
    import io

    from werkzeug.datastructures import FileStorage

    for n in range(2):
        app.test_client().post(
            "/form/cv",
            data={"cv": FileStorage(io.BytesIO(b"%PDF cv"), f"cv{n}.pdf")},
            content_type="multipart/form-data",
        )
    assert _process(app).get("delivered") == 2
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert len(files) == 2
    old, recent = stored_events(app)
    with app.app_context():
        state = get_state(app)
        with state.session() as session:
            session.execute(
                update(Event)
                .where(Event.id == old.id)
                .values(delivered_at=utcnow() - timedelta(days=400))
            )
            session.commit()
        assert purge_events(state) == 1
    assert [e.id for e in stored_events(app)] == [recent.id]
    assert recent.status == DELIVERED
    left = [p for p in folder.rglob("*") if p.is_file()]
    assert len(left) == 1
    assert recent.files[0]["url"].endswith(left[0].name)


def test_the_readme_quick_start_holds() -> None:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fp:
        readme = fp.read()
    assert "make demo" in readme and "make test" in readme
    assert "data=request.form)" not in readme  # csrf_token would land in every note
    assert re.search(r"flask amocrm init-db|db\.create_all\(\)", readme)
    worker = re.search(r"rq worker [^`\n]*", readme)
    assert worker and " -u " in worker.group(0), worker


def test_a_file_another_live_process_is_loading_is_left_to_it(
    make_app: Any, fast_sandbox: Any, tmp_path: Any
) -> None:
    app = make_app()
    os.makedirs(app.instance_path, exist_ok=True)
    spool = os.path.join(app.instance_path, "amocrm-spool.jsonl")
    busy = f"{spool}.{os.getppid()}.deadbeef.loading"  # a live process's name
    with open(busy, "w", encoding="utf-8") as fp:
        fp.write(json.dumps(_record("Theirs")) + "\n")
    assert _process(app)["spooled"] == 0
    assert os.path.exists(busy)
    assert stored_events(app) == []


def test_capture_keeps_the_data_when_the_visit_and_uploads_fail(
    make_app: Any, monkeypatch: Any
) -> None:
    import flask_amocrm.capture as capture_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(capture_module, "read_visit", broken)
    monkeypatch.setattr(capture_module, "file_links", broken)
    app = form_site(make_app, {"forms": {}}, AMOCRM_SITE_NAME="Shop")
    response = app.test_client().post(
        "/form/callback", data={"name": "Real Customer", "phone": "+79161112233"}
    )
    assert response.status_code == 200
    [event] = stored_events(app)
    assert event.data == {"name": "Real Customer", "phone": "+79161112233"}
    assert event.context["site"]["name"] == "Shop"
    assert event.files == []
    assert any("visit could not be read (RecursionError)" in x for x in event.log)
    assert any("uploads could not be read (RecursionError)" in x for x in event.log)
