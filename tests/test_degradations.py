"""The Real-ESRGAN degradation chain (xpsr_jax/data): kernels against closed forms, resizing and filtering against
PyTorch, noise and JPEG statistics, USM, the sampling probabilities of the reference, the end-to-end outputs,
reproducibility and per-batch sharing."""

import math

import cv2
import numpy as np
import pytest

from xpsr_jax.data import kernels as K
from xpsr_jax.data import ops
from xpsr_jax.data.degradation_config import DegradationConfig, StageConfig
from xpsr_jax.data.degradations import ChainDraws, degrade, degrade_batch, degrade_pair, draw_chain
from xpsr_jax.data.resize import resize

SMALL = DegradationConfig(gt_size=128)  # same chain on 128² crops (32² LR): fast enough for many runs


def textured_image(h=160, w=200, seed=0, channels=3):
    """uint8 test picture with smooth shading, hard edges and fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.5 + 0.25 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    base += 0.15 * ((xx // 23 + yy // 17) % 2) - 0.075
    img = base[..., None] + np.array([0.05, 0.0, -0.05])[:channels] + rng.normal(0, 0.03, (h, w, channels))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def hf_energy(img):
    """Mean squared Laplacian: a measure of high-frequency content."""
    return float(np.mean(cv2.Laplacian(np.asarray(img, np.float32), cv2.CV_32F) ** 2))


# ------------------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [K.KernelConfig(), DegradationConfig().kernel2], ids=["kernel1", "kernel2"])
def test_random_kernels_are_21x21_normalised(cfg):
    rng = np.random.default_rng(0)
    for _ in range(150):
        spec = K.sample_blur_spec(rng, cfg)
        kern = K.render(spec)
        assert kern.shape == (21, 21) and kern.dtype == np.float32
        assert abs(float(kern.sum()) - 1.0) < 1e-5
        if spec.kind != "sinc":
            assert kern.min() >= 0
        border = (21 - spec.size) // 2
        if border:  # zero padding around the drawn size
            assert not kern[:border].any() and not kern[:, :border].any()
    for _ in range(50):
        kern = K.random_final_sinc_kernel(rng)
        assert kern.shape == (21, 21) and abs(float(kern.sum()) - 1.0) < 1e-5


@pytest.mark.parametrize("make", [
    lambda: K.gaussian_kernel(21, 2.3),
    lambda: K.generalized_gaussian_kernel(15, 1.7, beta=0.6),
    lambda: K.generalized_gaussian_kernel(15, 1.7, beta=3.5),
    lambda: K.plateau_kernel(13, 1.2, beta=1.6),
    lambda: K.circular_lowpass_kernel(1.3, 17),
])
def test_isotropic_kernels_are_symmetric(make):
    kern = make()
    for view in (kern.T, kern[::-1], kern[:, ::-1], np.rot90(kern)):
        np.testing.assert_allclose(kern, view, atol=1e-12)
    assert np.unravel_index(np.argmax(kern), kern.shape) == (kern.shape[0] // 2,) * 2


def test_gaussian_kernels_match_closed_form():
    ax = np.arange(-10, 11, dtype=np.float64)
    g = np.exp(-ax**2 / (2 * 1.8**2))
    np.testing.assert_allclose(K.gaussian_kernel(21, 1.8), np.outer(g, g) / np.outer(g, g).sum(), atol=1e-12)
    # anisotropic and rotated: exp(-(u²/σx² + v²/σy²)/2) with (u, v) the coordinates in the rotated frame
    sx, sy, th = 2.5, 0.9, 0.7
    x, y = np.meshgrid(ax, ax)
    u, v = x * math.cos(th) + y * math.sin(th), -x * math.sin(th) + y * math.cos(th)
    ref = np.exp(-0.5 * (u**2 / sx**2 + v**2 / sy**2))
    np.testing.assert_allclose(K.gaussian_kernel(21, sx, sy, th), ref / ref.sum(), atol=1e-12)
    # θ = π/2 swaps the axes; θ and θ + π are the same kernel
    np.testing.assert_allclose(K.gaussian_kernel(21, sx, sy, math.pi / 2), K.gaussian_kernel(21, sx, sy).T,
                               atol=1e-12)
    np.testing.assert_allclose(K.gaussian_kernel(21, sx, sy, th + math.pi), K.gaussian_kernel(21, sx, sy, th),
                               atol=1e-12)
    assert K.gaussian_kernel(21, 3.0, 0.5)[10].sum() > K.gaussian_kernel(21, 3.0, 0.5)[:, 10].sum()  # wide in x


def test_generalized_and_plateau_match_closed_form():
    sx, sy, th = 1.9, 1.1, -0.4
    np.testing.assert_allclose(K.generalized_gaussian_kernel(21, sx, sy, th, beta=1.0),
                               K.gaussian_kernel(21, sx, sy, th), atol=1e-12)
    for beta in (0.5, 2.0, 4.0):
        kern = K.generalized_gaussian_kernel(21, 1.5, beta=beta)
        q = (1 / 1.5**2) ** beta  # one pixel right of the centre
        assert kern[10, 11] / kern[10, 10] == pytest.approx(math.exp(-0.5 * q), rel=1e-10)
        kern = K.plateau_kernel(21, 1.5, beta=beta)
        assert kern[10, 11] / kern[10, 10] == pytest.approx(1 / (1 + q), rel=1e-10)
        q2 = (8 / 1.5**2) ** beta  # (2, 2) offset
        assert kern[12, 12] / kern[10, 10] == pytest.approx(1 / (1 + q2), rel=1e-10)


def test_sinc_kernel_formula_and_cutoff():
    from scipy import special

    omega, size = 1.4, 13
    kern = K.circular_lowpass_kernel(omega, size)
    r = math.hypot(2, 3)
    raw_centre, raw_23 = omega**2 / (4 * math.pi), omega * special.j1(omega * r) / (2 * math.pi * r)
    assert kern[6 + 2, 6 + 3] / kern[6, 6] == pytest.approx(raw_23 / raw_centre, rel=1e-10)
    padded = K.circular_lowpass_kernel(omega, size, pad_to=21)
    assert padded.shape == (21, 21) and np.array_equal(padded[4:17, 4:17], kern)
    # frequency response along the x axis: passes below ω_c, stops above (ripple from the truncation)
    for omega_c in (math.pi / 3, math.pi / 2):
        resp = np.abs(np.fft.fft2(np.pad(K.circular_lowpass_kernel(omega_c, 21), ((0, 491), (0, 491))))[0])
        freqs = 2 * math.pi * np.arange(512) / 512
        assert np.mean(resp[freqs < 0.7 * omega_c]) == pytest.approx(1.0, abs=0.1)
        assert np.mean(resp[(freqs > 1.3 * omega_c) & (freqs < math.pi)]) < 0.1
    # a lower cut-off removes more of the high frequencies of an image
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    energies = [hf_energy(ops.filter2d(img, K.circular_lowpass_kernel(w, 21))) for w in (math.pi, 2.0, 1.0)]
    assert energies[0] > energies[1] > energies[2]
    np.testing.assert_array_equal(ops.filter2d(img, K.pulse_kernel()), img)


def test_kernel_sampler_follows_reference_probabilities():
    rng = np.random.default_rng(1)
    cfg = K.KernelConfig()
    specs = [K.sample_blur_spec(rng, cfg) for _ in range(4000)]
    kinds = np.array([s.kind for s in specs])
    assert np.mean(kinds == "sinc") == pytest.approx(0.1, abs=0.02)
    mixed = kinds[kinds != "sinc"]
    for kind, p in zip(cfg.kernel_types, cfg.kernel_probs):
        assert np.mean(mixed == kind) == pytest.approx(p, abs=0.03), kind
    sizes = np.array([s.size for s in specs])
    assert set(sizes) == set(range(7, 22, 2))
    assert np.bincount(sizes)[7::2].min() > 4000 / 8 * 0.75
    for s in specs:
        if s.kind == "sinc":
            lo = math.pi / 3 if s.size < 13 else math.pi / 5
            assert lo <= s.omega_c <= math.pi
            continue
        assert 0.2 <= s.sigma_x <= 3.0 and 0.2 <= s.sigma_y <= 3.0
        if not s.kind.endswith("aniso"):
            assert s.sigma_y == s.sigma_x and s.theta == 0.0
        else:
            assert -math.pi <= s.theta <= math.pi
    large_sinc = [s.omega_c for s in specs if s.kind == "sinc" and s.size >= 13]
    assert min(large_sinc) < math.pi / 3  # the wider ω_c range of large sinc kernels is used
    gen = np.array([s.beta for s in specs if s.kind.startswith("generalized")])
    assert gen.min() >= 0.5 and gen.max() <= 4.0 and np.mean(gen < 1) == pytest.approx(0.5, abs=0.1)
    plateau = np.array([s.beta for s in specs if s.kind.startswith("plateau")])
    # β_p ∈ [1, 2] split at 1: the lower half collapses to exactly 1, as in the reference
    assert np.mean(plateau == 1.0) == pytest.approx(0.5, abs=0.1) and plateau.max() <= 2.0
    finals = [K.sample_final_sinc_spec(rng, K.FinalSincConfig()) for _ in range(2000)]
    assert np.mean([f.kind == "sinc" for f in finals]) == pytest.approx(0.8, abs=0.03)
    assert all(math.pi / 3 <= f.omega_c <= math.pi for f in finals if f.kind == "sinc")


# ------------------------------------------------------------------------------------------------------------
# resizing and filtering against PyTorch
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
def test_resize_matches_torch_interpolate(mode):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    for trial in range(8):
        h, w = (int(v) for v in rng.integers(16, 160, 2))
        img = rng.random((h, w, 3), dtype=np.float32)
        t = torch.from_numpy(img).permute(2, 0, 1)[None]
        if trial % 2:
            s = float(rng.uniform(0.15, 1.5))
            ref, out = F.interpolate(t, scale_factor=s, mode=mode), resize(img, scale_factor=s, mode=mode)
        else:
            size = tuple(int(v) for v in rng.integers(8, 200, 2))
            ref, out = F.interpolate(t, size=size, mode=mode), resize(img, size=size, mode=mode)
        ref = ref[0].permute(1, 2, 0).numpy()
        assert out.shape == ref.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, atol=2e-5)


def test_bicubic_upsample_matches_torch_and_rounds_like_imwrite():
    torch = pytest.importorskip("torch")
    from xpsr_jax.data.degradations import upsample_bicubic

    lr = np.random.default_rng(3).random((32, 40, 3), dtype=np.float32)
    t = torch.from_numpy(lr).permute(2, 0, 1)[None]
    for size in [(128, 160), (100, 90)]:  # integer factor (OpenCV path) and not (own resize)
        ref = torch.nn.functional.interpolate(t, size=size, mode="bicubic")[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(upsample_bicubic(lr, size), ref, atol=1e-5)
    # to_uint8 is what cv2.imwrite stores for a float image ×255: half to even, saturated
    vals = np.array([[[-0.2, 0.5 / 255, 1.5 / 255], [2.5 / 255, 127.5 / 255, 1.3]]], dtype=np.float32)
    ok, buf = cv2.imencode(".png", vals * 255)
    assert ok
    np.testing.assert_array_equal(ops.to_uint8(vals), cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))


def test_filter2d_is_reflect_padded_correlation():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    img = rng.random((37, 45, 3), dtype=np.float32)
    kern = K.render(K.KernelSpec("aniso", 9, 2.0, 0.7, 0.5))
    kern[8, 13] += 0.02  # break the point symmetry so correlation and convolution differ
    t = F.pad(torch.from_numpy(img).permute(2, 0, 1)[None], (10, 10, 10, 10), mode="reflect")
    ref = F.conv2d(t.reshape(3, 1, 57, 65), torch.from_numpy(kern)[None, None])
    np.testing.assert_allclose(ops.filter2d(img, kern), ref.reshape(3, 37, 45).permute(1, 2, 0).numpy(),
                               atol=2e-6)


def test_usm_matches_torch_filter_version():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    img = textured_image(96, 96).astype(np.float32) / 255
    k1d = cv2.getGaussianKernel(51, 0)
    weight = torch.tensor(k1d @ k1d.T, dtype=torch.float32)[None, None]

    def blur(t):  # 51×51 correlation with reflect padding, per channel
        return F.conv2d(F.pad(t, (25,) * 4, mode="reflect").reshape(3, 1, 146, 146), weight).reshape(1, 3, 96, 96)

    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    residual = t - blur(t)
    soft = blur((residual.abs() * 255 > 10).float())
    ref = soft * torch.clip(t + 0.5 * residual, 0, 1) + (1 - soft) * t
    np.testing.assert_allclose(ops.usm_sharpen(img), ref[0].permute(1, 2, 0).numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# noise, JPEG, USM
# ------------------------------------------------------------------------------------------------------------


def test_gaussian_noise_std_matches_sigma():
    rng = np.random.default_rng(5)
    img = np.full((256, 256, 3), 0.5, np.float32)
    for sigma in (3.0, 15.0, 30.0):
        diff = (ops.add_gaussian_noise(img, rng, sigma) - img) * 255
        assert diff.std() == pytest.approx(sigma, rel=0.02) and abs(diff.mean()) < 0.1 * sigma
        corr = np.corrcoef(diff[..., 0].ravel(), diff[..., 1].ravel())[0, 1]
        assert abs(corr) < 0.02  # colour noise: independent channels
    diff = (ops.add_gaussian_noise(img, rng, 20.0, gray=True) - img) * 255
    assert diff.std() == pytest.approx(20.0, rel=0.02)
    np.testing.assert_array_equal(diff[..., 0], diff[..., 2])  # gray noise: one field


def test_poisson_noise_scales_with_level_and_strength():
    rng = np.random.default_rng(6)
    img = np.zeros((256, 512, 3), np.float32)
    img[:, :256] = 0.2
    img[:, 256:] = 0.8
    img[0, :256, 0] = np.arange(256) / 255  # all 256 levels present: 256 photon levels
    for scale in (0.5, 1.0):
        noise = ops.poisson_noise(img, rng, scale, gray=False)[8:]
        for level, part in ((0.2, noise[:, :256]), (0.8, noise[:, 256:])):
            assert part.std() == pytest.approx(scale * math.sqrt(level / 256), rel=0.05)
            assert abs(part.mean()) < 0.05 * part.std()
    gray = ops.poisson_noise(img, rng, 1.0, gray=True)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    out = ops.add_poisson_noise(img, rng, 3.0)
    assert out.min() >= 0 and out.max() <= 1


def test_jpeg_lower_quality_larger_error():
    img = cv2.GaussianBlur(textured_image(128, 128).astype(np.float32) / 255, (0, 0), 1.0)
    errors = []
    for quality in (95, 60, 30, 10):
        out = ops.jpeg(img, quality)
        assert out.shape == img.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
        errors.append(float(np.mean((out - img) ** 2)))
    assert errors == sorted(errors) and errors[-1] > 5 * errors[0]


def test_usm_sharpens_and_is_off_with_the_flag():
    img = cv2.GaussianBlur(textured_image(200, 200, seed=7), (0, 0), 2.0).astype(np.float32) / 255
    sharp = ops.usm_sharpen(img)
    assert sharp.dtype == np.float32 and sharp.min() >= 0 and sharp.max() <= 1
    assert hf_energy(sharp) > 1.5 * hf_energy(img)
    flat = np.full((64, 64, 3), 0.3, np.float32)  # nothing above the threshold: unchanged
    np.testing.assert_allclose(ops.usm_sharpen(flat), flat, atol=1e-6)
    hr = textured_image(200, 200, seed=7)
    no_usm = DegradationConfig(gt_size=128, use_usm=False, use_hflip=False)
    info = {}
    plain, _, _ = degrade_pair(hr, np.random.default_rng(0), no_usm, info=info)
    np.testing.assert_array_equal(plain, hr[info["top"]:info["top"] + 128, info["left"]:info["left"] + 128])
    sharpened, _, _ = degrade_pair(hr, np.random.default_rng(0), DegradationConfig(gt_size=128, use_hflip=False))
    assert hf_energy(sharpened) > 1.2 * hf_energy(plain)


# ------------------------------------------------------------------------------------------------------------
# the chain
# ------------------------------------------------------------------------------------------------------------


def test_degrade_pair_outputs_at_512():
    hr_in = textured_image(560, 600, seed=8)
    info = {}
    hr, lr_up, lr_small = degrade_pair(hr_in, np.random.default_rng(9), info=info)
    assert hr.shape == lr_up.shape == (512, 512, 3) and lr_small.shape == (128, 128, 3)
    assert hr.dtype == lr_up.dtype == lr_small.dtype == np.uint8
    assert {"kernel1", "kernel2", "sinc", "draws", "stage1", "stage2", "final"} <= set(info)
    # the upsampled LR is the bicubic ×4 of the small one before rounding: redoing it from the rounded small
    # image differs by at most 0.5·(2-D bicubic gain ≈ 1.44) + 0.5 levels
    again = np.clip(cv2.resize(lr_small.astype(np.float32), (512, 512), interpolation=cv2.INTER_CUBIC), 0, 255)
    assert np.abs(again - lr_up.astype(np.float32)).max() <= 1.5
    # degraded: the LR lost detail against the HR
    assert hf_energy(lr_up) < hf_energy(hr)


def test_chain_draw_probabilities():
    rng = np.random.default_rng(10)
    cfg = DegradationConfig()
    draws = [draw_chain(rng, cfg) for _ in range(3000)]
    for scales, stage in (([d.scale1 for d in draws], cfg.stage1), ([d.scale2 for d in draws], cfg.stage2)):
        scales = np.array(scales)
        up, down, keep = np.mean(scales > 1), np.mean(scales < 1), np.mean(scales == 1)
        for got, want in zip((up, down, keep), stage.resize_prob):
            assert got == pytest.approx(want, abs=0.03)
        assert stage.resize_range[0] <= scales.min() and scales.max() <= stage.resize_range[1]
    assert np.mean([d.blur2 for d in draws]) == pytest.approx(0.8, abs=0.03)
    assert np.mean([d.gaussian1 for d in draws]) == pytest.approx(0.5, abs=0.03)
    assert np.mean([d.resize_first for d in draws]) == pytest.approx(0.5, abs=0.03)
    modes = [d.mode1 for d in draws] + [d.mode2 for d in draws] + [d.final_mode for d in draws]
    for mode in ("area", "bilinear", "bicubic"):
        assert modes.count(mode) / len(modes) == pytest.approx(1 / 3, abs=0.03)


def test_seed_reproducibility():
    hr = textured_image(seed=11)
    first = degrade_pair(hr, np.random.default_rng(123), SMALL)
    again = degrade_pair(hr, np.random.default_rng(123), SMALL)
    other = degrade_pair(hr, np.random.default_rng(124), SMALL)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])
    batch = degrade_batch([hr, hr], np.random.default_rng(5), SMALL, per_batch=True)
    batch_again = degrade_batch([hr, hr], np.random.default_rng(5), SMALL, per_batch=True)
    for a, b in zip(batch, batch_again):
        np.testing.assert_array_equal(a, b)


def test_per_batch_and_per_sample_sharing():
    hrs = [textured_image(seed=s) for s in range(4)]
    infos = []
    out = degrade_batch(hrs, np.random.default_rng(12), SMALL, per_batch=True, infos=infos)
    assert [o.shape for o in out] == [(4, 128, 128, 3), (4, 128, 128, 3), (4, 32, 32, 3)]
    assert all(i["draws"] == infos[0]["draws"] for i in infos)
    assert infos[0]["draws"]["gray_seed1"] is not None
    assert len({i["kernel1"] for i in infos}) == 4  # kernels stay per image
    assert len({i["final"]["jpeg_quality"] for i in infos} | {i["stage1"]["jpeg_quality"] for i in infos}) > 1
    infos = []
    degrade_batch(hrs, np.random.default_rng(12), SMALL, per_batch=False, infos=infos)
    assert len({i["draws"]["scale1"] for i in infos}) == 4
    assert infos[0]["draws"]["gray_seed1"] is None


def test_batch_shares_the_gray_noise_field():
    """With everything per image fixed, two images of a shared batch get the same gray Gaussian noise."""
    fixed = StageConfig(blur_prob=1.0, resize_prob=(0, 0, 1), resize_range=(1, 1), gaussian_noise_prob=1.0,
                        noise_range=(12.0, 12.0), poisson_scale_range=(1, 1), gray_noise_prob=1.0,
                        jpeg_range=(90, 90))
    cfg = DegradationConfig(gt_size=64, stage1=fixed, stage2=fixed)
    gt = textured_image(64, 64).astype(np.float32) / 255
    k = K.gaussian_kernel(21, 1.0).astype(np.float32)
    base = dict(scale1=1.0, mode1="area", gaussian1=True, blur2=True, scale2=1.0, mode2="area", gaussian2=True,
                resize_first=True, final_mode="bicubic")
    shared = ChainDraws(**base, gray_seed1=7, gray_seed2=8)
    a = degrade(gt, np.random.default_rng(1), shared, k, k, k, cfg)
    b = degrade(gt, np.random.default_rng(2), shared, k, k, k, cfg)
    np.testing.assert_array_equal(a, b)
    c = degrade(gt, np.random.default_rng(1), ChainDraws(**base), k, k, k, cfg)
    d = degrade(gt, np.random.default_rng(2), ChainDraws(**base), k, k, k, cfg)
    assert not np.array_equal(c, d)


def test_small_gray_and_rgba_inputs():
    cfg = DegradationConfig(gt_size=128, use_usm=False, use_hflip=False)
    small = textured_image(100, 70, seed=13)
    hr_rgb, lr_up, lr_small = degrade_pair(small, np.random.default_rng(0), cfg)
    assert hr_rgb.shape == lr_up.shape == (128, 128, 3) and lr_small.shape == (32, 32, 3)
    np.testing.assert_array_equal(hr_rgb[:100, :70], small)  # padded bottom/right with reflect-101
    np.testing.assert_array_equal(hr_rgb[100:128, :70], small[98:70:-1])
    np.testing.assert_array_equal(hr_rgb[:100, 70:128], small[:, 68:10:-1])
    gray = textured_image(150, 140, seed=14, channels=1)[..., 0]
    for img in (gray, gray[..., None]):
        hr, lr_up, _ = degrade_pair(img, np.random.default_rng(1), SMALL)
        assert hr.shape == lr_up.shape == (128, 128, 3)
        assert np.array_equal(hr[..., 0], hr[..., 1]) and np.array_equal(hr[..., 1], hr[..., 2])
    rgba = np.concatenate([small, np.full((100, 70, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(degrade_pair(rgba, np.random.default_rng(0), cfg)[0], hr_rgb)  # alpha dropped
