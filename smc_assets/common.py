"""Small pieces every asset module uses: domain errors as Dagster failures, images and figures in
metadata."""

import base64
import math
from datetime import date
from pathlib import Path
from urllib.parse import quote

import numpy as np

from dagster import AssetCheckResult, Failure, MaterializeResult, MetadataValue

from smc_core.errors import SmcError


TRIGGER_TAG = "smc/trigger"
"""The run tag the retrain sensors set (sensors/retrain.py) to say what started a run."""


def trigger_of(context) -> str:
    """What started this run, for names people read: the sensors' trigger tag, else the sensor or
    schedule that launched it, else "manual"."""
    tags = context.run.tags
    return tags.get(TRIGGER_TAG) or tags.get("dagster/sensor_name") or tags.get("dagster/schedule_name") or "manual"


def checked(work):
    """Run ``work()``; a domain error (bad data, config or package) becomes a Failure with its message."""
    try:
        return work()
    except SmcError as error:
        raise Failure(description=str(error)) from None


def partitions_of(context) -> list[tuple[str, date]]:
    """(symbol, trading day) of every partition this run materializes, each symbol's days in order:
    one, or a range (``smc backfill`` runs many days in one run, since a run per day spends most of
    its second in Dagster's bookkeeping)."""
    from smc_assets.partitions import split_bar_partition_key

    return sorted((split_bar_partition_key(key) for key in context.partition_keys), key=lambda k: (k[1], k[0]))


def read_once(db, landing, partitions: list[tuple[str, date]], *, history: int = 0, future: int = 0,
              timeframe: str | None = None, resampled: bool = False) -> dict:
    """Each symbol's bars of ``timeframe`` (default: the landing's) for all its ``partitions``
    (``SessionBars``: what ``load_session_bars`` gives per day, read in three queries per symbol
    instead of three per day); ``resampled``: the database's resampling of the 1-minute bars."""
    from smc_core.store import SessionBars

    symbols = sorted({symbol for symbol, _ in partitions})
    return {symbol: SessionBars(db, symbol, timeframe or landing.timeframe, checked(lambda: landing.calendar(symbol)),
                                [day for s, day in partitions if s == symbol], include_outside=landing.include_outside,
                                history=history, future=future, resampled=resampled) for symbol in symbols}


class PartitionLog:
    """Where a partition's lines go. In a run of one partition, to the run's log; in a run over a
    range, only the warnings (every line is an event in Dagster's event log, ~10 ms each on its
    SQLite storage, and a line per day would be thousands in a long backfill: the run's metadata
    sums the days up instead)."""

    def __init__(self, context, partitions: int):
        self._log, self.ranged = context.log, partitions > 1

    def info(self, message: str) -> None:
        if not self.ranged:
            self._log.info(message)

    def warning(self, message: str) -> None:
        self._log.warning(message)


_LISTED_FAILURES = 20


def combined(results: list[tuple[str, MaterializeResult]], additive: tuple[str, ...] = ()) -> MaterializeResult:
    """One result for a run over several partitions (``results``: partition key and its own result,
    in order). Dagster records the materialization once per partition of the range, so its metadata
    says what the run did: the range, the ``additive`` counts summed. Each check passes when it
    passed on every partition; otherwise it names the partitions where it did not, with their
    figures."""
    if len(results) == 1:
        return results[0][1]
    metadata = {"partitions": len(results), "first_partition": results[0][0], "last_partition": results[-1][0]}
    for name in additive:
        metadata[name] = sum(int(_plain(result.metadata.get(name, 0))) for _, result in results)
    checks = []
    for name, entries in _checks_by_name(results).items():
        failed = [(key, check) for key, check in entries if not check.passed]
        listed = [{"partition": key, "description": check.description,
                   **{k: _plain(v) for k, v in (check.metadata or {}).items()}} for key, check in failed[:_LISTED_FAILURES]]
        checks.append(AssetCheckResult(
            check_name=name, passed=not failed, severity=entries[0][1].severity,
            description="; ".join(f"{key}: {check.description or 'did not pass'}" for key, check in failed[:5])
                        + (f"; … {len(failed) - 5} more" if len(failed) > 5 else "") or None,
            metadata={"partitions_checked": len(entries), "partitions_failed": len(failed),
                      "failed_partitions": MetadataValue.json(listed)}))
    return MaterializeResult(metadata=metadata, check_results=checks)


def per_timeframe(results: list[tuple[str, MaterializeResult]]) -> MaterializeResult:
    """One partition's result over its timeframes (``results``: timeframe and its result, the data's
    own timeframe first): the first timeframe's metadata as it is, each other's under
    ``"<name> (<timeframe>)"``; each check passes when it passed on every timeframe."""
    if len(results) == 1:
        return results[0][1]

    def suffixed(entries, timeframe, first):
        return {(name if first else f"{name} ({timeframe})"): value for name, value in (entries or {}).items()}

    metadata = {}
    for i, (timeframe, result) in enumerate(results):
        metadata.update(suffixed(result.metadata, timeframe, i == 0))
    checks = []
    for name, entries in _checks_by_name(results).items():
        check_metadata = {}
        for i, (timeframe, check) in enumerate(entries):
            check_metadata.update(suffixed(check.metadata, timeframe, i == 0))
        described = [f"{timeframe}: {check.description}" for timeframe, check in entries if check.description]
        checks.append(AssetCheckResult(check_name=name, passed=all(check.passed for _, check in entries),
                                       severity=entries[0][1].severity, description="; ".join(described) or None,
                                       metadata=check_metadata))
    return MaterializeResult(metadata=metadata, check_results=checks)


def _checks_by_name(results: list[tuple[str, MaterializeResult]]) -> dict[str, list[tuple[str, AssetCheckResult]]]:
    """Each check's results, with the key (partition or timeframe) of the result they came from."""
    by_check: dict[str, list[tuple[str, AssetCheckResult]]] = {}
    for key, result in results:
        for check in result.check_results or ():
            by_check.setdefault(check.check_name, []).append((key, check))
    return by_check


def _plain(value):
    """A metadata entry's plain value (``MetadataValue`` objects hold it in ``.value``)."""
    return getattr(value, "value", value)


def image_markdown(*paths: Path) -> str:
    """PNGs embedded in a markdown metadata value: full-size figures, one click away in the Dagster
    UI ("[Show Markdown]"); ``inline_chart`` is the version the asset page shows at once."""
    return "\n\n".join(f"![{Path(p).stem}](data:image/png;base64,{base64.b64encode(Path(p).read_bytes()).decode()})"
                       for p in paths)


INLINE_MARKDOWN_LIMIT = 1000
"""The Dagster UI (1.13, ``MetadataEntry.tsx``) renders a markdown metadata value inline on the
asset page only below this many characters; a longer one sits behind "[Show Markdown]"."""


def inline_chart(caption: str, lines: list[tuple[np.ndarray, np.ndarray, str]], *, square: bool = False) -> str:
    """``caption`` and a small SVG line chart (a data URI) in markdown short enough to render inline
    (a PNG never is). ``lines`` are (x, y, colour); ``square`` draws on the unit square with its
    diagonal (a reliability diagram). Fewer points are drawn until the text fits."""
    for points in (120, 80, 60, 40, 25, 15):
        text = f"{caption}\n\n![chart](data:image/svg+xml,{quote(_svg(lines, points, square), safe=_SAFE)})"
        if len(text) < INLINE_MARKDOWN_LIMIT:
            return text
    return caption


def number_or_reason(value: float | None, why: str) -> float | str:
    """A figure for metadata: the number, or why it is undefined (never ``nan``)."""
    return float(value) if value is not None and math.isfinite(value) else why


_SAFE = "/:=',.-"


def _svg(lines, points: int, square: bool) -> str:
    width, height = (100, 100) if square else (300, 90)
    kept = []
    for x, y, colour in lines:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        finite = np.isfinite(x) & np.isfinite(y)
        x, y = x[finite], y[finite]
        if len(x) > points:
            chosen = np.unique(np.linspace(0, len(x) - 1, points).round().astype(int))
            x, y = x[chosen], y[chosen]
        kept.append((x, y, colour))
    every_x = np.concatenate([x for x, _, _ in kept] or [np.zeros(1)])
    every_y = np.concatenate([y for _, y, _ in kept] or [np.zeros(1)])
    (x0, x1), (y0, y1) = ((0.0, 1.0), (0.0, 1.0)) if square else (
        (every_x.min(), every_x.max()), (every_y.min(), every_y.max()))
    x_span, y_span = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    shapes = [f"<path d='M0,{height}L{width},0' stroke='#999' stroke-dasharray='3'/>"] if square else []
    for x, y, colour in kept:
        coordinates = ",".join(f"{round((a - x0) / x_span * width)},{round(height - (b - y0) / y_span * height)}"
                               for a, b in zip(x, y))
        shapes.append(f"<polyline points='{coordinates}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
    shown = (240, 240) if square else (600, 180)
    return (f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='-2 -2 {width + 4} {height + 4}' width='{shown[0]}' "
            f"height='{shown[1]}'>" + "".join(shapes) + "</svg>")
