#!/usr/bin/python3
"""Interop tests: kms_pg values cross between SQL, clients/python and clients/js.

Started by test/interop/run.sh.  Starts its own throwaway PostgreSQL cluster
(kms_pg preloaded, unix socket in a temp dir, a free port) and, for the AWS
provider, its own KMS emulator over HTTPS with a throwaway CA.  For each
provider:

  * values written by kms_encrypt()/kms_encrypt_text() are read by the Python
    client (context as Python objects spelt differently, and as JSON text)
    and by the JavaScript reader;
  * values written by the Python client are read by kms_decrypt() /
    kms_decrypt_text();
  * a wrong context is refused on every side;
  * (AWS) an envelope of the reference text's format is imported into a
    kms_pg value that kms_decrypt() reads, and a tampered one is refused;
  * (local) the clients read local keys from the keyring export of
    docs/format.md (the query is taken from the document itself) and the
    master key; the document's worked example unwraps; a wrong master key
    and an altered row are refused;
  * format 2, built here from docs/format.md alone (independent of the
    extension's writer): each SQL-written value's data key is unwrapped and
    the plaintext sealed again as a version 2 value whose registry row holds
    that value's key id, name block and wrapped DEK; both clients read it with
    the row given, through a lookup function, and through a database
    connection running the document's one query; a wrong length, reference 0,
    an unsorted or repeated name block, a missing row, another reference and
    a wrong context are refused; the worked v2 example of docs/format.md runs;
  * format 2 written by SQL (when this build has the DEK registry): read by
    both clients with the registry query on a database connection.

Cases: empty, small and 1 MiB values, Unicode text, contexts with numbers
spelt many ways, booleans, keys that sort differently by UTF-8 bytes, jsonb
order and UTF-16, and provider-context keys.  Ends with "N passed, M failed".
"""

import base64
import decimal
import re
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("KMS_PG_ROOT") or os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

import kms_pg_client as kpc  # noqa: E402

D = decimal.Decimal
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
PYTHON = os.environ.get("KMS_PYTHON", "/usr/bin/python3")
AWS_AKID = "AKIDINTEROPTEST"
AWS_SECRET = "interop-test-secret"
AWS_REGION = "us-east-1"

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print("ok   %s" % name)
    else:
        failed += 1
        print("FAIL %s%s" % (name, (": " + detail) if detail else ""))


def raises(fn, exc_types):
    """(True, None) when fn raises one of exc_types, else (False, what happened)."""
    try:
        fn()
    except exc_types:
        return True, None
    except Exception as e:  # noqa: BLE001 - reported as the failure detail
        return False, "%s: %s" % (type(e).__name__, e)
    return False, "no error"


# ---------------------------------------------------------------------------
# Test cases.  sql_ctx is the jsonb text SQL uses; py_ctx the same context as
# Python objects, spelt differently on purpose (numbers by value, key order).
# ---------------------------------------------------------------------------

MIB = bytes(range(256)) * 4096
UNICODE_TEXT = "Grüße aus Köln — 東京 🎉 ‮ ok"
CASES = [
    dict(name="empty", plain=b"", sql_ctx="{}", py_ctx={}, keys=""),
    dict(name="small", plain=b"hello, kms_pg", sql_ctx='{"tenant": "acme", "id": 42}',
         py_ctx={"id": 42, "tenant": "acme"}, keys=""),
    dict(name="1MiB", plain=MIB, sql_ctx='{"tenant": "acme", "blob": true}',
         py_ctx={"blob": True, "tenant": "acme"}, keys="tenant"),
    dict(name="unicode-text", plain=UNICODE_TEXT.encode("utf-8"), text=True,
         # keys whose orders differ: jsonb (length first), UTF-8 bytes, UTF-16 units
         sql_ctx='{"zz": "Zoë", "b": "🔑", "é": "ü", "\uff5e": "wide", "🔑": "astral", "A": "a"}',
         py_ctx={"🔑": "astral", "\uff5e": "wide", "A": "a", "b": "🔑", "é": "ü", "zz": "Zoë"},
         keys=""),
    dict(name="numbers-booleans", plain=b"amounts",
         sql_ctx='{"amount": 1.50, "hundred": 100, "e": 1e2, "negzero": -0, "zero": 0.000, '
                 '"big": 12345678901234567890.123, "neg": -1.230, "small": 1.5e-3, '
                 '"flag": true, "off": false}',
         py_ctx={"amount": D("1.5"), "hundred": D("1E+2"), "e": 100, "negzero": D("-0.0"),
                 "zero": 0, "big": D("12345678901234567890.1230"), "neg": -1.23,
                 "small": 0.0015, "flag": True, "off": False},
         keys="amount,flag,hundred,off,big"),
    dict(name="provider-context-unicode", plain="naïve café".encode("utf-8"), text=True,
         sql_ctx='{"région": "Île-de-France", "tenant": "acme", "row": 7}',
         py_ctx={"row": 7, "tenant": "acme", "région": "Île-de-France"},
         keys="tenant,région"),
]


def wrong_context(case):
    """The case's context with one change, outside the provider-context keys,
    that must make the AES-GCM tag check fail."""
    ctx = dict(case["py_ctx"])
    free = sorted(k for k in ctx if k not in case["keys"].split(","))
    if not free:
        ctx["extra"] = 1
        return ctx
    k = free[0]
    v = ctx[k]
    ctx[k] = (not v) if isinstance(v, bool) else (v + 1 if isinstance(v, (int, D, float)) else v + "x")
    return ctx


def provider_key_context(case):
    """The case's context with a provider-context value changed (None if it has none)."""
    names = [n for n in case["keys"].split(",") if n and n in case["py_ctx"]]
    if not names:
        return None
    ctx = dict(case["py_ctx"])
    v = ctx[names[0]]
    ctx[names[0]] = (not v) if isinstance(v, bool) else (v + 1 if isinstance(v, (int, D, float)) else v + "x")
    return ctx


# ---------------------------------------------------------------------------
# Throwaway cluster and emulator
# ---------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, tmp, env_extra, conf_extra, master_key=None):
        self.tmp = tmp
        self.data = os.path.join(tmp, "data")
        self.port = free_port()
        self.env = dict(os.environ, **env_extra)
        subprocess.run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-A", "trust",
                        "-U", "postgres", "--no-sync"], check=True, stdout=subprocess.DEVNULL,
                       env=self.env)
        self.master_key_file = os.path.join(tmp, "master.key")
        self.master_key = master_key or os.urandom(32).hex()
        fd = os.open(self.master_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, (self.master_key + "\n").encode())
        os.close(fd)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("shared_preload_libraries = 'kms_pg'\n")
            f.write("kms_pg.master_key_file = '%s'\n" % self.master_key_file)
            f.write("listen_addresses = ''\n")
            f.write("unix_socket_directories = '%s'\n" % tmp)
            f.write("port = %d\n" % self.port)
            f.write("fsync = off\n")
            f.write(conf_extra)
        subprocess.run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l",
                        os.path.join(tmp, "server.log"), "-w", "start"], check=True,
                       stdout=subprocess.DEVNULL, env=self.env)
        self.psql("CREATE DATABASE interop", db="postgres")
        self.psql("CREATE EXTENSION kms_pg")

    def psql(self, sql, db="interop"):
        """Run SQL; return stdout (unaligned, tuples only).  Raises on error."""
        r = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                            "-h", self.tmp, "-p", str(self.port), "-U", "postgres", "-d", db, "-f", "-"],
                           input=sql.encode("utf-8"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=self.env)
        if r.returncode != 0:
            raise RuntimeError("psql failed: %s" % r.stderr.decode("utf-8", "replace").strip())
        return r.stdout.decode("utf-8")

    def stop(self):
        subprocess.run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)


class Emulator:
    def __init__(self, tmp):
        self.certs = os.path.join(tmp, "certs")
        subprocess.run(["sh", os.path.join(ROOT, "test", "emulator", "make_certs.sh"), self.certs],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ca = os.path.join(self.certs, "ca.pem")
        port_file = os.path.join(tmp, "emulator.port")
        self.log = open(os.path.join(tmp, "emulator.log"), "w")
        self.proc = subprocess.Popen(
            [PYTHON, os.path.join(ROOT, "test", "emulator", "kms_emulator.py"), "--port", "0",
             "--port-file", port_file, "--tls-cert", os.path.join(self.certs, "server.pem"),
             "--tls-key", os.path.join(self.certs, "server.key"), "--region", AWS_REGION,
             "--cred", "%s:%s" % (AWS_AKID, AWS_SECRET), "--seed-alias", "alias/interop",
             "--seed-alias", "alias/interop-other", "--die-with-parent", "--quiet"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 15
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the KMS emulator did not start (see emulator.log)")
            time.sleep(0.05)
        with open(port_file) as f:
            self.port = int(f.read().strip())
        self.endpoint = "https://127.0.0.1:%d" % self.port

    def client(self):
        import boto3
        return boto3.client("kms", region_name=AWS_REGION, endpoint_url=self.endpoint,
                            verify=self.ca, aws_access_key_id=AWS_AKID,
                            aws_secret_access_key=AWS_SECRET)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


# ---------------------------------------------------------------------------
# SQL helpers
# ---------------------------------------------------------------------------

def hexs(b):
    return b.hex()


def sql_literal(s):
    return "'" + s.replace("'", "''") + "'"


def load_plaintexts(pg):
    """Table plain(name, pt, ctx) holding every case, loaded through COPY in hex."""
    rows = "".join("%s\t%s\t%s\n" % (c["name"], hexs(c["plain"]), hexs(c["sql_ctx"].encode("utf-8")))
                   for c in CASES)
    pg.psql("CREATE TABLE plain_hex (name text PRIMARY KEY, pt text, ctx text);\n"
            "COPY plain_hex FROM STDIN;\n" + rows + "\\.\n"
            "CREATE TABLE plain AS SELECT name, decode(pt, 'hex') AS pt,"
            " convert_from(decode(ctx, 'hex'), 'UTF8')::jsonb AS ctx FROM plain_hex;\n")


def sql_encrypt_all(pg, provider, key, table, settings=""):
    """kms_encrypt every case in SQL into table(name, ct); returns {name: ct bytes}."""
    stmts = ["SET kms_pg.provider = %s;" % sql_literal(provider), settings,
             "CREATE TABLE %s (name text PRIMARY KEY, ct bytea);" % table]
    for c in CASES:
        stmts.append("SET kms_pg.kms_context_keys = %s;" % sql_literal(c["keys"]))
        if c.get("text"):
            expr = "kms_encrypt_text(convert_from(pt, 'UTF8'), ctx, %s)" % sql_literal(key)
        else:
            expr = "kms_encrypt(pt, ctx, %s)" % sql_literal(key)
        stmts.append("INSERT INTO %s SELECT name, %s FROM plain WHERE name = %s;"
                     % (table, expr, sql_literal(c["name"])))
    stmts.append("RESET kms_pg.kms_context_keys;")
    stmts.append("SELECT name, encode(ct, 'hex') FROM %s ORDER BY name;" % table)
    out = pg.psql("\n".join(stmts))
    res = {}
    for line in out.splitlines():
        name, h = line.split("|")
        res[name] = bytes.fromhex(h)
    return res


def sql_read_python_values(pg, values, table):
    """Load Python-written values; return {name: (decrypt ok, recorded context keys)}."""
    rows = "".join("%s\t%s\n" % (n, hexs(ct)) for n, ct in values.items())
    stmts = ["CREATE TABLE %s (name text PRIMARY KEY, ct bytea);" % table,
             "CREATE TEMP TABLE stage (name text, h text);",
             "COPY stage FROM STDIN;\n" + rows + "\\.",
             "INSERT INTO %s SELECT name, decode(h, 'hex') FROM stage;" % table]
    # one failing value must not hide the others: report each one's SQLSTATE
    stmts.append(
        "CREATE FUNCTION pg_temp.reads(ct bytea, ctx jsonb, pt bytea, is_text boolean) RETURNS text\n"
        "LANGUAGE plpgsql AS $f$ BEGIN\n"
        "  IF is_text THEN RETURN (kms_decrypt_text(ct, ctx) = convert_from(pt, 'UTF8'))::text; END IF;\n"
        "  RETURN (kms_decrypt(ct, ctx) = pt)::text;\n"
        "EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ' ' || SQLERRM; END $f$;")
    texts = ",".join(sql_literal(c["name"]) for c in CASES if c.get("text"))
    stmts.append("SELECT t.name, pg_temp.reads(t.ct, p.ctx, p.pt, t.name IN (%s)),"
                 " array_to_string((kms_ciphertext_info(t.ct)).kms_context_keys, ',')"
                 " FROM %s t JOIN plain p USING (name) ORDER BY t.name;" % (texts, table))
    out = pg.psql("\n".join(stmts))
    res = {}
    for line in out.splitlines():
        name, ok, keys = line.split("|")
        res[name] = (ok, keys)
    return res


def sql_sqlstate(pg, expr):
    out = pg.psql(
        "CREATE OR REPLACE FUNCTION pg_temp.st() RETURNS text LANGUAGE plpgsql AS $f$\n"
        "BEGIN PERFORM %s; RETURN 'none';\n"
        "EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $f$;\n"
        "SELECT pg_temp.st();\n" % expr)
    return out.strip()


# ---------------------------------------------------------------------------
# JavaScript reader
# ---------------------------------------------------------------------------

def js_ready(tmp):
    """npm ci in clients/js (the lock file pins every version); True when usable."""
    js = os.path.join(ROOT, "clients", "js")
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("note: node/npm not installed: the JavaScript reader is not run")
        return False
    if not (os.path.isdir(os.path.join(js, "node_modules", "@aws-sdk", "client-kms"))
            and os.path.isdir(os.path.join(js, "node_modules", "pg"))):
        env = dict(os.environ)        # npm's cache: $HOME/.npm, shared with the other JS step
        if os.environ.get("KMS_NPM_CACHE"):
            env["npm_config_cache"] = os.environ["KMS_NPM_CACHE"]
        r = subprocess.run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=js, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        check("js: npm ci (exact versions from package-lock.json)", r.returncode == 0,
              r.stdout.decode("utf-8", "replace")[-2000:])
        return r.returncode == 0
    return True


def js_decrypt(values, emulator=None, keyring=None, master_key_file=None, wrong=False, extra=None):
    req = {"values": [{"name": n, "ciphertext_hex": hexs(ct), "context": ctx} for n, (ct, ctx) in values.items()]}
    req.update(extra or {})
    env = dict(os.environ)
    if emulator:
        req.update(endpoint=emulator.endpoint, region=AWS_REGION, ca_file=emulator.ca)
        env.update(AWS_ACCESS_KEY_ID=AWS_AKID, AWS_SECRET_ACCESS_KEY=AWS_SECRET)
    if keyring:
        req["keyring"] = keyring
    if master_key_file:
        req["master_key_file"] = master_key_file
    r = subprocess.run(["node", os.path.join(ROOT, "clients", "js", "cli.mjs")],
                       input=json.dumps(req).encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env, timeout=60)
    out = {}
    for line in r.stdout.decode().splitlines():
        o = json.loads(line)
        out[o["name"]] = o
    if not out:
        out["<none>"] = {"error": r.stderr.decode("utf-8", "replace")[-2000:]}
    return out


# ---------------------------------------------------------------------------
# The tests, once per provider
# ---------------------------------------------------------------------------

def run_provider(label, pg, key, py_opts, js_opts, tmp, use_js, kms_client=None):
    sqlct = sql_encrypt_all(pg, label, key, "sqlct_" + label)
    check("%s: SQL wrote every case" % label, sorted(sqlct) == sorted(c["name"] for c in CASES),
          repr(sorted(sqlct)))
    guarded("%s: v2 built from the spec" % label, v2_self_built, label, pg, sqlct, py_opts, js_opts, use_js,
            kms_client=kms_client)
    guarded("%s: v2 written by SQL" % label, v2_from_sql, label, pg, key, py_opts, js_opts, use_js,
            kms_client=kms_client)

    # SQL -> Python
    for c in CASES:
        ct = sqlct.get(c["name"])
        if ct is None:
            continue
        env = kpc.parse(ct)
        check("%s: %s: SQL recorded provider %s" % (label, c["name"], label),
              env.provider == {"local": kpc.PROVIDER_LOCAL, "aws": kpc.PROVIDER_AWS}[label], repr(env))
        expect_keys = sorted(k.encode("utf-8") for k in c["keys"].split(",") if k and k in c["py_ctx"])
        check("%s: %s: recorded provider-context keys" % (label, c["name"]),
              env.context_keys == expect_keys, repr(env.context_keys))
        try:
            got = kpc.decrypt(ct, c["py_ctx"], **py_opts)
            check("%s: %s: SQL -> Python" % (label, c["name"]), got == c["plain"],
                  "plaintext differs (%d bytes)" % len(got))
        except Exception as e:  # noqa: BLE001
            check("%s: %s: SQL -> Python" % (label, c["name"]), False, "%s: %s" % (type(e).__name__, e))
        try:
            got = kpc.decrypt(ct, c["sql_ctx"], **py_opts)
            check("%s: %s: SQL -> Python (context as JSON text)" % (label, c["name"]), got == c["plain"])
        except Exception as e:  # noqa: BLE001
            check("%s: %s: SQL -> Python (context as JSON text)" % (label, c["name"]), False,
                  "%s: %s" % (type(e).__name__, e))
        ok, what = raises(lambda: kpc.decrypt(ct, wrong_context(c), **py_opts), kpc.AuthenticationError)
        check("%s: %s: Python refuses a wrong context" % (label, c["name"]), ok, what)
        pctx = provider_key_context(c)
        if pctx is not None:
            if kms_client is not None:
                exc = kms_client.exceptions.InvalidCiphertextException
            else:
                exc = kpc.AuthenticationError
            ok, what = raises(lambda: kpc.decrypt(ct, pctx, **py_opts), exc)
            check("%s: %s: the provider refuses a changed provider-context value" % (label, c["name"]),
                  ok, what)

    # a tampered body is refused
    ct = bytearray(sqlct["small"])
    ct[-20] ^= 1
    ok, what = raises(lambda: kpc.decrypt(bytes(ct), CASES[1]["py_ctx"], **py_opts), kpc.AuthenticationError)
    check("%s: Python refuses an altered body" % label, ok, what)

    # SQL -> JavaScript
    if use_js:
        values = {c["name"]: (sqlct[c["name"]], c["sql_ctx"]) for c in CASES if c["name"] in sqlct}
        res = js_decrypt(values, **js_opts)
        for c in CASES:
            o = res.get(c["name"], {"error": "no answer: %r" % res.get("<none>")})
            check("%s: %s: SQL -> JavaScript" % (label, c["name"]),
                  o.get("plaintext_hex") == hexs(c["plain"]), o.get("error", "plaintext differs"))
        # the JS reader with objects whose numbers are JS numbers, and a wrong context
        c = CASES[1]
        res = js_decrypt({"wrong": (sqlct["small"], json.dumps(wrong_context(c)))}, **js_opts)
        check("%s: JavaScript refuses a wrong context" % label,
              res.get("wrong", {}).get("kind") == "AuthenticationError", repr(res))

    # Python -> SQL
    pyct = {}
    for c in CASES:
        keys = [k for k in c["keys"].split(",") if k]
        try:
            pyct[c["name"]] = kpc.encrypt(c["plain"], c["py_ctx"], key, kms_context_keys=keys,
                                          **({"kms_client": kms_client} if kms_client else py_opts))
        except Exception as e:  # noqa: BLE001
            check("%s: %s: Python encrypt" % (label, c["name"]), False, "%s: %s" % (type(e).__name__, e))
    for n, ct in pyct.items():
        if kpc.parse(ct).provider != {"local": kpc.PROVIDER_LOCAL, "aws": kpc.PROVIDER_AWS}[label]:
            check("%s: %s: Python recorded provider %s" % (label, n, label), False)
    res = sql_read_python_values(pg, pyct, "pyct_" + label)
    for c in CASES:
        if c["name"] not in pyct:
            continue
        ok, keys = res.get(c["name"], ("no row", None))
        check("%s: %s: Python -> SQL" % (label, c["name"]), ok == "true", ok)
        expect = ",".join(sorted(k for k in c["keys"].split(",") if k and k in c["py_ctx"]))
        check("%s: %s: Python records the provider-context keys" % (label, c["name"]), keys == expect,
              "%r != %r" % (keys, expect))
    st = sql_sqlstate(pg, "kms_decrypt(ct, '{\"tenant\": \"acme\", \"id\": 43}') FROM pyct_%s WHERE name = 'small'"
                      % label)
    check("%s: SQL refuses a Python value under a wrong context (22000)" % label, st == "22000", st)
    st = sql_sqlstate(pg, "kms_decrypt(ct, '{\"tenant\": \"acme\", \"id\": 42.0}') FROM pyct_%s WHERE name = 'small'"
                      % label)
    check("%s: SQL reads a Python value with the number spelt 42.0" % label, st == "none", st)

    # Python -> JavaScript (a third pair of implementations)
    if use_js:
        res = js_decrypt({"py-numbers": (pyct["numbers-booleans"], CASES[4]["sql_ctx"])}, **js_opts)
        check("%s: Python -> JavaScript (numbers and booleans)" % label,
              res.get("py-numbers", {}).get("plaintext_hex") == hexs(CASES[4]["plain"]), repr(res)[:300])
    return pyct


def reference_encrypt(kms, key, plaintext, context):
    """The envelope encryption of the reference text (kms-overview.txt), verbatim in behaviour."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    resp = kms.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=context)
    dek_plain, dek_encrypted = resp["Plaintext"], resp["CiphertextBlob"]
    nonce = os.urandom(12)
    ct = AESGCM(dek_plain).encrypt(nonce, plaintext, None)
    return {"ciphertext": base64.b64encode(nonce + ct).decode(),
            "encrypted_dek": base64.b64encode(dek_encrypted).decode(),
            "context": context}


def run_import(pg, kms):
    ref_ctx = {"tenant": "acme", "purpose": "import", "row": "7"}
    plain = "imported – ünïcode".encode("utf-8")
    blob = reference_encrypt(kms, "alias/interop", plain, ref_ctx)
    new_ctx = {"tenant": "acme", "purpose": "import", "row": 7, "column": "ssn"}
    try:
        ct = kpc.import_reference_envelope(json.dumps(blob), kms, context=new_ctx)
    except Exception as e:  # noqa: BLE001
        check("import: reference envelope -> kms_pg", False, "%s: %s" % (type(e).__name__, e))
        return
    env = kpc.parse(ct)
    check("import: the wrapped data key is re-used as it is",
          env.wrapped == base64.b64decode(blob["encrypted_dek"]))
    check("import: the envelope's context keys are the provider-context keys",
          env.context_keys == [b"purpose", b"row", b"tenant"], repr(env.context_keys))
    check("import: a fresh nonce", env.nonce != base64.b64decode(blob["ciphertext"])[:12])
    sql_ctx = json.dumps(new_ctx)
    out = pg.psql("SELECT convert_from(kms_decrypt(decode(%s, 'hex'), %s), 'UTF8') = %s;"
                  % (sql_literal(ct.hex()), sql_literal(sql_ctx), sql_literal(plain.decode("utf-8"))))
    check("import: kms_decrypt reads the imported value", out.strip() == "t", out)
    st = sql_sqlstate(pg, "kms_decrypt(decode(%s, 'hex'), %s)"
                      % (sql_literal(ct.hex()), sql_literal(json.dumps(dict(new_ctx, column="name")))))
    check("import: the imported value is bound to its kms_pg context (22000)", st == "22000", st)
    # a tampered envelope is refused and nothing is produced
    raw = bytearray(base64.b64decode(blob["ciphertext"]))
    raw[14] ^= 1
    bad = dict(blob, ciphertext=base64.b64encode(bytes(raw)).decode())
    ok, what = raises(lambda: kpc.import_reference_envelope(bad, kms, context=new_ctx), kpc.AuthenticationError)
    check("import: a tampered envelope is refused", ok, what)
    # a kms_pg context that disagrees with the envelope's context is refused before any KMS call
    ok, what = raises(lambda: kpc.import_reference_envelope(blob, kms, context=dict(new_ctx, row=8)),
                      kpc.ContextError)
    check("import: a context that contradicts the envelope is refused", ok, what)


def forged_names_hot_and_cold(pg, kms):
    """A value recording other provider-context names than its DEK was wrapped
    under is refused on a cache hit exactly as on a miss (docs/format.md,
    Provider context): the name block is part of the cache's DEK identity."""
    resp = kms.generate_data_key(KeyId="alias/interop", KeySpec="AES_256",
                                 EncryptionContext={"tenant": "acme"})
    dek, blob, key_arn = resp["Plaintext"], resp["CiphertextBlob"], resp["KeyId"]
    ctx = {"tenant": "acme", "row": 1}
    canonical = kpc.canonical_context(ctx)
    # what kms_pg writes: the provider context {tenant}, recorded in the name block
    honest = kpc._seal(dek, kpc._build_header(2, key_arn, [b"tenant"], blob), canonical, b"honest")
    # made by someone holding the DEK: the same wrapped DEK, no names recorded
    forged = kpc._seal(dek, kpc._build_header(2, key_arn, [], blob), canonical, b"forged")

    def dec(ct):
        return "kms_decrypt(decode(%s, 'hex'), %s)" % (sql_literal(ct.hex()), sql_literal(json.dumps(ctx)))

    pg.psql("SELECT kms_cache_flush();")
    cold = sql_sqlstate(pg, dec(forged))
    check("aws: a value recording other names than its DEK's is refused with a cold cache", cold != "none", cold)
    out = pg.psql("SELECT convert_from(%s, 'UTF8');" % dec(honest)).strip()
    check("aws: the honest value decrypts (its DEK is now cached)", out == "honest", out)
    hot = sql_sqlstate(pg, dec(forged))
    check("aws: ... and refused the same way with its DEK cached (%s)" % cold, hot == cold, hot)
    out = pg.psql("SELECT convert_from(%s, 'UTF8');" % dec(honest)).strip()
    check("aws: the honest value still decrypts", out == "honest", out)


def unit_checks():
    """Canonicalisation edge cases the SQL round trips then prove end to end."""
    cv = kpc.canonical_value
    for lit, want in [("1.50", "1.5"), ("100", "100"), ("1e2", "100"), ("-0", "0"), ("0.000", "0"),
                      ("12345678901234567890.123", "12345678901234567890.123"), ("-1.230", "-1.23"),
                      ("1.5e-3", "0.0015"), ("1E+30", "1" + "0" * 30), ("-0.000", "0")]:
        got = cv(D(lit))[1].decode()
        check("python: numeric_normalize(%s) = %s" % (lit, want), got == want, got)
    check("python: booleans", cv(True) == (3, b"true") and cv(False) == (3, b"false"))
    check("python: float 1.5 = Decimal 1.50", cv(1.5) == cv(D("1.50")))
    ok, what = raises(lambda: kpc.canonical_context({"a": None}), kpc.ContextError)
    check("python: null value refused", ok, what)
    ok, what = raises(lambda: kpc.canonical_context({"a": [1]}), kpc.ContextError)
    check("python: array value refused", ok, what)
    ok, what = raises(lambda: kpc.canonical_context([1]), kpc.ContextError)
    check("python: non-object context refused", ok, what)
    ok, what = raises(lambda: kpc.canonical_context({"a": float("nan")}), kpc.ContextError)
    check("python: NaN refused", ok, what)
    for bad, cls in [(b"", kpc.FormatError), (b"\xc5KP", kpc.FormatError), (b"hello world", kpc.FormatError),
                     (b"\xc5KPG\x02" + bytes(40), kpc.FormatError)]:
        ok, what = raises(lambda: kpc.parse(bad), cls)
        check("python: parse refuses %r" % bad[:8], ok, what)


# ---------------------------------------------------------------------------
# Format 2
# ---------------------------------------------------------------------------

V2_SCHEMA = "v2self"     # a registry table of the spec's shape, for values built here


def v2_seal(dek, dek_ref, name_block, canonical, plaintext):
    """A format 2 value, from docs/format.md: magic, 02, the 7-byte reference,
    nonce, AES-256-GCM of the plaintext under AAD = bytes 0..11 || name block ||
    canonical context."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    head = b"\xc5KPG\x02" + dek_ref.to_bytes(7, "big")
    nonce = os.urandom(12)
    return head + nonce + AESGCM(dek).encrypt(nonce, plaintext, head + name_block + canonical)


def v1_dek(env, py_ctx, py_opts, kms_client):
    """The plaintext data key of a parsed v1 value (to build v2 values with it)."""
    pairs = kpc._context_pairs(py_ctx)
    ppairs = kpc._provider_pairs(pairs, env.context_keys)
    if env.provider == kpc.PROVIDER_AWS:
        args = {"CiphertextBlob": env.wrapped, "KeyId": env.key_id}
        if ppairs:
            args["EncryptionContext"] = kpc._aws_context(ppairs)
        return kms_client.decrypt(**args)["Plaintext"]
    return kpc._local_unwrap(py_opts["local_keyring"], py_opts["master_key"], env.key_id, env.wrapped,
                             kpc._serialise(ppairs))


def js_v2(values, js_opts, registry=None, database=None):
    """js_decrypt with a registry map {ref: row} or a database to query."""
    extra = {}
    if registry is not None:
        extra["registry"] = {str(ref): {"provider": r["provider"], "key_id": r["key_id"],
                                        "name_block_hex": hexs(r["name_block"]),
                                        "wrapped_dek_hex": hexs(r["wrapped_dek"])}
                             for ref, r in registry.items()}
    if database is not None:
        extra["database"] = database
    return js_decrypt(values, extra=extra, **js_opts)


def pg_connect(pg):
    import psycopg
    return psycopg.connect(host=pg.tmp, port=pg.port, user="postgres", dbname="interop", autocommit=True)


def v2_self_built(label, pg, sqlct, py_opts, js_opts, use_js, kms_client=None):
    """v2 values built here from SQL-written v1 values' data keys, read by both clients."""
    rows = {}          # dek_ref -> registry row
    values = {}        # case name -> (v2 value, case)
    for c in CASES:
        env = kpc.parse(sqlct[c["name"]])
        dek = v1_dek(env, c["py_ctx"], py_opts, kms_client)
        ref = int.from_bytes(os.urandom(7), "big") or 1
        rows[ref] = {"dek_ref": ref, "provider": env.provider, "key_id": env.key_id,
                     "name_block": env.names_block, "wrapped_dek": env.wrapped}
        values[c["name"]] = (v2_seal(dek, ref, env.names_block, kpc.canonical_context(c["py_ctx"]), c["plain"]),
                             c, ref)
    for name, (v, c, ref) in values.items():
        check("%s: v2 %s: 40 bytes of overhead" % (label, name), len(v) - len(c["plain"]) == 40)
        env = kpc.parse(v)
        check("%s: v2 %s: Python parses the reference" % (label, name), env.version == 2 and env.dek_ref == ref,
              repr(env))
        for how, reg in [("row", rows[ref]), ("4-tuple", tuple(rows[ref][k] for k in
                                                                ("provider", "key_id", "name_block", "wrapped_dek"))),
                         ("lookup function", rows.get)]:
            try:
                got = kpc.decrypt(v, c["py_ctx"], registry=reg, **py_opts)
                check("%s: v2 %s: Python reads it (registry %s)" % (label, name, how), got == c["plain"])
            except Exception as e:  # noqa: BLE001
                check("%s: v2 %s: Python reads it (registry %s)" % (label, name, how), False,
                      "%s: %s" % (type(e).__name__, e))
        ok, what = raises(lambda: kpc.decrypt(v, wrong_context(c), registry=rows.get, **py_opts),
                          kpc.AuthenticationError)
        check("%s: v2 %s: Python refuses a wrong context" % (label, name), ok, what)

    # through a database connection running the one query (psycopg), in a
    # schema of its own so that the extension's registry is not touched
    pg.psql("CREATE SCHEMA IF NOT EXISTS %s;\n"
            "CREATE TABLE IF NOT EXISTS %s.kms_dek_registry (dek_ref bigint PRIMARY KEY CHECK (dek_ref > 0 AND "
            "dek_ref < 72057594037927936), provider smallint NOT NULL, key_id text NOT NULL, name_block bytea "
            "NOT NULL, wrapped_dek bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), "
            "rewrapped_at timestamptz);\n" % (V2_SCHEMA, V2_SCHEMA)
            + "".join("INSERT INTO %s.kms_dek_registry (dek_ref, provider, key_id, name_block, wrapped_dek) "
                      "VALUES (%d, %d, %s, decode('%s', 'hex'), decode('%s', 'hex'));\n"
                      % (V2_SCHEMA, ref, r["provider"], sql_literal(r["key_id"]), hexs(r["name_block"]),
                         hexs(r["wrapped_dek"])) for ref, r in rows.items()))
    with pg_connect(pg) as conn:
        for name, (v, c, ref) in values.items():
            try:
                got = kpc.decrypt(v, c["py_ctx"], registry=conn, registry_schema=V2_SCHEMA, **py_opts)
                check("%s: v2 %s: Python reads it (psycopg connection)" % (label, name), got == c["plain"])
            except Exception as e:  # noqa: BLE001
                check("%s: v2 %s: Python reads it (psycopg connection)" % (label, name), False,
                      "%s: %s" % (type(e).__name__, e))
        c = CASES[1]
        v = bytearray(values["small"][0])
        v[11] ^= 1                        # another reference: no row
        ok, what = raises(lambda: kpc.decrypt(bytes(v), c["py_ctx"], registry=conn, registry_schema=V2_SCHEMA,
                                              **py_opts), kpc.KeyUnavailableError)
        check("%s: v2: Python reports a reference without a registry row" % label, ok, what)

    # malformed values and rows
    small, c, ref = values["small"]
    row = rows[ref]
    for what_bad, bad, reg in [
            ("39 bytes", small[:12] + small[12:12 + 27], row),
            ("a 5-byte value", small[:5], row),
            ("reference 0", small[:5] + bytes(7) + small[12:], dict(row, dek_ref=None)),
            ("a name block out of order", small, dict(row, name_block=b"\x02\x06tenant\x02id")),
            ("a repeated name", small, dict(row, name_block=b"\x02\x02id\x02id")),
            ("bytes after the name block", small, dict(row, name_block=b"\x00\x00")),
            ("a local wrapped DEK of 64 bytes", small, dict(row, provider=1, wrapped_dek=bytes(64)))]:
        ok, what = raises(lambda: kpc.decrypt(bad, c["py_ctx"], registry=reg, **py_opts), kpc.FormatError)
        check("%s: v2: Python refuses %s" % (label, what_bad), ok, what)
    ok, what = raises(lambda: kpc.decrypt(small[:4] + b"\x03" + small[5:], c["py_ctx"], registry=row, **py_opts),
                      kpc.FormatError)
    check("%s: v2: Python refuses format version 3" % label, ok, what)
    ok, what = raises(lambda: kpc.decrypt(small, c["py_ctx"], registry=lambda r: None, **py_opts),
                      kpc.KeyUnavailableError)
    check("%s: v2: Python refuses a value whose row the lookup lacks" % label, ok, what)
    other = small[:5] + (ref ^ 1).to_bytes(7, "big") + small[12:]
    ok, what = raises(lambda: kpc.decrypt(other, c["py_ctx"], registry=dict(row, dek_ref=None), **py_opts),
                      kpc.AuthenticationError)
    check("%s: v2: the reference is authenticated (a value relabelled to another reference fails)" % label,
          ok, what)
    ok, what = raises(lambda: kpc.decrypt(small, c["py_ctx"], registry=dict(row, dek_ref=ref ^ 1), **py_opts),
                      kpc.KeyUnavailableError)
    check("%s: v2: Python refuses the row of another reference" % label, ok, what)

    if not use_js:
        return
    jsvals = {n: (v, c["sql_ctx"]) for n, (v, c, _) in values.items()}
    res = js_v2(jsvals, js_opts, registry=rows)
    for n, (v, c, _) in values.items():
        o = res.get(n, {"error": "no answer: %r" % res.get("<none>")})
        check("%s: v2 %s: JavaScript reads it (registry rows)" % (label, n),
              o.get("plaintext_hex") == hexs(c["plain"]), o.get("error", "plaintext differs"))
    db = {"host": pg.tmp, "port": pg.port, "user": "postgres", "database": "interop", "schema": V2_SCHEMA}
    res = js_v2(jsvals, js_opts, database=db)
    for n, (v, c, _) in values.items():
        o = res.get(n, {"error": "no answer: %r" % res.get("<none>")})
        check("%s: v2 %s: JavaScript reads it (pg connection, the one query)" % (label, n),
              o.get("plaintext_hex") == hexs(c["plain"]), o.get("error", "plaintext differs"))
    bad_rows = {ref: dict(row, name_block=b"\x02\x06tenant\x02id")}
    tests = {
        "js-short": ((small[:39], c["sql_ctx"]), rows, "FormatError"),
        "js-ref0": ((small[:5] + bytes(7) + small[12:], c["sql_ctx"]), rows, "FormatError"),
        "js-version3": ((small[:4] + b"\x03" + small[5:], c["sql_ctx"]), rows, "FormatError"),
        "js-local64": ((small, c["sql_ctx"]), {ref: dict(row, provider=1, wrapped_dek=bytes(64))}, "FormatError"),
        "js-unsorted": ((small, c["sql_ctx"]), bad_rows, "FormatError"),
        "js-repeated": ((small, c["sql_ctx"]), {ref: dict(row, name_block=b"\x02\x02id\x02id")}, "FormatError"),
        "js-norow": ((small[:11] + bytes([small[11] ^ 1]) + small[12:], c["sql_ctx"]), rows, "KeyUnavailableError"),
        "js-wrongctx": ((small, json.dumps(wrong_context(c))), rows, "AuthenticationError"),
    }
    for n, (val, reg, kind) in tests.items():
        o = js_v2({n: val}, js_opts, registry=reg).get(n, {})
        check("%s: v2: JavaScript refuses %s (%s)" % (label, n[3:], kind), o.get("kind") == kind, repr(o)[:300])


def ext_schema(pg):
    return pg.psql("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
                   " WHERE e.extname = 'kms_pg';").strip()


def v2_from_sql(label, pg, key, py_opts, js_opts, use_js, kms_client=None):
    """Format 2 values written by kms_encrypt (kms_pg.format = 2) are read by
    both clients through the registry query on a database connection, before
    and after the registry rows of their key are rewrapped."""
    if pg.psql("SELECT to_regclass('kms_dek_registry') IS NOT NULL;").strip() != "t":
        print("note: this kms_pg build has no DEK registry: SQL-written format 2 values are not tested")
        return
    schema = ext_schema(pg)
    sqlct = sql_encrypt_all(pg, label, key, "sqlv2_" + label, settings="SET kms_pg.format = 2;")
    check("%s: v2 from SQL: every case written" % label, sorted(sqlct) == sorted(c["name"] for c in CASES))

    def read_all(what):
        with pg_connect(pg) as conn:
            for c in CASES:
                ct = sqlct.get(c["name"])
                if ct is None:
                    continue
                try:
                    got = kpc.decrypt(ct, c["py_ctx"], registry=conn, registry_schema=schema, **py_opts)
                    check("%s: v2 from SQL %s: Python reads it%s" % (label, c["name"], what), got == c["plain"])
                except Exception as e:  # noqa: BLE001
                    check("%s: v2 from SQL %s: Python reads it%s" % (label, c["name"], what), False,
                          "%s: %s" % (type(e).__name__, e))
        if use_js:
            db = {"host": pg.tmp, "port": pg.port, "user": "postgres", "database": "interop", "schema": schema}
            res = js_v2({n: (ct, c["sql_ctx"]) for c in CASES for n, ct in sqlct.items() if n == c["name"]},
                        js_opts, database=db)
            for c in CASES:
                o = res.get(c["name"], {"error": "no answer: %r" % res.get("<none>")})
                check("%s: v2 from SQL %s: JavaScript reads it%s" % (label, c["name"], what),
                      o.get("plaintext_hex") == hexs(c["plain"]), o.get("error", "plaintext differs"))

    for c in CASES:
        ct = sqlct.get(c["name"])
        if ct is None:
            continue
        env = kpc.parse(ct)
        check("%s: v2 from SQL %s: format 2, 40 bytes of overhead" % (label, c["name"]),
              env.version == 2 and len(ct) == len(c["plain"]) + 40, "version %d, %d bytes" % (env.version, len(ct)))
        ok, what = raises(lambda: kpc.decrypt(ct, wrong_context(c), registry=lambda r: pg_row(pg, schema, r),
                                              **py_opts), kpc.AuthenticationError)
        check("%s: v2 from SQL %s: Python refuses a wrong context" % (label, c["name"]), ok, what)
    read_all("")
    # psycopg2 too (bytea comes back as a memoryview there)
    import psycopg2
    conn2 = psycopg2.connect(host=pg.tmp, port=pg.port, user="postgres", dbname="interop")
    try:
        c = CASES[2]
        got = kpc.decrypt(sqlct[c["name"]], c["py_ctx"], registry=conn2, registry_schema=schema, **py_opts)
        check("%s: v2 from SQL %s: Python reads it (psycopg2 connection)" % (label, c["name"]), got == c["plain"])
    finally:
        conn2.close()
    # the SQLSTATEs docs/format.md gives for a value without its row, and malformed values
    small = sqlct["small"]
    bogus = (kpc.parse(small).dek_ref ^ 2)
    row = pg_row(pg, schema, kpc.parse(small).dek_ref)
    pg.psql("INSERT INTO %s.kms_dek_registry (dek_ref, provider, key_id, name_block, wrapped_dek)"
            " VALUES (%d, %d, %s, '\\x020674656e616e74026964'::bytea, decode('%s', 'hex'));"
            % (schema, bogus, row[0], sql_literal(row[1]), hexs(row[3])))
    bogus2 = (kpc.parse(small).dek_ref ^ 4)
    pg.psql("INSERT INTO %s.kms_dek_registry (dek_ref, provider, key_id, name_block, wrapped_dek)"
            " VALUES (%d, 1, %s, '\\x00'::bytea, decode('%s', 'hex'));"
            % (schema, bogus2, sql_literal(row[1]), "01" * 64))
    for what, bad, want in [("a registry row whose name block is out of order",
                             small[:5] + bogus.to_bytes(7, "big") + small[12:], "XX001"),
                            ("a registry row with a local wrapped DEK of 64 bytes",
                             small[:5] + bogus2.to_bytes(7, "big") + small[12:], "XX001"),
                            ("format version 3", small[:4] + b"\x03" + small[5:], "0A000"),("a reference without a registry row",
                             small[:5] + (kpc.parse(small).dek_ref ^ 1).to_bytes(7, "big") + small[12:], "42704"),
                            ("39 bytes", small[:39], "XX001"),
                            ("reference 0", small[:5] + bytes(7) + small[12:], "XX001")]:
        st = sql_sqlstate(pg, "kms_decrypt(decode('%s', 'hex'), %s)" % (hexs(bad), sql_literal(CASES[1]["sql_ctx"])))
        check("%s: v2: kms_decrypt refuses %s (%s)" % (label, what, want), st == want, st)
    st = sql_sqlstate(pg, "kms_decrypt(decode('%s', 'hex'), %s)"
                      % (hexs(small), sql_literal(json.dumps(wrong_context(CASES[1])))))
    check("%s: v2: kms_decrypt refuses a wrong context (22000)" % label, st == "22000", st)
    pg.psql("DELETE FROM %s.kms_dek_registry WHERE dek_ref IN (%d, %d);" % (schema, bogus, bogus2))

    # rotation in O(DEKs): the registry rows of the key are rewrapped, the
    # values stay byte for byte, and both clients read them with the new rows
    table = "sqlv2_" + label
    old = pg.psql("SELECT DISTINCT key_id FROM %s.kms_dek_registry r JOIN %s t"
                  " ON r.dek_ref = ('x' || substr(encode(t.ct, 'hex'), 11, 14))::bit(56)::bigint;"
                  % (schema, table)).strip()
    if label == "local":
        new = pg.psql("SELECT kms_create_key('alias/interop-v2-rotated');").strip()
    else:
        new = "alias/interop-other"
    before = pg.psql("SELECT string_agg(encode(ct, 'hex'), ',' ORDER BY name) FROM %s;" % table)
    out = pg.psql("SET kms_pg.provider = %s; SELECT deks, rewrapped, skipped FROM kms_rotate_key_registry(%s, %s);"
                  % (label, sql_literal(old), sql_literal(new))).strip()
    check("%s: v2: kms_rotate_key_registry rewraps the rows (deks|rewrapped|skipped %s)" % (label, out),
          out.split("|")[1] != "0", out)
    after = pg.psql("SELECT string_agg(encode(ct, 'hex'), ',' ORDER BY name) FROM %s;" % table)
    check("%s: v2: the values are unchanged by the rotation" % label, before == after)
    if label == "local":
        keyring, _ = export_keyring(pg, os.path.dirname(py_opts["local_keyring"]), "keyring_v2_rotated.json")
        py_opts = dict(py_opts, local_keyring=keyring)
        js_opts = dict(js_opts, keyring=keyring)
    moved = pg.psql("SELECT count(*) FROM %s.kms_dek_registry r JOIN %s t"
                    " ON r.dek_ref = ('x' || substr(encode(t.ct, 'hex'), 11, 14))::bit(56)::bigint"
                    " WHERE r.key_id <> %s AND r.rewrapped_at IS NOT NULL;" % (schema, table, sql_literal(old)))
    check("%s: v2: registry rows of the values now under the new key" % label, moved.strip() != "0", moved)
    read_all(" after the registry rotation")


def pg_row(pg, schema, ref):
    """The registry row of ref through the document's query, by psql (a lookup function)."""
    q = doc_block("v2-registry-query").strip().replace("kms_dek_registry", "%s.kms_dek_registry" % schema)
    out = pg.psql("PREPARE q(bigint) AS %s;\nEXECUTE q(%d);" % (q, ref)).strip()
    if not out:
        return None
    p, kid, nb, w = out.split("|")
    return (int(p), kid, bytes.fromhex(nb[2:]), bytes.fromhex(w[2:]))


def v2_example_in_sql(tmp):
    """kms_pg itself opens the worked v2 example of docs/format.md: a cluster
    whose master key is the example's, the keyring example's catalog rows and
    the example's registry row inserted as they are."""
    ns = {}
    exec(compile(doc_block("v2-worked-example"), "v2-worked-example", "exec"), ns)
    d = os.path.join(tmp, "example")
    os.mkdir(d, 0o700)
    ex = Cluster(d, {}, "", master_key=bytes(range(32)).hex())
    try:
        row = ns["row"]
        out = ex.psql(
            "INSERT INTO kms_local_key (key_id, alias, created) VALUES (%s, 'alias/docs', now());\n"
            "INSERT INTO kms_local_key_version (key_id, version, created, master_key, material) VALUES (%s, 1, now(),"
            " 'c950a8bad0c65928', '\\xa1a2a3a4a5a6a7a8a9aaabacb96957ee7c19430a145158d091981c66c12865345c4ed6ab33c25b45d4e86dde"
            "5d7316d07966f33c9adeca516a4c99c9');\n"
            "INSERT INTO kms_dek_registry (dek_ref, provider, key_id, name_block, wrapped_dek) VALUES"
            " (%d, 1, %s, decode('%s', 'hex'), decode('%s', 'hex'));\n"
            "SELECT kms_decrypt_text(decode('%s', 'hex'), '{\"tenant\": \"acme\", \"id\": 42}');\n"
            % (sql_literal(row["key_id"]), sql_literal(row["key_id"]), ns["ref"], sql_literal(row["key_id"]),
               hexs(row["name_block"]), hexs(row["wrapped_dek"]), hexs(ns["value"]))).strip()
        check("v2: kms_decrypt_text opens the worked example of docs/format.md", out == "hello", out)
        info = ex.psql("SELECT format_version, overhead_bytes FROM kms_ciphertext_info(decode('%s', 'hex'));"
                       % hexs(ns["value"])).strip()
        check("v2: kms_ciphertext_info of the worked example: version 2, 40 bytes of overhead", info == "2|40", info)
        st = ex.psql("CREATE FUNCTION pg_temp.st() RETURNS text LANGUAGE plpgsql AS $f$ BEGIN "
                     "PERFORM kms_decrypt_text(decode('%s', 'hex'), '{\"tenant\": \"acme\", \"id\": 43}'); "
                     "RETURN 'none'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $f$; SELECT pg_temp.st();"
                     % hexs(ns["value"])).strip()
        check("v2: ... and refuses it under another context (22000)", st == "22000", st)
    finally:
        ex.stop()


def v2_format_example(tmp, use_js):
    """The worked v2 example of docs/format.md runs as written; both clients
    read its value with its row and the keyring example's key; the document's
    registry query is the one both clients run."""
    code = doc_block("v2-worked-example")
    r = subprocess.run([PYTHON, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    check("v2: the worked example of docs/format.md runs", r.returncode == 0,
          r.stdout.decode("utf-8", "replace")[-800:])
    query = doc_block("v2-registry-query").strip()
    check("v2: the registry query of docs/format.md is Python's",
          kpc.REGISTRY_QUERY.format(table="kms_dek_registry").replace("%s", "$1") == query, query)
    with open(os.path.join(ROOT, "clients", "js", "kms_pg_reader.mjs"), encoding="utf-8") as f:
        check("v2: ... and the JavaScript reader's", ('"%s"' % query) in f.read())
    ns = {}
    exec(compile(code, "v2-worked-example", "exec"), ns)   # the example's own row and value
    keyring = {"format": "kms_pg local keyring catalog", "version": 1, "keys": [{
        "key_id": "4d66a3c9-fb6f-49c2-b65c-8681cea6f2fe", "alias": None, "enabled": True,
        "versions": [{"version": 1, "master_key": "c950a8bad0c65928",
                      "material": "a1a2a3a4a5a6a7a8a9aaabacb96957ee7c19430a145158d091981c66"
                                  "c12865345c4ed6ab33c25b45d4e86dde5d7316d07966f33c9adeca516a4c99c9"}]}]}
    ctx = {"tenant": "acme", "id": 42}
    got = kpc.decrypt(ns["value"], ctx, local_keyring=keyring, master_key=bytes(range(32)),
                      registry=dict(ns["row"], dek_ref=ns["ref"]))
    check("v2: Python reads the worked example", got == b"hello", repr(got))
    if use_js:
        kr = os.path.join(tmp, "v2_example_keyring.json")
        with open(kr, "w") as f:
            json.dump(keyring, f)
        mk = os.path.join(tmp, "v2_example_master.key")
        with open(mk, "w") as f:
            f.write(bytes(range(32)).hex() + "\n")
        res = js_v2({"example": (ns["value"], json.dumps(ctx))}, {"keyring": kr, "master_key_file": mk},
                    registry={ns["ref"]: ns["row"]})
        check("v2: JavaScript reads the worked example",
              res.get("example", {}).get("plaintext_hex") == b"hello".hex(), repr(res)[:300])


def guarded(name, fn, *args, **kwargs):
    """Run one part; an unexpected exception fails it without hiding the other parts."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        check(name, False, "%s: %s" % (type(e).__name__, e))
        return None


def doc_block(marker):
    """The fenced code block that follows <!-- marker --> in docs/format.md."""
    with open(os.path.join(ROOT, "docs", "format.md"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"<!-- %s -->\n```\w*\n(.*?)```" % re.escape(marker), text, re.S)
    if not m:
        raise RuntimeError("docs/format.md has no block %s" % marker)
    return m.group(1)


def export_keyring(pg, tmp, name="keyring_export.json"):
    """The keyring export, made with the query of docs/format.md."""
    doc = json.loads(pg.psql(doc_block("keyring-export-sql")))
    path = os.path.join(tmp, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, json.dumps(doc).encode())
    os.close(fd)
    return path, doc


def local_format_example():
    """The worked example of docs/format.md unwraps (run as written), and the client agrees."""
    code = doc_block("keyring-material-example")
    r = subprocess.run([PYTHON, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    check("local: the keyring material example of docs/format.md runs", r.returncode == 0,
          r.stdout.decode("utf-8", "replace")[-500:])
    check("local: the example's fingerprint is the client's",
          kpc.master_key_fingerprint(bytes(range(32))) == "c950a8bad0c65928")


def local_keyring_faults(pg, tmp, keyring, ct, use_js):
    """A wrong master key and an altered catalog row are refused by both clients."""
    other = os.urandom(32).hex()
    ok, what = raises(lambda: kpc.decrypt(ct, CASES[1]["py_ctx"], local_keyring=keyring, master_key=other),
                      kpc.KeyUnavailableError)
    check("local: Python refuses a wrong master key", ok, what)
    ok, what = raises(lambda: kpc.decrypt(ct, CASES[1]["py_ctx"], local_keyring=keyring),
                      kpc.KeyUnavailableError)
    check("local: Python needs the master key", ok, what)
    with open(keyring) as f:
        doc = json.load(f)
    m = bytearray.fromhex(doc["keys"][0]["versions"][0]["material"])
    m[20] ^= 1
    doc["keys"][0]["versions"][0]["material"] = m.hex()
    altered = os.path.join(tmp, "keyring_altered.json")
    with open(altered, "w") as f:
        json.dump(doc, f)
    ok, what = raises(lambda: kpc.decrypt(ct, CASES[1]["py_ctx"], local_keyring=altered, master_key=pg.master_key),
                      kpc.AuthenticationError)
    check("local: Python refuses an altered keyring row", ok, what)
    if use_js:
        wrong_mk = os.path.join(tmp, "wrong_master.key")
        with open(wrong_mk, "w") as f:
            f.write(other + "\n")
        res = js_decrypt({"wrong-mk": (ct, CASES[1]["sql_ctx"])}, keyring=keyring, master_key_file=wrong_mk)
        check("local: JavaScript refuses a wrong master key",
              "wrong kms_pg master key" in res.get("wrong-mk", {}).get("error", ""), repr(res)[:300])
        res = js_decrypt({"altered": (ct, CASES[1]["sql_ctx"])}, keyring=altered, master_key_file=pg.master_key_file)
        check("local: JavaScript refuses an altered keyring row",
              res.get("altered", {}).get("kind") == "AuthenticationError", repr(res)[:300])


def local_rotation(pg, tmp):
    """After kms_rotate_key, new values use version 2 and read in Python with a new export."""
    pg.psql("SELECT kms_rotate_key('alias/interop');")
    ct = sql_encrypt_all(pg, "local", "alias/interop", "sqlct_local_rotated")["small"]
    keyring, _ = export_keyring(pg, tmp, "keyring_rotated.json")
    check("local: after kms_rotate_key, a new value reads in Python",
          kpc.decrypt(ct, CASES[1]["py_ctx"], local_keyring=keyring, master_key=pg.master_key) == CASES[1]["plain"])
    check("local: the new value uses key version 2",
          int.from_bytes(kpc.parse(ct).wrapped[1:5], "big") == 2)
    # master key rotation changes no value: a new master key, rows rewrapped, an export under it
    new_mk = os.urandom(32).hex()
    new_file = os.path.join(tmp, "master2.key")
    fd = os.open(new_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (new_mk + "\n").encode())
    os.close(fd)
    pg.psql("ALTER SYSTEM SET kms_pg.master_key_file = '%s';"
            "ALTER SYSTEM SET kms_pg.previous_master_key_file = '%s'; SELECT pg_reload_conf();"
            % (new_file, pg.master_key_file))
    time.sleep(1)
    versions = pg.psql("SELECT count(*) FROM kms_local_key_version;").strip()
    n = pg.psql("SELECT kms_rotate_master_key();").strip()
    check("local: kms_rotate_master_key() rewraps every key version (%s)" % versions, n == versions, n)
    keyring, _ = export_keyring(pg, tmp, "keyring_new_master.json")
    check("local: after a master key rotation the client reads with the new master key",
          kpc.decrypt(ct, CASES[1]["py_ctx"], local_keyring=keyring, master_key=new_mk) == CASES[1]["plain"])
    ok, what = raises(lambda: kpc.decrypt(ct, CASES[1]["py_ctx"], local_keyring=keyring, master_key=pg.master_key),
                      kpc.KeyUnavailableError)
    check("local: and no longer with the old one", ok, what)


def main():
    global passed, failed
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="kms_pg_interop.")
    os.chmod(tmp, 0o700)
    pg = emu = None
    aws = os.path.exists(os.path.join(ROOT, "test", "emulator", "kms_emulator.py"))
    try:
        unit_checks()
        conf = ""
        env = {}
        if aws:
            emu = Emulator(tmp)
            conf = ("kms_pg.region = '%s'\nkms_pg.endpoint = '%s'\nkms_pg.ca_file = '%s'\n"
                    "kms_pg.credential_sources = 'env'\n" % (AWS_REGION, emu.endpoint, emu.ca))
            env = {"AWS_ACCESS_KEY_ID": AWS_AKID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET}
        pg = Cluster(tmp, env, conf)
        load_plaintexts(pg)
        use_js = js_ready(tmp)

        if pg.psql("SELECT to_regclass('kms_dek_registry') IS NOT NULL;").strip() == "t":
            guarded("v2: the worked example in SQL", v2_example_in_sql, tmp)

        # local provider
        guarded("local: format example", local_format_example)
        guarded("v2: format example", v2_format_example, tmp, use_js)
        pg.psql("SELECT kms_create_key('alias/interop', 'interop tests');")
        keyring, doc = export_keyring(pg, tmp)
        check("local: the keyring export holds the key, wrapped",
              len(doc["keys"]) == 1 and len(doc["keys"][0]["versions"][0]["material"]) == 120, repr(doc)[:200])
        check("local: the export names the master key by its fingerprint",
              doc["keys"][0]["versions"][0]["master_key"] == kpc.master_key_fingerprint(pg.master_key))
        pyct = guarded("local: interop", run_provider, "local", pg, "alias/interop",
                       {"local_keyring": keyring, "master_key": pg.master_key},
                       {"keyring": keyring, "master_key_file": pg.master_key_file}, tmp, use_js)
        if pyct:
            guarded("local: keyring faults", local_keyring_faults, pg, tmp, keyring, pyct["small"], use_js)
        guarded("local: rotation", local_rotation, pg, tmp)

        # AWS provider against the emulator
        if aws:
            have = pg.psql("SELECT count(*) FROM pg_proc WHERE proname = 'kms_aws_describe_key';").strip()
            if have != "1":
                print("note: this kms_pg build has no AWS provider: the AWS interop part is not run")
            else:
                kms = emu.client()
                guarded("aws: interop", run_provider, "aws", pg, "alias/interop", {"kms_client": kms},
                        {"emulator": emu}, tmp, use_js, kms_client=kms)
                guarded("aws: import", run_import, pg, kms)
                guarded("aws: forged name block", forged_names_hot_and_cold, pg, kms)
        else:
            print("note: test/emulator/kms_emulator.py is missing: the AWS interop part is not run")
    except Exception as e:  # noqa: BLE001
        check("harness", False, "%s: %s" % (type(e).__name__, e))
        log = os.path.join(tmp, "server.log")
        if os.path.exists(log):
            with open(log) as f:
                sys.stdout.write(f.read()[-3000:])
    finally:
        if pg:
            pg.stop()
        if emu:
            emu.stop()
        if failed == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept for inspection: %s" % tmp)
    print("interop took %.1f s" % (time.time() - t0))
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
