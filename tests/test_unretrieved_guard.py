"""The suite-wide guard really sees a task whose exception nobody retrieved."""

from __future__ import annotations

import asyncio
import gc

from tests.conftest import UNRETRIEVED


def test_guard_catches_an_unretrieved_task_exception() -> None:
    async def boom() -> None:
        raise RuntimeError("nobody awaits me")

    async def main() -> None:
        asyncio.get_running_loop().create_task(boom())
        await asyncio.sleep(0.01)

    before = len(UNRETRIEVED.seen)
    asyncio.run(main())
    gc.collect()
    seen = UNRETRIEVED.seen[before:]
    del UNRETRIEVED.seen[before:]  # handled here, so the autouse check does not fail this test
    assert any("nobody awaits me" in entry for entry in seen), seen
