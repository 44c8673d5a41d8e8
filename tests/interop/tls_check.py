"""Checks predictd's TLS with the unmodified Triton clients (tritonclient grpc and http), trusting
the test CA the way a user would, against a model's reference.json (onnxruntime's outputs).

Usage: python tls_check.py SUBCOMMAND ARGS...
  grpc ADDR CA REFERENCE.json          ssl=True, root_certificates=CA; plaintext and the system
                                       roots fail
  http ADDR CA REFERENCE.json          ssl=True with ssl_options and with ssl_context_factory;
                                       plaintext and the system roots fail
  mtls required|optional ADDR HTTP CA CLIENT OTHER REFERENCE.json
                                       the server asks for a client certificate its client CA
                                       signed (--tls-client-auth): CLIENT.pem/.key is one,
                                       OTHER.pem/.key is signed by another CA
  rotate ADDR HTTP PID DIR REFERENCE.json
                                       the server serves DIR/live.pem (signed by DIR/ca1.pem):
                                       one client stays connected while DIR/b.pem (signed by
                                       DIR/ca2.pem) replaces it and PID gets SIGHUP
  v2-request REFERENCE.json            prints a KServe v2 JSON infer request (for curl)
  v2-compare REFERENCE.json REPLY      a KServe v2 JSON infer reply matches the reference
Prints "ok - ..." / "not ok - ...: why" per check (v2-compare: nothing, or why not, like check.py);
exits 1 if any failed.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from triton_check import RESULTS, _true, assert_matches, check, grpc_inputs, http_inputs, \
    load_reference

TIMEOUT = 10  # seconds a call may take; a refused one fails well before
RELOAD_WITHIN = 10  # seconds SIGHUP may take to serve the new certificate to new connections


def grpc_client(addr, ca=None, cert=None, key=None, ssl=True):
    """A tritonclient.grpc client on a channel of its own: the local subchannel pool keeps gRPC
    from sharing one connection between clients, so each client's handshake is its own."""
    import tritonclient.grpc as grpcclient

    size = grpcclient.MAX_GRPC_MESSAGE_SIZE
    args = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size),
            ("grpc.use_local_subchannel_pool", 1)]
    return grpcclient.InferenceServerClient(addr, ssl=ssl, root_certificates=ca, private_key=key,
                                            certificate_chain=cert, channel_args=args)


def grpc_infer(client, ref):
    result = client.infer(ref["model"], grpc_inputs(ref), client_timeout=TIMEOUT)
    for name, want in ref["output_arrays"].items():
        assert_matches(name, result.as_numpy(name), want)


def http_infer(client, ref):
    result = client.infer(ref["model"], http_inputs(ref))
    for name, want in ref["output_arrays"].items():
        assert_matches(name, result.as_numpy(name), want)


def refused(call, *fragments):
    """CALL() must raise, its message holding one of FRAGMENTS (case-insensitive): a refusal,
    not some other failure."""
    try:
        got = call()
    except Exception as e:  # noqa: BLE001 - each client raises its own kind
        message = str(e)
        if hasattr(e, "message") and callable(e.message):
            message = f"{e.message()} {e.status() if hasattr(e, 'status') else ''}"
        assert any(f.lower() in message.lower() for f in fragments), \
            f"failed, but not as refused ({' / '.join(fragments)}): {type(e).__name__}: {message}"
        return
    raise AssertionError(f"not refused: {got!r}")


# gRPC's status names the cause of a failed handshake.
GRPC_UNTRUSTED = ("CERTIFICATE_VERIFY_FAILED",)
# The server answers a plaintext HTTP/2 preface with a TLS alert and closes.
GRPC_NO_TLS = ("Socket closed",)


def grpc_suite(addr, ca, ref):
    model = ref["model"]
    client = grpc_client(addr, ca)
    check("tls grpc: tritonclient ssl=True, root_certificates=CA: server ready",
          lambda: _true(client.is_server_ready(client_timeout=TIMEOUT)))
    check(f"tls grpc: tritonclient infer {model} over TLS matches its reference.json",
          grpc_infer, client, ref)
    check("tls grpc: tritonclient ssl=True trusting only the system roots is refused the server",
          refused, lambda: grpc_client(addr).is_server_ready(client_timeout=TIMEOUT),
          *GRPC_UNTRUSTED)
    check("tls grpc: a plaintext tritonclient gets no answer from the TLS port",
          refused, lambda: grpc_client(addr, ssl=False).is_server_ready(client_timeout=TIMEOUT),
          *GRPC_NO_TLS)


def http_client(addr, **kwargs):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(addr, connection_timeout=TIMEOUT,
                                            network_timeout=TIMEOUT, **kwargs)


def gevent_context(ca, cert=None, key=None):
    """An ssl_context_factory: gevent's SSLContext (the socket is gevent's) trusting CA."""
    import gevent.ssl

    def factory():
        context = gevent.ssl.create_default_context(cafile=ca)
        if cert:
            context.load_cert_chain(cert, key)
        return context
    return factory


# OpenSSL, through the ssl module: "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed".
HTTP_UNTRUSTED = ("CERTIFICATE_VERIFY_FAILED",)


def http_suite(addr, ca, ref):
    model = ref["model"]
    client = http_client(addr, ssl=True, ssl_options={"ca_certs": ca})
    check("tls http: tritonclient ssl=True, ssl_options={'ca_certs': CA}: server ready",
          lambda: _true(client.is_server_ready()))
    check(f"tls http: tritonclient (ssl_options) infer {model} matches its reference.json",
          http_infer, client, ref)
    client = http_client(addr, ssl=True, ssl_context_factory=gevent_context(ca))
    check(f"tls http: tritonclient (ssl_context_factory trusting CA) infer {model} matches",
          http_infer, client, ref)
    check("tls http: tritonclient ssl=True trusting only the system roots is refused the server",
          refused, lambda: http_client(addr, ssl=True).is_server_ready(), *HTTP_UNTRUSTED)
    check("tls http: tritonclient ssl=True, system roots via create_default_context, refused",
          refused, lambda: http_client(addr, ssl=True,
                                       ssl_context_factory=gevent_context(None)).is_server_ready(),
          *HTTP_UNTRUSTED)

    def plaintext():
        # The server reads the request as a bad ClientHello and answers with a TLS alert, which
        # the client's HTTP parser cannot read as a status line.
        refused(lambda: http_client(addr).is_server_ready(), "Expected HTTP/")
    check("tls http: a plaintext tritonclient gets no answer from the TLS port", plaintext)


# A TLS 1.3 server judges the client's certificate (or its lack) after the client's handshake
# ended: the client reads the server's alert on its first read. Python's ssl module names it;
# gRPC's C core logs it ("TLSV1_ALERT_CERTIFICATE_REQUIRED") but its status only says the
# record did not decrypt.
HTTP_NO_CERT = ("TLSV13_ALERT_CERTIFICATE_REQUIRED",)
HTTP_BAD_CERT = ("TLSV1_ALERT_UNKNOWN_CA",)
GRPC_REFUSED_CERT = ("TSI_DATA_CORRUPTED",)


def mtls_suite(mode, addr, http, ca, client, other, ref):
    """MODE is the server's --tls-client-auth: required or optional."""
    model = ref["model"]
    cert, key = f"{client}.pem", f"{client}.key"
    check(f"mtls {mode} grpc: tritonclient with certificate_chain/private_key infers {model}, "
          "matches", grpc_infer, grpc_client(addr, ca, cert, key), ref)
    check(f"mtls {mode} grpc: tritonclient with a certificate another CA signed is refused",
          refused, lambda: grpc_infer(grpc_client(addr, ca, f"{other}.pem", f"{other}.key"), ref),
          *GRPC_REFUSED_CERT)
    with_cert = http_client(http, ssl=True, ssl_options={"ca_certs": ca, "certfile": cert,
                                                         "keyfile": key})
    check(f"mtls {mode} http: tritonclient with ssl_options certfile/keyfile infers {model}, "
          "matches", http_infer, with_cert, ref)
    with_cert = http_client(http, ssl=True, ssl_context_factory=gevent_context(ca, cert, key))
    check(f"mtls {mode} http: tritonclient with an ssl_context_factory holding the certificate "
          "infers", http_infer, with_cert, ref)
    other_cert = http_client(http, ssl=True, ssl_options={
        "ca_certs": ca, "certfile": f"{other}.pem", "keyfile": f"{other}.key"})
    check(f"mtls {mode} http: tritonclient with a certificate another CA signed is refused "
          "(alert unknown ca)", refused, lambda: http_infer(other_cert, ref), *HTTP_BAD_CERT)
    without = http_client(http, ssl=True, ssl_options={"ca_certs": ca})
    if mode == "required":
        check("mtls required grpc: tritonclient without a client certificate is refused",
              refused, lambda: grpc_infer(grpc_client(addr, ca), ref), *GRPC_REFUSED_CERT)
        check("mtls required http: tritonclient without a client certificate is refused "
              "(alert certificate required)", refused, lambda: http_infer(without, ref),
              *HTTP_NO_CERT)
    else:
        check(f"mtls optional grpc: tritonclient without a client certificate infers {model}",
              grpc_infer, grpc_client(addr, ca), ref)
        check(f"mtls optional http: tritonclient without a client certificate infers {model}",
              http_infer, without, ref)
    check(f"mtls {mode} grpc: the certified client still infers after the refusals",
          grpc_infer, grpc_client(addr, ca, cert, key), ref)


def curl_status(http, ca):
    """The HTTP status a new curl connection trusting only CA gets from /v2/health/ready, or
    curl's exit code as "curl N" when it gets none."""
    run = subprocess.run(["curl", "-sS", "--max-time", str(TIMEOUT), "--cacert", ca, "-o",
                          os.devnull, "-w", "%{http_code}", f"https://{http}/v2/health/ready"],
                         capture_output=True, text=True, check=False)
    return run.stdout if run.returncode == 0 else f"curl {run.returncode}: {run.stderr.strip()}"


def install(directory, name):
    """Makes NAME.pem/NAME.key the live files, each renamed in whole as a rotation would."""
    for ext in ("pem", "key"):
        staged = os.path.join(directory, f"staged.{ext}")
        shutil.copyfile(os.path.join(directory, f"{name}.{ext}"), staged)
        os.rename(staged, os.path.join(directory, f"live.{ext}"))


class Steady:
    """Infers on one client over and over from a thread, recording when each call ended and
    how."""

    def __init__(self, client, ref):
        self.client, self.ref = client, ref
        self.calls = []  # (monotonic time, None or the error)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            try:
                grpc_infer(self.client, self.ref)
                error = None
            except Exception as e:  # noqa: BLE001 - recorded, reported by the check
                error = e
            self.calls.append((time.monotonic(), error))
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=2 * TIMEOUT)


def rotate_suite(addr, http, pid, directory, ref):
    model = ref["model"]
    ca1, ca2 = os.path.join(directory, "ca1.pem"), os.path.join(directory, "ca2.pem")
    # Trusting only CA1, this client cannot reconnect once the server serves B (CA2 signed it):
    # every call it gets answered after the rotation went over the connection made before it.
    kept = grpc_client(addr, ca1)
    check(f"rotation: a connected client (trusting CA1) infers {model} before", grpc_infer,
          kept, ref)
    check("rotation: before it, a new connection verifying with CA2 is refused",
          refused, lambda: grpc_infer(grpc_client(addr, ca2), ref), *GRPC_UNTRUSTED)

    reloaded = None
    with Steady(kept, ref) as steady:
        time.sleep(0.3)
        install(directory, "b")
        hangup = time.monotonic()
        os.kill(pid, signal.SIGHUP)
        statuses = []
        while time.monotonic() < hangup + RELOAD_WITHIN:
            statuses.append(curl_status(http, ca2))
            if statuses[-1] == "200":
                reloaded = time.monotonic()
                break
            time.sleep(0.1)
        time.sleep(0.3)

    def reload_seen():
        assert reloaded is not None, f"new connections never verified with CA2: {statuses[-3:]}"
    check(f"rotation: after SIGHUP a new curl --cacert CA2 gets 200 within {RELOAD_WITHIN} s"
          + (f" ({reloaded - hangup:.2f} s)" if reloaded else ""), reload_seen)

    def steady_calls():
        errors = [e for _, e in steady.calls if e is not None]
        assert not errors, f"{len(errors)} of {len(steady.calls)} calls failed: {errors[0]}"
        before = sum(t < hangup for t, _ in steady.calls)
        after = sum(reloaded is not None and t > reloaded for t, _ in steady.calls)
        assert before and after, f"{before} calls before SIGHUP, {after} after the reload"
    check("rotation: the connected client inferred throughout, before SIGHUP and after the reload",
          steady_calls)
    check("rotation: a new tritonclient grpc connection verifying with CA2 infers, matches",
          grpc_infer, grpc_client(addr, ca2), ref)
    check("rotation: a new tritonclient grpc connection verifying with only CA1 is refused",
          refused, lambda: grpc_infer(grpc_client(addr, ca1), ref), *GRPC_UNTRUSTED)

    def curl_ca1():
        status = curl_status(http, ca1)
        assert status.startswith("curl 60:"), f"want curl's exit code 60 (not verified): {status}"
    check("rotation: a new curl --cacert CA1 fails verification", curl_ca1)
    check(f"rotation: the client connected before it still infers {model} (no reconnect: CA1)",
          grpc_infer, kept, ref)


def v2_request(reference):
    with open(reference) as f:
        ref = json.load(f)
    inputs = [{"name": name, "datatype": t["dtype"], "shape": t["shape"], "data": t["data"]}
              for name, t in ref["inputs"].items()]
    print(json.dumps({"id": "tls", "inputs": inputs}))


def v2_compare(reference, reply):
    ref = load_reference(reference)
    with open(reply) as f:
        text = f.read()
    try:
        body = json.loads(text)
        assert body.get("id") == "tls", f"id {body.get('id')!r}"
        got = {o["name"]: np.array(o["data"], dtype=ref["output_arrays"][o["name"]].dtype)
               .reshape(o["shape"]) for o in body["outputs"] if o["name"] in ref["output_arrays"]}
        for name, want in ref["output_arrays"].items():
            assert_matches(name, got.get(name), want)
    except (ValueError, KeyError, AssertionError) as e:
        print(f"{e}: {text[:300]}")
        return 1
    return 0


def main(argv):
    command, *args = argv
    if command == "v2-request":
        return v2_request(*args)
    if command == "v2-compare":
        return v2_compare(*args)
    suites = {"grpc": grpc_suite, "http": http_suite, "mtls": mtls_suite, "rotate": rotate_suite}
    if command not in suites:
        raise SystemExit(f"unknown sub-command {command}")
    *args, reference = args
    if command == "rotate":
        args[2] = int(args[2])
    if command == "mtls" and args[0] not in ("required", "optional"):
        raise SystemExit(f"mtls: required or optional, not {args[0]}")
    suites[command](*args, load_reference(reference))
    return 0 if RESULTS["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]) or 0)
