"""The integration tests' exchange: a real hub and two real provider adapters on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import StartHub
from tests.flows.world import World, build


@pytest.fixture
async def world(start_hub: StartHub, tmp_path: Path) -> AsyncIterator[World]:
    """The exchange of ``tests.flows.world``, providers answering within 1.5 s."""
    hub = await start_hub(provider_timeout_ms=1500)
    built = await build(hub, tmp_path)
    yield built
    for adapter in built.adapters.values():
        await adapter.stop(grace=0.2)
