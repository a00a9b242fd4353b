"""Code-size sweep: deep IoM vs random IoM vs raw cosine, into docs/RESULTS.md.

    python scripts/sweep_iom.py --cfg_path configs/iom_mobilefacenet_ms1m_64x8.yaml

trains the config's deep IoM recipe at every size of ``--sizes`` with each seed of
``--seeds``, draws random IoM under ``--n_keys`` keys, measures all of them and raw cosine on
the config's verification set (LFW: 10-fold accuracy, EER, TAR@FAR on the listed pairs, and
TAR@FAR 1e-3 / 1e-4 over all pairs of its images), and writes the JSON, a plot of accuracy
and TAR@FAR=1e-3 against code bits, and the table into the marked block of ``--results``.
``--protocol person_disjoint`` trains one head per LFW fold on the training set plus the
LFW people absent from that fold (see iom/evaluation/sweep.py).
"""

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface.cli import fail_cleanly  # noqa: E402

DEFAULT_SIZES = "512x8,256x8,128x8,64x8,32x8,256x16,128x4"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg_path", required=True, help="stage-2 YAML config: the recipe and the data")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="a shipped stage-1 model to put under the config (its backbone_type, embd_shape; "
                             "sub_name gets its name); default: the config's stage1_model")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated MxQ (default {DEFAULT_SIZES})")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds of deep IoM (default 0,1,2)")
    parser.add_argument("--n_keys", type=int, default=5, help="random IoM keys per size (default 5)")
    parser.add_argument("--protocol", default="train_set", choices=["train_set", "person_disjoint"])
    parser.add_argument("--transform", default="none",
                        help="map the features first, to stand in for another extractor: none, relu128, "
                        "offset_scale, anisotropic512 (iom/evaluation/sweep.py)")
    parser.add_argument("--json", default=None, help="default docs/results/sweep_iom_<protocol>.json")
    parser.add_argument("--plot", default=None, help="default docs/images/iom/sweep_<protocol>.png")
    parser.add_argument("--results", default="docs/RESULTS.md",
                        help="markdown file whose sweep block is rewritten ('' for none)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a config key for this sweep (repeatable), e.g. --set loss_fun=batch_hard_arc_triplet_loss")
    parser.add_argument("--checkpoint_root", default="checkpoints")
    parser.add_argument("--cache_dir", default="outputs/sweep",
                        help="finished runs are kept here and reused ('' for none)")
    args = parser.parse_args(argv)

    from arcface.errors import ConfigError
    from iom.config import load_stage2_config
    from iom.evaluation.sweep import Size, run_sweep, write_outputs

    sizes = [Size.parse(s) for s in args.sizes.split(",") if s.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: comma-separated integers expected") from None
    if not sizes or not seeds or args.n_keys < 1:
        raise ConfigError("--sizes, --seeds and --n_keys must each name at least one run")
    cfg = load_stage2_config(args.cfg_path, args.overrides, stage1_model=args.model)
    tag = args.protocol + ("" if args.transform == "none" else f"_{args.transform}")
    json_path = args.json or f"docs/results/sweep_iom_{tag}.json"
    plot_path = args.plot or f"docs/images/iom/sweep_{tag}.png"
    command = "python scripts/sweep_iom.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    def write(result):      # after every size, so an interrupted sweep leaves what it measured
        write_outputs(result, json_path, plot_path, args.results or None, command)

    run_sweep(cfg, sizes, seeds, args.n_keys, args.protocol, args.checkpoint_root,
              transform=args.transform, cache_dir=args.cache_dir or None, on_size=write)
    print(f"sweep -> {json_path}, {plot_path}" + (f", {args.results}" if args.results else ""))
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
