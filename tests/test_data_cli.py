"""lssl.data.cli: `data list` and `data prepare` through argparse, with one-line user errors."""

import argparse

import pytest

from lssl.data.__main__ import main
from lssl.data.cli import add_commands
from lssl.errors import UserError


def run(argv):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_prepare_then_list_shows_cached(tmp_path, capsys):
    root = str(tmp_path)
    assert run(["data", "list", "--root", root]) == 0
    assert any(line.split()[:2] == ["listops", "no"] for line in capsys.readouterr().out.splitlines())
    opts = ["-o", "n_train=3", "-o", "n_val=1", "-o", "n_test=1", "-o", "min_length=5", "-o", "max_length=40"]
    assert run(["data", "prepare", "listops", "--root", root, *opts]) == 0
    assert "listops: train 3, val 1, test 1" in capsys.readouterr().out
    assert run(["data", "list", "--root", root]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("listops "))
    assert "MiB" in line and "10 classes" in line


def test_errors_are_one_line_exit_2(capsys):
    with pytest.raises(UserError, match="known"):
        run(["data", "prepare", "no-such-set"])
    assert main(["prepare", "parity", "-o", "n_train=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: n_train") and err.count("\n") == 1
    assert main(["prepare", "parity", "-o", "bad"]) == 2
