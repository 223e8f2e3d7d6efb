//! The good material: two SPIFFE trust domains (root, intermediate, workload SVID each) and
//! a separate node CA with node certificates for x509pop attestation.

use anyhow::{Context, Result};
use rcgen::{ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};

use crate::output::Output;
use crate::pki::{self, Authority};

/// The trust domains, local first: `example.org` is the one the bad vectors are issued
/// under; `example.com` is the foreign (federated) one.
pub const TRUST_DOMAINS: [&str; 2] = ["example.org", "example.com"];

/// Names of the x509pop node certificates under `nodes/`.
pub const NODE_NAMES: [&str; 2] = ["node1", "node2"];

/// Path of the good workload's SPIFFE ID.
pub const WORKLOAD_PATH: &str = "/workload/web";

/// SPIFFE ID of the good workload in trust domain `td`.
pub fn workload_id(td: &str) -> String {
    format!("spiffe://{td}{WORKLOAD_PATH}")
}

/// The CAs of one trust domain, kept to issue more certificates under them.
pub struct Domain {
    /// Self-signed root.
    pub root: Authority,
    /// Intermediate signed by the root; it signs the leaves.
    pub intermediate: Authority,
}

/// Root and intermediate for `td`, following the SPIFFE signing-certificate rules.
pub fn domain(td: &'static str) -> Result<Domain> {
    let trust_domain_id = format!("spiffe://{td}");
    let root = pki::root(
        pki::ca_params(&format!("{td} root CA"), &trust_domain_id, None, false)?,
        &format!("{td}/root.key.pem"),
    )?;
    let intermediate = pki::sub_ca(
        pki::ca_params(&format!("{td} intermediate CA"), &trust_domain_id, Some(0), true)?,
        &root,
        &format!("{td}/intermediate.key.pem"),
    )?;
    Ok(Domain { root, intermediate })
}

/// Builds both trust domains, queues their files and returns `example.org`'s CAs.
pub fn trust_domains(out: &mut Output) -> Result<Domain> {
    let mut local = None;
    for td in TRUST_DOMAINS {
        let domain = domain(td)?;
        let id = workload_id(td);
        let svid = pki::leaf(
            &pki::leaf_params(&format!("{td} workload web"), &id)?,
            &domain.intermediate,
            &format!("{td}/svid.key.pem"),
        )?;
        let root_pem = pki::cert_pem(domain.root.cert.der());
        let intermediate_pem = pki::cert_pem(domain.intermediate.cert.der());
        out.add(format!("{td}/root.pem"), root_pem.clone());
        out.add(format!("{td}/root.key.pem"), domain.root.key_pem.clone());
        out.add(format!("{td}/intermediate.pem"), intermediate_pem);
        out.add(format!("{td}/intermediate.key.pem"), domain.intermediate.key_pem.clone());
        out.add(format!("{td}/bundle.pem"), root_pem);
        out.add(
            format!("{td}/svid.pem"),
            pki::chain_pem(&[svid.cert.der(), domain.intermediate.cert.der()]),
        );
        out.add(format!("{td}/svid.key.pem"), svid.key_pem);
        if local.is_none() {
            local = Some(domain);
        }
    }
    local.context("no trust domain configured")
}

/// The x509pop node CA and one client certificate per node, named by CN and DNS SAN.
pub fn nodes(out: &mut Output) -> Result<()> {
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name = pki::subject("keycard dev node CA");
    ca_params.not_before = pki::valid_from();
    ca_params.not_after = pki::valid_until();
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = pki::root(ca_params, "nodes/ca.key.pem")?;
    out.add("nodes/ca.pem", pki::cert_pem(ca.cert.der()));
    out.add("nodes/ca.key.pem", ca.key_pem.clone());
    for name in NODE_NAMES {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = pki::subject(name);
        params.subject_alt_names = vec![pki::dns_san(&format!("{name}.example.org"))?];
        params.not_before = pki::valid_from();
        params.not_after = pki::valid_until();
        pki::set_not_ca(&mut params);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let node = pki::leaf(&params, &ca, &format!("nodes/{name}.key.pem"))?;
        out.add(format!("nodes/{name}.pem"), pki::cert_pem(node.cert.der()));
        out.add(format!("nodes/{name}.key.pem"), node.key_pem);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn good_leaf_follows_the_svid_rules() {
        let domain = domain("example.org").unwrap();
        let leaf = pki::leaf(
            &pki::leaf_params("w", &workload_id("example.org")).unwrap(),
            &domain.intermediate,
            "test leaf",
        )
        .unwrap();
        let (_, cert) = parse_x509_certificate(leaf.cert.der()).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca, "leaf must carry critical cA=false");
        let raw_bc = cert
            .extensions()
            .iter()
            .find(|e| e.oid == oid_registry::OID_X509_EXT_BASIC_CONSTRAINTS);
        assert_eq!(raw_bc.unwrap().value, &pki::NOT_CA, "cA false is DER: an empty SEQUENCE");
        crate::strict_der::check(leaf.cert.der()).unwrap();
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::URI("spiffe://example.org/workload/web")]
        );
        let has = |oid| cert.extensions().iter().any(|e| e.oid == oid);
        assert!(has(oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER));
        assert!(has(oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER));
    }

    #[test]
    fn cas_name_the_trust_domain_without_a_path() {
        let domain = domain("example.com").unwrap();
        for ca in [&domain.root, &domain.intermediate] {
            let (_, cert) = parse_x509_certificate(ca.cert.der()).unwrap();
            assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
            let ku = cert.key_usage().unwrap().unwrap();
            assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
            let san = cert.subject_alternative_name().unwrap().unwrap();
            assert_eq!(san.value.general_names, vec![GeneralName::URI("spiffe://example.com")]);
        }
    }
}
