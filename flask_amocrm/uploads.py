"""Saving uploaded files so amoCRM can link to them.

amoCRM notes hold text, not files, so an upload reaches amoCRM as a link: the file is
saved under ``AMOCRM_UPLOAD_FOLDER`` with a random name (the visitor's name for it is
never used as a path: no ``../``, no overwriting, no guessing other people's files)
and its address under ``AMOCRM_UPLOAD_URL`` goes into a note or a url field. Only
extensions in ``AMOCRM_UPLOAD_EXTENSIONS`` are kept (never ``.html`` or ``.svg``,
which a browser would run on the site's origin), and files over
``AMOCRM_UPLOAD_MAX_SIZE`` bytes are refused. One event saves at most
``AMOCRM_UPLOAD_MAX_FILES`` files and ``AMOCRM_UPLOAD_MAX_TOTAL`` bytes in all. A
refused file is still named in the event, with the reason (past the file limit,
one line says how many more were sent). Each saved file's ``path`` under the
folder is kept, so the retention purge deletes it with its event.

Links are built from configuration only (``AMOCRM_UPLOAD_URL`` with its host, or a
path made absolute with ``SERVER_NAME`` at ``init_app``), never from the ``Host``
header a visitor sends.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

from .config import ACTIVE_EXTENSIONS, Settings
from .errors import UploadRefused
from .i18n import N_, localize, site_locale

log = logging.getLogger("flask_amocrm")

#: Bytes copied at a time.
_CHUNK = 64 * 1024


def save_upload(
    storage: Any,
    *,
    folder: str,
    base_url: str,
    max_size: int,
    extensions: tuple[str, ...],
    room: int | None = None,
) -> dict[str, Any]:
    """Save a :class:`werkzeug.datastructures.FileStorage` and return
    ``{"name", "url", "size", "path"}``; raise :class:`UploadRefused` with the
    reason. ``room``: how many bytes the event may still save."""
    original = os.path.basename(str(storage.filename or "").replace("\\", "/"))
    extension = original.rsplit(".", 1)[-1].lower() if "." in original else ""
    if not extension or extension not in extensions or extension in ACTIVE_EXTENSIONS:
        raise UploadRefused(
            N_(
                "files of type .%(extension)s are not accepted",
                extension=extension or "?",
            )
        )
    month = time.strftime("%Y/%m")
    directory = os.path.join(folder, month)
    os.makedirs(directory, exist_ok=True)
    name = f"{secrets.token_urlsafe(18)}.{extension}"
    path = os.path.join(directory, name)
    size = 0
    stream = storage.stream
    try:
        with open(path, "xb") as out:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_size:
                    raise UploadRefused(
                        N_("larger than %(size)s", size=_size(max_size))
                    )
                if room is not None and size > room:
                    raise UploadRefused(
                        N_(
                            "not saved: the files of this form are over their "
                            "total size"
                        )
                    )
                out.write(chunk)
    except BaseException:
        if os.path.exists(path):
            os.remove(path)
        raise
    if size == 0:
        os.remove(path)
        raise UploadRefused(N_("empty"))
    return {
        "name": original,
        "url": file_url(base_url, f"{month}/{name}"),
        "size": size,
        "path": f"{month}/{name}",
    }


def file_url(base_url: str, relative: str) -> str:
    """The public address of a saved file: ``AMOCRM_UPLOAD_URL`` (made absolute
    from ``SERVER_NAME`` at ``init_app`` when it is a path) and the file's place."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    return base + relative


def _size(count: int) -> str:
    """``count`` bytes as people read it: 512 bytes, 20 KB, 10 MB."""
    if count < 1024:
        return N_("%(count)s bytes", count=count)
    if count < 1024 * 1024:
        return f"{count / 1024:g} KB"
    return f"{count / 1024 / 1024:g} MB"


def _said(reason: Any) -> str:
    """A reason kept with a file, in the site's language (it is stored)."""
    return localize(reason, site_locale())


def file_links(
    files: Mapping[str, Any] | None, settings: Settings
) -> list[dict[str, Any]]:
    """Uploads saved under ``AMOCRM_UPLOAD_FOLDER``, and links a site passes itself,
    as ``[{"field", "name", "url"}]``; a file that was not saved has ``url: None`` and
    the reason in ``error``."""
    links: list[dict[str, Any]] = []
    if not files:
        return links
    getlist = getattr(files, "getlist", None)
    items: list[tuple[Any, Any]] = (
        [(k, v) for k in files for v in getlist(k)]
        if callable(getlist)
        else list(files.items())
    )
    limit = settings.upload_max_files
    saved = {"count": 0, "bytes": 0}
    for index, (field, value) in enumerate(items):
        if index >= limit:
            links.append(
                {
                    "field": "",
                    "name": "",
                    "url": None,
                    "error": _said(
                        N_("%(count)s more file(s) not saved", count=len(items) - index)
                    ),
                }
            )
            break
        if isinstance(value, str):
            url = value.strip()
            entry: dict[str, Any] = {
                "field": str(field),
                "name": url.rsplit("/", 1)[-1][:200],
                "url": url[:2000],
            }
            if not url.lower().startswith(("http://", "https://")):
                entry.update(url=None, error=_said(N_("not an http(s) link")))
            links.append(entry)
        elif value is not None and getattr(value, "filename", None):
            links.append(_saved(str(field), value, settings, saved))
    return links


def _saved(
    field: str, storage: Any, settings: Settings, saved: dict[str, int]
) -> dict[str, Any]:
    # The visitor's path is theirs: keep only the last part, as a label.
    name = str(storage.filename).replace("\\", "/").rsplit("/", 1)[-1]
    entry: dict[str, Any] = {"field": field, "name": name[:200], "url": None}
    if not settings.upload_folder or not settings.upload_url:
        entry["error"] = _said(N_("uploads are not saved (AMOCRM_UPLOAD_FOLDER)"))
        return entry
    if saved["count"] >= settings.upload_max_files:
        entry["error"] = _said(
            N_(
                "not saved: a form saves at most %(count)s file(s)",
                count=settings.upload_max_files,
            )
        )
        return entry
    try:
        result = save_upload(
            storage,
            folder=settings.upload_folder,
            base_url=settings.upload_url,
            max_size=settings.upload_max_size,
            extensions=settings.upload_extensions,
            room=settings.upload_max_total - saved["bytes"],
        )
    except UploadRefused as exc:
        entry["error"] = _said(exc)
    except OSError as exc:
        log.exception("Flask-AmoCRM could not save an upload")
        entry["error"] = _said(N_("could not be saved (%(error)s)", error=exc.strerror))
    else:
        saved["count"] += 1
        saved["bytes"] += result["size"]
        entry.update(url=result["url"], size=result["size"], path=result["path"])
    return entry
