"""export-onnx end to end: checkpoint -> fp32 ONNX -> variants -> parity gates -> atomic writes
-> report (JSON, markdown, printed table)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from alexnet_onnx.runtime.contract import Contract, package_version
from alexnet_onnx.runtime.errors import DataError, ImageError, ModelError, UsageError
from alexnet_onnx.runtime.image import load_image
from alexnet_onnx.runtime.inputs import walk_images
from alexnet_onnx.runtime.preprocess import preprocess
from alexnet_onnx.runtime.session import create_session

from alexnet_onnx.runtime.atomic import atomic_write
from alexnet_onnx.train.checkpoint import sha256_file
from alexnet_onnx.train.config import TrainConfig
from alexnet_onnx.train.data import load_splits

from .onnx_export import model_from_checkpoint, set_contract, to_onnx
from .options import ExportOptions
from .parity import VariantReport, VerifySet, compare, onnx_logits, random_inputs, torch_logits
from .report import latency_ms, markdown_table, text_table

Log = Callable[[str], None]


class ParityError(ModelError):
    """A variant failed its gate; nothing was written for it."""


def output_paths(output: Path, quantize: str) -> dict[str, Path]:
    """Where each variant goes: -o for a single variant; with `all`, fp32 at -o and the others
    beside it as NAME.int8.onnx and NAME.fp16.onnx."""
    if quantize == "all":
        stem = output.name.removesuffix(".onnx")
        return {"fp32": output, "int8": output.with_name(f"{stem}.int8.onnx"), "fp16": output.with_name(f"{stem}.fp16.onnx")}
    return {"fp32" if quantize == "none" else quantize: output}


def export_checkpoint(
    checkpoint: Path, output: Path, options: ExportOptions = ExportOptions(), log: Log = print, *, measure_speed: bool = True
) -> dict:
    """Export CHECKPOINT to OUTPUT (and variants), prove parity, return the report dict."""
    quantize, calib_dir, calib_size, calib_method = options.quantize, options.calib_dir, options.calib_size, options.calib_method
    verify_dir, verify_size, max_drop = options.verify_dir, options.verify_size, options.max_drop
    report_path, force = options.report_path, options.force
    targets = output_paths(output, quantize)
    for path in targets.values():
        if path.is_dir():
            raise UsageError(f"{path}: is a directory; give a file name such as model.onnx")
        if path.exists() and not force:
            raise UsageError(f"{path}: already exists; pass --force to replace it")
    model, contract, ckpt = model_from_checkpoint(checkpoint)
    contract = contract.with_(source_checkpoint_sha256=sha256_file(checkpoint), created_with=package_version())
    log(f"exporting {checkpoint} ({contract.arch}, {contract.num_classes} classes) to ONNX")
    fp32 = to_onnx(model, contract.with_(variant="fp32")).SerializeToString()
    verify = verify_set(contract, ckpt, verify_dir, verify_size, log)
    reference = {"random": torch_logits(model, verify.random), "images": torch_logits(model, verify.images)}

    variants = {"fp32": fp32}
    if "int8" in targets:
        from .quantize import quantize_int8

        calib, _, calib_source = image_arrays(contract, ckpt, calib_dir, calib_size, log, split="train", seed=1)
        log(f"calibrating int8 ({calib_method}) on {calib_source}")
        variants["int8"] = with_contract(quantize_int8(fp32, calib, calib_method), contract.with_(variant="int8"))
    if "fp16" in targets:
        from .quantize import convert_fp16

        variants["fp16"] = with_contract(convert_fp16(fp32), contract.with_(variant="fp16"))

    rows: dict[str, dict] = {}
    results: dict[str, VariantReport] = {}
    for name, data in variants.items():
        results[name] = check_variant(name, data, reference, verify, max_drop)
        rows[name] = {**results[name].to_dict(), "size_mb": len(data) / 1e6, "written_to": None}
        if measure_speed:
            rows[name].update(latency_b1_ms=latency_ms(data, contract.preprocess.crop, 1),
                              latency_b32_ms=latency_ms(data, contract.preprocess.crop, 32))
        log(results[name].line())
    failed = [n for n in targets if not results[n].passed]
    if not results["fp32"].passed:  # the variants derive from fp32: none of them can be trusted
        failed = ["fp32", *[n for n in targets if n != "fp32"]]
    for name, path in targets.items():
        if name not in failed:
            atomic_write(path, lambda f, d=variants[name]: f.write(d))
            rows[name]["written_to"] = str(path)
            log(f"wrote {path} ({len(variants[name]) / 1e6:.1f} MB, {name})")
    report = {"checkpoint": str(checkpoint), "verify_images": verify.source, "max_drop_pp": max_drop, **rows}
    log(text_table(rows))
    if report_path is not None:
        atomic_write(report_path, lambda f: f.write(json.dumps(report, indent=2).encode()))
    markdown = markdown_table(rows, verify.source)
    atomic_write(output.with_name(output.name.removesuffix(".onnx") + ".report.md"), lambda f: f.write(markdown.encode()))
    if failed:
        raise ParityError(
            f"{', '.join(failed)} failed the gate ({'; '.join(results[n].gate for n in failed)}); "
            f"nothing written for {'it' if len(failed) == 1 else 'them'}"
            + (" (raise --max-drop to accept)" if "fp32" not in failed else "")
        )
    return report


def with_contract(data: bytes, contract: Contract) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    set_contract(proto, contract)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def check_variant(variant: str, data: bytes, reference: dict, verify: VerifySet, max_drop: float) -> VariantReport:
    session = create_session(data)
    candidate = {"random": onnx_logits(session, verify.random), "images": onnx_logits(session, verify.images)}
    return compare(variant, reference, candidate, verify, max_drop)


def verify_set(contract: Contract, ckpt: dict, verify_dir: Optional[Path], size: int, log: Log) -> VerifySet:
    """Random inputs plus up to `size` real images: --verify-dir, else the checkpoint's val split."""
    images, labels, source = image_arrays(contract, ckpt, verify_dir, size, log, split="val", seed=0)
    return VerifySet(random_inputs(contract.preprocess.crop), images, labels, source)


def image_arrays(
    contract: Contract, ckpt: dict, directory: Optional[Path], size: int, log: Log, *, split: str, seed: int
) -> tuple[np.ndarray, Optional[np.ndarray], str]:
    """Up to `size` preprocessed images (seeded sample) from `directory` — labeled when its
    top-level folders are the model's labels — or else from the checkpoint's own data split."""
    spec = contract.preprocess
    loaders: list[Callable] = []
    labels: list[Optional[int]] = []
    if directory is not None:
        if not directory.is_dir():
            raise DataError(f"{directory}: not a directory of images")
        for path in walk_images(directory):
            top = path.relative_to(directory).parts[0]
            loaders.append(lambda p=path: load_image(p))
            labels.append(contract.labels.index(top) if top in contract.labels else None)
        source = str(directory)
    else:
        try:  # the checkpoint's own data, where it was trained: never downloaded or created here
            cfg = TrainConfig.from_dict(ckpt["config"])
            splits = load_splits(cfg.dataset, Path(cfg.data_dir), val_fraction=cfg.val_fraction,
                                 limit_train=None, seed=cfg.seed, download=False)
        except (DataError, UsageError, OSError) as exc:
            log(f"note: the checkpoint's data is not reachable ({exc}); pass --verify-dir/--calib-dir DIR")
            splits = None
        # Verification never uses images the model was trained on: val, else test, else none.
        chosen = None if splits is None or splits.classes != list(contract.labels) else (
            splits.train if split == "train" else splits.val or splits.test)
        if chosen is None:
            if split == "train":
                raise DataError("int8 calibration needs images: pass --calib-dir DIR")
            if splits is not None:
                log("note: the checkpoint was trained on all of its training images (no val or test split); "
                    "verifying on random inputs only (pass --verify-dir DIR for real images)")
            return np.zeros((0, 3, spec.crop, spec.crop), np.float32), None, "none (random inputs only)"
        for i in chosen.indices:
            loaders.append(lambda i=i, s=chosen.source: s.image(i))
            labels.append(chosen.source.labels[i])
        name = "train" if chosen is splits.train else splits.val_name if chosen is splits.val else "test"
        source = f"{cfg.data_dir} ({name})"
    picked = sorted(random.Random(seed).sample(range(len(loaders)), min(size, len(loaders))))
    arrays, kept, bad = [], [], 0
    for i in picked:
        try:
            arrays.append(preprocess(loaders[i](), spec))
            kept.append(labels[i])
        except ImageError:
            bad += 1
    if bad:
        log(f"note: skipped {bad} unreadable image(s) in {source}")
    if not arrays and split == "train":
        raise DataError(f"{source}: no readable images for int8 calibration; pass --calib-dir DIR")
    images = np.stack(arrays) if arrays else np.zeros((0, 3, spec.crop, spec.crop), np.float32)
    labeled = np.array(kept, dtype=np.int64) if kept and all(k is not None for k in kept) else None
    return images, labeled, f"{source}: {len(arrays)} images"
