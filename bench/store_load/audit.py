"""The audit of ``bench/concurrency.py``: the store, read from a fresh connection, against the
journals of the workers (what the bench's docstring lists)."""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import time

import numpy as np

from bench.store_load.setup import (EVENT_OP, RACE_SUBJECT, centre_of, make_service, open_backend_store,
                                    probe_of)


def read_journals(folder: str, workers: int) -> tuple[dict, list[str]]:
    """subject → list of acknowledged entries (in order), and the problems found."""
    by_subject: dict[str, list[dict]] = collections.defaultdict(list)
    problems = []
    for k in range(workers):
        path = os.path.join(folder, f"journal-w{k}.jsonl")
        try:
            with open(path) as f:
                lines = f.read().split("\n")
        except OSError as e:
            problems.append(f"{path}: unreadable journal: {e}")
            continue
        if lines and lines[-1] == "":
            lines.pop()
        for i, line in enumerate(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                problems.append(f"{path}:{i + 1}: unreadable journal line")
                continue
            entry["worker"] = k
            if entry.get("subject") is not None:
                by_subject[entry["subject"]].append(entry)
    return by_subject, problems


def _race_writes(entries: list[dict], workers: int, n_rounds: int, problem, stats) -> list[dict]:
    """The race subject's acknowledged writes in order (its enrollment, then each round's
    winner), after checking that every round had every worker and exactly one winner."""
    rounds: dict[int, list[dict]] = collections.defaultdict(list)
    for e in entries:
        if e["op"] == "reissue_race":
            rounds[e["round"]].append(e)
    winners = []
    for r in range(1, n_rounds + 1):
        es = rounds.get(r, [])
        won = [e for e in es if e.get("won")]
        if len(es) != workers:
            problem(f"{RACE_SUBJECT}: round {r} has {len(es)} outcomes, not one per worker ({workers})")
        if len(won) != 1:
            problem(f"{RACE_SUBJECT}: round {r} has {len(won)} winners "
                    f"(workers {sorted(e['worker'] for e in won)}, expected_version "
                    f"{sorted({e['expected_version'] for e in won})})")
        stats["race_rounds"] += 1
        stats["race_conflicts"] += sum(e.get("error") == "ConflictError" for e in es)
        stats["race_stale_proofs"] += sum(e.get("error") == "PolicyError" for e in es)
        winners += won
    extra = sorted(set(rounds) - set(range(1, n_rounds + 1)))
    if extra:
        problem(f"{RACE_SUBJECT}: outcomes of unplanned rounds {extra}")
    return [e for e in entries if e["op"] == "enroll"] + winners


def _check_settings(store, settings: list, any_attempt: bool, problem, stats) -> None:
    """The log's setting entries: the bench sets none itself (the administrator secret is given
    to the services, not stored), so the only one allowed is the creation of the attempt log's
    authenticated mark (ATTEMPT_MARK), logged once, at the first attempt written, and only if one
    was; it carries no template ids, and the mark row is the one it logged (``get_setting``
    checks the MAC and that the row is of the log's latest entry of it)."""
    from iom.errors import TemplateError
    from iom.store.attempts import ATTEMPT_MARK

    marks = [ev for ev in settings if ev.subject_id == ATTEMPT_MARK and not ev.revoked_ids and not ev.new_ids]
    for ev in settings:
        if ev not in marks:
            problem(f"event log entry {ev.seq}: setting {ev.subject_id!r} (ids {ev.revoked_ids}, {ev.new_ids}) "
                    "that no one set")
    if len(marks) != (1 if any_attempt else 0):
        problem(f"the event log holds {len(marks)} creations of the attempt log's mark (entries "
                f"{[ev.seq for ev in marks]}), expected {1 if any_attempt else 0}")
    if any_attempt:
        try:
            if store.get_setting(ATTEMPT_MARK) is None:
                problem("the attempt log's mark is missing")
        except TemplateError as e:
            problem(f"the attempt log's mark: {type(e).__name__}: {e}")
    stats["attempt_mark_events"] = len(marks)


def audit(backend: str, location: str, folder: str, workers: int, n_rounds: int) -> dict:
    """Check the store against the journals, from a fresh connection (see the module doc)."""
    from iom.errors import TemplateError

    t0 = time.perf_counter()
    journals, problems = read_journals(folder, workers)
    stats = collections.Counter(problems=len(problems))

    def problem(msg: str) -> None:
        if len(problems) < 50:
            problems.append(msg)
        stats["problems"] += 1

    store = open_backend_store(backend, location)
    try:
        service = make_service(store)      # authenticates the store: verifies the log's whole HMAC chain
        events = store.events_since(0)
        logged_attempts = store.attempts()
    except TemplateError as e:
        problem(f"the store fails authentication: {type(e).__name__}: {e}")
        store.close()
        return {"ok": False, "problems": problems[:20], "n_problems": stats["problems"], "rows": None,
                "rows_audited": 0, "integrity_check": None, "audit_s": round(time.perf_counter() - t0, 1)}
    rng = np.random.default_rng(12345)
    events_of: dict[str, list] = collections.defaultdict(list)
    settings = []                           # the log's setting entries (not a subject's changes)
    for ev in events:
        (settings if ev.op == "setting" else events_of[ev.subject_id]).append(ev)
    unsure = {s for s, es in journals.items() if any(e["op"] in ("uncertain", "uncertain_attempts") for e in es)}

    # the attempts table holds exactly the failed attempts the journals logged
    expected = collections.Counter((s, f"w{e['worker']}", e["attempt"])
                                   for s, es in journals.items() for e in es if e.get("attempt"))
    actual = collections.Counter((s, c, op) for _, s, c, op, _ in logged_attempts)
    for key in sorted(set(expected) | set(actual)):
        if key[0] not in unsure and expected[key] != actual[key]:
            problem(f"{key[0]}: {actual[key]} {key[2]!r} attempts by {key[1]} in the store, "
                    f"{expected[key]} in the journal")
    stats["attempts_in_store"] = len(logged_attempts)
    stats["attempts_journaled"] = sum(expected.values())
    _check_settings(store, settings, bool(logged_attempts or expected), problem, stats)

    in_store = set(store.subjects(include_revoked=True))
    for subject in sorted(in_store - set(journals)):
        problem(f"{subject}: in the store but in no journal")
    for subject in sorted(set(events_of) - set(journals)):
        problem(f"{subject}: in the event log but in no journal")
    rows_audited = 0
    for subject, entries in sorted(journals.items()):
        if subject == RACE_SUBJECT:
            writes = _race_writes(entries, workers, n_rounds, problem, stats)
        else:
            writes = [e for e in entries if e["op"] in ("enroll", "enroll_race", "reissue", "revoke")]
        uncertain = any(e["op"] == "uncertain" for e in entries)
        if subject.startswith("race-"):
            winners = {e["worker"] for e in writes}
            if len(writes) != 1:
                problem(f"{subject}: {len(writes)} acknowledged enrollments (workers {sorted(winners)})")
        if not writes:                      # only reads / required errors (e.g. verify_unknown)
            if subject in in_store or subject in events_of:
                problem(f"{subject}: never acknowledged as enrolled, yet in the store")
            continue
        stats["subjects"] += 1
        try:
            history = store.history(subject)           # authenticates every row (HMAC, log)
        except TemplateError as e:
            problem(f"{subject}: history() failed: {type(e).__name__}: {e}")
            stats["checksum_or_read_failures"] += 1
            continue
        rows_audited += len(history)
        by_id = {r.template_id: r for r in history}
        acked_ids = []
        for e in writes:
            for tid in e.get("ids", []):
                acked_ids.append(tid)
                r = by_id.get(tid)
                if r is None:
                    problem(f"{subject}: acknowledged template {tid} ({e['op']}) is missing")
                elif r.subject_id != subject:
                    problem(f"{subject}: template {tid} belongs to {r.subject_id!r}")
        stats["acknowledged_templates"] += len(acked_ids)
        if uncertain:
            stats["uncertain_subjects"] += 1
            continue                        # its last write may or may not have happened
        extra = sorted(set(by_id) - set(acked_ids))
        if extra:
            problem(f"{subject}: templates {extra} were never acknowledged")
        # the event log: exactly the acknowledged writes, in order, with their template ids
        want, before = [], ()
        for e in writes:
            op = EVENT_OP[e["op"]]
            new = tuple(sorted(e.get("ids", ())))
            want.append((op, () if op == "enroll" else before, new))
            before = new
        got = [(ev.op, tuple(sorted(ev.revoked_ids)), tuple(sorted(ev.new_ids))) for ev in events_of.get(subject, [])]
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            problem(f"{subject}: event log {got[at:at + 2]} differs from the journal {want[at:at + 2]} "
                    f"at write {at} ({len(got)} events, {len(want)} writes)")
        else:
            stats["events_matched"] += len(got)
            evs = events_of[subject]
            for i, e in enumerate(writes):
                if e.get("expected_version") is None:
                    continue
                stats["writes_with_expected_version"] += 1
                # a subject's version counts its own log entries: the write that expected version v
                # must be the subject's entry v + 1, right after the one that made it version v
                if e["expected_version"] != i:
                    problem(f"{subject}: {e['op']} acknowledged with expected_version {e['expected_version']}, "
                            f"but it is the subject's log entry {i + 1} (entry {evs[i].seq} of the log), "
                            f"after version {i}")
        last = writes[-1]
        active = [r for r in history if r.revoked_at is None]
        if last["op"] == "revoke":
            stats["revoked_subjects"] += 1
            if active:
                problem(f"{subject}: revoked last, yet templates {[r.template_id for r in active]} are active")
            continue
        stats["active_subjects"] += 1
        purposes = sorted(r.purpose for r in active)
        if purposes != ["identify", "verify"]:
            problem(f"{subject}: active templates {[(r.template_id, r.purpose) for r in active]}, "
                    "not one verify and one identify")
            continue
        if sorted(r.template_id for r in active) != sorted(last["ids"]):
            problem(f"{subject}: active templates {sorted(r.template_id for r in active)} are not "
                    f"those of its last {last['op']} {sorted(last['ids'])}")
            continue
        # intact: the stored code still verifies a genuine probe under the last token
        try:
            d = service.verify(subject, user_token=last["token"],
                               embedding=probe_of(centre_of(last["seed"]), rng), client="audit")
        except TemplateError as e:
            problem(f"{subject}: final verify failed: {type(e).__name__}: {e}")
            continue
        if not d.accepted:
            problem(f"{subject}: final verify rejected")
        else:
            stats["final_verifications_accepted"] += 1
    stats["events"] = len(events)
    if stats["events_matched"] + sum(len(events_of[s]) for s in unsure if s in events_of) \
            + stats["attempt_mark_events"] != len(events):
        problem(f"{len(events)} log entries, {stats['events_matched']} matched to journals, "
                f"{stats['attempt_mark_events']} the attempt log's mark (plus those of uncertain subjects)")

    # every row was audited: count the table directly, and the database's own check
    if backend == "sqlite":
        con = sqlite3.connect(location)
        try:
            (total_rows,), = con.execute("SELECT COUNT(*) FROM templates").fetchall()
            integrity = [r[0] for r in con.execute("PRAGMA integrity_check").fetchall()]
        finally:
            con.close()
        integrity_ok = integrity == ["ok"]
        if not integrity_ok:
            problem(f"PRAGMA integrity_check: {integrity[:5]}")
    else:
        import psycopg
        with psycopg.connect(location) as con:
            (total_rows,), = con.execute("SELECT COUNT(*) FROM templates").fetchall()
        integrity = None
    if total_rows != rows_audited:
        problem(f"the table holds {total_rows} rows, {rows_audited} were audited")
    store.close()
    return {"ok": not problems and stats["problems"] == 0, "problems": problems[:20],
            "n_problems": max(stats["problems"], len(problems)), "rows": int(total_rows),
            "rows_audited": rows_audited, "integrity_check": integrity,
            "audit_s": round(time.perf_counter() - t0, 1),
            **{k: int(v) for k, v in stats.items() if k != "problems"}}
