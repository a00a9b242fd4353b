"""How ``iomface`` prints a command's result: human-readable lines (``--json`` prints the
result itself)."""

from __future__ import annotations

import sys

#: exit codes: accepted or done; rejected, no match or not found; a usage or input error
EXIT_OK, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2


def one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _point_text(point: dict) -> str:
    if point["far_target"] is not None:
        head = f"at FAR {point['far_target']:g} (threshold {point['threshold']:.4f})"
    else:
        head = f"at threshold {point['threshold']:.4f}"
    tar = "unknown" if point["expected_tar"] is None else f"{point['expected_tar']:.3f}"
    far = "unknown" if point["expected_far"] is None else f"{point['expected_far']:.1e}"
    return f"{head}: expected TAR {tar}, FAR {far} on {point['calibration_set']}"


def compare_text(similarity: float, accepted: bool, point: dict) -> str:
    """A comparison's verdict at its operating point, with the similarity's distance to the
    threshold: a rejection is "not the same person at FAR x", not a finding of two people."""
    where = f"FAR {point['far_target']:g}" if point["far_target"] is not None else f"threshold {point['threshold']:.4f}"
    gap = similarity - point["threshold"]
    verdict = f"same person at {where}" if accepted else f"not the same person at {where}"
    side = f"{gap:.3f} above" if gap >= 0 else f"{-gap:.3f} below"
    tar = "unknown" if point["expected_tar"] is None else f"{point['expected_tar']:.3f}"
    far = "unknown" if point["expected_far"] is None else f"{point['expected_far']:.1e}"
    return (f"{verdict}: similarity {similarity:.3f}, {side} the threshold {point['threshold']:.4f} "
            f"(expected TAR {tar}, FAR {far} on {point['calibration_set']})")


def batch_text(command: str, result: dict) -> str:
    """A line per batch line and a summary (``verify --batch``, ``identify --batch``)."""
    lines = []
    for r in result["results"]:
        head = f"{r['subject']}  {r['photo']}" if command == "verify" else r["photo"]
        if "error" in r:
            lines.append(f"{head}  error: {r['error']}")
        elif command == "verify":
            lines.append(f"{head}  {'accepted' if r['accepted'] else 'rejected'}")
        else:
            found = ", ".join(f"{c['rank']}. {c['subject']}" for c in r["candidates"]) or "no match"
            lines.append(f"{head}  {found}")
    s = result["summary"]
    if command == "verify":
        tail = (f"{s['lines']} lines: {s['accepted']} accepted, {s['rejected']} rejected, {s['failed']} failed; "
                f"{_point_text(s['operating_point'])}")
    else:
        p = s["operating_point"]
        where = "" if p["threshold"] is None else f"; 1:N threshold {p['threshold']:.4f} for {p['gallery_size']} templates"
        tail = f"{s['lines']} photos: {s['matched']} matched, {s['no_match']} no match, {s['failed']} failed{where}"
    return "\n".join(lines + [tail])


def format_result(command: str, result) -> str:
    """The human-readable lines of a command's result."""
    if command == "compare":
        return compare_text(result["similarity"], result["accepted"], result["operating_point"])
    if command == "verify-pairs":
        lines = []
        for r in result["results"]:
            label = "" if "same" not in r else ("  [same]" if r["same"] else "  [diff]")
            if "error" in r:
                lines.append(f"{r['photo_a']}  {r['photo_b']}  error: {r['error']}{label}")
            else:
                lines.append(f"{r['photo_a']}  {r['photo_b']}  similarity {r['similarity']:.3f}  "
                             f"{'accepted' if r['accepted'] else 'rejected'}{label}")
        s = result["summary"]
        text = (f"{s['pairs']} pairs: {s['compared']} compared, {s['accepted']} accepted, {s['failed']} failed; "
                f"{_point_text(s['operating_point'])}")
        if "tar" in s:
            text += f"\nmeasured on this list: TAR {s['tar']:.3f} ({s['genuine']} same-person pairs)"
        if "far" in s:
            text += f"{';' if 'tar' in s else chr(10) + 'measured on this list:'} FAR {s['far']:.3f} " \
                    f"({s['impostor']} different-person pairs)"
        return "\n".join(lines + [text])
    if command == "device-key":
        return (f"device {result['device']}: key {result['key']}\n(model {result['model_id']}, m={result['m']}, "
                f"q={result['q']}). Provision it to that device only (its secure storage): the device sends "
                "reference.relabel(code, bytes.fromhex(KEY), m, q) of the exported model's code, with the API "
                f"key named {result['device']!r}.")
    if command in ("verify", "identify") and "results" in result:
        return batch_text(command, result)
    if command == "verify":
        return (f"{result['subject']}: {'accepted' if result['accepted'] else 'rejected'} "
                f"{_point_text(result['operating_point'])}")
    if command == "identify":
        p = result["operating_point"]
        if p["threshold"] is None:
            return "no match (no enrolled subject)"
        tar = "unknown" if p["expected_tar"] is None else f"{p['expected_tar']:.3f}"
        point = (f"(1:N threshold {p['threshold']:.4f} for {p['gallery_size']} templates at FPIR "
                 f"{p['fpir_target']:g}: expected TAR {tar} on {p['calibration_set']})")
        if not result["candidates"]:
            return f"no match {point}"
        return "\n".join([f"{c['rank']}. {c['subject']}" for c in result["candidates"]] + [point])
    if command in ("enroll", "reissue") and "templates" in result:
        parts = ", ".join(f"{'verification' if t['purpose'] == 'verify' else 'identification'} template "
                          f"#{t['id']}" for t in result["templates"])
        return f"{'enrolled' if command == 'enroll' else 'reissued'} {result['subject']}: {parts}"
    if command == "enroll":
        lines = []
        for r in result["results"]:
            if "error" in r:
                lines.append(f"{r['subject']}: error: {r['error']}")
            else:
                lines.append(f"{r['subject']}: enrolled from {r['photos']} photo(s), templates "
                             + ", ".join(f"#{t['id']}" for t in r["templates"]))
        s = result["summary"]
        text = f"{s['subjects']} subjects: {s['enrolled']} enrolled, {s['failed']} failed"
        if "new_tokens_file" in s:
            text += f"; their new tokens are in {s['new_tokens_file']} (keep it private; hand each to its subject)"
        return "\n".join(lines + [text])
    if command == "revoke":
        return (f"revoked {result['subject']}: {result['revoked']} template(s); enroll again with "
                f"iomface enroll {result['subject']} PHOTO --token_file FILE")
    if command == "list":
        if result and isinstance(result[0], dict):
            width = max(len(r["subject"]) for r in result)
            return "\n".join(f"{r['subject']:<{width}}  {r['status']:<7}  enrolled {r['enrolled_at']}"
                             + (f"  revoked {r['revoked_at']}" if r["revoked_at"] else "") for r in result)
        return "\n".join(result) if result else "(no enrolled subject)"
    if command == "show":
        return "\n".join("  ".join(f"{k}={v}" for k, v in t.items()) for t in result)
    if command == "add-key":
        return (f"{result['key']}\n(the {result['role']} key {result['name']!r}: shown this once, only its SHA-256 is "
                f"kept in {result['keys_file']}; give it to its holder over a private channel)")
    if command == "models":
        return models_text(result)
    if command == "list-keys":
        return "\n".join(f"{k['name']}  {k['role']}  created {k['created_at']}" for k in result) or "(no key)"
    if isinstance(result, dict):
        return "  ".join(f"{k}={v}" for k, v in result.items())
    return str(result)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def models_text(models: list[dict]) -> str:
    """``iomface models``: a table of the stage-1 models, then one of the hashers; a fact no
    file states reads "unknown"; ``*`` marks the defaults (the CLI's hasher and its stage-1 model)."""
    from iom.defaults import DEFAULT_HASHER

    def known(value, form="{}"):
        return "unknown" if value is None else form.format(value)

    stage1 = [m for m in models if m["kind"] == "stage1"]
    hashers = [m for m in models if m["kind"] == "hasher"]
    lines = []
    if stage1:
        rows = [["stage-1 model", "backbone", "embedding", "input", "weights", "LFW accuracy", "embed (CPU)",
                 "terms"]]
        for m in stage1:
            lfw = known(m["lfw_accuracy"], "{:.2f}%")
            if m["lfw_accuracy"] is not None and m["lfw_accuracy_std"] is not None:
                lfw += f" ± {m['lfw_accuracy_std']:.2f}"
            rows.append([m["name"] + ("*" if m["default"] else ""), known(m["backbone_type"]),
                         known(m["embedding_size"], "{}-d"), known(m["input_size"], "{0}x{0}"),
                         known(m["weights_mb"], "{:.1f} MB"), lfw, _latency(m), known(m["terms_short"])])
        lines += _table(rows)
    if hashers:
        rows = [["hasher", "stage-1 model", "m x q", "code", "calibrated"]]
        for m in hashers:
            mq = "unknown" if m["m"] is None or m["q"] is None else f"{m['m']}x{m['q']}"
            cal = f"yes (FAR {m['calibration_far']:g})" if m["calibrated"] and m["calibration_far"] else (
                "yes" if m["calibrated"] else "no")
            bits = m["code_bits"]
            code = "unknown" if bits is None else f"{bits // 8} B" if bits % 8 == 0 else f"{bits} bits"
            rows.append([m["name"] + ("*" if m["name"] == DEFAULT_HASHER else ""), known(m["stage1_model"]), mq,
                         code, cal])
        lines += ([""] if lines else []) + _table(rows)
    if not lines:
        return "(no shipped model)"
    return "\n".join(lines + ["", "LFW: 10-fold accuracy on lfw_112 (all 6,000 pairs); embed: median ms for one "
                               "face, Keras (TFLite where shipped), bench/model_latency.py; * the default; "
                               "iomface models --json for the commands, machine, sources and full terms"])


def _latency(m: dict) -> str:
    """A stage-1 model's measured embedding latency: Keras p50, and the TFLite runtime's where shipped."""
    if m.get("latency_ms") is None:
        return "unknown"
    text = f"{m['latency_ms']:.1f} ms"
    return text + (f" ({m['latency_tflite_ms']:.1f} TFLite)" if m.get("latency_tflite_ms") is not None else "")


def say(args, message: str) -> None:
    """``message`` on standard error with ``--verbose``, else nothing."""
    if args.verbose:
        print(f"[iomface] {message}", file=sys.stderr, flush=True)
