"""``scheduler images add|list``: this node's images (layered root filesystems)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.cli.command import Command, Subparsers, add_common
from scheduler.cli.output import escape, out
from scheduler.names import NAME_SHAPE
from scheduler.units import format_bytes

if TYPE_CHECKING:
    from scheduler.config import Settings


def add_images(sub: Subparsers) -> None:
    images = sub.add_parser("images", help="manage this node's images (layered root filesystems)")
    add_common(images)
    images_sub = images.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    images_add = images_sub.add_parser(
        "add", help="build an image: scheduler images add NAME PATH... (bottom layer first)"
    )
    add_common(images_add)
    images_add.add_argument("name", help=f"the image's name ({NAME_SHAPE})")
    images_add.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="a directory or a tarball per read-only layer",
    )
    add_common(images_sub.add_parser("list", help="list the images of this node"))


async def cmd_images(settings: Settings, args: argparse.Namespace) -> int:
    import anyio

    from scheduler.runtime.images import ImageStore

    images = ImageStore(settings.paths.images_dir)
    if args.images_command == "add":
        info = await anyio.to_thread.run_sync(images.add, args.name, list(args.paths))
        found = [info]
    else:
        found = await anyio.to_thread.run_sync(images.all)
    data = [
        {"name": i.name, "layers": i.layers, "size_bytes": i.size_bytes, "sources": i.sources}
        for i in found
    ]
    human = "\n".join(
        f"{escape(i.name)}\t{i.layers} layer(s)\t{format_bytes(i.size_bytes)}" for i in found
    )
    out(args, data if args.images_command == "list" else data[0], human or "no images")
    return 0


IMAGES = Command("images", add_images, cmd_images, logs=True)
