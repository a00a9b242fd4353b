"""HTTP load test: N concurrent clients against a local ``iomface serve``, a mixed workload.

A :class:`~iom.server.launch.LocalServer` is started (``iomface serve`` in a subprocess on a
free loopback port, a fresh key file, the shipped default hasher, the store ``--db``: a
temporary SQLite file by default, a ``postgresql://`` URL, or ``postgres``: see below). Its
rate limits are raised out of reach of a load test — ``--verify_per_minute``, ``--identify_per_minute`` and
``--subject_verify_per_minute`` 100000 and ``--max_failures`` 1000000 (a genuine pair that the
operating point happens to reject would otherwise lock its subject after 5 failures, and every
later verify of it would be a 429) — everything else is the server's default (scrypt 2**14 for
every enrolment and verification, decisions without scores).

Photos (``--photos``):

* ``aligned`` (default): the 112x112 LFW crops of ``--lfw`` sent with ``aligned=true`` (no face
  detection on the server); people with at least two photos: the first enrols, the second
  probes;
* ``raw``: the raw 250x250 LFW photos of ``--raw_lfw`` (20 people x 2), the server runs MTCNN
  (one detector, one photo at a time); new enrolments reuse these 20 people under new ids.

``--db postgres`` starts a throw-away PostgreSQL server (``tests/pg_server.py``, as
``bench/concurrency.py`` does) with a new database.

``--preenrol`` subjects are enrolled first (admin key, ``--clients`` threads, not timed).
Then ``--clients`` threads, each with its own ``httpx.Client`` (keep-alive), start together
and loop for ``--seconds``, each request drawn by ``--mix`` (weights; default
``verify=60,identify=25,enrol=15``):

=========  ==================================================================  ========
op         request                                                             expected
=========  ==================================================================  ========
verify     ``POST /v1/subjects/{id}/verify`` (client key): an enrolled         200
           subject's other photo with its token (genuine)
impostor   the same with another person's photo (weight 0 unless given)        200
identify   ``POST /v1/identify`` (client key, top_k 5): an enrolled subject's  200
           other photo
enrol      ``POST /v1/subjects/{id}`` (admin key): a new subject, a fresh      201
           random token (128 bits); once acknowledged it joins the pool
=========  ==================================================================  ========

An *error* is any other status or a transport failure (timeout, reset). Decisions are
counted, not errors: the genuine acceptance rate of ``verify`` (against the operating
point's expected TAR; per request and per distinct subject — a subject's probe is always the
same photo, so its decision repeats), the impostor acceptance rate, and for ``identify`` whether a subject
of the probe's person is among the candidates (hit) and whether a subject of another person
is (false candidate). After the run every acknowledged enrolment (201) must be listed by
``GET /v1/subjects`` (admin key); the server's own counters (``GET /metrics``) are reported
next to the client's, and the server log is searched for error lines.

Printed: requests/s overall and per op, p50/p99/max latency per op (client side, wall clock
around the request), errors, decisions, the audit, the server's CPU time; the LAST stdout
line is one JSON object with every figure, the machine and the command. Exit 1 if there was
an error or an acknowledged enrolment is missing.

The machine is shared with the server (same cores: the clients' own CPU is reported) and
possibly other jobs: the load averages before and after are in the record.

Usage::

    python bench/http_load.py --clients 4 --seconds 30
    python bench/http_load.py --clients 16 --seconds 60 --photos raw
    python bench/http_load.py --mix verify=50,identify=20,enrol=10,impostor=20
"""
from __future__ import annotations

import os
import random
import secrets
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (LFW_112, RAW_LFW, add_json_option, arg_parser, command_line, emit,  # noqa: E402
                          loadavg, machine_line, machine_record, people, process_cpu_s, say,
                          store_location, utc_now)
from bench.web import api  # noqa: E402
from bench.web.load import (DEFAULT_MIX, MAX_SAMPLES, OPS, TOP_K, Pool, counts_match, merge,  # noqa: E402
                            parse_mix, preenrol, worker)

#: the serve options of the load test (see the module doc)
LOAD_OPTIONS = ["--verify_per_minute", "100000", "--identify_per_minute", "100000",
                "--subject_verify_per_minute", "100000", "--max_failures", "1000000"]


def parse_args(argv=None):
    parser = arg_parser(__doc__)
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (threads)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long they send requests")
    parser.add_argument("--photos", choices=("aligned", "raw"), default="aligned",
                        help="aligned 112x112 crops (aligned=true) or raw photos (the server runs MTCNN)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"op weights (default {DEFAULT_MIX}; ops: {', '.join(OPS)})")
    parser.add_argument("--preenrol", type=int, default=None,
                        help="subjects enrolled before the run (default: 100 aligned, 10 raw)")
    parser.add_argument("--db", default=None, help="SQLite path, postgresql:// URL, or 'postgres': a throw-away "
                        "PostgreSQL server (tests/pg_server.py) (default: a temp SQLite file)")
    parser.add_argument("--lfw", default=LFW_112)
    parser.add_argument("--raw_lfw", default=RAW_LFW)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runtime", choices=("auto", "keras", "tflite"), default=None,
                        help="the server's --runtime (default: the server's own default, auto)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    try:
        args.mix = parse_mix(args.mix)
    except ValueError as e:
        parser.error(str(e))
    if args.clients < 1 or not args.seconds > 0:
        parser.error("--clients must be positive and --seconds positive")
    args.aligned = args.photos == "aligned"
    args.people = people(args.lfw if args.aligned else args.raw_lfw, min_photos=2)
    random.Random(args.seed).shuffle(args.people)
    args.n_pre = args.preenrol if args.preenrol is not None else (100 if args.aligned else 10)
    if not 1 <= args.n_pre <= len(args.people):
        parser.error(f"--preenrol must be in 1..{len(args.people)}")
    return args


def serve_options(args) -> list[str]:
    """Every option the bench passes to ``iomface serve`` (the one place to add more)."""
    return list(LOAD_OPTIONS) + (["--runtime", args.runtime] if args.runtime else [])


def run(args, pool: Pool, options: list[str]) -> dict:
    """Start the server, pre-enrol, run the clients, audit the store; the raw outcome."""
    import httpx

    from iom.server.launch import LocalServer

    out = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="iom-http-load-") as tmp, \
            store_location(args.db, tmp, prefix="iomhttp") as db, LocalServer(db=db, options=options) as server:
        out["startup_s"] = time.perf_counter() - t0
        keys = {"admin": server.admin_key, "client": server.client_key}
        t1 = time.perf_counter()
        out["pre"] = pre = preenrol(server.url, keys, pool, pool.people[:args.n_pre], args.aligned,
                                    min(args.clients, 4))
        out["preenrol_s"] = time.perf_counter() - t1
        say(f"server up in {out['startup_s']:.1f} s; {len(pool.enrolled)} subjects pre-enrolled in "
            f"{out['preenrol_s']:.1f} s ({len(pre['failures'])} failures)")
        if not pool.enrolled:
            return out
        pid = server.process.pid
        cpu_server0, cpu_client0 = process_cpu_s(pid), time.process_time()
        tallies: list = [None] * args.clients
        barrier = threading.Barrier(args.clients + 1)
        threads = [threading.Thread(target=worker, args=(k, server.url, keys, pool, args.mix, args.aligned,
                                                         args.seconds, args.seed, barrier, tallies))
                   for k in range(args.clients)]
        for th in threads:
            th.start()
        barrier.wait()
        start = time.perf_counter()
        for th in threads:
            th.join()
        out["elapsed"] = max(t.end for t in tallies) - start
        cpu_server1, cpu_client1 = process_cpu_s(pid), time.process_time()
        out["load_after"] = loadavg()

        # audit: every acknowledged enrolment is listed
        with httpx.Client(base_url=server.url, timeout=120.0) as c:
            listed = c.get("/v1/subjects", headers=api.bearer(server.admin_key))
            metrics = c.get("/metrics", headers=api.bearer(server.admin_key))
        listed = set(listed.json()["subjects"]) if listed.status_code == 200 else set()
        acked = [s for t in tallies for s in t.acked]
        pre_ids = [s for s, _, _ in pool.enrolled if s not in set(acked)]
        sent = {s for t in tallies for s in t.sent_enrolments}
        out.update(
            tallies=tallies, listed=listed, acked=acked, pre_ids=pre_ids,
            missing=sorted(s for s in [*pre_ids, *acked] if s not in listed),
            unacked_present=sorted(s for s in sent - set(acked) if s in listed),
            server_counts=api.metrics_counts(metrics.text) if metrics.status_code == 200 else {},
            log_errors=[line for line in server.log_lines() if '"level": "error"' in line],
            server_cpu=None if cpu_server0 is None or cpu_server1 is None else round(cpu_server1 - cpu_server0, 1),
            client_cpu=round(cpu_client1 - cpu_client0, 1))
    return out


def report(record: dict, figures: dict, run_out: dict) -> None:
    per_op, samples = figures["per_op"], figures["samples"]
    say(f"{record['clients']} clients, {record['elapsed_s']:.1f} s: {record['requests']} requests, "
        f"{record['requests_per_s']} req/s, {record['errors']} errors; server CPU {record['server_cpu_s']} s "
        f"({record['server_cpu_per_request_ms']} ms/request), clients' CPU {record['client_cpu_s']} s")
    for op, f in per_op.items():
        lat = f["latency_ms"]
        say(f"  {op:9s} {f['requests']:6d} {f['per_s']:7.2f}/s   latency p50 {lat['p50']:8.1f}  "
            f"p99 {lat['p99']:8.1f}  max {lat['max']:8.1f} ms")
    say(f"decisions: {record['decisions']}")
    audit = record["audit"]
    say(f"audit: {audit['acknowledged_enrolments']} acknowledged enrolments, {audit['n_missing']} missing, "
        f"{audit['listed']} subjects listed; {len(run_out['unacked_present'])} unacknowledged enrolments present; "
        f"server log error lines: {record['server_log_error_lines']}; "
        f"server counters match the client's: {record['server_counts_match_client']}")
    for s in samples[:MAX_SAMPLES]:
        say(f"  error: {s}")
    say(f"load average after: {run_out['load_after']}; {'OK' if record['ok'] else 'FAILED'}")


def main(argv=None) -> int:
    args = parse_args(argv)
    pool = Pool(args.people, args.n_pre, f"L{secrets.token_hex(3)}", reuse=not args.aligned)
    options = serve_options(args)
    command = command_line("bench/http_load.py", argv)
    load_before = loadavg()
    say(f"machine: {machine_line()}, load average {load_before} (shared machine: figures are noisy); "
        f"{args.clients} clients x {args.seconds:g} s, photos {args.photos}, mix {args.mix}; "
        f"serve options {' '.join(options)}")
    out = run(args, pool, options)
    pre = out["pre"]
    if not pool.enrolled:
        print("\n".join(pre["failures"][:5]), file=sys.stderr)
        return 1
    elapsed, tallies = out["elapsed"], out["tallies"]
    figures = merge(tallies, elapsed)
    total, n_errors, server_cpu = figures["total"], sum(figures["errors"].values()), out["server_cpu"]
    ok = n_errors == 0 and not out["missing"] and not pre["failures"]
    record = {
        "ok": ok, "clients": args.clients, "seconds": args.seconds, "elapsed_s": round(elapsed, 2),
        "photos": args.photos, "mix": args.mix, "preenrolled": args.n_pre,
        "preenrol_failures": pre["failures"][:MAX_SAMPLES],
        "preenrol_s": round(out["preenrol_s"], 1), "server_startup_s": round(out["startup_s"], 1),
        "store": "postgresql" if (args.db or "").startswith("postgres") else "sqlite",
        "serve_options": options, "top_k": TOP_K,
        "requests": total, "requests_per_s": round(total / elapsed, 2), "ops": figures["per_op"],
        "errors": n_errors, "errors_by_kind": dict(figures["errors"]), "error_samples": figures["samples"][:MAX_SAMPLES],
        "decisions": figures["decision"],
        "audit": {"acknowledged_enrolments": len(out["acked"]), "preenrolled": len(out["pre_ids"]),
                  "missing": out["missing"][:MAX_SAMPLES], "n_missing": len(out["missing"]),
                  "unacknowledged_but_present": out["unacked_present"][:MAX_SAMPLES], "listed": len(out["listed"])},
        "server_counts": out["server_counts"],
        "server_counts_match_client": counts_match(out["server_counts"], tallies, figures["decisions"],
                                                   len(out["pre_ids"])),
        "server_log_error_lines": len(out["log_errors"]),
        "server_cpu_s": server_cpu, "server_cpu_per_request_ms": round(1000 * server_cpu / total, 1)
        if server_cpu is not None and total else None,
        "client_cpu_s": out["client_cpu"],
        "machine": machine_record(loadavg_before=load_before, loadavg_after=out["load_after"],
                                  note="shared machine (other jobs may run): timings are noisy; clients and "
                                       "server share the same cores"),
        "command": command, "date": utc_now(),
    }
    report(record, figures, out)
    emit(record, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
