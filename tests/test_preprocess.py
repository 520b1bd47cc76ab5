"""The runtime's numpy/Pillow preprocessing equals torchvision's eval transform (<= 1e-6)."""

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA, needs_shared_data
from alexnet_onnx.runtime.contract import Preprocess
from alexnet_onnx.runtime.image import load_image
from alexnet_onnx.runtime.preprocess import channel_stats, normalize, preprocess, resized_size
from alexnet_onnx.train.models import ARCHS

TOL = 1e-6
SPECS = [ARCHS["alexnet"].preprocess, ARCHS["alexnet_cifar"].preprocess, Preprocess(resize=71, crop=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))]


def torchvision_eval(spec: Preprocess):
    from torchvision import transforms as T

    return T.Compose([T.Resize(spec.resize), T.CenterCrop(spec.crop), T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def assert_matches(image: Image.Image, spec: Preprocess) -> None:
    ours = preprocess(image, spec)
    theirs = torchvision_eval(spec)(image).numpy()
    assert ours.dtype == np.float32 and ours.shape == (3, spec.crop, spec.crop)
    assert np.abs(ours - theirs).max() <= TOL


@needs_shared_data
@pytest.mark.parametrize("spec", SPECS[:2], ids=["alexnet", "alexnet_cifar"])
def test_real_photos_match_torchvision(spec):
    photos = sorted((SHARED_DATA / "flowers" / "train").glob("*/*.jpg"))[::300]
    photos += sorted((SHARED_DATA / "cifar10" / "test").glob("*/0007.jpg"))
    assert len(photos) >= 15
    for path in photos:
        image = load_image(path)
        # the photo as it is, and resampled to other sizes and aspect ratios (portrait, wide, tiny)
        for size in [image.size, (image.width // 3 + 1, image.height), (97, 413), (640, 33), (13, 9)]:
            assert_matches(image if size == image.size else image.resize(size), spec)


@pytest.mark.parametrize("spec", SPECS, ids=["alexnet", "alexnet_cifar", "odd"])
@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (7, 5), (224, 224), (256, 256), (513, 257), (255, 256)])
def test_generated_sizes_match_torchvision(spec, size):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    assert_matches(image, spec)


@pytest.mark.parametrize("spec", SPECS, ids=["alexnet", "alexnet_cifar", "odd"])
def test_normalize_gives_torchvisions_bits_on_numpy_arrays_and_torch_tensors(spec):
    """The one normalization the runtime and both training pipelines use: every 8-bit level of
    every channel, bit for bit what ToTensor + Normalize give, from numpy and from torch."""
    import torch
    from torchvision import transforms as T

    image = Image.fromarray(np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, -1), "RGB")
    expected = T.Normalize(spec.mean, spec.std)(T.ToTensor()(image)).numpy()
    levels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)
    mean, std = channel_stats(spec)
    from_numpy = normalize(levels, mean, std)
    from_torch = normalize(torch.from_numpy(levels), torch.from_numpy(mean), torch.from_numpy(std)).numpy()
    for got in (from_numpy, from_torch, preprocess(image, Preprocess(resize=16, crop=16, mean=spec.mean, std=spec.std))):
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_resized_size_follows_torchvision_arithmetic():
    # int(size * long / short), shorter side exact, both orientations
    assert resized_size(500, 375, 256) == (341, 256)
    assert resized_size(375, 500, 256) == (256, 341)
    assert resized_size(3, 1000, 256) == (256, 85333)


def test_extreme_aspect_ratio_stays_bounded_and_close():
    spec = SPECS[1]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1, 20000, 3), dtype=np.uint8), "RGB")
    assert np.prod(resized_size(*image.size, spec.resize)) > 16_000_000  # takes the bounded path
    ours = preprocess(image, spec)
    assert ours.shape == (3, 32, 32) and np.isfinite(ours).all()
    theirs = torchvision_eval(spec)(image).numpy()
    # bounded-memory path: within one grey level of torchvision
    assert np.abs(ours - theirs).max() <= 1.01 / 255 / min(spec.std)


def test_requires_rgb_or_grey():
    with pytest.raises(ValueError, match="RGB or L"):
        preprocess(Image.new("RGBA", (10, 10)), SPECS[0])


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (300, 40), (513, 257), (1, 20000)])
def test_grey_images_give_exactly_what_their_rgb_copy_gives(size):
    """Grey images stay one byte per pixel (bounded memory for huge 16-bit scans): the result
    must be bit-identical to preprocessing the RGB copy, on both resize paths."""
    grey = Image.fromarray(np.random.default_rng(size[0]).integers(0, 256, size[::-1], dtype=np.uint8), "L")
    for spec in SPECS:
        np.testing.assert_array_equal(preprocess(grey, spec), preprocess(grey.convert("RGB"), spec))


@pytest.mark.parametrize("spec", SPECS, ids=["alexnet", "alexnet_cifar", "odd"])
def test_16_bit_grey_png_with_a_transparency_key_matches_torchvision_on_the_policy_image(spec, tmp_path):
    """A 16-bit grey PNG with a tRNS key: the image policy scales to 8 bits, then whitens the
    key's pixels (written out here), and the transform matches torchvision on that image."""
    rng = np.random.default_rng(16)
    values = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
    key = int(values[5, 7])
    path = tmp_path / "grey16-trns.png"
    Image.fromarray(values).save(path, transparency=key)
    eight = np.where(values == key, 255, (values.astype(np.int64) + 128) // 257).astype(np.uint8)
    expected = Image.fromarray(np.stack([eight] * 3, axis=-1), "RGB")
    image = load_image(path)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
    assert_matches(image, spec)
