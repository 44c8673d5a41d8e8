"""One model per worker process: what the Dask and Spark helpers share.

A worker reaches a model in one of two ways: a repository path every worker can read, or a
repository shipped from the driver (`ship()`: the model's files as bytes, unpacked once per worker
into a temporary folder). Either way the loaded model is cached per process, so a worker that
scores many partitions loads it once.
"""

import hashlib
import os
import tempfile
from pathlib import Path

from ._native import load

_models = {}


def ship(models, name, version=None):
    """The files of model NAME (one version, with its config.toml) as a picklable dict, for a
    cluster without shared storage."""
    root = Path(models) / name
    if version is None:
        versions = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())
        if not versions:
            raise FileNotFoundError(f"{root} has no version folders")
        version = versions[-1]
    files = {f"{version}/model.onnx": (root / str(version) / "model.onnx").read_bytes()}
    if (root / "config.toml").is_file():
        files["config.toml"] = (root / "config.toml").read_bytes()
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode())
        digest.update(files[path])
    return {"name": name, "version": int(version), "files": files, "digest": digest.hexdigest()}


def _unpack(shipped):
    root = Path(tempfile.gettempdir()) / f"predictd-models-{shipped['digest'][:16]}"
    model_dir = root / shipped["name"]
    if not (model_dir / f"{shipped['version']}" / "model.onnx").is_file():
        for path, data in shipped["files"].items():
            target = model_dir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            partial.write_bytes(data)
            partial.replace(target)  # atomic: workers on one host may unpack at once
    return str(root)


def model(models, name, version=None):
    """The model, loaded at most once in this process. MODELS is a repository path, or what
    `ship()` returned."""
    if isinstance(models, dict):
        key = ("shipped", models["digest"])
    else:
        key = ("path", str(models), name, version)
    cached = _models.get(key)
    if cached is None:
        if isinstance(models, dict):
            cached = load(_unpack(models), models["name"], models["version"])
        else:
            cached = load(str(models), name, version)
        _models[key] = cached
        log = os.environ.get("PREDICTD_LOAD_LOG")
        if log:  # tests count loads per process
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {cached.name}\n")
    return cached
