//! Building blocks for the development PKI: certificate templates that follow the SPIFFE
//! X509-SVID rules, and the few hand-written DER pieces rcgen cannot emit itself (leaf
//! BasicConstraints as DER wants it, a non-critical key usage, a subject key identifier on a
//! certificate rcgen treats as "no CA", a leaf whose signature bytes are damaged). Keys come
//! from [`crate::keys`], so that the same generator always writes the same files.

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, PublicKeyData, SanType, date_time_ymd,
};
use time::OffsetDateTime;

use crate::keys::DevKey;

/// OID of the X.509 KeyUsage extension (RFC 5280 section 4.2.1.3).
const OID_KEY_USAGE: &[u64] = &[2, 5, 29, 15];
/// OID of the X.509 SubjectKeyIdentifier extension (RFC 5280 section 4.2.1.2).
const OID_SUBJECT_KEY_ID: &[u64] = &[2, 5, 29, 14];
/// OID of the X.509 BasicConstraints extension (RFC 5280 section 4.2.1.9).
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];

/// BasicConstraints of a non-CA in DER: an empty SEQUENCE, since `cA` is BOOLEAN DEFAULT
/// FALSE and DER omits a default value.
pub const NOT_CA: [u8; 2] = [0x30, 0x00];
/// BasicConstraints with `cA FALSE` spelled out (what rcgen's `IsCa::ExplicitNoCa` writes):
/// BER, not DER. Only the bad vector `leaf-ca-false-explicit` carries it.
pub const NOT_CA_EXPLICIT_FALSE: [u8; 5] = [0x30, 0x03, 0x01, 0x01, 0x00];

/// Organisation written in every subject, so that nobody mistakes this material for real.
pub const ORGANISATION: &str = "keycard development PKI (public keys, never for production)";

/// Start of the validity of all good material: a fixed date in the past, so that the files
/// are valid as soon as they are written and for 20 years after.
pub fn valid_from() -> OffsetDateTime {
    date_time_ymd(2025, 1, 1)
}

/// End of the validity of all good material: 20 years after [`valid_from`].
pub fn valid_until() -> OffsetDateTime {
    date_time_ymd(2045, 1, 1)
}

/// A certificate together with the key it certifies and an issuer that signs with that key.
pub struct Authority {
    /// The CA certificate itself.
    pub cert: Certificate,
    /// The CA's private key, kept to write it out as PKCS#8.
    pub key_pem: String,
    /// Signs children of this CA (its subject, key identifier and key).
    pub issuer: Issuer<'static, DevKey>,
}

/// A leaf certificate and its private key.
pub struct Leaf {
    /// The leaf certificate.
    pub cert: Certificate,
    /// The leaf's private key in PKCS#8 PEM.
    pub key_pem: String,
}

/// A subject name with the development organisation and the given common name.
pub fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANISATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A URI subject alternative name.
pub fn uri_san(uri: &str) -> Result<SanType> {
    Ok(SanType::URI(uri.try_into().with_context(|| format!("URI SAN {uri:?}"))?))
}

/// A DNS subject alternative name.
pub fn dns_san(name: &str) -> Result<SanType> {
    Ok(SanType::DnsName(name.try_into().with_context(|| format!("DNS SAN {name:?}"))?))
}

/// Parameters of a SPIFFE signing certificate (root or intermediate): `cA=true`, critical
/// key usage keyCertSign + cRLSign, a subject key identifier (rcgen writes it for CAs), an
/// authority key identifier when `signed` and one URI SAN naming the trust domain.
pub fn ca_params(
    common_name: &str,
    uri: &str,
    path_len: Option<u8>,
    signed: bool,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name);
    params.not_before = valid_from();
    params.not_after = valid_until();
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![uri_san(uri)?];
    params.use_authority_key_identifier_extension = signed;
    Ok(params)
}

/// A critical BasicConstraints extension with the given DER content.
pub fn basic_constraints_extension(content: &[u8]) -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(OID_BASIC_CONSTRAINTS, content.to_vec());
    ext.set_criticality(true);
    ext
}

/// Marks `params` as a non-CA the DER way: `IsCa::NoCa` (so rcgen writes no BasicConstraints)
/// and a critical BasicConstraints extension holding an empty SEQUENCE. [`sign`] adds the
/// subject key identifier rcgen then leaves out.
pub fn set_not_ca(params: &mut CertificateParams) {
    remove_basic_constraints(params);
    params.is_ca = IsCa::NoCa;
    params.custom_extensions.push(basic_constraints_extension(&NOT_CA));
}

/// Removes a hand-written BasicConstraints extension from `params` (rcgen's own, from
/// `is_ca`, is not affected).
pub fn remove_basic_constraints(params: &mut CertificateParams) {
    params
        .custom_extensions
        .retain(|ext| ext.oid_components().ne(OID_BASIC_CONSTRAINTS.iter().copied()));
}

/// Parameters of a good X509-SVID leaf: critical BasicConstraints with `cA` false (an empty
/// SEQUENCE), critical key usage digitalSignature, EKU serverAuth + clientAuth, one URI SAN,
/// subject and authority key identifiers.
pub fn leaf_params(common_name: &str, uri: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name);
    params.not_before = valid_from();
    params.not_after = valid_until();
    set_not_ca(&mut params);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names = vec![uri_san(uri)?];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A self-signed root CA whose key is derived from `label`.
pub fn root(params: CertificateParams, label: &str) -> Result<Authority> {
    let key = DevKey::derive(label)?;
    let params = with_subject_key_id(params, &key)?;
    let cert = params.self_signed(&key).context("self-signing a root")?;
    let key_pem = key.pkcs8_pem()?;
    Ok(Authority { cert, key_pem, issuer: Issuer::new(params, key) })
}

/// A CA signed by `parent` (an intermediate, or a "CA" that breaks a signing-cert rule), its
/// key derived from `label`.
pub fn sub_ca(params: CertificateParams, parent: &Authority, label: &str) -> Result<Authority> {
    let key = DevKey::derive(label)?;
    let params = with_subject_key_id(params, &key)?;
    let cert = params.signed_by(&key, &parent.issuer).context("signing an intermediate")?;
    let key_pem = key.pkcs8_pem()?;
    Ok(Authority { cert, key_pem, issuer: Issuer::new(params, key) })
}

/// A leaf signed by `parent`, its key derived from `label`.
pub fn leaf(params: &CertificateParams, parent: &Authority, label: &str) -> Result<Leaf> {
    leaf_with_key(params, &DevKey::derive(label)?, parent)
}

/// A leaf for `key` signed by `parent`.
pub fn leaf_with_key(params: &CertificateParams, key: &DevKey, parent: &Authority) -> Result<Leaf> {
    let params = with_subject_key_id(params.clone(), key)?;
    let cert = params.signed_by(key, &parent.issuer).context("signing a leaf")?;
    Ok(Leaf { cert, key_pem: key.pkcs8_pem()? })
}

/// `params` with a subject key identifier for `key` when rcgen would write none (it writes
/// one only for `IsCa::Ca` and `IsCa::ExplicitNoCa`).
fn with_subject_key_id(
    mut params: CertificateParams,
    key: &impl PublicKeyData,
) -> Result<CertificateParams> {
    if params.is_ca == IsCa::NoCa {
        let ext = subject_key_id_extension(&params, key)?;
        params.custom_extensions.push(ext);
    }
    Ok(params)
}

/// A KeyUsage extension written by hand, so that its criticality can be chosen.
/// `first_octet` holds bits 0 (digitalSignature, 0x80) to 7 (decipherOnly).
pub fn key_usage_extension(first_octet: u8, critical: bool) -> CustomExtension {
    // BIT STRING: tag 03, length 02, number of unused trailing bits, the bits.
    let unused = first_octet.trailing_zeros().min(7) as u8;
    let mut ext =
        CustomExtension::from_oid_content(OID_KEY_USAGE, vec![0x03, 0x02, unused, first_octet]);
    ext.set_criticality(critical);
    ext
}

/// A SubjectKeyIdentifier extension for `key`, for certificates that rcgen would write
/// without one (it adds it only together with its own BasicConstraints).
pub fn subject_key_id_extension(
    params: &CertificateParams,
    key: &impl PublicKeyData,
) -> Result<CustomExtension> {
    let id = params.key_identifier(key);
    let len = u8::try_from(id.len()).context("key identifier too long")?;
    let mut content = vec![0x04, len];
    content.extend_from_slice(&id);
    Ok(CustomExtension::from_oid_content(OID_SUBJECT_KEY_ID, content))
}

/// The DER of `der` with the last byte of its signature flipped. An ECDSA signature ends with
/// the last byte of the INTEGER `s`, so the encoding stays well-formed and only the
/// signature check fails.
pub fn flip_signature(der: &[u8]) -> Result<Vec<u8>> {
    let mut out = der.to_vec();
    match out.last_mut() {
        Some(last) => *last ^= 0x01,
        None => bail!("empty certificate DER"),
    }
    Ok(out)
}

/// PEM armour for a certificate DER.
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// A chain file: each certificate DER in PEM armour, leaf first.
pub fn chain_pem(ders: &[&[u8]]) -> String {
    ders.iter().map(|der| cert_pem(der)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_usage_bits_are_encoded_with_unused_bit_count() {
        let ds = key_usage_extension(0x80, false);
        assert_eq!(ds.content(), &[0x03, 0x02, 0x07, 0x80]);
        assert!(!ds.criticality());
        let ds_ka = key_usage_extension(0x88, true);
        assert_eq!(ds_ka.content(), &[0x03, 0x02, 0x03, 0x88]);
        assert!(ds_ka.criticality());
    }

    #[test]
    fn flipping_changes_only_the_last_byte() {
        assert_eq!(flip_signature(&[1, 2, 3]).unwrap(), vec![1, 2, 2]);
        assert!(flip_signature(&[]).is_err());
    }
}
