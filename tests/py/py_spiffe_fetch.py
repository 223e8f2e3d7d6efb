"""Runs py-spiffe (the PyPI package `spiffe`) against a real keycard agent.

Usage: py_spiffe_fetch.py unix:///path/to/agent.sock

Uses the three entry points a Python workload has: WorkloadApiClient (fetch_x509_svid,
fetch_x509_bundles, fetch_jwt_svid, fetch_jwt_bundles, validate_jwt_svid), X509Source and
JwtSource. Prints one `key value` line per fact for the Rust test to check, and exits non-zero
with `error <step> <exception>` at the first step that fails. Every call has a deadline.
"""

import base64
import json
import sys
import traceback

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from spiffe import JwtSource, JwtSvid, TrustDomain, WorkloadApiClient, X509Source

TIMEOUT = 20
TRUST_DOMAIN = TrustDomain("example.org")


def spki(public_key):
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo).hex()


def describe_x509_svid(prefix, svid):
    leaf = svid.leaf
    print(f"{prefix}_id {svid.spiffe_id}")
    print(f"{prefix}_leaf_spki {spki(leaf.public_key())}")
    print(f"{prefix}_key_spki {spki(svid.private_key.public_key())}")
    print(f"{prefix}_chain_len {len(svid.cert_chain)}")
    # cryptography parses extensions on access: this is where non-DER BasicConstraints fail.
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    print(f"{prefix}_basic_constraints ca={bc.value.ca} critical={bc.critical}")


def authorities(bundle_set):
    bundle = bundle_set.get_bundle_for_trust_domain(TRUST_DOMAIN)
    if bundle is None:
        return "none"
    ders = sorted(c.public_bytes(Encoding.DER).hex() for c in bundle.x509_authorities)
    return ",".join(ders)


def run(step, action):
    try:
        return action()
    except Exception as e:  # report which step failed, then stop
        print(f"error {step} {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        sys.stdout.flush()
        sys.exit(1)


def main():
    endpoint = sys.argv[1]
    client = run("client", lambda: WorkloadApiClient(endpoint, default_timeout=TIMEOUT))

    svid = run("fetch_x509_svid", client.fetch_x509_svid)
    describe_x509_svid("client_svid", svid)
    bundles = run("fetch_x509_bundles", client.fetch_x509_bundles)
    print(f"client_bundle {authorities(bundles)}")

    jwt = run("fetch_jwt_svid", lambda: client.fetch_jwt_svid({"db"}))
    print(f"client_jwt_id {jwt.spiffe_id}")
    print(f"client_jwt_audience {','.join(sorted(jwt.audience))}")
    checked = run("validate_jwt_svid", lambda: client.validate_jwt_svid(jwt.token, "db"))
    print(f"client_jwt_validated {checked.spiffe_id}")
    try:
        client.validate_jwt_svid(jwt.token, "not-db")
        print("client_jwt_wrong_audience accepted")
    except Exception as e:
        print(f"client_jwt_wrong_audience refused {type(e).__name__}")
    jwt_bundles = run("fetch_jwt_bundles", client.fetch_jwt_bundles)
    jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(TRUST_DOMAIN)
    local = run("parse_and_validate", lambda: JwtSvid.parse_and_validate(jwt.token, jwt_bundle, {"db"}))
    print(f"client_jwt_local {local.spiffe_id}")
    # The confirmation claim (RFC 8705 cnf) as the token carries it: py-spiffe ignores it.
    payload = json.loads(base64.urlsafe_b64decode(jwt.token.split(".")[1] + "=="))
    print(f"client_jwt_cnf {json.dumps(payload.get('cnf'))}")

    x509_source = run("X509Source", lambda: X509Source(socket_path=endpoint, timeout_in_seconds=TIMEOUT))
    context = run("X509Source.get_x509_context", x509_source.get_x509_context)
    describe_x509_svid("source_svid", context.default_svid)
    print(f"source_bundle {authorities(context.x509_bundle_set)}")
    x509_source.close()

    jwt_source = run("JwtSource", lambda: JwtSource(socket_path=endpoint, timeout_in_seconds=TIMEOUT))
    token = run("JwtSource.fetch_svid", lambda: jwt_source.fetch_svid({"db", "cache"}))
    bundle = jwt_source.get_bundle_for_trust_domain(TRUST_DOMAIN)
    valid = run("JwtSource validate", lambda: JwtSvid.parse_and_validate(token.token, bundle, {"cache"}))
    print(f"source_jwt_id {valid.spiffe_id}")
    print(f"source_jwt_audience {','.join(sorted(token.audience))}")
    jwt_source.close()
    client.close()
    print("done")


if __name__ == "__main__":
    main()
