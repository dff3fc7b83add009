"""The webhook's serving certificate: when it ends, and whether that is close enough to warn.

The end (notAfter) is read with ``cryptography``, the X.509 package Python's TLS tooling uses:
``ssl`` decodes a certificate only for a peer it has verified (``SSLSocket.getpeercert``) or
through the private ``ssl._ssl._test_decode_cert``. The first certificate of the file is the one
served (OpenSSL's ``load_cert_chain`` takes the first as the leaf).

Pure, but for :func:`read_not_after`, which reads the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from cryptography import x509

from cdmo.errors import InvalidInput

#: Warn this long before the certificate ends. The chart's cert-manager Certificate is renewed
#: 15 days (renewBefore 360h) before its end, so a certificate cert-manager looks after never
#: gets this close; one that does is a chart-made one nobody rotated or a renewal that is stuck.
#: Two weeks still leave time to rotate by hand before the API server refuses the webhook (and,
#: with failurePolicy Fail, every fractional pod). Not 30 days: that warned on every restart
#: during the last 15 days before a healthy cert-manager renewal.
EXPIRY_WARNING_SECONDS = 14 * 86400

ExpiryState = Literal["valid", "expiring", "expired"]

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def expiry_state(not_after: float, now: float) -> ExpiryState:
    """Whether a certificate ending at ``not_after`` has ended, ends within
    EXPIRY_WARNING_SECONDS, or neither (Unix times)."""
    if not_after <= now:
        return "expired"
    if not_after - now <= EXPIRY_WARNING_SECONDS:
        return "expiring"
    return "valid"


def read_not_after(cert_file: str) -> float:
    """notAfter of the first certificate in the PEM file ``cert_file``, as a Unix time.

    Raises InvalidInput when the file holds no certificate that reads; OSError when it cannot
    be read.
    """
    match = _PEM.search(Path(cert_file).read_bytes())
    if match is None:
        raise InvalidInput(f"{cert_file} holds no PEM certificate")
    try:
        cert = x509.load_pem_x509_certificate(match.group(0))
    except ValueError as exc:
        raise InvalidInput(f"the first certificate in {cert_file} does not read: {exc}") from None
    return cert.not_valid_after_utc.timestamp()
