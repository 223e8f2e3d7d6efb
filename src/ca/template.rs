//! Certificate templates: what goes into a CA certificate and into an X.509-SVID, and the
//! facts the authority reads back out of a CA certificate.
//!
//! Leaf profile (SPIFFE X509-SVID standard, as SPIRE fills it in): one URI SAN (the SPIFFE
//! ID), any DNS SANs, critical key usage digitalSignature + keyEncipherment + keyAgreement,
//! extended key usage serverAuth + clientAuth, critical basic constraints with `cA` false
//! (an empty SEQUENCE, `30 00`: DER omits a DEFAULT value, and strict parsers such as
//! Python's `cryptography` reject `cA FALSE` spelled out), subject and authority key
//! identifiers. CA profile: `cA=true` with no path length limit, critical key usage
//! keyCertSign + cRLSign, a subject key identifier, and the URI SAN `spiffe://<trust domain>`.
//! No name constraints: rustls-webpki rejects URI ones.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keycard_workload_api::{SpiffeId, TrustDomain};
use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CaError;

/// The X.520 serialNumber attribute type (2.5.4.5), put in CA subjects so that two CAs
/// with the same common name never have the same subject.
const DN_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];

/// The BasicConstraints extension (RFC 5280 section 4.2.1.9).
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];

/// The SubjectKeyIdentifier extension (RFC 5280 section 4.2.1.2).
const OID_SUBJECT_KEY_ID: &[u64] = &[2, 5, 29, 14];

/// The DER of BasicConstraints for a leaf: an empty SEQUENCE. `cA` is BOOLEAN DEFAULT FALSE,
/// so DER leaves it out; `30 03 01 01 00` (what rcgen's `IsCa::ExplicitNoCa` writes) is not DER.
pub(crate) const LEAF_BASIC_CONSTRAINTS: [u8; 2] = [0x30, 0x00];

/// Organization name in SVID subjects.
pub const SVID_ORGANIZATION: &str = "keycard";

/// A random 16-byte (128-bit) certificate serial number. The top bit is cleared so the DER
/// INTEGER is positive without a padding byte, and the next bit is set so it never shrinks
/// below 16 bytes: 126 random bits, well above the 64 bits RFC 5280 practice asks for.
pub fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x40;
    serial
}

/// Parameters of a CA certificate for `trust_domain`, valid from `not_before` to
/// `not_after`. `with_aki` adds an authority key identifier (for intermediates).
pub(crate) fn ca_params(
    trust_domain: &TrustDomain,
    common_name: &str,
    validity: (OffsetDateTime, OffsetDateTime),
    with_aki: bool,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    let unique = PrintableString::try_from(hex::encode(random_serial()))
        .map_err(|e| CaError::Signing(e.to_string()))?;
    dn.push(DnType::CustomDnType(DN_SERIAL_NUMBER.to_vec()), DnValue::PrintableString(unique));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(ia5(trust_domain.id().as_str())?)];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.use_authority_key_identifier_extension = with_aki;
    (params.not_before, params.not_after) = validity;
    Ok(params)
}

/// Parameters of an X.509-SVID for `id` with `dns_names`, valid over `validity`, for the
/// public key `subject_key` (its key identifier goes into the certificate).
pub(crate) fn svid_params(
    id: &SpiffeId,
    dns_names: &[String],
    validity: (OffsetDateTime, OffsetDateTime),
    serial: &[u8],
    subject_key: &impl PublicKeyData,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, SVID_ORGANIZATION);
    params.distinguished_name = dn;
    let mut sans = vec![SanType::URI(ia5(id.as_str())?)];
    for name in dns_names {
        sans.push(SanType::DnsName(dns_name(name)?));
    }
    params.subject_alt_names = sans;
    // `IsCa::NoCa` writes neither basic constraints nor the SKI: both are added by hand, so
    // that `cA` false is encoded as DER wants it (see LEAF_BASIC_CONSTRAINTS).
    params.is_ca = IsCa::NoCa;
    params.custom_extensions = leaf_extensions(&params, subject_key)?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    (params.not_before, params.not_after) = validity;
    Ok(params)
}

/// The two extensions rcgen leaves out of a `NoCa` certificate: the subject key identifier
/// (derived as rcgen derives it for CAs) and critical basic constraints with `cA` false.
fn leaf_extensions(
    params: &CertificateParams,
    subject_key: &impl PublicKeyData,
) -> Result<Vec<CustomExtension>, CaError> {
    let key_id = params.key_identifier(subject_key);
    let len = u8::try_from(key_id.len())
        .ok()
        .filter(|len| *len < 0x80)
        .ok_or_else(|| CaError::Signing("subject key identifier too long".into()))?;
    let mut ski = vec![0x04, len];
    ski.extend_from_slice(&key_id);
    let mut basic_constraints =
        CustomExtension::from_oid_content(OID_BASIC_CONSTRAINTS, LEAF_BASIC_CONSTRAINTS.to_vec());
    basic_constraints.set_criticality(true);
    Ok(vec![CustomExtension::from_oid_content(OID_SUBJECT_KEY_ID, ski), basic_constraints])
}

fn ia5(s: &str) -> Result<Ia5String, CaError> {
    Ia5String::try_from(s).map_err(|e| CaError::Signing(e.to_string()))
}

/// Checks a DNS SAN: a valid DNS name, optionally with one leading `*.` wildcard label.
pub fn dns_name(name: &str) -> Result<Ia5String, CaError> {
    let bad = || CaError::InvalidDnsName(name.to_string());
    let rest = name.strip_prefix("*.").unwrap_or(name);
    if rest.contains('*') || name.len() > 253 {
        return Err(bad());
    }
    rustls_pki_types::DnsName::try_from(rest).map_err(|_| bad())?;
    // Reject IP-address-looking names: they belong in IP SANs.
    if rest.parse::<std::net::IpAddr>().is_ok() {
        return Err(bad());
    }
    Ia5String::try_from(name).map_err(|_| bad())
}

/// Converts a time to whole seconds (certificates cannot carry fractions), or `None` if it
/// is outside what a certificate can represent.
pub(crate) fn cert_time(t: SystemTime) -> Option<OffsetDateTime> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok()?,
        Err(e) => -i64::try_from(e.duration().as_secs()).ok()?,
    };
    let dt = OffsetDateTime::from_unix_timestamp(secs).ok()?;
    (1..=9999).contains(&dt.year()).then_some(dt)
}

/// Converts a certificate time back to a [`SystemTime`].
pub(crate) fn system_time(t: OffsetDateTime) -> SystemTime {
    let secs = t.unix_timestamp();
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

/// What the authority needs to know about a CA certificate, read from its DER.
#[derive(Debug, Clone)]
pub(crate) struct CaCertInfo {
    pub subject: Vec<u8>,
    pub issuer: Vec<u8>,
    pub spki: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub subject_key_id: Option<Vec<u8>>,
    pub uris: Vec<String>,
}

impl CaCertInfo {
    /// Parses `der` and checks it can act as a CA: `cA=true`, keyCertSign allowed if key
    /// usage is present, and a subject rcgen can reproduce (one attribute per RDN).
    pub fn parse(der: &[u8]) -> Result<Self, CaError> {
        let bad = |m: String| CaError::InvalidCaCertificate(m);
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad("bytes after the certificate".into()));
        }
        let bc = cert.basic_constraints().map_err(|e| bad(e.to_string()))?;
        if !bc.is_some_and(|bc| bc.value.ca) {
            return Err(bad("basic constraints do not say cA=true".into()));
        }
        let ku = cert.key_usage().map_err(|e| bad(e.to_string()))?;
        if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(bad("key usage does not allow keyCertSign".into()));
        }
        if cert.subject().iter().any(|rdn| rdn.iter().count() != 1) {
            return Err(bad("subject has a multi-valued or empty RDN".into()));
        }
        let mut subject_key_id = None;
        let mut uris = Vec::new();
        for ext in cert.extensions() {
            use x509_parser::extensions::{GeneralName, ParsedExtension};
            match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(ski) => subject_key_id = Some(ski.0.to_vec()),
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        if let GeneralName::URI(uri) = name {
                            uris.push(uri.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Self {
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            spki: cert.public_key().raw.to_vec(),
            not_before: system_time(cert.validity().not_before.to_datetime()),
            not_after: system_time(cert.validity().not_after.to_datetime()),
            subject_key_id,
            uris,
        })
    }

    /// Whether subject and issuer are the same name (a root, for our purposes).
    pub fn is_self_issued(&self) -> bool {
        self.subject == self.issuer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_16_positive_bytes_and_differ() {
        let a = random_serial();
        let b = random_serial();
        assert_ne!(a, b);
        for s in [a, b] {
            assert_eq!(s[0] & 0xc0, 0x40);
        }
    }

    #[test]
    fn dns_names_are_checked() {
        for good in ["example.org", "a-b.example.org", "*.example.org", "localhost"] {
            assert!(dns_name(good).is_ok(), "{good}");
        }
        for bad in
            ["", "a..b", "*.*.example.org", "a*.example.org", "ex ample", "10.0.0.1", "é.org"]
        {
            assert!(matches!(dns_name(bad), Err(CaError::InvalidDnsName(_))), "{bad:?}");
        }
    }

    #[test]
    fn cert_times_are_whole_seconds_and_round_trip() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_750);
        let ct = cert_time(t).unwrap();
        assert_eq!(system_time(ct), UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert!(cert_time(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4)).is_none());
    }
}
