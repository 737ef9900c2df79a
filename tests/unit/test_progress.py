"""Output a person reads: a progress bar on a terminal (silent in a pipe), tables that fit."""

from __future__ import annotations

import io

from rich.console import Console

from engine.progress import Bar, render_table


def test_the_bar_draws_on_a_terminal_and_stays_silent_in_a_pipe() -> None:
    tty = io.StringIO()
    with Bar("produce", 10, console=Console(file=tty, force_terminal=True, width=100)) as bar:
        bar.advance(4)
        bar.advance(6)
    assert bar.done == 10
    assert "produce" in tty.getvalue() and "10/10" in tty.getvalue()
    pipe = io.StringIO()
    with Bar("produce", 10, console=Console(file=pipe, force_terminal=False)) as bar:
        bar.advance(10)
    assert pipe.getvalue() == ""


def test_a_table_never_runs_over_the_width() -> None:
    rows = [("fallback:last_score", "approve", "1,234"), ("model", "decline", "56")]
    for width in (40, 100):
        out = io.StringIO()
        render_table(("path", "decision", "events"), rows, title="Decisions by path",
                     right=(2,), console=Console(file=out, width=width, force_terminal=False))
        lines = out.getvalue().splitlines()
        assert lines and max(len(line) for line in lines) <= width
        assert "approve" in out.getvalue() and "1,234" in out.getvalue()
