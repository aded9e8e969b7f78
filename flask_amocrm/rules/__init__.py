"""Rules: what an event becomes in amoCRM (schema, lookup, sandboxed templates)."""

from __future__ import annotations

from .schema import find_rule, validate_rules
from .templates import render, render_value

__all__ = ["find_rule", "render", "render_value", "validate_rules"]
