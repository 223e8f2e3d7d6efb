"""White-box wire tests of the agent's Envoy SDS v3 service, with grpcio and the xds-protos stubs.

usage: sds_wire.py --socket PATH --bundle PEM --nack-message TEXT --id SPIFFE_ID [--id ...]

PATH is the agent's Workload API socket; PEM the trust domain's X.509 bundle; each --id a
SPIFFE ID the calling process holds (all of them: empty resource names must give exactly
these). TEXT is sent as the NACK's error message (the caller looks for it in the agent's log).

Each check prints `ok <check>: <what was seen>`. The first failure prints
`FAIL <check>: expected <...>; got <...>` and the script exits 1 (2 on an unexpected error).
"""

import argparse
import queue
import sys
import threading
import traceback

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"
VALIDATOR_TYPE = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
)
HEADER = ("workload.spiffe.io", "true")
# How long a stream must stay silent to count as "no response" (the agent answers in ms).
QUIET_SECONDS = 0.7
# How long any expected answer may take.
PATIENCE_SECONDS = 10
END = object()


class Failure(Exception):
    """A check that did not hold: what was expected and what came back."""

    def __init__(self, expected, got):
        super().__init__(f"expected {expected}; got {got}")


def expect(holds, expected, got):
    if not holds:
        raise Failure(expected, got)


def node(metadata=None, build=None):
    """An Envoy node, with metadata fields and a user_agent_build_version when given."""
    n = base_pb2.Node(id="sds-wire", cluster="sds-wire", user_agent_name="envoy")
    if metadata:
        n.metadata.update(metadata)
    if build:
        major, minor, patch = build
        n.user_agent_build_version.version.major_number = major
        n.user_agent_build_version.version.minor_number = minor
        n.user_agent_build_version.version.patch = patch
    return n


def request(names, nonce="", version="", envoy=None, error=None):
    r = discovery_pb2.DiscoveryRequest(
        resource_names=names,
        type_url=SECRET_TYPE,
        response_nonce=nonce,
        version_info=version,
        node=envoy if envoy is not None else node(),
    )
    if error is not None:
        r.error_detail.CopyFrom(error)
    return r


class Stream:
    """One StreamSecrets call (a context manager that ends it): requests go in through a
    queue, responses (or the call's error, or END) come out through another, read by a thread
    so that every wait is bounded."""

    def __init__(self, stub, metadata=()):
        self._requests = queue.Queue()
        self._responses = queue.Queue()

        def requests():
            while True:
                r = self._requests.get()
                if r is None:
                    return
                yield r

        self._call = stub.StreamSecrets(requests(), metadata=metadata, timeout=120)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for response in self._call:
                self._responses.put(response)
            self._responses.put(END)
        except grpc.RpcError as error:
            self._responses.put(error)

    def send(self, r):
        self._requests.put(r)

    def next(self, timeout=PATIENCE_SECONDS):
        """The next response, the RpcError that ended the call, END, or None on timeout."""
        try:
            return self._responses.get(timeout=timeout)
        except queue.Empty:
            return None

    def response(self, what):
        got = self.next()
        expect(isinstance(got, discovery_pb2.DiscoveryResponse), f"a response to {what}", show(got))
        return got

    def silent(self, what):
        got = self.next(QUIET_SECONDS)
        expect(got is None, f"no response to {what} within {QUIET_SECONDS}s", show(got))

    def error(self, what):
        got = self.next()
        expect(isinstance(got, grpc.RpcError), f"the stream to fail after {what}", show(got))
        return got

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self._requests.put(None)
        self._call.cancel()


def expect_invalid(e, name):
    """`e` is INVALID_ARGUMENT with a message naming `name`."""
    expect(e.code() == grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", show(e))
    expect(name in e.details(), f"a message naming {name}", e.details())


def show(got):
    if got is None:
        return "nothing (timed out)"
    if got is END:
        return "the end of the stream"
    if isinstance(got, grpc.RpcError):
        return f"{got.code().name}: {got.details()}"
    if isinstance(got, discovery_pb2.DiscoveryResponse):
        return f"a response version {got.version_info!r} with {sorted(secrets(got))}"
    return repr(got)


def secrets(response):
    """The response's secrets by name; every resource must be a Secret."""
    out = {}
    for any_ in response.resources:
        expect(any_.type_url == SECRET_TYPE, f"resources of type {SECRET_TYPE}", any_.type_url)
        s = secret_pb2.Secret()
        any_.Unpack(s)
        expect(s.name not in out, "each name once", f"{s.name} twice")
        out[s.name] = s
    return out


def certificates(pem):
    der = serialization.Encoding.DER
    return sorted(c.public_bytes(der) for c in x509.load_pem_x509_certificates(pem))


def uri_san(cert):
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.UniformResourceIdentifier)


class Checker:
    """The channel and SDS stub to check through, and the expectations: the caller's IDs, the
    trust domain's bundle, and the message to NACK with."""

    def __init__(self, channel, ids, bundle_pem, nack_message):
        self.channel = channel
        self.stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        self.nack_message = nack_message
        self.ids = ids
        self.bundle = certificates(bundle_pem)
        self.trust_domain = ids[0].split("/")[2]
        self.td_id = "spiffe://" + self.trust_domain

    def everything(self):
        """What empty resource names must give: every name with the kind it must have."""
        kinds = {"ROOTCA": "trusted_ca", "ALL": "spiffe_validator", self.td_id: "trusted_ca"}
        kinds.update({i: "tls_certificate" for i in self.ids})
        return kinds

    def kind(self, s, holder=None):
        """The kind of secret `s`, having checked its contents: `tls_certificate` (a chain
        whose leaf holds `holder`, or one of the caller's IDs, and its key), `trusted_ca` (the
        bundle) or `spiffe_validator` (the bundle under the trust domain name)."""
        which = s.WhichOneof("type")
        if which == "tls_certificate":
            tls = s.tls_certificate
            chain = x509.load_pem_x509_certificates(tls.certificate_chain.inline_bytes)
            ids = uri_san(chain[0])
            wanted = [holder] if holder else self.ids
            expect(len(ids) == 1 and ids[0] in wanted, f"{s.name}: a leaf of {wanted}", ids)
            key = serialization.load_pem_private_key(tls.private_key.inline_bytes, None)
            spki = serialization.PublicFormat.SubjectPublicKeyInfo
            pem = serialization.Encoding.PEM
            mine = key.public_key().public_bytes(pem, spki)
            leaf = chain[0].public_key().public_bytes(pem, spki)
            expect(mine == leaf, f"{s.name}: the key of its leaf", "another key")
            return which
        wanted = f"{s.name}: a certificate or a validation context"
        expect(which == "validation_context", wanted, which)
        vc = s.validation_context
        if vc.HasField("trusted_ca"):
            expect(not vc.HasField("custom_validator_config"), f"{s.name}: one validator", vc)
            got = certificates(vc.trusted_ca.inline_bytes)
            expect(got == self.bundle, f"{s.name}: the bundle's {len(self.bundle)} CAs", len(got))
            return "trusted_ca"
        cv = vc.custom_validator_config
        expect(cv.name == SPIFFE_VALIDATOR, f"{s.name}: {SPIFFE_VALIDATOR}", cv.name)
        expect(cv.typed_config.type_url == VALIDATOR_TYPE, VALIDATOR_TYPE, cv.typed_config.type_url)
        config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
        cv.typed_config.Unpack(config)
        tds = {td.name: certificates(td.trust_bundle.inline_bytes) for td in config.trust_domains}
        td = self.trust_domain
        expect(list(tds) == [td], f"{s.name}: trust domains [{td}]", list(tds))
        expect(tds[self.trust_domain] == self.bundle, f"{s.name}: the bundle", "other CAs")
        return "spiffe_validator"

    def kinds(self, response):
        """The kind of each secret of `response`, by name; a secret named by a SPIFFE ID must
        hold that ID's SVID."""
        return {n: self.kind(s, n if n in self.ids else None) for n, s in secrets(response).items()}


def check_empty_names(c):
    with Stream(c.stub) as stream:
        stream.send(request([]))
        r = stream.response("empty resource_names")
        expect(r.type_url == SECRET_TYPE, SECRET_TYPE, r.type_url)
        has_both = r.version_info != "" and r.nonce != ""
        expect(has_both, "a version and a nonce", (r.version_info, r.nonce))
        got = c.kinds(r)
        expect(got == c.everything(), c.everything(), got)
    f = c.stub.FetchSecrets(request([]), timeout=PATIENCE_SECONDS)
    has_both = f.version_info != "" and f.nonce != ""
    expect(has_both, "a version and a nonce", (f.version_info, f.nonce))
    got = c.kinds(f)
    expect(got == c.everything(), c.everything(), got)
    return f"StreamSecrets and FetchSecrets give {sorted(got.items())}"


def check_default_name(c):
    f = c.stub.FetchSecrets(request(["default", c.ids[-1]]), timeout=PATIENCE_SECONDS)
    got = c.kinds(f)
    want = {"default": "tls_certificate", c.ids[-1]: "tls_certificate"}
    expect(got == want, want, got)
    return "default and a named SVID are tls_certificates of the caller"


def check_unknown_name(c):
    unknown = f"spiffe://{c.trust_domain}/not-mine"
    for names in ([unknown], [c.ids[0], unknown], ["no-such-secret"]):
        bad = names[-1]
        with Stream(c.stub) as stream:
            stream.send(request(names))
            e = stream.error(f"asking for {names}")
            expect_invalid(e, bad)
        try:
            c.stub.FetchSecrets(request(names), timeout=PATIENCE_SECONDS)
            raise Failure(f"FetchSecrets {names}: INVALID_ARGUMENT", "an answer")
        except grpc.RpcError as e:
            expect_invalid(e, bad)
    # An unknown name added later on an open stream ends it the same way.
    with Stream(c.stub) as stream:
        stream.send(request([c.ids[0]]))
        r = stream.response("a known name")
        stream.send(request([c.ids[0], unknown], nonce=r.nonce, version=r.version_info))
        e = stream.error("adding an unknown name")
        expect_invalid(e, unknown)
    return f"INVALID_ARGUMENT naming it, first or later, on both RPCs ({e.details()!r})"


def check_ack_and_stale_nonce(c):
    me = c.ids[0]
    with Stream(c.stub) as stream:
        stream.send(request([me]))
        r1 = stream.response("the first request")
        stream.send(request([me], nonce=r1.nonce, version=r1.version_info))
        stream.silent("an ACK")
        stream.send(request([me, "ROOTCA"], nonce="not-a-nonce-we-sent", version=r1.version_info))
        stream.silent("new names with an unknown nonce")
        stream.send(request([me, "ROOTCA"], nonce=r1.nonce, version=r1.version_info))
        r2 = stream.response("new names with the last nonce")
        got = c.kinds(r2)
        want = {me: "tls_certificate", "ROOTCA": "trusted_ca"}
        expect(got == want, want, got)
        rose = int(r2.version_info) > int(r1.version_info)
        expect(rose, f"a version above {r1.version_info}", r2.version_info)
        expect(r2.nonce != r1.nonce, "a fresh nonce", r2.nonce)
        stream.send(request([me], nonce=r1.nonce, version=r2.version_info))
        stream.silent("new names with the previous (stale) nonce")
        stream.send(request([me], nonce=r2.nonce, version=r2.version_info))
        r3 = stream.response("new names with the last nonce")
        expect(sorted(secrets(r3)) == [me], [me], sorted(secrets(r3)))
    # Reconnecting: a new stream's first request echoes the old stream's nonce; it is answered.
    with Stream(c.stub) as stream:
        stream.send(request([me], nonce=r3.nonce, version=r3.version_info))
        r = stream.response("a reconnect echoing the previous stream's nonce")
        expect(sorted(secrets(r)) == [me], [me], sorted(secrets(r)))
    versions = " < ".join(r.version_info for r in (r1, r2, r3))
    return f"ACK and stale nonces ignored; versions {versions}"


def check_nack(c):
    me = c.ids[0]
    with Stream(c.stub) as stream:
        stream.send(request([me]))
        r1 = stream.response("the first request")
        error = status_pb2.Status(code=3, message=c.nack_message)
        stream.send(request([me], nonce=r1.nonce, version="", error=error))
        stream.silent("a NACK")
        stream.send(request([me, "ALL"], nonce=r1.nonce, version=""))
        r2 = stream.response("new names after the NACK")
        got = c.kinds(r2)
        want = {me: "tls_certificate", "ALL": "spiffe_validator"}
        expect(got == want, want, got)
        stream.send(request([me, "ALL"], nonce=r2.nonce, version=r2.version_info))
        stream.silent("the ACK after the NACK")
    return "the stream stayed open and answered the next name change"


def check_delta_secrets(c):
    call = c.stub.DeltaSecrets(
        iter([discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET_TYPE, node=node())]),
        timeout=PATIENCE_SECONDS,
    )
    try:
        got = next(iter(call))
        raise Failure("UNIMPLEMENTED", show(got))
    except grpc.RpcError as e:
        expect(e.code() == grpc.StatusCode.UNIMPLEMENTED, "UNIMPLEMENTED", show(e))
    return "UNIMPLEMENTED"


def check_header_rule(c):
    for metadata, what in (((), "without"), ((HEADER,), "with")):
        f = c.stub.FetchSecrets(request([c.ids[0]]), metadata=metadata, timeout=PATIENCE_SECONDS)
        got = sorted(secrets(f))
        expect(got == [c.ids[0]], f"SDS {what} the header: {c.ids[0]}", got)
    fetch = c.channel.unary_stream(
        "/SpiffeWorkloadAPI/FetchX509SVID",
        request_serializer=lambda r: r,
        response_deserializer=lambda raw: raw,
    )
    try:
        got = next(iter(fetch(b"", timeout=PATIENCE_SECONDS)))
        raise Failure("FetchX509SVID without the header: INVALID_ARGUMENT", f"{len(got)} bytes")
    except grpc.RpcError as e:
        invalid = e.code() == grpc.StatusCode.INVALID_ARGUMENT
        expect(invalid, "INVALID_ARGUMENT without the header", show(e))
    call = fetch(b"", metadata=(HEADER,), timeout=PATIENCE_SECONDS)
    try:
        first = next(iter(call))
    except grpc.RpcError as e:
        raise Failure("FetchX509SVID with the header: an answer", show(e))
    finally:
        call.cancel()
    expect(c.ids[0].encode() in first, f"an X509SVIDResponse naming {c.ids[0]}", first[:80])
    return "SDS answers with and without it; FetchX509SVID needs it (INVALID_ARGUMENT without)"


def check_plain_trusted_ca(c):
    disable = "disable_spiffe_cert_validation"
    nodes = [
        (f"{disable}: true", node(metadata={disable: True}), "trusted_ca"),
        (f"{disable}: false", node(metadata={disable: False}), "spiffe_validator"),
        ("Envoy 1.16.3", node(build=(1, 16, 3)), "trusted_ca"),
        ("Envoy 1.17.0", node(build=(1, 17, 0)), "spiffe_validator"),
    ]
    for what, envoy, all_kind in nodes:
        want = {"ALL": all_kind, "ROOTCA": "trusted_ca"}
        f = c.stub.FetchSecrets(request(["ALL", "ROOTCA"], envoy=envoy), timeout=PATIENCE_SECONDS)
        got = c.kinds(f)
        expect(got == want, f"FetchSecrets for {what}: {want}", got)
        with Stream(c.stub) as stream:
            stream.send(request(["ALL"], envoy=envoy))
            got = c.kinds(stream.response(f"ALL for {what}"))
            expect(got == {"ALL": all_kind}, f"StreamSecrets for {what}: ALL as {all_kind}", got)
    return f"ALL is plain trusted_ca for Envoy < 1.17 or {disable}, else the SPIFFE validator"


CHECKS = (
    check_empty_names,
    check_default_name,
    check_unknown_name,
    check_ack_and_stale_nonce,
    check_nack,
    check_delta_secrets,
    check_header_rule,
    check_plain_trusted_ca,
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--nack-message", required=True)
    parser.add_argument("--id", action="append", required=True)
    args = parser.parse_args()
    with open(args.bundle, "rb") as f:
        bundle = f.read()
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel("unix:" + args.socket, options=options) as channel:
        c = Checker(channel, args.id, bundle, args.nack_message)
        for check in CHECKS:
            name = check.__name__.removeprefix("check_")
            try:
                print(f"ok {name}: {check(c)}", flush=True)
            except Failure as failure:
                print(f"FAIL {name}: {failure}", flush=True)
                sys.exit(1)
            except Exception:
                print(f"FAIL {name}: an unexpected error:", flush=True)
                traceback.print_exc(file=sys.stdout)
                sys.exit(2)
    print("done", flush=True)


if __name__ == "__main__":
    main()
