"""A throw-away PostgreSQL server for tests, started from the installed binaries.

:func:`postgres_server` finds ``initdb``/``pg_ctl`` (on ``PATH``, else the newest
``/usr/lib/postgresql/*/bin``), and

1. ``initdb -D TMP/data -U postgres -A trust -E UTF8 --no-locale --no-sync --no-instructions``
2. ``pg_ctl -D TMP/data -l TMP/server.log -w -t 60 start -o "-p PORT -k TMP
   -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"``
   (a free localhost port, the unix socket in the temp dir, no durability: it is a test server)
3. yields a :class:`PgServer` whose ``dsn`` connects as the ``postgres`` superuser over TCP
4. ``pg_ctl -D TMP/data -m immediate -w stop`` and removes TMP.

PostgreSQL refuses to run as root: when the tests run as root the temp dir is chowned to
the ``postgres`` system user (created by Debian's ``postgresql`` package) and the binaries
run as that user (``subprocess`` with ``user=``/``group=``, what ``runuser -u postgres``
does). Without binaries (or, as root, without a ``postgres`` user) :func:`unavailable_reason`
says why and the fixtures skip.

On a fresh Debian machine: ``apt-get install -y postgresql`` (or ``postgresql-15``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def find_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl (PATH first, then /usr/lib/postgresql/*/bin)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).resolve().parent
    def version(path: str) -> tuple:
        part = Path(path).parent.name
        return tuple(int(x) for x in part.split(".") if x.isdigit())
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.access(Path(d, "initdb"), os.X_OK) and os.access(Path(d, "pg_ctl"), os.X_OK):
            return Path(d)
    return None


def _run_as() -> pwd.struct_passwd | None:
    """The user to run the server as: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")


def unavailable_reason() -> str | None:
    """Why no test server can be started here, or None if it can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]>=3.2')"
    if find_bin_dir() is None:
        return ("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin; "
                "install them, e.g. apt-get install postgresql")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' system user to run PostgreSQL as"
    return None


def _temp_base(as_other_user: bool) -> str:
    """Where to make the server's temp dir: the usual temp folder, unless its path is too
    long for a unix socket (~107 bytes) or, when the server runs as another user, some
    folder above it is not world-searchable; then /tmp."""
    base = Path(tempfile.gettempdir()).resolve()
    ok = len(str(base)) < 60
    if ok and as_other_user:
        ok = all(p.stat().st_mode & 0o001 for p in [base, *base.parents])
    return str(base) if ok else "/tmp"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A running test server: connect with :attr:`dsn` (superuser, database ``postgres``)."""

    host: str
    port: int
    root: Path

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"host={self.host} port={self.port} user=postgres dbname={dbname} connect_timeout=10"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"


_counter = itertools.count()


@contextlib.contextmanager
def _temporary(admin_dsn: str, create: str, drop: str, **conninfo) -> Iterator[str]:
    """Run ``create`` on the server of ``admin_dsn``, yield its DSN changed by ``conninfo``,
    run ``drop`` after."""
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(create)
    info = {**psycopg.conninfo.conninfo_to_dict(admin_dsn), **conninfo}
    try:
        yield psycopg.conninfo.make_conninfo(**info)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(drop)


def fresh_database(admin_dsn: str, prefix: str = "iomtest"):
    """A new, empty database on the server of ``admin_dsn``; yields its DSN, drops it after."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    return _temporary(admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE template0',
                      f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', dbname=name)


def fresh_schema(admin_dsn: str, prefix: str = "iomtest"):
    """A new, empty schema in the database of ``admin_dsn``; yields a DSN whose
    ``search_path`` is that schema (so unqualified tables live there), drops it after.
    Much faster than :func:`fresh_database` (no copy of a template database)."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    return _temporary(admin_dsn, f'CREATE SCHEMA "{name}"', f'DROP SCHEMA IF EXISTS "{name}" CASCADE',
                      options=f"-c search_path={name}")


@contextlib.contextmanager
def postgres_server(start_timeout: int = 60) -> Iterator[PgServer]:
    """Start a throw-away server (see the module docstring); stop and remove it after."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    bin_dir = find_bin_dir()
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="iom-pg-", dir=_temp_base(user is not None)))
    kwargs: dict = {"cwd": root, "stdin": subprocess.DEVNULL,
                    "env": {**os.environ, "LC_ALL": "C", "LANG": "C"}}
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        kwargs["env"]["HOME"] = str(root)

    def run(*args: str, timeout: float) -> subprocess.CompletedProcess:
        # output to a file, not a pipe: the server pg_ctl leaves behind must not hold our pipe
        with open(root / "commands.log", "ab") as log:
            return subprocess.run([str(bin_dir / args[0]), *args[1:]], stdout=log, stderr=log,
                                  timeout=timeout, **kwargs)

    def log_tail() -> str:
        text = ""
        for name in ("commands.log", "server.log"):
            with contextlib.suppress(OSError):
                text += (root / name).read_text(errors="replace")[-2000:]
        return text

    data = root / "data"
    started = False

    def stop() -> None:
        nonlocal started
        if started:
            with contextlib.suppress(Exception):
                run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
            started = False
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    try:
        r = run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale",
                "--no-sync", "--no-instructions", timeout=120)
        if r.returncode:
            raise RuntimeError(f"initdb failed ({r.returncode}):\n{log_tail()}")
        for _attempt in range(5):
            port = _free_port()
            opts = " ".join([f"-p {port}", f"-k {shlex.quote(str(root))}",
                             "-c listen_addresses=127.0.0.1", "-c fsync=off",
                             "-c synchronous_commit=off", "-c full_page_writes=off",
                             "-c max_connections=60"])
            r = run("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-t",
                    str(start_timeout), "-o", opts, "start", timeout=start_timeout + 30)
            if r.returncode == 0:
                started = True
                break
            time.sleep(0.2)          # most likely the port was taken meanwhile: try another
        else:
            raise RuntimeError(f"pg_ctl start failed:\n{log_tail()}")
        yield PgServer("127.0.0.1", port, root)
    finally:
        stop()
        atexit.unregister(stop)
