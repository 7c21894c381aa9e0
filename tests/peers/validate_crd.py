#!/usr/bin/env python3
"""Validates custom resources against their CRD's openAPIV3Schema, as the API server would with
strict field validation: types, enums, required fields and bounds (jsonschema), and no field the
schema does not declare (a misspelt field is an error, not silently pruned).

    python validate_crd.py SCHEMA.json KIND < rendered.yaml

Every document of kind KIND on stdin is checked; prints each problem and exits 1 if any, or if
no such document was found.
"""
import json
import sys

import jsonschema
import yaml


def unknown_fields(document, schema, path):
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(document, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        found = []
        for key, value in document.items():
            if properties is not None and key in properties:
                found += unknown_fields(value, properties[key], path + [key])
            elif isinstance(additional, dict):
                found += unknown_fields(value, additional, path + [key])
            elif properties is not None or additional is False:
                found.append(".".join(path + [key]))
        return found
    if isinstance(document, list) and isinstance(schema.get("items"), dict):
        return [f for i, item in enumerate(document) for f in unknown_fields(item, schema["items"], path + [str(i)])]
    return []


def main():
    schema = json.load(open(sys.argv[1]))
    kind = sys.argv[2]
    documents = [d for d in yaml.safe_load_all(sys.stdin) if d and d.get("kind") == kind]
    if not documents:
        print(f"no {kind} found")
        return 1
    problems = []
    for document in documents:
        name = document.get("metadata", {}).get("name", "?")
        validator = jsonschema.Draft7Validator(schema)
        problems += [f"{kind} {name}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]
        problems += [f"{kind} {name}: unknown field {f}" for f in unknown_fields(document, schema, [])]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
