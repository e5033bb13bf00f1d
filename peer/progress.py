"""What a volunteer sees: a live rich panel on a terminal, or one log line per report when output is a file."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from swarm.recipe import Recipe

logger = logging.getLogger("swarm.peer")


class ProgressView:
    """Base view: logs one INFO line per report (every few seconds), with units."""

    def __init__(self, recipe: Recipe, name: str):
        self.recipe, self.name = recipe, name
        self._last_epoch = None

    @staticmethod
    def create(mode: str, recipe: Recipe, name: str) -> "ProgressView | None":
        if mode == "none":
            return None
        if mode == "rich" or (mode == "auto" and sys.stderr.isatty()):
            return RichProgressView(recipe, name)
        return ProgressView(recipe, name)

    def on_step(self, snapshot: Callable[[], dict]) -> None:
        """Called after every micro-step (the hot path): `snapshot` is only called when something is shown."""

    def on_report(self, snapshot: dict) -> None:
        loss = "n/a" if snapshot["loss"] is None else f"{snapshot['loss']:.3f}"
        logger.info(
            f"epoch {snapshot['epoch']} ({snapshot['swarm_samples']}/{snapshot['target_batch_size']} samples) | "
            f"{snapshot['peers']} peer(s) | {snapshot['local_samples_per_s']:.1f} samples/s here | loss {loss} | "
            f"averaged rounds {snapshot['averaged_rounds']} (last group {snapshot['last_group_size']})"
        )

    def close(self) -> None:
        pass


class RichProgressView(ProgressView):
    """A live panel: swarm epoch and its progress bar, peers, local throughput, loss, averaging."""

    def __init__(self, recipe: Recipe, name: str):
        super().__init__(recipe, name)
        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                            TextColumn("{task.completed:.0f}/{task.total:.0f} samples"), console=self.console)
        self.task = self.bar.add_task("epoch", total=recipe.collaboration.target_batch_size, epoch=0)
        self.snapshot: dict | None = None
        self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
        self.live.start()
        self._last_refresh = 0.0

    def _render(self):
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        s = self.snapshot
        table.add_row("run", f"{self.recipe.run.id}  as {self.name}")
        if s is not None:
            loss = "n/a" if s["loss"] is None else f"{s['loss']:.3f}"
            table.add_row("swarm", f"{s['peers']} peer(s), epoch {s['epoch']}")
            table.add_row("this peer", f"{s['local_samples_per_s']:.1f} samples/s, {s['samples']} samples, "
                                       f"compute {100 * s['compute_utilisation']:.0f}% of wall time")
            table.add_row("loss", loss)
            table.add_row("averaging", f"{s['averaged_rounds']} rounds with others, {s['solo_rounds']} alone, "
                                       f"last group {s['last_group_size']}")
        outer = Table.grid()
        outer.add_row(table)
        outer.add_row(self.bar)
        return outer

    def on_step(self, snapshot: Callable[[], dict]) -> None:
        now = time.monotonic()
        if now - self._last_refresh < 0.5:
            return
        self._last_refresh = now
        self._show(snapshot())

    def _show(self, snapshot: dict) -> None:
        self.snapshot = snapshot
        self.bar.update(self.task, completed=min(snapshot["swarm_samples"], snapshot["target_batch_size"]),
                        total=snapshot["target_batch_size"], epoch=snapshot["epoch"])
        self.live.update(self._render())

    def on_report(self, snapshot: dict) -> None:
        self._show(snapshot)

    def close(self) -> None:
        self.live.stop()
