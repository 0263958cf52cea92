"""Small utilities: an attribute dict, time and range formatting, and a caching URL opener."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, BinaryIO

# ----------------------------------------------------------------------------


class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes (`d.key` is `d['key']`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


# ----------------------------------------------------------------------------


def format_time(seconds: float) -> str:
    """Format a duration for logs: '42s', '3m 05s', '2h 03m', '1d 02h'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 60 * 60:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 24 * 60 * 60:
        return f"{s // (60 * 60)}h {(s // 60) % 60:02d}m"
    return f"{s // (24 * 60 * 60)}d {(s // (60 * 60)) % 24:02d}h"


def parse_range(s: str | list[int] | tuple[int, ...]) -> list[int]:
    """Parse a comma-separated list of integers and inclusive ranges: '0,1,4-6' -> [0, 1, 4, 5, 6].

    A list or tuple of ints is returned as a list unchanged, so click callbacks can call this twice.
    """
    if isinstance(s, (list, tuple)):
        return [int(v) for v in s]
    values = []
    for part in s.split(","):
        part = part.strip()
        match = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise ValueError(f"Bad range '{part}' in '{s}': the end is smaller than the start")
            values.extend(range(lo, hi + 1))
        elif re.fullmatch(r"-?\d+", part):
            values.append(int(part))
        else:
            raise ValueError(f"Cannot parse '{part}' in '{s}': expected integers and ranges such as '0,1,4-6'")
    return values


def parse_vec2(s: str | tuple[float, float]) -> tuple[float, float]:
    """Parse a pair of floats written 'a,b' (for example a translation '0.3,-0.1')."""
    if isinstance(s, tuple) and len(s) == 2:
        return float(s[0]), float(s[1])
    parts = str(s).split(",")
    if len(parts) != 2:
        raise ValueError(f"Cannot parse '{s}': expected two comma-separated numbers such as '0.5,-1'")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"Cannot parse '{s}': expected two comma-separated numbers such as '0.5,-1'") from None


# ----------------------------------------------------------------------------
# Downloads. Detector weights and published networks live at http(s) URLs; users on machines without network
# access place the files in the cache by hand, so every error says exactly which file is needed and where.


def get_cache_dir() -> str:
    """The download cache folder: `$DNNLIB_CACHE_DIR`, else `~/.cache/dnnlib`."""
    if os.environ.get("DNNLIB_CACHE_DIR"):
        return os.environ["DNNLIB_CACHE_DIR"]
    return os.path.join(os.path.expanduser("~"), ".cache", "dnnlib")


def is_url(obj: Any, allow_file_urls: bool = False) -> bool:
    """Whether `obj` is an http(s) URL (or also a file:// URL when `allow_file_urls`)."""
    if not isinstance(obj, str) or "://" not in obj:
        return False
    scheme = urllib.parse.urlparse(obj).scheme
    return scheme in ("http", "https") or (allow_file_urls and scheme == "file")


def url_cache_path(url: str, cache_dir: str | None = None) -> str:
    """Where `open_url` keeps (and looks for) the download of `url`: `<cache>/downloads/<md5>_<name>`."""
    cache_dir = cache_dir or get_cache_dir()
    url_md5 = hashlib.md5(url.encode("utf-8")).hexdigest()
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    name = re.sub(r"[^0-9A-Za-z._-]", "_", name)
    return os.path.join(cache_dir, "downloads", f"{url_md5}_{name}")


class DownloadError(OSError):
    """A URL could not be fetched and no cached copy exists; the message says how to provide the file."""


def open_url(
    url: str,
    cache_dir: str | None = None,
    num_attempts: int = 3,
    verbose: bool = True,
    return_filename: bool = False,
    cache: bool = True,
    timeout_s: float = 30.0,
) -> BinaryIO | str:
    """Open a local path, a file:// URL or an http(s) URL for binary reading.

    Args:
        url:             A local file path, `file://` URL or `http(s)://` URL.
        cache_dir:       Download cache; None means `get_cache_dir()`.
        num_attempts:    How many times to try a download before giving up.
        verbose:         Print a line when downloading.
        return_filename: Return the local file's path instead of an open file (needs a path, a file URL or
                         `cache=True`).
        cache:           Keep downloads in the cache and reuse them; False downloads into memory every time.
        timeout_s:       Network timeout per attempt, in seconds.

    Returns:
        An open binary file object, or a path when `return_filename`.

    Raises:
        FileNotFoundError: a local path or file URL that does not exist.
        DownloadError:     the download failed and the cache has no copy; the message names the URL, the cache
                           path and how to put the file there by hand.
    """
    assert num_attempts >= 1, "num_attempts must be at least 1"
    assert not (return_filename and not cache and is_url(url)), "return_filename needs cache=True for URLs"

    if not is_url(url, allow_file_urls=True):
        path = os.path.expanduser(url)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such file: '{url}'")
        return path if return_filename else open(path, "rb")

    if url.startswith("file://"):
        path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such file: '{path}' (from URL '{url}')")
        return path if return_filename else open(path, "rb")

    cache_path = url_cache_path(url, cache_dir)
    if cache and os.path.isfile(cache_path):
        return cache_path if return_filename else open(cache_path, "rb")

    data = _download(url, cache_path, num_attempts, verbose, timeout_s)
    if not cache:
        return io.BytesIO(data)
    _write_atomically(cache_path, data)
    return cache_path if return_filename else open(cache_path, "rb")


def _download(url: str, cache_path: str, num_attempts: int, verbose: bool, timeout_s: float) -> bytes:
    """Fetch `url` into memory, retrying; on failure raise a DownloadError that explains the manual fix."""
    last_error: Exception | None = None
    for attempt in range(num_attempts):
        if verbose:
            print(f"Downloading {url} ...", flush=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            last_error = error
            if 400 <= error.code < 500:
                break  # A client error (404, 403) will not go away by retrying.
        except (urllib.error.URLError, OSError) as error:
            last_error = error
        if attempt + 1 < num_attempts:
            time.sleep(min(2**attempt, 10))
    raise DownloadError(
        f"Could not download '{url}' ({last_error}).\n"
        f"No cached copy at '{cache_path}'.\n"
        f"If this machine is offline, download the file elsewhere and copy it to exactly that path "
        f"(or set $DNNLIB_CACHE_DIR to another cache folder that holds 'downloads/{os.path.basename(cache_path)}')."
    )


def _write_atomically(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, so readers never see half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
