"""A small timm-style registry of embedding backbones.

A *builder* is a function ``builder(embd_shape, input_size, dropout, name,
**kwargs) -> keras.Model`` that returns a model mapping an image batch
``(B, input_size, input_size, 3)`` (RGB, 0..255, uint8 or float) to a float
embedding ``(B, embd_shape)`` (not L2-normalised).  Builders register
themselves with :func:`register_backbone`::

    @register_backbone("IR_50", "iresnet50", "r50")
    def ir_50(embd_shape, input_size, dropout, name, **kwargs): ...

and callers build them by name with :func:`build_backbone`.  Names are matched
exactly first and then case-insensitively; unknown names raise
:class:`~arcface.errors.ConfigError` naming the closest known name.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

from arcface.errors import ConfigError

__all__ = [
    "register_backbone",
    "unregister_backbone",
    "list_backbones",
    "get_backbone_builder",
    "build_backbone",
]

BackboneBuilder = Callable[..., object]

# canonical name -> builder
_BUILDERS: dict[str, BackboneBuilder] = {}
# every accepted name (canonical names and aliases) -> canonical name
_NAMES: dict[str, str] = {}
# canonical name -> its aliases (for unregistering and listing)
_ALIASES: dict[str, tuple[str, ...]] = {}


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"backbone names must be non-empty strings, got {name!r}")
    return name


def register_backbone(name: str, *aliases: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering a backbone builder under ``name`` and ``aliases``.

    Raises :class:`ConfigError` if any of the names is already taken by another
    backbone (also case-insensitively, so lookups stay unambiguous).  Aliases
    differing from the name only in case are allowed (and redundant, since
    lookups fall back to case-insensitive matching).  The decorated function
    is returned unchanged.
    """
    names = [_check_name(name)] + [_check_name(a) for a in aliases]
    if len(set(names)) != len(names):
        raise ConfigError(f"backbone {name!r} lists the same name twice: {names}")

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        if not callable(builder):
            raise ConfigError(f"backbone {name!r}: builder must be callable, got {builder!r}")
        taken_lower = {k.lower(): v for k, v in _NAMES.items()}
        for n in names:
            if n.lower() in taken_lower:
                raise ConfigError(
                    f"backbone name {n!r} is already registered "
                    f"(for {taken_lower[n.lower()]!r})"
                )
        _BUILDERS[name] = builder
        _ALIASES[name] = tuple(aliases)
        for n in names:
            _NAMES[n] = name
        return builder

    return decorator


def unregister_backbone(name: str) -> None:
    """Remove a backbone (given by its name or any alias) with all its aliases.

    Meant for tests that register temporary builders.  Raises
    :class:`ConfigError` for unknown names.
    """
    canonical = _resolve(name)
    del _BUILDERS[canonical]
    for n in (canonical,) + _ALIASES.pop(canonical, ()):
        _NAMES.pop(n, None)


def list_backbones(include_aliases: bool = False) -> list[str]:
    """Sorted canonical backbone names (and aliases when ``include_aliases``)."""
    if include_aliases:
        return sorted(_NAMES, key=str.lower)
    return sorted(_BUILDERS, key=str.lower)


def _resolve(backbone_type: object) -> str:
    """Map a name or alias (exact, then case-insensitive) to its canonical name."""
    if not isinstance(backbone_type, str):
        raise ConfigError(
            f"backbone_type must be a string, got {type(backbone_type).__name__} "
            f"{backbone_type!r}; known backbones: {', '.join(list_backbones())}"
        )
    if backbone_type in _NAMES:
        return _NAMES[backbone_type]
    lowered = {k.lower(): v for k, v in _NAMES.items()}
    key = backbone_type.strip().lower()
    if key in lowered:
        return lowered[key]
    # Suggest the closest name, matching case-insensitively but reporting the
    # registered spelling.
    close = difflib.get_close_matches(key, list(lowered), n=3, cutoff=0.6)
    suggestion = ""
    if close:
        spelled = {k.lower(): k for k in _NAMES}
        hints = []
        for c in close:
            hint = repr(spelled[c])
            if lowered[c] != spelled[c]:
                hint += f" (alias of {lowered[c]!r})"
            hints.append(hint)
        suggestion = f"; did you mean {' or '.join(hints)}?"
    raise ConfigError(
        f"unknown backbone_type {backbone_type!r}{suggestion}. "
        f"Known backbones: {', '.join(list_backbones())}"
    )


def get_backbone_builder(backbone_type: str) -> BackboneBuilder:
    """The registered builder for a name or alias (ConfigError if unknown)."""
    return _BUILDERS[_resolve(backbone_type)]


def _check_int(value: object, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def build_backbone(
    backbone_type: str,
    embd_shape: int = 512,
    input_size: int = 112,
    dropout: float = 0.0,
    name: str | None = None,
    **kwargs,
):
    """Build a registered backbone as a ``keras.Model``.

    Args:
        backbone_type: registered name or alias (see :func:`list_backbones`).
        embd_shape: embedding dimension of the output.
        input_size: side of the square RGB input image.
        dropout: dropout rate before the embedding layer, in [0, 1).
        name: model name; defaults to the builder's own name.
        **kwargs: backbone-specific options (e.g. ``scale`` and ``blocks`` of
            MobileFaceNet); unknown options raise :class:`ConfigError`.

    Returns:
        A ``keras.Model`` mapping ``(B, input_size, input_size, 3)`` images in
        0..255 (uint8 or float) to ``(B, embd_shape)`` float embeddings.
    """
    canonical = _resolve(backbone_type)
    builder = _BUILDERS[canonical]
    embd_shape = _check_int(embd_shape, "embd_shape", 1)
    input_size = _check_int(input_size, "input_size", 1)
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float))
        or not 0.0 <= dropout < 1.0
    ):
        raise ConfigError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(f"name must be a non-empty string or None, got {name!r}")
    arguments = dict(
        embd_shape=embd_shape, input_size=input_size, dropout=float(dropout), name=name, **kwargs
    )
    try:
        inspect.signature(builder).bind(**arguments)
    except TypeError as exc:
        raise ConfigError(
            f"backbone {canonical!r}: invalid arguments {sorted(kwargs)}: {exc}"
        ) from None
    return builder(**arguments)
