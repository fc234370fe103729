"""recon.models (weights + card), the SV-TV weight network and weights from a magnitude, the trained
models in reconstruct ("lpn", "pnp", "svtv" with ``model=``) and in ``recon ct --weights``."""

from __future__ import annotations

import json
import pickle
import re

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.ndimage import minimum_filter

from apps.cli import main
from operators import ParallelBeam2D
from priors.learned_prox import LearnedProximalNetwork
from priors.nets import ICNN, UNet
from priors.tv import SpaceVariantTV, adaptive_tv_weights, intensity_scale, magnitude_tv_weights
from priors.weight_net import GradientMagnitudeNet, gradient_magnitude
from recon.models import TrainedModel, build_network, card_warnings, load_model, save_model, update_card
from recon.reconstruct import reconstruct
from recon.training.checkpoint import load_weights
from tests.contracts import rel_diff

from tests.trainer_helpers import one_thread  # noqa: F401  (autouse fixture)

UNET = {"channels": [4, 8], "norm": "group"}  # the smallest U-Net worth testing (depth 2)
ICNN_ARCH = {"hidden": 4, "strides": [1]}


def _seeded(task: str, architecture: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(task, architecture)


def _save(path, task: str, architecture: dict, seed: int = 0, **card):
    network = _seeded(task, architecture, seed)
    save_model(path, network, task, architecture, **card)
    return network


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------- recon.models
@pytest.mark.parametrize("task, architecture", [("lpn", ICNN_ARCH), ("svtv-weights", UNET), ("denoiser", UNET)])
def test_save_then_load_gives_the_same_network(tmp_path, task, architecture):
    path = tmp_path / "net.safetensors"
    saved = _save(path, task, architecture, steps=7, metrics={"psnr": 21.5}, pnp={"rho": 0.3})
    fresh = _seeded(task, architecture, seed=1)
    assert not _same_state(fresh, saved)  # a load that did nothing would be caught
    model = load_model(path, task=task)
    assert model.task == task and model.path == path and not model.network.training
    assert _same_state(model.network, saved)
    card = json.loads((tmp_path / "net.json").read_text())
    assert card == model.card
    assert (card["task"], card["architecture"], card["steps"]) == (task, architecture, 7)
    assert card["metrics"] == {"psnr": 21.5}
    assert card["pnp"] == {"rho": 0.3} and card["software"]["torch"] == torch.__version__
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    saved.eval()
    with torch.no_grad():
        assert torch.equal(model.network(x), saved(x))


def test_load_model_takes_an_output_folder_and_sees_card_updates(tmp_path):
    saved = _save(tmp_path / "model.safetensors", "denoiser", UNET)
    update_card(tmp_path / "model.safetensors", pnp={"rho": 0.25, "iterations": 30})
    model = load_model(tmp_path)
    assert model.path == tmp_path / "model.safetensors" and _same_state(model.network, saved)
    assert model.card["pnp"] == {"rho": 0.25, "iterations": 30} and model.card["task"] == "denoiser"


def test_load_model_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights: no such file"):
        load_model(tmp_path / "absent.safetensors")
    path = tmp_path / "dn.safetensors"
    _save(path, "denoiser", UNET)
    card = tmp_path / "dn.json"
    text = card.read_text()
    p = re.escape(str(path))
    with pytest.raises(ValueError, match=rf"weights: {p} holds a 'denoiser' model; expected a 'lpn' model"):
        load_model(path, task="lpn")
    card.unlink()
    with pytest.raises(ValueError, match=rf"{p} has no model card dn\.json beside it"):
        load_model(path)
    card.write_text("{not json")
    with pytest.raises(ValueError, match=rf"the model card {re.escape(str(card))} is not valid JSON"):
        load_model(path)
    record = json.loads(text)
    del record["task"]
    card.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="lacks 'task' or 'architecture'"):
        load_model(path)
    card.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="lacks 'task' or 'architecture'"):
        load_model(path)


def test_weights_that_do_not_fit_the_card(tmp_path):
    path = tmp_path / "lpn.safetensors"
    _save(path, "lpn", {"hidden": 4, "strides": [1]})
    card = json.loads((tmp_path / "lpn.json").read_text())
    card["architecture"]["hidden"] = 8
    (tmp_path / "lpn.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: shape mismatch .*psi\.lift\.weight: the model "
                                         r"expects \(8, 1, 3, 3\), the file has \(4, 1, 3, 3\)"):
        load_model(path)


def test_corrupt_and_pickled_weights_are_refused(tmp_path):
    good = tmp_path / "good.safetensors"
    network = _save(good, "denoiser", UNET)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    (tmp_path / "truncated.json").write_text((tmp_path / "good.json").read_text())
    with pytest.raises(ValueError, match=rf"{re.escape(str(truncated))}: not a valid safetensors file \(truncated"):
        load_model(truncated)
    pickled = tmp_path / "pickled.safetensors"
    torch.save(network.state_dict(), pickled)
    (tmp_path / "pickled.json").write_text((tmp_path / "good.json").read_text())
    with pytest.raises(ValueError, match=rf"{re.escape(str(pickled))}: expected a safetensors file, found a zip"):
        load_model(pickled)
    raw_pickle = tmp_path / "raw.safetensors"
    raw_pickle.write_bytes(pickle.dumps(network.state_dict(), protocol=4))  # starts with 0x80
    with pytest.raises(ValueError, match="expected a safetensors file, found a pickle"):
        load_weights(network, raw_pickle)


def test_save_model_refuses_what_could_not_be_loaded_back(tmp_path):
    network = build_network("denoiser", UNET)
    with pytest.raises(ValueError, match=r"path: expected a file name ending in \.safetensors, got .*model\.pt"):
        save_model(tmp_path / "model.pt", network, "denoiser", UNET)
    with pytest.raises(ValueError, match="task: expected one of lpn, svtv-weights, denoiser, score, rising, lpd, "
                                         "unrolled-ista, limited-angle, got 'gan'"):
        save_model(tmp_path / "model.safetensors", network, "gan", UNET)
    with pytest.raises(ValueError, match="architecture: .*'depth'"):
        save_model(tmp_path / "model.safetensors", network, "denoiser", {**UNET, "depth": 3})
    assert list(tmp_path.iterdir()) == []


def test_unknown_task_in_a_card_names_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    _save(path, "denoiser", UNET)
    card = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**card, "task": "gan"}))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "m.json")) + ": task: expected one of"):
        load_model(path)


def test_safetensors_whose_header_length_starts_with_0x80_loads(tmp_path):
    """Regression: the pickle test took a first byte 0x80 (header length 128 mod 256) for a pickle."""
    linear = torch.nn.Linear(3, 2)
    path = tmp_path / "w.safetensors"
    for pad in range(300):
        save_file(linear.state_dict(), path, metadata={"pad": "x" * pad})
        if int.from_bytes(path.read_bytes()[:8], "little") % 256 == 0x80:
            break
    data = path.read_bytes()
    assert data[0] == 0x80 and data[8:9] == b"{"
    fresh = torch.nn.Linear(3, 2)
    assert not _same_state(fresh, linear)
    load_weights(fresh, path)
    assert _same_state(fresh, linear)


# ------------------------------------------------------------- SV-TV weights from a magnitude map
def _images(seed: int, shape=(3, 1, 20, 17)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    return x * torch.tensor([1.0, 40.0, 0.02], dtype=torch.float64).reshape(-1, 1, 1, 1)  # three intensity scales


def _numpy_gradient_magnitude(x: np.ndarray) -> np.ndarray:
    """Forward differences with a zero last row (vertical) and zero last column (horizontal)."""
    dv = np.zeros_like(x)
    dh = np.zeros_like(x)
    dv[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    dh[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return np.sqrt(dv ** 2 + dh ** 2)


@pytest.mark.parametrize("eta, p, spread", [(0.05, 0.5, 1), (0.2, 0.0, 0), (0.01, 0.9, 2), (1.0, 0.3, 1)])
def test_magnitude_weights_equal_adaptive_weights(eta, p, spread):
    x = _images(seed=int(eta * 1000) + spread)
    w = magnitude_tv_weights(gradient_magnitude(x), intensity_scale(x), eta, p, spread=spread)
    assert torch.equal(w, adaptive_tv_weights(x, eta, p, spread=spread))
    # an independent computation: the formula on numpy differences, then a (2 spread + 1)^2 minimum
    g, s = _numpy_gradient_magnitude(x.numpy()), intensity_scale(x).numpy().reshape(-1, 1, 1, 1)
    expected = (eta * s / np.sqrt((eta * s) ** 2 + g ** 2)) ** (1 - p)
    if spread:
        expected = minimum_filter(expected, size=(1, 1, 2 * spread + 1, 2 * spread + 1), mode="nearest")
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-12)


def test_magnitude_weights_take_a_number_or_one_scale_per_item():
    x = _images(seed=3)
    g, s = gradient_magnitude(x), intensity_scale(x)
    w = magnitude_tv_weights(g, s, 0.1, 0.5, spread=1)
    for i in range(3):
        assert torch.equal(w[i:i + 1], magnitude_tv_weights(g[i:i + 1], float(s[i]), 0.1, 0.5, spread=1))
    assert not torch.equal(w[1:2], magnitude_tv_weights(g[1:2], float(s[0]), 0.1, 0.5, spread=1))


def test_magnitude_weights_reject_bad_input():
    g = gradient_magnitude(_images(seed=4))
    negative = g.clone()
    negative[1, 0, 3, 4] = -0.5
    with pytest.raises(ValueError, match="magnitude: expected values >= 0, got min -0.5"):
        magnitude_tv_weights(negative, 1.0)
    for bad in (torch.ones(2, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64),
                torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)):
        with pytest.raises(ValueError, match="scale: expected 3 positive intensity scales"):
            magnitude_tv_weights(g, bad)
    for bad in (0.0, -2.0, float("inf"), "1"):
        with pytest.raises(ValueError, match="scale: expected a positive intensity scale"):
            magnitude_tv_weights(g, bad)
    with pytest.raises(ValueError, match="magnitude: expected a real"):
        magnitude_tv_weights(g[:, 0], 1.0)
    with pytest.raises(ValueError, match="eta: expected a positive edge threshold"):
        magnitude_tv_weights(g, 1.0, eta=0.0)


def test_magnitude_weights_scale_message_does_not_offer_none():
    with pytest.raises(ValueError) as err:
        magnitude_tv_weights(torch.zeros(1, 1, 4, 4), None)
    assert "or None" not in str(err.value)


def test_space_variant_tv_from_magnitude_equals_from_estimate():
    x_hat = _images(seed=5)
    a = SpaceVariantTV.from_estimate(x_hat, eta=0.1, p=0.4, spread=1)
    b = SpaceVariantTV.from_magnitude(gradient_magnitude(x_hat), intensity_scale(x_hat), eta=0.1, p=0.4, spread=1)
    assert torch.equal(a.weights, b.weights)
    assert not torch.equal(a.weights, SpaceVariantTV.from_estimate(x_hat, eta=0.2, p=0.4, spread=1).weights)
    z = torch.randn(x_hat.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(a.value(z), b.value(z))


# ------------------------------------------------------------------------ GradientMagnitudeNet
def test_gradient_magnitude_matches_numpy_forward_differences():
    x = torch.randn(2, 1, 7, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g = gradient_magnitude(x)
    assert g.shape == x.shape
    np.testing.assert_allclose(g.numpy(), _numpy_gradient_magnitude(x.numpy()), rtol=1e-12)
    assert torch.all(g[..., -1, -1] == 0) and torch.all(g[..., -1, :-1] > 0) and torch.all(g[..., :-1, -1] > 0)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, H, W\)"):
        gradient_magnitude(x.expand(2, 2, 7, 9))


def _weight_net(seed: int = 0) -> GradientMagnitudeNet:
    torch.manual_seed(seed)
    net = GradientMagnitudeNet(UNet(channels=(4, 8, 16), residual=False, norm="group"))
    with torch.no_grad():
        net.unet.head.bias.fill_(0.05)  # positive outputs somewhere, so that the scale checks compare numbers
    return net.eval()


def test_weight_net_output_is_nonnegative_with_the_input_shape():
    net = _weight_net()
    x = torch.rand(2, 1, 30, 27, generator=torch.Generator().manual_seed(0))  # sides not multiples of 4
    with torch.no_grad():
        g, raw = net(x), net.raw(x)
    assert g.shape == x.shape and bool((g >= 0).all())
    assert bool((raw < 0).any()) and bool((raw > 0).any()), "the clamp must matter for this check to mean anything"
    assert torch.equal(g, raw.clamp_min(0)) and torch.equal(net.gradient_magnitude(x), g)
    assert not net.gradient_magnitude(x).requires_grad


@pytest.mark.parametrize("c", [0.01, 100.0])
def test_weight_net_is_scale_equivariant(c):
    net = _weight_net(seed=1)
    x = torch.rand(2, 1, 32, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        g, gc = net(x), net(c * x)
        assert float(g.sum()) > 0
        assert rel_diff(gc, c * g) < 1e-5
        # the same weights without the division by the intensity scale are not equivariant (biases)
        assert rel_diff(net.unet(c * x), c * net.unet(x)) > 1e-2


def test_weight_net_needs_a_one_channel_plain_unet():
    for unet in (UNet(channels=(4, 8), residual=True, norm="group"),
                 UNet(in_channels=2, out_channels=1, channels=(4, 8), residual=False, norm="group"),
                 UNet(in_channels=1, out_channels=2, channels=(4, 8), residual=False, norm="group")):
        with pytest.raises(ValueError, match="unet: expected a UNet with in_channels=1, out_channels=1 and residual"):
            GradientMagnitudeNet(unet)
    with pytest.raises(ValueError, match=r"x: expected an FBP image of shape \(B, 1, H, W\)"):
        _weight_net()(torch.zeros(1, 2, 8, 8))


# ------------------------------------------------------------------------ reconstruct with a model
@pytest.fixture(scope="module")
def ct_problem():
    """A 24x24 parallel-beam problem with its dense matrix (columns: A applied to unit images)."""
    A = ParallelBeam2D((24, 24), np.linspace(0, np.pi, 20, endpoint=False), 36)
    n = 24 * 24
    with torch.no_grad():
        M = A(torch.eye(n).reshape(n, 1, 24, 24)).reshape(n, -1).T.double().numpy()
    gen = torch.Generator().manual_seed(0)
    x_true = torch.rand(1, 1, 24, 24, generator=gen)
    y = A(x_true)
    y = y + 0.05 * y.std() * torch.randn(y.shape, generator=gen)
    return A, M, y


def _quadratic_lpn(alpha: float) -> LearnedProximalNetwork:
    """``psi(x) = alpha ||x||^2`` exactly (every weight and bias zero): ``f(x) = 2 alpha x``, the prox of
    ``R(x) = c/2 ||x||^2`` with ``c = 1 / (2 alpha) - 1``."""
    psi = ICNN(hidden=2, strides=(1,), alpha=alpha)
    with torch.no_grad():
        for p in psi.parameters():
            p.zero_()
    return LearnedProximalNetwork(psi)


def _quadratic_solution(M: np.ndarray, y: torch.Tensor, rho: float, alpha: float) -> np.ndarray:
    """argmin (s/2)||M x - y||^2 + rho c/2 ||x||^2 with s = 1/||M||^2 (the fixed point of lpn's PnP-ADMM)."""
    s, c = 1.0 / np.linalg.norm(M, 2) ** 2, 1.0 / (2 * alpha) - 1.0
    return np.linalg.solve(s * M.T @ M + rho * c * np.eye(M.shape[1]), s * M.T @ y.double().numpy().ravel())


@pytest.mark.parametrize("rho, lam", [(1.0, None), (1.0, 0.3)])
def test_lpn_scaling_matches_the_closed_form(ct_problem, rho, lam):
    A, M, y = ct_problem
    alpha = 0.4
    model = TrainedModel("lpn", _quadratic_lpn(alpha), {"pnp": {"rho": rho, "cg_iterations": 50}})
    r = reconstruct(A, y, "lpn", lam=lam, model=model, nonneg=False, iterations=300)
    used = rho if lam is None else lam
    assert r.parameters["rho"] == used and r.parameters["lam_rule"] == ("model card" if lam is None else "given")
    assert r.parameters["data_scale"] == pytest.approx(1 / np.linalg.norm(M, 2) ** 2, rel=1e-4)
    expected = _quadratic_solution(M, y, used, alpha)
    other = _quadratic_solution(M, y, 2 * used, alpha)
    assert np.linalg.norm(other - expected) > 1e-2 * np.linalg.norm(expected)  # the check tells rho apart
    x = r.x.double().numpy().ravel()
    assert np.linalg.norm(x - expected) / np.linalg.norm(expected) < 5e-4


def test_lpn_default_rho_is_the_map_rule_times_the_cards_factor(ct_problem):
    """Without pnp.rho, rho = rho_factor nu^2 / (sigma^2 ||A||^2): nu given, or the sinogram's estimate."""
    from recon.reconstruct import estimate_noise_std

    A, M, y = ct_problem
    norm_sq = np.linalg.norm(M, 2) ** 2
    model = TrainedModel("lpn", _quadratic_lpn(0.4), {"sigma": 0.1, "pnp": {"rho_factor": 2.0}})
    r = reconstruct(A, y, "lpn", model=model, noise_std=0.3, iterations=2)
    assert r.parameters["rho"] == pytest.approx(2.0 * 0.3 ** 2 / (0.1 ** 2 * norm_sq), rel=1e-4)
    r = reconstruct(A, y, "lpn", model=model, iterations=2)
    nu = float(estimate_noise_std(y).mean())
    assert r.parameters["rho"] == pytest.approx(2.0 * nu ** 2 / (0.1 ** 2 * norm_sq), rel=1e-4)
    with pytest.raises(ValueError, match="neither pnp.rho nor the training noise 'sigma'"):
        reconstruct(A, y, "lpn", model=TrainedModel("lpn", _quadratic_lpn(0.4), {}), iterations=2)


def test_lpn_model_from_a_file_and_its_errors(ct_problem, tmp_path):
    A, M, y = ct_problem
    net = _quadratic_lpn(0.4)
    path = tmp_path / "lpn.safetensors"
    save_model(path, net, "lpn", {"hidden": 2, "strides": [1], "alpha": 0.4}, pnp={"rho": 0.7, "iterations": 40})
    from_file = reconstruct(A, y, "lpn", model=path, nonneg=False)
    in_memory = reconstruct(A, y, "lpn", model=TrainedModel("lpn", net, {"pnp": {"rho": 0.7, "iterations": 40}}),
                            nonneg=False)
    assert from_file.parameters["weights"] == str(path) and from_file.iterations == 40
    assert from_file.parameters["rho"] == 0.7 and torch.equal(from_file.x, in_memory.x)
    nonneg = reconstruct(A, y, "lpn", model=path, iterations=5)
    assert nonneg.parameters["nonneg"] and bool((nonneg.x >= 0).all())
    with pytest.raises(ValueError, match="lam: 'auto' .* is not available for lpn"):
        reconstruct(A, y, "lpn", lam="auto", model=path)
    with pytest.raises(ValueError, match="model: only lpn, pnp, svtv, red-diff, diffpir, dpir, dps, score-pc, rising, "
                                         "lpd, unrolled-ista and limited-angle use a trained model, not 'tv'"):
        reconstruct(A, y, "tv", model=path)
    denoiser = TrainedModel("denoiser", build_network("denoiser", UNET))
    with pytest.raises(ValueError, match="model: expected a 'lpn' model, got a 'denoiser' model"):
        reconstruct(A, y, "lpn", model=denoiser)
    with pytest.raises(ValueError, match="model: expected a 'svtv-weights' model, got a 'lpn' model"):
        reconstruct(A, y, "svtv", model=TrainedModel("lpn", net))
    dn_path = tmp_path / "dn.safetensors"
    save_model(dn_path, denoiser.network, "denoiser", UNET)
    with pytest.raises(ValueError, match="holds a 'denoiser' model; expected a 'lpn' model"):
        reconstruct(A, y, "lpn", model=dn_path)


class _Scale(torch.nn.Module):
    """The denoiser ``D(x) = c x``: the prox of ``(1 / c - 1) / 2 ||x||^2``."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(float(c)), requires_grad=False)

    def forward(self, x):
        return self.c * x


def test_pnp_with_a_denoiser_matches_the_closed_form_and_lpn(ct_problem):
    """A linear denoiser D(x) = 2 alpha x is the quadratic LPN's map: same fixed point, same iterates."""
    A, M, y = ct_problem
    alpha, rho = 0.4, 0.6
    card = {"pnp": {"rho": rho, "cg_iterations": 50}}
    r = reconstruct(A, y, "pnp", model=TrainedModel("denoiser", _Scale(2 * alpha), card), nonneg=False,
                    iterations=300)
    assert r.method == "pnp" and r.parameters["rho"] == rho and r.iterations == 300
    expected = _quadratic_solution(M, y, rho, alpha)
    assert np.linalg.norm(r.x.double().numpy().ravel() - expected) / np.linalg.norm(expected) < 5e-4
    lpn = reconstruct(A, y, "lpn", model=TrainedModel("lpn", _quadratic_lpn(alpha), card), nonneg=False,
                      iterations=300)
    assert rel_diff(r.x, lpn.x) < 1e-5


def test_pnp_defaults_and_errors(ct_problem, tmp_path):
    from recon.reconstruct import DEFAULT_ITERATIONS, PNP_RHO_FACTOR, estimate_noise_std

    A, M, y = ct_problem
    dn = TrainedModel("denoiser", _Scale(0.9), {"sigma": 0.1})
    r = reconstruct(A, y, "pnp", model=dn)  # no "pnp" entry in the card: the defaults
    nu = float(estimate_noise_std(y).mean())
    assert r.iterations == DEFAULT_ITERATIONS["pnp"] and r.parameters["lam_rule"] == f"{PNP_RHO_FACTOR:g} x MAP rule"
    assert r.parameters["rho"] == pytest.approx(PNP_RHO_FACTOR * nu ** 2 / (0.1 ** 2 * np.linalg.norm(M, 2) ** 2),
                                                rel=1e-4)
    lpn = reconstruct(A, y, "lpn", model=TrainedModel("lpn", _quadratic_lpn(0.45), {"sigma": 0.1}))
    assert lpn.iterations == DEFAULT_ITERATIONS["lpn"]
    with pytest.raises(ValueError, match="model: pnp needs a trained denoiser .*recon train denoiser"):
        reconstruct(A, y, "pnp")
    with pytest.raises(ValueError, match="model: expected a 'denoiser' model, got a 'lpn' model"):
        reconstruct(A, y, "pnp", model=TrainedModel("lpn", _quadratic_lpn(0.4)))
    with pytest.raises(ValueError, match="lam: 'auto' .* is not available for pnp"):
        reconstruct(A, y, "pnp", lam="auto", model=dn)
    with pytest.raises(ValueError, match="model: the denoiser model's card has neither pnp.rho nor"):
        reconstruct(A, y, "pnp", model=TrainedModel("denoiser", _Scale(0.9)))
    path = tmp_path / "dn.safetensors"
    save_model(path, build_network("denoiser", UNET), "denoiser", UNET, sigma=0.03)
    from_file = reconstruct(A, y, "pnp", model=path, iterations=3)
    assert from_file.parameters["weights"] == str(path) and bool((from_file.x >= 0).all())


def test_svtv_with_a_weight_network(ct_problem):
    A, _, y = ct_problem
    net = _seeded("svtv-weights", UNET)
    model = TrainedModel("svtv-weights", net)
    r = reconstruct(A, y, "svtv", model=model, iterations=30, lam=0.05)
    assert r.parameters["estimate"].startswith("network") and bool(torch.isfinite(r.x).all())
    with pytest.raises(ValueError, match="estimate: svtv takes its weights from the model or from a pre-estimate"):
        reconstruct(A, y, "svtv", model=model, estimate="fbp")
    # a network predicting |grad x| = 0 everywhere gives unit weights: plain TV at the same weight
    with torch.no_grad():
        net.unet.head.weight.zero_()
        net.unet.head.bias.zero_()
    flat = reconstruct(A, y, "svtv", model=model, iterations=30, lam=0.05)
    tv = reconstruct(A, y, "tv", iterations=30, lam=0.05)
    assert rel_diff(flat.x, tv.x) < 1e-6
    assert rel_diff(r.x, tv.x) > 1e-4  # the untrained network's weights did change the result


def test_svtv_takes_its_settings_from_the_weight_networks_card(ct_problem):
    """The card's "svtv" entry sets eta, spread and a factor on the default weight; explicit arguments win."""
    from recon.reconstruct import default_lambda

    A, _, y = ct_problem
    net = build_network("svtv-weights", UNET)
    plain = reconstruct(A, y, "svtv", model=TrainedModel("svtv-weights", net), iterations=5)
    card = {"svtv": {"eta": 0.02, "spread": 0, "lam_factor": 0.5}}
    tuned = reconstruct(A, y, "svtv", model=TrainedModel("svtv-weights", net, card), iterations=5)
    assert (plain.parameters["eta"], plain.parameters["spread"]) == (0.05, 1)
    assert (tuned.parameters["eta"], tuned.parameters["spread"]) == (0.02, 0)
    assert tuned.parameters["lam"] == pytest.approx(0.5 * plain.parameters["lam"], rel=1e-6)
    assert plain.parameters["lam"] == pytest.approx(default_lambda("svtv", A, y, prior=None), rel=1e-6)
    assert "model card" in tuned.parameters["lam_rule"]
    given = reconstruct(A, y, "svtv", model=TrainedModel("svtv-weights", net, card), iterations=5, eta=0.1,
                        spread=2, lam=0.3)
    assert (given.parameters["eta"], given.parameters["spread"], given.parameters["lam"]) == (0.1, 2, 0.3)


# ------------------------------------------------------------------------------ recon ct --weights
@pytest.fixture
def models(tmp_path):
    paths = {}
    for name, task, arch in (("svtv", "svtv-weights", UNET), ("lpn", "lpn", ICNN_ARCH),
                             ("lpn2", "lpn", ICNN_ARCH), ("dn", "denoiser", UNET)):
        paths[name] = tmp_path / f"{name}.safetensors"
        _save(paths[name], task, arch, **({"sigma": 0.03} if task == "denoiser" else {}))  # as recon train writes
    return paths


def _ct(tmp_path, *args):
    return main(["ct", "--phantom", "shepp-logan", "--size", "32", "--views", "20", "--iterations", "20",
                 "--output", str(tmp_path / "out"), "--no-progress", *map(str, args)])


def test_recon_ct_pnp_with_a_denoiser(tmp_path, models):
    assert _ct(tmp_path, "--method", "pnp", "--weights", models["dn"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["pnp"]["iterations"] == 20 and metrics["pnp"]["rho"] > 0 and np.isfinite(metrics["pnp"]["psnr"])


def test_recon_ct_svtv_with_weights(tmp_path, models):
    assert _ct(tmp_path, "--method", "fbp", "--method", "svtv", "--weights", models["svtv"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(metrics) == ["fbp", "svtv"] and np.isfinite(metrics["svtv"]["psnr"])
    with h5py.File(tmp_path / "out" / "reconstructions.h5") as f:
        assert f["svtv"].attrs["estimate"] == "network svtv.safetensors"


@pytest.mark.parametrize("args, message", [
    (("--method", "svtv", "--weights", "{dn}"), r"--weights: .*dn.safetensors is a 'denoiser' model for --method pnp, "
                                                r"which is not among the methods \['svtv'\]"),
    (("--method", "pnp",), "--weights: --method pnp needs a trained denoiser"),
    (("--method", "fbp", "--weights", "{lpn}"), r"--weights: .*lpn.safetensors is a 'lpn' model for --method lpn, "
                                                r"which is not among the methods \['fbp'\]"),
    (("--method", "lpn", "--weights", "{lpn}", "--weights", "{lpn2}"), "--weights: two models for --method lpn"),
    (("--method", "svtv", "--estimate", "tv", "--weights", "{svtv}"),
     "--estimate: svtv takes its weights from --weights or from --estimate, not both"),
])
def test_recon_ct_weights_errors(tmp_path, models, capsys, args, message):
    args = [a.format(**{k: str(v) for k, v in models.items()}) for a in args]
    assert _ct(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("recon ct: error: ") and re.search(message, err), err
    assert not (tmp_path / "out" / "metrics.json").exists()


# ------------------------------------------------------------------------------ card warnings
def test_shipped_models_load_without_warnings():
    import warnings

    from recon.models import BUILTIN, builtin

    for name in BUILTIN:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_model(builtin(name))


def test_short_or_harmful_training_is_flagged_on_load(tmp_path):
    """A card of a 5-step run whose validation PSNR is below the noisy input's: both named on load."""
    import shutil

    from recon.models import builtin

    for suffix in (".safetensors", ".json"):
        shutil.copy(builtin("lpn").with_suffix(suffix), tmp_path / f"model{suffix}")
    card = json.loads((tmp_path / "model.json").read_text())
    with warnings_as_list() as caught:
        load_model(tmp_path)
    assert caught == []  # the shipped card copied elsewhere: its own steps, its own PSNR
    card.update(steps=5, metrics={"psnr": 9.0})
    (tmp_path / "model.json").write_text(json.dumps(card))
    with warnings_as_list() as caught:
        load_model(tmp_path)
    shipped_steps = json.loads(builtin("lpn").with_suffix(".json").read_text())["steps"]
    assert f"trained for 5 steps, the shipped lpn model for {shipped_steps}" in caught[0]
    assert "validation PSNR 9.00 dB at sigma = 0.05, below the 26.02 dB of the noisy input" in caught[1]
    card.update(task="score", metrics={"psnr@0.1": 12.0, "psnr@0.01": 45.0})
    assert [m.split(": ", 1)[1] for m in card_warnings(card, tmp_path / "model.safetensors")][-1] == \
        "validation PSNR 12.00 dB at sigma = 0.1, below the 20.00 dB of the noisy input"


def test_the_command_line_shows_the_warning_on_one_line(tmp_path, capsys):
    import shutil

    from recon.models import builtin

    for suffix in (".safetensors", ".json"):
        shutil.copy(builtin("lpn").with_suffix(suffix), tmp_path / f"model{suffix}")
    card = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**card, "steps": 5}))
    assert main(["ct", "--phantom", "shepp-logan", "--size", "32", "--views", "10", "--method", "lpn", "--iterations",
                 "2", "--weights", str(tmp_path), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"recon ct: warning: {tmp_path / 'model.safetensors'}: trained for 5 steps" in err
    assert "UserWarning" not in err


def warnings_as_list():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def caught():
        with warnings.catch_warnings(record=True) as found:
            warnings.simplefilter("always")
            messages: list[str] = []
            yield messages
            messages.extend(str(w.message) for w in found)
    return caught()
