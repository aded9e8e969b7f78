"""The sandbox's command line and its --state file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import requests

from flask_amocrm.sandbox import SandboxServer

H = {"Authorization": "Bearer cli-token"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_prints_url_and_saves_state(tmp_path):
    state = tmp_path / "state.json"
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flask_amocrm.sandbox",
            "--port",
            str(port),
            "--token",
            "cli-token",
            "--rate-limit",
            "0",
            "--state",
            str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line and "cli-token" in line
        url = f"http://127.0.0.1:{port}/api/v4/leads"
        r = requests.post(url, headers=H, json=[{"name": "kept"}])
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert state.exists()
    with SandboxServer(token="cli-token", state_file=str(state)) as amo:
        assert [lead["name"] for lead in amo.leads()] == ["kept"]
        amo.reset()
        assert amo.leads() == []
