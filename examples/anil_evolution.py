"""ANIL meta-learned by an evolution strategy (evosax's OpenES), without any meta-gradient.

`meta_models.anil` meta-learns a shared MLP body and the initialization of a linear head; each task
adapts only the head. `learner.evolution` searches the meta-parameters with a population of
perturbations whose fitness is the post-adaptation query loss - it works with any meta-model,
even one whose inner loop cannot be differentiated. Prints the post-adaptation query loss on
held-out tasks before and after meta-training.

  python examples/anil_evolution.py [--figure anil.png]
"""

import argparse
import os

import jax
import optax

from metax import data, learner, meta_models, nn
from metax.train import figures

STEPS = int(os.environ.get("METAX_EXAMPLE_STEPS", 3000))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", help="write a PNG of held-out tasks here")
    args = parser.parse_args()

    sampler = data.sinusoid()
    body = nn.mlp([40], 40, activate_final=True)
    meta_model = meta_models.anil(body, nn.linear(1))
    es = learner.evolution(
        meta_model,
        strategy="Open_ES",
        population_size=16,
        inner_optimizer=optax.sgd(0.01),
        num_inner_steps=1,
        strategy_kwargs={
            "optimizer": optax.adam(0.01),
            "std_schedule": optax.constant_schedule(0.05),
        },
    )

    data_key, step_key, held_out_key, init_key, eval_key = jax.random.split(jax.random.key(0), 5)
    held_out = data.sample_meta_batch(sampler, held_out_key, 200)
    state = es.init(init_key, held_out)  # MetaState: the strategy's state is its opt_state

    @jax.jit
    def train_step(state, step):
        batch = data.sample_meta_batch(sampler, jax.random.fold_in(data_key, step), 25)
        return es.meta_step(state, batch, jax.random.fold_in(step_key, step))

    def query_loss(state):
        return es.evaluate(state, held_out, eval_key, 1)["loss"].mean()

    initial = query_loss(state)
    for step in range(STEPS):
        state, _ = train_step(state, step)
    print(f"post-adaptation query loss: {initial:.3f} -> {query_loss(state):.3f}")
    if args.figure:
        curves = figures.regression_curves(es, state, sampler, held_out_key, 1)
        figures.save_png(figures.regression_figure(curves), args.figure)


if __name__ == "__main__":
    main()
