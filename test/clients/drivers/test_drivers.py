#!/usr/bin/env python3
"""Application drivers against protected columns (docs/troubleshooting.md,
"Application drivers").

Starts its own cluster (kms_pg preloaded, local provider), protects every
column but the key of one table per driver -- text, varchar(20), date,
timestamp, numeric(12,3), int, bigint, boolean, uuid, jsonb, each sealed
under the row's (id, tenant) -- and writes to them as an application does,
with bound parameters of the columns' original types, through the table and
through the decrypting view:

  * psycopg2 (Debian python3-psycopg2): client-side literals, typed values;
  * psycopg 3 (Debian python3-psycopg): server-side parameters, also with
    prepare=True, and COPY FROM STDIN;
  * node-postgres (npm pg): untyped and $n::type parameters, named
    prepared statements (js/test_pg.mjs);
  * psql: PREPARE ... EXECUTE with typed and with text parameters.

The writer role may write but not decrypt; a reader role with EXECUTE on
kms_decrypt_pairs reads everything back through the view and must get
exactly what was written: backslashes, "\\x41..." strings, empty strings,
NULLs, any Unicode, and values of every type.  Every stored value must be
a kms_pg ciphertext.  Ends with "N passed, M failed"; exits non-zero on
failure.  Run as the unprivileged server user.
"""
import datetime
import decimal
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid

PG_BIN = os.environ.get("PG_BIN") or subprocess.run(
    ["pg_config", "--bindir"], stdout=subprocess.PIPE, text=True).stdout.strip() \
    or "/usr/lib/postgresql/15/bin"
HERE = os.path.dirname(os.path.abspath(__file__))

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print("ok - %s" % name)
    else:
        failed += 1
        print("not ok - %s %s" % (name, detail))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COLS = ["t", "vc", "d", "ts", "n", "i", "b", "bo", "u", "j"]
TYPES = ["text", "varchar(20)", "date", "timestamp", "numeric(12,3)", "int", "bigint", "boolean",
         "uuid", "jsonb"]
U1 = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
U2 = uuid.UUID("00000000-0000-0000-0000-000000000000")
D = decimal.Decimal

# id, tenant, then COLS.  Rows 1-3 go through the table, 4-6 through the view.
ROWS = [
    (1, 1, "back\\slash", "\\x41", datetime.date(2024, 2, 29),
     datetime.datetime(2024, 1, 2, 3, 4, 5, 678000), D("12345.678"), -7, 2 ** 40, True, U1,
     {"a": [1, "x\\y"], "b": None}),
    (2, 1, "\\x41424344", "", datetime.date(1, 1, 1), datetime.datetime(1999, 12, 31, 23, 59, 59),
     D("-0.001"), 2147483647, -(2 ** 63), False, U2, []),
    (3, 2, "", None, None, None, None, None, None, None, None, None),
    (4, 2, "ünïcödé ✓ 😀 '\"\t\n", "x" * 20, datetime.date(2038, 1, 19),
     datetime.datetime(2000, 2, 29, 12, 0), D("0.000"), 0, 1, True, U1, {"k": "ü"}),
    (5, 1, "\\xc54b5047", "\\\\", datetime.date(2024, 12, 31), datetime.datetime(2024, 12, 31, 0, 0),
     D("999999999.999"), -1, 42, False, U2, "just a string"),
    (6, 3, None, None, None, None, None, None, None, None, None, None),
]
# The UPDATEs each driver makes afterwards: row 1 through the table (a
# protected value and a context column), row 4 through the view.
UPD_TABLE = (1, {"tenant": 7, "d": datetime.date(2020, 5, 6), "t": "updated \\x00 text"})
UPD_VIEW = (4, {"tenant": 8, "n": D("1.5"), "vc": "\\x5c"})


def expected_rows():
    rows = {r[0]: list(r) for r in ROWS}
    for (rid, changes) in (UPD_TABLE, UPD_VIEW):
        for k, v in changes.items():
            rows[rid][(["id", "tenant"] + COLS).index(k)] = v
    return [tuple(rows[k]) for k in sorted(rows)]


TEST_MASTER_KEY = "4b4d53504720726567726573732074657374206d6173746572206b6579212121"


class Cluster:
    def __init__(self, tmp):
        self.tmp = tmp
        self.data = os.path.join(tmp, "data")
        self.port = free_port()
        subprocess.run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres",
                        "--no-sync", "-E", "UTF8", "--locale", "C"],
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("shared_preload_libraries = 'kms_pg'\n")
            f.write("kms_pg.keyring_file = 'kms_pg_keyring.json'\n")
            # local keys live in the key catalog under a master key; a fixed
            # test key, as in test/regress.conf (never do this in production)
            f.write("kms_pg.master_key_command = '/bin/echo %s'\n" % TEST_MASTER_KEY)
            f.write("listen_addresses = ''\nunix_socket_directories = '%s'\nport = %d\nfsync = off\n"
                    % (tmp, self.port))
        subprocess.run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l", os.path.join(tmp, "server.log"),
                        "-w", "start"], check=True, stdout=subprocess.DEVNULL)

    def psql(self, sql, user="postgres", check_rc=True, db="drivers"):
        r = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                            "-h", self.tmp, "-p", str(self.port), "-U", user, "-d", db, "-f", "-"],
                           input=sql.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if check_rc and r.returncode != 0:
            raise RuntimeError("psql failed: %s" % r.stderr.decode(errors="replace").strip())
        return r

    def stop(self):
        subprocess.run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


TABLES = ["drv_psycopg2", "drv_psycopg3", "drv_psycopg3_prep", "drv_copy", "drv_node", "drv_node_typed",
          "drv_psql"]


def setup(c):
    c.psql("CREATE DATABASE drivers", db="postgres")
    sql = ["CREATE EXTENSION kms_pg;",
           "SELECT kms_create_key('alias/drivers');",
           "ALTER DATABASE drivers SET kms_pg.key_id = 'alias/drivers';",
           "CREATE ROLE drv_writer LOGIN; CREATE ROLE drv_reader LOGIN;",
           "GRANT EXECUTE ON FUNCTION kms_decrypt_pairs(bytea, \"any\") TO drv_reader;",
           # key privileges: a new key gives PUBLIC encrypt only (docs/security.md)
           "SELECT kms_grant_key('alias/drivers', 'drv_reader', '{decrypt}');"]
    c.psql("\n".join(sql))
    for t in TABLES:
        cols = ", ".join("%s %s" % (n, ty) for n, ty in zip(COLS, TYPES))
        sql = ["CREATE TABLE %s (id int PRIMARY KEY, tenant int NOT NULL, %s);" % (t, cols),
               "GRANT SELECT, INSERT, UPDATE ON %s TO drv_writer;" % t,
               "GRANT SELECT ON %s TO drv_reader;" % t]
        sql += ["CALL kms_protect_column('%s', '%s', '{id,tenant}');" % (t, col) for col in COLS]
        sql += ["GRANT SELECT ON %s_decrypted TO drv_reader;" % t]
        c.psql("\n".join(sql))


def dsn(c, user):
    return "host=%s port=%d dbname=drivers user=%s" % (c.tmp, c.port, user)


def insert_sql(tbl, ph):
    return "INSERT INTO %s (id, tenant, %s) VALUES (%s)" % (tbl, ", ".join(COLS), ", ".join([ph] * 12))


def update_sql(tbl, changes, ph):
    return "UPDATE %s SET %s WHERE id = %s" % (tbl, ", ".join("%s = %s" % (k, ph) for k in changes), ph)


def read_back(c, tbl, name):
    """As the reader, through the view, with psycopg 3; compare to what was written."""
    import psycopg
    with psycopg.connect(dsn(c, "drv_reader")) as conn:
        rows = conn.execute("SELECT id, tenant, %s FROM %s_decrypted ORDER BY id" % (", ".join(COLS), tbl)).fetchall()
        plain = conn.execute(
            "SELECT count(*) FROM %s WHERE %s" % (tbl, " OR ".join(
                "(%s IS NOT NULL AND NOT kms_is_ciphertext(%s))" % (x, x) for x in COLS))).fetchone()[0]
    exp = expected_rows()
    got = [tuple(r) for r in rows]
    check("%s: every value read back through the view is what was written" % name, got == exp,
          "\n  got %r\n  expected %r" % ([g for g, e in zip(got, exp) if g != e],
                                         [e for g, e in zip(got, exp) if g != e]) if got != exp else "")
    check("%s: every stored value is a ciphertext" % name, plain == 0, "plaintext values: %s" % plain)


def writer_cannot_read(c, tbl, name):
    """The writer sees NULL for every protected column of the view, and only
    ciphertext in the table; kms_decrypt_pairs is refused."""
    import psycopg
    with psycopg.connect(dsn(c, "drv_writer"), autocommit=True) as conn:
        rows = conn.execute("SELECT id, %s FROM %s_decrypted ORDER BY id" % (", ".join(COLS), tbl)).fetchall()
        check("%s: writer reads NULL for every protected column of the view" % name,
              len(rows) == len(ROWS) and all(v is None for r in rows for v in r[1:]), repr(rows[:2]))
        try:
            conn.execute("SELECT kms_decrypt_pairs(t, 'id', id) FROM %s" % tbl).fetchall()
            check("%s: writer cannot call kms_decrypt_pairs" % name, False, "it could")
        except psycopg.errors.InsufficientPrivilege:
            check("%s: writer cannot call kms_decrypt_pairs" % name, True)


def test_psycopg2(c):
    import psycopg2
    import psycopg2.extras
    psycopg2.extras.register_uuid()
    tbl = "drv_psycopg2"

    def adapt(r):
        return [psycopg2.extras.Json(v) if i == 11 and v is not None else v for i, v in enumerate(r)]
    conn = psycopg2.connect(dsn(c, "drv_writer"))
    with conn, conn.cursor() as cur:
        for r in ROWS[:3]:
            cur.execute(insert_sql(tbl, "%s"), adapt(r))
        for r in ROWS[3:]:
            cur.execute(insert_sql(tbl + "_decrypted", "%s"), adapt(r))
        rid, ch = UPD_TABLE
        cur.execute(update_sql(tbl, ch, "%s"), list(ch.values()) + [rid])
        rid, ch = UPD_VIEW
        cur.execute(update_sql(tbl + "_decrypted", ch, "%s"), list(ch.values()) + [rid])
    conn.close()
    read_back(c, tbl, "psycopg2")


def test_psycopg3(c, tbl, prepare, name):
    import psycopg
    from psycopg.types.json import Jsonb

    def adapt(r):
        return [Jsonb(v) if i == 11 and v is not None else v for i, v in enumerate(r)]
    with psycopg.connect(dsn(c, "drv_writer")) as conn:
        # prepare=True: the same statement again and again, server-side prepared.
        for r in ROWS[:3]:
            conn.execute(insert_sql(tbl, "%s"), adapt(r), prepare=prepare)
        for r in ROWS[3:]:
            conn.execute(insert_sql(tbl + "_decrypted", "%s"), adapt(r), prepare=prepare)
        rid, ch = UPD_TABLE
        conn.execute(update_sql(tbl, ch, "%s"), list(ch.values()) + [rid], prepare=prepare)
        rid, ch = UPD_VIEW
        conn.execute(update_sql(tbl + "_decrypted", ch, "%s"), list(ch.values()) + [rid], prepare=prepare)
    read_back(c, tbl, name)


def test_copy(c):
    import psycopg
    from psycopg.types.json import Jsonb
    tbl = "drv_copy"
    with psycopg.connect(dsn(c, "drv_writer")) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY %s (id, tenant, %s) FROM STDIN" % (tbl, ", ".join(COLS))) as cp:
                for r in ROWS:
                    cp.write_row([Jsonb(v) if i == 11 and v is not None else v for i, v in enumerate(r)])
        rid, ch = UPD_TABLE
        conn.execute(update_sql(tbl, ch, "%s"), list(ch.values()) + [rid])
        rid, ch = UPD_VIEW
        conn.execute(update_sql(tbl + "_decrypted", ch, "%s"), list(ch.values()) + [rid])
    read_back(c, tbl, "psycopg 3 COPY")


def test_node(c):
    jsdir = os.path.join(HERE, "js")
    spec = {"rows": [], "upd_table": None, "upd_view": None, "cols": COLS, "types": TYPES}

    def js(v):
        if isinstance(v, datetime.datetime):
            return v.isoformat(sep=" ")
        if isinstance(v, datetime.date):
            return v.isoformat()
        if isinstance(v, (decimal.Decimal, uuid.UUID)):
            return str(v)
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2 ** 53:
            return str(v)       # beyond a JavaScript number
        return v
    spec["rows"] = [[js(v) for v in r] for r in ROWS]
    spec["upd_table"] = [UPD_TABLE[0], {k: js(v) for k, v in UPD_TABLE[1].items()}]
    spec["upd_view"] = [UPD_VIEW[0], {k: js(v) for k, v in UPD_VIEW[1].items()}]
    for tbl, typed in (("drv_node", False), ("drv_node_typed", True)):
        env = dict(os.environ, PGHOST=c.tmp, PGPORT=str(c.port), PGDATABASE="drivers", PGUSER="drv_writer",
                   DRV_TABLE=tbl, DRV_TYPED="1" if typed else "0", DRV_SPEC=json.dumps(spec))
        r = subprocess.run(["node", os.path.join(jsdir, "test_pg.mjs")], env=env, cwd=jsdir,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        name = "node-postgres (%s parameters, named prepared statements)" % ("$n::type" if typed else "untyped")
        check("%s: writes" % name, r.returncode == 0, r.stdout)
        read_back(c, tbl, name)


def test_psql(c):
    tbl = "drv_psql"

    def lit(v):
        if v is None:
            return "NULL"
        if isinstance(v, bool):
            return "true" if v else "false"
        return "'%s'" % str(v).replace("'", "''")

    def row_lits(r):
        return ", ".join(lit(json.dumps(v)) if i == 11 and v is not None else lit(v) for i, v in enumerate(r))
    types = "int, int, " + ", ".join(TYPES)
    sql = ["PREPARE ins_t(%s) AS %s;" % (types, insert_sql(tbl, "$%d")),
           "PREPARE ins_v(%s) AS %s;" % (types, insert_sql(tbl + "_decrypted", "$%d")),
           # text parameters for every column: the server casts text to the column
           "PREPARE ins_text(int, int, %s) AS %s;" % (", ".join(["text"] * 10), insert_sql(tbl, "$%d"))]
    sql = [s.replace("$%d", "$@") for s in sql]
    out = []
    for s in sql:
        n = 0
        while "$@" in s:
            n += 1
            s = s.replace("$@", "$%d" % n, 1)
        out.append(s)
    out.append("EXECUTE ins_t(%s);" % row_lits(ROWS[0]))
    out.append("EXECUTE ins_text(%s);" % row_lits(ROWS[1]))
    out.append("EXECUTE ins_t(%s);" % row_lits(ROWS[2]))
    for r in ROWS[3:]:
        out.append("EXECUTE ins_v(%s);" % row_lits(r))
    rid, ch = UPD_TABLE
    out.append("PREPARE upd_t(int, date, text, int) AS UPDATE %s SET tenant = $1, d = $2, t = $3 WHERE id = $4;" % tbl)
    out.append("EXECUTE upd_t(%s, %s, %s, %d);" % (lit(ch["tenant"]), lit(ch["d"]), lit(ch["t"]), rid))
    rid, ch = UPD_VIEW
    out.append("PREPARE upd_v(int, numeric, varchar) AS UPDATE %s_decrypted SET tenant = $1, n = $2, vc = $3 WHERE id = $4;" % tbl)
    out[-1] = out[-1].replace("numeric, varchar)", "numeric, varchar, int)")
    out.append("EXECUTE upd_v(%s, %s, %s, %d);" % (lit(ch["tenant"]), lit(ch["n"]), lit(ch["vc"]), rid))
    r = c.psql("\n".join(out), user="drv_writer", check_rc=False)
    check("psql PREPARE/EXECUTE: writes", r.returncode == 0, r.stderr.decode(errors="replace"))
    read_back(c, tbl, "psql PREPARE")


def main():
    tmp = tempfile.mkdtemp(prefix="kms_drivers.")
    c = Cluster(tmp)
    try:
        setup(c)
        for name, fn in (("psycopg2", lambda: test_psycopg2(c)),
                         ("psycopg3", lambda: test_psycopg3(c, "drv_psycopg3", False, "psycopg 3")),
                         ("psycopg3 prepare", lambda: test_psycopg3(c, "drv_psycopg3_prep", True,
                                                                    "psycopg 3 prepare=True")),
                         ("copy", lambda: test_copy(c)),
                         ("node", lambda: test_node(c)),
                         ("psql", lambda: test_psql(c))):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - reported as a failure
                check("%s: ran" % name, False, "%s: %s" % (type(e).__name__, e))
        writer_cannot_read(c, "drv_psycopg3", "psycopg 3")
    finally:
        c.stop()
        if failed == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("cluster kept in %s" % tmp)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
