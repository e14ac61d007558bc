"""Connect to Ray: an embedded local runtime by default, or a running cluster with --address."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    cpus: float
    gpus: float
    nodes: int
    started_here: bool


def connect(address: str | None) -> ClusterInfo:
    """Join `address` (or RAY_ADDRESS), reuse a runtime this process already has, or start a local one."""
    import ray

    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        options = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **options)
            started = True
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # our own progress line replaces Ray's bars
    context.print_on_execution_start = False
    # A failed job is reported in one line and its trace kept in run.json; Ray Data's own error log
    # would print the whole trace first.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return ClusterInfo(
        address=ray.get_runtime_context().gcs_address,
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        nodes=nodes,
        started_here=started,
    )


def disconnect(info: ClusterInfo | None) -> None:
    import ray

    if info is not None and info.started_here and ray.is_initialized():
        ray.shutdown()
