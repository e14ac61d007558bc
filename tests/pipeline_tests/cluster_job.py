"""Run a job on a two-node Ray cluster on this machine and lose the worker node part way.

Run as a script (its own Ray runtime, apart from the test session's): prints one JSON line.
`cluster_job.py DATA OUT MODEL DEEPFACE_HOME [more boomerang run options]`.
The worker node claims a logical GPU, so the anonymize actor (1 GPU by default where the cluster has
GPUs) is placed there. Once the first batch's manifest part lands (mid-shard: the job's one shard is not
compacted before its last pair), every Ray process of the worker node is SIGKILLed, its raylet and the
workers under it (the anonymize actor among them), as a node dies when its machine is lost; then a
replacement joins, as an autoscaler replaces a preempted node.
"""

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import ray
from jobs import alive, descendants, wait_for
from ray.cluster_utils import Cluster

from pipeline.cli import main

data, out, model, deepface_home = sys.argv[1:5]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
worker = cluster.add_node(num_cpus=2, num_gpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
argv = [
    "run",
    data,
    "--out",
    out,
    "--address",
    cluster.address,
    "--model",
    model,
    "--steps",
    "4",
    "--levels",
    "0.5",
    "--batch-size",
    "1",
    "--eval-batch-size",
    "1",
    "--recognizers",
    "Facenet",
    "--detector",
    "skip",
    "--deepface-home",
    deepface_home,
    *sys.argv[5:],
]
result = {}
thread = threading.Thread(target=lambda: result.setdefault("status", main(argv)))
thread.start()
manifest = Path(out) / "manifest.parquet"
deadline = time.monotonic() + 300
while time.monotonic() < deadline and not (manifest.is_dir() and any(manifest.glob("part-*.parquet"))):
    time.sleep(0.2)
parts_before = len(list(manifest.glob("part-*.parquet")))
raylet = worker.all_processes["raylet"][0].process.pid
node_processes = [raylet, *descendants(raylet)]  # the raylet and the workers it started
for pid in node_processes:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
cluster.remove_node(worker, allow_graceful=False)  # the node's other processes (its log monitor, ...)
wait_for(lambda: not any(alive(p) for p in node_processes), "the worker node's processes to end", 60)
cluster.add_node(num_cpus=2, num_gpus=1)
thread.join(timeout=400)
print(
    json.dumps(
        {
            "status": result.get("status"),
            "parts_before_loss": parts_before,
            "alive": thread.is_alive(),
            "killed": len(node_processes),
        }
    )
)
ray.shutdown()
cluster.shutdown()
