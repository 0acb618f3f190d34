"""Wall-clock timing of one stage step (milliseconds, for the trace)."""

from __future__ import annotations

import time


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = (time.perf_counter() - self.t0) * 1000
