"""wait_future: a reply's future awaited with one timer (the per-message wait of publish acks and inference replies)."""

from __future__ import annotations

import asyncio

import pytest

from swarm.bus import wait_future


async def test_a_reply_in_time_is_returned() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.set_result, "ack")
    assert await wait_future(future, 5.0) == "ack"


async def test_no_reply_in_time_raises_timeout_and_fails_the_future() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await wait_future(future, 0.01)
    assert future.done() and isinstance(future.exception(), TimeoutError)  # a late reply finds it done


async def test_a_cancelled_waiter_cancels_the_future_too() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    waiter = asyncio.create_task(wait_future(future, 5.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert future.cancelled()
