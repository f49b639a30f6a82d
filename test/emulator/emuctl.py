#!/usr/bin/python3
"""Command-line client for the KMS emulator's unsigned test-control API.

Prints compact JSON with sorted keys so pg_regress expected output is stable.

  emuctl.py (--url URL | --port-file F [--https]) [--cafile F] COMMAND [ARGS]

Commands:
  health                         wait-free health check, prints "ok"
  wait [SECONDS]                 poll health until up (default 10 s)
  counters [--ops A,B]           print counters (only the listed ones with --ops)
  reset                          reset counters
  faults 'JSON'                  merge fault settings, prints the resulting config
  faults-show                    print current fault settings
  faults-reset                   clear all faults
  key-state KEY STATE            KEY = id / ARN / alias; STATE Enabled|Disabled|PendingDeletion
  keys [--ids]                   list keys (ids/ARNs only with --ids, for stable output)
  create-key ALIAS [--multi-region]
  rotate KEY                     add new key material now (like RotateKeyOnDemand)
  expire-credentials             expire all credentials minted by IMDS/container/STS
  requests                       recent KMS request summaries (for debugging)
  requests-reset

The URL may also come from $KMS_EMULATOR_URL.
"""

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request


def dump(obj):
    print(json.dumps(obj, sort_keys=True, separators=(",", ":")))


class Client:
    def __init__(self, url, cafile=None, insecure=False):
        self.url = url.rstrip("/")
        self.ctx = None
        if self.url.startswith("https"):
            self.ctx = ssl.create_default_context(cafile=cafile)
            if insecure:
                self.ctx.check_hostname = False
                self.ctx.verify_mode = ssl.CERT_NONE

    def call(self, method, path, body=None, raw=False, timeout=10):
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif method == "POST":
            data = b""
        req = urllib.request.Request(self.url + "/__emulator/" + path, data=data,
                                     method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as r:
                payload = r.read().decode()
        except urllib.error.HTTPError as e:
            payload = e.read().decode()
            sys.stderr.write("emuctl: HTTP %d: %s\n" % (e.code, payload))
            try:
                dump(json.loads(payload))
            except ValueError:
                print(payload)
            sys.exit(1)
        return payload if raw else json.loads(payload)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--url", default=os.environ.get("KMS_EMULATOR_URL"))
    p.add_argument("--port-file", help="read the port from this file (127.0.0.1)")
    p.add_argument("--https", action="store_true", help="with --port-file: use https")
    p.add_argument("--cafile")
    p.add_argument("--insecure", action="store_true", help="skip TLS verification")
    p.add_argument("command")
    p.add_argument("args", nargs="*")
    p.add_argument("--ops", help="counters: comma-separated names to print")
    p.add_argument("--ids", action="store_true", help="keys: include KeyId and Arn")
    p.add_argument("--multi-region", action="store_true", help="create-key: mrk key")
    a = p.parse_args(argv)

    url = a.url
    if a.port_file:
        with open(a.port_file) as f:
            port = int(f.read().strip())
        url = "%s://127.0.0.1:%d" % ("https" if a.https else "http", port)
    if not url:
        p.error("need --url, --port-file or $KMS_EMULATOR_URL")
    c = Client(url, a.cafile, a.insecure)
    cmd, args = a.command, a.args

    def need(n):
        if len(args) != n:
            p.error("%s takes %d argument(s)" % (cmd, n))

    if cmd == "health":
        print(c.call("GET", "health", raw=True))
    elif cmd == "wait":
        deadline = time.time() + float(args[0] if args else 10)
        while True:
            try:
                print(c.call("GET", "health", raw=True, timeout=2))
                return
            except (OSError, urllib.error.URLError):
                if time.time() > deadline:
                    sys.stderr.write("emuctl: emulator not reachable at %s\n" % url)
                    sys.exit(1)
                time.sleep(0.1)
    elif cmd == "counters":
        counters = c.call("GET", "counters")
        if a.ops:
            counters = {k: counters.get(k, 0) for k in a.ops.split(",") if k}
        dump(counters)
    elif cmd == "reset":
        dump(c.call("POST", "counters/reset"))
    elif cmd == "faults":
        need(1)
        try:
            body = json.loads(args[0])
        except ValueError:
            p.error("faults needs a JSON object argument")
        dump(c.call("POST", "faults", body))
    elif cmd == "faults-show":
        dump(c.call("GET", "faults"))
    elif cmd == "faults-reset":
        dump(c.call("POST", "faults/reset"))
    elif cmd == "key-state":
        need(2)
        r = c.call("POST", "keys/state", {"key": args[0], "state": args[1]})
        dump({"ok": r["ok"], "state": r["state"]})
    elif cmd == "keys":
        keys = c.call("GET", "keys")
        if not a.ids:
            for k in keys:
                k.pop("KeyId", None)
                k.pop("Arn", None)
        dump(keys)
    elif cmd == "create-key":
        need(1)
        r = c.call("POST", "keys/create", {"alias": args[0], "multi_region": a.multi_region})
        dump({"ok": r["ok"]} if not a.ids else r)
    elif cmd == "rotate":
        need(1)
        r = c.call("POST", "keys/rotate", {"key": args[0]})
        dump({"ok": r["ok"], "material_versions": r["material_versions"]})
    elif cmd == "expire-credentials":
        dump(c.call("POST", "credentials/expire"))
    elif cmd == "requests":
        dump(c.call("GET", "requests"))
    elif cmd == "requests-reset":
        dump(c.call("POST", "requests/reset"))
    else:
        p.error("unknown command %r" % cmd)


if __name__ == "__main__":
    main()
