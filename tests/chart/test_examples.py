"""The examples' images run as their Dockerfiles say: their ENV and ENTRYPOINT, under the real
cluster-init (CLUSTER_INIT_BIN), on loopback ports of this machine.

Only gunicorn's and the standard library's examples run here (Python is what this machine
has). gunicorn's shows why its Dockerfile sets CLUSTER_INIT_READY=notify: it sends READY=1
itself, so /readyz waits for it; the stdlib server never does, so under notify it never counts
as ready.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_dockerfiles import instructions  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = pathlib.Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_env_and_command(example: str) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    command: list[str] = []
    for ins in instructions(REPO / "examples" / example / "Dockerfile"):
        if ins.name == "ENV":
            for pair in ins.args.split():
                key, _, value = pair.partition("=")
                env[key] = value
        elif ins.name == "ENTRYPOINT":
            command = json.loads(ins.args)
    return env, command


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


class Running:
    """cluster-init with an example's ENV and ENTRYPOINT, ports moved to free loopback ones."""

    def __init__(self, example: str, **overrides: str):
        binary = os.environ.get("CLUSTER_INIT_BIN")
        if not binary:
            pytest.skip("CLUSTER_INIT_BIN is set by tests/chart.rs")
        env, command = image_env_and_command(example)
        assert command[0] == "cluster-init"
        self.port, self.admin = free_port(), free_port()
        env.update(CLUSTER_INIT_LISTEN=f"127.0.0.1:{self.port}", CLUSTER_INIT_ADMIN_LISTEN=f"127.0.0.1:{self.admin}",
                   CLUSTER_INIT_WORKERS="1", PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                   HOME=os.environ.get("HOME", "/tmp"), PYTHONDONTWRITEBYTECODE="1", **overrides)
        # gunicorn's --bind is ignored while it takes fd 3; if it did not, it would fail on the
        # taken port rather than listen anywhere else.
        command = [f"127.0.0.1:{self.port}" if w == "0.0.0.0:3000" else w for w in command]
        self.process = subprocess.Popen([binary, *command[1:]], env=env, cwd=REPO / "examples" / example,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)

    def readyz(self) -> int:
        return get(f"http://127.0.0.1:{self.admin}/readyz")[0]

    def wait_for(self, predicate, limit: float) -> bool:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            assert self.process.poll() is None, self.process.communicate()[1]
            if predicate():
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> str:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            _, err = self.process.communicate()
        return err


@pytest.fixture
def run():
    started: list[Running] = []

    def do(example: str, **overrides: str) -> Running:
        started.append(Running(example, **overrides))
        return started[-1]

    yield do
    for r in started:
        r.stop()


def test_gunicorn_example_is_ready_once_gunicorn_notifies(run):
    if not (VENV_BIN / "gunicorn").exists():
        pytest.skip("gunicorn (examples/gunicorn/requirements.txt) is installed by tests/chart.rs")
    r = run("gunicorn")
    assert r.wait_for(lambda: r.readyz() == 200, 30), "gunicorn's READY=1 never made /readyz 200"
    status, body = get(f"http://127.0.0.1:{r.port}/")
    assert status == 200 and "hello from worker 0" in body, body


def test_a_server_that_never_notifies_is_never_ready_under_notify(run):
    # The control case: under notify, readiness comes from READY=1, not from the process running.
    silent = run("python", CLUSTER_INIT_READY="notify")
    assert silent.wait_for(lambda: get(f"http://127.0.0.1:{silent.port}/")[0] == 200, 30), "the server never answered"
    assert silent.readyz() == 503
    started = run("python", CLUSTER_INIT_READY="started")
    assert started.wait_for(lambda: started.readyz() == 200, 30)
