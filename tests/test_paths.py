"""Walking folders and globs: deep trees, links out of a folder, link loops; each bounded in time
(a fresh onnx-predict under a timeout, so a hang fails the test instead of blocking the suite)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from alexnet_onnx.runtime.cluster_sources import list_sources
from alexnet_onnx.runtime.evaluate import labeled_images
from alexnet_onnx.runtime.inputs import Skipped, expand_glob, iter_inputs, walk_images
from conftest import ROOT

DEPTH = 1100  # past Python's default recursion limit of 1000


def cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet_onnx.runtime.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (90, 40, 200)).save(path)
    return path


def rows(proc: subprocess.CompletedProcess) -> list[str]:
    return [json.loads(line)["path"] for line in proc.stdout.splitlines()]


def deep_tree(root: Path) -> Path:
    """root/top.png and an image DEPTH folders down (made relative to the last, so no path
    ever passes the OS's length limit while it is built)."""
    image(root / "top.png")
    here = os.open(root, os.O_RDONLY)
    try:
        for _ in range(DEPTH):
            os.mkdir("d", dir_fd=here)
            below = os.open("d", os.O_RDONLY, dir_fd=here)
            os.close(here)
            here = below
        with os.fdopen(os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=here), "wb") as f:
            Image.new("RGB", (12, 10), (1, 2, 3)).save(f, format="PNG")
    finally:
        os.close(here)
    return root / Path(*["d"] * DEPTH) / "deep.png"


def remove_deep_tree(root: Path) -> None:
    """Remove what deep_tree made, bottom up without recursion: shutil.rmtree (and so pytest's own
    clean-up of old temporary folders) recurses once per level and fails past the limit."""
    here = os.open(root, os.O_RDONLY)
    depth = 0
    while "d" in os.listdir(here):
        below = os.open("d", os.O_RDONLY, dir_fd=here)
        os.close(here)
        here, depth = below, depth + 1
    os.close(here)
    for level in range(depth, -1, -1):
        folder = root / Path(*["d"] * level) if level else root
        for name in os.listdir(folder):
            if name != "d":
                os.unlink(folder / name)
        if level:
            os.rmdir(folder)


def test_a_folder_nested_past_the_recursion_limit_is_walked(exported_model, tmp_path, request):
    root = tmp_path / "deep"
    deep = deep_tree(root)
    request.addfinalizer(lambda: remove_deep_tree(root))
    assert list(walk_images(root)) == [deep, root / "top.png"]
    assert expand_glob(f"{root}/**/*.png") == sorted([str(deep), str(root / "top.png")])
    proc = cli("-m", exported_model, "--format", "json", root)
    assert proc.returncode == 0, proc.stderr
    assert rows(proc) == [str(deep), str(root / "top.png")]


def outside_link(tmp_path: Path) -> tuple[Path, Path, Path]:
    """photos/a.png, photos/elsewhere -> other/ (holding b.png), photos/root -> /."""
    inside = image(tmp_path / "photos" / "a.png")
    outside = image(tmp_path / "other" / "b.png")
    os.symlink(tmp_path / "other", tmp_path / "photos" / "elsewhere")
    os.symlink("/", tmp_path / "photos" / "root")
    return tmp_path / "photos", inside, outside


def test_links_out_of_a_folder_are_not_followed_unless_asked(exported_model, tmp_path):
    folder, inside, _ = outside_link(tmp_path)
    skipped = Skipped()
    assert list(iter_inputs([folder], skipped)) == [inside] and skipped.links == 2
    proc = cli("-m", exported_model, "--format", "json", folder, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert rows(proc) == [str(inside)]
    assert "2 link(s) to folders were not followed (--follow-links follows them)" in proc.stderr
    assert rows(cli("-m", exported_model, "--format", "json", f"{folder}/**/*.png", timeout=60)) == [str(inside)]


def test_follow_links_follows_them(exported_model, tmp_path):
    inside = image(tmp_path / "photos" / "a.png")
    image(tmp_path / "other" / "b.png")
    os.symlink(tmp_path / "other", tmp_path / "photos" / "elsewhere")
    linked = tmp_path / "photos" / "elsewhere" / "b.png"
    proc = cli("-m", exported_model, "--format", "json", "--follow-links", tmp_path / "photos")
    assert proc.returncode == 0, proc.stderr
    assert rows(proc) == [str(inside), str(linked)]
    assert expand_glob(f"{tmp_path}/photos/**/*.png", follow_links=True) == [str(inside), str(linked)]
    sources, _ = list_sources([str(tmp_path / "photos")], lambda n: None, follow_links=True)  # --ray's listing
    assert [s.path for s in sources] == [str(inside), str(linked)]
    assert [s.path for s in list_sources([str(tmp_path / "photos")], lambda n: None)[0]] == [str(inside)]


def test_eval_follows_links_inside_class_folders_only_when_asked(tmp_path):
    image(tmp_path / "data" / "cat" / "a.png")
    image(tmp_path / "more" / "b.png")
    os.symlink(tmp_path / "more", tmp_path / "data" / "cat" / "more")
    assert len(labeled_images(tmp_path / "data", ("cat", "dog"))) == 1
    assert len(labeled_images(tmp_path / "data", ("cat", "dog"), follow_links=True)) == 2


def looping_tree(root: Path, levels: int = 30) -> list[Path]:
    """`levels` nested folders, each with an image and two links back to itself: a walk or a
    `**` that followed links and did not remember where it had been would double per level."""
    made = []
    here = root
    for level in range(levels):
        made.append(image(here / f"{level}.png"))
        os.symlink(".", here / "self")
        os.symlink("..", here / "up")
        here = here / "n"
    return made


def test_link_loops_and_globs_through_them_end(exported_model, tmp_path):
    root = tmp_path / "loops"
    made = looping_tree(root)
    expected = sorted(map(str, made))
    for follow in (False, True):
        assert sorted(map(str, walk_images(root, follow_links=follow))) == expected
        assert expand_glob(f"{root}/**/*.png", follow_links=follow) == expected
    for flag in ([], ["--follow-links"]):
        proc = cli("-m", exported_model, "--format", "json", *flag, f"{root}/**/*.png", root, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert sorted(rows(proc)) == sorted(expected * 2)  # the glob's, then the folder's
