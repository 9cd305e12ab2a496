"""The `dyllm` console command's entry module: an interrupt while importing exits 130 quietly."""

from __future__ import annotations

import sys
import types

import pytest

import dyllm_launcher


class InterruptedImport(types.ModuleType):
    def __getattr__(self, name: str):
        raise KeyboardInterrupt


def test_an_interrupt_while_importing_the_command_line_exits_130(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dyllm.cli", InterruptedImport("dyllm.cli"))
    assert dyllm_launcher.main() == 130
    assert capsys.readouterr().err == "dyllm: interrupted\n"


def test_it_runs_the_command_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dyllm", "--version"])
    with pytest.raises(SystemExit) as ended:
        dyllm_launcher.main()
    assert ended.value.code == 0
    assert capsys.readouterr().out.startswith("dyllm ")
