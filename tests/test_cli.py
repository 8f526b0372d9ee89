"""`unisegdiff`: every listed subcommand is registered by its module, and a command imports only
its own module (`unisegdiff trainer-dir` runs inside shell exports, it must not load torch's tools)."""
import subprocess
import sys

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
