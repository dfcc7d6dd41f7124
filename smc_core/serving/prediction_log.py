"""The prediction log: every answer (and every shadow answer) with its feature vector, kept.

Why this shape: ``/predict`` must never wait for the database and no row may be lost to an
outage. Rows go through a ``DurableWriter`` (bounded queue, on-disk spool, one background
thread); the database write is idempotent (the key is the decision bar, request id and
shadow flag), so a batch replayed after an acknowledgement was lost is harmless.
"""

from __future__ import annotations

import struct
from datetime import datetime

import numpy as np
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.json import Jsonb

from smc_core.db import DirectConnection
from smc_core.jsonable import dump_json
from smc_core.serving.spool import DurableWriter, Spool

COLUMNS = ("ts", "request_id", "shadow", "logged_at", "symbol", "timeframe", "model_version", "label", "raw_label",
           "confidence", "p_long", "p_short", "p_skip", "position_size", "latency_ms", "features", "feature_set",
           "arm", "halted", "risk")
COPY_TYPES = ("timestamptz", "text", "boolean", "timestamptz", "text", "text", "text", "text", "text",
              "double precision", "double precision", "double precision", "double precision", "double precision",
              "double precision", "double precision[]", "text", "text", "boolean", "jsonb")
"""The columns' types, for the binary COPY: the writer thread shares the GIL with the compute thread,
so a row's encoding is paid for in request latency; binary costs a fraction of text."""
_BEFORE_ARMS = 17
"""Columns of a row spooled before the A/B arm and the halt flag were logged (sql/013_safety.sql)."""
_TIMES = tuple(COLUMNS.index(c) for c in ("ts", "logged_at"))
_FEATURES = COLUMNS.index("features")
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
    """A row in ``COLUMNS`` order; ``features`` may be a float64 array (the request path does not
    turn it into a list: the writer dumps it as it is)."""
    return tuple(values[c] for c in COLUMNS)


class Float8ArrayDumper(Dumper):
    """``float8[]`` in PostgreSQL's binary array format, built by numpy in one pass (an array or a
    list of floats; a None is stored as NaN, the feature code's missing reading). psycopg's own
    list dumper loops over the elements in Python: with 52 features a row, the writer's COPY
    cost 20 µs of GIL time a row against 7 µs with this one."""

    format = Format.BINARY
    oid = 1022  # float8[]

    _HEAD = struct.Struct(">iiIii")  # dimensions, has nulls, element oid (float8), length, lower bound
    _CELL = np.dtype([("length", ">i4"), ("value", ">f8")])

    def dump(self, obj) -> bytes:
        try:
            values = np.asarray(obj, dtype=np.float64)
        except (TypeError, ValueError) as error:  # not numbers (a None is NaN): the row is wrong, not the database
            raise psycopg.DataError(f"features must be floats: {error}") from None
        if values.ndim != 1:
            raise psycopg.DataError(f"features must be one-dimensional, got shape {values.shape}")
        if not len(values):
            return struct.pack(">iiI", 0, 0, 701)
        cells = np.empty(len(values), dtype=self._CELL)
        cells["length"] = 8
        cells["value"] = values
        return self._HEAD.pack(1, 0, 701, len(values), 1) + cells.tobytes()


def write_predictions(conn: psycopg.Connection, rows: list[tuple]) -> None:
    """Insert prediction rows inside the caller's transaction; rows already stored are left alone.

    Straight into the table first: a fresh batch (new request ids) cannot collide, and going
    through a staging table costs the database about 60 % more CPU a row (measured: 24 against
    15 µs). A batch some of which is stored already (a replay whose acknowledgement was lost)
    fails that COPY on its key, inside a savepoint, and goes through the staging table instead,
    whose ``ON CONFLICT DO NOTHING`` keeps what is there."""
    times = [row[0] for row in rows]
    conn.execute("SELECT smc_prepare_time_range('predictions', %s, %s)", (min(times), max(times)))
    try:
        with conn.transaction():
            _copy(conn, "predictions", rows)
        return
    except psycopg.errors.UniqueViolation:
        pass
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS predictions_stage (LIKE predictions) ON COMMIT DELETE ROWS")
    _copy(conn, "predictions_stage", rows)
    conn.execute(f"INSERT INTO predictions ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} "
                 f"FROM predictions_stage ON CONFLICT DO NOTHING")


def _copy(conn: psycopg.Connection, table: str, rows: list[tuple]) -> None:
    cursor = conn.cursor()
    cursor.adapters.register_dumper(None, Float8ArrayDumper)  # this cursor's COPY only (set_types: by oid)
    with cursor.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(COPY_TYPES)
        for row in rows:
            risk = None if row[_RISK] is None else Jsonb(row[_RISK], dumps=dump_json)  # the answer's own JSON
            copy.write_row(row[:_RISK] + (risk,) + row[_RISK + 1:])


def _encode(row: tuple) -> list:
    values = list(row)
    for i in _TIMES:
        values[i] = values[i].isoformat()
    values[_FEATURES] = np.asarray(values[_FEATURES], dtype=np.float64).tolist()
    return values


def _decode(values: list) -> tuple:
    if len(values) == _BEFORE_ARMS:  # spooled by an earlier version of the service
        values = [*values, "shadow" if values[2] else "champion", False]
    if len(values) == _RISK:  # spooled before the risk block was logged (sql/014_signals.sql)
        values.append(None)
    for i in _TIMES:
        values[i] = datetime.fromisoformat(values[i])
    return tuple(values)
