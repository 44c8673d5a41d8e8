"""Checks predictd with the unmodified Triton clients (tritonclient grpc and http), as a KServe v2 /
Triton user would call it, against the onnxruntime outputs stored in each reference.json.

Usage: python triton_check.py grpc|http ADDR REFERENCE.json...

Prints "ok - ..." or "not ok - ...: why" per check; exits 1 if any check failed.
"""

import json
import queue
import urllib.error
import sys
import traceback

import numpy as np

RTOL, ATOL = 1e-4, 1e-5
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
          "BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "FP16": np.float16}
RESULTS = {"passed": 0, "failed": 0}


def report(what, error=None):
    if error is None:
        print(f"ok - {what}")
        RESULTS["passed"] += 1
    else:
        detail = " ".join(str(error).split())[:400]
        print(f"not ok - {what}: {detail}")
        RESULTS["failed"] += 1


def check(what, fn, *args):
    """Runs FN(*ARGS); an exception or a false assertion fails the check."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
        if not str(e):
            e = traceback.format_exc().strip().splitlines()[-1]
        report(what, e)
    else:
        report(what)


def load_reference(path):
    with open(path) as f:
        ref = json.load(f)
    arrays = lambda part: {
        name: np.array(t["data"], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
        for name, t in ref[part].items()
    }
    ref["input_arrays"] = arrays("inputs")
    ref["output_arrays"] = arrays("outputs")
    return ref


def assert_matches(name, got, want):
    assert got is not None, f"output {name!r} missing"
    assert got.shape == want.shape, f"output {name!r}: shape {got.shape}, want {want.shape}"
    assert got.dtype == want.dtype, f"output {name!r}: dtype {got.dtype}, want {want.dtype}"
    if np.issubdtype(want.dtype, np.floating):
        bad = ~np.isclose(got, want, rtol=RTOL, atol=ATOL)
        assert not bad.any(), f"output {name!r}: {bad.sum()} values differ, first at {np.argwhere(bad)[0]}: {got[bad][0]} vs {want[bad][0]}"
    else:
        assert (got == want).all(), f"output {name!r}: {got.ravel()[:8]} vs {want.ravel()[:8]}"


def expect_error(call, status, *fragments):
    """CALL() must raise InferenceServerException with STATUS and every fragment in its message."""
    from tritonclient.utils import InferenceServerException

    try:
        call()
    except InferenceServerException as e:
        assert status in str(e.status()), f"status {e.status()}, want {status}: {e.message()}"
        for fragment in fragments:
            assert fragment in e.message(), f"message lacks {fragment!r}: {e.message()}"
        return
    raise AssertionError(f"no error; want {status}")


# ------------------------------------------------------------------------------------ gRPC

def grpc_inputs(ref, rows=None):
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, array in ref["input_arrays"].items():
        if rows is not None:
            array = array[rows]
        t = grpcclient.InferInput(name, list(array.shape), ref["inputs"][name]["dtype"])
        t.set_data_from_numpy(array)
        inputs.append(t)
    return inputs


def grpc_suite(addr, references):
    import grpc
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.service_pb2 as service_pb2
    import tritonclient.grpc.service_pb2_grpc as service_pb2_grpc

    client = grpcclient.InferenceServerClient(addr)
    check("grpc: server live", lambda: _true(client.is_server_live()))
    check("grpc: server ready", lambda: _true(client.is_server_ready()))

    def server_metadata():
        meta = client.get_server_metadata()
        assert meta.name == "predictd", meta
        assert "statistics" in meta.extensions, meta.extensions
    check("grpc: server metadata names predictd and its extensions", server_metadata)

    def index():
        names = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
        missing = {r["model"] for r in references} - names
        assert not missing, f"not READY in the index: {missing}"
    check("grpc: repository index lists every model READY", index)

    for ref in references:
        model = ref["model"]
        check(f"grpc: {model} ready", lambda: _true(client.is_model_ready(model)))

        def metadata():
            meta = client.get_model_metadata(model)
            got = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
            for name, t in ref["inputs"].items():
                assert name in got, f"input {name} missing from {got}"
                assert got[name][0] == t["dtype"], f"{name}: {got[name][0]} vs {t['dtype']}"
                assert len(got[name][1]) == len(t["shape"]), f"{name}: rank of {got[name][1]}"
            assert {t.name for t in meta.outputs} >= set(ref["outputs"]), meta.outputs
        check(f"grpc: {model} metadata lists its inputs and outputs", metadata)

        def config():
            cfg = client.get_model_config(model).config
            assert cfg.name == model, cfg.name
            assert cfg.max_batch_size > 0, f"max_batch_size {cfg.max_batch_size}"
            assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching", cfg
            for i in cfg.input:
                want = ref["inputs"][i.name]["shape"][1:]
                assert list(i.dims) == want, f"{i.name}: dims {list(i.dims)}, want {want}"
        check(f"grpc: {model} config: batching, dims without the batch dimension", config)

        def infer_all():
            result = client.infer(model, grpc_inputs(ref), request_id="ref-1")
            assert result.get_response().id == "ref-1", result.get_response().id
            for name, want in ref["output_arrays"].items():
                assert_matches(name, result.as_numpy(name), want)
        check(f"grpc: {model} infer (raw inputs) matches onnxruntime", infer_all)

        def infer_one_output():
            name = sorted(ref["outputs"])[-1]
            result = client.infer(model, grpc_inputs(ref, rows=slice(2, 3)),
                                  outputs=[grpcclient.InferRequestedOutput(name)])
            names = [o.name for o in result.get_response().outputs]
            assert names == [name], names
            assert_matches(name, result.as_numpy(name), ref["output_arrays"][name][2:3])
        check(f"grpc: {model} infer of one row, one requested output", infer_one_output)

    # Typed `contents` rather than raw bytes: tritonclient always sends raw, so use its stubs.
    ref = references[0]
    model = ref["model"]

    def typed_contents():
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(addr))
        request = service_pb2.ModelInferRequest(model_name=model, id="typed")
        for name, array in ref["input_arrays"].items():
            t = request.inputs.add(name=name, datatype=ref["inputs"][name]["dtype"],
                                   shape=list(array.shape))
            assert array.dtype == np.float32, "typed check written for FP32 inputs"
            t.contents.fp32_contents.extend(array.ravel().tolist())
        reply = stub.ModelInfer(request, timeout=30)
        assert reply.id == "typed"
        for i, out in enumerate(reply.outputs):
            want = ref["output_arrays"][out.name]
            got = np.frombuffer(reply.raw_output_contents[i], dtype=want.dtype).reshape(out.shape)
            assert_matches(out.name, got, want)
    check(f"grpc: {model} infer with typed contents (fp32_contents) matches", typed_contents)

    # A stream with a bad message between two good ones: an error in the stream, the rest answered.
    def stream():
        replies = queue.Queue()
        client.start_stream(callback=lambda result, error: replies.put((result, error)))
        try:
            client.async_stream_infer(model, grpc_inputs(ref, rows=slice(0, 1)), request_id="s1")
            input_name, array = next(iter(ref["input_arrays"].items()))
            bad = grpcclient.InferInput(input_name, [1, array.shape[1] + 1],
                                        ref["inputs"][input_name]["dtype"])
            bad.set_data_from_numpy(np.zeros((1, array.shape[1] + 1), dtype=array.dtype))
            client.async_stream_infer(model, [bad], request_id="s2")
            client.async_stream_infer(model, grpc_inputs(ref, rows=slice(1, 2)), request_id="s3")
            got = [replies.get(timeout=30) for _ in range(3)]
        finally:
            client.stop_stream()
        (r1, e1), (r2, e2), (r3, e3) = got
        assert e1 is None and e3 is None, (e1, e3)
        assert r1.get_response().id == "s1" and r3.get_response().id == "s3"
        for name, want in ref["output_arrays"].items():
            assert_matches(name, r1.as_numpy(name), want[0:1])
            assert_matches(name, r3.as_numpy(name), want[1:2])
        assert r2 is None and e2 is not None, (r2, e2)
        for fragment in (model, f"'{input_name}'"):
            assert fragment in e2.message(), f"stream error lacks {fragment!r}: {e2.message()}"
    check(f"grpc: {model} stream: a bad message gets an error, the others their rows", stream)

    def statistics():
        stats = client.get_inference_statistics(model).model_stats
        assert len(stats) >= 1, stats
        s = stats[-1]
        assert s.name == model
        assert s.inference_stats.success.count >= 4, s.inference_stats.success
        assert s.inference_stats.success.ns > 0, s.inference_stats.success
        assert s.inference_stats.queue.count >= s.inference_stats.success.count, s.inference_stats
        assert s.inference_stats.compute_infer.ns > 0, s.inference_stats.compute_infer
        assert s.inference_count >= s.inference_stats.success.count, s
        assert s.execution_count >= 1 and s.last_inference > 0, s
    check(f"grpc: {model} statistics count the requests above", statistics)

    check("grpc: unknown model is NOT_FOUND",
          lambda: expect_error(lambda: client.infer("no_such_model", grpc_inputs(ref)),
                               "NOT_FOUND", "no_such_model"))

    def wrong_shape():
        name, array = next(iter(ref["input_arrays"].items()))
        t = grpcclient.InferInput(name, [1, array.shape[1] - 1], ref["inputs"][name]["dtype"])
        t.set_data_from_numpy(np.zeros((1, array.shape[1] - 1), dtype=array.dtype))
        expect_error(lambda: client.infer(model, [t]), "INVALID_ARGUMENT", model, f"'{name}'")
    check(f"grpc: wrong shape is INVALID_ARGUMENT naming {model} and the input", wrong_shape)

    def wrong_dtype():
        name, array = next(iter(ref["input_arrays"].items()))
        t = grpcclient.InferInput(name, list(array.shape), "FP64")
        t.set_data_from_numpy(array.astype(np.float64))
        expect_error(lambda: client.infer(model, [t]), "INVALID_ARGUMENT", "FP32", "FP64")
    check("grpc: wrong datatype is INVALID_ARGUMENT naming both", wrong_dtype)

    check("grpc: unimplemented RPCs say so",
          lambda: expect_error(lambda: client.get_cuda_shared_memory_status(), "UNIMPLEMENTED",
                               "predictd"))
    check("grpc: load_model needs explicit model control, and says so",
          lambda: expect_error(lambda: client.load_model(model), "FAILED_PRECONDITION",
                               "--model-control explicit"))
    check("grpc: server still ready after the errors", lambda: _true(client.is_server_ready()))


# ------------------------------------------------------------------------------------ HTTP

def http_inputs(ref, rows=None, binary=True):
    import tritonclient.http as httpclient

    inputs = []
    for name, array in ref["input_arrays"].items():
        if rows is not None:
            array = array[rows]
        t = httpclient.InferInput(name, list(array.shape), ref["inputs"][name]["dtype"])
        t.set_data_from_numpy(array, binary_data=binary)
        inputs.append(t)
    return inputs


def http_suite(addr, references):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(addr)
    check("http: server live", lambda: _true(client.is_server_live()))
    check("http: server ready", lambda: _true(client.is_server_ready()))

    def server_metadata():
        meta = client.get_server_metadata()
        assert meta["name"] == "predictd", meta
        assert "binary_tensor_data" in meta["extensions"], meta
    check("http: server metadata names predictd and binary_tensor_data", server_metadata)

    def index():
        names = {m["name"] for m in client.get_model_repository_index() if m["state"] == "READY"}
        missing = {r["model"] for r in references} - names
        assert not missing, f"not READY in the index: {missing}"
    check("http: repository index lists every model READY", index)

    for ref in references:
        model = ref["model"]
        check(f"http: {model} ready", lambda: _true(client.is_model_ready(model)))

        def metadata():
            meta = client.get_model_metadata(model)
            got = {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]}
            for name, t in ref["inputs"].items():
                assert got[name][0] == t["dtype"], f"{name}: {got[name]} vs {t['dtype']}"
                assert len(got[name][1]) == len(t["shape"]), f"{name}: rank of {got[name][1]}"
            assert {t["name"] for t in meta["outputs"]} >= set(ref["outputs"]), meta
        check(f"http: {model} metadata lists its inputs and outputs", metadata)

        def config():
            cfg = client.get_model_config(model)
            assert cfg["name"] == model and cfg["max_batch_size"] > 0, cfg
            assert "dynamic_batching" in cfg, cfg
            for i in cfg["input"]:
                want = ref["inputs"][i["name"]]["shape"][1:]
                assert i["dims"] == want, f"{i['name']}: dims {i['dims']}, want {want}"
        check(f"http: {model} config: batching, dims without the batch dimension", config)

        def infer_binary():
            result = client.infer(model, http_inputs(ref), request_id="h1")
            assert result.get_response()["id"] == "h1", result.get_response()
            for name, want in ref["output_arrays"].items():
                assert_matches(name, result.as_numpy(name), want)
        check(f"http: {model} infer, binary tensors both ways, matches onnxruntime", infer_binary)

        def infer_json():
            outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ref["outputs"]]
            result = client.infer(model, http_inputs(ref, binary=False), outputs=outputs)
            for out in result.get_response()["outputs"]:
                assert "data" in out, f"output {out['name']} not sent as JSON data"
            for name, want in ref["output_arrays"].items():
                assert_matches(name, result.as_numpy(name), want)
        check(f"http: {model} infer, JSON tensors both ways, matches onnxruntime", infer_json)

        def infer_compressed():
            for algorithm in ("gzip", "deflate"):
                result = client.infer(model, http_inputs(ref), request_compression_algorithm=algorithm)
                for name, want in ref["output_arrays"].items():
                    assert_matches(name, result.as_numpy(name), want)
        check(f"http: {model} infer with gzip and deflate request bodies, matches onnxruntime",
              infer_compressed)

    ref = references[0]
    model = ref["model"]

    def mixed():
        name = sorted(ref["outputs"])[0]
        result = client.infer(model, http_inputs(ref, rows=slice(3, 5), binary=False),
                              outputs=[httpclient.InferRequestedOutput(name, binary_data=True)])
        names = [o["name"] for o in result.get_response()["outputs"]]
        assert names == [name], names
        assert_matches(name, result.as_numpy(name), ref["output_arrays"][name][3:5])
    check(f"http: {model} JSON inputs, one requested binary output", mixed)

    def statistics():
        s = client.get_inference_statistics(model)["model_stats"][-1]
        assert s["name"] == model
        assert s["inference_stats"]["success"]["count"] >= 3, s
        assert s["inference_stats"]["compute_infer"]["ns"] > 0, s
        assert isinstance(s["inference_stats"]["queue"]["count"], int), s
    check(f"http: {model} statistics count the requests above", statistics)

    check("http: unknown model is 404",
          lambda: expect_error(lambda: client.infer("no_such_model", http_inputs(ref)),
                               "404", "no_such_model"))

    def wrong_shape():
        name, array = next(iter(ref["input_arrays"].items()))
        t = httpclient.InferInput(name, [1, array.shape[1] - 1], ref["inputs"][name]["dtype"])
        t.set_data_from_numpy(np.zeros((1, array.shape[1] - 1), dtype=array.dtype))
        expect_error(lambda: client.infer(model, [t]), "400", model, f"'{name}'")
    check(f"http: wrong shape is 400 naming {model} and the input", wrong_shape)

    def bad_json():
        import urllib.request
        req = urllib.request.Request(f"http://{addr}/v2/models/{model}/infer", data=b"{not json",
                                     method="POST")
        try:
            urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
            assert e.code == 400 and "error" in body, (e.code, body)
            return
        raise AssertionError("no error")
    check("http: a body that is not JSON is 400 with an error message", bad_json)
    check("http: server still ready after the errors", lambda: _true(client.is_server_ready()))


def _true(value):
    assert value is True, f"got {value!r}"


def main(argv):
    protocol, addr, *paths = argv
    references = [load_reference(p) for p in paths]
    if protocol == "grpc":
        grpc_suite(addr, references)
    elif protocol == "http":
        http_suite(addr, references)
    else:
        raise SystemExit(f"unknown protocol {protocol}")
    return 0 if RESULTS["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
