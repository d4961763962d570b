"""`fetalplanes serve`: run the web service and clinician page with uvicorn."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional

import typer

from fetalplanes.cli.common import console

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    model: Path = typer.Option(..., "--model", "--checkpoint", help="Exported model.onnx (torch-free) or a training checkpoint .ckpt (adds heat maps)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on; 0.0.0.0 exposes the service to the network."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (each loads the model)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest request body in MB (a batch's files together)."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most images per /v1/predict/batch request."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Largest image (width*height) accepted; guards against decompression bombs."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="FETALPLANES_API_KEY", show_envvar=True,
        help="Require this key in the X-API-Key header on /v1/* (prefer the environment variable: command lines are visible to other users).",
    ),
    cors_origin: Optional[List[str]] = typer.Option(None, "--cors-origin", help="Allow cross-origin calls from this origin (repeatable); CORS is off by default."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Inference threads per worker."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: critical | error | warning | info | debug"),
) -> None:
    """Serve the model over HTTP: JSON API under /v1, the web page at /, the schema at /openapi.json."""
    import uvicorn

    from fetalplanes.runtime import load_predictor
    from fetalplanes.serve.app import build_app
    from fetalplanes.serve.settings import SERVICE_MAX_PIXELS, ServeSettings

    settings = ServeSettings(
        model_path=model,
        max_upload_mb=max_upload_mb,
        api_key=api_key or None,
        cors_origins=tuple(cors_origin or ()),
        max_batch=max_batch,
        max_pixels=max_pixels or SERVICE_MAX_PIXELS,
        threads=threads,
    )
    if host not in LOOPBACK and not settings.api_key:
        logger.warning("listening on %s without an API key: anyone on the network can use the service", host)
    # The model is loaded (and so validated) before the banner: a bad model file is one clear line
    # and a non-zero exit, never a "serving on ..." banner for a service that never starts.
    predictor = load_predictor(settings.model_path, threads=settings.threads)
    banner = f"fetalplanes: http://{_display_host(host)}:{port}/  (Ctrl+C to stop)"
    if workers == 1:
        app = build_app(settings, predictor, _explainer_factory())
        console.print(banner)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    del predictor  # each worker loads its own; this one only proved the file loads
    console.print(banner)
    # Worker processes import the app by name, so the settings travel as environment variables.
    os.environ.update(settings.to_env())
    uvicorn.run(
        "fetalplanes.cli.serve:app_from_env", factory=True, host=host, port=port, workers=workers, log_level=log_level
    )


def _explainer_factory():  # noqa: ANN202 - a serve.explainers.ExplainerFactory
    """Heat maps for checkpoint models when the explain extra is installed (the CLI wires it in)."""
    try:
        from fetalplanes.explain import service_explainer
    except ImportError:  # a torch-free install serves ONNX models without heat maps
        return None
    return service_explainer


def app_from_env():  # noqa: ANN201 - a FastAPI app
    """uvicorn factory for multi-worker serving: settings from the environment, heat maps wired in."""
    from fetalplanes.serve.app import app_from_env as build_from_env

    return build_from_env(_explainer_factory())


def _display_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
