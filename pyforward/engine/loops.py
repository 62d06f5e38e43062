"""The event loop: uvloop when it imports, asyncio otherwise, chosen here only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pyforward.config.model import LoopName
from pyforward.errors import ConfigError


def loop_factory(name: LoopName) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """Return a factory for the requested loop and the name of the loop it makes."""
    if name in (LoopName.AUTO, LoopName.UVLOOP):
        try:
            import uvloop  # noqa: PLC0415  (optional: absent where it has no wheel)
        except ImportError:
            if name is LoopName.UVLOOP:
                raise ConfigError(
                    "--loop uvloop: uvloop is not installed (pip install uvloop)"
                ) from None
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory, "uvloop"
    return asyncio.new_event_loop, "asyncio"
