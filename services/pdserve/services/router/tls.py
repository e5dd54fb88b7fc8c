"""HTTPS for the router, with vLLM's flag names: --ssl-keyfile, --ssl-certfile, --ssl-ca-certs,
--ssl-cert-reqs.

uvicorn terminates TLS from the files. They are loaded once here first, at start-up, so a missing
file, a key that does not match its certificate or a CA bundle that does not parse stops the
router with a message naming the file, instead of every client's handshake failing later.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

# --ssl-cert-reqs, as vLLM takes it (the ssl module's numbers) or by name
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class ServerTls:
    keyfile: str
    certfile: str
    ca_certs: str | None = None
    cert_reqs: int = ssl.CERT_NONE  # client certificates: none, optional, required

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_keyfile": self.keyfile, "ssl_certfile": self.certfile}
        options["ssl_cert_reqs"] = self.cert_reqs
        if self.ca_certs is not None:
            options["ssl_ca_certs"] = self.ca_certs
        return options


def parse_cert_reqs(text: str) -> int:
    """'none' | 'optional' | 'required', or vLLM's 0 | 1 | 2."""
    value = text.strip().lower()
    if value in CERT_REQS:
        return CERT_REQS[value]
    if value in {str(v) for v in CERT_REQS.values()}:
        return int(value)
    raise ValueError(f"expected one of none, optional, required (or 0, 1, 2), got {text!r}")


def server_tls(
    keyfile: str | None, certfile: str | None, ca_certs: str | None = None, cert_reqs: int = ssl.CERT_NONE
) -> ServerTls | None:
    """The router's TLS settings, checked by loading them; None for plain HTTP. ValueError says
    what is wrong and which flag to fix."""
    if keyfile is None and certfile is None:
        if ca_certs is not None or cert_reqs != ssl.CERT_NONE:
            raise ValueError("--ssl-ca-certs and --ssl-cert-reqs need HTTPS: give --ssl-certfile and --ssl-keyfile too")
        return None
    if keyfile is None or certfile is None:
        raise ValueError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    if cert_reqs not in CERT_REQS.values():
        raise ValueError(f"--ssl-cert-reqs must be 0 (none), 1 (optional) or 2 (required), got {cert_reqs!r}")
    if cert_reqs != ssl.CERT_NONE and ca_certs is None:
        raise ValueError("--ssl-cert-reqs optional or required checks client certificates: give --ssl-ca-certs")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except FileNotFoundError as exc:
        raise ValueError(f"--ssl-certfile/--ssl-keyfile: {exc.strerror}: {exc.filename or certfile}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"--ssl-certfile {certfile} with --ssl-keyfile {keyfile} does not load ({exc}); both must be PEM, "
            "the key unencrypted and matching the certificate"
        ) from None
    if ca_certs is not None:
        try:
            context.load_verify_locations(cafile=ca_certs)
        except FileNotFoundError as exc:
            raise ValueError(f"--ssl-ca-certs {ca_certs}: {exc.strerror}") from None
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"--ssl-ca-certs {ca_certs} does not load as PEM certificates ({exc})") from None
    return ServerTls(keyfile, certfile, ca_certs, cert_reqs)
