"""The template store: protected templates (packed IoM codes) in a real database.

:mod:`iom.store.base` (the store's contract and its shared SQL), built from :mod:`iom.store.records`
(template records, checks, checksums), :mod:`iom.store.schema` (tables, migrations),
:mod:`iom.store.events` (the event log, settings) and :mod:`iom.store.attempts` (the attempt log);
:mod:`iom.store.sqlite` and :mod:`iom.store.postgres` (the back ends), :mod:`iom.store.factory`
(a store from a location string), :mod:`iom.store.dsn` (no password in any message).
"""
