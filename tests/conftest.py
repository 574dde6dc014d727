"""Shared fixtures: keys and tokens, policies on disk, a recording app, and a
sandbox assembled exactly as ``sandbox run`` assembles it, on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from tests.fake_opa import FakeOpa
from tests.support import RecordingApp, TokenFactory


@pytest.fixture(autouse=True)
def no_blocking_calls_in_the_loop() -> Iterator[BlockBuster]:
    # Only calls made from the sandbox's own code count: tests may block.
    with blockbuster_ctx("sandbox") as detector:
        yield detector


@pytest.fixture
def tokens() -> TokenFactory:
    return TokenFactory()


@pytest.fixture
async def app() -> AsyncIterator[RecordingApp]:
    recording = RecordingApp()
    await recording.start()
    yield recording
    await recording.stop()


@pytest.fixture
async def opa() -> AsyncIterator[FakeOpa]:
    """A stand-in OPA server on loopback (no OPA binary is installable here)."""
    server = FakeOpa()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policy"
    folder.mkdir()
    return folder
