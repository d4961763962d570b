"""The web service's settings: limits, access, threads; also passed to worker processes as
``FETALPLANES_*`` environment variables (``uvicorn --factory`` / ``--workers N``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fetalplanes.core.errors import UsageError

__all__ = ["DEFAULT_MAX_PIXELS", "ENV_PREFIX", "ServeSettings"]

ENV_PREFIX = "FETALPLANES_"
DEFAULT_MAX_PIXELS = 40_000_000  # ~6300x6300: far above any ultrasound frame


@dataclass(frozen=True)
class ServeSettings:
    """Service configuration; also passed to worker processes as FETALPLANES_* variables."""

    model_path: Path
    max_upload_mb: float = 20.0
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_batch: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise UsageError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if self.max_batch < 1:
            raise UsageError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_pixels < 1:
            raise UsageError(f"max_pixels must be >= 1, got {self.max_pixels}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def to_env(self) -> dict[str, str]:
        env = {
            "MODEL": str(self.model_path),
            "MAX_UPLOAD_MB": str(self.max_upload_mb),
            "CORS_ORIGINS": ",".join(self.cors_origins),
            "MAX_BATCH": str(self.max_batch),
            "MAX_PIXELS": str(self.max_pixels),
            "THREADS": str(self.threads or ""),
            "API_KEY": self.api_key or "",
        }
        return {ENV_PREFIX + k: v for k, v in env.items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "ServeSettings":
        def get(name: str) -> str:
            return environ.get(ENV_PREFIX + name, "").strip()

        if not get("MODEL"):
            raise UsageError(f"{ENV_PREFIX}MODEL is not set; it must name a .onnx model or .ckpt checkpoint")
        try:
            return cls(
                model_path=Path(get("MODEL")),
                max_upload_mb=float(get("MAX_UPLOAD_MB") or 20),
                api_key=get("API_KEY") or None,
                cors_origins=tuple(o.strip() for o in get("CORS_ORIGINS").split(",") if o.strip()),
                max_batch=int(get("MAX_BATCH") or 16),
                max_pixels=int(get("MAX_PIXELS") or DEFAULT_MAX_PIXELS),
                threads=int(get("THREADS")) if get("THREADS") else None,
            )
        except ValueError as err:
            raise UsageError(f"invalid {ENV_PREFIX}* setting: {err}") from None
