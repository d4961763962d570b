"""The web service's settings: limits, access, threads; also passed to worker processes as
``FETALPLANES_*`` environment variables (``uvicorn --factory`` / ``--workers N``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fetalplanes.core.errors import UsageError
from fetalplanes.core.limits import LIMITS

__all__ = ["ENV_PREFIX", "SERVICE_MAX_PIXELS", "ServeSettings"]

ENV_PREFIX = "FETALPLANES_"
# The service's own, smaller per-image limit (many requests share one process): the limits table.
SERVICE_MAX_PIXELS = LIMITS.serve_max_pixels


@dataclass(frozen=True)
class ServeSettings:
    """Service configuration; also passed to worker processes as FETALPLANES_* variables."""

    model_path: Path
    max_upload_mb: float = 20.0
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_batch: int = 16
    max_pixels: int = SERVICE_MAX_PIXELS
    threads: int | None = None
    request_pixels: int = LIMITS.serve_request_pixels
    receive_s: float = LIMITS.serve_receive_s
    max_buffered_bytes: int = LIMITS.serve_buffered_bytes

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise UsageError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if self.max_batch < 1:
            raise UsageError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_pixels < 1:
            raise UsageError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.request_pixels < self.max_pixels:  # the largest accepted image must fit one request
            object.__setattr__(self, "request_pixels", self.max_pixels)
        if not self.receive_s > 0 or self.max_buffered_bytes < self.max_upload_bytes:
            raise UsageError(f"receive_s must be > 0 and max_buffered_bytes >= the upload limit ({self.max_upload_bytes}), "
                             f"got {self.receive_s} and {self.max_buffered_bytes}")

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
            "REQUEST_PIXELS": str(self.request_pixels),
            "RECEIVE_S": str(self.receive_s),
            "MAX_BUFFERED_BYTES": str(self.max_buffered_bytes),
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
                max_pixels=int(get("MAX_PIXELS") or SERVICE_MAX_PIXELS),
                threads=int(get("THREADS")) if get("THREADS") else None,
                request_pixels=int(get("REQUEST_PIXELS") or LIMITS.serve_request_pixels),
                receive_s=float(get("RECEIVE_S") or LIMITS.serve_receive_s),
                max_buffered_bytes=int(get("MAX_BUFFERED_BYTES") or LIMITS.serve_buffered_bytes),
            )
        except ValueError as err:
            raise UsageError(f"invalid {ENV_PREFIX}* setting: {err}") from None
