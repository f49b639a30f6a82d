// Prove the KMS emulator against the official AWS SDK for JavaScript v3.
//
//   cd test/clients/js && npm ci && node --test
//
// Starts its own emulator (https, throwaway CA from make_certs.sh) and stops
// it at the end.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import https from "node:https";
import { setTimeout as sleep } from "node:timers/promises";

import {
  KMSClient,
  CreateKeyCommand,
  CreateAliasCommand,
  DescribeKeyCommand,
  GenerateDataKeyCommand,
  GenerateDataKeyWithoutPlaintextCommand,
  DecryptCommand,
  EncryptCommand,
  ReEncryptCommand,
  DisableKeyCommand,
  EnableKeyCommand,
  RotateKeyOnDemandCommand,
  InvalidCiphertextException,
  DisabledException,
  NotFoundException,
} from "@aws-sdk/client-kms";
import { NodeHttpHandler } from "@smithy/node-http-handler";

const HERE = dirname(fileURLToPath(import.meta.url));
const EMU_DIR = join(HERE, "..", "..", "emulator");
const REGION = "us-east-1";
const ACCOUNT = "111122223333";
const AKID = "AKIDJSCLIENTTEST";
const SECRET = "js-client-secret";
const AKID2 = "ASIAJSSESSION";
const SECRET2 = "js-session-secret";
const TOKEN2 = "js-session-token";

let tmp;
let emu;
let port;
let ca;
let agent;

function client(creds = { accessKeyId: AKID, secretAccessKey: SECRET }, extra = {}) {
  return new KMSClient({
    region: REGION,
    endpoint: `https://127.0.0.1:${port}`,
    credentials: creds,
    maxAttempts: 1,
    requestHandler: new NodeHttpHandler({ httpsAgent: agent, requestTimeout: 10000 }),
    ...extra,
  });
}

async function control(method, path, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? "" : JSON.stringify(body);
    const req = https.request(
      { host: "127.0.0.1", port, path: `/__emulator/${path}`, method, ca,
        headers: { "Content-Length": Buffer.byteLength(data) } },
      (res) => {
        let out = "";
        res.on("data", (c) => (out += c));
        res.on("end", () => resolve(path === "health" ? out : JSON.parse(out)));
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "kms-emu-js-"));
  const certs = join(tmp, "certs");
  execFileSync("sh", [join(EMU_DIR, "make_certs.sh"), certs], { stdio: ["ignore", "ignore", "ignore"] });
  ca = readFileSync(join(certs, "ca.pem"));
  agent = new https.Agent({ ca, keepAlive: true });
  const portFile = join(tmp, "port");
  emu = spawn("/usr/bin/python3", [
    join(EMU_DIR, "kms_emulator.py"), "--port", "0", "--bind", "127.0.0.1",
    "--port-file", portFile, "--region", REGION, "--account", ACCOUNT,
    "--access-key", AKID, "--secret-key", SECRET,
    "--cred", `${AKID2}:${SECRET2}:${TOKEN2}`,
    "--tls-cert", join(certs, "server.pem"), "--tls-key", join(certs, "server.key"),
    "--seed-alias", "alias/js", "--die-with-parent", "--quiet",
  ], { stdio: ["ignore", "ignore", "inherit"] });
  const deadline = Date.now() + 15000;
  while (!existsSync(portFile)) {
    if (emu.exitCode !== null) throw new Error("emulator exited early");
    if (Date.now() > deadline) throw new Error("emulator did not start");
    await sleep(50);
  }
  port = parseInt(readFileSync(portFile, "utf8"), 10);
});

after(async () => {
  agent?.destroy();
  if (emu && emu.exitCode === null) {
    const exited = new Promise((r) => emu.once("exit", r));
    emu.kill("SIGTERM");
    await Promise.race([exited, sleep(5000, undefined, { ref: false })]);
    if (emu.exitCode === null && emu.signalCode === null) emu.kill("SIGKILL");
  }
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test("DescribeKey by alias, id and ARN", async () => {
  const kms = client();
  const md = (await kms.send(new DescribeKeyCommand({ KeyId: "alias/js" }))).KeyMetadata;
  assert.equal(md.KeyState, "Enabled");
  assert.equal(md.Arn, `arn:aws:kms:${REGION}:${ACCOUNT}:key/${md.KeyId}`);
  assert.ok(md.CreationDate instanceof Date);
  for (const id of [md.KeyId, md.Arn, `arn:aws:kms:${REGION}:${ACCOUNT}:alias/js`]) {
    const d = (await kms.send(new DescribeKeyCommand({ KeyId: id }))).KeyMetadata;
    assert.equal(d.KeyId, md.KeyId);
  }
  await assert.rejects(kms.send(new DescribeKeyCommand({ KeyId: "alias/nope" })),
    (e) => e instanceof NotFoundException);
});

test("GenerateDataKey / Decrypt with encryption context", async () => {
  const kms = client();
  const ctx = { table: "t", column: "c" };
  const g = await kms.send(new GenerateDataKeyCommand({ KeyId: "alias/js", KeySpec: "AES_256", EncryptionContext: ctx }));
  assert.equal(g.Plaintext.length, 32);
  assert.ok(g.CiphertextBlob.length > 150 && g.CiphertextBlob.length < 200);
  const d = await kms.send(new DecryptCommand({ CiphertextBlob: g.CiphertextBlob, EncryptionContext: { column: "c", table: "t" } }));
  assert.deepEqual(Buffer.from(d.Plaintext), Buffer.from(g.Plaintext));
  assert.equal(d.KeyId, g.KeyId);
  assert.equal(d.EncryptionAlgorithm, "SYMMETRIC_DEFAULT");
});

test("Decrypt with the wrong context is InvalidCiphertextException", async () => {
  const kms = client();
  const g = await kms.send(new GenerateDataKeyCommand({ KeyId: "alias/js", KeySpec: "AES_256", EncryptionContext: { a: "1" } }));
  await assert.rejects(
    kms.send(new DecryptCommand({ CiphertextBlob: g.CiphertextBlob, EncryptionContext: { a: "2" } })),
    (e) => e instanceof InvalidCiphertextException && e.$metadata.httpStatusCode === 400,
  );
});

test("Encrypt / ReEncrypt / Decrypt", async () => {
  const kms = client();
  const dest = (await kms.send(new CreateKeyCommand({ Description: "js dest" }))).KeyMetadata;
  await kms.send(new CreateAliasCommand({ AliasName: "alias/js-dest", TargetKeyId: dest.KeyId }));
  const e = await kms.send(new EncryptCommand({ KeyId: "alias/js", Plaintext: Buffer.from("hello"), EncryptionContext: { x: "y" } }));
  const r = await kms.send(new ReEncryptCommand({
    CiphertextBlob: e.CiphertextBlob, SourceEncryptionContext: { x: "y" },
    DestinationKeyId: "alias/js-dest", DestinationEncryptionContext: { z: "w" },
  }));
  assert.equal(r.KeyId, dest.Arn);
  assert.equal(r.SourceKeyId, e.KeyId);
  const d = await kms.send(new DecryptCommand({ CiphertextBlob: r.CiphertextBlob, EncryptionContext: { z: "w" }, KeyId: "alias/js-dest" }));
  assert.equal(Buffer.from(d.Plaintext).toString(), "hello");
});

test("GenerateDataKeyWithoutPlaintext, rotation, disable", async () => {
  const kms = client();
  const k = (await kms.send(new CreateKeyCommand({}))).KeyMetadata;
  const g = await kms.send(new GenerateDataKeyWithoutPlaintextCommand({ KeyId: k.KeyId, NumberOfBytes: 32 }));
  assert.equal(g.Plaintext, undefined);
  await kms.send(new RotateKeyOnDemandCommand({ KeyId: k.KeyId }));
  const d = await kms.send(new DecryptCommand({ CiphertextBlob: g.CiphertextBlob }));
  assert.equal(d.Plaintext.length, 32);
  await kms.send(new DisableKeyCommand({ KeyId: k.KeyId }));
  await assert.rejects(kms.send(new DecryptCommand({ CiphertextBlob: g.CiphertextBlob })),
    (e) => e instanceof DisabledException);
  await kms.send(new EnableKeyCommand({ KeyId: k.KeyId }));
});

test("session credentials and bad secret", async () => {
  await client({ accessKeyId: AKID2, secretAccessKey: SECRET2, sessionToken: TOKEN2 })
    .send(new DescribeKeyCommand({ KeyId: "alias/js" }));
  await assert.rejects(client({ accessKeyId: AKID, secretAccessKey: "wrong" })
    .send(new DescribeKeyCommand({ KeyId: "alias/js" })),
  (e) => e.name === "InvalidSignatureException");
  await assert.rejects(client({ accessKeyId: AKID2, secretAccessKey: SECRET2 })
    .send(new DescribeKeyCommand({ KeyId: "alias/js" })),
  (e) => e.name === "UnrecognizedClientException");
});

test("throttling fault is surfaced with maxAttempts 1 and counted", async () => {
  const kms = client();
  await control("POST", "counters/reset");
  await control("POST", "faults", { throttle_rate: 1.0 });
  try {
    await assert.rejects(kms.send(new GenerateDataKeyCommand({ KeyId: "alias/js", KeySpec: "AES_256" })),
      (e) => e.name === "ThrottlingException");
  } finally {
    await control("POST", "faults/reset");
  }
  const c = await control("GET", "counters");
  assert.equal(c.GenerateDataKey, 1);
  assert.equal(c.throttled, 1);
  assert.equal(await control("GET", "health"), "ok");
});
