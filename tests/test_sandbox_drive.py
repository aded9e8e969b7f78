"""The sandbox's drive over HTTP, as the two-way reference (§4) describes amoCRM's:
the drive host from the account, upload sessions and their parts, the file object,
its bytes, and files attached to entities."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.sandbox import AmoSession


def _drive(amo: AmoSession) -> str:
    answer = amo.get("/account", params={"with": "drive_url"})
    assert answer.status_code == 200
    return str(answer.json()["drive_url"])


def _upload(amo: AmoSession, content: bytes, name: str = "offer.pdf") -> dict[str, Any]:
    session = amo.post(
        f"{_drive(amo)}/v1.0/sessions",
        json={
            "file_name": name,
            "file_size": len(content),
            "content_type": "application/pdf",
        },
    ).json()
    url, part = session["upload_url"], session["max_part_size"]
    for start in range(0, len(content), part):
        answer = amo.post(url, data=content[start : start + part])
        assert answer.status_code == 200, answer.text
        url = answer.json().get("next_url")
    assert url is None
    return dict(answer.json())


def _lead(amo: AmoSession) -> int:
    return int(
        amo.post("/leads", json=[{"name": "x"}]).json()["_embedded"]["leads"][0]["id"]
    )


def test_a_session_announces_amocrms_sizes_and_the_parts_make_the_file(
    amo: AmoSession, sandbox: Any
) -> None:
    drive = _drive(amo)
    assert drive == f"{sandbox.url}/drive"
    session = amo.post(
        f"{drive}/v1.0/sessions", json={"file_name": "a.pdf", "file_size": 10}
    ).json()
    assert session["max_file_size"] == 300 * 1024 * 1024
    assert session["max_part_size"] == 512 * 1024
    assert session["upload_url"].startswith(f"{drive}/v1.0/sessions/upload/")

    sandbox.config(drive_max_part_size=4)
    content = b"%PDF-" + bytes(range(200, 210))
    made = _upload(amo, content)
    assert (made["name"], made["size"], made["type"]) == ("offer.pdf", 15, "document")
    assert made["uuid"] != made["version_uuid"]
    href = made["_links"]["download"]["href"]
    assert href.startswith(f"{drive}/download/")
    assert amo.get(href).content == content
    assert amo.get(f"{drive}/v1.0/files/{made['uuid']}").json()["id"] == made["id"]
    listed = amo.get(f"{drive}/v1.0/files", params={"filter[uuid]": made["uuid"]})
    assert [f["uuid"] for f in listed.json()["_embedded"]["files"]] == [made["uuid"]]


def test_parts_are_checked(amo: AmoSession, sandbox: Any) -> None:
    sandbox.config(drive_max_part_size=4)
    drive = _drive(amo)
    url = amo.post(
        f"{drive}/v1.0/sessions", json={"file_name": "a.txt", "file_size": 6}
    ).json()["upload_url"]
    assert amo.post(url, data=b"12345").status_code == 400  # over max_part_size
    first = amo.post(url, data=b"1234").json()
    assert amo.post(url, data=b"12").status_code == 400  # part 0 again: out of order
    assert amo.post(first["next_url"], data=b"123").status_code == 400  # past size
    assert amo.post(first["next_url"], data=b"56").json()["size"] == 6
    assert amo.post(f"{drive}/v1.0/sessions/upload/nope", data=b"1").status_code == 404


@pytest.mark.parametrize(
    "body",
    [{"file_name": "a.pdf"}, {"file_size": 3}, {"file_name": "", "file_size": 3}],
)
def test_a_session_needs_a_name_and_a_size(amo: AmoSession, body: Any) -> None:
    answer = amo.post(f"{_drive(amo)}/v1.0/sessions", json=body)
    assert answer.status_code == 400
    assert answer.json()["validation-errors"]


def test_a_file_over_the_limit_is_refused_when_the_session_opens(
    amo: AmoSession, sandbox: Any
) -> None:
    sandbox.config(drive_max_file_size=1000)
    answer = amo.post(
        f"{_drive(amo)}/v1.0/sessions", json={"file_name": "a.pdf", "file_size": 1001}
    )
    assert answer.status_code == 400
    assert answer.json()["max_file_size"] == 1000
    sandbox.reset()
    assert sandbox.config()["drive_max_file_size"] == 300 * 1024 * 1024


def test_the_drive_needs_the_token_and_takes_faults(
    amo: AmoSession, sandbox: Any
) -> None:
    drive = _drive(amo)
    assert amo.get(f"{drive}/v1.0/files").status_code == 204
    assert (
        amo.get(f"{drive}/v1.0/files", headers={"Authorization": ""}).status_code == 401
    )
    sandbox.faults(status=503, count=1, path="/drive/")
    assert amo.get(f"{drive}/v1.0/files").status_code == 503
    assert any(r["path"] == "/drive/v1.0/files" for r in sandbox.requests())


def test_files_attach_to_entities_and_are_listed(amo: AmoSession, sandbox: Any) -> None:
    made = _upload(amo, b"%PDF-1")
    lead = _lead(amo)
    assert amo.get(f"/leads/{lead}/files").status_code == 204
    answer = amo.put(f"/leads/{lead}/files", json=[{"file_uuid": made["uuid"]}])
    assert answer.status_code == 200
    listed = amo.get(f"/leads/{lead}/files").json()["_embedded"]["files"]
    assert listed == [{"file_uuid": made["uuid"], "id": made["id"]}]
    links = amo.get(f"/files/{made['uuid']}/links").json()
    assert [(e["id"], e["entity_type"]) for e in links["entities"]] == [(lead, "leads")]
    # amoCRM does not document a second attach of the same file: the sandbox keeps it.
    amo.put(f"/leads/{lead}/files", json=[{"file_uuid": made["uuid"]}])
    assert len(amo.get(f"/leads/{lead}/files").json()["_embedded"]["files"]) == 2
    assert (
        amo.delete(
            f"/leads/{lead}/files", json=[{"file_uuid": made["uuid"]}]
        ).status_code
        == 202
    )
    assert amo.get(f"/leads/{lead}/files").status_code == 204
    unknown = amo.put(f"/leads/{lead}/files", json=[{"file_uuid": "nope"}])
    assert unknown.status_code == 400
    assert (
        amo.put("/leads/999/files", json=[{"file_uuid": made["uuid"]}]).status_code
        == 404
    )


def test_a_file_field_takes_a_drive_file(amo: AmoSession) -> None:
    made = _upload(amo, b"%PDF-1")
    fields = amo.get("/leads/custom_fields").json()["_embedded"]["custom_fields"]
    [field] = [f for f in fields if f["type"] == "file"]
    value = {
        "file_uuid": made["uuid"],
        "version_uuid": made["version_uuid"],
        "file_name": "offer.pdf",
        "file_size": 6,
    }
    answer = amo.post(
        "/leads",
        json=[
            {
                "name": "x",
                "custom_fields_values": [
                    {"field_id": field["id"], "values": [{"value": value}]}
                ],
            }
        ],
    )
    lead = answer.json()["_embedded"]["leads"][0]["id"]
    stored = amo.get(f"/leads/{lead}").json()["custom_fields_values"]
    assert stored[0]["values"] == [{"value": value}]
