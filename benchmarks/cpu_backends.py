"""suite.py's conv workloads under each of XLA:CPU's alternative backends, one subprocess per
setting (XLA reads XLA_FLAGS once per process), with metax's convolutions as im2col matmuls
and as `lax.conv`: one JSON line per workload, setting and convolution, the suite's row plus
``xla_flags``. Each row keeps the suite's check that metax and the hand-written reference
compute the same meta-gradient under those flags.

Then one ``gradient_check`` line per setting: W2's whole meta-gradient (4 tasks, both
convolutions) computed under the setting in float32 and in float64, against the float64
meta-gradient of the default setting with matmul convolutions (the exact answer up to float64
rounding): relative error ``|g - g_exact| / |g_exact|``. A backend whose kernels are wrong
shows up as an error far above float32 rounding (1e-6) or float64 rounding (1e-14).

  python benchmarks/cpu_backends.py [--workloads W2,W3,W2_K5] [--conv_impls matmul,lax]
      [--settings default,onednn,...] [--steps 2] [--repeats 2] [--lax_steps 1]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

# jaxlib's default already hands single dots and convolutions to YNNPACK (its default YNN
# fusion types are individual_dot and individual_convolution: see the compiled HLO's
# __ynn_fusion); "eigen" removes them, so XLA's own kernels run everything.
SETTINGS = {
    "default": "",
    "eigen": "--xla_cpu_experimental_ynn_fusion_type=-individual_dot,-individual_convolution",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_fusion": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn_fusion": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise",
    "ynn_fusion": "--xla_cpu_experimental_ynn_fusion_type=+dot,+eltwise",
    "ynn_only_fusion": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise",
}
HERE = os.path.dirname(os.path.abspath(__file__))
GRADIENT_TASKS = 4


def environment(flags: str, x64: bool = False) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
    env["JAX_ENABLE_X64"] = "1" if x64 else "0"
    return env


def meta_gradients(out_dir: str) -> None:
    """Child: W2's meta-gradient of one step from a fixed state, under this process's flags
    and dtype, for each convolution implementation; saved as out_dir/<conv_impl>.npy."""
    sys.path.insert(0, HERE)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from common import omniglot_images
    from suite import QUERIES, SHOTS, WAYS, workload

    from metax import data

    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    # An "optimizer" whose state is the last gradient, so one meta-step returns it exactly.
    keep_gradient = optax.GradientTransformation(
        lambda params: params,
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )

    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    images, _ = omniglot_images()
    sampler = data.fewshot(
        images, data.Episodes(ways=WAYS, shots=SHOTS, queries=QUERIES), rotations=True
    )
    with jax.enable_x64(False):
        batch32 = data.sample_meta_batch(sampler, jax.random.key(0), GRADIENT_TASKS)
    batch = jax.tree.map(cast, batch32)
    for conv_impl in ("matmul", "lax"):
        maml, _ = workload("W2", conv_impl, optimizer=keep_gradient)
        with jax.enable_x64(False):  # the same float32 draws in both dtypes
            state = maml.init(jax.random.key(0), batch32)
        params, model_state = jax.tree.map(cast, (state.meta_params, state.model_state))
        state = state._replace(meta_params=params, model_state=model_state, opt_state=params)
        state, _ = jax.jit(maml.meta_step)(state, batch, jax.random.key(1))
        flat = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(state.opt_state)])
        np.save(os.path.join(out_dir, f"{conv_impl}.npy"), flat.astype(np.float64))


def gradient_check(settings: list[str]) -> None:
    import numpy as np

    def run(flags, x64, out_dir):
        command = [sys.executable, os.path.abspath(__file__), f"--gradient_child={out_dir}"]
        result = subprocess.run(
            command, env=environment(flags, x64), capture_output=True, text=True
        )
        return None if result.returncode == 0 else result.stderr[-500:]

    with tempfile.TemporaryDirectory() as root:
        exact_dir = os.path.join(root, "exact")
        os.makedirs(exact_dir)
        if error := run("", True, exact_dir):
            print(json.dumps({"gradient_check": "exact", "error": error}))
            return
        exact = np.load(os.path.join(exact_dir, "matmul.npy"))
        for name in settings:
            row = {"gradient_check": name, "xla_flags": SETTINGS[name], "tasks": GRADIENT_TASKS}
            for dtype, x64 in (("float32", False), ("float64", True)):
                out_dir = os.path.join(root, f"{name}_{dtype}")
                os.makedirs(out_dir)
                if error := run(SETTINGS[name], x64, out_dir):
                    row[f"{dtype}_error"] = error
                    continue
                for conv_impl in ("matmul", "lax"):
                    g = np.load(os.path.join(out_dir, f"{conv_impl}.npy"))
                    rel = np.linalg.norm(g - exact) / np.linalg.norm(exact)
                    row[f"rel_error_{conv_impl}_{dtype}"] = float(f"{rel:.1e}")
            print(json.dumps(row), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W2,W3,W2_K5")
    parser.add_argument("--conv_impls", default="matmul,lax")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--lax_steps", type=int, default=1, help="steps and repeats with lax.conv (10x slower)"
    )
    parser.add_argument("--skip_gradient_check", action="store_true")
    parser.add_argument("--gradient_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gradient_child:
        meta_gradients(args.gradient_child)
        return
    settings = args.settings.split(",")
    for conv_impl in args.conv_impls.split(","):
        steps, repeats = (args.lax_steps, 1) if conv_impl == "lax" else (args.steps, args.repeats)
        for name in settings:
            command = [sys.executable, os.path.join(HERE, "suite.py")]
            command += [f"--workloads={args.workloads}", f"--conv_impl={conv_impl}"]
            command += [f"--steps={steps}", f"--repeats={repeats}"]
            flags = SETTINGS[name]
            result = subprocess.run(command, env=environment(flags), capture_output=True, text=True)
            rows = [line for line in result.stdout.splitlines() if line.startswith("{")]
            for line in rows:
                print(json.dumps({"setting": name, "xla_flags": flags, **json.loads(line)}))
            if result.returncode != 0:
                print(
                    json.dumps(
                        {"setting": name, "conv_impl": conv_impl, "error": result.stderr[-500:]}
                    )
                )
            sys.stdout.flush()
    if not args.skip_gradient_check:
        gradient_check(settings)


if __name__ == "__main__":
    main()
