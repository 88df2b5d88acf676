"""Complex synapses meta-learned by equilibrium propagation (the contrastive meta-learning rule).

`meta_models.complex_synapse` gives each weight a meta-learned anchor omega and a meta-learned pull
strength lambda: a task minimizes its support loss plus sum lambda/2 (w - omega)^2. Equilibrium
propagation needs no derivative of the inner loop: it runs a free phase (support loss only)
and nudged phases (plus or minus beta times the query loss) and contrasts the energy's
partial derivatives in (omega, lambda) at their equilibria - the implicit gradient as
beta -> 0 (symmetric: with an O(beta^2) error). Prints the post-adaptation query loss on
held-out tasks before and after meta-training.

  python examples/compsyn_eqprop.py [--figure compsyn.png]
"""

import argparse
import os

import jax
import jax.numpy as jnp
import optax

from metax import data, learner, meta_models, nn
from metax.train import figures

STEPS = int(os.environ.get("METAX_EXAMPLE_STEPS", 2000))
INNER_STEPS = 100


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", help="write a PNG of held-out tasks here")
    args = parser.parse_args()

    sampler = data.sinusoid(amplitude_range=(0.1, 0.5))
    meta_model = meta_models.complex_synapse(
        nn.mlp([20], 1, activation=jnp.tanh), log_strength_init=0.0
    )
    eqprop = learner.eqprop(
        meta_model,
        inner_optimizer=optax.sgd(0.05),
        outer_optimizer=optax.adam(1e-3),
        num_inner_steps=INNER_STEPS,
        num_nudged_steps=50,
        beta=0.05,
        symmetric=True,
    )

    data_key, step_key, held_out_key, init_key, eval_key = jax.random.split(jax.random.key(0), 5)
    held_out = data.sample_meta_batch(sampler, held_out_key, 200)
    state = eqprop.init(init_key, held_out)

    @jax.jit
    def train_step(state, step):
        batch = data.sample_meta_batch(sampler, jax.random.fold_in(data_key, step), 25)
        return eqprop.meta_step(state, batch, jax.random.fold_in(step_key, step))

    def query_loss(state):
        return eqprop.evaluate(state, held_out, eval_key, INNER_STEPS)["loss"].mean()

    initial = query_loss(state)
    for step in range(STEPS):
        state, _ = train_step(state, step)
    print(f"post-adaptation query loss: {initial:.4f} -> {query_loss(state):.4f}")
    if args.figure:
        curves = figures.regression_curves(eqprop, state, sampler, held_out_key, INNER_STEPS)
        figures.save_png(figures.regression_figure(curves), args.figure)


if __name__ == "__main__":
    main()
