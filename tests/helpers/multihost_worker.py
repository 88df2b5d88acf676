"""One process of a multi-process test run: a few meta-steps of each learner named, in
float64, results written by process 0 to OUT_DIR/<learner>.npz.

  python tests/helpers/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR LEARNER...
"""

import os
import sys

# A script: the checkout on the path, for the tests' helpers package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.helpers.xla_flags import with_device_count  # noqa: E402

os.environ["XLA_FLAGS"] = with_device_count(4)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # See test_multihost.py for why.
import numpy as np  # noqa: E402

from tests.helpers import learners  # noqa: E402

process_id, num_processes, port, out_dir, *learner_names = sys.argv[1:]
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=int(num_processes),
    process_id=int(process_id),
    initialization_timeout=60,
)
for name in learner_names:
    params, metrics = learners.run(name, devices=jax.devices())
    if jax.process_index() == 0:
        np.savez(os.path.join(out_dir, f"{name}.npz"), params=params, **metrics)
jax.distributed.shutdown()
