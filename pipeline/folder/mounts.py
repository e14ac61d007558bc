"""Which filesystem a local path is on, from the mount table (/proc/self/mountinfo): a run folder on a network or
FUSE filesystem (NFS, SMB, a FUSE-mounted bucket, ...) gets an `flock` that may not keep out a job on another
machine, so the lock (pipeline.folder.lock) needs to know."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"

# Filesystems shared between machines, where an OS lock taken on one machine may not be seen on another.
# FUSE ones (fuse.s3fs, fuse.gcsfuse, fuse.sshfs, fuse.mount-s3, ...) count too, except fuseblk (a local disk
# through a FUSE driver, e.g. NTFS).
NETWORK = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs"}
    | {"orangefs", "9p", "davfs", "fuse"}
)


@dataclass(frozen=True)
class Mount:
    point: str  # where it is mounted, unescaped
    fstype: str  # e.g. "ext4", "nfs4", "fuse.s3fs"

    @property
    def shared(self) -> bool:
        """Whether this is a network or FUSE filesystem (see NETWORK)."""
        kind = self.fstype
        return kind in NETWORK or kind.startswith(("nfs", "smb", "fuse.")) and kind != "fuseblk"


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a mountinfo text, in its order (a later mount on the same point hides an earlier one).

    A line is: id, parent id, major:minor, root, mount point, options, optional fields..., "-", fstype,
    source, super options; the mount point escapes space, tab, newline and backslash as octal (\\040...).
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if len(fields) <= separator + 1 or len(fields) < 5:
            continue
        mounts.append(Mount(_unescape(fields[4]), fields[separator + 1]))
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount an absolute path is on: the longest mount point that is the path or a folder above it; of
    mounts on the same point, the last."""
    best: Mount | None = None
    for mount in mounts:
        point = mount.point.rstrip("/") or "/"
        inside = point == "/" or path == point or path.startswith(point + "/")
        if inside and (best is None or len(point) >= len(best.point.rstrip("/") or "/")):
            best = mount
    return best


def shared_mount(path: str | os.PathLike, mountinfo: str | None = None) -> Mount | None:
    """The network or FUSE mount a local path is on, None when it is on a local filesystem (or the mount table
    cannot be read: not Linux). `mountinfo`: the table's text, read from /proc when None."""
    if mountinfo is None:
        try:
            with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as handle:
                mountinfo = handle.read()
        except OSError:
            return None
    mount = mount_of(os.path.realpath(os.fspath(path)), parse_mountinfo(mountinfo))
    return mount if mount is not None and mount.shared else None


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
