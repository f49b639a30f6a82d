#!/usr/bin/python3
"""Keep the manual honest: docs/configuration.md and docs/troubleshooting.md
against the code (standard library only).

Checks:
  * every GUC defined in src/*.c (DefineCustom*Variable) has a section
    "### `kms_pg.name`" in docs/configuration.md whose first table row gives
    the same type, default, context (PGC_* level), unit and bounds as the
    code; and every such section names a GUC that exists;
  * every user-facing message in src/*.c (errmsg / errmsg_internal format
    strings, and the texts of kms_error_text() that errmsg("%s") raises) and
    every RAISE EXCEPTION / RAISE WARNING in sql/install/*.sql has an entry
    "### `message`" in docs/troubleshooting.md (format specifiers such as %s, %d,
    %m or % match any text there); when the ereport() names a fixed
    errcode(ERRCODE_...), the entry must give its SQLSTATE.

Prints one line per failure and ends with "N passed, M failed".
  docs_check.py [--list]    --list prints every message the code raises
"""

import os
import re
import sys

ROOT = os.environ.get("KMS_PG_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def _errcodes_h():
    """errcodes.h of the PostgreSQL the suite builds against (PG_CONFIG)."""
    import subprocess
    try:
        inc = subprocess.run([os.environ.get("PG_CONFIG", "pg_config"), "--includedir-server"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        inc = "/usr/include/postgresql/15/server"
    return os.path.join(inc, "utils", "errcodes.h")


ERRCODES_H = _errcodes_h()

passed = 0
failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL " + what)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def strip_c_comments(src):
    """Remove comments but keep string literals (and line count)."""
    out = []
    i = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c == '"' or c == "'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])
            i = j + 1
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * src.count("\n", i, j))
            i = j
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def c_unescape(s):
    return (s.replace('\\"', '"').replace("\\n", "\n").replace("\\t", "\t")
            .replace("\\\\", "\\"))


STRING_SEQ = r'((?:"(?:[^"\\]|\\.)*"\s*)+)'


def join_literals(seq):
    return "".join(c_unescape(m) for m in re.findall(r'"((?:[^"\\]|\\.)*)"', seq))


def call_args(src, start):
    """Top-level comma-separated arguments of the call whose '(' is at start."""
    depth = 0
    args = []
    cur = []
    i = start
    while i < len(src):
        c = src[i]
        if c == '"':
            j = i + 1
            while src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            cur.append(src[i:j + 1])
            i = j + 1
            continue
        if c == "(":
            depth += 1
            if depth == 1:
                i += 1
                continue
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(cur).strip())
                return args, i
        elif c == "," and depth == 1:
            args.append("".join(cur).strip())
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    raise ValueError("unbalanced call at offset %d" % start)


def enclosing_call(src, pos, name):
    """Text of the innermost name(...) call that contains pos, or ''."""
    start = src.rfind(name + "(", 0, pos)
    while start >= 0:
        _, end = call_args(src, start + len(name))
        if end > pos:
            return src[start:end + 1]
        start = src.rfind(name + "(", 0, start)
    return ""


# ---------------------------------------------------------------------------
# GUCs
# ---------------------------------------------------------------------------

CONTEXTS = {"PGC_POSTMASTER": "POSTMASTER", "PGC_SIGHUP": "SIGHUP", "PGC_SUSET": "SUSET",
            "PGC_USERSET": "USERSET", "PGC_BACKEND": "BACKEND", "PGC_SU_BACKEND": "SU_BACKEND"}
UNITS = {"GUC_UNIT_S": "s", "GUC_UNIT_MS": "ms", "GUC_UNIT_MB": "MB", "GUC_UNIT_KB": "kB",
         "GUC_UNIT_MIN": "min"}
INT_CONSTS = {"INT_MAX": "2147483647", "INT_MIN": "-2147483648"}


def code_gucs():
    """{name: dict(type, default, context, unit, min, max)} from src/*.c."""
    gucs = {}
    for fn in sorted(os.listdir(os.path.join(ROOT, "src"))):
        if not fn.endswith(".c"):
            continue
        src = strip_c_comments(read(os.path.join(ROOT, "src", fn)))
        enums = {}
        for m in re.finditer(r"config_enum_entry\s+(\w+)\[\]\s*=\s*\{(.*?)\};", src, re.S):
            enums[m.group(1)] = re.findall(r'\{\s*"([^"]+)"\s*,\s*(\w+)\s*,\s*false\s*\}', m.group(2))
        for m in re.finditer(r"DefineCustom(Bool|Int|Real|String|Enum)Variable\s*\(", src):
            kind = m.group(1)
            args, _ = call_args(src, m.end() - 1)
            g = {"type": {"Bool": "boolean", "Int": "integer", "Real": "real",
                          "String": "string", "Enum": "enum"}[kind]}
            name = join_literals(args[0])
            boot = args[4]
            if kind == "String":
                g["default"] = join_literals(boot) if boot.startswith('"') else boot
                g["context"], flags = args[5], args[6]
            elif kind == "Bool":
                g["default"] = {"true": "on", "false": "off"}.get(boot, boot)
                g["context"], flags = args[5], args[6]
            elif kind in ("Int", "Real"):
                g["default"] = boot
                g["min"] = INT_CONSTS.get(args[5], args[5])
                g["max"] = INT_CONSTS.get(args[6], args[6])
                g["context"], flags = args[7], args[8]
            else:
                opts = enums.get(args[5], [])
                g["default"] = next((label for label, const in opts if const == boot), boot)
                g["values"] = [label for label, _ in opts]
                g["context"], flags = args[6], args[7]
            g["context"] = CONTEXTS.get(g["context"], g["context"])
            g["unit"] = next((u for k, u in UNITS.items() if k in flags), None)
            gucs[name] = g
    return gucs


def doc_guc_sections(text):
    """{name: section text} for headings '### `kms_pg.x`'."""
    out = {}
    parts = re.split(r"^(###\s+`(kms_pg\.[a-z0-9_]+)`\s*)$", text, flags=re.M)
    for i in range(1, len(parts) - 1, 3):
        body = parts[i + 2].split("\n## ")[0]
        out[parts[i + 1]] = body
    return out


def first_table_row(section):
    """{header: cell} of the first markdown table in a section."""
    lines = [ln.strip() for ln in section.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 3:
        return None
    cells = lambda ln: [c.strip() for c in ln.strip("|").split("|")]  # noqa: E731
    return dict(zip([h.lower() for h in cells(lines[0])], cells(lines[2])))


def check_gucs():
    path = os.path.join(ROOT, "docs", "configuration.md")
    text = read(path) if os.path.exists(path) else ""
    check(bool(text), "docs/configuration.md exists")
    gucs = code_gucs()
    check(len(gucs) > 0, "src/*.c defines GUCs (parser found none)")
    sections = doc_guc_sections(text)
    for name, g in sorted(gucs.items()):
        sec = sections.get(name)
        check(sec is not None, "GUC %s is not documented in docs/configuration.md" % name)
        if sec is None:
            continue
        row = first_table_row(sec)
        check(row is not None, "%s: no table (Type | Default | Context | Unit | Range)" % name)
        if row is None:
            continue
        t = row.get("type", "")
        check(t.startswith(g["type"]), "%s: type is %s in the code, %r in the docs" % (name, g["type"], t))
        if g["type"] == "enum":
            vals = re.findall(r"`([^`]+)`", t)
            check(vals == g["values"], "%s: values are %s in the code, %s in the docs"
                  % (name, g["values"], vals))
        d = row.get("default", "")
        want = "`%s`" % g["default"] if g["default"] != "" else "`''`"
        check(d.startswith(want), "%s: default is %s in the code, %r in the docs" % (name, want, d))
        c = row.get("context", "")
        check(("`%s`" % g["context"]) in c, "%s: context is %s in the code, %r in the docs"
              % (name, g["context"], c))
        u = row.get("unit", "")
        if g["unit"]:
            check(u == "`%s`" % g["unit"], "%s: unit is %s in the code, %r in the docs" % (name, g["unit"], u))
        else:
            check(u in ("", "-", "—"), "%s: no unit in the code, %r in the docs" % (name, u))
        if "min" in g:
            r = row.get("range", "")
            check(r == "`%s` .. `%s`" % (g["min"], g["max"]),
                  "%s: range is %s .. %s in the code, %r in the docs" % (name, g["min"], g["max"], r))
    for name in sorted(sections):
        check(name in gucs, "docs/configuration.md documents %s, which the code does not define" % name)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

def sqlstates():
    codes = {}
    if os.path.exists(ERRCODES_H):
        for m in re.finditer(r"#define\s+(ERRCODE_\w+)\s+MAKE_SQLSTATE\('(.)','(.)','(.)','(.)','(.)'\)",
                             read(ERRCODES_H)):
            codes[m.group(1)] = "".join(m.group(i) for i in range(2, 7))
    return codes


def code_messages():
    """[(message format, SQLSTATE or None, where)]."""
    codes = sqlstates()
    msgs = []
    for fn in sorted(os.listdir(os.path.join(ROOT, "src"))):
        if not fn.endswith(".c"):
            continue
        src = strip_c_comments(read(os.path.join(ROOT, "src", fn)))
        for m in re.finditer(r"\berrmsg(?:_internal)?\s*\(\s*" + STRING_SEQ, src):
            fmt = join_literals(m.group(1))
            where = "src/%s:%d" % (fn, src.count("\n", 0, m.start()) + 1)
            if not re.sub(r"%[-+ #0-9.*]*(?:l|ll|z|h)?[sdumcxX%]", "", fmt).strip():
                # errmsg("%s", var): the texts var is built from in this file
                # (var = psprintf("...") / pstrdup("...")); kms_error_text()
                # is collected below
                var = re.match(r"\s*,\s*(\w+)\s*\)", src[m.end():])
                if var and var.group(1) not in ("msg",):
                    for a in re.finditer(r"\b%s\s*=\s*(?:psprintf|pstrdup)\s*\(\s*%s" % (var.group(1), STRING_SEQ), src):
                        msgs.append((join_literals(a.group(1)), None,
                                     "src/%s:%d" % (fn, src.count("\n", 0, a.start()) + 1)))
                continue
            call = enclosing_call(src, m.start(), "ereport")
            ec = re.search(r"\berrcode\s*\(\s*(ERRCODE_\w+)\s*\)", call)
            msgs.append((fmt, codes.get(ec.group(1)) if ec else None, where))
        # kms_error_text(): the messages kms_report_error() raises via errmsg("%s")
        m = re.search(r"kms_error_text\s*\([^)]*\)\s*\{(.*?)\n\}", src, re.S)
        if m:
            for r in re.finditer(r"case\s+(KMS_\w+):\s*return\s+" + STRING_SEQ, m.group(1)):
                if r.group(1) == "KMS_OK":
                    continue
                msgs.append((join_literals(r.group(2)), None, "src/%s kms_error_text(%s)" % (fn, r.group(1))))
    inst = os.path.join(ROOT, "sql", "install")
    for fn in sorted(os.listdir(inst)):
        if not fn.endswith(".sql"):
            continue
        src = read(os.path.join(inst, fn))
        for m in re.finditer(r"RAISE\s+(EXCEPTION|WARNING)\s+'((?:[^']|'')*)'([^;]*);", src):
            fmt = m.group(2).replace("''", "'")
            ec = re.search(r"ERRCODE\s*=\s*'([^']+)'", m.group(3))
            state = None
            if ec:
                state = ec.group(1) if re.fullmatch(r"[0-9A-Z]{5}", ec.group(1)) else \
                    codes.get("ERRCODE_" + ec.group(1).upper())
            elif m.group(1) == "EXCEPTION":
                state = "P0001"
            msgs.append((fmt, state, "sql/install/%s:%d" % (fn, src.count("\n", 0, m.start()) + 1)))
    return msgs


def message_regex(fmt, sql=False):
    """Regex matching the documented form of a message: format specifiers match any text."""
    if sql:
        pieces = re.split(r"%", fmt)
    else:
        pieces = re.split(r"%[-+ #0-9.*]*(?:l|ll|z|h)?[sdumcxX]", fmt.replace("%%", "\x00"))
    return "^" + ".+?".join(re.escape(p).replace("\x00", "%") for p in pieces) + "$"


def doc_error_entries(text):
    """[(message as documented, entry text)] for headings '### `message`'."""
    out = []
    parts = re.split(r"^###\s+`(.+)`\s*$", text, flags=re.M)
    for i in range(1, len(parts) - 1, 2):
        out.append((parts[i], parts[i + 1]))
    return out


def check_errors(list_only=False):
    path = os.path.join(ROOT, "docs", "troubleshooting.md")
    text = read(path) if os.path.exists(path) else ""
    msgs = code_messages()
    if list_only:
        for fmt, state, where in msgs:
            print("%-5s %-45s %s" % (state or "-", where, fmt))
        return
    check(bool(text), "docs/troubleshooting.md exists")
    check(len(msgs) > 0, "the code raises messages (parser found none)")
    entries = doc_error_entries(text)
    seen = set()
    for fmt, state, where in msgs:
        if (fmt, state) in seen:
            continue
        seen.add((fmt, state))
        rx = re.compile(message_regex(fmt, sql=where.startswith("sql/")), re.S)
        hits = [body for head, body in entries if rx.match(head)]
        check(bool(hits), "%s: message not in docs/troubleshooting.md: %s" % (where, fmt))
        if hits and state:
            check(any(re.search(r"\b%s\b" % state, body) for body in hits),
                  "%s: the entry for %r must give SQLSTATE %s" % (where, fmt, state))


def main():
    if "--list" in sys.argv[1:]:
        check_errors(list_only=True)
        return 0
    check_gucs()
    check_errors()
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
