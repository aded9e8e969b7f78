"""The ``files`` step: an event's saved uploads into amoCRM's drive (``files =
"drive"``), attached to its entities, and into ``file`` custom fields.

Each file goes its own way and its progress is saved at once
(:attr:`~flask_amocrm.progress.Progress.files`, keyed by the file's place in the
event's ``files``), so a retry never repeats what amoCRM has:

1. **Upload.** An upload session on the account's drive host
   (:meth:`~flask_amocrm.amo.client.AmoClient.drive_url`), the file's parts in order
   (as large as the session allows), and the file object of the last part: its
   ``uuid`` and ``version_uuid`` are saved before anything else is done with it.
   Before the last part goes out the time is saved (``last_part_at``): if its answer
   is lost, the retry looks the file up in the drive (same name and size, made since
   then, the same bytes, attached to nothing) instead of uploading it again.
2. **Attach** to every entity the rule names (``attach``; the lead by default). Before
   the call the sections are saved as ``attaching``; a retry that finds them there
   (the answer was lost) reads the entity's files first and attaches only those
   amoCRM does not list.
3. **Fields.** ``file`` custom fields the rule maps a form field to are set with one
   ``PATCH`` per entity (the same values again on a retry: harmless).

A file that cannot go to the drive (gone from the disk, over the drive's
``max_file_size``, refused by amoCRM) is not a failure of the event: the event's log
says why, and a note on the entity gives the file's link on the site instead (the
``notes`` step writes it, once). Errors worth trying again (the network, 5xx, 429)
are raised, as every step's are: the event is retried and resumes here.
"""

from __future__ import annotations

import hashlib
import html
import logging
import mimetypes
import os
import time
from typing import Any

import requests

from ..amo.client import AmoClient
from ..errors import AmoCRMError, APIError
from ..i18n import N_, Message, localize, site_locale
from ..rules.plan import DriveFile, DriveSpec
from ..vocabulary import ENTITY
from .delivery import Delivery

log = logging.getLogger("flask_amocrm.worker")

#: The part size when a session names none (the smallest amoCRM documents).
DEFAULT_PART_SIZE = 128 * 1024
#: How far the drive's clock may be behind ours when a lost upload is looked up.
CLOCK_SLACK = 120


def upload_files(client: AmoClient, deliveries: list[Delivery]) -> None:
    """Run the ``files`` step of these deliveries, one event after the other."""
    for delivery in deliveries:
        spec = delivery.plan.drive
        if spec is None or delivery.error is not None:
            continue
        try:
            _deliver(client, delivery, spec)
        finally:
            delivery.save()


def _put(delivery: Delivery, index: int, **values: Any) -> dict[str, Any]:
    """Merge ``values`` into the progress of file ``index`` and save at once."""
    files = dict(delivery.progress.files)
    record = dict(files.get(str(index)) or {})
    record.update(values)
    files[str(index)] = record
    delivery.record(files=files)
    delivery.save()
    return record


def _deliver(client: AmoClient, delivery: Delivery, spec: DriveSpec) -> None:
    for item in spec.files:
        record = delivery.progress.files.get(str(item.index)) or {}
        if record.get("uuid") or record.get("error"):
            continue
        _upload(client, delivery, item, record)
    _attach(client, delivery, spec)
    _fields(client, delivery, spec)
    _remarks(delivery, spec)
    delivery.record("files")


# -- 1. upload -------------------------------------------------------------------------


def _fail(delivery: Delivery, item: DriveFile, why: Message) -> None:
    """Say why the file is not in the drive, in the site's language (the reason is
    stored with the event's progress and read in its log and the note)."""
    _put(delivery, item.index, error=localize(why, site_locale()))


def _refused(delivery: Delivery, item: DriveFile, exc: APIError) -> None:
    """The drive refused ``item``: raise again what is worth retrying (the whole
    delivery is tried later), else say why the file is not in the drive."""
    if exc.retryable:
        raise exc
    return _fail(
        delivery,
        item,
        N_("amoCRM's drive refused it: %(error)s", error=_detail(exc)),
    )


def _upload(
    client: AmoClient, delivery: Delivery, item: DriveFile, record: dict[str, Any]
) -> None:
    if item.path is None:
        return _fail(
            delivery,
            item,
            N_("it is not in the upload folder here (AMOCRM_UPLOAD_FOLDER)"),
        )
    try:
        size = os.path.getsize(item.path)
    except OSError:
        return _fail(delivery, item, N_("the file is no longer on the site's disk"))
    if size == 0:
        return _fail(delivery, item, N_("the file is empty"))
    if record.get("last_part_at"):
        found = _find_again(client, item, size, float(record["last_part_at"]))
        if found is not None:
            _put(delivery, item.index, **_uploaded(found), found_again=True)
            return None
    content_type = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
    try:
        session = client.open_upload(item.name, size, content_type)
    except APIError as exc:
        return _refused(delivery, item, exc)
    most = session.get("max_file_size")
    if isinstance(most, int) and size > most:
        return _fail(
            delivery,
            item,
            N_("larger than amoCRM's drive takes (%(size)s)", size=_size(most)),
        )
    part_size = session.get("max_part_size")
    if not isinstance(part_size, int) or part_size < 1:
        part_size = DEFAULT_PART_SIZE
    url = str(session["upload_url"])
    sent = 0
    try:
        with open(item.path, "rb") as fh:
            while True:
                chunk = fh.read(part_size)
                if not chunk:
                    return _fail(delivery, item, N_("the file changed on the disk"))
                sent += len(chunk)
                if sent >= size:
                    _put(delivery, item.index, last_part_at=time.time())
                answer = client.upload_part(url, chunk, content_type)
                if answer.get("uuid"):
                    _put(delivery, item.index, **_uploaded(answer))
                    return None
                if not answer.get("next_url") or sent >= size:
                    return _fail(
                        delivery, item, N_("amoCRM's drive did not finish the upload")
                    )
                url = str(answer["next_url"])
    except OSError:
        return _fail(
            delivery, item, N_("the file could not be read on the site's disk")
        )
    except APIError as exc:
        return _refused(delivery, item, exc)


def _uploaded(answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "uuid": str(answer["uuid"]),
        "version_uuid": answer.get("version_uuid"),
        "size": answer.get("size"),
    }


def _find_again(
    client: AmoClient, item: DriveFile, size: int, since: float
) -> dict[str, Any] | None:
    """The file the lost answer of the last part would have named: in the drive
    with this name and size, made since ``since``, attached to nothing, and holding
    the very bytes on the disk."""
    assert item.path is not None
    for found in client.drive_files(name=item.name):
        if (
            found.get("size") != size
            or float(found.get("created_at") or 0) < since - CLOCK_SLACK
            or client.file_links(str(found.get("uuid")))
        ):
            continue
        href = ((found.get("_links") or {}).get("download") or {}).get("href")
        if href and _same_bytes(client, str(href), item.path):
            return found
    return None


def _same_bytes(client: AmoClient, href: str, path: str) -> bool:
    try:
        remote = client.download(href)
        with open(path, "rb") as fh:
            local = hashlib.sha256(fh.read()).digest()
    except (OSError, APIError, requests.RequestException):
        return False
    return hashlib.sha256(remote).digest() == local


# -- 2. attach ---------------------------------------------------------------------


def _attach(client: AmoClient, delivery: Delivery, spec: DriveSpec) -> None:
    ids = delivery.ids()
    for key in spec.attach:
        entity_id = ids.get(key)
        if not entity_id:
            continue
        entity = ENTITY[key]
        files = delivery.progress.files
        todo = {
            index: record
            for index, record in files.items()
            if record.get("uuid") and key not in record.get("attached", [])
        }
        if not todo:
            continue
        if any(key in r.get("attaching", []) for r in todo.values()):
            # The answer to our attach call was lost: amoCRM may have done it.
            have = {f.get("file_uuid") for f in client.entity_files(entity, entity_id)}
            for index, record in list(todo.items()):
                if record["uuid"] in have:
                    _attached(delivery, index, key)
                    del todo[index]
            if not todo:
                continue
        for index, record in todo.items():
            attaching = [*record.get("attaching", []), key]
            _put(delivery, int(index), attaching=attaching)
        try:
            client.attach_files(entity, entity_id, [r["uuid"] for r in todo.values()])
        except APIError as exc:
            if exc.retryable:
                raise
            for index in todo:
                _put(
                    delivery,
                    int(index),
                    error=localize(
                        N_(
                            "amoCRM did not attach it to the %(key)s: %(error)s",
                            key=key,
                            error=_detail(exc),
                        ),
                        site_locale(),
                    ),
                )
            continue
        for index in todo:
            _attached(delivery, index, key)


def _attached(delivery: Delivery, index: str, key: str) -> None:
    record = delivery.progress.files.get(index) or {}
    _put(
        delivery,
        int(index),
        attached=[*record.get("attached", []), key],
        attaching=[k for k in record.get("attaching", []) if k != key],
    )


# -- 3. file fields ----------------------------------------------------------------


def _fields(client: AmoClient, delivery: Delivery, spec: DriveSpec) -> None:
    if not spec.fields:
        return
    ids = delivery.ids()
    progress = delivery.progress.files
    per_entity: dict[str, list[tuple[DriveFile, int]]] = {}
    for item in spec.files:
        target = spec.fields.get(item.field)
        record = progress.get(str(item.index)) or {}
        if target is None or not record.get("uuid") or record.get("field"):
            continue
        key, field_id = target
        per_entity.setdefault(key, []).append((item, field_id))
    for key, items in per_entity.items():
        entity_id = ids.get(key)
        if not entity_id:
            continue
        values: dict[int, dict[str, Any]] = {}
        for item, field_id in items:
            record = progress[str(item.index)]
            value = {
                "file_uuid": record["uuid"],
                "file_name": item.name,
                "file_size": record.get("size") or item.size,
            }
            if record.get("version_uuid"):
                value["version_uuid"] = record["version_uuid"]
            # A file field holds one file: the form field's first one.
            values.setdefault(
                field_id, {"field_id": field_id, "values": [{"value": value}]}
            )
        try:
            client.update(
                ENTITY[key],
                [{"id": entity_id, "custom_fields_values": list(values.values())}],
            )
        except APIError as exc:
            if exc.retryable:
                raise
            delivery.note(
                N_(
                    "files: the %(key)s's file fields were not set: %(error)s",
                    key=key,
                    error=_detail(exc),
                )
            )
        for item, _ in items:
            _put(delivery, item.index, field=True)


# -- what could not go to the drive ------------------------------------------------


def _remarks(delivery: Delivery, spec: DriveSpec) -> None:
    """The event's log says why a file is not in the drive, and a note gives its
    link on the site instead (written by the ``notes`` step)."""
    progress = delivery.progress
    failed = [
        (item, progress.files[str(item.index)]["error"])
        for item in spec.files
        if (progress.files.get(str(item.index)) or {}).get("error")
    ]
    if not failed:
        return
    delivery.note(
        *(
            N_(
                "files: %(name)s was not put into amoCRM's drive: %(why)s",
                name=item.name,
                why=why,
            )
            for item, why in failed
        )
    )
    key = next((k for k in spec.attach if delivery.ids().get(k)), None)
    if key is None or progress.file_notes:
        return
    html_notes = delivery.plan.html
    lines = [localize(N_("Files not in amoCRM's drive:"), site_locale())]
    for item, why in failed:
        if html_notes:
            name = html.escape(item.name)
            shown = (
                f'<a href="{html.escape(item.url)}">{name}</a>' if item.url else name
            )
            lines.append(f"• {shown} ({html.escape(why)})")
        else:
            lines.append(
                f"- {item.name}: {item.url} ({why})"
                if item.url
                else f"- {item.name} ({why})"
            )
    delivery.record(file_notes={key: ("<br>" if html_notes else "\n").join(lines)})


def _detail(exc: AmoCRMError) -> str:
    return str(exc)[:300]


def _size(count: int) -> str:
    if count < 1024 * 1024:
        return f"{count / 1024:g} KB"
    return f"{count / 1024 / 1024:g} MB"
