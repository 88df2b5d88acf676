"""W1's compile time split into JAX's stages, metax against the hand-written reference:
seconds to trace, lower and compile (XLA) each, and the program sizes (StableHLO lines,
optimized HLO lines). An unrelated program is compiled first, so that neither pays JAX's
one-time warm-up (which suite.py's compile_s charges to whichever compiles first). One JSON
line.

  python benchmarks/compile_stages.py
"""

import json
import time

import jax
import optax
from common import context
from suite import OUTER_LR, W1_TASKS, workload

from metax import data


def stages(step, state, batch) -> dict:
    start = time.perf_counter()
    traced = jax.jit(step, donate_argnums=0).trace(state, batch)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    return {
        "trace_s": round(traced_at - start, 2),
        "lower_s": round(lowered_at - traced_at, 2),
        "compile_s": round(compiled_at - lowered_at, 2),
        "total_s": round(compiled_at - start, 2),
        "stablehlo_lines": lowered.as_text().count("\n"),
        "optimized_hlo_lines": compiled.as_text().count("\n"),
    }


def main():
    maml, reference_step = workload("W1")
    batch = data.sample_meta_batch(data.sinusoid(), jax.random.key(0), W1_TASKS)
    rng = jax.random.key(1)

    def metax_step(state, batch):
        return maml.meta_step(state, batch, rng)

    def fresh_metax_state():
        return maml.init(jax.random.key(0), batch)

    def fresh_reference_state():
        params = fresh_metax_state().meta_params["init"]
        return params, optax.adam(OUTER_LR).init(params)

    candidates = {
        "metax": (metax_step, fresh_metax_state),
        "reference": (reference_step, fresh_reference_state),
    }
    # JAX's one-time warm-up, untimed, on an unrelated program (tracing the candidates
    # themselves would let the timed traces hit JAX's trace cache).
    jax.jit(lambda x: jax.grad(lambda y: (y * x).sum())(x)).trace(batch.support.x).lower().compile()
    result = {name: stages(step, fresh(), batch) for name, (step, fresh) in candidates.items()}
    print(json.dumps({"workload": "W1", **result, **context()}))


if __name__ == "__main__":
    main()
