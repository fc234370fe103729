"""recon.support: a disc fitted to a sinogram's shadow, its bounds, and reconstruct(..., support="disc")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data.phantoms import disc
from operators.ct import FanBeam2D, ParallelBeam2D
from recon.metrics import mcc, otsu_threshold, psnr
from recon.reconstruct import reconstruct
from recon.support import Disc, disc_bounds, fit_disc

N, PIXEL, MU = 64, 1.0, 0.03
CENTRE, RADIUS = (3.0, -2.0), 24.0


def _holed_disc() -> torch.Tensor:
    """An off-centre disc of MU with three holes, like the HTC2022 phantoms."""
    x = disc(N, RADIUS, MU, PIXEL, center=CENTRE)
    for centre, r in (((-6.0, 8.0), 5.0), ((10.0, -10.0), 4.0), ((4.0, 4.0), 3.0)):
        x = x - disc(N, r, MU, PIXEL, center=centre)
    return x.clamp_min(0.0)


def _operator(geometry: str, start: float, arc: float):
    angles = np.deg2rad(start + np.arange(0, arc, 1.0))
    if geometry == "parallel":
        return ParallelBeam2D((N, N), angles, 100, PIXEL, 1.0)
    return FanBeam2D((N, N), angles, 120, 200.0, 100.0, PIXEL, 1.5)


@pytest.mark.parametrize("geometry", ["parallel", "fan"])
@pytest.mark.parametrize("start, arc", [(0, 90), (50, 60), (75, 30)])
def test_fit_disc_finds_the_disc_from_a_short_arc(geometry, start, arc):
    A = _operator(geometry, start, arc)
    found = fit_disc(A, A(_holed_disc()))
    assert math.hypot(found.x - CENTRE[0], found.y - CENTRE[1]) < 0.5 * PIXEL, found
    assert found.radius == pytest.approx(RADIUS, abs=0.5 * PIXEL)


def test_disc_bounds_zero_outside_and_at_least_mu_inside():
    A = _operator("fan", 50, 60)
    y = A(_holed_disc())
    upper = disc_bounds(A, y)[0, 0]
    c = (torch.arange(N, dtype=torch.float64) - (N - 1) / 2) * PIXEL
    yy, xx = torch.meshgrid(-c, c, indexing="ij")
    r = ((xx - CENTRE[0]) ** 2 + (yy - CENTRE[1]) ** 2).sqrt()
    assert float(upper[r > RADIUS + 2.5 * PIXEL].abs().max()) == 0.0
    inside = upper[r < RADIUS - PIXEL]
    assert float(inside.min()) == float(inside.max()) and MU * 0.99 <= float(inside.max()) <= MU * 1.3


def test_fit_disc_bad_input():
    A = _operator("fan", 0, 90)
    with pytest.raises(ValueError, match="y: fewer than two views with an object's shadow"):
        fit_disc(A, torch.zeros(1, *A.out_shape))
    with pytest.raises(ValueError, match=r"y: expected one sinogram"):
        fit_disc(A, torch.zeros(2, *A.out_shape))
    with pytest.raises(TypeError, match="A: expected a ParallelBeam2D or FanBeam2D"):
        fit_disc(object(), torch.zeros(1, 1, 2, 2))
    assert isinstance(fit_disc(A, A(_holed_disc())), Disc)


def test_support_helps_tv_on_a_short_arc():
    """TV on a 60 deg fan arc: with the disc's support and bound, closer to the phantom (PSNR) and to its
    segmentation (MCC of Otsu masks); batched equals looped; other methods refuse the option."""
    A = _operator("fan", 50, 60)
    x = _holed_disc()
    y0 = A(x)
    noise = 0.01 * float(y0.pow(2).mean().sqrt()) * torch.randn(y0.shape, generator=torch.Generator().manual_seed(0))
    y = y0 + noise
    plain, bounded = (reconstruct(A, y, "tv", iterations=150, support=s) for s in (None, "disc"))
    truth = x > 0.5 * MU

    def score(image):
        return float(mcc(image > otsu_threshold(image).reshape(-1, 1, 1, 1), truth)[0])
    assert float(psnr(bounded.x, x)) > float(psnr(plain.x, x)) + 1.0
    assert score(bounded.x) > score(plain.x) + 0.03  # measured 0.971 against 0.921
    assert bounded.parameters["support"] == "disc"
    # per-item bounds: the batch's first item is the single reconstruction (at its weight: the default is per batch)
    both = reconstruct(A, torch.cat([y, y0]), "tv", lam=bounded.parameters["lam"], iterations=150, support="disc")
    torch.testing.assert_close(both.x[:1], bounded.x, rtol=0, atol=1e-5 * MU)
    with pytest.raises(ValueError, match="support: bounds the variational methods"):
        reconstruct(A, y, "fbp", support="disc")
    with pytest.raises(ValueError, match="support: expected None or 'disc'"):
        reconstruct(A, y, "tv", support="box")
