//! Test helpers: a tiny certificate factory on rcgen that builds SPIFFE-shaped CAs and
//! leaves, which each test then breaks in exactly one way. Leaves carry BasicConstraints as
//! DER wants it (a critical empty SEQUENCE, `30 00`), never rcgen's `IsCa::ExplicitNoCa`
//! encoding (`cA FALSE` written out), which strict parsers such as Python's `cryptography`
//! reject; every certificate made here is checked with a strict DER decoder.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SignatureAlgorithm, date_time_ymd,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};

use super::bundle::{X509Bundle, X509BundleSet};
use crate::spiffe_id::TrustDomain;

/// The verification time of every test: 2030-01-01T00:00:00Z.
pub(crate) fn now() -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_893_456_000))
}

/// A certificate authority: its certificate and what signs with it.
pub(crate) struct Ca {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

/// A signed leaf: its certificate and PKCS#8 key.
pub(crate) struct Leaf {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivatePkcs8KeyDer<'static>,
}

/// Parameters of a CA for `td` (URI SAN `spiffe://td`, certSign+crlSign, valid 2020-2040).
pub(crate) fn ca_params(td: &str, name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.subject_alt_names = vec![uri(&format!("spiffe://{td}"))];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    p
}

/// The BasicConstraints extension OID (2.5.29.19).
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
/// The SubjectKeyIdentifier extension OID (2.5.29.14).
const OID_SUBJECT_KEY_ID: &[u64] = &[2, 5, 29, 14];

/// A critical BasicConstraints extension with DER content `content`.
pub(crate) fn basic_constraints(content: &[u8]) -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(OID_BASIC_CONSTRAINTS, content.to_vec());
    ext.set_criticality(true);
    ext
}

/// Makes `p` a non-CA: `IsCa::NoCa` (rcgen then writes no BasicConstraints and no SKI) plus a
/// critical BasicConstraints holding an empty SEQUENCE; the signing helpers add the SKI.
pub(crate) fn not_ca(p: &mut CertificateParams) {
    drop_basic_constraints(p);
    p.is_ca = IsCa::NoCa;
    p.custom_extensions.push(basic_constraints(&[0x30, 0x00]));
}

/// Removes the hand-written BasicConstraints extension, if any.
pub(crate) fn drop_basic_constraints(p: &mut CertificateParams) {
    p.custom_extensions.retain(|e| e.oid_components().ne(OID_BASIC_CONSTRAINTS.iter().copied()));
}

/// `p` with a SubjectKeyIdentifier for `key` when rcgen would write none (`IsCa::NoCa`).
fn with_ski(mut p: CertificateParams, key: &KeyPair) -> CertificateParams {
    if p.is_ca == IsCa::NoCa {
        let id = p.key_identifier(key);
        let mut content = vec![0x04, u8::try_from(id.len()).unwrap()];
        content.extend_from_slice(&id);
        p.custom_extensions.push(CustomExtension::from_oid_content(OID_SUBJECT_KEY_ID, content));
    }
    p
}

/// Parameters of a leaf with `id`, shaped like SPIRE's SVID template.
pub(crate) fn leaf_params(id: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "workload");
    p.subject_alt_names = vec![uri(id)];
    not_ca(&mut p);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    p.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = date_time_ymd(2029, 12, 31);
    p.not_after = date_time_ymd(2030, 1, 2);
    p
}

/// A URI SAN.
pub(crate) fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// A self-signed root CA with a P-256 key.
pub(crate) fn root(params: CertificateParams) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = with_ski(params, &key);
    let cert = params.self_signed(&key).unwrap().der().clone();
    strict_der(&cert);
    Ca { cert, issuer: Issuer::new(params, key) }
}

/// A CA signed by `parent`, with a P-256 key.
pub(crate) fn intermediate(params: CertificateParams, parent: &Ca) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = with_ski(params, &key);
    let cert = params.signed_by(&key, &parent.issuer).unwrap().der().clone();
    strict_der(&cert);
    Ca { cert, issuer: Issuer::new(params, key) }
}

/// A leaf signed by `parent`, with a P-256 key.
pub(crate) fn leaf(params: CertificateParams, parent: &Ca) -> Leaf {
    leaf_with_alg(params, parent, &rcgen::PKCS_ECDSA_P256_SHA256)
}

/// A leaf signed by `parent`, with a key of algorithm `alg`.
pub(crate) fn leaf_with_alg(
    params: CertificateParams,
    parent: &Ca,
    alg: &'static SignatureAlgorithm,
) -> Leaf {
    let key = KeyPair::generate_for(alg).unwrap();
    let cert = with_ski(params, &key).signed_by(&key, &parent.issuer).unwrap().der().clone();
    strict_der(&cert);
    Leaf { cert, key: PrivatePkcs8KeyDer::from(key.serialize_der()) }
}

/// Fails the test unless `der` is strict DER (see `keycard_certs_dev::strict_der`): every
/// certificate the helpers make goes through here.
fn strict_der(der: &[u8]) {
    if let Err(e) = keycard_certs_dev::strict_der::check(der) {
        panic!("a test helper made a certificate that is not strict DER: {e}");
    }
}

/// A bundle set holding one bundle per `(trust domain, CA)` pair.
pub(crate) fn bundles(cas: &[(&str, &Ca)]) -> X509BundleSet {
    let mut set = X509BundleSet::new();
    for (td, ca) in cas {
        let mut bundle = X509Bundle::new(TrustDomain::new(td).unwrap());
        bundle.add_authority(ca.cert.clone()).unwrap();
        set.insert(bundle);
    }
    set
}

/// A usual world: trust domain `example.org` with root -> intermediate -> leaf.
pub(crate) struct World {
    pub(crate) root: Ca,
    pub(crate) intermediate: Ca,
    pub(crate) leaf: Leaf,
    pub(crate) bundles: X509BundleSet,
}

/// Builds [`World`] with a leaf made from `leaf` params.
pub(crate) fn world_with(leaf_p: CertificateParams) -> World {
    let root = root(ca_params("example.org", "example.org root"));
    let intermediate = intermediate(ca_params("example.org", "example.org int"), &root);
    let leaf = leaf(leaf_p, &intermediate);
    let bundles = bundles(&[("example.org", &root)]);
    World { root, intermediate, leaf, bundles }
}

/// Builds [`World`] with a standard leaf `spiffe://example.org/web`.
pub(crate) fn world() -> World {
    world_with(leaf_params("spiffe://example.org/web"))
}

impl World {
    /// The chain leaf, intermediate.
    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.cert.clone(), self.intermediate.cert.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_certificates_are_strict_der_with_an_empty_basic_constraints() {
        // world() runs every certificate through strict_der(); check the leaf's bytes too.
        let w = world();
        let r = root(ca_params("example.org", "root"));
        let leaves = [
            w.leaf.cert.clone(),
            leaf_with_alg(leaf_params("spiffe://example.org/x"), &r, &rcgen::PKCS_ED25519).cert,
        ];
        for cert in leaves {
            keycard_certs_dev::strict_der::check(&cert).unwrap();
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
            let bc = parsed.basic_constraints().unwrap().unwrap();
            assert!(bc.critical && !bc.value.ca);
        }
        for ca in [&w.root.cert, &w.intermediate.cert] {
            keycard_certs_dev::strict_der::check(ca).unwrap();
        }
    }
}
