"""A one-line progress display for long jobs (no dependency: tfrec has no tqdm)."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    """A one-line progress display on a stream: redrawn in place on a terminal (at most
    every `every` s), a line every 30 s otherwise (a log file). Call it with (done,
    total) as work advances, `finish(done)` at the end."""

    def __init__(self, total: int, what: str, stream=None, every: float = 0.5):
        self.total, self.what = total, what
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every if self.tty else 30.0
        self.started = self.shown = time.perf_counter()

    def __call__(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        if time.perf_counter() - self.shown >= self.every:
            self._show(done, final=False)

    def finish(self, done: int) -> None:
        self._show(done, final=True)

    def _show(self, done: int, final: bool) -> None:
        now = self.shown = time.perf_counter()
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        share = done / self.total if self.total else 1.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        line = (f"{done:,}/{self.total:,} {self.what} ({share:.0%}), {rate:,.0f} "
                f"{self.what}/s, " + (f"{elapsed:.1f}s" if final else f"ETA {eta:.0f}s"))
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
