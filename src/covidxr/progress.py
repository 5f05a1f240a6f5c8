"""Progress bars (counts and rate, on stderr) and a parallel map that shows one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from covidxr.commandline import LiteralConsole

T = TypeVar("T")
R = TypeVar("R")
# Progress lines and notes name files: printed literally, control characters escaped (covidxr.commandline).
stderr = LiteralConsole(stderr=True)
_PARALLEL_FROM = 64


class RateColumn(ProgressColumn):
    """Items per second since the task started: its completed count over its elapsed time. (rich's own
    `task.speed` averages over a short window, which a bar advanced by thousands at once, such as a shard of
    cached images, turns into millions per second.)"""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        rate = task.completed / task.elapsed if task.elapsed and task.elapsed > 0.05 else None
        return Text(f"{rate:,.0f} {self.unit}/s" if rate else f"- {self.unit}/s")


def progress_bar(unit: str = "img", disable: bool = False) -> Progress:
    """A bar on stderr; `disable` for work too short to need one (nothing is drawn)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=stderr, disable=disable,
    )


def worker_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_with_progress(function: Callable[[T], R], items: Iterable[T], description: str) -> Iterator[R]:
    """`map(function, items)` in order, on all cores when there are many items, with a progress bar."""
    items = list(items)
    if not items:
        return
    workers = worker_count()
    parallel = len(items) >= _PARALLEL_FROM and workers > 1
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(items))
        if not parallel:
            for result in map(function, items):
                bar.advance(task)
                yield result
            return
        chunk = max(1, min(64, len(items) // (workers * 8)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(function, items, chunksize=chunk):
                bar.advance(task)
                yield result
