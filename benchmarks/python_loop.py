"""The README loop two ways: tasks drawn inside the compiled step (`make_train_step`) against
tasks sampled on the host and passed to `jax.jit(learner.meta_step)`; MAML on sinusoid, 32
tasks, 1,000 meta-steps each. Prints one JSON line.

  python benchmarks/python_loop.py
"""

import json
import time

import jax
import optax

from metax import data, learner, meta_models, nn
from metax.train import make_train_step, sharding

sampler = data.sinusoid()
maml = learner.maml(
    meta_models.learned_init(nn.mlp([40, 40], 1)), optax.sgd(0.01), optax.adam(1e-3)
)
mesh = sharding.task_mesh()
init, train_step = make_train_step(maml, sampler, meta_batch_size=32, mesh=mesh, seed=0)
state = init()
state, m = train_step(state)
jax.block_until_ready(state)
t = time.perf_counter()
for _ in range(1000):
    state, m = train_step(state)
jax.block_until_ready(state)
fast = 1000 / (time.perf_counter() - t)
step = jax.jit(maml.meta_step)
state2 = maml.init(jax.random.key(1), data.sample_meta_batch(sampler, jax.random.key(0), 32))
b = data.sample_meta_batch(sampler, jax.random.key(0), 32)
state2, _ = step(state2, b, jax.random.key(2))
jax.block_until_ready(state2)
t = time.perf_counter()
for i in range(1000):
    b = data.sample_meta_batch(sampler, jax.random.fold_in(jax.random.key(0), i), 32)
    state2, _ = step(state2, b, jax.random.fold_in(jax.random.key(2), i))
jax.block_until_ready(state2)
host = 1000 / (time.perf_counter() - t)
print(
    json.dumps(
        {
            "in_jit_steps_per_s": round(fast),
            "host_sampled_steps_per_s": round(host),
            "ratio": round(fast / host, 1),
            "devices": jax.device_count(),
        }
    )
)
