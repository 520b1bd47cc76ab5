"""export-onnx end to end: checkpoint -> fp32 ONNX -> variants -> parity gates -> atomic writes
-> report (JSON, markdown, printed table)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Optional

import numpy as np
from torch import nn

from alexnet_onnx.runtime.atomic import atomic_write
from alexnet_onnx.runtime.contract import Contract, package_version
from alexnet_onnx.runtime.errors import DataError, ImageError, ModelError, UsageError
from alexnet_onnx.runtime.evaluate import labeled_images
from alexnet_onnx.runtime.image import load_image
from alexnet_onnx.runtime.inputs import walk_images
from alexnet_onnx.runtime.preprocess import preprocess
from alexnet_onnx.runtime.session import create_session

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


@dataclass(frozen=True)
class Gate:
    """The parity gate's verdict: each variant's report, the files written, the targets refused."""

    results: dict[str, VariantReport]
    written: dict[str, Path]
    failed: tuple[str, ...]

    def error(self) -> ParityError:
        return ParityError(
            f"{', '.join(self.failed)} failed the gate ({'; '.join(self.results[n].gate for n in self.failed)}); "
            f"nothing written for {'it' if len(self.failed) == 1 else 'them'}"
            + (" (raise --max-drop to accept)" if "fp32" not in self.failed else "")
        )


def export_checkpoint(
    checkpoint: Path, output: Path, options: ExportOptions = ExportOptions(), log: Log = print, *, measure_speed: bool = True
) -> dict:
    """Export CHECKPOINT to OUTPUT (and variants), prove parity, return the report dict.
    `measure_speed=False` leaves the latency columns out of the report."""
    targets = choose_targets(output, options.quantize, force=options.force)
    model, contract, ckpt = model_from_checkpoint(checkpoint)
    contract = contract.with_(source_checkpoint_sha256=sha256_file(checkpoint), created_with=package_version())
    log(f"exporting {checkpoint} ({contract.arch}, {contract.num_classes} classes) to ONNX")
    verify = verify_set(contract, ckpt, options.verify_dir, options.verify_size, log)
    variants = build_variants(model, contract, ckpt, targets, options, log)
    gate = gate_and_write(model, variants, targets, verify, options.max_drop, log)
    report = write_report(checkpoint, output, variants, gate, verify, options,
                          crop=contract.preprocess.crop, measure_speed=measure_speed, log=log)
    if gate.failed:
        raise gate.error()
    return report


def choose_targets(output: Path, quantize: str, *, force: bool) -> dict[str, Path]:
    """Where each variant goes: -o for a single variant; with `all`, fp32 at -o and the others
    beside it as NAME.int8.onnx and NAME.fp16.onnx. Refuses a directory, and an existing file
    unless `force`."""
    if quantize == "all":
        stem = output.name.removesuffix(".onnx")
        targets = {"fp32": output, "int8": output.with_name(f"{stem}.int8.onnx"), "fp16": output.with_name(f"{stem}.fp16.onnx")}
    else:
        targets = {"fp32" if quantize == "none" else quantize: output}
    for path in targets.values():
        if path.is_dir():
            raise UsageError(f"{path}: is a directory; give a file name such as model.onnx")
        if path.exists() and not force:
            raise UsageError(f"{path}: already exists; pass --force to replace it")
    return targets


def build_variants(
    model: nn.Module, contract: Contract, ckpt: dict, names: Collection[str], options: ExportOptions, log: Log
) -> dict[str, bytes]:
    """Serialized models, each with the contract for its variant: fp32 always (the reference the
    others derive from), int8 (calibrated on `options.calib_dir` or the checkpoint's training
    split) and fp16 when in `names`."""
    fp32 = to_onnx(model, contract.with_(variant="fp32")).SerializeToString()
    variants = {"fp32": fp32}
    if "int8" in names:
        from .quantize import quantize_int8

        calib, _, calib_source = image_arrays(contract, ckpt, options.calib_dir, options.calib_size, log, split="train", seed=1)
        log(f"calibrating int8 ({options.calib_method}) on {calib_source}")
        variants["int8"] = with_contract(quantize_int8(fp32, calib, options.calib_method), contract.with_(variant="int8"))
    if "fp16" in names:
        from .quantize import convert_fp16

        variants["fp16"] = with_contract(convert_fp16(fp32), contract.with_(variant="fp16"))
    return variants


def gate_and_write(
    model: nn.Module, variants: dict[str, bytes], targets: dict[str, Path], verify: VerifySet, max_drop: float, log: Log
) -> Gate:
    """Every variant against PyTorch on `verify`; each target that passes is written atomically,
    none when fp32 fails (the others derive from it). A refused target's path is left untouched."""
    reference = {"random": torch_logits(model, verify.random), "images": torch_logits(model, verify.images)}
    results: dict[str, VariantReport] = {}
    for name, data in variants.items():
        results[name] = check_variant(name, data, reference, verify, max_drop)
        log(results[name].line())
    failed = [n for n in targets if not results[n].passed]
    if not results["fp32"].passed:
        failed = ["fp32", *[n for n in targets if n != "fp32"]]
    written: dict[str, Path] = {}
    for name, path in targets.items():
        if name not in failed:
            atomic_write(path, lambda f, d=variants[name]: f.write(d))
            written[name] = path
            log(f"wrote {path} ({len(variants[name]) / 1e6:.1f} MB, {name})")
    return Gate(results, written, tuple(failed))


def write_report(
    checkpoint: Path, output: Path, variants: dict[str, bytes], gate: Gate, verify: VerifySet, options: ExportOptions,
    *, crop: int, measure_speed: bool, log: Log,
) -> dict:
    """One row per variant (parity, size, file, latency on this machine): printed as a table,
    written to NAME.report.md beside `output` and, with `options.report_path`, as JSON."""
    rows: dict[str, dict] = {}
    for name, data in variants.items():
        written = gate.written.get(name)
        rows[name] = {**gate.results[name].to_dict(), "size_mb": len(data) / 1e6,
                      "written_to": None if written is None else str(written)}
        if measure_speed:
            rows[name].update(latency_b1_ms=latency_ms(data, crop, 1), latency_b32_ms=latency_ms(data, crop, 32))
    report = {"checkpoint": str(checkpoint), "verify_images": verify.source, "max_drop_pp": options.max_drop, **rows}
    log(text_table(rows))
    if options.report_path is not None:
        atomic_write(options.report_path, lambda f: f.write(json.dumps(report, indent=2).encode()))
    markdown = markdown_table(rows, verify.source)
    atomic_write(output.with_name(output.name.removesuffix(".onnx") + ".report.md"), lambda f: f.write(markdown.encode()))
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
        if any((directory / label).is_dir() for label in contract.labels):  # class folders: --eval's rules
            found: list = labeled_images(directory, contract.labels)
        else:  # any other folder of images is used unlabeled
            found = [(path, None) for path in walk_images(directory)]
        for path, label in found:
            loaders.append(lambda p=path: load_image(p))
            labels.append(label)
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
