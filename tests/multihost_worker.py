"""One process of a multi-process test run: N meta-steps of a learner, results from process 0.

python tests/multihost_worker.py LEARNER PROCESS_ID NUM_PROCESSES PORT OUT.npz
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import metax_test_learners  # noqa: E402
import numpy as np  # noqa: E402

learner_name, process_id, num_processes, port, out = sys.argv[1:6]
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=int(num_processes),
    process_id=int(process_id),
    initialization_timeout=60,
)
params, metrics = metax_test_learners.run(learner_name, devices=jax.devices())
if jax.process_index() == 0:
    np.savez(out, params=params, **metrics)
jax.distributed.shutdown()
