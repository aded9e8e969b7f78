"""Saving uploaded files so amoCRM can link to them.

amoCRM notes hold text, not files, so an upload reaches amoCRM as a link: the file is
saved under ``AMOCRM_UPLOAD_FOLDER`` with a random name (the visitor's name for it is
never used as a path: no ``../``, no overwriting, no guessing other people's files)
and its address under ``AMOCRM_UPLOAD_URL`` goes into a note or a url field. Only
extensions in ``AMOCRM_UPLOAD_EXTENSIONS`` are kept (never ``.html`` or ``.svg``,
which a browser would run on the site's origin), and files over
``AMOCRM_UPLOAD_MAX_SIZE`` bytes are refused. A refused file is still named in the
event, with the reason.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any
from urllib.parse import urljoin

from .config import ACTIVE_EXTENSIONS

#: Bytes copied at a time.
_CHUNK = 64 * 1024


class UploadRefused(Exception):
    """The upload was not saved; the message says why, for the note."""


def save_upload(
    storage: Any,
    *,
    folder: str,
    base_url: str,
    max_size: int,
    extensions: tuple[str, ...],
) -> dict[str, Any]:
    """Save a :class:`werkzeug.datastructures.FileStorage` and return
    ``{"name", "url", "size"}``; raise :class:`UploadRefused` with the reason."""
    original = os.path.basename(str(storage.filename or "").replace("\\", "/"))
    extension = original.rsplit(".", 1)[-1].lower() if "." in original else ""
    if not extension or extension not in extensions or extension in ACTIVE_EXTENSIONS:
        raise UploadRefused(f"files of type .{extension or '?'} are not accepted")
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
                    raise UploadRefused(f"larger than {_size(max_size)}")
                out.write(chunk)
    except BaseException:
        if os.path.exists(path):
            os.remove(path)
        raise
    if size == 0:
        os.remove(path)
        raise UploadRefused("empty")
    return {
        "name": original,
        "url": file_url(base_url, f"{month}/{name}"),
        "size": size,
    }


def file_url(base_url: str, relative: str) -> str:
    """The public address of a saved file. A base on this site (``/uploads``) is
    made absolute with the current request's host, since amoCRM opens the link from
    elsewhere."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    if "://" not in base:
        from flask import has_request_context, request

        if has_request_context():
            base = urljoin(request.host_url, base.lstrip("/"))
    return base + relative


def _size(count: int) -> str:
    """``count`` bytes as people read it: 512 bytes, 20 KB, 10 MB."""
    if count < 1024:
        return f"{count} bytes"
    if count < 1024 * 1024:
        return f"{count / 1024:g} KB"
    return f"{count / 1024 / 1024:g} MB"
