"""The fast decode path: JPEGs decoded at a reduced DCT scale, then the exact resize and crop;
every file the exact path takes, handled the same way (orientation, CMYK, grey, progressive)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from alexnet_onnx.runtime import Predictor
from alexnet_onnx.runtime.cli import main
from alexnet_onnx.runtime.errors import ImageError, UsageError
from alexnet_onnx.runtime.image import ALLOWED_FORMATS, FAST_DECODE_FACTOR, decode, opened


def photo(size=(1200, 900), seed=0) -> Image.Image:
    """A smooth photo-like image (a gradient with soft noise): what DCT scaling is meant for."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8), "RGB")


def save_jpeg(im: Image.Image, path, **options):
    im.save(path, "JPEG", quality=92, **options)
    return path


@pytest.fixture(scope="module")
def predictors(exported_model):
    return Predictor(exported_model), Predictor(exported_model, decode="fast")


def grey_levels(a: np.ndarray, b: np.ndarray, p: Predictor) -> float:
    std = np.asarray(p.contract.preprocess.std)[:, None, None]
    return float(np.abs(a - b).__mul__(std * 255).mean())


@pytest.mark.parametrize(
    "name,make",
    [
        ("baseline", lambda: (photo(), {})),
        ("progressive", lambda: (photo(), {"progressive": True})),
        ("grey", lambda: (photo().convert("L"), {})),
        ("cmyk", lambda: (photo().convert("CMYK"), {})),
        ("portrait-4:2:0", lambda: (photo((700, 1300)), {"subsampling": "4:2:0"})),
    ],
)
def test_fast_is_close_to_exact_and_decodes_less(predictors, tmp_path, name, make):
    exact, fast = predictors
    im, options = make()
    path = save_jpeg(im, tmp_path / f"{name}.jpg", **options)
    min_side = math.ceil(FAST_DECODE_FACTOR * exact.contract.preprocess.resize)
    with opened(path, min_side=min_side) as opened_im:
        reduced = decode(opened_im)
    assert min(reduced.size) >= min_side and reduced.size[0] <= im.size[0] // 2  # DCT-scaled
    x_exact, x_fast = exact.preprocess(path), fast.preprocess(path)
    assert x_fast.shape == x_exact.shape and np.isfinite(x_fast).all()
    assert grey_levels(x_fast, x_exact, exact) < 2.0  # smooth content: close, not equal


@pytest.mark.parametrize("size,decoded", [((4032, 3024), (504, 378)), ((4000, 3000), (500, 375)),
                                          ((3024, 4032), (378, 504)), ((1920, 1080), (960, 540))])
def test_camera_sizes_decode_at_the_scales_the_agreement_figures_cover(tmp_path, size, decoded):
    """For a 224-px model (resize 256): 12-Mpixel photos at 1/8 (shorter side 1.46-1.48x the
    resize), 2-Mpixel 16:9 at 1/2 (1/4 would leave 1.05x, measured too coarse)."""
    path = save_jpeg(Image.new("RGB", size, (90, 120, 150)), tmp_path / "camera.jpg")
    with opened(path, min_side=math.ceil(FAST_DECODE_FACTOR * 256)) as im:
        assert im.size == decoded


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_fast_applies_exif_orientation(predictors, tmp_path, orientation):
    exact, fast = predictors
    upright = photo((1200, 900), seed=orientation)
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    exif = Image.Exif()
    exif[0x0112] = orientation
    turned = save_jpeg(upright.transpose(undo[orientation]), tmp_path / "turned.jpg", exif=exif.tobytes())
    plain = save_jpeg(upright, tmp_path / "plain.jpg")
    assert grey_levels(fast.preprocess(turned), fast.preprocess(plain), fast) < 2.0
    assert grey_levels(fast.preprocess(turned), exact.preprocess(turned), fast) < 2.0


def test_fast_equals_exact_where_there_is_nothing_to_reduce(predictors, tmp_path):
    exact, fast = predictors
    small = save_jpeg(photo((100, 90)), tmp_path / "small.jpg")  # shorter side < 2 x min side
    np.testing.assert_array_equal(fast.preprocess(small), exact.preprocess(small))


@pytest.mark.parametrize("fmt", [f for f in ALLOWED_FORMATS if f != "JPEG"])
def test_fast_decodes_every_other_format_of_the_policy_exactly(predictors, tmp_path, fmt):
    exact, fast = predictors
    path = tmp_path / f"big.{fmt.lower()}"
    photo().save(path, fmt)  # large enough that a JPEG would be reduced
    x_fast = fast.preprocess(path)
    assert np.isfinite(x_fast).all()
    np.testing.assert_array_equal(x_fast, exact.preprocess(path))


def test_fast_refuses_corrupt_jpegs_in_one_line(predictors, tmp_path):
    _, fast = predictors
    path = save_jpeg(photo(), tmp_path / "cut.jpg")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageError, match="cannot decode") as info:
        fast.preprocess(path)
    assert "\n" not in str(info.value)


def test_command_and_api_take_the_decode_mode(exported_model, tmp_path):
    path = save_jpeg(photo(), tmp_path / "a.jpg")
    for mode in ("exact", "fast"):
        result = CliRunner().invoke(main, ["-m", str(exported_model), "--decode", mode, "--format", "json", str(path)])
        assert result.exit_code == 0 and "label" in json.loads(result.stdout)
    assert CliRunner().invoke(main, ["-m", str(exported_model), "--decode", "quick", str(path)]).exit_code == 2
    with pytest.raises(UsageError, match="exact, fast"):
        Predictor(exported_model, decode="quick")
