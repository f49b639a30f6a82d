#!/usr/bin/python3
"""kms_pg benchmark driver (started by bench/run; Python standard library only).

Runs every case of docs/benchmarks.md in one throwaway cluster, in one run:
initdb, fixed settings, data, then the cases, then results.json, results.csv,
chart.png (gnuplot) and the table on stdout.  It runs as the server user;
bench/run prepares the work directory and copies the outputs to bench/out.

Timing is done inside the server: the procedure bench_run() takes
clock_timestamp() before and after EXECUTE of the case's statement, so
neither connection set-up nor client transfer nor per-row instrumentation
(as EXPLAIN ANALYZE would add) is measured.  Statements aggregate with
sum(length(...)) so one row travels back.  Repetitions are interleaved
(rep 1 of every case, then rep 2, ...) so that load from other processes
on the machine spreads over all cases rather than hitting one of them,
which keeps the ratios of one run comparable.
"""

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

# The PostgreSQL to measure: PG_BIN, or the bindir of PG_CONFIG / pg_config
# (scripts/common.sh sets both for the version chosen with --pg N).
PG_BIN = os.environ.get("PG_BIN") or subprocess.run(
    [os.environ.get("PG_CONFIG", "pg_config"), "--bindir"],
    capture_output=True, text=True, check=True).stdout.strip()
PY = "/usr/bin/python3"

# Fixed server settings, printed with the results.
SETTINGS = [
    ("shared_preload_libraries", "'kms_pg'"),
    ("jit", "off"),
    ("max_parallel_workers_per_gather", "0"),
    ("shared_buffers", "'256MB'"),
    ("synchronous_commit", "off"),
    ("fsync", "off"),                       # benchmark only: never in production
    ("full_page_writes", "off"),            # benchmark only (follows from fsync = off)
    ("autovacuum", "off"),                  # the bench vacuums explicitly between reps
    ("max_wal_size", "'8GB'"),              # no checkpoint in the middle of a case
    ("checkpoint_timeout", "'1h'"),
    ("work_mem", "'64MB'"),
    ("max_connections", "40"),
    # benchmark only: a fixed local master key printed by a command
    ("kms_pg.master_key_command", "'/bin/echo 1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100'"),
]

KEY_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
PGC_KEY = "'\\x%s'::bytea" % KEY_HEX          # AES-256 key for pgcrypto
PASS = "'bench passphrase'"
CTX = "jsonb_build_object('id', i, 'tenant', i % 2)"
# the same context as key, value arguments (same canonical bytes, no jsonb per row)
PAIRS = "'id', i, 'tenant', i % 2"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


class Cluster:
    def __init__(self, workdir, env_extra=None):
        self.workdir = workdir
        self.data = os.path.join(workdir, "data")
        self.sock = workdir
        self.port = 54000 + os.getpid() % 1000
        self.env = dict(os.environ)
        self.env.update(env_extra or {})
        self.env["PGHOST"] = self.sock
        self.env["PGPORT"] = str(self.port)
        self.env["PGUSER"] = "postgres"
        self.env.pop("PGDATABASE", None)

    def initdb(self):
        subprocess.run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-A", "trust",
                        "-U", "postgres", "-E", "UTF8", "--locale=C"],
                       check=True, stdout=subprocess.DEVNULL, env=self.env)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\n# kms_pg benchmark\n")
            f.write("listen_addresses = ''\n")
            f.write("unix_socket_directories = '%s'\n" % self.sock)
            f.write("port = %d\n" % self.port)
            for k, v in SETTINGS:
                f.write("%s = %s\n" % (k, v))

    def start(self):
        subprocess.run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l",
                        os.path.join(self.workdir, "server.log"), "-w", "start"],
                       check=True, stdout=subprocess.DEVNULL, env=self.env)

    def stop(self):
        subprocess.run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", "fast", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)

    def psql(self, script, db="bench", check=True):
        """Run a script in one fresh session; returns (rc, stdout lines, stderr)."""
        p = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-d", db,
                            "-v", "ON_ERROR_STOP=1", "-f", "-"],
                           input=script, capture_output=True, text=True, env=self.env)
        if check and p.returncode != 0:
            raise BenchError("psql failed (%d): %s\n--- script ---\n%s" %
                             (p.returncode, p.stderr.strip(), script[:2000]))
        return p.returncode, [l for l in p.stdout.splitlines() if l != ""], p.stderr

    def value(self, sql, db="bench", setup=""):
        _, out, _ = self.psql(setup + sql + ";\n", db)
        return out[-1] if out else None

    def timed(self, query, setup="", warm=None):
        """Milliseconds of one execution of query, measured by bench_run()."""
        s = setup
        if warm:
            s += "\\o /dev/null\n%s;\n\\o\n" % warm
        if query.lstrip().upper().startswith("CALL "):
            # A procedure that COMMITs cannot run under EXECUTE in a
            # procedure: time it from a top-level DO block instead.
            s += ("DO $bq$DECLARE t0 timestamptz := clock_timestamp(); BEGIN %s; "
                  "RAISE NOTICE 'bench_ms=%%', 1000 * extract(epoch FROM clock_timestamp() - t0); END $bq$;\n"
                  % query)
            _, _, err = self.psql(s)
            return float(re.findall(r"bench_ms=([0-9.]+)", err)[-1])
        s += "CALL bench_run($bq$%s$bq$, NULL);\n" % query
        _, out, _ = self.psql(s)
        return float(out[-1])

    def timed_cpu(self, query, setup, role, warm):
        """(wall ms, backend CPU ms) of one execution of query as role: wall
        time from bench_run(), CPU time from the backend's own
        /proc/self/schedstat (nanoseconds on a CPU) read just before and
        after, as the superuser the session starts as.  On a loaded machine
        CPU time is the steadier measure: waiting for a core is not in it."""
        s = setup + "SET ROLE %s;\n" % role
        if warm:
            s += "\\o /dev/null\n%s;\n\\o\n" % warm
        read = "RESET ROLE;\nSELECT 'cpu=' || split_part(pg_read_file('/proc/self/schedstat'), ' ', 1);\n"
        s += read + "SET ROLE %s;\nCALL bench_run($bq$%s$bq$, NULL);\n" % (role, query) + read
        _, out, _ = self.psql(s)
        cpu = [int(l[4:]) for l in out if l.startswith("cpu=")]
        wall = [float(l) for l in out if not l.startswith("cpu=")]
        return wall[-1], (cpu[1] - cpu[0]) / 1e6

    def stats(self):
        line = self.value("SELECT generate_calls || ',' || decrypt_calls || ',' || rewrap_calls"
                          " || ',' || coalesced_waits || ',' || call_errors FROM kms_cache_stats")
        g, d, r, c, e = (int(x) for x in line.split(","))
        return {"generate": g, "decrypt": d, "rewrap": r, "coalesced": c, "errors": e}

    def pgbench(self, script_path, clients, extra):
        cmd = [os.path.join(PG_BIN, "pgbench"), "-n", "-c", str(clients),
               "-j", str(min(clients, os.cpu_count() or 1)), "-f", script_path] + extra + ["bench"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if p.returncode != 0:
            raise BenchError("pgbench failed: %s %s" % (p.stdout[-2000:], p.stderr[-2000:]))
        return p.stdout + p.stderr


def delta(a, b):
    return {k: b[k] - a[k] for k in a}


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "reps": values}


# ---------------------------------------------------------------------------
# The AWS provider against the project's emulator (test/emulator).
# ---------------------------------------------------------------------------

class Aws:
    """Starts test/emulator/kms_emulator.py on loopback, if the tree has it,
    and drives its counters and faults through emuctl.py."""

    def __init__(self, root, workdir):
        self.root = root
        self.dir = os.path.join(root, "test", "emulator")
        self.workdir = os.path.join(workdir, "emulator")
        self.proc = None
        self.port = None
        self.reason = None
        self.env = {}
        self.conf = []
        self.key_alias = "alias/bench-aws"

    def available_files(self):
        need = ["kms_emulator.py", "emuctl.py", "make_certs.sh"]
        missing = [f for f in need if not os.path.exists(os.path.join(self.dir, f))]
        if missing:
            self.reason = "emulator not in the tree (%s missing)" % ", ".join(missing)
            return False
        return True

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        certs = os.path.join(self.workdir, "certs")
        subprocess.run(["sh", os.path.join(self.dir, "make_certs.sh"), certs], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pf = os.path.join(self.workdir, "port")
        akid, secret = "AKIAKMSPGBENCH000001", "kms-pg-bench-secret/0123456789abcdef"
        args = [PY, os.path.join(self.dir, "kms_emulator.py"), "--port", "0", "--port-file", pf,
                "--tls-cert", os.path.join(certs, "server.pem"), "--tls-key", os.path.join(certs, "server.key"),
                "--region", "us-east-1", "--cred", "%s:%s" % (akid, secret),
                "--seed-alias", self.key_alias, "--quiet", "--die-with-parent"]
        self.proc = subprocess.Popen(args, stdout=open(os.path.join(self.workdir, "emulator.log"), "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(200):
            if os.path.exists(pf) and open(pf).read().strip():
                break
            if self.proc.poll() is not None:
                raise BenchError("KMS emulator exited: %s" % open(os.path.join(self.workdir, "emulator.log")).read()[-500:])
            time.sleep(0.1)
        self.port = int(open(pf).read().strip())
        self.endpoint = "https://127.0.0.1:%d" % self.port
        self.ca = os.path.join(certs, "ca.pem")
        self.env = {"AWS_ACCESS_KEY_ID": akid, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1"}
        self.conf = [("kms_pg.endpoint", "'%s'" % self.endpoint), ("kms_pg.region", "'us-east-1'"),
                     ("kms_pg.ca_file", "'%s'" % self.ca), ("kms_pg.credential_sources", "'env'")]

    def ctl(self, *args):
        p = subprocess.run([PY, os.path.join(self.dir, "emuctl.py"), "--url", self.endpoint,
                            "--cafile", self.ca] + list(args), capture_output=True, text=True)
        if p.returncode != 0:
            raise BenchError("emuctl %s failed: %s" % (" ".join(args), (p.stderr + p.stdout).strip()[-300:]))
        return p.stdout

    def counters(self):
        return json.loads(self.ctl("counters"))

    def create_key(self):
        # the key is seeded at start (--seed-alias); check it answers
        self.ctl("health")

    def latency(self, ms):
        if ms:
            self.ctl("faults", json.dumps({"latency_ms": ms}))
        else:
            self.ctl("faults-reset")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.root = args.root
        self.workdir = args.workdir
        self.reps = args.reps
        self.big_reps = max(3, args.big_reps)
        self.n = args.n
        self.n_pgp = args.n_pgp
        self.n_big = args.n_big
        self.results = {"cases": [], "targets": [], "notes": []}
        self.aws = Aws(self.root, self.workdir)
        self.aws_ok = False
        self.t0 = time.time()

    # -- helpers -----------------------------------------------------------

    def want(self, *cases):
        return not self.args.only or any(c in self.args.only for c in cases)

    def note(self, msg):
        log("   " + msg)
        self.results["notes"].append(msg)

    def add_case(self, case_no, cid, label, n, ms_list, **extra):
        s = summary(ms_list)
        c = {"case": case_no, "id": cid, "label": label, "rows": n,
             "ms_median": round(s["median"], 2), "ms_min": round(s["min"], 2), "ms_max": round(s["max"], 2),
             "ms_reps": [round(x, 2) for x in ms_list]}
        if n:
            c["us_per_row"] = round(1000.0 * s["median"] / n, 4)
            c["us_per_row_min"] = round(1000.0 * s["min"] / n, 4)
            c["us_per_row_max"] = round(1000.0 * s["max"] / n, 4)
        c.update(extra)
        self.results["cases"].append(c)
        return c

    def add_skip(self, case_no, cid, label, reason):
        self.results["cases"].append({"case": case_no, "id": cid, "label": label, "skipped": reason})

    def case(self, cid):
        for c in self.results["cases"]:
            if c["id"] == cid:
                return c
        return None

    def target(self, name, value, op, limit, detail=""):
        if value is None:
            self.results["targets"].append({"target": name, "value": None, "limit": "%s %s" % (op, limit),
                                            "result": "SKIP", "detail": detail})
            return
        ok = {"<=": value <= limit, ">=": value >= limit, "==": value == limit}[op]
        self.results["targets"].append({"target": name, "value": round(value, 3) if isinstance(value, float) else value,
                                        "limit": "%s %s" % (op, limit), "result": "PASS" if ok else "MISS",
                                        "detail": detail})

    # -- setup -------------------------------------------------------------

    def machine(self):
        cpu = "unknown"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        try:
            ossl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
        except OSError:
            ossl = "unknown"
        mem = ""
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = "%.1f GB" % (int(line.split()[1]) / 1024 / 1024)
        return {"nproc": os.cpu_count(), "cpu_model": cpu, "memory": mem,
                "kernel": platform.release(), "openssl": ossl,
                "loadavg_start": open("/proc/loadavg").read().split()[:3]}

    def setup(self):
        self.results["machine"] = self.machine()
        if self.aws.available_files():
            try:
                self.aws.start()
            except (BenchError, OSError, subprocess.CalledProcessError) as e:
                self.aws.reason = "emulator did not start: %s" % e
                self.aws.stop()
                self.aws.proc = None
        self.cl = Cluster(self.workdir, self.aws.env if self.aws.proc else None)
        self.cl.initdb()
        if self.aws.proc:
            with open(os.path.join(self.cl.data, "postgresql.conf"), "a") as f:
                for k, v in self.aws.conf:
                    f.write("%s = %s\n" % (k, v))
        self.cl.start()
        self.cl.psql("CREATE DATABASE bench;\n", db="postgres")
        self.results["machine"]["postgresql"] = self.cl.value("SELECT version()")
        self.results["settings"] = {k: self.cl.value("SHOW %s" % k) for k, _ in SETTINGS
                                    if not k.startswith("kms_pg")}
        self.results["settings"]["kms_pg.dek_max_messages (default)"] = self.cl.value("SHOW kms_pg.dek_max_messages")
        self.results["settings"]["kms_pg.cache_entries"] = self.cl.value("SHOW kms_pg.cache_entries")
        self.cl.psql(r"""
CREATE EXTENSION kms_pg;
CREATE EXTENSION pgcrypto;
SELECT kms_create_key('alias/bench', 'benchmark key');
CREATE PROCEDURE bench_run(q text, INOUT ms float8)
LANGUAGE plpgsql AS $p$
DECLARE t0 timestamptz;
BEGIN
  t0 := clock_timestamp();
  EXECUTE q;
  ms := 1000 * extract(epoch FROM clock_timestamp() - t0);
END $p$;
""")
        ver = self.cl.value("SELECT extversion FROM pg_extension WHERE extname = 'kms_pg'")
        self.results["machine"]["kms_pg_version"] = ver
        self.detect_aws()
        log("== data: %d rows of 100 bytes (src), %d rows (big_src)" % (self.n, self.n_big))
        # 100-byte values: 200 hex digits of repeated md5 per row.
        self.cl.psql("""
CREATE TABLE src (i int PRIMARY KEY, data bytea NOT NULL);
INSERT INTO src SELECT i, decode(substr(repeat(md5(i::text), 7), 1, 200), 'hex') FROM generate_series(1, %d) i;
CREATE TABLE big_src (i int PRIMARY KEY, data bytea NOT NULL);
INSERT INTO big_src SELECT i, decode(substr(repeat(md5(i::text), 7), 1, 200), 'hex') FROM generate_series(1, %d) i;
VACUUM ANALYZE src;
VACUUM ANALYZE big_src;
""" % (self.n, self.n_big))

    def detect_aws(self):
        """AWS cases run only when the provider is built in and answers."""
        if not self.aws.proc:
            self.aws_ok = False
            return
        try:
            self.aws.create_key()
        except BenchError as e:
            self.aws.reason = "could not create the emulator key: %s" % e
            return
        rc, out, err = self.cl.psql("SET kms_pg.provider = aws;\nSET kms_pg.key_id = '%s';\n"
                                    "SELECT length(kms_encrypt('\\x00'::bytea));\n" % self.aws.key_alias,
                                    check=False)
        if rc != 0:
            self.aws.reason = "AWS provider not available (%s)" % err.strip().splitlines()[-1][:200]
            return
        self.aws_ok = True

    def kms_setup(self, provider):
        if provider == "aws":
            return "SET kms_pg.provider = aws;\nSET kms_pg.key_id = '%s';\n" % self.aws.key_alias
        return "SET kms_pg.provider = local;\nSET kms_pg.key_id = 'alias/bench';\n"

    def aws_skip_reason(self):
        why = " ".join((self.aws.reason or "").split())[:160]
        return "skipped: AWS provider not available" + (" (%s)" % why if why else "")

    # -- cases 1-3: per-row cost side by side --------------------------------

    def per_row_cases(self):
        log("== cases 1-3: per-row cost (%d interleaved repetitions)" % self.reps)
        n, np_ = self.n, self.n_pgp
        providers = ["local"] + (["aws"] if self.aws_ok else [])
        # stored ciphertexts for the decrypt cases (not timed)
        build = """
CREATE TABLE ct_aes AS SELECT i, encrypt(data, {k}, 'aes') c FROM src;
CREATE TABLE ct_cbc AS SELECT i, iv, encrypt_iv(data, {k}, iv, 'aes-cbc') c
  FROM (SELECT i, data, gen_random_bytes(16) iv FROM src) s;
CREATE TABLE ct_pgp_def AS SELECT i, pgp_sym_encrypt_bytea(data, {p}) c FROM src WHERE i <= {np};
CREATE TABLE ct_pgp_aes AS SELECT i, pgp_sym_encrypt_bytea(data, {p}, 'cipher-algo=aes256, s2k-mode=0') c FROM src;
""".format(k=PGC_KEY, p=PASS, np=np_)
        for pv in providers:
            build += self.kms_setup(pv)
            build += "CREATE TABLE ct_kms_%s AS SELECT i, kms_encrypt(data, %s) c FROM src;\n" % (pv, CTX)
        build += "VACUUM ANALYZE;\n"
        self.cl.psql(build)
        if not self.want(1, 2, 3):
            return

        items = [
            # (case, id, label, rows, query, setup, warm)
            (1, "floor_enc", "floor: scan src, length(data)", n,
             "SELECT sum(length(data)) FROM src", "", None),
            (1, "floor_ctx", "floor + context jsonb_build_object (info)", n,
             "SELECT sum(length(data)), count(%s) FROM src" % CTX, "", None),
            (1, "floor_dec", "floor: scan ct_kms_local, length(c)", n,
             "SELECT sum(length(c)) FROM ct_kms_local", "", None),
            (2, "pgc_aes_enc", "pgcrypto encrypt(data, key, 'aes')", n,
             "SELECT sum(length(encrypt(data, %s, 'aes'))) FROM src" % PGC_KEY, "",
             "SELECT encrypt('\\x00'::bytea, %s, 'aes')" % PGC_KEY),
            (2, "pgc_aes_dec", "pgcrypto decrypt(c, key, 'aes')", n,
             "SELECT sum(length(decrypt(c, %s, 'aes'))) FROM ct_aes" % PGC_KEY, "",
             "SELECT encrypt('\\x00'::bytea, %s, 'aes')" % PGC_KEY),
            (2, "pgc_cbc_enc", "pgcrypto encrypt_iv(.., gen_random_bytes(16), 'aes-cbc')", n,
             "SELECT sum(length(encrypt_iv(data, %s, gen_random_bytes(16), 'aes-cbc'))) FROM src" % PGC_KEY, "",
             "SELECT encrypt('\\x00'::bytea, %s, 'aes')" % PGC_KEY),
            (2, "pgc_cbc_dec", "pgcrypto decrypt_iv(c, key, iv, 'aes-cbc')", n,
             "SELECT sum(length(decrypt_iv(c, %s, iv, 'aes-cbc'))) FROM ct_cbc" % PGC_KEY, "",
             "SELECT encrypt('\\x00'::bytea, %s, 'aes')" % PGC_KEY),
            (2, "pgp_def_enc", "pgcrypto pgp_sym_encrypt_bytea default (N=%d)" % np_, np_,
             "SELECT sum(length(pgp_sym_encrypt_bytea(data, %s))) FROM src WHERE i <= %d" % (PASS, np_), "",
             "SELECT encrypt('\\x00'::bytea, %s, 'aes')" % PGC_KEY),
            (2, "pgp_def_dec", "pgcrypto pgp_sym_decrypt_bytea default (N=%d)" % np_, np_,
             "SELECT sum(length(pgp_sym_decrypt_bytea(c, %s))) FROM ct_pgp_def" % PASS, "",
             "SELECT encrypt('\\x00'::bytea, %s, 'aes')" % PGC_KEY),
            (2, "pgp_aes_enc", "pgcrypto pgp_sym_encrypt_bytea aes256, s2k-mode=0", n,
             "SELECT sum(length(pgp_sym_encrypt_bytea(data, %s, 'cipher-algo=aes256, s2k-mode=0'))) FROM src" % PASS,
             "", "SELECT encrypt('\\x00'::bytea, %s, 'aes')" % PGC_KEY),
            (2, "pgp_aes_dec", "pgcrypto pgp_sym_decrypt_bytea aes256, s2k-mode=0", n,
             "SELECT sum(length(pgp_sym_decrypt_bytea(c, %s))) FROM ct_pgp_aes" % PASS, "",
             "SELECT encrypt('\\x00'::bytea, %s, 'aes')" % PGC_KEY),
        ]
        for pv in providers:
            st = self.kms_setup(pv)
            items.append((3, "kms_%s_enc" % pv, "kms_encrypt, %s provider, warm cache" % pv, n,
                          "SELECT sum(length(kms_encrypt(data, %s))) FROM src" % CTX, st,
                          "SELECT kms_encrypt(data, %s) FROM src WHERE i = 1" % CTX))
            items.append((3, "kms_%s_dec" % pv, "kms_decrypt, %s provider, warm cache" % pv, n,
                          "SELECT sum(length(kms_decrypt(c, %s))) FROM ct_kms_%s" % (CTX, pv), st,
                          "SELECT kms_decrypt(c, %s) FROM ct_kms_%s WHERE i = 1" % (CTX, pv)))
        for pv in providers:
            st = self.kms_setup(pv)
            items.append((3, "kms_%s_enc_pairs" % pv,
                          "kms_encrypt_pairs (context as arguments), %s, warm" % pv, n,
                          "SELECT sum(length(kms_encrypt_pairs(data, NULL, %s))) FROM src" % PAIRS, st,
                          "SELECT kms_encrypt_pairs(data, NULL, %s) FROM src WHERE i = 1" % PAIRS))
            items.append((3, "kms_%s_dec_pairs" % pv,
                          "kms_decrypt_pairs (context as arguments), %s, warm" % pv, n,
                          "SELECT sum(length(kms_decrypt_pairs(c, %s))) FROM ct_kms_%s" % (PAIRS, pv), st,
                          "SELECT kms_decrypt_pairs(c, %s) FROM ct_kms_%s WHERE i = 1" % (PAIRS, pv)))
        times = {it[1]: [] for it in items}
        calls_before = self.cl.stats()
        for r in range(self.reps):
            for (_, cid, _, _, q, st, warm) in items:
                times[cid].append(self.cl.timed(q, st, warm))
            log("   rep %d/%d done (%.0f s)" % (r + 1, self.reps, time.time() - self.t0))
        calls = delta(calls_before, self.cl.stats())
        for (cno, cid, label, rows, _, _, _) in items:
            self.add_case(cno, cid, label, rows, times[cid])
        if not self.aws_ok:
            self.add_skip(3, "kms_aws_enc", "kms_encrypt, aws provider, warm cache", self.aws_skip_reason())
            self.add_skip(3, "kms_aws_dec", "kms_decrypt, aws provider, warm cache", self.aws_skip_reason())
        self.note("cases 1-3: KMS calls during the timed warm-cache repetitions: generate %d, decrypt %d"
                  % (calls["generate"], calls["decrypt"]))

        def ratio(a, b):
            ca, cb = self.case(a), self.case(b)
            if not ca or not cb or "ms_median" not in ca or "ms_median" not in cb:
                return None
            return ca["us_per_row"] / cb["us_per_row"]

        for pv in ["local", "aws"]:
            why = "" if (pv == "local" or self.aws_ok) else self.aws_skip_reason()
            self.target("kms_encrypt (%s) / pgcrypto encrypt 'aes', per row" % pv,
                        ratio("kms_%s_enc" % pv, "pgc_aes_enc"), "<=", 1.0, why)
            self.target("kms_decrypt (%s) / pgcrypto decrypt 'aes', per row" % pv,
                        ratio("kms_%s_dec" % pv, "pgc_aes_dec"), "<=", 0.7, why)
            self.target("pgp_sym_encrypt_bytea default / kms_encrypt (%s), per row" % pv,
                        ratio("pgp_def_enc", "kms_%s_enc" % pv), ">=", 100.0, why)
            self.target("kms_encrypt_pairs (%s) / pgcrypto encrypt 'aes', per row" % pv,
                        ratio("kms_%s_enc_pairs" % pv, "pgc_aes_enc"), "<=", 1.0, why)
            self.target("kms_decrypt_pairs (%s) / pgcrypto decrypt 'aes', per row" % pv,
                        ratio("kms_%s_dec_pairs" % pv, "pgc_aes_dec"), "<=", 0.7, why)
            self.target("pgp_sym_encrypt_bytea default / kms_encrypt_pairs (%s), per row" % pv,
                        ratio("pgp_def_enc", "kms_%s_enc_pairs" % pv), ">=", 100.0, why)

    # -- case 11: key privileges (issue 20) ---------------------------------

    def key_grants(self):
        """kms_decrypt_pairs of N rows by roles holding decrypt through a key
        grant (plain, and under a condition) against the same by a superuser
        (who bypasses the check).  Interleaved like cases 1-3."""
        n = self.n
        log("== case 11: key privileges, pairs decrypt by granted roles (%d interleaved repetitions)" % self.reps)
        roles = "bench_granted, bench_cond_in, bench_cond_setting"
        self.cl.psql("""
SET kms_pg.provider = local;
CREATE TABLE ct_kms_t0 AS SELECT i, kms_encrypt(data, jsonb_build_object('id', i, 'tenant', 0), 'alias/bench') c FROM src;
VACUUM ANALYZE ct_kms_t0;
CREATE ROLE bench_granted;
CREATE ROLE bench_cond_in;
CREATE ROLE bench_cond_setting;
GRANT SELECT ON ct_kms_local, ct_kms_t0 TO %(r)s;
GRANT EXECUTE ON FUNCTION kms_decrypt_pairs(bytea, "any") TO %(r)s;
SELECT kms_grant_key('alias/bench', 'bench_granted');
SELECT kms_grant_key('alias/bench', 'bench_cond_in', '{decrypt}', '{"tenant": {"in": [0, 1]}}');
SELECT kms_grant_key('alias/bench', 'bench_cond_setting', '{decrypt}', '{"tenant": {"setting": "app.tenant"}}');
""" % {"r": roles})
        st = self.kms_setup("local")
        q_all = "SELECT sum(length(kms_decrypt_pairs(c, %s))) FROM ct_kms_local" % PAIRS
        w_all = "SELECT kms_decrypt_pairs(c, %s) FROM ct_kms_local WHERE i = 1" % PAIRS
        q_t0 = "SELECT sum(length(kms_decrypt_pairs(c, 'id', i, 'tenant', 0))) FROM ct_kms_t0"
        w_t0 = "SELECT kms_decrypt_pairs(c, 'id', i, 'tenant', 0) FROM ct_kms_t0 WHERE i = 1"
        su = self.cl.value("SELECT current_user")
        items = [
            ("grants_su", "kms_decrypt_pairs, superuser (bypasses the check)", q_all, su, w_all),
            ("grants_plain", "kms_decrypt_pairs, role granted decrypt", q_all, "bench_granted", w_all),
            ("grants_cond_in", "kms_decrypt_pairs, role granted decrypt if tenant in [0, 1]", q_all,
             "bench_cond_in", w_all),
            ("grants_su_t0", "kms_decrypt_pairs, superuser, rows of tenant 0", q_t0, su, w_t0),
            ("grants_cond_setting", "kms_decrypt_pairs, role granted decrypt if tenant = app.tenant ('0')", q_t0,
             "bench_cond_setting", w_t0),
        ]
        setup = st + "SET app.tenant = '0';\n"
        wall = {it[0]: [] for it in items}
        cpu = {it[0]: [] for it in items}
        for r in range(self.reps):
            for (cid, _, q, role, warm) in items:
                w, c = self.cl.timed_cpu(q, setup, role, warm)
                wall[cid].append(w)
                cpu[cid].append(c)
            log("   rep %d/%d done (%.0f s)" % (r + 1, self.reps, time.time() - self.t0))
        for (cid, label, _, _, _) in items:
            sc = summary(cpu[cid])
            self.add_case(11, cid, label, n, wall[cid], cpu_ms_median=round(sc["median"], 2),
                          cpu_ms_min=round(sc["min"], 2), cpu_ms_max=round(sc["max"], 2),
                          cpu_ms_reps=[round(x, 2) for x in cpu[cid]])
        for cid, base, what in (("grants_plain", "grants_su", "a grant"),
                                ("grants_cond_in", "grants_su", "a condition grant (in)"),
                                ("grants_cond_setting", "grants_su_t0", "a condition grant (setting)")):
            a, b = self.case(cid), self.case(base)
            self.target("kms_decrypt_pairs by a role with %s / by a superuser, backend CPU time" % what,
                        a["cpu_ms_median"] / b["cpu_ms_median"], "<=", 1.10,
                        "wall-clock medians: %.1f / %.1f ms" % (a["ms_median"], b["ms_median"]))

    # -- case 4: a million rows ---------------------------------------------

    def million(self, pv):
        cid = "million_%s" % pv
        n = self.n_big
        lim = self.args.dek_max_messages
        parts = 2
        log("== case 4 (%s): %d rows, kms_context_keys = tenant, dek_max_messages = %d" % (pv, n, lim))
        st = self.kms_setup(pv) + "SET kms_pg.kms_context_keys = 'tenant';\nSET kms_pg.dek_max_messages = %d;\n" % lim
        enc_ms, enc_calls, enc_emu = [], [], []
        for r in range(self.big_reps):
            self.cl.psql("DROP TABLE IF EXISTS big_ct_%s;\nSELECT kms_cache_flush();\n" % pv)
            b, e0 = self.cl.stats(), self.emu_counters(pv)
            enc_ms.append(self.cl.timed("CREATE TABLE big_ct_%s AS SELECT i, kms_encrypt(data, %s) c FROM big_src"
                                        % (pv, CTX), st))
            enc_calls.append(delta(b, self.cl.stats())["generate"])
            enc_emu.append(self.emu_delta(e0, "GenerateDataKey"))
        self.cl.psql("VACUUM ANALYZE big_ct_%s;\n" % pv)
        deks = int(self.cl.value("SELECT count(DISTINCT (kms_ciphertext_info(c)).dek_id) FROM big_ct_%s" % pv))
        q = "SELECT sum(length(kms_decrypt(c, %s))) FROM big_ct_%s" % (CTX, pv)
        warm_ms, warm_calls, warm_emu = [], [], []
        for r in range(self.big_reps):
            b, e0 = self.cl.stats(), self.emu_counters(pv)
            warm_ms.append(self.cl.timed(q, st))        # a fresh session each time
            warm_calls.append(delta(b, self.cl.stats())["decrypt"])
            warm_emu.append(self.emu_delta(e0, "Decrypt"))
        cold_ms, cold_calls, cold_emu = [], [], []
        for r in range(self.big_reps):
            self.cl.psql("SELECT kms_cache_flush();\n")
            b, e0 = self.cl.stats(), self.emu_counters(pv)
            cold_ms.append(self.cl.timed(q, st))
            cold_calls.append(delta(b, self.cl.stats())["decrypt"])
            cold_emu.append(self.emu_delta(e0, "Decrypt"))
        bound = math.ceil(n / lim) * parts
        self.add_case(4, cid + "_enc", "%d rows: encrypt into a table (%s, cache flushed first)" % (n, pv), n, enc_ms,
                      kms_calls=enc_calls, emulator_calls=enc_emu, distinct_deks=deks, call_bound=bound)
        self.add_case(4, cid + "_dec_session2", "%d rows: decrypt from a fresh session (%s)" % (n, pv), n, warm_ms,
                      kms_calls=warm_calls, emulator_calls=warm_emu)
        self.add_case(4, cid + "_dec_flushed", "%d rows: decrypt after kms_cache_flush() (%s)" % (n, pv), n, cold_ms,
                      kms_calls=cold_calls, emulator_calls=cold_emu, distinct_deks=deks)
        self.target("%d rows (%s): GenerateDataKey calls <= ceil(%d/%d) x %d partitions"
                    % (n, pv, n, lim, parts), max(enc_calls), "<=", bound,
                    "max over reps; per rep %s" % enc_calls)
        self.target("%d rows (%s): KMS calls from a second session" % (n, pv), max(warm_calls), "==", 0,
                    "per rep %s" % warm_calls)
        self.target("%d rows (%s): Decrypt calls after flush == distinct DEKs (%d)" % (n, pv, deks),
                    max(cold_calls), "==", deks, "per rep %s" % cold_calls)

    def emu_counters(self, pv="aws"):
        if not self.aws_ok or pv != "aws":
            return None
        try:
            return self.aws.counters()
        except (BenchError, ValueError):
            return None

    def emu_delta(self, before, op):
        if before is None:
            return None
        after = self.emu_counters()
        if after is None:
            return None
        return int(after.get(op, 0)) - int(before.get(op, 0))

    # -- case 5: 16 concurrent cold decrypts ---------------------------------

    def stampede(self, pv, latency_ms=0):
        log("== case 5 (%s): 16 concurrent cold decrypts of one DEK" % pv)
        script = os.path.join(self.workdir, "stampede_%s.sql" % pv)
        with open(script, "w") as f:
            f.write(self.kms_setup(pv).replace("\n", " ") + "\n")
            f.write("\\set r random(1, %d)\n" % self.n)
            f.write("SELECT length(kms_decrypt(c, %s)) FROM ct_kms_%s WHERE i = :r;\n" % (CTX, pv))
        if self.cl.value("SELECT count(DISTINCT (kms_ciphertext_info(c)).dek_id) FROM ct_kms_%s" % pv) != "1":
            self.note("case 5 (%s): ct_kms_%s holds more than one DEK" % (pv, pv))
        calls, waits, emu, ms = [], [], [], []
        if latency_ms and pv == "aws":
            self.aws.latency(latency_ms)
        try:
            for r in range(self.big_reps):
                self.cl.psql("SELECT kms_cache_flush();\n")
                b, e0 = self.cl.stats(), self.emu_counters(pv)
                t = time.time()
                self.cl.pgbench(script, 16, ["-t", "1"])
                ms.append(1000 * (time.time() - t))
                d = delta(b, self.cl.stats())
                calls.append(d["decrypt"])
                waits.append(d["coalesced"])
                emu.append(self.emu_delta(e0, "Decrypt"))
        finally:
            if latency_ms and pv == "aws":
                self.aws.latency(0)
        self.add_case(5, "stampede_%s" % pv, "16 sessions decrypt under one uncached DEK (%s%s; ms = pgbench wall clock)"
                      % (pv, ", %d ms injected latency" % latency_ms if latency_ms else ""), 0, ms,
                      kms_calls=calls, coalesced_waits=waits, emulator_calls=emu)
        self.target("case 5 (%s): Decrypt calls for 16 concurrent cold sessions" % pv, max(calls), "==", 1,
                    "per rep %s, coalesced waits %s" % (calls, waits))

    # -- case 6: injected latency --------------------------------------------

    def latency(self):
        if not self.aws_ok:
            self.add_skip(6, "latency_aws", "bulk encrypt with 20 ms KMS latency / without", self.aws_skip_reason())
            self.target("case 6: throughput with 20 ms KMS latency / without", None, ">=", 0.9,
                        self.aws_skip_reason())
            return
        log("== case 6 (aws): 20 ms injected KMS latency")
        st = self.kms_setup("aws") + "SET kms_pg.kms_context_keys = 'tenant';\n"
        q = "SELECT sum(length(kms_encrypt(data, %s))) FROM src" % CTX
        res = {0: [], 20: []}
        calls = {0: [], 20: []}
        for r in range(self.reps):
            for lat in (0, 20):
                self.aws.latency(lat)
                self.cl.psql("SELECT kms_cache_flush();\n")
                b = self.cl.stats()
                res[lat].append(self.cl.timed(q, st))
                calls[lat].append(delta(b, self.cl.stats())["generate"])
        self.aws.latency(0)
        c0 = self.add_case(6, "latency_aws_0", "encrypt %d rows after flush, 0 ms KMS latency (aws)" % self.n,
                           self.n, res[0], kms_calls=calls[0])
        c20 = self.add_case(6, "latency_aws_20", "encrypt %d rows after flush, 20 ms KMS latency (aws)" % self.n,
                            self.n, res[20], kms_calls=calls[20])
        ideal = c0["ms_median"] / (c0["ms_median"] + 20.0 * statistics.median(calls[20]))
        self.target("case 6: throughput with 20 ms KMS latency / without", c0["ms_median"] / c20["ms_median"],
                    ">=", 0.9, "serial calls alone would give %.3f (%s calls x 20 ms)" % (ideal, calls[20]))

    # -- case 7: two clients against one --------------------------------------

    def scaling(self):
        log("== case 7: pgbench -c 1 vs -c 2 (%d s each, %d reps)" % (self.args.pgbench_seconds, self.big_reps))
        batch = 1000
        scripts = {}
        for name, expr in (("kms", "sum(length(kms_encrypt(data, %s)))" % CTX),
                           ("floor", "sum(length(data)), count(%s)" % CTX)):
            path = os.path.join(self.workdir, "scale_%s.sql" % name)
            with open(path, "w") as f:
                f.write(self.kms_setup("local").replace("\n", " ") + "\n")
                f.write("\\set b random(0, %d)\n" % (self.n // batch - 1))
                f.write("SELECT %s FROM src WHERE i > :b * %d AND i <= :b * %d + %d;\n" % (expr, batch, batch, batch))
            scripts[name] = path
        tps = {(s, c): [] for s in scripts for c in (1, 2)}
        for r in range(self.big_reps):
            for s in scripts:
                for c in (1, 2):
                    out = self.cl.pgbench(scripts[s], c, ["-T", str(self.args.pgbench_seconds)])
                    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
                    tps[(s, c)].append(float(m.group(1)))
        for s in scripts:
            r1 = statistics.median(tps[(s, 1)])
            r2 = statistics.median(tps[(s, 2)])
            ratios = [b / a for a, b in zip(tps[(s, 1)], tps[(s, 2)])]
            self.results["cases"].append({
                "case": 7, "id": "scaling_%s" % s,
                "label": "%s over %d rows per transaction: tps -c 2 / -c 1" % (
                    "kms_encrypt" if s == "kms" else "floor (context, length)", batch),
                "tps_c1": [round(x, 1) for x in tps[(s, 1)]], "tps_c2": [round(x, 1) for x in tps[(s, 2)]],
                "ratio_median": round(r2 / r1, 3), "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3)})
        k = self.case("scaling_kms")
        f = self.case("scaling_floor")
        self.target("case 7: kms_encrypt throughput, 2 clients / 1 client", k["ratio_median"], ">=", 1.7,
                    "floor query on the same machine in the same run: %.2fx" % f["ratio_median"])

    # -- case 8: rotation -----------------------------------------------------

    def rotation(self):
        n = self.n_big
        lim = self.args.dek_max_messages
        log("== case 8: rotation of a %d-row column" % n)
        has_proc = self.cl.value("SELECT count(*) FROM pg_proc WHERE proname = 'kms_rotate_column'") != "0"
        st = self.kms_setup("local") + "SET kms_pg.dek_max_messages = %d;\n" % lim
        self.cl.psql(st + "SELECT kms_cache_flush();\n"
                     "CREATE TABLE rot (i int PRIMARY KEY, c bytea);\n"
                     "INSERT INTO rot SELECT i, kms_encrypt(data, %s) FROM big_src;\n"
                     "VACUUM ANALYZE rot;\n" % CTX)
        deks = int(self.cl.value("SELECT count(DISTINCT (kms_ciphertext_info(c)).dek_id) FROM rot"))
        self.note("case 8: the column starts with %d DEKs (dek_max_messages = %d)" % (deks, lim))
        # Each repetition rotates to a key of its own, so nothing is skipped
        # as "already under the new key"; VACUUM + CHECKPOINT (not timed)
        # before every statement give each the same starting state.
        variants = [("plain", None)]
        if has_proc:
            variants.append(("proc", "CALL kms_rotate_column('rot'::regclass, 'c', '%s', 10000)"))
        variants.append(("rewrap", "UPDATE rot SET c = kms_rewrap(c, '%s')"))
        times = {v: [] for v, _ in variants}
        calls = {v: [] for v, _ in variants}
        wrapped = {v: [] for v, _ in variants}
        k = 0
        for r in range(self.big_reps):
            for v, stmt in variants:
                self.cl.psql("VACUUM rot;\nCHECKPOINT;\n")
                b = self.cl.stats()
                if stmt is None:
                    times[v].append(self.cl.timed("UPDATE rot SET c = c", st))
                else:
                    k += 1
                    key = "alias/bench-rot-%d" % k
                    # distinct wrapped DEKs in the column = what a rewrap must at least call for
                    wrapped[v].append(int(self.cl.value(
                        "SELECT count(DISTINCT (kms_ciphertext_info(c)).dek_id) FROM rot")))
                    self.cl.psql("SELECT kms_create_key('%s');\n" % key)
                    times[v].append(self.cl.timed(stmt % key, st))
                    left = int(self.cl.value(
                        "SELECT count(*) FROM rot WHERE (kms_ciphertext_info(c)).key_id <> "
                        "(SELECT key_id FROM kms_keys WHERE alias = '%s')" % key))
                    if left:
                        self.note("case 8: %d values not under %s after %s" % (left, key, v))
                calls[v].append(delta(b, self.cl.stats())["rewrap"])
        cp = self.add_case(8, "rot_plain", "plain UPDATE rot SET c = c, %d rows" % n, n, times["plain"])
        cw = self.add_case(8, "rot_rewrap", "UPDATE rot SET c = kms_rewrap(c, new_key), one statement", n,
                           times["rewrap"], kms_calls=calls["rewrap"], wrapped_deks_before=wrapped["rewrap"],
                           method="kms_rewrap UPDATE")
        cr = cw
        if has_proc:
            cr = self.add_case(8, "rot_kms", "CALL kms_rotate_column(tbl, col, new_key, 10000)", n,
                               times["proc"], kms_calls=calls["proc"], wrapped_deks_before=wrapped["proc"],
                               method="kms_rotate_column")
        else:
            self.note("case 8: kms_rotate_column is absent in this build; the target uses the kms_rewrap UPDATE")
        self.target("case 8: rotation (%s) / plain UPDATE" % cr["method"], cr["ms_median"] / cp["ms_median"],
                    "<=", 1.5, "provider rewrap calls per rep %s; distinct wrapped DEKs before each rep %s"
                    % (cr["kms_calls"], cr["wrapped_deks_before"]))
        if has_proc:
            self.target("case 8 (info): kms_rewrap UPDATE in one statement / plain UPDATE",
                        cw["ms_median"] / cp["ms_median"], "<=", 1.5,
                        "provider rewrap calls per rep %s; distinct wrapped DEKs before each rep %s"
                        % (cw["kms_calls"], cw["wrapped_deks_before"]))

    # -- case 10: protected columns ------------------------------------------

    def columns(self):
        """Protected columns (kms_protect_column, local provider) side by side
        with the same statements on a plain table and with inline
        kms_encrypt_text_pairs / kms_decrypt_text_pairs under the same
        context, in one run; then protecting a 1M-row table against a plain
        UPDATE ... SET c = kms_encrypt_text_pairs(...), and 1,000 blind-index
        lookups in it."""
        n = min(self.args.n_cols, self.n)
        log("== case 10: protected columns, %d rows (%d interleaved repetitions)" % (n, self.big_reps))
        st = self.kms_setup("local")
        self.cl.psql(st + """
CREATE TABLE col_src AS SELECT i AS id, i %% 2 AS tenant, encode(data, 'hex') AS v FROM src WHERE i <= %d;
CREATE TABLE col_plain (id int PRIMARY KEY, tenant int NOT NULL, v text);
CREATE TABLE col_inline (id int PRIMARY KEY, tenant int NOT NULL, c bytea);
CREATE TABLE col_prot (id int PRIMARY KEY, tenant int NOT NULL, v text);
CREATE TABLE col_protv (id int PRIMARY KEY, tenant int NOT NULL, v text);
CALL kms_protect_column('col_prot', 'v', '{id,tenant}');
CALL kms_protect_column('col_protv', 'v', '{id,tenant}');
VACUUM ANALYZE col_src;
""" % n)
        uid = self.cl.value("SELECT column_id FROM kms_protected_columns WHERE relid = 'col_prot'::regclass")
        pairs = "'kms_pg:column', '%s', 'id', id, 'tenant', tenant" % uid
        stmts = [
            ("ins_plain", "TRUNCATE col_plain", "INSERT INTO col_plain SELECT id, tenant, v FROM col_src"),
            ("ins_inline", "TRUNCATE col_inline",
             "INSERT INTO col_inline SELECT id, tenant, kms_encrypt_text_pairs(v, NULL, %s) FROM col_src" % pairs),
            ("ins_table", "TRUNCATE col_prot", "INSERT INTO col_prot SELECT id, tenant, v FROM col_src"),
            ("ins_view", "TRUNCATE col_protv", "INSERT INTO col_protv_decrypted SELECT id, tenant, v FROM col_src"),
            ("upd_inline", "VACUUM col_inline",
             "UPDATE col_inline SET c = kms_encrypt_text_pairs(id::text, NULL, %s)" % pairs),
            ("upd_table", "VACUUM col_prot", "UPDATE col_prot SET v = id::text"),
            ("upd_view", "VACUUM col_protv", "UPDATE col_protv_decrypted SET v = id::text"),
            ("sel_inline", "VACUUM col_inline",
             "SELECT sum(length(kms_decrypt_text_pairs(c, %s))) FROM col_inline" % pairs),
            ("sel_view", "VACUUM col_prot", "SELECT sum(length(v)) FROM col_prot_decrypted"),
        ]
        times = {k: [] for k, _, _ in stmts}
        for r in range(self.big_reps):
            for k, prep, q in stmts:
                self.cl.psql(st + prep + ";\nCHECKPOINT;\n")
                times[k].append(self.cl.timed(q, st, warm="SELECT kms_encrypt_text_pairs('w', NULL, 'id', 1)"))
        labels = {
            "ins_plain": "INSERT into a plain table", "ins_inline": "INSERT with inline kms_encrypt_text_pairs",
            "ins_table": "INSERT into the protected table (trigger)", "ins_view": "INSERT through the view",
            "upd_inline": "UPDATE with inline kms_encrypt_text_pairs", "upd_table": "UPDATE of the protected table",
            "upd_view": "UPDATE through the view", "sel_inline": "SELECT with inline kms_decrypt_text_pairs",
            "sel_view": "SELECT through the view"}
        c = {k: self.add_case(10, "col_" + k, "%s, %d rows" % (labels[k], n), n, times[k]) for k in times}

        def ratio(a, b):
            return c[a]["ms_median"] / c[b]["ms_median"]
        self.target("case 10: INSERT into the protected table / INSERT with inline kms_encrypt_text_pairs",
                    ratio("ins_table", "ins_inline"), "<=", 1.3)
        self.target("case 10: INSERT through the view / into the protected table",
                    ratio("ins_view", "ins_table"), "<=", 2.0)
        self.target("case 10: UPDATE through the view / of the protected table",
                    ratio("upd_view", "upd_table"), "<=", 2.0)
        self.target("case 10: SELECT through the view / inline kms_decrypt_text_pairs",
                    ratio("sel_view", "sel_inline"), "<=", 1.1)

        # Protecting an existing table of n_big rows, against the plain
        # UPDATE that encrypts the same values in place.
        nb = self.n_big
        log("== case 10: protecting a %d-row table" % nb)
        prot, upd = [], []
        for r in range(self.big_reps):
            self.cl.psql("DROP TABLE IF EXISTS col_big, col_big_u CASCADE;\n"
                         "CREATE TABLE col_big AS SELECT i, i % 2 AS tenant, encode(data, 'hex') AS v FROM big_src;\n"
                         "ALTER TABLE col_big ADD PRIMARY KEY (i);\n"
                         "CREATE TABLE col_big_u AS SELECT i, i % 2 AS tenant, encode(data, 'hex') AS v,"
                         " NULL::bytea AS c FROM big_src;\n"
                         "ALTER TABLE col_big_u ADD PRIMARY KEY (i);\n"
                         "VACUUM ANALYZE col_big;\nVACUUM ANALYZE col_big_u;\nCHECKPOINT;\n")
            prot.append(self.cl.timed("CALL kms_protect_column('col_big', 'v', '{i,tenant}', batch_size => 100000)", st))
            upd.append(self.cl.timed("UPDATE col_big_u SET c = kms_encrypt_text_pairs(v, NULL, "
                                     "'kms_pg:column', 'x', 'i', i, 'tenant', tenant)", st))
        cp = self.add_case(10, "col_protect_big", "CALL kms_protect_column on a %d-row table" % nb, nb, prot)
        cu = self.add_case(10, "col_update_big", "UPDATE t SET c = kms_encrypt_text_pairs(...), %d rows" % nb, nb, upd)
        self.target("case 10: protecting a %d-row table / plain UPDATE with kms_encrypt_text_pairs" % nb,
                    cp["ms_median"] / cu["ms_median"], "<=", 2.0)

        # 1,000 blind-index equality lookups in an n_big-row table.
        self.cl.psql(st + "DROP TABLE IF EXISTS col_bi CASCADE;\n"
                     "CREATE TABLE col_bi AS SELECT i, i % 2 AS tenant, encode(data, 'hex') AS v FROM big_src;\n"
                     "ALTER TABLE col_bi ADD PRIMARY KEY (i);\n"
                     "CALL kms_protect_column('col_bi', 'v', '{i,tenant}', batch_size => 100000, blind_index => true);\n"
                     "VACUUM ANALYZE col_bi;\n")
        look = []
        q = ("DO $l$DECLARE n int := 0; BEGIN FOR k IN 1..1000 LOOP "
             "n := n + (SELECT count(*) FROM col_bi WHERE v_bidx = kms_blind_index('col_bi', 'v', "
             "substr(repeat(md5(((k * 997) %% %d + 1)::text), 7), 1, 200))); END LOOP; "
             "IF n <> 1000 THEN RAISE EXCEPTION 'found %%', n; END IF; END $l$" % nb)
        for r in range(self.big_reps):
            look.append(self.cl.timed(q, st))
        self.add_case(10, "col_bidx_lookups", "1,000 blind-index equality lookups in %d rows (ms for all 1,000)" % nb,
                      0, look)


    # -- case 9: storage ------------------------------------------------------

    def storage(self):
        log("== case 9: storage overhead")
        rows = []
        queries = [
            ("pgcrypto encrypt 'aes'", "ct_aes", "NULL::int", "length(c)"),
            ("pgcrypto encrypt_iv 'aes-cbc' (+16-byte IV column)", "ct_cbc", "NULL::int", "length(c) + length(iv)"),
            ("pgcrypto pgp_sym_encrypt_bytea default", "ct_pgp_def", "NULL::int", "length(c)"),
            ("pgcrypto pgp_sym_encrypt_bytea aes256 s2k-mode=0", "ct_pgp_aes", "NULL::int", "length(c)"),
            ("kms_pg local provider", "ct_kms_local", "(kms_ciphertext_info(c)).overhead_bytes", "octet_length(c)"),
            ("kms_pg local provider, kms_context_keys = tenant", "big_ct_local",
             "(kms_ciphertext_info(c)).overhead_bytes", "octet_length(c)"),
        ]
        if self.aws_ok:
            queries.append(("kms_pg aws provider", "ct_kms_aws", "(kms_ciphertext_info(c)).overhead_bytes",
                            "octet_length(c)"))
        for label, tbl, ov, ln in queries:
            line = self.cl.value("SELECT round(avg(%s), 1) || ',' || coalesce(round(avg(%s), 1)::text, '') "
                                 "|| ',' || count(*) FROM (SELECT * FROM %s LIMIT 10000) s" % (ln, ov, tbl))
            total, over, cnt = line.split(",")
            total = float(total)
            over = float(over) if over else total - 100.0
            rows.append({"label": label, "bytes_per_value": total, "overhead_bytes": over,
                         "plaintext_bytes": 100, "sampled": int(cnt)})
        if not self.aws_ok:
            rows.append({"label": "kms_pg aws provider", "skipped": self.aws_skip_reason()})
        self.results["storage"] = rows

    # -- profiles -------------------------------------------------------------

    def profile(self):
        """perf record (DWARF call graphs) on the backend while it runs a case.

        Writes profile_<case>.txt: self time per symbol, then inclusive
        time (children) per symbol, so both the hot leaves (AES, palloc)
        and the SQL-level callers (jsonb_build_object, kms_encrypt) show.
        """
        out = os.path.join(self.workdir, "out")
        if shutil.which("perf") is None:
            self.note("profile: perf not installed")
            return
        loc = self.kms_setup("local")
        cases = [
            ("kms_local_enc", loc, ["SELECT sum(length(kms_encrypt(data, %s))) FROM src" % CTX] * 3),
            ("kms_local_dec", loc, ["SELECT sum(length(kms_decrypt(c, %s))) FROM ct_kms_local" % CTX] * 3),
            ("pgc_aes_enc", "", ["SELECT sum(length(encrypt(data, %s, 'aes'))) FROM src" % PGC_KEY] * 3),
            ("pgc_aes_dec", "", ["SELECT sum(length(decrypt(c, %s, 'aes'))) FROM ct_aes" % PGC_KEY] * 3),
            ("rot_kms", loc + "SELECT kms_create_key('alias/bench-prof');\n",
             ["CALL kms_rotate_column('rot'::regclass, 'c', 'alias/bench-prof', 10000)"]),
        ]
        if self.cl.value("SELECT count(*) FROM pg_proc WHERE proname = 'kms_rotate_column'") == "0":
            cases[-1] = ("rot_rewrap", loc + "SELECT kms_create_key('alias/bench-prof');\n",
                         ["UPDATE rot SET c = kms_rewrap(c, 'alias/bench-prof')"])
        if self.cl.value("SELECT to_regclass('rot') IS NOT NULL") != "t":
            cases = cases[:-1]
        self.results["profiles"] = {}
        for name, st, stmts in cases:
            log("   profiling %s" % name)
            p = subprocess.Popen([os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-d", "bench"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, env=self.cl.env)
            p.stdin.write("\\o /dev/null\n" + st + "\\o\nSELECT pg_backend_pid();\n")
            p.stdin.flush()
            pid = int(p.stdout.readline().strip())
            data = os.path.join(out, "perf_%s.data" % name)
            perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999",
                                     "--call-graph", "dwarf,16384", "-p", str(pid), "-o", data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(1.0)
            p.stdin.write("\\o /dev/null\n" + "".join(q + ";\n" for q in stmts) + "\\o\nSELECT 'done';\n")
            p.stdin.flush()
            while True:
                line = p.stdout.readline()
                if line == "" or line.strip() == "done":
                    break
            perf.send_signal(signal.SIGINT)
            _, perr = perf.communicate()
            p.stdin.close()
            p.wait()
            text = ""
            for title, opts in (("self time", ["--no-children", "-g", "none", "--percent-limit", "0.5"]),
                                ("inclusive time (children)", ["--children", "-g", "none", "--percent-limit", "2"])):
                rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "symbol"] + opts,
                                     capture_output=True, text=True)
                body = rep.stdout if rep.returncode == 0 else "perf failed: %s %s" % (perr, rep.stderr)
                text += "==== %s: %s ====\n%s\n" % (name, title, body)
            with open(os.path.join(out, "profile_%s.txt" % name), "w") as f:
                f.write(text)
            self.results["profiles"][name] = [l.strip() for l in text.splitlines()
                                              if re.match(r"\s+[0-9.]+%", l)][:12]
            try:
                os.unlink(data)
            except OSError:
                pass

    # -- output ---------------------------------------------------------------

    def run(self):
        try:
            self.setup()
            self.results["aws"] = {"available": self.aws_ok, "reason": None if self.aws_ok else self.aws_skip_reason()}
            self.per_row_cases()
            if self.want(4, 9):
                for pv in ["local"] + (["aws"] if self.aws_ok else []):
                    self.million(pv)
                if not self.aws_ok:
                    self.add_skip(4, "million_aws", "1M rows, aws provider", self.aws_skip_reason())
            if self.want(5):
                self.stampede("local")
                if self.aws_ok:
                    self.stampede("aws", latency_ms=20)
                else:
                    self.add_skip(5, "stampede_aws", "16 concurrent cold decrypts (aws)", self.aws_skip_reason())
            if self.want(6):
                self.latency()
            if self.want(7):
                self.scaling()
            if self.want(8) or (self.args.profile and not self.args.only):
                self.rotation()
            if self.want(9):
                self.storage()
            if self.want(10):
                self.columns()
            if self.want(11):
                self.key_grants()
            if self.args.profile:
                log("== profiles (perf record on the backend)")
                self.profile()
        finally:
            self.results["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3] \
                if "machine" in self.results else None
            self.results["elapsed_s"] = round(time.time() - self.t0, 1)
            if hasattr(self, "cl"):
                self.cl.stop()
            self.aws.stop()
        self.results["parameters"] = {"N": self.n, "N_pgp_default": self.n_pgp, "N_big": self.n_big,
                                      "reps_per_row_cases": self.reps, "reps_other_cases": self.big_reps,
                                      "case4_case8_dek_max_messages": self.args.dek_max_messages,
                                      "pgbench_seconds": self.args.pgbench_seconds,
                                      "timing": "clock_timestamp() around EXECUTE in bench_run(), inside the server",
                                      "value_bytes": 100, "context": CTX}


def fmt_table(res):
    L = []
    m = res["machine"]
    L.append("kms_pg benchmark  (%s, %s cores: %s; %s)" % (
        m.get("postgresql", "").split(" on ")[0], m["nproc"], m["cpu_model"], m["openssl"]))
    L.append("settings: " + ", ".join("%s=%s" % kv for kv in res["settings"].items()))
    L.append("load average at start %s, at end %s (other work on the machine adds noise)" % (
        " ".join(m["loadavg_start"]), " ".join(m.get("loadavg_end") or [])))
    L.append("")
    L.append("%-4s %-66s %9s %11s %-21s %s" % ("case", "what", "rows", "median ms", "spread ms (min-max)", "us/row (min-max) | KMS calls"))
    for c in res["cases"]:
        if "skipped" in c:
            L.append("%-4s %-66s %s" % (c["case"], c["label"][:66], c["skipped"]))
            continue
        if "ms_median" in c:
            extra = ""
            if c.get("rows"):
                extra = "%.3f (%.3f-%.3f)" % (c["us_per_row"], c["us_per_row_min"], c["us_per_row_max"])
            if "kms_calls" in c:
                extra += " | calls %s" % c["kms_calls"]
                if c.get("emulator_calls") and any(x is not None for x in c["emulator_calls"]):
                    extra += " emulator %s" % c["emulator_calls"]
                if "wrapped_deks_before" in c:
                    extra += " wrapped DEKs before %s" % c["wrapped_deks_before"]
                if "coalesced_waits" in c:
                    extra += " waits %s" % c["coalesced_waits"]
            L.append("%-4s %-66s %9s %11.1f %-21s %s" % (c["case"], c["label"][:66], c.get("rows") or "",
                                                         c["ms_median"], "%.1f-%.1f" % (c["ms_min"], c["ms_max"]), extra))
        else:
            L.append("%-4s %-66s %9s %11s %-21s tps c1 %s c2 %s" % (
                c["case"], c["label"][:66], "", "x%.2f" % c["ratio_median"],
                "x%.2f-x%.2f" % (c["ratio_min"], c["ratio_max"]), c["tps_c1"], c["tps_c2"]))
    L.append("")
    L.append("storage (100-byte values):")
    for s in res.get("storage", []):
        if "skipped" in s:
            L.append("  %-55s %s" % (s["label"], s["skipped"]))
        else:
            L.append("  %-55s %6.1f bytes/value, overhead %5.1f" % (s["label"], s["bytes_per_value"], s["overhead_bytes"]))
    L.append("")
    L.append("targets:")
    for t in res["targets"]:
        v = t["value"]
        vs = "-" if v is None else (("%.3f" % v) if isinstance(v, float) else str(v))
        L.append("  %-4s %-72s %8s  (%s) %s" % (t["result"], t["target"], vs, t["limit"], t["detail"]))
    for n in res["notes"]:
        L.append("note: " + n)
    L.append("elapsed: %.0f s" % res["elapsed_s"])
    return "\n".join(L)


def write_outputs(res, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out, "results.csv"), "w") as f:
        f.write("case,id,label,rows,ms_median,ms_min,ms_max,us_per_row,us_per_row_min,us_per_row_max,kms_calls,skipped\n")
        for c in res["cases"]:
            def q(s):
                return '"%s"' % str(s).replace('"', '""')
            if "ratio_median" in c:
                f.write("%s,%s,%s,,,,,,,,,\n" % (c["case"], c["id"], q(c["label"] + " ratio=%.3f" % c["ratio_median"])))
                continue
            f.write(",".join(str(x) for x in [
                c["case"], c["id"], q(c["label"]), c.get("rows", ""), c.get("ms_median", ""), c.get("ms_min", ""),
                c.get("ms_max", ""), c.get("us_per_row", ""), c.get("us_per_row_min", ""),
                c.get("us_per_row_max", ""), q(c.get("kms_calls", "")), q(c.get("skipped", ""))]) + "\n")
    with open(os.path.join(out, "table.txt"), "w") as f:
        f.write(fmt_table(res) + "\n")
    chart(res, out)


def chart(res, out):
    """Per-row cost of cases 1-3 (median, whiskers min-max), log scale."""
    if shutil.which("gnuplot") is None:
        return
    dat = os.path.join(out, "chart.dat")
    ids = [c for c in res["cases"] if c["case"] in (1, 2, 3) and "us_per_row" in c]
    with open(dat, "w") as f:
        for i, c in enumerate(ids):
            lab = c["id"].replace("_", " ")
            f.write('%d "%s" %f %f %f %d\n' % (i, lab, c["us_per_row"], c["us_per_row_min"], c["us_per_row_max"],
                                               1 if c["id"].startswith("kms") else (0 if c["case"] == 1 else 2)))
    gp = """
set terminal pngcairo size 1100,600 font ",10"
set output '{out}/chart.png'
set title "kms_pg vs pgcrypto: time per row, 100-byte values (median, min-max), {cpu}, {nproc} cores"
set ylabel "microseconds per row (log scale)"
set logscale y
set style fill solid 0.8 border -1
set boxwidth 0.7
set xtics rotate by 35 right nomirror
set grid ytics
set key off
set yrange [0.05:*]
set palette defined (0 "#999999", 1 "#2b7bba", 2 "#d95f02")
unset colorbox
plot '{dat}' using 1:3:6:xtic(2) with boxes lc palette, \
     '' using 1:3:4:5 with yerrorbars lc rgb "black" pt 0, \
     '' using 1:3:(sprintf("%.2f", $3)) with labels offset 0,0.8 font ",8"
""".format(out=out, dat=dat, cpu=res["machine"]["cpu_model"].replace('"', ""), nproc=res["machine"]["nproc"])
    subprocess.run(["gnuplot"], input=gp, text=True, check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the per-row cases (>= 3)")
    ap.add_argument("--big-reps", type=int, default=3, help="repetitions of the other cases (>= 3)")
    ap.add_argument("--n", type=int, default=200000)
    ap.add_argument("--n-pgp", type=int, default=20000)
    ap.add_argument("--n-big", type=int, default=1000000)
    ap.add_argument("--n-cols", type=int, default=50000, help="rows of the protected-column cases (case 10)")
    ap.add_argument("--dek-max-messages", type=int, default=250000)
    ap.add_argument("--pgbench-seconds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--only", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="comma-separated case numbers (development; targets of other cases are not checked)")
    a = ap.parse_args()
    a.reps = max(3, a.reps)
    b = Bench(a)
    out = os.path.join(a.workdir, "out")
    os.makedirs(out, exist_ok=True)
    try:
        b.run()
    finally:
        if b.results.get("machine") and "elapsed_s" in b.results:
            write_outputs(b.results, out)
    print(fmt_table(b.results))


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        log("bench: %s" % e)
        sys.exit(1)
