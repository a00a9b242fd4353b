"""A local ``iomface serve`` in a subprocess, for tests, benchmarks and demos.

:class:`LocalServer` writes a fresh key file (one admin and one client key, more on demand)
and application secret into a private folder, starts ``python -m iom.cli serve`` on
a free loopback port, waits until ``/health`` answers, and stops the server on exit. The
server's JSON log lines are kept in ``log_path``.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``with LocalServer(db=...) as server:`` — ``server.url``, ``server.admin_key``,
    ``server.client_key``, :meth:`add_key`, :meth:`log_lines`.

    ``db``: a SQLite path or a ``postgresql://`` URL (passed in ``IOMFACE_DB``, so a password
    stays out of the process list); ``options``: more ``serve`` options; ``env``: more
    environment (e.g. ``KERAS_BACKEND``)."""

    def __init__(self, db: str | None = None, options: list[str] | None = None, env: dict | None = None,
                 folder: str | os.PathLike | None = None, timeout_s: float = 300.0):
        self._tmp = None if folder is not None else tempfile.TemporaryDirectory(prefix="iomface-server-")
        self.folder = Path(folder if folder is not None else self._tmp.name)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = db or str(self.folder / "templates.db")
        self.options, self.env, self.timeout_s = list(options or []), dict(env or {}), timeout_s
        self.keys_file = str(self.folder / "keys.json")
        self.log_path = self.folder / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def add_key(self, name: str, role: str) -> str:
        """A new API key (the running server picks it up without a restart)."""
        from iom.server.api_keys import add_key

        return add_key(self.keys_file, name, role)

    def remove_key(self, name: str) -> None:
        from iom.server.api_keys import remove_key

        remove_key(self.keys_file, name)

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    def __enter__(self) -> "LocalServer":
        import httpx

        self.admin_key = self.add_key("admin", "admin")
        self.client_key = self.add_key("client", "client")
        secret = self.folder / "app.secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        env = {**os.environ, "IOMFACE_DB": self.db, **self.env}
        env.pop("IOMFACE_APP_SECRET", None)
        command = [sys.executable, "-m", "iom.cli", "serve", "--port", str(self.port),
                   "--keys_file", self.keys_file, "--secret_file", str(secret),
                   "--witness", str(self.folder / "witness"), *self.options]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        cwd=str(self.folder))
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.process.poll() is not None:
                self._log.close()
                raise RuntimeError(f"iomface serve exited with {self.process.returncode}:\n"
                                   + "\n".join(self.log_lines()[-20:]))
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise TimeoutError(f"iomface serve did not answer within {self.timeout_s:.0f} s")
            time.sleep(0.25)

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if hasattr(self, "_log") and not self._log.closed:
            self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
