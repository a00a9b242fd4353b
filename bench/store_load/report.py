"""The figures of ``bench/concurrency.py``: the workers' summaries read back and merged into a
back end's result, and the lines printed for it."""

from __future__ import annotations

import collections
import json
import os

import numpy as np

from bench.store_load.setup import OUTCOMES, WRITE_OUTCOMES


def read_summary(folder: str, k: int) -> dict:
    """The summary worker ``k`` wrote (or a fatal error saying it wrote none)."""
    try:
        with open(os.path.join(folder, f"worker-w{k}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"fatal": f"worker {k} wrote no summary"}


def merge(backend: str, summaries: list[dict], exit_codes: list, args, startup_s: float, wall_s: float) -> dict:
    """A back end's result (its audit apart) from its workers' summaries: ops and rates,
    required and unexpected errors, latencies (p50/p90: the median of the workers'; p99 and
    max: the worst worker's)."""
    counts, required, unexpected = collections.Counter(), collections.Counter(), collections.Counter()
    latency: dict[str, dict] = {}
    samples, waits = [], []
    for s in summaries:
        counts.update(s.get("counts", {}))
        required.update(s.get("required_errors", {}))
        unexpected.update(s.get("unexpected", {}))
        samples += s.get("unexpected_samples", [])
        if s.get("race_wait_ms"):
            waits.append(s["race_wait_ms"])
        if s.get("fatal"):
            unexpected["worker_crashed"] += 1
            samples.append(s["fatal"][-500:])
        for op, lat in s.get("latency_ms", {}).items():
            agg = latency.setdefault(op, {"n": 0, "mean": 0.0, "p50": [], "p90": [], "p99": [], "max": 0.0})
            agg["mean"] += lat["mean"] * lat["n"]
            agg["n"] += lat["n"]
            for q in ("p50", "p90", "p99"):
                agg[q].append(lat[q])
            agg["max"] = max(agg["max"], lat["max"])
    for code in exit_codes:
        if code != 0:
            unexpected["worker_exit_nonzero"] += 1
    for op, agg in latency.items():       # p50/p90: the median of the workers'; p99: the worst worker's
        agg.update(mean=round(agg["mean"] / max(agg["n"], 1), 2), p50=round(float(np.median(agg["p50"])), 2),
                   p90=round(float(np.median(agg["p90"])), 2), p99=float(np.max(agg["p99"])))
    elapsed = float(np.mean([s.get("elapsed_s", args.seconds) for s in summaries]))
    ops = {op: counts.get(op, 0) for op in OUTCOMES}
    total_ops = sum(ops.values())
    result = {
        "backend": backend, "workers": args.workers, "seconds": args.seconds,
        "elapsed_s": round(elapsed, 2), "wall_s": round(wall_s, 2), "startup_s": round(startup_s, 1),
        "ops": ops, "ops_per_s": {op: round(n / elapsed, 1) for op, n in ops.items()},
        "required_errors": dict(required),
        "identify_top1": counts.get("identify_top1", 0),
        "race_rounds_planned": args.n_rounds,
        "race_wait_ms": {"mean": round(float(np.mean([w["mean"] for w in waits])), 2) if waits else None,
                         "max": max((w["max"] for w in waits), default=None)},
        "total_ops": total_ops, "total_ops_per_s": round(total_ops / elapsed, 1),
        "writes_per_s": round(sum(ops[op] for op in WRITE_OUTCOMES) / elapsed, 1),
        "unexpected_errors": dict(unexpected), "n_unexpected": sum(unexpected.values()),
        "unexpected_samples": samples[:10], "latency_ms": latency, "worker_exit_codes": exit_codes,
    }
    return result


def report(r: dict) -> None:
    b = r["backend"]
    print(f"[{b}] {r['workers']} workers, {r['elapsed_s']:.1f} s (startup {r['startup_s']} s): "
          f"{r['total_ops']} ops, {r['total_ops_per_s']} ops/s, writes {r['writes_per_s']}/s", flush=True)
    for op, n in r["ops"].items():
        lat = r["latency_ms"].get(op, {})
        print(f"[{b}]   {op:20s} {n:7d}  {r['ops_per_s'][op]:7.1f}/s   latency mean {lat.get('mean', 0):7.2f} "
              f"p50 {lat.get('p50', 0):7.2f} p90 {lat.get('p90', 0):7.2f} p99 {lat.get('p99', 0):8.2f} "
              f"max {lat.get('max', 0):8.2f} ms   → {OUTCOMES[op]}")
    w = r["race_wait_ms"]
    print(f"[{b}] reissue race: {r['race_rounds_planned']} rounds planned; barrier wait mean {w['mean']} ms, "
          f"max {w['max']} ms (not in the latencies)")
    print(f"[{b}] required errors by type: {r['required_errors']}")
    print(f"[{b}] unexpected errors: {r['n_unexpected']} {r['unexpected_errors']}")
    for s in r["unexpected_samples"]:
        print(f"[{b}]   {s}")
    a = r["audit"]
    print(f"[{b}] audit {'OK' if a['ok'] else 'FAILED'} ({a['audit_s']} s): {a.get('subjects', 0)} subjects "
          f"({a.get('active_subjects', 0)} active, {a.get('revoked_subjects', 0)} revoked, "
          f"{a.get('uncertain_subjects', 0)} uncertain), {a['rows']} rows ({a['rows_audited']} audited, "
          f"HMACs ok), {a.get('acknowledged_templates', 0)} acknowledged templates present, "
          f"{a.get('events', 0)} log entries ({a.get('events_matched', 0)} matched to journals, "
          f"{a.get('attempt_mark_events', 0)} the attempt log's mark, "
          f"{a.get('writes_with_expected_version', 0)} writes with expected_version), "
          f"{a.get('attempts_in_store', 0)} attempts logged ({a.get('attempts_journaled', 0)} journaled), "
          f"race: {a.get('race_rounds', 0)} rounds, {a.get('race_conflicts', 0)} ConflictError, "
          f"{a.get('race_stale_proofs', 0)} stale proofs; "
          f"{a.get('final_verifications_accepted', 0)} final verifications accepted"
          + (f", integrity_check {a['integrity_check']}" if a["integrity_check"] is not None else ""),
          flush=True)
    for p in a["problems"]:
        print(f"[{b}]   problem: {p}")
