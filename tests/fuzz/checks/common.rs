//! What several fuzz checks share: the development PKI of certs-dev (compiled in, so a check
//! reads no file), a fixed clock, a small independent DER reader and writer, and the
//! JWT-audience rule written out from the wire contract's documentation.
//!
//! Nothing here calls into keycard to decide what is right: the checks compare keycard's
//! answers with what these independent pieces (and the strict `x509-cert` decoder, `ring`,
//! `httlib-hpack`) say.

use std::time::{Duration, SystemTime};

use keycard_workload_api::TrustDomain;

/// The trust domain every check works in (certs-dev's local one).
pub const TRUST_DOMAIN: &str = "example.org";

/// The fixed "now" of every check: 2030-01-01T00:00:00Z, inside certs-dev's validity.
pub const NOW_SECS: u64 = 1_893_456_000;

/// certs-dev: the root CA of example.org (its X.509 bundle).
pub const ROOT_PEM: &str = include_str!("../../../certs-dev/example.org/root.pem");
/// certs-dev: the intermediate CA of example.org.
pub const INTERMEDIATE_PEM: &str = include_str!("../../../certs-dev/example.org/intermediate.pem");
/// certs-dev: the intermediate CA's private key (PKCS#8, P-256), which re-signs fuzzed leaves.
pub const INTERMEDIATE_KEY_PEM: &str =
    include_str!("../../../certs-dev/example.org/intermediate.key.pem");
/// certs-dev: the X509-SVID `spiffe://example.org/workload/web`, then the intermediate.
pub const SVID_PEM: &str = include_str!("../../../certs-dev/example.org/svid.pem");
/// certs-dev: that SVID's private key (PKCS#8, P-256); also the JWT authority of the checks.
pub const SVID_KEY_PEM: &str = include_str!("../../../certs-dev/example.org/svid.key.pem");
/// certs-dev: the node CA of x509pop attestation.
pub const NODE_CA_PEM: &str = include_str!("../../../certs-dev/nodes/ca.pem");
/// certs-dev: the node certificate `node1`.
pub const NODE1_PEM: &str = include_str!("../../../certs-dev/nodes/node1.pem");
/// certs-dev: the node certificate `node2`.
pub const NODE2_PEM: &str = include_str!("../../../certs-dev/nodes/node2.pem");
/// certs-dev: node1's private key (PKCS#8, P-256).
pub const NODE1_KEY_PEM: &str = include_str!("../../../certs-dev/nodes/node1.key.pem");

/// The checks' trust domain, parsed.
pub fn trust_domain() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).expect("example.org is a valid trust domain")
}

/// The fixed "now" as a `SystemTime`.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

/// The DER contents of every PEM block of a compiled-in text.
pub fn pem_blocks(text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(text)
        .expect("compiled-in PEM parses")
        .into_iter()
        .map(pem::Pem::into_contents)
        .collect()
}

/// The first PEM block of a compiled-in text.
pub fn pem_first(text: &str) -> Vec<u8> {
    pem_blocks(text).remove(0)
}

/// One DER element at the front of some bytes.
pub struct DerElement<'a> {
    /// Its tag byte.
    pub tag: u8,
    /// The whole element: tag, length and content.
    pub whole: &'a [u8],
    /// The content only.
    pub content: &'a [u8],
}

/// The DER element at the front of `input`. Only definite lengths in their shortest form
/// are read; anything else is `None`.
pub fn der_split(input: &[u8]) -> Option<DerElement<'_>> {
    let (&tag, after_tag) = input.split_first()?;
    let (&first, after_len) = after_tag.split_first()?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || after_len.len() < n || after_len[0] == 0 {
            return None;
        }
        let len = after_len[..n].iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b));
        if len < 0x80 {
            return None;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if input.len() < end {
        return None;
    }
    Some(DerElement { tag, whole: &input[..end], content: &input[header..end] })
}

/// A DER element with this tag around `content`.
pub fn der_wrap(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().iter().copied().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// Most audiences a JWT-SVID request may carry (the wire contract's documented limit).
pub const MAX_AUDIENCES: usize = 32;
/// Longest audience, in bytes (the wire contract's documented limit).
pub const MAX_AUDIENCE_LEN: usize = 256;

/// Whether an audience list follows the documented rule: 1 to 32 audiences, each 1 to
/// 256 bytes long.
pub fn audiences_follow_rule(audiences: &[String]) -> bool {
    (1..=MAX_AUDIENCES).contains(&audiences.len())
        && audiences.iter().all(|a| (1..=MAX_AUDIENCE_LEN).contains(&a.len()))
}

/// Asserts that keycard's audience check agrees with the documented rule, both ways, and
/// that the agent's cache key (sorted, deduplicated) keeps exactly the same set; returns
/// whether the audiences were accepted.
pub fn assert_audience_rule(audiences: &[String]) -> bool {
    let problem = keycard::wire::audience_problem(audiences);
    assert_eq!(
        problem.is_none(),
        audiences_follow_rule(audiences),
        "audience check disagrees with the rule for {audiences:?}: {problem:?}"
    );
    let normalized = keycard::agent::jwt::normalize_audiences(audiences);
    assert!(normalized.windows(2).all(|w| w[0] < w[1]), "not sorted and unique: {normalized:?}");
    assert!(normalized.iter().all(|a| audiences.contains(a)));
    assert!(audiences.iter().all(|a| normalized.contains(a)));
    assert_eq!(keycard::agent::jwt::normalize_audiences(&normalized), normalized);
    problem.is_none()
}

/// An object identifier from its dotted text (the checks' own constants).
pub fn oid(dotted: &str) -> x509_cert::spki::ObjectIdentifier {
    x509_cert::spki::ObjectIdentifier::new_unwrap(dotted)
}

/// A CSR as the strict decoder reads it, and the exact bytes its signature covers.
pub struct StrictCsr<'a> {
    /// The decoded request.
    pub req: x509_cert::request::CertReq,
    /// The CertificationRequestInfo element as received.
    pub signed: &'a [u8],
}

/// Decodes a CSR with the strict DER decoder; `None` when it is not strict DER.
pub fn strict_csr(der: &[u8]) -> Option<StrictCsr<'_>> {
    use x509_cert::der::Decode as _;
    let req = x509_cert::request::CertReq::from_der(der).ok()?;
    let signed = der_split(der_split(der)?.content)?.whole;
    Some(StrictCsr { req, signed })
}

/// The extensions a strict CSR requests (PKCS#9 extensionRequest attributes).
pub fn requested_extensions(req: &x509_cert::request::CertReq) -> Vec<x509_cert::ext::Extension> {
    let extension_request = oid("1.2.840.113549.1.9.14");
    req.info
        .attributes
        .iter()
        .filter(|a| a.oid == extension_request)
        .flat_map(|a| a.values.iter())
        .flat_map(|v| {
            v.decode_as::<Vec<x509_cert::ext::Extension>>()
                .expect("an accepted CSR's extension request decodes strictly")
        })
        .collect()
}

/// The URI names of every SubjectAltName extension in `extensions`.
pub fn uri_sans(extensions: &[x509_cert::ext::Extension]) -> Vec<String> {
    use x509_cert::der::Decode as _;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    extensions
        .iter()
        .filter(|e| e.extn_id == oid("2.5.29.17"))
        .flat_map(|e| {
            SubjectAltName::from_der(e.extn_value.as_bytes())
                .expect("an accepted SubjectAltName decodes strictly")
                .0
        })
        .filter_map(|name| match name {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

/// Significant bits of a DER RSAPublicKey's modulus, read by [`der_split`].
fn rsa_bits(rsa_public_key: &[u8]) -> usize {
    let seq = der_split(rsa_public_key).expect("RSAPublicKey is a SEQUENCE").content;
    let modulus = der_split(seq).expect("RSAPublicKey has a modulus");
    assert_eq!(modulus.tag, 0x02, "modulus is an INTEGER");
    let modulus = modulus.content;
    let significant: Vec<u8> = modulus.iter().copied().skip_while(|&b| b == 0).collect();
    significant.first().map_or(0, |&top| significant.len() * 8 - top.leading_zeros() as usize)
}

/// Asserts what keycard's acceptance of a CSR must mean, checked without keycard: strict
/// DER, under the size cap, `public_key` is exactly the CSR's SubjectPublicKeyInfo, the key
/// is of an allowed type and size, and `ring` verifies the self-signature.
pub fn assert_csr_sound(der: &[u8], max_len: usize, public_key: &[u8]) {
    use ring::signature as sig;
    use x509_cert::der::Encode as _;
    assert!(der.len() <= max_len, "accepted a CSR of {} bytes over the cap", der.len());
    let csr = strict_csr(der).expect("accepted a CSR that is not strict DER");
    let spki = &csr.req.info.public_key;
    assert_eq!(public_key, spki.to_der().expect("re-encode SPKI"), "kept another key");
    let key = spki.subject_public_key.as_bytes().expect("key BIT STRING has no unused bits");
    let curve: Option<x509_cert::spki::ObjectIdentifier> =
        spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as().ok());
    let sig_alg = csr.req.algorithm.oid.to_string();
    let ec = |c: &str| curve == Some(oid(c));
    let alg: &dyn sig::VerificationAlgorithm = match spki.algorithm.oid.to_string().as_str() {
        "1.2.840.10045.2.1" => {
            let (p256, p384) = (ec("1.2.840.10045.3.1.7"), ec("1.3.132.0.34"));
            assert!(p256 || p384, "accepted an EC key on another curve");
            assert_eq!(key.len(), if p256 { 65 } else { 97 }, "EC point size");
            assert_eq!(key[0], 4, "EC point not uncompressed");
            match (sig_alg.as_str(), p256) {
                ("1.2.840.10045.4.3.2", true) => &sig::ECDSA_P256_SHA256_ASN1,
                ("1.2.840.10045.4.3.3", true) => &sig::ECDSA_P256_SHA384_ASN1,
                ("1.2.840.10045.4.3.2", false) => &sig::ECDSA_P384_SHA256_ASN1,
                ("1.2.840.10045.4.3.3", false) => &sig::ECDSA_P384_SHA384_ASN1,
                (other, _) => panic!("accepted EC CSR signed with {other}"),
            }
        }
        "1.3.101.112" => {
            assert!(spki.algorithm.parameters.is_none() && key.len() == 32, "Ed25519 key");
            assert_eq!(sig_alg, "1.3.101.112", "Ed25519 key, other signature");
            &sig::ED25519
        }
        "1.2.840.113549.1.1.1" => {
            assert!(rsa_bits(key) >= 2048, "accepted an RSA key under 2048 bits");
            match sig_alg.as_str() {
                "1.2.840.113549.1.1.11" => &sig::RSA_PKCS1_2048_8192_SHA256,
                "1.2.840.113549.1.1.12" => &sig::RSA_PKCS1_2048_8192_SHA384,
                "1.2.840.113549.1.1.13" => &sig::RSA_PKCS1_2048_8192_SHA512,
                other => panic!("accepted RSA CSR signed with {other}"),
            }
        }
        other => panic!("accepted a key of algorithm {other}"),
    };
    let signature = csr.req.signature.as_bytes().expect("signature has no unused bits");
    sig::UnparsedPublicKey::new(alg, key)
        .verify(csr.signed, signature)
        .expect("accepted a CSR whose self-signature ring does not verify");
}

/// What the agent API's acceptance adds: no CA request, at most one URI SAN, in the
/// trust domain (and equal to `expected` when given), at most 32 extensions.
pub fn assert_csr_request_rules(data: &[u8], expected: Option<&str>) {
    use x509_cert::der::Decode as _;
    let csr = strict_csr(data).expect("strict DER (checked before)");
    let extensions = requested_extensions(&csr.req);
    assert!(
        extensions.len() <= keycard::server::agent_api::csr_check::MAX_CSR_EXTENSIONS,
        "{} extensions",
        extensions.len()
    );
    for e in extensions.iter().filter(|e| e.extn_id == oid("2.5.29.19")) {
        let bc = x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes())
            .expect("an accepted BasicConstraints decodes strictly");
        assert!(!bc.ca, "accepted a CSR that asks to be a CA");
    }
    let uris = uri_sans(&extensions);
    assert!(uris.len() <= 1, "accepted a CSR with URI SANs {uris:?}");
    if let Some(uri) = uris.first() {
        let prefix = format!("spiffe://{}/", TRUST_DOMAIN);
        assert!(uri.starts_with(&prefix) || uri == &prefix[..prefix.len() - 1], "{uri}");
        if let Some(expected) = expected {
            assert_eq!(uri, expected, "accepted a CSR for another ID");
        }
    }
}

/// Asserts that `message` survives an encode/decode round trip unchanged.
pub fn round_trip<M: prost::Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
    let encoded = message.encode_to_vec();
    let decoded = M::decode(encoded.as_slice()).expect("own encoding decodes");
    assert_eq!(&decoded, message, "round trip changed the message");
    assert_eq!(decoded.encode_to_vec(), encoded, "re-encoding is not stable");
}
