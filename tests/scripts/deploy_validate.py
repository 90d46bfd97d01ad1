#!/usr/bin/env python3
"""Strict schema validation of Kubernetes manifests, for tests/tests/deploy.rs.

usage: deploy_validate.py [--kubernetes VERSION]... [--crd FILE]... FILE|- ...

Every YAML document of every FILE ('-' reads stdin) must be a Kubernetes object, and it must
validate:
- a built-in kind: against the strict JSON schema of every --kubernetes version, as bundled by
  kubernetes-validate (PyPI, pinned to KUBERNETES_VALIDATE below; fields a schema does not
  list are rejected);
- a kind defined by a --crd file: against that CustomResourceDefinition's openAPIV3Schema for
  the object's version, made strict the way an API server with fieldValidation=Strict treats
  it (an object schema with `properties` and no `additionalProperties` or
  `x-kubernetes-preserve-unknown-fields` rejects other fields) and with `metadata` checked as
  a Kubernetes ObjectMeta. CEL rules (x-kubernetes-validations) are not evaluated.
A kind without a schema is an error, never skipped.

Prints one JSON object on stdout: {"objects": [every object, in input order], "errors": [...]}.
Exit status: 0 valid, 1 some object invalid, 2 this tool could not run (a missing module, a
wrong kubernetes-validate version, an unreadable file): the message on stderr says why.
"""

import argparse
import json
import sys

# The kubernetes-validate release `cargo xtask setup` installs (xtask/src/setup.rs).
KUBERNETES_VALIDATE = "1.37.0"

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def fail_setup(message):
    print(f"deploy_validate.py: {message}", file=sys.stderr)
    sys.exit(2)


try:
    import importlib.metadata
    import importlib.resources

    import jsonschema
    import referencing
    import yaml
    import kubernetes_validate
except ImportError as e:
    fail_setup(
        f"Python module {e.name!r} is missing for {sys.executable}: run `cargo xtask setup` "
        f"(it installs kubernetes-validate=={KUBERNETES_VALIDATE} and its dependencies with pip)"
    )

installed = importlib.metadata.version("kubernetes-validate")
if installed != KUBERNETES_VALIDATE:
    fail_setup(
        f"kubernetes-validate {installed} is installed for {sys.executable}, the tests pin "
        f"{KUBERNETES_VALIDATE}: run `cargo xtask setup`"
    )


def definitions(version):
    """kubernetes-validate's strict `_definitions.json` for `version` (e.g. 1.37.0)."""
    path = (
        importlib.resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{version}-local-strict"
        / "_definitions.json"
    )
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        fail_setup(f"kubernetes-validate {installed} has no schemas for Kubernetes {version}")


def strict(schema):
    """`schema` (OpenAPI v3, structural) with unknown fields rejected where the API server
    rejects them under fieldValidation=Strict."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            schema["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = strict(schema["additionalProperties"])
    if "items" in schema:
        schema["items"] = strict(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [strict(s) for s in schema[key]]
    if "not" in schema:
        schema["not"] = strict(schema["not"])
    return schema


class Crd:
    """The validators of the versions one CustomResourceDefinition serves."""

    def __init__(self, path, defs):
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        if len(docs) != 1 or docs[0].get("kind") != "CustomResourceDefinition":
            fail_setup(f"{path} does not hold exactly one CustomResourceDefinition")
        spec = docs[0]["spec"]
        self.group = spec["group"]
        self.kind = spec["names"]["kind"]
        self.source = path
        registry = referencing.Registry().with_resource(
            defs["$id"], referencing.Resource.from_contents(defs)
        )
        self.validators = {}
        for version in spec["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            # The API server checks metadata as ObjectMeta whatever the CRD says.
            schema["properties"]["metadata"] = {"$ref": f"{defs['$id']}#/$defs/{OBJECT_META}"}
            self.validators[version["name"]] = jsonschema.Draft202012Validator(
                schema, registry=registry
            )

    def validate(self, obj):
        """Error messages for `obj`, whose apiVersion is in this CRD's group."""
        version = obj["apiVersion"].split("/", 1)[1]
        validator = self.validators.get(version)
        if validator is None:
            return [f"{self.source} serves no version {version} of {self.kind}"]
        return [
            f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message} "
            f"(CRD schema {self.source})"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        ]


def describe(obj):
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubernetes", action="append", default=[], metavar="VERSION")
    parser.add_argument("--crd", action="append", default=[], metavar="FILE")
    parser.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args()
    if not args.kubernetes:
        fail_setup("give at least one --kubernetes VERSION")

    # CRD objects: their metadata is checked against the newest Kubernetes version's ObjectMeta.
    newest = max(args.kubernetes, key=lambda v: tuple(int(x) for x in v.split(".")))
    defs = definitions(newest)
    for version in args.kubernetes:
        definitions(version)  # fails early for a version kubernetes-validate does not have
    crds = {}
    for path in args.crd:
        crd = Crd(path, defs)
        crds[(crd.group, crd.kind)] = crd

    objects, errors = [], []
    for name in args.files:
        try:
            text = sys.stdin.read() if name == "-" else open(name).read()
        except OSError as e:
            fail_setup(f"cannot read {name}: {e}")
        source = "<stdin>" if name == "-" else name
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            errors.append(f"{source}: not YAML: {e}")
            continue
        if not docs:
            errors.append(f"{source}: no object")
        for obj in docs:
            if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
                errors.append(f"{source}: a document is not a Kubernetes object: {obj!r:.200}")
                continue
            objects.append(obj)
            what = f"{source}: {describe(obj)}"
            group = obj["apiVersion"].split("/", 1)[0] if "/" in obj["apiVersion"] else ""
            crd = crds.get((group, obj["kind"]))
            if crd is not None:
                errors.extend(f"{what}: {e}" for e in crd.validate(obj))
                continue
            for version in args.kubernetes:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.absolute_path) or "(root)"
                    errors.append(f"{what}: Kubernetes {version}: {path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    errors.append(f"{what}: {e.message} (and no --crd defines it)")
    json.dump({"objects": objects, "errors": errors}, sys.stdout)
    sys.stdout.write("\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
