"""Build the bundled predictd models and their onnxruntime reference outputs.

How to run (Python 3.11; the venv lives outside the repo):

    python3.11 -m venv /tmp/models-venv
    /tmp/models-venv/bin/pip install -r models/requirements.txt
    /tmp/models-venv/bin/python models/make_models.py

The script can be run from any working directory: every path is relative to
this file's own folder (``models/``). It is deterministic (fixed seeds, one
thread for BLAS and onnxruntime), so running it again rewrites byte-identical
files. It only uses data sets bundled inside scikit-learn (no network).

For each model it writes ``models/<name>/1/model.onnx`` and
``models/<name>/reference.json``. The reference file holds 8 held-out input
rows (the first 8 rows of a fixed 80/20 test split) and every output of the
model on them, computed by onnxruntime (CPUExecutionProvider). Before writing
anything the script asserts that onnxruntime agrees with scikit-learn (or the
NumPy forward pass, for the CNN) on the whole test split; it fails loudly
otherwise.

Models (the batch dimension is the symbolic dim "N" on every input/output):

* wine_forest -- RandomForestClassifier(n_estimators=25, max_depth=6,
  random_state=0) on sklearn's wine data (13 float features, 3 classes),
  exported by skl2onnx (zipmap off) with ai.onnx.ml opset 3, i.e. a
  TreeEnsembleClassifier node (not the opset-5 TreeEnsemble).
  Input  X float32 [N,13] (raw wine features).
  Output label int64 [N] (class 0..2), probabilities float32 [N,3].

* digits_mlp -- MLPClassifier(hidden_layer_sizes=(64,), max_iter=300,
  random_state=0) on sklearn's digits data. It is trained on pixels / 16,
  but the graph does the /16 itself, so the input is the raw pixel values
  0..16. Built with onnx.helper from the trained weights, standard ONNX ops
  only: Div -> MatMul -> Add -> Relu -> MatMul -> Add -> Softmax, ArgMax.
  Input  X float32 [N,64] (8x8 image, row-major, values 0..16).
  Output probabilities float32 [N,10], label int64 [N] (digit 0..9).

* digits_cnn -- a small CNN trained here with plain NumPy (im2col, manual
  backprop, Adam, fixed seed) on the same digits images:
  Conv(1->16,3x3,pad 1) -> Relu -> Conv(16->32,3x3,pad 1) -> Relu ->
  MaxPool 2x2 -> Flatten (512) -> Gemm(512->10) -> Softmax, ArgMax.
  It is trained on pixels / 16; the graph does the /16 itself.
  Input  image float32 [N,1,8,8] (values 0..16).
  Output probabilities float32 [N,10], label int64 [N].

* diabetes_linear -- LinearRegression on sklearn's diabetes data (10 float
  features, already centred and scaled by sklearn), as MatMul + Add
  (standard ops, no ai.onnx.ml LinearRegressor).
  Input  X float32 [N,10].  Output y float32 [N,1] (disease progression).

Every model uses the same split: train_test_split(test_size=0.2,
random_state=0, stratify=y for the classifiers).
"""

import os

# Single-threaded BLAS before numpy is imported: keeps training bit-for-bit
# reproducible.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import sklearn  # noqa: E402
import skl2onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from skl2onnx import convert_sklearn  # noqa: E402
from skl2onnx.common.data_types import FloatTensorType  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine  # noqa: E402
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = "1"
N_REF = 8
OPSET = 13  # default-domain opset for the hand-built graphs
IR_VERSION = 8  # IR version matching opset 13; keeps readers happy

DTYPE_NAMES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.bool_): "BOOL",
}

SUMMARY = []


def fail(msg):
    print("ERROR: " + msg, file=sys.stderr)
    sys.exit(1)


def check_close(name, got, want, atol, rtol=0.0):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        fail(f"{name}: shape {got.shape} != {want.shape}")
    err = np.abs(got - want)
    bad = err > atol + rtol * np.abs(want)
    if bad.any():
        fail(f"{name}: {int(bad.sum())} values differ, max abs err {err.max():.3g}")
    return float(err.max())


def check_equal(name, got, want):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or not np.array_equal(got, want):
        fail(f"{name}: {int((got != want).sum())} of {want.size} values differ")


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def model_dir(name):
    d = os.path.join(HERE, name, VERSION)
    os.makedirs(d, exist_ok=True)
    return d


def save_model(name, model):
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(model_dir(name), "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    size = os.path.getsize(path)
    if size >= 5 * 1024 * 1024:
        fail(f"{name}: model is {size} bytes (>= 5 MB)")
    return path


def f32_number(v):
    """Shortest decimal that parses back to the same float32 (as a Python float)."""
    v32 = np.float32(v)
    if not np.isfinite(v32):
        fail(f"non-finite value {v32} in reference data")
    s = np.format_float_positional(v32, unique=True, trim="-") if abs(v32) >= 1e-4 or v32 == 0 \
        else np.format_float_scientific(v32, unique=True, trim="-")
    out = float(s)
    # Round-trip both ways a reader might parse it: straight to f32, or f64 then f32.
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
    elif arr.dtype == np.float64:
        data = [float(v) for v in flat]
    elif arr.dtype == np.bool_:
        data = [bool(v) for v in flat]
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


def write_reference(name, path, inputs):
    """Run onnxruntime on the reference inputs and write reference.json."""
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
    with open(os.path.join(HERE, name, "reference.json"), "w") as f:
        f.write(format_reference(ref))
    return ref


def describe(name, path, metric):
    m = onnx.load(path)
    ops = sorted({(n.domain or "ai.onnx", n.op_type) for n in m.graph.node})
    opsets = {(o.domain or "ai.onnx"): o.version for o in m.opset_import}

    def sig(vi):
        t = vi.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                for d in t.shape.dim]
        return f"{vi.name}:{TensorProto.DataType.Name(t.elem_type)}{dims}"

    line = (f"{name}: {metric}; size {os.path.getsize(path)} B; ir {m.ir_version}; "
            f"opsets {opsets}; ops {[f'{d}:{o}' for d, o in ops]}; "
            f"in {[sig(i) for i in m.graph.input]}; out {[sig(o) for o in m.graph.output]}")
    SUMMARY.append(line)
    print(line)


def make_graph_model(nodes, name, inputs, outputs, initializers, opsets=None):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(
        graph,
        producer_name="predictd/models/make_models.py",
        opset_imports=opsets or [helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    return model


def init(name, arr):
    return numpy_helper.from_array(np.ascontiguousarray(arr), name=name)


# --------------------------------------------------------------------------
# (a) wine_forest
# --------------------------------------------------------------------------
def tree_modes(model):
    modes = set()
    for node in model.graph.node:
        if node.op_type.startswith("TreeEnsemble"):
            for a in node.attribute:
                if a.name == "nodes_modes":
                    modes.update(s.decode() for s in a.strings)
                elif "modes" in a.name:
                    fail(f"unexpected tree attribute {a.name}")
    return modes


def make_wine_forest():
    name = "wine_forest"
    X, y = load_wine(return_X_y=True)
    X = X.astype(np.float32)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    clf = RandomForestClassifier(n_estimators=25, max_depth=6, random_state=0, n_jobs=1)
    clf.fit(X_tr, y_tr)
    acc = clf.score(X_te, y_te)

    onx = convert_sklearn(
        clf,
        initial_types=[("X", FloatTensorType([None, 13]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    onx.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for o in onx.graph.output:
        o.type.tensor_type.shape.dim[0].dim_param = "N"
    onx.doc_string = ""
    onx.graph.name = name  # skl2onnx names the graph with a random uuid
    ops = {(n.domain, n.op_type) for n in onx.graph.node}
    if ("ai.onnx.ml", "TreeEnsembleClassifier") not in ops:
        fail(f"{name}: expected ai.onnx.ml TreeEnsembleClassifier, got {sorted(ops)}")
    modes = tree_modes(onx)
    print(f"{name}: tree node modes = {sorted(modes)}")
    if not modes or not modes <= {"BRANCH_LEQ", "LEAF"}:
        fail(f"{name}: tree node modes {sorted(modes)} are not only BRANCH_LEQ/LEAF")
    path = save_model(name, onx)

    sess = session(path)
    label, proba = sess.run(["label", "probabilities"], {"X": X_te})
    check_equal(f"{name} label", label, clf.predict(X_te))
    err = check_close(f"{name} probabilities", proba, clf.predict_proba(X_te), atol=1e-5)
    if label.dtype != np.int64 or proba.dtype != np.float32:
        fail(f"{name}: output dtypes {label.dtype}, {proba.dtype}")

    write_reference(name, path, {"X": X_te[:N_REF]})
    describe(name, path, f"test accuracy {acc:.4f} ({len(y_te)} rows), max |p err| {err:.2g}")


def make_cancer_boosted():
    name = "cancer_boosted"
    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    clf = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0)
    clf.fit(X_tr, y_tr)
    acc = clf.score(X_te, y_te)

    onx = convert_sklearn(
        clf,
        initial_types=[("X", FloatTensorType([None, 30]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    onx.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for o in onx.graph.output:
        o.type.tensor_type.shape.dim[0].dim_param = "N"
    onx.doc_string = ""
    onx.graph.name = name
    ops = {(n.domain, n.op_type) for n in onx.graph.node}
    if ("ai.onnx.ml", "TreeEnsembleClassifier") not in ops:
        fail(f"{name}: expected ai.onnx.ml TreeEnsembleClassifier, got {sorted(ops)}")
    print(f"{name}: ops = {sorted(ops)}, tree node modes = {sorted(tree_modes(onx))}")
    path = save_model(name, onx)

    sess = session(path)
    label, proba = sess.run(["label", "probabilities"], {"X": X_te})
    check_equal(f"{name} label", label, clf.predict(X_te))
    err = check_close(f"{name} probabilities", proba, clf.predict_proba(X_te), atol=1e-5)
    write_reference(name, path, {"X": X_te[:N_REF]})
    describe(name, path, f"test accuracy {acc:.4f} ({len(y_te)} rows), max |p err| {err:.2g}")


# --------------------------------------------------------------------------
# (b) digits_mlp
# --------------------------------------------------------------------------
def digits_split():
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    return train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)


def make_digits_mlp():
    name = "digits_mlp"
    X_tr, X_te, y_tr, y_te = digits_split()
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X_tr / 16.0, y_tr)
    acc = clf.score(X_te / 16.0, y_te)
    if list(clf.classes_) != list(range(10)) or clf.out_activation_ != "softmax" \
            or clf.activation != "relu":
        fail(f"{name}: unexpected classifier layout")

    W1, W2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    nodes = [
        helper.make_node("Div", ["X", "scale"], ["xs"], name="scale_pixels"),
        helper.make_node("MatMul", ["xs", "W1"], ["h1_mm"], name="fc1_matmul"),
        helper.make_node("Add", ["h1_mm", "b1"], ["h1_pre"], name="fc1_bias"),
        helper.make_node("Relu", ["h1_pre"], ["h1"], name="fc1_relu"),
        helper.make_node("MatMul", ["h1", "W2"], ["logits_mm"], name="fc2_matmul"),
        helper.make_node("Add", ["logits_mm", "b2"], ["logits"], name="fc2_bias"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], name="argmax",
                         axis=1, keepdims=0),
    ]
    model = make_graph_model(
        nodes, name,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        [init("scale", np.array(16.0, dtype=np.float32)),
         init("W1", W1), init("b1", b1), init("W2", W2), init("b2", b2)],
    )
    path = save_model(name, model)

    sess = session(path)
    proba, label = sess.run(["probabilities", "label"], {"X": X_te})
    check_equal(f"{name} label", label, clf.predict(X_te / 16.0))
    err = check_close(f"{name} probabilities", proba, clf.predict_proba(X_te / 16.0), atol=1e-4)

    write_reference(name, path, {"X": X_te[:N_REF]})
    describe(name, path, f"test accuracy {acc:.4f} ({len(y_te)} rows), max |p err| {err:.2g}")


# --------------------------------------------------------------------------
# (c) digits_cnn: NumPy-trained CNN
# --------------------------------------------------------------------------
def im2col(x):
    """x (N,C,8,8) -> cols (N, C*9, 64) for a 3x3 conv with pad 1, stride 1."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.empty((n, c, 3, 3, h, w), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, i, j] = xp[:, :, i:i + h, j:j + w]
    return cols.reshape(n, c * 9, h * w)


def col2im(dcols, shape):
    n, c, h, w = shape
    dcols = dcols.reshape(n, c, 3, 3, h, w)
    dxp = np.zeros((n, c, h + 2, w + 2), dtype=dcols.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, :, i:i + h, j:j + w] += dcols[:, :, i, j]
    return dxp[:, :, 1:-1, 1:-1]


def conv_fwd(x, W, b):
    n, _, h, w = x.shape
    cols = im2col(x)
    out = np.matmul(W.reshape(W.shape[0], -1), cols) + b[None, :, None]
    return out.reshape(n, W.shape[0], h, w), cols


def conv_bwd(dout, cols, x_shape, W):
    n, cout, h, w = dout.shape
    d = dout.reshape(n, cout, h * w)
    dW = np.einsum("nop,nkp->ok", d, cols).reshape(W.shape)
    db = d.sum(axis=(0, 2))
    dcols = np.matmul(W.reshape(cout, -1).T, d)
    return col2im(dcols, x_shape), dW, db


def pool_fwd(x):
    n, c, h, w = x.shape
    r = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        n, c, h // 2, w // 2, 4)
    idx = r.argmax(axis=-1)
    return np.take_along_axis(r, idx[..., None], axis=-1)[..., 0], idx


def pool_bwd(dout, idx, x_shape):
    n, c, h, w = x_shape
    d = np.zeros((n, c, h // 2, w // 2, 4), dtype=dout.dtype)
    np.put_along_axis(d, idx[..., None], dout[..., None], axis=-1)
    return d.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(x_shape)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cnn_forward(p, x, keep=False):
    """x: (N,1,8,8) already scaled to 0..1. Returns (probabilities, cache)."""
    z1, c1 = conv_fwd(x, p["W1"], p["b1"])
    a1 = np.maximum(z1, 0)
    z2, c2 = conv_fwd(a1, p["W2"], p["b2"])
    a2 = np.maximum(z2, 0)
    pl, idx = pool_fwd(a2)
    flat = pl.reshape(len(x), -1)
    logits = flat @ p["W3"].T + p["b3"]
    prob = softmax(logits)
    cache = (x, z1, c1, a1, z2, c2, a2, idx, flat) if keep else None
    return prob, cache


def cnn_backward(p, cache, prob, y):
    x, z1, c1, a1, z2, c2, a2, idx, flat = cache
    n = len(y)
    dlog = prob.copy()
    dlog[np.arange(n), y] -= 1.0
    dlog /= n
    g = {"W3": dlog.T @ flat, "b3": dlog.sum(axis=0)}
    dflat = dlog @ p["W3"]
    da2 = pool_bwd(dflat.reshape(n, 32, 4, 4), idx, a2.shape)
    dz2 = da2 * (z2 > 0)
    da1, g["W2"], g["b2"] = conv_bwd(dz2, c2, a1.shape, p["W2"])
    dz1 = da1 * (z1 > 0)
    _, g["W1"], g["b1"] = conv_bwd(dz1, c1, x.shape, p["W1"])
    return g


def train_cnn(x_tr, y_tr, epochs=30, batch=64, lr=2e-3, wd=1e-4, seed=0):
    rng = np.random.default_rng(seed)

    def he(shape, fan_in):
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)

    p = {
        "W1": he((16, 1, 3, 3), 9), "b1": np.zeros(16),
        "W2": he((32, 16, 3, 3), 144), "b2": np.zeros(32),
        "W3": he((10, 512), 512) * 0.5, "b3": np.zeros(10),
    }
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(val) for k, val in p.items()}
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    n = len(x_tr)
    for epoch in range(epochs):
        order = rng.permutation(n)
        loss = 0.0
        for s in range(0, n, batch):
            bi = order[s:s + batch]
            prob, cache = cnn_forward(p, x_tr[bi], keep=True)
            loss += -np.log(prob[np.arange(len(bi)), y_tr[bi]] + 1e-12).sum()
            g = cnn_backward(p, cache, prob, y_tr[bi])
            t += 1
            for k in p:
                gk = g[k] + (wd * p[k] if k.startswith("W") else 0.0)
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk * gk
                mh = m[k] / (1 - b1 ** t)
                vh = v[k] / (1 - b2 ** t)
                p[k] -= lr * mh / (np.sqrt(vh) + eps)
        if epoch % 10 == 9 or epoch == epochs - 1:
            print(f"  cnn epoch {epoch + 1}: mean train loss {loss / n:.4f}")
    return p


def make_digits_cnn():
    name = "digits_cnn"
    X_tr, X_te, y_tr, y_te = digits_split()
    img_tr = X_tr.reshape(-1, 1, 8, 8)
    img_te = X_te.reshape(-1, 1, 8, 8)

    t0 = time.time()
    p64 = train_cnn(img_tr.astype(np.float64) / 16.0, y_tr)
    print(f"  cnn trained in {time.time() - t0:.1f}s")
    # The exported weights are float32; the NumPy reference uses exactly those.
    p = {k: val.astype(np.float32) for k, val in p64.items()}
    p_ref = {k: val.astype(np.float64) for k, val in p.items()}
    prob_np, _ = cnn_forward(p_ref, img_te.astype(np.float64) / 16.0)
    label_np = prob_np.argmax(axis=1)
    acc = float((label_np == y_te).mean())
    if acc < 0.9:
        fail(f"{name}: test accuracy {acc:.4f} < 0.9")

    nodes = [
        helper.make_node("Div", ["image", "scale"], ["xs"], name="scale_pixels"),
        helper.make_node("Conv", ["xs", "W1", "b1"], ["z1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["z1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "W2", "b2"], ["z2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["z2"], ["a2"], name="relu2"),
        helper.make_node("MaxPool", ["a2"], ["pool"], name="pool",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "W3", "b3"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], name="argmax",
                         axis=1, keepdims=0),
    ]
    model = make_graph_model(
        nodes, name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        [init("scale", np.array(16.0, dtype=np.float32))]
        + [init(k, p[k]) for k in ("W1", "b1", "W2", "b2", "W3", "b3")],
    )
    path = save_model(name, model)

    sess = session(path)
    proba, label = sess.run(["probabilities", "label"], {"image": img_te})
    check_equal(f"{name} label", label, label_np)
    err = check_close(f"{name} probabilities", proba, prob_np, atol=1e-4)

    write_reference(name, path, {"image": img_te[:N_REF]})
    describe(name, path, f"test accuracy {acc:.4f} ({len(y_te)} rows), max |p err| {err:.2g}")


# --------------------------------------------------------------------------
# (d) diabetes_linear
# --------------------------------------------------------------------------
def make_diabetes_linear():
    name = "diabetes_linear"
    X, y = load_diabetes(return_X_y=True)
    X = X.astype(np.float32)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=0)
    reg = LinearRegression().fit(X_tr, y_tr)
    r2 = reg.score(X_te, y_te)

    W = reg.coef_.astype(np.float32).reshape(10, 1)
    b = np.array([reg.intercept_], dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["X", "coef"], ["xw"], name="matmul"),
        helper.make_node("Add", ["xw", "intercept"], ["y"], name="bias"),
    ]
    model = make_graph_model(
        nodes, name,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [init("coef", W), init("intercept", b)],
    )
    path = save_model(name, model)

    sess = session(path)
    (pred,) = sess.run(["y"], {"X": X_te})
    err = check_close(f"{name} y", pred, reg.predict(X_te).reshape(-1, 1), atol=1e-4)

    write_reference(name, path, {"X": X_te[:N_REF]})
    describe(name, path, f"test R^2 {r2:.4f} ({len(y_te)} rows), max |y err| {err:.2g}")


def main():
    np.random.seed(0)
    print(f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, "
          f"skl2onnx {skl2onnx.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}")
    make_wine_forest()
    make_cancer_boosted()
    make_digits_mlp()
    make_digits_cnn()
    make_diabetes_linear()
    print("\nSummary:")
    for line in SUMMARY:
        print("  " + line)


if __name__ == "__main__":
    main()
