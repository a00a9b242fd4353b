"""The pieces of ``bench/concurrency.py`` (several processes on one store, then an audit):
:mod:`.setup` (constants, policy, store and service), :mod:`.worker` (a worker process) and
:mod:`.ops` (the ops it draws), :mod:`.audit` (the store against the journals), :mod:`.report`
(the merged figures and their lines)."""
