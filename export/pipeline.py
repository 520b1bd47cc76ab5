"""export-onnx end to end: checkpoint -> ONNX -> parity gate -> atomic write -> report."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from runtime.contract import Contract, package_version
from runtime.errors import DataError, ImageError, ModelError, UsageError
from runtime.image import load_image
from runtime.inputs import walk_images
from runtime.preprocess import preprocess

from train.checkpoint import atomic_write, sha256_file
from train.config import TrainConfig
from train.data import load_splits

from .onnx_export import model_from_checkpoint, to_onnx
from .parity import VariantReport, VerifySet, compare, onnx_logits, random_inputs, torch_logits

Log = Callable[[str], None]


class ParityError(ModelError):
    """A variant failed its gate; nothing was written at the output path."""


def export_checkpoint(
    checkpoint: Path,
    output: Path,
    *,
    verify_dir: Optional[Path] = None,
    verify_size: int = 256,
    max_drop: float = 1.0,
    report_path: Optional[Path] = None,
    force: bool = False,
    log: Log = print,
) -> dict:
    """Export CHECKPOINT to OUTPUT (fp32) and prove parity; returns the report dict."""
    if output.exists() and not force:
        raise UsageError(f"{output}: already exists; pass --force to replace it")
    if output.is_dir():
        raise UsageError(f"{output}: is a directory; give a file name such as model.onnx")
    model, contract, ckpt = model_from_checkpoint(checkpoint)
    contract = contract.with_(
        variant="fp32", source_checkpoint_sha256=sha256_file(checkpoint), created_with=package_version()
    )
    log(f"exporting {checkpoint} ({contract.arch}, {contract.num_classes} classes) to ONNX")
    proto = to_onnx(model, contract)
    data = proto.SerializeToString()
    verify = verify_set(contract, ckpt, verify_dir, verify_size, log)
    reference = {"random": torch_logits(model, verify.random), "images": torch_logits(model, verify.images)}
    result = check_variant("fp32", data, reference, verify, max_drop)
    report = {
        "checkpoint": str(checkpoint),
        "output": str(output),
        "verify_images": verify.source,
        "fp32": result.to_dict(),
    }
    log(result.line())
    if report_path is not None:
        atomic_write(report_path, lambda f: f.write(json.dumps(report, indent=2).encode()))
    if not result.passed:
        raise ParityError(f"fp32 parity gate failed ({result.gate}); nothing written to {output}")
    atomic_write(output, lambda f: f.write(data))
    log(f"wrote {output} ({len(data) / 1e6:.1f} MB)")
    return report


def check_variant(variant: str, data: bytes, reference: dict, verify: VerifySet, max_drop: float) -> VariantReport:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    candidate = {"random": onnx_logits(session, verify.random), "images": onnx_logits(session, verify.images)}
    return compare(variant, reference, candidate, verify, max_drop)


def verify_set(contract: Contract, ckpt: dict, verify_dir: Optional[Path], size: int, log: Log) -> VerifySet:
    """Random inputs plus up to `size` real images: --verify-dir, else the checkpoint's val split."""
    spec = contract.preprocess
    rand = random_inputs(spec.crop)
    loaders: list[Callable] = []
    labels: list[Optional[int]] = []
    if verify_dir is not None:
        if not verify_dir.is_dir():
            raise DataError(f"{verify_dir}: --verify-dir is not a directory")
        for path in walk_images(verify_dir):
            top = path.relative_to(verify_dir).parts[0]
            loaders.append(lambda p=path: load_image(p))
            labels.append(contract.labels.index(top) if top in contract.labels else None)
        source = str(verify_dir)
    else:
        try:
            cfg = TrainConfig.from_dict(ckpt["config"])
            splits = load_splits(cfg.dataset, Path(cfg.data_dir), val_fraction=cfg.val_fraction or 0.1,
                                 limit_train=None, seed=cfg.seed)
        except (DataError, UsageError, OSError) as exc:
            log(f"note: no real images for the parity check ({exc}); pass --verify-dir DIR")
            return VerifySet(rand, np.zeros((0, 3, spec.crop, spec.crop), np.float32), None, "none (random inputs only)")
        split = splits.val or splits.train
        if splits.classes != list(contract.labels):
            raise ModelError("the checkpoint's data has other classes than the checkpoint; pass --verify-dir")
        for i in split.indices:
            loaders.append(lambda i=i: split.source.image(i))
            labels.append(split.source.labels[i])
        source = f"{cfg.data_dir} ({splits.val_name})" if splits.val else f"{cfg.data_dir} (train)"
    chosen = sorted(random.Random(0).sample(range(len(loaders)), min(size, len(loaders))))
    arrays, kept, bad = [], [], 0
    for i in chosen:
        try:
            arrays.append(preprocess(loaders[i](), spec))
            kept.append(labels[i])
        except ImageError:
            bad += 1
    if bad:
        log(f"note: skipped {bad} unreadable verification image(s)")
    images = np.stack(arrays) if arrays else np.zeros((0, 3, spec.crop, spec.crop), np.float32)
    labeled = np.array(kept, dtype=np.int64) if kept and all(k is not None for k in kept) else None
    return VerifySet(rand, images, labeled, f"{source}: {len(arrays)} images")
