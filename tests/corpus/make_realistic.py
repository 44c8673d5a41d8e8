"""Realistic tree ensembles for the ONNX-ML bench (benches/onnx_ml.rs), written outside the repo.

    python tests/corpus/make_realistic.py OUT_DIR [--only NAME ...]

Forests, extra trees, gradient boosting and XGBoost of the sizes people serve
(100-500 trees, depth 8-12, 30-100 features), trained on
``sklearn.datasets.make_classification`` / ``make_regression`` with fixed seeds
and exported with skl2onnx / onnxmltools (no ZipMap). Each model is written as
a model-repository entry, like tests/corpus:

    OUT_DIR/<name>/1/model.onnx
    OUT_DIR/<name>/reference.json     # 1,024 held-out rows and onnxruntime's outputs

The models are several MB each, too big for the repository, so the bench makes
them here on first use and keeps them (under target/) until this script changes.
Before writing, onnxruntime (1 thread) is checked against the library's
predict / predict_proba on every reference row, as make_corpus.py does: labels
exactly, scores within atol 1e-5 + rtol 1e-4. Deterministic: fixed seeds, one
thread for everything whose result could depend on the thread count.

Uses the versions pinned in tests/corpus/requirements.txt (make_corpus.py's
helpers are imported from beside this file).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import make_corpus as mc  # noqa: E402  (sets the single-thread environment first)
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import xgboost  # noqa: E402
from onnxmltools import convert_xgboost  # noqa: E402
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.ensemble import (  # noqa: E402
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from skl2onnx.common.data_types import FloatTensorType  # noqa: E402

N_REF = 1024
SEED = 0


def classification(features, classes, train_rows, seed):
    X, y = make_classification(n_samples=train_rows + N_REF, n_features=features,
                               n_informative=max(classes, features // 2),
                               n_redundant=features // 10, n_classes=classes,
                               class_sep=0.8, flip_y=0.02, random_state=seed)
    X = X.astype(np.float32)
    return X[:train_rows], y[:train_rows], X[train_rows:]


def regression(features, train_rows, seed):
    X, y = make_regression(n_samples=train_rows + N_REF, n_features=features,
                           n_informative=features // 2, noise=10.0, random_state=seed)
    X = X.astype(np.float32)
    return X[:train_rows], y[:train_rows], X[train_rows:]


def sklearn_onnx(est, features):
    opts = {id(est): {"zipmap": False}} if hasattr(est, "predict_proba") else None
    return mc.skl(est, [("X", FloatTensorType([None, features]))], options=opts)


def xgboost_onnx(est, features):
    return convert_xgboost(est, initial_types=mc.mlt_type(features), target_opset=mc.OPSET)


# name -> (estimator text, builder returning (estimator, onnx model, reference rows, check))
MODELS = {}


def model(estimator_text):
    def register(fn):
        MODELS[fn.__name__] = (estimator_text, fn)
        return fn
    return register


@model("ExtraTreesClassifier(n_estimators=100, max_depth=10), 30 features, 2 classes")
def et_clf_100t_d10_30f():
    X, y, Xr = classification(30, 2, 20000, SEED + 1)
    est = ExtraTreesClassifier(n_estimators=100, max_depth=10, random_state=SEED, n_jobs=1)
    est.fit(X, y)
    return est, sklearn_onnx(est, 30), Xr, mc.clf_check(est, Xr)


@model("RandomForestClassifier(n_estimators=300, max_depth=10), 50 features, 2 classes")
def rf_clf_300t_d10_50f():
    X, y, Xr = classification(50, 2, 20000, SEED + 2)
    est = RandomForestClassifier(n_estimators=300, max_depth=10, random_state=SEED, n_jobs=1)
    est.fit(X, y)
    return est, sklearn_onnx(est, 50), Xr, mc.clf_check(est, Xr)


@model("RandomForestClassifier(n_estimators=100, max_depth=12), 100 features, 4 classes")
def rf_clf4_100t_d12_100f():
    X, y, Xr = classification(100, 4, 20000, SEED + 3)
    est = RandomForestClassifier(n_estimators=100, max_depth=12, random_state=SEED, n_jobs=1)
    est.fit(X, y)
    return est, sklearn_onnx(est, 100), Xr, mc.clf_check(est, Xr)


@model("RandomForestRegressor(n_estimators=200, max_depth=12, max_features=0.3), 60 features")
def rf_reg_200t_d12_60f():
    X, y, Xr = regression(60, 20000, SEED + 4)
    est = RandomForestRegressor(n_estimators=200, max_depth=12, max_features=0.3,
                                random_state=SEED, n_jobs=1)
    est.fit(X, y)
    return est, sklearn_onnx(est, 60), Xr, mc.reg_check(est, Xr)


@model("GradientBoostingClassifier(n_estimators=200, max_depth=8, subsample=0.8, "
       "max_features=0.5), 40 features, 2 classes")
def gb_clf_200t_d8_40f():
    X, y, Xr = classification(40, 2, 10000, SEED + 5)
    est = GradientBoostingClassifier(n_estimators=200, max_depth=8, subsample=0.8,
                                     max_features=0.5, random_state=SEED)
    est.fit(X, y)
    return est, sklearn_onnx(est, 40), Xr, mc.clf_check(est, Xr)


@model("GradientBoostingClassifier(n_estimators=100, max_depth=8, subsample=0.8, "
       "max_features=0.5), 30 features, 3 classes (300 trees)")
def gb_clf3_100t_d8_30f():
    X, y, Xr = classification(30, 3, 10000, SEED + 6)
    est = GradientBoostingClassifier(n_estimators=100, max_depth=8, subsample=0.8,
                                     max_features=0.5, random_state=SEED)
    est.fit(X, y)
    return est, sklearn_onnx(est, 30), Xr, mc.clf_check(est, Xr)


@model("xgboost.XGBClassifier(n_estimators=300, max_depth=8), 60 features, 2 classes")
def xgb_clf_300t_d8_60f():
    X, y, Xr = classification(60, 2, 20000, SEED + 7)
    est = xgboost.XGBClassifier(n_estimators=300, max_depth=8, learning_rate=0.1, n_jobs=1,
                                random_state=SEED, tree_method="hist")
    est.fit(X, y)
    return est, xgboost_onnx(est, 60), Xr, mc.clf_check(est, Xr)


@model("xgboost.XGBClassifier(n_estimators=150, max_depth=10), 50 features, 3 classes "
       "(450 trees)")
def xgb_clf3_150t_d10_50f():
    X, y, Xr = classification(50, 3, 20000, SEED + 8)
    est = xgboost.XGBClassifier(n_estimators=150, max_depth=10, learning_rate=0.1, n_jobs=1,
                                random_state=SEED, tree_method="hist")
    est.fit(X, y)
    return est, xgboost_onnx(est, 50), Xr, mc.clf_check(est, Xr)


def tree_stats(onx):
    for node in onx.graph.node:
        if node.op_type.startswith("TreeEnsemble"):
            attrs = {a.name: a for a in node.attribute}
            trees = np.asarray(attrs["nodes_treeids"].ints)
            modes = list(attrs["nodes_modes"].strings)
            return len(set(trees.tolist())), len(trees), sorted(set(m.decode() for m in modes))
    return 0, 0, []


def build(name, out_dir):
    text, fn = MODELS[name]
    t0 = time.time()
    np.random.seed(SEED)
    _, onx, Xr, check = fn()
    onx = mc.finish_model(onx, name)
    onnx.checker.check_model(onx, full_check=True)
    data = onx.SerializeToString(deterministic=True)
    in_names, out_names, outs = mc.run_ort(data, {"X": Xr})
    summary = check(dict(zip(out_names, outs)))
    d = os.path.join(out_dir, name, mc.VERSION)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(data)
    ref = {"model": name, "version": mc.VERSION, "producer": f"onnxruntime {ort.__version__}",
           "estimator": text,
           "inputs": {"X": mc.tensor_json(Xr, False)},
           "outputs": {k: mc.tensor_json(v, False) for k, v in zip(out_names, outs)}}
    with open(os.path.join(out_dir, name, "reference.json"), "w") as f:
        f.write(mc.format_reference(ref))
    trees, nodes, modes = tree_stats(onx)
    print(f"{name}: {trees} trees, {nodes} nodes, modes {'/'.join(modes)}, "
          f"{len(data) / 1e6:.1f} MB; {summary}; {time.time() - t0:.0f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--only", action="append", help="build only this model (repeatable)")
    args = ap.parse_args()
    real, corpus = os.path.realpath(args.out_dir), os.path.realpath(mc.HERE)
    if real == corpus or real.startswith(corpus + os.sep):
        mc.fail(f"{args.out_dir} is inside tests/corpus, whose every model the tests serve")
    names = args.only or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        mc.fail(f"unknown models {unknown}; known: {list(MODELS)}")
    for name in names:
        build(name, args.out_dir)


if __name__ == "__main__":
    main()
