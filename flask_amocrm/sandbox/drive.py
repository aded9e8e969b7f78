"""amoCRM's file service ("drive") and the files attached to leads, contacts and
companies.

The real drive lives on its own host, named by ``GET /api/v4/account?with=drive_url``;
the sandbox serves it under ``/drive`` of the same server and names that address
(``views/meta.py``). It takes the same bearer token, faults, rate limit and request
log as ``/api/v4`` (``app.py`` treats ``/drive/`` paths as API paths).

Upload (``POST /drive/v1.0/sessions``, then the parts, in order, to the session's
``upload_url`` and each ``next_url``; the last part answers the file object), reading
a file (``GET /drive/v1.0/files/{uuid}``, ``GET /drive/v1.0/files``) and its bytes
(the file's ``_links.download``), and on the account host attaching files to an
entity (``PUT``/``GET``/``DELETE /api/v4/{leads|contacts|companies}/{id}/files``) and
the entities a file is attached to (``GET /api/v4/files/{uuid}/links``).

Sizes are amoCRM's: a session takes a file of at most ``max_file_size`` bytes (300 MiB)
in parts of at most ``max_part_size`` (512 KiB); a session lives 24 hours. Both sizes
can be lowered at run time (``/_sandbox/config``: ``drive_max_file_size``,
``drive_max_part_size``) so tests need no large files. What the reference leaves open
is decided here as the strictest reading: a file over ``max_file_size`` is refused
when the session is opened (400); a part out of order, too large, or past the
announced size is 400; attaching a file twice to one entity attaches it twice (a
client must not rely on amoCRM ignoring the second call).
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from typing import Any

from flask import Blueprint, Response, request

from .errors import NOT_BLANK, ApiError, FieldError, ValidationFailed
from .records import ENTITIES
from .store import Store, now
from .views.common import (
    base_url,
    hal,
    int_arg,
    json_array,
    json_object,
    link,
    no_content,
    sandbox,
    store,
)

#: amoCRM's limits, as its session answers give them.
MAX_FILE_SIZE = 300 * 1024 * 1024
MAX_PART_SIZE = 512 * 1024
#: A session lives until its upload is finished, at most this long.
SESSION_TTL = 24 * 3600
#: The largest page of ``GET /drive/v1.0/files`` and of an entity's files.
FILES_LIMIT = 250
_TYPES = {
    "image": {"jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "heic"},
    "video": {"mp4", "mov", "avi", "mkv", "webm"},
    "audio": {"mp3", "wav", "ogg", "m4a", "aac", "flac"},
    "document": {"pdf", "doc", "docx", "odt", "rtf", "txt", "xls", "xlsx", "ods"},
}

bp = Blueprint("sandbox_drive", __name__, url_prefix="/drive")
entity_bp = Blueprint("sandbox_entity_files", __name__, url_prefix="/api/v4")
ENTITY = "<any(leads, contacts, companies):entity>"


class DriveLimits:
    """The sizes a session announces (run-time settings of the sandbox)."""

    def __init__(self) -> None:
        self.max_file_size = MAX_FILE_SIZE
        self.max_part_size = MAX_PART_SIZE

    def reset(self) -> None:
        """amoCRM's sizes again."""
        self.__init__()  # type: ignore[misc]


def limits() -> DriveLimits:
    """The running sandbox's drive sizes."""
    found: DriveLimits = sandbox().drive
    return found


def drive_state(s: Store) -> dict[str, Any]:
    """The drive's part of the account (made on first use, gone with a reset)."""
    state: dict[str, Any] = s.data.setdefault(
        "drive", {"files": {}, "sessions": {}, "attached": {}, "next_id": 7590970}
    )
    return state


def drive_url() -> str:
    """The drive's address, as ``?with=drive_url`` gives it."""
    return f"{base_url()}/drive"


# -- the file object ---------------------------------------------------------------


def _type(extension: str) -> str:
    for name, extensions in _TYPES.items():
        if extension in extensions:
            return name
    return "file"


def render_file(s: Store, item: dict[str, Any]) -> dict[str, Any]:
    """A stored file as the drive answers it (its bytes left out)."""
    account_uuid = s.data["account"]["uuid"]
    download = (
        f"{drive_url()}/download/{account_uuid}/{item['uuid']}/"
        f"{item['version_uuid']}/{item['name']}"
    )
    out = {k: v for k, v in item.items() if k not in ("content", "versions")}
    out["_links"] = {
        "download": {"href": download},
        "download_version": {"href": download},
    }
    return out


def _new_file(
    s: Store, session: dict[str, Any], content: bytes, previous: dict[str, Any] | None
) -> dict[str, Any]:
    state = drive_state(s)
    name = session["file_name"]
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    stamp = now()
    author = session.get("created_by") or {
        "id": s.data["account"]["current_user_id"],
        "type": "internal",
    }
    encoded = base64.b64encode(content).decode("ascii")
    if previous is not None:  # a new version of an existing file becomes its active one
        previous.update(
            version_uuid=str(uuid.uuid4()),
            size=len(content),
            content=encoded,
            has_multiple_versions=True,
            updated_at=stamp,
            updated_by=author,
        )
        return previous
    file_id = int(state["next_id"])
    state["next_id"] = file_id + 1
    item = {
        "id": file_id,
        "uuid": str(uuid.uuid4()),
        "version_uuid": str(uuid.uuid4()),
        "name": name,
        "sanitized_name": name,
        "type": _type(extension),
        "size": len(content),
        "metadata": {
            "extension": extension,
            "mime_type": session.get("content_type") or "application/octet-stream",
        },
        "previews": [],
        "source_id": None,
        "has_multiple_versions": False,
        "is_trashed": False,
        "created_at": stamp,
        "created_by": author,
        "updated_at": stamp,
        "updated_by": author,
        "deleted_at": None,
        "deleted_by": None,
        "content": encoded,
    }
    state["files"][item["uuid"]] = item
    return item


# -- upload ------------------------------------------------------------------------


@bp.post("/v1.0/sessions")
def open_session() -> Response:
    """Open an upload session for ``file_name`` of ``file_size`` bytes."""
    body = json_object()
    errors = []
    name = body.get("file_name")
    size = body.get("file_size")
    if not isinstance(name, str) or not name.strip():
        errors.append(FieldError(NOT_BLANK, "file_name", "This value is required."))
    if not int_arg(size) or size < 1:
        errors.append(FieldError(NOT_BLANK, "file_size", "A positive number of bytes."))
    if errors:
        raise ValidationFailed([("0", errors)])
    sizes = limits()
    if size > sizes.max_file_size:
        raise ApiError(
            400,
            f"File size {size} exceeds the maximum of {sizes.max_file_size} bytes",
            max_file_size=sizes.max_file_size,
        )
    s = store()
    with s.lock:
        state = drive_state(s)
        target = body.get("file_uuid")
        if target is not None and target not in state["files"]:
            raise ApiError(404, "File not found")
        token = secrets.token_urlsafe(24)
        session_id = int(state["next_id"])
        state["next_id"] = session_id + 1
        state["sessions"][token] = {
            "session_id": session_id,
            "file_name": name.strip()[:255],
            "file_size": size,
            "content_type": body.get("content_type"),
            "file_uuid": target,
            "created_by": body.get("created_by"),
            "expires": time.time() + SESSION_TTL,
            "parts": [],
            "received": 0,
            "max_part_size": sizes.max_part_size,
        }
        s.touch()
    return hal(
        {
            "max_file_size": sizes.max_file_size,
            "max_part_size": sizes.max_part_size,
            "session_id": session_id,
            "upload_url": f"{drive_url()}/v1.0/sessions/upload/{token}",
        }
    )


@bp.post("/v1.0/sessions/upload/<token>")
@bp.post("/v1.0/sessions/upload/<token>/<int:part>")
def upload_part(token: str, part: int = 0) -> Response:
    """The next part of a session's file (raw bytes); the last one answers the
    file object."""
    chunk = request.get_data(cache=True)
    s = store()
    with s.lock:
        state = drive_state(s)
        session = state["sessions"].get(token)
        if session is None or session["expires"] < time.time():
            state["sessions"].pop(token, None)
            raise ApiError(404, "Upload session not found or expired")
        if part != len(session["parts"]):
            raise ApiError(
                400,
                f"Part {part} is out of order: part {len(session['parts'])} is next",
            )
        if not chunk:
            raise ApiError(400, "The part is empty")
        if len(chunk) > session["max_part_size"]:
            raise ApiError(
                400,
                f"The part has {len(chunk)} bytes, more than max_part_size "
                f"{session['max_part_size']}",
            )
        if session["received"] + len(chunk) > session["file_size"]:
            raise ApiError(400, "The parts are larger than the file_size announced")
        session["parts"].append(base64.b64encode(chunk).decode("ascii"))
        session["received"] += len(chunk)
        s.touch()
        if session["received"] < session["file_size"]:
            return hal(
                {
                    "session_id": session["session_id"],
                    "next_url": f"{drive_url()}/v1.0/sessions/upload/{token}/"
                    f"{len(session['parts'])}",
                }
            )
        content = b"".join(base64.b64decode(p) for p in session["parts"])
        del state["sessions"][token]
        previous = state["files"].get(session["file_uuid"] or "")
        item = _new_file(s, session, content, previous)
        return hal(render_file(s, item))


# -- reading -----------------------------------------------------------------------


def _file_or_404(s: Store, file_uuid: str) -> dict[str, Any]:
    item = drive_state(s)["files"].get(file_uuid)
    if item is None:
        raise ApiError(404, "File not found")
    return item


@bp.get("/v1.0/files/<file_uuid>")
def get_file(file_uuid: str) -> Response:
    """One file object."""
    s = store()
    with s.lock:
        return hal(render_file(s, _file_or_404(s, file_uuid)))


@bp.get("/v1.0/files")
def list_files() -> Response:
    """The account's files, newest first: ``filter[uuid]`` (a comma list),
    ``filter[name]``, ``page``, ``limit``; 204 when none match."""
    s = store()
    uuids = {u for u in (request.args.get("filter[uuid]") or "").split(",") if u}
    name = request.args.get("filter[name]")
    try:
        page = max(1, int(request.args.get("page", 1)))
        limit = min(FILES_LIMIT, max(1, int(request.args.get("limit", 50))))
    except ValueError:
        raise ApiError(400, "page and limit must be numbers") from None
    with s.lock:
        items = [
            f
            for f in sorted(
                drive_state(s)["files"].values(), key=lambda f: -int(f["id"])
            )
            if (not uuids or f["uuid"] in uuids) and (name is None or f["name"] == name)
        ]
        shown = items[(page - 1) * limit : page * limit]
        if not shown:
            return no_content()
        links: dict[str, Any] = {"self": {"href": request.url}}
        if len(items) > page * limit:
            links["next"] = {
                "href": f"{drive_url()}/v1.0/files?page={page + 1}&limit={limit}"
            }
        return hal(
            {
                "_page": page,
                "_links": links,
                "_embedded": {"files": [render_file(s, f) for f in shown]},
            }
        )


@bp.get("/download/<account_uuid>/<file_uuid>/<version_uuid>/<path:name>")
def download(
    account_uuid: str, file_uuid: str, version_uuid: str, name: str
) -> Response:
    """The file's bytes (its active version)."""
    s = store()
    with s.lock:
        item = _file_or_404(s, file_uuid)
        if (
            account_uuid != s.data["account"]["uuid"]
            or version_uuid != item["version_uuid"]
        ):
            raise ApiError(404, "File not found")
        content = base64.b64decode(item["content"])
        mime = item["metadata"]["mime_type"]
    response = Response(content, mimetype=mime)
    response.headers["Content-Disposition"] = f'attachment; filename="{item["uuid"]}"'
    return response


# -- files of an entity (account host) ---------------------------------------------


def _entity_or_404(s: Store, entity: str, entity_id: int) -> None:
    found = s.entities(entity).get(entity_id)
    if found is None or found.get("is_deleted"):
        raise ApiError(404, f"{entity} {entity_id} not found")


def _attached(s: Store, entity: str, entity_id: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = drive_state(s)["attached"].setdefault(
        f"{entity}:{entity_id}", []
    )
    return rows


def _uuids(body: list[Any]) -> list[str]:
    out = []
    errors = []
    for index, item in enumerate(body):
        value = item.get("file_uuid") if isinstance(item, dict) else None
        if not isinstance(value, str) or not value:
            errors.append(
                (
                    str(index),
                    [FieldError(NOT_BLANK, "file_uuid", "This value is required.")],
                )
            )
        else:
            out.append(value)
    if errors:
        raise ValidationFailed(errors)
    return out


@entity_bp.put(f"/{ENTITY}/<int:entity_id>/files")
def attach(entity: str, entity_id: int) -> Response:
    """Attach drive files (``[{"file_uuid": ...}]``) to the entity."""
    wanted = _uuids(json_array())
    s = store()
    with s.lock:
        _entity_or_404(s, entity, entity_id)
        files = drive_state(s)["files"]
        missing = [
            (str(i), [FieldError(NOT_BLANK, "file_uuid", "File not found.")])
            for i, u in enumerate(wanted)
            if u not in files
        ]
        if missing:
            raise ValidationFailed(missing)
        rows = _attached(s, entity, entity_id)
        for file_uuid in wanted:
            rows.append({"file_uuid": file_uuid, "id": files[file_uuid]["id"]})
        s.touch()
        return hal(
            {
                "_links": link(f"/api/v4/{entity}/{entity_id}/files"),
                "_embedded": {"files": [{"file_uuid": u} for u in wanted]},
            }
        )


@entity_bp.get(f"/{ENTITY}/<int:entity_id>/files")
def entity_files(entity: str, entity_id: int) -> Response:
    """The files attached to the entity (``limit``, ``before_id``); 204: none."""
    s = store()
    try:
        limit = min(FILES_LIMIT, max(1, int(request.args.get("limit", 50))))
        before = request.args.get("before_id")
        before_id = int(before) if before else None
    except ValueError:
        raise ApiError(400, "limit and before_id must be numbers") from None
    with s.lock:
        _entity_or_404(s, entity, entity_id)
        rows = [
            dict(r)
            for r in _attached(s, entity, entity_id)
            if before_id is None or r["id"] < before_id
        ][:limit]
        if not rows:
            return no_content()
        return hal(
            {
                "_links": link(f"/api/v4/{entity}/{entity_id}/files"),
                "_embedded": {"files": rows},
            }
        )


@entity_bp.delete(f"/{ENTITY}/<int:entity_id>/files")
def detach(entity: str, entity_id: int) -> Response:
    """Detach files (``[{"file_uuid": ...}]``) from the entity: 202."""
    wanted = set(_uuids(json_array()))
    s = store()
    with s.lock:
        _entity_or_404(s, entity, entity_id)
        rows = _attached(s, entity, entity_id)
        rows[:] = [r for r in rows if r["file_uuid"] not in wanted]
        s.touch()
    return Response(status=202)


@entity_bp.get("/files/<file_uuid>/links")
def file_links(file_uuid: str) -> Response:
    """The entities a file is attached to."""
    s = store()
    with s.lock:
        _file_or_404(s, file_uuid)
        entities = []
        for key, rows in drive_state(s)["attached"].items():
            if not any(r["file_uuid"] == file_uuid for r in rows):
                continue
            entity, entity_id = key.split(":")
            if entity not in ENTITIES:
                continue
            found = s.entities(entity).get(int(entity_id)) or {}
            entities.append(
                {
                    "id": int(entity_id),
                    "name": found.get("name"),
                    "entity_type": entity,
                    "pipeline_id": found.get("pipeline_id"),
                    "status_id": found.get("status_id"),
                }
            )
        return hal({"file_uuid": file_uuid, "entities": entities})
