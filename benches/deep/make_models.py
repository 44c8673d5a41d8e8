"""Export real deep-learning models (PyTorch CNNs and a BERT encoder) to ONNX,
with onnxruntime reference outputs, for issue 24 (the engine at onnxruntime
speed on PyTorch CNNs and transformers).

How to run (Python 3.11; CPU only; only PyPI is needed):

    python3.11 -m venv target/deep-venv
    target/deep-venv/bin/pip install -r benches/deep/requirements.txt
    target/deep-venv/bin/python benches/deep/make_models.py tests/deep --small
    target/deep-venv/bin/python benches/deep/make_models.py target/deep-models

OUT_DIR is written as a predictd model repository: ``OUT_DIR/<name>/1/model.onnx``
and ``OUT_DIR/<name>/reference.json`` (the format of ``models/README.md``: flat
row-major data, FP32 as the shortest decimal that reads back as the same
float32, dtype names FP32 / INT64). Reference outputs are onnxruntime's
(CPUExecutionProvider, one thread).

Full-size set (default; nothing is downloaded, every weight is random):

* resnet18, resnet50, mobilenet_v2 -- torchvision, ``weights=None``, random
  init after ``torch.manual_seed(0)``, ``eval()``. Before export every
  BatchNorm's running statistics are set from 32 standard-normal images
  (train-mode forward passes, no gradients; ``calibrate_batchnorm``), so
  activations keep a trained net's O(1) scale and the folded BN is not an
  identity: at plain random init MobileNetV2's logits are ~1e-7, which would
  make any tolerance meaningless. (The small CNNs get the same.)
  Input ``image`` FP32 [N,3,224,224]; output ``logits`` FP32 [N,1000].
* bert -- ``transformers.BertModel`` from a MiniLM-L6-shaped ``BertConfig``
  (vocab 30522, hidden 384, 6 layers, 12 heads, intermediate 1536, 512
  positions), no pooler, default (sdpa) attention, random init after
  ``torch.manual_seed(0)``. Inputs ``input_ids`` and ``attention_mask`` INT64
  [N,S]; ``token_type_ids`` is NOT an input (BERT then uses its all-zero
  buffer). Output ``last_hidden_state`` FP32 [N,S,384]. N and S are symbolic,
  so one file serves 128 and 512 tokens (checked below at both).
* bert_int8 -- ``onnxruntime.quantization.quantize_dynamic(bert,
  weight_type=QInt8)`` with its defaults (per-tensor, no reduce_range), as CPU
  users deploy it: int8 weights, activations quantized to uint8 at run time
  (DynamicQuantizeLinear + MatMulInteger).

References: batch 1; images standard normal; token ids uniform in [0, vocab);
BERT at 128 tokens, the last 8 positions masked out (attention_mask 0).

``--small`` set (for tests/deep and ``cargo test``): the same export path and
operator mix at tiny sizes, references at batch 2:

* resnet_small -- a ResNet written here with torchvision's layer structure
  (conv7x7 s2 + BN + ReLU + maxpool, BasicBlocks with a 1x1-conv+BN
  downsample where the shape changes, adaptive avg pool, flatten, linear):
  widths 8/16/32/64, one BasicBlock per stage (ResNet-10 layout; two per
  stage, as in resnet18, would make the file ~0.7 MB), 10 classes, input
  [N,3,64,64].
* mobilenet_small -- ``torchvision.models.mobilenet_v2(width_mult=0.1,
  num_classes=10)`` (channels round up to multiples of 8; the last 1x1 conv
  stays 1280 wide), input [N,3,64,64].
* bert_small -- BertConfig(vocab 1000, hidden 32, 2 layers, 2 heads,
  intermediate 64, 128 positions), seq 16; row 0 has its last 3 positions
  masked, row 1 its last 7.
* bert_small_int8 -- quantize_dynamic of bert_small, as above.

Exporters. The CNNs use the classic TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``) at opset 17: the path most ONNX CNNs
in use today came from (Conv with BN folded in, Clip, GlobalAveragePool,
Flatten, Gemm). torch 2.14's default dynamo exporter cannot emit opset 17 (its
lowest is 18; its down-conversion fails on ReduceMean's axes input) and writes
weights to a side file unless told not to.

BERT uses the dynamo exporter (torch 2.14's default: ``dynamo=True``, opset 18,
IR 10, one file), because tract cannot load the TorchScript export of
transformers 5's BERT with both N and S symbolic: transformers 5 builds the
attention mask by advanced indexing (``attention_mask[batch_idx, kv_idx]``),
which the TorchScript exporter lowers to ``Flatten(axis=2)`` of the [N,S]
mask followed by a Gather, and tract-hir 0.23.9's Flatten refuses an input
with more than one symbolic dimension ("Failed analyse for node "/bert/Flatten"
Flatten: ... Can not compute a shape with square of symbols"). The dynamo
exporter lowers the same indexing to GatherND, which tract loads. onnxruntime
runs both. ``--bert-exporter torchscript`` writes the TorchScript variant
(opset 17) to reproduce that failure. Either way the BERT mask path traces to
Range/GatherElements/GatherND/Where/IsNaN ops, not the classic
``(1 - mask) * min`` of transformers 4: that is what users of transformers 5
get.

Checks (the script fails loudly otherwise): onnx.checker on every file;
onnxruntime vs torch's own outputs on the reference inputs and on a second
batch/sequence size (dynamic axes), |ort - torch| <= 1e-4 * max(1, |torch|)
elementwise for the fp32 models; for the int8 models the difference from the
fp32 torch model is measured and printed (and must stay under 0.5 absolute,
a sanity bound, on BERT's O(1) hidden states). In --small mode every
model.onnx and reference.json must be under 1 MB.

Determinism: fixed seeds, one thread for torch and onnxruntime; rerunning
rewrites the same files.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
import transformers  # noqa: E402
from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: E402
from torch import nn  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

VERSION = "1"
OPSET = 17  # TorchScript exporter
DYNAMO_OPSET = 18  # the dynamo exporter's lowest
FP32_RTOL = 1e-4
INT8_SANITY_ATOL = 0.5
SMALL_LIMIT = 1024 * 1024

DTYPE_NAMES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.int64): "INT64",
}

SUMMARY = []


def fail(msg):
    print("ERROR: " + msg, file=sys.stderr)
    sys.exit(1)


# --- reference.json formatting (as models/make_models.py; that script cannot be
# imported here, it needs scikit-learn and skl2onnx at import time) ----------


def f32_number(v):
    """Shortest decimal that parses back to the same float32 (as a Python float)."""
    v32 = np.float32(v)
    if not np.isfinite(v32):
        fail(f"non-finite value {v32} in reference data")
    s = np.format_float_positional(v32, unique=True, trim="-") if abs(v32) >= 1e-4 or v32 == 0 \
        else np.format_float_scientific(v32, unique=True, trim="-")
    out = float(s)
    if np.float32(s) != v32 or np.float32(out) != v32:
        fail(f"float32 {v32!r} does not round-trip through {s!r}")
    return out


def tensor_json(arr):
    arr = np.asarray(arr)
    if arr.dtype not in DTYPE_NAMES:
        fail(f"unsupported dtype {arr.dtype}")
    flat = arr.reshape(-1)
    if arr.dtype == np.float32:
        data = [f32_number(v) for v in flat]
    else:
        data = [int(v) for v in flat]
    return {"dtype": DTYPE_NAMES[arr.dtype], "shape": list(arr.shape), "data": data}


def format_reference(ref):
    """JSON with one line per tensor field (long data lists stay on one line)."""
    lines = ["{"]
    for key in ("model", "version", "producer"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(ref[key])},")
    for section in ("inputs", "outputs"):
        lines.append(f"  {json.dumps(section)}: {{")
        items = list(ref[section].items())
        for i, (tname, t) in enumerate(items):
            lines.append(f"    {json.dumps(tname)}: {{")
            lines.append(f"      \"dtype\": {json.dumps(t['dtype'])},")
            lines.append(f"      \"shape\": {json.dumps(t['shape'])},")
            lines.append(f"      \"data\": {json.dumps(t['data'])}")
            lines.append("    }" + ("," if i + 1 < len(items) else ""))
        lines.append("  }" + ("," if section == "inputs" else ""))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    if json.loads(text) != ref:
        fail(f"{ref['model']}: reference.json formatting does not round-trip")
    return text


# --- models -----------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 conv+BN, identity or 1x1 downsample."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """torchvision's ResNet layer structure at widths 8/16/32/64."""

    def __init__(self, widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1), num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        # torchvision's ResNet init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class BertHidden(nn.Module):
    """BertModel(input_ids, attention_mask) -> last_hidden_state."""

    def __init__(self, config):
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def bert_config(small):
    if small:
        return BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=128)
    return BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                      num_attention_heads=12, intermediate_size=1536,
                      max_position_embeddings=512)


def image_inputs(rng, batch, side):
    return {"image": rng.standard_normal((batch, 3, side, side)).astype(np.float32)}


def token_inputs(rng, vocab, batch, seq, masked):
    """Uniform ids in [0, vocab); row i has its last masked[i] positions masked out."""
    ids = rng.integers(0, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for row, m in enumerate(masked):
        if m:
            mask[row, -m:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def calibrate_batchnorm(module, side):
    """Set every BatchNorm's running statistics from 32 standard-normal images
    (train-mode forward passes without gradients), then eval()."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    module.train()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(4):
            module(torch.randn(8, 3, side, side, generator=gen))
    return module.eval()


def cnn_spec(name, build, side, batch):
    return {
        "name": name, "kind": "cnn", "exporter": "torchscript", "max_dims": {},
        "build": lambda: calibrate_batchnorm(build(), side),
        "input_names": ["image"], "output_names": ["logits"],
        "dynamic_axes": {"image": {0: "N"}, "logits": {0: "N"}},
        # Traced at batch 2 so no Reshape is baked to batch 1.
        "trace": lambda rng: image_inputs(rng, 2, side),
        "reference": lambda rng: image_inputs(rng, batch, side),
        # A second batch size, to check the symbolic batch axis.
        "other": lambda rng: image_inputs(rng, 3, side),
    }


def bert_spec(name, small, exporter):
    cfg = bert_config(small)
    vocab = cfg.vocab_size
    if small:
        trace = lambda rng: token_inputs(rng, vocab, 2, 16, [0, 4])  # noqa: E731
        reference = lambda rng: token_inputs(rng, vocab, 2, 16, [3, 7])  # noqa: E731
        other = lambda rng: token_inputs(rng, vocab, 3, 40, [0, 5, 20])  # noqa: E731
    else:
        trace = lambda rng: token_inputs(rng, vocab, 2, 128, [0, 8])  # noqa: E731
        reference = lambda rng: token_inputs(rng, vocab, 1, 128, [8])  # noqa: E731
        other = lambda rng: token_inputs(rng, vocab, 1, 512, [32])  # noqa: E731
    return {
        "name": name, "kind": "bert", "build": lambda: BertHidden(cfg),
        "exporter": exporter, "max_dims": {"S": cfg.max_position_embeddings},
        "input_names": ["input_ids", "attention_mask"],
        "output_names": ["last_hidden_state"],
        "dynamic_axes": {
            "input_ids": {0: "N", 1: "S"},
            "attention_mask": {0: "N", 1: "S"},
            "last_hidden_state": {0: "N", 1: "S"},
        },
        "trace": trace, "reference": reference, "other": other,
    }


def specs(small, bert_exporter):
    tv = torchvision.models
    if small:
        return [
            cnn_spec("resnet_small", lambda: SmallResNet(), 64, 2),
            cnn_spec("mobilenet_small",
                     lambda: tv.mobilenet_v2(weights=None, width_mult=0.1, num_classes=10), 64, 2),
            bert_spec("bert_small", True, bert_exporter),
        ]
    return [
        cnn_spec("resnet18", lambda: tv.resnet18(weights=None), 224, 1),
        cnn_spec("resnet50", lambda: tv.resnet50(weights=None), 224, 1),
        cnn_spec("mobilenet_v2", lambda: tv.mobilenet_v2(weights=None), 224, 1),
        bert_spec("bert", False, bert_exporter),
    ]


# --- export and checks ------------------------------------------------------


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def torch_run(module, inputs, names):
    with torch.no_grad():
        out = module(*[torch.from_numpy(inputs[n]) for n in names])
    return [out.numpy()]


def worst(got, want):
    """(max |got - want|, max |got - want| / max(1, |want|), index of the latter)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        fail(f"shape {got.shape} != {want.shape}")
    err = np.abs(got - want)
    scaled = err / np.maximum(1.0, np.abs(want))
    i = int(np.argmax(scaled))
    return float(err.max()), float(scaled.reshape(-1)[i]), i


def check_fp32(name, what, got, want):
    abs_err, rel_err, i = worst(got, want)
    if not rel_err <= FP32_RTOL:
        fail(f"{name} ({what}): onnxruntime differs from torch: element {i} "
             f"ort {np.asarray(got).reshape(-1)[i]!r} torch {np.asarray(want).reshape(-1)[i]!r} "
             f"(scaled error {rel_err:.3g} > {FP32_RTOL})")
    return abs_err, rel_err


def write_reference(out_dir, name, path, inputs):
    sess = session(path)
    in_names = [i.name for i in sess.get_inputs()]
    if sorted(in_names) != sorted(inputs):
        fail(f"{name}: model inputs {in_names} != {list(inputs)}")
    out_names = [o.name for o in sess.get_outputs()]
    outs = sess.run(out_names, inputs)
    ref = {
        "model": name,
        "version": VERSION,
        "producer": f"onnxruntime {ort.__version__}",
        "inputs": {k: tensor_json(inputs[k]) for k in in_names},
        "outputs": {k: tensor_json(v) for k, v in zip(out_names, outs)},
    }
    ref_path = os.path.join(out_dir, name, "reference.json")
    with open(ref_path, "w") as f:
        f.write(format_reference(ref))
    return outs, ref_path


def model_path(out_dir, name):
    d = os.path.join(out_dir, name, VERSION)
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, "model.onnx")


def strip_stack_traces(path):
    """Drop the dynamo exporter's per-node Python stack traces: they hold this
    checkout's absolute paths and this script's line numbers, so the file would
    change with where and from which revision it was made. The other node
    metadata (scopes, class hierarchy, FX node) stays."""
    model = onnx.load(path)
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    with open(path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))


def describe(path):
    m = onnx.load(path)
    ops = sorted({n.op_type for n in m.graph.node})
    return f"ir {m.ir_version}, opset {m.opset_import[0].version}, ops {' '.join(ops)}"


def export_fp32(out_dir, spec):
    name = spec["name"]
    torch.manual_seed(0)
    module = spec["build"]().eval()
    path = model_path(out_dir, name)
    trace = spec["trace"](np.random.default_rng(1))
    names = spec["input_names"]
    args = tuple(torch.from_numpy(trace[n]) for n in names)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # TracerWarnings (python bools from shapes) and the TorchScript exporter's
        # deprecation notice; the dynamic-axes checks below are what matters.
        warnings.simplefilter("ignore")
        if spec["exporter"] == "torchscript":
            torch.onnx.export(
                module, args, path, input_names=names, output_names=spec["output_names"],
                dynamic_axes=spec["dynamic_axes"], opset_version=OPSET,
                do_constant_folding=True, dynamo=False)
        else:
            dims = {}
            shapes = {n: {axis: dims.setdefault(sym, torch.export.Dim(sym, max=spec["max_dims"].get(sym)))
                          for axis, sym in spec["dynamic_axes"][n].items()} for n in names}
            torch.onnx.export(
                module, args, path, input_names=names, output_names=spec["output_names"],
                dynamic_shapes=shapes, opset_version=DYNAMO_OPSET, external_data=False,
                dynamo=True, verbose=False)
            strip_stack_traces(path)
    seconds = time.perf_counter() - started
    onnx.checker.check_model(path, full_check=True)

    ref_inputs = spec["reference"](np.random.default_rng(0))
    ort_outs, ref_path = write_reference(out_dir, name, path, ref_inputs)
    errs = check_fp32(name, "reference inputs", ort_outs[0], torch_run(module, ref_inputs, names)[0])

    other = spec["other"](np.random.default_rng(2))
    got = session(path).run(spec["output_names"], other)[0]
    other_errs = check_fp32(name, f"shape {list(other[names[0]].shape)}", got,
                            torch_run(module, other, names)[0])
    SUMMARY.append(
        f"{name}: export {seconds:.1f} s; model {os.path.getsize(path)} B, reference "
        f"{os.path.getsize(ref_path)} B; ort vs torch max abs {errs[0]:.3g}, scaled {errs[1]:.3g} "
        f"(at {list(other[names[0]].shape)}: {other_errs[0]:.3g}, {other_errs[1]:.3g}); "
        f"{describe(path)}")
    return module, path


def export_int8(out_dir, spec, fp32_module, fp32_path):
    name = spec["name"] + "_int8"
    path = model_path(out_dir, name)
    started = time.perf_counter()
    quantize_dynamic(fp32_path, path, weight_type=QuantType.QInt8)
    seconds = time.perf_counter() - started
    onnx.checker.check_model(path, full_check=True)
    names = spec["input_names"]
    ref_inputs = spec["reference"](np.random.default_rng(0))
    ort_outs, ref_path = write_reference(out_dir, name, path, ref_inputs)
    want = torch_run(fp32_module, ref_inputs, names)[0]
    abs_err, _, _ = worst(ort_outs[0], want)
    if not abs_err <= INT8_SANITY_ATOL:
        fail(f"{name}: int8 differs from fp32 torch by {abs_err:.3g} (> {INT8_SANITY_ATOL})")
    SUMMARY.append(
        f"{name}: quantize {seconds:.1f} s; model {os.path.getsize(path)} B, reference "
        f"{os.path.getsize(ref_path)} B; int8 ort vs fp32 torch max abs {abs_err:.3g} "
        f"(fp32 max |x| {np.abs(want).max():.3g}); {describe(path)}")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--small", action="store_true", help="the tiny set for tests/deep")
    parser.add_argument("--bert-exporter", choices=["dynamo", "torchscript"], default="dynamo",
                        help="torch.onnx.export's exporter for BERT (CNNs: torchscript)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out_dir = os.path.abspath(args.out_dir)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"transformers {transformers.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}")
    written = []
    for spec in specs(args.small, args.bert_exporter):
        module, path = export_fp32(out_dir, spec)
        written.append(path)
        if spec["kind"] == "bert":
            written.append(export_int8(out_dir, spec, module, path))
    for line in SUMMARY:
        print(line)
    if args.small:
        for path in written:
            for f in (path, os.path.join(os.path.dirname(os.path.dirname(path)), "reference.json")):
                if os.path.getsize(f) >= SMALL_LIMIT:
                    fail(f"{f} is {os.path.getsize(f)} B (>= 1 MB)")


if __name__ == "__main__":
    main()
