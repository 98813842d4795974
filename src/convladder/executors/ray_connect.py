"""Joining a Ray cluster, or one line saying why not; and Ray's own log lines kept out of the command's output.

Checks before `ray.init` (which retries a wrong address for minutes and an unauthenticated one for 20 s,
printing a C++ warning a second): the address form, a TCP connect, an HTTP/2 handshake (Ray speaks gRPC), and
one gRPC call to the GCS (`GetClusterId`) with the token this machine has, if any, so that a head started with
token authentication (`RAY_AUTH_MODE=token`, the default of `ray start` since Ray 2.5x) is named as the cause.

Ray's lines (its C++ core's warnings on fd 2, its Python loggers, the error messages it prints on stdout, e.g.
a node marked dead) go to `<Ray session>/logs/convladder-driver-<pid>.log` unless `--ray-verbose`.
Ray and grpc are imported inside functions only.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

from convladder.errors import UserError

CONNECT_TIMEOUT_S = 10.0  # how long to wait for a cluster's address before saying it is unreachable
PROBE_TIMEOUT_S = 5.0  # the GCS answers GetClusterId in milliseconds; a busy head in well under this
ADDRESS_FORMS = ("'auto', host:port (the GCS port of `ray start --head`, default 6379, e.g. 127.0.0.1:6379) "
                 "or ray://host:10001 (Ray Client)")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TOKEN_HELP = ("export RAY_AUTH_TOKEN=<token> (`ray get-auth-token` on the head prints it) or put it in "
              "~/.ray/auth_token, then run again")


def parse_address(address: str) -> tuple[str, str, int] | None:
    """(scheme '' or 'ray', host, port) of a --ray-address; None for 'auto'; a UserError for any other form."""
    if address == "auto":
        return None
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    if scheme not in ("", "ray"):
        raise UserError(f"--ray-address {address!r}: {scheme}:// is not a Ray address — give {ADDRESS_FORMS}")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit() or "/" in rest or not 0 < int(port) < 65536:
        raise UserError(f"--ray-address {address!r} must be {ADDRESS_FORMS} — host:port with a port number")
    return scheme, host, int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds, in one line, where `ray.init(address)` would hang or retry: wrong form, nothing
    listening, not gRPC, not a Ray GCS (or a GCS given as ray://), token authentication without a valid token."""
    parsed = parse_address(address)
    if parsed is None:
        return
    scheme, host, port = parsed
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        waited = f" after {timeout:g}s" if isinstance(exc, TimeoutError) else ""
        raise UserError(f"Ray cluster at {address!r} is unreachable ({exc}){waited}; check the address "
                        "and that the head node runs (`ray start --head`), or drop --ray-address for a local Ray") from None
    # Ray's head (GCS) and client server speak gRPC: an HTTP/2 server answers our preface with a SETTINGS frame.
    # Anything else (a web server, a closed proxy) would make ray.init retry for minutes.
    try:
        with conn:
            conn.sendall(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # preface + empty SETTINGS
            head = conn.recv(9)
    except OSError:
        head = b""
    if len(head) < 4 or head[3] != 0x04:
        raise UserError(f"{address!r} answers but is not a Ray head (no gRPC there): give {ADDRESS_FORMS}")
    probe_gcs(address, scheme, host, port)


def probe_gcs(address: str, scheme: str, host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One GetClusterId call with this machine's Ray token (if any): says what is wrong before ray.init would."""
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:
        return  # no grpc/Ray stubs: ray.init will say what it says
    metadata, source = ray_token()
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)

        def call(meta: tuple[tuple[str, str], ...]):
            try:
                stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout, metadata=meta)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

        code = call(())
        if code == grpc.StatusCode.UNAUTHENTICATED:
            if not source:
                raise UserError(f"the Ray cluster at {address!r} requires an authentication token (its head runs with "
                                f"RAY_AUTH_MODE=token) and this machine has none — {TOKEN_HELP}")
            code = call(metadata)
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise UserError(f"the Ray cluster at {address!r} rejected the token from {source} (token "
                                f"authentication, RAY_AUTH_MODE=token on the head): give the head's token — {TOKEN_HELP}")
            _token_mode()  # ray.init sends the token only in token mode, which a token alone does not turn on
    if code == grpc.StatusCode.OK and scheme == "ray":
        raise UserError(f"{address!r} is a Ray head's GCS port, not a Ray Client server: give it as "
                        f"{host}:{port} (without ray://); ray:// is for the Ray Client port (default 10001)")
    if code == grpc.StatusCode.UNIMPLEMENTED and scheme == "":
        raise UserError(f"{address!r} speaks gRPC but is not a Ray head's GCS port (`ray start --head --port`, "
                        f"default 6379); if it is a Ray Client server (default port 10001) give ray://{host}:{port}")


def _token_mode() -> None:
    """Token mode for this process and the workers it starts (as `ray start` does when a token exists)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()  # sets RAY_AUTH_MODE=token and refreshes Ray's cached config
    except ImportError:
        os.environ["RAY_AUTH_MODE"] = "token"


def ray_token() -> tuple[tuple[tuple[str, str], ...], str | None]:
    """(gRPC metadata, where the token came from) for the token Ray would send; ((), None) without one."""
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:
        return (), None
    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the environment may have changed since Ray read it
    try:
        if not loader.has_token(ignore_auth_mode=True):
            return (), None
        headers = loader.get_token_for_http_header(ignore_auth_mode=True)
    finally:
        loader.reset_cache()  # ray.init reads it afresh, under its own auth mode
    source = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
              os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
    return tuple(headers.items()), source


# -- Ray's own output ---------------------------------------------------------------------------------------
class RayLog:
    """Where Ray's own lines go while this process uses Ray: a log file, or the terminal with `verbose`.

    `start()` before ray.init (connection warnings come from there), `settle(ray)` after it: the file moves
    into the session's log folder, Ray's Python loggers and its printed error messages are pointed at it.
    fd 2 is redirected only where it is this process's real stderr (a CLI run), and Python's `sys.stderr`
    is reopened on the terminal, so convladder's own warnings still show.
    """

    _redirected: Path | None = None  # process-wide: fd 2 is redirected once
    _terminal: int | None = None  # a duplicate of the original fd 2 while it is redirected

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.path: Path | None = None

    def start(self) -> None:
        if self.verbose:
            return
        if RayLog._redirected is not None and RayLog._redirected.exists():
            self.path = RayLog._redirected
            return
        folder = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"convladder-driver-{os.getpid()}.log"
        if sys.stderr is sys.__stderr__ and _fileno(sys.stderr) == 2:
            sys.stderr.flush()
            saved = os.dup(2)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 2)  # Ray's C++ core writes here
            os.close(fd)
            sys.stderr = io.TextIOWrapper(io.FileIO(saved, "w"), encoding=sys.__stderr__.encoding or "utf-8",
                                          errors="backslashreplace", line_buffering=True)
            RayLog._redirected, RayLog._terminal = self.path, saved

    def settle(self, ray) -> None:
        """After ray.init: move the file into Ray's session log folder; route Ray's Python-level output to it."""
        if self.verbose or self.path is None:
            return
        try:
            logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
            target = logs / self.path.name
            if target != self.path:
                if self.path.exists():
                    os.replace(self.path, target)  # the open fd 2 follows the file
                if RayLog._redirected == self.path:
                    RayLog._redirected = target
                self.path = target
        except Exception:  # noqa: BLE001 - Ray Client mode has no local node: the file stays where it is
            pass
        self.route_loggers()
        log_path = self.path

        def to_log(data, ignore_prefix=False) -> None:  # Ray prints node deaths etc. on the driver's stdout
            with open(log_path, "a", encoding="utf-8") as out:
                out.writelines(f"({data.get('pid', 'ray')}) {line}\n" for line in data.get("lines", []))

        ray._private.worker.print_to_stdstream = to_log

    def route_loggers(self) -> None:
        """Ray's Python loggers (ray, ray.tune, ...) write to the log file, not the terminal; again after Tune loads."""
        if self.verbose or self.path is None:
            return
        root = logging.getLogger("ray")
        for name, logger in [("ray", root)] + [(n, logging.getLogger(n)) for n in list(logging.root.manager.loggerDict)
                                               if n.startswith("ray.")]:
            for handler in list(logger.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    logger.removeHandler(handler)
            if name != "ray":
                logger.propagate = True
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == str(self.path) for h in root.handlers):
            handler = logging.FileHandler(self.path)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)
        root.propagate = False

    def discard_if_empty(self) -> None:
        """After a failed start: fd 2 back on the terminal, and no empty log file left in Ray's temporary folder."""
        if self.path is None:
            return
        if RayLog._redirected == self.path and RayLog._terminal is not None:
            sys.stderr.flush()
            os.dup2(RayLog._terminal, 2)
            sys.stderr = sys.__stderr__  # the wrapper over the duplicate is dropped (and closes it)
            RayLog._redirected = RayLog._terminal = None
        try:
            if self.path.stat().st_size == 0:
                self.path.unlink()
                self.path = None
        except OSError:
            pass

    def note(self) -> str:
        """' (Ray's own log lines: PATH)' when they were kept out of the output, else ''."""
        return f" (Ray's own log lines: {self.path})" if self.path else ""


def _fileno(stream) -> int:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return -1
