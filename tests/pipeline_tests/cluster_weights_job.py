"""Two jobs on a two-node Ray cluster on this machine, fed weights from an object store (`--weights-from`).

The head node (the driver's) runs no actors (0 CPUs); the other node has its own empty deepface folder and
Hugging Face cache (its raylet's environment), so its actors must fill them from the store. Then the same job
with the local weights and the first run's secret, for a byte comparison. Run as a script (its own Ray runtime,
with the S3 settings of the test in its environment): prints one JSON line with both exit statuses.
"""

import json
import sys

import ray
from ray.cluster_utils import Cluster

from pipeline.cli import main

store, data, staged, local, model_id, tiny_sd, deepface_home, node_home, node_hf = sys.argv[1:10]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
cluster.add_node(num_cpus=2, env_vars={"DEEPFACE_HOME": node_home, "HF_HUB_CACHE": node_hf})
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
common = ["--address", cluster.address, "--steps", "4", "--levels", "0.5", "--batch-size", "2"]
common += ["--eval-batch-size", "2", "--recognizers", "Facenet", "--detector", "skip"]
first = main(["run", data, "--out", staged, "--model", model_id, "--weights-from", store, *common])
second = main(
    ["run", data, "--out", local, "--model", tiny_sd, "--deepface-home", deepface_home, *common]
    + ["--secret-file", f"{staged}/private/secret"]
)
print(json.dumps({"status": [first, second], "nodes": len(ray.nodes())}))
ray.shutdown()
cluster.shutdown()
