"""Progress bars for long CLI work, on stderr, and only where someone is watching.

Why one helper: the commands (ingest, replay) and the callbacks smc_core offers (training
epochs, walk-forward folds: ``progress(event: dict)``) share one rendering and one off
switch. A bar is drawn only when stderr is a terminal and ``--quiet`` was not given, and it
erases itself when done, so a command's output is the same lines with or without it (pipes,
logs and CI see no control characters).
"""

from __future__ import annotations

import shutil
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import click

_WIDTH = 24
_REDRAW_S = 0.1


def enabled(quiet: bool = False) -> bool:
    """True when bars should be drawn: stderr is a terminal and the user did not ask for quiet."""
    return not quiet and sys.stderr.isatty()


class Bar:
    """A bar of ``total`` steps on stderr; ``set(done, note)`` moves it, ``echo`` prints a line
    above it. Does nothing when off."""

    def __init__(self, label: str, total: int, *, on: bool, count: bool = True):
        self.label, self.total, self.count = label, max(int(total), 0), count
        self.on = on and self.total > 0
        self.done, self.note = 0, ""
        self._started = time.monotonic()
        self._drawn_at = 0.0

    def set(self, done: int, note: str | None = None) -> None:
        if not self.on:
            return
        self.done = min(max(int(done), 0), self.total)
        if note is not None:
            self.note = note
        now = time.monotonic()
        if note is not None or self.done == self.total or now - self._drawn_at >= _REDRAW_S:
            self._draw(now)

    def echo(self, message: str, err: bool = False) -> None:
        """A line of output without tearing the bar: erase it, print, draw it again below."""
        if self.on:
            self._erase()
        click.echo(message, err=err)
        if self.on:
            self._draw(time.monotonic())

    def close(self) -> None:
        if self.on:
            self._erase()
            self.on = False

    def _draw(self, now: float) -> None:
        self._drawn_at = now
        fraction = self.done / self.total
        filled = int(fraction * _WIDTH)
        elapsed = now - self._started
        eta = f"  eta {_duration(elapsed * (1 - fraction) / fraction)}" if 0 < fraction < 1 and elapsed > 1 else ""
        count = f" {self.done}/{self.total}" if self.count else ""
        line = (f"{self.label} [{'#' * filled}{'-' * (_WIDTH - filled)}] {fraction:4.0%}{count}{eta}"
                f"{'  ' + self.note if self.note else ''}")
        columns = shutil.get_terminal_size((100, 20)).columns
        sys.stderr.write("\r\x1b[K" + line[:columns - 1])
        sys.stderr.flush()

    def _erase(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


@contextmanager
def bar(label: str, total: int, *, on: bool, count: bool = True) -> Iterator[Bar]:
    """``with bar("replay", 1380, on=enabled(quiet)) as b: b.set(done)``; erased on any exit."""
    shown = Bar(label, total, on=on, count=count)
    try:
        yield shown
    finally:
        shown.close()


class TrainingProgress:
    """A ``progress(event)`` callback for smc_core's training and walk-forward: one bar per
    stage, ``epoch`` of the planned ``epochs`` (the caller's TrainConfig.epochs), labelled with
    the fold (``fold`` of ``folds``) when there is one. Early stopping ends a stage short of its
    planned epochs; the next stage starts a new bar. Call ``close()`` (or use it as a context
    manager) when training ends."""

    def __init__(self, epochs: int, *, on: bool):
        self.epochs, self.on = epochs, on
        self._stage: str | None = None
        self._bar: Bar | None = None

    def __call__(self, event: dict) -> None:
        if "epoch" not in event:
            return
        stage = event.get("stage", "training")
        if stage != self._stage:
            self.close()
            self._stage = stage
            fold = f"fold {event['fold']}/{event['folds']} " if "folds" in event else ""
            name = stage.split(" ", 2)[-1] if fold else stage  # "fold 2 lora" → "lora"
            self._bar = Bar(f"{fold}{name} epoch", max(self.epochs, int(event["epoch"])), on=self.on)
        valid = event.get("valid_loss")
        self._bar.set(int(event["epoch"]), None if valid is None else f"valid loss {valid:.4f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "TrainingProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def training_progress(epochs: int, quiet: bool = False) -> TrainingProgress:
    """The callback to pass as ``progress=`` to pretrain/finetune/walk_forward from a command."""
    return TrainingProgress(epochs, on=enabled(quiet))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"

