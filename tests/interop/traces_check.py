"""Checks predictd's traces with an OTLP receiver built from the official definitions (PyPI's
opentelemetry-proto) and the unmodified Triton clients sending W3C trace context.

Usage: python traces_check.py grpc|http/protobuf RECEIVER_PORT CLIENT_ADDR
The server is started with --otlp-endpoint http://127.0.0.1:RECEIVER_PORT, that protocol,
--trace-sampling-ratio 0 (so only the callers' sampled contexts are traced), one worker and a
long --max-queue-delay-us (so that calls sent together are batched). It serves `linear`
(diabetes_linear). CLIENT_ADDR is its gRPC address for grpc, its HTTP address otherwise: the
grpc receiver is called by tritonclient.grpc, the HTTP one by tritonclient.http.
Prints "ok - ..." / "not ok - ...: why" per check; exits 1 if any failed.
"""

import http.server
import os
import sys
import threading
import time
from concurrent import futures

import numpy as np

from triton_check import RESULTS, check

SAMPLED, UNSAMPLED, TOGETHER = 4, 3, 5


class Received:
    def __init__(self):
        self.lock = threading.Lock()
        self.spans = []
        self.services = set()

    def add(self, request):
        with self.lock:
            for resource_spans in request.resource_spans:
                for kv in resource_spans.resource.attributes:
                    if kv.key == "service.name":
                        self.services.add(kv.value.string_value)
                for scope in resource_spans.scope_spans:
                    self.spans.extend(scope.spans)

    def until(self, done, seconds=20):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                spans = list(self.spans)
            if done(spans):
                return spans
            time.sleep(0.05)
        with self.lock:
            return list(self.spans)


def grpc_receiver(port, received):
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 - the generated name
            received.add(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def http_receiver(port, received):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the standard library's name
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            ok = (self.path == "/v1/traces"
                  and self.headers.get("content-type") == "application/x-protobuf")
            if ok:
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                received.add(request)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200 if ok else 400)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def traceparent(trace_id, span_id, sampled):
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def client_for(protocol, addr):
    if protocol == "grpc":
        import tritonclient.grpc as triton
        return triton, triton.InferenceServerClient(addr)
    import tritonclient.http as triton
    return triton, triton.InferenceServerClient(addr, concurrency=TOGETHER)


def one_input(triton):
    x = triton.InferInput("X", [1, 10], "FP32")
    x.set_data_from_numpy(np.full((1, 10), 0.01, dtype=np.float32))
    return [x]


def main():
    protocol, port, addr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    received = Received()
    receiver = grpc_receiver(port, received) if protocol == "grpc" else \
        http_receiver(port, received)
    triton, client = client_for(protocol, addr)

    # Callers' contexts: SAMPLED sampled one by one, UNSAMPLED not sampled, then TOGETHER
    # sampled ones sent at once.
    callers = {}
    for i in range(SAMPLED):
        trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
        callers[trace_id] = span_id
        client.infer("linear", one_input(triton),
                     headers={"traceparent": traceparent(trace_id, span_id, True),
                              "tracestate": f"check=n{i}"})
    for _ in range(UNSAMPLED):
        client.infer("linear", one_input(triton),
                     headers={"traceparent": traceparent(os.urandom(16).hex(),
                                                         os.urandom(8).hex(), False)})
    together = {os.urandom(16).hex(): os.urandom(8).hex() for _ in range(TOGETHER)}
    callers.update(together)
    with futures.ThreadPoolExecutor(max_workers=TOGETHER) as pool:
        list(pool.map(
            lambda ids: client_for(protocol, addr)[1].infer(
                "linear", one_input(triton),
                headers={"traceparent": traceparent(ids[0], ids[1], True)}),
            together.items()))

    def is_call(span):
        return not span.name.startswith("predictd.")

    want = len(callers)
    spans = received.until(lambda spans: sum(map(is_call, spans)) >= want
                           and sum(s.name == "predictd.queue" for s in spans) >= want)
    time.sleep(1.2)  # anything stray arrives too
    with received.lock:
        spans = list(received.spans)
    calls = [s for s in spans if is_call(s)]
    queues = [s for s in spans if s.name == "predictd.queue"]
    batches = [s for s in spans if s.name == "predictd.batch"]

    def one_trace_per_sampled_call():
        traces = {s.trace_id.hex() for s in spans}
        assert traces == set(callers), \
            f"{len(traces)} traces for {len(callers)} sampled calls (unsampled ones traced?)"
        assert len(calls) == want, f"{len(calls)} call spans for {want} calls"
    check(f"{protocol}: one trace per sampled call, the caller's trace id; none for unsampled",
          one_trace_per_sampled_call)

    def under_the_callers_span():
        for span in calls:
            assert span.parent_span_id.hex() == callers[span.trace_id.hex()], span.name
            assert span.kind == 2, f"kind {span.kind}, not SERVER"
            assert span.end_time_unix_nano > span.start_time_unix_nano
        names = {s.name for s in calls}
        expected = ("inference.GRPCInferenceService/ModelInfer" if protocol == "grpc"
                    else "POST /v2/models/{model}/infer")
        assert names == {expected}, names
        states = sorted(s.trace_state for s in calls if s.trace_state)
        assert states == [f"check=n{i}" for i in range(SAMPLED)], states
    check(f"{protocol}: call spans are the server side of the caller's span, tracestate kept",
          under_the_callers_span)

    def queue_spans():
        by_id = {s.span_id: s for s in calls}
        for span in queues:
            parent = by_id[span.parent_span_id]
            assert parent.trace_id == span.trace_id
            attrs = {kv.key: kv.value for kv in span.attributes}
            assert attrs["predictd.model"].string_value == "linear"
            assert attrs["predictd.model_version"].int_value == 1
            assert attrs["predictd.rows"].int_value == 1
        assert len(queues) == want
    check(f"{protocol}: each call's queue wait is a span under it, with model, version, rows",
          queue_spans)

    def batch_links():
        by_id = {s.span_id: s for s in calls}
        linked = []
        for batch in batches:
            assert batch.parent_span_id in by_id, "a batch span is under one of its calls"
            for link in batch.links:
                assert by_id[link.span_id].trace_id == link.trace_id
                linked.append(link.span_id)
        assert sorted(linked) == sorted(by_id), "every call linked from exactly one batch"
        together_batches = [b for b in batches if len(b.links) > 1]
        assert together_batches, "the calls sent together share a batch span"
        assert all(b.trace_id.hex() in together for b in together_batches)
    check(f"{protocol}: batch spans link every call batched together", batch_links)

    def resource():
        assert received.services == {"predictd"}, received.services
    check(f"{protocol}: the resource names the service", resource)

    if protocol == "grpc":
        receiver.stop(0)
    else:
        receiver.shutdown()
    sys.exit(1 if RESULTS["failed"] else 0)


if __name__ == "__main__":
    main()
