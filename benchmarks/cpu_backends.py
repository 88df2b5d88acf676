"""suite.py's workloads under each of XLA:CPU's alternative backends, one subprocess per
setting (XLA reads XLA_FLAGS once per process): one JSON line per workload and setting, the
suite's row plus ``xla_flags``. Each row keeps the suite's check that metax and the
hand-written reference compute the same meta-gradient under those flags.

  python benchmarks/cpu_backends.py [--workloads W2] [--steps 2] [--repeats 2]
"""

import argparse
import json
import os
import subprocess
import sys

SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_fusion": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn_fusion": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise",
    "ynn_fusion": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W2")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    suite = os.path.join(os.path.dirname(os.path.abspath(__file__)), "suite.py")
    for name in args.settings.split(","):
        flags = SETTINGS[name]
        env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
        command = [sys.executable, suite, f"--workloads={args.workloads}"]
        command += [f"--steps={args.steps}", f"--repeats={args.repeats}"]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            print(json.dumps({"setting": name, "xla_flags": flags, "error": result.stderr[-500:]}))
            continue
        for line in result.stdout.splitlines():
            if line.startswith("{"):
                print(json.dumps({"setting": name, "xla_flags": flags, **json.loads(line)}))


if __name__ == "__main__":
    main()
