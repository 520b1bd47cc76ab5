"""The settings an `onnx-predict --ray` run's rows depend on, recorded with OUT so that a rerun
continues OUT only with the same ones (runtime.cluster_store)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError, first_line
from .files import sha256_file


@dataclass(frozen=True)
class RunSettings:
    """What decides a row's content. `model` (the file's name) is for messages only."""

    model_sha256: str
    top_k: int
    decode: str
    model: str = field(default="", compare=False)

    @classmethod
    def of(cls, model: Path, *, top_k: int, decode: str) -> "RunSettings":
        return cls(sha256_file(model), top_k, decode, Path(model).name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def parse(cls, data: Any, where: Path) -> "RunSettings":
        """Settings from their JSON text (bytes or str) or its parsed object; DataError if unusable."""
        try:
            if isinstance(data, (str, bytes)):
                data = json.loads(data)
            return cls(str(data["model_sha256"]), int(data["top_k"]), str(data["decode"]), str(data.get("model", "")))
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{where}: unreadable run settings ({first_line(exc)})") from None

    def differences(self, other: "RunSettings") -> str:
        """What `other` (recorded) has that this run does not, e.g. "top-k 3 (this run: 1)"."""
        out = []
        if self.model_sha256 != other.model_sha256:
            out.append(f"model {other.model or '?'} sha256 {other.model_sha256[:12]} (this run: {self.model} "
                       f"{self.model_sha256[:12]})")
        if self.top_k != other.top_k:
            out.append(f"top-k {other.top_k} (this run: {self.top_k})")
        if self.decode != other.decode:
            out.append(f"decode {other.decode} (this run: {self.decode})")
        return ", ".join(out)
