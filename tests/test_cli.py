"""`unisegdiff`: every listed subcommand is registered by its module, and a command imports only
its own module (`unisegdiff trainer-dir` runs inside shell exports, it must not load torch's tools), and the
package's own `__init__` loads STAPLE, hence torch, only when asked for it."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_unisegdiff import cli


def test_each_subcommand_is_registered_by_its_module():
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert set(choices) == set(cli.SUBCOMMANDS)
    for name in cli.SUBCOMMANDS:
        assert set(next(a for a in cli.build_parser(name)._actions if a.dest == "command").choices) == {name}


def test_trainer_dir_imports_only_its_own_module(tmp_path):
    code = ("import sys; from nnunet_unisegdiff import cli; cli.main(['trainer-dir']); "
            "print(sorted(m for m in cli.SUBCOMMANDS.values() if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].endswith("trainers") and out[1] == "['nnunet_unisegdiff.nnunet_ext']"


def test_trainer_dir_imports_no_torch():
    """The package __init__ loads STAPLE (torch) only on first use; the trainer-dir path never does."""
    code = ("import sys; from nnunet_unisegdiff import cli; cli.main(['trainer-dir']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nnunetv2', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].endswith("trainers") and out[1] == "[]"


def test_trainer_dir_console_script_imports_no_torch():
    script = shutil.which("unisegdiff", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the unisegdiff console script is not installed beside this interpreter")
    # the installed entry point, run as the shell runs it, then what it left in sys.modules
    code = ("import runpy, sys; sys.argv = [sys.argv[1], 'trainer-dir']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.endswith('nnunet_ext')))")
    out = subprocess.run([sys.executable, "-c", code, script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].endswith("trainers")
    assert out.splitlines()[1] == "['nnunet_unisegdiff.nnunet_ext']"


def test_staple_still_importable_from_the_package():
    code = ("import sys, nnunet_unisegdiff; assert 'torch' not in sys.modules; "
            "from nnunet_unisegdiff import staple, staple_batched, staple_multiclass; "
            "from nnunet_unisegdiff.diffusion import staple as module; "
            "assert (staple, staple_batched, staple_multiclass) == "
            "(module.staple, module.staple_batched, module.staple_multiclass); "
            "assert 'staple' in dir(nnunet_unisegdiff); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
    with pytest.raises(AttributeError, match="no_such_name"):
        import nnunet_unisegdiff

        nnunet_unisegdiff.no_such_name  # noqa: B018
