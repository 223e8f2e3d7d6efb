//! The certificate rules of the SPIFFE X509-SVID standard that need neither a bundle nor a
//! clock: parsing, the leaf's SPIFFE ID, the leaf's basic constraints and key usages, and
//! the signing certificates' constraints. Each rule maps to one [`X509SvidError`] variant.

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_cert::der::Decode as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::error::X509SvidError;
use crate::spiffe_id::SpiffeId;

/// Parses one DER certificate; `index` is its position in the chain, for the message.
pub(crate) fn parse_cert(der: &[u8], index: usize) -> Result<X509Certificate<'_>, X509SvidError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => {
            // x509-parser also reads structures DER does not allow (the x509_svid fuzz
            // target found a name whose RDN is a SEQUENCE instead of a SET), which strict
            // decoders such as Python's `cryptography` refuse. The certificate's structure
            // must be DER; extension contents are read leniently as before, so that SVIDs
            // with an explicit `cA FALSE` from older keycard servers still validate.
            x509_cert::Certificate::from_der(der)
                .map_err(|e| X509SvidError::Der { index, reason: format!("not DER: {e}") })?;
            Ok(cert)
        }
        Ok((rest, _)) => Err(X509SvidError::Der {
            index,
            reason: format!("{} bytes of trailing data after the certificate", rest.len()),
        }),
        Err(e) => Err(X509SvidError::Der { index, reason: e.to_string() }),
    }
}

/// Parses every certificate of a chain, leaf first; an empty chain is an error.
pub(crate) fn parse_chain<'a>(
    chain: &'a [CertificateDer<'_>],
) -> Result<Vec<X509Certificate<'a>>, X509SvidError> {
    if chain.is_empty() {
        return Err(X509SvidError::EmptyChain);
    }
    chain.iter().enumerate().map(|(i, der)| parse_cert(der.as_ref(), i)).collect()
}

/// The SPIFFE ID in a certificate's single URI SAN, or `None` when it has no URI SAN.
fn uri_san_id(cert: &X509Certificate<'_>, index: usize) -> Result<Option<SpiffeId>, X509SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| X509SvidError::Der { index, reason: e.to_string() })?;
    // Every URI name counts, also one x509-parser could not read as text (it reports
    // those as `Invalid` with the URI tag, 6): otherwise a leaf with a garbled URI and a
    // good one would pass as having one (found by the x509_svid fuzz target).
    let uris: Vec<Option<&str>> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => Some(Some(*uri)),
                    GeneralName::Invalid(tag, _) if tag.0 == 6 => Some(None),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Ok(None),
        [Some(uri)] => Ok(Some(SpiffeId::parse(uri)?)),
        [None] => Err(X509SvidError::Der { index, reason: "URI SAN is not IA5 text".into() }),
        more => Err(X509SvidError::MultipleUriSans(more.len())),
    }
}

/// The SPIFFE ID of a certificate: its one URI SAN, parsed.
///
/// This reads the ID of any SPIFFE certificate, leaf or signing, so it does not require a
/// non-root path; [`verify_chain`](super::verify_chain) applies the leaf rules.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, X509SvidError> {
    let parsed = parse_cert(cert.as_ref(), 0)?;
    uri_san_id(&parsed, 0)?.ok_or(X509SvidError::NoUriSan)
}

/// [`spiffe_id_of`] and the certificate's serial number (its DER content octets), from one
/// parse: what a server reads of a peer's certificate on every call.
pub fn spiffe_id_and_serial_of(
    cert: &CertificateDer<'_>,
) -> Result<(SpiffeId, Vec<u8>), X509SvidError> {
    let parsed = parse_cert(cert.as_ref(), 0)?;
    let id = uri_san_id(&parsed, 0)?.ok_or(X509SvidError::NoUriSan)?;
    Ok((id, parsed.raw_serial().to_vec()))
}

/// Checks the leaf's SPIFFE ID, basic constraints, key usage and extended key usage, and
/// returns the ID.
pub(crate) fn check_leaf(leaf: &X509Certificate<'_>) -> Result<SpiffeId, X509SvidError> {
    let der_err =
        |e: x509_parser::error::X509Error| X509SvidError::Der { index: 0, reason: e.to_string() };
    check_rule_extensions(leaf)?;
    let id = uri_san_id(leaf, 0)?.ok_or(X509SvidError::NoUriSan)?;
    if id.is_root() {
        return Err(X509SvidError::RootPathId(id.to_string()));
    }

    match leaf.basic_constraints().map_err(der_err)? {
        None => return Err(X509SvidError::MissingBasicConstraints),
        Some(bc) if bc.value.ca => return Err(X509SvidError::LeafIsCa),
        Some(_) => {}
    }

    let ku = leaf.key_usage().map_err(der_err)?.ok_or(X509SvidError::KeyUsageMissing)?;
    if !ku.critical {
        return Err(X509SvidError::KeyUsageNotCritical);
    }
    if !ku.value.digital_signature() {
        return Err(X509SvidError::LeafNoDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(X509SvidError::LeafKeyCertSign);
    }
    if ku.value.crl_sign() {
        return Err(X509SvidError::LeafCrlSign);
    }

    // The EKU extension is optional (SHOULD), but when present it must allow both ends of
    // a TLS connection, because one SVID serves as client and server certificate alike.
    if let Some(eku) = leaf.extended_key_usage().map_err(der_err)? {
        if !eku.value.server_auth {
            return Err(X509SvidError::EkuMissingServerAuth);
        }
        if !eku.value.client_auth {
            return Err(X509SvidError::EkuMissingClientAuth);
        }
    }
    Ok(id)
}

/// Basic constraints as older keycard servers wrote them for leaves: `cA FALSE` spelled
/// out, which DER forbids but which is read on purpose so that their SVIDs still validate.
const EXPLICIT_CA_FALSE: &[u8] = &[0x30, 0x03, 0x01, 0x01, 0x00];

/// Checks that the contents of the leaf extensions the SVID rules read (SAN, basic
/// constraints, key usage, EKU) are DER, so the rules never judge what x509-parser made of
/// a malformed value (the x509_svid fuzz target found a key usage tagged `[APPLICATION 3]`
/// instead of BIT STRING, read as if it were one). The one tolerated exception is
/// [`EXPLICIT_CA_FALSE`].
fn check_rule_extensions(leaf: &X509Certificate<'_>) -> Result<(), X509SvidError> {
    use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
    for ext in leaf.extensions() {
        let value = ext.value;
        let strict = match ext.oid.to_id_string().as_str() {
            "2.5.29.17" => SubjectAltName::from_der(value).map(|_| ()),
            "2.5.29.19" if value == EXPLICIT_CA_FALSE => Ok(()),
            "2.5.29.19" => BasicConstraints::from_der(value).map(|_| ()),
            "2.5.29.15" => KeyUsage::from_der(value).map(|_| ()),
            "2.5.29.37" => ExtendedKeyUsage::from_der(value).map(|_| ()),
            _ => Ok(()),
        };
        strict.map_err(|e| X509SvidError::Der {
            index: 0,
            reason: format!("extension {} is not DER: {e}", ext.oid.to_id_string()),
        })?;
    }
    Ok(())
}

/// Checks a signing (non-leaf) certificate at position `index` of the chain: `cA=true`,
/// the `keyCertSign` key usage, and, if it carries a SPIFFE ID, that the ID has no path.
///
/// Like go-spiffe, this does not require the signing certificate's key usage to be
/// critical, nor that it carries a SPIFFE ID at all (the standard says SHOULD).
pub(crate) fn check_signing(cert: &X509Certificate<'_>, index: usize) -> Result<(), X509SvidError> {
    let der_err =
        |e: x509_parser::error::X509Error| X509SvidError::Der { index, reason: e.to_string() };
    let is_ca = cert.basic_constraints().map_err(der_err)?.is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(X509SvidError::SigningCertNotCa { index });
    }
    let cert_sign = cert.key_usage().map_err(der_err)?.is_some_and(|ku| ku.value.key_cert_sign());
    if !cert_sign {
        return Err(X509SvidError::SigningCertNoKeyCertSign { index });
    }
    if let Some(id) = uri_san_id(cert, index)?
        && !id.is_root()
    {
        return Err(X509SvidError::SigningCertIdHasPath { index, id: id.to_string() });
    }
    Ok(())
}

/// Parses a chain and applies every rule that needs neither a bundle nor a clock; returns
/// the parsed chain and the leaf's SPIFFE ID.
pub(crate) fn check_certificates<'a>(
    chain: &'a [CertificateDer<'_>],
) -> Result<(Vec<X509Certificate<'a>>, SpiffeId), X509SvidError> {
    let parsed = parse_chain(chain)?;
    let id = check_leaf(&parsed[0])?;
    for (index, cert) in parsed.iter().enumerate().skip(1) {
        check_signing(cert, index)?;
    }
    Ok((parsed, id))
}

/// Checks that `now` lies within the certificate's validity period.
pub(crate) fn check_validity(
    cert: &X509Certificate<'_>,
    now: UnixTime,
) -> Result<(), X509SvidError> {
    let now = unix_secs(now);
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if now < not_before {
        return Err(X509SvidError::NotYetValid { not_before, now });
    }
    if now > not_after {
        return Err(X509SvidError::Expired { not_after, now });
    }
    Ok(())
}

/// Seconds since the Unix epoch as a signed number (saturating, for far-future times).
pub(crate) fn unix_secs(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
