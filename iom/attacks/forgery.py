"""Attack 3: forging rows with write access to the database file (no secret).

Each forgery runs on a fresh target with its own subjects; success means the service acts
on the forged state without noticing:

* ``tamper``: flip symbols of a code and recompute the checksum (the public, legacy SHA-256:
  all an attacker without the secret can compute) — success: the row is used;
* ``substitute``: copy Mallory's verification code and salt into Alice's row (checksum
  recomputed) — success: ``verify('alice', Mallory's face, Mallory's token)`` accepted;
* ``replay``: write back a backed-up row after its revocation — success: the revoked subject
  is accepted again;
* ``rollback_reissue``: after a reissue, restore the old rows and delete the new ones —
  success: the old (revoked) token is accepted again;
* ``rollback_file``: restore a backup of the whole database after a revocation — seen by the
  running service, and by one started afterwards (a restart, another worker, the CLI), and
  by one started afterwards (the ``_witness`` variants: with a witness file of the event
  log's head, ``after`` only);
* ``truncate_log_replay``: replay the pre-revocation rows and delete the log entries written
  since (a valid prefix of the MAC chain), then restart;
* ``drop_log_replay``: replay the pre-revocation rows and drop the event-log table, then
  restart.
"""

from __future__ import annotations

import numpy as np

from iom.attacks import db
from iom.attacks.legacy import legacy_checksum
from iom.attacks.setting import Setting
from iom.attacks.targets import Refused

FORGERIES = ("tamper", "substitute", "replay", "rollback_reissue", "rollback_file_running",
             "rollback_file_restarted", "truncate_log_replay_restarted", "drop_log_replay_restarted",
             "rollback_file_restarted_witness", "truncate_log_replay_restarted_witness",
             "drop_log_replay_restarted_witness")


def _recompute(row: dict) -> dict:
    return {**row, "checksum": legacy_checksum(row)}


def _log_entries(path) -> int:
    """Entries of the event log (0 where there is none: the legacy schema)."""
    with db.connect(path) as con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchall():
            return 0
        return con.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def _trial(setting: Setting, name: str, trial: int) -> bool:
    e = setting.scale.enrol_samples
    options = {}
    if name.endswith("_witness"):
        name = name[:-len("_witness")]
        if setting.kind == "after":                                    # the legacy has no witness
            options["witness"] = True
    target = setting.target(f"forgery-{name}", **options)
    _, (alice, mallory) = setting.people(2, f"forgery/{name}/{trial}")
    (a, mal), (ta, tm) = setting.enrol(target, [alice, mallory], f"{name}-", f"forgery/{name}/{trial}")
    probe = alice[:e]                     # the enrolment photos: accepted before any forgery
    path = target.db_path
    try:
        if name == "tamper":
            row = db.active_row(path, a, "verify")
            code = db.codes_of([row], target.m, target.q)[0]
            code[:len(code) // 4] = (code[:len(code) // 4] + 1) % target.q
            db.write_row(path, _recompute({**row, "code": db.code_bytes(code, target.q)}))
            return target.verify(a, probe, ta).refused != "store"
        if name == "substitute":
            row, theirs = db.active_row(path, a, "verify"), db.active_row(path, mal, "verify")
            db.write_row(path, _recompute({**row, "code": theirs["code"], "salt": theirs["salt"]}))
            return target.verify(a, mallory[:e], tm).accepted
        if name in ("replay", "truncate_log_replay_restarted", "drop_log_replay_restarted"):
            saved = db.rows(path, "subject_id = ? AND revoked_at IS NULL", (a,))
            logged = _log_entries(path)
            target.revoke(a)
            for row in saved:
                db.write_row(path, row)
            if name != "replay":
                if _log_entries(path):
                    with db.connect(path) as con:
                        if name.startswith("drop"):
                            con.execute("DROP TABLE events")
                        else:
                            con.execute("DELETE FROM events WHERE seq > ?", (logged,))
                target.restart()
            return target.verify(a, probe, ta).accepted
        if name == "rollback_reissue":
            saved = db.rows(path, "subject_id = ? AND revoked_at IS NULL", (a,))
            target.reissue(a, alice[e:2 * e], setting.token(setting.rng(f"forgery/new/{trial}")))
            db.delete_rows(path, [r["template_id"] for r in db.rows(path, "subject_id = ? AND revoked_at IS NULL",
                                                                    (a,))])
            for row in saved:
                db.write_row(path, row)
            return target.verify(a, probe, ta).accepted
        copy = db.backup(path, f"{path}.backup")
        target.revoke(a)
        db.restore(path, copy)
        if name.startswith("rollback_file_restarted"):
            target.restart()
        return target.verify(a, probe, ta).accepted
    except Refused:                       # the service noticed and refused to start or to act
        return False
    finally:
        target.close()


def run(setting: Setting) -> dict:
    out = {"chance": 0.0, "trials": setting.scale.n_forgery_trials}
    for name in FORGERIES:
        out[name] = float(np.mean([_trial(setting, name, t) for t in range(setting.scale.n_forgery_trials)]))
    return out
