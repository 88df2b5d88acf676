"""Synthetic 1-D regression task families, sampled on device inside jit.

Every sampler factory returns a `TaskSampler` whose ``sample_task(rng)`` draws one task:
``num_train_shots`` support and ``num_test_shots`` query points, inputs ``x ~ U[-5, 5]`` of shape
``(n, 1)`` and targets ``y = f(x)`` of shape ``(n, 1)``. The first ``num_train_shots`` samples
are the support set, the rest the query set (as in the original metax).

Modes: ``"train"`` and ``"test"`` draw task parameters from the same distribution (held-out
tasks come from a different key stream); ``"ood"`` draws them from the out-of-distribution
ranges below, which lie outside the training ranges.

| family | f(x) | train/test parameters | ood parameters |
|---|---|---|---|
| sinusoid (MAML) | A sin(x - phi) | A ~ U[amplitude_range], phi ~ U[phase_range] | A ~ U[hi, 2 hi], hi = max amplitude |
| sinusoid_family | A sin(x + phi) | A ~ U[0.1, 1.0], phi ~ U[0, pi] | A ~ U[1.0, 2.0] |
| harmonic | a1 sin(w x + b1) + a2 sin(2 w x + b2) | w ~ U[0.1, 1], a ~ U[0, 0.5], b ~ U[0, 2 pi] | w ~ U[1, 2] |
| linear | c + m x | c ~ U[-0.5, 0.5], m ~ U[-0.1, 0.1] | c ~ +-U[0.5, 1], m ~ +-U[0.1, 0.2] |
| polynomial | a + b x + c x^2, rescaled to span [-1, 1] | a, b, c ~ U[-5, 5] | c ~ +-U[5, 10] |
| sawtooth | A * 2 (frac((x - p) / 2 pi) - 1/2) | A ~ U[0.1, 1], p ~ U[0, 2 pi] | A ~ U[1, 2] |
| family | one of the five above, uniformly | as its member | as its member |

The mixture ``family`` puts the member's index (order: harmonic, linear, polynomial, sawtooth,
sinusoid_family) in ``info["task_id"]``.
"""

import math
from collections.abc import Callable

import gin
import jax
import jax.numpy as jnp

from metax.data.base import Dataset, MetaBatch, TaskSampler
from metax.types import Array, PRNGKey
from metax.validate import check_int

MODES = ("train", "test", "ood")
INPUT_RANGE = (-5.0, 5.0)
FAMILY_NAMES = ("harmonic", "linear", "polynomial", "sawtooth", "sinusoid_family")

TaskFunction = Callable[[PRNGKey, Array, bool], Array]  # (rng, x (n, 1), ood) -> y (n, 1)


def _uniform(rng: PRNGKey, low: float, high: float, shape=()) -> Array:
    return jax.random.uniform(rng, shape, minval=low, maxval=high)


def _signed_uniform(rng: PRNGKey, low: float, high: float) -> Array:
    """Magnitude ~ U[low, high] with a random sign (for ranges around zero's outside)."""
    k_mag, k_sign = jax.random.split(rng)
    return jnp.where(jax.random.bernoulli(k_sign), 1.0, -1.0) * _uniform(k_mag, low, high)


def _check_mode(mode: str) -> bool:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    return mode == "ood"


def _check_shots(num_train_shots: int, num_test_shots: int) -> None:
    check_int("num_train_shots", num_train_shots, 1)
    check_int("num_test_shots", num_test_shots, 1)


def _regression_sampler(
    fn: TaskFunction,
    num_train_shots: int,
    num_test_shots: int,
    ood: bool,
    input_range: tuple[float, float] = INPUT_RANGE,
    info_fn: Callable[[PRNGKey], dict] = lambda rng: {},
) -> TaskSampler:
    _check_shots(num_train_shots, num_test_shots)
    n = num_train_shots + num_test_shots

    def sample_task(rng: PRNGKey) -> MetaBatch:
        k_x, k_f = jax.random.split(rng)
        x = _uniform(k_x, *input_range, shape=(n, 1))
        y = fn(k_f, x, ood)
        info = info_fn(k_f)
        return MetaBatch(
            support=Dataset(x[:num_train_shots], y[:num_train_shots], info),
            query=Dataset(x[num_train_shots:], y[num_train_shots:], info),
        )

    def target_fn(rng: PRNGKey, x: Array) -> Array:
        return fn(jax.random.split(rng)[1], x, ood)

    return TaskSampler(sample_task, target_fn)


@gin.register(module="metax.data")
def sinusoid(
    num_train_shots: int = 10,
    num_test_shots: int = 10,
    amplitude_range: tuple[float, float] = (0.1, 5.0),
    phase_range: tuple[float, float] = (0.0, math.pi),
    input_range: tuple[float, float] = INPUT_RANGE,
    mode: str = "train",
) -> TaskSampler:
    """The MAML paper's sinusoid regression: ``y = A sin(x - phi)``, ``x ~ U[input_range]``.

    Defaults are the paper's (A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5]). In ``"ood"`` mode
    the amplitude is drawn from ``U[hi, 2 hi]`` with ``hi = amplitude_range[1]``.
    """
    ood = _check_mode(mode)
    lo, hi = amplitude_range
    amp_range = (hi, 2.0 * hi) if ood else (lo, hi)

    def fn(rng, x, ood):
        k_a, k_p = jax.random.split(rng)
        amplitude = _uniform(k_a, *amp_range)
        phase = _uniform(k_p, *phase_range)
        return amplitude * jnp.sin(x - phase)

    return _regression_sampler(fn, num_train_shots, num_test_shots, ood, input_range)


def sinusoid_family_fn(rng: PRNGKey, x: Array, ood: bool) -> Array:
    """``A sin(x + phi)``, A ~ U[0.1, 1] (ood: U[1, 2]), phi ~ U[0, pi]."""
    k_a, k_p = jax.random.split(rng)
    amplitude = _uniform(k_a, *((1.0, 2.0) if ood else (0.1, 1.0)))
    return amplitude * jnp.sin(x + _uniform(k_p, 0.0, math.pi))


def harmonic_fn(rng: PRNGKey, x: Array, ood: bool) -> Array:
    """``a1 sin(w x + b1) + a2 sin(2 w x + b2)``, w ~ U[0.1, 1] (ood: U[1, 2])."""
    k_w, k_a, k_b = jax.random.split(rng, 3)
    w = _uniform(k_w, *((1.0, 2.0) if ood else (0.1, 1.0)))
    a1, a2 = _uniform(k_a, 0.0, 0.5, (2,))
    b1, b2 = _uniform(k_b, 0.0, 2 * math.pi, (2,))
    return a1 * jnp.sin(w * x + b1) + a2 * jnp.sin(2 * w * x + b2)


def linear_fn(rng: PRNGKey, x: Array, ood: bool) -> Array:
    """``c + m x``, c ~ U[-0.5, 0.5], m ~ U[-0.1, 0.1] (ood: |c| ~ U[0.5, 1], |m| ~ U[0.1, 0.2])."""
    k_c, k_m = jax.random.split(rng)
    if ood:
        c, m = _signed_uniform(k_c, 0.5, 1.0), _signed_uniform(k_m, 0.1, 0.2)
    else:
        c, m = _uniform(k_c, -0.5, 0.5), _uniform(k_m, -0.1, 0.1)
    return c + m * x


def polynomial_fn(rng: PRNGKey, x: Array, ood: bool) -> Array:
    """``a + b x + c x^2`` (a, b, c ~ U[-5, 5]; ood: |c| ~ U[5, 10]) rescaled to span [-1, 1]."""
    k_a, k_b, k_c = jax.random.split(rng, 3)
    a, b = _uniform(k_a, -5.0, 5.0), _uniform(k_b, -5.0, 5.0)
    c = _signed_uniform(k_c, 5.0, 10.0) if ood else _uniform(k_c, -5.0, 5.0)
    y = a + b * x + c * x**2
    y_min, y_max = jnp.min(y), jnp.max(y)
    return 2.0 * (y - y_min) / jnp.maximum(y_max - y_min, 1e-12) - 1.0


def sawtooth_fn(rng: PRNGKey, x: Array, ood: bool) -> Array:
    """Sawtooth of period 2 pi: ``A * 2 (frac((x - p) / 2 pi) - 1/2)``, A ~ U[0.1, 1] (ood: U[1, 2])."""
    k_a, k_p = jax.random.split(rng)
    amplitude = _uniform(k_a, *((1.0, 2.0) if ood else (0.1, 1.0)))
    t = (x - _uniform(k_p, 0.0, 2 * math.pi)) / (2 * math.pi)
    return amplitude * 2.0 * (t - jnp.floor(t) - 0.5)


_FAMILY_FNS: dict[str, TaskFunction] = {
    "harmonic": harmonic_fn,
    "linear": linear_fn,
    "polynomial": polynomial_fn,
    "sawtooth": sawtooth_fn,
    "sinusoid_family": sinusoid_family_fn,
}


def _family_factory(name: str):
    fn = _FAMILY_FNS[name]

    def factory(
        num_train_shots: int = 10, num_test_shots: int = 10, mode: str = "train"
    ) -> TaskSampler:
        return _regression_sampler(fn, num_train_shots, num_test_shots, _check_mode(mode))

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"Regression tasks of the {name} family (see module docstring). {fn.__doc__}"
    return gin.register(factory, module="metax.data")


harmonic = _family_factory("harmonic")
linear = _family_factory("linear")
polynomial = _family_factory("polynomial")
sawtooth = _family_factory("sawtooth")
sinusoid_family = _family_factory("sinusoid_family")


@gin.register(module="metax.data")
def family(num_train_shots: int = 10, num_test_shots: int = 10, mode: str = "train") -> TaskSampler:
    """Mixture of the five families; ``info["task_id"]`` is the member's index in FAMILY_NAMES."""
    fns = [_FAMILY_FNS[name] for name in FAMILY_NAMES]

    def task_id(rng):
        return jax.random.randint(jax.random.fold_in(rng, 1), (), 0, len(fns))

    def fn(rng, x, ood):
        branches = [lambda r, x, f=f: f(r, x, ood) for f in fns]
        return jax.lax.switch(task_id(rng), branches, jax.random.fold_in(rng, 0), x)

    return _regression_sampler(
        fn,
        num_train_shots,
        num_test_shots,
        _check_mode(mode),
        info_fn=lambda rng: {"task_id": task_id(rng)},
    )
