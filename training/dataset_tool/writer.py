"""Output: written into a temporary sibling of --dest and renamed into place only when complete."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import click

from torch_utils import stop_signals
from training.dataset_tool.config import is_nonempty


class DatasetWriter:
    """Writes files into DEST.tmp-*, a zip or a folder next to DEST, and moves it to DEST on commit()."""

    def __init__(self, dest: Path, force: bool) -> None:
        self.dest = dest
        self.force = force
        self.is_zip = dest.suffix.lower() == ".zip"
        self.tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
        self._archive: zipfile.ZipFile | None = None
        self.committed = False  # The output is in place at DEST.
        self._created_dirs: list[Path] = []  # Parents of DEST this run made, removed again if it fails.

    def open(self) -> None:
        """Create DEST's missing parent folders and the empty temporary output."""
        missing = [parent for parent in self.dest.parents if not parent.exists()]
        for parent in reversed(missing):
            parent.mkdir()
            self._created_dirs.append(parent)
        if self.is_zip:
            # Stored, not deflated: PNG is already compressed, so deflate would only cost CPU on every read.
            self._archive = zipfile.ZipFile(self.tmp, "x", compression=zipfile.ZIP_STORED)
        else:
            self.tmp.mkdir()

    def add(self, name: str, data: bytes) -> None:
        """Write one file, e.g. '00000/img00000000.png', into the output."""
        if self._archive is not None:
            # A fixed timestamp makes the zip byte-identical when the same source is converted again.
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3  # Unix, on every OS, so the permission bits below mean the same everywhere.
            info.external_attr = 0o644 << 16
            self._archive.writestr(info, data, compress_type=zipfile.ZIP_STORED)
        else:
            path = self.tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def commit(self) -> None:
        """Move the finished output to DEST, replacing an old DEST only now (and only with force)."""
        if self._archive is not None:
            self._archive.close()
            self._archive = None
        if not os.path.lexists(self.dest):
            os.rename(self.tmp, self.dest)
            self.committed = True
            return
        if is_nonempty(self.dest) and not self.force:  # Appeared while we were converting.
            raise click.ClickException(f"--dest {self.dest} appeared while converting; pass --force to replace it")
        # rename() cannot replace a non-empty folder, so move the old DEST aside first and restore it on failure.
        old = self.dest.with_name(f"{self.dest.name}.old-{os.getpid()}-{secrets.token_hex(3)}")
        os.rename(self.dest, old)
        try:
            os.rename(self.tmp, self.dest)
        except BaseException:
            os.rename(old, self.dest)
            raise
        self.committed = True
        remove_path(old)

    def discard(self) -> None:
        """Remove the temporary output and any parent folders this run created."""
        if self._archive is not None:
            with contextlib.suppress(Exception):
                self._archive.close()
            self._archive = None
        remove_path(self.tmp)
        for parent in reversed(self._created_dirs):
            with contextlib.suppress(OSError):
                parent.rmdir()  # Only if still empty.


def remove_path(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_dataset_writer(dest: Path, force: bool) -> Iterator[DatasetWriter]:
    """Yield a DatasetWriter; commit it if the block finishes, else (error, Ctrl-C, SIGTERM) leave nothing behind.
    A stop signal during the commit waits for it: moving the old --dest aside and the new one in must not be cut."""
    writer = DatasetWriter(dest, force)
    try:
        writer.open()
        yield writer
        with stop_signals.deferred():
            writer.commit()
    except BaseException as error:
        if not writer.committed:
            writer.discard()
        elif isinstance(error, stop_signals.Stopped):  # It came during the commit, which it waited for.
            error.complete = True
        raise
