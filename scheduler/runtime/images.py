"""Images: named stacks of read-only layer directories under ``<state>/images``.

``<images>/<name>/layers/0`` is the bottom layer; ``manifest.json`` records the layer count
and where each came from. An image is built in a hidden directory next to its final place
and renamed into it, so a reader sees the whole image or none of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from scheduler.errors import ImageError, ImageNotFound
from scheduler.names import NAME, NAME_SHAPE

# The tenant name rule (scheduler/names.py; the jobs.image CHECK too): a single safe
# directory name.
NAME_FORMAT = NAME
MANIFEST = "manifest.json"
LAYERS = "layers"
_INCOMING = ".incoming"


def check_name(name: str) -> str:
    """Validate an image name (it becomes a directory name); return it."""
    if not NAME_FORMAT.match(name):
        raise ImageError(
            f"image name {name!r} is invalid: names match {NAME_SHAPE} (no dots, no slashes)"
        )
    return name


@dataclass(frozen=True)
class ImageInfo:
    """One image as ``scheduler images list`` shows it."""

    name: str
    layers: int
    sources: tuple[str, ...]
    created: float
    size_bytes: int


def _tree_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(
            f"{what} failed ({argv[0]} exited {result.returncode}): {result.stderr.strip()}"
        )


def _fill_layer(source: Path, layer: Path) -> None:
    """Copy a directory, or unpack a tarball, into the (existing, empty) ``layer``."""
    if source.is_dir():
        # cp -a keeps owners, modes, links, device nodes and xattrs: a root filesystem.
        _run(["cp", "-a", "--", f"{source}/.", str(layer)], f"copying {source}")
    elif source.is_file() and tarfile.is_tarfile(source):
        # GNU tar drops leading '/' and refuses members with '..': nothing lands outside.
        _run(["tar", "-xpf", str(source), "-C", str(layer)], f"unpacking {source}")
    else:
        raise ImageError(f"layer source {source} is neither a directory nor a tarball")


class ImageStore:
    """The images of one node."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        """Where image ``name`` lives (validated: always directly under the root)."""
        return self.root / check_name(name)

    def add(self, name: str, sources: list[Path]) -> ImageInfo:
        """Build image ``name`` from ``sources`` (bottom layer first), atomically."""
        target = self.path(name)
        if not sources:
            raise ImageError("an image needs at least one layer (a directory or a tarball)")
        missing = [str(s) for s in sources if not s.exists()]
        if missing:
            raise ImageError(f"layer source not found: {', '.join(missing)}")
        if target.exists():
            raise ImageError(f"image {name!r} already exists at {target}")
        incoming = self.root / _INCOMING
        incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
        build = incoming / f"{name}-{uuid.uuid4().hex[:8]}"
        try:
            build.mkdir(mode=0o755)
            for index, source in enumerate(sources):
                layer = build / LAYERS / str(index)
                layer.mkdir(parents=True, mode=0o755)
                _fill_layer(source.resolve(), layer)
            manifest = {
                "name": name,
                "layers": len(sources),
                "sources": [str(s.resolve()) for s in sources],
                "created": time.time(),
            }
            (build / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            try:
                build.rename(target)  # refuses a non-empty target: first writer wins
            except OSError as exc:
                raise ImageError(f"image {name!r} already exists at {target}") from exc
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        return self.info(name)

    def info(self, name: str) -> ImageInfo:
        """One image's manifest and size."""
        path = self.path(name)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError as exc:
            raise ImageNotFound(f"image {name!r} not found on this node (in {self.root})") from exc
        except (OSError, ValueError) as exc:
            raise ImageError(f"image {name!r}: unreadable manifest: {exc}") from exc
        return ImageInfo(
            name=name,
            layers=int(manifest["layers"]),
            sources=tuple(manifest.get("sources", ())),
            created=float(manifest.get("created", 0)),
            size_bytes=_tree_size(path / LAYERS),
        )

    def all(self) -> list[ImageInfo]:
        """Every complete image, by name."""
        if not self.root.is_dir():
            return []
        names = sorted(p.name for p in self.root.iterdir() if NAME_FORMAT.match(p.name))
        return [self.info(n) for n in names if (self.root / n / MANIFEST).is_file()]

    def layers(self, name: str) -> tuple[Path, ...]:
        """The image's layer directories, top first (overlayfs' lowerdir order)."""
        info = self.info(name)
        base = self.path(name) / LAYERS
        layers = tuple(base / str(i) for i in reversed(range(info.layers)))
        for layer in layers:
            if not layer.is_dir():
                raise ImageError(f"image {name!r} is damaged: layer {layer} is missing")
        return layers
