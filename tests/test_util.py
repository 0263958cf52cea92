"""Tests for dnnlib: EasyDict, formatting and parsing helpers, and the caching URL opener."""

import http.server
import os
import pickle
import threading

import pytest

import dnnlib
from dnnlib import util


def test_easydict_attribute_access_and_pickle():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d["b"] == 2 and d.a == 1
    del d.a
    assert "a" not in d
    with pytest.raises(AttributeError):
        _ = d.missing
    assert pickle.loads(pickle.dumps(d)) == {"b": 2}


@pytest.mark.parametrize(
    "seconds, expected",
    [(0, "0s"), (42.4, "42s"), (185, "3m 05s"), (7380, "2h 03m"), (93600, "1d 02h")],
)
def test_format_time(seconds, expected):
    assert util.format_time(seconds) == expected


def test_parse_range():
    assert util.parse_range("0,1,4-6") == [0, 1, 4, 5, 6]
    assert util.parse_range("7") == [7]
    assert util.parse_range(" 2 - 3 , 10") == [2, 3, 10]
    assert util.parse_range([3, 1]) == [3, 1]
    with pytest.raises(ValueError, match="end is smaller"):
        util.parse_range("5-2")
    with pytest.raises(ValueError, match="'x'"):
        util.parse_range("1,x")


def test_parse_vec2():
    assert util.parse_vec2("0.5,-1") == (0.5, -1.0)
    assert util.parse_vec2((1, 2)) == (1.0, 2.0)
    for bad in ["1", "1,2,3", "a,b", "nan,0", "0,inf", "-inf,1"]:
        with pytest.raises(ValueError, match="two comma-separated finite numbers"):
            util.parse_vec2(bad)


def test_open_url_local_path_and_file_url(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00\x01payload")
    with util.open_url(str(path)) as f:
        assert f.read() == b"\x00\x01payload"
    with util.open_url(path.as_uri()) as f:
        assert f.read() == b"\x00\x01payload"
    assert util.open_url(path.as_uri(), return_filename=True) == str(path)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        util.open_url(str(tmp_path / "nope.bin"))


class _Server:
    """A loopback HTTP server over a folder, counting requests."""

    def __init__(self, root):
        server = self
        self.requests = 0

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802 (the name http.server dispatches to)
                server.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_open_url_downloads_caches_and_explains_offline_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "cache"))
    served = tmp_path / "served"
    served.mkdir()
    (served / "detector.pkl").write_bytes(b"detector weights")
    server = _Server(served)
    url = f"{server.url}/detector.pkl"
    try:
        with util.open_url(url, verbose=False) as f:
            assert f.read() == b"detector weights"
        cache_path = util.url_cache_path(url)
        assert cache_path.startswith(str(tmp_path / "cache"))
        assert open(cache_path, "rb").read() == b"detector weights"
        assert not [name for name in os.listdir(os.path.dirname(cache_path)) if name.startswith(".tmp-")]

        with util.open_url(url, verbose=False) as f:  # Served from the cache: no second request.
            assert f.read() == b"detector weights"
        assert server.requests == 1

        with util.open_url(url, verbose=False, cache=False) as f:  # cache=False always downloads.
            assert f.read() == b"detector weights"
        assert server.requests == 2

        with pytest.raises(util.DownloadError, match="404"):
            util.open_url(f"{server.url}/missing.pkl", verbose=False)
        assert server.requests == 3  # A 404 is not retried.
    finally:
        server.stop()

    # The server is gone: the cached copy still opens, an uncached URL fails with instructions.
    with util.open_url(url, verbose=False) as f:
        assert f.read() == b"detector weights"
    offline_url = f"{server.url}/lpips-vgg.pt"
    with pytest.raises(util.DownloadError) as excinfo:
        util.open_url(offline_url, verbose=False, num_attempts=1, timeout_s=2)
    message = str(excinfo.value)
    assert offline_url in message
    assert util.url_cache_path(offline_url) in message
    assert "copy it to exactly that path" in message
    assert not os.path.exists(util.url_cache_path(offline_url))


def test_cache_dir_default(monkeypatch):
    monkeypatch.delenv("DNNLIB_CACHE_DIR", raising=False)
    assert util.get_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "dnnlib")
