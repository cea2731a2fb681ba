"""Peak memory of a plasticity run does not grow with the number of pairs.

Runs the whole job (data, estimator, tables, figures) twice in fresh subprocesses, with N and
10 x N pairs, on the tiny-random model and offline streams (photos vs digits), and compares
their peak resident set sizes (ru_maxrss). The last line is a JSON object with
`peak_ratio_10x` (peak RSS of 10 x N over N; the aim is <= 1.10).

    .venv/bin/python benchmarks/plasticity_memory.py [--pairs 64] [--model tiny-random]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile


def child(args: argparse.Namespace) -> None:
    from vitplas.analysis.job import PlasticityConfig
    from vitplas.jobs.runners import run_plasticity

    cfg = PlasticityConfig(
        model=args.model,
        random_init=True,
        reference="photos",
        target="digits",
        pairs=args.pairs,
        batch_size=args.batch_size,
        device="cpu",
        figures=True,
    )
    with tempfile.TemporaryDirectory() as out:
        result = run_plasticity(cfg, out)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    record = {"pairs": result["pairs"], "peak_rss_mib": peak_kib / 1024}
    record["seconds"] = result["timings"]["total_s"]
    print(json.dumps(record))


def measure(pairs: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", "--pairs", str(pairs)]
    command += ["--model", args.model, "--batch-size", str(args.batch_size)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    small = measure(args.pairs, args)
    large = measure(10 * args.pairs, args)
    result = {
        "bench": "plasticity_memory",
        "device": "cpu",
        "model": args.model,
        "batch_size": args.batch_size,
        "runs": [small, large],
        "peak_ratio_10x": large["peak_rss_mib"] / small["peak_rss_mib"],
        "growth_mib": large["peak_rss_mib"] - small["peak_rss_mib"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
