"""Reads PEM certificate files with Python's `cryptography`, as py-spiffe does.

Usage: read_certs.py FILE...

Prints `FILE ok` when every certificate of FILE loads and every extension parses (cryptography
parses extensions when they are read, which is where a non-DER BasicConstraints fails), or
`FILE error <exception type> <message>`.
"""

import sys

from cryptography import x509

for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            for cert in x509.load_pem_x509_certificates(f.read()):
                [ext.value for ext in cert.extensions]
        print(path, "ok")
    except Exception as e:
        print(path, "error", type(e).__name__, str(e).replace("\n", " "))
