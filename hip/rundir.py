"""A run's folder (`run.out`): a local path, or an `s3://bucket/prefix` shared by every host.

Checkpoints and small records are written straight to their place through `hip.storage`.
Files that grow while the run goes (`metrics.jsonl`) or come as a folder (evaluation
reports) are written in a local working copy and pushed at checkpoints and at the end, so
a run on S3 leaves nothing on the host that another host would need. For a local
`run.out` the working copy is `run.out` itself and pushing does nothing.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from hip import storage


def scratch_root() -> Path:
    """Where remote runs keep their local working copies: `$HIP_SCRATCH`, else the temp dir."""
    return Path(os.environ.get("HIP_SCRATCH") or Path(tempfile.gettempdir()) / "hip-runs")


def normalize(location: str | os.PathLike) -> str:
    """An s3:// URI unchanged (without a trailing /); a local path made absolute."""
    text = str(location)
    if storage.is_s3(text):
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


class RunFolder:
    """One run's folder: `uri` (where it lives) and `local` (where files are written first)."""

    def __init__(self, location: str | os.PathLike):
        self.uri = normalize(location)
        self.remote = storage.is_s3(self.uri)
        if self.remote:
            digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
            self.local = scratch_root() / f"{self.uri.rsplit('/', 1)[-1]}-{digest}"
        else:
            self.local = Path(self.uri)

    def __repr__(self) -> str:
        return f"RunFolder({self.uri!r})"

    def join(self, *names: str) -> str:
        """The location of `names` inside the run folder (an S3 URI or a local path)."""
        out = self.uri
        for name in names:
            out = storage.join(out, name)
        return out

    def local_path(self, *names: str) -> Path:
        """The working copy of `names` (its parent folder is created)."""
        path = self.local.joinpath(*names)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def fetch(self, name: str) -> Path:
        """The working copy of file `name`, downloaded first when the run lives on S3."""
        path = self.local_path(name)
        if self.remote:
            where = self.join(name)
            if storage.exists(where):
                storage.atomic_write_bytes(path, storage.read_bytes(where))
            else:
                path.unlink(missing_ok=True)
        return path

    def push(self, name: str) -> str:
        """Upload the working copy of a file or folder `name` (S3 runs); returns its location."""
        where = self.join(name)
        if not self.remote:
            return where
        path = self.local / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            rel = f.relative_to(self.local).as_posix()
            storage.write_bytes(self.join(*rel.split("/")), f.read_bytes())
        return where

    def push_all(self) -> str:
        """Upload every file of the working copy (S3 runs); returns the folder's location."""
        if self.remote and self.local.is_dir():
            for f in sorted(p for p in self.local.rglob("*") if p.is_file()):
                storage.write_bytes(self.join(*f.relative_to(self.local).parts), f.read_bytes())
        return self.uri


def run_of_checkpoint(checkpoint: str) -> str:
    """The run folder of a checkpoint at `<run.out>/checkpoints/<name>` (local or S3)."""
    text = str(checkpoint).rstrip("/")
    if storage.is_s3(text):
        return text.rsplit("/", 2)[0]
    return str(Path(text).expanduser().resolve().parent.parent)
