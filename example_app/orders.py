"""The example shop's orders: a small SQLite table in the instance folder, so the
site and its workers (other processes) see the same orders."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from typing import Any

from flask import Flask

#: The first order number.
FIRST = 1001


def _connect(app: Flask) -> sqlite3.Connection:
    os.makedirs(app.instance_path, exist_ok=True)
    db = sqlite3.connect(os.path.join(app.instance_path, "orders.sqlite3"), timeout=10)
    db.execute(
        "CREATE TABLE IF NOT EXISTS orders (number INTEGER PRIMARY KEY, "
        "product TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL)"
    )
    return db


def place(app: Flask, product: str, name: str) -> int:
    """A new order (status ``new``); its number."""
    with closing(_connect(app)) as db, db:
        last = db.execute("SELECT MAX(number) FROM orders").fetchone()[0]
        number = int(last or FIRST - 1) + 1
        db.execute(
            "INSERT INTO orders VALUES (?, ?, ?, 'new')", (number, product, name)
        )
    return number


def mark_paid(app: Flask, number: int) -> None:
    """The order is paid."""
    with closing(_connect(app)) as db, db:
        db.execute("UPDATE orders SET status = 'paid' WHERE number = ?", (number,))


def get(app: Flask, number: int) -> dict[str, Any] | None:
    """The order, or ``None``."""
    with closing(_connect(app)) as db:
        row = db.execute(
            "SELECT number, product, name, status FROM orders WHERE number = ?",
            (number,),
        ).fetchone()
    if row is None:
        return None
    return dict(zip(("number", "product", "name", "status"), row, strict=True))
