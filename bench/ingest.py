"""Ingest throughput: the project's write path against pandas ``DataFrame.to_sql``.

Both load the same N synthetic 1-minute bars from the same in-memory DataFrame into the
same PostgreSQL (DATABASE_URL, else the embedded server), in a scratch database that is
dropped afterwards. Each side runs ``--repeat`` times; medians are reported.

Also reported, for context: the full file path (parse + validate a NinjaTrader export,
then write) and a re-ingest of identical bars (the staged-upsert path).

Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smc_core.db import Database, create_database, resolve_url, with_database  # noqa: E402
from smc_core.ingest import ingest_file, write_logged  # noqa: E402
from smc_core.migrations import migrate  # noqa: E402
from smc_core.settings import Settings  # noqa: E402
from smc_core.synthetic import SyntheticConfig, generate_bars, write_ninjatrader  # noqa: E402

BARS_PER_DAY = 1380


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000, help="bars to load (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the median is reported")
    args = parser.parse_args()
    if args.bars < 1 or args.repeat < 1:
        parser.error("--bars and --repeat must be positive")

    log(f"generating {args.bars:,} synthetic bars")
    frame = generate_bars(SyntheticConfig(days=math.ceil(args.bars / BARS_PER_DAY), seed=1)).iloc[: args.bars]
    frame = frame.reset_index(drop=True)

    admin = resolve_url(Settings.from_env())
    name = f"smc_bench_{uuid.uuid4().hex[:8]}"
    create_database(admin, name)
    url = with_database(admin, name)
    db = Database(url)
    try:
        migrate(db)
        project, reingest, to_sql, from_file = [], [], [], []
        engine = sa.create_engine("postgresql+psycopg://", creator=lambda: __import__("psycopg").connect(url))
        peer_frame = frame.assign(symbol="PEER", timeframe="1m")
        for run in range(args.repeat):
            symbol = f"B{run}"
            seconds = timed(lambda: write_logged(db, source="bench", sha256=None, fmt="frame", symbol=symbol,
                                                 timeframe="1m", frame=frame, rows_read=len(frame), rejections=[]))
            project.append(len(frame) / seconds)
            log(f"run {run + 1}: project COPY path     {project[-1]:>12,.0f} rows/s")
            seconds = timed(lambda: write_logged(db, source="bench", sha256=None, fmt="frame", symbol=symbol,
                                                 timeframe="1m", frame=frame, rows_read=len(frame), rejections=[]))
            reingest.append(len(frame) / seconds)
            log(f"run {run + 1}: project re-ingest     {reingest[-1]:>12,.0f} rows/s (all unchanged)")
            table = f"bars_to_sql_{run}"
            peer_frame.head(0).to_sql(table, engine, index=False)
            seconds = timed(lambda: peer_frame.to_sql(table, engine, index=False, if_exists="append"))
            to_sql.append(len(frame) / seconds)
            log(f"run {run + 1}: pandas to_sql         {to_sql[-1]:>12,.0f} rows/s")
        with tempfile.TemporaryDirectory() as folder:
            export = write_ninjatrader(frame, Path(folder) / "FILE export.txt")
            seconds = timed(lambda: ingest_file(db, export, "FILE", "1m", tz="America/Chicago"))
            from_file.append(len(frame) / seconds)
            log(f"project from a NinjaTrader file (parse + validate + write): {from_file[-1]:,.0f} rows/s")
        engine.dispose()
    finally:
        db.close()
        import psycopg
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    project_rate, peer_rate = statistics.median(project), statistics.median(to_sql)
    print(json.dumps({
        "bars": len(frame),
        "project_rows_per_s": round(project_rate),
        "to_sql_rows_per_s": round(peer_rate),
        "ratio": round(project_rate / peer_rate, 2),
        "project_reingest_rows_per_s": round(statistics.median(reingest)),
        "project_file_rows_per_s": round(from_file[0]),
        "repeat": args.repeat,
        "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
    }))


if __name__ == "__main__":
    main()
