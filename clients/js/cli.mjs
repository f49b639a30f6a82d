// cli.mjs: decrypt kms_pg ciphertexts listed in a JSON request on stdin.
//
//   node cli.mjs < request.json
//
// request: { "endpoint": "https://...", "region": "us-east-1", "ca_file": "ca.pem",
//            "keyring": "/path/keyring_export.json", "master_key_file": "/path/master.key",
//            "values": [ { "name": "...", "ciphertext_hex": "c54b5047...", "context": "{...}" } ] }
// endpoint, region and ca_file are needed for AWS-provider values only (credentials come
// from the usual AWS_* environment variables); keyring (an export of the keyring catalog,
// docs/format.md) and master_key_file (64 hex characters) for local-provider values only.
// Format 2 values need their DEK registry rows: either "registry": { "<dek_ref>": {
// "provider": 1, "key_id": "...", "name_block_hex": "...", "wrapped_dek_hex": "..." } }, or
// "database": { "host": "/socket/dir", "port": 5432, "user": "...", "database": "...",
// "schema": "public" } to run the one registry query there (with `pg`).
// Writes one JSON line per value: {"name", "plaintext_hex"} or {"name", "error", "kind"}.

import { readFileSync } from "node:fs";
import { Agent } from "node:https";
import { KMSClient } from "@aws-sdk/client-kms";
import { NodeHttpHandler } from "@smithy/node-http-handler";
import pg from "pg";
import { decrypt } from "./kms_pg_reader.mjs";

const req = JSON.parse(readFileSync(0, "utf8"));
let kmsClient;
if (req.endpoint) {
  const agent = new Agent({ keepAlive: true, ...(req.ca_file ? { ca: readFileSync(req.ca_file) } : {}) });
  kmsClient = new KMSClient({
    endpoint: req.endpoint,
    region: req.region ?? "us-east-1",
    requestHandler: new NodeHttpHandler({ httpsAgent: agent }),
    maxAttempts: 2,
  });
}
const masterKey = req.master_key_file ? readFileSync(req.master_key_file, "utf8").trim() : undefined;
let registry, registrySchema, db;
if (req.database) {
  db = new pg.Client({ host: req.database.host, port: req.database.port, user: req.database.user,
    database: req.database.database });
  await db.connect();
  registry = db;
  registrySchema = req.database.schema;
} else if (req.registry) {
  registry = (ref) => {
    const r = req.registry[ref.toString()];
    return r ? { provider: r.provider, key_id: r.key_id, name_block: Buffer.from(r.name_block_hex, "hex"),
      wrapped_dek: Buffer.from(r.wrapped_dek_hex, "hex") } : null;
  };
}
let failures = 0;
for (const v of req.values) {
  try {
    const plain = await decrypt(Buffer.from(v.ciphertext_hex, "hex"), v.context,
      { kmsClient, keyringPath: req.keyring, masterKey, registry, registrySchema });
    process.stdout.write(JSON.stringify({ name: v.name, plaintext_hex: plain.toString("hex") }) + "\n");
  } catch (e) {
    failures++;
    process.stdout.write(JSON.stringify({ name: v.name, error: String(e.message ?? e), kind: e.constructor?.name ?? "Error" }) + "\n");
  }
}
kmsClient?.destroy();
await db?.end();
process.exitCode = failures > 0 ? 1 : 0;
