"""Debounced updates where the last edit wins: what lets the explorer re-invert as a slider moves.

A slider fires a change for every step it passes. :class:`LiveUpdates` waits until the changes pause for
``delay_s``, then computes once from the settings of that moment, on a worker thread, one computation at a time. A
result is shown only if no newer edit arrived while it was computed; otherwise it is dropped and the newer edit's own
computation shows. So overlapping updates never leave an older edit's images on screen.

Example:
    >>> live = LiveUpdates(lambda: explorer.compute(explorer.settings()), explorer.show, delay_s=0.05)
    >>> slider.observe(lambda change: live.request(), names="value")
    >>> live.wait()                                  # tests: block until the last request has been shown
"""
from __future__ import annotations

import threading
from typing import Any, Callable


class LiveUpdates:
    """Run ``show(compute())`` after ``delay_s`` seconds without a new :meth:`request`; the last request wins.

    Args:
        compute: computes a result from the current settings (called on a worker thread, never two at once).
        show: displays a result (called only for the newest request's result).
        delay_s: the quiet time that ends a burst of requests (debounce), in seconds.
        on_error: called with the exception when ``compute`` or ``show`` raises (default: re-raise on the worker).

    Attributes:
        generation: the number of the newest request.
        shown: the generation whose result is on screen (0: none yet).
    """

    def __init__(self, compute: Callable[[], Any], show: Callable[[Any], None], *, delay_s: float = 0.05,
                 on_error: Callable[[BaseException], None] | None = None):
        from .checks import checked_float

        self.compute, self.show, self.on_error = compute, show, on_error
        self.delay_s = checked_float(delay_s, "delay_s", minimum=0.0)
        self.generation = self.shown = 0
        self._timer: threading.Timer | None = None
        self._state = threading.Lock()          # guards generation and the timer
        self._busy = threading.Lock()           # one computation at a time
        self._idle = threading.Event()
        self._idle.set()

    def request(self) -> int:
        """Ask for a fresh result; cancels a pending (not yet started) one. Returns this request's generation."""
        with self._state:
            self.generation += 1
            generation = self.generation
            if self._timer is not None:
                self._timer.cancel()
            self._idle.clear()
            self._timer = threading.Timer(self.delay_s, self._run, args=(generation,))
            # not a daemon: Python waits for it at exit, so that a computation inside torch is never cut off by the
            # interpreter's shutdown (which aborts the process: "terminate called without an active exception")
            self._timer.daemon = False
            self._timer.start()
        return generation

    def _run(self, generation: int) -> None:
        with self._busy:
            try:
                if generation != self.generation:        # a newer request is pending: it will run
                    return
                result = self.compute()
                if generation == self.generation:        # still the newest: show it; else drop it
                    self.show(result)
                    self.shown = generation
            except BaseException as e:  # noqa: BLE001  (reported through on_error, or re-raised)
                if self.on_error is None:
                    raise
                self.on_error(e)
            finally:
                with self._state:
                    if generation == self.generation:
                        self._idle.set()

    def wait(self, timeout: float | None = 30.0) -> bool:
        """Block until the newest request has been handled; False if ``timeout`` seconds passed first."""
        return self._idle.wait(timeout)
