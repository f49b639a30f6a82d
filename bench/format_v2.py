#!/usr/bin/python3
"""kms_pg format v2 against v1 (issue 15): bytes per value and rotation cost.

Started by bench/format_v2 (as the server user, in a throwaway work
directory); standard library only.  Uses the INSTALLED extension, the
cluster settings of bench/bench.py and, for the AWS provider, the project's
KMS emulator over HTTPS on loopback (bench.py's Aws class).

Part 1, bytes per value: --size-rows values of an 11-byte plaintext (an SSN)
and of a 100-byte one, for each provider (local, AWS) and format (v1, v2),
with no provider-context key and with kms_context_keys = 'tenant';
overhead = length(value) - length(plaintext), and the table's size beside
the same plaintexts unencrypted.

Part 2, rotation: a table of --rot-rows values (100 bytes, context
{"id": i, "tenant": i % 2}, kms_pg.dek_max_messages = --dek-max-messages so
that the column holds K DEKs) for each format and provider:
  v1: CALL kms_rotate_column(tbl, col, new_key, --batch) (every row is
      rewritten);
  v2: the registry rotation of the rows of the old key (no row of the user
      table is written).
Reported: time (inside the server; v2: median of --v2-reps rotations along
a chain of keys), provider calls per rotation (kms_cache_stats deltas, and
the emulator's own counters for AWS), pg_stat_user_tables.n_tup_upd of the
user table (and of kms_dek_registry, over all repetitions) before and
after, and the time beyond the provider calls: total time minus K times
the marginal cost of one provider call, measured right after as the
difference between kms_rewrap of 2K and of K one-value DEKs (cold cache,
fresh sessions, median of 3), so that session and TLS set-up cancel out.
--rot-rows-v1 can be smaller than --rot-rows: a v1 rotation rewrites every
row, which at 10M rows takes long.

Writes --out (JSON) and prints a table.
"""

import argparse
import json
import os
import sys
import statistics
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (Cluster, Aws, SETTINGS, the same server settings)

CTX = "jsonb_build_object('id', i, 'tenant', i % 2)"
SSN = "convert_to(lpad((i % 1000000000)::text, 9, '0') || '-x', 'UTF8')"      # 11 bytes
DATA100 = "decode(substr(repeat(md5(i::text), 7), 1, 200), 'hex')"             # 100 bytes

# How this build writes format 2 and rotates its registry (issue15v2):
V2_ON = "SET kms_pg.format = 2;\n"
V1_ON = "SET kms_pg.format = 1;\n"
# rewraps the registry rows of a key (its canonical id) under another key
V2_ROTATE = "SELECT * FROM kms_rotate_key_registry('%s', '%s')"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class V2Bench:
    def __init__(self, a):
        self.a = a
        self.aws = B.Aws(a.root, a.workdir)
        self.res = {"sizes": [], "rotation": [], "notes": []}

    def note(self, m):
        log("   " + m)
        self.res["notes"].append(m)

    def setup(self):
        if self.aws.available_files():
            try:
                self.aws.start()
            except (B.BenchError, OSError) as e:
                self.note("AWS emulator did not start: %s" % e)
                self.aws.proc = None
        self.cl = B.Cluster(self.a.workdir, self.aws.env if self.aws.proc else None)
        self.cl.initdb()
        if self.aws.proc:
            with open(os.path.join(self.cl.data, "postgresql.conf"), "a") as f:
                for k, v in self.aws.conf:
                    f.write("%s = %s\n" % (k, v))
        self.cl.start()
        self.cl.psql("CREATE DATABASE bench;\n", db="postgres")
        self.cl.psql(r"""
CREATE EXTENSION kms_pg;
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
        self.res["machine"] = {"postgresql": self.cl.value("SELECT version()"),
                               "nproc": os.cpu_count(),
                               "loadavg_start": open("/proc/loadavg").read().split()[:3]}
        self.providers = ["local"]
        if self.aws.proc:
            rc, _, err = self.cl.psql(self.kms("aws") + "SELECT length(kms_encrypt('\\x00'::bytea));\n", check=False)
            if rc == 0:
                self.providers.append("aws")
            else:
                self.note("AWS provider not available: %s" % err.strip()[-200:])
        if "aws" not in self.providers:
            self.note("AWS provider not measured")
        self.has_v2 = self.cl.value("SELECT to_regclass('kms_dek_registry') IS NOT NULL") == "t"
        self.formats = (1, 2) if self.has_v2 else (1,)
        if not self.has_v2:
            self.note("this build has no format 2 (no kms_dek_registry): format 1 only")

    def kms(self, pv, fmt=None):
        s = ("SET kms_pg.provider = aws;\nSET kms_pg.key_id = '%s';\n" % self.aws.key_alias if pv == "aws"
             else "SET kms_pg.provider = local;\nSET kms_pg.key_id = 'alias/bench';\n")
        if fmt == 2:
            s += V2_ON
        elif fmt == 1 and self.has_v2:
            s += V1_ON
        return s

    def n_tup_upd(self, table):
        # a fresh session: every earlier session has exited and flushed its counters
        return int(self.cl.value("SELECT pg_stat_clear_snapshot(); SELECT coalesce(n_tup_upd, 0) "
                                 "FROM pg_stat_user_tables WHERE relid = '%s'::regclass" % table))

    def aws_calls(self):
        if "aws" not in self.providers:
            return None
        return self.aws.counters()

    # -- part 1 -------------------------------------------------------------

    def sizes(self):
        n = self.a.size_rows
        log("== bytes per value, %d values each" % n)
        for pname, pexpr, plen in (("ssn", SSN, 11), ("100B", DATA100, 100)):
            self.cl.psql("CREATE TABLE sz_plain_%s AS SELECT i, %s AS c FROM generate_series(1, %d) i;\n"
                         "VACUUM ANALYZE sz_plain_%s;\n" % (pname, pexpr, n, pname))
            plain = int(self.cl.value("SELECT pg_total_relation_size('sz_plain_%s')" % pname))
            for pv in self.providers:
                for fmt in self.formats:
                    for keys in ("", "tenant"):
                        t = "sz_%s_%s_v%d_%s" % (pname, pv, fmt, keys or "nokeys")
                        self.cl.psql(self.kms(pv, fmt) + "SET kms_pg.kms_context_keys = '%s';\n"
                                     "CREATE TABLE %s AS SELECT i, kms_encrypt(%s, %s) AS c "
                                     "FROM generate_series(1, %d) i;\nVACUUM ANALYZE %s;\n"
                                     % (keys, t, pexpr, CTX, n, t))
                        row = self.cl.value(
                            "SELECT min(length(c) - %d) || ',' || max(length(c) - %d) || ',' || "
                            "count(*) FILTER (WHERE get_byte(c, 4) = %d) || ',' || "
                            "pg_total_relation_size('%s') FROM %s" % (plen, plen, fmt, t, t))
                        omin, omax, nfmt, size = (int(x) for x in row.split(","))
                        if nfmt != n:
                            raise B.BenchError("%s: %d of %d values have format %d" % (t, nfmt, n, fmt))
                        self.res["sizes"].append({
                            "plaintext": pname, "plaintext_bytes": plen, "provider": pv, "format": fmt,
                            "kms_context_keys": keys, "rows": n, "overhead_min": omin, "overhead_max": omax,
                            "table_bytes": size, "plain_table_bytes": plain})
                        self.cl.psql("DROP TABLE %s;\n" % t)
                        log("   %-5s %-5s v%d keys=%-6s overhead %d..%d bytes, table %.1f MB (plain %.1f MB)"
                            % (pname, pv, fmt, keys or "-", omin, omax, size / 1e6, plain / 1e6))

    # -- part 2 -------------------------------------------------------------

    def provider_call_time(self, pv, k, key):
        """(milliseconds of k provider rewraps, per-call ms): the marginal cost of a
        provider call, measured as kms_rewrap of 2k against k one-value DEKs
        (dek_max_messages = 1; cache flushed first; fresh sessions), so that
        fixed costs (session, TLS handshake) cancel out; median of 3."""
        st = self.kms(pv, 1) + "SET kms_pg.dek_max_messages = 1;\n"
        self.cl.psql(st + "DROP TABLE IF EXISTS calls;\n"
                     "CREATE TABLE calls AS SELECT i, kms_encrypt(%s, %s) c FROM generate_series(1, %d) i;\n"
                     % (DATA100, CTX, 2 * k))
        per_call = []
        for _ in range(3):
            ms = {}
            for rows in (k, 2 * k):
                self.cl.psql("SELECT kms_cache_flush();\n")
                ms[rows] = self.cl.timed("SELECT sum(length(kms_rewrap(c, '%s'))) FROM calls WHERE i <= %d"
                                         % (key, rows), st)
            per_call.append((ms[2 * k] - ms[k]) / k)
        per = statistics.median(per_call)
        return k * per, per

    def new_key(self, pv, name):
        """A fresh key: its canonical id (local uuid, AWS key ARN)."""
        if pv == "local":
            return self.cl.value("SELECT kms_create_key('alias/%s')" % name)
        return self.aws_second_key()

    def rotation(self):
        lim = self.a.dek_max_messages
        for pv in self.providers:
            for fmt in self.formats:
                n = self.a.rot_rows if fmt == 2 else self.a.rot_rows_v1
                if n <= 0:
                    continue
                t = "rot_%s_v%d" % (pv, fmt)
                log("== rotation, %s provider, format %d, %d rows" % (pv, fmt, n))
                # a key of its own, so that the rotation meets only this table's DEKs
                src_key = self.new_key(pv, "bench-src-%s-v%d" % (pv, fmt))
                new_key = self.new_key(pv, "bench-new-%s-v%d" % (pv, fmt))
                st = (self.kms(pv, fmt) + "SET kms_pg.key_id = '%s';\nSET kms_pg.dek_max_messages = %d;\n"
                      % (src_key, lim))
                t0 = time.time()
                self.cl.psql(st + "CREATE TABLE %s (i int PRIMARY KEY, c bytea);\n"
                             "INSERT INTO %s SELECT i, kms_encrypt(%s, %s) FROM generate_series(1, %d) i;\n"
                             "VACUUM ANALYZE %s;\nCHECKPOINT;\n" % (t, t, DATA100, CTX, n, t))
                self.note("%s: %d rows written in %.0f s" % (t, n, time.time() - t0))
                deks = int(self.cl.value("SELECT count(DISTINCT (kms_ciphertext_info(c)).dek_id) FROM %s" % t))
                upd0 = self.n_tup_upd(t)
                reg0 = self.n_tup_upd("kms_dek_registry") if fmt == 2 else None
                s0 = self.cl.stats()
                e0 = self.aws_calls() if pv == "aws" else None
                reps = []
                if fmt == 1:
                    reps.append(self.cl.timed("CALL kms_rotate_column('%s'::regclass, 'c', '%s', %d)"
                                              % (t, new_key, self.a.batch), st))
                else:
                    # --v2-reps rotations in a chain of keys (src -> new -> new2 ...), median
                    cur = src_key
                    for rep in range(self.a.v2_reps):
                        nxt = new_key if rep == 0 else self.new_key(pv, "bench-new-%s-v%d-%d" % (pv, fmt, rep))
                        reps.append(self.cl.timed(V2_ROTATE % (cur, nxt), st))
                        cur = nxt
                    new_key = cur
                ms = statistics.median(reps)
                calls = B.delta(s0, self.cl.stats())
                calls = {k: v // len(reps) for k, v in calls.items()}
                emu = None
                if e0 is not None:
                    e1 = self.aws_calls()
                    emu = {k: (e1[k] - e0.get(k, 0)) // len(reps) for k in e1
                           if isinstance(e1[k], int) and e1[k] != e0.get(k, 0)}
                upd1 = self.n_tup_upd(t)
                reg1 = self.n_tup_upd("kms_dek_registry") if fmt == 2 else None
                left = int(self.cl.value(
                    "SELECT count(*) FROM %s WHERE (kms_ciphertext_info(c)).key_id <> '%s'" % (t, new_key)))
                if left:
                    self.note("%s: %d values not under the new key after the rotation" % (t, left))
                k = calls["rewrap"] + calls["decrypt"] + calls["generate"]
                call_ms, per_call = self.provider_call_time(pv, k, new_key) if k else (0.0, 0.0)
                r = {"provider": pv, "format": fmt, "rows": n, "deks_in_column": deks, "ms": round(ms, 1),
                     "ms_reps": [round(x, 1) for x in reps], "ms_per_provider_call": round(per_call, 3),
                     "provider_calls": calls, "emulator_calls": emu, "n_tup_upd_before": upd0,
                     "n_tup_upd_after": upd1, "registry_n_tup_upd_before": reg0,
                     "registry_n_tup_upd_after": reg1, "provider_calls_ms": round(call_ms, 1),
                     "ms_beyond_provider_calls": round(ms - call_ms, 1), "values_not_rotated": left}
                self.res["rotation"].append(r)
                log("   %.1f ms, provider calls %s, n_tup_upd %d -> %d, beyond the calls %.1f ms"
                    % (ms, calls, upd0, upd1, ms - call_ms))
                self.cl.psql("DROP TABLE %s;\n" % t)

    def aws_second_key(self):
        """A new emulator key (KMS CreateKey through boto3, python3-boto3): its ARN."""
        import boto3
        kms = boto3.client("kms", endpoint_url=self.aws.endpoint, verify=self.aws.ca, region_name="us-east-1",
                           aws_access_key_id=self.aws.env["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=self.aws.env["AWS_SECRET_ACCESS_KEY"])
        return kms.create_key(Description="kms_pg format v2 bench")["KeyMetadata"]["Arn"]

    def run(self):
        t0 = time.time()
        try:
            self.setup()
            if not self.a.skip_sizes:
                self.sizes()
            self.rotation()
        finally:
            self.res["elapsed_s"] = round(time.time() - t0, 1)
            self.res["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3] \
                if "machine" in self.res else None
            if hasattr(self, "cl"):
                self.cl.stop()
            self.aws.stop()


def table(res):
    out = ["bytes per value (overhead = length(value) - length(plaintext))",
           "plaintext provider format context-keys rows overhead(bytes) table MB (plain MB)"]
    for s in res["sizes"]:
        ov = str(s["overhead_min"]) if s["overhead_min"] == s["overhead_max"] else \
            "%d..%d" % (s["overhead_min"], s["overhead_max"])
        out.append("%-9s %-8s v%d     %-12s %8d %10s %8.2f (%.2f)" % (
            s["plaintext"], s["provider"], s["format"], s["kms_context_keys"] or "-", s["rows"], ov,
            s["table_bytes"] / 1e6, s["plain_table_bytes"] / 1e6))
    out.append("")
    out.append("rotation")
    out.append("provider format rows DEKs ms provider-calls(rewrap/decrypt/generate) calls-ms beyond-ms "
               "n_tup_upd(before->after) registry n_tup_upd")
    for r in res["rotation"]:
        c = r["provider_calls"]
        out.append("%-8s v%d %10d %5d %10.1f %d/%d/%d %10.1f %10.1f %d->%d %s" % (
            r["provider"], r["format"], r["rows"], r["deks_in_column"], r["ms"], c["rewrap"], c["decrypt"],
            c["generate"], r["provider_calls_ms"], r["ms_beyond_provider_calls"], r["n_tup_upd_before"],
            r["n_tup_upd_after"], "" if r["registry_n_tup_upd_before"] is None else
            "%d->%d" % (r["registry_n_tup_upd_before"], r["registry_n_tup_upd_after"])))
    out += ["note: " + n for n in res["notes"]]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--size-rows", type=int, default=50000)
    ap.add_argument("--rot-rows", type=int, default=10000000, help="v2 values rotated")
    ap.add_argument("--rot-rows-v1", type=int, default=1000000, help="v1 values rotated (0: none)")
    ap.add_argument("--dek-max-messages", type=int, default=250000)
    ap.add_argument("--batch", type=int, default=10000, help="kms_rotate_column batch size")
    ap.add_argument("--v2-reps", type=int, default=3, help="registry rotations timed (median)")
    ap.add_argument("--skip-sizes", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    b = V2Bench(a)
    try:
        b.run()
    finally:
        out = a.out or os.path.join(a.workdir, "out", "format_v2.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            json.dump(b.res, f, indent=1)
    print(table(b.res))


if __name__ == "__main__":
    try:
        main()
    except B.BenchError as e:
        log("bench: %s" % e)
        sys.exit(1)
