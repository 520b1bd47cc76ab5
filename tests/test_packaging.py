"""The built wheel installs one import namespace, `alexnet_onnx`, and its console scripts work from it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import ROOT

# What pip itself puts into a new venv's site-packages, next to what the wheel adds.
VENV_OWN = {"pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth", "__pycache__"}


def source_tree(dest: Path) -> Path:
    """The files git would ship (tracked, plus new files not ignored), copied to DEST."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_wheel_installs_only_the_alexnet_onnx_namespace(tmp_path, exported_model, tiny_folder):
    src = source_tree(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(src)], check=True, capture_output=True)
    (wheel,) = dist.glob("alexnet_onnx-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"alexnet_onnx"}, tops

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    installed = {p.name for p in site.iterdir()} - VENV_OWN
    assert {n for n in installed if not n.endswith(".dist-info")} == {"alexnet_onnx"}, installed
    assert not installed & {"runtime", "train", "export", "tests"}

    # The dependencies (numpy, onnxruntime, Pillow, click) come from this test's environment, appended
    # after the fresh site-packages: a plain path entry, so that environment's editable-install hook
    # (a .pth file there) is not run and cannot supply alexnet_onnx.
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import importlib.util, alexnet_onnx, alexnet_onnx.runtime.cli, alexnet_onnx.export, alexnet_onnx.train\n"
             "from alexnet_onnx import Predictor\n"
             "print(alexnet_onnx.__file__)\n"
             "print(sorted(n for n in ('runtime', 'train', 'export') if importlib.util.find_spec(n)))")
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    where, generic = proc.stdout.splitlines()
    assert Path(where).is_relative_to(site) and generic == "[]", proc.stdout

    image = next((tiny_folder / "test" / "cat").iterdir())
    proc = subprocess.run([str(venv / "bin" / "onnx-predict"), "-m", str(exported_model), "--format", "json",
                           str(image)], capture_output=True, text=True, cwd=elsewhere)
    assert proc.returncode == 0 and '"label"' in proc.stdout, proc.stderr
    proc = subprocess.run([str(python), "-m", "alexnet_onnx.train", "--help"], capture_output=True, text=True,
                          cwd=elsewhere)
    assert proc.returncode == 0 and "Usage: python -m alexnet_onnx.train" in proc.stdout, proc.stderr
