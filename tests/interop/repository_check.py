"""Checks predictd's model repository API with the unmodified Triton clients: load, unload,
the repository index, a config override and a file upload, as tritonclient's users call them.

Usage: python repository_check.py grpc|http ADDR REPOSITORY
The server runs --model-control explicit on REPOSITORY, which holds `linear` (a copy of
diabetes_linear, loaded at start-up) and `wine` (a copy of wine_forest, not loaded), each with
its reference.json. Prints "ok - ..." / "not ok - ...: why" per check; exits 1 if any failed.
"""

import os
import sys

from triton_check import (RESULTS, assert_matches, check, expect_error, grpc_inputs,
                          http_inputs, load_reference)


def main(argv):
    protocol, addr, repo = argv
    if protocol == "grpc":
        import tritonclient.grpc as client_module
        inputs = grpc_inputs
    else:
        import tritonclient.http as client_module
        inputs = http_inputs
    client = client_module.InferenceServerClient(addr)
    refs = {m: load_reference(os.path.join(repo, m, "reference.json")) for m in ("linear", "wine")}
    p = f"{protocol}:"

    def index():
        listed = client.get_model_repository_index()
        entries = listed.models if protocol == "grpc" else listed
        get = (lambda e, k: getattr(e, k)) if protocol == "grpc" else (lambda e, k: e.get(k, ""))
        return {get(e, "name"): (get(e, "state"), get(e, "reason")) for e in entries}

    def answers(model):
        ref = refs[model]
        result = client.infer(model, inputs(ref))
        for name, want in ref["output_arrays"].items():
            assert_matches(name, result.as_numpy(name), want)

    def start_up_set():
        listed = index()
        assert listed.get("linear", ("",))[0] == "READY", listed
        assert listed.get("wine") == ("UNAVAILABLE", "unloaded"), listed
        assert client.is_model_ready("linear") and not client.is_model_ready("wine")
    check(f"{p} the index shows the start-up model READY and the other UNAVAILABLE", start_up_set)

    def extensions():
        metadata = client.get_server_metadata()
        found = metadata.extensions if protocol == "grpc" else metadata["extensions"]
        assert "model_repository" in found, found
    check(f"{p} server metadata lists the model_repository extension", extensions)

    def load():
        client.load_model("wine")
        assert client.is_model_ready("wine")
        answers("wine")
    check(f"{p} load_model loads wine, which answers as onnxruntime does", load)

    def config_override():
        client.load_model("wine", config='{"max_batch_size": 4}')
        config = client.get_model_config("wine")
        size = config.config.max_batch_size if protocol == "grpc" else config["max_batch_size"]
        assert size == 4, size
        answers("wine")
    check(f"{p} load_model with a config override applies it", config_override)

    model_file = os.path.join(repo, "linear", "1", "model.onnx")
    with open(model_file, "rb") as f:
        linear_bytes = f.read()

    def upload():
        client.load_model("linear", config="{}", files={"file:1/model.onnx": linear_bytes})
        assert client.is_model_ready("linear")
        answers("linear")
    check(f"{p} load_model with a file: upload serves the uploaded model", upload)

    def bad_upload():
        expect_error(lambda: client.load_model("linear", config="{}",
                                               files={"file:1/model.onnx": b"not onnx"}),
                     "INVALID_ARG" if protocol == "grpc" else "400", "file:1/model.onnx", "linear")
        assert client.is_model_ready("linear")
        answers("linear")
    check(f"{p} an upload that is not ONNX is refused by name; the old version serves on",
          bad_upload)

    def unload():
        client.unload_model("wine")
        assert not client.is_model_ready("wine")
        assert index()["wine"][0] == "UNAVAILABLE", index()
        expect_error(lambda: answers("wine"), "UNAVAILABLE" if protocol == "grpc" else "503",
                     "unloaded")
    check(f"{p} unload_model unloads wine; its requests are refused", unload)

    check(f"{p} load_model of an unknown name is NOT_FOUND",
          lambda: expect_error(lambda: client.load_model("no_such_model"),
                               "NOT_FOUND" if protocol == "grpc" else "404", "no_such_model"))
    check(f"{p} unload_model of an unknown name is NOT_FOUND",
          lambda: expect_error(lambda: client.unload_model("no_such_model"),
                               "NOT_FOUND" if protocol == "grpc" else "404", "no_such_model"))
    check(f"{p} a name reaching outside the repository is refused",
          lambda: expect_error(lambda: client.load_model("..%2Flinear" if protocol == "http"
                                                         else "../linear"),
                               "INVALID_ARG" if protocol == "grpc" else "400", "not a model name"))
    check(f"{p} linear still serves after the errors", lambda: answers("linear"))
    return 0 if RESULTS["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
