"""The server's options read before anything loads: its API key file and the proxies it trusts."""

from __future__ import annotations

import os


def keys_file(args) -> str:
    """The API key file of ``--keys_file`` or ``$IOMFACE_KEYS_FILE`` (:class:`InvalidInputError` if neither)."""
    from iom.errors import InvalidInputError

    path = args.keys_file or os.environ.get("IOMFACE_KEYS_FILE")
    if not path:
        raise InvalidInputError("no API key file: pass --keys_file FILE or set IOMFACE_KEYS_FILE "
                                "(create one with: iomface add-key NAME --role admin --keys_file FILE)")
    return path


def trusted_proxies(text: str) -> list[str]:
    """The addresses of ``--forwarded_allow_ips`` (IPs or networks), checked: uvicorn's own
    default trusts 127.0.0.1, so that anyone on the machine could name the client's address."""
    import ipaddress

    from iom.errors import InvalidInputError

    out = []
    for item in (t.strip() for t in (text or "").split(",")):
        if not item:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise InvalidInputError(f"--forwarded_allow_ips: {item!r} is not an IP address or network") from None
        out.append(item)
    return out
