"""The image policy: every Pillow mode becomes RGB the documented way; hostile files are refused."""


import numpy as np
import pytest
from PIL import Image

from alexnet_onnx.runtime.errors import ImageError
from alexnet_onnx.runtime.image import MAX_PIXELS, load_image

from conftest import MODES, SAVE_AS, png_header_only, rgba_image


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_in_memory_becomes_rgb(mode):
    out = load_image(MODES[mode]())
    assert out.mode == "RGB" and out.size == MODES[mode]().size


@pytest.mark.parametrize("mode", [m for m in MODES if m not in ("YCbCr", "PA")])
def test_every_mode_from_file_becomes_rgb(mode, tmp_path):
    path = tmp_path / f"img{SAVE_AS.get(mode, '.png')}"
    MODES[mode]().save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (MODES[mode]().size)


def test_alpha_is_composited_onto_white(tmp_path):
    path = tmp_path / "a.png"
    rgba_image().save(path)
    out = load_image(path)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) in ((127, 127, 127), (128, 128, 128))
    assert out.getpixel((3, 3)) == (10, 200, 30)


def test_palette_with_transparency_is_composited(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((1, 1), 1)
    path = tmp_path / "p.png"
    im.save(path, transparency=0)
    out = load_image(path)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (255, 0, 0)


def test_16_bit_is_scaled_not_clamped(tmp_path):
    values = np.array([[0, 1000, 32896, 65535]], np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    out = np.asarray(load_image(path))[0, :, 0]
    assert out.tolist() == [0, 4, 128, 255]  # Pillow's convert("L") would clamp 1000 to 255


GREY_16 = [0, 1000, 32896, 40000, 65535]  # 40000 is the transparency key in the cases below


def _policy_grey(values, key, wide=False) -> np.ndarray:
    """The policy's result for deep grey values, written out: scaled to 8 bits (value/257
    rounded, or from 0..2**31-1 for wide 32-bit values), then the key's pixels white."""
    out = [255 if v == key else (max(v, 0) >> 23 if wide else (v + 128) // 257) for v in values]
    return np.array([[[v] * 3 for v in out]], np.uint8)


def test_16_bit_grey_png_with_a_transparency_key_is_scaled_then_composited(tmp_path):
    path = tmp_path / "g16-trns.png"
    Image.fromarray(np.array([GREY_16], np.uint16)).save(path, transparency=40000)
    with Image.open(path) as im:
        assert im.mode == "I;16" and im.info["transparency"] == 40000  # what a tRNS chunk gives
    expected = _policy_grey(GREY_16, 40000)  # [0, 4, 128, white, 255]: convert("RGBA") clamps 1000 and 32896 to 255
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)


@pytest.mark.parametrize("values,wide", [(GREY_16, False), ([-7, 1 << 28, 40000, 2**31 - 1], True)],
                         ids=["16-bit-range", "wide"])
def test_32_bit_grey_with_a_transparency_key_is_scaled_then_composited(tmp_path, values, wide):
    """Mode I as a PNG's tRNS key leaves it (this Pillow reads 16-bit PNGs as I;16, and cannot
    write mode I as PNG, so the image is built in memory with the key a PNG would carry)."""
    im = Image.fromarray(np.array([values], np.int32), "I")
    im.info["transparency"] = 40000
    np.testing.assert_array_equal(np.asarray(load_image(im)), _policy_grey(values, 40000, wide))


def test_float_images_are_clipped():
    im = Image.fromarray(np.array([[-1.0, 0.0, 0.5, 1.0, 7.0]], np.float32))
    assert np.asarray(load_image(im))[0, :, 0].tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation, tmp_path):
    from PIL import ImageOps

    pixels = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(pixels, "RGB").save(path, exif=exif)
    with Image.open(path) as im:
        expected = ImageOps.exif_transpose(im)  # Pillow's own reading of the tag is the oracle
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(expected))


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert load_image(path).getpixel((4, 4)) == (255, 0, 0)


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"  # a header claiming 900 Mpixels and almost no pixel data
    png_header_only(path, 30000, 30000)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path)
    assert 30000 * 30000 > MAX_PIXELS


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.jpg", b"", "supported format"),
        ("notes.txt", b"hello, I am text\n" * 10, "supported format"),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10, "cannot decode|supported format"),
        ("doc.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "supported format"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_jpeg_is_an_error(tmp_path):
    path = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(path)


@pytest.mark.parametrize("fmt,suffix", [("TGA", ".tga"), ("PCX", ".pcx"), ("ICO", ".ico")])
def test_formats_outside_the_allow_list_are_refused(tmp_path, fmt, suffix):
    path = tmp_path / f"x{suffix}"
    Image.new("RGB", (16, 16)).save(path, format=fmt)
    with pytest.raises(ImageError, match="supported format"):
        load_image(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


# -- memory: a budget in bytes, conversions in bands ----------------------------------------------

from alexnet_onnx.runtime import image as image_module  # noqa: E402
from alexnet_onnx.runtime import image_structure as structure  # noqa: E402


def _reference_policy(im: Image.Image) -> np.ndarray:
    """The policy written plainly, whole-image (how it was before conversions went by bands)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        wide = mode == "I" and (values.min() < 0 or values.max() > 65535)
        eight = (np.clip(values, 0, 2**31 - 1) >> 23) if wide else (values + 128) // 257
        if "transparency" in im.info:
            eight = np.where(values == im.info["transparency"], 255, eight)
        return np.stack([eight.astype(np.uint8)] * 3, axis=-1)
    if mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", im.size, (255,) * 4), rgba).convert("RGB"))
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        return np.stack([np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)] * 3, axis=-1)
    return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("mode", ["I;16", "I", "I-wide", "F", "RGBA", "LA", "P-transparent", "I;16-transparent",
                                  "I-transparent"])
def test_banded_conversion_equals_the_whole_image_policy(mode, monkeypatch):
    monkeypatch.setattr(image_module, "BAND_PIXELS", 97)  # many bands, ragged last one
    rng = np.random.default_rng(7)
    h, w = 41, 23
    if mode.startswith("I;16"):
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode.startswith("I"):
        high = 2**31 - 1 if mode == "I-wide" else 65536
        im = Image.fromarray(rng.integers(-5 if mode == "I-wide" else 0, high, (h, w)).astype(np.int32), "I")
    elif mode == "F":
        values = rng.normal(0.5, 0.6, (h, w)).astype(np.float32)
        values[0, :3] = [np.nan, np.inf, -np.inf]
        im = Image.fromarray(values, "F")
    elif mode == "P-transparent":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P")
        im.info["transparency"] = 3
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").convert(mode)
    if mode.endswith("-transparent") and mode.startswith("I"):
        im.info["transparency"] = int(np.asarray(im)[3, 4])  # a value that occurs
    np.testing.assert_array_equal(np.asarray(load_image(im)), _reference_policy(im))


def test_deep_images_convert_in_bounded_numpy_memory(tmp_path):
    """A 12-Mpixel 16-bit scan: the whole-image conversion allocated ~200 MB of int64 temporaries."""
    import tracemalloc

    path = tmp_path / "scan.png"
    Image.fromarray(np.tile(np.arange(4000, dtype=np.uint16) * 16, (3000, 1))).save(path, compress_level=1)
    tracemalloc.start()
    try:
        with image_module.opened(path) as im:
            out = image_module.decode(im)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.mode == "L" and out.size == (4000, 3000)
    assert peak < 40 << 20, f"numpy temporaries peaked at {peak >> 20} MiB"


@pytest.mark.parametrize(
    "mode,orientation,per_pixel",
    [("RGB", 1, 4), ("L", 1, 1), ("L", 6, 2), ("I;16", 1, 3), ("I;16", 8, 4), ("F", 1, 5), ("RGBA", 1, 8),
     ("RGB", 6, 8), ("CMYK", 3, 12), ("1", 1, 2)],
)
def test_decode_cost_counts_bytes_not_pixels(mode, orientation, per_pixel):
    im = Image.new(mode, (10, 20))
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.info["exif"] = exif.tobytes()
    assert image_module.decode_cost(im) == 200 * per_pixel


def test_images_over_the_byte_budget_are_refused_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "deep.png"
    Image.fromarray(np.zeros((100, 100), np.uint16)).save(path)
    monkeypatch.setattr(image_module, "DECODE_BUDGET", 100 * 100 * 3 - 1)  # needs 2 + 1 bytes a pixel
    with pytest.raises(ImageError, match="needs ~0 MiB, more than the 0 MiB budget"):
        load_image(path)


def test_files_larger_than_the_size_bound_are_refused_before_they_are_read(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(structure, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(ImageError, match=r"big.png: the file is 0 MiB, more than the 0 MiB an image may be"):
        image_module.read_file(path, str(path))
    with pytest.raises(ImageError, match=r"big.png: the file is 0 MiB, more than the 0 MiB an image may be"):
        load_image(path)  # the local path too
    pytest.importorskip("pyarrow", reason="the cluster extra is not installed: pip install '.[cluster]'")
    from alexnet_onnx.runtime.cluster_sources import read_source

    with pytest.raises(ImageError, match=r"the file is 0 MiB, more than the 0 MiB an image may be"):
        read_source(path.as_uri(), path.as_uri())
    monkeypatch.setattr(structure, "MAX_FILE_BYTES", path.stat().st_size)
    assert load_image(path).size == (64, 64)


def test_the_decode_budget_holds_back_what_does_not_fit(monkeypatch):
    """B asks for 50 bytes while A holds 60 of 100: B waits until A lets go, then goes in alone.
    The budget waits on a threading.Condition; watching its waits shows B held, without timing."""
    import threading

    waits, moved = threading.Event(), threading.Event()

    class Watched(threading.Condition):
        def wait(self, timeout=None):
            waits.set()
            moved.set()
            return super().wait(timeout)

    with monkeypatch.context() as m:
        m.setattr(threading, "Condition", Watched)
        budget = image_module.MemoryBudget(100)
    a_in, a_release = threading.Event(), threading.Event()
    b_saw: list[int] = []

    def a():
        with budget.hold(60):
            a_in.set()
            a_release.wait(30)

    def b():
        with budget.hold(50):
            b_saw.append(budget.used)
            moved.set()

    first = threading.Thread(target=a)
    first.start()
    assert a_in.wait(30)
    second = threading.Thread(target=b)
    second.start()
    assert moved.wait(30)  # B either waits or (wrongly) went in
    held = waits.is_set() and not b_saw and budget.used == 60
    a_release.set()
    first.join(30)
    second.join(30)
    assert held, f"B went in beside A (bytes in use then: {b_saw})"
    assert b_saw == [50] and budget.used == 0


# Structure bounds (runtime/image_structure.py): files that decode slowly or into far more memory
# than their pixel count says are refused from their bytes; real files of each kind pass.

import io  # noqa: E402

import image_bombs  # noqa: E402


def _scans(path) -> int:
    with open(path, "rb") as f:
        return structure.jpeg_scans(structure.Window(f), 10**6)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_real_progressive_jpeg_passes_and_its_scans_are_counted(tmp_path, mode):
    pixels = np.random.default_rng(1).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    path = tmp_path / "p.jpg"
    Image.fromarray(pixels).convert(mode).save(path, progressive=True, comment=b"\xff\xda" * 300)
    written = path.read_bytes().count(b"\xff\xda") - 300  # the markers less those in the comment
    assert _scans(path) == written and 2 <= written <= 12
    assert load_image(path).size == (200, 300)


def test_jpeg_scans_are_bounded_at_the_limit(tmp_path):
    at = image_bombs.jpeg_scans(tmp_path / "at.jpg", structure.MAX_JPEG_SCANS)
    over = image_bombs.jpeg_scans(tmp_path / "over.jpg", structure.MAX_JPEG_SCANS + 1)
    assert _scans(at) == structure.MAX_JPEG_SCANS
    load_image(at)
    with pytest.raises(ImageError, match=rf"over.jpg: a JPEG of more than {structure.MAX_JPEG_SCANS} scans"):
        load_image(over)


def test_only_the_first_picture_of_a_multi_picture_jpeg_counts(tmp_path):
    """An MPO carries more pictures after the first EOI; only the first is decoded."""
    one = image_bombs.jpeg_scans(tmp_path / "one.jpg", structure.MAX_JPEG_SCANS).read_bytes()
    both = tmp_path / "both.jpg"
    both.write_bytes(one + one)
    assert _scans(both) == structure.MAX_JPEG_SCANS
    load_image(both)


def test_real_tiffs_pass(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (700, 500, 3), dtype=np.uint8)
    for name, options in {"strips.tif": {}, "deflate.tif": {"compression": "tiff_adobe_deflate"},
                          "big.tif": {"big_tiff": True}}.items():
        Image.fromarray(pixels).save(tmp_path / name, **options)
        np.testing.assert_array_equal(np.asarray(load_image(tmp_path / name)), pixels)
    with Image.open(tmp_path / "deflate.tif") as im:
        assert len(im.tag_v2[273]) > 1  # libtiff writes several strips: the count check really ran


def test_tiff_strips_beyond_what_the_size_needs_are_refused(tmp_path):
    fits = image_bombs.tiff_strips(tmp_path / "fits.tif", 3, width=1, height=3)
    assert load_image(fits).size == (1, 3)
    with pytest.raises(ImageError, match=r"a 1x3 TIFF claiming 4 strips \(its size needs 3"):
        load_image(image_bombs.tiff_strips(tmp_path / "over.tif", 4, width=1, height=3))
    tall = structure.MAX_TIFF_CHUNKS + 1
    with pytest.raises(ImageError, match=rf"claiming {tall} strips \(its size needs {tall}, at most"):
        load_image(image_bombs.tiff_strips(tmp_path / "tall.tif", tall, width=1, height=tall))


def test_a_tiff_tile_larger_than_image_and_bound_is_refused(tmp_path):
    with pytest.raises(ImageError, match=r"a 1x1 TIFF with 32768x32768 tiles"):
        load_image(image_bombs.tiff_tile(tmp_path / "tile.tif"))
    with open(image_bombs.tiff_tile(tmp_path / "ok.tif", tile=256), "rb") as f:
        structure.check_structure(f, "ok.tif")  # a 256x256 tile for a 1x1 image is what writers do


@pytest.mark.parametrize("kind", [b"tEXt", b"prIv"])
def test_png_chunks_past_the_bound_are_refused_and_real_ones_pass(tmp_path, kind):
    over = image_bombs.png_chunk(tmp_path / "over.png", kind, structure.MAX_PNG_CHUNK + 1)
    with pytest.raises(ImageError, match=rf"a PNG '{kind.decode()}' chunk of 16 MiB, more than the 16 MiB"):
        load_image(over)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 500_000)  # a large but real text chunk
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG", pnginfo=info)
    path = tmp_path / "real.png"
    path.write_bytes(buffer.getvalue())
    assert load_image(path).getpixel((0, 0)) == (1, 2, 3)
