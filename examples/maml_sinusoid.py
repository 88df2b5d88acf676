"""MAML on sinusoid regression: the 30-second tour of metax's functional API.

A meta-model (here `meta_models.learned_init`: MAML meta-learns the network's initialization) and a
learner (`learner.maml`, second order) are NamedTuples of pure functions. You own the loop:
sample a batch of tasks, call `meta_step`, repeat. Everything is jit-compiled; no gin, no
launcher. Prints the post-adaptation query loss on held-out tasks before and after
meta-training (and writes a figure of a few tasks with --figure).

  python examples/maml_sinusoid.py [--figure maml.png]     # ~30 s on a laptop CPU
"""

import argparse
import os

import jax
import optax

from metax import data, learner, meta_models, nn
from metax.train import figures

STEPS = int(os.environ.get("METAX_EXAMPLE_STEPS", 5000))  # The test sets a small number.


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", help="write a PNG of held-out tasks here")
    args = parser.parse_args()

    sampler = data.sinusoid()  # y = A sin(x - phi): 10 support + 10 query points per task
    meta_model = meta_models.learned_init(nn.mlp([40, 40], 1))
    maml = learner.maml(meta_model, optax.sgd(0.01), optax.adam(1e-3), num_inner_steps=1)

    # Every random draw from its own key: a run is reproducible from the seed.
    data_key, step_key, held_out_key, init_key, eval_key = jax.random.split(jax.random.key(0), 5)
    held_out = data.sample_meta_batch(sampler, held_out_key, 200)
    state = maml.init(init_key, held_out)

    @jax.jit
    def train_step(state, step):
        batch = data.sample_meta_batch(sampler, jax.random.fold_in(data_key, step), 25)
        return maml.meta_step(state, batch, jax.random.fold_in(step_key, step))

    def query_loss(state):  # Mean over held-out tasks, after 5 inner steps on each support set.
        return maml.evaluate(state, held_out, eval_key, 5)["loss"].mean()

    initial = query_loss(state)
    for step in range(STEPS):
        state, metrics = train_step(state, step)
        if step % 1000 == 0:
            print(f"step {step}: outer loss {metrics['outer/loss']:.3f}")
    print(f"post-adaptation query loss: {initial:.3f} -> {query_loss(state):.3f}")
    if args.figure:
        curves = figures.regression_curves(maml, state, sampler, held_out_key, 5)
        figures.save_png(figures.regression_figure(curves), args.figure)


if __name__ == "__main__":
    main()
