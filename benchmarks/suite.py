"""metax's learners against hand-written pure-JAX references of the same math, one JSON line
per workload: tasks/s of each, their ratio (metax / reference; > 1 means metax is faster),
compile seconds, and the relative difference of the meta-gradient norms of one step from the
same state (both compute the same meta-gradient).

Workloads (the issue's W1-W3):
  W1      MLP 1-40-40-1, 25 sinusoid tasks of 10 + 10 points, 5 inner SGD steps (lr 0.01),
          second-order MAML, Adam 1e-3.
  W2      conv4 (4 x [3x3 conv 64 channels, BatchNorm with batch statistics, ReLU, 2x2
          max-pool], linear head) on 28x28x1 Omniglot, 5-way 1-shot, 15 queries per class,
          32 tasks, 1 inner SGD step (lr 0.4), cross-entropy, second order, Adam 1e-3.
  W3      W2 first order.
  W2_K5   W2 with 5 inner steps.
  implicit_W1  W1's model and tasks, iMAML: learned init with an L2 pull of 10, 10 inner SGD
          steps, conjugate gradient with 10 iterations.
  eqprop_W1    W1's model and tasks, learned init with an L2 pull of 10, 10 free and 10
          nudged steps, beta 0.1.
  loop_W1, loop_W2  the whole training loop (`train`) against its compiled steps alone, with
          one and with log_every meta-steps per device call (benchmarks/loop.py).

metax runs with its defaults (on CPU: convolutions as matmuls, conv models one task per
device at a time). The references are what one writes by hand: the inner loop unrolled in
Python, `jax.vmap` over tasks, and for W2 the fastest hand-written convolution on XLA:CPU
(im2col matmul; `lax.conv` under vmap is far slower) with `lax.reduce_window` max-pooling.
Each reference returns the same diagnostics as metax's meta-step.

  python benchmarks/suite.py [--workloads W1,W2,...] [--steps 3] [--repeats 3]
"""

import argparse
import json

import jax
import jax.numpy as jnp
import loop
import optax
from common import Candidate, compare, context, omniglot_images

from metax import data, energy, learner, meta_models, nn

OUTER_LR, W1_TASKS, W2_TASKS, WAYS, SHOTS, QUERIES = 1e-3, 25, 32, 5, 1, 15
# REG = 10 keeps the inner Hessian positive definite, as conjugate gradient needs.
REG, CG_STEPS, BETA = 10.0, 10, 0.1


# --- Hand-written references -------------------------------------------------------------


def mlp_forward(p, x):
    h = jax.nn.relu(x @ p["layer_0"]["w"] + p["layer_0"]["b"])
    h = jax.nn.relu(h @ p["layer_1"]["w"] + p["layer_1"]["b"])
    return h @ p["output"]["w"] + p["output"]["b"]


def mse(p, x, y):
    return jnp.mean(jnp.sum((mlp_forward(p, x) - y) ** 2, -1))


def squared_distance(a, b):
    return sum(jnp.sum((x - y) ** 2) for x, y in zip(*map(jax.tree.leaves, (a, b)), strict=True))


def conv4_forward(p, x):
    for i in range(4):
        block = p["body"][f"block_{i}"]
        n, h, w, c = x.shape
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.concatenate(
            [xp[:, a : a + h, b : b + w] for a in range(3) for b in range(3)], -1
        )
        z = patches @ block["conv"]["w"].reshape(9 * c, -1) + block["conv"]["b"]
        mean, var = jnp.mean(z, axis=(0, 1, 2)), jnp.var(z, axis=(0, 1, 2))
        z = (z - mean) * jax.lax.rsqrt(var + nn.BATCH_NORM_EPS) * block["bn"]["scale"]
        x = jax.nn.relu(z + block["bn"]["offset"])
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    x = x.reshape(x.shape[0], -1)
    return x @ p["head"]["w"] + p["head"]["b"]


def cross_entropy(p, x, y):
    logits = conv4_forward(p, x)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def sgd_steps(loss_fn, p, num_steps, lr, first_order):
    """Unrolled SGD; returns the adapted params, the first loss and gradient norm."""
    for i in range(num_steps):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        if i == 0:
            first = (loss, optax.tree.norm(grads))
        p = jax.tree.map(lambda a, g: a - lr * g, p, grads)
    return p, first


def reference_maml(loss_fn, num_steps, lr, first_order, optimizer):
    """MAML by hand: ``loss_fn(p, x, y) -> (loss, aux)``, vmap over tasks."""

    def task_loss(p, train_x, train_y, test_x, test_y):
        adapted, (loss_before, grad_norm) = sgd_steps(
            lambda q: loss_fn(q, train_x, train_y)[0], p, num_steps, lr, first_order
        )
        if first_order:
            adapted = jax.tree.map(lambda a, b: a + jax.lax.stop_gradient(b - a), p, adapted)
        loss_after, _ = loss_fn(jax.lax.stop_gradient(adapted), train_x, train_y)
        loss, aux = loss_fn(adapted, test_x, test_y)
        metrics = {"before": loss_before, "after": loss_after, "grad_norm": grad_norm, "aux": aux}
        return loss, metrics

    def step(state, batch):
        params, opt_state = state

        def meta_loss(p):
            losses, metrics = jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(
                p, batch.support.x, batch.support.y, batch.query.x, batch.query.y
            )
            return jnp.mean(losses), metrics

        (loss, metrics), grads = jax.value_and_grad(meta_loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        metrics = {k: jnp.mean(v) for k, v in metrics.items()}
        metrics.update(loss=loss, meta_grad_norm=optax.tree.norm(grads))
        return (optax.apply_updates(params, updates), opt_state), metrics

    return step


def reference_implicit(num_steps, lr, optimizer):
    """iMAML by hand: proximal inner loop, CG on (H_train + REG I) u = g_test, grad = REG u."""

    def task_grad(theta, train_x, train_y, test_x, test_y):
        def inner(q):
            return mse(q, train_x, train_y) + 0.5 * REG * squared_distance(q, theta)

        phi, (loss_before, _) = sgd_steps(inner, theta, num_steps, lr, True)
        phi = jax.lax.stop_gradient(phi)
        loss, v = jax.value_and_grad(mse)(phi, test_x, test_y)
        hvp = lambda u: jax.jvp(jax.grad(inner), (phi,), (u,))[1]  # noqa: E731
        u, _ = jax.scipy.sparse.linalg.cg(hvp, v, tol=0.0, atol=0.0, maxiter=CG_STEPS)
        grads = jax.tree.map(lambda x: REG * x, u)
        return grads, {"loss": loss, "before": loss_before, "after": inner(phi)}

    return _reference_from_task_grads(task_grad, optimizer)


def reference_eqprop(num_steps, lr, optimizer):
    """Equilibrium propagation by hand: free phase on the proximal support loss, nudged phase
    adds beta * query loss; the meta-gradient is REG (phi_free - phi_nudged) / beta."""

    def task_grad(theta, train_x, train_y, test_x, test_y):
        def inner(q):
            return mse(q, train_x, train_y) + 0.5 * REG * squared_distance(q, theta)

        free, (loss_before, _) = sgd_steps(inner, theta, num_steps, lr, True)
        nudged, _ = sgd_steps(
            lambda q: inner(q) + BETA * mse(q, test_x, test_y), free, num_steps, lr, True
        )
        grads = jax.tree.map(lambda f, n: REG * (f - n) / BETA, free, nudged)
        metrics = {"loss": mse(free, test_x, test_y), "before": loss_before, "after": inner(free)}
        return grads, metrics

    return _reference_from_task_grads(task_grad, optimizer)


def _reference_from_task_grads(task_grad, optimizer):
    def step(state, batch):
        params, opt_state = state
        grads, metrics = jax.vmap(task_grad, in_axes=(None, 0, 0, 0, 0))(
            params, batch.support.x, batch.support.y, batch.query.x, batch.query.y
        )
        grads = jax.tree.map(lambda g: jnp.mean(g, 0), grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        metrics = {k: jnp.mean(v) for k, v in metrics.items()}
        metrics["meta_grad_norm"] = optax.tree.norm(grads)
        return (optax.apply_updates(params, updates), opt_state), metrics

    return step


# --- Workloads ---------------------------------------------------------------------------


def workload(name, conv_impl="auto", optimizer=None):
    """(metax learner, hand-written reference step) of a workload; ``conv_impl`` is the conv
    workloads' `nn.conv2d` implementation on metax's side (the reference is always im2col);
    ``optimizer`` replaces the outer Adam."""
    optimizer = optax.adam(OUTER_LR) if optimizer is None else optimizer
    mlp = nn.mlp([40, 40], 1)
    if name == "W1":
        maml = learner.maml(meta_models.learned_init(mlp), optax.sgd(0.01), optimizer, 5)
        return maml, reference_maml(lambda p, x, y: (mse(p, x, y), 0.0), 5, 0.01, False, optimizer)
    if name == "implicit_W1":
        metax_learner = learner.implicit(
            meta_models.learned_init(mlp, reg_strength=REG),
            learner.conjugate_gradient(CG_STEPS),
            optax.sgd(0.01),
            optimizer,
            num_inner_steps=10,
        )
        return metax_learner, reference_implicit(10, 0.01, optimizer)
    if name == "eqprop_W1":
        metax_learner = learner.eqprop(
            meta_models.learned_init(mlp, reg_strength=REG),
            optax.sgd(0.01),
            optimizer,
            num_inner_steps=10,
            num_nudged_steps=10,
            beta=BETA,
        )
        return metax_learner, reference_eqprop(10, 0.01, optimizer)
    steps = 5 if name == "W2_K5" else 1
    first_order = name == "W3"
    model = nn.sequential(
        body=nn.conv4(64, pooling="max", conv_impl=conv_impl), head=nn.linear(WAYS)
    )
    maml = learner.maml(
        meta_models.learned_init(model, loss_fn=energy.cross_entropy),
        optax.sgd(0.4),
        optimizer,
        num_inner_steps=steps,
        first_order=first_order,
    )
    return maml, reference_maml(cross_entropy, steps, 0.4, first_order, optimizer)


def run(name, steps, repeats, images, conv_impl="auto", reference=True) -> dict:
    """One workload's row; ``reference=False`` times metax alone (no ratio)."""
    metax_learner, reference_step = workload(name, conv_impl)
    optimizer = optax.adam(OUTER_LR)
    if name.startswith("W2") or name == "W3":
        sampler = data.fewshot(
            images, data.Episodes(ways=WAYS, shots=SHOTS, queries=QUERIES), rotations=True
        )
        num_tasks = W2_TASKS
    else:
        sampler, num_tasks = data.sinusoid(), W1_TASKS
    batches = [data.sample_meta_batch(sampler, jax.random.key(i), num_tasks) for i in range(4)]
    batches = jax.block_until_ready(batches)
    rng = jax.random.key(1)

    def fresh_metax_state():
        return metax_learner.init(jax.random.key(0), batches[0])

    def fresh_reference_state():
        params = fresh_metax_state().meta_params["init"]
        return params, optimizer.init(params)

    candidates = {
        "metax": Candidate(lambda s, b: metax_learner.meta_step(s, b, rng), fresh_metax_state),
        "reference": Candidate(reference_step, fresh_reference_state),
    }
    if not reference:
        del candidates["reference"]
    result = compare(candidates, batches, num_tasks, steps, repeats)
    if not reference:
        return {"workload": name, **result}
    speed = result["tasks_per_s"]
    return {"workload": name, **result, "ratio": round(speed["metax"] / speed["reference"], 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W1,W2,W3,W2_K5,implicit_W1,eqprop_W1,loop_W1")
    parser.add_argument(
        "--steps", type=int, default=3, help="meta-steps per repeat (x100 for W1-sized)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--conv_impl", default="auto", choices=nn.CONV_IMPLS, help="metax's conv4 convolutions"
    )
    args = parser.parse_args()
    names = args.workloads.split(",")
    images, source = (
        omniglot_images()
        if any(n.startswith(("W2", "W3", "loop_W2")) for n in names)
        else (None, None)
    )
    for name in names:
        if name.startswith("loop_"):
            print(json.dumps(loop.row(name, images, source)), flush=True)
            continue
        small = name.endswith("W1")
        steps = args.steps * 100 if small else args.steps
        result = run(name, steps, args.repeats, images, args.conv_impl)
        conv = {} if small else {"conv_impl": args.conv_impl}
        row = {**result, **conv, "data": "sinusoid" if small else source, **context()}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
