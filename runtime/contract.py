"""The model contract: everything a predictor needs to use a model, stored inside the model.

This module is the one place the contract is defined. Export writes `Contract.to_metadata()` into
the ONNX `metadata_props`; checkpoints carry the same dictionary; the runtime reads it back with
`Contract.from_metadata()`. Values are strings; structured values are JSON text. Stdlib only.

Version 2 adds the score calibration: `temperature` (scores are softmax(logits / T)) and
`acceptance` (JSON {"score", "threshold"}: an image counts as one of the classes when its score
reaches the threshold; null accepts every image). Version 1 models read as T = 1, no threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

CONTRACT_VERSION = "2"
SUPPORTED_VERSIONS = ("1", CONTRACT_VERSION)
VARIANTS = ("fp32", "fp16", "int8")
# Name of the image-loading policy in runtime/image.py; bump it when the policy changes.
IMAGE_POLICY = "exif-alpha-white-16bit-scaled-v1"

REQUIRED_KEYS = ("contract_version", "labels", "preprocess", "arch", "dataset", "variant")
# Keys version 2 adds (and requires).
CALIBRATION_KEYS = ("temperature", "acceptance")
# The in-distribution scores an acceptance rule may use (runtime/calibration.py computes them).
SCORES = ("max_softmax", "energy")
# The score export stores by default: the better of the two in docs/export.md's comparison.
DEFAULT_SCORE = "energy"
# The key of `metrics` under which export records the variant's parity gate ({"passed": bool, "gate": rule, ...}).
GATE_METRIC = "gate"
# Temperatures a contract may hold: beyond these a model's scores are all 0/1 or all uniform.
TEMPERATURE_RANGE = (1e-3, 1e3)
# Bounds a usable contract stays within: sizes an image can have; mean and std on the 0..1
# pixel scale, so that every normalized value is finite in float32.
# Resize and crop sides: AlexNet uses 256/224; 4096 leaves room for any classifier, while a
# (3, 4096, 4096) float image is 192 MiB and a larger side would let a contract alone ask for gigabytes.
MAX_SIDE = 4096
MAX_MEAN = 1e4
STD_RANGE = (1e-4, 1e4)


class ContractError(ValueError):
    """Metadata that is missing, malformed or of an unknown contract version."""


@dataclass(frozen=True)
class Preprocess:
    """Exactly what the training eval transform does: Resize(shorter side) -> CenterCrop ->
    ToTensor (RGB, scale 1/255, NCHW) -> Normalize(mean, std)."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    color: str = "RGB"
    layout: str = "NCHW"
    scale: str = "1/255"
    image_policy: str = IMAGE_POLICY

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIDE:
                raise ContractError(f"preprocess.{name} must be an integer from 1 to {MAX_SIDE}, got {_short(value)}")
        if self.crop > self.resize:
            raise ContractError(f"preprocess.crop ({self.crop}) must not exceed resize ({self.resize})")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(_is_finite_number(v) for v in value):
                raise ContractError(f"preprocess.{name} must be three finite numbers, got {_short(value)}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if not all(abs(m) <= MAX_MEAN for m in self.mean):
            raise ContractError(f"preprocess.mean must lie within +-{MAX_MEAN:g}, got {self.mean!r}")
        low, high = STD_RANGE
        if not all(low <= s <= high for s in self.std):
            raise ContractError(f"preprocess.std must lie in [{low:g}, {high:g}], got {self.std!r}")
        expected = {"interpolation": "bilinear", "color": "RGB", "layout": "NCHW", "scale": "1/255"}
        for name, want in expected.items():
            if getattr(self, name) != want:
                raise ContractError(f"preprocess.{name} {getattr(self, name)!r} is not supported (only {want!r})")
        if self.image_policy != IMAGE_POLICY:
            raise ContractError(
                f"preprocess.image_policy {self.image_policy!r} is not supported (only {IMAGE_POLICY!r})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "color": self.color,
            "layout": self.layout,
            "scale": self.scale,
            "image_policy": self.image_policy,
        }


@dataclass(frozen=True)
class Contract:
    labels: tuple[str, ...]
    preprocess: Preprocess
    arch: str
    dataset: str
    variant: str = "fp32"
    metrics: Mapping[str, Any] = field(default_factory=dict)
    source_checkpoint_sha256: str = ""
    created_with: str = ""
    temperature: float = 1.0
    accept_score: str = DEFAULT_SCORE
    accept_threshold: Optional[float] = None  # None: every image is accepted
    contract_version: str = CONTRACT_VERSION

    def __post_init__(self) -> None:
        labels = tuple(self.labels)
        if not labels or not all(isinstance(x, str) and x for x in labels):
            raise ContractError("labels must be a non-empty list of non-empty strings")
        if len(set(labels)) != len(labels):
            raise ContractError("labels must be unique")
        object.__setattr__(self, "labels", labels)
        if self.variant not in VARIANTS:
            raise ContractError(f"variant {self.variant!r} is unknown (valid: {', '.join(VARIANTS)})")
        if self.contract_version not in SUPPORTED_VERSIONS:
            raise ContractError(
                f"contract_version {self.contract_version!r} is not supported by this runtime "
                f"(supported: {', '.join(SUPPORTED_VERSIONS)}); upgrade alexnet-onnx"
            )
        low, high = TEMPERATURE_RANGE
        if not _is_finite_number(self.temperature) or not low <= self.temperature <= high:
            raise ContractError(f"temperature must be a number from {low:g} to {high:g}, got {_short(self.temperature)}")
        object.__setattr__(self, "temperature", float(self.temperature))
        if self.accept_score not in SCORES:
            raise ContractError(f"acceptance score {_short(self.accept_score)} is unknown (valid: {', '.join(SCORES)})")
        if self.accept_threshold is not None:
            if not _is_finite_number(self.accept_threshold):
                raise ContractError(f"acceptance threshold must be a finite number or null, got {_short(self.accept_threshold)}")
            object.__setattr__(self, "accept_threshold", float(self.accept_threshold))
            if self.accept_score == "max_softmax" and not 0 <= self.accept_threshold <= 1:
                raise ContractError(f"a max_softmax threshold is a probability (0..1), got {self.accept_threshold!r}")
        if self.contract_version == "1" and (self.temperature != 1.0 or self.accept_threshold is not None):
            raise ContractError("contract_version '1' has no temperature or threshold; use version "
                                f"{CONTRACT_VERSION!r}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def with_(self, **changes: Any) -> "Contract":
        return replace(self, **changes)

    def to_metadata(self) -> dict[str, str]:
        meta = {
            "contract_version": self.contract_version,
            "labels": json.dumps(list(self.labels)),
            "preprocess": json.dumps(self.preprocess.to_dict()),
            "arch": self.arch,
            "dataset": self.dataset,
            "variant": self.variant,
            "metrics": json.dumps(dict(self.metrics)),
            "source_checkpoint_sha256": self.source_checkpoint_sha256,
            "created_with": self.created_with,
        }
        if self.contract_version != "1":
            meta["temperature"] = repr(self.temperature)  # repr: the shortest text that reads back exactly
            meta["acceptance"] = json.dumps({"score": self.accept_score, "threshold": self.accept_threshold})
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> "Contract":
        if "contract_version" not in meta:
            raise ContractError("no alexnet-onnx contract in the metadata (key 'contract_version' is missing)")
        version = meta["contract_version"]
        if version not in SUPPORTED_VERSIONS:
            raise ContractError(
                f"contract_version {version!r} is not supported by this runtime "
                f"(supported: {', '.join(SUPPORTED_VERSIONS)}); upgrade alexnet-onnx"
            )
        required = REQUIRED_KEYS + (CALIBRATION_KEYS if version != "1" else ())
        missing = [k for k in required if k not in meta]
        if missing:
            raise ContractError(f"contract metadata is missing key(s): {', '.join(missing)}")
        labels = _json(meta, "labels", list)
        pre = _json(meta, "preprocess", dict)
        try:
            preprocess = Preprocess(
                resize=pre["resize"],
                crop=pre["crop"],
                mean=tuple(pre["mean"]),
                std=tuple(pre["std"]),
                interpolation=pre.get("interpolation", "bilinear"),
                color=pre.get("color", "RGB"),
                layout=pre.get("layout", "NCHW"),
                scale=pre.get("scale", "1/255"),
                image_policy=pre.get("image_policy", IMAGE_POLICY),
            )
        except (KeyError, TypeError) as exc:
            raise ContractError(f"contract 'preprocess' is malformed: {exc}") from None
        metrics = _json(meta, "metrics", dict) if meta.get("metrics") else {}
        calibration: dict[str, Any] = {}
        if version != "1":
            try:
                temperature = float(meta["temperature"])
            except ValueError:
                raise ContractError(f"contract key 'temperature' must be a number, got {_short(meta['temperature'])}") from None
            acceptance = _json(meta, "acceptance", dict)
            if "score" not in acceptance or "threshold" not in acceptance:
                raise ContractError("contract key 'acceptance' must hold 'score' and 'threshold'")
            calibration = {"temperature": temperature, "accept_score": acceptance["score"],
                           "accept_threshold": acceptance["threshold"]}
        return cls(
            labels=tuple(labels),
            preprocess=preprocess,
            arch=meta["arch"],
            dataset=meta["dataset"],
            variant=meta["variant"],
            metrics=metrics,
            source_checkpoint_sha256=meta.get("source_checkpoint_sha256", ""),
            created_with=meta.get("created_with", ""),
            contract_version=version,
            **calibration,
        )


def _is_finite_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json(meta: Mapping[str, str], key: str, kind: type) -> Any:
    try:
        value = json.loads(meta[key])
    except (TypeError, ValueError, RecursionError):  # RecursionError: nested too deep
        raise ContractError(f"contract key {key!r} is not valid JSON") from None
    if not isinstance(value, kind):
        raise ContractError(f"contract key {key!r} must be a JSON {kind.__name__}")
    return value


def package_version() -> str:
    try:
        from importlib.metadata import version

        return f"alexnet-onnx {version('alexnet-onnx')}"
    except Exception:  # not installed (running from a source tree)
        return "alexnet-onnx (source)"
