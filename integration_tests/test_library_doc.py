"""docs/library.md's worked example runs as written: build, train each stage, encode, sample, score."""

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_worked_example_runs(capsys):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 1, "docs/library.md should hold one worked example"
    torch.manual_seed(0)
    namespace = {"__name__": "library_doc"}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 True 2"
    assert out[1].split()[0] == "16"  # images encoded
    assert out[2].startswith("grain ") and out[3].startswith("content ")
    assert out[4] == "(4, 32, 32, 3) (4, 2, 2)"
    psnr, fine = out[5].split()
    assert 0 < float(psnr) < 60 and 0 <= float(fine) <= 1
    samples = namespace["samples"]
    assert samples.npz.is_file() and samples.manifest["num"] == 4
