"""What the benchmarks sample from the processes they watch: CPU seconds and peak memory."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field


def cmdline(process) -> str:
    return " ".join(process.cmdline() or [])


@dataclass
class ProcessSampler:
    """CPU seconds used so far by the processes a predicate picks, sampled twice a second, and the
    largest resident memory among them."""

    picks: object  # (psutil.Process) -> bool
    samples: list[tuple[float, float]] = field(default_factory=list)
    peak_mb: float = 0.0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._seen: dict[int, float] = {}
        self._total = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            for process in psutil.process_iter():
                try:
                    if not self.picks(process):
                        continue
                    times = process.cpu_times()
                    used = times.user + times.system
                    self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                # A process first seen now started since the last sample: all of its CPU is new.
                self._total += used - self._seen.get(process.pid, 0.0)
                self._seen[process.pid] = used
            self.samples.append((time.time(), self._total))

    def busy(self, start: float, end: float) -> float:
        """The share of the machine's CPUs these processes kept busy between two instants."""
        def used_at(when: float) -> float:
            return min(self.samples, key=lambda sample: abs(sample[0] - when))[1] if self.samples else 0.0
        return (used_at(end) - used_at(start)) / max(end - start, 1e-9) / (os.cpu_count() or 1)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
