"""One process of a multi-process test run: a few meta-steps of each learner named, in
float64, results written by process 0 to OUT_DIR/<learner>.npz.

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR LEARNER...
"""

import os
import sys

from xla_flags import with_device_count

os.environ["XLA_FLAGS"] = with_device_count(4)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # See test_multihost.py for why.
import metax_test_learners  # noqa: E402
import numpy as np  # noqa: E402

process_id, num_processes, port, out_dir, *learner_names = sys.argv[1:]
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=int(num_processes),
    process_id=int(process_id),
    initialization_timeout=60,
)
for name in learner_names:
    params, metrics = metax_test_learners.run(name, devices=jax.devices())
    if jax.process_index() == 0:
        np.savez(os.path.join(out_dir, f"{name}.npz"), params=params, **metrics)
jax.distributed.shutdown()
