"""The server's stop signals, as the app needs them: a callback on the first, and a
second one that stops the process at once.

uvicorn, on SIGTERM or Ctrl-C, stops accepting and then waits for running requests and
their background tasks, in-process jobs among them; the app hears of it only after that
wait, in the lifespan's shutdown, too late to keep queued jobs from starting. And
uvicorn ignores a second SIGTERM, so an operator could not cut a long wait short.
"""

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def on_stop_signals(on_first: Callable[[], None]) -> Iterator[None]:
    """While inside: call `on_first` on the event loop at the first SIGTERM/SIGINT, then
    let the server's own handler run; at a second one, end the process by that signal."""
    if threading.current_thread() is not threading.main_thread():
        # Only the main thread may set handlers (tests serve the app from a thread).
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {int(sig): signal.getsignal(sig) for sig in STOP_SIGNALS}
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if received:
            logger.warning("second stop signal (%s): stopping now", name)
            for handler in logging.getLogger().handlers:
                handler.flush()
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        received.append(signum)
        logger.info("%s received: shutting down (send it again to stop at once)", name)
        loop.call_soon_threadsafe(on_first)
        server_handler = previous[signum]
        if callable(server_handler):
            server_handler(signum, frame)
        else:  # no server handler: what the signal would have done without us
            signal.signal(signum, server_handler or signal.SIG_DFL)
            signal.raise_signal(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if signal.getsignal(signum) is handle:
                signal.signal(signum, handler)
