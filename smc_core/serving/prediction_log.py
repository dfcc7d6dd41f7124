"""The prediction log: every answer (and every shadow answer) with its feature vector, kept.

Why this shape: ``/predict`` must never wait for the database and no row may be lost to an
outage. Rows go through a ``DurableWriter`` (bounded queue, on-disk spool, one background
thread); the database write is idempotent (the key is the decision bar, request id and
shadow flag), so a batch replayed after an acknowledgement was lost is harmless.
"""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from smc_core.db import DirectConnection
from smc_core.serving.spool import DurableWriter, Spool

COLUMNS = ("ts", "request_id", "shadow", "logged_at", "symbol", "timeframe", "model_version", "label", "raw_label",
           "confidence", "p_long", "p_short", "p_skip", "position_size", "latency_ms", "features", "feature_set",
           "arm", "halted", "risk")
COPY_TYPES = ("timestamptz", "text", "boolean", "timestamptz", "text", "text", "text", "text", "text",
              "double precision", "double precision", "double precision", "double precision", "double precision",
              "double precision", "double precision[]", "text", "text", "boolean", "jsonb")
"""The columns' types, for the binary COPY: dumped in C, a row's 52-float feature array costs the
writer thread (and the GIL it shares with the compute thread) a third of the text format's CPU
(measured: 0.03 against 0.09 ms per row)."""
_BEFORE_ARMS = 17
"""Columns of a row spooled before the A/B arm and the halt flag were logged (sql/013_safety.sql)."""
_TIMES = tuple(COLUMNS.index(c) for c in ("ts", "logged_at"))
_RISK = COLUMNS.index("risk")
WRITE_TIMEOUT_S = 2.0
"""How long a request-path-adjacent database call (an upload, a warm-up read) waits for a pooled connection."""


def permanent(error: Exception) -> bool:
    """Errors about the rows themselves, which no retry will fix (anything else: the database is away)."""
    return isinstance(error, (psycopg.errors.DataError, psycopg.errors.IntegrityError))


def direct_connection(database) -> DirectConnection:
    """A writer's own connection to ``database`` (a Database, or a callable giving one lazily)."""
    resolve = database if callable(database) else (lambda: database)
    return DirectConnection(lambda: resolve().url)


def prediction_writer(database, spool: Spool, **options) -> DurableWriter:
    """The prediction log: submit ``prediction_row`` tuples; ``database`` as in ``direct_connection``."""
    connection = direct_connection(database)

    def write(rows: list[tuple]) -> None:
        with connection.transaction() as conn:
            write_predictions(conn, rows)

    return DurableWriter("prediction-log", write, spool, encode=_encode, decode=_decode, is_permanent=permanent,
                         **options)


def prediction_row(values: dict) -> tuple:
    return tuple(values[c] for c in COLUMNS)


def write_predictions(conn: psycopg.Connection, rows: list[tuple]) -> None:
    """Insert prediction rows inside the caller's transaction; rows already stored are left alone."""
    times = [row[0] for row in rows]
    conn.execute("SELECT smc_prepare_time_range('predictions', %s, %s)", (min(times), max(times)))
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS predictions_stage (LIKE predictions) ON COMMIT DELETE ROWS")
    with conn.cursor().copy(f"COPY predictions_stage ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(COPY_TYPES)
        for row in rows:
            copy.write_row(row[:_RISK] + (None if row[_RISK] is None else Jsonb(row[_RISK]),) + row[_RISK + 1:])
    conn.execute(f"INSERT INTO predictions ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} "
                 f"FROM predictions_stage ON CONFLICT DO NOTHING")


def _encode(row: tuple) -> list:
    values = list(row)
    for i in _TIMES:
        values[i] = values[i].isoformat()
    return values


def _decode(values: list) -> tuple:
    if len(values) == _BEFORE_ARMS:  # spooled by an earlier version of the service
        values = [*values, "shadow" if values[2] else "champion", False]
    if len(values) == _RISK:  # spooled before the risk block was logged (sql/014_signals.sql)
        values.append(None)
    for i in _TIMES:
        values[i] = datetime.fromisoformat(values[i])
    return tuple(values)
