"""Run a job on a two-node Ray cluster on this machine and lose the worker node part way.

Run as a script (its own Ray runtime, apart from the test session's): prints one JSON line.
The worker node claims a logical GPU, so the anonymize actor (1 GPU by default where the cluster has
GPUs) is placed there; the node is removed once the first results land, and a replacement joins, as
an autoscaler replaces a preempted node.
"""

import json
import sys
import threading
import time
from pathlib import Path

import ray
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
    "10",
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
]
result = {}
thread = threading.Thread(target=lambda: result.setdefault("status", main(argv)))
thread.start()
manifest = Path(out) / "manifest.parquet"
deadline = time.monotonic() + 300
while time.monotonic() < deadline and not (manifest.is_dir() and any(manifest.glob("part-*.parquet"))):
    time.sleep(0.2)
parts_before = len(list(manifest.glob("part-*.parquet")))
cluster.remove_node(worker)
cluster.add_node(num_cpus=2, num_gpus=1)
thread.join(timeout=400)
print(json.dumps({"status": result.get("status"), "parts_before_loss": parts_before, "alive": thread.is_alive()}))
ray.shutdown()
cluster.shutdown()
