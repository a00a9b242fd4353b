"""A scripted CLI session: N verifications as N ``iomface compare`` processes against one
``iomface verify-pairs`` (one model load), on LFW pairs (aligned crops, or raw photos with
MTCNN when ``--raw``). Prints the wall time of each; the last line is JSON.

    python bench/cli_session.py [--pairs 20] [--raw] [--lfw ../shared/data/lfw_112]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lfw_pairs(root: str, n: int) -> list[tuple[str, str, int]]:
    """The first n/2 genuine and n/2 impostor pairs of pairs.txt."""
    lines = open(os.path.join(root, "pairs.txt")).read().splitlines()[1:]
    genuine = [line.split("\t") for line in lines if len(line.split("\t")) == 3]
    impostor = [line.split("\t") for line in lines if len(line.split("\t")) == 4]

    def path(name, k):
        return os.path.join(root, name, f"{name}_{int(k):04d}.jpg")

    out = [(path(f[0], f[1]), path(f[0], f[2]), 1) for f in genuine[: n // 2]]
    out += [(path(f[0], f[1]), path(f[2], f[3]), 0) for f in impostor[: n - n // 2]]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--lfw", default=os.path.join(REPO, "..", "shared", "data", "lfw_112"))
    parser.add_argument("--raw", action="store_true", help="raw 250x250 LFW photos with MTCNN (needs --lfw "
                        "pointing at raw/lfw and its pairs): default aligned crops")
    args = parser.parse_args(argv)
    pairs = lfw_pairs(args.lfw, args.pairs)
    aligned = [] if args.raw else ["--aligned"]
    cmd = [sys.executable, "-m", "iom.service.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOMFACE_")}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        separate = []
        for a, b, _ in pairs:
            done = subprocess.run([*cmd, "compare", a, b, *aligned, "--json"], capture_output=True, text=True,
                                  env=env, cwd=tmp)
            separate.append(json.loads(done.stdout)["accepted"])
        t_separate = time.perf_counter() - start
        listing = os.path.join(tmp, "pairs.txt")
        with open(listing, "w") as f:
            f.writelines(f"{a}\t{b}\t{s}\n" for a, b, s in pairs)
        start = time.perf_counter()
        done = subprocess.run([*cmd, "verify-pairs", listing, *aligned, "--json"], capture_output=True, text=True,
                              env=env, cwd=tmp)
        t_batch = time.perf_counter() - start
        batch = json.loads(done.stdout)
    same = [r["accepted"] for r in batch["results"]] == separate
    print(f"{len(pairs)} x iomface compare: {t_separate:.1f} s ({t_separate / len(pairs):.2f} s each)")
    print(f"1 x iomface verify-pairs ({len(pairs)} pairs, one model load): {t_batch:.1f} s; same decisions: {same}")
    print(json.dumps({"pairs": len(pairs), "aligned": not args.raw, "separate_s": round(t_separate, 2),
                      "verify_pairs_s": round(t_batch, 2), "same_decisions": same,
                      "summary": batch["summary"], "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                      "date": time.strftime("%Y-%m-%d")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
