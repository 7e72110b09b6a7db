"""Awaiting results without blocking the event loop."""
from __future__ import annotations

import asyncio
import time

import pytest

import aiqueue
from aiqueue import Task


def _slow_worker(worker: aiqueue.Worker) -> None:
    @worker.task("tasks.slow")
    def slow(task: Task) -> str:
        time.sleep(task.args[0])
        return "slept %s" % task.args[0]

    worker.start()


async def _ticker(ticks: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        ticks.append(time.monotonic())
        await asyncio.sleep(0.01)


async def _await_while_ticking(awaitable) -> tuple:
    ticks: list = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(ticks, stop))
    t0 = time.monotonic()
    try:
        value = await awaitable
    finally:
        stop.set()
        await ticker
    return value, ticks, time.monotonic() - t0


def test_wait_async_does_not_block_loop(worker: aiqueue.Worker,
                                        client: aiqueue.Client) -> None:
    _slow_worker(worker)
    r = client.enqueue("tasks.slow", (0.5,))
    value, ticks, elapsed = asyncio.run(_await_while_ticking(r.wait_async(timeout=5)))
    assert value == "slept 0.5"
    assert elapsed >= 0.4
    # A blocked loop would tick once or twice; a free one ~50 times in 0.5 s.
    assert len(ticks) >= 20, len(ticks)


def test_await_result_directly_and_gather(worker: aiqueue.Worker,
                                          client: aiqueue.Client) -> None:
    _slow_worker(worker)

    async def main() -> list:
        results = [client.enqueue("tasks.slow", (0.1 * i,)) for i in range(4)]
        return await asyncio.gather(*results)

    assert asyncio.run(main()) == ["slept %s" % (0.1 * i) for i in range(4)]


def test_wait_async_detached_path(worker: aiqueue.Worker, options: dict) -> None:
    # A client without notifications (or a result for a task some other
    # producer enqueued) waits on an executor thread instead.
    _slow_worker(worker)
    with aiqueue.Client(options) as producer, \
            aiqueue.Client(options, notify=False) as reader:
        task_id = producer.enqueue("tasks.slow", (0.4,)).id
        r = reader.result(task_id)
        value, ticks, _ = asyncio.run(_await_while_ticking(r.wait_async(timeout=5)))
        assert value == "slept 0.4"
        assert len(ticks) >= 15, len(ticks)


def test_wait_async_timeout(client: aiqueue.Client, options: dict) -> None:
    r = client.enqueue("tasks.nobody_runs_this")

    async def main() -> None:
        with pytest.raises(aiqueue.Timeout) as e:
            await r.wait_async(timeout=0.2)
        assert e.value.state == aiqueue.PENDING

    asyncio.run(main())
    with aiqueue.Client(options, notify=False) as reader:
        async def detached() -> None:
            with pytest.raises(aiqueue.Timeout):
                await reader.result(r.id).wait_async(timeout=0.2)
        asyncio.run(detached())


def test_wait_async_failure_propagates(worker: aiqueue.Worker,
                                       client: aiqueue.Client) -> None:
    worker.register("tasks.fail", lambda task: {}["missing"])
    worker.start()

    async def main() -> None:
        r = client.enqueue("tasks.fail")
        with pytest.raises(aiqueue.TaskFailed) as e:
            await r.wait_async(timeout=5)
        assert e.value.exc_type == "KeyError"
        exc = await r.wait_async(timeout=5, propagate=False)
        assert isinstance(exc, aiqueue.TaskFailed)

    asyncio.run(main())


def test_already_finished_task(worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    worker.register("tasks.quick", lambda task: 42)
    worker.start()
    r = client.enqueue("tasks.quick")
    assert r.get(timeout=5) == 42

    async def main() -> int:
        return await asyncio.wait_for(r.wait_async(), 2)

    assert asyncio.run(main()) == 42


def test_cancelled_wait_frees_executor_thread(client: aiqueue.Client,
                                              options: dict) -> None:
    with aiqueue.Client(options, notify=False) as reader:
        r = reader.result(client.enqueue("tasks.nobody").id)

        async def main() -> None:
            task = asyncio.ensure_future(r.wait_async())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        t0 = time.monotonic()
        asyncio.run(main())  # asyncio.run joins the default executor
        assert time.monotonic() - t0 < 3


def test_enqueue_async(worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    worker.register("tasks.quick", lambda task: task.args)
    worker.start()

    async def main() -> list:
        r = await client.enqueue_async("tasks.quick", (1, 2))
        return await r

    assert asyncio.run(main()) == [1, 2]
