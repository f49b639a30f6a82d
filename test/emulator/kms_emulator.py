#!/usr/bin/python3
"""An honest AWS KMS emulator for the kms_pg test suite.

Speaks the AWS KMS JSON 1.1 protocol (POST / with X-Amz-Target:
TrentService.<Op>), verifies every request's SigV4 signature by recomputing
it with botocore's own signer, and additionally serves:

  * a small AWS STS query API (AssumeRoleWithWebIdentity, GetCallerIdentity),
  * an EC2 IMDSv2 credential endpoint (/latest/...),
  * an ECS/EKS container credential endpoint (/container-credentials...),
  * an unsigned test-control API under /__emulator/ (counters, faults, keys).

Only the Python standard library, botocore and cryptography are used; run it
with Debian's /usr/bin/python3.  See test/emulator/README.md.
"""

import argparse
import base64
import binascii
import calendar
import datetime
import email.utils
import hashlib
import hmac
import http.server
import json
import os
import random
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from xml.sax.saxutils import escape as xml_escape

from botocore.auth import SigV4Auth, SIGV4_TIMESTAMP
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

JSON_CT = "application/x-amz-json-1.1"
MAX_SKEW_SECONDS = 300
BLOB_VERSION = 0x01
BLOB_SALT_LEN = 48
BLOB_NONCE_LEN = 12
BLOB_FP_LEN = 32

KMS_OPS = [
    "CancelKeyDeletion", "CreateAlias", "CreateKey", "Decrypt", "DeleteAlias",
    "DescribeKey", "DisableKey", "DisableKeyRotation", "EnableKey",
    "EnableKeyRotation", "Encrypt", "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext", "GenerateRandom",
    "GetKeyRotationStatus", "ListAliases", "ListKeyRotations", "ListKeys",
    "ReEncrypt", "RotateKeyOnDemand", "ScheduleKeyDeletion", "TagResource",
    "UpdateAlias", "UpdateKeyDescription",
]
META_COUNTERS = [
    "total", "auth_failures", "client_errors", "throttled", "errors_5xx",
    "dropped", "stalled", "connections", "imds_token", "imds_credentials",
    "container_credentials", "sts_web_identity", "sts_total",
    "sts_assume_role", "sso_get_role_credentials",
    "credential_faults",
]
ENCRYPTION_ALGORITHMS = [
    "SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE",
]

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MRK_RE = re.compile(r"^mrk-[0-9a-f]{32}$")
ALIAS_RE = re.compile(r"^alias/[a-zA-Z0-9/_-]+$")
KEY_ARN_RE = re.compile(r"^arn:(aws[a-z-]*):kms:([a-z0-9-]+):(\d{12}):key/(.+)$")
ALIAS_ARN_RE = re.compile(r"^arn:(aws[a-z-]*):kms:([a-z0-9-]+):(\d{12}):(alias/.+)$")
AUTH_RE = re.compile(r"^(\S+)\s+(.*)$", re.S)


def now():
    return time.time()


def iso8601(ts):
    return datetime.datetime.fromtimestamp(int(ts), datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def amz_ts(ts):
    return datetime.datetime.fromtimestamp(int(ts), datetime.timezone.utc).strftime(
        SIGV4_TIMESTAMP)


class KMSError(Exception):
    """An error answered in AWS JSON form: {"__type": ..., "message": ...}."""

    def __init__(self, error_type, message=None, status=400):
        super().__init__(error_type)
        self.error_type = error_type
        self.message = message
        self.status = status


class STSError(Exception):
    def __init__(self, code, message, status=400, kind="Sender"):
        super().__init__(code)
        self.code = code
        self.message = message
        self.status = status
        self.kind = kind


class DropConnection(Exception):
    pass


def validation(msg):
    return KMSError("ValidationException", msg)


# ---------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------

class CredentialStore:
    def __init__(self, minted_ttl):
        self.lock = threading.Lock()
        # akid -> dict(secret, token, expires (epoch or None), source)
        self.creds = {}
        self.minted_ttl = minted_ttl

    def add_static(self, akid, secret, token=None):
        with self.lock:
            self.creds[akid] = {"secret": secret, "token": token or None,
                                "expires": None, "source": "static", "principal": akid}

    def mint(self, source, ttl=None, principal=None):
        ttl = self.minted_ttl if ttl is None else ttl
        akid = "ASIA" + "".join(random.SystemRandom().choice(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
        secret = base64.b64encode(os.urandom(30)).decode()
        token = "IQoJb3JpZ2luX2VtdWxhdG9y" + base64.b64encode(os.urandom(96)).decode()
        expires = now() + ttl
        with self.lock:
            self.creds[akid] = {"secret": secret, "token": token,
                                "expires": expires, "source": source,
                                "principal": principal or source}
        return {"AccessKeyId": akid, "SecretAccessKey": secret,
                "Token": token, "Expiration": iso8601(expires),
                "_expires": expires}

    def get(self, akid):
        with self.lock:
            c = self.creds.get(akid)
            return dict(c) if c else None

    def expire_minted(self):
        n = 0
        with self.lock:
            for c in self.creds.values():
                if c["source"] != "static":
                    c["expires"] = now() - 1
                    n += 1
        return n


class _VerifyingSigV4(SigV4Auth):
    """botocore's SigV4 signer, restricted to exactly the headers the client
    declared in SignedHeaders (botocore would otherwise pick all headers of
    the request minus a small blacklist)."""

    def __init__(self, credentials, service_name, region_name, signed_names):
        super().__init__(credentials, service_name, region_name)
        self._signed_names = signed_names

    def headers_to_sign(self, request):
        header_map = HTTPHeaders()
        for name in self._signed_names:
            for value in request.headers.get_all(name) or []:
                header_map[name] = value
        return header_map


def _parse_amz_timestamp(headers):
    """Return (timestamp 'YYYYMMDDTHHMMSSZ', epoch, header-name-used)."""
    xdate = headers.get("X-Amz-Date")
    if xdate is not None:
        try:
            dt = datetime.datetime.strptime(xdate.strip(), SIGV4_TIMESTAMP)
        except ValueError:
            raise KMSError("IncompleteSignatureException",
                           "Date must be in ISO-8601 'basic format'. Got '%s'. See "
                           "http://en.wikipedia.org/wiki/ISO_8601" % xdate)
        return xdate.strip(), calendar.timegm(dt.timetuple()), "x-amz-date"
    date = headers.get("Date")
    if date is not None:
        try:
            epoch = email.utils.mktime_tz(email.utils.parsedate_tz(date))
        except Exception:
            raise KMSError("IncompleteSignatureException",
                           "Date must be in ISO-8601 'basic format' or RFC 1123.")
        return amz_ts(epoch), epoch, "date"
    raise KMSError("IncompleteSignatureException",
                   "Authorization header requires existence of either a "
                   "'X-Amz-Date' or a 'Date' header.")


def verify_sigv4(handler, body, service, region, store, accept_regions=None):
    """Verify the SigV4 Authorization of the current request.

    Returns the credential record (dict with 'akid').  Raises KMSError in
    the same categories as AWS does.
    """
    headers = handler.headers
    auth = headers.get("Authorization")
    if not auth:
        raise KMSError("MissingAuthenticationTokenException", "Missing Authentication Token")
    m = AUTH_RE.match(auth.strip())
    if not m:
        raise KMSError("IncompleteSignatureException",
                       "Authorization header requires 'Credential' parameter. "
                       "Authorization header requires 'Signature' parameter. "
                       "Authorization header requires 'SignedHeaders' parameter.")
    algorithm, rest = m.group(1), m.group(2)
    if algorithm != "AWS4-HMAC-SHA256":
        raise KMSError("IncompleteSignatureException",
                       "Unsupported AWS 'algorithm': '%s'" % algorithm)
    params = {}
    for part in rest.split(","):
        part = part.strip()
        if not part:
            continue
        k, eq, v = part.partition("=")
        if not eq:
            raise KMSError("IncompleteSignatureException",
                           "'%s' not a valid key=value pair (missing equal-sign) "
                           "in Authorization header: '%s'." % (part, auth))
        params[k.strip()] = v.strip()
    missing = [p for p in ("Credential", "SignedHeaders", "Signature") if p not in params]
    if missing:
        raise KMSError("IncompleteSignatureException",
                       " ".join("Authorization header requires '%s' parameter." % p
                                for p in missing))
    scope = params["Credential"].split("/")
    if len(scope) != 5:
        raise KMSError("IncompleteSignatureException",
                       "Credential must have exactly 5 slash-delimited elements, "
                       "e.g. keyid/date/region/service/term, got '%s'" % params["Credential"])
    akid, sdate, sregion, sservice, sterm = scope
    cred = store.get(akid)
    if cred is None:
        raise KMSError("UnrecognizedClientException",
                       "The security token included in the request is invalid.")
    token_hdr = headers.get("X-Amz-Security-Token")
    if cred["token"] is not None or token_hdr is not None:
        if token_hdr is None or cred["token"] is None or \
                not hmac.compare_digest(token_hdr.strip().encode(), cred["token"].encode()):
            raise KMSError("UnrecognizedClientException",
                           "The security token included in the request is invalid.")
    if cred["expires"] is not None and now() >= cred["expires"]:
        raise KMSError("ExpiredTokenException",
                       "The security token included in the request is expired")
    if sterm != "aws4_request":
        raise KMSError("InvalidSignatureException",
                       "Credential should be scoped with a valid terminator: "
                       "'aws4_request', not '%s'. " % sterm)
    regions = accept_regions or [region]
    if sregion not in regions:
        raise KMSError("InvalidSignatureException",
                       "Credential should be scoped to a valid region. ")
    if sservice != service:
        raise KMSError("InvalidSignatureException",
                       "Credential should be scoped to correct service: '%s'. " % service)
    signed_names = [n.strip().lower() for n in params["SignedHeaders"].split(";") if n.strip()]
    if "host" not in signed_names:
        raise KMSError("InvalidSignatureException",
                       "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    timestamp, epoch, date_hdr = _parse_amz_timestamp(headers)
    if date_hdr not in signed_names:
        raise KMSError("InvalidSignatureException",
                       "'%s' must be a 'SignedHeader' in the AWS Authorization."
                       % ("X-Amz-Date" if date_hdr == "x-amz-date" else "Date"))
    if sdate != timestamp[:8]:
        raise KMSError("InvalidSignatureException",
                       "Date in Credential scope does not match YYYYMMDD from ISO-8601 "
                       "version of date from HTTP: '%s' != '%s', from '%s'."
                       % (sdate, timestamp[:8], timestamp))
    t_now = now()
    if epoch < t_now - MAX_SKEW_SECONDS:
        raise KMSError("InvalidSignatureException",
                       "Signature expired: %s is now earlier than %s (%s - 5 min.)"
                       % (timestamp, amz_ts(t_now - MAX_SKEW_SECONDS), amz_ts(t_now)))
    if epoch > t_now + MAX_SKEW_SECONDS:
        raise KMSError("InvalidSignatureException",
                       "Signature not yet current: %s is still later than %s (%s + 5 min.)"
                       % (timestamp, amz_ts(t_now + MAX_SKEW_SECONDS), amz_ts(t_now)))
    for name in signed_names:
        if headers.get_all(name) is None:
            raise KMSError("InvalidSignatureException",
                           "The request signature we calculated does not match the "
                           "signature you provided. Check your AWS Secret Access Key "
                           "and signing method. Consult the service documentation for details.")
    content_sha = headers.get("X-Amz-Content-SHA256")
    if content_sha is not None and content_sha.strip() != hashlib.sha256(body).hexdigest():
        raise KMSError("InvalidSignatureException",
                       "The provided 'x-amz-content-sha256' header does not match what was computed.")

    # Rebuild the request exactly as received and let botocore compute the
    # canonical request / string to sign / signature.
    scheme = "https" if handler.server.tls else "http"
    url = "%s://%s%s" % (scheme, headers.get("Host", ""), handler.path)
    req_headers = HTTPHeaders()
    for name, value in headers.items():
        if name.lower() in signed_names:
            req_headers[name.lower()] = value
    request = AWSRequest(method=handler.command, url=url, data=body)
    request.headers = req_headers
    request.context["timestamp"] = timestamp
    signer = _VerifyingSigV4(Credentials(akid, cred["secret"], cred["token"]),
                             sservice, sregion, signed_names)
    canonical = signer.canonical_request(request)
    sts = signer.string_to_sign(request, canonical)
    expected = signer.signature(sts, request)
    if not hmac.compare_digest(expected.encode(), params["Signature"].encode()):
        raise KMSError("InvalidSignatureException",
                       "The request signature we calculated does not match the signature "
                       "you provided. Check your AWS Secret Access Key and signing method. "
                       "Consult the service documentation for details.")
    cred["akid"] = akid
    return cred


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------

class Key:
    def __init__(self, key_id, description="", multi_region=False, created=None):
        self.key_id = key_id
        self.description = description
        self.multi_region = multi_region
        self.created = created if created is not None else round(now(), 3)
        self.state = "Enabled"       # Enabled | Disabled | PendingDeletion
        self.state_before_deletion = None
        self.deletion_date = None
        self.pending_window = None
        self.materials = []          # list of 32-byte keys; index = version
        self.rotation_enabled = False
        self.rotation_period = 365
        self.rotations = []          # [(epoch, "AUTOMATIC"|"ON_DEMAND")]
        self.tags = []

    def to_state(self):
        return {
            "key_id": self.key_id, "description": self.description,
            "multi_region": self.multi_region, "created": self.created,
            "state": self.state, "deletion_date": self.deletion_date,
            "pending_window": self.pending_window,
            "materials": [m.hex() for m in self.materials],
            "rotation_enabled": self.rotation_enabled,
            "rotation_period": self.rotation_period,
            "rotations": self.rotations, "tags": self.tags,
        }

    @classmethod
    def from_state(cls, d):
        k = cls(d["key_id"], d.get("description", ""), d.get("multi_region", False),
                d.get("created"))
        k.state = d.get("state", "Enabled")
        k.deletion_date = d.get("deletion_date")
        k.pending_window = d.get("pending_window")
        k.materials = [bytes.fromhex(m) for m in d.get("materials", [])]
        k.rotation_enabled = d.get("rotation_enabled", False)
        k.rotation_period = d.get("rotation_period", 365)
        k.rotations = [tuple(r) for r in d.get("rotations", [])]
        k.tags = d.get("tags", [])
        return k


class KeyStore:
    def __init__(self, region, account, mrk_seed, mrk_primary_region, state_file, partition="aws"):
        self.region = region
        self.account = account
        self.partition = partition
        self.mrk_seed = mrk_seed
        self.mrk_primary_region = mrk_primary_region or region
        self.state_file = state_file
        self.lock = threading.RLock()
        self.keys = {}        # key_id -> Key
        self.aliases = {}     # alias name -> {"target", "created", "updated"}
        if state_file and os.path.exists(state_file):
            self._load()

    # -- persistence --------------------------------------------------------
    def _load(self):
        with open(self.state_file) as f:
            d = json.load(f)
        for kd in d.get("keys", []):
            k = Key.from_state(kd)
            self.keys[k.key_id] = k
        self.aliases = d.get("aliases", {})

    def save(self):
        if not self.state_file:
            return
        d = {"keys": [k.to_state() for k in self.keys.values()], "aliases": self.aliases}
        dirname = os.path.dirname(os.path.abspath(self.state_file))
        fd, tmp = tempfile.mkstemp(dir=dirname, prefix=".kms-emulator-state-")
        with os.fdopen(fd, "w") as f:
            json.dump(d, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.state_file)

    # -- naming -------------------------------------------------------------
    def key_arn(self, key_id):
        return "arn:%s:kms:%s:%s:key/%s" % (self.partition, self.region, self.account, key_id)

    def alias_arn(self, alias):
        return "arn:%s:kms:%s:%s:%s" % (self.partition, self.region, self.account, alias)

    def _material(self, key, version):
        if key.multi_region:
            return hmac.new(self.mrk_seed, ("mrk-material:%s:%d" % (key.key_id, version)).encode(),
                            hashlib.sha256).digest()
        return os.urandom(32)

    def add_material(self, key):
        key.materials.append(self._material(key, len(key.materials)))

    def create_key(self, description="", multi_region=False, key_id=None):
        with self.lock:
            if key_id is None:
                key_id = ("mrk-" + uuid.uuid4().hex) if multi_region else str(uuid.uuid4())
            if key_id in self.keys:
                return self.keys[key_id]
            k = Key(key_id, description, multi_region)
            self.add_material(k)
            self.keys[key_id] = k
            self.save()
            return k

    def set_alias(self, alias, key_id, create_only=False):
        with self.lock:
            t = round(now(), 3)
            if alias in self.aliases:
                if create_only:
                    raise KMSError("AlreadyExistsException",
                                   "An alias with the name %s already exists" % self.alias_arn(alias))
                self.aliases[alias]["target"] = key_id
                self.aliases[alias]["updated"] = t
            else:
                self.aliases[alias] = {"target": key_id, "created": t, "updated": t}
            self.save()

    def aliases_of(self, key_id):
        return sorted(a for a, v in self.aliases.items() if v["target"] == key_id)

    # -- resolution ---------------------------------------------------------
    def resolve(self, ident, allow_alias=True, field="keyId"):
        """Resolve key id / key ARN / alias name / alias ARN to a Key."""
        if ident is None:
            raise validation("1 validation error detected: Value null at '%s' failed to "
                             "satisfy constraint: Member must not be null" % field)
        if not isinstance(ident, str):
            raise KMSError("SerializationException", "Expected a string for %s" % field)
        if len(ident) < 1 or len(ident) > 2048:
            raise validation("1 validation error detected: Value '%s' at '%s' failed to satisfy "
                             "constraint: Member must have length between 1 and 2048"
                             % (ident, field))
        with self.lock:
            m = KEY_ARN_RE.match(ident)
            if m:
                part, region, account, key_id = m.groups()
                if region != self.region or account != self.account or part != self.partition:
                    raise KMSError("NotFoundException", "Key '%s' does not exist" % ident)
                k = self.keys.get(key_id)
                if k is None:
                    raise KMSError("NotFoundException", "Key '%s' does not exist" % ident)
                return k
            alias = None
            m = ALIAS_ARN_RE.match(ident)
            if m:
                part, region, account, alias = m.groups()
                if region != self.region or account != self.account or part != self.partition:
                    raise KMSError("NotFoundException", "Alias %s is not found." % ident)
            elif ident.startswith("alias/"):
                alias = ident
            if alias is not None:
                if not allow_alias:
                    raise validation("Alias names cannot be used as TargetKeyId / in this "
                                     "parameter: %s" % ident)
                a = self.aliases.get(alias)
                if a is None:
                    raise KMSError("NotFoundException", "Alias %s is not found." % self.alias_arn(alias))
                return self.keys[a["target"]]
            if not (UUID_RE.match(ident) or MRK_RE.match(ident)):
                raise KMSError("NotFoundException", "Invalid keyId '%s'" % ident)
            k = self.keys.get(ident)
            if k is None:
                raise KMSError("NotFoundException",
                               "Key '%s' does not exist" % self.key_arn(ident))
            return k

    def require_usable(self, k):
        if k.state == "Disabled":
            raise KMSError("DisabledException", "%s is disabled." % self.key_arn(k.key_id))
        if k.state == "PendingDeletion":
            raise KMSError("KMSInvalidStateException",
                           "%s is pending deletion." % self.key_arn(k.key_id))

    def require_not_pending(self, k):
        if k.state == "PendingDeletion":
            raise KMSError("KMSInvalidStateException",
                           "%s is pending deletion." % self.key_arn(k.key_id))

    def set_state(self, k, state, window=30):
        with self.lock:
            if state == "PendingDeletion":
                if k.state != "PendingDeletion":
                    k.state_before_deletion = k.state
                k.state = "PendingDeletion"
                k.pending_window = window
                k.deletion_date = round(now() + window * 86400, 3)
            elif state in ("Enabled", "Disabled"):
                k.state = state
                k.deletion_date = None
                k.pending_window = None
            else:
                raise validation("unknown key state %r" % state)
            self.save()

    def metadata(self, k):
        md = {
            "AWSAccountId": self.account,
            "KeyId": k.key_id,
            "Arn": self.key_arn(k.key_id),
            "CreationDate": k.created,
            "Enabled": k.state == "Enabled",
            "Description": k.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": k.state,
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "MultiRegion": k.multi_region,
        }
        if k.state == "PendingDeletion":
            md["DeletionDate"] = k.deletion_date
            md["PendingDeletionWindowInDays"] = k.pending_window
        if k.multi_region:
            primary = self.mrk_primary_region
            md["MultiRegionConfiguration"] = {
                "MultiRegionKeyType": "PRIMARY" if primary == self.region else "REPLICA",
                "PrimaryKey": {"Arn": "arn:%s:kms:%s:%s:key/%s" % (
                    self.partition, primary, self.account, k.key_id), "Region": primary},
                "ReplicaKeys": [],
            }
        return md

    # -- ciphertext blobs -----------------------------------------------------
    # Emulator-internal format (not AWS's):
    #   version(1) | flags(1) | key_id_len(1) | key_id | material_version(u32 BE)
    #   | material_fingerprint(32) | salt(48) | nonce(12) | AES-256-GCM(ct||tag)
    # The per-message key is HKDF-SHA256(material, salt, info=header-prefix);
    # AAD = header (everything before the ciphertext) || canonical JSON of
    # the encryption context (sorted keys, compact separators, UTF-8).
    @staticmethod
    def _fingerprint(material):
        return hmac.new(material, b"kms-emulator-fingerprint", hashlib.sha256).digest()

    @staticmethod
    def _context_aad(ctx):
        return json.dumps(ctx or {}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")

    @staticmethod
    def _derive(material, salt, info):
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(material)

    def seal(self, k, plaintext, ctx):
        version = len(k.materials) - 1
        material = k.materials[version]
        kid = k.key_id.encode()
        prefix = bytes([BLOB_VERSION, 0, len(kid)]) + kid + version.to_bytes(4, "big")
        salt = os.urandom(BLOB_SALT_LEN)
        nonce = os.urandom(BLOB_NONCE_LEN)
        header = prefix + self._fingerprint(material) + salt + nonce
        dk = self._derive(material, salt, prefix)
        ct = AESGCM(dk).encrypt(nonce, plaintext, header + self._context_aad(ctx))
        return header + ct

    def parse_blob(self, blob):
        """Return (Key, version, header, ct) or raise InvalidCiphertextException."""
        bad = KMSError("InvalidCiphertextException", None)
        try:
            if len(blob) < 3 or blob[0] != BLOB_VERSION or blob[1] != 0:
                raise bad
            n = blob[2]
            pos = 3 + n
            kid = blob[3:pos].decode("ascii")
            version = int.from_bytes(blob[pos:pos + 4], "big")
            pos += 4
            hdr_end = pos + BLOB_FP_LEN + BLOB_SALT_LEN + BLOB_NONCE_LEN
            if len(blob) < hdr_end + 16:
                raise bad
        except (UnicodeDecodeError, IndexError):
            raise bad
        with self.lock:
            k = self.keys.get(kid)
        if k is None or version >= len(k.materials):
            raise bad
        return k, version, blob[:hdr_end], blob[hdr_end:], pos

    def open(self, k, version, header, ct, prefix_len, ctx):
        material = k.materials[version]
        fp = header[prefix_len:prefix_len + BLOB_FP_LEN]
        salt = header[prefix_len + BLOB_FP_LEN:prefix_len + BLOB_FP_LEN + BLOB_SALT_LEN]
        nonce = header[-BLOB_NONCE_LEN:]
        if not hmac.compare_digest(fp, self._fingerprint(material)):
            raise KMSError("InvalidCiphertextException", None)
        dk = self._derive(material, salt, header[:prefix_len])
        try:
            return AESGCM(dk).decrypt(nonce, ct, header + self._context_aad(ctx))
        except Exception:
            raise KMSError("InvalidCiphertextException", None)


# ---------------------------------------------------------------------------
# KMS operations
# ---------------------------------------------------------------------------

def _b64_in(req, field, api_field, min_len=1, max_len=None, required=True):
    v = req.get(field)
    if v is None:
        if required:
            raise validation("1 validation error detected: Value null at '%s' failed to "
                             "satisfy constraint: Member must not be null" % api_field)
        return None
    if not isinstance(v, str):
        raise KMSError("SerializationException", "Expected base64 string for %s" % field)
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise KMSError("SerializationException",
                       "Could not decode base64 value for %s" % field)
    if len(raw) < min_len or (max_len is not None and len(raw) > max_len):
        raise validation("1 validation error detected: Value at '%s' failed to satisfy "
                         "constraint: Member must have length between %d and %d"
                         % (api_field, min_len, max_len or 6144))
    return raw


def _b64_out(b):
    return base64.b64encode(b).decode("ascii")


def _context(req, field="EncryptionContext"):
    ctx = req.get(field)
    if ctx is None:
        return {}
    if not isinstance(ctx, dict):
        raise KMSError("SerializationException",
                       "Start of structure or map found where not expected.")
    for k, v in ctx.items():
        if not isinstance(v, str):
            raise KMSError("SerializationException",
                           "Unexpected value type in payload for %s" % field)
        if len(k) < 1:
            raise validation("EncryptionContext contains invalid key")
    return ctx


def _grant_tokens(req):
    gt = req.get("GrantTokens")
    if gt is None:
        return
    if not isinstance(gt, list) or not all(isinstance(x, str) for x in gt):
        raise KMSError("SerializationException", "GrantTokens must be a list of strings")
    if len(gt) > 10:
        raise validation("1 validation error detected: Value at 'grantTokens' failed to "
                         "satisfy constraint: Member must have length less than or equal to 10")


def _algorithm(req, field="EncryptionAlgorithm"):
    alg = req.get(field)
    if alg is None:
        return "SYMMETRIC_DEFAULT"
    if alg not in ENCRYPTION_ALGORITHMS:
        raise validation("1 validation error detected: Value '%s' at '%s' failed to satisfy "
                         "constraint: Member must satisfy enum value set: [%s]"
                         % (alg, field[0].lower() + field[1:], ", ".join(ENCRYPTION_ALGORITHMS)))
    if alg != "SYMMETRIC_DEFAULT":
        raise KMSError("InvalidKeyUsageException",
                       "The key does not support the %s encryption algorithm." % alg)
    return alg


def _dry_run(req):
    if req.get("DryRun") is True:
        raise KMSError("DryRunOperationException",
                       "The request would have succeeded, but the DryRun option is set.",
                       status=412)


class KMSService:
    def __init__(self, store):
        self.ks = store

    def dispatch(self, op, req):
        fn = getattr(self, "op_" + op, None)
        if fn is None or op not in KMS_OPS:
            raise KMSError("UnknownOperationException", None)
        return fn(req)

    # -- key management -------------------------------------------------------
    def op_CreateKey(self, req):
        usage = req.get("KeyUsage", "ENCRYPT_DECRYPT")
        spec = req.get("KeySpec", req.get("CustomerMasterKeySpec", "SYMMETRIC_DEFAULT"))
        origin = req.get("Origin", "AWS_KMS")
        if usage not in ("ENCRYPT_DECRYPT", "SIGN_VERIFY", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT"):
            raise validation("1 validation error detected: Value '%s' at 'keyUsage' failed to "
                             "satisfy constraint: Member must satisfy enum value set: "
                             "[ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC, KEY_AGREEMENT]" % usage)
        if usage != "ENCRYPT_DECRYPT" or spec != "SYMMETRIC_DEFAULT" or origin != "AWS_KMS":
            raise KMSError("UnsupportedOperationException",
                           "This emulator supports only SYMMETRIC_DEFAULT ENCRYPT_DECRYPT "
                           "keys with origin AWS_KMS.")
        desc = req.get("Description", "")
        if not isinstance(desc, str) or len(desc) > 8192:
            raise validation("1 validation error detected: Value at 'description' failed to "
                             "satisfy constraint: Member must have length less than or equal to 8192")
        mr = req.get("MultiRegion", False)
        if not isinstance(mr, bool):
            raise KMSError("SerializationException", "MultiRegion must be a boolean")
        k = self.ks.create_key(desc, mr)
        if isinstance(req.get("Tags"), list):
            k.tags = req["Tags"]
        return {"KeyMetadata": self.ks.metadata(k)}

    def op_DescribeKey(self, req):
        _grant_tokens(req)
        k = self.ks.resolve(req.get("KeyId"))
        return {"KeyMetadata": self.ks.metadata(k)}

    def op_ListKeys(self, req):
        with self.ks.lock:
            keys = sorted(self.ks.keys.values(), key=lambda k: (k.created, k.key_id))
            items = [{"KeyId": k.key_id, "KeyArn": self.ks.key_arn(k.key_id)} for k in keys]
        return self._paginate(req, items, "Keys")

    @staticmethod
    def _paginate(req, items, name):
        limit = req.get("Limit", 100)
        if not isinstance(limit, int) or limit < 1 or limit > 1000:
            raise validation("1 validation error detected: Value '%s' at 'limit' failed to "
                             "satisfy constraint: Member must have value between 1 and 1000" % limit)
        start = 0
        marker = req.get("Marker")
        if marker is not None:
            try:
                start = int(base64.b64decode(marker).decode())
            except Exception:
                raise KMSError("InvalidMarkerException", "Invalid marker")
        page = items[start:start + limit]
        out = {name: page, "Truncated": start + limit < len(items)}
        if out["Truncated"]:
            out["NextMarker"] = base64.b64encode(str(start + limit).encode()).decode()
        return out

    def _check_alias_name(self, name, field="aliasName"):
        if name is None:
            raise validation("1 validation error detected: Value null at '%s' failed to "
                             "satisfy constraint: Member must not be null" % field)
        if not isinstance(name, str) or not ALIAS_RE.match(name) or len(name) > 256:
            raise validation("1 validation error detected: Value '%s' at '%s' failed to "
                             "satisfy constraint: Member must satisfy regular expression "
                             "pattern: ^[a-zA-Z0-9:/_-]+$" % (name, field))
        if name.startswith("alias/aws/"):
            raise KMSError("NotAuthorizedException",
                           "Cannot create alias with prefix 'alias/aws/'")

    def op_CreateAlias(self, req):
        name = req.get("AliasName")
        self._check_alias_name(name)
        k = self.ks.resolve(req.get("TargetKeyId"), allow_alias=False, field="targetKeyId")
        self.ks.require_not_pending(k)
        self.ks.set_alias(name, k.key_id, create_only=True)
        return None

    def op_UpdateAlias(self, req):
        name = req.get("AliasName")
        self._check_alias_name(name)
        k = self.ks.resolve(req.get("TargetKeyId"), allow_alias=False, field="targetKeyId")
        self.ks.require_not_pending(k)
        with self.ks.lock:
            if name not in self.ks.aliases:
                raise KMSError("NotFoundException", "Alias %s is not found." % self.ks.alias_arn(name))
            self.ks.set_alias(name, k.key_id)
        return None

    def op_DeleteAlias(self, req):
        name = req.get("AliasName")
        self._check_alias_name(name)
        with self.ks.lock:
            if name not in self.ks.aliases:
                raise KMSError("NotFoundException", "Alias %s is not found." % self.ks.alias_arn(name))
            del self.ks.aliases[name]
            self.ks.save()
        return None

    def op_ListAliases(self, req):
        target = None
        if req.get("KeyId") is not None:
            target = self.ks.resolve(req.get("KeyId"), allow_alias=False).key_id
        with self.ks.lock:
            items = []
            for name in sorted(self.ks.aliases):
                a = self.ks.aliases[name]
                if target is not None and a["target"] != target:
                    continue
                items.append({"AliasName": name, "AliasArn": self.ks.alias_arn(name),
                              "TargetKeyId": a["target"], "CreationDate": a["created"],
                              "LastUpdatedDate": a["updated"]})
        return self._paginate(req, items, "Aliases")

    def op_UpdateKeyDescription(self, req):
        k = self.ks.resolve(req.get("KeyId"), allow_alias=False)
        desc = req.get("Description")
        if not isinstance(desc, str):
            raise validation("1 validation error detected: Value null at 'description' failed "
                             "to satisfy constraint: Member must not be null")
        self.ks.require_not_pending(k)
        k.description = desc
        self.ks.save()
        return None

    def op_TagResource(self, req):
        k = self.ks.resolve(req.get("KeyId"), allow_alias=False)
        self.ks.require_not_pending(k)
        if isinstance(req.get("Tags"), list):
            k.tags.extend(req["Tags"])
        return None

    def op_EnableKey(self, req):
        k = self.ks.resolve(req.get("KeyId"), allow_alias=False)
        self.ks.require_not_pending(k)
        self.ks.set_state(k, "Enabled")
        return None

    def op_DisableKey(self, req):
        k = self.ks.resolve(req.get("KeyId"), allow_alias=False)
        self.ks.require_not_pending(k)
        self.ks.set_state(k, "Disabled")
        return None

    def op_ScheduleKeyDeletion(self, req):
        k = self.ks.resolve(req.get("KeyId"), allow_alias=False)
        window = req.get("PendingWindowInDays", 30)
        if not isinstance(window, int) or isinstance(window, bool) or not 7 <= window <= 30:
            raise validation("1 validation error detected: Value '%s' at 'pendingWindowInDays' "
                             "failed to satisfy constraint: Member must have value less than "
                             "or equal to 30 and greater than or equal to 7" % window)
        self.ks.require_not_pending(k)
        self.ks.set_state(k, "PendingDeletion", window)
        return {"KeyId": self.ks.key_arn(k.key_id), "DeletionDate": k.deletion_date,
                "KeyState": "PendingDeletion", "PendingWindowInDays": window}

    def op_CancelKeyDeletion(self, req):
        k = self.ks.resolve(req.get("KeyId"), allow_alias=False)
        if k.state != "PendingDeletion":
            raise KMSError("KMSInvalidStateException",
                           "%s is not pending deletion." % self.ks.key_arn(k.key_id))
        self.ks.set_state(k, "Disabled")   # AWS: a cancelled key is Disabled
        return {"KeyId": self.ks.key_arn(k.key_id)}

    def _rotation_check(self, k):
        self.ks.require_usable(k)

    def op_EnableKeyRotation(self, req):
        k = self.ks.resolve(req.get("KeyId"), allow_alias=False)
        period = req.get("RotationPeriodInDays", 365)
        if not isinstance(period, int) or isinstance(period, bool) or not 90 <= period <= 2560:
            raise validation("1 validation error detected: Value '%s' at 'rotationPeriodInDays' "
                             "failed to satisfy constraint: Member must have value less than "
                             "or equal to 2560 and greater than or equal to 90" % period)
        self._rotation_check(k)
        k.rotation_enabled = True
        k.rotation_period = period
        self.ks.save()
        return None

    def op_DisableKeyRotation(self, req):
        k = self.ks.resolve(req.get("KeyId"), allow_alias=False)
        self._rotation_check(k)
        k.rotation_enabled = False
        self.ks.save()
        return None

    def op_GetKeyRotationStatus(self, req):
        k = self.ks.resolve(req.get("KeyId"), allow_alias=False)
        self.ks.require_not_pending(k)
        out = {"KeyId": self.ks.key_arn(k.key_id), "KeyRotationEnabled": k.rotation_enabled}
        if k.rotation_enabled:
            out["RotationPeriodInDays"] = k.rotation_period
            last = k.rotations[-1][0] if k.rotations else k.created
            out["NextRotationDate"] = round(max(last, now()) + k.rotation_period * 86400, 3)
        return out

    def op_RotateKeyOnDemand(self, req):
        k = self.ks.resolve(req.get("KeyId"), allow_alias=False)
        self.ks.require_usable(k)
        with self.ks.lock:
            self.ks.add_material(k)
            k.rotations.append((round(now(), 3), "ON_DEMAND"))
            self.ks.save()
        return {"KeyId": self.ks.key_arn(k.key_id)}

    def op_ListKeyRotations(self, req):
        k = self.ks.resolve(req.get("KeyId"), allow_alias=False)
        self.ks.require_not_pending(k)
        items = [{"KeyId": self.ks.key_arn(k.key_id), "RotationDate": t, "RotationType": typ}
                 for t, typ in k.rotations]
        return self._paginate(req, items, "Rotations")

    # -- cryptographic operations ---------------------------------------------
    def _data_key_len(self, req):
        spec = req.get("KeySpec")
        nbytes = req.get("NumberOfBytes")
        if (spec is None) == (nbytes is None):
            raise validation("Please specify either number of bytes or key spec.")
        if spec is not None:
            if spec not in ("AES_256", "AES_128"):
                raise validation("1 validation error detected: Value '%s' at 'keySpec' failed "
                                 "to satisfy constraint: Member must satisfy enum value set: "
                                 "[AES_256, AES_128]" % spec)
            return 32 if spec == "AES_256" else 16
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or not 1 <= nbytes <= 1024:
            raise validation("1 validation error detected: Value '%s' at 'numberOfBytes' failed "
                             "to satisfy constraint: Member must have value less than or equal "
                             "to 1024 and greater than or equal to 1" % nbytes)
        return nbytes

    def op_GenerateDataKey(self, req, with_plaintext=True):
        n = self._data_key_len(req)
        ctx = _context(req)
        _grant_tokens(req)
        if req.get("Recipient") is not None:
            raise KMSError("UnsupportedOperationException", "Recipient is not supported by the emulator")
        k = self.ks.resolve(req.get("KeyId"))
        self.ks.require_usable(k)
        _dry_run(req)
        pt = os.urandom(n)
        blob = self.ks.seal(k, pt, ctx)
        out = {"CiphertextBlob": _b64_out(blob), "KeyId": self.ks.key_arn(k.key_id)}
        if with_plaintext:
            out["Plaintext"] = _b64_out(pt)
            # KeyMaterialId is newer API surface; omitted deliberately.
        return out

    def op_GenerateDataKeyWithoutPlaintext(self, req):
        return self.op_GenerateDataKey(req, with_plaintext=False)

    def op_Encrypt(self, req):
        pt = _b64_in(req, "Plaintext", "plaintext", 1, 4096)
        ctx = _context(req)
        _grant_tokens(req)
        alg = _algorithm(req)
        k = self.ks.resolve(req.get("KeyId"))
        self.ks.require_usable(k)
        _dry_run(req)
        blob = self.ks.seal(k, pt, ctx)
        return {"CiphertextBlob": _b64_out(blob), "KeyId": self.ks.key_arn(k.key_id),
                "EncryptionAlgorithm": alg}

    def _open(self, blob, ctx, key_id_param, field="keyId"):
        requested = None
        if key_id_param is not None:
            requested = self.ks.resolve(key_id_param, field=field)
        k, version, header, ct, plen = self.ks.parse_blob(blob)
        if requested is not None and requested.key_id != k.key_id:
            raise KMSError("IncorrectKeyException",
                           "The key ID in the request does not identify a CMK that can "
                           "perform this operation.")
        self.ks.require_usable(k)
        return k, self.ks.open(k, version, header, ct, plen, ctx)

    def op_Decrypt(self, req):
        blob = _b64_in(req, "CiphertextBlob", "ciphertextBlob", 1, 6144)
        ctx = _context(req)
        _grant_tokens(req)
        alg = _algorithm(req)
        if req.get("Recipient") is not None:
            raise KMSError("UnsupportedOperationException", "Recipient is not supported by the emulator")
        k, pt = self._open(blob, ctx, req.get("KeyId"))
        _dry_run(req)
        return {"KeyId": self.ks.key_arn(k.key_id), "Plaintext": _b64_out(pt),
                "EncryptionAlgorithm": alg}

    def op_ReEncrypt(self, req):
        blob = _b64_in(req, "CiphertextBlob", "ciphertextBlob", 1, 6144)
        sctx = _context(req, "SourceEncryptionContext")
        dctx = _context(req, "DestinationEncryptionContext")
        _grant_tokens(req)
        salg = _algorithm(req, "SourceEncryptionAlgorithm")
        dalg = _algorithm(req, "DestinationEncryptionAlgorithm")
        dest = self.ks.resolve(req.get("DestinationKeyId"), field="destinationKeyId")
        src, pt = self._open(blob, sctx, req.get("SourceKeyId"), field="sourceKeyId")
        self.ks.require_usable(dest)
        _dry_run(req)
        new_blob = self.ks.seal(dest, pt, dctx)
        return {"CiphertextBlob": _b64_out(new_blob),
                "SourceKeyId": self.ks.key_arn(src.key_id),
                "KeyId": self.ks.key_arn(dest.key_id),
                "SourceEncryptionAlgorithm": salg,
                "DestinationEncryptionAlgorithm": dalg}

    def op_GenerateRandom(self, req):
        n = req.get("NumberOfBytes")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1024:
            raise validation("1 validation error detected: Value '%s' at 'numberOfBytes' failed "
                             "to satisfy constraint: Member must have value less than or equal "
                             "to 1024 and greater than or equal to 1" % n)
        return {"Plaintext": _b64_out(os.urandom(n))}


# ---------------------------------------------------------------------------
# Faults and counters
# ---------------------------------------------------------------------------

class Faults:
    FIELDS = {"latency_ms": 0, "throttle_rate": 0.0, "error_5xx_count": 0,
              "error_5xx_status": 500, "drop_count": 0, "stall_ms": 0,
              "stall_count": None, "seed": None, "ops": None,
              "credential_error_count": 0}

    def __init__(self):
        self.lock = threading.Lock()
        self.cfg = dict(self.FIELDS)
        self.rng = random.Random()

    def reset(self):
        with self.lock:
            self.cfg = dict(self.FIELDS)
            self.rng = random.Random()

    def update(self, d):
        if not isinstance(d, dict):
            raise ValueError("faults body must be a JSON object")
        for k, v in d.items():
            if k not in self.FIELDS:
                raise ValueError("unknown fault field %r" % k)
            if k == "ops":
                if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                    raise ValueError("ops must be a list of operation names or null")
            elif k == "throttle_rate":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                    raise ValueError("throttle_rate must be a number in [0, 1]")
            elif k == "error_5xx_status":
                if v not in (500, 502, 503, 504):
                    raise ValueError("error_5xx_status must be 500, 502, 503 or 504")
            elif k in ("stall_count", "seed"):
                if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                    raise ValueError("%s must be an integer or null" % k)
            elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError("%s must be a non-negative integer" % k)
        with self.lock:
            for k, v in d.items():
                self.cfg[k] = v
            if "seed" in d and d["seed"] is not None:
                self.rng = random.Random(d["seed"])
            if "stall_ms" in d and "stall_count" not in d:
                self.cfg["stall_count"] = None
            return self.snapshot()

    def snapshot(self):
        return {k: v for k, v in self.cfg.items()}

    def decide(self, op):
        """Return a list of actions for this KMS call, consuming counts."""
        with self.lock:
            c = self.cfg
            if c["ops"] and op not in c["ops"]:
                return {}
            act = {"latency_ms": c["latency_ms"] or 0}
            if c["drop_count"] and c["drop_count"] > 0:
                c["drop_count"] -= 1
                act["drop"] = True
                return act
            if c["error_5xx_count"] and c["error_5xx_count"] > 0:
                c["error_5xx_count"] -= 1
                act["error_5xx"] = int(c["error_5xx_status"] or 500)
                return act
            if c["stall_ms"]:
                if c["stall_count"] is None:
                    act["stall_ms"] = c["stall_ms"]
                elif c["stall_count"] > 0:
                    c["stall_count"] -= 1
                    act["stall_ms"] = c["stall_ms"]
            if c["throttle_rate"] and self.rng.random() < float(c["throttle_rate"]):
                act["throttle"] = True
            return act

    def take_credential_fault(self):
        with self.lock:
            if self.cfg["credential_error_count"] and self.cfg["credential_error_count"] > 0:
                self.cfg["credential_error_count"] -= 1
                return True
            return False


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.c = {k: 0 for k in KMS_OPS + META_COUNTERS}

    def inc(self, name, n=1):
        with self.lock:
            self.c[name] = self.c.get(name, 0) + n

    def snapshot(self):
        with self.lock:
            return dict(self.c)


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------

class EmulatorServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr, handler, args):
        self.args = args
        self.tls = None
        super().__init__(addr, handler)
        if args.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self.tls = ctx
        self.creds = CredentialStore(args.minted_ttl_seconds)
        self.creds.add_static(args.access_key, args.secret_key, args.session_token)
        for spec in args.cred or []:
            parts = spec.split(":", 2)
            if len(parts) < 2:
                raise SystemExit("--cred must be AKID:SECRET[:TOKEN]")
            self.creds.add_static(parts[0], parts[1], parts[2] if len(parts) > 2 else None)
        mrk_seed = bytes.fromhex(args.mrk_seed) if args.mrk_seed else \
            hashlib.sha256(("kms-emulator-mrk:" + args.account).encode()).digest()
        self.keys = KeyStore(args.region, args.account, mrk_seed, args.mrk_primary_region,
                             args.state_file)
        self.kms = KMSService(self.keys)
        self.faults = Faults()
        self.counters = Counters()
        self.imds_tokens = {}   # token -> expiry
        self.imds_lock = threading.Lock()
        self.recent = []        # ring buffer of recent request summaries
        self.recent_lock = threading.Lock()
        self.conn_seq = 0
        for spec in args.seed_mrk or []:
            kid, _, alias = spec.partition("=")
            if not MRK_RE.match(kid):
                raise SystemExit("--seed-mrk needs mrk-<32 hex>[=alias/name], got %r" % spec)
            self.keys.create_key("seeded multi-Region key", True, key_id=kid)
            if alias:
                self.keys.set_alias(alias, kid)
        for alias in args.seed_alias or []:
            if not ALIAS_RE.match(alias):
                raise SystemExit("--seed-alias needs alias/name, got %r" % alias)
            if alias not in self.keys.aliases:
                k = self.keys.create_key("seeded key for %s" % alias)
                self.keys.set_alias(alias, k.key_id)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, socket.timeout, OSError)):
            if not self.args.quiet:
                sys.stderr.write("kms-emulator: connection from %s: %s\n"
                                 % (client_address[0], exc.__class__.__name__))
            return
        super().handle_error(request, client_address)

    def remember(self, summary):
        with self.recent_lock:
            self.recent.append(summary)
            del self.recent[:-200]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kms-emulator/1.0"
    sys_version = ""
    timeout = 120

    def version_string(self):
        return self.server_version

    # -- plumbing -------------------------------------------------------------
    def setup(self):
        srv = self.server
        with srv.recent_lock:
            srv.conn_seq += 1
            self.conn_id = srv.conn_seq
        srv.counters.inc("connections")
        # headers and body go out in separate writes: without TCP_NODELAY,
        # Nagle plus delayed ACK add ~40 ms to every keep-alive request
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if srv.tls is not None:
            self.request.settimeout(30)
            self.request = srv.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            if self.server.tls is not None:
                try:
                    self.request.close()
                except OSError:
                    pass

    def log_message(self, fmt, *args):
        if not self.server.args.quiet:
            sys.stderr.write("kms-emulator: %s %s\n" % (self.address_string(), fmt % args))

    def log_request(self, code="-", size="-"):
        if self.server.args.quiet:
            return
        op = getattr(self, "_op", None) or ""
        sys.stderr.write("kms-emulator: %s conn=%d %s %s %s %s\n" % (
            self.address_string(), self.conn_id, self.command,
            self.path.split("?")[0], op, code))

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        if n > 1 << 20:
            raise ValueError("body too large")
        return self.rfile.read(n) if n else b""

    def _send(self, status, body, ctype, extra=None):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        self.send_header("x-amzn-RequestId", self._rid)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _send_json(self, status, obj, ctype="application/json"):
        body = b"" if obj is None else json.dumps(obj).encode()
        self._send(status, body, ctype)

    def _kms_error(self, e):
        body = {"__type": e.error_type}
        if e.message is not None:
            body["message"] = e.message
        self._send_json(e.status, body, JSON_CT)

    def _drop(self):
        self.close_connection = True
        try:
            self.wfile.flush()
        except Exception:
            pass
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except Exception:
            pass

    # -- HTTP verbs -----------------------------------------------------------
    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self):
        self._rid = str(uuid.uuid4())
        self._op = None
        try:
            body = self._read_body()
        except Exception:
            self.close_connection = True
            self._send_json(400, {"__type": "SerializationException",
                                  "message": "Could not read request body"}, JSON_CT)
            return
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path.startswith("/__emulator/"):
                self._control(path, body)
            elif path.startswith("/latest/"):
                self._imds(path)
            elif path.startswith("/container-credentials"):
                self._container(path)
            elif path == "/federation/credentials":
                self._sso(self.path)
            elif self.headers.get("X-Amz-Target") is not None and self.command == "POST":
                self._kms(body)
            elif self._is_sts(path, body):
                self._sts(body)
            elif self.command == "POST":
                # Looks like a KMS call without a target.
                self._op = "?"
                self.server.counters.inc("total")
                self._kms_error(KMSError("UnknownOperationException", None))
            else:
                self._send_json(404, {"__type": "NotFound", "message": "no such path"})
        except DropConnection:
            self._drop()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- KMS ------------------------------------------------------------------
    def _kms(self, body):
        srv = self.server
        srv.counters.inc("total")
        target = self.headers.get("X-Amz-Target", "")
        svc, _, op = target.partition(".")
        self._op = op
        summary = {"conn": self.conn_id, "op": op, "time": round(now(), 3),
                   "user_agent": self.headers.get("User-Agent"),
                   "content_type": self.headers.get("Content-Type")}
        authed = injected = False
        try:
            try:
                cred = verify_sigv4(self, body, "kms", srv.args.region, srv.creds)
            except KMSError:
                srv.counters.inc("auth_failures")
                raise
            authed = True
            summary["access_key_id"] = cred["akid"]
            summary["signed_headers"] = sorted(
                re.search(r"SignedHeaders=([^,\s]+)", self.headers["Authorization"]).group(1).split(";"))
            if svc != "TrentService" or op not in KMS_OPS:
                raise KMSError("UnknownOperationException", None)
            srv.counters.inc(op)
            act = srv.faults.decide(op)
            if act.get("latency_ms"):
                time.sleep(act["latency_ms"] / 1000.0)
            if act.get("drop"):
                srv.counters.inc("dropped")
                summary["status"] = "dropped"
                raise DropConnection()
            if act.get("error_5xx"):
                injected = True
                srv.counters.inc("errors_5xx")
                if act["error_5xx"] == 503:
                    raise KMSError("ServiceUnavailableException", "Service Unavailable", 503)
                raise KMSError("KMSInternalException",
                               "The request processing has failed because of an unknown "
                               "error, exception or failure.", act["error_5xx"])
            if act.get("stall_ms"):
                srv.counters.inc("stalled")
                time.sleep(act["stall_ms"] / 1000.0)
            if act.get("throttle"):
                injected = True
                srv.counters.inc("throttled")
                raise KMSError("ThrottlingException", "Rate exceeded")
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype not in ("application/x-amz-json-1.1", "application/x-amz-json-1.0"):
                raise KMSError("UnknownOperationException", None)
            try:
                req = json.loads(body.decode("utf-8")) if body.strip() else {}
            except (ValueError, UnicodeDecodeError):
                raise KMSError("SerializationException", "Malformed JSON body")
            if not isinstance(req, dict):
                raise KMSError("SerializationException", "Request body must be a JSON object")
            result = srv.kms.dispatch(op, req)
            summary["status"] = 200
            self._send_json(200, result, JSON_CT)
        except KMSError as e:
            summary["status"] = e.error_type
            if authed and not injected:
                srv.counters.inc("client_errors")
            self._kms_error(e)
        finally:
            srv.remember(summary)

    # -- STS ------------------------------------------------------------------
    def _is_sts(self, path, body):
        if path != "/":
            return False
        ctype = (self.headers.get("Content-Type") or "").lower()
        if self.command == "POST" and ctype.startswith("application/x-www-form-urlencoded"):
            return True
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        return self.command == "GET" and "Action" in q

    def _sts_error(self, e):
        xml = ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
               "<Error><Type>%s</Type><Code>%s</Code><Message>%s</Message></Error>"
               "<RequestId>%s</RequestId></ErrorResponse>"
               % (e.kind, xml_escape(e.code), xml_escape(e.message), self._rid))
        self._send(e.status, xml, "text/xml")

    def _sts(self, body):
        srv = self.server
        srv.counters.inc("sts_total")
        query = urllib.parse.urlsplit(self.path).query
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
        if self.command == "POST":
            params.update({k: v[-1] for k, v in urllib.parse.parse_qs(
                body.decode("utf-8", "replace"), keep_blank_values=True).items()})
        action = params.get("Action")
        self._op = "sts:%s" % action
        try:
            if action == "AssumeRoleWithWebIdentity":
                self._sts_web_identity(params)
            elif action == "AssumeRole":
                self._sts_assume_role(body, params)
            elif action == "GetCallerIdentity":
                try:
                    cred = verify_sigv4(self, body, "sts", srv.args.region, srv.creds,
                                        accept_regions=[srv.args.region, "us-east-1"])
                except KMSError as e:
                    srv.counters.inc("auth_failures")
                    code = e.error_type.replace("Exception", "")
                    if code == "UnrecognizedClient":
                        code = "InvalidClientTokenId"
                    raise STSError(code, e.message or code, 403)
                xml = ('<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                       "<GetCallerIdentityResult><Arn>arn:aws:sts::%s:assumed-role/kms-pg-test/emulator</Arn>"
                       "<UserId>%s:emulator</UserId><Account>%s</Account></GetCallerIdentityResult>"
                       "<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>"
                       "</GetCallerIdentityResponse>"
                       % (srv.args.account, cred["akid"], srv.args.account, self._rid))
                self._send(200, xml, "text/xml")
            else:
                raise STSError("InvalidAction", "Could not find operation %s for version %s"
                               % (action, params.get("Version", "NO_VERSION_SPECIFIED")))
        except STSError as e:
            self._sts_error(e)

    def _sts_web_identity(self, params):
        srv = self.server
        srv.counters.inc("sts_web_identity")
        if params.get("Version") != "2011-06-15":
            raise STSError("InvalidAction", "Could not find operation AssumeRoleWithWebIdentity "
                           "for version %s" % params.get("Version", "NO_VERSION_SPECIFIED"))
        for p in ("RoleArn", "RoleSessionName", "WebIdentityToken"):
            if not params.get(p):
                raise STSError("ValidationError",
                               "1 validation error detected: Value null at '%s%s' failed to "
                               "satisfy constraint: Member must not be null" % (p[0].lower(), p[1:]))
        if not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$", params["RoleArn"]):
            raise STSError("ValidationError", "%s is invalid" % params["RoleArn"])
        if not re.match(r"^[\w+=,.@-]{2,64}$", params["RoleSessionName"]):
            raise STSError("ValidationError",
                           "1 validation error detected: Value '%s' at 'roleSessionName' failed "
                           "to satisfy constraint: Member must satisfy regular expression "
                           "pattern: [\\w+=,.@-]*" % params["RoleSessionName"])
        if srv.faults.take_credential_fault():
            srv.counters.inc("credential_faults")
            raise STSError("ServiceUnavailable", "Service unavailable (injected)", 503, "Receiver")
        expected = srv.args.web_identity_token
        if not expected or not hmac.compare_digest(params["WebIdentityToken"].strip().encode(),
                                                   expected.encode()):
            raise STSError("InvalidIdentityToken", "The web identity token that was passed "
                           "could not be validated by AWS. Get a new identity token from the "
                           "identity provider and then retry the request.")
        ttl = srv.args.minted_ttl_seconds
        if params.get("DurationSeconds"):
            try:
                ttl = min(ttl, int(params["DurationSeconds"]))
            except ValueError:
                raise STSError("ValidationError", "DurationSeconds must be an integer")
        c = srv.creds.mint("sts_web_identity", ttl)
        role_name = params["RoleArn"].split("/")[-1]
        account = params["RoleArn"].split(":")[4]
        sess = params["RoleSessionName"]
        xml = ('<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
               "<AssumeRoleWithWebIdentityResult>"
               "<Audience>sts.amazonaws.com</Audience>"
               "<SubjectFromWebIdentityToken>system:serviceaccount:default:kms-pg</SubjectFromWebIdentityToken>"
               "<AssumedRoleUser><Arn>arn:aws:sts::%s:assumed-role/%s/%s</Arn>"
               "<AssumedRoleId>AROAEMULATOR000000000:%s</AssumedRoleId></AssumedRoleUser>"
               "<Credentials><SessionToken>%s</SessionToken><SecretAccessKey>%s</SecretAccessKey>"
               "<Expiration>%s</Expiration><AccessKeyId>%s</AccessKeyId></Credentials>"
               "<Provider>emulator-oidc</Provider>"
               "</AssumeRoleWithWebIdentityResult>"
               "<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>"
               "</AssumeRoleWithWebIdentityResponse>"
               % (account, xml_escape(role_name), xml_escape(sess), xml_escape(sess),
                  xml_escape(c["Token"]), xml_escape(c["SecretAccessKey"]), c["Expiration"],
                  c["AccessKeyId"], self._rid))
        self._send(200, xml, "text/xml")

    def _sts_assume_role(self, body, params):
        """AssumeRole: SigV4 verified with the caller's credentials; the
        caller's principal (a static access key id, or the role ARN /
        source of minted credentials) must be trusted by the role
        (--role ARN=PRINCIPAL+PRINCIPAL...); ExternalId checked when the
        role requires one (--role-external-id ARN=ID)."""
        srv = self.server
        srv.counters.inc("sts_assume_role")
        try:
            cred = verify_sigv4(self, body, "sts", srv.args.region, srv.creds,
                                accept_regions=[srv.args.region, "us-east-1"])
        except KMSError as e:
            srv.counters.inc("auth_failures")
            code = e.error_type.replace("Exception", "")
            if code == "UnrecognizedClient":
                code = "InvalidClientTokenId"
            raise STSError(code, e.message or code, 403)
        if params.get("Version") != "2011-06-15":
            raise STSError("InvalidAction", "Could not find operation AssumeRole for version %s"
                           % params.get("Version", "NO_VERSION_SPECIFIED"))
        for p in ("RoleArn", "RoleSessionName"):
            if not params.get(p):
                raise STSError("ValidationError",
                               "1 validation error detected: Value null at '%s%s' failed to "
                               "satisfy constraint: Member must not be null" % (p[0].lower(), p[1:]))
        if not re.match(r"^[\w+=,.@-]{2,64}$", params["RoleSessionName"]):
            raise STSError("ValidationError", "1 validation error detected: Value '%s' at "
                           "'roleSessionName' failed to satisfy constraint" % params["RoleSessionName"])
        if srv.faults.take_credential_fault():
            srv.counters.inc("credential_faults")
            raise STSError("ServiceUnavailable", "Service unavailable (injected)", 503, "Receiver")
        role = params["RoleArn"]
        trust = {}
        for spec in srv.args.role or []:
            arn, _, principals = spec.partition("=")
            trust[arn] = principals.split("+")
        caller = cred.get("principal") or cred["akid"]
        if role not in trust or caller not in trust[role]:
            raise STSError("AccessDenied", "User: %s is not authorized to perform: sts:AssumeRole "
                           "on resource: %s" % (caller, role), 403)
        want_ext = dict(x.split("=", 1) for x in (srv.args.role_external_id or []))
        if role in want_ext and params.get("ExternalId") != want_ext[role]:
            raise STSError("AccessDenied", "User: %s is not authorized to perform: sts:AssumeRole "
                           "on resource: %s (external id)" % (caller, role), 403)
        ttl = srv.args.minted_ttl_seconds
        if params.get("DurationSeconds"):
            try:
                d = int(params["DurationSeconds"])
            except ValueError:
                raise STSError("ValidationError", "DurationSeconds must be an integer")
            if not 900 <= d <= 43200:
                raise STSError("ValidationError", "1 validation error detected: Value '%d' at "
                               "'durationSeconds' failed to satisfy constraint: Member must have "
                               "value greater than or equal to 900" % d)
            ttl = min(ttl, d)
        c = srv.creds.mint("sts_assume_role", ttl, principal=role)
        sess = params["RoleSessionName"]
        account = role.split(":")[4]
        srv.remember({"op": "sts:AssumeRole", "time": round(now(), 3), "role": role,
                      "caller": caller, "session": sess,
                      "external_id": params.get("ExternalId"),
                      "duration": params.get("DurationSeconds"),
                      "access_key_id": cred["akid"]})
        xml = ('<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
               "<AssumeRoleResult><AssumedRoleUser>"
               "<Arn>arn:aws:sts::%s:assumed-role/%s/%s</Arn>"
               "<AssumedRoleId>AROAEMULATOR000000001:%s</AssumedRoleId></AssumedRoleUser>"
               "<Credentials><AccessKeyId>%s</AccessKeyId><SecretAccessKey>%s</SecretAccessKey>"
               "<SessionToken>%s</SessionToken><Expiration>%s</Expiration></Credentials>"
               "</AssumeRoleResult>"
               "<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>"
               "</AssumeRoleResponse>"
               % (account, xml_escape(role.split("/")[-1]), xml_escape(sess), xml_escape(sess),
                  c["AccessKeyId"], xml_escape(c["SecretAccessKey"]), xml_escape(c["Token"]),
                  c["Expiration"], self._rid))
        self._send(200, xml, "text/xml")

    # -- IAM Identity Center (SSO) portal --------------------------------------
    def _sso(self, raw_path):
        srv = self.server
        self._op = "sso:GetRoleCredentials"
        srv.counters.inc("sso_get_role_credentials")
        if self.command != "GET":
            return self._send_json(405, {"message": "GET only"})
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(raw_path).query)
        tok = self.headers.get("x-amz-sso_bearer_token")
        want = srv.args.sso_token
        if not want or tok is None or not hmac.compare_digest(tok.encode(), want.encode()):
            return self._send_json(401, {"__type": "UnauthorizedException",
                                         "message": "Session token not found or invalid"})
        role = "%s/%s" % ((q.get("account_id") or [""])[0], (q.get("role_name") or [""])[0])
        if role not in (srv.args.sso_role or []):
            return self._send_json(403, {"__type": "ForbiddenException",
                                         "message": "No access"})
        if srv.faults.take_credential_fault():
            srv.counters.inc("credential_faults")
            return self._send_json(500, {"message": "injected"})
        c = srv.creds.mint("sso", principal="sso:" + role)
        return self._send_json(200, {"roleCredentials": {
            "accessKeyId": c["AccessKeyId"], "secretAccessKey": c["SecretAccessKey"],
            "sessionToken": c["Token"], "expiration": int(c["_expires"] * 1000)}})

    # -- IMDSv2 ---------------------------------------------------------------
    def _imds_text(self, status, text):
        self._send(status, text, "text/plain")

    def _imds(self, path):
        srv = self.server
        self._op = "imds"
        if self.headers.get("X-Forwarded-For") is not None:
            return self._imds_text(403, "Forbidden")
        if path == "/latest/api/token":
            if self.command != "PUT":
                return self._imds_text(405, "Method Not Allowed")
            srv.counters.inc("imds_token")
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            try:
                ttl = int(ttl)
            except (TypeError, ValueError):
                return self._imds_text(400, "Bad Request")
            if not 1 <= ttl <= 21600:
                return self._imds_text(400, "Bad Request")
            token = base64.urlsafe_b64encode(os.urandom(42)).decode()
            with srv.imds_lock:
                srv.imds_tokens[token] = now() + ttl
            return self._send(200, token, "text/plain",
                              {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})
        if self.command != "GET":
            return self._imds_text(405, "Method Not Allowed")
        token = self.headers.get("X-aws-ec2-metadata-token")
        with srv.imds_lock:
            exp = srv.imds_tokens.get(token) if token else None
        if exp is None or exp < now():
            return self._imds_text(401, "Unauthorized")
        role = srv.args.imds_role
        prefix = "/latest/meta-data/iam/security-credentials/"
        if path == prefix:
            return self._imds_text(200, role)
        if path.startswith(prefix):
            if path[len(prefix):].rstrip("/") != role:
                return self._imds_text(404, "Not Found")
            srv.counters.inc("imds_credentials")
            if srv.faults.take_credential_fault():
                srv.counters.inc("credential_faults")
                return self._imds_text(500, "Internal Server Error")
            c = srv.creds.mint("imds")
            doc = {"Code": "Success", "LastUpdated": iso8601(now()), "Type": "AWS-HMAC",
                   "AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
                   "Token": c["Token"], "Expiration": c["Expiration"]}
            return self._send(200, json.dumps(doc, indent=2), "text/plain")
        if path == "/latest/meta-data/placement/region":
            return self._imds_text(200, srv.args.region)
        if path == "/latest/dynamic/instance-identity/document":
            doc = {"accountId": srv.args.account, "region": srv.args.region,
                   "instanceId": "i-0123456789abcdef0", "architecture": "x86_64",
                   "availabilityZone": srv.args.region + "a"}
            return self._send(200, json.dumps(doc, indent=2), "text/plain")
        return self._imds_text(404, "Not Found")

    # -- container credentials ------------------------------------------------
    def _container(self, path):
        srv = self.server
        self._op = "container"
        if self.command != "GET":
            return self._send_json(405, {"code": "MethodNotAllowed", "message": "GET only"})
        want = srv.args.container_auth_token
        got = self.headers.get("Authorization")
        if want is not None and (got is None or not hmac.compare_digest(got.strip().encode(),
                                                                       want.encode())):
            return self._send_json(401, {"code": "AccessDenied",
                                         "message": "Unable to authenticate the request"})
        srv.counters.inc("container_credentials")
        if srv.faults.take_credential_fault():
            srv.counters.inc("credential_faults")
            return self._send_json(500, {"code": "InternalError", "message": "injected"})
        c = srv.creds.mint("container")
        doc = {"AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
               "Token": c["Token"], "Expiration": c["Expiration"],
               "RoleArn": "arn:aws:iam::%s:role/%s" % (srv.args.account, srv.args.imds_role)}
        return self._send_json(200, doc)

    # -- test control API -----------------------------------------------------
    def _control(self, path, body):
        srv = self.server
        self._op = "control"
        try:
            data = json.loads(body.decode()) if body.strip() else {}
        except ValueError:
            return self._send_json(400, {"error": "invalid JSON body"})
        m, p = self.command, path.rstrip("/")
        try:
            if p == "/__emulator/health" and m == "GET":
                return self._send(200, "ok", "text/plain")
            if p == "/__emulator/counters" and m == "GET":
                return self._send_json(200, srv.counters.snapshot())
            if p == "/__emulator/counters/reset" and m == "POST":
                srv.counters.reset()
                return self._send_json(200, {"ok": True})
            if p == "/__emulator/faults" and m == "GET":
                return self._send_json(200, srv.faults.snapshot())
            if p == "/__emulator/faults" and m == "POST":
                return self._send_json(200, srv.faults.update(data))
            if p == "/__emulator/faults/reset" and m == "POST":
                srv.faults.reset()
                return self._send_json(200, {"ok": True})
            if p == "/__emulator/keys" and m == "GET":
                return self._send_json(200, self._keys_listing())
            if p == "/__emulator/keys/state" and m == "POST":
                k = srv.keys.resolve(data.get("key"))
                state = data.get("state")
                if state not in ("Enabled", "Disabled", "PendingDeletion"):
                    return self._send_json(400, {"error": "state must be Enabled|Disabled|PendingDeletion"})
                srv.keys.set_state(k, state, int(data.get("pending_window_days", 30)))
                return self._send_json(200, {"ok": True, "key": k.key_id, "state": k.state})
            if p == "/__emulator/keys/create" and m == "POST":
                alias = data.get("alias")
                if alias is not None and (not isinstance(alias, str) or not ALIAS_RE.match(alias)):
                    return self._send_json(400, {"error": "alias must look like alias/name"})
                if alias is not None and alias in srv.keys.aliases:
                    return self._send_json(409, {"error": "alias exists"})
                k = srv.keys.create_key(data.get("description", ""),
                                        bool(data.get("multi_region", False)),
                                        key_id=data.get("key_id"))
                if alias:
                    srv.keys.set_alias(alias, k.key_id)
                return self._send_json(200, {"ok": True, "key": k.key_id,
                                             "arn": srv.keys.key_arn(k.key_id)})
            if p == "/__emulator/keys/rotate" and m == "POST":
                k = srv.keys.resolve(data.get("key"))
                with srv.keys.lock:
                    srv.keys.add_material(k)
                    k.rotations.append((round(now(), 3), "ON_DEMAND"))
                    srv.keys.save()
                return self._send_json(200, {"ok": True, "key": k.key_id,
                                             "material_versions": len(k.materials)})
            if p == "/__emulator/credentials/minted" and m == "GET":
                # for secret scans of the client's logs: every minted credential
                with srv.creds.lock:
                    return self._send_json(200, [
                        {"access_key_id": k, "secret": c["secret"], "token": c["token"],
                         "source": c["source"], "principal": c.get("principal")}
                        for k, c in srv.creds.creds.items() if c["source"] != "static"])
            if p == "/__emulator/credentials/expire" and m == "POST":
                return self._send_json(200, {"ok": True, "expired": srv.creds.expire_minted()})
            if p == "/__emulator/requests" and m == "GET":
                with srv.recent_lock:
                    return self._send_json(200, list(srv.recent))
            if p == "/__emulator/requests/reset" and m == "POST":
                with srv.recent_lock:
                    srv.recent.clear()
                return self._send_json(200, {"ok": True})
        except KMSError as e:
            return self._send_json(404 if e.error_type == "NotFoundException" else 400,
                                   {"error": e.error_type, "message": e.message})
        except (ValueError, TypeError) as e:
            return self._send_json(400, {"error": str(e)})
        return self._send_json(404, {"error": "unknown control endpoint %s %s" % (m, p)})

    def _keys_listing(self):
        srv = self.server
        out = []
        with srv.keys.lock:
            for k in sorted(srv.keys.keys.values(), key=lambda k: (k.created, k.key_id)):
                out.append({"KeyId": k.key_id, "Arn": srv.keys.key_arn(k.key_id),
                            "Aliases": srv.keys.aliases_of(k.key_id), "KeyState": k.state,
                            "MultiRegion": k.multi_region,
                            "MaterialVersions": len(k.materials),
                            "RotationEnabled": k.rotation_enabled,
                            "Description": k.description})
        return out


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="AWS KMS emulator for kms_pg tests")
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = pick a free one)")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--account", default="111122223333")
    p.add_argument("--access-key", default="AKIDEMULATOR")
    p.add_argument("--secret-key", default="emulator-secret")
    p.add_argument("--session-token")
    p.add_argument("--cred", action="append", metavar="AKID:SECRET[:TOKEN]",
                   help="additional accepted static credentials (repeatable)")
    p.add_argument("--seed-alias", action="append", metavar="alias/NAME",
                   help="create a symmetric key with this alias at startup (repeatable)")
    p.add_argument("--seed-mrk", action="append", metavar="mrk-<32hex>[=alias/NAME]",
                   help="create this multi-Region key (material derived from --mrk-seed)")
    p.add_argument("--mrk-seed", help="hex seed for multi-Region key material "
                   "(default: derived from --account)")
    p.add_argument("--mrk-primary-region", help="primary region of multi-Region keys "
                   "(default: --region)")
    p.add_argument("--state-file", help="persist keys/aliases/material to this JSON file")
    p.add_argument("--minted-ttl-seconds", type=int, default=3600)
    p.add_argument("--web-identity-token", help="the only WebIdentityToken STS accepts")
    p.add_argument("--container-auth-token",
                   help="required Authorization header value for /container-credentials")
    p.add_argument("--imds-role", default="kms-pg-test-role")
    p.add_argument("--role", action="append", metavar="ROLE_ARN=PRINCIPAL[+PRINCIPAL...]",
                   help="a role STS AssumeRole may assume, and who may assume it: static "
                   "access key ids, role ARNs (chains) or minted sources (imds, container, "
                   "sts_web_identity, sso:ACCOUNT/ROLE)")
    p.add_argument("--role-external-id", action="append", metavar="ROLE_ARN=ID")
    p.add_argument("--sso-token", help="the only SSO access token GetRoleCredentials accepts")
    p.add_argument("--sso-role", action="append", metavar="ACCOUNT/ROLE",
                   help="an SSO role GetRoleCredentials hands out")
    p.add_argument("--die-with-parent", action="store_true",
                   help="exit when the parent process goes away")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")
    return a


def main(argv=None):
    args = parse_args(argv)
    server = EmulatorServer((args.bind, args.port), Handler, args)
    port = server.server_address[1]
    if args.port_file:
        d = os.path.dirname(os.path.abspath(args.port_file))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".port-")
        with os.fdopen(fd, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    if not args.quiet:
        sys.stderr.write("kms-emulator: listening on %s://%s:%d region=%s\n"
                         % ("https" if server.tls else "http", args.bind, port, args.region))

    def _term(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    if args.die_with_parent:
        parent = os.getppid()

        def watch():
            while True:
                time.sleep(0.5)
                if os.getppid() != parent:
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
        threading.Thread(target=watch, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
