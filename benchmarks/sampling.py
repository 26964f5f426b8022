"""What the benchmarks sample from the processes they watch: CPU seconds and peak memory, per group."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field


def cmdline(process) -> str:
    return " ".join(process.cmdline() or [])


@dataclass
class ProcessSampler:
    """CPU seconds used so far by the processes ``group_of`` names a group for (None: not watched),
    sampled twice a second per group, and the largest resident memory in each group."""

    group_of: object  # (psutil.Process) -> str | None
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    peak_mb: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._seen: dict[int, float] = {}
        self._totals: dict[str, float] = defaultdict(float)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            for process in psutil.process_iter():
                try:
                    group = self.group_of(process)
                    if group is None:
                        continue
                    times = process.cpu_times()
                    used = times.user + times.system
                    self.peak_mb[group] = max(self.peak_mb[group], process.memory_info().rss / 2**20)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                # A process first seen now started since the last sample: all of its CPU is new.
                self._totals[group] += used - self._seen.get(process.pid, 0.0)
                self._seen[process.pid] = used
            self.samples.append((time.time(), dict(self._totals)))

    def cpu_seconds(self, start: float, end: float, group: str | None = None) -> float:
        """CPU seconds the group (every group: None) used between two instants."""
        def used_at(when: float) -> float:
            if not self.samples:
                return 0.0
            totals = min(self.samples, key=lambda sample: abs(sample[0] - when))[1]
            return totals.get(group, 0.0) if group is not None else sum(totals.values())
        return used_at(end) - used_at(start)

    def busy(self, start: float, end: float, group: str | None = None) -> float:
        """The share of the machine's CPUs the group (every group: None) kept busy between two instants."""
        return self.cpu_seconds(start, end, group) / max(end - start, 1e-9) / (os.cpu_count() or 1)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
