"""A scripted CLI session, timed.

1. N verifications as N ``iomface compare`` processes against one ``iomface verify-pairs`` (one
   model load), on LFW pairs (aligned crops, or raw photos with MTCNN when ``--raw``).
2. The template store: ``--people`` LFW identities enrolled by one ``enroll --from-folder``; the
   store-only commands (``list``, ``list --all``, ``show``: no model, no Keras), a few single
   ``verify`` processes against one ``verify --batch`` of every person, and ``identify --batch``.

Prints the wall time of each; the last line is JSON.

    python bench/cli_session.py [--pairs 20] [--people 24] [--raw] [--lfw ../shared/data/lfw_112]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import LFW_112, arg_parser, cli_env, emit, lfw_pairs, people, run_timed, today  # noqa: E402

IOMFACE = [sys.executable, "-m", "iom.cli"]


def store_session(root: str, n_people: int, single: int, aligned: list[str]) -> dict:
    """Enrol ``n_people`` LFW identities (first photo) with one process, then time the store-only
    commands, single verifications and the batches (second photo of each)."""
    chosen = people(root, min_photos=2)[:n_people]
    names = [name for name, _ in chosen]
    with tempfile.TemporaryDirectory() as tmp:
        env = cli_env(IOMFACE_APP_SECRET="bench-app-secret-0123456789", XDG_STATE_HOME=os.path.join(tmp, "state"))
        folder = os.path.join(tmp, "people")
        probes = []
        for name, photos in chosen:
            os.makedirs(os.path.join(folder, name))
            os.symlink(photos[0], os.path.join(folder, name, os.path.basename(photos[0])))
            probes.append((name, photos[1]))
        out = {"people": len(names)}
        out["enroll_from_folder_s"], done = run_timed([*IOMFACE, "enroll", "--from-folder", folder,
                                                       "--new_tokens_file", "tokens.tsv", *aligned], env, tmp)
        if done.returncode != 0:
            raise SystemExit(f"enroll --from-folder failed: {done.stderr[-500:]}")
        for label, args in (("list", ["list"]), ("list_all", ["list", "--all"]), ("show", ["show", names[0]])):
            runs = [run_timed([*IOMFACE, *args], env, tmp)[0] for _ in range(3)]
            out[f"{label}_s"] = round(sorted(runs)[1], 3)                     # the median of 3
            print(f"iomface {' '.join(args)}: {out[f'{label}_s']:.2f} s (median of 3)")
        with open(os.path.join(tmp, "tokens.tsv")) as f:
            tokens = dict(line.split("\t") for line in f.read().splitlines())
        singles = []
        for name, photo in probes[:single]:
            with open(os.path.join(tmp, "t"), "w") as f:
                f.write(tokens[name] + "\n")
            os.chmod(os.path.join(tmp, "t"), 0o600)
            seconds, done = run_timed([*IOMFACE, "verify", name, photo, "--token_file", "t", *aligned], env, tmp)
            singles.append(seconds)
        out["verify_single_s"] = round(sum(singles) / max(len(singles), 1), 2)
        with open(os.path.join(tmp, "batch.tsv"), "w") as f:
            f.writelines(f"{name}\t{photo}\n" for name, photo in probes)
        seconds, done = run_timed([*IOMFACE, "verify", "--batch", "batch.tsv", "--tokens_file", "tokens.tsv",
                                   *aligned, "--json"], env, tmp)
        summary = json.loads(done.stdout)["summary"]
        out.update(verify_batch_s=round(seconds, 2), verify_batch_accepted=summary["accepted"])
        with open(os.path.join(tmp, "photos.txt"), "w") as f:
            f.writelines(f"{photo}\n" for _, photo in probes)
        seconds, done = run_timed([*IOMFACE, "identify", "--batch", "photos.txt", *aligned, "--json"], env, tmp)
        out.update(identify_batch_s=round(seconds, 2), identify_batch_matched=json.loads(done.stdout)["summary"]["matched"])
    print(f"{len(names)} people: enroll --from-folder {out['enroll_from_folder_s']:.1f} s; verify one process each "
          f"{out['verify_single_s']:.1f} s a call ({out['verify_single_s'] * len(names):.0f} s for all); "
          f"verify --batch {out['verify_batch_s']:.1f} s ({out['verify_batch_accepted']} accepted); "
          f"identify --batch {out['identify_batch_s']:.1f} s ({out['identify_batch_matched']} matched)")
    return out


def pairs_session(pairs: list, aligned: list[str]) -> dict:
    """``len(pairs)`` ``iomface compare`` processes against one ``iomface verify-pairs``."""
    env = cli_env()
    with tempfile.TemporaryDirectory() as tmp:
        start, separate = time.perf_counter(), []
        for a, b, _ in pairs:
            _, done = run_timed([*IOMFACE, "compare", a, b, *aligned, "--json"], env, tmp)
            separate.append(json.loads(done.stdout)["accepted"])
        t_separate = time.perf_counter() - start
        listing = os.path.join(tmp, "pairs.txt")
        with open(listing, "w") as f:
            f.writelines(f"{a}\t{b}\t{s}\n" for a, b, s in pairs)
        t_batch, done = run_timed([*IOMFACE, "verify-pairs", listing, *aligned, "--json"], env, tmp)
        batch = json.loads(done.stdout)
    same = [r["accepted"] for r in batch["results"]] == separate
    print(f"{len(pairs)} x iomface compare: {t_separate:.1f} s ({t_separate / len(pairs):.2f} s each)")
    print(f"1 x iomface verify-pairs ({len(pairs)} pairs, one model load): {t_batch:.1f} s; same decisions: {same}")
    return {"separate_s": round(t_separate, 2), "verify_pairs_s": round(t_batch, 2), "same_decisions": same,
            "summary": batch["summary"]}


def main(argv=None) -> int:
    parser = arg_parser(__doc__, full=True)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--lfw", default=LFW_112)
    parser.add_argument("--raw", action="store_true", help="raw 250x250 LFW photos with MTCNN (needs --lfw "
                        "pointing at raw/lfw and its pairs): default aligned crops")
    parser.add_argument("--people", type=int, default=24, help="identities enrolled for the store session")
    parser.add_argument("--single", type=int, default=3, help="single verify processes timed (per-call cost)")
    args = parser.parse_args(argv)
    aligned = [] if args.raw else ["--aligned"]
    store = store_session(args.lfw, args.people, args.single, aligned)
    pairs = lfw_pairs(args.lfw, args.pairs)
    figures = pairs_session(pairs, aligned)
    emit({"pairs": len(pairs), "aligned": not args.raw, "separate_s": figures["separate_s"],
          "verify_pairs_s": figures["verify_pairs_s"], "same_decisions": figures["same_decisions"],
          "summary": figures["summary"], "store": store,
          "machine": f"{platform.machine()} {os.cpu_count()} cpus", "date": today()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
