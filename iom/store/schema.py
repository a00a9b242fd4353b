"""The store's schema: its tables, their column orders and the migrations that build them.

Schema (version 3)::

    schema_info(version INTEGER NOT NULL)                        -- one row
    templates(template_id  INTEGER PRIMARY KEY / BIGSERIAL,
              subject_id TEXT, purpose TEXT, code BLOB/BYTEA, salt BLOB/BYTEA,
              key_version INTEGER, model_id TEXT, m INTEGER, q INTEGER, n_photos INTEGER,
              created_at TEXT, revoked_at TEXT NULL, checksum BLOB/BYTEA)   -- all NOT NULL
                                                                            -- but revoked_at
    UNIQUE INDEX templates_one_active ON templates(subject_id, purpose) WHERE revoked_at IS NULL
    events(seq BIGINT PRIMARY KEY, subject_id TEXT, op TEXT, revoked_ids TEXT, new_ids TEXT,
           at TEXT, mac BLOB/BYTEA)                              -- version 2: the change log
    attempts(attempt_id, subject_id TEXT, client TEXT, op TEXT, outcome TEXT, at TEXT,
             mac BLOB/BYTEA)                                     -- mac: version 3
    settings(name TEXT PRIMARY KEY, value BLOB/BYTEA, seq BIGINT, mac BLOB/BYTEA)

The partial unique index is what makes two active templates of one purpose for one subject
impossible, even under concurrency. Timestamps are UTC ISO-8601 strings
(``2025-01-31T12:00:00.000000+00:00``).

Migrations: :data:`MIGRATIONS` is an ordered list ``[(version, [sql, ...]), ...]``; opening
an older database applies the missing ones (:class:`SchemaMixin`, part of
:class:`~iom.store.base.TemplateStore`), each in its own transaction together with the
update of ``schema_info``; a database newer than the code is refused. A new version is
added by appending to the list (SQL may use ``{blob}``, ``{id_pk}`` and ``{empty_blob}``, which
each back end fills in for its dialect).
"""

from __future__ import annotations

from collections.abc import Sequence

from iom.errors import StoreError

#: ordered schema migrations: (version, statements); version k brings the schema to k
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE templates (
            template_id {id_pk},
            subject_id TEXT NOT NULL,
            purpose TEXT NOT NULL,
            code {blob} NOT NULL,
            salt {blob} NOT NULL,
            key_version INTEGER NOT NULL,
            model_id TEXT NOT NULL,
            m INTEGER NOT NULL,
            q INTEGER NOT NULL,
            n_photos INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            revoked_at TEXT,
            checksum {blob} NOT NULL)""",
        "CREATE UNIQUE INDEX templates_one_active ON templates (subject_id, purpose) "
        "WHERE revoked_at IS NULL",
        "CREATE INDEX templates_by_subject ON templates (subject_id, template_id)",
        "CREATE INDEX templates_identify ON templates (model_id, template_id) "
        "WHERE revoked_at IS NULL AND purpose = 'identify'",
    ]),
    (2, [
        # the append-only, HMAC-chained log of every enrolment, revocation and reissue
        """CREATE TABLE events (
            seq BIGINT PRIMARY KEY,
            subject_id TEXT NOT NULL,
            op TEXT NOT NULL,
            revoked_ids TEXT NOT NULL,
            new_ids TEXT NOT NULL,
            at TEXT NOT NULL,
            mac {blob} NOT NULL)""",
        "CREATE INDEX events_by_subject ON events (subject_id, seq)",
        # failed and refused attempts (verification failures, rate-limit hits, failed proofs)
        """CREATE TABLE attempts (
            attempt_id {id_pk},
            subject_id TEXT NOT NULL,
            client TEXT NOT NULL,
            op TEXT NOT NULL,
            outcome TEXT NOT NULL,
            at TEXT NOT NULL)""",
        "CREATE INDEX attempts_by_subject ON attempts (subject_id, op, at)",
        # service settings (the administrator verifier), each authenticated and logged
        """CREATE TABLE settings (
            name TEXT PRIMARY KEY,
            value {blob} NOT NULL,
            seq BIGINT NOT NULL,
            mac {blob} NOT NULL)""",
    ]),
    (3, [
        # every attempt row authenticated (rows written before: an empty MAC until adopted)
        "ALTER TABLE attempts ADD COLUMN mac {blob} NOT NULL DEFAULT {empty_blob}",
    ]),
]

# columns of a template row, in the order SELECTs return them and the checksum covers them
COLUMNS = ("template_id", "subject_id", "purpose", "code", "salt", "key_version", "model_id",
           "m", "q", "n_photos", "created_at", "revoked_at")
#: columns of an attempt row, in the order SELECTs return them and its MAC covers them
ATTEMPT_COLUMNS = ("attempt_id", "subject_id", "client", "op", "outcome", "at")


# ---------------------------------------------------------------------------- migrations
class SchemaMixin:
    """The migration methods of :class:`~iom.store.base.TemplateStore` (which provides
    ``migrations``, ``DDL``, ``DB_ERROR``, ``_transaction``, ``_exec``, ``_table_names`` and
    ``location``; ``_migrating`` tells its transactions not to check the event log yet)."""

    def _migrations(self) -> list[tuple[int, Sequence[str]]]:
        migrations = list(MIGRATIONS if self.migrations is None else self.migrations)
        versions = [v for v, _ in migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise StoreError(f"migration versions must be 1, 2, ... in order, got {versions}")
        return migrations

    def _read_version(self) -> int | None:
        """The schema version inside a transaction (``None``: no schema_info table)."""
        if "schema_info" not in self._table_names():
            return None
        rows = self._exec("SELECT version FROM schema_info")
        if len(rows) > 1:
            raise StoreError(f"{self.location()}: schema_info has {len(rows)} rows")
        return int(rows[0][0]) if rows else 0

    def _check_version(self, version: int, latest: int) -> None:
        if version > latest:
            raise StoreError(f"{self.location()} has schema version {version}, newer than this code "
                             f"supports ({latest}); upgrade iomface")

    def _migrate(self) -> None:
        """Bring the schema to the latest version, one transaction a migration."""
        self._migrating = True
        try:
            self._apply_migrations()
        finally:
            self._migrating = False

    def _apply_migrations(self) -> None:
        migrations = self._migrations()
        latest = len(migrations)
        with self._transaction(write=False):
            version = self._read_version()
        if version is not None:
            self._check_version(version, latest)
            if version == latest:
                return
        while True:
            with self._transaction(write=True, lock_keys=["\x00schema"]):
                self._exec("CREATE TABLE IF NOT EXISTS schema_info (version INTEGER NOT NULL)")
                version = self._read_version() or 0
                self._check_version(version, latest)
                if version == latest:
                    if not self._exec("SELECT version FROM schema_info"):
                        self._exec("INSERT INTO schema_info (version) VALUES (?)", (version,))
                    return
                target, statements = migrations[version]
                try:
                    for sql in statements:
                        self._exec(sql.format(**self.DDL))
                except self.DB_ERROR as e:
                    raise StoreError(f"{self.location()}: migration to schema version {target} "
                                     f"failed: {e}") from e
                self._exec("DELETE FROM schema_info")
                self._exec("INSERT INTO schema_info (version) VALUES (?)", (target,))
