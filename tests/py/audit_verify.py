#!/usr/bin/env python3
"""An auditor checking Haven's audit log with nothing but the published key and third-party code.

Uses pymerkle (an RFC 6962 Merkle tree implementation Haven does not use or contain) and the
`cryptography` package:

1. fetches the signed tree head and verifies its Ed25519 signature over the RFC 6962 §3.5
   TreeHeadSignature serialization, with the public key it publishes;
2. fetches every visible event's inclusion proof and verifies each with pymerkle's
   `verify_inclusion` against the signed root;
3. rebuilds the tree independently in pymerkle from the leaves and checks that its root equals
   the signed root (when every event is visible);
4. with --first-size/--first-root, checks with pymerkle that the earlier signed root is
   consistent with the later one.

Prints a JSON summary; exits 1 on any failure.
"""
import argparse
import base64
import json
import struct
import sys

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pymerkle import InmemoryTree, verify_consistency, verify_inclusion
from pymerkle.core import _inclusion_path_layout
from pymerkle.proof import InclusionProof


def fail(msg):
    print(f"audit_verify: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--ca-file", required=True)
    ap.add_argument("--key-id", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--all-visible", action="store_true", help="the credential sees every event: rebuild the tree")
    ap.add_argument("--first-size", type=int)
    ap.add_argument("--first-root")
    a = ap.parse_args()

    s = requests.Session()
    s.trust_env = False
    s.verify = a.ca_file
    s.auth = (a.key_id, a.secret)

    def get(path, **params):
        r = s.get(a.base_url + path, params=params, timeout=30)
        if r.status_code != 200:
            fail(f"GET {path} -> {r.status_code}: {r.text}")
        return r.json()

    head = get("/v1/audit/tree-head")
    size, ts = head["tree_size"], head["timestamp"]
    root = base64.b64decode(head["root_hash"])
    signed = bytes([0, 1]) + struct.pack(">QQ", ts, size) + root
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(head["public_key"])).verify(
            base64.b64decode(head["signature"]), signed)
    except Exception as e:  # noqa: BLE001 - any failure is a verification failure
        fail(f"tree head signature does not verify: {e!r}")

    events, cursor = [], None
    while True:
        params = {"page_size": 200}
        if cursor:
            params["cursor"] = cursor
        page = get("/v1/audit/events", **params)
        events += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break

    tree = InmemoryTree(algorithm="sha256")  # RFC 6962 prefixes (security mode) are the default
    leaves = {}
    verified = 0
    for e in events:
        if e["leaf_index"] >= size:
            continue
        p = get(f"/v1/audit/events/{e['id']}/proof", tree_size=size)
        leaf = base64.b64decode(p["leaf"])
        leaves[p["leaf_index"]] = leaf
        base = tree.hash_buff(leaf)
        index = p["leaf_index"] + 1  # pymerkle counts from one
        rule, _ = _inclusion_path_layout(index, size)
        proof = InclusionProof("sha256", True, size, index, rule,
                               [base] + [base64.b64decode(h) for h in p["audit_path"]])
        try:
            verify_inclusion(base, root, proof)
        except Exception as ex:  # noqa: BLE001
            fail(f"inclusion proof of {e['id']} (index {p['leaf_index']}) does not verify: {ex!r}")
        verified += 1

    rebuilt = None
    if a.all_visible:
        if sorted(leaves) != list(range(size)):
            fail(f"expected every leaf 0..{size}, saw {len(leaves)}")
        for i in range(size):
            tree.append_entry(leaves[i])
        rebuilt = tree.get_state(size) == root
        if not rebuilt:
            fail("pymerkle's root over the leaves differs from the signed root")
        if a.first_size:
            first_root = base64.b64decode(a.first_root)
            if tree.get_state(a.first_size) != first_root:
                fail("pymerkle's root at the earlier size differs from the earlier signed root")
            try:
                verify_consistency(first_root, root, tree.prove_consistency(a.first_size, size))
            except Exception as ex:  # noqa: BLE001
                fail(f"the earlier signed root is not consistent with the later one: {ex!r}")

    print(json.dumps({"tree_size": size, "signature_valid": True, "inclusion_verified": verified,
                      "rebuilt_root_matches": rebuilt, "root_hash": head["root_hash"]}))


if __name__ == "__main__":
    main()
