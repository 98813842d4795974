"""The draw-a-digit page and its JSON API, on the standard library's HTTP server (for a colour run the page
classifies pictures: drawn or opened, kept in colour).

GET  /            the page (one self-contained HTML file: no CDN, no fonts, works offline)
GET  /api/info    {"run", "model", "model_spec", "classes", "test_acc", "weights", "input_shape", "colour"}
                  (weights: "EMA weights (decay D per step)" for a run trained with config ema, whose test_acc
                  and served weights are the average's; null otherwise)
POST /predict     body: PNG/JPEG bytes (Content-Type image/png, image/jpeg, ...) or JSON
                  {"image": "data:image/png;base64,..."}; answers {"label", "probs", "top",
                  "preview": {"png", "pixels"}, "features": [{"name", "channels", "height", "width", "png"}], "ms"}
Errors are JSON {"error": "..."} with a 4xx status; the server keeps serving.

Careless or hostile clients are bounded: at most `workers` connection threads (more clients wait in a deep
listen backlog instead of being reset), a read timeout per connection and a deadline per request in all
(headers within HEADER_S of its first byte, the body within REQUEST_S: a client dripping a byte every few
seconds cannot hold a thread), bodies refused by Content-Length before they are read (two different
Content-Length headers: 400), and only DECODE_SLOTS images decoded at once (decode_image reduces big ones first).
HEAD and OPTIONS are answered.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from typing import Any

import numpy as np
import torch

from convladder.data.normalise import normalise
from convladder.errors import UserError
from convladder.serve.predict import LoadedRun, Predictor, feature_maps, nonfinite_message, to_unit, top_k
from convladder.serve.preprocess import (MAX_SIDE, ImageTooLarge, NoInkError, decode_colour, decode_image, fit_image,
                                         to_mnist)

MAX_BYTES = 2 * 1024 * 1024  # request bodies larger than this get 413 (judged by Content-Length, unread)
DECODE_SLOTS = 2  # images decoded at once (a 4096x4096 PNG still needs ~100 MB while it decodes)
WORKERS = 64  # connection threads; further clients wait in the listen backlog
BACKLOG = 1024  # listen backlog (the kernel caps it at net.core.somaxconn); the stdlib's 5 reset clients
TIMEOUT = 10.0  # seconds a client may stay silent mid-request or between keep-alive requests
HEADER_S = 5.0  # from a request's first byte to the end of its headers, in all (not per read: see DeadlineReader)
REQUEST_S = 30.0  # from a request's first byte to the end of its body, in all
LINGER_S = 5.0  # after refusing a body: how long to read and drop it so that our answer is not reset away
FEATURE_LAYERS = 2
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp")
PREDICT_PATHS = ("/predict", "/api/predict")


class ApiError(Exception):
    """An HTTP error with a JSON body."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def png_data_url(pixels: np.ndarray) -> str:
    """uint8 (H, W) grayscale or (3, H, W) colour -> data:image/png;base64,..."""
    from PIL import Image

    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), mode="RGB") if pixels.ndim == 3 \
        else Image.fromarray(pixels, mode="L")
    image.save(buf, format="PNG", compress_level=1)  # speed over size
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
        c, h, w = run.input_shape
        if c not in (1, 3):
            raise UserError(f"run {run.run_id} takes {c}x{h}x{w} inputs ({c} channels); the page sends grey or colour "
                            f"(RGB) pictures only — classify {c}-channel images with `convladder predict "
                            f"{run.run_id} images.npy` (a .npy batch of shape (N, {c}, {h}, {w}))")
        self.run = run
        self.colour = c == 3  # colour pictures are kept in colour and resized; grey ones put into MNIST form
        self.field = (h, w)  # at the network's input size
        self.predictor = Predictor.from_run(run)
        self.max_bytes, self.max_side = max_bytes, max_side
        self._decodes = threading.BoundedSemaphore(DECODE_SLOTS)  # 8 big uploads at once took 3.75 GB
        # Trace the network now, before any request thread runs it (tracing is not thread-safe).
        feature_maps(self.predictor.model, torch.zeros(1, *run.input_shape), FEATURE_LAYERS)
        self.page = resources.files("convladder.serve").joinpath("page.html").read_bytes()

    def info(self) -> dict[str, Any]:
        probs = self.predictor.probs(np.zeros((1, *self.run.input_shape), np.uint8))
        model = str(self.run.config.get("model") or "")
        return {"run": self.run.run_id, "model": model if len(model) <= 40 else "custom spec",
                "model_spec": self.run.config.get("model_spec"), "classes": int(probs.shape[1]),
                "test_acc": self.run.test_acc, "weights": self.run.weights_text,
                "input_shape": list(self.run.input_shape), "colour": self.colour}

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
        except RecursionError:  # json's parser recurses per bracket: 100,000 of them used to be a 500
            raise ApiError(HTTPStatus.BAD_REQUEST,
                           'JSON body is nested too deep; send {"image": "data:image/png;base64,..."}') from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, IndexError):
            raise ApiError(HTTPStatus.BAD_REQUEST, 'JSON body must be {"image": "data:image/png;base64,..."}') from None
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the image field is not valid base64") from None

    def predict(self, image: bytes) -> dict[str, Any]:
        """Preprocess like MNIST (colour runs: keep colour, resize), classify, and describe what the first conv
        layers see."""
        start = time.perf_counter()
        if not image:
            raise ApiError(HTTPStatus.BAD_REQUEST, "empty body: send a PNG or JPEG image")
        try:
            with self._decodes:  # decode_image checks the size from the header and reduces big images first
                name = "the uploaded image"
                if self.colour:
                    pixels = fit_image(decode_colour(image, max_side=self.max_side, name=name), self.field, name=name)
                else:
                    pixels = to_mnist(decode_image(image, max_side=self.max_side, name=name), size=self.field,
                                      name=name)
        except NoInkError as exc:
            raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        except ImageTooLarge as exc:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc)) from None
        except UserError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        normalised = normalise(to_unit(pixels[None]), self.predictor.mean, self.predictor.std)
        logits, maps = feature_maps(self.predictor.model, normalised, FEATURE_LAYERS)
        probs = torch.softmax(logits.flatten(1), dim=1)[0].numpy()
        if not np.isfinite(probs).all():  # NaN has no label (and json.dumps would write NaN, which is not JSON)
            raise ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, nonfinite_message(self.run, "this image"))
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


def linger_close(sock: socket.socket, seconds: float = LINGER_S) -> None:
    """Half-close, then read and drop what the client is still sending, for at most `seconds`.

    Closing a socket with unread data sends a reset, and a reset makes the client's TCP stack drop our answer
    unread: a client sending 17 MB saw a broken pipe instead of the 413.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(min(left, 1.0))
            if not sock.recv(1 << 16):
                return
    except OSError:
        pass


class DeadlineReader(io.RawIOBase):
    """The connection's bytes, each read bounded by the handler's deadline for the whole request.

    A per-read timeout alone lets a client that sends one byte every 9 s keep a thread for ever (64 such
    clients held every worker and a normal GET waited past 20 s)."""

    def __init__(self, sock: socket.socket, handler: Handler):
        super().__init__()
        self.sock, self.handler = sock, handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        h = self.handler
        if h.deadline is None:  # between requests: the idle timeout per read
            self.sock.settimeout(h.timeout)
        else:
            left = h.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the request did not arrive within {h.deadline - h.started:g} s")
            self.sock.settimeout(min(h.timeout, left))
        n = self.sock.recv_into(buffer)
        if h.deadline is None and n:  # a request's first byte: its headers must follow within HEADER_S
            h.started = time.monotonic()
            h.deadline = h.started + HEADER_S
        return n


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the DigitApp stored on the server."""

    server_version = "convladder-serve"
    protocol_version = "HTTP/1.1"  # keep-alive: scripted clients avoid a TCP handshake per request
    # Headers and body go out in separate writes; with Nagle on, the body waits for the client's delayed
    # ACK (~40 ms on Linux). TCP_NODELAY sends it at once.
    disable_nagle_algorithm = True
    timeout = TIMEOUT  # socket timeout: a silent client frees its thread (make_server sets the value)
    app: DigitApp  # set by make_server on a subclass
    server: DigitServer
    quiet = True
    _linger = False  # close gently after the answer: the client may still be sending a body we refused
    _head = False  # answering HEAD: headers only
    _expecting = False  # inside handle_expect_100: the client sends no body until we say so
    deadline: float | None = None  # monotonic time the current request must have arrived by (None: idle)
    started = 0.0  # monotonic time of the current request's first byte

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the stdlib's reader (a makefile: closing it leaves the socket open)
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, self), 1 << 16)

    def handle_one_request(self) -> None:
        self.deadline, self._head = None, False  # the next request's clock starts at its first byte
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if not self.quiet:
            super().log_message(format, *args)

    def finish(self) -> None:
        super().finish()
        if self._linger:
            linger_close(self.connection)

    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if close or self.server.waiting:  # others wait for a thread: do not hold this one for a next request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not self._head:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, close: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", close)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self._head = True  # GET's status and headers, no body
        self.do_GET()

    def do_OPTIONS(self) -> None:  # noqa: N802 - stdlib name
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Allow", "GET, HEAD, POST, OPTIONS")
        self.send_header("Content-Length", "0")
        self.end_headers()

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
            length = self._check_post()
            self.deadline = self.started + REQUEST_S  # the body too, in all (not per read)
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                self.close_connection = True
                raise ApiError(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive in time (silent for "
                               f"{self.timeout:g} s, or {REQUEST_S:g} s for the whole request)") from None
            if len(body) < length:  # the client closed mid-body: nobody to answer
                self.close_connection = True
                return
            image = self.app.image_from_request(self.headers.get("Content-Type", ""), body)
            self._json(HTTPStatus.OK, self.app.predict(image))
        except ApiError as exc:
            self._json(exc.status, {"error": str(exc)}, close=self.close_connection)
        except (ConnectionError, TimeoutError):  # the client left (reset, broken pipe) or stopped reading our answer
            self.close_connection = True  # nothing to answer, nothing to log
        except Exception as exc:  # noqa: BLE001 - a bug must not take the server down; report it as 500
            print(f"convladder serve: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error ({type(exc).__name__})"}, close=True)

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue` (curl, for big bodies): refuse now, so the client never sends a body we refuse."""
        if self.command != "POST":
            return super().handle_expect_100()
        self._expecting = True
        try:
            self._check_post()
        except ApiError as exc:
            self._json(exc.status, {"error": str(exc)}, close=True)
            return False
        finally:
            self._expecting = False
        return super().handle_expect_100()

    def _check_post(self) -> int:
        """The body length of an acceptable POST /predict, else ApiError with the body dropped (see _skip_body)."""
        if self.headers.get("Transfer-Encoding"):
            self._skip_body(None)
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted: send a Content-Length header")
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if len(values) > 1:  # which one frames the body? a proxy and we could disagree (request smuggling)
            self._skip_body(None)
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{len(values)} different Content-Length headers; send one")
        value = values.pop() if values else ""
        if not value:
            self._skip_body(None)
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header")
        if not re.fullmatch(r"[0-9]+", value):
            self._skip_body(None)
            raise ApiError(HTTPStatus.BAD_REQUEST, f"Content-Length {value[:20]!r} is not a whole number")
        length = int(value) if len(value) <= 18 else 10**18  # int() of 4,300+ digits raises
        if self.path.split("?")[0] not in PREDICT_PATHS:
            self._skip_body(length)
            raise ApiError(HTTPStatus.NOT_FOUND, "POST to /predict")
        if length > self.app.max_bytes:
            self._skip_body(length)
            size = f"{length:,} bytes" if len(value) <= 18 else f"a {len(value)}-digit number of bytes"
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"request body is {size}; the limit is {self.app.max_bytes:,} bytes — send a smaller image")
        return length

    def _skip_body(self, length: int | None) -> None:
        """Before refusing: drop a small body so the connection stays usable; a large or unknown one is not
        read, the connection closes after the answer (gently: see finish)."""
        if length is not None and length <= self.app.max_bytes and not self._expecting:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 16))
                if not chunk:
                    break
                length -= len(chunk)
            return
        self.close_connection = True
        self._linger = True


class DigitServer(HTTPServer):
    """An HTTP server with at most `workers` connection threads; further clients wait in the listen backlog.

    The stdlib's ThreadingHTTPServer listens with a backlog of 5 (100 concurrent clients saw 12-21 % of their
    requests reset) and starts a thread per connection without limit (300 stalled clients held 302 threads).
    """

    request_queue_size = BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[Handler], *, workers: int = WORKERS,
                 verbose: bool = False):
        self.workers, self.verbose = workers, verbose
        self.waiting = False  # a connection is accepted and waits for a thread
        self._slots = threading.BoundedSemaphore(workers)
        self._closing = threading.Event()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.waiting = True  # while we wait here, new clients queue in the kernel's backlog (no resets)
            try:
                while not self._slots.acquire(timeout=0.25):
                    if self._closing.is_set():
                        self.shutdown_request(request)
                        return
            finally:
                self.waiting = False
        try:
            threading.Thread(target=self._work, args=(request, client_address), name="convladder-serve-conn",
                             daemon=True).start()
        except BaseException:
            self._slots.release()  # socketserver closes the request and reports the error
            raise

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - as socketserver does: report, keep serving
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):  # the client left or went silent: not our bug
            if self.verbose:
                print(f"convladder serve: {client_address[0]} left ({type(exc).__name__})", file=sys.stderr)
            return
        super().handle_error(request, client_address)

    def shutdown(self) -> None:
        self._closing.set()
        super().shutdown()


def make_server(run: LoadedRun, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = True,
                max_bytes: int = MAX_BYTES, workers: int = WORKERS, timeout: float = TIMEOUT) -> DigitServer:
    """A ready server (port 0 picks a free one: see `server.server_address`); call serve_forever().

    `workers` connections are served at once, the rest wait; `timeout` seconds of silence drop a client.
    """
    handler = type("BoundHandler", (Handler,), {"app": DigitApp(run, max_bytes=max_bytes), "quiet": quiet,
                                                "timeout": timeout})
    try:
        return DigitServer((host, port), handler, workers=workers, verbose=not quiet)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}) — choose another --port") from None


def serve_in_thread(server: HTTPServer) -> threading.Thread:
    """Run a server in a daemon thread (tests, benchmarks); stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, name="convladder-serve", daemon=True)
    thread.start()
    return thread
