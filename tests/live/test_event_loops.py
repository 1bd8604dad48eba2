"""The serving process's event loop (``live/event_loops.py``): uvloop where it is
installed, asyncio's own on request or where it is not."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from fieldsync.live.event_loops import LoopUnavailableError, loop_factory


def _made_by(choice: str) -> tuple[str, type[asyncio.AbstractEventLoop]]:
    name, factory = loop_factory(choice)
    loop = factory()
    try:
        return name, type(loop)
    finally:
        loop.close()


def test_auto_and_uvloop_make_a_uvloop_loop() -> None:
    assert _made_by("auto") == ("uvloop", uvloop.Loop)
    assert _made_by("uvloop") == ("uvloop", uvloop.Loop)


def test_asyncio_makes_the_standard_loop() -> None:
    name, kind = _made_by("asyncio")
    assert name == "asyncio"
    assert issubclass(kind, asyncio.BaseEventLoop)
    assert not issubclass(kind, uvloop.Loop)


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    name, kind = _made_by("auto")
    assert name == "asyncio"
    assert not issubclass(kind, uvloop.Loop)
    with pytest.raises(LoopUnavailableError, match="uvloop cannot be imported"):
        loop_factory("uvloop")


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(LoopUnavailableError, match="unknown event loop 'trio'"):
        loop_factory("trio")
