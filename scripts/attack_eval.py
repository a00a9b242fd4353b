"""Measure the attacks of the template-service security issue, before and after its fix.

    python scripts/attack_eval.py [--data ../shared/data/celeba299_112 | --embeddings FILE.npz]
        [--hashers iom_mobilefacenet_ms1m_512x8 random:512x8] [--seeds 0 1 2]
        [--targets before after] [--attacks score_oracle relabelling row_forgery tokens full_key]
        [--quick] [--jobs N] [--validate_legacy DIR] [--json docs/results/attack_eval.json]
        [--table docs/results/attack_eval.md] [--workdir DIR]

``before`` is the legacy scheme (re-created in iom/attacks/legacy.py; ``--validate_legacy DIR``
first checks it against the legacy code extracted at DIR, e.g.
``git archive f622519 | tar -x -C DIR``); ``after`` is the current template service with
raw embeddings allowed and scores not exposed. Faces are the embeddings of an identity folder
by the first deep hasher's stage-1 model (computed once, cached in outputs/embeddings).
Writes every figure (mean, spread and per-seed values) as JSON and the before/after table
as Markdown (see iom/attacks/ for what each attack does).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402

DEFAULT_HASHERS = ["iom_mobilefacenet_ms1m_512x8", "random:512x8"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/celeba299_112", help="identity folder of aligned faces")
    parser.add_argument("--embeddings", default=None, help=".npz of embeddings with labels (instead of --data)")
    parser.add_argument("--hashers", nargs="+", default=DEFAULT_HASHERS,
                        help="shipped deep IoM hashers (models/NAME) and/or random:MxQ")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", default=["before", "after"], choices=["before", "after"])
    parser.add_argument("--attacks", nargs="+", default=None, help="a subset of the attacks (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller attacks (about a fifth of the work)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes (default: 2, or 1 on a single core)")
    parser.add_argument("--validate_legacy", default=None, metavar="DIR",
                        help="first check the re-created legacy scheme against the legacy code in DIR")
    parser.add_argument("--json", default="docs/results/attack_eval.json")
    parser.add_argument("--table", default="docs/results/attack_eval.md")
    parser.add_argument("--workdir", default=None, help="where the attacked databases go (default: a temp dir)")
    args = parser.parse_args(argv)

    import json
    import platform
    import tempfile
    import time
    from datetime import datetime, timezone

    import keras

    from arcface.embeddings_io import load_embeddings
    from iom.attacks.faces import Faces, real_faces
    from iom.attacks.hashers import hasher_under_test
    from iom.attacks.legacy import validate_against_old_code
    from iom.attacks.report import markdown, summarise_suite
    from iom.attacks.setting import Scale
    from iom.attacks.suite import ATTACKS, run_suite
    from iom.features import unit_rows

    start = time.perf_counter()
    unknown = set(args.attacks or ()) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attacks {sorted(unknown)} (known: {', '.join(ATTACKS)})")
    deep = [h for h in args.hashers if not h.startswith("random:")]
    workdir = args.workdir or tempfile.mkdtemp(prefix="attack_eval_")
    os.makedirs(workdir, exist_ok=True)

    validation = None
    if args.validate_legacy:
        from arcface.pretrained import MODELS_DIR

        name = deep[0] if deep else "iom_mobilefacenet_ms1m_512x8"
        # the scheme is checked with a hasher both codes can read: the legacy tree's own shipped one
        # of that name (later hashers carry layers the legacy code does not know), else ours
        legacy_hasher = os.path.join(args.validate_legacy, "models", name)
        validation = validate_against_old_code(
            args.validate_legacy, legacy_hasher if os.path.isdir(legacy_hasher) else os.path.join(MODELS_DIR, name),
            os.path.join(workdir, "legacy_validation"))
        print(f"legacy scheme vs legacy code {validation['legacy_commit'][:7]}: "
              f"{'identical' if validation['identical'] else 'DIFFERENT'}")
        if not validation["identical"]:
            return 1

    if args.embeddings:
        data = load_embeddings(args.embeddings)
        if data.labels is None:
            parser.error(f"{args.embeddings} has no labels")
        faces = Faces(unit_rows(data.embeddings, args.embeddings), data.labels, args.embeddings)
    else:
        from arcface.pretrained import MODELS_DIR

        stage1 = {json.load(open(os.path.join(MODELS_DIR, h, "hasher.json")))["stage1_model"] for h in deep} \
            or {"mobilefacenet_ms1m"}
        if len(stage1) > 1:
            parser.error(f"the deep hashers use different stage-1 models {sorted(stage1)}: run them separately")
        faces = real_faces(args.data, stage1.pop())
    hashers = {name: hasher_under_test(name, faces) for name in args.hashers}
    scale = Scale().quick() if args.quick else Scale()
    print(f"{len(faces.embeddings)} faces of {len(faces.identities())} identities ({faces.source}); "
          f"hashers {', '.join(hashers)}; seeds {args.seeds}; {'quick' if args.quick else 'full'} scale")

    results = run_suite(hashers, faces, args.seeds, scale, workdir, kinds=args.targets, attacks=args.attacks,
                        jobs=args.jobs)
    summary = summarise_suite(results)
    labels = {n: f"{n} (m={h.m}, q={h.q})" for n, (h, _) in hashers.items()}
    table = markdown(summary, labels)
    runtime = time.perf_counter() - start
    out = {
        "command": "python scripts/attack_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": round(runtime, 1),
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
                    "keras_backend": keras.backend.backend()},
        "data": {"source": faces.source, "images": int(len(faces.embeddings)),
                 "identities": int(len(faces.identities())), "dim": faces.dim},
        "scale": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(scale).items()},
        "seeds": args.seeds,
        "legacy_validation": validation,
        "hashers": {n: {"model_id": h.spec.get("model_id"), "m": h.m, "q": h.q, "dim": h.dim,
                        "threshold": cal["threshold"], "far": cal.get("far"),
                        "calibration": "shipped calibration.json" if not n.startswith("random:")
                        else f"computed on {faces.source} (every genuine pair, 200,000 impostor pairs)"}
                    for n, (h, cal) in hashers.items()},
        "results": summary,
        "table": table,
    }
    for path, text in ((args.json, json.dumps(out, indent=1)), (args.table, table + "\n")):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    print(table)
    print(f"runtime {runtime / 60:.1f} min -> {args.json}, {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
