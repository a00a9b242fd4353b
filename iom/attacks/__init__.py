"""Attacks on the template service (the security issue), measured before and after its fix.

Targets (:mod:`iom.attacks.targets`): ``before`` = the legacy scheme re-created
(:mod:`iom.attacks.legacy`, checked against the legacy code), ``after`` = the current
:class:`~iom.service.service.TemplateService` with raw embeddings allowed and scores hidden.

=========================  ===============================================================
module                     attack
=========================  ===============================================================
:mod:`.oracle`             1. identification scores as an oracle: codes recovered by least
                           squares, then inverted and presented (masquerade)
:mod:`.relabel`            2. one identification key: the relabelling recovered from
                           self-enrolments; templates linked across reissue
:mod:`.forgery`            3. database write access: tampered, substituted, replayed and
                           rolled-back rows
:mod:`.tokens`             4. token guessing, offline (database + secret) and online
                           (confirmation with unrelated faces); the token policy
:mod:`.full_key`           5. ISO/IEC 30136 full disclosure: template inverted with its key
=========================  ===============================================================

Support: :mod:`.faces` (real or synthetic embeddings), :mod:`.hashers` (deep and random IoM
behind the service's hasher interface, differentiable logits), :mod:`.inversion` (gradient
ascent on the sphere, any Keras backend), :mod:`.db` (a database-file attacker),
:mod:`.setting` (sizes, seeds, fresh targets), :mod:`.suite` and :mod:`.report` (running,
summarising over seeds, the before/after table). Command: ``scripts/attack_eval.py``.
"""
