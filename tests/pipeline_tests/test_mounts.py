"""A local --out on a network or FUSE filesystem: the mount table read, and the lock refused without
--shared-filesystem-lock."""

from __future__ import annotations

import pytest

from pipeline.folder.lock import RunLock, run_lock
from pipeline.folder.lock_common import NetworkFilesystem
from pipeline.folder.mounts import parse_mountinfo, shared_mount

# The shape of /proc/self/mountinfo: optional fields (shared:N, master:N) before "-", escaped spaces.
SAMPLE = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
30 22 0:40 / /data rw,relatime shared:20 - nfs4 fileserver:/export/data rw,vers=4.2
31 30 8:17 / /data/scratch rw,relatime shared:21 - ext4 /dev/sdb1 rw
32 22 0:41 / /mnt/my\040bucket rw,nosuid,nodev shared:22 - fuse.s3fs s3fs rw,user_id=0
33 22 0:42 / /mnt/share rw - cifs //server/share rw
34 22 8:33 / /mnt/windows rw - fuseblk /dev/sdc1 rw
35 22 0:43 / /mnt/stacked rw - nfs server:/a rw
36 22 0:44 / /mnt/stacked rw master:3 - tmpfs tmpfs rw
37 22 0:45 / /home rw - ceph 10.0.0.1:6789:/ rw
"""


def test_the_mount_table_is_parsed_with_optional_fields_and_escapes():
    mounts = parse_mountinfo(SAMPLE)
    assert [(m.point, m.fstype) for m in mounts][:5] == [
        ("/", "ext4"),
        ("/proc", "proc"),
        ("/data", "nfs4"),
        ("/data/scratch", "ext4"),
        ("/mnt/my bucket", "fuse.s3fs"),
    ]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/work/run", None),  # the root's ext4
        ("/data/run", ("/data", "nfs4")),
        ("/data", ("/data", "nfs4")),
        ("/database/run", None),  # a prefix of the name, not a folder above it
        ("/data/scratch/run", None),  # a local disk mounted inside the NFS export: the longest point wins
        ("/mnt/my bucket/runs/a", ("/mnt/my bucket", "fuse.s3fs")),
        ("/mnt/share/run", ("/mnt/share", "cifs")),
        ("/mnt/windows/run", None),  # fuseblk: a local disk through a FUSE driver
        ("/mnt/stacked/run", None),  # the later mount on the same point hides the NFS one
        ("/home/me/run", ("/home", "ceph")),
    ],
)
def test_the_longest_mount_point_above_a_path_says_whether_it_is_shared(path, expected):
    mount = shared_mount(path, SAMPLE)
    assert (None if mount is None else (mount.point, mount.fstype)) == expected


def test_a_lock_on_a_network_filesystem_is_refused_in_one_line_unless_allowed(tmp_path):
    # tmp_path's real path, as this sample's NFS mount point.
    table = SAMPLE + f"40 22 0:50 / {tmp_path.resolve()} rw - nfs4 server:/x rw\n"
    lock_file = tmp_path / "run" / ".boomerang.lock"
    with pytest.raises(NetworkFilesystem, match=r"nfs4 at .*--shared-filesystem-lock") as refused:
        run_lock(lock_file, mountinfo=table)
    assert "\n" not in str(refused.value)
    assert type(run_lock(lock_file, shared_filesystem=True, mountinfo=table)) is RunLock
    # This machine's real table, where the test folder is on a local disk.
    if shared_mount(tmp_path) is None:
        assert type(run_lock(lock_file)) is RunLock
