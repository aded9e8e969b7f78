"""Shared pieces of the benchmarks: a sandbox in its own process, a Redis to use,
percentiles, and the row every result is printed as (``what | figure | floor or
ceiling measured in the same run | goal``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def sandbox_process(*args: str) -> Iterator[str]:
    """Run ``python -m flask_amocrm.sandbox`` in its own process; yield its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "flask_amocrm.sandbox", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                requests.get(url + "/_sandbox/state", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def bench_redis() -> Iterator[str]:
    """The Redis URL to measure with: ``BENCH_REDIS_URL`` when set, else database 12
    of 127.0.0.1:6379 when it answers (``make bench`` starts one there), else a
    ``redis-server`` of our own on a free port (as the tests start theirs)."""
    import redis

    if "BENCH_REDIS_URL" in os.environ:
        yield REDIS_URL
        return
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        pass
    else:
        yield REDIS_URL
        return
    import tempfile
    from pathlib import Path

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.helpers.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory)).start()
        try:
            yield f"{server.url}/12"
        finally:
            server.stop()


#: The columns of :func:`row`.
ROW_HEADER = ("what", "figure", "floor / ceiling (same run)", "goal")


def row(what: str, figure: str, floor: str, goal: str, met: bool | None) -> None:
    """Print one result: the figure, the floor or ceiling measured in the same run,
    the goal, and whether it is met."""
    mark = "" if met is None else ("  ok" if met else "  MISSED")
    print(f"| {what} | {figure} | {floor} | {goal}{mark} |", flush=True)


def header(title: str) -> None:
    print(f"\n{title}\n| {' | '.join(ROW_HEADER)} |\n|---|---|---|---|", flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def postgres_available() -> bool:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def search_path(*folders: str) -> str:
    """``PYTHONPATH`` for a child process: ``folders`` first, then the caller's own
    (a checkout on ``PYTHONPATH`` is measured, not the installed copy)."""
    inherited = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*folders, *([inherited] if inherited else [])])
