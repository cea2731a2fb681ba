"""examples/tutorial/plasticity_tutorial.py: every figure its text reads is one it saves (and a
copy is kept beside it); run whole (slow: minutes of DINOv2 on the CPU), each cell's asserts
hold and every figure is written."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "examples" / "tutorial" / "plasticity_tutorial.py"
TEXT = TUTORIAL.read_text()


def saved() -> list[str]:
    return re.findall(r'save\([^\n]*"(\d_\w+)"\)', TEXT)


def test_the_text_reads_each_figure_the_script_saves_and_a_copy_is_kept():
    read = re.findall(r"\*\*Figure (\d)\*\* \(`(\d_\w+)\.png`\)", TEXT)
    assert [name for _, name in read] == saved() and len(saved()) == 5
    assert [int(n) for n, _ in read] == [1, 2, 3, 4, 5]
    for name in saved():
        assert (TUTORIAL.parent / "figures" / f"{name}.png").stat().st_size > 10_000
    assert TEXT.startswith("# %% [markdown]\n") and TEXT.count("\n# %%\n") >= 6  # cells


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 2-3 min on an idle 2-core CPU; 6-10 on a shared, loaded one
def test_the_tutorial_runs_offline_and_writes_every_figure(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(sys, "argv", [str(TUTORIAL), str(tmp_path)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as measured: on a shared CPU two threads mostly wait
    try:
        runpy.run_path(str(TUTORIAL), run_name="__main__")  # its asserts check its text
    finally:
        torch.set_num_threads(threads)
    for name in saved():
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "ranking:" in out and "here, finetuning" in out
