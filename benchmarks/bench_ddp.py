"""Two-process data-parallel training on the CPU: images/s of the default config, source trees side by side.

Runs ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m ddpm_hub.train`` (the default
config: configs/mnist.yaml's model, batch 64 per process) for ``--steps`` steps with each source tree on
PYTHONPATH in turn, interleaved (A, B, A, B ...), and reports the training images/s of train_info.json and
whether DDP warned "Grad strides do not match bucket view strides". Compare a tree before a change with
one after it::

    git archive OLD_COMMIT | tar -x -C /tmp/before
    python benchmarks/bench_ddp.py --trees /tmp/before . --reps 3 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WARNING = "Grad strides do not match bucket view strides"


def run_once(tree: Path, steps: int, out: Path) -> dict:
    tree = tree.resolve()
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(tree), str(tree / "plugins/ddpm-hub-dit"), str(tree / "plugins/ddpm-hub-schedules")]
        ),
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        "0",
        "--mixed_precision",
        "no",
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
        "-m",
        "ddpm_hub.train",
        "--output_dir",
        str(out),
        "--overwrite_output_dir",
        "true",
        "--max_steps",
        str(steps),
        "--sample_steps",
        "0",
        "--checkpointing_steps",
        "0",
        "--final_sampler",
        "ddim",
        "--final_inference_steps",
        "10",
        "--log_with",
        "none",
        "--data.num_workers",
        "0",
    ]
    # cwd=tree: `python -m` puts the working directory first on sys.path
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{tree}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    info = json.loads((out / "train_info.json").read_text())
    return {"images_per_s": info["images_per_s"], "ddp_warning": WARNING in proc.stdout + proc.stderr}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trees", nargs="+", type=Path, required=True, help="source trees to compare")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    results: dict[str, list[dict]] = {str(t): [] for t in args.trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.reps):
            order = args.trees[r % len(args.trees) :] + args.trees[: r % len(args.trees)]
            for tree in order:
                res = run_once(tree, args.steps, Path(tmp) / "run")
                results[str(tree)].append(res)
                print(
                    f"rep {r} {tree}: {res['images_per_s']:.1f} img/s, DDP warning {res['ddp_warning']}",
                    flush=True,
                )
    base = statistics.median(r["images_per_s"] for r in results[str(args.trees[0])])
    summary = {}
    for tree, rows in results.items():
        med = statistics.median(r["images_per_s"] for r in rows)
        summary[tree] = {
            "median_images_per_s": med,
            "ratio_vs_first": med / base,
            "ddp_warning": any(r["ddp_warning"] for r in rows),
            "runs": rows,
        }
        print(
            f"{tree}: median {med:.1f} img/s, x{med / base:.3f}, DDP warning {summary[tree]['ddp_warning']}"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
