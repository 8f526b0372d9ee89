"""The command runner the demo and the benchmarks share: output into a log, lines to a callback, and
a failure that names the command, its exit code, its log and the log's end."""
import os
import sys

import pytest

from nnunet_unisegdiff.commands import CommandError, console_script, run_logged


def test_output_goes_to_the_log_and_each_line_to_the_callback(tmp_path):
    lines = []
    run_logged([sys.executable, "-c", "print('a'); print('b')"], dict(os.environ), tmp_path / "logs" / "x.log",
               lines.append)
    assert lines == ["a", "b"]
    assert (tmp_path / "logs" / "x.log").read_text().splitlines()[1:] == ["a", "b"]


def test_a_failing_command_reports_its_log(tmp_path):
    with pytest.raises(CommandError, match="exit code 3") as e:
        run_logged([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], dict(os.environ),
                   tmp_path / "x.log")
    assert "boom" in str(e.value) and str(tmp_path / "x.log") in str(e.value)


def test_a_missing_console_script_is_a_command_error():
    with pytest.raises(CommandError, match="not_a_command_xyz not found"):
        console_script("not_a_command_xyz")
