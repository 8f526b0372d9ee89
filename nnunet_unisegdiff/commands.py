"""Child processes with their output in a log file, shared by the demo and the benchmarks: a failure
raises `CommandError` with the end of the log."""
from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TAIL_LINES = 25  # lines of the log a failure shows


class CommandError(RuntimeError):
    """A command was not found or exited with a non-zero code."""


def console_script(name: str) -> str:
    """A console script (e.g. nnUNetv2_train) of this Python's environment, else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise CommandError(f"{name} not found: is nnunetv2 installed in this environment?")
    return found


def run_logged(cmd: Sequence[str], env: Mapping[str, str], log_file: Path,
               on_line: Callable[[str], None] | None = None) -> None:
    """Run a command, its output (stdout and stderr) into `log_file`, each line also to `on_line`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        rc = proc.wait()
    if rc != 0:
        tail = "\n".join(log_file.read_text().splitlines()[-TAIL_LINES:])
        raise CommandError(f"{Path(cmd[0]).name} failed (exit code {rc}); full log: {log_file}\n{tail}")
