#!/usr/bin/env python
"""Several processes enroll, verify, revoke, reissue and identify against one store; then an audit.

For each back end in ``--backends`` a fresh store is created (SQLite: a file in a temp
folder; PostgreSQL: a new database on a throw-away server started by ``tests/pg_server.py``),
then ``--workers`` processes (``multiprocessing``, 'spawn' context) each open their own
connection and build a :class:`~iom.service.service.TemplateService` on the shipped hasher
``models/iom_mbfn_celeba299_512x8`` (loaded once per process; embeddings, not photos: a
random unit 512-d vector per subject, probes are noisy copies at cosine ~0.96).

The service runs the security API (docs/dev/service_api_v2.md) with the policy
:data:`~bench.store_load.setup.POLICY_ARGS`: ``allow_embeddings=True`` (the bench feeds embeddings), decisions without
scores (the default), **scrypt_n = 2**10** — the cheapest cost the policy accepts, 16x
below the default 2**14, so that the figures measure the store and the concurrency rather
than the token KDF (at 2**14 every enroll, verify and reissue pays ~150 ms of scrypt on this
machine's cores) — ``max_failures`` far above what a run reaches, so the deliberate
wrong-token verifies never lock a subject out of the other ops (lockout is exercised on
purpose by the ``lockout`` op, through a second service with :data:`~bench.store_load.setup.LOCKOUT_POLICY_ARGS`), and no
call-rate limit (identify, verify per client, verify per subject) within reach. Tokens are
strong (20 random letters and digits, ~119 estimated bits).
Revoke and reissue carry a proof: the user's token with a noisy probe of the face, or (one
in :data:`~bench.store_load.setup.ADMIN_SHARE`) the administrator secret; half of them pass the ``expected_version``
read by ``get()`` just before.

After all are ready they start together and loop for ``--seconds``, each op drawn at random:

==================  =========================================================  =================================
op                  what                                                       outcome required
==================  =========================================================  =================================
enroll              a new subject ``w<k>-<i>`` (1 in 5: re-enroll a revoked    ids of 2 templates
                    one of its own) under a fresh strong token
verify              own active subject, right token, noisy probe               accepted (no similarity given)
verify_wrong_token  own active subject, another strong token                   rejected (one failure logged)
revoke              own active subject, user proof or admin                    2 templates revoked
reissue             own active subject, new token, user proof or admin         2 new ids
identify            noisy probe of an own active subject (1 in 4: of the       the subject among the accepted
                    shared race subject, reissued by other processes); no      candidates exactly once, no own
                    ``refresh()``: the gallery follows the event log           revoked subject among them
enroll_race         ``race-<j>`` (j: the worker's j-th try), same ids in       ids, or DuplicateEnrollmentError
                    every worker, so all workers compete for each of them
verify_revoked      own revoked subject, its last token and face               rejected
revoke_revoked      own revoked subject: with user proof / with admin          PolicyError / RevokedTemplateError
reissue_revoked     own revoked subject: with user proof / with admin          PolicyError / RevokedTemplateError
enroll_duplicate    own active subject                                         DuplicateEnrollmentError
verify_unknown      a subject never enrolled                                   rejected (not an error)
lockout             own active subject (half the time the one with the most    < 3 failures logged for it:
                    failures) through the strict service (max_failures=3):     rejected; else RateLimitedError
                    a wrong token while the subject has fewer than 3           (even with the right token)
                    failures, else the right token
==================  =========================================================  =================================

Reissue race (not drawn; every ``--race_every`` seconds): all workers read the version of
the shared subject ``reissue-race`` (enrolled by worker 0 before the start), meet at a
barrier, and reissue it with that ``expected_version`` — odd rounds with the user's proof
(the current token is known to all: every round's new token is derived from the round
number), even rounds with the admin secret. Exactly one may win each round; the others must
get :class:`ConflictError` (or, in proof rounds, :class:`PolicyError`: the winner already
replaced the token their proof used). The barrier wait is not in the op latency.

Every *acknowledged* op (the call returned or raised its required error) is appended to
the worker's journal (``<out>/<backend>/journal-w<k>.jsonl``, one JSON object a line,
flushed per line: op, subject, returned template ids, the token and embedding seed of
enrollments and reissues, the expected version, who proved, the failed attempt the op
logs). The service logs a lockout refusal at most once a minute per subject and client: the
worker notes which refusals the store acknowledged, journals those, and checks that rule.
Required typed errors are counted per type; any other exception, a missing required
error, a rejected genuine probe, an accepted wrong token or an exposed similarity is an
*unexpected error*. A subject touched by a write that failed unexpectedly is marked
uncertain in the journal and left alone.

After the deadline the workers are joined and a fresh connection (authenticated by a new
service, which verifies the whole HMAC chain of the event log) audits the store against the
journals: every acknowledged enrollment's and reissue's template ids exist, with the right
subject; a subject whose last acknowledged write was a revocation has no active template;
every other one has exactly one active verify and one active identify template, and they
are those its last enrollment/reissue returned (all earlier ones revoked); no subject or
row in the store is missing from the journals; each ``race-<j>`` was acknowledged to
exactly one worker; every race round had every worker and exactly one winner; every row of
every subject passes its HMAC (``history()``); each subject's event-log entries are its
acknowledged writes, in order, with the same template ids, and a write made with
``expected_version`` v (a subject's version counts its own log entries) is the subject's
entry v + 1; the log's only other entry is the creation of the attempt log's authenticated
mark (``attempts.mark``, once, if any attempt was written; its setting row authenticates),
so every entry is accounted for; the ``attempts`` table holds
exactly the failed attempts the journals logged (subject, client, op); every active
subject still verifies with its last token (the stored code is intact); the row count
equals the rows audited; SQLite: ``PRAGMA integrity_check`` is ``ok``.

Printed per back end: ops per second by type, required errors by type, unexpected errors,
op latencies and the audit; as the LAST stdout line one JSON object with every figure per
back end, the policy, workers, seconds, cpu_count, load averages and the date. The exit
code is 1 if an audit failed or an unexpected error occurred.

Usage::

    python bench/concurrency.py                           # 60 s, 4 workers, sqlite and postgres
    python bench/concurrency.py --seconds 5 --backends sqlite --out /tmp/cc
"""

import multiprocessing as mp
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import arg_parser, cpu_model, emit, loadavg, machine_line, say, utc_now  # noqa: E402
from bench.store_load import worker  # noqa: E402
from bench.store_load.audit import audit  # noqa: E402
from bench.store_load.report import merge, read_summary, report  # noqa: E402
from bench.store_load.setup import (FAILURE_WINDOW_S, HASHER, LOCKOUT_POLICY_ARGS, POLICY_ARGS,  # noqa: E402
                                    SCRYPT_N, STARTUP_TIMEOUT, backend_location)


def run_backend(backend: str, location: str, args, folder: str) -> dict:
    """Start the workers on the store at ``location``, join them, audit; the figures."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(args.workers + 1)
    round_barrier = ctx.Barrier(args.workers)
    procs = [ctx.Process(target=worker.run, name=f"{backend}-w{k}",
                         args=(k, backend, location, args.seconds, folder, args.seed * 100 + k, args.seed,
                               args.n_rounds, args.race_every, barrier, round_barrier))
             for k in range(args.workers)]
    t_load = time.perf_counter()
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=STARTUP_TIMEOUT)
    except Exception:                                  # a worker failed to start
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
        raise RuntimeError(f"{backend}: workers failed to start: " +
                           " | ".join(str(read_summary(folder, k).get("fatal")) for k in range(args.workers)))
    startup_s = time.perf_counter() - t_load
    t_run = time.perf_counter()
    for p in procs:
        p.join(args.seconds + 600)
        if p.is_alive():
            p.terminate()
    wall_s = time.perf_counter() - t_run
    summaries = [read_summary(folder, k) for k in range(args.workers)]
    result = merge(backend, summaries, [p.exitcode for p in procs], args, startup_s, wall_s)
    result["audit"] = audit(backend, location, folder, args.workers, args.n_rounds)
    return result


def parse_args(argv=None):
    parser = arg_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="run time per back end")
    parser.add_argument("--workers", type=int, default=4, help="processes")
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"])
    parser.add_argument("--out", default=None, help="folder for journals and summaries (default: a temp dir, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--race_every", type=float, default=2.0,
                        help="seconds between reissue-race rounds (0: no race)")
    args = parser.parse_args(argv)
    if not 0 < args.seconds < FAILURE_WINDOW_S / 2:
        parser.error(f"--seconds must be in (0, {FAILURE_WINDOW_S / 2:g}) (the failure window must cover the run)")
    if args.workers < 1 or args.race_every < 0:
        parser.error("--workers must be positive and --race_every non-negative")
    args.n_rounds = max(0, int(args.seconds // args.race_every) - 1) if args.race_every > 0 else 0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="iom-concurrency-")
    loadavg_before = loadavg()
    say(f"machine: {machine_line()}, load average {loadavg_before}; "
        f"{args.workers} workers × {args.seconds:g} s per back end, {args.n_rounds} reissue-race rounds; "
        f"scrypt_n {SCRYPT_N} (the policy default is 2**14); journals in {out}")
    results = {}
    try:
        for backend in args.backends:
            folder = os.path.join(out, backend)
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            with backend_location(backend, folder) as location:
                results[backend] = run_backend(backend, location, args, folder)
            results[backend]["loadavg_after"] = loadavg()
            report(results[backend])
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    ok = all(r["audit"]["ok"] and r["n_unexpected"] == 0 for r in results.values())
    loadavg_after = loadavg()
    say(f"load average after: {loadavg_after}; overall {'OK' if ok else 'FAILED'}")
    emit({
        "ok": ok, "workers": args.workers, "seconds": args.seconds, "race_every": args.race_every,
        "backends": results, "hasher": HASHER, "policy": POLICY_ARGS, "lockout_policy": LOCKOUT_POLICY_ARGS,
        "keras_backend": os.environ.get("KERAS_BACKEND", "(keras.json default)"),
        "cpu_count": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_before": loadavg_before, "loadavg_after": loadavg_after, "date": utc_now(),
    })
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
