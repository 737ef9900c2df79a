"""Progress bars and tables a person reads, on stderr / stdout, through one library (rich).

A progress bar draws only on a terminal: in a pipe or a log file the commands print their
one-line summaries and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

__all__ = ["Bar", "render_table"]


class Bar:
    """A progress bar of `total` items (None: unknown), as a context manager."""

    def __init__(self, label: str, total: int | None, unit: str = "events",
                 console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn(f"  {label}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(unit), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            TimeRemainingColumn(), console=self._console, transient=False,
            disable=not self._console.is_terminal)
        self._task: TaskID = self._progress.add_task(label, total=total, rate="")
        self.done = 0

    def __enter__(self) -> Bar:
        self._progress.start()
        return self

    def advance(self, n: int) -> None:
        self.done += n
        task = self._progress.tasks[0]
        speed = task.speed
        self._progress.update(self._task, advance=n,
                              rate=f"{speed:,.0f}/s" if speed else "")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()


def render_table(columns: Sequence[str], rows: Iterable[Sequence[object]],
                 title: str | None = None, right: Sequence[int] = (),
                 console: Console | None = None) -> None:
    """Print a table; columns at the indexes in `right` are right-aligned (numbers). It fits
    the terminal's width (or 100 columns in a pipe) without running over."""
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(columns):
        table.add_column(name, justify="right" if i in right else "left")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    (console or Console(width=None if _is_tty() else 100)).print(table)


def _is_tty() -> bool:
    return Console().is_terminal
