"""Every option of an export, its default and its valid values, in one torch-free place.
export-onnx builds its click options from these; ExportOptions checks a set of them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from alexnet_onnx.runtime.contract import DEFAULT_SCORE, SCORES, TEMPERATURE_RANGE
from alexnet_onnx.runtime.errors import UsageError

# none: fp32 at -o; int8 or fp16: that variant at -o; all: fp32 at -o and the others beside it.
QUANTIZE_TARGETS = ("none", "int8", "fp16", "all")
# Calibration method name -> the name of onnxruntime's CalibrationMethod member (export/quantize.py).
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# --temperature: fitted on the checkpoint's validation split, 1 (softmax as trained), or a number.
TEMPERATURE_MODES = ("fit", "none")


@dataclass(frozen=True)
class ExportOptions:
    quantize: str = "none"
    calib_dir: Optional[Path] = None  # None: the checkpoint's training split
    calib_size: int = 256  # at most this many calibration images for int8
    calib_method: str = "minmax"
    verify_dir: Optional[Path] = None  # None: the checkpoint's val split, else test, else random inputs only
    verify_size: int = 256  # at most this many real images in the parity check
    max_drop: float = 1.0  # largest top-1 drop (percentage points) a reduced-precision variant may show
    max_class_drop: Optional[float] = None  # largest drop of any one class's top-1 (pp); None: not gated
    temperature: str = "fit"  # fit | none | a number: the T of the stored softmax(logits / T) scores
    accept_score: str = DEFAULT_SCORE  # the score whose threshold says "none of these"
    report_path: Optional[Path] = None  # the parity report as JSON
    force: bool = False  # replace existing output files

    def __post_init__(self) -> None:
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not valid (choose from {', '.join(valid)})")
        if self.temperature not in TEMPERATURE_MODES:
            self.temperature_value()  # a number in range, or a UsageError naming the valid values
        for name, least in MINIMUMS.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL:
                continue
            kind = int if isinstance(least, int) else (int, float)
            # `not >=` also refuses NaN, which no comparison accepts.
            if isinstance(value, bool) or not isinstance(value, kind) or not value >= least:
                noun = "an integer" if kind is int else "a number"
                raise UsageError(f"--{name.replace('_', '-')} must be {noun} >= {least:g}, got {value!r}")

    def temperature_value(self) -> Optional[float]:
        """The fixed temperature of `--temperature VALUE`; None for fit, 1.0 for none."""
        if self.temperature == "fit":
            return None
        if self.temperature == "none":
            return 1.0
        low, high = TEMPERATURE_RANGE
        try:
            value = float(self.temperature)
        except (TypeError, ValueError):
            value = None
        # `not <=` also refuses NaN.
        if value is None or not low <= value <= high:
            raise UsageError(f"--temperature {self.temperature!r} is not valid (choose from fit, none, or a number "
                             f"from {low:g} to {high:g})")
        return value


# Field defaults, valid values and lower bounds, for the CLI's options and the checks above.
DEFAULTS = {f.name: f.default for f in fields(ExportOptions)}
CHOICES: dict[str, tuple[str, ...]] = {"quantize": QUANTIZE_TARGETS, "calib_method": tuple(CALIBRATION_METHODS),
                                       "accept_score": SCORES}
# An int bound also asks for an integer.
MINIMUMS: dict[str, float] = {"calib_size": 1, "verify_size": 0, "max_drop": 0.0, "max_class_drop": 0.0}
OPTIONAL = ("max_class_drop",)  # None switches the check off
