"""The whole training loop against its compiled meta-step: steps/s of `metax.train.train`
end to end (logging, checkpoints, the divergence guard, host visits) with one meta-step per
device call (the default) and with ``steps_per_call = log_every``, against the compiled
step (and multi-step) alone, called back to back with nothing else. One JSON line per row.

End-to-end speeds are marginal: the difference of two runs' wall times (``--short`` and
``--long`` steps, same schedule) over their difference in steps, so compilation, start-up and
the final evaluation cancel.

Rows:
  loop_W1  the default experiment's step (configs/maml_sinusoid.gin: MLP 1-40-40-1, 25
           sinusoid tasks, 1 inner step, second order, Adam 1e-3; log_every 1,000,
           checkpoint_every 10,000).
  loop_W2  conv4 5-way 1-shot Omniglot-sized tasks, 32 per step, second order (suite.py's
           W2), log_every 10.

  python benchmarks/loop.py [--rows loop_W1,loop_W2]
"""

import argparse
import json
import tempfile
import time

import jax
import numpy as np
import optax
from common import context, omniglot_images

from metax import data, energy, learner, meta_models, nn
from metax.train import (
    Checkpoints,
    Evaluation,
    TrainConfig,
    make_multi_step,
    make_train_step,
    sharding,
    train,
)

ROWS = {
    # name: (steps of the short and long runs, log_every, meta_batch_size)
    "loop_W1": ((2_000, 12_000), 1_000, 25),
    "loop_W2": ((4, 14), 10, 32),
}


def setup(name, images):
    if name == "loop_W1":
        maml = learner.maml(
            meta_models.learned_init(nn.mlp([40, 40], 1)), optax.sgd(0.01), optax.adam(1e-3), 1
        )
        return maml, data.sinusoid()
    model = nn.sequential(body=nn.conv4(64, pooling="max"), head=nn.linear(5))
    maml = learner.maml(
        meta_models.learned_init(model, loss_fn=energy.cross_entropy),
        optax.sgd(0.4),
        optax.adam(1e-3),
        num_inner_steps=1,
    )
    return maml, data.fewshot(images, data.Episodes(ways=5, shots=1, queries=15), rotations=True)


def end_to_end(name, images, steps_per_call) -> float:
    """Marginal steps/s of `train` between the short and the long run."""
    (short, long), log_every, batch = ROWS[name]
    seconds = []
    for num_steps in (short, long):
        maml, sampler = setup(name, images)
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            config = TrainConfig(
                learner=maml,
                train_sampler=sampler,
                meta_batch_size=batch,
                num_steps=num_steps,
                log_every=log_every,
                evaluation=Evaluation(every=10**9, num_tasks=batch, inner_steps=(1,)),
                checkpoints=Checkpoints(every=10 * log_every),
                steps_per_call=steps_per_call,
            )
            train(config, workdir, verbose=False)
            seconds.append(time.perf_counter() - start)
    return (long - short) / (seconds[1] - seconds[0])


def compiled_steps_alone(name, images, steps_per_call: int) -> float:
    """Steps/s of the compiled step (``steps_per_call = 1``) or multi-step called back to
    back, nothing else in the loop but waiting for the call before the last."""
    (short, long), log_every, batch = ROWS[name]
    maml, sampler = setup(name, images)
    mesh = sharding.task_mesh()
    init, step = make_train_step(maml, sampler, batch, mesh, 0)
    if steps_per_call == 1:
        run = step
    else:
        multi = make_multi_step(maml, sampler, batch, mesh, 0, steps_per_call)
        run = lambda state: multi(state, np.int32(steps_per_call))  # noqa: E731
    state, metrics = run(init())  # Compiles.
    jax.block_until_ready(state)
    calls = (long - short) // steps_per_call
    start = time.perf_counter()
    for _ in range(calls):
        previous = metrics
        state, metrics = run(state)
        # As the loop does: at most two calls in flight (an unbounded queue is slower on a
        # 2-core CPU, where dispatching competes with computing).
        jax.block_until_ready(previous)
    jax.block_until_ready((state, metrics))
    return calls * steps_per_call / (time.perf_counter() - start)


def row(name, images, source) -> dict:
    """One row: the three speeds and their ratios."""
    log_every = ROWS[name][1]
    per_step = end_to_end(name, images, steps_per_call=1)
    per_interval = end_to_end(name, images, steps_per_call=log_every)
    alone = compiled_steps_alone(name, images, 1)
    alone_multi = compiled_steps_alone(name, images, log_every)
    return {
        "workload": name,
        "steps_per_s": {
            "train_1_step_per_call": round(per_step, 2),
            "train_log_every_steps_per_call": round(per_interval, 2),
            "compiled_step_alone": round(alone, 2),
            "compiled_multi_step_alone": round(alone_multi, 2),
        },
        "speedup_of_steps_per_call": round(per_interval / per_step, 2),
        "train_over_compiled_alone": round(per_step / alone, 3),
        "log_every": ROWS[name][1],
        "data": "sinusoid" if name == "loop_W1" else source,
        **context(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="loop_W1,loop_W2")
    args = parser.parse_args()
    names = args.rows.split(",")
    images, source = omniglot_images() if "loop_W2" in names else (None, None)
    for name in names:
        print(json.dumps(row(name, images, source)), flush=True)


if __name__ == "__main__":
    main()
