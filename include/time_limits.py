"""A wall-clock limit on a block of Python code, in whatever thread runs it.

Ray actors, Airflow workers and the tests run stage code in threads that are not the main
one, so ``signal.alarm`` cannot be used. Instead a timer thread raises an exception in the
thread that runs the block (``PyThreadState_SetAsyncExc``): Python delivers it at the next
bytecode boundary. Code inside one long native call (a pdfium render, a torch forward) is
interrupted when that call returns, not during it: a limit bounds the work of many calls,
which is what a document's conversion or a batch of chunks is.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _Expired(BaseException):
    """Raised into the limited thread. A BaseException, so library code that catches Exception
    while it works (Docling does) cannot swallow it."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    # None clears an exception set earlier and not delivered yet.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


def call_with_time_limit(seconds: float | None, error: Callable[[], Exception], fn: Callable[..., T],
                         *args: Any) -> T:
    """``fn(*args)``, or ``error()`` raised if it runs longer than ``seconds`` (None or 0: no limit).

    A call, not a context manager: the limit's exception can only arrive inside the ``try``
    that catches it, never in the code between a ``with`` block and its exit."""
    if not seconds:
        return fn(*args)
    thread = threading.get_ident()
    lock = threading.Lock()
    running, fired = True, False

    def expire() -> None:
        nonlocal fired
        with lock:
            if running:
                fired = True
                _raise_in(thread, _Expired)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        try:
            result = fn(*args)
        finally:
            with lock:
                running = False
            timer.cancel()
            if fired:
                _raise_in(thread, None)  # set, maybe not delivered yet: it must not go off later
    except _Expired:
        pass
    if fired:
        raise error()
    return result
