"""What the chaos tests own and break: Celery processes, a Redis server, a PostgreSQL cluster.

Every process is started in its own session (its own process group), so a test can SIGKILL
or SIGSTOP a whole ``celery worker`` (main process and pool children) at once. Each class
cleans up after itself in ``close()``; use them as context managers.

A missing binary is reported through ``services.missing``: a skip locally, a failure
under ``CI=true``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import redis

from .ledger import wait_for
from .services import missing

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now (another test run may share the machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary(name: str, *patterns: str) -> str:
    """The path of an executable, from PATH or the glob ``patterns``; missing() if none."""
    found = shutil.which(name)
    if found is None:
        for pattern in patterns:
            matches = sorted(glob.glob(pattern), key=_version_key)
            if matches:
                found = matches[-1]  # the newest version directory
                break
    if found is None:
        missing(name, FileNotFoundError(f"{name} is not installed (PATH, {', '.join(patterns)})"))
    assert found is not None
    return found


def _version_key(path: str) -> list[int]:
    return [int(part) for part in re.findall(r"\d+", path)]


# -- redis-server ------------------------------------------------------------------------


class RedisServer:
    """A throwaway ``redis-server`` with no persistence: stopping it loses every message."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.executable = binary("redis-server")
        self.folder = folder
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = folder / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def ping(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self, timeout: float = 30.0) -> RedisServer:
        assert self.process is None or self.process.poll() is not None, "already running"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.executable,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.folder),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._up, timeout, f"redis-server on port {self.port} to answer PING")
        return self

    def _up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"redis-server exited with {self.process.returncode}:\n"
                + self.log_path.read_text(errors="replace")[-3000:]
            )
        return self.ping()

    def stop(self) -> None:
        """SIGKILL: no save, no goodbye; every queued and unacked message is gone."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(timeout=30)

    def restart(self, timeout: float = 30.0) -> RedisServer:
        self.stop()
        return self.start(timeout)


# -- a PostgreSQL cluster ----------------------------------------------------------------


class PostgresServer:
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``), trust auth, own port.

    PostgreSQL refuses to run as root: as root, its commands run as the ``postgres`` OS
    user, in a directory under /tmp that user owns (pytest's tmp_path is root-only).
    """

    def __init__(self, port: int | None = None) -> None:
        # The real bin directory (PATH may hold symlinks), where initdb sits next to pg_ctl.
        self.bindir = (
            Path(binary("pg_ctl", "/usr/lib/postgresql/*/bin/pg_ctl", "/usr/pgsql-*/bin/pg_ctl"))
            .resolve()
            .parent
        )
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="romancy-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            runuser = binary("runuser")
            self._as_postgres = [runuser, "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres", "postgres")
        self.running = False

    def __enter__(self) -> PostgresServer:
        try:
            self.init()
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, *command: str, timeout: float = 120.0) -> str:
        done = subprocess.run(
            [*self._as_postgres, str(self.bindir / command[0]), *command[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                + self.server_log()[-3000:]
            )
        return done.stdout

    def server_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> PostgresServer:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            "60",
            "start",
        )
        self.running = True
        return self

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: every backend dies at once, no checkpoint (a crash, to clients)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def restart(self) -> PostgresServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
