"""The web app: `ferlab serve MODEL` labels the faces of uploaded photos.

A plain HTML/JS page (`static/index.html`, no build step) uploads a photo to the JSON API
and draws each face's box, label and scores. The API:
- `POST /predict` (multipart field `file`): the faces found, each with its box, the
  detector's score, the label and every class's probability;
- `GET /model`: architecture, classes, input size, calibration and the metrics the model
  earned; `GET /health`: liveness;
- `GET /docs`: the OpenAPI page (Swagger UI 5 served from the `fastapi-offline` package, so
  it works offline), `GET /openapi.json`: the schema.

Uploads are checked before any pixel is decoded: bytes (413), image type (415), pixel count
(413, read from the header); a file that then fails to decode is a 422. Any other failure
answers 500 with its reason; the server keeps serving.
"""


import io
import logging
import threading
import warnings
from dataclasses import asdict, dataclass
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ferlab._version import __version__
from ferlab.data import open_rgb
from ferlab.predict import Predictor

__all__ = ["ServeConfig", "UploadRejected", "WebUnavailable", "analyse_upload", "check_upload", "create_app", "require_web", "serve"]

log = logging.getLogger("ferlab.serve")


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # this machine only; give 0.0.0.0 to serve the network
    port: int = 8000
    # Phone photos are 2-12 MB; 20 MB leaves room and bounds what one request can hold.
    max_upload_bytes: int = 20 * 1024 * 1024
    # 50 MP admits a 48 MP phone photo; decoding one takes 150 MB as RGB. A decompression
    # bomb (a small file declaring 100 MP or more) is refused from its header.
    max_pixels: int = 50_000_000
    # What PIL decodes reliably; anything else (PDF, SVG, video, text) is refused with 415.
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO")


class UploadRejected(Exception):
    """An upload the server will not score: `status` is the HTTP code, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _too_many_bytes(size: int, config: ServeConfig) -> str:
    return f"the upload is {size / 2**20:.1f} MB; the limit is {config.max_upload_bytes / 2**20:.0f} MB"


def check_upload(data: bytes, config: ServeConfig) -> np.ndarray:
    """The uploaded bytes as uint8 (H, W, 3) RGB, or `UploadRejected` with a 4xx status."""
    if len(data) > config.max_upload_bytes:
        raise UploadRejected(413, _too_many_bytes(len(data), config))
    if not data:
        raise UploadRejected(400, "the upload is empty: send an image file in the form field 'file'")
    try:
        with warnings.catch_warnings():  # PIL warns of large images; they are refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:  # reads the header only, not the pixels
                kind, (width, height) = header.format, header.size
    except Image.DecompressionBombError as error:  # declares hundreds of megapixels
        raise UploadRejected(413, f"{error}; the limit is {config.max_pixels / 1e6:.0f} megapixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UploadRejected(
            415, f"not an image: send one of {', '.join(config.formats)}"
        ) from None
    if kind not in config.formats:
        raise UploadRejected(415, f"{kind} images are not accepted; send one of {', '.join(config.formats)}")
    if width * height > config.max_pixels:
        raise UploadRejected(
            413, f"the image is {width}x{height} ({width * height / 1e6:.0f} megapixels); the limit is "
            f"{config.max_pixels / 1e6:.0f} megapixels: scale it down first"
        )
    try:
        return np.asarray(open_rgb(data), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UploadRejected(422, f"the image cannot be decoded: {error}") from None


def analyse_upload(predictor: Predictor, photo: np.ndarray, name: str) -> dict[str, Any]:
    """The JSON answer for one photo: its size, and each face's box, detector score, label and
    scores (box None: the whole image was scored as one face); `message` says why no face is
    listed."""
    predictions = predictor.predict_photo(photo, name)
    faces = [
        {
            "face": index,
            "box": list(p.box) if p.box is not None else None,
            "detector_score": p.detector_score,
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in p.landmarks] if p.landmarks else None,
            "label": p.label,
            "scores": p.scores,
            "blurred_to_training_sharpness": round(p.blur_sigma, 2),
        }
        for index, p in enumerate(predictions)
        if p.error is None
    ]
    message = next((p.error for p in predictions if p.error is not None), None)
    height, width = photo.shape[:2]
    return {"name": name, "width": width, "height": height, "faces": faces, "message": message}


def model_summary(predictor: Predictor, model_path: Path, config: ServeConfig) -> dict[str, Any]:
    """What `GET /model` answers."""
    card = predictor.card
    return {
        "model": str(model_path),
        "arch": card.arch,
        "classes": list(card.class_names),
        "image_size": card.image_size,
        "temperature": card.temperature,
        "match_sharpness": card.match_sharpness,
        "metrics": card.metrics,
        "engine": predictor.engine_reason,
        "faces": predictor.faces,
        "detector": predictor.detector.name if predictor.detector is not None else None,
        "align_faces": predictor.align_faces,
        "limits": {k: v for k, v in asdict(config).items() if k.startswith("max_") or k == "formats"},
    }


def _page() -> str:
    return resources.files("ferlab").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(predictor: Predictor, model_path: Path, config: ServeConfig | None = None) -> Any:
    """The FastAPI application serving `predictor`."""
    require_web()
    from fastapi import FastAPI, File, HTTPException, Request, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    config = config or ServeConfig()
    app = FastAPI(
        title="ferlab", version=__version__, summary="Facial expression recognition: the faces of a photo, labelled with calibrated scores.",
        docs_url=None, redoc_url=None,
    )
    _add_docs(app)
    # One photo at a time through the detector and the network: OpenCV's cascade is not
    # safe to share between threads, and two CPU cores gain nothing from running two.
    lock = threading.Lock()
    summary = model_summary(predictor, model_path, config)
    # The multipart wrapping adds a few hundred bytes; a body much larger than the limit is
    # refused from its Content-Length before it is read.
    body_limit = config.max_upload_bytes + 64 * 1024

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length", "")
        if request.method == "POST" and length.isdigit() and int(length) > body_limit:
            return JSONResponse({"detail": _too_many_bytes(int(length), config)}, 413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return _page()

    @app.get("/health", summary="Liveness: the server is up and the model loaded")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": str(model_path)}

    @app.get("/model", summary="The model: architecture, classes, calibration, metrics and the upload limits")
    def model() -> dict[str, Any]:
        return summary

    @app.post(
        "/predict",
        summary="Label the faces of one photo",
        responses={
            400: {"description": "Empty upload"}, 413: {"description": "Too many bytes or pixels"},
            415: {"description": "Not an accepted image type"}, 422: {"description": "The image cannot be decoded"},
        },
    )
    async def predict(file: UploadFile = File(..., description="a photo or face crop")) -> dict[str, Any]:  # noqa: B008
        data = await file.read(config.max_upload_bytes + 1)

        def work() -> dict[str, Any]:
            photo = check_upload(data, config)
            with lock:
                return analyse_upload(predictor, photo, file.filename or "upload")

        try:
            return await run_in_threadpool(work)
        except UploadRejected as rejected:
            raise HTTPException(rejected.status, str(rejected)) from None
        except Exception as error:  # the server answers and keeps serving, whatever the photo did
            log.exception("scoring %r failed", file.filename)
            raise HTTPException(500, f"scoring failed: {type(error).__name__}: {error}") from None

    return app


def _swagger_assets() -> Path | None:
    """fastapi-offline's folder of Swagger UI files, located, not imported; None without it."""
    spec = find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _add_docs(app: Any) -> None:
    """`/docs`: Swagger UI from the files the fastapi-offline package ships (Swagger UI 5,
    which reads FastAPI's OpenAPI 3.1; swagger-ui-bundle's 4.15 cannot), so the page works
    offline; without the package, FastAPI's default page (which fetches it from a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    assets = _swagger_assets()
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if assets is None:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="ferlab API")
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="ferlab API", swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="/docs-assets/favicon.png",
        )


class WebUnavailable(RuntimeError):
    """FastAPI or uvicorn is missing; the message says what to install."""


def require_web() -> None:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart: form uploads)
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise WebUnavailable(
            f"ferlab serve needs the serve extra ({error.name} is missing): pip install 'ferlab[serve]'"
        ) from error


def serve(predictor: Predictor, model_path: Path, config: ServeConfig) -> None:
    """Serve until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(create_app(predictor, model_path, config), host=config.host, port=config.port, log_level="info")
