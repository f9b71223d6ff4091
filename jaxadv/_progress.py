"""Progress on a terminal and Ctrl-C handling for the command line and the sweep runner (host
code; nothing here touches a device)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any


class Progress:
    """Overall and per-cell progress: a rich display on a terminal, else one line per cell."""

    def __init__(self, enabled: bool, say: Callable[[str], None] | None):
        self.say = say
        self.p = None
        self.t0 = time.perf_counter()
        self.done_batches = 0
        self.total_batches = 0
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self.p = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.p.start()
        self.overall = None
        self.cell = None

    def start(self, num_cells: int, total_batches: int) -> None:
        self.total_batches = total_batches
        self.num_cells = num_cells
        self.cells_done = 0
        if self.p is not None:
            self.overall = self.p.add_task(f"all cells (0/{num_cells})", total=total_batches)

    def start_cell(self, label: str, n_batches: int) -> None:
        if self.p is not None:
            if self.cell is not None:
                self.p.remove_task(self.cell)
            self.cell = self.p.add_task(f"  {label}", total=n_batches)

    def batch(self) -> None:
        self.done_batches += 1
        if self.p is not None:
            self.p.advance(self.cell)
            self.p.advance(self.overall)

    def end_cell(self, label: str, rows: list[dict[str, Any]], seconds: float) -> None:
        self.cells_done += 1
        if self.p is not None:
            self.p.update(
                self.overall, description=f"all cells ({self.cells_done}/{self.num_cells})"
            )
            return
        if self.say is None:
            return
        el = time.perf_counter() - self.t0
        left = self.total_batches - self.done_batches
        eta = el / max(self.done_batches, 1) * left
        accs = " ".join(f"{r['robust_accuracy']:.3f}" for r in rows)
        self.say(
            f"[{self.cells_done}/{self.num_cells}] {label}: robust accuracy {accs} "
            f"({seconds:.1f}s; elapsed {el:.0f}s, ETA {eta:.0f}s)"
        )

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()


class StopOnSigint:
    """The first Ctrl-C asks the loop to stop after the current batch; a second one aborts."""

    def __init__(self, say: Callable[[str], None] | None):
        self.requested = False
        self.say = say
        self._old = None

    def __enter__(self) -> StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.say is not None:
            self.say("interrupt: stopping after the current batch (Ctrl-C again to abort now)")

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
