#!/usr/bin/python3
"""Scan files for kms_pg secrets in every encoding they could leak in.

Used by t/080_secrets_in_logs.pl.  The secrets are derived independently of
kms_pg, from the documented formats (docs/format.md, src/kms_envelope.h,
src/kms_provider_local.c):

  * the local provider's master key, and the root key material of every
    version of every local key, unwrapped from the keyring catalog rows with
    the master key as docs/format.md describes (AES-256-GCM, AAD
    "kms_pg local key material v1" NUL || key id || u32be version);
  * data keys (DEKs): each ciphertext given in --values is parsed, its wrapped
    DEK unwrapped with the root key (AES-256-GCM, AAD "kms_pg local wrap v1"
    NUL || key id || canonical provider context), and the DEK is proven right
    by decrypting the value's body itself -- a scanner that derived wrong
    keys would find nothing and prove nothing, so that is a hard error;
  * AWS: the secret access key, the session token, and the SigV4 signing
    keys (kDate, kRegion, kService, kSigning) for the given dates; the DEK of
    every AWS value, obtained by sending its wrapped DEK to the KMS endpoint
    (the test's emulator) with boto3 -- again proven by decrypting the value
    -- plus any DEKs given in hex.

Each secret is searched raw, as lower/upper hex, and as base64 (standard and
URL-safe, at every byte alignment, so a secret inside a larger base64 blob is
found too); text secrets also as text.  A match of any aligned 8-byte piece
(or the corresponding hex/base64 piece) counts, so partial leaks are found.

Exit status: 0 clean, 1 leak found, 2 bad input / derivation failure.
"""
import argparse
import base64
import hashlib
import hmac
import json
import re
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"\xc5KPG"
LOCAL_WRAP_AAD = b"kms_pg local wrap v1\x00"


class Secret:
    def __init__(self, label, data, text=False):
        self.label = label
        self.data = data
        self.text = text


def canonical_context(ctx):
    """Canonical bytes of a flat context (kms_context.h)."""
    pairs = []
    for k, v in ctx.items():
        kb = k.encode()
        if isinstance(v, bool):
            t, vb = 3, (b"true" if v else b"false")
        elif isinstance(v, int):
            t, vb = 2, str(v).encode()
        elif isinstance(v, str):
            t, vb = 1, v.encode()
        else:
            raise ValueError(f"context value {v!r}: the scanner handles strings, integers and booleans")
        pairs.append((kb, t, vb))
    pairs.sort(key=lambda p: p[0])
    out = struct.pack(">I", len(pairs))
    for kb, t, vb in pairs:
        out += struct.pack(">I", len(kb)) + kb + bytes([t]) + struct.pack(">I", len(vb)) + vb
    return out


def parse_envelope(ct):
    if ct[:4] != MAGIC or ct[4] != 1:
        raise ValueError("not a kms_pg v1 ciphertext")
    provider = ct[5]
    off = 6
    klen = ct[off]
    key_id = ct[off + 1:off + 1 + klen].decode()
    off += 1 + klen
    names_start = off
    n = ct[off]
    off += 1
    names = []
    for _ in range(n):
        ln = ct[off]
        names.append(ct[off + 1:off + 1 + ln].decode())
        off += 1 + ln
    names_block = ct[names_start:off]
    wlen = struct.unpack(">H", ct[off:off + 2])[0]
    off += 2
    wrapped = ct[off:off + wlen]
    off += wlen
    return {
        "provider": provider, "key_id": key_id, "names": names, "names_block": names_block,
        "wrapped": wrapped, "nonce": ct[off:off + 12], "sealed": ct[off + 12:],
    }


def open_value(ct, env, dek, context):
    aad = ct[:5] + env["names_block"] + canonical_context(context)
    return AESGCM(dek).decrypt(env["nonce"], env["sealed"], aad)


def kms_decrypt(args, blob, pctx):
    """The plaintext DEK of an AWS wrapped DEK, asked from the KMS endpoint."""
    import boto3
    from botocore.config import Config

    if not hasattr(kms_decrypt, "client"):
        kms_decrypt.client = boto3.client(
            "kms", region_name=args.aws_region, endpoint_url=args.aws_endpoint,
            verify=args.aws_ca or True, aws_access_key_id=args.aws_access_key,
            aws_secret_access_key=args.aws_secret, aws_session_token=args.aws_token,
            config=Config(retries={"max_attempts": 2}))
    ec = {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in pctx.items()}
    return kms_decrypt.client.decrypt(CiphertextBlob=blob, EncryptionContext=ec)["Plaintext"]


MATERIAL_AAD = b"kms_pg local key material v1\x00"


def read_master_key(path):
    with open(path) as f:
        key = bytes.fromhex(f.read().strip())
    if len(key) != 32:
        raise ValueError("the master key is not 32 bytes")
    return key


def local_keys(catalog_path, master_key):
    """{key_id: {version: material}} from kms_local_key_version rows (JSON list)."""
    with open(catalog_path) as f:
        rows = json.load(f)
    keys = {}
    for r in rows:
        w = bytes.fromhex(r["material"])
        aad = MATERIAL_AAD + r["key_id"].encode() + struct.pack(">I", r["version"])
        keys.setdefault(r["key_id"], {})[r["version"]] = AESGCM(master_key).decrypt(w[:12], w[12:], aad)
    return keys


def derive(args):
    secrets = []
    deks = {}
    keys = {}
    if args.catalog:
        master = read_master_key(args.master_key_file)
        secrets.append(Secret("master key", master))
        keys = local_keys(args.catalog, master)
    for key_id, versions in keys.items():
        for ver, material in versions.items():
            if len(material) != 32:
                raise ValueError(f"key {key_id} version {ver}: material is not 32 bytes")
            secrets.append(Secret(f"root key {key_id} v{ver}", material))
    aws_deks = [bytes.fromhex(h) for h in args.aws_dek]

    values = []
    if args.values:
        with open(args.values) as f:
            values = json.load(f)
    opened = 0
    for i, v in enumerate(values):
        ct = bytes.fromhex(v["ct"])
        env = parse_envelope(ct)
        context = v.get("context", {})
        pctx = {k: context[k] for k in env["names"] if k in context}
        if env["provider"] == 1:
            w = env["wrapped"]
            if len(w) != 65 or w[0] != 1:
                raise ValueError(f"value {i}: local wrapped DEK is malformed")
            ver = struct.unpack(">I", w[1:5])[0]
            root = keys[env["key_id"]][ver]
            aad = LOCAL_WRAP_AAD + env["key_id"].encode() + canonical_context(pctx)
            dek = AESGCM(root).decrypt(w[5:17], w[17:], aad)
        elif args.aws_endpoint:
            dek = kms_decrypt(args, env["wrapped"], pctx)
        else:
            dek = None
            for cand in aws_deks:
                try:
                    open_value(ct, env, cand, context)
                    dek = cand
                    break
                except Exception:
                    pass
            if dek is None:
                raise ValueError(f"value {i}: none of the given AWS DEKs opens it")
        plain = open_value(ct, env, dek, context)
        if "plain" in v and plain != v["plain"].encode():
            raise ValueError(f"value {i}: decrypted to {plain!r}, expected {v['plain']!r}")
        opened += 1
        deks[dek] = f"DEK of value {i} ({env['key_id']})"
    for dek, label in deks.items():
        secrets.append(Secret(label, dek))
    for i, d in enumerate(aws_deks):
        if d not in deks:
            secrets.append(Secret(f"AWS DEK {i}", d))

    if args.aws_secret:
        secrets.append(Secret("AWS secret access key", args.aws_secret.encode(), text=True))
        for date in args.sigv4_date:
            kd = hmac.new(("AWS4" + args.aws_secret).encode(), date.encode(), hashlib.sha256).digest()
            kr = hmac.new(kd, args.aws_region.encode(), hashlib.sha256).digest()
            ks = hmac.new(kr, b"kms", hashlib.sha256).digest()
            kg = hmac.new(ks, b"aws4_request", hashlib.sha256).digest()
            secrets += [Secret(f"SigV4 kDate {date}", kd), Secret(f"SigV4 kRegion {date}", kr),
                        Secret(f"SigV4 kService {date}", ks), Secret(f"SigV4 signing key {date}", kg)]
    if args.aws_token:
        secrets.append(Secret("AWS session token", args.aws_token.encode(), text=True))
    return secrets, opened, len(deks)


def pieces(secret):
    """(form, needle) pairs; any one found in a file is a leak."""
    d = secret.data
    out = []
    step = 8
    for off in range(0, max(len(d) - step, 0) + 1, step):
        chunk = d[off:off + step]
        out.append(("raw", chunk))
        out.append(("hex", chunk.hex().encode()))
        out.append(("HEX", chunk.hex().upper().encode()))
    for shift in range(3):
        for alt in (False, True):
            enc = base64.b64encode(b"\0" * shift + d)
            if alt:
                enc = enc.replace(b"+", b"-").replace(b"/", b"_")
            # skip the characters touched by the padding bytes and the tail
            body = enc[4:-4] if len(enc) > 12 else enc
            for off in range(0, max(len(body) - 12, 0) + 1, 12):
                out.append(("base64url" if alt else "base64", body[off:off + 12]))
    return [(f, n) for f, n in out if len(n) >= 8]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", help="JSON list of the kms_local_key_version rows (material in hex)")
    ap.add_argument("--master-key-file", help="the master key file (64 hex characters)")
    ap.add_argument("--values", help="JSON list of {ct: hex, context: {...}, plain: text}")
    ap.add_argument("--aws-dek", action="append", default=[], help="an AWS DEK in hex (repeatable)")
    ap.add_argument("--aws-secret")
    ap.add_argument("--aws-token")
    ap.add_argument("--aws-region", default="us-east-1")
    ap.add_argument("--aws-endpoint", help="KMS endpoint that unwraps the AWS values' DEKs")
    ap.add_argument("--aws-ca", help="CA bundle for --aws-endpoint")
    ap.add_argument("--aws-access-key", help="access key id for --aws-endpoint")
    ap.add_argument("--sigv4-date", action="append", default=[], help="YYYYMMDD (repeatable)")
    ap.add_argument("--min-deks", type=int, default=0, help="fail unless at least this many DEKs were derived")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()

    try:
        secrets, opened, ndeks = derive(args)
    except Exception as e:  # noqa: BLE001 - any derivation failure is fatal
        print(f"secrets_scan: cannot derive the secrets: {e}", file=sys.stderr)
        return 2
    if ndeks < args.min_deks:
        print(f"secrets_scan: derived {ndeks} DEKs, expected at least {args.min_deks}", file=sys.stderr)
        return 2

    needles = {}
    for s in secrets:
        for form, n in pieces(s):
            needles.setdefault(n, (s.label, form))
    pattern = re.compile(b"|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True)))

    leaks = 0
    total = 0
    for path in args.files:
        with open(path, "rb") as f:
            data = f.read()
        total += len(data)
        for m in pattern.finditer(data):
            label, form = needles[m.group(0)]
            line = data.count(b"\n", 0, m.start()) + 1
            print(f"LEAK: {label} ({form}) in {path} line {line}")
            leaks += 1
    kinds = {}
    for s in secrets:
        kind = s.label.split(" ")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"secrets_scan: {len(secrets)} secrets ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}), "
          f"{opened} values opened, {len(needles)} needles, {len(args.files)} files, {total} bytes, {leaks} leaks")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
