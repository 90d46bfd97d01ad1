"""The Zipkin v2 API spec (Swagger 2.0, shared/spec/zipkin2-api.yaml) as JSON-schema validators,
for the zipkin_* test scripts.

`validator(name)` validates against one of the spec's definitions (`ListOfSpans`, `Span`,
`Trace`, `ListOfTraces`, `DependencyLink`, ...) or `DependencyLinks` (the inline array schema of
GET /dependencies). The spec's `#/definitions/...` refs resolve inside one schema document:
`{"$ref": "#/definitions/NAME", "definitions": spec["definitions"]}`; formats (ipv4, ipv6) are
checked.

strict=True adds what the spec says in prose but its schema leaves out: id patterns anchored
(the spec's `[a-f0-9]{16,32}` matches any string containing 16 hex digits), lowercase span and
service names, ports 1..65535.
"""

import copy
import os
import pathlib

import jsonschema
import yaml

DEFAULT_SPEC = pathlib.Path(__file__).resolve().parents[3] / "shared" / "spec" / "zipkin2-api.yaml"

EXTRA = {
    "DependencyLinks": {"type": "array", "items": {"$ref": "#/definitions/DependencyLink"}},
}


def spec_path(path=None):
    return pathlib.Path(path or os.environ.get("MESHTAP_ZIPKIN_SPEC") or DEFAULT_SPEC)


def load_definitions(path=None, strict=False):
    with open(spec_path(path)) as f:
        spec = yaml.safe_load(f)
    definitions = copy.deepcopy(spec["definitions"])
    definitions.update(copy.deepcopy(EXTRA))
    if strict:
        _tighten(definitions)
    return definitions


def _tighten(definitions):
    span = definitions["Span"]["properties"]
    for field in ("traceId", "id", "parentId"):
        pattern = span[field]["pattern"]
        span[field]["pattern"] = f"^(?:{pattern})$"
    span["name"]["pattern"] = "^[^A-Z]*$"
    endpoint = definitions["Endpoint"]["properties"]
    endpoint["serviceName"]["pattern"] = "^[^A-Z]*$"
    endpoint["port"]["minimum"] = 1
    endpoint["port"]["maximum"] = 65535


def validator(name, path=None, strict=False):
    definitions = load_definitions(path, strict)
    if name not in definitions:
        raise KeyError(f"no definition {name!r}; known: {', '.join(sorted(definitions))}")
    schema = {"$ref": f"#/definitions/{name}", "definitions": definitions}
    cls = jsonschema.Draft4Validator
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def first_error(v, document):
    """None if `document` is valid, else a one-line description of the most relevant error."""
    error = jsonschema.exceptions.best_match(v.iter_errors(document))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message}"
