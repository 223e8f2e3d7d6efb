"""Calls FetchX509SVID over a Unix socket the way py-spiffe does, with grpcio.

Usage: fetch_x509svid.py SOCKET_PATH

grpc.insecure_channel("unix:" + path) makes grpcio send the socket path as the HTTP/2
:authority, which is what the keycard agent must accept. No protoc is needed: an empty
X509SVIDRequest encodes to zero bytes, and responses are printed as hex for the Rust test
to compare. Prints one line per call:
  with_header ok <hex of the first response message>   or   with_header error <CODE>
  without_header ok <hex>                               or   without_header error <CODE>
"""

import sys

import grpc

METHOD = "/SpiffeWorkloadAPI/FetchX509SVID"
TIMEOUT_SECONDS = 20


def call(channel, metadata):
    fetch = channel.unary_stream(
        METHOD,
        request_serializer=lambda request: request,
        response_deserializer=lambda raw: raw,
    )
    try:
        responses = fetch(b"", metadata=metadata, timeout=TIMEOUT_SECONDS)
        first = next(iter(responses))
        responses.cancel()
        return "ok " + first.hex()
    except grpc.RpcError as error:
        return "error " + error.code().name


def main():
    path = sys.argv[1]
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel("unix:" + path, options=options) as channel:
        print("with_header", call(channel, [("workload.spiffe.io", "true")]), flush=True)
        print("without_header", call(channel, []), flush=True)


if __name__ == "__main__":
    main()
