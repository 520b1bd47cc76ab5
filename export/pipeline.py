"""export-onnx end to end: checkpoint -> fp32 ONNX -> variants -> calibrated scores in each
contract -> parity gates -> atomic writes -> report (JSON, markdown, printed tables, diagram)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Optional

import numpy as np
from torch import nn

from alexnet_onnx.runtime.atomic import atomic_write
from alexnet_onnx.runtime.contract import CONTRACT_VERSION, Contract, package_version
from alexnet_onnx.runtime.errors import DataError, ImageError, ModelError, UsageError
from alexnet_onnx.runtime.evaluate import labeled_images
from alexnet_onnx.runtime.files import sha256_file
from alexnet_onnx.runtime.image import load_image
from alexnet_onnx.runtime.inputs import walk_images
from alexnet_onnx.runtime.preprocess import preprocess
from alexnet_onnx.runtime.session import create_session

from alexnet_onnx.train.config import TrainConfig
from alexnet_onnx.train.data import Splits, load_splits

from .onnx_export import model_from_checkpoint, to_onnx, with_contract, with_gate_record
from .options import ExportOptions
from .parity import VariantReport, VerifySet, compare, onnx_logits, random_inputs, torch_logits
from .report import latency_ms, markdown_table, scores_table, text_table
from .scores import LabeledImages, Scores, fit_scores

Log = Callable[[str], None]
# Validation images the temperature and the threshold are fitted on (a seeded sample beyond).
FIT_MAX_IMAGES = 10_000


class ParityError(ModelError):
    """A variant failed its gate; nothing was written for it."""


@dataclass(frozen=True)
class Gate:
    """The parity gate's verdict: each variant's report, the files written, the targets refused."""

    results: dict[str, VariantReport]
    written: dict[str, Path]
    failed: tuple[str, ...]

    def error(self) -> ParityError:
        class_gate = any("worst class" in self.results[n].gate for n in self.failed)
        return ParityError(
            f"{', '.join(self.failed)} failed the gate ({'; '.join(self.results[n].gate for n in self.failed)}); "
            f"nothing written for {'it' if len(self.failed) == 1 else 'them'}"
            + ("" if "fp32" in self.failed else
               " (raise --max-drop or --max-class-drop to accept)" if class_gate else " (raise --max-drop to accept)")
        )


class CheckpointData:
    """The checkpoint's own data splits, found on first use; None (noted once) when unreachable.
    Never downloaded or created here."""

    def __init__(self, ckpt: dict, log: Log) -> None:
        self.ckpt, self.log = ckpt, log
        self.data_dir = ""
        self._splits: Optional[Splits] = None
        self._looked = False

    @property
    def splits(self) -> Optional[Splits]:
        if not self._looked:
            self._looked = True
            try:
                cfg = TrainConfig.from_dict(self.ckpt["config"])
                self.data_dir = cfg.data_dir
                self._splits = load_splits(cfg.dataset, Path(cfg.data_dir), val_fraction=cfg.val_fraction,
                                           limit_train=None, seed=cfg.seed, download=False)
            except (DataError, UsageError, OSError) as exc:
                self.log(f"note: the checkpoint's data is not reachable ({exc}); pass --verify-dir/--calib-dir DIR")
        return self._splits


def export_checkpoint(
    checkpoint: Path, output: Path, options: ExportOptions = ExportOptions(), log: Log = print, *, measure_speed: bool = True
) -> dict:
    """Export CHECKPOINT to OUTPUT (and variants), prove parity, return the report dict.
    `measure_speed=False` leaves the latency columns out of the report."""
    targets = choose_targets(output, options.quantize, force=options.force)
    model, contract, ckpt = model_from_checkpoint(checkpoint)
    contract = contract.with_(source_checkpoint_sha256=sha256_file(checkpoint), created_with=package_version(),
                              contract_version=CONTRACT_VERSION)
    log(f"exporting {checkpoint} ({contract.arch}, {contract.num_classes} classes) to ONNX")
    data = CheckpointData(ckpt, log)
    verify = verify_set(contract, data, options.verify_dir, options.verify_size, log)
    variants = build_variants(model, contract, data, targets, options, log)
    scores = fit_scores(variants, contract, fit_images(contract, data, log), check_images(contract, data, verify, options, log),
                        temperature=options.temperature_value(), accept_score=options.accept_score, log=log)
    gate = gate_and_write(model, scores.variants, targets, verify, options.max_drop, log,
                          max_class_drop=options.max_class_drop, class_names=contract.labels)
    report = write_report(checkpoint, output, scores.variants, gate, verify, options, scores=scores,
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
    model: nn.Module, contract: Contract, data: CheckpointData, names: Collection[str], options: ExportOptions, log: Log
) -> dict[str, bytes]:
    """Serialized models, each with the contract for its variant: fp32 always (the reference the
    others derive from), int8 (calibrated on `options.calib_dir` or the checkpoint's training
    split) and fp16 when in `names`."""
    fp32 = to_onnx(model, contract.with_(variant="fp32")).SerializeToString()
    variants = {"fp32": fp32}
    if "int8" in names:
        from .quantize import quantize_int8

        calib, _, calib_source = image_arrays(contract, data, options.calib_dir, options.calib_size, log, split="train", seed=1)
        log(f"calibrating int8 ({options.calib_method}) on {calib_source}")
        variants["int8"] = with_contract(quantize_int8(fp32, calib, options.calib_method), contract.with_(variant="int8"))
    if "fp16" in names:
        from .quantize import convert_fp16

        variants["fp16"] = with_contract(convert_fp16(fp32), contract.with_(variant="fp16"))
    return variants


def gate_and_write(
    model: nn.Module, variants: dict[str, bytes], targets: dict[str, Path], verify: VerifySet, max_drop: float, log: Log,
    *, max_class_drop: Optional[float] = None, class_names: tuple[str, ...] = (),
) -> Gate:
    """Every variant against PyTorch on `verify`; each target that passes is written atomically,
    none when fp32 fails (the others derive from it). A refused target's path is left untouched."""
    reference = {"random": torch_logits(model, verify.random), "images": torch_logits(model, verify.images)}
    results: dict[str, VariantReport] = {}
    for name, data in variants.items():
        results[name] = check_variant(name, data, reference, verify, max_drop, max_class_drop=max_class_drop,
                                      class_names=class_names)
        log(results[name].line())
    failed = [n for n in targets if not results[n].passed]
    if not results["fp32"].passed:
        failed = ["fp32", *[n for n in targets if n != "fp32"]]
    written: dict[str, Path] = {}
    for name, path in targets.items():
        if name not in failed:
            stamped = with_gate_record(variants[name], results[name].gate_record())
            atomic_write(path, lambda f, d=stamped: f.write(d))
            written[name] = path
            log(f"wrote {path} ({len(variants[name]) / 1e6:.1f} MB, {name})")
    return Gate(results, written, tuple(failed))


def write_report(
    checkpoint: Path, output: Path, variants: dict[str, bytes], gate: Gate, verify: VerifySet, options: ExportOptions,
    *, scores: Scores, crop: int, measure_speed: bool, log: Log,
) -> dict:
    """One row per variant (parity, per-class effects, scores, size, file, latency on this
    machine): printed as tables, written to NAME.report.md beside `output` with the reliability
    diagrams in NAME.reliability.png, and, with `options.report_path`, as JSON."""
    rows: dict[str, dict] = {}
    for name, data in variants.items():
        written = gate.written.get(name)
        rows[name] = {**gate.results[name].to_dict(), "size_mb": len(data) / 1e6,
                      "written_to": None if written is None else str(written), "scores": scores.checks[name].to_dict()}
        if measure_speed:
            rows[name].update(latency_b1_ms=latency_ms(data, crop, 1), latency_b32_ms=latency_ms(data, crop, 32))
    stem = output.name.removesuffix(".onnx")
    diagram = output.with_name(f"{stem}.reliability.png")
    try:
        from .reliability import reliability_png

        drawn = reliability_png(scores.checks, diagram, scores.check_source)
    except ImportError:  # matplotlib comes with the [train] extra
        log("note: no reliability diagram (matplotlib is not installed: pip install 'alexnet-onnx[train]')")
        drawn = False
    report = {"checkpoint": str(checkpoint), "verify_images": verify.source, "max_drop_pp": options.max_drop,
              "max_class_drop_pp": options.max_class_drop, "scores_fit_images": scores.fit_source,
              "scores_check_images": scores.check_source, "reliability_png": str(diagram) if drawn else None, **rows}
    log(text_table(rows))
    log(f"scores (softmax(logits / T)), checked on {scores.check_source}:")
    log(scores_table(rows))
    if options.report_path is not None:
        atomic_write(options.report_path, lambda f: f.write(json.dumps(report, indent=2).encode()))
    markdown = markdown_table(rows, verify.source, scores_source=scores.check_source, fit_source=scores.fit_source,
                              diagram=diagram.name if drawn else "")
    atomic_write(output.with_name(f"{stem}.report.md"), lambda f: f.write(markdown.encode()))
    return report


def check_variant(variant: str, data: bytes, reference: dict, verify: VerifySet, max_drop: float, *,
                  max_class_drop: Optional[float] = None, class_names: tuple[str, ...] = ()) -> VariantReport:
    session = create_session(data)
    candidate = {"random": onnx_logits(session, verify.random), "images": onnx_logits(session, verify.images)}
    return compare(variant, reference, candidate, verify, max_drop, max_class_drop_pp=max_class_drop,
                   class_names=class_names)


def verify_set(contract: Contract, data: CheckpointData, verify_dir: Optional[Path], size: int, log: Log) -> VerifySet:
    """Random inputs plus up to `size` real images: --verify-dir, else the checkpoint's val split,
    else its test split."""
    images, labels, source = image_arrays(contract, data, verify_dir, size, log, split="verify", seed=0)
    return VerifySet(random_inputs(contract.preprocess.crop), images, labels, source)


def fit_images(contract: Contract, data: CheckpointData, log: Log) -> LabeledImages:
    """What the temperature and the threshold are fitted on: the checkpoint's validation split,
    never its test split (none when it has no validation split)."""
    return LabeledImages(*image_arrays(contract, data, None, FIT_MAX_IMAGES, log, split="val", seed=0))


def check_images(contract: Contract, data: CheckpointData, verify: VerifySet, options: ExportOptions,
                 log: Log) -> LabeledImages:
    """Where the scores are checked: the --verify-dir images; else the checkpoint's test split (at
    most --verify-size images); else the verify images, which are then the validation split the
    scores were fitted on (said so in the source)."""
    if options.verify_dir is None and options.verify_size:
        images, labels, source = image_arrays(contract, data, None, options.verify_size, log, split="test", seed=0)
        if labels is not None:
            return LabeledImages(images, labels, source)
        return LabeledImages(verify.images, verify.labels, f"{verify.source} (the images the scores were fitted on)")
    return LabeledImages(verify.images, verify.labels, verify.source)


def image_arrays(
    contract: Contract, data: CheckpointData, directory: Optional[Path], size: int, log: Log, *, split: str, seed: int
) -> tuple[np.ndarray, Optional[np.ndarray], str]:
    """Up to `size` preprocessed images (seeded sample) from `directory` — labeled when its
    top-level folders are the model's labels — or else from the checkpoint's own data `split`:
    "train", "val", "test", or "verify" (val, else test)."""
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
        splits = data.splits
        # Verification never uses images the model was trained on: val, else test, else none.
        chosen = None if splits is None or splits.classes != list(contract.labels) else {
            "train": splits.train, "val": splits.val, "test": splits.test, "verify": splits.val or splits.test}[split]
        if chosen is None:
            if split == "train":
                raise DataError("int8 calibration needs images: pass --calib-dir DIR")
            empty = np.zeros((0, 3, spec.crop, spec.crop), np.float32)
            if split != "verify":
                return empty, None, f"none (the checkpoint's data has no reachable {split} split)"
            if splits is not None:
                log("note: the checkpoint was trained on all of its training images (no val or test split); "
                    "verifying on random inputs only (pass --verify-dir DIR for real images)")
            return empty, None, "none (random inputs only)"
        for i in chosen.indices:
            loaders.append(lambda i=i, s=chosen.source: s.image(i))
            labels.append(chosen.source.labels[i])
        name = "train" if chosen is splits.train else splits.val_name if chosen is splits.val else "test"
        source = f"{data.data_dir} ({name})"
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
