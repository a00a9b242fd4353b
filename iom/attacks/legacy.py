"""The "before" target: the template service as it was before the security issue (commit
f622519), re-created so the attacks can be measured against it after the code has moved on.

What it keeps of the legacy scheme, exactly (checked against the old code by
:func:`validate_against_old_code`):

* verification templates under ``TemplateKey.derive(token, secret, salt)`` (plain HKDF of an
  unstretched token, per-template random salt); any non-empty token accepted;
* every identification template under one application key,
  ``TemplateKey.derive(b"iomface-identification", secret, b"iomface/identify")``;
* ``verify`` and ``identify`` return exact Hamming similarities (``identify`` for any
  ``top_k``), and accept raw embeddings;
* rows in SQLite (schema version 1) with a plain SHA-256 ``checksum`` over every column, no
  event log: anyone with write access can recompute it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from iom.attacks.base import Hit, Outcome, Target
from iom.keys import TemplateKey
from iom.errors import (DuplicateEnrollmentError, RevokedTemplateError, StoreError, TemplateError,
                        UnknownSubjectError)
from iom.search.packing import count_mismatches, from_bytes, pack_codes, to_bytes
from iom.store.records import _encode_field   # the column encoding
from iom.store.schema import MIGRATIONS       # schema 1

LEGACY_COMMIT = "f62251953eca7157596b5b37e0575c68a0e15ca9"
KEY_VERSION = 1
SALT_BYTES = 16
IDENTIFY_SALT = b"iomface/identify"
COLUMNS = ("template_id", "subject_id", "purpose", "code", "salt", "key_version", "model_id",
           "m", "q", "n_photos", "created_at", "revoked_at")
_CHECKSUM_DOMAIN = b"iomface.template.v1\x00"
# the legacy database is schema version 1 of the store, in SQLite's dialect
_SCHEMA = ["CREATE TABLE schema_info (version INTEGER NOT NULL)",
           *(sql.format(blob="BLOB", id_pk="INTEGER PRIMARY KEY") for sql in MIGRATIONS[0][1]),
           "INSERT INTO schema_info (version) VALUES (1)"]


def legacy_checksum(row: Mapping[str, Any]) -> bytes:
    """The legacy row checksum: SHA-256 over every column, typed and length-prefixed — a
    public function of the row, which a database writer recomputes at will."""
    h = hashlib.sha256(_CHECKSUM_DOMAIN)
    h.update(len(COLUMNS).to_bytes(4, "big"))
    for name in COLUMNS:
        h.update(_encode_field(name))
        h.update(_encode_field(row[name]))
    return h.digest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class LegacyService:
    """The legacy template service on a SQLite file (enroll, verify, identify, revoke, reissue)."""

    def __init__(self, pipeline, path: str | os.PathLike, app_secret: bytes, threshold: float):
        self.pipeline, self.path, self.secret = pipeline, Path(path), bytes(app_secret)
        self.m, self.q = pipeline.hasher.m, pipeline.hasher.q
        self.threshold = float(threshold)
        self.app_key = TemplateKey.derive(b"iomface-identification", self.secret, IDENTIFY_SALT)
        fresh = not self.path.exists()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        if fresh:
            self._write(lambda: [self._db.execute(sql) for sql in _SCHEMA])
        self._gallery = None

    # ------------------------------------------------------------------ storage
    def _write(self, fn):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            out = fn()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._gallery = None
        return out

    def _rows(self, where: str, params=()) -> list[dict]:
        rows = self._db.execute(f"SELECT {', '.join(COLUMNS)}, checksum FROM templates WHERE {where} "
                                "ORDER BY template_id", params).fetchall()
        out = []
        for r in rows:
            row = dict(zip(COLUMNS, r[:-1]))
            try:
                ok = legacy_checksum(row) == bytes(r[-1])
            except TypeError:
                ok = False
            if not ok:
                raise StoreError(f"template {row['template_id']} is corrupt (checksum mismatch)")
            out.append(row)
        return out

    def _active(self, subject_id: str) -> dict[str, dict]:
        rows = self._rows("subject_id = ? AND revoked_at IS NULL", (subject_id,))
        if not rows:
            (n,), = self._db.execute("SELECT COUNT(*) FROM templates WHERE subject_id = ?", (subject_id,))
            cls = RevokedTemplateError if n else UnknownSubjectError
            raise cls(f"subject {subject_id!r} has no active template", subject_id)
        return {r["purpose"]: r for r in rows}

    def _insert(self, subject_id: str, x: np.ndarray, token: bytes, n: int) -> list[int]:
        salt = os.urandom(SALT_BYTES)
        ids = []
        for purpose, key, s in (("verify", TemplateKey.derive(token, self.secret, salt), salt),
                                ("identify", self.app_key, IDENTIFY_SALT)):
            row = dict(subject_id=subject_id, purpose=purpose, code=self._pack(x, key), salt=s,
                       key_version=KEY_VERSION, model_id=self.pipeline.model_id, m=self.m, q=self.q,
                       n_photos=n, created_at=_now(), revoked_at=None)
            try:
                (tid,), = self._db.execute(
                    "INSERT INTO templates (subject_id, purpose, code, salt, key_version, model_id, m, q, "
                    "n_photos, created_at, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "RETURNING template_id", [row[c] for c in COLUMNS[1:-1]] + [b""]).fetchall()
            except sqlite3.IntegrityError:
                raise DuplicateEnrollmentError(f"subject {subject_id!r} already has an active template",
                                               subject_id) from None
            row["template_id"] = tid
            self._db.execute("UPDATE templates SET checksum = ? WHERE template_id = ?",
                             (legacy_checksum(row), tid))
            ids.append(tid)
        return ids

    def _revoke_rows(self, rows) -> None:
        now = _now()
        for row in rows:
            row = {**row, "revoked_at": now}
            self._db.execute("UPDATE templates SET revoked_at = ?, checksum = ? WHERE template_id = ?",
                             (now, legacy_checksum(row), row["template_id"]))

    def _pack(self, x: np.ndarray, key: TemplateKey) -> bytes:
        return to_bytes(pack_codes(self.pipeline.hasher.encode(x, key), self.q)[0])

    @staticmethod
    def _token(token) -> bytes:
        token = token.encode("utf-8") if isinstance(token, str) else bytes(token or b"")
        if not token:
            raise TemplateError("user_token must be a non-empty string or bytes")
        return token

    # ------------------------------------------------------------------ operations
    def enroll(self, subject_id: str, embeddings, user_token) -> list[int]:
        x, n = self.pipeline.fused_embedding(None, embeddings)
        token = self._token(user_token)
        return self._write(lambda: self._active_free(subject_id) or self._insert(subject_id, x, token, n))

    def _active_free(self, subject_id: str) -> None:
        if self._rows("subject_id = ? AND revoked_at IS NULL", (subject_id,)):
            raise DuplicateEnrollmentError(f"subject {subject_id!r} already has an active template", subject_id)

    def verify(self, subject_id: str, user_token, embedding) -> tuple[float, bool]:
        """(similarity, accepted) of a probe embedding under the key of ``user_token``."""
        token = self._token(user_token)
        record = self._active(subject_id).get("verify")
        if record is None:
            raise TemplateError(f"subject {subject_id!r} has no verification template")
        x, _ = self.pipeline.fused_embedding(None, embedding)
        code = pack_codes(self.pipeline.hasher.encode(x, TemplateKey.derive(token, self.secret, record["salt"])),
                          self.q)[0]
        sim = 1.0 - int(count_mismatches(from_bytes(record["code"], self.m, self.q), code)) / self.m
        return sim, sim >= self.threshold

    def identify(self, embedding, top_k: int = 5) -> list[tuple[str, float, bool]]:
        """The ``top_k`` closest subjects: (subject, similarity, accepted)."""
        from iom.search.gallery import PackedGallery

        if self._gallery is None:
            rows = self._rows("model_id = ? AND purpose = 'identify' AND revoked_at IS NULL",
                              (self.pipeline.model_id,))
            gallery = PackedGallery(self.m, self.q, workers=1)
            if rows:
                gallery.add_packed(np.array([r["template_id"] for r in rows], np.int64),
                                   np.stack([from_bytes(r["code"], self.m, self.q) for r in rows]))
            self._gallery = (gallery, {r["template_id"]: r["subject_id"] for r in rows})
        gallery, subjects = self._gallery
        x, _ = self.pipeline.fused_embedding(None, embedding)
        hits = gallery.search(self.pipeline.hasher.encode(x, self.app_key)[0], top_k)
        return [(subjects[tid], float(sim), bool(sim >= self.threshold)) for tid, sim in hits]

    def revoke(self, subject_id: str) -> int:
        def run():
            rows = list(self._active(subject_id).values())
            self._revoke_rows(rows)
            return len(rows)
        return self._write(run)

    def reissue(self, subject_id: str, new_token, embeddings) -> list[int]:
        x, n = self.pipeline.fused_embedding(None, embeddings)
        token = self._token(new_token)

        def run():
            self._revoke_rows(list(self._active(subject_id).values()))
            return self._insert(subject_id, x, token, n)
        return self._write(run)

    def refresh(self) -> None:
        self._gallery = None

    def close(self) -> None:
        self._db.close()


# ---------------------------------------------------------------------------- validation
_OLD_SIDE = r"""
import json, sys
import numpy as np
from iom.hashing.hasher import DeepIoMHasher
from iom.service.pipeline import Pipeline
from iom.service.service import TemplateService
from iom.store.sqlite import SQLiteStore

spec = json.load(open(sys.argv[1]))
data = np.load(spec["arrays"])

class NoEmbedder:
    input_size = 112

hasher = DeepIoMHasher.load(spec["hasher"])
out = {}
for name, path in (("old", spec["old_db"]), ("ours", spec["ours_db"])):
    store = SQLiteStore(path)
    svc = TemplateService(Pipeline(NoEmbedder(), hasher), store, spec["secret"].encode(),
                          calibration={"threshold": spec["threshold"], "m": hasher.m, "q": hasher.q})
    if name == "old":
        for i, s in enumerate(spec["subjects"]):
            svc.enroll(s, embeddings=data["enrol"][i], user_token=spec["tokens"][i])
        svc.revoke(spec["subjects"][-1])
    out[name] = {
        "verify": [svc.verify(s, user_token=t, embedding=p).similarity
                   for s, t, p in zip(spec["subjects"], spec["tokens"], data["probes"])],
        "identify": [[[s, sim] for s, sim, _ in svc.identify(embedding=p, top_k=len(spec["subjects"]))]
                     for p in data["probes"]]}
    store.close()
print(json.dumps(out))
"""


def validate_against_old_code(old_root: str | os.PathLike, hasher_dir: str | os.PathLike,
                              workdir: str | os.PathLike, n: int = 6, seed: int = 0) -> dict:
    """Check :class:`LegacyService` against the legacy code itself (``git archive <commit>``
    extracted at ``old_root``, run in a subprocess) on the hasher saved in ``hasher_dir``:
    each side enrols the same subjects (the last one then revoked) into its own database, and
    *both* codes then read *both* databases; every checksum must verify and every verify and
    identify similarity must be identical."""
    from iom.attacks.faces import synthetic_faces
    from iom.hashing.hasher import DeepIoMHasher
    from iom.service.pipeline import Pipeline

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(None, DeepIoMHasher.load(os.fspath(hasher_dir)))
    faces = synthetic_faces(n, 3, pipeline.dim, seed=seed).embeddings.reshape(n, 3, -1)
    enrol, probes = faces[:, :2], faces[:-1, 2]
    subjects, tokens = [f"s{i}" for i in range(n)], [f"token-{i}" for i in range(n)]
    secret, threshold = f"validation-secret-{seed}", 0.3
    dbs = {k: workdir / f"{k}.db" for k in ("ours", "old")}
    for p in dbs.values():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{p}{suffix}").unlink(missing_ok=True)
    arrays = workdir / "arrays.npz"
    np.savez(arrays, enrol=enrol, probes=probes)
    ours = LegacyService(pipeline, dbs["ours"], secret.encode(), threshold)
    for i, s in enumerate(subjects):
        ours.enroll(s, enrol[i], tokens[i])
    ours.revoke(subjects[-1])
    ours.close()
    spec = {"hasher": os.path.abspath(hasher_dir), "ours_db": str(dbs["ours"]), "old_db": str(dbs["old"]),
            "arrays": str(arrays), "subjects": subjects, "tokens": tokens, "secret": secret,
            "threshold": threshold}
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=os.path.abspath(old_root), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", _OLD_SIDE, str(spec_path)], cwd=old_root, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"the legacy code failed: {done.stderr[-3000:]}")
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    mine = {}
    for name, path in dbs.items():
        svc = LegacyService(pipeline, path, secret.encode(), threshold)
        mine[name] = {"verify": [svc.verify(s, t, p)[0] for s, t, p in zip(subjects, tokens, probes)],
                      "identify": [[[s, sim] for s, sim, _ in svc.identify(p, top_k=n)] for p in probes]}
        svc.close()
    identical = all(theirs[k][f] == mine[k][f] for k in dbs for f in ("verify", "identify"))
    return {"legacy_commit": LEGACY_COMMIT, "hasher": os.path.basename(os.path.normpath(hasher_dir)),
            "subjects": n, "identical": bool(identical),
            "checked": "both codes read both databases (checksums, verify and identify similarities)"}


class LegacyTarget(Target):
    """The legacy scheme as an attack target (``before``): scores exposed, embeddings accepted."""

    label = "before"

    def __init__(self, hasher, calibration: dict, secret: bytes, db_path):
        super().__init__(hasher, calibration, secret, db_path)
        self.service = LegacyService(self.pipeline, self.db_path, self.secret, self.threshold)

    def _restart(self) -> None:
        self.service.close()
        self.service = LegacyService(self.pipeline, self.db_path, self.secret, self.threshold)

    def close(self) -> None:
        self.service.close()

    def _enroll(self, subject, embeddings, token):
        self.service.enroll(subject, embeddings, token)

    def _verify(self, subject, embedding, token, client):
        sim, accepted = self.service.verify(subject, token, embedding)
        return Outcome(accepted, sim)

    def _identify(self, embedding, top_k, client):
        return [Hit(s, acc, sim) for s, sim, acc in self.service.identify(embedding, top_k)]

    def _revoke(self, subject):
        self.service.revoke(subject)

    def _reissue(self, subject, embeddings, new_token):
        self.service.reissue(subject, new_token, embeddings)

    def verification_key(self, row, token):
        return TemplateKey.derive(token, self.secret, row["salt"])

    def identification_key(self):
        return self.service.app_key
