"""Summaries of suite results over seeds, and the before/after markdown table."""

from __future__ import annotations

from numbers import Real

import numpy as np

from arcface.metrics import markdown_table


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) or isinstance(v, (bool, np.bool_))


def summarise(per_seed: list) -> object:
    """The per-seed results merged: each numeric leaf becomes ``{mean, std, min, max, n,
    values}`` (population std over seeds); other leaves are kept from the first seed."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: summarise([r[k] for r in per_seed if k in r]) for k in first}
    if _is_number(first):
        v = np.asarray([float(x) for x in per_seed])
        return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
                "n": len(v), "values": [float(x) for x in v]}
    return first


def summarise_suite(results: dict) -> dict:
    return {name: {kind: {attack: summarise(runs) for attack, runs in by_attack.items()}
                   for kind, by_attack in by_kind.items()} for name, by_kind in results.items()}


def _get(tree: dict, path: tuple):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _cell(stat, fmt: str) -> str:
    if stat is None:
        return "n/a"
    if not isinstance(stat, dict):
        return str(stat)
    mean, std, n = stat["mean"], stat["std"], stat["n"]
    if fmt == "pct":
        text = f"{100 * mean:.1f}%"
        return text + (f" ± {100 * std:.1f}" if n > 1 else "")
    if fmt == "cos":
        return f"{mean:.3f}" + (f" ± {std:.3f}" if n > 1 else "")
    if fmt == "rate":
        return f"{mean:,.0f}" if mean >= 100 else f"{mean:.1f}"
    if fmt == "time":
        return _duration(mean)
    return f"{mean:g}"


def _duration(hours: float) -> str:
    s = hours * 3600
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.1f} s"


def table_rows(summary: dict) -> list[tuple[str, str, tuple, str, str]]:
    """(attack, measure, path, format, chance) rows for the suite in ``summary``."""
    calls = None
    for by_kind in summary.values():
        for by_attack in by_kind.values():
            calls = calls or _get(by_attack, ("score_oracle", "calls"))
    rows = []
    for n in calls or ():
        rows.append(("1 score oracle", f"un-keyed symbols recovered, {n} identify calls",
                     ("score_oracle", "symbols_recovered", str(n)), "pct", "1/q"))
    rows += [
        ("1 score oracle", "subjects whose whole code is recovered", ("score_oracle", "subjects_exact"),
         "pct", "0"),
        ("1 score oracle", "masquerade (inverted code) accepted by identify",
         ("score_oracle", "masquerade_inverted", "identify"), "pct", "FAR"),
        ("1 score oracle", "masquerade (inverted code) accepted by verify (victim's token)",
         ("score_oracle", "masquerade_inverted", "verify"), "pct", "FAR"),
        ("1 score oracle", "masquerade (score-weighted probes) accepted by identify",
         ("score_oracle", "masquerade_regression", "identify"), "pct", "FAR"),
        ("1 score oracle", "masquerade (score-weighted probes) accepted by verify",
         ("score_oracle", "masquerade_regression", "verify"), "pct", "FAR"),
        ("1 for scale: dictionary", "public faces (not enrolled) falsely identified at identify",
         ("score_oracle", "dictionary", "falsely_identified"), "pct", "FPIR"),
        ("1 for scale: dictionary", "enrolled subjects impersonated by one of those faces",
         ("score_oracle", "dictionary", "subjects_impersonated"), "pct", ""),
        ("2 one identification key", "relabelling table entries recovered (60 self-enrolments)",
         ("relabelling", "table_entries_recovered"), "pct", "1/q"),
        ("2 one identification key", "victims' un-keyed symbols recovered from the DB",
         ("relabelling", "symbols_recovered"), "pct", "1/q"),
        ("2 one identification key", "reissue linkage rank-1, identification templates",
         ("relabelling", "linkage_identify"), "pct", "1/N"),
        ("2 one identification key", "reissue linkage rank-1, verification templates",
         ("relabelling", "linkage_verify"), "pct", "1/N"),
    ]
    for name, label in (("tamper", "flipped code + recomputed checksum used"),
                        ("substitute", "substituted row: verify('alice', Mallory's face and token)"),
                        ("replay", "replayed pre-revocation row: revoked subject accepted"),
                        ("rollback_reissue", "rolled-back reissue: old token accepted"),
                        ("rollback_file_running", "whole-DB rollback, running service: revoked accepted"),
                        ("rollback_file_restarted", "whole-DB rollback, restarted service: revoked accepted"),
                        ("truncate_log_replay_restarted", "replayed rows + truncated event log, restarted"),
                        ("drop_log_replay_restarted", "replayed rows + dropped event-log table, restarted"),
                        ("rollback_file_restarted_witness", "whole-DB rollback, restarted, witness file"),
                        ("truncate_log_replay_restarted_witness", "replay + truncated log, restarted, witness"),
                        ("drop_log_replay_restarted_witness", "replay + dropped log, restarted, witness")):
        rows.append(("3 row forgery (DB write)", label, ("row_forgery", name), "pct", "0"))
    rows += [
        ("4 tokens, offline", "guesses/s (DB + secret + a photo)", ("tokens", "offline", "guesses_per_s"),
         "rate", ""),
        ("4 tokens, offline", "4-digit PIN enrolled and found", ("tokens", "offline", "pin_found"), "pct", ""),
        ("4 tokens, offline", "time for 10^6 guesses (one core)", ("tokens", "offline", "hours_for_10^6"),
         "time", ""),
        ("4 tokens, offline", "time for 10^4 guesses (a common-password list)",
         ("tokens", "offline", "hours_for_10^4"), "time", ""),
        ("4 tokens, offline", "time for 2^32 guesses (the policy floor)",
         ("tokens", "offline", "years_for_2^32"), "years", ""),
    ]
    kinds = None
    for by_kind in summary.values():
        for by_attack in by_kind.values():
            kinds = kinds or _get(by_attack, ("tokens", "offline", "policy_refuses"))
    for kind in kinds or ():
        rows.append(("4 tokens, policy", f"{kind} tokens refused at enrolment",
                     ("tokens", "offline", "policy_refuses", kind), "pct", ""))
    rows += [
        ("4 tokens, online", "victim's token confirmed with 20 unrelated faces",
         ("tokens", "online", "confirmed"), "pct", "false confirmations"),
        ("4 tokens, online", "wrong token 'confirmed' (chance level)",
         ("tokens", "online", "false_confirmed"), "pct", ""),
        ("4 tokens, online", "genuine user locked out afterwards", ("tokens", "online", "genuine_locked_out"),
         "pct", ""),
        ("5 full key (ISO 30136)", "inverted template accepted by verify", ("full_key", "verify"), "pct", "FAR"),
        ("5 full key (ISO 30136)", "inverted template accepted by identify", ("full_key", "identify"),
         "pct", "FAR"),
        ("5 full key (ISO 30136)", "cosine of inverted embedding to victim's other samples",
         ("full_key", "cosine_to_other_samples"), "cos", "genuine below"),
        ("5 full key (ISO 30136)", "cosine of genuine enrolment embedding to the same samples",
         ("full_key", "genuine_cosine_to_other_samples"), "cos", ""),
        ("5 secret only (no token)", "inverted identification template accepted by identify",
         ("full_key", "secret_only_identify"), "pct", "FAR"),
        ("5 secret only (no token)", "cosine of that embedding to victim's other samples",
         ("full_key", "secret_only_cosine_to_other_samples"), "cos", ""),
        ("6 device-code boundary walk", "walked code vs the victim's universal code (groups agreeing)",
         ("boundary_walk", "universal_agreement"), "pct", "1/q"),
        ("6 device-code boundary walk", "victims whose universal template is recovered whole",
         ("boundary_walk", "templates_recovered"), "pct", "0"),
        ("6 device-code boundary walk", "identify calls answered to one device before a refusal",
         ("boundary_walk", "queries_answered"), "rate", ""),
        ("6 device-code boundary walk", "a whole walk at the default limits (device key known)",
         ("boundary_walk", "hours_for_a_whole_walk"), "time", ""),
        ("6 device-code boundary walk", "victims recovered whole by a device whose key was extracted",
         ("boundary_walk", "key_holder_recovered"), "pct", ""),
    ]
    return rows


def markdown(summary: dict, labels: dict[str, str] | None = None) -> str:
    """The before/after table: one row a measure, two columns a hasher."""
    names = list(summary)
    header = ["attack", "measure", "chance"] + [f"{(labels or {}).get(n, n)} {k}" for n in names
                                                for k in ("before", "after")]
    body = []
    for attack, measure, path, fmt, chance in table_rows(summary):
        cells = []
        for n in names:
            for k in ("before", "after"):
                stat = _get(summary[n].get(k, {}), path)
                if fmt == "years" and isinstance(stat, dict):
                    cells.append(_duration(stat["mean"] * 365.25 * 24))
                else:
                    cells.append(_cell(stat, fmt))
        if any(c != "n/a" for c in cells):
            body.append([attack, measure, chance] + cells)
    return markdown_table(header, body)

