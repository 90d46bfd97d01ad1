#!/usr/bin/env python3
"""Validate a JSON file against a definition of the Zipkin v2 API spec.

usage: zipkin_validate.py FILE DEFINITION [--strict] [--spec PATH]

DEFINITION: ListOfSpans, Trace, ListOfTraces, DependencyLinks (GET /dependencies), Span,
DependencyLink, ... (any name under the spec's `definitions`). FILE `-` reads stdin. Exits 0
printing `{"event":"valid",...}`, or 1 with the first error on stderr (2 for unusable input).
--strict: see zipkin_schema.py (anchored id patterns, lowercase names, ports 1..65535).
"""

import argparse
import json
import sys

import zipkin_schema


def main():
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("definition")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--spec")
    a = p.parse_args()
    try:
        v = zipkin_schema.validator(a.definition, a.spec, a.strict)
    except KeyError as e:
        print(f"zipkin_validate: {e.args[0]}", file=sys.stderr)
        return 2
    try:
        if a.file == "-":
            document = json.load(sys.stdin)
        else:
            with open(a.file) as f:
                document = json.load(f)
    except (OSError, ValueError) as e:
        print(f"zipkin_validate: cannot read {a.file}: {e}", file=sys.stderr)
        return 2
    error = zipkin_schema.first_error(v, document)
    if error is not None:
        print(f"zipkin_validate: {a.file} is not a valid {a.definition}: {error}", file=sys.stderr)
        return 1
    items = len(document) if isinstance(document, list) else 1
    print(json.dumps({"event": "valid", "definition": a.definition, "items": items}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
