"""Run a job on a two-node Ray cluster on this machine, reading its input from and writing its run folder
to an object store (the S3 server named by the AWS_* environment variables).

Run as a script (its own Ray runtime, apart from the test session's, whose workers were started before the
test set the S3 environment): prints one JSON line with the exit status and the number of nodes.
"""

import json
import sys

import ray
from ray.cluster_utils import Cluster

from pipeline.cli import main

data, out, model, deepface_home = sys.argv[1:5]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
cluster.add_node(num_cpus=2)
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
    "2",
    "--eval-batch-size",
    "2",
    "--recognizers",
    "Facenet",
    "--detector",
    "skip",
    "--deepface-home",
    deepface_home,
]
status = main(argv)
print(json.dumps({"status": status, "nodes": len(ray.nodes())}))
ray.shutdown()
cluster.shutdown()
