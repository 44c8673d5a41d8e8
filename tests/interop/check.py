"""Helpers for tests/interop/run.sh: build grpcurl requests and check grpcurl's JSON replies.

Usage: python check.py SUBCOMMAND ARGS...   (see the sub-command functions below)

A check prints nothing and exits 0 when it holds; otherwise it prints what differs and exits 1.
Only the standard library is needed, except `v1-descriptor` (protobuf, from requirements.txt).
"""

import base64
import json
import math
import re
import socket
import sys

ABS_TOL, REL_TOL = 1e-5, 1e-4

# reference.json dtype -> the typed field of predictd.v1.Tensor in protobuf's JSON mapping.
TYPED_FIELDS = {
    "FP32": "floatValues", "FP64": "doubleValues", "INT32": "int32Values",
    "INT64": "int64Values", "UINT32": "uint32Values", "UINT64": "uint64Values",
    "BOOL": "boolValues", "STRING": "stringValues",
}
FLOATS = {"FP32", "FP64"}


class Failed(Exception):
    """A check that does not hold; its message says why."""


def load(path):
    """The JSON in PATH (a grpcurl reply); a reply that is no JSON (e.g. an error) fails."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError:
        raise Failed(f"not a JSON reply: {text[:300]!r}") from None


def ports(count):
    """Print COUNT distinct free TCP ports on 127.0.0.1 (the OS picks them: bind to port 0)."""
    socks = [socket.socket() for _ in range(int(count))]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def request(reference, request_id="interop"):
    """Print a Predict request (typed JSON values, latest version) for REFERENCE.json's inputs."""
    ref = load(reference)
    inputs = {
        name: {"dtype": t["dtype"], "shape": t["shape"], TYPED_FIELDS[t["dtype"]]: t["data"]}
        for name, t in ref["inputs"].items()
    }
    print(json.dumps({"model": ref["model"], "id": request_id, "inputs": inputs}))


def close(got, want):
    return math.isclose(got, want, rel_tol=0, abs_tol=ABS_TOL + REL_TOL * abs(want))


def compare_tensor(name, got, want):
    if got.get("dtype") != want["dtype"]:
        raise Failed(f"output {name!r}: dtype {got.get('dtype')}, want {want['dtype']}")
    shape = [int(d) for d in got.get("shape", [])]
    if shape != want["shape"]:
        raise Failed(f"output {name!r}: shape {shape}, want {want['shape']}")
    field = TYPED_FIELDS[want["dtype"]]
    values = got.get(field, [])
    if len(values) != len(want["data"]):
        raise Failed(f"output {name!r}: {len(values)} values in {field}, want {len(want['data'])}")
    for i, (g, w) in enumerate(zip(values, want["data"])):
        if want["dtype"] in FLOATS:
            ok = close(float(g), float(w))
        else:
            ok = (int(g) if want["dtype"] not in ("BOOL", "STRING") else g) == w
        if not ok:
            raise Failed(f"output {name!r}[{i}] (flat): got {g}, want {w}")


def compare(reference, reply, request_id="interop"):
    """Check a grpcurl Predict REPLY against REFERENCE.json: model, version, id and all outputs."""
    ref, got = load(reference), load(reply)
    for key, want in (("model", ref["model"]), ("version", ref["version"]), ("id", request_id)):
        if got.get(key) != want:
            raise Failed(f"{key} is {got.get(key)!r}, want {want!r}")
    outputs = got.get("outputs", {})
    if sorted(outputs) != sorted(ref["outputs"]):
        raise Failed(f"outputs {sorted(outputs)}, want {sorted(ref['outputs'])}")
    for name, want in ref["outputs"].items():
        compare_tensor(name, outputs[name], want)


def example(readme, name):
    """The code between the README's interop:NAME:start/end markers, unfenced."""
    text = open(readme).read()
    match = re.search(rf"<!-- interop:{name}:start -->\n(.*?)<!-- interop:{name}:end -->", text, re.S)
    if not match:
        raise Failed(f"README has no interop:{name} markers")
    lines = match.group(1).strip().splitlines()
    if not (lines and lines[0].startswith("```") and lines[-1].strip() == "```"):
        raise Failed(f"the README's {name} is not one ``` fenced block")
    return "\n".join(lines[1:-1])


def readme_example(readme, name="predict-example"):
    """Print the shell command between the README's interop:NAME markers, unfenced."""
    print(example(readme, name))


def check_row0(reference, label, probabilities):
    """LABEL and PROBABILITIES (flat lists) are REFERENCE.json's row 0 (wine_forest)."""
    ref = load(reference)["outputs"]
    if [int(v) for v in label] != ref["label"]["data"][:1]:
        raise Failed(f"label {label}, want {ref['label']['data'][:1]}")
    classes = ref["probabilities"]["shape"][1]
    want = ref["probabilities"]["data"][:classes]
    got = [float(v) for v in probabilities]
    if len(got) != classes or any(abs(g - w) > 1e-5 for g, w in zip(got, want)):
        raise Failed(f"probabilities {got}, want {want} (within 1e-5)")


def readme_rest_reply(reference, reply):
    """Check the README's curl example reply (KServe v2 JSON): REFERENCE.json's row 0."""
    outputs = {o["name"]: o for o in load(reply).get("outputs", [])}
    check_row0(reference, outputs.get("label", {}).get("data", []),
               outputs.get("probabilities", {}).get("data", []))


def readme_python(readme, grpc_addr, reference):
    """Run the README's tritonclient example against GRPC_ADDR; its `result` is row 0."""
    code = example(readme, "tritonclient-example").replace("localhost:8001", grpc_addr)
    namespace = {}
    exec(compile(code, "README tritonclient-example", "exec"), namespace)
    result = namespace["result"]
    check_row0(reference, result.as_numpy("label").ravel().tolist(),
               result.as_numpy("probabilities").ravel().tolist())


def readme_reply(reference, reply):
    """Check the README example's reply: label and probabilities of REFERENCE.json's row 0."""
    outputs = load(reply).get("outputs", {})
    check_row0(reference, outputs.get("label", {}).get("int64Values", []),
               outputs.get("probabilities", {}).get("floatValues", []))


def list_models(reply, *specs):
    """Check ListModels: each SPEC is NAME (some version READY) or NAME=V1,V2 (exactly these
    versions, in this order, all READY)."""
    models = {m["name"]: m.get("versions", []) for m in load(reply).get("models", [])}
    for spec in specs:
        name, _, versions = spec.partition("=")
        if name not in models:
            raise Failed(f"model {name!r} not listed (listed: {sorted(models)})")
        got = [(v.get("version"), v.get("state")) for v in models[name]]
        want = [(v, "READY") for v in versions.split(",")] if versions else None
        if want is not None and got != want:
            raise Failed(f"{name}: versions {got}, want {want}")
        if not any(state == "READY" for _, state in got):
            raise Failed(f"{name}: no READY version: {got} {models[name]}")


def metadata(reply, tensor, shape):
    """Check GetModelMetadata: TENSOR (an input or output) has SHAPE, e.g. -1,13."""
    meta = load(reply)
    for t in meta.get("inputs", []) + meta.get("outputs", []):
        if t.get("name") == tensor:
            got = [int(d) for d in t.get("shape", [])]
            want = [int(d) for d in shape.split(",")]
            if got != want:
                raise Failed(f"{tensor}: shape {got}, want {want}")
            return
    raise Failed(f"no tensor {tensor!r} in the metadata")


def leading_comment(proto, declaration):
    """The // comment lines right above DECLARATION (e.g. 'message Tensor') in the .proto."""
    lines = open(proto).read().splitlines()
    start = re.compile(re.escape(declaration) + r"(\W|$)")
    index = next((i for i, l in enumerate(lines) if start.match(l.strip())), None)
    if index is None:
        raise Failed(f"{declaration!r} not found in {proto}")
    comment = []
    while index > 0 and lines[index - 1].strip().startswith("//"):
        index -= 1
        comment.insert(0, lines[index].strip()[2:].strip())
    if not comment:
        raise Failed(f"{declaration!r} has no leading comment in {proto}")
    return comment


def describe(proto, declaration, output):
    """Check grpcurl describe OUTPUT shows DECLARATION's leading comment from the .proto."""
    text = open(output).read()
    for line in leading_comment(proto, declaration):
        if line not in text:
            raise Failed(f"describe output lacks the comment line {line!r}")


def v1_descriptor(proto, declaration, reply):
    """Check a reflection v1 file_containing_symbol REPLY: its file descriptors decode and carry
    DECLARATION's leading comment (source info), as `describe` needs."""
    from google.protobuf import descriptor_pb2

    files = load(reply).get("fileDescriptorResponse", {}).get("fileDescriptorProto", [])
    if not files:
        raise Failed(f"no file descriptors in the reply: {open(reply).read()[:300]}")
    comments = []
    for encoded in files:
        fd = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(encoded))
        comments += [loc.leading_comments for loc in fd.source_code_info.location]
    want = leading_comment(proto, declaration)
    if not any(all(line in c for line in want) for c in comments):
        raise Failed(f"no leading comment {want[0]!r}... in {len(files)} descriptor(s)")


COMMANDS = {
    "ports": ports, "request": request, "compare": compare, "readme-example": readme_example,
    "readme-reply": readme_reply, "list-models": list_models, "metadata": metadata,
    "describe": describe, "v1-descriptor": v1_descriptor,
    "readme-rest-reply": readme_rest_reply, "readme-python": readme_python,
}

if __name__ == "__main__":
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except Failed as failure:
        print(failure)
        sys.exit(1)
    except Exception as error:  # a reply of an unexpected form: report it on one line
        print(f"{type(error).__name__}: {error}")
        sys.exit(1)
