"""The README's Python example runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from recon.metrics import psnr

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str) -> str:
    """The README's one Python block that contains ``marker``."""
    found = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if marker in b]
    assert len(found) == 1, f"{len(found)} README Python blocks contain {marker!r}"
    return found[0]


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    code = blocks[0]
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 14
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
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 17
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    x_true = scope["x_true"]
    assert float(psnr(scope["x_mri"].abs(), x_true)) > float(psnr(zero_filled(scope["y"]), x_true)) + 3
    assert float(psnr(scope["x_deblur"], x_true)) > float(psnr(scope["b"], x_true)) + 3


def test_readme_adaptive_priors_example_runs():
    """The SV-TV / graphLa block: both adaptive reconstructions beat FBP by far and are close to TV."""
    from recon.fbp import fbp

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = blocks[2]
    assert "SpaceVariantTV" in code and "graphla-tv" in code
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    x_true, A, y = scope["x_true"], scope["A"], scope["y"]
    base = float(psnr(fbp(A, y), x_true))
    for name in ("x_sv", "x_gl"):
        assert float(psnr(scope[name], x_true)) > base + 10, name
    assert float(psnr(scope["x_gl"], x_true)) > float(psnr(scope["x_hat"], x_true))


def test_readme_unrolled_example_runs():
    """The unrolled-ISTA block trains: every layer's step moves away from the classical 1/||A||^2."""
    code = _block("UnrolledISTA")
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert bool((scope["net"].multipliers("eta") > 1.2).all())


def test_readme_posterior_example_runs():
    """The posterior block draws its samples and calibrates them against the phantom."""
    scope: dict = {}
    exec(compile(_block("posterior("), str(README), "exec"), scope)
    p, truth = scope["p"], scope["truth"]
    assert p.samples.shape == (4, 1, 1, 64, 64) and bool((p.std > 0).all())
    c = scope["calibration"](p, truth)
    assert 0 <= c["coverage"][0] <= 1 and -1 <= c["pearson"][0] <= 1
