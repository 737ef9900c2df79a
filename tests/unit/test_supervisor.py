"""`--processes`: a count or auto, refused in one line otherwise."""

from __future__ import annotations

import os

import pytest

from engine.cli import main
from engine.supervisor import resolve_processes


def test_auto_is_the_machines_cores_and_a_count_is_itself():
    assert resolve_processes("auto") == max(os.cpu_count() or 1, 1)
    assert resolve_processes("3") == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", ""])
def test_anything_else_is_refused_in_one_line(value, capsys):
    assert main(["worker", "fraud", "--processes", value, "--broker", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streamwise: --processes"), err
