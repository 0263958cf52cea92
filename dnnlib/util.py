"""Small utilities: an attribute dict, time and range formatting, finite-number option types, atomic file
writes and a caching URL opener."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import math
import os
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import click

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
    message = f"Cannot parse '{s}': expected two comma-separated finite numbers such as '0.5,-1'"
    if len(parts) != 2:
        raise ValueError(message)
    try:
        values = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(message) from None
    if not all(math.isfinite(value) for value in values):  # float() accepts 'nan' and 'inf'.
        raise ValueError(message)
    return values


class FiniteFloatRange(click.FloatRange):
    """`click.FloatRange` that also refuses NaN and +-inf, which float() accepts and every range check lets pass
    (NaN compares false with any bound), e.g. `--gamma=nan` would silently turn R1 off. Without bounds it is a
    finite float."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        """The bounds for --help, e.g. 'x>=0'; empty without bounds (click would show 'x<=None')."""
        if self.min is None and self.max is None:
            return ""
        return super()._describe_range()


class BoolParamType(click.ParamType):
    """A yes/no option value: 1/0, true/false, yes/no, on/off, t/f or y/n, in any case.

    Declare options with `bool_option`, so the option may also be given alone (`--fp32` means `--fp32=1`, also just
    before another option) while the published `--fp32=1` spelling keeps working. Unlike `click.BOOL` it refuses an
    empty value, and its error lists only what it accepts.
    """

    name = "boolean"
    TRUE = ("1", "true", "yes", "on", "t", "y")
    FALSE = ("0", "false", "no", "off", "f", "n")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in self.TRUE or word in self.FALSE:
            return word in self.TRUE
        pairs = ", ".join(f"{yes}/{no}" for yes, no in zip(self.TRUE, self.FALSE, strict=True))
        self.fail(f"{value!r} is not a yes/no value. Use {pairs} (any case), or the option alone for 1.", param, ctx)

    def __repr__(self) -> str:
        return "BOOL"


BOOL = BoolParamType()


def bool_option(*names: str, **kwargs: Any) -> Callable:
    """A click option of type BOOL that may also be given alone, meaning 1 (`--mirror` = `--mirror=1`)."""
    return click.option(*names, metavar="BOOL", type=BOOL, is_flag=False, flag_value=True, **kwargs)


# ----------------------------------------------------------------------------
# Atomic writes. Every file the toolkit writes (snapshots, training states, logs rewritten on resume, image grids,
# caches, downloads) appears complete or not at all: it is written to a temporary file in the same folder, flushed
# to the disk, renamed over the target, and the folder entry is flushed too, so even a power loss cannot leave a
# truncated file or lose the rename. Temporary files are named `.tmp-XXXXXXXX-<target name>`.

TEMP_PREFIX = ".tmp-"
# Our temporary files: 8 random characters, then the target's name. The second form is what metrics caches of
# earlier versions left behind (`.tmp-XXXXXXXX.npz`).
TEMP_NAME_PATTERN = re.compile(r"\.tmp-[0-9a-z_]{8}(-.+|\.npz)")
# A writer rewrites its temporary file's modification time with every block it writes, so one untouched this long
# belongs to a writer that was killed (or is hung beyond recovery) and is removed by the next write to its folder.
STALE_TEMP_AGE_S = 10 * 60


class WriteError(OSError):
    """A file could not be written (disk full, read-only or missing folder); the message names the file and the
    fix, and no temporary file is left behind."""


def describe_write_failure(path: str, error: BaseException) -> str:
    """The sentence for a failed write of `path`: what happened, the likely causes and what to do."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    folder = os.path.dirname(os.path.abspath(path))
    return (
        f"Could not write {path} ({reason}). The disk may be full, or {folder} is not writable; free some space or "
        f"fix the folder's permissions, then run the command again. No partial file was left."
    )


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path` to write by name; on success it is flushed and renamed to `path`.

    For writers that need a path (video encoders); `atomic_write` is the usual form. See `_atomic_file` for the
    permissions, the flushing and the removal of stale temporary files.

    Raises:
        WriteError: an OSError while creating, writing, flushing or renaming; the temporary file is removed.
    """
    with _atomic_file(path) as (tmp_path, fd):
        os.close(fd)
        yield tmp_path
        fd = os.open(tmp_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            os.fsync(fd)  # fsync flushes the file's data whichever descriptor it is called through.
        finally:
            os.close(fd)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` on a temporary binary file next to `path`, then flush it to the disk and rename it over
    `path`, so readers never see half a file. Errors other than OSError from `write` propagate unchanged.

    Raises:
        WriteError: creating, writing or renaming failed (disk full, read-only folder); the message names `path`.
    """
    with _atomic_file(path) as (_, fd), os.fdopen(fd, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())  # The data must be on the disk before the rename makes it the real file.


@contextlib.contextmanager
def _atomic_file(path: str) -> Iterator[tuple[str, int]]:
    """Create a temporary file next to `path` and yield (its path, an open descriptor); when the body has written
    and flushed it, rename it over `path` and flush the folder.

    The file is created as `open()` creates files, with mode 0666 minus the umask (tempfile.mkstemp would make it
    0600 whatever the umask). After a successful write, stale temporary files of killed writers in the folder are
    removed (`remove_stale_temp_files`). On any error the temporary file is removed, and an OSError becomes a
    WriteError that names `path`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        for _ in range(100):
            tmp_path = os.path.join(folder, f"{TEMP_PREFIX}{secrets.token_hex(4)}-{os.path.basename(path)}")
            try:
                fd = os.open(tmp_path, flags, 0o666)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary file name", folder)
    except OSError as error:
        raise WriteError(describe_write_failure(path, error)) from error
    try:
        yield tmp_path, fd
        os.replace(tmp_path, path)
        _fsync_folder(folder)  # The rename lives in the folder's entries, which a power loss could otherwise lose.
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp_path)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(describe_write_failure(path, error)) from error
        raise
    remove_stale_temp_files(folder)


def remove_stale_temp_files(folder: str, max_age_s: float = STALE_TEMP_AGE_S) -> list[str]:
    """Remove our temporary files (`TEMP_NAME_PATTERN`) in `folder` not modified for `max_age_s` seconds.

    A live writer keeps touching its file, so only the leftovers of killed writers go; other files, including
    other programs' `.tmp-*` names, are never touched. Best effort: a file that vanished or cannot be removed is
    skipped. Returns the removed paths.
    """
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not TEMP_NAME_PATTERN.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > max_age_s:
                os.remove(entry.path)
                removed.append(entry.path)
        except OSError:  # Removed meanwhile by another process, or not ours to remove.
            continue
    return removed


def _fsync_folder(folder: str) -> None:
    """Flush a folder's entries (a rename) to the disk, where the platform and file system support it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open folders; renames there are flushed by the file system.
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # Some file systems cannot sync folders.
            raise
    finally:
        os.close(fd)


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
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    atomic_write(cache_path, lambda f: f.write(data))
    return cache_path if return_filename else open(cache_path, "rb")


def _download(url: str, cache_path: str, num_attempts: int, verbose: bool, timeout_s: float) -> bytes:
    """Fetch `url` into memory, retrying; on failure raise a DownloadError that explains the manual fix."""
    last_error: Exception | None = None
    if verbose:
        print(f"Downloading {url} ...", flush=True)
    for attempt in range(1, num_attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            last_error = error
            if 400 <= error.code < 500:
                break  # A client error (404, 403) will not go away by retrying.
        except (urllib.error.URLError, OSError) as error:
            last_error = error
        if attempt < num_attempts:
            delay_s = min(2 ** (attempt - 1), 10)
            if verbose:
                message = f"  Attempt {attempt} of {num_attempts} failed: {last_error}; retrying in {delay_s} s."
                print(message, flush=True)
            time.sleep(delay_s)
    tries = f" after {attempt} attempts" if attempt > 1 else ""
    raise DownloadError(
        f"Could not download '{url}'{tries} ({last_error}).\n"
        f"No cached copy at '{cache_path}'.\n"
        f"If this machine is offline, download the file elsewhere and copy it to exactly that path "
        f"(or set $DNNLIB_CACHE_DIR to another cache folder that holds 'downloads/{os.path.basename(cache_path)}')."
    )
