"""Image decoding rules (xpsr_jax/data/images.py): every awkward input gets its documented outcome."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from xpsr_jax.data.images import ImageDecodeError, decode_image, list_images, load_rgb_uint8, read_image
from xpsr_jax.data.synthetic import sample_photos


@pytest.fixture(scope="module")
def photo():
    return sample_photos(1, max_side=96)[0]


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def cv2_bytes(arr: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_rgb_round_trip(photo, fmt):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(pil_bytes(Image.fromarray(photo), fmt, **kw), "x")
    np.testing.assert_array_equal(out.rgb, photo)
    assert out.notes == ()


def test_jpeg_decodes_close(photo):
    out = decode_image(pil_bytes(Image.fromarray(photo), "JPEG", quality=95), "x.jpg").rgb
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - photo).mean() < 4


def test_grayscale_repeated(photo):
    gray = photo[..., 1]
    out = decode_image(pil_bytes(Image.fromarray(gray), "PNG"), "g.png")
    assert out.notes == ("gray",)
    np.testing.assert_array_equal(out.rgb, np.repeat(gray[..., None], 3, axis=2))


def test_rgba_composited_on_white_or_dropped(photo):
    alpha = np.zeros(photo.shape[:2], np.uint8)
    alpha[:, : photo.shape[1] // 3] = 255  # opaque
    alpha[:, photo.shape[1] // 3: 2 * photo.shape[1] // 3] = 128  # half
    rgba = np.concatenate([photo, alpha[..., None]], axis=2)
    data = pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG")
    out = decode_image(data, "a.png")
    assert out.notes == ("alpha_composited",)
    third = photo.shape[1] // 3
    np.testing.assert_array_equal(out.rgb[:, :third], photo[:, :third])  # opaque: unchanged
    assert (out.rgb[:, 2 * third:] == 255).all()  # transparent: white
    half = photo[:, third:2 * third].astype(np.float32) * 128 / 255 + 255 * 127 / 255
    assert np.abs(out.rgb[:, third:2 * third] - half).max() <= 0.51
    dropped = decode_image(data, "a.png", alpha="drop")
    assert dropped.notes == ("alpha_dropped",)
    np.testing.assert_array_equal(dropped.rgb, photo)


def test_gray_alpha_and_palette_transparency():
    la = Image.fromarray(np.stack([np.full((4, 4), 10, np.uint8), np.zeros((4, 4), np.uint8)], 2), "LA")
    out = decode_image(pil_bytes(la, "PNG"), "la.png")
    assert (out.rgb == 255).all() and "gray" in out.notes
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([200, 10, 10] + [0, 0, 255] * 255)
    out = decode_image(pil_bytes(pal, "PNG", transparency=0), "p.png")
    assert "palette" in out.notes and (out.rgb == 255).all()  # colour 0 is transparent
    out = decode_image(pil_bytes(pal, "PNG"), "p.png")
    assert out.notes == ("palette",) and (out.rgb == [200, 10, 10]).all()


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_scaled_with_rounding(ext):
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    rgb16[0, 0] = [0, 65535, 32896]  # 32896 / 257 = 128.0
    want = np.rint(rgb16.astype(np.float64) / 257.0).astype(np.uint8)
    out = decode_image(cv2_bytes(rgb16[..., ::-1], ext), "deep" + ext)  # OpenCV writes BGR
    assert "16bit_scaled" in out.notes
    np.testing.assert_array_equal(out.rgb, want)
    gray = decode_image(cv2_bytes(rgb16[..., 0], ext), "deep_gray" + ext)
    assert set(gray.notes) == {"gray", "16bit_scaled"}
    np.testing.assert_array_equal(gray.rgb[..., 0], want[..., 0])
    rgba = np.concatenate([rgb16, np.full((6, 7, 1), 65535, np.uint16)], axis=2)
    out = decode_image(cv2_bytes(rgba[..., [2, 1, 0, 3]], ext), "deep_rgba" + ext)
    np.testing.assert_array_equal(out.rgb, want)  # opaque alpha: composite leaves the colour


def test_cmyk_jpeg_converted():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(pil_bytes(cmyk, "JPEG", quality=95), "cmyk.jpg")
    assert out.notes == ("cmyk_converted",) and out.rgb.shape == (8, 8, 3)
    r, g, b = out.rgb.reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_applied(photo):
    im = Image.fromarray(photo)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(pil_bytes(im, "PNG", exif=exif), "o.png")
    assert "exif_rotated" in out.notes
    np.testing.assert_array_equal(out.rgb, np.rot90(photo, k=-1))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_raises_naming_it(tmp_path, photo, fmt):
    data = pil_bytes(Image.fromarray(photo), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=str(path)):
        load_rgb_uint8(path)


def test_corrupt_empty_and_missing_raise_naming_the_file(tmp_path):
    bad = tmp_path / "noise.jpg"
    bad.write_bytes(b"not an image at all" * 10)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (bad, empty, tmp_path / "missing.png"):
        with pytest.raises(ImageDecodeError, match=path.name):
            read_image(path)


def test_list_images_recursive_sorted_and_filtered(tmp_path):
    for rel in ["b.PNG", "a/c.jpeg", "a/b.webp", ".hidden.png", ".cache/x.png", "notes.txt", "z.tif", "y.bmp"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a/b.webp", "a/c.jpeg", "b.PNG", "y.bmp", "z.tif"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images(tmp_path / "nowhere")
