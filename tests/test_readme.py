"""The README's Python example runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from recon.metrics import psnr

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    code = blocks[0]
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 12
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    x, x_true = scope["x"], scope["x_true"]
    assert x.shape == x_true.shape
    assert float(psnr(x, x_true)) > float(psnr(scope["fbp"](scope["A"], scope["y"]), x_true)) + 5


def test_readme_mri_and_deblur_example_runs():
    from recon.mri import zero_filled

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = blocks[1]
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 16
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    x_true = scope["x_true"]
    assert float(psnr(scope["x_mri"].abs(), x_true)) > float(psnr(zero_filled(scope["y"]), x_true)) + 3
    assert float(psnr(scope["x_deblur"], x_true)) > float(psnr(scope["b"], x_true)) + 3
