"""The integration tests' exchange: a real hub and two real provider adapters on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import StartHub
from tests.flows.world import World, running


@pytest.fixture
async def world(start_hub: StartHub, tmp_path: Path) -> AsyncIterator[World]:
    """The exchange of ``tests.flows.world``, providers answering within 1.5 s."""
    async with running(start_hub, tmp_path, provider_timeout_ms=1500) as built:
        yield built
