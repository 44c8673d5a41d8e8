"""Write a model repository of models predictd has never seen, with onnxruntime references.

Usage: python unseen_models.py OUT_DIR

Creates, deterministically (fixed seeds):
  iris_tree/1/model.onnx and iris_tree/3/model.onnx  DecisionTreeClassifier via skl2onnx
      (zipmap off), input `features` FP32 [None, 4]; "latest" must resolve to version 3. Its
      config.toml serves both versions (version_policy = "all"; the default is the latest only).
  tiny_cnn/1/model.onnx   onnx.helper graph: `pixels` FP32 [batch, 3, 16, 16] -> Conv(3->8, 3x3,
      pad 1) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm(512->5) -> Softmax -> `scores` [batch, 5].
  pair_dot/1/model.onnx   inputs `a`, `b` FP32 [n, 3] -> `sum` = ReduceSum(a*b, axis 1) [n].
  sugar_boost/1/model.onnx   GradientBoostingRegressor on diabetes via skl2onnx
      (TreeEnsembleRegressor, which tract itself cannot load), input `x` FP32 [None, 10].
  wine_svc/1/model.onnx   make_pipeline(StandardScaler(), SVC(probability=True)) on wine via
      skl2onnx, zipmap off (Scaler, SVMClassifier), input `x` FP32 [None, 13].
and OUT_DIR/<name>/reference.json for each, in the format of models/*/reference.json.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_diabetes, load_iris, load_wine
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

DTYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}


def as_json(array):
    """A reference.json tensor: dtype, shape and flat row-major data (FP32 as shortest decimal)."""
    array = np.asarray(array)
    dtype = DTYPES[array.dtype.name]
    if array.dtype == np.float32:
        data = [float(str(v)) for v in array.ravel()]
    else:
        data = array.ravel().tolist()
    return {"dtype": dtype, "shape": list(array.shape), "data": data}


def write(out, name, versions, model, inputs):
    """Save `model` under each version and a reference.json of onnxruntime's outputs."""
    first = out / name / str(versions[0]) / "model.onnx"
    first.parent.mkdir(parents=True)
    onnx.checker.check_model(model)
    onnx.save(model, first)
    for version in versions[1:]:
        (out / name / str(version)).mkdir()
        shutil.copy(first, out / name / str(version) / "model.onnx")
    session = ort.InferenceSession(str(first), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, inputs)
    reference = {
        "model": name,
        "version": str(max(versions)),
        "producer": f"onnxruntime {ort.__version__}",
        "inputs": {k: as_json(v) for k, v in inputs.items()},
        "outputs": {k: as_json(v) for k, v in zip(names, results)},
    }
    (out / name / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")


def iris_tree(out):
    iris = load_iris()
    x = iris.data.astype(np.float32)
    tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, iris.target)
    model = to_onnx(
        tree,
        initial_types=[("features", FloatTensorType([None, 4]))],
        options={id(tree): {"zipmap": False}},
    )
    # One row of each class, and three rows from impure leaves (probabilities other than 0/1).
    impure = np.flatnonzero(tree.predict_proba(x).max(axis=1) < 1)[:3]
    rows = x[[0, 50, 100, *impure]]
    write(out, "iris_tree", [1, 3], model, {"features": rows})
    (out / "iris_tree" / "config.toml").write_text('version_policy = "all"\n')


def tiny_cnn(out):
    rng = np.random.default_rng(0)
    init = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.05, (5, 512)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (5,)).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["pixels", "conv_w", "conv_b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 5])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    pixels = rng.random((3, 3, 16, 16), dtype=np.float32)
    write(out, "tiny_cnn", [1], model, {"pixels": pixels})


def pair_dot(out):
    nodes = [
        helper.make_node("Mul", ["a", "b"], ["ab"]),
        helper.make_node("ReduceSum", ["ab", "axes"], ["sum"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "pair_dot",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 3]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    rng = np.random.default_rng(1)
    a = rng.normal(0, 2, (4, 3)).astype(np.float32)
    b = rng.normal(0, 2, (4, 3)).astype(np.float32)
    write(out, "pair_dot", [1], model, {"a": a, "b": b})


def sugar_boost(out):
    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    boost = GradientBoostingRegressor(n_estimators=60, max_depth=4, random_state=3).fit(x[:400], y[:400])
    model = to_onnx(boost, initial_types=[("x", FloatTensorType([None, 10]))])
    write(out, "sugar_boost", [1], model, {"x": x[400:406]})


def wine_svc(out):
    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)).fit(x[::2], y[::2])
    model = to_onnx(
        pipe,
        initial_types=[("x", FloatTensorType([None, 13]))],
        options={id(pipe.steps[-1][1]): {"zipmap": False}},
    )
    write(out, "wine_svc", [1], model, {"x": x[1::30]})


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    iris_tree(out)
    tiny_cnn(out)
    pair_dot(out)
    sugar_boost(out)
    wine_svc(out)


if __name__ == "__main__":
    main()
