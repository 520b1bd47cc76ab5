"""ImageFolder class discovery: one set of rules for training, --eval and export."""

import pytest
from PIL import Image

from conftest import make_image_folder
from alexnet_onnx.runtime.errors import DataError
from alexnet_onnx.runtime.evaluate import labeled_images
from alexnet_onnx.runtime.folders import class_folders
from alexnet_onnx.train.sources import image_folder


@pytest.fixture()
def tree(tmp_path):
    """Classes B, a, linked (a symlink to a folder outside), plus things that are not classes:
    a hidden folder, a broken symlink and a loose image."""
    root = tmp_path / "root"
    make_image_folder(root, ["a", "B", ".hidden"], per_class=2)
    make_image_folder(tmp_path / "elsewhere", ["c"], per_class=3)
    (root / "linked").symlink_to(tmp_path / "elsewhere" / "c")
    (root / "broken").symlink_to(tmp_path / "nowhere")
    Image.new("RGB", (4, 4)).save(root / "loose.png")
    return root


def test_classes_are_visible_folders_and_links_to_folders_sorted_by_code_point(tree):
    assert class_folders(tree) == ["B", "a", "linked"]


def test_every_caller_sees_the_same_classes_in_the_same_order(tree):
    names = class_folders(tree)
    source = image_folder(tree)
    assert source.classes == names and len(source) == 7
    items = labeled_images(tree, tuple(names))
    assert [p for p, _ in items] == source.paths and [i for _, i in items] == source.labels


@pytest.mark.parametrize("content", [None, "notes.txt", ".hidden.png"])
def test_a_class_folder_without_images_is_refused_by_name(tree, content):
    (tree / "empty").mkdir()
    if content:
        (tree / "empty" / content).write_text("x")
    with pytest.raises(DataError, match=r"empty: class folder has no images") as info:
        class_folders(tree)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("target", ["root", "sibling"])
def test_two_names_for_one_folder_are_refused(tree, target):
    (tree / "z").symlink_to(tree if target == "root" else tree / "a")
    with pytest.raises(DataError, match="same folder as " + ("the root" if target == "root" else str(tree / "a"))):
        class_folders(tree)


def test_a_folder_without_class_folders_has_none_and_a_file_is_no_folder(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    assert class_folders(tmp_path) == []
    with pytest.raises(DataError, match="not a directory"):
        class_folders(tmp_path / "x.png")
