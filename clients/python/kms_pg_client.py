"""kms_pg_client: read and write kms_pg ciphertexts in the application.

A small reference implementation of the kms_pg ciphertext formats, versions 1
and 2 (docs/format.md), written from the specification only: it shares no
code with the extension.  It needs Python 3, boto3 and cryptography (Debian:
python3-boto3, python3-cryptography); reading version 2 values from the
database's DEK registry needs a DB-API connection (psycopg or psycopg2).

    import boto3, kms_pg_client
    kms = boto3.client("kms", region_name="eu-west-1")
    ct = kms_pg_client.encrypt(b"secret", {"tenant": "acme", "id": 42},
                               "alias/app-data", kms)
    kms_pg_client.decrypt(ct, {"tenant": "acme", "id": 42}, kms_client=kms)

Values written here are accepted by kms_decrypt() in the database with the
same context, and values written by kms_encrypt() decrypt here.  Contexts are
flat dicts of str keys to str, int, float, decimal.Decimal or bool values (or
the same as JSON text); numbers are compared by value the way the database
compares them (1.50 == 1.5 == Decimal("1.5")), so pass exact numbers as int or
Decimal, never as a float that has lost digits.

The local provider is supported given a keyring export (the rows of the
keyring catalog tables kms_local_key and kms_local_key_version as JSON,
docs/format.md "Local key material") and the master key that wraps their
material: that is meant for tests and for offline recovery, not for
applications.  A kms_pg 1.0 keyring file (no master key) is read as well.

A version 2 value carries only a 7-byte reference to its data key; the key
id, provider-context names and wrapped data key are in the registry table
kms_dek_registry of the database that wrote it.  decrypt() takes registry=:
the value's registry row, a function of the reference that returns it, or a
database connection on which it runs the one query REGISTRY_QUERY.  This
module writes version 1 only.
"""

import base64
import decimal
import json
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "decrypt", "encrypt", "parse", "canonical_context", "canonical_value",
    "import_reference_envelope", "master_key_fingerprint", "Envelope", "RegistryRow",
    "registry_row", "parse_name_block", "REGISTRY_QUERY",
    "KmsPgError", "FormatError", "ContextError", "AuthenticationError", "KeyUnavailableError",
    "PROVIDER_LOCAL", "PROVIDER_AWS",
]

MAGIC = b"\xc5KPG"
FORMAT_VERSION = 1
FORMAT_VERSION_2 = 2
V2_HEADER_LEN = 12              # magic, version, 7-byte DEK reference
V2_REF_LEN = 7
V2_OVERHEAD = V2_HEADER_LEN + 12 + 16
PROVIDER_LOCAL = 1
PROVIDER_AWS = 2
NONCE_LEN = 12
TAG_LEN = 16
DEK_LEN = 32
MAX_CONTEXT_KEYS = 32          # provider-context key names recorded in a value
MAX_WRAPPED_LEN = 1024
MAX_KEY_ID_LEN = 255
MAX_CONTEXT_PAIRS = 1024
MAX_CONTEXT_BYTES = 65536

CTX_STRING = 1
CTX_NUMBER = 2
CTX_BOOLEAN = 3

LOCAL_WRAP_FORMAT = 1
LOCAL_WRAP_LEN = 1 + 4 + NONCE_LEN + DEK_LEN + TAG_LEN
LOCAL_WRAP_AAD = b"kms_pg local wrap v1\x00"
KEYRING_FORMAT = "kms_pg local keyring"                   # 1.0 file, plain material
CATALOG_FORMAT = "kms_pg local keyring catalog"           # 1.1 export, wrapped material
MATERIAL_AAD = b"kms_pg local key material v1\x00"
MATERIAL_WRAPPED_LEN = NONCE_LEN + DEK_LEN + TAG_LEN


class KmsPgError(Exception):
    """Base class of this module's errors."""


class FormatError(KmsPgError):
    """The bytes are not a well-formed kms_pg ciphertext (SQLSTATE XX001, 22P03, 0A000)."""


class ContextError(KmsPgError, ValueError):
    """The encryption context cannot be canonicalised (SQLSTATE 22023 / 22004 / 54000)."""


class AuthenticationError(KmsPgError):
    """Wrong encryption context, or the value was altered (SQLSTATE 22000)."""


class KeyUnavailableError(KmsPgError):
    """The key is unknown, disabled or has no such version in the local keyring,
    or (format 2) the DEK registry has no row for the value's reference."""


# The one query that finds the registry row of a version 2 value (docs/format.md).
# The table is in the extension's schema: on the search_path, or pass schema=.
REGISTRY_QUERY = ("SELECT provider, key_id, name_block, wrapped_dek FROM {table} "
                  "WHERE dek_ref = %s")


# ---------------------------------------------------------------------------
# Encryption context
# ---------------------------------------------------------------------------

def _normalise_number(d):
    """PostgreSQL numeric_normalize(): plain decimal text, no exponent,
    no trailing fractional zeros, no trailing point, zero is "0"."""
    if not d.is_finite():
        raise ContextError("encryption context numbers must be finite (JSON has no NaN or Infinity)")
    if d.is_zero():
        return "0"
    s = format(d, "f")             # never uses an exponent, keeps every digit
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def canonical_value(value):
    """(type byte, canonical value bytes) of one context value."""
    if isinstance(value, bool):    # before int: bool is an int subclass
        return CTX_BOOLEAN, b"true" if value else b"false"
    if isinstance(value, int):
        return CTX_NUMBER, str(value).encode("ascii")
    if isinstance(value, float):
        # repr() is the shortest text that round-trips, which is what
        # json.dumps() sends to the database
        return CTX_NUMBER, _normalise_number(decimal.Decimal(repr(value))).encode("ascii")
    if isinstance(value, decimal.Decimal):
        return CTX_NUMBER, _normalise_number(value).encode("ascii")
    if isinstance(value, str):
        return CTX_STRING, _utf8(value, "value")
    if value is None:
        raise ContextError("encryption context values must be strings, numbers or booleans (got null)")
    raise ContextError("encryption context values must be strings, numbers or booleans (got %s)"
                       % type(value).__name__)


def _utf8(s, what):
    if "\x00" in s:
        # jsonb rejects \u0000, so such a context could never be used in SQL
        raise ContextError("encryption context %s contains a NUL character" % what)
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ContextError("encryption context %s is not valid Unicode: %s" % (what, e)) from None


def _context_dict(context):
    """Accept a dict or JSON text (numbers parsed exactly, as Decimal)."""
    if context is None:
        raise ContextError("encryption context must not be None (use {} for no context)")
    if isinstance(context, (bytes, bytearray)):
        context = bytes(context).decode("utf-8")
    if isinstance(context, str):
        try:
            context = json.loads(context, parse_float=decimal.Decimal, parse_int=int)
        except ValueError as e:
            raise ContextError("encryption context is not valid JSON: %s" % e) from None
    if not isinstance(context, dict):
        raise ContextError("encryption context must be a JSON object")
    return context


def _context_pairs(context):
    """Sorted [(key bytes, type, value bytes)] of a context."""
    context = _context_dict(context)
    if len(context) > MAX_CONTEXT_PAIRS:
        raise ContextError("encryption context is too large: %d keys, at most %d"
                           % (len(context), MAX_CONTEXT_PAIRS))
    pairs = []
    total = 4
    for k, v in context.items():
        if not isinstance(k, str):
            raise ContextError("encryption context keys must be strings")
        if k == "":
            raise ContextError("encryption context keys must not be empty")
        kb = _utf8(k, "key")
        t, vb = canonical_value(v)
        total += 9 + len(kb) + len(vb)
        pairs.append((kb, t, vb))
    if total > MAX_CONTEXT_BYTES:
        raise ContextError("encryption context is too large: the canonical form exceeds %d bytes"
                           % MAX_CONTEXT_BYTES)
    pairs.sort(key=lambda p: p[0])  # bytes compare like memcmp, shorter first on a tie
    return pairs


def _serialise(pairs):
    out = [struct.pack(">I", len(pairs))]
    for kb, t, vb in pairs:
        out.append(struct.pack(">I", len(kb)))
        out.append(kb)
        out.append(struct.pack(">BI", t, len(vb)))
        out.append(vb)
    return b"".join(out)


def canonical_context(context):
    """The canonical bytes of an encryption context (docs/format.md)."""
    return _serialise(_context_pairs(context))


def _provider_pairs(pairs, names):
    """The pairs named by the ciphertext's provider-context key block, in its order."""
    index = {kb: (kb, t, vb) for kb, t, vb in pairs}
    out = []
    for name in names:
        p = index.get(name)
        if p is None:
            raise AuthenticationError(
                "kms_pg ciphertext failed authentication: wrong encryption context, or the value "
                "was altered (the value was encrypted with context key %r, which the given "
                "context lacks)" % name.decode("utf-8", "replace"))
        out.append(p)
    return out


def _aws_context(pairs):
    """AWS EncryptionContext: the canonical value text of each pair, as a string."""
    return {kb.decode("utf-8"): vb.decode("utf-8") for kb, _, vb in pairs}


# ---------------------------------------------------------------------------
# Ciphertext format
# ---------------------------------------------------------------------------

class Envelope:
    """A parsed kms_pg ciphertext (nothing decrypted)."""

    __slots__ = ("version", "provider", "key_id", "context_keys", "names_block",
                 "wrapped", "header", "nonce", "body", "tag", "dek_ref")

    def __repr__(self):
        if self.version == FORMAT_VERSION_2:
            return "Envelope(version=2, dek_ref=%d, body=%d bytes)" % (self.dek_ref, len(self.body))
        return ("Envelope(version=%d, provider=%d, key_id=%r, context_keys=%r, wrapped=%d bytes, "
                "body=%d bytes)" % (self.version, self.provider, self.key_id,
                                    [n.decode("utf-8", "replace") for n in self.context_keys],
                                    len(self.wrapped), len(self.body)))

    @property
    def aad_prefix(self):
        """The value's own bytes in the AAD: 0..4 in version 1, 0..11 in version 2."""
        return self.header[:5] if self.version == FORMAT_VERSION else self.header[:V2_HEADER_LEN]


def parse_name_block(block, exact=True):
    """[names] of a provider-context name block: count byte C (0..32), then C
    times u8 length (1..255) + name, strictly ascending by bytes (no repeats).
    exact: the block must end after its last name.  Returns (names, length)."""
    b = bytes(block)
    if len(b) < 1:
        raise FormatError("kms_pg ciphertext is truncated")
    count = b[0]
    if count > MAX_CONTEXT_KEYS:
        raise FormatError("kms_pg ciphertext header is malformed: %d provider-context keys" % count)
    off = 1
    names = []
    for _ in range(count):
        if off + 1 > len(b):
            raise FormatError("kms_pg ciphertext is truncated")
        ln = b[off]
        off += 1
        if ln == 0:
            raise FormatError("kms_pg ciphertext header is malformed: empty context key name")
        if off + ln > len(b):
            raise FormatError("kms_pg ciphertext is truncated")
        name = b[off:off + ln]
        if names and not names[-1] < name:
            raise FormatError("kms_pg ciphertext header is malformed: provider-context key names "
                              "are not strictly ascending")
        names.append(name)
        off += ln
    if exact and off != len(b):
        raise FormatError("kms_pg DEK registry row is malformed: %d bytes after the name block"
                          % (len(b) - off))
    return names, off


def parse(ciphertext):
    """Parse a ciphertext without decrypting it; raises FormatError."""
    b = bytes(ciphertext)
    n = len(b)
    if n == 0:
        raise FormatError("kms_pg ciphertext is empty")
    if b[:4] != MAGIC[:min(4, n)]:
        raise FormatError("value is not a kms_pg ciphertext")
    if n < 5:
        raise FormatError("kms_pg ciphertext is truncated")
    if b[4] == FORMAT_VERSION_2:
        return _parse_v2(b)
    if b[4] != FORMAT_VERSION:
        raise FormatError("unsupported kms_pg ciphertext format version %d" % b[4])
    min_len = 4 + 1 + 1 + 1 + 1 + 1 + 2 + 1 + NONCE_LEN + TAG_LEN
    if n < min_len:
        raise FormatError("kms_pg ciphertext is truncated")
    env = Envelope()
    env.version = b[4]
    env.provider = b[5]
    if env.provider not in (PROVIDER_LOCAL, PROVIDER_AWS):
        raise FormatError("kms_pg ciphertext names an unknown key provider (%d)" % env.provider)
    off = 6
    klen = b[off]
    off += 1
    if klen == 0:
        raise FormatError("kms_pg ciphertext header is malformed: empty key id")
    if off + klen + 1 > n:
        raise FormatError("kms_pg ciphertext is truncated")
    kid = b[off:off + klen]
    if any(c < 0x21 or c > 0x7E for c in kid):
        raise FormatError("kms_pg ciphertext header is malformed: key id is not printable ASCII")
    env.key_id = kid.decode("ascii")
    off += klen
    names_start = off
    names, used = parse_name_block(b[off:], exact=False)
    off += used
    env.context_keys = names
    env.names_block = b[names_start:off]
    if off + 2 > n:
        raise FormatError("kms_pg ciphertext is truncated")
    wlen = (b[off] << 8) | b[off + 1]
    off += 2
    if wlen == 0 or wlen > MAX_WRAPPED_LEN:
        raise FormatError("kms_pg ciphertext header is malformed: wrapped data key of %d bytes" % wlen)
    if off + wlen > n:
        raise FormatError("kms_pg ciphertext is truncated")
    env.wrapped = b[off:off + wlen]
    off += wlen
    env.header = b[:off]
    if off + NONCE_LEN + TAG_LEN > n:
        raise FormatError("kms_pg ciphertext is truncated")
    env.nonce = b[off:off + NONCE_LEN]
    env.body = b[off + NONCE_LEN:n - TAG_LEN]
    env.tag = b[n - TAG_LEN:]
    return env


def _parse_v2(b):
    """Version 2: magic, 02, 7-byte DEK reference (never 0), nonce, body, tag."""
    n = len(b)
    if n < V2_OVERHEAD:
        raise FormatError("kms_pg ciphertext is truncated: a version 2 value has at least %d bytes, "
                          "this one %d" % (V2_OVERHEAD, n))
    env = Envelope()
    env.version = FORMAT_VERSION_2
    env.dek_ref = int.from_bytes(b[5:V2_HEADER_LEN], "big")
    if env.dek_ref == 0:
        raise FormatError("kms_pg ciphertext header is malformed: DEK reference 0")
    env.header = b[:V2_HEADER_LEN]
    env.nonce = b[V2_HEADER_LEN:V2_HEADER_LEN + NONCE_LEN]
    env.body = b[V2_HEADER_LEN + NONCE_LEN:n - TAG_LEN]
    env.tag = b[n - TAG_LEN:]
    env.provider = env.key_id = env.names_block = env.wrapped = None
    env.context_keys = None
    return env


class RegistryRow:
    """The four columns of a kms_dek_registry row that a reader uses, checked."""

    __slots__ = ("dek_ref", "provider", "key_id", "name_block", "names", "wrapped_dek")

    def __repr__(self):
        return ("RegistryRow(dek_ref=%r, provider=%d, key_id=%r, names=%r, wrapped_dek=%d bytes)"
                % (self.dek_ref, self.provider, self.key_id,
                   [x.decode("utf-8", "replace") for x in self.names], len(self.wrapped_dek)))


def registry_row(row, dek_ref=None):
    """A checked RegistryRow from a mapping (provider, key_id, name_block,
    wrapped_dek, optionally dek_ref) or a sequence (provider, key_id,
    name_block, wrapped_dek) as the query returns it."""
    if isinstance(row, RegistryRow):
        r = row
    else:
        r = RegistryRow()
        if hasattr(row, "keys"):
            r.dek_ref = row.get("dek_ref")
            vals = (row["provider"], row["key_id"], row["name_block"], row["wrapped_dek"])
        else:
            vals = tuple(row)
            if len(vals) != 4:
                raise FormatError("a kms_dek_registry row has 4 columns (provider, key_id, name_block, "
                                  "wrapped_dek), got %d" % len(vals))
            r.dek_ref = None
        provider, key_id, name_block, wrapped = vals
        r.provider = int(provider)
        if r.provider not in (PROVIDER_LOCAL, PROVIDER_AWS):
            raise FormatError("kms_pg DEK registry row names an unknown key provider (%d)" % r.provider)
        kid = key_id.encode("ascii", "replace") if isinstance(key_id, str) else bytes(key_id)
        if not 1 <= len(kid) <= MAX_KEY_ID_LEN or any(c < 0x21 or c > 0x7E for c in kid):
            raise FormatError("kms_pg DEK registry row is malformed: key id is not 1 to 255 printable "
                              "ASCII bytes")
        r.key_id = kid.decode("ascii")
        r.name_block = _bytes_column(name_block)
        r.names, _ = parse_name_block(r.name_block, exact=True)
        r.wrapped_dek = _bytes_column(wrapped)
        if not 1 <= len(r.wrapped_dek) <= MAX_WRAPPED_LEN:
            raise FormatError("kms_pg DEK registry row is malformed: wrapped data key of %d bytes"
                              % len(r.wrapped_dek))
        if r.provider == PROVIDER_LOCAL and (len(r.wrapped_dek) != LOCAL_WRAP_LEN
                                             or r.wrapped_dek[0] != LOCAL_WRAP_FORMAT):
            raise FormatError("kms_pg local wrapped data key is malformed")
    if dek_ref is not None and r.dek_ref is not None and int(r.dek_ref) != dek_ref:
        raise KeyUnavailableError("the registry row given is for dek_ref %d, the value refers to %d"
                                  % (int(r.dek_ref), dek_ref))
    return r


def _bytes_column(v):
    """bytea as bytes, memoryview (psycopg) or '\\x..' text."""
    if isinstance(v, str):
        if not v.startswith("\\x"):
            raise FormatError("a bytea column in hex form ('\\x...') is expected")
        return bytes.fromhex(v[2:])
    return bytes(v)


def _lookup_registry(registry, dek_ref, schema=None):
    """The RegistryRow of dek_ref from a row, a function or a DB-API connection."""
    if registry is None:
        raise KmsPgError("this is a format 2 value: pass registry (its kms_dek_registry row, a "
                         "function of the reference, or a database connection)")
    if hasattr(registry, "cursor"):
        table = "kms_dek_registry" if schema is None else '"%s".kms_dek_registry' % schema.replace('"', '""')
        cur = registry.cursor()
        try:
            cur.execute(REGISTRY_QUERY.format(table=table), (dek_ref,))
            row = cur.fetchone()
        finally:
            cur.close()
    elif callable(registry):
        row = registry(dek_ref)
    else:
        row = registry
    if row is None:
        raise KeyUnavailableError("kms_pg DEK registry has no row for dek_ref %d: the value cannot be "
                                  "opened without it" % dek_ref)
    return registry_row(row, dek_ref)


def _build_header(provider, key_id, names, wrapped):
    kid = key_id.encode("ascii") if isinstance(key_id, str) else bytes(key_id)
    if not 1 <= len(kid) <= MAX_KEY_ID_LEN or any(c < 0x21 or c > 0x7E for c in kid):
        raise KmsPgError("a key id of 1 to 255 printable ASCII bytes is required, got %r" % key_id)
    if len(names) > MAX_CONTEXT_KEYS:
        raise ContextError("at most %d context keys can be sent to the key provider" % MAX_CONTEXT_KEYS)
    if not 1 <= len(wrapped) <= MAX_WRAPPED_LEN:
        raise KmsPgError("wrapped data key of %d bytes cannot be recorded" % len(wrapped))
    parts = [MAGIC, bytes([FORMAT_VERSION, provider, len(kid)]), kid, bytes([len(names)])]
    for nm in names:
        if not 1 <= len(nm) <= 255:
            raise ContextError("context key names sent to the provider must be 1 to 255 bytes")
        parts.append(bytes([len(nm)]))
        parts.append(nm)
    parts.append(struct.pack(">H", len(wrapped)))
    parts.append(bytes(wrapped))
    return b"".join(parts)


def _names_block(header):
    """The provider-context key block (count byte and names) of a header."""
    off = 7 + header[6]
    end = off + 1
    for _ in range(header[off]):
        end += 1 + header[end]
    return header[off:end]


def _aad(header, names_block, canonical):
    return header[:5] + names_block + canonical


def _seal(dek, header, canonical, plaintext, used_nonce=None):
    nonce = os.urandom(NONCE_LEN)
    while nonce == used_nonce:      # never twice under one data key
        nonce = os.urandom(NONCE_LEN)
    sealed = AESGCM(dek).encrypt(nonce, bytes(plaintext), _aad(header, _names_block(header), canonical))
    return header + nonce + sealed        # sealed is body || tag


# ---------------------------------------------------------------------------
# Local provider (keyring export and master key, or a 1.0 keyring file)
# ---------------------------------------------------------------------------

def _master_key_bytes(master_key):
    if isinstance(master_key, str):
        master_key = bytes.fromhex(master_key.strip())
    if not isinstance(master_key, (bytes, bytearray)) or len(master_key) != 32:
        raise KeyUnavailableError("the kms_pg master key must be 32 bytes (64 hexadecimal characters)")
    return bytes(master_key)


def master_key_fingerprint(master_key):
    """The fingerprint kms_pg records for a master key (16 hex characters)."""
    import hashlib
    return hashlib.sha256(b"kms_pg master key fingerprint v1\x00" + _master_key_bytes(master_key)).hexdigest()[:16]


def _unwrap_material(master_key, key_id, version, fingerprint, wrapped_hex):
    """Key material of one kms_local_key_version row (docs/format.md)."""
    mk = _master_key_bytes(master_key)
    if fingerprint != master_key_fingerprint(mk):
        raise KeyUnavailableError("wrong kms_pg master key for key \"%s\" version %d: the row is wrapped under "
                                  "master key %s" % (key_id, version, fingerprint))
    w = bytes.fromhex(wrapped_hex)
    if len(w) != MATERIAL_WRAPPED_LEN:
        raise FormatError("kms_pg keyring row for key \"%s\" version %d was altered" % (key_id, version))
    aad = MATERIAL_AAD + key_id.encode("ascii") + struct.pack(">I", version)
    try:
        return AESGCM(mk).decrypt(w[:NONCE_LEN], w[NONCE_LEN:], aad)
    except InvalidTag:
        raise AuthenticationError("kms_pg keyring row for key \"%s\" version %d was altered" % (key_id, version)) from None


def _load_keyring(keyring, master_key):
    """[{key_id, alias, enabled, versions: [{version, material: bytes}]}] from an export or a 1.0 file."""
    if isinstance(keyring, (str, os.PathLike)):
        with open(keyring, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    else:
        doc = keyring
    if not isinstance(doc, dict) or doc.get("format") not in (KEYRING_FORMAT, CATALOG_FORMAT):
        raise KeyUnavailableError("not a kms_pg keyring export")
    if doc.get("version") != 1:
        raise KeyUnavailableError("kms_pg keyring export of an unsupported version")
    out = []
    for k in doc.get("keys") or []:
        versions = []
        for v in k.get("versions") or []:
            if doc["format"] == CATALOG_FORMAT:
                if master_key is None:
                    raise KeyUnavailableError("local keys are wrapped under the master key: pass master_key")
                material = _unwrap_material(master_key, k["key_id"], v["version"], v["master_key"], v["material"])
            else:
                material = base64.b64decode(v["material"])
            versions.append({"version": v["version"], "material": material})
        versions.sort(key=lambda v: v["version"])
        out.append({"key_id": k["key_id"], "alias": k.get("alias"), "enabled": bool(k.get("enabled")),
                    "versions": versions})
    return out


def _find_local_key(keys, key):
    k = key
    if key.startswith("arn:"):
        if ":key/" in key:
            k = key.split(":key/", 1)[1]
        elif ":alias/" in key:
            k = key[key.index(":alias/") + 1:]
    for entry in keys:
        if k.startswith("alias/"):
            if entry.get("alias") == k:
                return entry
        elif entry.get("key_id") == k:
            return entry
    raise KeyUnavailableError('kms_pg local key "%s" does not exist' % key)


def _local_wrap_aad(key_id, provider_canonical):
    return LOCAL_WRAP_AAD + key_id.encode("ascii") + provider_canonical


def _local_unwrap(keyring, master_key, key_id, wrapped, provider_canonical):
    entry = _find_local_key(_load_keyring(keyring, master_key), key_id)
    if not entry.get("enabled", False):
        raise KeyUnavailableError('kms_pg local key "%s" is disabled' % entry["key_id"])
    if len(wrapped) != LOCAL_WRAP_LEN or wrapped[0] != LOCAL_WRAP_FORMAT:
        raise FormatError("kms_pg local wrapped data key is malformed")
    version = struct.unpack(">I", wrapped[1:5])[0]
    material = None
    for v in entry.get("versions", []):
        if v.get("version") == version:
            material = v["material"]
    if material is None:
        raise KeyUnavailableError('kms_pg local key "%s" has no version %d' % (entry["key_id"], version))
    try:
        return AESGCM(material).decrypt(wrapped[5:5 + NONCE_LEN], wrapped[5 + NONCE_LEN:],
                                        _local_wrap_aad(entry["key_id"], provider_canonical))
    except InvalidTag:
        raise AuthenticationError(
            "kms_pg ciphertext failed authentication: wrong encryption context, or the value was "
            "altered (the wrapped data key does not authenticate under the local key with this "
            "context)") from None


def _local_wrap(keyring, master_key, key, dek, provider_canonical):
    entry = _find_local_key(_load_keyring(keyring, master_key), key)
    if not entry.get("enabled", False):
        raise KeyUnavailableError('kms_pg local key "%s" is disabled' % entry["key_id"])
    current = entry["versions"][-1]
    material = current["material"]
    nonce = os.urandom(NONCE_LEN)
    sealed = AESGCM(material).encrypt(nonce, dek, _local_wrap_aad(entry["key_id"], provider_canonical))
    return entry["key_id"], bytes([LOCAL_WRAP_FORMAT]) + struct.pack(">I", current["version"]) + nonce + sealed


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

def decrypt(ciphertext, context, kms_client=None, local_keyring=None, master_key=None,
            registry=None, registry_schema=None):
    """Decrypt a kms_pg ciphertext written by kms_encrypt() (or encrypt()).

    context is the same encryption context the value was written with.
    AWS-provider values need kms_client (a boto3 KMS client); local-provider
    values need local_keyring (a keyring export: path or parsed JSON,
    docs/format.md) and master_key (32 bytes or 64 hex characters).

    Format 2 values also need registry: their kms_dek_registry row (a mapping
    with provider, key_id, name_block, wrapped_dek, or the query's 4-tuple),
    a function dek_ref -> row (None when there is none), or a DB-API
    connection (psycopg, psycopg2) on which REGISTRY_QUERY runs, with the
    table schema-qualified by registry_schema when given.  Version 1 values
    ignore registry.
    """
    env = parse(ciphertext)
    pairs = _context_pairs(context)
    canonical = _serialise(pairs)
    if env.version == FORMAT_VERSION_2:
        row = _lookup_registry(registry, env.dek_ref, registry_schema)
        provider, key_id, names, names_block, wrapped = (row.provider, row.key_id, row.names,
                                                         row.name_block, row.wrapped_dek)
    else:
        provider, key_id, names, names_block, wrapped = (env.provider, env.key_id, env.context_keys,
                                                         env.names_block, env.wrapped)
    provider_pairs = _provider_pairs(pairs, names)
    if provider == PROVIDER_AWS:
        if kms_client is None:
            raise KmsPgError("this value was wrapped by AWS KMS: pass kms_client")
        args = {"CiphertextBlob": wrapped, "KeyId": key_id}
        if provider_pairs:
            args["EncryptionContext"] = _aws_context(provider_pairs)
        dek = kms_client.decrypt(**args)["Plaintext"]
    else:
        if local_keyring is None:
            raise KmsPgError("this value was wrapped by the local provider: pass local_keyring and master_key")
        dek = _local_unwrap(local_keyring, master_key, key_id, wrapped, _serialise(provider_pairs))
    if len(dek) != DEK_LEN:
        raise KmsPgError("the key provider returned a %d-byte data key" % len(dek))
    try:
        return AESGCM(dek).decrypt(env.nonce, env.body + env.tag,
                                   env.aad_prefix + names_block + canonical)
    except InvalidTag:
        raise AuthenticationError("kms_pg ciphertext failed authentication: wrong encryption "
                                  "context, or the value was altered") from None


def encrypt(plaintext, context, key_id, kms_client=None, kms_context_keys=(),
            local_keyring=None, master_key=None):
    """Encrypt plaintext into a kms_pg ciphertext that kms_decrypt() accepts.

    key_id: an AWS key id, key ARN, alias name or alias ARN (AWS provider), or
    a local key id / alias when local_keyring (and master_key) is given
    instead of kms_client.  kms_context_keys: names of context keys also sent to the key
    provider (like kms_pg.kms_context_keys); names absent from context are
    skipped.  Each call makes a fresh data key: cache in the caller if needed.
    """
    pairs = _context_pairs(context)
    canonical = _serialise(pairs)
    wanted = sorted({_utf8(k, "key") for k in kms_context_keys})
    if len(wanted) > MAX_CONTEXT_KEYS:
        raise ContextError("at most %d context keys can be sent to the key provider" % MAX_CONTEXT_KEYS)
    present = {kb for kb, _, _ in pairs}
    names = [nm for nm in wanted if nm in present]
    provider_pairs = _provider_pairs(pairs, names)
    if kms_client is not None:
        args = {"KeyId": key_id, "KeySpec": "AES_256"}
        if provider_pairs:
            args["EncryptionContext"] = _aws_context(provider_pairs)
        resp = kms_client.generate_data_key(**args)
        dek, wrapped, recorded = resp["Plaintext"], resp["CiphertextBlob"], resp["KeyId"]
        provider = PROVIDER_AWS
    elif local_keyring is not None:
        dek = os.urandom(DEK_LEN)
        recorded, wrapped = _local_wrap(local_keyring, master_key, key_id, dek, _serialise(provider_pairs))
        provider = PROVIDER_LOCAL
    else:
        raise KmsPgError("pass kms_client (AWS) or local_keyring and master_key (local provider)")
    header = _build_header(provider, recorded, names, wrapped)
    return _seal(dek, header, canonical, plaintext)


def import_reference_envelope(blob, kms_client, context=None):
    """Convert an application-side envelope into a kms_pg ciphertext.

    blob is the JSON envelope of the AWS KMS overview's example:
    {"ciphertext": b64(nonce || ct || tag), "encrypted_dek": b64(CiphertextBlob),
     "context": {...}} (AES-256-GCM with no additional data; the data key
    generated by KMS GenerateDataKey under "context").

    The payload is decrypted and verified here, in the application, with the
    data key, then sealed again in kms_pg format under the SAME data key with
    a fresh nonce; the wrapped data key is re-used as it is, so no new KMS
    key material is made and the kms_pg value records every key of the
    envelope's context as a provider-context key (KMS checks them on every
    kms_decrypt()).

    context is the kms_pg encryption context of the new value (default: the
    envelope's own context).  It must hold every key of the envelope's
    context with a value whose canonical text is the envelope's string (a
    number 42 matches "42"); further keys (a row id, the column name) are
    bound to the value as additional data only.

    Why the tag cannot simply be re-used: see clients/python/README.md.
    """
    if isinstance(blob, (str, bytes, bytearray)):
        blob = json.loads(blob)
    ref_ctx = blob.get("context") or {}
    if not isinstance(ref_ctx, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in ref_ctx.items()):
        raise ContextError("the envelope's context must map strings to strings (AWS EncryptionContext)")
    if context is None:
        context = dict(ref_ctx)
    pairs = _context_pairs(context)
    canonical = _serialise(pairs)
    names = sorted(_utf8(k, "key") for k in ref_ctx)
    provider_pairs = _provider_pairs(pairs, names)
    if _aws_context(provider_pairs) != ref_ctx:
        raise ContextError("the kms_pg context must give every key of the envelope's context the "
                           "same value (as text) as the envelope does")
    wrapped = base64.b64decode(blob["encrypted_dek"], validate=True)
    raw = base64.b64decode(blob["ciphertext"], validate=True)
    if len(raw) < NONCE_LEN + TAG_LEN:
        raise FormatError("the envelope's ciphertext is shorter than a nonce and a tag")
    args = {"CiphertextBlob": wrapped}
    if ref_ctx:
        args["EncryptionContext"] = ref_ctx
    resp = kms_client.decrypt(**args)
    dek, key_arn = resp["Plaintext"], resp["KeyId"]
    try:
        plaintext = AESGCM(dek).decrypt(raw[:NONCE_LEN], raw[NONCE_LEN:], None)
    except InvalidTag:
        raise AuthenticationError("the envelope's ciphertext does not authenticate under its "
                                  "data key: it was altered; not imported") from None
    header = _build_header(PROVIDER_AWS, key_arn, names, wrapped)
    return _seal(dek, header, canonical, plaintext, used_nonce=raw[:NONCE_LEN])
