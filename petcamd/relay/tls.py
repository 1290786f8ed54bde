"""Built-in TLS: a server context from a PEM certificate chain and key, TLS 1.2 or newer."""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


def server_ssl_context(
    certificate: Path, private_key: Path, *, into: ssl.SSLContext | None = None
) -> ssl.SSLContext:
    """A new server context, or ``into`` with the files loaded again (certificate renewal)."""
    context = into if into is not None else ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=certificate, keyfile=private_key)
    except FileNotFoundError as exc:
        raise TlsError(f"TLS: no such file: {exc.filename}") from None
    except ssl.SSLError as exc:
        raise TlsError(
            f"TLS: cannot use certificate {certificate} with key {private_key}: {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise TlsError(f"TLS: cannot read {exc.filename}: {exc.strerror}") from None
    return context
