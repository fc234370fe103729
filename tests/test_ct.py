"""CT operators: contracts, physical units, conventions, bad input, CUDA glue."""

from __future__ import annotations

import astra
import astra.experimental
import numpy as np
import pytest
import torch

from data.phantoms import disc
from operators import ConeBeam3D, FanBeam2D, ParallelBeam2D
from tests.contracts import LinearOperatorContract, randn, rel_diff

pytestmark = pytest.mark.astra


def nonuniform_angles(n, span, seed=0):
    return np.sort(np.random.default_rng(seed).uniform(0, span, n))


# ASTRA's 2D GPU pair on an H100: normalised dot-test mismatch 7e-4 to 4.2e-3 on random data (the CPU pair: ~1e-9)
ASTRA_CUDA_ADJOINT_TOL = 1e-2


def dense(op) -> np.ndarray:
    n = int(np.prod(op.in_shape))
    eye = torch.eye(n, dtype=torch.float32).reshape(n, *op.in_shape)
    return op(eye).reshape(n, -1).T.double().numpy()


class TestParallelBeam2D(LinearOperatorContract):
    internal_float32 = True
    cuda_adjoint_tol = ASTRA_CUDA_ADJOINT_TOL

    @pytest.fixture
    def make(self):
        return ParallelBeam2D((24, 20), nonuniform_angles(17, np.pi), 30, pixel_size=0.7, detector_spacing=0.9)

    def test_abs_sums_match_dense(self, make):
        M = dense(make)
        like = torch.zeros(1)
        assert M.min() >= 0
        np.testing.assert_allclose(make.abs_row_sums(like).flatten().numpy(), M.sum(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(make.abs_col_sums(like).flatten().numpy(), M.sum(0), rtol=1e-5, atol=1e-6)

    def test_dense_adjoint_is_transpose(self, make):
        n = int(np.prod(make.out_shape))
        eye = torch.eye(n, dtype=torch.float32).reshape(n, *make.out_shape)
        Mt = make.adjoint(eye).reshape(n, -1).double().numpy()
        np.testing.assert_allclose(Mt, dense(make), rtol=1e-5, atol=1e-6)


class TestFanBeam2D(LinearOperatorContract):
    internal_float32 = True
    cuda_adjoint_tol = ASTRA_CUDA_ADJOINT_TOL

    @pytest.fixture
    def make(self):
        return FanBeam2D((20, 26), nonuniform_angles(19, 2 * np.pi), 40, source_origin=60.0,
                         origin_detector=25.0, pixel_size=0.8, detector_spacing=1.1)


class TestParallelChannels(LinearOperatorContract):
    internal_float32 = True
    cuda_adjoint_tol = ASTRA_CUDA_ADJOINT_TOL

    @pytest.fixture
    def make(self):
        return ParallelBeam2D((16, 16), np.linspace(0, np.pi, 12, endpoint=False), 24, channels=3)


def both_geometries(channels=1):
    return [ParallelBeam2D((24, 20), nonuniform_angles(17, np.pi), 30, pixel_size=0.7, detector_spacing=0.9,
                           channels=channels),
            FanBeam2D((20, 26), nonuniform_angles(19, 2 * np.pi), 40, source_origin=60.0, origin_detector=25.0,
                      pixel_size=0.8, detector_spacing=1.1, channels=channels)]


class TestParallelBeam2DAstra(TestParallelBeam2D):
    @pytest.fixture
    def make(self):
        return both_geometries()[0].set_cpu_backend("astra")


class TestParallelBeam2DSparse(TestParallelBeam2D):
    internal_float32 = False  # float64 inputs are computed in float64 with the exact matrix

    @pytest.fixture
    def make(self):
        return both_geometries()[0].set_cpu_backend("sparse")


class TestFanBeam2DAstra(TestFanBeam2D):
    @pytest.fixture
    def make(self):
        return both_geometries()[1].set_cpu_backend("astra")


class TestFanBeam2DSparse(TestFanBeam2D):
    internal_float32 = False

    @pytest.fixture
    def make(self):
        return both_geometries()[1].set_cpu_backend("sparse")


class TestParallelChannelsSparse(TestParallelChannels):
    internal_float32 = False

    @pytest.fixture
    def make(self):
        return ParallelBeam2D((16, 16), np.linspace(0, np.pi, 12, endpoint=False), 24,
                              channels=3).set_cpu_backend("sparse")


# -- the CPU backends: ASTRA per slice and the cached sparse system matrix -------------------
@pytest.mark.parametrize("geometry", [0, 1], ids=["parallel", "fan"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, channels", [(1, 1), (4, 1), (3, 2)])
def test_sparse_backend_equals_astra(geometry, dtype, batch, channels):
    A = both_geometries(channels)[geometry]
    x, y = randn(A.in_shape, dtype, batch=batch, seed=1), randn(A.out_shape, dtype, batch=batch, seed=2)
    fp, bp = A.set_cpu_backend("astra")(x), A.adjoint(y)
    fp_s, bp_s = A.set_cpu_backend("sparse")(x), A.adjoint(y)
    assert fp_s.dtype == bp_s.dtype == dtype
    assert rel_diff(fp_s, fp) < 1e-6 and rel_diff(bp_s, bp) < 1e-6


def test_sparse_matrix_is_astra_matrix_in_mm():
    """The cached matrix equals the projector's dense matrix (pixel size included), and M^T its transpose."""
    A = both_geometries()[0].set_cpu_backend("astra")
    M = dense(A)
    S = A.set_cpu_backend("sparse")._system_matrix()
    fwd, adj = (t.to_dense().double().numpy() for t in S._matrices(torch.float32))
    np.testing.assert_allclose(fwd, M, rtol=1e-6, atol=1e-7 * M.max())
    np.testing.assert_array_equal(adj, fwd.T)


def test_auto_rule_picks_what_it_documents(monkeypatch):
    """auto: sparse when the matrix fits the budget (16 bytes per nonzero, 32 for float64), else ASTRA."""
    import operators.ct_matrix as ctm

    A = ParallelBeam2D((32, 32), np.linspace(0, np.pi, 10, endpoint=False), 48)
    assert A.cpu_backend == "auto" and ctm.SPARSE_MEMORY_BUDGET == 2**30
    assert A.cpu_backend_for() == "sparse" and A.cpu_backend_for(torch.float64) == "sparse"
    assert A._matrix is None  # deciding builds nothing; the first CPU call does
    A(torch.zeros(1, 1, 32, 32))
    nnz = A._matrix.nnz
    assert A._nnz == nnz and A._matrix.nbytes() == nnz * 16 + 4 * (480 + 1 + 1024 + 1)  # values, indices, rows
    monkeypatch.setattr(ctm, "SPARSE_MEMORY_BUDGET", 16 * nnz)
    assert A.cpu_backend_for() == "sparse" and A.cpu_backend_for(torch.float64) == "astra"
    monkeypatch.setattr(ctm, "SPARSE_MEMORY_BUDGET", 16 * nnz - 1)
    assert A.cpu_backend_for() == "astra"
    x = randn(A.in_shape, seed=3)
    assert rel_diff(A(x), A.set_cpu_backend("sparse")(x)) < 1e-6  # over budget: ASTRA, same values
    # the estimate from a few views is close to the true count, and builds no matrix
    B = FanBeam2D((32, 32), nonuniform_angles(24, 2 * np.pi), 48, 100.0, 50.0)
    assert B.cpu_backend_for() == "astra" and B._matrix is None
    assert abs(B._nnz / B.set_cpu_backend("sparse")._system_matrix().nnz - 1) < 0.1
    assert A.set_cpu_backend("astra").cpu_backend_for() == "astra" and B.cpu_backend_for(torch.float64) == "sparse"


def test_bad_cpu_backend(op):
    with pytest.raises(ValueError, match="cpu_backend: expected one of 'auto', 'sparse', 'astra', got 'gpu'"):
        op.set_cpu_backend("gpu")
    assert op.cpu_backend == "auto"


def test_sparse_pickles_without_the_matrix(op):
    import pickle

    op.set_cpu_backend("sparse")(torch.zeros(1, 1, 16, 16))
    assert op._matrix is not None
    clone = pickle.loads(pickle.dumps(op))
    assert clone._matrix is None and clone.cpu_backend == "sparse"
    x = randn(op.in_shape, seed=4)
    assert rel_diff(clone(x), op(x)) == 0.0


# -- physical units ------------------------------------------------------------------------
MU, RADIUS, PIXEL = 0.02, 10.0, 0.25  # 1/mm, mm, mm


def test_parallel_disc_line_integrals():
    """A disc of radius r and attenuation mu integrates to 2 mu sqrt(r^2 - s^2) (mm x 1/mm)."""
    N, spacing = 128, 0.2
    A = ParallelBeam2D((N, N), [0.0, 0.4, 1.3, 2.9], 200, pixel_size=PIXEL, detector_spacing=spacing)
    sino = A(disc(N, RADIUS, MU, pixel_size=PIXEL))[0, 0].numpy()
    s = (np.arange(200) - 99.5) * spacing
    inside = np.abs(s) < 0.9 * RADIUS
    exact = 2 * MU * np.sqrt(RADIUS**2 - s[inside] ** 2)
    for row in sino:
        assert np.max(np.abs(row[inside] - exact) / exact) < 0.01


def test_fan_disc_line_integrals():
    """Fan rays: the integral depends on the distance d of each source-cell ray to the centre.

    ASTRA's ``line_fanflat`` kernel (Siddon-like) aliases: single rays deviate up to ~3% on a
    0.25 mm grid while the mean over cells is exact; the scale is what this test pins down.
    """
    N, spacing, dso, dod, ndet = 128, 0.3, 80.0, 40.0, 160
    angles = np.array([0.0, 0.7, 2.0, 4.5])
    A = FanBeam2D((N, N), angles, ndet, dso, dod, pixel_size=PIXEL, detector_spacing=spacing)
    sino = A(disc(N, RADIUS, MU, pixel_size=PIXEL))[0, 0].numpy()
    u = (np.arange(ndet) - (ndet - 1) / 2) * spacing
    # source at distance dso, detector cell at lateral offset u at distance dod on the other side:
    d = dso * np.abs(u) / np.sqrt((dso + dod) ** 2 + u**2)
    inside = d < 0.9 * RADIUS
    exact = 2 * MU * np.sqrt(RADIUS**2 - d[inside] ** 2)
    for row in sino:
        err = (row[inside] - exact) / exact
        assert abs(err.mean()) < 0.002 and np.abs(err).mean() < 0.01 and np.abs(err).max() < 0.04


def test_conventions_point_lands_where_documented():
    """s = x cos(theta) + y sin(theta), x to the right, y up (row 0 at the top)."""
    N = 64
    x = torch.zeros(1, 1, N, N)
    x[0, 0, 10, 50] = 1.0  # row 10 (upper half), column 50 (right half)
    A = ParallelBeam2D((N, N), [0.0, np.pi / 2], N)
    hits = A(x)[0, 0].argmax(dim=1)
    px, py = 50 - (N - 1) / 2, (N - 1) / 2 - 10
    expected = [round(px + (N - 1) / 2), round(py + (N - 1) / 2)]
    assert hits.tolist() == expected


def test_float64_input_keeps_dtype_and_values():
    A = ParallelBeam2D((16, 16), np.linspace(0, np.pi, 8, endpoint=False), 24)
    x = randn(A.in_shape, torch.float64)
    assert rel_diff(A(x), A(x.float()).double()) < 1e-6


# -- bad input ------------------------------------------------------------------------------
@pytest.fixture
def op():
    return ParallelBeam2D((16, 16), np.linspace(0, np.pi, 8, endpoint=False), 24)


@pytest.mark.parametrize("shape", [(1, 1, 16, 15), (1, 16, 16), (1, 2, 16, 16)])
def test_wrong_image_shape(op, shape):
    with pytest.raises(ValueError, match=r"x: ParallelBeam2D expects shape \(B, 1, 16, 16\)"):
        op(torch.zeros(shape))


def test_wrong_dtype(op):
    with pytest.raises(TypeError, match="x: expected a floating-point"):
        op(torch.zeros(1, 1, 16, 16, dtype=torch.int32))
    with pytest.raises(TypeError, match="x: expected a real"):
        op(torch.zeros(1, 1, 16, 16, dtype=torch.complex64))


def test_non_finite_values(op):
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        op(x)
    y = torch.zeros(1, 1, 8, 24)
    y[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="y: contains NaN or Inf"):
        op.adjoint(y)


@pytest.mark.parametrize("angles, msg", [([], "non-empty 1-D"), (np.zeros((3, 2)), "non-empty 1-D"),
                                          ([0.0, np.nan], "finite"), ("abc", "angles")])
def test_bad_angles(angles, msg):
    with pytest.raises((ValueError, TypeError), match=f"angles: .*{msg}" if msg != "angles" else "angles"):
        ParallelBeam2D((16, 16), angles, 24)


@pytest.mark.parametrize("kwargs, name", [({"detector_count": 0}, "detector_count"),
                                           ({"pixel_size": -1.0}, "pixel_size"),
                                           ({"detector_spacing": float("nan")}, "detector_spacing"),
                                           ({"image_shape": (16,)}, "image_shape"),
                                           ({"image_shape": (16, 2.5)}, "image_shape")])
def test_bad_geometry(kwargs, name):
    args = {"image_shape": (16, 16), "angles": [0.0, 1.0], "detector_count": 24, **kwargs}
    with pytest.raises(ValueError, match=name):
        ParallelBeam2D(**args)


def test_fan_source_inside_image():
    with pytest.raises(ValueError, match="source_origin: the source must lie outside"):
        FanBeam2D((100, 100), [0.0], 64, source_origin=50.0, origin_detector=10.0)
    with pytest.raises(ValueError, match="origin_detector"):
        FanBeam2D((10, 10), [0.0], 64, source_origin=50.0, origin_detector=-1.0)


def test_cone_beam_needs_cuda():
    A = ConeBeam3D((8, 8, 8), np.linspace(0, 2 * np.pi, 10, endpoint=False), (12, 12), 50.0, 25.0)
    assert A.in_shape == (1, 8, 8, 8) and A.out_shape == (1, 12, 10, 12)
    with pytest.raises(RuntimeError, match="x: ConeBeam3D needs a CUDA tensor"):
        A(torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="detector_shape"):
        ConeBeam3D((8, 8, 8), [0.0], (12,), 50.0, 25.0)
    with pytest.raises(ValueError, match="source_origin: the source must lie outside the volume"):
        ConeBeam3D((8, 64, 64), [0.0], (12, 12), 30.0, 25.0)


def test_operator_pickles_without_astra_handles(op):
    import pickle

    op(torch.zeros(1, 1, 16, 16))  # creates a projector handle
    clone = pickle.loads(pickle.dumps(op))
    x = randn(op.in_shape, seed=4)
    assert rel_diff(clone(x), op(x)) == 0.0


# -- CUDA glue on CPU: a fake ASTRA 3D that evaluates the 3D geometry with the 2D CPU projector --
class FakeAstra3D:
    """Implements create_projector('cuda3d') + direct_FP3D/BP3D for parallel3d_vec on CPU.

    It converts the 3D vectors back to a 2D ``parallel_vec`` geometry, assuming (as ASTRA's
    CUDA kernels do) that 3D volume rows run along +y while 2D rows run along -y.
    """

    def __init__(self):
        self.geoms, self.calls = {}, []
        self._real_create = astra.create_projector

    def create_projector(self, kind, proj_geom, vol_geom):
        assert kind == "cuda3d" and proj_geom["type"] == "parallel3d_vec"
        pid = len(self.geoms) + 1000
        self.geoms[pid] = (proj_geom, vol_geom)
        return pid

    def _projector2d(self, pid):
        proj_geom, vol_geom = self.geoms[pid]
        v = proj_geom["Vectors"]
        vec2 = np.stack([v[:, 0], -v[:, 1], v[:, 3], -v[:, 4], v[:, 6], -v[:, 7]], axis=1)
        pg = astra.create_proj_geom("parallel_vec", proj_geom["DetectorColCount"], vec2)
        vg = astra.create_vol_geom(vol_geom["GridRowCount"], vol_geom["GridColCount"])
        return self._real_create("linear", pg, vg)

    def direct_FP3D(self, pid, vol, proj):
        self.calls.append(("FP", tuple(vol.shape), tuple(proj.shape)))
        p2 = self._projector2d(pid)
        for k in range(vol.shape[0]):
            astra.projector.direct_FP(p2, vol[k].numpy(), out=proj[k].numpy())

    def direct_BP3D(self, pid, vol, proj):
        self.calls.append(("BP", tuple(vol.shape), tuple(proj.shape)))
        p2 = self._projector2d(pid)
        for k in range(vol.shape[0]):
            astra.projector.direct_BP(p2, proj[k].numpy(), out=vol[k].numpy())


def test_cuda_glue_matches_cpu_path(monkeypatch):
    fake = FakeAstra3D()
    monkeypatch.setattr(astra, "create_projector", fake.create_projector)
    monkeypatch.setattr(astra.experimental, "direct_FP3D", fake.direct_FP3D)
    monkeypatch.setattr(astra.experimental, "direct_BP3D", fake.direct_BP3D)
    A = ParallelBeam2D((20, 24), nonuniform_angles(9, np.pi), 32, pixel_size=0.6, detector_spacing=0.8, channels=2)
    x, y = randn(A.in_shape, batch=3, seed=1), randn(A.out_shape, batch=3, seed=2)
    monkeypatch.undo()
    reference_fp, reference_bp = A._run_2d(x, A.out_shape, False), A._run_2d(y, A.in_shape, True)
    monkeypatch.setattr(astra, "create_projector", fake.create_projector)
    monkeypatch.setattr(astra.experimental, "direct_FP3D", fake.direct_FP3D)
    monkeypatch.setattr(astra.experimental, "direct_BP3D", fake.direct_BP3D)
    assert rel_diff(A._forward_cuda(x), reference_fp) < 1e-5
    assert rel_diff(A._adjoint_cuda(y), reference_bp) < 1e-5
    # the whole batch x channels went through ONE 3D call each way
    assert fake.calls == [("FP", (6, 20, 24), (6, 9, 32)), ("BP", (6, 20, 24), (6, 9, 32))]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["parallel", "fan"])
def test_cuda_matches_cpu(kind):
    """ASTRA's GPU projectors against the CPU ones (different discretisations: 5% on smooth data).

    Detector cells as wide as pixels: with coarser cells the CPU back-projection (the exact transpose of
    one ray per cell) aliases while the GPU one interpolates: 9% apart at 2 pixels per cell (H100).
    """
    angles = np.linspace(0, np.pi if kind == "parallel" else 2 * np.pi, 60, endpoint=False)
    A = (ParallelBeam2D((64, 64), angles, 96, pixel_size=0.5, detector_spacing=0.5) if kind == "parallel"
         else FanBeam2D((64, 64), angles, 128, 200.0, 100.0, pixel_size=0.5, detector_spacing=0.5))
    x = disc(64, 10.0, 0.02, pixel_size=0.5).repeat(2, 1, 1, 1)
    y = A(x)
    assert rel_diff(A(x.cuda()).cpu(), y) < 5e-2
    assert rel_diff(A.adjoint(y.cuda()).cpu(), A.adjoint(y)) < 5e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="ConeBeam3D needs a CUDA device")
class TestConeBeam3D(LinearOperatorContract):
    """The full contract on CUDA; ASTRA's GPU pair is not an exact adjoint (documented tolerance)."""

    device = "cuda"
    internal_float32 = True

    def tol(self, dtype) -> float:
        return 5e-2

    @pytest.fixture
    def make(self):
        return ConeBeam3D((16, 20, 24), np.linspace(0, 2 * np.pi, 24, endpoint=False), (24, 32), 80.0, 40.0,
                          voxel_size=0.5, detector_spacing=(0.6, 0.7)).cuda()


def test_cuda_glue_chunks_large_batches(monkeypatch):
    """Batches beyond the memory bound go through several 3D calls; the result is the same."""
    import operators.ct as ct

    fake = FakeAstra3D()
    A = ParallelBeam2D((16, 16), nonuniform_angles(7, np.pi), 24)
    x, y = randn(A.in_shape, batch=7, seed=5), randn(A.out_shape, batch=7, seed=6)
    reference_fp, reference_bp = A._run_2d(x, A.out_shape, False), A._run_2d(y, A.in_shape, True)
    monkeypatch.setattr(astra, "create_projector", fake.create_projector)
    monkeypatch.setattr(astra.experimental, "direct_FP3D", fake.direct_FP3D)
    monkeypatch.setattr(astra.experimental, "direct_BP3D", fake.direct_BP3D)
    # room for 3 image slices (16 x 16 x 4 bytes) in half the "free" memory
    monkeypatch.setattr(ct, "_free_device_bytes", lambda device: 2 * 3 * 16 * 16 * 4)
    assert rel_diff(A._forward_cuda(x), reference_fp) < 1e-5
    assert [c[1][0] for c in fake.calls] == [2, 3, 2]  # at most 3 images per call, evened out
    fake.calls.clear()
    assert rel_diff(A._adjoint_cuda(y), reference_bp) < 1e-5
    assert [c[2][0] for c in fake.calls] == [4, 3]  # 7 x 24 x 4 bytes per sinogram: at most 4 per call


@pytest.mark.parametrize("n, per_slice, free, expected", [
    (5, 10, None, [(0, 5)]),
    (5, 10, 1000, [(0, 5)]),
    (5, 10, 40, [(0, 2), (2, 3), (3, 5)]),
    (3, 10, 1, [(0, 1), (1, 2), (2, 3)]),  # never fewer than one slice per call
])
def test_cuda_chunks(n, per_slice, free, expected):
    from operators.ct import cuda_chunks

    chunks = cuda_chunks(n, per_slice, free)
    assert chunks == expected
    assert chunks[0][0] == 0 and chunks[-1][1] == n and all(b > a for a, b in chunks)
    assert [b - a for a, b in cuda_chunks(2500, 1, None)] == [833, 834, 833]  # MAX_SLICES_PER_CALL = 1024
