"""docs/library.md's code runs as written: load and sample (the front door), then the worked example."""

import re
from pathlib import Path

import numpy as np
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_block(index: int) -> dict:
    """Run the doc's python block `index` in a namespace of its own; returns the namespace."""
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 2, "docs/library.md should hold the front-door example and one worked example"
    torch.manual_seed(0)
    namespace = {"__name__": "library_doc"}
    exec(compile(blocks[index], str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


def test_the_front_door_example_runs(capsys):
    namespace = run_block(0)
    out = capsys.readouterr().out.splitlines()
    assert out == ["4 (16, 16)", "(1, 3, 16, 16)"]
    images, pipe, image2 = namespace["images"], namespace["pipe"], namespace["image2"]
    assert (namespace["folder"] / "class0.png").is_file()
    # image 2 drawn alone is image 2 of the run, and the PIL pixels are the tensors' 8-bit rounding
    assert torch.equal(image2[0], pipe([0, 1, 2, 3], steps=10, seed=0, output_type="pt")[2])
    uint8 = pipe([0, 1, 2, 3], steps=10, seed=0, output_type="uint8")
    assert all((np.asarray(im) == arr).all() for im, arr in zip(images, uint8))


def test_the_worked_example_runs(capsys):
    namespace = run_block(1)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 True 2"
    assert out[1].split()[0] == "16"  # images encoded
    assert out[2].startswith("grain ") and out[3].startswith("content ")
    assert out[4] == "(4, 32, 32, 3) (4, 2, 2)"
    psnr, fine = out[5].split()
    assert 0 < float(psnr) < 60 and 0 <= float(fine) <= 1
    samples = namespace["samples"]
    assert samples.npz.is_file() and samples.manifest["num"] == 4
