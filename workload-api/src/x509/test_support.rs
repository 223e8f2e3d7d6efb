//! Test helpers: a tiny certificate factory on rcgen that builds SPIFFE-shaped CAs and
//! leaves, which each test then breaks in exactly one way.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SignatureAlgorithm, date_time_ymd,
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

/// Parameters of a leaf with `id`, shaped like SPIRE's SVID template.
pub(crate) fn leaf_params(id: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "workload");
    p.subject_alt_names = vec![uri(id)];
    p.is_ca = IsCa::ExplicitNoCa;
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
    let cert = params.self_signed(&key).unwrap().der().clone();
    Ca { cert, issuer: Issuer::new(params, key) }
}

/// A CA signed by `parent`, with a P-256 key.
pub(crate) fn intermediate(params: CertificateParams, parent: &Ca) -> Ca {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &parent.issuer).unwrap().der().clone();
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
    let cert = params.signed_by(&key, &parent.issuer).unwrap().der().clone();
    Leaf { cert, key: PrivatePkcs8KeyDer::from(key.serialize_der()) }
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
