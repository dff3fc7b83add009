"""Reading the end of the webhook's certificate (cdmo.webhook.certificate), and when to warn."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cdmo.errors import InvalidInput
from cdmo.webhook.certificate import EXPIRY_WARNING_SECONDS, expiry_state, read_not_after
from tests.harness.tls import make_tls_files


@pytest.mark.parametrize("days", [1, 5, 365, 30_000])  # 30,000 days: past 2049, a GeneralizedTime
def test_the_end_of_a_certificate_is_its_not_after(tmp_path: Path, days: int) -> None:
    made = time.time()
    tls = make_tls_files(tmp_path, days=days)
    end = made + days * 86400
    # X.509 times have whole seconds: the certificate's end is within a second of when it was made
    assert end - 1 <= read_not_after(str(tls.cert_file)) <= time.time() + days * 86400


def test_a_chain_file_ends_when_its_first_certificate_the_one_served_ends(tmp_path: Path) -> None:
    leaf = make_tls_files(tmp_path / "leaf", days=5)
    other = make_tls_files(tmp_path / "other", days=365)
    chain = tmp_path / "chain.crt"
    chain.write_bytes(leaf.cert_file.read_bytes() + other.ca_file.read_bytes())
    assert read_not_after(str(chain)) == read_not_after(str(leaf.cert_file))
    assert read_not_after(str(chain)) < read_not_after(str(other.ca_file)) - 300 * 86400


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not a certificate", "holds no PEM certificate"),
        ("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "does not read"),
        ("-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n", "does not read"),
    ],
    ids=["no-pem", "not-base64", "not-x509"],
)
def test_a_file_without_a_readable_certificate_is_invalid_input_naming_it(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "tls.crt"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=words) as err:
        read_not_after(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("left", "state"),
    [
        (-1.0, "expired"),
        (0.0, "expired"),
        (1.0, "expiring"),
        (EXPIRY_WARNING_SECONDS, "expiring"),
        (EXPIRY_WARNING_SECONDS + 1, "valid"),
        (15 * 86400, "valid"),  # the chart's cert-manager renewBefore: a healthy certificate
        (365 * 86400, "valid"),
    ],
)
def test_expiry_state(left: float, state: str) -> None:
    assert expiry_state(1_000_000_000 + left, 1_000_000_000) == state
