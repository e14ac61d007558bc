"""`boomerang forget`: consent withdrawal: the images go from the run folder; only their count is recorded."""

from __future__ import annotations

import argparse


def cmd_forget(args: argparse.Namespace) -> int:
    from pipeline.release.forget import forget, read_ids

    ids = read_ids(args.ids) if args.ids else []
    done = forget(args.dir, ids, args.identity)
    print(
        f"Forgot {done.images} images ({done.files} files, {done.rows} table rows removed); "
        f"{done.not_found} of the given ids or names matched no image of this run."
    )
    if done.images:
        print("Remove them from the input as well: a run over an input that still holds them makes them again.")
    return 0
