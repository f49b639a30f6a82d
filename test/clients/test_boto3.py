#!/usr/bin/python3
"""Prove the KMS emulator against a real AWS client (boto3/botocore).

Run with Debian's interpreter:  /usr/bin/python3 test/clients/test_boto3.py
Prints a final line "N passed, M failed" and exits non-zero on failure.
"""

import datetime
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from unittest import mock

import boto3
import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, SSLError, EndpointConnectionError

HERE = os.path.dirname(os.path.abspath(__file__))
EMU_DIR = os.path.join(os.path.dirname(HERE), "emulator")
EMULATOR = os.path.join(EMU_DIR, "kms_emulator.py")
EMUCTL = os.path.join(EMU_DIR, "emuctl.py")
MAKE_CERTS = os.path.join(EMU_DIR, "make_certs.sh")
PY = "/usr/bin/python3"

AKID, SECRET = "AKIDTESTPRIMARY", "primary-secret-key"
AKID2, SECRET2, TOKEN2 = "ASIATESTSESSION", "session-secret", "session-token-value"
REGION, ACCOUNT = "us-east-1", "111122223333"
WEB_TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ0ZXN0In0."
CONTAINER_TOKEN = "container-auth-token-123"

TMP = None
CERTS = None
# botocore 1.29's legacy retry mode treats max_attempts as *retries*; use the
# total-attempt form so that exactly one HTTP request is made per call.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                  connect_timeout=5, read_timeout=10)


def setUpModule():
    global TMP, CERTS
    TMP = tempfile.mkdtemp(prefix="kms-emu-test-")
    CERTS = os.path.join(TMP, "certs")
    subprocess.run(["sh", MAKE_CERTS, CERTS], check=True, stderr=subprocess.DEVNULL)


def tearDownModule():
    Emulator.stop_all()
    if TMP:
        shutil.rmtree(TMP, ignore_errors=True)


class Emulator:
    """Runs kms_emulator.py as a child process on a free port."""
    running = []

    def __init__(self, tls="server", region=REGION, extra=()):
        self.tls = tls
        self.region = region
        fd, self.port_file = tempfile.mkstemp(dir=TMP, prefix="port-")
        os.close(fd)
        os.unlink(self.port_file)
        cmd = [PY, EMULATOR, "--port", "0", "--bind", "127.0.0.1", "--port-file", self.port_file,
               "--region", region, "--account", ACCOUNT, "--access-key", AKID,
               "--secret-key", SECRET, "--cred", "%s:%s:%s" % (AKID2, SECRET2, TOKEN2),
               "--web-identity-token", WEB_TOKEN, "--container-auth-token", CONTAINER_TOKEN,
               "--die-with-parent", "--quiet"]
        if tls:
            cmd += ["--tls-cert", os.path.join(CERTS, tls + ".pem"),
                    "--tls-key", os.path.join(CERTS, tls + ".key")]
        cmd += list(extra)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        Emulator.running.append(self)
        deadline = time.time() + 15
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None:
                raise RuntimeError("emulator died: %s" % self.proc.stderr.read().decode())
            if time.time() > deadline:
                self.stop()
                raise RuntimeError("emulator did not start")
            time.sleep(0.05)
        with open(self.port_file) as f:
            self.port = int(f.read())
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.port)

    @property
    def cafile(self):
        return os.path.join(CERTS, "ca.pem")

    def client(self, akid=AKID, secret=SECRET, token=None, region=None, config=NO_RETRY):
        return boto3.client("kms", endpoint_url=self.url, region_name=region or self.region,
                            aws_access_key_id=akid, aws_secret_access_key=secret,
                            aws_session_token=token,
                            verify=self.cafile if self.tls else None, config=config)

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.cafile) if self.tls else None

    def control(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.url + "/__emulator/" + path, data=data, method=method)
        with urllib.request.urlopen(req, context=self.ssl_context(), timeout=10) as r:
            raw = r.read().decode()
        return json.loads(raw) if path != "health" else raw

    def raw(self, method, path, body=b"", headers=None):
        if self.tls:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ssl_context(),
                                               timeout=10)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        if self in Emulator.running:
            Emulator.running.remove(self)

    @classmethod
    def stop_all(cls):
        for e in list(cls.running):
            e.stop()


def err_code(exc):
    return exc.response["Error"]["Code"]


def signed_raw_request(emu, target, payload, akid=AKID, secret=SECRET, token=None,
                       region=REGION, tamper=None):
    """Sign a KMS request with botocore and send it over http.client."""
    body = json.dumps(payload).encode()
    host = "127.0.0.1:%d" % emu.port
    req = AWSRequest(method="POST", url=emu.url + "/", data=body,
                     headers={"Host": host, "Content-Type": "application/x-amz-json-1.1",
                              "X-Amz-Target": "TrentService." + target})
    SigV4Auth(Credentials(akid, secret, token), "kms", region).add_auth(req)
    headers = dict(req.headers.items())
    if tamper:
        body, headers = tamper(body, headers)
    status, rh, rb = emu.raw("POST", "/", body, headers)
    return status, rh, json.loads(rb) if rb else None


# ---------------------------------------------------------------------------

class KmsOverHttps(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator(tls="server", extra=["--seed-alias", "alias/seeded"])
        cls.kms = cls.emu.client()
        cls.key = cls.kms.create_key(Description="primary test key")["KeyMetadata"]
        cls.kms.create_alias(AliasName="alias/app", TargetKeyId=cls.key["KeyId"])

    @classmethod
    def tearDownClass(cls):
        cls.emu.stop()

    def fresh_key(self, **kw):
        return self.kms.create_key(**kw)["KeyMetadata"]

    def test_create_and_describe(self):
        md = self.key
        self.assertRegex(md["KeyId"], r"^[0-9a-f-]{36}$")
        self.assertEqual(md["Arn"], "arn:aws:kms:%s:%s:key/%s" % (REGION, ACCOUNT, md["KeyId"]))
        for ident in (md["KeyId"], md["Arn"], "alias/app",
                      "arn:aws:kms:%s:%s:alias/app" % (REGION, ACCOUNT)):
            d = self.kms.describe_key(KeyId=ident)["KeyMetadata"]
            self.assertEqual(d["KeyId"], md["KeyId"])
            self.assertEqual(d["KeyState"], "Enabled")
            self.assertTrue(d["Enabled"])
            self.assertEqual(d["KeySpec"], "SYMMETRIC_DEFAULT")
            self.assertEqual(d["CustomerMasterKeySpec"], "SYMMETRIC_DEFAULT")
            self.assertEqual(d["EncryptionAlgorithms"], ["SYMMETRIC_DEFAULT"])
            self.assertEqual(d["KeyManager"], "CUSTOMER")
            self.assertEqual(d["Origin"], "AWS_KMS")
            self.assertEqual(d["AWSAccountId"], ACCOUNT)
            self.assertFalse(d["MultiRegion"])
            self.assertIsInstance(d["CreationDate"], datetime.datetime)
        d = self.kms.describe_key(KeyId="alias/seeded")["KeyMetadata"]
        self.assertEqual(d["KeyState"], "Enabled")
        with self.assertRaises(ClientError) as cm:
            self.kms.describe_key(KeyId="alias/missing")
        self.assertEqual(err_code(cm.exception), "NotFoundException")
        with self.assertRaises(ClientError) as cm:
            self.kms.describe_key(KeyId="11111111-2222-3333-4444-555555555555")
        self.assertEqual(err_code(cm.exception), "NotFoundException")

    def test_aliases(self):
        k2 = self.fresh_key()
        self.kms.create_alias(AliasName="alias/moving", TargetKeyId=self.key["KeyId"])
        with self.assertRaises(ClientError) as cm:
            self.kms.create_alias(AliasName="alias/moving", TargetKeyId=k2["KeyId"])
        self.assertEqual(err_code(cm.exception), "AlreadyExistsException")
        self.kms.update_alias(AliasName="alias/moving", TargetKeyId=k2["Arn"])
        self.assertEqual(self.kms.describe_key(KeyId="alias/moving")["KeyMetadata"]["KeyId"],
                         k2["KeyId"])
        names = {a["AliasName"]: a for a in self.kms.list_aliases()["Aliases"]}
        self.assertIn("alias/app", names)
        self.assertEqual(names["alias/moving"]["TargetKeyId"], k2["KeyId"])
        self.assertEqual(names["alias/app"]["AliasArn"],
                         "arn:aws:kms:%s:%s:alias/app" % (REGION, ACCOUNT))
        only = self.kms.list_aliases(KeyId=k2["KeyId"])["Aliases"]
        self.assertEqual([a["AliasName"] for a in only], ["alias/moving"])
        with self.assertRaises(ClientError) as cm:
            self.kms.create_alias(AliasName="not-an-alias", TargetKeyId=k2["KeyId"])
        self.assertEqual(err_code(cm.exception), "ValidationException")

    def test_generate_data_key_and_decrypt(self):
        ctx = {"table": "public.t", "column": "secret"}
        r = self.kms.generate_data_key(KeyId="alias/app", KeySpec="AES_256", EncryptionContext=ctx)
        self.assertEqual(len(r["Plaintext"]), 32)
        self.assertEqual(r["KeyId"], self.key["Arn"])
        self.assertTrue(170 <= len(r["CiphertextBlob"]) <= 200, len(r["CiphertextBlob"]))
        d = self.kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext=ctx)
        self.assertEqual(d["Plaintext"], r["Plaintext"])
        self.assertEqual(d["KeyId"], self.key["Arn"])
        self.assertEqual(d["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT")
        # KeyId in Decrypt may be any identifier of the right key
        for ident in ("alias/app", self.key["KeyId"], self.key["Arn"]):
            d = self.kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext=ctx,
                                 KeyId=ident)
            self.assertEqual(d["Plaintext"], r["Plaintext"])
        r128 = self.kms.generate_data_key(KeyId=self.key["KeyId"], KeySpec="AES_128")
        self.assertEqual(len(r128["Plaintext"]), 16)
        r7 = self.kms.generate_data_key(KeyId=self.key["KeyId"], NumberOfBytes=7)
        self.assertEqual(len(r7["Plaintext"]), 7)
        self.assertEqual(self.kms.decrypt(CiphertextBlob=r7["CiphertextBlob"])["Plaintext"],
                         r7["Plaintext"])

    def test_wrong_context_and_corruption(self):
        ctx = {"a": "1", "b": "2"}
        r = self.kms.generate_data_key(KeyId="alias/app", KeySpec="AES_256", EncryptionContext=ctx)
        # key order of the context must not matter
        d = self.kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"b": "2", "a": "1"})
        self.assertEqual(d["Plaintext"], r["Plaintext"])
        for bad_ctx in ({"a": "1", "b": "3"}, {"a": "1"}, {}, {"a": "1", "b": "2", "c": "3"}):
            with self.assertRaises(ClientError) as cm:
                self.kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext=bad_ctx)
            self.assertEqual(err_code(cm.exception), "InvalidCiphertextException")
        blob = bytearray(r["CiphertextBlob"])
        for pos in (0, 10, 60, len(blob) - 1):
            b = bytearray(blob)
            b[pos] ^= 0x01
            with self.assertRaises(ClientError) as cm:
                self.kms.decrypt(CiphertextBlob=bytes(b), EncryptionContext=ctx)
            self.assertEqual(err_code(cm.exception), "InvalidCiphertextException")
        with self.assertRaises(ClientError) as cm:
            self.kms.decrypt(CiphertextBlob=b"garbage-garbage-garbage", EncryptionContext=ctx)
        self.assertEqual(err_code(cm.exception), "InvalidCiphertextException")
        other = self.fresh_key()
        with self.assertRaises(ClientError) as cm:
            self.kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext=ctx,
                             KeyId=other["KeyId"])
        self.assertEqual(err_code(cm.exception), "IncorrectKeyException")

    def test_encrypt_and_reencrypt(self):
        k2 = self.fresh_key(Description="destination")
        e = self.kms.encrypt(KeyId="alias/app", Plaintext=b"hello world", EncryptionContext={"x": "y"})
        self.assertEqual(e["KeyId"], self.key["Arn"])
        self.assertEqual(e["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT")
        re_ = self.kms.re_encrypt(CiphertextBlob=e["CiphertextBlob"],
                                  SourceEncryptionContext={"x": "y"},
                                  DestinationKeyId=k2["KeyId"],
                                  DestinationEncryptionContext={"z": "w"})
        self.assertEqual(re_["SourceKeyId"], self.key["Arn"])
        self.assertEqual(re_["KeyId"], k2["Arn"])
        self.assertEqual(re_["SourceEncryptionAlgorithm"], "SYMMETRIC_DEFAULT")
        self.assertEqual(re_["DestinationEncryptionAlgorithm"], "SYMMETRIC_DEFAULT")
        d = self.kms.decrypt(CiphertextBlob=re_["CiphertextBlob"], EncryptionContext={"z": "w"})
        self.assertEqual(d["Plaintext"], b"hello world")
        self.assertEqual(d["KeyId"], k2["Arn"])
        with self.assertRaises(ClientError) as cm:
            self.kms.re_encrypt(CiphertextBlob=e["CiphertextBlob"],
                                SourceEncryptionContext={"x": "WRONG"},
                                DestinationKeyId=k2["KeyId"])
        self.assertEqual(err_code(cm.exception), "InvalidCiphertextException")
        with self.assertRaises(ClientError) as cm:
            self.kms.re_encrypt(CiphertextBlob=e["CiphertextBlob"], SourceEncryptionContext={"x": "y"},
                                SourceKeyId=k2["KeyId"], DestinationKeyId=k2["KeyId"])
        self.assertEqual(err_code(cm.exception), "IncorrectKeyException")
        with self.assertRaises(ClientError) as cm:
            self.kms.encrypt(KeyId="alias/app", Plaintext=b"x" * 4097)
        self.assertEqual(err_code(cm.exception), "ValidationException")
        self.kms.encrypt(KeyId="alias/app", Plaintext=b"x" * 4096)

    def test_generate_data_key_without_plaintext(self):
        r = self.kms.generate_data_key_without_plaintext(KeyId="alias/app", KeySpec="AES_256",
                                                         EncryptionContext={"k": "v"})
        self.assertNotIn("Plaintext", r)
        self.assertEqual(r["KeyId"], self.key["Arn"])
        d = self.kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"k": "v"})
        self.assertEqual(len(d["Plaintext"]), 32)

    def test_disable_enable(self):
        k = self.fresh_key()
        blob = self.kms.encrypt(KeyId=k["KeyId"], Plaintext=b"p")["CiphertextBlob"]
        self.kms.disable_key(KeyId=k["KeyId"])
        self.assertEqual(self.kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"], "Disabled")
        for call in (lambda: self.kms.generate_data_key(KeyId=k["KeyId"], KeySpec="AES_256"),
                     lambda: self.kms.decrypt(CiphertextBlob=blob),
                     lambda: self.kms.encrypt(KeyId=k["KeyId"], Plaintext=b"p")):
            with self.assertRaises(ClientError) as cm:
                call()
            self.assertEqual(err_code(cm.exception), "DisabledException")
            self.assertIn("is disabled", cm.exception.response["Error"]["Message"])
        self.kms.enable_key(KeyId=k["KeyId"])
        self.assertEqual(self.kms.decrypt(CiphertextBlob=blob)["Plaintext"], b"p")

    def test_schedule_and_cancel_deletion(self):
        k = self.fresh_key()
        blob = self.kms.encrypt(KeyId=k["KeyId"], Plaintext=b"p")["CiphertextBlob"]
        with self.assertRaises(ClientError) as cm:
            self.kms.schedule_key_deletion(KeyId=k["KeyId"], PendingWindowInDays=3)
        self.assertEqual(err_code(cm.exception), "ValidationException")
        r = self.kms.schedule_key_deletion(KeyId=k["KeyId"], PendingWindowInDays=7)
        self.assertEqual(r["KeyState"], "PendingDeletion")
        self.assertEqual(r["KeyId"], k["Arn"])
        self.assertEqual(r["PendingWindowInDays"], 7)
        self.assertIsInstance(r["DeletionDate"], datetime.datetime)
        md = self.kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]
        self.assertEqual(md["KeyState"], "PendingDeletion")
        self.assertIn("DeletionDate", md)
        for call in (lambda: self.kms.generate_data_key(KeyId=k["KeyId"], KeySpec="AES_256"),
                     lambda: self.kms.decrypt(CiphertextBlob=blob)):
            with self.assertRaises(ClientError) as cm:
                call()
            self.assertEqual(err_code(cm.exception), "KMSInvalidStateException")
            self.assertEqual(cm.exception.response["Error"]["Message"],
                             "%s is pending deletion." % k["Arn"])
        r = self.kms.cancel_key_deletion(KeyId=k["KeyId"])
        self.assertEqual(r["KeyId"], k["Arn"])
        self.assertEqual(self.kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"], "Disabled")
        with self.assertRaises(ClientError) as cm:
            self.kms.cancel_key_deletion(KeyId=k["KeyId"])
        self.assertEqual(err_code(cm.exception), "KMSInvalidStateException")
        self.kms.enable_key(KeyId=k["KeyId"])
        self.assertEqual(self.kms.decrypt(CiphertextBlob=blob)["Plaintext"], b"p")

    def test_rotation(self):
        k = self.fresh_key()
        self.assertFalse(self.kms.get_key_rotation_status(KeyId=k["KeyId"])["KeyRotationEnabled"])
        self.kms.enable_key_rotation(KeyId=k["KeyId"])
        st = self.kms.get_key_rotation_status(KeyId=k["KeyId"])
        self.assertTrue(st["KeyRotationEnabled"])
        old = self.kms.generate_data_key(KeyId=k["KeyId"], KeySpec="AES_256", EncryptionContext={"v": "1"})
        # botocore 1.29 predates RotateKeyOnDemand / ListKeyRotations: sign them by hand
        st, _, body = signed_raw_request(self.emu, "RotateKeyOnDemand", {"KeyId": k["KeyId"]})
        self.assertEqual((st, body["KeyId"]), (200, k["Arn"]))
        new = self.kms.generate_data_key(KeyId=k["KeyId"], KeySpec="AES_256", EncryptionContext={"v": "1"})
        self.assertNotEqual(old["CiphertextBlob"][:60], new["CiphertextBlob"][:60])
        for g in (old, new):
            d = self.kms.decrypt(CiphertextBlob=g["CiphertextBlob"], EncryptionContext={"v": "1"})
            self.assertEqual(d["Plaintext"], g["Plaintext"])
        st, _, body = signed_raw_request(self.emu, "ListKeyRotations", {"KeyId": k["KeyId"]})
        rot = body["Rotations"]
        self.assertEqual([r["RotationType"] for r in rot], ["ON_DEMAND"])
        self.kms.disable_key_rotation(KeyId=k["KeyId"])
        self.assertFalse(self.kms.get_key_rotation_status(KeyId=k["KeyId"])["KeyRotationEnabled"])
        keys = {x["KeyId"]: x for x in self.emu.control("GET", "keys")}
        self.assertEqual(keys[k["KeyId"]]["MaterialVersions"], 2)

    def test_validation_errors(self):
        with self.assertRaises(ClientError) as cm:
            self.kms.generate_data_key(KeyId="alias/app")
        self.assertEqual(err_code(cm.exception), "ValidationException")
        with self.assertRaises(ClientError) as cm:
            self.kms.generate_data_key(KeyId="alias/app", KeySpec="AES_256", NumberOfBytes=32)
        self.assertEqual(err_code(cm.exception), "ValidationException")
        with self.assertRaises(ClientError) as cm:
            self.kms.generate_data_key(KeyId="alias/app", NumberOfBytes=2000)
        self.assertEqual(err_code(cm.exception), "ValidationException")
        # boto3 validates types client-side; send a non-string context value raw
        status, _, body = signed_raw_request(self.emu, "GenerateDataKey",
                                             {"KeyId": "alias/app", "KeySpec": "AES_256",
                                              "EncryptionContext": {"n": 5}})
        self.assertEqual(status, 400)
        self.assertIn(body["__type"], ("SerializationException", "ValidationException"))
        status, _, body = signed_raw_request(self.emu, "NoSuchOperation", {})
        self.assertEqual((status, body["__type"]), (400, "UnknownOperationException"))

    def test_response_headers_and_keepalive(self):
        self.emu.control("POST", "requests/reset")
        status, headers, body = signed_raw_request(self.emu, "DescribeKey", {"KeyId": "alias/app"})
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "application/x-amz-json-1.1")
        self.assertRegex(headers["x-amzn-RequestId"], r"^[0-9a-f-]{36}$")
        self.assertEqual(int(headers["Content-Length"]), len(json.dumps(body).encode()))
        # boto3 reuses one connection for many calls
        for _ in range(3):
            self.kms.describe_key(KeyId="alias/app")
        conns = {r["conn"] for r in self.emu.control("GET", "requests")[1:]}
        self.assertEqual(len(conns), 1)
        reqs = self.emu.control("GET", "requests")
        self.assertIn("x-amz-target", reqs[-1]["signed_headers"])


class KmsOverHttp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator(tls=None, extra=["--seed-alias", "alias/plain"])
        cls.kms = cls.emu.client()

    @classmethod
    def tearDownClass(cls):
        cls.emu.stop()

    def test_roundtrip_http(self):
        r = self.kms.generate_data_key(KeyId="alias/plain", KeySpec="AES_256",
                                       EncryptionContext={"c": "d"})
        d = self.kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"c": "d"})
        self.assertEqual(d["Plaintext"], r["Plaintext"])

    def test_health(self):
        self.assertEqual(self.emu.control("GET", "health"), "ok")


class Authentication(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator(tls="server", extra=["--seed-alias", "alias/auth"])

    @classmethod
    def tearDownClass(cls):
        cls.emu.stop()

    def setUp(self):
        self.emu.control("POST", "counters/reset")

    def expect(self, client, code, msg_part=None):
        with self.assertRaises(ClientError) as cm:
            client.describe_key(KeyId="alias/auth")
        self.assertEqual(err_code(cm.exception), code)
        self.assertEqual(cm.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        if msg_part:
            self.assertIn(msg_part, cm.exception.response["Error"]["Message"])

    def test_good_credentials(self):
        self.emu.client().describe_key(KeyId="alias/auth")

    def test_bad_secret(self):
        self.expect(self.emu.client(secret="wrong"), "InvalidSignatureException",
                    "The request signature we calculated does not match")
        self.assertEqual(self.emu.control("GET", "counters")["auth_failures"], 1)
        self.assertEqual(self.emu.control("GET", "counters")["DescribeKey"], 0)

    def test_unknown_access_key(self):
        self.expect(self.emu.client(akid="AKIDUNKNOWN"), "UnrecognizedClientException",
                    "The security token included in the request is invalid.")

    def test_session_token(self):
        self.emu.client(akid=AKID2, secret=SECRET2, token=TOKEN2).describe_key(KeyId="alias/auth")
        self.expect(self.emu.client(akid=AKID2, secret=SECRET2), "UnrecognizedClientException")
        self.expect(self.emu.client(akid=AKID2, secret=SECRET2, token="other"),
                    "UnrecognizedClientException")
        self.expect(self.emu.client(token="unexpected"), "UnrecognizedClientException")

    def test_wrong_region(self):
        self.expect(self.emu.client(region="eu-west-1"), "InvalidSignatureException",
                    "Credential should be scoped to a valid region")

    def test_skewed_clock(self):
        real = datetime.datetime

        def make(delta):
            class Skewed(datetime.datetime):
                @classmethod
                def utcnow(cls):
                    return real.utcnow() + delta
            return Skewed

        for delta, text in ((datetime.timedelta(minutes=-10), "Signature expired"),
                            (datetime.timedelta(minutes=10), "Signature not yet current")):
            with mock.patch.object(botocore.auth.datetime, "datetime", make(delta)):
                self.expect(self.emu.client(), "InvalidSignatureException", text)
        with mock.patch.object(botocore.auth.datetime, "datetime",
                               make(datetime.timedelta(minutes=-4))):
            self.emu.client().describe_key(KeyId="alias/auth")

    def test_missing_auth(self):
        status, headers, body = self.emu.raw(
            "POST", "/", b"{}", {"Content-Type": "application/x-amz-json-1.1",
                                  "X-Amz-Target": "TrentService.DescribeKey"})
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["__type"], "MissingAuthenticationTokenException")
        self.assertIn("x-amzn-RequestId", headers)

    def test_tampered_body_and_headers(self):
        def body_tamper(body, headers):
            return body.replace(b"alias/auth", b"alias/autX"), headers

        status, _, b = signed_raw_request(self.emu, "DescribeKey", {"KeyId": "alias/auth"},
                                          tamper=body_tamper)
        self.assertEqual((status, b["__type"]), (400, "InvalidSignatureException"))

        def target_tamper(body, headers):
            headers["X-Amz-Target"] = "TrentService.ListKeys"
            return body, headers

        status, _, b = signed_raw_request(self.emu, "DescribeKey", {"KeyId": "alias/auth"},
                                          tamper=target_tamper)
        self.assertEqual((status, b["__type"]), (400, "InvalidSignatureException"))

        def unsign_host(body, headers):
            a = headers["Authorization"]
            headers["Authorization"] = a.replace("SignedHeaders=content-type;host;",
                                                 "SignedHeaders=content-type;")
            return body, headers

        status, _, b = signed_raw_request(self.emu, "DescribeKey", {"KeyId": "alias/auth"},
                                          tamper=unsign_host)
        self.assertEqual((status, b["__type"]), (400, "InvalidSignatureException"))
        status, _, b = signed_raw_request(self.emu, "DescribeKey", {"KeyId": "alias/auth"})
        self.assertEqual(status, 200)


class Faults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator(tls="server", extra=["--seed-alias", "alias/faulty"])
        cls.kms = cls.emu.client()

    @classmethod
    def tearDownClass(cls):
        cls.emu.stop()

    def setUp(self):
        self.emu.control("POST", "faults/reset")
        self.emu.control("POST", "counters/reset")

    tearDown = setUp

    def test_throttling(self):
        self.emu.control("POST", "faults", {"throttle_rate": 1.0})
        with self.assertRaises(ClientError) as cm:
            self.kms.generate_data_key(KeyId="alias/faulty", KeySpec="AES_256")
        self.assertEqual(err_code(cm.exception), "ThrottlingException")
        self.assertEqual(cm.exception.response["Error"]["Message"], "Rate exceeded")
        self.emu.control("POST", "faults", {"throttle_rate": 0.5, "seed": 42})
        outcomes = []
        for _ in range(20):
            try:
                self.kms.generate_data_key(KeyId="alias/faulty", KeySpec="AES_256")
                outcomes.append(True)
            except ClientError as e:
                self.assertEqual(err_code(e), "ThrottlingException")
                outcomes.append(False)
        c = self.emu.control("GET", "counters")
        self.assertEqual(c["GenerateDataKey"], 21)
        self.assertEqual(c["throttled"], 1 + outcomes.count(False))
        self.assertTrue(0 < outcomes.count(False) < 20)
        self.assertEqual(c["total"], 21)

    def test_throttling_retried_by_sdk(self):
        self.emu.control("POST", "faults", {"error_5xx_count": 1})
        retrying = self.emu.client(config=Config(retries={"total_max_attempts": 3, "mode": "standard"}))
        retrying.describe_key(KeyId="alias/faulty")
        c = self.emu.control("GET", "counters")
        self.assertEqual((c["DescribeKey"], c["errors_5xx"]), (2, 1))

    def test_5xx(self):
        self.emu.control("POST", "faults", {"error_5xx_count": 2})
        for _ in range(2):
            with self.assertRaises(ClientError) as cm:
                self.kms.describe_key(KeyId="alias/faulty")
            self.assertEqual(err_code(cm.exception), "KMSInternalException")
            self.assertEqual(cm.exception.response["ResponseMetadata"]["HTTPStatusCode"], 500)
        self.kms.describe_key(KeyId="alias/faulty")
        self.emu.control("POST", "faults", {"error_5xx_count": 1, "error_5xx_status": 503})
        with self.assertRaises(ClientError) as cm:
            self.kms.describe_key(KeyId="alias/faulty")
        self.assertEqual(cm.exception.response["ResponseMetadata"]["HTTPStatusCode"], 503)
        self.assertEqual(self.emu.control("GET", "counters")["errors_5xx"], 3)

    def test_drop_connection(self):
        self.emu.control("POST", "faults", {"drop_count": 1})
        with self.assertRaises(Exception) as cm:
            self.kms.describe_key(KeyId="alias/faulty")
        self.assertNotIsInstance(cm.exception, ClientError)
        self.kms.describe_key(KeyId="alias/faulty")
        c = self.emu.control("GET", "counters")
        self.assertEqual((c["dropped"], c["DescribeKey"]), (1, 2))

    def test_latency_and_stall(self):
        self.emu.control("POST", "faults", {"latency_ms": 300})
        t0 = time.monotonic()
        self.kms.describe_key(KeyId="alias/faulty")
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        self.emu.control("POST", "faults/reset")
        self.emu.control("POST", "faults", {"stall_ms": 2000, "stall_count": 1})
        quick = self.emu.client(config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                              read_timeout=0.5))
        with self.assertRaises(Exception) as cm:
            quick.describe_key(KeyId="alias/faulty")
        self.assertIn("timeout", type(cm.exception).__name__.lower())
        t0 = time.monotonic()
        self.kms.describe_key(KeyId="alias/faulty")
        self.assertLess(time.monotonic() - t0, 1.5)
        self.assertEqual(self.emu.control("GET", "counters")["stalled"], 1)

    def test_ops_filter(self):
        self.emu.control("POST", "faults", {"throttle_rate": 1.0, "ops": ["Decrypt"]})
        r = self.kms.generate_data_key(KeyId="alias/faulty", KeySpec="AES_256")
        with self.assertRaises(ClientError) as cm:
            self.kms.decrypt(CiphertextBlob=r["CiphertextBlob"])
        self.assertEqual(err_code(cm.exception), "ThrottlingException")

    def test_key_state_control(self):
        self.emu.control("POST", "keys/state", {"key": "alias/faulty", "state": "Disabled"})
        with self.assertRaises(ClientError) as cm:
            self.kms.generate_data_key(KeyId="alias/faulty", KeySpec="AES_256")
        self.assertEqual(err_code(cm.exception), "DisabledException")
        self.emu.control("POST", "keys/state", {"key": "alias/faulty", "state": "Enabled"})
        self.kms.generate_data_key(KeyId="alias/faulty", KeySpec="AES_256")

    def test_emuctl(self):
        def ctl(*args):
            out = subprocess.run([PY, EMUCTL, "--url", self.emu.url, "--cafile",
                                  self.emu.cafile] + list(args),
                                 check=True, capture_output=True, text=True).stdout
            return out.strip()

        self.assertEqual(ctl("health"), "ok")
        self.assertEqual(ctl("reset"), '{"ok":true}')
        self.kms.generate_data_key(KeyId="alias/faulty", KeySpec="AES_256")
        self.assertEqual(ctl("counters", "--ops", "GenerateDataKey,Decrypt"),
                         '{"Decrypt":0,"GenerateDataKey":1}')
        self.assertIn('"latency_ms":5', ctl("faults", '{"latency_ms":5}'))
        self.assertEqual(ctl("faults-reset"), '{"ok":true}')
        self.assertEqual(ctl("key-state", "alias/faulty", "Disabled"), '{"ok":true,"state":"Disabled"}')
        self.assertIn('"KeyState":"Disabled"', ctl("keys"))
        self.assertEqual(ctl("key-state", "alias/faulty", "Enabled"), '{"ok":true,"state":"Enabled"}')
        self.assertEqual(ctl("create-key", "alias/from-ctl"), '{"ok":true}')
        self.assertEqual(ctl("rotate", "alias/from-ctl"), '{"material_versions":2,"ok":true}')
        self.kms.describe_key(KeyId="alias/from-ctl")
        # --port-file form
        pf = os.path.join(TMP, "ctl-port")
        with open(pf, "w") as f:
            f.write(str(self.emu.port))
        out = subprocess.run([PY, EMUCTL, "--port-file", pf, "--https", "--cafile",
                              self.emu.cafile, "counters", "--ops", "total"],
                             check=True, capture_output=True, text=True).stdout
        self.assertRegex(out, r'^\{"total":\d+\}\n$')


class MultiRegion(unittest.TestCase):
    def test_mrk_replica_decrypts(self):
        primary = Emulator(tls="server", region="us-east-1")
        try:
            kp = primary.client()
            md = kp.create_key(MultiRegion=True, Description="mrk")["KeyMetadata"]
            self.assertRegex(md["KeyId"], r"^mrk-[0-9a-f]{32}$")
            self.assertTrue(md["MultiRegion"])
            g = kp.generate_data_key(KeyId=md["KeyId"], KeySpec="AES_256",
                                     EncryptionContext={"db": "x"})
            replica = Emulator(tls="server", region="eu-west-1",
                               extra=["--seed-mrk", md["KeyId"] + "=alias/mrk",
                                      "--mrk-primary-region", "us-east-1"])
            try:
                kr = replica.client()
                d = kr.decrypt(CiphertextBlob=g["CiphertextBlob"], EncryptionContext={"db": "x"})
                self.assertEqual(d["Plaintext"], g["Plaintext"])
                self.assertEqual(d["KeyId"], "arn:aws:kms:eu-west-1:%s:key/%s" % (ACCOUNT, md["KeyId"]))
                rmd = kr.describe_key(KeyId="alias/mrk")["KeyMetadata"]
                self.assertEqual(rmd["MultiRegionConfiguration"]["MultiRegionKeyType"], "REPLICA")
                # and back: replica-encrypted data decrypts in the primary
                g2 = kr.generate_data_key(KeyId="alias/mrk", KeySpec="AES_256")
                self.assertEqual(kp.decrypt(CiphertextBlob=g2["CiphertextBlob"])["Plaintext"],
                                 g2["Plaintext"])
                # a normal key's ciphertext cannot be decrypted in the replica
                nk = kp.create_key()["KeyMetadata"]
                blob = kp.encrypt(KeyId=nk["KeyId"], Plaintext=b"z")["CiphertextBlob"]
                with self.assertRaises(ClientError) as cm:
                    kr.decrypt(CiphertextBlob=blob)
                self.assertEqual(err_code(cm.exception), "InvalidCiphertextException")
            finally:
                replica.stop()
        finally:
            primary.stop()

    def test_state_file_persists(self):
        sf = os.path.join(TMP, "state.json")
        e1 = Emulator(tls=None, extra=["--state-file", sf, "--seed-alias", "alias/persist"])
        try:
            g = e1.client().generate_data_key(KeyId="alias/persist", KeySpec="AES_256")
        finally:
            e1.stop()
        e2 = Emulator(tls=None, extra=["--state-file", sf, "--seed-alias", "alias/persist"])
        try:
            d = e2.client().decrypt(CiphertextBlob=g["CiphertextBlob"])
            self.assertEqual(d["Plaintext"], g["Plaintext"])
        finally:
            e2.stop()


class CredentialSources(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator(tls=None, extra=["--seed-alias", "alias/creds"])

    @classmethod
    def tearDownClass(cls):
        cls.emu.stop()

    def use(self, akid, secret, token):
        self.emu.client(akid=akid, secret=secret, token=token).describe_key(KeyId="alias/creds")

    def test_imds_v2(self):
        st, _, _ = self.emu.raw("GET", "/latest/meta-data/iam/security-credentials/")
        self.assertEqual(st, 401)
        st, h, token = self.emu.raw("PUT", "/latest/api/token", b"",
                                    {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        self.assertEqual(st, 200)
        self.assertEqual(h["X-aws-ec2-metadata-token-ttl-seconds"], "60")
        hdr = {"X-aws-ec2-metadata-token": token.decode()}
        st, _, _ = self.emu.raw("GET", "/latest/meta-data/iam/security-credentials/",
                                headers={"X-aws-ec2-metadata-token": "bogus"})
        self.assertEqual(st, 401)
        st, _, role = self.emu.raw("GET", "/latest/meta-data/iam/security-credentials/", headers=hdr)
        self.assertEqual(st, 200)
        st, _, doc = self.emu.raw("GET", "/latest/meta-data/iam/security-credentials/" + role.decode(),
                                  headers=hdr)
        self.assertEqual(st, 200)
        doc = json.loads(doc)
        self.assertEqual((doc["Code"], doc["Type"]), ("Success", "AWS-HMAC"))
        self.assertRegex(doc["Expiration"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.use(doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"])
        self.assertGreaterEqual(self.emu.control("GET", "counters")["imds_credentials"], 1)

    def test_imds_via_botocore_provider(self):
        from botocore.credentials import InstanceMetadataProvider
        from botocore.utils import InstanceMetadataFetcher
        fetcher = InstanceMetadataFetcher(timeout=2, num_attempts=1,
                                          env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": self.emu.url + "/"},
                                          config={"ec2_metadata_service_endpoint": self.emu.url + "/"})
        creds = InstanceMetadataProvider(iam_role_fetcher=fetcher).load()
        self.assertIsNotNone(creds)
        fc = creds.get_frozen_credentials()
        self.use(fc.access_key, fc.secret_key, fc.token)

    def test_container(self):
        st, _, _ = self.emu.raw("GET", "/container-credentials")
        self.assertEqual(st, 401)
        st, _, _ = self.emu.raw("GET", "/container-credentials", headers={"Authorization": "nope"})
        self.assertEqual(st, 401)
        st, _, doc = self.emu.raw("GET", "/container-credentials/v2/abc",
                                  headers={"Authorization": CONTAINER_TOKEN})
        self.assertEqual(st, 200)
        doc = json.loads(doc)
        self.assertIn("RoleArn", doc)
        self.use(doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"])

    def test_container_via_botocore_provider(self):
        from botocore.credentials import ContainerProvider
        env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": self.emu.url + "/container-credentials",
               "AWS_CONTAINER_AUTHORIZATION_TOKEN": CONTAINER_TOKEN}
        creds = ContainerProvider(environ=env).load()
        fc = creds.get_frozen_credentials()
        self.use(fc.access_key, fc.secret_key, fc.token)

    def sts(self, token):
        body = urllib.parse.urlencode({
            "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
            "RoleArn": "arn:aws:iam::%s:role/kms-pg" % ACCOUNT, "RoleSessionName": "kms-pg-test",
            "WebIdentityToken": token}).encode()
        return self.emu.raw("POST", "/", body, {"Content-Type": "application/x-www-form-urlencoded"})

    def test_sts_web_identity_raw(self):
        st, _, xml = self.sts("wrong-token")
        self.assertEqual(st, 400)
        self.assertIn(b"<Code>InvalidIdentityToken</Code>", xml)
        st, _, xml = self.sts(WEB_TOKEN)
        self.assertEqual(st, 200)
        ns = {"s": "https://sts.amazonaws.com/doc/2011-06-15/"}
        c = ET.fromstring(xml).find("s:AssumeRoleWithWebIdentityResult/s:Credentials", ns)
        get = lambda n: c.find("s:" + n, ns).text  # noqa: E731
        self.use(get("AccessKeyId"), get("SecretAccessKey"), get("SessionToken"))
        self.assertGreaterEqual(self.emu.control("GET", "counters")["sts_web_identity"], 2)

    def test_sts_web_identity_boto3(self):
        sts = boto3.client("sts", endpoint_url=self.emu.url, region_name=REGION,
                           aws_access_key_id=AKID, aws_secret_access_key=SECRET, config=NO_RETRY)
        r = sts.assume_role_with_web_identity(RoleArn="arn:aws:iam::%s:role/x" % ACCOUNT,
                                              RoleSessionName="s1", WebIdentityToken=WEB_TOKEN)
        c = r["Credentials"]
        self.assertIsInstance(c["Expiration"], datetime.datetime)
        self.use(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])
        ident = sts.get_caller_identity()
        self.assertEqual(ident["Account"], ACCOUNT)

    def test_expired_minted_credentials(self):
        st, _, doc = self.emu.raw("GET", "/container-credentials",
                                  headers={"Authorization": CONTAINER_TOKEN})
        doc = json.loads(doc)
        self.use(doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"])
        self.emu.control("POST", "credentials/expire")
        with self.assertRaises(ClientError) as cm:
            self.use(doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"])
        self.assertEqual(err_code(cm.exception), "ExpiredTokenException")
        # static credentials are unaffected
        self.use(AKID, SECRET, None)

    def test_minted_ttl(self):
        emu = Emulator(tls=None, extra=["--minted-ttl-seconds", "1", "--seed-alias", "alias/ttl"])
        try:
            st, _, doc = emu.raw("GET", "/container-credentials",
                                 headers={"Authorization": CONTAINER_TOKEN})
            doc = json.loads(doc)
            c = emu.client(akid=doc["AccessKeyId"], secret=doc["SecretAccessKey"], token=doc["Token"])
            c.describe_key(KeyId="alias/ttl")
            time.sleep(1.2)
            with self.assertRaises(ClientError) as cm:
                c.describe_key(KeyId="alias/ttl")
            self.assertEqual(err_code(cm.exception), "ExpiredTokenException")
        finally:
            emu.stop()


class TlsNegative(unittest.TestCase):
    def test_bad_server_certificates_rejected(self):
        for cert in ("expired", "wronghost", "untrusted", "selfsigned"):
            emu = Emulator(tls=cert)
            try:
                with self.assertRaises((SSLError, EndpointConnectionError), msg=cert):
                    emu.client().list_keys()
                ctx = ssl.create_default_context(cafile=emu.cafile)
                with self.assertRaises(ssl.SSLCertVerificationError, msg=cert):
                    with ctx.wrap_socket(__import__("socket").create_connection(
                            ("127.0.0.1", emu.port), timeout=5), server_hostname="127.0.0.1"):
                        pass
                # the server survives failed handshakes
                self.assertEqual(emu.proc.poll(), None)
            finally:
                emu.stop()


def main():
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped)
    Emulator.stop_all()
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(0 if failed == 0 and result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
