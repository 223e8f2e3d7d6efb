"""HTTPS requests to an Envoy listener with a client certificate, for the Envoy SDS tests.

usage: envoy_mtls.py PORT CA_PEM CLIENT COUNT INTERVAL_MS
CLIENT is a PEM file holding the client's certificate chain and key (read again for each
request: the test rewrites it when the SVID rotates), `none` (no client certificate), or
`foreign` (a certificate of spiffe://other.org/x from a CA made here, unknown to keycard).
Prints one line per request: `ok <status> <server leaf serial hex> <server SPIFFE ID>` or
`fail <error>`.
"""

import datetime
import http.client
import os
import ssl
import sys
import tempfile
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def foreign_pem():
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "other")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://other.org/x")]),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    f = tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False)
    f.write(leaf.public_bytes(serialization.Encoding.PEM))
    f.write(ca.public_bytes(serialization.Encoding.PEM))
    f.write(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    f.close()
    return f.name


def request(port, ca, client):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SPIFFE IDs, not host names: the ID is printed and checked
    ctx.load_verify_locations(ca)
    if client is not None:
        ctx.load_cert_chain(client)
    # The response is read by its length: Envoy closes its side only after a delay.
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", "/")
        der = conn.sock.getpeercert(binary_form=True)
        response = conn.getresponse()
        response.read()
        status = response.status
    finally:
        conn.close()
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    uri = san.value.get_values_for_type(x509.UniformResourceIdentifier)[0]
    return f"{status} {cert.serial_number:x} {uri}"


def main():
    port, ca, client, count, interval = sys.argv[1:6]
    if client == "none":
        client = None
    elif client == "foreign":
        client = foreign_pem()
    for _ in range(int(count)):
        try:
            print("ok " + request(int(port), ca, client), flush=True)
        except Exception as e:  # any failure is reported, not raised: the test judges it
            print(f"fail {type(e).__name__}: {e}".replace("\n", " "), flush=True)
        time.sleep(int(interval) / 1000)


if __name__ == "__main__":
    main()
