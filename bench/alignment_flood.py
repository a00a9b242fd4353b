#!/usr/bin/env python
"""A flood of costly photos from one API key against another client's latency (issue 24, finding 4).

A :class:`~iom.server.launch.LocalServer` (``iomface serve``, default options, the shipped default
hasher) enrols one subject. The *victim*, a client key, verifies that subject with a raw LFW photo
(250x250: the server detects and aligns the face) ``--n`` times, one after another, and records
each latency: first alone (*quiet*), then while the *attacker*, another client key, sends
``--streams`` parallel streams of a small PNG that declares 5000x5000 pixels (a flat image: about
80 kB, under the default ``--max_megapixels 25``) to ``POST /v1/identify`` as fast as they are
answered. Reported: the victim's p50 and p99 in both phases and their ratio, the attacker's calls
answered and refused (429), the machine's load. ``--code_root DIR`` runs the server from another
checkout (the code before a change: ``git worktree add DIR COMMIT``), which is how the "before"
figure is made.

Written: ``--out`` (JSON) and the last stdout line. Usage::

    python bench/alignment_flood.py [--n 40] [--streams 2] [--out docs/results/alignment_flood.json]
    python bench/alignment_flood.py --code_root ../before --out /tmp/before.json
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (RAW_LFW, arg_parser, cpu_model, emit, loadavg, percentile, say,  # noqa: E402
                          utc_now)
from bench.web import api  # noqa: E402

TOKEN = "correct-horse-battery-staple"
PERSON = "Bill_Simon"
#: the victim's own verifications are not what is measured: its limits are out of reach (the
#: attacker's identify limit stays the default)
VICTIM_LIMITS = ["--subject_verify_per_minute", "100000", "--verify_per_minute", "100000"]

#: imported first by the server of ``--code_root``: an editable install of this checkout puts a
#: finder on ``sys.meta_path`` that would otherwise win over ``PYTHONPATH``
DROP_EDITABLE_FINDER = (
    "import sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]\n")


def bomb_png(side: int = 5000) -> bytes:
    """A flat grey PNG of ``side`` x ``side`` pixels (compresses to tens of kB)."""
    import cv2
    import numpy as np

    ok, data = cv2.imencode(".png", np.full((side, side, 3), 128, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return data.tobytes()


def checkout_env(code_root: str, folder: str) -> dict:
    """The environment that makes ``python -m iom...`` import the checkout at ``code_root``."""
    with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
        f.write(DROP_EDITABLE_FINDER)
    return {"PYTHONPATH": os.pathsep.join([folder, os.path.abspath(code_root)])}


def victim_latencies(http, key: str, subject: str, photo: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = api.verify(http, key, subject, photo, TOKEN)
        out.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise RuntimeError(f"victim verify: {r.status_code} {r.text[:200]}")
    return out


def flood(url: str, key: str, bomb: bytes, stop: threading.Event, counts: dict) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=300.0) as http:
        while not stop.is_set():
            r = api.identify(http, key, bomb, filename="bomb.png", content_type="image/png")
            counts[r.status_code] = counts.get(r.status_code, 0) + 1
            if r.status_code == 429:
                time.sleep(float(r.headers.get("retry-after", "1")))


def parse_args(argv=None):
    parser = arg_parser(__doc__, full=True)
    parser.add_argument("--n", type=int, default=40, help="victim verifications per phase")
    parser.add_argument("--streams", type=int, default=2, help="attacker streams in parallel")
    parser.add_argument("--raw", default=RAW_LFW, help="raw LFW photos (one folder per person)")
    parser.add_argument("--code_root", default=None, help="run the server from this checkout instead")
    parser.add_argument("--out", default=None, help="write the JSON record here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import httpx

    from iom.server.launch import LocalServer

    folder = os.path.join(args.raw, PERSON)
    photos = [open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))]
    env = checkout_env(args.code_root, tempfile.mkdtemp(prefix="flood-env-")) if args.code_root else {}
    bomb = bomb_png()
    with LocalServer(options=VICTIM_LIMITS, env=env) as server:
        victim = server.add_key("victim", "client")
        attacker = server.add_key("attacker", "client")
        with httpx.Client(base_url=server.url, timeout=300.0) as http:
            r = api.enrol(http, server.admin_key, "alice", photos[0], TOKEN)
            if r.status_code != 201:
                raise RuntimeError(f"enrol: {r.status_code} {r.text[:200]}")
            victim_latencies(http, victim, "alice", photos[1], 3)            # warm-up: detector built
            quiet = victim_latencies(http, victim, "alice", photos[1], args.n)
            stop, counts = threading.Event(), {}
            streams = [threading.Thread(target=flood, args=(server.url, attacker, bomb, stop, counts))
                       for _ in range(args.streams)]
            for t in streams:
                t.start()
            time.sleep(2.0)                                                  # the flood is under way
            load = loadavg()
            flooded = victim_latencies(http, victim, "alice", photos[1], args.n)
            stop.set()
            for t in streams:
                t.join()
    record = {
        "bench": "alignment_flood", "date": utc_now(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_during_flood": load},
        "code_root": args.code_root, "n": args.n, "streams": args.streams, "bomb_bytes": len(bomb),
        "quiet_p50_s": percentile(quiet, 50), "quiet_p99_s": percentile(quiet, 99),
        "flood_p50_s": percentile(flooded, 50), "flood_p99_s": percentile(flooded, 99),
        "attacker_statuses": {str(k): v for k, v in sorted(counts.items())},
    }
    record["p99_ratio"] = record["flood_p99_s"] / record["quiet_p99_s"]
    say(f"victim p50/p99: quiet {record['quiet_p50_s']:.3f}/{record['quiet_p99_s']:.3f} s, flood "
        f"{record['flood_p50_s']:.3f}/{record['flood_p99_s']:.3f} s (p99 x{record['p99_ratio']:.2f}); "
        f"attacker {record['attacker_statuses']}")
    emit(record, args.out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
