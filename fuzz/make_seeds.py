#!/usr/bin/python3
"""Write the seed corpora in fuzz/corpus/ (deterministic; re-run to regenerate).

envelope/  well-formed kms_pg v1 ciphertexts (local and AWS shapes, with and
           without provider-context key names, empty and non-empty bodies)
           and a few "recipe" inputs for the build/seal/open round trip
context/   flat JSON objects like real encryption contexts
aws_json/  AWS KMS JSON 1.1 responses, error documents and credential
           documents (IMDS / container / STS-JSON shapes)
"""
import base64
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MAGIC = b"\xc5KPG"


def det(label, n):
    """n deterministic pseudo-random bytes."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{i}".encode()).digest()
        i += 1
    return out[:n]


def envelope(provider, key_id, names, wrapped, body_len, label):
    h = MAGIC + bytes([1, provider, len(key_id)]) + key_id.encode()
    h += bytes([len(names)]) + b"".join(bytes([len(n)]) + n.encode() for n in names)
    h += struct.pack(">H", len(wrapped)) + wrapped
    return h + det(label + "n", 12) + det(label + "b", body_len) + det(label + "t", 16)


def write(sub, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(HERE, "corpus", sub, name), "wb") as f:
        f.write(data)


def main():
    uuid = "0f3c6a52-5d5e-4c1b-9a53-2f8f1d0c7e11"
    arn = "arn:aws:kms:us-east-1:111122223333:key/" + uuid
    local_wrap = b"\x01" + struct.pack(">I", 1) + det("lw", 12 + 32 + 16)
    write("envelope", "local-empty", envelope(1, uuid, [], local_wrap, 0, "a"))
    write("envelope", "local-text", envelope(1, uuid, [], local_wrap, 27, "b"))
    write("envelope", "local-names", envelope(1, uuid, ["tenant", "table"], local_wrap, 100, "c"))
    write("envelope", "aws-blob", envelope(2, arn, ["tenant"], det("blob", 184), 64, "d"))
    write("envelope", "max-names", envelope(1, "k" * 255, [chr(65 + i % 26) * (1 + i) for i in range(32)],
                                            det("w", 1024), 5, "e"))
    write("envelope", "recipe-small", b"\x00\x24" + uuid.encode() + b"\x01\x06tenant\x00\x41" + local_wrap + b"\x04ctx1\x07hello")
    write("envelope", "recipe-aws", b"\x01\x50" + arn.encode() + b"\x02\x01a\x01b\x00\xb8" + det("blob2", 184) + b"\x08" + det("c", 8) + b"\x11" + b"x" * 40)

    write("context", "empty", "{}")
    write("context", "tenant", '{"tenant": "acme", "id": 42}')
    write("context", "types", '{"b": true, "a": "x", "n": 1.50, "f": false, "e": 1e2, "neg": -0}')
    write("context", "dups", '{"k": 1, "k": "last", "k2": [1], "k2": "fixed"}')
    write("context", "escapes", '{"\\u00e9t\\u00e9": "caf\\u00e9", "tab\\t": "line\\nbreak", "q\\"": "\\\\"}')
    write("context", "prefix-keys", '{"ab": 1, "a": 2, "abc": 3, "b": 4, "\\u007f": 5, "\\u0080": 6}')
    write("context", "many", json.dumps({f"key{i:03d}": f"value{i}" for i in range(60)}))
    write("context", "refused", '{"a": null, "b": {"c": 1}, "": "empty"}')

    dek = base64.b64encode(det("dek", 32)).decode()
    blob = base64.b64encode(det("blob", 184)).decode()
    write("aws_json", "generate", json.dumps({"CiphertextBlob": blob, "KeyId": arn, "Plaintext": dek,
                                              "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}))
    write("aws_json", "decrypt", json.dumps({"KeyId": arn, "Plaintext": dek, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}))
    write("aws_json", "reencrypt", json.dumps({"CiphertextBlob": blob, "KeyId": arn, "SourceKeyId": arn}))
    write("aws_json", "describe", json.dumps({"KeyMetadata": {"KeyId": uuid, "Arn": arn, "Enabled": True,
                                                              "KeyState": "Enabled", "MultiRegion": False,
                                                              "CreationDate": 1.7e9, "KeyUsage": "ENCRYPT_DECRYPT",
                                                              "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"]}}))
    write("aws_json", "error-type", '{"__type": "com.amazonaws.kms#NotFoundException", "message": "Key not found"}')
    write("aws_json", "error-Message", '{"__type": "ThrottlingException:http://internal.amazon.com/", "Message": "Rate exceeded"}')
    write("aws_json", "credentials", json.dumps({"Code": "Success", "LastUpdated": "2024-01-01T00:00:00Z",
                                                 "Type": "AWS-HMAC", "AccessKeyId": "ASIAEXAMPLEEXAMPLE00",
                                                 "SecretAccessKey": base64.b64encode(det("sk", 30)).decode(),
                                                 "Token": base64.b64encode(det("tok", 300)).decode(),
                                                 "Expiration": "2030-01-01T00:00:00Z"}))
    write("aws_json", "escaped-secret", '{"Plaintext": "\\u0041QIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=", "KeyId": "k\\/1"}')
    write("aws_json", "not-object", '[{"Plaintext": "x"}]')


if __name__ == "__main__":
    main()
