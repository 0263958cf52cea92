"""The visualizer's web server: the page and a small JSON + WebSocket API over viewer.render, on aiohttp.

Every route needs the access token: the printed URL carries it (`/?token=...`) and the first visit moves it into a
cookie, as Jupyter does. Nothing slow runs on the event loop: networks load in a thread, and one thread renders
(viewer.worker.RenderQueue: the newest view of each tab, older ones dropped).

    GET  /                 the page (viewer/static/index.html)
    GET  /static/NAME      its script and style, shipped in the package
    GET  /api/state        networks opened so far (newest first), whether browsing and capturing are possible
    POST /api/open         {"network": PKL|URL|RUN_DIR} -> the network's description, or {"error": sentence}
    GET  /api/browse?path= the folders and snapshots under --browse-dir
    GET  /api/render       WebSocket: {"id", "network", "view"} in, renderings (or {"error"}) out
    POST /api/capture      {"network", "view"} -> a PNG written into --capture-dir, and the gen_images.py command
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hmac
import itertools
import json
import logging
import os
import secrets
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import torch
from aiohttp import WSMsgType, web

import dnnlib
from torch_utils import images
from training import legacy
from viewer.networks import NetworkError, Networks, gen_images_command, seed_of
from viewer.render import View, ViewError
from viewer.worker import RenderQueue

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = ("app.js", "app.css")  # Served under /static/; nothing else is.
COOKIE = "ganforge-viewer-token"
MAX_REQUEST_BYTES = 64 * 1024  # A view or a path is a few hundred bytes.


@dataclasses.dataclass
class ViewerConfig:
    """What the server serves."""

    device: torch.device
    token: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(24))
    browse_dir: Path | None = None  # The file browser shows this folder and what is under it; None: no browser.
    capture_dir: Path = Path("captures")  # Captured PNGs go here, under generated names.


CONFIG = web.AppKey("config", ViewerConfig)
NETWORKS = web.AppKey("networks", Networks)
QUEUE = web.AppKey("queue", RenderQueue)
CAPTURES = web.AppKey("captures", itertools.count)

# The View's fields by the JSON type they take.
_FLOATS = ("x", "y", "psi", "rotate_deg", "gain_db", "fft_beta", "fft_range_db")
_INTS = ("noise_seed", "mix_seed")
_OPTIONAL_INTS = ("cutoff", "class_idx")
_BOOLS = ("force_fp32", "normalize")
_INT_LISTS = ("mix_layers", "channels")


def view_from_json(data: Any) -> View:
    """A View from the page's JSON object; a missing field takes its default, anything else wrong is a ViewError."""
    if not isinstance(data, dict):
        raise ViewError("view: expected a JSON object")
    known = {field.name for field in dataclasses.fields(View)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ViewError(f"view: unknown controls {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in _FLOATS or (name == "scale" and value is not None):
            values[name] = _number(name, value)
        elif name in _INTS or (name in _OPTIONAL_INTS and value is not None):
            values[name] = _integer(name, value)
        elif name in _BOOLS:
            if not isinstance(value, bool):
                raise ViewError(f"{name}: expected true or false, got {value!r}")
            values[name] = value
        elif name in _INT_LISTS:
            if not isinstance(value, list) or len(value) > 64:
                raise ViewError(f"{name}: expected a list of indices, got {value!r}")
            values[name] = tuple(_integer(name, v) for v in value)
        elif name == "translate":
            if not isinstance(value, list) or len(value) != 2:
                raise ViewError(f"translate: expected [x, y], got {value!r}")
            values[name] = (_number(name, value[0]), _number(name, value[1]))
        elif name in ("noise_mode", "layer"):
            if not (isinstance(value, str) or (name == "layer" and value is None)):
                raise ViewError(f"{name}: expected text, got {value!r}")
            values[name] = value
        else:  # scale, cutoff or class_idx: None.
            values[name] = None
    return View(**values)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ViewError(f"{name}: expected a number, got {value!r}")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ViewError(f"{name}: expected a whole number, got {value!r}")
    return value


def make_app(config: ViewerConfig, networks: Networks | None = None) -> web.Application:
    """The aiohttp application; `networks` may come pre-opened (the command line's)."""
    networks = networks or Networks(config.device)
    queue = RenderQueue(lambda request: _render(networks, *request))
    app = web.Application(middlewares=[_require_token(config.token)], client_max_size=MAX_REQUEST_BYTES)
    app[CONFIG], app[NETWORKS], app[QUEUE], app[CAPTURES] = config, networks, queue, itertools.count(1)
    app.on_cleanup.append(lambda _app: asyncio.to_thread(queue.close, 30))
    app.add_routes(
        [
            web.get("/", _page),
            web.get("/static/{name}", _static),
            web.get("/api/state", _state),
            web.post("/api/open", _open),
            web.get("/api/browse", _browse),
            web.get("/api/render", _render_socket),
            web.post("/api/capture", _capture),
        ]
    )
    return app


def _require_token(token: str):
    @web.middleware
    async def middleware(request: web.Request, handler):
        given = request.query.get("token")
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            if request.method == "GET" and request.path == "/":  # Into the cookie, out of the address bar.
                response = web.HTTPFound("/")
                response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
                raise response
            return await handler(request)
        if hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), token.encode()):
            return await handler(request)
        raise web.HTTPForbidden(
            text="This visualizer needs its access token: open the URL it printed (http://HOST:PORT/?token=...).\n"
        )

    return middleware


async def _page(request: web.Request) -> web.Response:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_FILES:  # A fixed list: no path from the request reaches the file system.
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-store"})


async def _state(request: web.Request) -> web.Response:
    config: ViewerConfig = request.app[CONFIG]
    return web.json_response(
        {
            "recent": request.app[NETWORKS].recent,
            "browse": config.browse_dir is not None,
            "capture_dir": str(config.capture_dir),
            "device": str(config.device),
        }
    )


async def _open(request: web.Request) -> web.Response:
    body = await _json_body(request)
    value = body.get("network")
    if not isinstance(value, str):
        return web.json_response({"error": "network: give a snapshot pickle, a URL or a run directory"})
    try:
        info = await asyncio.to_thread(request.app[NETWORKS].open, value)
    except NetworkError as error:
        return web.json_response({"error": str(error)})
    return web.json_response(info)


async def _browse(request: web.Request) -> web.Response:
    config: ViewerConfig = request.app[CONFIG]
    if config.browse_dir is None:
        return web.json_response({"error": "browsing is off: start visualizer.py with --browse-dir=DIR"})
    relative = request.query.get("path", "")
    try:
        folder = inside(config.browse_dir, relative)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (ValueError, OSError) as error:
        return web.json_response({"error": f"browse: {relative or '.'}: {error}"})
    folders, snapshots = [], []
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir() and not _leaves(config.browse_dir, path):
            try:
                newest = legacy.newest_snapshot(str(path))
            except OSError:  # An unreadable folder is listed, without a newest snapshot.
                newest = None
            folders.append({"name": entry.name, "path": _relative(config.browse_dir, path), "newest": newest})
        elif entry.is_file() and entry.name.endswith(".pkl") and not _leaves(config.browse_dir, path):
            snapshots.append({"name": entry.name, "path": str(path)})
    parent = None if folder == config.browse_dir.resolve() else _relative(config.browse_dir, folder.parent)
    return web.json_response(
        {"folder": _relative(config.browse_dir, folder), "parent": parent, "folders": folders, "snapshots": snapshots}
    )


def inside(root: Path, relative: str) -> Path:
    """`root`/`relative` resolved, refused (ValueError) unless it stays inside `root`: no absolute paths, no "..",
    no symbolic link that leads out."""
    if os.path.isabs(relative) or ".." in Path(relative).parts:
        raise ValueError("only folders under --browse-dir can be browsed")
    path = (root / relative).resolve()
    if _leaves(root, path):
        raise ValueError("only folders under --browse-dir can be browsed")
    return path


def _leaves(root: Path, path: Path) -> bool:
    """Whether `path`, its links followed, lies outside `root`."""
    return not path.resolve().is_relative_to(root.resolve())


def _relative(root: Path, path: Path) -> str:
    relative = str(path.resolve().relative_to(root.resolve()))
    return "" if relative == "." else relative


async def _render_socket(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse(max_msg_size=MAX_REQUEST_BYTES, heartbeat=30)
    await socket.prepare(request)
    queue: RenderQueue = request.app[QUEUE]
    client = object()  # This tab.
    pending: set[asyncio.Task] = set()
    try:
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                continue
            task = asyncio.create_task(_answer(socket, queue, client, message.data))
            pending.add(task)
            task.add_done_callback(pending.discard)
    finally:
        queue.forget(client)
        for task in pending:
            task.cancel()
    return socket


async def _answer(socket: web.WebSocketResponse, queue: RenderQueue, client: object, text: str) -> None:
    """Render one request of a tab and send the result, unless a newer request of the tab replaced it."""
    request_id = None
    try:
        message = json.loads(text)
        if not isinstance(message, dict):
            raise ViewError("expected a JSON object with id, network and view")
        request_id = message.get("id")
        view = view_from_json(message.get("view", {}))
        network = message.get("network")
        if not isinstance(network, str):
            raise ViewError("network: open a network first")
        result = await asyncio.wrap_future(queue.submit(client, (network, view)))
    except (CancelledError, asyncio.CancelledError):
        return  # Replaced by a newer view of this tab, or the tab closed.
    except ValueError as error:  # ViewError, NetworkError, text that is no JSON: a sentence for the page.
        result = {"error": str(error)}
    except Exception as error:  # noqa: BLE001 - the page shows it, and the server goes on with the next view.
        logging.getLogger(__name__).exception("rendering failed")
        result = {"error": f"rendering failed: {type(error).__name__}: {error}"}
    if not socket.closed:
        await socket.send_json({"id": request_id, **result})


def _render(networks: Networks, network: str, view: View, for_capture: bool = False) -> Any:
    """On the render thread: render `view`; for the page, encoded as its JSON answer, else the Rendering itself."""
    rendering = networks.renderer(network).render(view)
    if for_capture:
        return rendering

    def data_url(array) -> str | None:
        if array is None:
            return None
        return "data:image/png;base64," + base64.b64encode(images.png_bytes(array)).decode()

    return {
        "image": data_url(rendering.image),
        "size": list(rendering.image.shape[:2]),
        "layer_image": data_url(rendering.layer_image),
        "spectrum_image": data_url(rendering.spectrum_image),
        "stats": rendering.stats,
        "layers": [{"name": x.name, "shape": list(x.shape), "dtype": x.dtype} for x in rendering.layers],
        "render_ms": 1000 * rendering.render_sec,
        "total_ms": 1000 * rendering.total_sec,
    }


async def _capture(request: web.Request) -> web.Response:
    """Write the view's image as gen_images.py would, under a generated name in --capture-dir."""
    config: ViewerConfig = request.app[CONFIG]
    networks: Networks = request.app[NETWORKS]
    body = await _json_body(request)
    try:
        view = dataclasses.replace(view_from_json(body.get("view", {})), layer=None)
        network = body.get("network")
        if not isinstance(network, str):
            raise ViewError("network: open a network first")
        # Rendered in turn with the tabs' views, on the render thread (a network is used by one thread at a time).
        future = request.app[QUEUE].submit(("capture", object()), (network, view, True))
        rendering = await asyncio.wrap_future(future)
        G = (await asyncio.to_thread(networks.renderer, network)).G
    except ValueError as error:
        return web.json_response({"error": str(error)})
    name = f"{Path(network).stem}-seed{seed_of(view):04d}-{next(request.app[CAPTURES]):04d}.png"
    path = config.capture_dir / name
    try:
        await asyncio.to_thread(os.makedirs, config.capture_dir, exist_ok=True)
        await asyncio.to_thread(images.write_png, rendering.image, str(path))
    except (OSError, dnnlib.util.WriteError) as error:
        return web.json_response({"error": f"capture: {error}"})
    command, why_not = gen_images_command(network, view, G)
    return web.json_response({"file": str(path), "command": command, "why_not": why_not})


async def _json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="expected a JSON object\n") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object\n")
    return body
