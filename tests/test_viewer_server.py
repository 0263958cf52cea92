"""viewer/server.py in-process (aiohttp's test client, no port): the access token, opening networks (a refused pickle
is a sentence, and the server goes on), the file browser's bounds, rendering over the WebSocket, and a capture that
equals gen_images.py's PNG byte for byte, with the command line that writes it."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from helpers import tiny_stylegan2, tiny_stylegan3

import gen_images
from viewer.render import ViewError
from viewer.server import ViewerConfig, make_app, view_from_json

TOKEN = "test-token"


def write_snapshot(path: Path, G: torch.nn.Module) -> str:
    torch.manual_seed(0)
    G.mapping.w_avg.copy_(torch.randn_like(G.mapping.w_avg))
    with open(path, "wb") as f:
        pickle.dump({"G": G.eval(), "D": None, "G_ema": G.eval(), "augment_pipe": None, "training_set_kwargs": {}}, f)
    return str(path)


@pytest.fixture(scope="module")
def browse_dir(tmp_path_factory) -> Path:
    """A folder of runs: runs/00000-a with two snapshots, a lone StyleGAN3 pickle, a planted pickle, and a link out."""
    root = tmp_path_factory.mktemp("browse")
    run = root / "runs" / "00000-a"
    run.mkdir(parents=True)
    write_snapshot(run / "network-snapshot-000000.pkl", tiny_stylegan2(16, c_dim=2))
    write_snapshot(run / "network-snapshot-000004.pkl", tiny_stylegan2(16, c_dim=2))
    write_snapshot(root / "sg3.pkl", tiny_stylegan3(16))
    (root / "planted.pkl").write_bytes(b'\x80\x04cos\nsystem\n(S"echo planted"\ntR.')
    os.symlink("/", root / "escape")
    return root


def run(test, browse_dir: Path, capture_dir: Path):
    """Run `test(client)` against a fresh app, authenticated by its cookie."""

    async def main():
        config = ViewerConfig(device=torch.device("cpu"), token=TOKEN, browse_dir=browse_dir, capture_dir=capture_dir)
        async with TestClient(TestServer(make_app(config))) as client:
            response = await client.get(f"/?token={TOKEN}", allow_redirects=False)
            assert response.status == 302 and response.headers["Location"] == "/"
            await test(client)

    asyncio.run(main())


def test_every_route_needs_the_token(tmp_path, browse_dir):
    async def main():
        config = ViewerConfig(device=torch.device("cpu"), token=TOKEN, capture_dir=tmp_path)
        async with TestClient(TestServer(make_app(config))) as client:
            for path in ("/", "/static/app.js", "/api/state", "/api/browse", f"/?token={TOKEN}x"):
                response = await client.get(path)
                assert response.status == 403 and "open the URL it printed" in await response.text(), path
            response = await client.post("/api/open", json={"network": str(browse_dir / "sg3.pkl")})
            assert response.status == 403
            # The token in the address moves into a cookie; the page then loads without it.
            response = await client.get(f"/?token={TOKEN}", allow_redirects=False)
            assert response.status == 302 and response.cookies["ganforge-viewer-token"].value == TOKEN
            page = await client.get("/")
            assert page.status == 200 and "/static/app.js" in await page.text()
            assert (await client.get("/static/../server.py")).status in (403, 404)
            assert (await client.get("/static/index.html")).status == 404  # Only the listed assets.

    asyncio.run(main())


def test_a_refused_pickle_is_a_sentence_and_the_server_goes_on(tmp_path, browse_dir):
    async def test(client):
        answer = await (await client.post("/api/open", json={"network": str(browse_dir / "planted.pkl")})).json()
        assert "asks for the global os.system" in answer["error"] and "nothing from the file was run" in answer["error"]
        answer = await (await client.post("/api/open", json={"network": str(tmp_path / "missing.pkl")})).json()
        assert "missing.pkl" in answer["error"]
        # A run directory means its newest snapshot.
        info = await (await client.post("/api/open", json={"network": str(browse_dir / "runs" / "00000-a")})).json()
        assert info["path"].endswith("network-snapshot-000004.pkl")
        assert info["c_dim"] == 2 and info["num_ws"] == 6 and not info["can_transform"] and info["has_noise"]
        assert [layer["name"] for layer in info["layers"]][:3] == ["b4.conv1", "b4.torgb", "b8.conv0"]
        state = await (await client.get("/api/state")).json()
        assert state["recent"] == [str(browse_dir / "runs" / "00000-a")] and state["browse"]

    run(test, browse_dir, tmp_path)


def test_the_browser_never_leaves_the_browse_dir(tmp_path, browse_dir):
    async def test(client):
        listing = await (await client.get("/api/browse")).json()
        assert [f["name"] for f in listing["folders"]] == ["runs"] and listing["parent"] is None
        assert [s["name"] for s in listing["snapshots"]] == ["planted.pkl", "sg3.pkl"]
        runs = await (await client.get("/api/browse", params={"path": "runs"})).json()
        [run_dir] = runs["folders"]
        assert run_dir["newest"].endswith("network-snapshot-000004.pkl") and runs["parent"] == ""
        for outside in ("..", "runs/../..", "/etc", "escape", "escape/etc"):
            answer = await (await client.get("/api/browse", params={"path": outside})).json()
            assert "only folders under --browse-dir" in answer["error"], outside

    run(test, browse_dir, tmp_path)


def decode_png(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    with PIL.Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as image:
        return np.array(image)


def test_views_render_over_the_websocket_and_a_bad_one_is_named(tmp_path, browse_dir):
    async def test(client):
        path = (await (await client.post("/api/open", json={"network": str(browse_dir / "sg3.pkl")})).json())["path"]
        async with client.ws_connect("/api/render") as socket:
            await socket.send_json({"id": 1, "network": path, "view": {"x": 1, "layer": "L2_36_32", "channels": [0]}})
            answer = await socket.receive_json(timeout=60)
            assert answer["id"] == 1 and decode_png(answer["image"]).shape == (16, 16, 3)
            assert decode_png(answer["layer_image"]).shape == (36, 36) and answer["stats"]["max"] > 0
            await socket.send_json({"id": 2, "network": path, "view": {"psi": 5}})
            assert (await socket.receive_json(timeout=60)) == {"id": 2, "error": "psi: 5 is outside -1..2"}
            # A burst: every answer that comes is for a newer view than the one before, and the last view's comes.
            for request_id in range(3, 13):
                await socket.send_json({"id": request_id, "network": path, "view": {"x": request_id}})
            ids = [(await socket.receive_json(timeout=60))["id"]]
            while ids[-1] != 12:
                ids.append((await socket.receive_json(timeout=60))["id"])
            assert ids == sorted(ids) and len(ids) <= 10

    run(test, browse_dir, tmp_path)


@pytest.mark.parametrize(
    "network, view",
    [
        ("sg3.pkl", {"x": 17, "y": 2, "psi": 0.6, "translate": [0.2, -0.05], "rotate_deg": 12.5}),
        ("runs/00000-a", {"x": 4, "class_idx": None, "noise_mode": "none"}),  # Class drawn from the seed.
    ],
)
def test_a_capture_equals_gen_images_and_says_its_command(tmp_path, browse_dir, network, view):
    capture_dir = tmp_path / "captures"

    async def test(client):
        path = (await (await client.post("/api/open", json={"network": str(browse_dir / network)})).json())["path"]
        answer = await (await client.post("/api/capture", json={"network": path, "view": view})).json()
        captured = Path(answer["file"])
        assert captured.parent == capture_dir and captured.name.endswith("-0001.png")
        args = shlex.split(answer["command"])
        assert args[:2] == ["python", "gen_images.py"] and args[-1] == "--outdir=out"
        outdir = tmp_path / "out"
        result = CliRunner().invoke(gen_images.main, [*args[2:-1], f"--outdir={outdir}", "--device=cpu"])
        assert result.exit_code == 0, result.output
        [written] = outdir.iterdir()
        assert written.read_bytes() == captured.read_bytes()
        # Between seeds there is no such command, and the answer says why.
        answer = await (await client.post("/api/capture", json={"network": path, "view": {**view, "x": 4.5}})).json()
        assert answer["command"] is None and "between seeds" in answer["why_not"]

    run(test, browse_dir, capture_dir)


@pytest.mark.parametrize(
    "data, words",
    [
        ([], "view: expected a JSON object"),
        ({"zoom": 2}, "view: unknown controls zoom"),
        ({"psi": "high"}, "psi: expected a number, got 'high'"),
        ({"x": True}, "x: expected a number, got True"),
        ({"noise_seed": 1.5}, "noise_seed: expected a whole number, got 1.5"),
        ({"translate": [1]}, "translate: expected [x, y], got [1]"),
        ({"mix_layers": "0-3"}, "mix_layers: expected a list of indices"),
        ({"normalize": 1}, "normalize: expected true or false, got 1"),
        ({"layer": 3}, "layer: expected text, got 3"),
    ],
)
def test_the_page_json_is_checked_like_options(data, words):
    with pytest.raises(ViewError) as error:
        view_from_json(data)
    assert words in str(error.value)


def test_a_full_view_reads_back():
    view = view_from_json(
        {"x": 1, "y": 2.5, "cutoff": None, "class_idx": 3, "mix_layers": [0, 2], "translate": [0.5, 0], "scale": 2}
    )
    assert (view.x, view.y, view.class_idx, view.mix_layers, view.translate, view.scale) == (
        1.0,
        2.5,
        3,
        (0, 2),
        (0.5, 0.0),
        2.0,
    )


def test_a_failing_render_is_a_message_and_the_tab_goes_on(tmp_path, browse_dir, monkeypatch):
    from viewer.render import Renderer

    real_render = Renderer.render

    def render(self, view):
        if view.x == 13:
            raise RuntimeError("out of memory (pretend)")
        return real_render(self, view)

    monkeypatch.setattr(Renderer, "render", render)

    async def test(client):
        path = (await (await client.post("/api/open", json={"network": str(browse_dir / "sg3.pkl")})).json())["path"]
        async with client.ws_connect("/api/render") as socket:
            await socket.send_str("[1, 2]")
            assert "expected a JSON object" in (await socket.receive_json(timeout=60))["error"]
            await socket.send_json({"id": 1, "network": path, "view": {"x": 13}})
            answer = await socket.receive_json(timeout=60)
            assert answer == {"id": 1, "error": "rendering failed: RuntimeError: out of memory (pretend)"}
            await socket.send_json({"id": 2, "network": path, "view": {"x": 12}})
            assert decode_png((await socket.receive_json(timeout=60))["image"]).shape == (16, 16, 3)

    run(test, browse_dir, tmp_path)
