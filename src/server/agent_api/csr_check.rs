//! CSR checks of the agent API, on top of [`verify_csr`]: a CSR contributes only its public
//! key, so one that asks for more than that (a CA certificate, an ID that is not the
//! entry's, several URI SANs, an ID in another trust domain, or a pile of extensions) is
//! refused rather than silently trimmed: the caller has a bug or bad intentions, and
//! either way it should hear about it.

use keycard_workload_api::{SpiffeId, TrustDomain};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::error::AgentApiError;
use crate::ca::{VerifiedCsr, verify_csr};

/// Most extensions a CSR may request.
pub const MAX_CSR_EXTENSIONS: usize = 32;

/// Verifies `der` (size at most `max_len`) and checks what it requests. With
/// `expected = Some(id)`, a URI SAN, if any, must be exactly `id`; with `None` (agent
/// SVIDs, whose ID the agent may not know yet) URI SANs are ignored beyond their count and
/// trust domain.
pub fn check_csr(
    der: &[u8],
    max_len: usize,
    trust_domain: &TrustDomain,
    expected: Option<&SpiffeId>,
) -> Result<VerifiedCsr, AgentApiError> {
    let verified = verify_csr(der, max_len).map_err(AgentApiError::Csr)?;
    // verify_csr parsed it already; a second parse cannot fail differently.
    let (_, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| AgentApiError::BadRequest(format!("CSR: {e}")))?;
    let mut extensions = 0usize;
    let mut uris: Vec<String> = Vec::new();
    for attr in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attr.parsed_attribute() else {
            continue;
        };
        extensions += request.extensions.len();
        for ext in &request.extensions {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(AgentApiError::CsrAsksForCa);
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        if let GeneralName::URI(uri) = name {
                            uris.push((*uri).to_owned());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if extensions > MAX_CSR_EXTENSIONS {
        return Err(AgentApiError::CsrTooManyExtensions(extensions));
    }
    if uris.len() > 1 {
        return Err(AgentApiError::CsrManyUriSans(uris.len()));
    }
    if let Some(uri) = uris.first() {
        let in_domain = SpiffeId::parse(uri).is_ok_and(|id| id.is_member_of(trust_domain));
        if !in_domain {
            return Err(AgentApiError::CsrForeignTrustDomain(uri.clone()));
        }
        if let Some(entry) = expected
            && entry.as_str() != uri
        {
            return Err(AgentApiError::CsrOtherId { asked: uri.clone(), entry: entry.to_string() });
        }
    }
    Ok(verified)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ca::DEFAULT_MAX_CSR_LEN;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn csr(edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        edit(&mut params);
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    /// A requested basicConstraints extension with cA=true (rcgen refuses `is_ca` in CSRs).
    pub(crate) fn ca_true() -> rcgen::CustomExtension {
        rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 19],
            vec![0x30, 0x03, 0x01, 0x01, 0xff],
        )
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn check(der: &[u8]) -> Result<VerifiedCsr, AgentApiError> {
        let web = SpiffeId::parse("spiffe://example.org/web").unwrap();
        check_csr(der, DEFAULT_MAX_CSR_LEN, &td(), Some(&web))
    }

    #[test]
    fn a_plain_csr_or_one_naming_the_entry_passes() {
        check(&csr(|_| {})).unwrap();
        check(&csr(|p| p.subject_alt_names = vec![uri("spiffe://example.org/web")])).unwrap();
        // DNS SANs are ignored: the entry decides them.
        check(&csr(|p| p.subject_alt_names = vec![SanType::DnsName("x".try_into().unwrap())]))
            .unwrap();
    }

    #[test]
    fn each_overreach_has_its_error() {
        let ca = csr(|p| p.custom_extensions = vec![ca_true()]);
        assert!(matches!(check(&ca), Err(AgentApiError::CsrAsksForCa)));
        let other = csr(|p| p.subject_alt_names = vec![uri("spiffe://example.org/db")]);
        assert!(matches!(check(&other), Err(AgentApiError::CsrOtherId { .. })));
        let two = csr(|p| {
            p.subject_alt_names =
                vec![uri("spiffe://example.org/web"), uri("spiffe://example.org/db")]
        });
        assert!(matches!(check(&two), Err(AgentApiError::CsrManyUriSans(2))));
        let foreign = csr(|p| p.subject_alt_names = vec![uri("spiffe://example.com/web")]);
        assert!(matches!(check(&foreign), Err(AgentApiError::CsrForeignTrustDomain(_))));
        let many = csr(|p| {
            p.custom_extensions = (0..40u64)
                .map(|i| {
                    rcgen::CustomExtension::from_oid_content(
                        &[1, 3, 6, 1, 4, 1, 99999, i],
                        vec![5, 0],
                    )
                })
                .collect()
        });
        assert!(matches!(check(&many), Err(AgentApiError::CsrTooManyExtensions(40))));
    }

    #[test]
    fn agent_csrs_may_name_any_id_of_the_trust_domain() {
        let any = csr(|p| p.subject_alt_names = vec![uri("spiffe://example.org/anything")]);
        check_csr(&any, DEFAULT_MAX_CSR_LEN, &td(), None).unwrap();
    }
}
