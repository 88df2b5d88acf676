"""Your own model and your own loss in a metax learner: nothing to subclass.

A model is any pair of pure functions `init(rng, sample) -> (params, state)` and
`apply(params, state, rng, x, *, is_training) -> (y, state)`; a loss is any
`loss(predictions, targets, mask=None) -> (value, metrics)`. Here: a random-Fourier-feature
regressor written by hand, and a Huber loss, meta-learned with first-order MAML (swap in any
learner: they all take a meta-model built from such pieces). Prints the post-adaptation query
loss on held-out tasks before and after meta-training.

  python examples/custom_model.py [--figure custom.png]
"""

import argparse
import os

import jax
import jax.numpy as jnp
import optax

from metax import data, learner, meta_models, nn
from metax.train import figures

STEPS = int(os.environ.get("METAX_EXAMPLE_STEPS", 3000))
NUM_FEATURES = 64


def fourier_features(num_features: int) -> nn.Model:
    """``y = w . cos(x * freq + phase) + b``: (n, 1) -> (n, 1). Params are a dict of arrays."""

    def init(rng, sample):
        k_freq, k_phase = jax.random.split(rng)
        params = {
            "freq": jax.random.normal(k_freq, (sample.shape[-1], num_features)),
            "phase": jax.random.uniform(k_phase, (num_features,), maxval=2 * jnp.pi),
            "w": jnp.zeros((num_features, 1)),
            "b": jnp.zeros((1,)),
        }
        return params, {}  # No state (no BatchNorm).

    def apply(params, state, rng, x, *, is_training=True):
        features = jnp.cos(x @ params["freq"] + params["phase"]) / jnp.sqrt(num_features)
        return features @ params["w"] + params["b"], state

    return nn.Model(init, apply)


def huber(predictions, targets, mask=None, delta=1.0):
    """Huber loss averaged over samples (mask: see metax.energy)."""
    error = jnp.sum(optax.losses.huber_loss(predictions, targets, delta=delta), axis=-1)
    weights = jnp.ones_like(error) if mask is None else mask
    loss = jnp.sum(error * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, {"loss": loss}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", help="write a PNG of held-out tasks here")
    args = parser.parse_args()

    sampler = data.sinusoid()
    meta_model = meta_models.learned_init(fourier_features(NUM_FEATURES), loss_fn=huber)
    fomaml = learner.maml(
        meta_model, optax.sgd(0.5), optax.adam(3e-3), num_inner_steps=5, first_order=True
    )

    data_key, step_key, held_out_key, init_key, eval_key = jax.random.split(jax.random.key(0), 5)
    held_out = data.sample_meta_batch(sampler, held_out_key, 200)
    state = fomaml.init(init_key, held_out)

    @jax.jit
    def train_step(state, step):
        batch = data.sample_meta_batch(sampler, jax.random.fold_in(data_key, step), 25)
        return fomaml.meta_step(state, batch, jax.random.fold_in(step_key, step))

    def query_loss(state):
        return fomaml.evaluate(state, held_out, eval_key, 5)["loss"].mean()

    initial = query_loss(state)
    for step in range(STEPS):
        state, _ = train_step(state, step)
    print(f"post-adaptation query loss: {initial:.3f} -> {query_loss(state):.3f}")
    if args.figure:
        curves = figures.regression_curves(fomaml, state, sampler, held_out_key, 5)
        figures.save_png(figures.regression_figure(curves), args.figure)


if __name__ == "__main__":
    main()
