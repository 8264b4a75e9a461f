"""The instance identity verifier on its own (no server): documents signed for real by
test keys, one check per refusal — signature, per-region certificate, account, region
allow-list, malformed claims. The same checks through the running control plane are in
test_identity.py; these are the fast ones the mutation check (scripts/mutants) runs."""

from __future__ import annotations

import pytest

from idra.controlplane.identity import IdentityRefused, TrustedCert, Verifier
from idra.lab.pki import LAB_ACCOUNT, IdentitySigner

FRANKFURT, IRELAND = "eu-central-1", "eu-west-1"


@pytest.fixture(scope="module")
def signers() -> dict[str, IdentitySigner]:
    return {region: IdentitySigner() for region in (FRANKFURT, IRELAND, "bundle")}


def _verifier(signers, *, regions=(), bundle: bool = False) -> Verifier:
    """Per-region certificates for Frankfurt and Ireland (and the bundle if asked)."""
    certs = [TrustedCert(signers[r].cert.public_key(), r) for r in (FRANKFURT, IRELAND)]
    if bundle:
        certs.append(TrustedCert(signers["bundle"].cert.public_key(), None))
    return Verifier(certs, frozenset({LAB_ACCOUNT}), frozenset(regions))


def _signed(signer: IdentitySigner, **claims) -> tuple[str, str]:
    document = IdentitySigner.document(**claims)
    return document, signer.sign(document)


def test_a_document_signed_for_its_region_verifies(signers) -> None:
    identity = _verifier(signers).verify(*_signed(signers[IRELAND], region=IRELAND))
    assert (identity.region, identity.account_id) == (IRELAND, LAB_ACCOUNT)


def test_a_region_certificate_vouches_for_its_region_only(signers) -> None:
    """Ireland's key cannot sign a Frankfurt document; a bundle certificate signs any."""
    with pytest.raises(IdentityRefused, match="signature"):
        _verifier(signers).verify(*_signed(signers[IRELAND], region=FRANKFURT))
    bundled = _verifier(signers, bundle=True)
    assert bundled.verify(*_signed(signers["bundle"], region=FRANKFURT)).region == FRANKFURT


def test_a_region_outside_the_allow_list_is_refused(signers) -> None:
    only_frankfurt = _verifier(signers, regions=[FRANKFURT])
    assert only_frankfurt.verify(*_signed(signers[FRANKFURT], region=FRANKFURT))
    with pytest.raises(IdentityRefused, match="region not allowed"):
        only_frankfurt.verify(*_signed(signers[IRELAND], region=IRELAND))


def test_another_account_is_refused(signers) -> None:
    with pytest.raises(IdentityRefused, match="account"):
        _verifier(signers).verify(*_signed(signers[FRANKFURT], account="123456789012"))


@pytest.mark.parametrize("tamper", ["other key", "altered", "bad instance id"])
def test_forged_documents_are_refused(signers, tamper: str) -> None:
    document, signature = _signed(signers[FRANKFURT])
    if tamper == "other key":
        signature = IdentitySigner().sign(document)
    elif tamper == "altered":
        document = document.replace('"c7gn.large"', '"c7gn.xlarge"')
    else:
        document, signature = _signed(signers[FRANKFURT], instance_id="i-../../x")
    with pytest.raises(IdentityRefused):
        _verifier(signers).verify(document, signature)
