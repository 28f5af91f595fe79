"""The shard manifest (`manifest.json`, format `hip-shards/1`): typed, read and written here only.

On disk the manifest is JSON with these keys, in this order: `format`, `tool`,
`tool_version`, `created`, `task`, `label_names`, `num_classes`, `modalities`, `targets`,
`splits`; each split has `num_samples`, `shards` (each `name`, `count`, `bytes`, `sha256`),
`skipped`, `source`, `options`, `fingerprint`, `created`. :meth:`Manifest.to_json` writes
exactly that (`json.dumps(indent=1)` + newline), so a manifest read and written again gives
the same bytes. Keys this version does not know are kept and written after the known ones.
Older manifests that name a split's sample count `count` read as `num_samples`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hip import storage
from hip.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "hip-shards/1"


@dataclass
class ShardInfo:
    """One tar shard of a split: its file name, sample count, size and sha256."""

    name: str
    count: int
    bytes: int
    sha256: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardInfo:
        """A shard entry of `manifest.json`."""
        return cls(
            name=data["name"],
            count=int(data.get("count", 0)),
            bytes=data.get("bytes", 0),
            sha256=data.get("sha256", ""),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this shard (key order as on disk)."""
        return {"name": self.name, "count": self.count, "bytes": self.bytes, "sha256": self.sha256}


_SPLIT_KEYS = ("num_samples", "shards", "skipped", "source", "options", "fingerprint", "created")


@dataclass
class SplitInfo:
    """One split: its sample count, shards, skipped inputs, source, options and fingerprint."""

    num_samples: int
    shards: list[ShardInfo] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SplitInfo:
        """A split entry of `manifest.json` (an old `count` key reads as `num_samples`)."""
        shards = [ShardInfo.from_json(s) for s in data.get("shards") or []]
        n = data.get("num_samples")
        if n is None:
            n = data.get("count")
        if n is None:
            n = sum(s.count for s in shards)
        return cls(
            num_samples=int(n),
            shards=shards,
            skipped=list(data.get("skipped") or []),
            source=dict(data.get("source") or {}),
            options=dict(data.get("options") or {}),
            fingerprint=data.get("fingerprint"),
            created=data.get("created"),
            extra={k: v for k, v in data.items() if k not in _SPLIT_KEYS and k != "count"},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this split (key order as on disk)."""
        return {
            "num_samples": self.num_samples,
            "shards": [s.to_dict() for s in self.shards],
            "skipped": self.skipped,
            "source": self.source,
            "options": self.options,
            "fingerprint": self.fingerprint,
            "created": self.created,
            **self.extra,
        }


_MANIFEST_KEYS = (
    "format", "tool", "tool_version", "created", "task", "label_names", "num_classes",
    "modalities", "targets", "splits",
)  # fmt: skip


@dataclass
class Manifest:
    """A shard set: task, label names, per-modality specs, targets and splits; `root` is where.

    `root` (the folder or s3:// prefix of the shards) is not stored in the file: it is where
    the manifest was read from or written to.
    """

    task: str
    label_names: list[str]
    modalities: dict[str, dict[str, Any]]
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None  # as stored; None: len(label_names)
    format: str = FORMAT
    tool: str = "hip"
    tool_version: str = ""
    created: str = ""
    root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    def __post_init__(self) -> None:
        if self.num_classes is None:
            self.num_classes = len(self.label_names)

    @classmethod
    def from_json(cls, data: dict[str, Any], root: str | None = None) -> Manifest:
        """The parsed `manifest.json` object (the format is checked by :func:`read_manifest`)."""
        return cls(
            format=data.get("format", FORMAT),
            tool=data.get("tool", "hip"),
            tool_version=data.get("tool_version", ""),
            created=data.get("created", ""),
            task=data.get("task") or "classification",
            label_names=list(data.get("label_names") or []),
            num_classes=data.get("num_classes"),
            modalities=dict(data.get("modalities") or {}),
            targets=dict(data.get("targets") or {}),
            splits={k: SplitInfo.from_json(v) for k, v in (data.get("splits") or {}).items()},
            root=root,
            extra={k: v for k, v in data.items() if k not in _MANIFEST_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `manifest.json` (key order as on disk; no `root`)."""
        return {
            "format": self.format,
            "tool": self.tool,
            "tool_version": self.tool_version,
            "created": self.created,
            "task": self.task,
            "label_names": self.label_names,
            "num_classes": self.num_classes,
            "modalities": self.modalities,
            "targets": self.targets,
            "splits": {k: v.to_dict() for k, v in self.splits.items()},
            **self.extra,
        }

    def to_json(self) -> str:
        """The text of `manifest.json`."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"

    def write(self, output: str, s3: storage.S3Config | None = None) -> str:
        """Write `manifest.json` into `output` (a folder or s3:// prefix); sets `root`."""
        uri = storage.join(output, MANIFEST)
        storage.write_bytes(uri, self.to_json().encode(), s3)
        self.root = str(output)
        return uri

    def split(self, name: str) -> SplitInfo:
        """The split `name`; a UserError naming the splits there are when it is missing."""
        if name not in self.splits:
            raise UserError(f"split {name!r} not in the manifest (have: {sorted(self.splits)})")
        return self.splits[name]

    def shard_urls(self, split: str) -> list[str]:
        """Full paths/URIs of a split's shards, in manifest order."""
        return [storage.join(str(self.root), s.name) for s in self.split(split).shards]


def manifest_uri(path: str | Path) -> tuple[str, str]:
    """`(uri of manifest.json, root of the shards)` for a folder, s3:// prefix or manifest path."""
    path = str(path)
    if path.endswith(".json"):
        root = path.rsplit("/", 1)[0] if storage.is_s3(path) else str(Path(path).parent)
        return path, root
    return storage.join(path, MANIFEST), path


def read_manifest(path: str | Path, s3: storage.S3Config | None = None) -> Manifest:
    """Load `manifest.json` from a directory, an s3:// prefix, or the manifest's own path.

    The returned manifest's `root` is the location of the shards.
    """
    uri, root = manifest_uri(path)
    try:
        data = json.loads(storage.read_bytes(uri, s3))
    except FileNotFoundError as exc:
        raise UserError(f"no manifest at {uri}: run `hip shard` first") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"manifest {uri} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{uri} is not a {FORMAT} manifest")
    return Manifest.from_json(data, root)


def task_type(name: str | None) -> Any:
    """The registered task type a data set's labels are stored for (`hip.task`), or None."""
    from hip.task import get_task, task_names

    return get_task(name) if name in task_names() else None
