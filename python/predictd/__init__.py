"""predictd's engine in Python: the models of a predictd repository, loaded and run in-process by
the same Rust code that serves them over gRPC and scores files with `predictd batch`.

    import predictd
    m = predictd.load("models", "wine_forest")       # the latest version; version=1 for one
    m.inputs      # [{"name": "X", "dtype": "FP32", "shape": [-1, 13]}]
    m.predict({"X": x})                              # dict of numpy arrays in and out
    m.predict_arrow(table, keep=["id"])              # pyarrow.Table in and out, predictd batch's rules
"""

from ._native import Model, PredictError, load

__all__ = ["Model", "PredictError", "load"]
