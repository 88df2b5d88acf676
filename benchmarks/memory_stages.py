"""Where W2's configuration-independent RSS goes: one process, RSS (GiB) after each stage
(Python, `import jax`, `import metax`, Omniglot loaded, the first meta-batch drawn, the
meta-step compiled, glibc's `malloc_trim`, two meta-steps), the process peak so far, and
whether TensorFlow is imported. One JSON line.

  python benchmarks/memory_stages.py
"""

import json
import resource
import sys

from memory import status_gb

STAGES = {}


def mark(name: str) -> None:
    peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    STAGES[name] = {
        "rss_gb": round(status_gb("VmRSS"), 3),
        "peak_gb": peak,
        "tensorflow": "tensorflow" in sys.modules,
    }


def main():
    mark("python")
    import jax
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()
    mark("import jax")
    from metax import data
    from metax.train.host_memory import release_freed_memory

    mark("import metax")
    from common import context, omniglot_images
    from suite import QUERIES, SHOTS, W2_TASKS, WAYS, workload

    images, source = omniglot_images()
    mark("omniglot loaded")
    maml, _ = workload("W2")
    sampler = data.fewshot(
        images, data.Episodes(ways=WAYS, shots=SHOTS, queries=QUERIES), rotations=True
    )
    batch = jax.block_until_ready(data.sample_meta_batch(sampler, jax.random.key(0), W2_TASKS))
    mark("first meta-batch drawn")
    state = maml.init(jax.random.key(0), batch)
    step = jax.jit(maml.meta_step, donate_argnums=0)
    compiled = step.lower(state, batch, jax.random.key(1)).compile()
    mark("meta-step compiled")
    release_freed_memory()
    mark("malloc_trim")
    for i in range(2):
        state = jax.block_until_ready(compiled(state, batch, jax.random.key(i))[0])
    mark("2 meta-steps")
    print(json.dumps({"workload": "W2", "stages": STAGES, "data": source, **context()}))


if __name__ == "__main__":
    main()
