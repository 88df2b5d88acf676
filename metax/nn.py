"""Stateless neural network models as `(init, apply)` pairs of pure functions.

A `Model` is a NamedTuple of two pure functions:

* ``init(rng, sample_input) -> (params, state)``: eager and shape-driven; ``sample_input``
  has a leading batch axis, e.g. ``(n, d)`` for an MLP or ``(n, h, w, c)`` for conv4.
* ``apply(params, state, rng, inputs, *, is_training, **kwargs) -> (outputs, state)``.

Params and state are dicts with named keys (``{"layer_0": {"w": ..., "b": ...}}``), so a
meta-model can select parts of them by name. State holds non-trainable arrays (BatchNorm running
statistics); it is ``{}`` for models without any.

Initializers follow haiku's defaults, which the original metax used: linear weights are drawn
from a normal truncated at two standard deviations with stddev ``1 / sqrt(fan_in)``; conv
kernels from ``variance_scaling(1.0, "fan_in", "truncated_normal")``; biases are zero;
BatchNorm scale is one and offset zero.

Modulation (gain modulation, CML): ``mlp``, ``conv4`` and ``resnet12`` take optional ``gain``
and ``shift`` dicts keyed by hidden-layer or block name. A hidden layer's pre-activation ``z``
(for conv4, the BatchNorm output; for resnet12, the sum of a block's residual branch and
shortcut) becomes ``gain * z + shift`` before the nonlinearity; shapes are the layer's width
``(h,)`` or channel count ``(c,)``. Each of these models declares them in `Model.modulation`.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import gin
import jax
import jax.numpy as jnp

from metax.types import Array, Params, PRNGKey, State
from metax.validate import check_int, check_optional_int

BATCH_NORM_DECAY = 0.9
BATCH_NORM_EPS = 1e-5
CONV_IMPLS = ("auto", "matmul", "lax")


class Model(NamedTuple):
    """A stateless model: ``init(rng, sample) -> (params, state)`` and
    ``apply(params, state, rng, inputs, *, is_training, **kwargs) -> (outputs, state)``.

    ``modulation(params) -> {name: shape}``: where the model can be modulated (gain
    modulation, CML), i.e. the ``gain``/``shift`` entries its ``apply`` accepts for
    ``params``, each of shape ``(units,)``; None for models that take no modulation.

    ``input_rank``: the number of axes of one input example (1 for vectors, 3 for
    ``(h, w, c)`` images), so that a batch with an extra axis (a task axis where one task's
    data belongs) is refused with a clear error; None where any rank is accepted.
    """

    init: Callable[[PRNGKey, Array], tuple[Params, State]]
    apply: Callable[..., tuple[Array, State]]
    modulation: Callable[[Params], dict[str, tuple[int, ...]]] | None = None
    input_rank: int | None = None


def _linear_init(rng: PRNGKey, fan_in: int, fan_out: int) -> dict[str, Array]:
    stddev = 1.0 / jnp.sqrt(fan_in)
    w = jax.random.truncated_normal(rng, -2.0, 2.0, (fan_in, fan_out)) * stddev
    return {"w": w, "b": jnp.zeros((fan_out,))}


def _modulate(z: Array, name: str, gain: dict | None, shift: dict | None) -> Array:
    if gain is not None:
        z = z * gain[name]
    if shift is not None:
        z = z + shift[name]
    return z


@gin.register(module="metax.nn")
def linear(out_features: int) -> Model:
    """Affine map ``(n, d) -> (n, out_features)``; params ``{"w": (d, out), "b": (out,)}``."""
    check_int("linear out_features", out_features, 1)

    def init(rng: PRNGKey, sample: Array) -> tuple[Params, State]:
        return _linear_init(rng, sample.shape[-1], out_features), {}

    def apply(params, state, rng, inputs, *, is_training: bool = True):
        del rng, is_training
        return inputs @ params["w"] + params["b"], state

    return Model(init, apply, input_rank=1)


@gin.register(module="metax.nn")
def mlp(
    hidden_sizes: Sequence[int],
    out_features: int,
    activation: Callable[[Array], Array] = jax.nn.relu,
    activate_final: bool = False,
) -> Model:
    """Multi-layer perceptron ``(n, d) -> (n, out_features)``.

    ``activate_final=True`` applies the activation to the output too (a feature extractor,
    e.g. the body of ANIL or gain modulation in front of a ``linear`` head).

    Params: ``{"layer_0": {"w", "b"}, ..., "layer_{L-1}": ..., "output": {"w", "b"}}`` with
    ``L = len(hidden_sizes)``. ``apply`` accepts optional ``gain``/``shift`` dicts keyed by
    ``"layer_i"`` with shape ``(hidden_sizes[i],)`` (see module docstring).
    """
    if isinstance(hidden_sizes, int):
        raise ValueError(
            f"mlp hidden_sizes must be a tuple of widths, e.g. (40, 40), got {hidden_sizes}."
        )
    hidden_sizes = tuple(hidden_sizes)
    for width in hidden_sizes:
        check_int("mlp hidden_sizes' widths", width, 1)
    check_int("mlp out_features", out_features, 1)

    def init(rng: PRNGKey, sample: Array) -> tuple[Params, State]:
        sizes = (sample.shape[-1], *hidden_sizes, out_features)
        names = [f"layer_{i}" for i in range(len(hidden_sizes))] + ["output"]
        keys = jax.random.split(rng, len(names))
        params = {
            name: _linear_init(key, fan_in, fan_out)
            for name, key, fan_in, fan_out in zip(names, keys, sizes[:-1], sizes[1:], strict=True)
        }
        return params, {}

    def apply(params, state, rng, inputs, *, is_training=True, gain=None, shift=None):
        del rng, is_training
        h = inputs
        for i in range(len(hidden_sizes)):
            name = f"layer_{i}"
            z = h @ params[name]["w"] + params[name]["b"]
            h = activation(_modulate(z, name, gain, shift))
        out = h @ params["output"]["w"] + params["output"]["b"]
        return (activation(out) if activate_final else out), state

    def modulation(params: Params) -> dict[str, tuple[int, ...]]:
        return {f"layer_{i}": (size,) for i, size in enumerate(hidden_sizes)}

    return Model(init, apply, modulation, input_rank=1)


def _batch_norm(
    params: Params, state: State, x: Array, *, use_batch_stats: bool
) -> tuple[Array, State]:
    """BatchNorm over all but the channel axis; returns normalized x and updated running stats."""
    if use_batch_stats:
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        var = jnp.var(x, axis=axes)
        state = {
            "mean": BATCH_NORM_DECAY * state["mean"] + (1 - BATCH_NORM_DECAY) * mean,
            "var": BATCH_NORM_DECAY * state["var"] + (1 - BATCH_NORM_DECAY) * var,
        }
    else:
        mean, var = state["mean"], state["var"]
    normalized = (x - mean) * jax.lax.rsqrt(var + BATCH_NORM_EPS)
    return normalized * params["scale"] + params["offset"], state


def conv2d(x: Array, w: Array, stride: int = 1, impl: str = "auto") -> Array:
    """2-D convolution with SAME padding: ``x (n, h, w, c_in)``, kernel ``w (kh, kw, c_in,
    c_out)`` -> ``(n, ceil(h / stride), ceil(w / stride), c_out)``.

    ``impl="lax"`` is `jax.lax.conv_general_dilated`; ``impl="matmul"`` computes the same sum
    as one matrix product of the kh * kw shifted copies of ``x`` (im2col) with the reshaped
    kernel. Both are exact; they differ in speed. On XLA:CPU the matmul form is several times
    faster for meta-learning, whose backward and second-order passes are dominated by
    convolution gradients that XLA:CPU runs slowly (and under `jax.vmap` with per-task kernels
    as grouped convolutions; benchmarks/cpu_backends.py measures both); on GPU/TPU ``lax``
    uses the native convolution units. ``"auto"`` picks ``matmul`` on CPU and ``lax``
    elsewhere.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}.")
    if impl == "auto":
        impl = "matmul" if jax.default_backend() == "cpu" else "lax"
    if impl == "lax":
        return jax.lax.conv_general_dilated(
            x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    kh, kw, c_in, c_out = w.shape
    (top, bottom), (left, right) = jax.lax.padtype_to_pads(
        x.shape[1:3], (kh, kw), (stride, stride), "SAME"
    )
    x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    h_out = (x.shape[1] - kh) // stride + 1
    w_out = (x.shape[2] - kw) // stride + 1
    # Patch feature (i * kw + j) * c_in + c matches the row-major reshape of the HWIO kernel.
    patches = jnp.concatenate(
        [
            x[
                :,
                i : i + stride * (h_out - 1) + 1 : stride,
                j : j + stride * (w_out - 1) + 1 : stride,
            ]
            for i in range(kh)
            for j in range(kw)
        ],
        axis=-1,
    )
    # One 2-D matmul over all positions: its weight gradient is then a single-contraction dot
    # that XLA runs as patches^T @ grad. Multiplying the 4-D patches instead makes XLA:CPU
    # transpose the whole activation gradient to canonicalize the three contracted axes
    # (a large share of conv4's first layer; benchmarks/suite.py, W3).
    n = patches.shape[0]
    out = patches.reshape(n * h_out * w_out, kh * kw * c_in) @ w.reshape(kh * kw * c_in, c_out)
    return out.reshape(n, h_out, w_out, c_out)


def _window_argmax(a: Array, b: Array, c: Array, d: Array) -> Array:
    """Index (int8, 0..3) of the first largest of four same-shaped arrays; NaN counts as
    largest, so that a NaN input reaches the output as `jnp.max` would pass it on."""
    take_b = (b > a) | jnp.isnan(b)
    take_d = (d > c) | jnp.isnan(d)
    max_ab, max_cd = jnp.where(take_b, b, a), jnp.where(take_d, d, c)
    take_cd = (max_cd > max_ab) | jnp.isnan(max_cd)
    index = jnp.where(take_cd, jnp.where(take_d, 3, 2), jnp.where(take_b, 1, 0))
    return index.astype(jnp.int8)


def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pooling with stride 2, VALID: ``(n, h, w, c) -> (n, h // 2, w // 2, c)``.

    Each window's output is its input at the window's argmax (first in row-major order on
    ties, like `jax.lax.reduce_window`), and the gradient flows to that input only. The index
    is computed once and pinned with `jax.lax.optimization_barrier`, so the forward value and
    every derivative (first and second order, under `jax.jit` or not) select the same input.

    Guaranteed: every window passes its whole gradient to exactly one of its inputs, one that
    attains its maximum (up to the rounding of the operand where XLA recomputes it); values
    and gradients equal `jax.lax.reduce_window`'s (bit for bit op by op, tested), except where
    a window holds two inputs equal up to rounding. Not guaranteed before:
    the gradient of ``jnp.max`` routes through ``x == max(x)``, which under `jax.jit` can
    compare a recomputed, differently rounded ``x`` (fused multiply-adds) and lose a window's
    gradient, or divide 0 by 0. Faster on XLA:CPU than `jax.lax.reduce_window`, whose gradient
    (select-and-scatter) and its derivative are slow there.
    """
    n, h, w, c = x.shape
    windows = x[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2, c)
    corners = [windows[:, :, i, :, j] for i in (0, 1) for j in (0, 1)]
    index = jax.lax.optimization_barrier(_window_argmax(*jax.lax.stop_gradient(corners)))
    pooled = corners[3]
    for k in (2, 1, 0):
        pooled = jnp.where(index == k, corners[k], pooled)
    return pooled


@gin.register(module="metax.nn")
def conv4(
    num_channels: int = 64,
    num_blocks: int = 4,
    pooling: str = "max",
    conv_impl: str = "auto",
    per_step_batch_norm: int | None = None,
) -> Model:
    """The convolutional feature extractor of the MAML paper: ``(n, h, w, c) -> (n, features)``.

    Each block: 3x3 conv (SAME padding), BatchNorm, ReLU, then 2x2 max-pool (``pooling="max"``)
    or a stride-2 convolution instead (``pooling="strided"``, the paper's Omniglot variant).
    Output is flattened; add a head with ``sequential(body=conv4(), head=linear(ways))``.
    ``conv_impl``: how convolutions are computed (`conv2d`; the default picks the fast one
    for the backend).

    Params: ``{"block_i": {"conv": {"w": (3, 3, c_in, c), "b": (c,)}, "bn": {"scale", "offset"}}}``.
    State: ``{"block_i": {"mean": (c,), "var": (c,)}}`` running statistics.
    ``apply(..., is_training=True)`` normalizes with batch statistics and updates the running
    statistics; ``is_training=False`` normalizes with the running statistics. ``gain``/``shift``
    dicts keyed by ``"block_i"`` with shape ``(num_channels,)`` modulate the BatchNorm output.

    ``per_step_batch_norm=K`` (MAML++'s per-step BatchNorm weights and running statistics):
    ``scale``, ``offset``, ``mean`` and ``var`` get a leading axis of K, and the state a
    counter ``"step"`` (int32, 0 in the initial state). Each ``apply(..., is_training=True)``
    uses and updates row ``min(step, K - 1)`` and returns ``step + 1``, so in an inner loop,
    inner step k uses row k, and the query set, scored with the adapted state, row K - 1 (in
    ``"per_task"`` mode normalized with the running statistics of the last step). With K = 1
    it computes what ``per_step_batch_norm=None`` does.
    """
    check_int("conv4 num_channels", num_channels, 1)
    check_int("conv4 num_blocks", num_blocks, 1)
    check_optional_int("conv4 per_step_batch_norm", per_step_batch_norm, 1)
    steps = per_step_batch_norm
    if pooling not in ("max", "strided"):
        raise ValueError(f"conv4 pooling must be 'max' or 'strided', got {pooling!r}.")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv4 conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}.")
    kernel_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    stride = 2 if pooling == "strided" else 1

    def conv(p, x):
        return conv2d(x, p["w"], stride, conv_impl) + p["b"]

    def init(rng: PRNGKey, sample: Array) -> tuple[Params, State]:
        params: dict[str, Any] = {}
        state: dict[str, Any] = {}
        c_in = sample.shape[-1]
        for i, key in enumerate(jax.random.split(rng, num_blocks)):
            params[f"block_{i}"] = {
                "conv": {
                    "w": kernel_init(key, (3, 3, c_in, num_channels)),
                    "b": jnp.zeros((num_channels,)),
                },
                "bn": {"scale": jnp.ones(bn_shape), "offset": jnp.zeros(bn_shape)},
            }
            state[f"block_{i}"] = {"mean": jnp.zeros(bn_shape), "var": jnp.ones(bn_shape)}
            c_in = num_channels
        if steps is not None:
            state["step"] = jnp.zeros((), jnp.int32)
        return params, state

    bn_shape = (num_channels,) if steps is None else (steps, num_channels)

    def apply(params, state, rng, inputs, *, is_training=True, gain=None, shift=None):
        del rng
        h, new_state = inputs, {}
        row = None if steps is None else jnp.minimum(state["step"], steps - 1)
        for i in range(num_blocks):
            name = f"block_{i}"
            z = conv(params[name]["conv"], h)
            if row is None:
                z, new_state[name] = _batch_norm(
                    params[name]["bn"], state[name], z, use_batch_stats=is_training
                )
            else:
                bn, stats = jax.tree.map(lambda a: a[row], (params[name]["bn"], state[name]))
                z, stats = _batch_norm(bn, stats, z, use_batch_stats=is_training)
                new_state[name] = jax.tree.map(lambda a, r: a.at[row].set(r), state[name], stats)
            h = jax.nn.relu(_modulate(z, name, gain, shift))
            if pooling == "max":
                h = max_pool_2x2(h)
        if row is not None:
            new_state["step"] = state["step"] + 1 if is_training else state["step"]
        return h.reshape(h.shape[0], -1), new_state

    def modulation(params: Params) -> dict[str, tuple[int, ...]]:
        return {f"block_{i}": (num_channels,) for i in range(num_blocks)}

    return Model(init, apply, modulation, input_rank=3)


RESNET12_LEAK = 0.1


@gin.register(module="metax.nn")
def resnet12(channels: Sequence[int] = (64, 160, 320, 640), conv_impl: str = "auto") -> Model:
    """ResNet-12, the few-shot backbone of mini-ImageNet work (TADAM, MetaOptNet):
    ``(n, h, w, c) -> (n, channels[-1])``.

    Four residual blocks; block i: three 3x3 convs (SAME, no bias) with ``channels[i]``
    outputs, each followed by BatchNorm, LeakyReLU(0.1) after the first two; a shortcut of a
    1x1 conv and BatchNorm; their sum through LeakyReLU(0.1), then 2x2 max-pool. Global
    average pooling of the last block's output (no DropBlock). Initializers and BatchNorm as
    in `conv4`: ``apply(..., is_training=True)`` normalizes with batch statistics and updates
    the running ones, ``False`` uses the running statistics (the meta-models' ``batch_norm``
    modes work as for conv4).

    Params ``{"block_i": {"conv_j": {"w"}, "bn_j": {"scale", "offset"}, "shortcut": {"w"},
    "bn_shortcut": ...}}`` (j = 0, 1, 2); state: the running statistics of every BatchNorm.
    ``gain``/``shift`` dicts keyed by ``"block_i"`` with shape ``(channels[i],)`` modulate the
    sum of a block's residual branch and shortcut before its LeakyReLU.
    """
    channels = tuple(channels)
    if len(channels) != 4 or min(channels) < 1:
        raise ValueError(f"resnet12 channels must be 4 positive widths, got {channels}.")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"resnet12 conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}.")
    kernel_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    bn_names = ("bn_0", "bn_1", "bn_2", "bn_shortcut")

    def init(rng: PRNGKey, sample: Array) -> tuple[Params, State]:
        params, state = {}, {}
        c_in = sample.shape[-1]
        for i, (c, key) in enumerate(zip(channels, jax.random.split(rng, 4), strict=True)):
            keys = jax.random.split(key, 4)
            block = {
                f"conv_{j}": {"w": kernel_init(keys[j], (3, 3, c_in if j == 0 else c, c))}
                for j in range(3)
            }
            block["shortcut"] = {"w": kernel_init(keys[3], (1, 1, c_in, c))}
            for name in bn_names:
                block[name] = {"scale": jnp.ones((c,)), "offset": jnp.zeros((c,))}
            params[f"block_{i}"] = block
            state[f"block_{i}"] = {
                name: {"mean": jnp.zeros((c,)), "var": jnp.ones((c,))} for name in bn_names
            }
            c_in = c
        return params, state

    def apply(params, state, rng, inputs, *, is_training=True, gain=None, shift=None):
        del rng
        h, new_state = inputs, {}
        for i in range(4):
            p, s = params[f"block_{i}"], state[f"block_{i}"]
            block_state: dict[str, Any] = {}

            def normalized(z, name, p=p, s=s, block_state=block_state):
                z, block_state[name] = _batch_norm(p[name], s[name], z, use_batch_stats=is_training)
                return z

            z = h
            for j in range(3):
                z = normalized(conv2d(z, p[f"conv_{j}"]["w"], 1, conv_impl), f"bn_{j}")
                if j < 2:
                    z = jax.nn.leaky_relu(z, RESNET12_LEAK)
            shortcut = normalized(conv2d(h, p["shortcut"]["w"], 1, conv_impl), "bn_shortcut")
            z = _modulate(z + shortcut, f"block_{i}", gain, shift)
            h = max_pool_2x2(jax.nn.leaky_relu(z, RESNET12_LEAK))
            new_state[f"block_{i}"] = block_state
        return jnp.mean(h, axis=(1, 2)), new_state

    def modulation(params: Params) -> dict[str, tuple[int, ...]]:
        return {f"block_{i}": (c,) for i, c in enumerate(channels)}

    return Model(init, apply, modulation, input_rank=3)


@gin.register(module="metax.nn")
def flatten() -> Model:
    """``(n, *shape) -> (n, prod(shape))``, no parameters: put it before an ``mlp`` that reads
    images, ``sequential(flat=flatten(), mlp=mlp(...))`` (an MLP on ``(n, h, w, c)`` would act
    on the last axis only, pixel by pixel)."""

    def init(rng: PRNGKey, sample: Array) -> tuple[Params, State]:
        del rng, sample
        return {}, {}

    def apply(params, state, rng, inputs, *, is_training=True):
        del params, rng, is_training
        return inputs.reshape(inputs.shape[0], -1), state

    return Model(init, apply)


@gin.register(module="metax.nn")
def sequential(**layers: Model) -> Model:
    """Composes models in the given order; params and state are dicts keyed by layer name.

    ``apply`` takes optional per-layer keyword arguments as a dict keyed by layer name, e.g.
    ``apply(p, s, rng, x, is_training=True, layer_kwargs={"body": {"gain": g}})``.
    """
    if not layers:
        raise ValueError(
            "sequential() needs at least one named layer, e.g. sequential(body=..., head=...)."
        )

    def init(rng: PRNGKey, sample: Array) -> tuple[Params, State]:
        params, state = {}, {}
        for (name, layer), key in zip(
            layers.items(), jax.random.split(rng, len(layers)), strict=True
        ):
            params[name], state[name] = layer.init(key, sample)
            out = jax.eval_shape(
                lambda p, s, x, layer=layer: layer.apply(p, s, None, x, is_training=False)[0],
                params[name],
                state[name],
                sample,
            )
            sample = jnp.zeros(out.shape, out.dtype)
        return params, state

    def apply(params, state, rng, inputs, *, is_training=True, layer_kwargs=None):
        layer_kwargs = layer_kwargs or {}
        h, new_state = inputs, {}
        for (name, layer), key in zip(
            layers.items(), jax.random.split(rng, len(layers)), strict=True
        ):
            h, new_state[name] = layer.apply(
                params[name],
                state[name],
                key,
                h,
                is_training=is_training,
                **layer_kwargs.get(name, {}),
            )
        return h, new_state

    return Model(init, apply, input_rank=next(iter(layers.values())).input_rank)
