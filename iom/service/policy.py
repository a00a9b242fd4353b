"""What the template service exposes and allows: its security policy, and token strength.

The defaults are for a service facing untrusted callers:

* decisions, not scores — a similarity is an oracle an attacker can fit codes to
  (docs/RESULTS.md, "Attacks on the template service");
* photos only — raw embeddings let a caller probe with chosen points of feature space;
* tokens of at least :attr:`ServicePolicy.min_token_bits` estimated bits, stretched with
  scrypt, and failed verifications of one subject limited per time window;
* calls per client and minute limited (``identify_per_minute``, ``verify_per_minute``), and
  verifications of one subject per minute whoever calls (``subject_verify_per_minute``),
  before any work — a verification's scrypt is deliberately expensive. ``client`` is
  whatever the caller is known by (account, address): the library cannot stop a caller who
  names itself anew each call, the deployment's front end must;
* identification accepts a candidate at the 1:N threshold of the gallery's size
  (:attr:`ServicePolicy.fpir`), not at the 1:1 threshold.

``expose_scores`` and ``allow_embeddings`` are library-level options for research and
trusted back ends; the CLI enables embeddings only with ``--allow_embeddings``.
``allow_codes`` accepts a device's code (the exported model's output, relabelled on the device
by the key it was provisioned with: :func:`iom.service.template_keys.device_key`) in place of
a photo, so that neither photo nor embedding leaves the device. The service inverts the
device's key; an un-keyed code (the same for every deployment of the model) is never taken as
such, so a code walked out of the service through one device is that device's, useless
elsewhere. Like an embedding, a code lets the caller choose its probe freely, so it is off
unless the deployment's devices need it (``iomface serve --device_codes``), and identification
with codes is limited per device (``code_identify_per_minute``) and locked after
``max_code_misses`` identifications that match no one within ``code_miss_window_s``, as
verification is after failures.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, fields

from iom.errors import InvalidInputError

#: scrypt cost bounds accepted in a policy (2^10 is far too cheap, 2^20 needs 1 GiB)
SCRYPT_N_RANGE = (2**10, 2**20)


@dataclass(frozen=True)
class ServicePolicy:
    """Security policy of a :class:`~iom.service.service.TemplateService` (see module doc)."""

    expose_scores: bool = False
    allow_embeddings: bool = False
    allow_codes: bool = False
    min_token_bits: float = 32.0
    max_failures: int = 5
    failure_window_s: float = 900.0
    identify_per_minute: int = 120
    verify_per_minute: int = 60
    subject_verify_per_minute: int = 30
    fpir: float = 0.01
    scrypt_n: int = 2**14
    code_identify_per_minute: int = 6
    max_code_misses: int = 20
    code_miss_window_s: float = 3600.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise InvalidInputError(f"policy {f.name} must be true or false, got {value!r}")
        _positive(self.min_token_bits, "min_token_bits", allow_zero=True)
        _positive(self.failure_window_s, "failure_window_s")
        _positive(self.code_miss_window_s, "code_miss_window_s")
        for name in ("max_failures", "identify_per_minute", "verify_per_minute", "subject_verify_per_minute",
                     "code_identify_per_minute", "max_code_misses"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"policy {name} must be a positive integer, got {value!r}")
        if not isinstance(self.fpir, (int, float)) or not 0 < self.fpir < 1:
            raise InvalidInputError(f"policy fpir must be in (0, 1), got {self.fpir!r}")
        n = self.scrypt_n
        if isinstance(n, bool) or not isinstance(n, int) or n & (n - 1) or not \
                SCRYPT_N_RANGE[0] <= n <= SCRYPT_N_RANGE[1]:
            raise InvalidInputError(f"policy scrypt_n must be a power of two in "
                                    f"[{SCRYPT_N_RANGE[0]}, {SCRYPT_N_RANGE[1]}], got {n!r}")


def _positive(value, name: str, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise InvalidInputError(f"policy {name} must be a {'non-negative' if allow_zero else 'positive'} "
                                f"number, got {value!r}")


def token_bits(token: bytes | str) -> float:
    """A conservative estimate of a token's guessing entropy in bits.

    ``length x log2(alphabet)`` where the alphabet is the union of the character classes
    the token uses (digits 10, lower 26, upper 26, ASCII symbols 33, anything else 100),
    with the length counted in runs: a character equal to the previous one, or continuing a
    run of steps of +1 or -1 (the ``c`` of ``abc``, the ``3`` and ``4`` of ``1234``), adds
    nothing. Random tokens score close to their true entropy; PINs, repeats and sequences
    score low. Dictionary words are not recognised (``password1`` scores 41 bits): issue
    random tokens (:func:`generate_token`) where users do not choose their own.
    """
    if isinstance(token, (bytes, bytearray)):
        try:
            token = bytes(token).decode("utf-8")
        except UnicodeDecodeError:
            return 8.0 * len(token)            # binary tokens: every byte counts
    classes = set()
    for c in token:
        classes.add("digit" if c.isascii() and c.isdigit() else
                    "lower" if "a" <= c <= "z" else "upper" if "A" <= c <= "Z" else
                    "symbol" if c.isascii() else "other")
    alphabet = sum({"digit": 10, "lower": 26, "upper": 26, "symbol": 33, "other": 100}[k] for k in classes)
    steps = [ord(b) - ord(a) for a, b in zip(token, token[1:])]
    effective = 1 if token else 0
    for i, step in enumerate(steps):
        if step == 0 or (abs(step) == 1 and i > 0 and steps[i - 1] == step):
            continue
        effective += 1
    return effective * math.log2(alphabet) if alphabet > 1 else 0.0


def check_token_strength(token: bytes, min_bits: float, what: str = "user_token") -> None:
    """:class:`~iom.errors.WeakTokenError` (a PolicyError) if the token is weaker than
    ``min_bits``."""
    from iom.errors import WeakTokenError

    bits = token_bits(token)
    if bits < min_bits:
        raise WeakTokenError(f"{what} is too weak ({bits:.0f} estimated bits, the policy needs "
                          f"{min_bits:.0f}): use a longer random token, e.g. 8 random letters and digits")



def generate_token(nbytes: int = 16) -> str:
    """A random token of ``8 * nbytes`` bits (URL-safe text) to hand to a user."""
    return secrets.token_urlsafe(nbytes)
