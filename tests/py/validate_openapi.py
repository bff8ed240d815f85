#!/usr/bin/env python3
"""Validate an OpenAPI 3.1 document with openapi-spec-validator.

Usage:
    validate_openapi.py --url https://127.0.0.1:PORT/openapi.json --ca-file ca.pem
    validate_openapi.py --file openapi.json

The document is validated strictly as OpenAPI 3.1 (not auto-detected), so a
document that declares another version fails. On success one JSON object is
printed on stdout:
    {"valid": true, "openapi": "3.1.x", "paths": ["GET /path", ...]}
with the operations sorted. On failure the reason goes to stderr and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from typing import Any, NoReturn

import requests
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

# The operation fields of an OpenAPI 3.1 Path Item Object.
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
TIMEOUT = (10, 30)


class InvalidDocument(Exception):
    pass


def fail(message: str) -> NoReturn:
    raise InvalidDocument(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Validate an OpenAPI 3.1 document.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="URL of the JSON document")
    src.add_argument("--file", help="path of the JSON document")
    p.add_argument("--ca-file", help="PEM CA to trust for an https --url (required then)")
    args = p.parse_args(argv)
    if args.url and args.url.startswith("https://") and not args.ca_file:
        p.error("--ca-file is required with an https --url")
    return args


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads silently keeps the last of duplicate keys; a generated
    # document with two identical paths or properties is a bug worth seeing.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            fail(f"duplicate JSON key {key!r}")
        obj[key] = value
    return obj


def load(text: str, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(text, object_pairs_hook=reject_duplicate_keys)
    except json.JSONDecodeError as e:
        fail(f"{source}: not valid JSON: {e}")
    if not isinstance(doc, dict):
        fail(f"{source}: top level is not a JSON object")
    return doc


def fetch(url: str, ca_file: str | None) -> str:
    with requests.Session() as s:
        # Ignore REQUESTS_CA_BUNDLE and proxy variables: they would override
        # the CA given here (a requests quirk) or reroute loopback traffic.
        s.trust_env = False
        verify: bool | str = ca_file if ca_file else True
        resp = s.get(url, timeout=TIMEOUT, verify=verify, headers={"Accept": "application/json"})
    if resp.status_code != 200:
        fail(f"GET {url} returned HTTP {resp.status_code}: {resp.text[:500]}")
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not ctype.endswith("json"):
        fail(f"GET {url} returned Content-Type {ctype!r}, expected JSON")
    return resp.text


def operations(doc: dict[str, Any]) -> list[str]:
    paths = doc.get("paths") or {}
    ops = []
    for path, item in paths.items():
        if not isinstance(item, dict):
            continue
        for method in HTTP_METHODS:
            if method in item:
                ops.append(f"{method.upper()} {path}")
    return sorted(ops)


def describe(error: Exception) -> str:
    # jsonschema-style errors carry the location inside the document, which
    # the bare message lacks.
    location = getattr(error, "json_path", None)
    message = getattr(error, "message", None) or str(error)
    # Some errors (an unresolvable $ref) embed the whole document: keep the
    # report readable.
    if len(message) > 1000:
        message = message[:1000] + "..."
    return f"{location}: {message}" if location else message


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.url:
        source, base_uri = args.url, args.url
        doc = load(fetch(args.url, args.ca_file), source)
    else:
        path = pathlib.Path(args.file).resolve()
        source, base_uri = str(path), path.as_uri()
        try:
            doc = load(path.read_text(encoding="utf-8"), source)
        except OSError as e:
            fail(f"{source}: {e}")

    version = doc.get("openapi")
    if not isinstance(version, str) or not re.fullmatch(r"3\.1\.\d+", version):
        fail(f"{source}: openapi is {version!r}, expected 3.1.x")
    try:
        validate(doc, base_uri=base_uri, cls=OpenAPIV31SpecValidator)
    except Exception as e:  # noqa: BLE001 - validation errors, unresolvable $refs...
        fail(f"{source}: invalid OpenAPI 3.1 document: {describe(e)}")
    return {"valid": True, "openapi": version, "paths": operations(doc)}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except InvalidDocument as e:
        print(f"validate_openapi: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - TLS, connection errors...
        print(f"validate_openapi: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
