"""The amoCRM client: the only code that talks to amoCRM."""

from __future__ import annotations

from .client import AmoClient

__all__ = ["AmoClient"]
