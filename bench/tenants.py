#!/usr/bin/python3
"""kms_pg DEK cache at many tenants (issue 19): provider calls, time per row
and shared memory against the number of tenants, local provider.

Not part of the test suite.  Standard library only.  Runs a throwaway
cluster per configuration from a PostgreSQL tree given by --pgroot (a copy
of /usr/lib/postgresql/N and /usr/share/postgresql/N with kms_pg installed
into it by `make install DESTDIR=...`, so that a build of an older commit
can be measured next to the current one without touching the shared
install), as the server user:

  bench/tenants.py --pgroot /tmp/pgp_after --label after --out bench/out/tenants_after.json
  bench/tenants.py --plot bench/out/tenants_before.json bench/out/tenants_after.json \
      --svg docs/tenants.svg

Cases, with the tenant in kms_pg.kms_context_keys and 100-byte... short values:
  * tenants T in --tenants, rows max(--rows, T), tenant of row i either
    i % T (interleaved) or i * T / rows (grouped): encrypt (CREATE TABLE AS),
    cold read (kms_cache_flush() first), warm read (a new session: the
    shared level is warm, the backend-local one cold); GenerateDataKey and
    unwrap calls from kms_cache_stats deltas; time per row measured inside
    the server with clock_timestamp();
  * --cold-misses N at each --capacities C: N encryptions for N new tenants
    in a cache already holding C/2 entries (each one a miss), time per miss;
  * --format 2: values in format 2 (kms_pg.format = 2, the DEK registry);
    --restart-encrypt: after the reads, restart the server and encrypt the
    same rows again (a new table): format 2 reloads each tenant's DEK from
    the registry (unwraps) where format 1 makes new ones (GenerateDataKey);
    registry rows before and after are reported.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


class Emulator:
    """The project's KMS emulator (test/emulator) on 127.0.0.1 over HTTPS, for
    the AWS series: kms_pg signs real SigV4 requests, the emulator counts them."""
    AKID = "AKIAKMSPGBENCH000001"
    SECRET = "kms-pg-bench-secret/0123456789abcdefABCDEF"

    def __init__(self):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.dir = tempfile.mkdtemp(prefix="kms_tenants_emu_")
        certs = os.path.join(self.dir, "certs")
        os.makedirs(certs)
        subprocess.run(["sh", os.path.join(root, "test/emulator/make_certs.sh"), certs],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ca = os.path.join(certs, "ca.pem")
        portfile = os.path.join(self.dir, "port")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(root, "test/emulator/kms_emulator.py"),
             "--port", "0", "--port-file", portfile,
             "--tls-cert", os.path.join(certs, "server.pem"),
             "--tls-key", os.path.join(certs, "server.key"), "--region", "us-east-1",
             "--cred", f"{self.AKID}:{self.SECRET}", "--seed-alias", "alias/bench",
             "--quiet", "--die-with-parent"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "log"), "w"))
        for _ in range(200):
            if os.path.exists(portfile) and open(portfile).read().strip():
                break
            time.sleep(0.05)
        self.url = "https://127.0.0.1:" + open(portfile).read().strip()

    def counters(self):
        import ssl
        import urllib.request
        ctx = ssl.create_default_context(cafile=self.ca)
        with urllib.request.urlopen(self.url + "/__emulator/counters", context=ctx) as r:
            return json.load(r)

    def conf(self):
        return (f"kms_pg.provider = 'aws'\nkms_pg.endpoint = '{self.url}'\n"
                f"kms_pg.region = 'us-east-1'\nkms_pg.ca_file = '{self.ca}'\n"
                "kms_pg.credential_sources = 'env'\n")

    def env(self):
        e = dict(os.environ)
        e.update(AWS_ACCESS_KEY_ID=self.AKID, AWS_SECRET_ACCESS_KEY=self.SECRET)
        return e

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    def __init__(self, pgroot, entries, port, emulator=None, fmt=1):
        self.emulator = emulator
        self.fmt = fmt
        self.bin = os.path.join(pgroot, "usr/lib/postgresql/15/bin")
        self.dir = tempfile.mkdtemp(prefix="kms_tenants_")
        self.data = os.path.join(self.dir, "data")
        self.port = port
        mk = os.path.join(self.dir, "master.key")
        with open(mk, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        os.chmod(mk, 0o600)
        subprocess.run([os.path.join(self.bin, "initdb"), "-D", self.data, "-A", "trust"],
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"""
shared_preload_libraries = 'kms_pg'
kms_pg.master_key_file = '{mk}'
kms_pg.cache_entries = {entries}
kms_pg.key_id = 'alias/bench'
kms_pg.kms_context_keys = 'tenant'
port = {port}
unix_socket_directories = '{self.dir}'
listen_addresses = ''
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
autovacuum = off
jit = off
max_parallel_workers_per_gather = 0
max_wal_size = 8GB
""")
            if fmt != 1:
                f.write(f"kms_pg.format = {fmt}\n")
            if emulator:
                f.write(emulator.conf())
        subprocess.run([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l",
                        os.path.join(self.dir, "log"), "-w", "start"], check=True,
                       stdout=subprocess.DEVNULL, env=emulator.env() if emulator else None)
        self.sql("CREATE EXTENSION kms_pg;" +
                 ("" if emulator else " SELECT kms_create_key('alias/bench');"))

    def sql(self, script):
        r = subprocess.run([os.path.join(self.bin, "psql"), "-h", self.dir, "-p", str(self.port),
                            "-d", "postgres", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
                           input=script, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return r.stdout.strip()

    def timed(self, stmt, pre=""):
        """ms of stmt, inside the server."""
        out = self.sql(pre + "\nSELECT clock_timestamp() AS t0 \\gset\n" + stmt +
                       ";\nSELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000, 1);")
        return float(out.splitlines()[-1])

    def stats(self):
        cols = ["generate_calls", "decrypt_calls", "evictions", "entries", "capacity"]
        v = self.sql("SELECT " + ", ".join(cols) + " FROM kms_cache_stats").split("|")
        s = dict(zip(cols, map(int, v)))
        try:
            s["shared_memory_bytes"] = int(self.sql("SELECT shared_memory_bytes FROM kms_cache_stats"))
        except RuntimeError:
            # before issue 19: the named allocations and the index estimate are not reported
            s["shared_memory_bytes"] = int(self.sql(
                "SELECT sum(allocated_size) FROM pg_shmem_allocations WHERE name LIKE 'kms_pg%'"))
        if self.emulator:
            c = self.emulator.counters()
            s["kms_generate"] = c.get("GenerateDataKey", 0)
            s["kms_decrypt"] = c.get("Decrypt", 0)
            s["kms_total"] = c.get("total", 0)
        return s

    def restart(self):
        subprocess.run([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l",
                        os.path.join(self.dir, "log"), "-w", "-m", "fast", "restart"], check=True,
                       stdout=subprocess.DEVNULL, env=self.emulator.env() if self.emulator else None)

    def registry_rows(self):
        if self.fmt != 2:
            return 0
        return int(self.sql("SELECT count(*) FROM kms_dek_registry"))

    def stop(self):
        subprocess.run([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "fast", "stop"],
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def tenant_case(cl, tenants, rows, order, restart_encrypt=False):
    tex = f"i % {tenants}" if order == "interleaved" else f"(i::bigint * {tenants} / {rows})"
    ctx = f"jsonb_build_object('tenant', {tex})"
    res = {"tenants": tenants, "rows": rows, "order": order}
    cl.sql("DROP TABLE IF EXISTS ct; SELECT kms_cache_flush();")
    s0 = cl.stats()
    ms = cl.timed(f"CREATE TABLE ct AS SELECT i, kms_encrypt_text('value ' || i, {ctx}) AS c "
                  f"FROM generate_series(0, {rows - 1}) i")
    s1 = cl.stats()
    res["encrypt"] = {"ms": ms, "us_per_row": 1000.0 * ms / rows,
                      "calls": s1["generate_calls"] - s0["generate_calls"]}
    if cl.emulator:
        res["encrypt"]["kms_requests"] = s1["kms_total"] - s0["kms_total"]
        res["encrypt"]["kms_generate"] = s1["kms_generate"] - s0["kms_generate"]
    read = f"SELECT count(kms_decrypt_text(c, {ctx})) FROM ct"
    ms = cl.timed(read, pre="SELECT kms_cache_flush();")
    s2 = cl.stats()
    res["cold_read"] = {"ms": ms, "us_per_row": 1000.0 * ms / rows,
                        "calls": s2["decrypt_calls"] - s1["decrypt_calls"]}
    if cl.emulator:
        res["cold_read"]["kms_requests"] = s2["kms_total"] - s1["kms_total"]
        res["cold_read"]["kms_decrypt"] = s2["kms_decrypt"] - s1["kms_decrypt"]
    ms = cl.timed(read)
    s3 = cl.stats()
    res["warm_read"] = {"ms": ms, "us_per_row": 1000.0 * ms / rows,
                        "calls": s3["decrypt_calls"] - s2["decrypt_calls"]}
    if cl.emulator:
        res["warm_read"]["kms_requests"] = s3["kms_total"] - s2["kms_total"]
    res["evictions"] = s3["evictions"] - s0["evictions"]
    res["entries"] = s3["entries"]
    res["capacity"] = s3["capacity"]
    res["shared_memory_bytes"] = s3["shared_memory_bytes"]
    res["format"] = cl.fmt
    res["registry_rows"] = cl.registry_rows()
    if restart_encrypt:
        cl.restart()
        s4 = cl.stats()
        ms = cl.timed(f"CREATE TABLE ct2 AS SELECT i, kms_encrypt_text('value ' || i, {ctx}) AS c "
                      f"FROM generate_series(0, {rows - 1}) i")
        s5 = cl.stats()
        res["restart_encrypt"] = {"ms": ms, "us_per_row": 1000.0 * ms / rows,
                                  "generate_calls": s5["generate_calls"] - s4["generate_calls"],
                                  "unwraps": s5["decrypt_calls"] - s4["decrypt_calls"],
                                  "registry_rows_after": cl.registry_rows()}
        if cl.emulator:
            res["restart_encrypt"]["kms_generate"] = s5["kms_generate"] - s4["kms_generate"]
            res["restart_encrypt"]["kms_decrypt"] = s5["kms_decrypt"] - s4["kms_decrypt"]
        cl.sql("DROP TABLE ct2;")
    cl.sql("DROP TABLE ct;")
    return res


def cold_misses(cl, n, capacity):
    # half full first, so the misses run in a populated index and sweep
    fill = capacity // 2
    cl.sql(f"SELECT count(kms_encrypt_text('x', jsonb_build_object('tenant', 'fill' || i))) "
           f"FROM generate_series(1, {fill}) i")
    s0 = cl.stats()
    ms = cl.timed(f"SELECT count(kms_encrypt_text('x', jsonb_build_object('tenant', 'miss' || i))) "
                  f"FROM generate_series(1, {n}) i")
    s1 = cl.stats()
    return {"capacity": capacity, "misses": n, "prefilled": fill, "ms": ms,
            "us_per_miss": 1000.0 * ms / n, "calls": s1["generate_calls"] - s0["generate_calls"],
            "shared_memory_bytes": s1["shared_memory_bytes"]}


def run(a):
    out = {"label": a.label, "pgroot": a.pgroot, "provider": a.provider, "format": a.format, "cases": [],
           "cold_misses": [], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    port = a.port
    emu = Emulator() if a.provider == "aws" else None
    try:
        run_configs(a, out, port, emu)
    finally:
        if emu:
            emu.stop()
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


def run_configs(a, out, port, emu):
    for spec in a.configs:
        entries, tl = spec.split(":")
        entries = int(entries)
        cl = Cluster(a.pgroot, entries, port, emu, a.format)
        try:
            for t in [int(x) for x in tl.split(",")]:
                for order in a.orders.split(","):
                    if t == 1 and order == "grouped":
                        continue
                    rows = max(a.rows, t)
                    log(f"{a.label}: capacity {entries}, {t} tenants, {rows} rows, {order}")
                    r = tenant_case(cl, t, rows, order, a.restart_encrypt)
                    log(f"  {json.dumps(r)}")
                    out["cases"].append(r)
        finally:
            cl.stop()
    for c in [int(x) for x in a.capacities.split(",") if x]:
        cl = Cluster(a.pgroot, c, port, emu, a.format)
        try:
            log(f"{a.label}: {a.cold_misses} cold misses at capacity {c}")
            r = cold_misses(cl, a.cold_misses, c)
            log(f"  {json.dumps(r)}")
            out["cold_misses"].append(r)
        finally:
            cl.stop()


def svg_plot(runs, path):
    """Two log-log panels: time per row and provider calls per row (encrypt and
    cold read, interleaved) against tenants, one line per run and phase."""
    import math
    W, H, M = 460, 300, 55
    colors = {"before": "#c0392b", "after": "#2471a3"}
    dash = {"encrypt": "", "cold_read": "6,4"}
    panels = [("us_per_row", "time per row (µs)"), ("calls_per_row", "provider calls per row")]
    pts = {}
    for run in runs:
        for c in run["cases"]:
            if c["order"] != "interleaved":
                continue
            for ph in ("encrypt", "cold_read"):
                key = (run["label"], ph)
                pts.setdefault(key, []).append(
                    (c["tenants"], c[ph]["us_per_row"], c[ph]["calls"] / c["rows"]))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 40}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{2 * W}" height="{H + 40}" fill="white"/>']
    for pi, (field, title) in enumerate(panels):
        x0 = pi * W
        vals = [p[1 if field == "us_per_row" else 2] for v in pts.values() for p in v]
        vals = [v for v in vals if v > 0] or [1]
        ylo = 10 ** math.floor(math.log10(min(vals)))
        yhi = 10 ** math.ceil(math.log10(max(vals)))
        if yhi <= ylo:
            yhi = ylo * 10
        tx = [p[0] for v in pts.values() for p in v] or [1]
        xlo, xhi = 1, 10 ** math.ceil(math.log10(max(tx)))

        def X(t):
            return x0 + M + (W - 2 * M + 20) * (math.log10(max(t, 1)) - math.log10(xlo)) / \
                max(math.log10(xhi) - math.log10(xlo), 1e-9)

        def Y(v):
            v = max(v, ylo)
            return H - M + 20 - (H - 2 * M) * (math.log10(v) - math.log10(ylo)) / \
                (math.log10(yhi) - math.log10(ylo))
        out.append(f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-size="13">{title}</text>')
        out.append(f'<line x1="{X(xlo)}" y1="{Y(ylo)}" x2="{X(xhi)}" y2="{Y(ylo)}" stroke="black"/>')
        out.append(f'<line x1="{X(xlo)}" y1="{Y(ylo)}" x2="{X(xlo)}" y2="{Y(yhi)}" stroke="black"/>')
        d = 0
        while 10 ** d <= xhi:
            out.append(f'<text x="{X(10 ** d)}" y="{Y(ylo) + 14}" text-anchor="middle">{10 ** d:g}</text>')
            d += 1
        e = math.log10(ylo)
        while 10 ** e <= yhi * 1.0001:
            out.append(f'<text x="{X(xlo) - 4}" y="{Y(10 ** e) + 4}" text-anchor="end">{10 ** e:g}</text>')
            out.append(f'<line x1="{X(xlo)}" y1="{Y(10 ** e)}" x2="{X(xhi)}" y2="{Y(10 ** e)}" stroke="#ddd"/>')
            e += 1
        out.append(f'<text x="{x0 + W / 2}" y="{H + 10}" text-anchor="middle">tenants (interleaved rows)</text>')
        for (label, ph), p in sorted(pts.items()):
            p = sorted(p)
            coords = " ".join(f"{X(t):.1f},{Y(v[0] if field == 'us_per_row' else v[1]):.1f}"
                              for t, *v in p)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{colors.get(label, "gray")}" '
                       f'stroke-width="2" stroke-dasharray="{dash[ph]}"/>')
    ly = H + 28
    lx = 20
    for label in colors:
        for ph in ("encrypt", "cold_read"):
            out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 30}" y2="{ly}" stroke="{colors[label]}" '
                       f'stroke-width="2" stroke-dasharray="{dash[ph]}"/>')
            out.append(f'<text x="{lx + 35}" y="{ly + 4}">{label}: {ph.replace("_", " ")}</text>')
            lx += 190
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def table(runs):
    lines = ["| run | provider | capacity | tenants | order | rows | encrypt µs/row | GenerateDataKey | cold read µs/row | unwraps | warm read µs/row | warm unwraps | KMS requests (encrypt / cold / warm) | evictions | shared memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def kms(c):
        if "kms_requests" not in c["encrypt"]:
            return "-"
        return (f"{c['encrypt']['kms_requests']:,} / {c['cold_read']['kms_requests']:,} / "
                f"{c['warm_read']['kms_requests']:,}")
    for run in runs:
        for c in run["cases"]:
            lines.append(f"| {run['label']} | {run.get('provider', 'local')}{' v' + str(run['format']) if run.get('format', 1) != 1 else ''} | {c['capacity']:,} | {c['tenants']:,} | {c['order']} | {c['rows']:,} | "
                         f"{c['encrypt']['us_per_row']:.1f} | {c['encrypt']['calls']:,} | "
                         f"{c['cold_read']['us_per_row']:.1f} | {c['cold_read']['calls']:,} | "
                         f"{c['warm_read']['us_per_row']:.1f} | {c['warm_read']['calls']:,} | "
                         f"{kms(c)} | {c['evictions']:,} | {c['shared_memory_bytes'] / 1048576:.1f} MiB |")
    if any(run["cold_misses"] for run in runs):
        lines += ["", "| run | provider | capacity | cold misses | prefilled | ms | µs/miss | GenerateDataKey | shared memory |",
                  "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for c in run["cold_misses"]:
            lines.append(f"| {run['label']} | {run.get('provider', 'local')} | {c['capacity']:,} | {c['misses']:,} | {c['prefilled']:,} | "
                         f"{c['ms']:.0f} | {c['us_per_miss']:.1f} | {c['calls']:,} | "
                         f"{c['shared_memory_bytes'] / 1048576:.1f} MiB |")
    rs = [(run, c) for run in runs for c in run["cases"] if "restart_encrypt" in c]
    if rs:
        lines += ["", "| run | provider | format | capacity | tenants | order | rows | registry rows | "
                  "after restart: encrypt µs/row | GenerateDataKey | unwraps | KMS GenerateDataKey / Decrypt | registry rows after |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for run, c in rs:
            r = c["restart_encrypt"]
            lines.append(f"| {run['label']} | {run.get('provider', 'local')} | {c.get('format', 1)} | "
                         f"{c['capacity']:,} | {c['tenants']:,} | {c['order']} | {c['rows']:,} | "
                         f"{c.get('registry_rows', 0):,} | {r['us_per_row']:.1f} | {r['generate_calls']:,} | "
                         f"{r['unwraps']:,} | "
                         f"{(str(format(r['kms_generate'], ',')) + ' / ' + format(r['kms_decrypt'], ',')) if 'kms_generate' in r else '-'} | "
                         f"{r['registry_rows_after']:,} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pgroot")
    ap.add_argument("--label", default="after")
    ap.add_argument("--out")
    ap.add_argument("--port", type=int, default=55419)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--orders", default="interleaved,grouped")
    ap.add_argument("--configs", nargs="*", default=["65536:1,1000,10000,100000", "1048576:1000000"],
                    help="capacity:tenants,tenants,...  one cluster each")
    ap.add_argument("--capacities", default="65536,1048576")
    ap.add_argument("--provider", choices=["local", "aws"], default="local",
                    help="aws: kms_pg.provider = 'aws' against the project's KMS emulator, "
                         "whose request counters are reported beside kms_cache_stats")
    ap.add_argument("--cold-misses", type=int, default=2000)
    ap.add_argument("--format", type=int, choices=[1, 2], default=1,
                    help="ciphertext format (kms_pg.format); 2 uses the DEK registry")
    ap.add_argument("--restart-encrypt", action="store_true",
                    help="after each case's reads, restart and encrypt the same rows again")
    ap.add_argument("--plot", nargs="*", help="result files to plot and tabulate")
    ap.add_argument("--svg")
    a = ap.parse_args()
    if a.plot:
        runs = [json.load(open(p)) for p in a.plot]
        if a.svg:
            svg_plot(runs, a.svg)
        print(table(runs))
        return
    if os.geteuid() == 0:
        sys.exit("run as the server user (postgres)")
    run(a)


if __name__ == "__main__":
    main()
