"""Which block devices io limits are written for.

Both io.max (v2) and blkio.throttle.* (v1) take one rule per whole disk ("MAJ:MIN"): the
kernel refuses partitions (blkg_conf_open_bdev). By default the rules go to the disk that
holds the state directory (where jobs' output lands); ``io_devices`` names others.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from scheduler.errors import ConfigError

_DEVICE = re.compile(r"^[0-9]+:[0-9]+$")


def parse_devices(text: str) -> tuple[str, ...]:
    """``"254:0, 8:16"`` -> ("254:0", "8:16"); anything else is a ConfigError."""
    devices = tuple(d.strip() for d in text.split(",") if d.strip())
    for device in devices:
        if not _DEVICE.match(device):
            raise ConfigError(f"io_devices: {device!r} is not MAJ:MIN (see lsblk)")
    return devices


def disk_of(path: Path, sys_root: Path = Path("/sys")) -> str | None:
    """The whole disk ("MAJ:MIN") holding ``path``, or None for a file system without one
    (tmpfs, overlay: major 0)."""
    st_dev = path.stat().st_dev
    major, minor = os.major(st_dev), os.minor(st_dev)
    if major == 0:
        return None
    node = sys_root / "dev" / "block" / f"{major}:{minor}"
    if not node.exists():
        return None
    real = node.resolve()
    if (real / "partition").exists():
        # A partition: the disk is its parent in sysfs (/sys/block/sda/sda1).
        return (real.parent / "dev").read_text().strip()
    return f"{major}:{minor}"


def io_devices(configured: str, state_dir: Path) -> tuple[str, ...]:
    """The configured devices, else the disk of the state directory (none if it has none)."""
    if configured.strip():
        return parse_devices(configured)
    disk = disk_of(state_dir)
    return (disk,) if disk else ()
