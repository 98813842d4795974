"""The draw-a-digit page and its JSON API, on the standard library's threading HTTP server.

GET  /            the page (one self-contained HTML file: no CDN, no fonts, works offline)
GET  /api/info    {"run", "model", "classes", "test_acc"}
POST /predict     body: PNG/JPEG bytes (Content-Type image/png, image/jpeg, ...) or JSON
                  {"image": "data:image/png;base64,..."}; answers {"label", "probs", "top",
                  "preview": {"png", "pixels"}, "features": [{"name", "channels", "height", "width", "png"}], "ms"}
Errors are JSON {"error": "..."} with a 4xx status; the server keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import numpy as np
import torch

from convladder.errors import UserError
from convladder.serve.predict import LoadedRun, Predictor, feature_maps, to_unit, top_k
from convladder.serve.preprocess import ImageTooLarge, NoInkError, decode_image, to_mnist

MAX_BYTES = 2 * 1024 * 1024  # request bodies larger than this get 413
MAX_SIDE = 4096  # images wider or taller than this get 413 (checked before decoding the pixels)
DRAIN_LIMIT = 16 * 1024 * 1024  # read and discard oversized bodies up to this, so the client sees our 413
FEATURE_LAYERS = 2
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp")


class ApiError(Exception):
    """An HTTP error with a JSON body."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def png_data_url(pixels: np.ndarray) -> str:
    """uint8 (H, W) grayscale -> data:image/png;base64,..."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=1)  # speed over size
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def tile_maps(maps: np.ndarray, columns: int = 8, gap: int = 1) -> np.ndarray:
    """(C, H, W) activations -> one uint8 grid image; each map scaled to its own 0..max so weak ones show."""
    c, h, w = maps.shape
    cols = min(columns, c)
    rows = -(-c // cols)
    lo = maps.reshape(c, -1).min(1)[:, None, None]
    hi = maps.reshape(c, -1).max(1)[:, None, None]
    scaled = np.where(hi > lo, (maps - lo) / np.maximum(hi - lo, 1e-12), 0.0)
    grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), 40, np.uint8)  # grey gaps
    for i in range(c):
        r, q = divmod(i, cols)
        grid[r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = np.round(scaled[i] * 255)
    return grid


class DigitApp:
    """Everything a request needs: the predictor and the run's description. Safe to share across threads."""

    def __init__(self, run: LoadedRun, *, max_bytes: int = MAX_BYTES, max_side: int = MAX_SIDE):
        self.run = run
        self.predictor = Predictor.from_run(run)
        self.max_bytes, self.max_side = max_bytes, max_side
        # Trace the network now, before any request thread runs it (tracing is not thread-safe).
        shape = tuple(getattr(run, "input_shape", None) or (1, 28, 28))
        feature_maps(self.predictor.model, torch.zeros(1, *shape), FEATURE_LAYERS)
        self.page = resources.files("convladder.serve").joinpath("page.html").read_bytes()

    def info(self) -> dict[str, Any]:
        probs = self.predictor.probs(np.zeros((1, 28, 28), np.uint8))
        model = str(self.run.config.get("model") or "")
        return {"run": self.run.run_id, "model": model if len(model) <= 40 else "custom spec",
                "model_spec": self.run.config.get("model_spec"), "classes": int(probs.shape[1]),
                "test_acc": self.run.test_acc}

    def image_from_request(self, content_type: str, body: bytes) -> bytes:
        """The image bytes of a POST body, by content type."""
        kind = content_type.split(";")[0].strip().lower()
        if kind in IMAGE_TYPES or kind == "application/octet-stream":
            return body
        if kind != "application/json":
            raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           f"Content-Type {kind or '(none)'} is not accepted; send image/png or image/jpeg bytes, "
                           'or application/json {"image": "data:image/png;base64,..."}')
        try:
            payload = json.loads(body)
            text = payload["image"]
            if not isinstance(text, str):
                raise TypeError
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ApiError(HTTPStatus.BAD_REQUEST, 'JSON body must be {"image": "data:image/png;base64,..."}') from None
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the image field is not valid base64") from None

    def predict(self, image: bytes) -> dict[str, Any]:
        """Preprocess like MNIST, classify, and describe what the first conv layers see."""
        start = time.perf_counter()
        if not image:
            raise ApiError(HTTPStatus.BAD_REQUEST, "empty body: send a PNG or JPEG image")
        try:
            gray = decode_image(image, max_side=self.max_side, name="the uploaded image")
            pixels = to_mnist(gray)
        except NoInkError as exc:
            raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        except ImageTooLarge as exc:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc)) from None
        except UserError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        normalised = (to_unit(pixels[None]) - self.predictor.mean) / self.predictor.std
        logits, maps = feature_maps(self.predictor.model, normalised, FEATURE_LAYERS)
        probs = torch.softmax(logits.flatten(1), dim=1)[0].numpy()
        features = [{"name": name, "channels": int(m.shape[0]), "height": int(m.shape[1]), "width": int(m.shape[2]),
                     "png": png_data_url(tile_maps(m))} for name, m in maps]
        return {
            "label": int(probs.argmax()),
            "probs": [round(float(p), 6) for p in probs],
            "top": top_k(probs[None], 3)[0],
            "preview": {"png": png_data_url(pixels), "pixels": pixels.tolist()},
            "features": features,
            "ms": round((time.perf_counter() - start) * 1000, 2),
        }


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the DigitApp stored on the server."""

    server_version = "convladder-serve"
    protocol_version = "HTTP/1.1"  # keep-alive: scripted clients avoid a TCP handshake per request
    # Headers and body go out in separate writes; with Nagle on, the body waits for the client's delayed
    # ACK (~40 ms on Linux). TCP_NODELAY sends it at once.
    disable_nagle_algorithm = True
    app: DigitApp  # set by make_server on a subclass
    quiet = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if not self.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, close: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", close)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?")[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.app.page, "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(HTTPStatus.OK, self.app.info())
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}; try / or POST /predict"})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        try:
            if self.path.split("?")[0] not in ("/predict", "/api/predict"):
                self._drain(self._length())
                raise ApiError(HTTPStatus.NOT_FOUND, "POST to /predict")
            length = self._length()
            if length > self.app.max_bytes:
                self._drain(length)
                raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"request body is {length} bytes; the limit is {self.app.max_bytes}")
            body = self.rfile.read(length)
            image = self.app.image_from_request(self.headers.get("Content-Type", ""), body)
            self._json(HTTPStatus.OK, self.app.predict(image))
        except ApiError as exc:
            self._json(exc.status, {"error": str(exc)}, close=self.close_connection)
        except Exception as exc:  # noqa: BLE001 - a bug must not take the server down; report it as 500
            print(f"convladder serve: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error ({type(exc).__name__})"}, close=True)

    def _length(self) -> int:
        value = self.headers.get("Content-Length")
        if value is None:
            self.close_connection = True
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header")
        try:
            length = int(value)
        except ValueError:
            self.close_connection = True
            raise ApiError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
        if length < 0:
            self.close_connection = True
            raise ApiError(HTTPStatus.BAD_REQUEST, "Content-Length is negative")
        return length

    def _drain(self, length: int) -> None:
        """Discard a body we refuse, so the client reads our answer instead of a reset connection."""
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)


def make_server(run: LoadedRun, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = True,
                max_bytes: int = MAX_BYTES) -> ThreadingHTTPServer:
    """A ready server (port 0 picks a free one: see `server.server_address`); call serve_forever()."""
    handler = type("BoundHandler", (Handler,), {"app": DigitApp(run, max_bytes=max_bytes), "quiet": quiet})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}) — choose another --port") from None
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Run a server in a daemon thread (tests, benchmarks); stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, name="convladder-serve", daemon=True)
    thread.start()
    return thread
