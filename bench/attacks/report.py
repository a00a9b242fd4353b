"""The page ``bench/http_attacks.py`` writes beside its JSON record (``.md``): the command, the
machine, the figures of (a), (b) and (c), the checks and the conclusions drawn from them."""

from __future__ import annotations

from bench.common import markdown_table


def markdown(rec: dict) -> str:
    a, b, c = rec["token_guessing"], rec["score_oracle"], rec["admin_scores"]
    g, bound, weak = a["guessing"], a["bound"], a["common_password_victim"]
    f429 = g["first_429"] or {}
    sp, first = a["spread_one_key"], a["spread_one_key"]["first_refusal"]
    guessing = [
        ["guesses answered before the first 429", g["answered_before_first_429"]],
        ["Retry-After of that 429", f"{f429.get('retry_after_s')} s"],
        ["guesses accepted (successes)", f"{g['successes']} of {g['guesses_sent']} sent"],
        ["statuses after the first 429", g["statuses_after_first_429"]],
        ["latency p50: answered guess / refused guess",
         f"{g['latency_answered_p50_ms']} ms / {g['latency_429_p50_ms']} ms"],
        ["genuine user (right token, another key) afterwards", f"{a['genuine_after_attack']['status']}"
         f"{' (locked out)' if a['genuine_after_attack']['locked_out'] else ''}"],
        ["second (colluding) client key: guesses answered", f"{a['second_key']['answered']} of "
         f"{a['second_key']['guesses']} ({a['second_key']['statuses']})"],
        ["never-enrolled subject: answer", f"{a['unknown_subject']['status']}, accepted="
         f"{a['unknown_subject']['accepted']} (same fields as a wrong token)"],
        [f"one key spread over {sp['victims']} victims: answered before refusal",
         f"{sp['answered_before_first_refusal']} (then {first['status'] if first else '-'}, Retry-After "
         f"{first['retry_after_s'] if first else '-'} s)"],
        ["common passwords of the attack list the policy accepts", f"{weak['accepted_by_policy']} of "
         f"{weak['common_list']} (refused: {', '.join(weak['refused_by_policy']) or 'none'})"],
        [f"victim with one of them (rank {weak['rank_in_list']}): found at guess", f"{weak['found_at_guess']} "
         f"(refused at guess {weak['refused_at_guess'] or '-'}); time to find at this rank "
         f"{weak['time_to_find_s_at_this_rank']:.0f} s, whole list within {weak['whole_list_within_s']:.0f} s"],
    ]
    cost = [[name, f"{v['bytes']:,}", f"{v['latency_p50_ms']} ms", f"{v['server_cpu_ms_per_request']} ms"]
            for name, v in rec["refusal_cost"].items()]
    oracle = [
        ["gallery", f"{b['gallery_size_at_identify']} subjects ({b['gallery']} for the oracle, the rest from (a)); "
         f"top_k {b['top_k']}"],
        ["answer fields / candidate fields (impostor probes; genuine probes)",
         f"{b['answer_fields']} / {b['candidate_fields']}; {b['candidate_fields_genuine']}"],
        *[[f"{p['key']}: answered before 429 (Retry-After)", f"{p['answered_before_429']} "
           f"({p['first_429']['retry_after_s'] if p['first_429'] else '-'} s)"] for p in b["per_key"]],
        ["impostor calls with any candidate (false identification)", f"{b['calls_with_a_candidate']} of "
         f"{b['impostor_calls_answered']} = {b['false_identification_rate']} (95% CI {b['false_identification_95ci']}); "
         f"FPIR target {b['fpir_target']} at threshold "
         f"{b['operating_point']['threshold'] if b['operating_point'] else '-'}"],
        ["most candidates in one answer: impostor / genuine probe",
         f"{b['max_candidates_impostor']} / {b['max_candidates_genuine']} (top_k {b['top_k']})"],
        ["genuine probes: own subject among the candidates", f"{b['genuine_hit_rate']} ({b['genuine_probes']} probes)"],
        ["made-up client name after the 429", b["spoofed_client_name_status"]],
        ["rate-limited identify attempts in the store, by client", b["store_attempts_identify_by_client"]],
        ["identify requests in the server log, by credential", b["request_log_identify_by_credential"]],
    ]
    scores = [[server, who.split("_")[0], ", ".join(x["verify_fields"]), ", ".join(x["identify_candidate_fields"])
               or "-", f"{x['identify_candidates_genuine']} / {x['identify_candidates_outsider']}"]
              for server, d in (("--admin_scores", c["with_admin_scores"]), ("default", c["default"]))
              for who, x in ((w, d[w]) for w in ("client_key", "admin_key"))]
    m = rec["machine"]
    lines = [
        "# Online attacks against the HTTP server", "",
        f"Command: `{rec['command']}`  ",
        f"Date: {rec['date'][:10]}; machine: {m['cpu_count']} cpus ({m['cpu']}), Python {m['python']}, load "
        f"average {m['loadavg_before']} before, {m['loadavg_after']} after (a shared machine: other jobs ran; "
        "latencies are noisy).  ",
        f"Server: `iomface serve` (LocalServer), default policy {rec['policy']}, hasher {rec['model']}, "
        f"SQLite store, aligned LFW crops (`aligned=true`).", "",
        "## (a) Online token guessing (client key + the victim's real face)", "",
        *markdown_table(["measure", "value"], guessing),
        "", "Cost of a refused request (verifications of the locked victim, all 429; server CPU from /proc):", "",
        *markdown_table(["photo", "bytes", "latency p50", "server CPU per request"], cost),
        "", f"Bound (policy defaults): {bound['max_failures']} failures x 86400 / {bound['failure_window_s']:g} s = "
        f"**{bound['guesses_per_day_per_subject']:.0f} guesses a day per subject**, whatever the number of keys; "
        f"a token of {bound['min_token_bits']:g} bits (uniformly random) is found online with probability "
        f"<= {bound['p_success_per_day']:.2e} a day, {bound['p_success_per_year']:.2e} a year. One key may spread "
        f"{bound['guesses_per_day_per_key_spread_over_subjects']} guesses a day over many subjects (each still "
        f"<= {bound['guesses_per_day_per_subject']:.0f}).", "",
        "## (b) Score oracle through identify (client keys, faces of people not enrolled)", "",
        "Every key runs until its first 429. The keys after the first were created by the bench as administrator "
        "(an attacker cannot), only to measure the false-identification rate on more probes.", "",
        *markdown_table(["measure", "value"], oracle), "",
        "## (c) Similarities", "",
        *markdown_table(["server", "key", "verify fields", "identify candidate fields",
                         "candidates (genuine / outsider, top_k 5)"], scores, align="lllll"),
    ]
    lines += ["", "## Checks", ""] + [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in rec["checks"]]
    lines += ["", "## Conclusions", ""] + [f"- {s}" for s in rec["conclusions"]]
    return "\n".join(lines) + "\n"


def conclusions(rec: dict) -> list[str]:
    a, b = rec["token_guessing"], rec["score_oracle"]
    g, bound, weak = a["guessing"], a["bound"], a["common_password_victim"]
    out = [
        f"Online guessing is capped per subject, not per caller: {g['answered_before_first_429']} wrong guesses, "
        f"then 429 with Retry-After {(g['first_429'] or {}).get('retry_after_s')} s for every key "
        f"(a second key got {a['second_key']['answered']} answered). That is at most "
        f"{bound['guesses_per_day_per_subject']:.0f} guesses a day per subject: p <= {bound['p_success_per_day']:.1e} "
        f"a day against a random token at the {bound['min_token_bits']:g}-bit floor.",
        "The price is a lockout: after the attacker's guesses the genuine user with the right token and face got "
        f"{a['genuine_after_attack']['status']}; anyone holding a client key and knowing a subject id can keep "
        f"that subject locked out with {bound['max_failures']} requests per {bound['failure_window_s']:g} s.",
        f"The 32-bit estimate does not recognise dictionary words: {weak['accepted_by_policy']} of the "
        f"{weak['common_list']} common passwords of the attack list are accepted at enrolment; a victim who chose "
        f"one is found online within {weak['whole_list_within_s'] / 3600:.1f} h by working down that list "
        f"({g['answered_before_first_429']} guesses per {bound['failure_window_s']:g} s). Issue random tokens.",
        "identify answers carry only subject and rank of accepted candidates (fields "
        f"{b['candidate_fields_genuine']}); no "
        f"similarity, no rejected candidate (at most {max(b['max_candidates_impostor'], b['max_candidates_genuine'])} "
        f"candidate(s) per answer at top_k {b['top_k']}). The score oracle of the library attack is reduced to "
        "the 1:N decision: "
        f"{b['false_identification_rate']} of impostor probes returned a candidate "
        f"(95% CI {b['false_identification_95ci']}, FPIR target {b['fpir_target']}).",
        f"Each client key gets {b['per_key'][0]['answered_before_429']} identify answers per minute; the name the "
        "limits count is the key's, set by the server: made-up names in headers, form fields or the query changed "
        f"nothing ({b['spoofed_client_name_status']}); rotating names needs an administrator to create keys.",
    ]
    c = rec["admin_scores"]["with_admin_scores"]
    out.append(f"With --admin_scores a client key still gets no similarity (verify fields "
               f"{c['client_key']['verify_fields']}); an admin key gets similarity and threshold, and identify's "
               "top_k with similarity and accepted "
               f"({c['admin_key']['identify_candidates_outsider']} candidates for an "
               "outsider's face: the oracle the library attack fits codes to; keep admin keys off untrusted devices).")
    cost = rec["refusal_cost"]
    big = next(v for k, v in cost.items() if "MP" in k)
    small = next(v for k, v in cost.items() if k.startswith("aligned"))
    out.append(f"A refused request costs the server {small['server_cpu_ms_per_request']} ms of CPU with an aligned "
               f"crop and {big['server_cpu_ms_per_request']} ms with a 24.9-megapixel photo "
               f"({big['latency_p50_ms']} ms to answer): the limits are checked before the upload is read "
               "(TemplateService.admit), so a key over its limit cannot load the server's cores with photos; "
               "within its limit, large raw photos cost what their alignment costs (lower --max_megapixels to "
               "bound it).")
    return out
