"""Validate KServe objects against the openAPIV3Schema of KServe's own CRDs.

Usage: python kserve_schema.py CRD_DIR MANIFEST.yaml...

Every document of every MANIFEST must be of a kind one of CRD_DIR's CustomResourceDefinitions
defines, at a version it serves, and must match that version's schema. Prints one line per
object and exits 1 if any fails.

The API server prunes fields a structural schema does not name; kubectl then only warns (or
rejects, with --validate=strict). Here every such field is an error, so a misspelt key fails.
"""

import pathlib
import sys

import jsonschema
import yaml


def strict(schema):
    """SCHEMA with additionalProperties: false wherever it names properties and does not
    keep unknown fields (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def load_crds(crd_dir):
    """{(group, version, kind): schema} for every served version of CRD_DIR's CRDs."""
    schemas = {}
    for path in sorted(pathlib.Path(crd_dir).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def errors(obj, schemas):
    """Why OBJ is not a valid object of a known CRD: a list of lines, empty when it is."""
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    schema = schemas.get((group, version, obj.get("kind")))
    if schema is None:
        return [f"no CRD serves {obj.get('apiVersion')} {obj.get('kind')}"]
    if not obj.get("metadata", {}).get("name"):
        return ["metadata.name is missing"]
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))]


def main(crd_dir, *manifests):
    schemas = load_crds(crd_dir)
    failed = 0
    for manifest in manifests:
        for obj in yaml.safe_load_all(pathlib.Path(manifest).read_text()):
            if not obj:
                continue
            what = f"{manifest} {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            problems = errors(obj, schemas)
            if problems:
                failed += 1
                print(f"ERROR {what}: " + "; ".join(problems))
            else:
                print(f"INFO {what} passed against the {obj['apiVersion']} CRD schema")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
