#!/usr/bin/env python3
"""Third-party OAuth 2.0 client used by Haven's integration tests.

It plays an independent client that knows nothing about Haven except the
standards: it discovers the server through RFC 8414 metadata, obtains an
access token with the client-credentials grant (RFC 6749 section 4.4) through
authlib's requests integration, downloads the JWKS (RFC 7517) and verifies
the JWT access token with two unrelated JOSE libraries (authlib.jose and
PyJWT). Both must accept the signature and agree on the claims.

TLS is always verified against --ca-file; there is deliberately no way to
turn verification off.

On success one JSON object is printed on stdout:
    {"access_token", "token_type", "expires_in", "scope", "header", "claims"}
On any failure the reason goes to stderr and the exit status is 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import warnings
from typing import Any, NoReturn

import jwt as pyjwt
import requests
from authlib.integrations.requests_client import OAuth2Session

# authlib 1.x announces that authlib.jose will move to the separate joserfc
# package in authlib 2.0. The module still works and is exactly what this
# client is meant to exercise, so the warning must not pollute stderr (the
# Rust tests show stderr when something fails).
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from authlib.jose import JsonWebKey, JsonWebToken
    from authlib.jose.errors import JoseError

ALLOWED_ALGORITHMS = ["EdDSA", "ES256"]
AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
# Network timeout (connect, read) in seconds for every request; a hung server
# must fail the test instead of hanging it.
TIMEOUT = (10, 30)


class ClientError(Exception):
    """A check failed; the message says which and why."""


def fail(message: str) -> NoReturn:
    raise ClientError(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="e.g. https://127.0.0.1:8443")
    p.add_argument("--ca-file", required=True, help="PEM file of the CA to trust")
    p.add_argument("--client-id", required=True)
    p.add_argument("--client-secret", required=True)
    p.add_argument("--scope", default=None, help='space separated, e.g. "a:b c:d"')
    p.add_argument("--auth-method", choices=AUTH_METHODS, default="client_secret_basic")
    p.add_argument(
        "--audience",
        default=None,
        help="if given, the token's aud claim must contain it (otherwise aud is not checked)",
    )
    return p.parse_args(argv)


def pin_tls(session: requests.Session, ca_file: str) -> None:
    """Trust exactly ca_file, whatever the environment says.

    With trust_env on, requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
    override Session.verify (and applies *_PROXY variables), so a machine
    with those set would check the server against the system store instead
    of the test CA, or route loopback traffic through a proxy.
    """
    session.trust_env = False
    session.verify = ca_file


def get_json(session: requests.Session, url: str, what: str) -> dict[str, Any]:
    resp = session.get(
        url, timeout=TIMEOUT, verify=session.verify, headers={"Accept": "application/json"}
    )
    if resp.status_code != 200:
        fail(f"{what}: GET {url} returned HTTP {resp.status_code}: {resp.text[:500]}")
    ctype = resp.headers.get("Content-Type", "")
    if not ctype.split(";")[0].strip().lower().endswith("json"):
        fail(f"{what}: GET {url} returned Content-Type {ctype!r}, expected JSON")
    try:
        body = resp.json()
    except ValueError as e:
        fail(f"{what}: GET {url} returned invalid JSON: {e}")
    if not isinstance(body, dict):
        fail(f"{what}: GET {url} did not return a JSON object")
    return body


def discover(session: requests.Session, base_url: str, auth_method: str) -> dict[str, Any]:
    """Fetch and sanity-check the RFC 8414 authorization server metadata."""
    url = f"{base_url}/.well-known/oauth-authorization-server"
    meta = get_json(session, url, "metadata")
    for field in ("issuer", "token_endpoint", "jwks_uri"):
        value = meta.get(field)
        if not isinstance(value, str) or not value:
            fail(f"metadata: required field {field!r} missing or not a string")
        if not value.startswith("https://"):
            fail(f"metadata: {field} must be an https URL, got {value!r}")
    # RFC 8414 section 2: optional lists; when omitted the defaults below
    # apply. A client must not use a grant or auth method the server does not
    # advertise.
    grants = meta.get("grant_types_supported", ["authorization_code", "implicit"])
    if "client_credentials" not in grants:
        fail(f"metadata: grant_types_supported {grants!r} lacks client_credentials")
    methods = meta.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
    if auth_method not in methods:
        fail(f"metadata: token_endpoint_auth_methods_supported {methods!r} lacks {auth_method}")
    return meta


def check_token_response(resp: requests.Response) -> requests.Response:
    """authlib compliance hook: RFC 6749 section 5.1 rules for the raw response."""
    if resp.status_code == 200:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            fail(f"token endpoint: Content-Type {ctype!r}, expected application/json")
        cache = resp.headers.get("Cache-Control", "").lower()
        if "no-store" not in [d.strip() for d in cache.split(",")]:
            fail(f"token endpoint: Cache-Control {cache!r} lacks no-store (RFC 6749 5.1)")
    elif resp.status_code < 500:
        # authlib turns a JSON error body into OAuthError; keep the HTTP
        # status visible in the message as well.
        sys.stderr.write(f"token endpoint: HTTP {resp.status_code}: {resp.text[:500]}\n")
    return resp


def fetch_token(args: argparse.Namespace, token_endpoint: str) -> dict[str, Any]:
    client = OAuth2Session(
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_endpoint_auth_method=args.auth_method,
        scope=args.scope,
    )
    pin_tls(client, args.ca_file)
    client.register_compliance_hook("access_token_response", check_token_response)
    try:
        token = client.fetch_token(
            token_endpoint,
            grant_type="client_credentials",
            timeout=TIMEOUT,
            verify=args.ca_file,
        )
    finally:
        client.close()
    token = dict(token)
    if not isinstance(token.get("access_token"), str) or not token["access_token"]:
        fail("token response: access_token missing")
    if str(token.get("token_type", "")).lower() != "bearer":
        fail(f"token response: token_type {token.get('token_type')!r}, expected Bearer")
    expires_in = token.get("expires_in")
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in <= 0:
        fail(f"token response: expires_in {expires_in!r} is not a positive integer")
    # Neither the client-credentials grant nor this client uses refresh tokens
    # (RFC 6749 4.4.3: a refresh token SHOULD NOT be included).
    if "refresh_token" in token:
        fail("token response: unexpected refresh_token for client_credentials")
    return token


def b64url_json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (ValueError, json.JSONDecodeError) as e:
        fail(f"access token: {what} is not base64url JSON: {e}")
    if not isinstance(value, dict):
        fail(f"access token: {what} is not a JSON object")
    return value


def select_jwk(jwks: dict[str, Any], header: dict[str, Any]) -> dict[str, Any]:
    """Pick the JWKS entry the token's header names by kid."""
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        fail("jwks: no keys")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        fail("access token: header has no kid (a JWKS with rotation needs one)")
    matches = [k for k in keys if isinstance(k, dict) and k.get("kid") == kid]
    if len(matches) != 1:
        fail(f"jwks: {len(matches)} keys with kid {kid!r}, expected exactly 1")
    jwk = matches[0]
    if jwk.get("use", "sig") != "sig":
        fail(f"jwks: key {kid!r} has use {jwk.get('use')!r}, expected sig")
    if "alg" in jwk and jwk["alg"] != header.get("alg"):
        fail(f"jwks: key {kid!r} is for {jwk['alg']}, token header says {header.get('alg')}")
    if any(f in jwk for f in ("d", "p", "q", "dp", "dq", "qi", "k")):
        fail(f"jwks: key {kid!r} exposes private or symmetric key material")
    return jwk


def verify_with_authlib(
    token: str, jwk: dict[str, Any], issuer: str, audience: str | None
) -> dict[str, Any]:
    key = JsonWebKey.import_key(jwk)
    claims_options: dict[str, Any] = {
        "iss": {"essential": True, "value": issuer},
        "exp": {"essential": True},
    }
    if audience is not None:
        claims_options["aud"] = {"essential": True, "value": audience}
    try:
        claims = JsonWebToken(ALLOWED_ALGORITHMS).decode(
            token, key, claims_options=claims_options
        )
        # leeway=0: exp must be strictly in the future right now.
        claims.validate(leeway=0)
    except JoseError as e:
        fail(f"authlib: token rejected: {e}")
    return dict(claims)


def verify_with_pyjwt(
    token: str, jwk: dict[str, Any], alg: str, issuer: str, audience: str | None
) -> dict[str, Any]:
    try:
        key = pyjwt.PyJWK(jwk, algorithm=alg)
        return pyjwt.decode(
            token,
            key=key,
            algorithms=[alg],
            issuer=issuer,
            audience=audience,
            leeway=0,
            options={
                "require": ["exp", "iss"],
                # PyJWT rejects any token carrying aud when no audience is
                # expected; only check aud when the caller named one.
                "verify_aud": audience is not None,
            },
        )
    except pyjwt.PyJWTError as e:
        fail(f"pyjwt: token rejected: {e}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    base_url = args.base_url.rstrip("/")
    if not base_url.startswith("https://"):
        fail("--base-url must be https://")

    with requests.Session() as http:
        pin_tls(http, args.ca_file)
        meta = discover(http, base_url, args.auth_method)
        issuer = meta["issuer"]
        token = fetch_token(args, meta["token_endpoint"])
        jwks = get_json(http, meta["jwks_uri"], "jwks")

    access_token = token["access_token"]
    parts = access_token.split(".")
    if len(parts) != 3:
        fail(f"access token: not a JWS compact serialization ({len(parts)} parts)")
    header = b64url_json(parts[0], "header")
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        fail(f"access token: alg {alg!r} not in {ALLOWED_ALGORITHMS}")
    jwk = select_jwk(jwks, header)

    claims = verify_with_authlib(access_token, jwk, issuer, args.audience)
    claims_pyjwt = verify_with_pyjwt(access_token, jwk, alg, issuer, args.audience)
    if claims != claims_pyjwt:
        fail(f"authlib and pyjwt disagree on claims: {claims!r} != {claims_pyjwt!r}")

    # Belt and braces on top of both libraries' own checks.
    if claims.get("iss") != issuer:
        fail(f"claims: iss {claims.get('iss')!r} != metadata issuer {issuer!r}")
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= time.time():
        fail(f"claims: exp {exp!r} is not in the future")

    return {
        "access_token": access_token,
        "token_type": token["token_type"],
        "expires_in": token["expires_in"],
        "scope": token.get("scope"),
        "header": header,
        "claims": claims,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except ClientError as e:
        print(f"oauth_client: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - any failure is a test failure
        # OAuthError from authlib, TLS and connection errors from requests...
        print(f"oauth_client: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
