"""onnx-predict against hostile inputs and wrong models; property-based fuzzing of decoding."""

import io
import json
import os
import resource
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import image_bombs
from fuzzing import check_decodes  # the one definition of the property
from alexnet_onnx.runtime import Predictor
from alexnet_onnx.runtime.cli import main
from conftest import MODES, ROOT, SAVE_AS


def predict(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_every_mode_file_is_classified(exported_model, tmp_path):
    paths = []
    for mode, make in MODES.items():
        if mode in ("YCbCr", "PA"):  # no file format stores these; covered in memory
            continue
        path = tmp_path / f"{mode.replace(';', '_')}{SAVE_AS.get(mode, '.png')}"
        make().save(path)
        paths.append(path)
    for size in [(1, 1), (1, 500), (500, 1), (3, 2)]:
        path = tmp_path / f"thin_{size[0]}x{size[1]}.png"
        Image.new("RGB", size, (200, 30, 30)).save(path)
        paths.append(path)
    result = predict("-m", exported_model, "--format", "json", *paths)
    assert result.exit_code == 0, result.output
    objs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(objs) == len(paths) and all("label" in o for o in objs)


def test_directories_with_hidden_files_and_symlink_loops(exported_model, tmp_path):
    root = tmp_path / "photos"
    (root / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (9, 9)).save(root / "a" / "b" / "x.png")
    Image.new("RGB", (9, 9)).save(root / "a" / "y.jpg")
    (root / ".cache").mkdir()
    Image.new("RGB", (9, 9)).save(root / ".cache" / "hidden.png")
    (root / "a" / ".hidden.png").write_bytes(b"nope")
    os.symlink(root, root / "a" / "b" / "loop")  # a cycle back to the top
    os.symlink(root / "a", root / "again")  # a second way into a/
    result = predict("-m", exported_model, "--format", "json", root)
    assert result.exit_code == 0, result.output
    paths = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert paths == [str(root / "a" / "b" / "x.png"), str(root / "a" / "y.jpg")]


def model_with(exported_model, tmp_path, edit):
    import onnx

    model = onnx.load(str(exported_model))
    edit(model)
    path = tmp_path / "edited.onnx"
    onnx.save(model, str(path))
    return path


def set_meta(model, key, value):
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m.metadata_props.__delitem__(slice(None)), "no alexnet-onnx contract"),
        (lambda m: set_meta(m, "contract_version", "99"), "not supported"),
        (lambda m: set_meta(m, "labels", json.dumps(["a", "b"])), "does not match the contract's 2 labels"),
        (lambda m: set_meta(m, "preprocess", json.dumps({**json.loads(
            next(p.value for p in m.metadata_props if p.key == "preprocess")), "crop": 24, "resize": 24})),
         "input shape"),
    ],
    ids=["no-contract", "unknown-version", "label-count", "input-shape"],
)
def test_wrong_models_exit_3_before_reading_images(exported_model, tmp_path, edit, message):
    model = model_with(exported_model, tmp_path, edit)
    result = predict("-m", model, tmp_path / "never-read.jpg")
    assert result.exit_code == 3 and message in result.stderr and "never-read" not in result.stderr


def test_predictor_is_thread_safe(exported_model, tiny_folder):
    p = Predictor(exported_model)
    files = sorted((tiny_folder / "test").glob("*/*.png"))
    expected = p.predict(files, top_k=3)
    results: list = [None] * 4

    def work(i):
        results[i] = p.predict(files, top_k=3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected for r in results)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=2048))
def test_fuzz_random_bytes_never_crash(tmp_path, data):
    check_decodes(tmp_path / "fuzz.bin", data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]),
    width=st.integers(1, 70),
    height=st.integers(1, 70),
    cut=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)
def test_fuzz_truncated_real_images(tmp_path, fmt, width, height, cut, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    data = buffer.getvalue()
    check_decodes(tmp_path / f"img.{fmt.lower()}", data[: max(1, int(len(data) * cut))])


def test_names_that_are_not_utf8_and_too_long_paths(exported_model, tmp_path):
    odd = tmp_path / os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes: not valid UTF-8
    Image.new("RGB", (12, 12), (9, 9, 9)).save(odd)
    too_long = tmp_path / ("x" * 300 + ".png")
    for fmt in ("json", "csv", "text"):
        result = predict("-m", exported_model, "--format", fmt, odd, too_long)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
    lines = predict("-m", exported_model, "--format", "json", odd, too_long).stdout.splitlines()
    first, second = (json.loads(line) for line in lines)
    assert "label" in first and os.fsencode(first["path"]) == os.fsencode(odd)
    assert "error" in second


def test_corrupt_exif_is_classified_without_warning_noise(exported_model, tmp_path):
    """Pillow warns about corrupt EXIF through `warnings` (two lines naming its source file);
    the command classifies the pixels and keeps stderr clean. A subprocess: pytest would
    otherwise capture the warning itself."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "a camera maker name long enough to live outside the IFD"
    good = tmp_path / "exif.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good, exif=exif.tobytes())
    data = bytearray(good.read_bytes())
    at = data.find(b"Exif") + 6 + 8  # the TIFF header, then the IFD's entry count
    data[at:at + 2] = b"\xff\x00"
    bad = tmp_path / "bad_exif.jpg"
    bad.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "alexnet_onnx.runtime.cli", "-m", str(exported_model), str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith(str(bad)) and proc.stderr == ""


# Address space of the onnx-predict under test (it needs a few hundred MB): each bomb let
# through would need more, so a regression fails the test instead of taking the machine.
MEMORY_CAP = 1 << 30
BOMBS = {  # file name: (writer, what the error row says)
    "scans.jpg": (lambda p: image_bombs.jpeg_scans(p, 2000, side=1024), "more than 100 scans"),
    "strips.tif": (lambda p: image_bombs.tiff_strips(p, 50_000), "claiming 50000 strips (its size needs 1"),
    "tall.tif": (lambda p: image_bombs.tiff_strips(p, 200_000, height=200_000), "at most 131072 are allowed"),
    "tile.tif": (image_bombs.tiff_tile, "with 32768x32768 tiles"),
    "text.png": (lambda p: image_bombs.png_chunk(p, b"tEXt", 100 << 20), "'tEXt' chunk of 100 MiB"),
    "private.png": (lambda p: image_bombs.png_chunk(p, b"prIv", 100 << 20), "'prIv' chunk of 100 MiB"),
    "huge.png": (lambda p: image_bombs.png_chunk(p, b"prIv", 1100 << 20), "the file is 1100 MiB, more than the 128"),
}


def capped(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return preexec


@pytest.mark.parametrize("name", list(BOMBS))
def test_an_image_bomb_is_its_own_error_row_in_bounded_memory(exported_model, tmp_path, name):
    write, message = BOMBS[name]
    before, after = tmp_path / "a.png", tmp_path / "c.png"
    for path in (before, after):
        Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    bomb = write(tmp_path / name)
    proc = subprocess.run([sys.executable, "-m", "alexnet_onnx.runtime.cli", "-m", str(exported_model), "--format",
                           "json", str(before), str(bomb), str(after)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, preexec_fn=capped(MEMORY_CAP))
    assert proc.returncode == 1, proc.stderr
    rows = {row["path"]: row for row in map(json.loads, proc.stdout.splitlines())}
    assert "label" in rows[str(before)] and "label" in rows[str(after)]
    assert message in rows[str(bomb)]["error"] and "Traceback" not in proc.stderr
