"""The job queue: one at a time, bounded, and cancellable whether running or waiting."""

import asyncio
import threading

import pytest

from ddim.serve.jobs import Cancelled, JobQueue, QueueFull, check_cancelled


def test_jobs_run_one_at_a_time_in_order_and_a_full_queue_refuses_at_once():
    queue, started, release, active, peak = JobQueue(max_waiting=2), [], threading.Event(), [0], [0]

    def job(i):
        def run(cancel):
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            started.append(i)
            release.wait(30)
            active[0] -= 1
            return i

        return run

    handles = [queue.submit(job(i)) for i in range(3)]  # one running, two waiting
    with pytest.raises(QueueFull) as full:
        queue.submit(job(3))
    assert full.value.retry_after >= 1
    assert queue.status() == {"pending": 3, "completed": 0, "cancelled": 0, "failed": 0, "rejected": 1}
    release.set()
    assert [h.future.result(timeout=30) for h in handles] == [0, 1, 2]
    assert started == [0, 1, 2]
    assert peak[0] == 1
    assert queue.submit(job(4)).future.result(timeout=30) == 4
    queue.shutdown()
    assert queue.status()["completed"] == 4


def test_cancel_stops_a_running_job_and_drops_a_waiting_one():
    queue, inside, ran = JobQueue(max_waiting=1), threading.Event(), []

    def spin(cancel):
        inside.set()
        while True:
            check_cancelled(cancel)
            cancel.wait(0.01)

    running = queue.submit(spin)
    waiting = queue.submit(lambda cancel: ran.append(1))
    assert inside.wait(30)
    waiting.cancel()
    running.cancel()
    with pytest.raises(Cancelled):
        running.future.result(timeout=30)
    queue.shutdown()
    assert ran == []
    assert queue.status() == {"pending": 0, "completed": 0, "cancelled": 2, "failed": 0, "rejected": 0}


def test_an_awaiting_request_that_is_cancelled_cancels_its_job():
    queue, inside = JobQueue(max_waiting=0), threading.Event()

    def spin(cancel):
        inside.set()
        while not cancel.wait(0.01):
            pass
        check_cancelled(cancel)

    async def request():
        handle = queue.submit(spin)
        task = asyncio.ensure_future(handle.result())
        await asyncio.get_running_loop().run_in_executor(None, inside.wait, 30)
        task.cancel()  # what the server does when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await task
        return handle

    handle = asyncio.run(request())
    with pytest.raises(Cancelled):
        handle.future.result(timeout=30)
    queue.shutdown()
    assert queue.status()["cancelled"] == 1


def test_a_failing_job_is_counted_and_its_error_kept():
    queue = JobQueue(max_waiting=0)
    handle = queue.submit(lambda cancel: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        handle.future.result(timeout=30)
    queue.shutdown()
    assert queue.status()["failed"] == 1
