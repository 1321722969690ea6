"""Fixtures: real quiver servers started from the freshly built binary, on free loopback ports,
with their data in temporary folders."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]


def _binary() -> Path:
    if os.environ.get("QUIVER_BIN"):
        return Path(os.environ["QUIVER_BIN"])
    for profile in ("debug", "release"):
        path = REPO / "target" / profile / "quiver"
        if path.exists():
            return path
    subprocess.run(["cargo", "build", "--bin", "quiver"], cwd=REPO, check=True)
    return REPO / "target" / "debug" / "quiver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"quiver at {url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"quiver at {url} not ready after {timeout} s")


class Server:
    def __init__(self, data_dir: Path, join: str | None = None) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [str(_binary()), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
               "--log", "warn", "--heartbeat-ms", "100", "--cluster-secret", "python-test-cluster-secret"]
        if join:
            cmd += ["--join", join]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _wait_ready(self.url, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One node for the whole session (each test uses its own collection)."""
    s = Server(tmp_path_factory.mktemp("quiver"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[Server]]]:
    """A leader and two read replicas."""
    leader = Server(tmp_path_factory.mktemp("leader"))
    replicas = [Server(tmp_path_factory.mktemp(f"replica{i}"), join=leader.url) for i in range(2)]
    yield leader, replicas
    for s in replicas + [leader]:
        s.stop()
