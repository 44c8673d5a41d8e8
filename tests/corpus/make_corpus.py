"""Build the ONNX-ML correctness corpus: classic ML models and onnxruntime's outputs.

How to run (Python 3.11; the venv lives outside the repo):

    python3.11 -m venv /tmp/corpus-venv
    /tmp/corpus-venv/bin/pip install -r tests/corpus/requirements.txt
    /tmp/corpus-venv/bin/python tests/corpus/make_corpus.py            # rewrite tests/corpus/
    /tmp/corpus-venv/bin/python tests/corpus/make_corpus.py --big /tmp/big   # 500-tree forest

Every path is relative to this file's folder (``tests/corpus/``), so the
script runs from any working directory. For each model it writes

    tests/corpus/<name>/1/model.onnx
    tests/corpus/<name>/reference.json

and rewrites the generated table in ``tests/corpus/README.md`` (between the
``BEGIN/END GENERATED TABLE`` markers). It only uses data sets bundled with
scikit-learn (no network) and is deterministic: fixed seeds, one thread
everywhere, deterministic protobuf serialisation. After writing, it runs itself
again in a subprocess into a temporary folder and asserts that every file is
byte-identical (``--no-verify`` skips that second run).

Before writing a model the script asserts that onnxruntime agrees with the
library that trained it (scikit-learn / XGBoost / LightGBM predict,
predict_proba, decision_function or transform) on all the reference rows:
labels exactly, scores within ``atol + rtol*|want|`` (defaults atol=1e-5,
rtol=1e-4; a few models relax this, see ``tol=`` in their builders and the
README). Hand-built graphs are checked against small NumPy re-implementations
of onnxruntime's semantics (tree walking, aggregation, post-transforms, the
binary-classifier label rules, Normalizer, LabelEncoder, ...).

reference.json is the same format as models/*/reference.json (see
models/README.md) plus a top-level ``"estimator"`` string and, for ZipMap
outputs (sequence of maps), a ``"zipmap"`` field giving each such output's
column order; the ZipMap output itself is stored as an FP32 ``[N, C]`` tensor
in that order. NaN inputs are written as JSON ``null``; STRING tensors as JSON
strings.
"""

import os

# Single-threaded BLAS/OpenMP before numpy, xgboost or lightgbm is imported:
# keeps training bit-for-bit reproducible.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import filecmp  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import sklearn  # noqa: E402
import skl2onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from scipy.special import ndtri  # noqa: E402
from skl2onnx import convert_sklearn  # noqa: E402
from skl2onnx.common.data_types import (  # noqa: E402
    FloatTensorType,
    Int64TensorType,
    StringTensorType,
)
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.datasets import (  # noqa: E402
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_iris,
    load_linnerud,
    load_wine,
)
from sklearn.ensemble import (  # noqa: E402
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from sklearn.preprocessing import (  # noqa: E402
    Binarizer,
    LabelEncoder,
    MinMaxScaler,
    Normalizer,
    OneHotEncoder,
    StandardScaler,
)
from sklearn.svm import SVC, SVR, LinearSVC  # noqa: E402
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor  # noqa: E402

import lightgbm  # noqa: E402
import onnxmltools  # noqa: E402
import xgboost  # noqa: E402
from onnxmltools import convert_lightgbm, convert_xgboost  # noqa: E402
from onnxmltools.convert.common.data_types import FloatTensorType as MltFloatTensorType  # noqa: E402

# --------------------------------------------------------------------------
# skl2onnx 1.20 + protobuf 7: the HistGradientBoosting converter passes Python /
# NumPy booleans for nodes_missing_value_tracks_true, which protobuf 7 refuses
# ("Field onnx.AttributeProto.ints: Expected an int, got a boolean"). Cast them
# to int before skl2onnx builds the node; the exported graph is what skl2onnx
# means to produce.
import skl2onnx.common.tree_ensemble as _skl_tree  # noqa: E402
from skl2onnx.common.tree_ensemble import (  # noqa: E402
    add_tree_to_attribute_pairs,
    get_default_tree_classifier_attribute_pairs,
    get_default_tree_regressor_attribute_pairs,
)

_orig_add_node = _skl_tree.add_node


def _add_node_int_missing(*args, nodes_missing_value_tracks_true=0, **kwargs):
    return _orig_add_node(
        *args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)


_skl_tree.add_node = _add_node_int_missing

# skl2onnx 1.20 + scikit-learn 1.9: LinearSVC is parsed as a classifier, whose
# parser asks for the 'zipmap' option, but LinearSVC's registered converter does
# not list that option, so conversion fails with "NameError: Option 'zipmap' not
# in ['nocl', 'output_class_labels', 'raw_scores'] for class 'LinearSVC'". Allow
# zipmap=False (only) for it; the converter itself is unchanged.
from skl2onnx.common._registration import _converter_pool  # noqa: E402

_converter_pool["SklearnLinearSVC"]._options = dict(
    _converter_pool["SklearnLinearSVC"]._options or {}, zipmap=[False])
# --------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = "1"
N_REF = 300
SEED = 0
OPSET = 15  # default-domain target opset (onnxmltools supports up to 15)
ML = "ai.onnx.ml"
MAX_CORPUS_BYTES = 6 * 1024 * 1024
TABLE_BEGIN = "<!-- BEGIN GENERATED TABLE (make_corpus.py) -->"
TABLE_END = "<!-- END GENERATED TABLE -->"

DTYPE_NAMES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.bool_): "BOOL",
    np.dtype(object): "STRING",
}
ELEM_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.DOUBLE: "FP64", TensorProto.INT64: "INT64",
    TensorProto.INT32: "INT32", TensorProto.BOOL: "BOOL", TensorProto.STRING: "STRING",
}


def fail(msg):
    print("ERROR: " + msg, file=sys.stderr)
    sys.exit(1)


# ==========================================================================
# Comparisons
# ==========================================================================
def check_close(what, got, want, atol=1e-5, rtol=1e-4):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        fail(f"{what}: shape {got.shape} != {want.shape}")
    if np.isnan(got).any() or np.isnan(want).any():
        if not np.array_equal(np.isnan(got), np.isnan(want)):
            fail(f"{what}: NaN positions differ")
    err = np.abs(np.nan_to_num(got) - np.nan_to_num(want))
    bad = err > atol + rtol * np.abs(np.nan_to_num(want))
    if bad.any():
        i = int(np.argmax(err))
        fail(f"{what}: {int(bad.sum())} of {want.size} values differ "
             f"(max abs err {err.max():.3g} at {i}: got {got.ravel()[i]!r} want {want.ravel()[i]!r})")
    return float(err.max()) if err.size else 0.0


def check_equal(what, got, want):
    got, want = np.asarray(got), np.asarray(want)
    if got.dtype.kind in "OUS" or want.dtype.kind in "OUS":
        got, want = got.astype(str), want.astype(str)
    if got.shape != want.shape:
        fail(f"{what}: shape {got.shape} != {want.shape}")
    if not np.array_equal(got, want):
        fail(f"{what}: {int((got != want).sum())} of {want.size} values differ")


# ==========================================================================
# JSON writing
# ==========================================================================
def f32_number(v):
    """Shortest decimal that parses back to the same float32 (from make_models.py)."""
    v32 = np.float32(v)
    if not np.isfinite(v32):
        fail(f"non-finite value {v32} in reference data")
    s = np.format_float_positional(v32, unique=True, trim="-") if abs(v32) >= 1e-4 or v32 == 0 \
        else np.format_float_scientific(v32, unique=True, trim="-")
    out = float(s)
    if np.float32(s) != v32 or np.float32(out) != v32:
        fail(f"float32 {v32!r} does not round-trip through {s!r}")
    return out


def f64_number(v):
    v = float(v)
    if not math.isfinite(v):
        fail(f"non-finite value {v} in reference data")
    return v


def tensor_json(arr, allow_nan):
    arr = np.asarray(arr)
    if arr.dtype.kind in "US":
        arr = arr.astype(object)
    if arr.dtype not in DTYPE_NAMES:
        fail(f"unsupported dtype {arr.dtype}")
    flat = arr.reshape(-1)
    if arr.dtype in (np.float32, np.float64):
        conv = f32_number if arr.dtype == np.float32 else f64_number
        nan = np.isnan(flat)
        if nan.any() and not allow_nan:
            fail("NaN in an output tensor")
        data = [None if n else conv(v) for v, n in zip(flat, nan)]
    elif arr.dtype == np.bool_:
        data = [bool(v) for v in flat]
    elif arr.dtype == object:
        data = [str(v) for v in flat]
    else:
        data = [int(v) for v in flat]
    return {"dtype": DTYPE_NAMES[arr.dtype], "shape": list(arr.shape), "data": data}


def format_reference(ref):
    """JSON with one line per tensor field (long data lists stay on one line)."""
    lines = ["{"]
    for key in ("model", "version", "producer", "estimator"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(ref[key])},")
    if "zipmap" in ref:
        lines.append(f"  \"zipmap\": {json.dumps(ref['zipmap'])},")
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


# ==========================================================================
# Data helpers
# ==========================================================================
def cycle_rows(X, n=N_REF):
    """The first n rows of X repeated cyclically (X itself if it has >= n rows)."""
    return X[np.arange(n) % len(X)]


def inject_nan(X, frac, seed):
    X = np.array(X, dtype=np.float32, copy=True)
    X[np.random.default_rng(seed).random(X.shape) < frac] = np.nan
    return X


def split(X, y, classification, test_size=0.5):
    return train_test_split(X, y, test_size=test_size, random_state=SEED,
                            stratify=y if classification else None)


def data_bc():
    X, y = load_breast_cancer(return_X_y=True)
    return X.astype(np.float32), y


def data_wine():
    X, y = load_wine(return_X_y=True)
    return X.astype(np.float32), y


def data_iris():
    X, y = load_iris(return_X_y=True)
    return X.astype(np.float32), y


def data_iris_str():
    d = load_iris()
    return d.data.astype(np.float32), d.target_names[d.target].astype(object)


def data_diabetes():
    X, y = load_diabetes(return_X_y=True)
    return X.astype(np.float32), y


def data_digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def data_linnerud():
    """linnerud has only 20 rows: train on all 20; the 300 reference rows are the
    20 real rows followed by 280 synthetic ones (integers drawn uniformly inside
    each feature's observed range, seeded)."""
    X, Y = load_linnerud(return_X_y=True)
    X = X.astype(np.float32)
    rng = np.random.default_rng(SEED)
    lo, hi = X.min(axis=0), X.max(axis=0)
    extra = np.floor(lo + rng.random((N_REF - len(X), X.shape[1])) * (hi - lo + 1)).astype(np.float32)
    return X, Y, np.concatenate([X, extra])


# ==========================================================================
# ONNX helpers
# ==========================================================================
def finish_model(model, name):
    """Deterministic names, symbolic batch dim "N" on every tensor input/output."""
    model.graph.name = name
    model.doc_string = ""
    # skl2onnx emits opset_import in set order (varies with PYTHONHASHSEED): sort it.
    opsets = sorted(((o.domain, o.version) for o in model.opset_import))
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            if len(dims):
                dims[0].Clear()
                dims[0].dim_param = "N"
    return model


def set_output_dims(model, name, dims):
    """Overwrite an output's declared shape (some converters declare [N,1] for
    multi-target regressors)."""
    for o in model.graph.output:
        if o.name == name:
            shape = o.type.tensor_type.shape
            del shape.dim[:]
            for d in dims:
                if isinstance(d, str):
                    shape.dim.add().dim_param = d
                else:
                    shape.dim.add().dim_value = d
            return model
    fail(f"no output {name}")


def declare_ml_opset(model, version):
    """Raise the declared ai.onnx.ml opset. Only done when every ai.onnx.ml node
    keeps the same schema, or moves TreeEnsemble{Classifier,Regressor} 1 -> 3
    (version 3 only adds the optional *_as_tensor attributes)."""
    old = {o.domain: o.version for o in model.opset_import}.get(ML)
    for node in model.graph.node:
        if node.domain != ML:
            continue
        a = onnx.defs.get_schema(node.op_type, old, ML).since_version
        b = onnx.defs.get_schema(node.op_type, version, ML).since_version
        if a != b and not (node.op_type.startswith("TreeEnsemble") and (a, b) == (1, 3)):
            fail(f"cannot declare {ML} opset {version}: {node.op_type} {a} -> {b}")
    for o in model.opset_import:
        if o.domain == ML:
            o.version = version
    return model


def hand_model(name, nodes, inputs, outputs, inits=(), ml=1, opset=OPSET):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(ML, ml)]
    model = helper.make_model(graph, producer_name="predictd/tests/corpus/make_corpus.py",
                              opset_imports=opsets)
    model.ir_version = 8
    return model


def vinfo(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def skl(model, initial_types, options=None, ml=1):
    """skl2onnx conversion (options e.g. no_zipmap(clf); ZipMap stays on otherwise)."""
    return convert_sklearn(model, initial_types=initial_types, options=options,
                           target_opset={"": OPSET, ML: ml})


def no_zipmap(est):
    return {id(est): {"zipmap": False}}


def session(model_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def zipmap_orders(model):
    """{graph output name: [labels...]} for ZipMap nodes feeding graph outputs."""
    outs = {o.name for o in model.graph.output}
    res = {}
    for node in model.graph.node:
        if node.op_type == "ZipMap" and node.output[0] in outs:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if "classlabels_int64s" in attrs:
                res[node.output[0]] = [int(v) for v in attrs["classlabels_int64s"]]
            else:
                res[node.output[0]] = [s.decode() for s in attrs["classlabels_strings"]]
    return res


# ==========================================================================
# Model description (README table)
# ==========================================================================
V5_MODES = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ",
            "BRANCH_MEMBER"]
V5_POST = ["NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT"]
V5_AGG = ["AVERAGE", "SUM", "MIN", "MAX"]


def tree_attrs(node):
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    parts = []
    if node.op_type == "TreeEnsemble":
        modes = sorted({V5_MODES[m] for m in numpy_helper.to_array(a["nodes_modes"])})
        parts.append("modes " + "/".join(m.replace("BRANCH_", "") for m in modes))
        pt = a.get("post_transform", 0)
        parts.append(f"post_transform={pt} (spec {V5_POST[pt]}"
                     + (f"; ORT 1.32 applies {ORT_V5_POST[V5_POST[pt]]})"
                        if V5_POST[pt] in ORT_V5_POST else ")"))
        parts.append("agg " + V5_AGG[a.get("aggregate_function", 1)])
        parts.append(f"n_targets {a['n_targets']}")
        parts.append(f"trees {len(a['tree_roots'])}")
        miss = sorted(set(a.get("nodes_missing_value_tracks_true", [])))
        if miss:
            parts.append("missing_tracks " + "/".join(map(str, miss)))
        parts.append("splits " + ELEM_NAMES[a["nodes_splits"].data_type])
        return "; ".join(parts)
    modes = sorted({m.decode() for m in a["nodes_modes"]} - {"LEAF"})
    parts.append("modes " + "/".join(m.replace("BRANCH_", "") for m in modes))
    parts.append("post " + a.get("post_transform", b"NONE").decode())
    if node.op_type == "TreeEnsembleRegressor":
        parts.append("agg " + a.get("aggregate_function", b"SUM").decode())
        parts.append(f"n_targets {a.get('n_targets')}")
    else:
        labels = a.get("classlabels_int64s") or a.get("classlabels_strings")
        ncols = len(set(a["class_ids"]))
        parts.append(f"classes {len(labels)} ({'str' if 'classlabels_strings' in a else 'int64'}), "
                     f"weight columns {ncols}")
    parts.append(f"trees {len(set(a['nodes_treeids']))}")
    miss = sorted(set(a.get("nodes_missing_value_tracks_true", [])))
    if miss:
        parts.append("missing_tracks " + "/".join(map(str, miss)))
    if "base_values" in a or "base_values_as_tensor" in a:
        parts.append("base_values")
    tens = sorted(k for k in a if k.endswith("_as_tensor"))
    if tens:
        parts.append("as_tensor: " + ",".join(tens))
    return "; ".join(parts)


def other_attrs(node):
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    keep = {"norm", "post_transform", "kernel_type", "multi_class", "zeros", "default_string",
            "default_int64", "default_float", "inputdimensions", "threshold", "targets",
            "one_class"}
    out = []
    for k in sorted(a):
        if k in keep:
            v = a[k]
            v = v.decode() if isinstance(v, bytes) else v
            out.append(f"{k}={v}")
        elif k in ("keys_tensor", "values_tensor", "classes_strings", "keys_int64s",
                   "keys_strings", "values_strings", "values_int64s", "values_floats"):
            out.append(k)
    return ", ".join(out)


def sig(vi):
    if vi.type.HasField("tensor_type"):
        t = vi.type.tensor_type
        dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
        return f"`{vi.name}` {ELEM_NAMES[t.elem_type]} [{','.join(dims)}]"
    if vi.type.HasField("sequence_type"):
        mt = vi.type.sequence_type.elem_type.map_type
        key = ELEM_NAMES[mt.key_type]
        return f"`{vi.name}` seq(map({key}, FP32)) → ref FP32 [N,C]"
    return f"`{vi.name}` ?"


def describe(model):
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    ml_ops, std_ops, trees, others = [], [], [], []
    for node in model.graph.node:
        if node.domain == ML:
            if node.op_type not in ml_ops:
                ml_ops.append(node.op_type)
            if node.op_type.startswith("TreeEnsemble"):
                trees.append(f"{node.op_type}: {tree_attrs(node)}")
            else:
                extra = other_attrs(node)
                if extra:
                    s = f"{node.op_type}({extra})"
                    if s not in others:
                        others.append(s)
        elif node.op_type not in std_ops:
            std_ops.append(node.op_type)
    ops = ""
    if ml_ops:
        ops += f"ai.onnx.ml v{opsets.get(ML)}: " + ", ".join(ml_ops)
    if std_ops:
        ops += ("; " if ops else "") + f"ai.onnx v{opsets.get('ai.onnx')}: " + ", ".join(std_ops)
    return {
        "inputs": "<br>".join(sig(i) for i in model.graph.input),
        "outputs": "<br>".join(sig(o) for o in model.graph.output),
        "ops": ops,
        "attrs": "<br>".join(trees + others),
        "ml_opset": opsets.get(ML),
    }


# ==========================================================================
# The registry
# ==========================================================================
BUILDERS = []


def corpus_model(fn):
    BUILDERS.append(fn)
    return fn


class Entry:
    """What a builder returns."""

    def __init__(self, name, estimator, dataset, model, inputs, check, note="", tol=""):
        self.name = name
        self.estimator = estimator
        self.dataset = dataset
        self.model = model
        self.inputs = inputs  # {name: np.ndarray}, N_REF rows
        self.check = check  # fn(outputs dict) -> str (summary) ; fails on mismatch
        self.note = note
        self.tol = tol


def clf_check(clf, X_lib, label="label", proba="probabilities", atol=1e-5, rtol=1e-4,
              scores=None):
    """Labels exactly; probabilities (or decision scores) within tolerance."""
    def check(outs):
        check_equal("label", outs[label], clf.predict(X_lib))
        want = scores(X_lib) if scores else clf.predict_proba(X_lib)
        got = outs[proba]
        if want.ndim == 1:
            want = want.reshape(got.shape) if got.size == want.size else want
        err = check_close(proba, got, want, atol=atol, rtol=rtol)
        return f"labels equal, max |{proba} err| {err:.2g}"
    return check


def reg_check(reg, X_lib, out="variable", atol=1e-5, rtol=1e-4, predict=None):
    def check(outs):
        want = (predict or reg.predict)(X_lib)
        got = outs[out]
        want = np.asarray(want).reshape(got.shape)
        err = check_close(out, got, want, atol=atol, rtol=rtol)
        return f"max |err| {err:.2g}"
    return check


# --------------------------------------------------------------------------
# Forests, trees, boosting (scikit-learn via skl2onnx)
# --------------------------------------------------------------------------
@corpus_model
def rf_clf_bc():
    X, y = data_bc()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    clf = RandomForestClassifier(n_estimators=31, max_depth=8, random_state=SEED, n_jobs=1)
    clf.fit(X_tr, y_tr)
    onx = skl(clf, [("X", FloatTensorType([None, 30]))], no_zipmap(clf))
    Xr = cycle_rows(X_te)
    return Entry("rf_clf_bc", "RandomForestClassifier(n_estimators=31, max_depth=8)",
                 "breast_cancer (binary)", onx, {"X": Xr}, clf_check(clf, Xr))


@corpus_model
def rf_clf_wine():
    X, y = data_wine()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    clf = RandomForestClassifier(n_estimators=25, max_depth=6, random_state=SEED, n_jobs=1)
    clf.fit(X_tr, y_tr)
    onx = declare_ml_opset(skl(clf, [("X", FloatTensorType([None, 13]))], no_zipmap(clf)), 3)
    Xr = cycle_rows(X_te)
    return Entry("rf_clf_wine", "RandomForestClassifier(n_estimators=25, max_depth=6)",
                 "wine (3 classes)", onx, {"X": Xr}, clf_check(clf, Xr),
                 note="ai.onnx.ml opset declared as 3 (same node as opset 1)")


@corpus_model
def rf_clf_iris_str_zipmap():
    X, y = data_iris_str()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    clf = RandomForestClassifier(n_estimators=15, max_depth=5, random_state=SEED, n_jobs=1)
    clf.fit(X_tr, y_tr)
    onx = skl(clf, [("X", FloatTensorType([None, 4]))])  # default: ZipMap on
    Xr = cycle_rows(X_te)
    return Entry("rf_clf_iris_str_zipmap", "RandomForestClassifier(n_estimators=15, max_depth=5), "
                 "string labels, default ZipMap", "iris (3 classes, labels are species names)",
                 onx, {"X": Xr},
                 clf_check(clf, Xr, label="output_label", proba="output_probability"))


@corpus_model
def rf_reg_diabetes():
    X, y = data_diabetes()
    X_tr, X_te, y_tr, _ = split(X, y, False)
    reg = RandomForestRegressor(n_estimators=30, max_depth=8, random_state=SEED, n_jobs=1)
    reg.fit(X_tr, y_tr)
    onx = skl(reg, [("X", FloatTensorType([None, 10]))])
    Xr = cycle_rows(X_te)
    return Entry("rf_reg_diabetes", "RandomForestRegressor(n_estimators=30, max_depth=8)",
                 "diabetes", onx, {"X": Xr}, reg_check(reg, Xr))


@corpus_model
def rf_reg_linnerud_multi():
    X, Y, Xr = data_linnerud()
    reg = RandomForestRegressor(n_estimators=20, max_depth=6, random_state=SEED, n_jobs=1)
    reg.fit(X, Y)
    onx = declare_ml_opset(skl(reg, [("X", FloatTensorType([None, 3]))]), 3)
    set_output_dims(onx, "variable", ["N", 3])
    return Entry("rf_reg_linnerud_multi", "RandomForestRegressor(n_estimators=20, max_depth=6), "
                 "3 targets", "linnerud (3 targets; 20 real + 280 synthetic reference rows)",
                 onx, {"X": Xr}, reg_check(reg, Xr),
                 note="ai.onnx.ml opset declared as 3")


def double_tree_node(est, classifier, name="TreeEnsemble"):
    """A TreeEnsemble{Regressor,Classifier} node (ai.onnx.ml opset 3) for a
    float64 input, thresholds and weights in *_as_tensor attributes (double).
    Built from skl2onnx's own attribute helper (float64 threshold adjustment),
    because skl2onnx 1.20 writes the float attributes even for double inputs."""
    if classifier:
        attrs = get_default_tree_classifier_attribute_pairs()
        trees = [est.tree_]
        attrs["classlabels_int64s"] = [int(c) for c in est.classes_]
        for i, t in enumerate(trees):
            add_tree_to_attribute_pairs(attrs, True, t, i, 1.0, 0, True, True, dtype=np.float64)
        w_key = "class_weights"
    else:
        attrs = get_default_tree_regressor_attribute_pairs()
        attrs["n_targets"] = int(est.n_outputs_)
        trees = [e.tree_ for e in est.estimators_]
        for i, t in enumerate(trees):
            add_tree_to_attribute_pairs(attrs, False, t, i, 1.0 / len(trees), 0, False, True,
                                        dtype=np.float64)
        w_key = "target_weights"
    attrs.pop("nodes_hitrates")
    attrs["nodes_values_as_tensor"] = numpy_helper.from_array(
        np.array(attrs.pop("nodes_values"), dtype=np.float64))
    attrs[w_key + "_as_tensor"] = numpy_helper.from_array(
        np.array(attrs.pop(w_key), dtype=np.float64))
    for k in ("nodes_truenodeids", "nodes_falsenodeids", "nodes_featureids"):
        attrs[k] = [int(v) for v in attrs[k]]
    outs = ["label", "probabilities"] if classifier else ["variable"]
    op = "TreeEnsembleClassifier" if classifier else "TreeEnsembleRegressor"
    return helper.make_node(op, ["X"], outs, domain=ML, name=name, **attrs)


@corpus_model
def rf_reg_diabetes_f64():
    X, y = data_diabetes()
    X = X.astype(np.float64)
    X_tr, X_te, y_tr, _ = split(X, y, False)
    reg = RandomForestRegressor(n_estimators=20, max_depth=6, random_state=SEED, n_jobs=1)
    reg.fit(X_tr, y_tr)
    node = double_tree_node(reg, classifier=False)
    onx = hand_model("rf_reg_diabetes_f64", [node],
                     [vinfo("X", TensorProto.DOUBLE, ["N", 10])],
                     [vinfo("variable", TensorProto.FLOAT, ["N", 1])], ml=3)
    Xr = cycle_rows(X_te)
    return Entry("rf_reg_diabetes_f64", "RandomForestRegressor(n_estimators=20, max_depth=6), "
                 "float64 input", "diabetes (FP64 features)", onx, {"X": Xr},
                 reg_check(reg, Xr),
                 note="TreeEnsembleRegressor with *_as_tensor (double) attributes, built from "
                      "skl2onnx's attribute helper; output stays FP32 as the op defines")


@corpus_model
def dt_clf_wine_f64():
    X, y = data_wine()
    X = X.astype(np.float64)
    X_tr, X_te, y_tr, _ = split(X, y, True)
    clf = DecisionTreeClassifier(max_depth=5, random_state=SEED).fit(X_tr, y_tr)
    node = double_tree_node(clf, classifier=True)
    onx = hand_model("dt_clf_wine_f64", [node], [vinfo("X", TensorProto.DOUBLE, ["N", 13])],
                     [vinfo("label", TensorProto.INT64, ["N"]),
                      vinfo("probabilities", TensorProto.FLOAT, ["N", 3])], ml=3)
    Xr = cycle_rows(X_te)
    return Entry("dt_clf_wine_f64", "DecisionTreeClassifier(max_depth=5), float64 input",
                 "wine (FP64 features)", onx, {"X": Xr}, clf_check(clf, Xr),
                 note="TreeEnsembleClassifier with *_as_tensor (double) attributes")


def v3_to_v5(node):
    """TreeEnsembleRegressor (float, SUM/AVERAGE, one weight per leaf) -> TreeEnsemble (opset 5)."""
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    tids, nids = a["nodes_treeids"], a["nodes_nodeids"]
    key = {(t, n): i for i, (t, n) in enumerate(zip(tids, nids))}
    leaf_w = {}
    for t, n, tg, w in zip(a["target_treeids"], a["target_nodeids"], a["target_ids"],
                           a["target_weights"]):
        if (t, n) in leaf_w:
            fail("v3_to_v5: more than one weight on a leaf")
        leaf_w[(t, n)] = (tg, w)
    inner, leaves, roots = {}, {}, []
    out = {k: [] for k in ("nodes_featureids", "nodes_modes", "nodes_splits", "nodes_truenodeids",
                           "nodes_trueleafs", "nodes_falsenodeids", "nodes_falseleafs",
                           "nodes_missing_value_tracks_true", "leaf_targetids", "leaf_weights")}
    modes = [m.decode() for m in a["nodes_modes"]]
    missing = a.get("nodes_missing_value_tracks_true", [0] * len(tids))

    def visit(t, n):  # returns (index, is_leaf)
        i = key[(t, n)]
        if modes[i] == "LEAF":
            if (t, n) not in leaves:
                tg, w = leaf_w[(t, n)]
                leaves[(t, n)] = len(out["leaf_weights"])
                out["leaf_targetids"].append(tg)
                out["leaf_weights"].append(w)
            return leaves[(t, n)], 1
        idx = len(out["nodes_featureids"])
        inner[(t, n)] = idx
        out["nodes_featureids"].append(a["nodes_featureids"][i])
        out["nodes_modes"].append(V5_MODES.index(modes[i]))
        out["nodes_splits"].append(a["nodes_values"][i])
        out["nodes_missing_value_tracks_true"].append(missing[i])
        for k in ("nodes_truenodeids", "nodes_trueleafs", "nodes_falsenodeids", "nodes_falseleafs"):
            out[k].append(0)
        ti, tl = visit(t, a["nodes_truenodeids"][i])
        fi, fl = visit(t, a["nodes_falsenodeids"][i])
        out["nodes_truenodeids"][idx], out["nodes_trueleafs"][idx] = ti, tl
        out["nodes_falsenodeids"][idx], out["nodes_falseleafs"][idx] = fi, fl
        return idx, 0

    for t in sorted(set(tids)):
        idx, is_leaf = visit(t, 0)
        if is_leaf:
            fail("v3_to_v5: single-leaf tree")
        roots.append(idx)
    agg = a.get("aggregate_function", b"SUM").decode()
    return helper.make_node(
        "TreeEnsemble", list(node.input), list(node.output), domain=ML, name="TreeEnsemble",
        tree_roots=roots,
        nodes_featureids=out["nodes_featureids"],
        nodes_modes=numpy_helper.from_array(np.array(out["nodes_modes"], dtype=np.uint8)),
        nodes_splits=numpy_helper.from_array(np.array(out["nodes_splits"], dtype=np.float32)),
        nodes_truenodeids=out["nodes_truenodeids"], nodes_trueleafs=out["nodes_trueleafs"],
        nodes_falsenodeids=out["nodes_falsenodeids"], nodes_falseleafs=out["nodes_falseleafs"],
        nodes_missing_value_tracks_true=out["nodes_missing_value_tracks_true"],
        leaf_targetids=out["leaf_targetids"],
        leaf_weights=numpy_helper.from_array(np.array(out["leaf_weights"], dtype=np.float32)),
        n_targets=int(a["n_targets"]), aggregate_function=V5_AGG.index(agg),
        post_transform=V5_POST.index(a.get("post_transform", b"NONE").decode()))


@corpus_model
def rf_reg_diabetes_te5():
    X, y = data_diabetes()
    X_tr, X_te, y_tr, _ = split(X, y, False)
    reg = RandomForestRegressor(n_estimators=12, max_depth=6, random_state=SEED, n_jobs=1)
    reg.fit(X_tr, y_tr)
    v3 = skl(reg, [("X", FloatTensorType([None, 10]))])
    nodes = [v3_to_v5(n) if n.op_type == "TreeEnsembleRegressor" else n for n in v3.graph.node]
    del v3.graph.node[:]
    v3.graph.node.extend(nodes)
    for o in v3.opset_import:
        if o.domain == ML:
            o.version = 5
    Xr = cycle_rows(X_te)
    return Entry("rf_reg_diabetes_te5", "RandomForestRegressor(n_estimators=12, max_depth=6) "
                 "as opset-5 TreeEnsemble", "diabetes", v3, {"X": Xr}, reg_check(reg, Xr),
                 note="skl2onnx's TreeEnsembleRegressor rewritten into ai.onnx.ml opset 5 "
                      "TreeEnsemble (skl2onnx 1.20 does not emit it)")


@corpus_model
def et_clf_digits():
    X, y = data_digits()
    X_tr, X_te, y_tr, _ = split(X, y, True, test_size=N_REF)
    clf = ExtraTreesClassifier(n_estimators=10, max_depth=6, random_state=SEED, n_jobs=1)
    clf.fit(X_tr, y_tr)
    onx = skl(clf, [("X", FloatTensorType([None, 64]))], no_zipmap(clf))
    return Entry("et_clf_digits", "ExtraTreesClassifier(n_estimators=10, max_depth=6)",
                 "digits (10 classes, 64 pixel features 0..16)", onx, {"X": X_te},
                 clf_check(clf, X_te))


@corpus_model
def et_reg_diabetes():
    X, y = data_diabetes()
    X_tr, X_te, y_tr, _ = split(X, y, False)
    reg = ExtraTreesRegressor(n_estimators=25, max_depth=8, random_state=SEED, n_jobs=1)
    reg.fit(X_tr, y_tr)
    onx = skl(reg, [("X", FloatTensorType([None, 10]))])
    Xr = cycle_rows(X_te)
    return Entry("et_reg_diabetes", "ExtraTreesRegressor(n_estimators=25, max_depth=8)",
                 "diabetes", onx, {"X": Xr}, reg_check(reg, Xr))


@corpus_model
def gb_clf_bc():
    X, y = data_bc()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    clf = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=SEED)
    clf.fit(X_tr, y_tr)
    onx = skl(clf, [("X", FloatTensorType([None, 30]))], no_zipmap(clf))
    Xr = cycle_rows(X_te)
    return Entry("gb_clf_bc", "GradientBoostingClassifier(n_estimators=40, max_depth=3)",
                 "breast_cancer (binary)", onx, {"X": Xr}, clf_check(clf, Xr))


@corpus_model
def gb_clf_wine():
    X, y = data_wine()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    clf = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=SEED)
    clf.fit(X_tr, y_tr)
    onx = declare_ml_opset(skl(clf, [("X", FloatTensorType([None, 13]))], no_zipmap(clf)), 3)
    Xr = cycle_rows(X_te)
    return Entry("gb_clf_wine", "GradientBoostingClassifier(n_estimators=30, max_depth=3)",
                 "wine (3 classes)", onx, {"X": Xr}, clf_check(clf, Xr),
                 note="ai.onnx.ml opset declared as 3")


@corpus_model
def gb_reg_diabetes():
    X, y = data_diabetes()
    X_tr, X_te, y_tr, _ = split(X, y, False)
    reg = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=SEED)
    reg.fit(X_tr, y_tr)
    onx = skl(reg, [("X", FloatTensorType([None, 10]))])
    Xr = cycle_rows(X_te)
    return Entry("gb_reg_diabetes", "GradientBoostingRegressor(n_estimators=50, max_depth=3)",
                 "diabetes", onx, {"X": Xr}, reg_check(reg, Xr))


@corpus_model
def hgb_clf_bc_nan():
    X, y = data_bc()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    X_tr = inject_nan(X_tr, 0.1, SEED + 1)
    clf = HistGradientBoostingClassifier(max_iter=30, max_depth=5, random_state=SEED)
    clf.fit(X_tr, y_tr)
    onx = skl(clf, [("X", FloatTensorType([None, 30]))], no_zipmap(clf))
    Xr = inject_nan(cycle_rows(X_te), 0.1, SEED + 2)
    return Entry("hgb_clf_bc_nan", "HistGradientBoostingClassifier(max_iter=30, max_depth=5), "
                 "trained with 10% NaN", "breast_cancer (binary), 10% NaN in train and reference rows",
                 onx, {"X": Xr}, clf_check(clf, Xr))


@corpus_model
def hgb_clf_wine_nan():
    X, y = data_wine()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    X_tr = inject_nan(X_tr, 0.1, SEED + 3)
    clf = HistGradientBoostingClassifier(max_iter=20, max_depth=4, random_state=SEED)
    clf.fit(X_tr, y_tr)
    onx = skl(clf, [("X", FloatTensorType([None, 13]))], no_zipmap(clf))
    Xr = inject_nan(cycle_rows(X_te), 0.1, SEED + 4)
    return Entry("hgb_clf_wine_nan", "HistGradientBoostingClassifier(max_iter=20, max_depth=4), "
                 "trained with 10% NaN", "wine (3 classes), 10% NaN in train and reference rows",
                 onx, {"X": Xr}, clf_check(clf, Xr))


@corpus_model
def hgb_reg_diabetes_nan():
    X, y = data_diabetes()
    X_tr, X_te, y_tr, _ = split(X, y, False)
    X_tr = inject_nan(X_tr, 0.1, SEED + 5)
    reg = HistGradientBoostingRegressor(max_iter=40, max_depth=5, random_state=SEED)
    reg.fit(X_tr, y_tr)
    onx = declare_ml_opset(skl(reg, [("X", FloatTensorType([None, 10]))]), 3)
    Xr = inject_nan(cycle_rows(X_te), 0.1, SEED + 6)

    def check(outs):
        # skl2onnx stores HGB's float64 thresholds rounded to nearest float32 (no
        # adjustment, unlike its RandomForest path), so a float32 x equal to the
        # rounded-up threshold goes left in ONNX and right in scikit-learn. Check
        # ORT exactly against scikit-learn's trees walked with float32 thresholds,
        # and against reg.predict on every row that never meets such a threshold.
        got = outs["variable"].ravel()
        emul, ambiguous = hgb_predict_f32(reg, Xr)
        err = check_close("variable vs float32-threshold trees", got, emul)
        ok = ~ambiguous
        check_close("variable vs predict (unambiguous rows)", got[ok], reg.predict(Xr)[ok])
        if ambiguous.sum() > 0.02 * len(Xr):
            fail(f"{ambiguous.sum()} rows meet a float32-rounded threshold")
        return (f"max |err| {err:.2g} vs float32-threshold trees; {int(ambiguous.sum())} rows meet "
                f"a rounded-up threshold (differ from predict by up to "
                f"{np.abs(got - reg.predict(Xr)).max():.3g})")
    return Entry("hgb_reg_diabetes_nan", "HistGradientBoostingRegressor(max_iter=40, max_depth=5), "
                 "trained with 10% NaN", "diabetes, 10% NaN in train and reference rows",
                 onx, {"X": Xr}, check, note="ai.onnx.ml opset declared as 3",
                 tol="ORT is checked against scikit-learn's trees walked with float32-rounded "
                     "thresholds (what skl2onnx exports); 2 of 300 rows equal a threshold that "
                     "rounded up, so they differ from predict()")


def hgb_predict_f32(reg, X):
    """HGB regressor raw prediction with thresholds rounded to float32 as skl2onnx
    exports them; also flags rows whose path differs from float64 thresholds."""
    X64 = X.astype(np.float64)
    out = np.full(len(X), float(np.ravel(reg._baseline_prediction)[0]))
    ambiguous = np.zeros(len(X), dtype=bool)
    for pred in reg._predictors:
        nodes = pred[0].nodes
        for r, x in enumerate(X64):
            i = 0
            while not nodes[i]["is_leaf"]:
                v, t = x[nodes[i]["feature_idx"]], nodes[i]["num_threshold"]
                if np.isnan(v):
                    left = bool(nodes[i]["missing_go_to_left"])
                else:
                    left = bool(v <= np.float64(np.float32(t)))
                    if left != bool(v <= t):
                        ambiguous[r] = True
                i = nodes[i]["left"] if left else nodes[i]["right"]
            out[r] += nodes[i]["value"]
    return out, ambiguous


@corpus_model
def dt_clf_digits():
    X, y = data_digits()
    X_tr, X_te, y_tr, _ = split(X, y, True, test_size=N_REF)
    clf = DecisionTreeClassifier(max_depth=8, random_state=SEED).fit(X_tr, y_tr)
    onx = skl(clf, [("X", FloatTensorType([None, 64]))], no_zipmap(clf))
    return Entry("dt_clf_digits", "DecisionTreeClassifier(max_depth=8)",
                 "digits (10 classes)", onx, {"X": X_te}, clf_check(clf, X_te))


@corpus_model
def dt_reg_diabetes():
    X, y = data_diabetes()
    X_tr, X_te, y_tr, _ = split(X, y, False)
    reg = DecisionTreeRegressor(max_depth=8, random_state=SEED).fit(X_tr, y_tr)
    onx = skl(reg, [("X", FloatTensorType([None, 10]))])
    Xr = cycle_rows(X_te)
    return Entry("dt_reg_diabetes", "DecisionTreeRegressor(max_depth=8)", "diabetes", onx,
                 {"X": Xr}, reg_check(reg, Xr))


# --------------------------------------------------------------------------
# Linear models and SVMs
# --------------------------------------------------------------------------
def quiet_fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


@corpus_model
def logreg_bc():
    X, y = data_bc()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    pipe = quiet_fit(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), X_tr, y_tr)
    onx = skl(pipe, [("X", FloatTensorType([None, 30]))], no_zipmap(pipe.steps[-1][1]))
    Xr = cycle_rows(X_te)
    return Entry("logreg_bc", "make_pipeline(StandardScaler(), LogisticRegression())",
                 "breast_cancer (binary)", onx, {"X": Xr}, clf_check(pipe, Xr))


@corpus_model
def logreg_wine_zipmap():
    X, y = data_wine()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    pipe = quiet_fit(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), X_tr, y_tr)
    onx = skl(pipe, [("X", FloatTensorType([None, 13]))])  # default ZipMap
    Xr = cycle_rows(X_te)
    return Entry("logreg_wine_zipmap", "make_pipeline(StandardScaler(), LogisticRegression()), "
                 "default ZipMap", "wine (3 classes)", onx, {"X": Xr},
                 clf_check(pipe, Xr, label="output_label", proba="output_probability"))


@corpus_model
def linsvc_wine():
    X, y = data_wine()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    pipe = quiet_fit(make_pipeline(StandardScaler(), LinearSVC(random_state=SEED)), X_tr, y_tr)
    onx = skl(pipe, [("X", FloatTensorType([None, 13]))], no_zipmap(pipe.steps[-1][1]))
    Xr = cycle_rows(X_te)
    return Entry("linsvc_wine", "make_pipeline(StandardScaler(), LinearSVC())", "wine (3 classes)",
                 onx, {"X": Xr}, clf_check(pipe, Xr, scores=pipe.decision_function),
                 note="`probabilities` holds the decision_function scores")


@corpus_model
def linreg_diabetes():
    X, y = data_diabetes()
    X_tr, X_te, y_tr, _ = split(X, y, False)
    reg = LinearRegression().fit(X_tr, y_tr)
    onx = skl(reg, [("X", FloatTensorType([None, 10]))])
    Xr = cycle_rows(X_te)
    return Entry("linreg_diabetes", "LinearRegression()", "diabetes", onx, {"X": Xr},
                 reg_check(reg, Xr))


@corpus_model
def ridge_linnerud_multi():
    X, Y, Xr = data_linnerud()
    pipe = make_pipeline(MinMaxScaler(), Ridge(alpha=1.0)).fit(X, Y)
    onx = skl(pipe, [("X", FloatTensorType([None, 3]))])
    return Entry("ridge_linnerud_multi", "make_pipeline(MinMaxScaler(), Ridge()), 3 targets",
                 "linnerud (3 targets; 20 real + 280 synthetic reference rows)", onx, {"X": Xr},
                 reg_check(pipe, Xr))


@corpus_model
def svc_rbf_proba_wine():
    X, y = data_wine()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    pipe = make_pipeline(StandardScaler(), SVC(probability=True, random_state=SEED)).fit(X_tr, y_tr)
    onx = skl(pipe, [("X", FloatTensorType([None, 13]))], no_zipmap(pipe.steps[-1][1]))
    Xr = cycle_rows(X_te)
    return Entry("svc_rbf_proba_wine", "make_pipeline(StandardScaler(), SVC(probability=True))",
                 "wine (3 classes)", onx, {"X": Xr}, clf_check(pipe, Xr, atol=1e-4, rtol=1e-3),
                 tol="probabilities atol 1e-4, rtol 1e-3 (libsvm's pairwise coupling iterates in "
                     "double; ORT in float)")


@corpus_model
def svc_rbf_iris_str():
    X, y = data_iris_str()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    clf = SVC(kernel="rbf", gamma="scale", C=1.0).fit(X_tr, y_tr)
    onx = skl(clf, [("X", FloatTensorType([None, 4]))], no_zipmap(clf))
    Xr = cycle_rows(X_te)
    return Entry("svc_rbf_iris_str", "SVC(kernel='rbf') (no probability), string labels",
                 "iris (3 classes, species names)", onx, {"X": Xr},
                 clf_check(clf, Xr, scores=clf.decision_function),
                 note="`probabilities` holds decision_function (ovr) scores")


@corpus_model
def svc_linear_bc():
    X, y = data_bc()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    pipe = make_pipeline(StandardScaler(), SVC(kernel="linear", C=0.1)).fit(X_tr, y_tr)
    onx = skl(pipe, [("X", FloatTensorType([None, 30]))], no_zipmap(pipe.steps[-1][1]))
    Xr = cycle_rows(X_te)

    def scores(Xl):
        d = pipe.decision_function(Xl)
        return np.stack([d, -d], axis=1)
    return Entry("svc_linear_bc", "make_pipeline(StandardScaler(), SVC(kernel='linear'))",
                 "breast_cancer (binary)", onx, {"X": Xr}, clf_check(pipe, Xr, scores=scores),
                 note="`probabilities` holds [d, -d] for decision_function d (as exported)")


@corpus_model
def svc_poly_wine():
    X, y = data_wine()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    pipe = make_pipeline(StandardScaler(), SVC(kernel="poly", degree=3, coef0=1.0)).fit(X_tr, y_tr)
    onx = skl(pipe, [("X", FloatTensorType([None, 13]))], no_zipmap(pipe.steps[-1][1]))
    Xr = cycle_rows(X_te)
    return Entry("svc_poly_wine", "make_pipeline(StandardScaler(), SVC(kernel='poly', degree=3))",
                 "wine (3 classes)", onx, {"X": Xr},
                 clf_check(pipe, Xr, scores=pipe.decision_function),
                 note="`probabilities` holds decision_function (ovr) scores")


@corpus_model
def svr_rbf_diabetes():
    X, y = data_diabetes()
    X_tr, X_te, y_tr, _ = split(X, y, False)
    pipe = make_pipeline(StandardScaler(), SVR(kernel="rbf", C=50.0)).fit(X_tr, y_tr)
    onx = skl(pipe, [("X", FloatTensorType([None, 10]))])
    Xr = cycle_rows(X_te)
    return Entry("svr_rbf_diabetes", "make_pipeline(StandardScaler(), SVR(kernel='rbf', C=50))",
                 "diabetes", onx, {"X": Xr}, reg_check(pipe, Xr))


@corpus_model
def svr_sigmoid_diabetes():
    X, y = data_diabetes()
    X_tr, X_te, y_tr, _ = split(X, y, False)
    pipe = make_pipeline(StandardScaler(), SVR(kernel="sigmoid", C=5.0, gamma=0.01)).fit(X_tr, y_tr)
    onx = skl(pipe, [("X", FloatTensorType([None, 10]))])
    Xr = cycle_rows(X_te)
    return Entry("svr_sigmoid_diabetes",
                 "make_pipeline(StandardScaler(), SVR(kernel='sigmoid', C=5, gamma=0.01))",
                 "diabetes", onx, {"X": Xr}, reg_check(pipe, Xr))


# --------------------------------------------------------------------------
# Preprocessing pipelines
# --------------------------------------------------------------------------
def binned_categories(X, cols, n_bins):
    """Integer category codes 0..n_bins-1 from quantiles of the given columns."""
    out = []
    for c, b in zip(cols, n_bins):
        edges = np.quantile(X[:, c], np.linspace(0, 1, b + 1)[1:-1])
        out.append(np.digitize(X[:, c], edges))
    return np.stack(out, axis=1).astype(np.int64)


@corpus_model
def coltrans_bc():
    X, y = data_bc()
    num = X[:, :6]
    cat = binned_categories(X, [20, 22, 26], [4, 3, 5])
    idx_tr, idx_te = split(np.arange(len(y)), y, True)[:2]
    obj = np.empty((len(y), 9), dtype=object)
    obj[:, :6] = num
    obj[:, 6:] = cat
    ct = ColumnTransformer([
        ("num", StandardScaler(), [0, 1, 2, 3, 4, 5]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), [6, 7, 8]),
    ])
    pipe = quiet_fit(Pipeline([("ct", ct), ("clf", LogisticRegression(max_iter=1000))]),
                     obj[idx_tr], y[idx_tr])
    onx = skl(pipe, [("num", FloatTensorType([None, 6])), ("cat", Int64TensorType([None, 3]))],
              no_zipmap(pipe.named_steps["clf"]))
    rows = cycle_rows(idx_te)
    inputs = {"num": num[rows], "cat": cat[rows]}
    # a few unseen category codes in the reference rows (handle_unknown='ignore')
    inputs["cat"][::37, 1] = 7
    obj_ref = np.empty((N_REF, 9), dtype=object)
    obj_ref[:, :6] = inputs["num"]
    obj_ref[:, 6:] = inputs["cat"]
    return Entry("coltrans_bc", "Pipeline(ColumnTransformer([StandardScaler() on 6 numeric, "
                 "OneHotEncoder(handle_unknown='ignore') on 3 int64]), LogisticRegression())",
                 "breast_cancer: 6 raw features + 3 quantile-binned int codes (some unseen codes "
                 "in the reference rows)", onx, inputs, clf_check(pipe, obj_ref))


@corpus_model
def imputer_scaler_linreg_nan():
    X, y = data_diabetes()
    X_tr, X_te, y_tr, _ = split(X, y, False)
    X_tr = inject_nan(X_tr, 0.1, SEED + 7)
    pipe = make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), LinearRegression())
    pipe.fit(X_tr, y_tr)
    onx = skl(pipe, [("X", FloatTensorType([None, 10]))])
    Xr = inject_nan(cycle_rows(X_te), 0.1, SEED + 8)
    return Entry("imputer_scaler_linreg_nan",
                 "make_pipeline(SimpleImputer(strategy='mean'), StandardScaler(), LinearRegression())",
                 "diabetes, 10% NaN in train and reference rows", onx, {"X": Xr},
                 reg_check(pipe, Xr))


def transformer_entry(name, est, X_fit, Xr, estimator, dataset, atol=1e-6, rtol=1e-5):
    est.fit(X_fit)
    onx = skl(est, [("X", FloatTensorType([None, X_fit.shape[1]]))])
    return Entry(name, estimator, dataset, onx, {"X": Xr},
                 reg_check(est, Xr, atol=atol, rtol=rtol, predict=est.transform))


@corpus_model
def normalizer_l1():
    X, _ = data_diabetes()
    return transformer_entry("normalizer_l1", Normalizer(norm="l1"), X, X[-N_REF:],
                             "Normalizer(norm='l1') (transformer only)",
                             "diabetes (last 300 rows; signed values)")


@corpus_model
def normalizer_l2():
    X, _ = data_diabetes()
    return transformer_entry("normalizer_l2", Normalizer(norm="l2"), X, X[:N_REF],
                             "Normalizer(norm='l2') (transformer only)", "diabetes (first 300 rows)")


@corpus_model
def normalizer_max():
    # Non-negative data on purpose: for a row whose largest value is negative
    # ORT's MAX divides by the signed max while scikit-learn divides by max |x|
    # (see normalizer_ort_signed).
    X, _ = data_wine()
    return transformer_entry("normalizer_max", Normalizer(norm="max"), X, cycle_rows(X),
                             "Normalizer(norm='max') (transformer only)",
                             "wine (all 178 rows, cycled; all values >= 0)")


@corpus_model
def normalizer_ort_signed():
    X, _ = data_diabetes()
    Xr = X[:N_REF].copy()
    Xr[7] = 0.0                   # all-zero row
    Xr[11] = -np.abs(Xr[11])      # all-negative rows
    Xr[23] = -np.abs(Xr[23])
    nodes = [helper.make_node("Normalizer", ["X"], [f"y_{n.lower()}"], domain=ML,
                              name=f"normalizer_{n.lower()}", norm=n) for n in ("L1", "L2", "MAX")]
    onx = hand_model("normalizer_ort_signed", nodes, [vinfo("X", TensorProto.FLOAT, ["N", 10])],
                     [vinfo(f"y_{n}", TensorProto.FLOAT, ["N", 10]) for n in ("l1", "l2", "max")])

    def check(outs):
        x = Xr.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            want = {"y_l1": x / np.abs(x).sum(axis=1, keepdims=True),
                    "y_l2": x / np.sqrt((x * x).sum(axis=1, keepdims=True)),
                    "y_max": x / x.max(axis=1, keepdims=True)}
        for k, w in want.items():
            check_close(k, outs[k], np.nan_to_num(w, nan=0.0), atol=1e-6, rtol=1e-5)
        return "L1 = x/sum|x|, L2 = x/sqrt(sum x^2), MAX = x/max(x) (signed); zero row -> 0"
    return Entry("normalizer_ort_signed", "hand-built ai.onnx.ml Normalizer L1, L2 and MAX on "
                 "signed rows", "diabetes (first 300 rows; row 7 all zero, rows 11 and 23 "
                 "all negative)", onx, {"X": Xr}, check,
                 note="MAX divides by the signed row max (ORT); scikit-learn's norm='max' "
                      "divides by max |x|, so all-negative rows differ from scikit-learn")


@corpus_model
def binarizer_diabetes():
    X, _ = data_diabetes()
    return transformer_entry("binarizer_diabetes", Binarizer(threshold=0.01), X, X[:N_REF],
                             "Binarizer(threshold=0.01) (transformer only)",
                             "diabetes (first 300 rows)", atol=0, rtol=0)


@corpus_model
def labelenc_str2int():
    _, y = data_iris_str()
    le = LabelEncoder().fit(y)
    onx = skl(le, [("X", StringTensorType([None]))], ml=2)
    rng = np.random.default_rng(SEED)
    names = np.array(list(le.classes_), dtype=object)
    Xr = names[rng.integers(0, len(names), N_REF)]

    def check(outs):
        check_equal("variable", outs["variable"], le.transform(Xr))
        return "labels equal"
    return Entry("labelenc_str2int", "LabelEncoder() fitted on iris species names",
                 "iris species names (random draw)", onx, {"X": Xr}, check)


def ml_label_encoder(name, ml, attrs, x, y_elem):
    node = helper.make_node("LabelEncoder", ["X"], ["Y"], domain=ML, name="LabelEncoder", **attrs)
    x_elem = TensorProto.STRING if x.dtype == object else TensorProto.INT64
    return hand_model(name, [node], [vinfo("X", x_elem, ["N"] + list(x.shape[1:]))],
                      [vinfo("Y", y_elem, ["N"] + list(x.shape[1:]))], ml=ml)


@corpus_model
def labelenc_int2str_v2():
    rng = np.random.default_rng(SEED + 10)
    keys = [3, 1, 4, 15, 9, 26]
    vals = ["three", "one", "four", "fifteen", "nine", "twenty-six"]
    x = rng.choice(np.array(keys + [0, 2, 100], dtype=np.int64), size=(N_REF, 2))
    onx = ml_label_encoder("labelenc_int2str_v2", 2,
                           dict(keys_int64s=keys, values_strings=vals, default_string="_unknown"),
                           x, TensorProto.STRING)
    table = dict(zip(keys, vals))

    def check(outs):
        want = np.vectorize(lambda k: table.get(int(k), "_unknown"), otypes=[object])(x)
        check_equal("Y", outs["Y"], want)
        return "strings equal"
    return Entry("labelenc_int2str_v2", "hand-built ai.onnx.ml LabelEncoder (opset 2): "
                 "int64 -> string, [N,2] input, default for unknown keys",
                 "random int64 keys (some unmapped)", onx, {"X": x}, check)


@corpus_model
def labelenc_int2float_v4():
    rng = np.random.default_rng(SEED + 11)
    keys = np.array([10, 20, 30, 40], dtype=np.int64)
    vals = np.array([0.5, -1.25, 3.0, 1e-3], dtype=np.float32)
    x = rng.choice(np.array([10, 20, 30, 40, 50], dtype=np.int64), size=N_REF)
    onx = ml_label_encoder("labelenc_int2float_v4", 4, dict(
        keys_tensor=numpy_helper.from_array(keys, "keys"),
        values_tensor=numpy_helper.from_array(vals, "values"),
        default_tensor=numpy_helper.from_array(np.array([-7.5], dtype=np.float32), "default")),
        x, TensorProto.FLOAT)
    table = dict(zip(keys.tolist(), vals.tolist()))

    def check(outs):
        want = np.array([table.get(int(k), -7.5) for k in x], dtype=np.float32)
        check_close("Y", outs["Y"], want, atol=0, rtol=0)
        return "values equal"
    return Entry("labelenc_int2float_v4", "hand-built ai.onnx.ml LabelEncoder (opset 4): "
                 "int64 -> float via keys_tensor/values_tensor/default_tensor",
                 "random int64 keys (some unmapped)", onx, {"X": x}, check)


@corpus_model
def labelenc_str2int_v1():
    rng = np.random.default_rng(SEED + 12)
    classes = ["red", "green", "blue", "cyan"]
    pool = np.array(classes + ["magenta", ""], dtype=object)
    x = pool[rng.integers(0, len(pool), N_REF)]
    onx = ml_label_encoder("labelenc_str2int_v1", 1,
                           dict(classes_strings=classes, default_int64=-1), x, TensorProto.INT64)

    def check(outs):
        want = np.array([classes.index(s) if s in classes else -1 for s in x], dtype=np.int64)
        check_equal("Y", outs["Y"], want)
        return "labels equal"
    return Entry("labelenc_str2int_v1", "hand-built ai.onnx.ml LabelEncoder (opset 1): string -> "
                 "int64 via classes_strings, default_int64=-1", "random strings (some unknown)",
                 onx, {"X": x}, check)


@corpus_model
def array_feature_extractor():
    X, _ = data_wine()
    Xr = cycle_rows(X)
    rng = np.random.default_rng(SEED + 13)
    K = rng.integers(-50, 50, size=(N_REF, 5)).astype(np.int64)
    nodes = [
        helper.make_node("ArrayFeatureExtractor", ["X", "idx_x"], ["x_cols"], domain=ML,
                         name="afe_float"),
        helper.make_node("ArrayFeatureExtractor", ["K", "idx_k"], ["k_cols"], domain=ML,
                         name="afe_int64"),
    ]
    ix, ik = np.array([12, 0, 6, 6], dtype=np.int64), np.array([4, 1], dtype=np.int64)
    onx = hand_model("array_feature_extractor", nodes,
                     [vinfo("X", TensorProto.FLOAT, ["N", 13]), vinfo("K", TensorProto.INT64, ["N", 5])],
                     [vinfo("x_cols", TensorProto.FLOAT, ["N", 4]),
                      vinfo("k_cols", TensorProto.INT64, ["N", 2])],
                     [numpy_helper.from_array(ix, "idx_x"), numpy_helper.from_array(ik, "idx_k")])

    def check(outs):
        check_equal("x_cols", outs["x_cols"], Xr[:, ix])
        check_equal("k_cols", outs["k_cols"], K[:, ik])
        return "columns equal"
    return Entry("array_feature_extractor", "hand-built ai.onnx.ml ArrayFeatureExtractor "
                 "(FP32 columns [12,0,6,6] incl. a repeat; INT64 columns [4,1]; indices are "
                 "initializers)", "wine rows + random int64", onx, {"X": Xr, "K": K}, check)


@corpus_model
def feature_vectorizer():
    X, _ = data_wine()
    Xr = cycle_rows(X)
    rng = np.random.default_rng(SEED + 14)
    A, B, C = Xr[:, :3].copy(), Xr[:, 3:5].copy(), Xr[:, 5:6].copy()
    I1 = rng.integers(-1000, 1000, size=(N_REF, 2)).astype(np.int64)
    I2 = rng.integers(0, 5, size=(N_REF, 3)).astype(np.int64)
    nodes = [
        helper.make_node("FeatureVectorizer", ["A", "B", "C"], ["fv_float"], domain=ML,
                         name="fv_float", inputdimensions=[3, 2, 1]),
        helper.make_node("FeatureVectorizer", ["I1", "I2"], ["fv_int64"], domain=ML,
                         name="fv_int64", inputdimensions=[2, 3]),
    ]
    onx = hand_model("feature_vectorizer", nodes,
                     [vinfo("A", TensorProto.FLOAT, ["N", 3]), vinfo("B", TensorProto.FLOAT, ["N", 2]),
                      vinfo("C", TensorProto.FLOAT, ["N", 1]), vinfo("I1", TensorProto.INT64, ["N", 2]),
                      vinfo("I2", TensorProto.INT64, ["N", 3])],
                     [vinfo("fv_float", TensorProto.FLOAT, ["N", 6]),
                      vinfo("fv_int64", TensorProto.FLOAT, ["N", 5])])

    def check(outs):
        check_equal("fv_float", outs["fv_float"], np.concatenate([A, B, C], axis=1))
        check_equal("fv_int64", outs["fv_int64"],
                    np.concatenate([I1, I2], axis=1).astype(np.float32))
        return "values equal"
    return Entry("feature_vectorizer", "hand-built ai.onnx.ml FeatureVectorizer: 3 FP32 inputs "
                 "(widths 3,2,1) and, separately, 2 INT64 inputs (widths 2,3) -> FP32 (ORT binds "
                 "all inputs of one node to one type)", "wine rows + random int64", onx,
                 {"A": A, "B": B, "C": C, "I1": I1, "I2": I2}, check)


@corpus_model
def onehot_ml_int64():
    rng = np.random.default_rng(SEED + 15)
    cats = [2, 3, 5, 7, 11]
    x = rng.choice(np.array(cats + [4, 0], dtype=np.int64), size=(N_REF, 2))
    s = np.array(["lo", "mid", "hi", "??"], dtype=object)[rng.integers(0, 4, size=(N_REF, 1))]
    nodes = [
        helper.make_node("OneHotEncoder", ["X"], ["onehot"], domain=ML, name="ohe_int64",
                         cats_int64s=cats, zeros=1),
        helper.make_node("OneHotEncoder", ["S"], ["onehot_str"], domain=ML, name="ohe_str",
                         cats_strings=["lo", "mid", "hi"], zeros=1),
    ]
    onx = hand_model("onehot_ml_int64", nodes,
                     [vinfo("X", TensorProto.INT64, ["N", 2]), vinfo("S", TensorProto.STRING, ["N", 1])],
                     [vinfo("onehot", TensorProto.FLOAT, ["N", 2, 5]),
                      vinfo("onehot_str", TensorProto.FLOAT, ["N", 1, 3])])

    def check(outs):
        want = (x[:, :, None] == np.array(cats)[None, None, :]).astype(np.float32)
        check_equal("onehot", outs["onehot"], want)
        want_s = (s[:, :, None] == np.array(["lo", "mid", "hi"], dtype=object)[None, None, :])
        check_equal("onehot_str", outs["onehot_str"], want_s.astype(np.float32))
        return "values equal"
    return Entry("onehot_ml_int64", "hand-built ai.onnx.ml OneHotEncoder: int64 [N,2] with "
                 "cats_int64s (5 cats, zeros=1, unknown codes -> all-zero rows) and string [N,1] "
                 "with cats_strings", "random codes", onx, {"X": x, "S": s}, check)


@corpus_model
def linear_classifier_probit():
    # LinearClassifier variants that LogisticRegression never emits.
    rng = np.random.default_rng(SEED + 16)
    X, _ = data_iris()
    Xr = cycle_rows(X)
    coef = np.round(rng.uniform(-0.02, 0.02, size=(3, 4)), 4).astype(np.float32)
    icpt = np.array([0.4, 0.5, 0.45], dtype=np.float32)
    nodes = [
        helper.make_node("LinearClassifier", ["X"], ["label_sz", "scores_sz"], domain=ML,
                         name="lc_softmax_zero", coefficients=coef.ravel().tolist(),
                         intercepts=[0.0, 1.0, -1.0], classlabels_strings=["a", "b", "c"],
                         post_transform="SOFTMAX_ZERO", multi_class=0),
        helper.make_node("LinearClassifier", ["X"], ["label_pr", "scores_pr"], domain=ML,
                         name="lc_probit", coefficients=coef.ravel().tolist(),
                         intercepts=icpt.tolist(), classlabels_ints=[10, 20, 30],
                         post_transform="PROBIT", multi_class=0),
    ]
    onx = hand_model("linear_classifier_probit", nodes, [vinfo("X", TensorProto.FLOAT, ["N", 4])],
                     [vinfo("label_sz", TensorProto.STRING, ["N"]),
                      vinfo("scores_sz", TensorProto.FLOAT, ["N", 3]),
                      vinfo("label_pr", TensorProto.INT64, ["N"]),
                      vinfo("scores_pr", TensorProto.FLOAT, ["N", 3])])

    def check(outs):
        raw = Xr.astype(np.float64) @ coef.T.astype(np.float64)
        z = raw + np.array([0.0, 1.0, -1.0])
        e = np.exp(z - z.max(axis=1, keepdims=True))
        check_close("scores_sz", outs["scores_sz"], e / e.sum(axis=1, keepdims=True))
        check_equal("label_sz", outs["label_sz"], np.array(["a", "b", "c"])[z.argmax(axis=1)])
        p = raw + icpt
        if not ((p > 0) & (p < 1)).all():
            fail("linear_classifier_probit: PROBIT input outside (0,1)")
        check_close("scores_pr", outs["scores_pr"], ndtri(p), atol=1e-3, rtol=0)
        check_equal("label_pr", outs["label_pr"], np.array([10, 20, 30])[p.argmax(axis=1)])
        return "labels equal, scores close"
    return Entry("linear_classifier_probit", "hand-built ai.onnx.ml LinearClassifier: "
                 "SOFTMAX_ZERO with string labels, PROBIT with int labels",
                 "iris rows (all 150, cycled)", onx, {"X": Xr}, check,
                 tol="PROBIT scores checked to 1e-3 vs the exact inverse normal CDF: ORT uses an "
                     "erfinv approximation (errors ~1e-4)")


# --------------------------------------------------------------------------
# XGBoost / LightGBM (onnxmltools)
# --------------------------------------------------------------------------
def mlt_type(n):
    return [("X", MltFloatTensorType([None, n]))]


@corpus_model
def xgb_clf_bc_nan():
    X, y = data_bc()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    X_tr = inject_nan(X_tr, 0.1, SEED + 20)
    clf = xgboost.XGBClassifier(n_estimators=30, max_depth=4, learning_rate=0.3, n_jobs=1,
                                random_state=SEED, tree_method="hist")
    clf.fit(X_tr, y_tr)
    onx = convert_xgboost(clf, initial_types=mlt_type(30), target_opset=OPSET)
    Xr = inject_nan(cycle_rows(X_te), 0.1, SEED + 21)
    return Entry("xgb_clf_bc_nan", "xgboost.XGBClassifier(n_estimators=30, max_depth=4), "
                 "trained with 10% NaN", "breast_cancer (binary), 10% NaN in train and reference rows",
                 onx, {"X": Xr}, clf_check(clf, Xr))


@corpus_model
def xgb_clf_wine():
    X, y = data_wine()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    clf = xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1, random_state=SEED,
                                tree_method="hist")
    clf.fit(X_tr, y_tr)
    onx = convert_xgboost(clf, initial_types=mlt_type(13), target_opset=OPSET)
    Xr = cycle_rows(X_te)
    return Entry("xgb_clf_wine", "xgboost.XGBClassifier(n_estimators=20, max_depth=3)",
                 "wine (3 classes)", onx, {"X": Xr}, clf_check(clf, Xr))


@corpus_model
def xgb_reg_diabetes():
    X, y = data_diabetes()
    X_tr, X_te, y_tr, _ = split(X, y, False)
    reg = xgboost.XGBRegressor(n_estimators=40, max_depth=4, n_jobs=1, random_state=SEED,
                               tree_method="hist")
    reg.fit(X_tr, y_tr)
    onx = declare_ml_opset(convert_xgboost(reg, initial_types=mlt_type(10), target_opset=OPSET), 3)
    Xr = cycle_rows(X_te)
    return Entry("xgb_reg_diabetes", "xgboost.XGBRegressor(n_estimators=40, max_depth=4)",
                 "diabetes", onx, {"X": Xr}, reg_check(reg, Xr),
                 note="ai.onnx.ml opset declared as 3")


def lgbm_params():
    return dict(n_jobs=1, random_state=SEED, deterministic=True, force_col_wise=True, verbose=-1)


@corpus_model
def lgbm_clf_bc_nan():
    X, y = data_bc()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    X_tr = inject_nan(X_tr, 0.1, SEED + 22)
    clf = lightgbm.LGBMClassifier(n_estimators=30, num_leaves=15, **lgbm_params()).fit(X_tr, y_tr)
    onx = convert_lightgbm(clf, initial_types=mlt_type(30), target_opset=OPSET, zipmap=False)
    Xr = inject_nan(cycle_rows(X_te), 0.1, SEED + 23)
    return Entry("lgbm_clf_bc_nan", "lightgbm.LGBMClassifier(n_estimators=30, num_leaves=15), "
                 "trained with 10% NaN", "breast_cancer (binary), 10% NaN in train and reference rows",
                 onx, {"X": Xr}, clf_check(clf, Xr))


@corpus_model
def lgbm_clf_wine_zipmap():
    X, y = data_wine()
    X_tr, X_te, y_tr, _ = split(X, y, True)
    clf = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7, min_child_samples=5,
                                  **lgbm_params()).fit(X_tr, y_tr)
    onx = convert_lightgbm(clf, initial_types=mlt_type(13), target_opset=OPSET)  # ZipMap on
    Xr = cycle_rows(X_te)
    return Entry("lgbm_clf_wine_zipmap", "lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7), "
                 "default ZipMap", "wine (3 classes)", onx, {"X": Xr},
                 lgbm_check(clf, Xr, "probabilities", classifier=True), tol=LGBM_TOL)


@corpus_model
def lgbm_reg_diabetes_cat():
    X, y = data_diabetes()
    Xc = X.copy()
    Xc[:, 1] = binned_categories(X, [1], [2])[:, 0]  # 'sex' as category codes 0/1
    Xc[:, 2] = binned_categories(X, [2], [6])[:, 0]  # bmi binned into 6 categories
    X_tr, X_te, y_tr, _ = split(Xc, y, False)
    reg = lightgbm.LGBMRegressor(n_estimators=40, num_leaves=15, min_child_samples=10,
                                 cat_smooth=1.0, min_data_per_group=5,
                                 **lgbm_params())
    reg.fit(X_tr, y_tr, categorical_feature=[1, 2])
    onx = convert_lightgbm(reg, initial_types=mlt_type(10), target_opset=OPSET)
    Xr = cycle_rows(X_te)
    return Entry("lgbm_reg_diabetes_cat", "lightgbm.LGBMRegressor(n_estimators=40, num_leaves=15), "
                 "features 1 and 2 categorical", "diabetes; feature 1 (sex) and 2 (bmi, 6 quantile "
                 "bins) replaced by integer category codes", onx, {"X": Xr},
                 lgbm_check(reg, Xr, "variable", classifier=False), tol=LGBM_TOL)


LGBM_TOL = ("onnxmltools stores LightGBM's float64 thresholds rounded to nearest float32; a "
            "float32 feature equal to a threshold that rounded up takes the other branch. ORT "
            "is checked exactly against the booster walked with float32 thresholds, and "
            "against predict()/predict_proba() on the rows that never meet such a threshold")


def lgbm_walk_f32(booster, X):
    """Raw scores [N, K] of a LightGBM booster walked with float32-rounded numeric
    thresholds (as onnxmltools exports them), and a per-row flag for rows whose
    path differs from the float64 thresholds LightGBM uses."""
    d = booster.dump_model()
    k = max(1, d.get("num_tree_per_iteration", 1))
    raw = np.zeros((len(X), k))
    ambiguous = np.zeros(len(X), dtype=bool)
    for ti, t in enumerate(d["tree_info"]):
        for r, x in enumerate(X.astype(np.float64)):
            n = t["tree_structure"]
            while "leaf_value" not in n:
                v = x[n["split_feature"]]
                if n["decision_type"] == "==":
                    cats = {int(c) for c in str(n["threshold"]).split("||")}
                    left = bool(not np.isnan(v) and v >= 0 and int(v) in cats)
                else:
                    miss = n.get("missing_type", "None")
                    if np.isnan(v) and miss == "NaN" or (miss == "Zero" and (np.isnan(v) or v == 0)):
                        left = bool(n["default_left"])
                    else:
                        v = 0.0 if np.isnan(v) else v
                        thr = n["threshold"]
                        left = bool(v <= np.float64(np.float32(thr)))
                        if left != bool(v <= thr):
                            ambiguous[r] = True
                n = n["left_child"] if left else n["right_child"]
            raw[r, ti % k] += n["leaf_value"]
    return raw, ambiguous


def lgbm_check(model, X, out, classifier):
    def check(outs):
        raw, amb = lgbm_walk_f32(model.booster_, X)
        got = outs[out]
        if classifier:
            if raw.shape[1] == 1:
                p1 = 1.0 / (1.0 + np.exp(-raw[:, 0]))
                emul = np.stack([1 - p1, p1], axis=1)
            else:
                e = np.exp(raw - raw.max(axis=1, keepdims=True))
                emul = e / e.sum(axis=1, keepdims=True)
            want = model.predict_proba(X)
            check_equal("label", outs["label"][~amb], model.predict(X)[~amb])
            check_equal("label vs float32 walk", outs["label"],
                        model.classes_[emul.argmax(axis=1)])
        else:
            emul = raw
            want = model.predict(X).reshape(-1, 1)
        err = check_close(out + " vs float32 walk", got, emul)
        check_close(out + " vs library (unambiguous rows)", got[~amb], want[~amb])
        if amb.sum() > 0.02 * len(X):
            fail(f"{int(amb.sum())} rows meet a float32-rounded threshold")
        diff = np.abs(got - want).max()
        return (f"max |err| {err:.2g} vs float32 walk; {int(amb.sum())} rows meet a rounded "
                f"threshold (max diff vs library {diff:.3g})")
    return check


# --------------------------------------------------------------------------
# Hand-built tree ensembles: every mode / aggregate / post_transform
# --------------------------------------------------------------------------
GRID = np.arange(0.0, 4.5, 0.5, dtype=np.float32)  # feature values 0, 0.5, ..., 4


def grid_inputs(seed, n_features=4, nan_frac=0.1):
    rng = np.random.default_rng(seed)
    X = GRID[rng.integers(0, len(GRID), size=(N_REF, n_features))]
    X[rng.random(X.shape) < nan_frac] = np.nan
    return X.astype(np.float32)


def random_tree(rng, depth, modes, n_features, targets, weight_range, leaf_targets="all"):
    """Nested dict tree. Branch thresholds come from GRID so EQ/NEQ really fire."""
    if depth == 0:
        lo, hi = weight_range
        if leaf_targets == "one":
            return {"w": {int(rng.integers(0, targets)): float(np.float32(rng.uniform(lo, hi)))}}
        if leaf_targets == "some":  # a random non-empty subset of the targets votes
            keep = rng.random(targets) < 0.35
            keep[int(rng.integers(0, targets))] = True
            return {"w": {t: float(np.float32(rng.uniform(lo, hi)))
                          for t in range(targets) if keep[t]}}
        return {"w": {t: float(np.float32(rng.uniform(lo, hi))) for t in range(targets)}}
    mode = modes[int(rng.integers(0, len(modes)))]
    node = {"f": int(rng.integers(0, n_features)), "mode": mode, "miss": int(rng.integers(0, 2))}
    if mode == "BRANCH_MEMBER":
        k = int(rng.integers(1, 4))
        node["set"] = sorted(float(v) for v in rng.choice(GRID, size=k, replace=False))
        node["v"] = float("nan")
    else:
        node["v"] = float(GRID[int(rng.integers(1, len(GRID) - 1))])
    node["t"] = random_tree(rng, depth - 1, modes, n_features, targets, weight_range,
                            leaf_targets)
    node["e"] = random_tree(rng, depth - 1, modes, n_features, targets, weight_range,
                            leaf_targets)
    return node


def flatten_v3(trees, classifier):
    """TreeEnsemble{Regressor,Classifier} attributes from nested trees (preorder ids)."""
    p = "class" if classifier else "target"
    a = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes",
                         "nodes_values", "nodes_truenodeids", "nodes_falsenodeids",
                         "nodes_missing_value_tracks_true", f"{p}_treeids", f"{p}_nodeids",
                         f"{p}_ids", f"{p}_weights")}
    for tid, tree in enumerate(trees):
        counter = [0]

        def visit(n):
            nid = counter[0]
            counter[0] += 1
            pos = len(a["nodes_nodeids"])
            a["nodes_treeids"].append(tid)
            a["nodes_nodeids"].append(nid)
            for k in ("nodes_featureids", "nodes_modes", "nodes_values", "nodes_truenodeids",
                      "nodes_falsenodeids", "nodes_missing_value_tracks_true"):
                a[k].append(None)
            if "w" in n:
                a["nodes_featureids"][pos] = 0
                a["nodes_modes"][pos] = "LEAF"
                a["nodes_values"][pos] = 0.0
                a["nodes_truenodeids"][pos] = 0
                a["nodes_falsenodeids"][pos] = 0
                a["nodes_missing_value_tracks_true"][pos] = 0
                for t, w in sorted(n["w"].items()):
                    a[f"{p}_treeids"].append(tid)
                    a[f"{p}_nodeids"].append(nid)
                    a[f"{p}_ids"].append(t)
                    a[f"{p}_weights"].append(w)
                return nid
            a["nodes_featureids"][pos] = n["f"]
            a["nodes_modes"][pos] = n["mode"]
            a["nodes_values"][pos] = n["v"]
            a["nodes_missing_value_tracks_true"][pos] = n["miss"]
            a["nodes_truenodeids"][pos] = visit(n["t"])
            a["nodes_falsenodeids"][pos] = visit(n["e"])
            return nid
        visit(tree)
    return a


def flatten_v5(trees):
    a = {k: [] for k in ("nodes_featureids", "nodes_modes", "nodes_splits", "nodes_truenodeids",
                         "nodes_trueleafs", "nodes_falsenodeids", "nodes_falseleafs",
                         "nodes_missing_value_tracks_true", "leaf_targetids", "leaf_weights",
                         "membership_values", "tree_roots")}

    def visit(n):
        if "w" in n:
            (t, w), = n["w"].items()
            a["leaf_targetids"].append(t)
            a["leaf_weights"].append(w)
            return len(a["leaf_weights"]) - 1, 1
        idx = len(a["nodes_featureids"])
        a["nodes_featureids"].append(n["f"])
        a["nodes_modes"].append(V5_MODES.index(n["mode"]))
        a["nodes_splits"].append(n["v"])
        a["nodes_missing_value_tracks_true"].append(n["miss"])
        if n["mode"] == "BRANCH_MEMBER":
            if a["membership_values"]:
                a["membership_values"].append(float("nan"))
            a["membership_values"].extend(n["set"])
        for k in ("nodes_truenodeids", "nodes_trueleafs", "nodes_falsenodeids", "nodes_falseleafs"):
            a[k].append(0)
        ti, tl = visit(n["t"])
        fi, fl = visit(n["e"])
        a["nodes_truenodeids"][idx], a["nodes_trueleafs"][idx] = ti, tl
        a["nodes_falsenodeids"][idx], a["nodes_falseleafs"][idx] = fi, fl
        return idx, 0

    for tree in trees:
        idx, leaf = visit(tree)
        assert not leaf
        a["tree_roots"].append(idx)
    return a


def eval_branch(n, x):
    v = x[n["f"]]
    if np.isnan(v) and n["miss"]:
        return True
    m = n["mode"]
    with np.errstate(invalid="ignore"):
        if m == "BRANCH_LEQ":
            return bool(v <= np.float32(n["v"]))
        if m == "BRANCH_LT":
            return bool(v < np.float32(n["v"]))
        if m == "BRANCH_GTE":
            return bool(v >= np.float32(n["v"]))
        if m == "BRANCH_GT":
            return bool(v > np.float32(n["v"]))
        if m == "BRANCH_EQ":
            return bool(v == np.float32(n["v"]))
        if m == "BRANCH_NEQ":
            return bool(v != np.float32(n["v"]))  # NaN != v is true
        if m == "BRANCH_MEMBER":
            return bool(v in n["set"])
    raise ValueError(m)


def eval_trees(trees, X, n_targets, agg, base):
    """Raw aggregated scores [N, n_targets] (before post_transform), ORT semantics:
    MIN/MAX only over trees that voted for a target; missing votes count as 0 for
    SUM/AVERAGE; base value added after aggregation."""
    out = np.zeros((len(X), n_targets))
    for r, x in enumerate(X):
        votes = [[] for _ in range(n_targets)]
        for tree in trees:
            n = tree
            while "w" not in n:
                n = n["t"] if eval_branch(n, x) else n["e"]
            for t, w in n["w"].items():
                votes[t].append(np.float32(w))
        for t in range(n_targets):
            v = votes[t]
            if agg == "SUM":
                s = float(np.sum(v)) if v else 0.0
            elif agg == "AVERAGE":
                s = (float(np.sum(v)) if v else 0.0) / len(trees)
            elif agg == "MIN":
                s = float(min(v)) if v else 0.0
            else:
                s = float(max(v)) if v else 0.0
            out[r, t] = s + (base[t] if base else 0.0)
    return out


def post_transform(z, pt, n_targets):
    if pt == "NONE" or (n_targets == 1 and pt != "PROBIT"):
        # ORT applies nothing but PROBIT to single-target regressor scores
        return z
    if pt == "LOGISTIC":
        return 1.0 / (1.0 + np.exp(-z))
    if pt == "SOFTMAX":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if pt == "SOFTMAX_ZERO":
        out = np.zeros_like(z)
        for i, row in enumerate(z):
            nz = row != 0
            if nz.any():
                e = np.exp(row[nz] - row[nz].max())
                out[i, nz] = e / e.sum()
        return out
    if pt == "PROBIT":
        return ndtri(z)
    raise ValueError(pt)


ALL_MODES_V3 = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]


# onnxruntime 1.32 reads TreeEnsemble's post_transform integer with the
# TreeEnsembleRegressor enum order (NONE, LOGISTIC, SOFTMAX, SOFTMAX_ZERO, PROBIT),
# so 1 (SOFTMAX in the ONNX spec) applies LOGISTIC and 2 (spec LOGISTIC) applies
# SOFTMAX. The NumPy check models what ORT does.
ORT_V5_POST = {"SOFTMAX": "LOGISTIC", "LOGISTIC": "SOFTMAX"}


def hand_tree_regressor(name, seed, n_trees, depth, modes, n_targets, agg, pt, weight_range,
                        base=None, v5=False, desc="", tol=None, leaf_targets=None):
    rng = np.random.default_rng(seed)
    leaf_targets = leaf_targets or ("one" if v5 else "all")
    trees = [random_tree(rng, depth, modes, 4, n_targets, weight_range,
                         leaf_targets=leaf_targets) for _ in range(n_trees)]
    X = grid_inputs(seed + 1000)
    if v5:
        a = flatten_v5(trees)
        attrs = dict(
            tree_roots=a["tree_roots"], nodes_featureids=a["nodes_featureids"],
            nodes_modes=numpy_helper.from_array(np.array(a["nodes_modes"], dtype=np.uint8)),
            nodes_splits=numpy_helper.from_array(np.array(a["nodes_splits"], dtype=np.float32)),
            nodes_truenodeids=a["nodes_truenodeids"], nodes_trueleafs=a["nodes_trueleafs"],
            nodes_falsenodeids=a["nodes_falsenodeids"], nodes_falseleafs=a["nodes_falseleafs"],
            nodes_missing_value_tracks_true=a["nodes_missing_value_tracks_true"],
            leaf_targetids=a["leaf_targetids"],
            leaf_weights=numpy_helper.from_array(np.array(a["leaf_weights"], dtype=np.float32)),
            n_targets=n_targets, aggregate_function=V5_AGG.index(agg),
            post_transform=V5_POST.index(pt))
        if a["membership_values"]:
            attrs["membership_values"] = numpy_helper.from_array(
                np.array(a["membership_values"], dtype=np.float32))
        node = helper.make_node("TreeEnsemble", ["X"], ["Y"], domain=ML, name="TreeEnsemble", **attrs)
        ml = 5
    else:
        attrs = flatten_v3(trees, classifier=False)
        attrs.update(n_targets=n_targets, aggregate_function=agg, post_transform=pt)
        if base:
            attrs["base_values"] = base
        node = helper.make_node("TreeEnsembleRegressor", ["X"], ["Y"], domain=ML,
                                name="TreeEnsembleRegressor", **attrs)
        ml = 3 if seed % 2 else 1
    onx = hand_model(name, [node], [vinfo("X", TensorProto.FLOAT, ["N", 4])],
                     [vinfo("Y", TensorProto.FLOAT, ["N", n_targets])], ml=ml)

    def check(outs):
        raw = eval_trees(trees, X, n_targets, agg, None if v5 else base)
        if pt == "PROBIT" and not ((raw > 0) & (raw < 1)).all():
            fail(f"{name}: PROBIT input outside (0,1)")
        want = post_transform(raw, ORT_V5_POST.get(pt, pt) if v5 else pt, n_targets)
        atol = 1e-3 if pt == "PROBIT" else 1e-5
        err = check_close("Y", outs["Y"], want, atol=atol, rtol=0 if pt == "PROBIT" else 1e-5)
        return f"matches NumPy tree evaluator, max err {err:.2g}"
    return Entry(name, "hand-built " + desc, "4 features on the grid 0..4 step 0.5, 10% NaN "
                 "(seeded random rows)", onx, {"X": X}, check,
                 tol=tol or ("PROBIT: NumPy check uses the exact inverse normal CDF, atol 1e-3 "
                             "(ORT approximates erfinv)" if pt == "PROBIT" else ""))


def hand_tree_classifier(name, seed, n_trees, depth, modes, labels, pt, weight_range,
                         weight_cols=None, base=None, desc="", leaf_targets="all"):
    rng = np.random.default_rng(seed)
    ncols = weight_cols or len(labels)
    trees = [random_tree(rng, depth, modes, 4, ncols, weight_range, leaf_targets)
             for _ in range(n_trees)]
    X = grid_inputs(seed + 1000)
    attrs = flatten_v3(trees, classifier=True)
    attrs["post_transform"] = pt
    if isinstance(labels[0], str):
        attrs["classlabels_strings"] = labels
        lab_elem = TensorProto.STRING
    else:
        attrs["classlabels_int64s"] = labels
        lab_elem = TensorProto.INT64
    if base:
        attrs["base_values"] = base
    node = helper.make_node("TreeEnsembleClassifier", ["X"], ["label", "probabilities"],
                            domain=ML, name="TreeEnsembleClassifier", **attrs)
    onx = hand_model(name, [node], [vinfo("X", TensorProto.FLOAT, ["N", 4])],
                     [vinfo("label", lab_elem, ["N"]),
                      vinfo("probabilities", TensorProto.FLOAT, ["N", len(labels)])], ml=3)

    def check(outs):
        raw = eval_trees(trees, X, ncols, "SUM", base if ncols == len(labels) else None)
        lab = np.array(labels, dtype=object)
        probs = outs["probabilities"]
        if len(labels) > 2:
            want = post_transform(raw, pt, ncols)
            atol = 1e-3 if pt == "PROBIT" else 1e-5
            check_close("probabilities", probs, want, atol=atol, rtol=0 if pt == "PROBIT" else 1e-5)
            check_equal("label", outs["label"], lab[raw.argmax(axis=1)])
            return "matches NumPy tree evaluator"
        if ncols == 1:
            # ORT binary case, one weight column: s = score (+ base_values[0]);
            # all weights >= 0: label = s > 0.5, else label = s > 0;
            # probabilities [1-s, s], or [1-sigmoid(s), sigmoid(s)] for LOGISTIC.
            s_ = raw[:, 0] + (base[0] if base else 0.0)
            cut = 0.5 if min(attrs["class_weights"]) >= 0 else 0.0
            check_equal("label", outs["label"], np.where(s_ > cut, lab[1], lab[0]))
            p1 = 1 / (1 + np.exp(-s_)) if pt == "LOGISTIC" else s_
            check_close("probabilities", probs, np.stack([1 - p1, p1], axis=1))
            return f"matches ORT binary rule (label = s > {cut})"
        # two weight columns, NONE: scores as summed; label = score[1] > 0
        check_equal("label", outs["label"], np.where(raw[:, 1] > 0, lab[1], lab[0]))
        check_close("probabilities", probs, raw)
        argmax = lab[raw.argmax(axis=1)]
        return (f"matches ORT binary rule (label = score[1] > 0; differs from argmax on "
                f"{int((argmax != outs['label']).sum())} rows)")
    return Entry(name, "hand-built " + desc, "4 features on the grid 0..4 step 0.5, 10% NaN "
                 "(seeded random rows)", onx, {"X": X}, check)


@corpus_model
def te_reg_modes_sum():
    return hand_tree_regressor("te_reg_modes_sum", 101, 6, 4, ALL_MODES_V3, 1, "SUM", "NONE",
                               (-1.0, 1.0), base=[0.25],
                               desc="TreeEnsembleRegressor: all 6 BRANCH_* modes mixed, random "
                                    "missing_value_tracks_true, SUM, base_values, 6 trees depth 4")


@corpus_model
def te_reg_average_2t():
    return hand_tree_regressor("te_reg_average_2t", 102, 5, 3, ALL_MODES_V3, 2, "AVERAGE", "NONE",
                               (-2.0, 2.0), base=[1.0, -1.0],
                               desc="TreeEnsembleRegressor: AVERAGE, 2 targets, base_values")


@corpus_model
def te_reg_min_2t():
    return hand_tree_regressor("te_reg_min_2t", 103, 5, 3, ALL_MODES_V3, 2, "MIN", "NONE",
                               (-2.0, 2.0), leaf_targets="some",
                               desc="TreeEnsembleRegressor: MIN, 2 targets; leaves vote for a "
                                    "subset of targets (MIN is over the trees that voted; "
                                    "no vote -> 0)")


@corpus_model
def te_reg_max():
    return hand_tree_regressor("te_reg_max", 104, 5, 3, ["BRANCH_LT", "BRANCH_GTE", "BRANCH_EQ"],
                               1, "MAX", "NONE", (-2.0, 2.0), base=[0.5],
                               desc="TreeEnsembleRegressor: MAX, 1 target, base_values")


@corpus_model
def te_reg_probit():
    return hand_tree_regressor("te_reg_probit", 105, 3, 3, ALL_MODES_V3, 1, "SUM", "PROBIT",
                               (0.02, 0.3), base=[0.05],
                               desc="TreeEnsembleRegressor: PROBIT, 1 target (scores kept in (0,1))")


@corpus_model
def te_reg_softmax_zero_3t():
    return hand_tree_regressor("te_reg_softmax_zero_3t", 106, 2, 4, ALL_MODES_V3, 3, "SUM",
                               "SOFTMAX_ZERO", (-1.0, 1.0), leaf_targets="some",
                               desc="TreeEnsembleRegressor: SOFTMAX_ZERO, 3 targets (some "
                                    "targets get no vote -> exactly 0 -> stays 0)")


@corpus_model
def te_reg_logistic_2t():
    return hand_tree_regressor("te_reg_logistic_2t", 107, 4, 3, ALL_MODES_V3, 2, "SUM", "LOGISTIC",
                               (-1.0, 1.0), desc="TreeEnsembleRegressor: LOGISTIC, 2 targets")


@corpus_model
def te_reg_1t_logistic_ignored():
    return hand_tree_regressor("te_reg_1t_logistic_ignored", 108, 4, 3, ALL_MODES_V3, 1, "SUM",
                               "LOGISTIC", (-1.0, 1.0),
                               desc="TreeEnsembleRegressor: LOGISTIC with 1 target. onnxruntime "
                                    "applies NO transform here (only PROBIT is applied for 1 "
                                    "target); the reference records that")


@corpus_model
def te5_member_sum():
    return hand_tree_regressor("te5_member_sum", 109, 6, 4, ALL_MODES_V3 + ["BRANCH_MEMBER"], 1,
                               "SUM", "NONE", (-1.0, 1.0), v5=True,
                               desc="opset-5 TreeEnsemble: all 7 modes incl. BRANCH_MEMBER "
                                    "(membership_values NaN-delimited), missing tracks, SUM")


@corpus_model
def te5_average_post1_3t():
    return hand_tree_regressor("te5_average_post1_3t", 110, 6, 3,
                               ["BRANCH_LEQ", "BRANCH_GT", "BRANCH_MEMBER"], 3, "AVERAGE",
                               "SOFTMAX", (-2.0, 2.0), v5=True,
                               desc="opset-5 TreeEnsemble: AVERAGE, post_transform=1 (SOFTMAX in "
                                    "the spec; ORT 1.32 applies LOGISTIC), 3 targets, one target "
                                    "per leaf")


@corpus_model
def te5_max_post2_2t():
    return hand_tree_regressor("te5_max_post2_2t", 116, 5, 3,
                               ["BRANCH_LT", "BRANCH_GTE", "BRANCH_NEQ", "BRANCH_MEMBER"], 2, "MAX",
                               "LOGISTIC", (-2.0, 2.0), v5=True,
                               desc="opset-5 TreeEnsemble: MAX, post_transform=2 (LOGISTIC in "
                                    "the spec; ORT 1.32 applies SOFTMAX), 2 targets")


@corpus_model
def te_clf_softmax_zero():
    return hand_tree_classifier("te_clf_softmax_zero", 111, 4, 3, ALL_MODES_V3, [0, 1, 2, 3],
                                "SOFTMAX_ZERO", (0.0, 1.0), leaf_targets="some",
                                desc="TreeEnsembleClassifier: SOFTMAX_ZERO, 4 int64 classes")


@corpus_model
def te_clf_probit_str():
    return hand_tree_classifier("te_clf_probit_str", 112, 3, 3, ALL_MODES_V3, ["x", "y", "z"],
                                "PROBIT", (0.02, 0.3),
                                desc="TreeEnsembleClassifier: PROBIT, 3 string classes")


@corpus_model
def te_clf_bin_1col_pos():
    return hand_tree_classifier("te_clf_bin_1col_pos", 113, 4, 3, ALL_MODES_V3, [0, 1], "NONE",
                                (0.0, 0.25), weight_cols=1,
                                desc="TreeEnsembleClassifier: 2 classes, weights only for class "
                                     "id 0, all positive, NONE (ORT: label = score > 0.5, "
                                     "probabilities [1-s, s])")


@corpus_model
def te_clf_bin_1col_logistic():
    return hand_tree_classifier("te_clf_bin_1col_logistic", 114, 4, 3, ALL_MODES_V3, [-1, 1],
                                "LOGISTIC", (-1.0, 1.0), weight_cols=1, base=[0.3],
                                desc="TreeEnsembleClassifier: 2 classes {-1,1}, one weight "
                                     "column with mixed signs, base_values [0.3], LOGISTIC "
                                     "(ORT: label = s > 0, probabilities [1-sig(s), sig(s)])")


@corpus_model
def te_clf_bin_2col():
    return hand_tree_classifier("te_clf_bin_2col", 115, 3, 3, ALL_MODES_V3, [0, 1], "NONE",
                                (-1.0, 1.0),
                                desc="TreeEnsembleClassifier: 2 classes, weights for both "
                                     "class ids, NONE (ORT quirk: label = score[1] > 0)")


# ==========================================================================
# Driver
# ==========================================================================
def run_ort(model_bytes, inputs):
    sess = session(model_bytes)
    in_names = [i.name for i in sess.get_inputs()]
    if sorted(in_names) != sorted(inputs):
        fail(f"model inputs {in_names} != {sorted(inputs)}")
    out_names = [o.name for o in sess.get_outputs()]
    outs = sess.run(out_names, inputs)
    return in_names, out_names, outs


def build_entry(builder, out_dir):
    e = builder()
    model = finish_model(e.model, e.name)
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString(deterministic=True)
    in_names, out_names, outs = run_ort(data, e.inputs)
    zm = zipmap_orders(model)
    results = {}
    for name, val in zip(out_names, outs):
        if name in zm:
            if not isinstance(val, list):
                fail(f"{e.name}: ZipMap output {name} is not a list")
            labels = zm[name]
            val = np.array([[d[k] for k in labels] for d in val], dtype=np.float32)
        elif not isinstance(val, np.ndarray):
            fail(f"{e.name}: output {name} has unexpected type {type(val)}")
        results[name] = val
    summary = e.check(results)
    ref = {
        "model": e.name,
        "version": VERSION,
        "producer": f"onnxruntime {ort.__version__}",
        "estimator": e.estimator,
    }
    if zm:
        ref["zipmap"] = zm
    ref["inputs"] = {k: tensor_json(e.inputs[k], allow_nan=True) for k in in_names}
    ref["outputs"] = {k: tensor_json(results[k], allow_nan=False) for k in out_names}
    for k, t in ref["inputs"].items():
        if t["shape"][0] != N_REF:
            fail(f"{e.name}: input {k} has {t['shape'][0]} rows, want {N_REF}")
    d = os.path.join(out_dir, e.name, VERSION)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(data)
    with open(os.path.join(out_dir, e.name, "reference.json"), "w") as f:
        f.write(format_reference(ref))
    info = describe(model)
    info.update(name=e.name, estimator=e.estimator, dataset=e.dataset, note=e.note, tol=e.tol,
                size=len(data), nan_inputs=any(
                    np.isnan(v).any() for v in e.inputs.values() if v.dtype.kind == "f"))
    print(f"{e.name}: {summary}; {len(data)} B; {info['ops']}", flush=True)
    return info


def md_escape(s):
    return s.replace("|", "\\|")


def write_table(infos, out_dir):
    rows = ["| name | estimator | dataset | inputs | outputs | ops (domain opset: ops) | "
            "tree / op attributes | notes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i in infos:
        notes = "; ".join(x for x in (i["note"], ("tolerance: " + i["tol"]) if i["tol"] else "",
                                      "NaN in inputs" if i["nan_inputs"] else "") if x)
        rows.append("| " + " | ".join(md_escape(x) for x in (
            f"`{i['name']}`", i["estimator"], i["dataset"], i["inputs"], i["outputs"], i["ops"],
            i["attrs"], notes)) + " |")
    opsets = {}
    for i in infos:
        opsets.setdefault(i["ml_opset"], []).append(i["name"])
    rows.append("")
    rows.append("ai.onnx.ml opset versions declared: " + "; ".join(
        f"**{v}**: {len(n)} models" for v, n in sorted(opsets.items(), key=lambda kv: kv[0] or 0)))
    table = "\n".join(rows)
    src = os.path.join(HERE, "README.md")
    with open(src) as f:
        text = f.read()
    a, b = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if a < 0 or b < a:
        fail("README.md lacks the generated-table markers")
    text = text[:a + len(TABLE_BEGIN)] + "\n" + table + "\n" + text[b:]
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)


def corpus_files(root, names):
    files = ["README.md"]
    for n in names:
        files += [os.path.join(n, VERSION, "model.onnx"), os.path.join(n, "reference.json")]
    return files


def main_corpus(out_dir, verify, only):
    print(f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, skl2onnx "
          f"{skl2onnx.__version__}, onnxmltools {onnxmltools.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}, xgboost {xgboost.__version__}, "
          f"lightgbm {lightgbm.__version__}", flush=True)
    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    builders = [b for b in BUILDERS if not only or b.__name__ in only]
    names = [b.__name__ for b in builders]
    if len(set(names)) != len(names):
        fail("duplicate model names")
    infos = []
    for b in builders:
        np.random.seed(SEED)
        info = build_entry(b, out_dir)
        if info["name"] != b.__name__:
            fail(f"builder {b.__name__} returned model {info['name']}")
        infos.append(info)
    write_table(infos, out_dir)
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in corpus_files(out_dir, names))
    print(f"{len(infos)} models, {total} bytes of model+reference+README in {time.time() - t0:.1f}s")
    if not only and total > MAX_CORPUS_BYTES:
        fail(f"corpus is {total} bytes > {MAX_CORPUS_BYTES}")
    stale = sorted(d for d in os.listdir(out_dir)
                   if os.path.isfile(os.path.join(out_dir, d, "reference.json")) and d not in names)
    if stale and not only:
        print(f"WARNING: stale model folders not built by this script: {stale}")
    if verify:
        with tempfile.TemporaryDirectory(prefix="corpus-verify-") as tmp:
            shutil.copy(os.path.join(HERE, "README.md"), os.path.join(tmp, "README.md"))
            cmd = [sys.executable, os.path.abspath(__file__), "--out", tmp, "--no-verify"]
            for n in only or []:
                cmd += ["--only", n]
            print("verifying determinism: " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            diff = [f for f in corpus_files(out_dir, names)
                    if not filecmp.cmp(os.path.join(out_dir, f), os.path.join(tmp, f), shallow=False)]
            if diff:
                fail(f"second run wrote different bytes for: {diff}")
            print(f"determinism OK: {len(corpus_files(out_dir, names))} files byte-identical")


def main_big(out_dir):
    repo = os.path.dirname(os.path.dirname(HERE))
    real = os.path.realpath(out_dir)
    if real == os.path.realpath(repo) or real.startswith(os.path.realpath(repo) + os.sep):
        fail(f"--big writes outside the repository; {out_dir} is inside {repo}")
    name = "big_forest"
    X, y = data_diabetes()
    reg = RandomForestRegressor(n_estimators=500, max_depth=8, min_samples_leaf=1,
                                random_state=SEED, n_jobs=1).fit(X, y)
    depths = [e.get_depth() for e in reg.estimators_]
    nodes = sum(e.tree_.node_count for e in reg.estimators_)
    onx = finish_model(skl(reg, [("X", FloatTensorType([None, 10]))]), name)
    onnx.checker.check_model(onx, full_check=True)
    data = onx.SerializeToString(deterministic=True)
    Xr = X[:N_REF]
    in_names, out_names, outs = run_ort(data, {"X": Xr})
    check_close("big_forest variable", outs[0], reg.predict(Xr).reshape(-1, 1))
    d = os.path.join(out_dir, name, VERSION)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(data)
    ref = {"model": name, "version": VERSION, "producer": f"onnxruntime {ort.__version__}",
           "estimator": "RandomForestRegressor(n_estimators=500, max_depth=8, min_samples_leaf=1)",
           "inputs": {"X": tensor_json(Xr, True)},
           "outputs": {k: tensor_json(v, False) for k, v in zip(out_names, outs)}}
    with open(os.path.join(out_dir, name, "reference.json"), "w") as f:
        f.write(format_reference(ref))
    print(f"{name}: 500 trees, depth min/max {min(depths)}/{max(depths)} "
          f"({sum(x == 8 for x in depths)} trees reach depth 8), {nodes} nodes; "
          f"model.onnx {len(data)} bytes -> {d}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE, help="output folder (default: this folder)")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the second, determinism-checking run")
    ap.add_argument("--only", action="append", help="build only this model (repeatable)")
    ap.add_argument("--big", metavar="OUT_DIR",
                    help="write only the 500-tree big_forest model into OUT_DIR (not the repo)")
    args = ap.parse_args()
    if args.big:
        main_big(args.big)
    else:
        main_corpus(args.out, not args.no_verify, args.only)


if __name__ == "__main__":
    main()
