"""The attacks of ``bench/http_attacks.py``, one module a part: :mod:`.guessing` ((a) online
token guessing, (a4) the cost of a refusal), :mod:`.oracle` ((b) the score oracle through
identify, (c) similarities for admin keys only), :mod:`.report` (the markdown page and its
conclusions); :mod:`.client`: the attacker's and administrator's calls."""
