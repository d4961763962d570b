"""The web service: a FastAPI app that classifies uploaded ultrasound images, plus its web page.

``create_app(model)`` loads the model once and serves:

* ``POST /v1/predict`` (one image), ``POST /v1/predict/batch`` (several), ``GET /v1/model``,
  ``GET``/``HEAD /health``, ``GET /openapi.json``;
* the clinician page at ``/`` with its assets under ``/static`` (no CDN).

Uploads are parsed in memory (:mod:`fetalplanes.serve.uploads`), typed by their magic
bytes and decoded only by :func:`fetalplanes.core.io.load_image` with a pixel limit per image
and a decoded-pixel budget per request (the decompression-bomb guards; limits in
:mod:`fetalplanes.core.limits`). A request body must arrive within a deadline and the bytes
buffered across uploads are capped (:mod:`fetalplanes.serve.guard`). Nothing is written to disk and no path is taken from a
request. CORS is off unless origins are given; an API key (header ``X-API-Key``) is
required on ``/v1/*`` when configured. ``app_from_env`` builds the app from
``FETALPLANES_*`` environment variables for ``uvicorn --factory`` / ``--workers N``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import weakref
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from fetalplanes.core.errors import EXPECTED, ModelFileError
from fetalplanes.runtime.loader import load_predictor
from fetalplanes.runtime.predictor import Predictor
from fetalplanes.runtime.threads import available_cores
from fetalplanes.serve.explainers import ExplainerFactory, HeatMaps
from fetalplanes.serve.schemas import BatchResponse, ErrorResponse, HealthResponse, ModelInfo, PredictResponse
from fetalplanes.serve.guard import RequestGuard
from fetalplanes.serve.service import Service
from fetalplanes.serve.settings import SERVICE_MAX_PIXELS, ServeSettings
from fetalplanes.serve.uploads import UploadError, read_uploads

__all__ = ["app_from_env", "build_app", "create_app"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
API_KEY_HEADER = "X-API-Key"
PREDICT_QUERY = ("top_k", "explain", "preview")

# Only same-origin resources: the page must work offline and never load third-party code.
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
    413: {"model": ErrorResponse, "description": "Upload larger than the service's limit."},
    415: {"model": ErrorResponse, "description": "Not an accepted image type, or not multipart/form-data."},
    422: {"model": ErrorResponse, "description": "Corrupt or unreadable image, too many files, or invalid parameters."},
}


class _CpuSlots:
    """At most one CPU job (decode + inference) per core; waiting requests queue in order.

    More threads than cores only thrash caches and the inference libraries' own thread pools.
    An asyncio semaphore queues waiters first come, first served, unlike the thread pool. One
    semaphore per event loop: a semaphore is bound to the loop that first waits on it, and
    test clients run each request in a fresh loop.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def run(self, func: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        semaphore = self._by_loop.get(loop)
        if semaphore is None:
            semaphore = self._by_loop[loop] = asyncio.Semaphore(self.slots)
        async with semaphore:
            return await run_in_threadpool(func, *args)


class _SecurityHeaders:
    """Pure ASGI middleware adding conservative security headers to every HTTP response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + _SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    model_path: str | Path,
    *,
    max_upload_mb: float = 20.0,
    api_key: str | None = None,
    cors_origins: tuple[str, ...] | list[str] = (),
    max_batch: int = 16,
    max_pixels: int = SERVICE_MAX_PIXELS,
    threads: int | None = None,
    predictor: Predictor | None = None,
    explainer_factory: ExplainerFactory | None = None,
    **limits: Any,
) -> FastAPI:
    """The service for one model (.onnx or .ckpt); ``predictor``, already loaded, skips loading;
    ``explainer_factory`` (e.g. ``fetalplanes.explain.service_explainer``) adds heat maps;
    ``limits``: ``request_pixels``, ``receive_s``, ``max_buffered_bytes`` (see :class:`ServeSettings`)."""
    settings = ServeSettings(
        model_path=Path(model_path),
        max_upload_mb=max_upload_mb,
        api_key=api_key or None,
        cors_origins=tuple(cors_origins),
        max_batch=max_batch,
        max_pixels=max_pixels,
        threads=threads,
        **limits,
    )
    return build_app(settings, predictor, explainer_factory)


def app_from_env(explainer_factory: ExplainerFactory | None = None) -> FastAPI:
    """The app from ``FETALPLANES_*`` environment settings (multi-worker serving; see ``cli.serve``)."""
    return build_app(ServeSettings.from_env(), explainer_factory=explainer_factory)


def build_app(settings: ServeSettings, predictor: Predictor | None = None,
              explainer_factory: ExplainerFactory | None = None) -> FastAPI:
    """The app for ``settings``: ``predictor`` (else loaded from ``settings.model_path``) and heat maps
    when ``explainer_factory`` gives them."""
    predictor = predictor or load_predictor(settings.model_path, threads=settings.threads)
    logger.info("serving %s model %s (%s)", predictor.kind, predictor.spec.name, predictor.path)
    service = Service(predictor, settings, HeatMaps(predictor, explainer_factory))
    spec = service.spec
    app = FastAPI(
        title="fetalplanes",
        version=spec.version or "0",
        summary="Classify maternal-fetal ultrasound images into standard planes. Research use only: not a medical device.",
        # FastAPI's /docs and /redoc pages load their scripts from a CDN; the schema stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    _add_middleware(app, settings)
    _add_error_handlers(app)
    app.include_router(_api_router(service, settings))
    _add_pages(app, service)
    return app


def _add_middleware(app: FastAPI, settings: ServeSettings) -> None:
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
        )
    app.add_middleware(RequestGuard, receive_s=settings.receive_s, max_buffered=settings.max_buffered_bytes)
    app.add_middleware(_SecurityHeaders)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def upload_error(_request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(ModelFileError)
    async def model_error(_request: Request, exc: ModelFileError) -> JSONResponse:
        # The served model failed at run time (the upload is not at fault): 500, but one sentence
        # in the API's error shape rather than a bare "Internal Server Error".
        logger.error("%s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # One sentence, like every other error of this API, instead of FastAPI's list of dicts.
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts)}, status_code=422)


def _key_checker(expected: str | None) -> Any:
    scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The service's API key.")

    def check(key: str | None = Security(scheme)) -> None:
        # compare_digest: the time taken does not reveal how much of the key matched.
        if not key or not expected or not hmac.compare_digest(key.encode(), expected.encode()):
            raise HTTPException(401, f"missing or invalid API key (send it in the {API_KEY_HEADER} header)")

    return check


def _check_query(request: Request, allowed: tuple[str, ...]) -> None:
    """Refuse unknown query parameters: a typo such as ?explian=true must not be silently ignored."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise UploadError(422, f"unknown query parameter(s) {unknown}; valid: {list(allowed)}")


def _multipart_body(batch: bool, max_batch: int) -> dict[str, Any]:
    """OpenAPI request body of the upload endpoints (parsed by hand, so declared by hand)."""
    binary = {"type": "string", "format": "binary"}
    if batch:
        props = {"files": {"type": "array", "items": binary, "minItems": 1, "maxItems": max_batch}}
        required = ["files"]
    else:
        props = {"file": {**binary, "description": f"One image: {EXPECTED[2:]}."}}
        required = ["file"]
    schema = {"type": "object", "properties": props, "required": required}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _api_router(service: Service, settings: ServeSettings) -> APIRouter:
    deps = [Depends(_key_checker(settings.api_key))] if settings.api_key else []
    router = APIRouter(prefix="/v1", dependencies=deps, responses={401: _ERRORS[401]} if deps else {})
    num_classes = service.spec.num_classes
    cpu = _CpuSlots(available_cores())
    top_k_query = Query(2, ge=1, le=num_classes, description="How many classes to list, best first.")
    explain_query = Query(False, description="Add the heat-map overlay (the checkpoint's CAM method; checkpoint models only).")
    preview_query = Query(False, description="Add the decoded image as PNG (to display DICOM in a browser).")

    async def uploads(request: Request, max_files: int) -> list:
        _check_query(request, PREDICT_QUERY)
        return await read_uploads(
            request.stream(),
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            max_bytes=settings.max_upload_bytes,
            max_files=max_files,
        )

    @router.post(
        "/predict",
        response_model=PredictResponse,
        responses={k: v for k, v in _ERRORS.items() if k != 401},
        openapi_extra=_multipart_body(False, settings.max_batch),
        summary="Classify one image",
    )
    async def predict(
        request: Request, top_k: int = top_k_query, explain: bool = explain_query, preview: bool = preview_query
    ) -> PredictResponse:
        files = await uploads(request, 1)
        return await cpu.run(service.analyse, files[0], top_k, explain, preview)

    @router.post(
        "/predict/batch",
        response_model=BatchResponse,
        responses={k: v for k, v in _ERRORS.items() if k != 401},
        openapi_extra=_multipart_body(True, settings.max_batch),
        summary="Classify several images (per-image errors are reported per item)",
    )
    async def predict_batch(
        request: Request, top_k: int = top_k_query, explain: bool = explain_query, preview: bool = preview_query
    ) -> BatchResponse:
        files = await uploads(request, settings.max_batch)
        return await cpu.run(service.analyse_batch, files, top_k, explain, preview)

    @router.get("/model", response_model=ModelInfo, summary="The model: classes, preprocessing, metrics")
    async def model_info(request: Request) -> ModelInfo:
        _check_query(request, ())
        return service.model_info()

    return router


def _add_pages(app: FastAPI, service: Service) -> None:
    @app.get("/health", response_model=HealthResponse, summary="Liveness and the model served")
    async def health() -> HealthResponse:
        return HealthResponse(status="ok", model=service.spec.name, version=service.spec.version)

    # HEAD too: load balancers and uptime probes often check liveness without a body (kept out
    # of the schema: it is GET without the body).
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
