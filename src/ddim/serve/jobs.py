"""One worker thread, a bounded queue, and cancellation: how the server runs its model.

The model is shared and a network call is CPU- or GPU-bound, so jobs run one at a time on a
single thread, off the event loop. At most `max_waiting` jobs wait behind the running one; one
more is refused at once (`QueueFull`, answered with 429) rather than left to time out. A job
receives a `threading.Event` that is set when its client goes away; it checks it between
network calls (`check_cancelled`) and stops by raising `Cancelled`.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
_SMOOTHING = 0.3  # weight of the newest job in the running mean of job durations


class QueueFull(Exception):  # noqa: N818 (a condition, not an error of the program)
    """Every slot is taken; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the job queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):  # noqa: N818
    """The job's client went away; raised inside the job to stop it."""


def check_cancelled(cancel: threading.Event) -> None:
    """Raise `Cancelled` if the job's client has gone away."""
    if cancel.is_set():
        raise Cancelled


@dataclass(frozen=True)
class Handle(Generic[T]):
    """A submitted job: await `result()`; `cancel()` asks it to stop (idempotent)."""

    future: Future[T]
    cancel_event: threading.Event

    def cancel(self) -> None:
        self.cancel_event.set()
        self.future.cancel()  # removes it from the queue if it has not started

    async def result(self) -> T:
        try:
            return await asyncio.wrap_future(self.future)
        except asyncio.CancelledError:  # the awaiting request was cancelled: its client left
            self.cancel()
            raise


class JobQueue:
    """Runs jobs `fn(cancel_event) -> T` one at a time; `max_waiting` may wait behind the running one."""

    def __init__(self, max_waiting: int):
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ddim-job")
        self._lock = threading.Lock()
        self._pending = 0  # running + waiting
        self._mean_seconds = 1.0
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "rejected": 0}

    def submit(self, fn: Callable[[threading.Event], T]) -> Handle[T]:
        """Queue `fn`, or raise `QueueFull` if one job runs and `max_waiting` wait already."""
        with self._lock:
            if self._pending > self.max_waiting:
                self.counts["rejected"] += 1
                raise QueueFull(max(1, math.ceil(self._mean_seconds * self._pending)))
            self._pending += 1
        cancel = threading.Event()
        future = self._executor.submit(self._run, fn, cancel)
        future.add_done_callback(self._finished)
        return Handle(future, cancel)

    def status(self) -> dict[str, int]:
        """Jobs running and waiting now, and counts since start."""
        with self._lock:
            return {"pending": self._pending, **self.counts}

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _run(self, fn: Callable[[threading.Event], T], cancel: threading.Event) -> T:
        check_cancelled(cancel)
        start = time.perf_counter()
        result = fn(cancel)
        with self._lock:
            self._mean_seconds += _SMOOTHING * (time.perf_counter() - start - self._mean_seconds)
        return result

    def _finished(self, future: Future) -> None:
        cancelled = future.cancelled() or isinstance(future.exception(), Cancelled)
        outcome = "cancelled" if cancelled else "failed" if future.exception() else "completed"
        with self._lock:
            self._pending -= 1
            self.counts[outcome] += 1
