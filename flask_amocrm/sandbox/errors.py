"""Error bodies as amoCRM sends them.

API errors are ``application/problem+json`` objects ``{title, type, status, detail}``;
validation failures add ``validation-errors`` keyed by the item's ``request_id``;
OAuth errors use the ``OAuthProblemJson`` type and add a ``hint``. The gateway's own
answers (429 and the 403 block) are HTML pages, not JSON.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response

PROBLEM_TYPE = "https://httpstatus.es/{status}"
OAUTH_PROBLEM_TYPE = "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def problem_body(status: int, detail: str, **extra: Any) -> dict[str, Any]:
    """The problem+json body for ``status``."""
    body: dict[str, Any] = {
        "title": TITLES.get(status, "Error"),
        "type": PROBLEM_TYPE.format(status=status),
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return body


def problem_response(status: int, body: dict[str, Any]) -> Response:
    """Serialise a problem body with the content type amoCRM uses."""
    return Response(
        json.dumps(body, ensure_ascii=False),
        status=status,
        mimetype="application/problem+json",
    )


class ApiError(Exception):
    """An error the API answers with a problem+json body."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The problem body for this error."""
        return problem_body(self.status, self.detail, **self.extra)


#: Validation error codes. amoCRM's documented ones are the first two; for a value of
#: the wrong shape the real service answers 400 too, but its code is not
#: documented. Its codes follow Symfony constraint names, so "InvalidType" is our
#: best guess.
NOT_SUPPORTED = "NotSupportedChoice"
NOT_EXPECTED = "FieldNotExpected"
INVALID_TYPE = "InvalidType"
NOT_BLANK = "NotBlank"


class FieldError(Exception):
    """One validation error inside one item: raised by validators, collected by views.

    ``path`` is the dotted path into the submitted item, e.g.
    ``custom_fields_values.0.values.1.enum_id``.
    """

    def __init__(self, code: str, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.code = code
        self.path = path
        self.detail = detail

    @classmethod
    def not_a_choice(cls, path: str) -> FieldError:
        """amoCRM's answer to an id, enum or code that does not exist."""
        return cls(NOT_SUPPORTED, path, "The value you selected is not a valid choice.")

    def as_dict(self) -> dict[str, str]:
        """The error as an entry of ``validation-errors[].errors``."""
        return {"code": self.code, "path": self.path, "detail": self.detail}


class ValidationFailed(ApiError):
    """400 with ``validation-errors``: ``[(request_id, [FieldError, ...]), ...]``."""

    def __init__(self, items: list[tuple[str, list[FieldError]]]) -> None:
        super().__init__(
            400,
            "Request validation failed",
            **{
                "validation-errors": [
                    {"request_id": rid, "errors": [e.as_dict() for e in errors]}
                    for rid, errors in items
                ]
            },
        )


class OAuthError(Exception):
    """An OAuth problem (``/oauth2/access_token``), with amoCRM's Russian titles."""

    def __init__(self, status: int, title: str, detail: str, hint: str | None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.hint = hint

    def body(self) -> dict[str, Any]:
        """The OAuthProblemJson body."""
        body: dict[str, Any] = {}
        if self.hint is not None:
            body["hint"] = self.hint
        body.update(
            {
                "title": self.title,
                "type": OAUTH_PROBLEM_TYPE,
                "status": self.status,
                "detail": self.detail,
            }
        )
        return body


# The gateway pages. amoCRM's 429 and 403 come from nginx in front of the API, so
# they are HTML without Retry-After (as users of the real API report).
HTML_429 = (
    "<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n"
    "<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
HTML_403 = (
    "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n"
    "<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
HTML_5XX = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def html_response(status: int) -> Response:
    """An nginx-style HTML page for a gateway status."""
    if status == 429:
        text = HTML_429
    elif status == 403:
        text = HTML_403
    else:
        text = HTML_5XX.format(status=status, reason=TITLES.get(status, "Error"))
    return Response(text, status=status, mimetype="text/html")
