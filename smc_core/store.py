"""Reading bars and reading/writing the derived tables (features, labels).

Derived rows are replaced per (symbol, timeframe, time range) inside one transaction:
they are a pure function of the bars, so recomputing a partition must leave exactly the
new rows, never a mix. Bars themselves are only ever written by ``smc_core.ingest``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from smc_core.db import Database

if TYPE_CHECKING:  # the bar layer must not import the feature code
    from smc_core.features.catalogue import FeatureCatalogue

BAR_COLUMNS = ["ts", "open", "high", "low", "close", "volume", "delta"]
LABEL_COLUMNS = ["label", "t1", "ret", "barrier"]


def load_bars(db: Database, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp,
              *, history: int = 0) -> pd.DataFrame:
    """Bars with close in (start, end], preceded by up to ``history`` earlier bars (the
    tail a lookback needs), oldest first; ``delta`` is NaN where the data had none."""
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT ts, open, high, low, close, volume, delta FROM bars
               WHERE symbol = %s AND timeframe = %s AND ts > %s AND ts <= %s ORDER BY ts""",
            (symbol, timeframe, start, end),
        ).fetchall()
        earlier = []
        if history > 0:
            earlier = conn.execute(
                """SELECT ts, open, high, low, close, volume, delta FROM bars
                   WHERE symbol = %s AND timeframe = %s AND ts <= %s ORDER BY ts DESC LIMIT %s""",
                (symbol, timeframe, start, history),
            ).fetchall()[::-1]
    frame = pd.DataFrame(earlier + rows, columns=BAR_COLUMNS)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ns, UTC]")
    for column in BAR_COLUMNS[1:]:
        frame[column] = frame[column].astype("float64")
    return frame


def register_feature_set(db: Database, catalogue: "FeatureCatalogue") -> str:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO feature_sets (version, names, catalogue) VALUES (%s, %s, %s) ON CONFLICT (version) DO NOTHING",
            (catalogue.version, catalogue.names, json.dumps(catalogue.to_json())),
        )
    return catalogue.version


def write_features(db: Database, symbol: str, timeframe: str, rows: pd.DataFrame, catalogue: "FeatureCatalogue",
                   start: pd.Timestamp, end: pd.Timestamp) -> int:
    """Replace the feature rows of (start, end] with ``rows`` (index ts, catalogue columns)."""
    if list(rows.columns) != catalogue.names:
        raise ValueError("feature columns do not match the catalogue order")
    register_feature_set(db, catalogue)
    values = rows.to_numpy(dtype="float64")
    with db.connection() as conn:
        conn.execute("SELECT smc_prepare_time_range('features', %s, %s)", (start, end))
        conn.execute(
            "DELETE FROM features WHERE symbol = %s AND timeframe = %s AND feature_set = %s AND ts > %s AND ts <= %s",
            (symbol, timeframe, catalogue.version, start, end),
        )
        with conn.cursor().copy(
                "COPY features (symbol, timeframe, ts, feature_set, values) FROM STDIN") as copy:
            for ts, vector in zip(rows.index, values):
                copy.write_row((symbol, timeframe, ts, catalogue.version, vector.tolist()))
    return len(rows)


def read_features(db: Database, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp,
                  catalogue: "FeatureCatalogue") -> pd.DataFrame:
    """Feature rows with ts in (start, end] for ``catalogue``'s version, index ts."""
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT ts, values FROM features WHERE symbol = %s AND timeframe = %s AND feature_set = %s
               AND ts > %s AND ts <= %s ORDER BY ts""",
            (symbol, timeframe, catalogue.version, start, end),
        ).fetchall()
    index = pd.DatetimeIndex(pd.to_datetime([r[0] for r in rows], utc=True), name="ts").astype("datetime64[ns, UTC]")
    values = np.array([r[1] for r in rows], dtype="float64").reshape(len(rows), len(catalogue.names))
    return pd.DataFrame(values, index=index, columns=catalogue.names)


def feature_symbols(db: Database, timeframe: str, catalogue: "FeatureCatalogue") -> list[str]:
    """Symbols with stored feature rows of ``catalogue``'s version, sorted."""
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT DISTINCT symbol FROM features WHERE timeframe = %s AND feature_set = %s ORDER BY symbol",
            (timeframe, catalogue.version),
        ).fetchall()
    return [row[0] for row in rows]


def write_labels(db: Database, symbol: str, timeframe: str, horizon: str, labels: pd.DataFrame,
                 start: pd.Timestamp, end: pd.Timestamp) -> int:
    """Replace the labels of one horizon in (start, end]; ``labels`` has ts and LABEL_COLUMNS."""
    with db.connection() as conn:
        conn.execute("SELECT smc_prepare_time_range('labels', %s, %s)", (start, end))
        conn.execute(
            "DELETE FROM labels WHERE symbol = %s AND timeframe = %s AND horizon = %s AND ts > %s AND ts <= %s",
            (symbol, timeframe, horizon, start, end),
        )
        with conn.cursor().copy(
                "COPY labels (symbol, timeframe, ts, horizon, label, t1, ret, barrier) FROM STDIN") as copy:
            for row in labels.itertuples(index=False):
                t1 = None if pd.isna(row.t1) else row.t1
                ret = None if pd.isna(row.ret) else float(row.ret)
                copy.write_row((symbol, timeframe, row.ts, horizon, int(row.label), t1, ret, str(row.barrier)))
    return len(labels)


def read_labels(db: Database, symbol: str, timeframe: str, horizon: str, start: pd.Timestamp,
                end: pd.Timestamp) -> pd.DataFrame:
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT ts, label, t1, ret, barrier FROM labels WHERE symbol = %s AND timeframe = %s
               AND horizon = %s AND ts > %s AND ts <= %s ORDER BY ts""",
            (symbol, timeframe, horizon, start, end),
        ).fetchall()
    frame = pd.DataFrame(rows, columns=["ts", *LABEL_COLUMNS])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["t1"] = pd.to_datetime(frame["t1"], utc=True)
    return frame


LATE_COMMIT_LOOKBACK = 1000
"""Ingests re-read behind the cursor: an id is taken before its transaction commits, so a
write may become visible after a higher id did. Re-reading is harmless (content keys)."""


def bar_changes_since(db: Database, after_ingest_id: int, timeframe: str) -> tuple[int, list[tuple[str, pd.Timestamp,
                                                                                                  pd.Timestamp]]]:
    """Writes that changed stored bars of ``timeframe`` outside Dagster runs (the service's live
    bars, ``POST /bars``, ``smc ingest``) after ingest ``after_ingest_id``: the newest ingest id
    seen, and (symbol, first bar, last bar) of each such write. A Dagster run has materialized
    its own partition already, so its writes are not listed."""
    with db.connection() as conn:
        newest = conn.execute("SELECT coalesce(max(id), %s) FROM ingest_log", (after_ingest_id,)).fetchone()[0]
        rows = conn.execute(  # ids are handed out before commit: look back a little for late commits
            """SELECT symbol, first_ts, last_ts FROM ingest_log
               WHERE id > %s AND id <= %s AND dagster_run_id IS NULL AND status = 'succeeded' AND timeframe = %s
                 AND rows_inserted + rows_updated > 0 AND first_ts IS NOT NULL ORDER BY id""",
            (after_ingest_id - LATE_COMMIT_LOOKBACK, newest, timeframe)).fetchall()
    return int(newest), [(symbol, pd.Timestamp(first), pd.Timestamp(last)) for symbol, first, last in rows]


def bars_fingerprint(db: Database, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp) -> str:
    """What identifies the stored bars in (start, end]: how many, and the newest ingest that wrote
    one of them (every write that changes a bar gives it a newer ingest id)."""
    with db.connection() as conn:
        count, newest = conn.execute(
            """SELECT count(*), coalesce(max(ingest_id), 0) FROM bars
               WHERE symbol = %s AND timeframe = %s AND ts > %s AND ts <= %s""",
            (symbol, timeframe, start, end)).fetchone()
    return f"{count}-{newest}"
