// kms_pg_reader.mjs: an independent reader of kms_pg ciphertexts, formats v1 and v2.
//
// Written from docs/format.md only; it shares no code with the extension or
// with clients/python.  AWS-provider values are unwrapped with
// @aws-sdk/client-kms (Decrypt with the recorded KeyId and the provider
// context), local-provider values with a keyring export (the keyring
// catalog rows as JSON, docs/format.md "Local key material") and the master key
// that wraps their material, or with a kms_pg 1.0 keyring file; the payload
// is opened with node:crypto AES-256-GCM.
//
//   import { decrypt } from "./kms_pg_reader.mjs";
//   const plain = await decrypt(buf, '{"tenant": "acme", "id": 42}', { kmsClient });
//
// Pass the context as JSON text when it holds numbers that a JavaScript
// number cannot represent exactly (12345678901234567890.123): the text is
// parsed here with every digit kept.
//
// A format 2 value carries only a 7-byte reference to its data key; the key
// id, provider-context names and wrapped data key are a row of the database's
// kms_dek_registry.  Pass opts.registry: that row ({provider, key_id,
// name_block, wrapped_dek}), an (async) function dekRef (a BigInt) -> row
// (null when there is none), or a `pg` Client or Pool, on which the one query
// REGISTRY_QUERY runs (opts.registrySchema qualifies the table).

import { createDecipheriv, createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { DecryptCommand } from "@aws-sdk/client-kms";

export const PROVIDER_LOCAL = 1;
export const PROVIDER_AWS = 2;
const MAGIC = Buffer.from([0xc5, 0x4b, 0x50, 0x47]);
const NONCE_LEN = 12;
const TAG_LEN = 16;
const DEK_LEN = 32;
const MAX_CONTEXT_KEYS = 32;
const MAX_WRAPPED_LEN = 1024;
const LOCAL_WRAP_LEN = 1 + 4 + NONCE_LEN + DEK_LEN + TAG_LEN;
const LOCAL_WRAP_AAD = Buffer.from("kms_pg local wrap v1\0", "latin1");
const MATERIAL_AAD = Buffer.from("kms_pg local key material v1\0", "latin1");
const FINGERPRINT_LABEL = Buffer.from("kms_pg master key fingerprint v1\0", "latin1");

const V2_HEADER_LEN = 12;                  // magic, version 2, 7-byte DEK reference
const V2_OVERHEAD = V2_HEADER_LEN + NONCE_LEN + TAG_LEN;

export class FormatError extends Error {}
export class ContextError extends Error {}
export class AuthenticationError extends Error {}
export class KeyUnavailableError extends Error {}

// The one query that finds a format 2 value's registry row (docs/format.md).
export const REGISTRY_QUERY =
  "SELECT provider, key_id, name_block, wrapped_dek FROM kms_dek_registry WHERE dek_ref = $1";

const AUTH_MSG = "kms_pg ciphertext failed authentication: wrong encryption context, or the value was altered";

// ---- encryption context ----

// PostgreSQL numeric_normalize(): plain decimal, no exponent, no trailing
// fractional zeros, zero is "0".  Input: a JSON number literal.
export function normaliseNumber(text) {
  const m = /^(-)?(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(text);
  if (!m) throw new ContextError(`not a JSON number: ${text}`);
  const neg = m[1] === "-";
  let digits = m[2] + (m[3] ?? "");
  const exp = Number(m[4] ?? "0");
  if (!Number.isSafeInteger(exp) || Math.abs(exp) > 1000000)
    throw new ContextError(`number exponent out of range: ${text}`);
  let point = m[2].length + exp;           // digits before the decimal point
  while (digits.length > 0 && digits[0] === "0") { digits = digits.slice(1); point--; }
  if (digits.length === 0) return "0";
  let intPart, frac;
  if (point <= 0) { intPart = "0"; frac = "0".repeat(-point) + digits; }
  else if (point >= digits.length) { intPart = digits + "0".repeat(point - digits.length); frac = ""; }
  else { intPart = digits.slice(0, point); frac = digits.slice(point); }
  frac = frac.replace(/0+$/, "");
  return (neg ? "-" : "") + intPart + (frac ? "." + frac : "");
}

// Parse a flat JSON object keeping number literals as text; last duplicate wins (like jsonb).
function parseContextText(text) {
  let i = 0;
  const ws = () => { while (i < text.length && " \t\r\n".includes(text[i])) i++; };
  const str = () => {
    const m = /^"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/.exec(text.slice(i));
    if (!m) throw new ContextError("encryption context is not valid JSON");
    i += m[0].length;
    return JSON.parse(m[0]);
  };
  const out = new Map();
  ws();
  if (text[i] !== "{") throw new ContextError("encryption context must be a JSON object");
  i++; ws();
  if (text[i] === "}") { i++; }
  else {
    for (;;) {
      ws();
      const key = str();
      ws();
      if (text[i++] !== ":") throw new ContextError("encryption context is not valid JSON");
      ws();
      let value;
      if (text[i] === '"') value = str();
      else if (text.startsWith("true", i)) { value = true; i += 4; }
      else if (text.startsWith("false", i)) { value = false; i += 5; }
      else {
        const m = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(text.slice(i));
        if (!m) throw new ContextError("encryption context values must be strings, numbers or booleans");
        value = { number: m[0] };
        i += m[0].length;
      }
      out.delete(key);
      out.set(key, value);
      ws();
      if (text[i] === ",") { i++; continue; }
      if (text[i] === "}") { i++; break; }
      throw new ContextError("encryption context is not valid JSON");
    }
  }
  ws();
  if (i !== text.length) throw new ContextError("encryption context is not valid JSON");
  return out;
}

function utf8(s, what) {
  if (s.includes("\u0000")) throw new ContextError(`encryption context ${what} contains NUL`);
  if (!s.isWellFormed()) throw new ContextError(`encryption context ${what} is not valid Unicode`);
  return Buffer.from(s, "utf8");
}

// Sorted [{key: Buffer, type, value: Buffer}] of a context (object, Map or JSON text).
export function contextPairs(context) {
  if (context === null || context === undefined)
    throw new ContextError("encryption context must not be null");
  let entries;
  if (typeof context === "string") entries = [...parseContextText(context)];
  else if (context instanceof Map) entries = [...context];
  else if (typeof context === "object" && !Array.isArray(context)) entries = Object.entries(context);
  else throw new ContextError("encryption context must be a JSON object");
  const pairs = entries.map(([k, v]) => {
    if (k === "") throw new ContextError("encryption context keys must not be empty");
    const key = utf8(k, "key");
    if (typeof v === "boolean") return { key, type: 3, value: Buffer.from(v ? "true" : "false") };
    if (typeof v === "string") return { key, type: 1, value: utf8(v, "value") };
    if (typeof v === "number") {
      if (!Number.isFinite(v)) throw new ContextError("encryption context numbers must be finite");
      return { key, type: 2, value: Buffer.from(normaliseNumber(String(v))) };
    }
    if (typeof v === "bigint") return { key, type: 2, value: Buffer.from(v.toString()) };
    if (v && typeof v === "object" && typeof v.number === "string")
      return { key, type: 2, value: Buffer.from(normaliseNumber(v.number)) };
    throw new ContextError("encryption context values must be strings, numbers or booleans");
  });
  pairs.sort((a, b) => Buffer.compare(a.key, b.key));
  return pairs;
}

export function serialiseContext(pairs) {
  const parts = [u32(pairs.length)];
  for (const p of pairs) parts.push(u32(p.key.length), p.key, Buffer.from([p.type]), u32(p.value.length), p.value);
  return Buffer.concat(parts);
}

export function canonicalContext(context) {
  return serialiseContext(contextPairs(context));
}

function u32(n) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

// ---- ciphertext ----

// A provider-context name block: count C (0..32), then C times u8 length
// (1..255) and the name, strictly ascending by bytes (no name twice).
// exact: nothing may follow the last name.  Returns { names, length }.
export function parseNameBlock(block, exact = true) {
  const b = Buffer.from(block);
  if (b.length < 1) throw new FormatError("kms_pg ciphertext is truncated");
  const count = b[0];
  if (count > MAX_CONTEXT_KEYS) throw new FormatError("kms_pg ciphertext header is malformed: too many provider-context keys");
  let off = 1;
  const names = [];
  for (let i = 0; i < count; i++) {
    if (off + 1 > b.length) throw new FormatError("kms_pg ciphertext is truncated");
    const l = b[off++];
    if (l === 0) throw new FormatError("kms_pg ciphertext header is malformed: empty context key name");
    if (off + l > b.length) throw new FormatError("kms_pg ciphertext is truncated");
    const name = b.subarray(off, off + l);
    if (names.length > 0 && Buffer.compare(names[names.length - 1], name) >= 0)
      throw new FormatError("kms_pg ciphertext header is malformed: provider-context key names are not strictly ascending");
    names.push(name);
    off += l;
  }
  if (exact && off !== b.length)
    throw new FormatError("kms_pg DEK registry row is malformed: bytes after the name block");
  return { names, length: off };
}

function parseV2(b) {
  const n = b.length;
  if (n < V2_OVERHEAD)
    throw new FormatError(`kms_pg ciphertext is truncated: a version 2 value has at least ${V2_OVERHEAD} bytes, this one ${n}`);
  const dekRef = b.readBigUInt64BE(4) & 0xffffffffffffffn;   // bytes 5..11
  if (dekRef === 0n) throw new FormatError("kms_pg ciphertext header is malformed: DEK reference 0");
  return {
    version: 2, dekRef, header: b.subarray(0, V2_HEADER_LEN), nonce: b.subarray(V2_HEADER_LEN, V2_HEADER_LEN + NONCE_LEN),
    body: b.subarray(V2_HEADER_LEN + NONCE_LEN, n - TAG_LEN), tag: b.subarray(n - TAG_LEN),
  };
}

function bytesColumn(v, what) {
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return Buffer.from(v);
  if (typeof v === "string" && v.startsWith("\\x")) return Buffer.from(v.slice(2), "hex");
  throw new FormatError(`kms_pg DEK registry row is malformed: ${what} is not bytea`);
}

// A checked registry row ({provider, key_id, name_block, wrapped_dek}; bytea as
// Buffer or '\\x..' text, as `pg` returns them).
export function registryRow(row, dekRef) {
  if (row === null || row === undefined)
    throw new KeyUnavailableError(`kms_pg DEK registry has no row for dek_ref ${dekRef}: the value cannot be opened without it`);
  if (row.dek_ref !== undefined && row.dek_ref !== null && dekRef !== undefined && BigInt(row.dek_ref) !== dekRef)
    throw new KeyUnavailableError(`the registry row given is for dek_ref ${row.dek_ref}, the value refers to ${dekRef}`);
  const provider = Number(row.provider);
  if (provider !== PROVIDER_LOCAL && provider !== PROVIDER_AWS)
    throw new FormatError("kms_pg DEK registry row names an unknown key provider");
  const keyId = String(row.key_id ?? "");
  if (keyId.length < 1 || keyId.length > 255 || !/^[\x21-\x7e]+$/.test(keyId))
    throw new FormatError("kms_pg DEK registry row is malformed: key id is not 1 to 255 printable ASCII bytes");
  const nameBlock = bytesColumn(row.name_block, "name_block");
  const { names } = parseNameBlock(nameBlock, true);
  const wrapped = bytesColumn(row.wrapped_dek, "wrapped_dek");
  if (wrapped.length === 0 || wrapped.length > MAX_WRAPPED_LEN)
    throw new FormatError("kms_pg DEK registry row is malformed: wrapped data key length");
  if (provider === PROVIDER_LOCAL && (wrapped.length !== LOCAL_WRAP_LEN || wrapped[0] !== 1))
    throw new FormatError("kms_pg local wrapped data key is malformed");
  return { provider, keyId, nameBlock, names, wrapped };
}

async function lookupRegistry(registry, dekRef, schema) {
  if (registry === undefined || registry === null)
    throw new Error("this is a format 2 value: pass opts.registry (its kms_dek_registry row, a function of the reference, or a pg Client)");
  let row;
  if (typeof registry.query === "function") {
    const table = schema ? `"${schema.replaceAll('"', '""')}".kms_dek_registry` : "kms_dek_registry";
    const res = await registry.query(REGISTRY_QUERY.replace("kms_dek_registry", table), [dekRef.toString()]);
    row = res.rows[0] ?? null;
  } else if (typeof registry === "function") {
    row = await registry(dekRef);
  } else {
    row = registry;
  }
  return registryRow(row, dekRef);
}

export function parse(buf) {
  const b = Buffer.from(buf);
  const n = b.length;
  if (n === 0) throw new FormatError("kms_pg ciphertext is empty");
  if (!b.subarray(0, 4).equals(MAGIC.subarray(0, Math.min(4, n)))) throw new FormatError("value is not a kms_pg ciphertext");
  if (n < 5) throw new FormatError("kms_pg ciphertext is truncated");
  if (b[4] === 2) return parseV2(b);
  if (b[4] !== 1) throw new FormatError(`unsupported kms_pg ciphertext format version ${b[4]}`);
  const need = (off, len) => { if (off + len > n) throw new FormatError("kms_pg ciphertext is truncated"); };
  need(0, 4 + 1 + 1 + 1 + 1 + 1 + 2 + 1 + NONCE_LEN + TAG_LEN);
  const provider = b[5];
  if (provider !== PROVIDER_LOCAL && provider !== PROVIDER_AWS)
    throw new FormatError("kms_pg ciphertext names an unknown key provider");
  let off = 6;
  const klen = b[off++];
  if (klen === 0) throw new FormatError("kms_pg ciphertext header is malformed");
  need(off, klen + 1);
  const kid = b.subarray(off, off + klen);
  if (kid.some((c) => c < 0x21 || c > 0x7e)) throw new FormatError("kms_pg ciphertext header is malformed");
  off += klen;
  const namesStart = off;
  const { names, length } = parseNameBlock(b.subarray(off), false);
  off += length;
  const namesBlock = b.subarray(namesStart, off);
  need(off, 2);
  const wlen = b.readUInt16BE(off);
  off += 2;
  if (wlen === 0 || wlen > MAX_WRAPPED_LEN) throw new FormatError("kms_pg ciphertext header is malformed");
  need(off, wlen);
  const wrapped = b.subarray(off, off + wlen);
  off += wlen;
  need(off, NONCE_LEN + TAG_LEN);
  return {
    version: 1, provider, keyId: kid.toString("latin1"), contextKeys: names, namesBlock, wrapped,
    header: b.subarray(0, off), nonce: b.subarray(off, off + NONCE_LEN),
    body: b.subarray(off + NONCE_LEN, n - TAG_LEN), tag: b.subarray(n - TAG_LEN),
  };
}

function gcmOpen(key, nonce, body, tag, aad) {
  const d = createDecipheriv("aes-256-gcm", key, nonce);
  d.setAAD(aad);
  d.setAuthTag(tag);
  try {
    return Buffer.concat([d.update(body), d.final()]);
  } catch {
    throw new AuthenticationError(AUTH_MSG);
  }
}

function providerPairs(pairs, names) {
  return names.map((nm) => {
    const p = pairs.find((q) => q.key.equals(nm));
    if (!p) throw new AuthenticationError(`${AUTH_MSG} (the context lacks key "${nm.toString("utf8")}")`);
    return p;
  });
}

// The master key's fingerprint as the catalog records it (16 hex characters).
export function masterKeyFingerprint(masterKey) {
  return createHash("sha256").update(FINGERPRINT_LABEL).update(masterKey).digest("hex").slice(0, 16);
}

// Key material of one kms_local_key_version row: AES-256-GCM under the master
// key, nonce | ciphertext | tag, AAD label NUL | key id | u32be version.
function unwrapMaterial(masterKey, keyId, version, fingerprint, wrappedHex) {
  if (fingerprint !== masterKeyFingerprint(masterKey))
    throw new Error(`wrong kms_pg master key for key "${keyId}" version ${version}`);
  const w = Buffer.from(wrappedHex, "hex");
  if (w.length !== NONCE_LEN + DEK_LEN + TAG_LEN)
    throw new FormatError(`kms_pg keyring row for key "${keyId}" version ${version} was altered`);
  const v = Buffer.alloc(4);
  v.writeUInt32BE(version);
  try {
    return gcmOpen(masterKey, w.subarray(0, NONCE_LEN), w.subarray(NONCE_LEN, NONCE_LEN + DEK_LEN),
      w.subarray(NONCE_LEN + DEK_LEN), Buffer.concat([MATERIAL_AAD, Buffer.from(keyId, "latin1"), v]));
  } catch (e) {
    if (e instanceof AuthenticationError)
      throw new AuthenticationError(`kms_pg keyring row for key "${keyId}" version ${version} was altered`);
    throw e;
  }
}

function localUnwrap(keyringPath, masterKeyHex, keyId, wrapped, providerCanonical) {
  const doc = JSON.parse(readFileSync(keyringPath, "utf8"));
  const exported = doc.format === "kms_pg local keyring catalog";
  if ((!exported && doc.format !== "kms_pg local keyring") || doc.version !== 1)
    throw new Error(`${keyringPath} is not a kms_pg keyring export of version 1`);
  let masterKey;
  if (exported) {
    masterKey = Buffer.from(String(masterKeyHex ?? "").trim(), "hex");
    if (masterKey.length !== 32) throw new Error("local keys are wrapped under the master key: pass opts.masterKey (64 hex characters)");
  }
  const key = (doc.keys ?? []).find((k) => k.key_id === keyId);
  if (!key) throw new Error(`kms_pg local key "${keyId}" does not exist`);
  if (!key.enabled) throw new Error(`kms_pg local key "${keyId}" is disabled`);
  if (wrapped.length !== LOCAL_WRAP_LEN || wrapped[0] !== 1)
    throw new FormatError("kms_pg local wrapped data key is malformed");
  const version = wrapped.readUInt32BE(1);
  const v = (key.versions ?? []).find((x) => x.version === version);
  if (!v) throw new Error(`kms_pg local key "${keyId}" has no version ${version}`);
  const material = exported ? unwrapMaterial(masterKey, key.key_id, version, v.master_key, v.material)
    : Buffer.from(v.material, "base64");
  const aad = Buffer.concat([LOCAL_WRAP_AAD, Buffer.from(key.key_id, "latin1"), providerCanonical]);
  try {
    return gcmOpen(material, wrapped.subarray(5, 5 + NONCE_LEN),
      wrapped.subarray(5 + NONCE_LEN, 5 + NONCE_LEN + DEK_LEN), wrapped.subarray(5 + NONCE_LEN + DEK_LEN), aad);
  } finally {
    material.fill(0);
    masterKey?.fill(0);
  }
}

// Decrypt one value.  opts: { kmsClient } for AWS values, { keyringPath, masterKey (hex) }
// for local ones (no masterKey for a 1.0 keyring file); format 2 values also
// { registry, registrySchema } (see the top of this file).
export async function decrypt(ciphertext, context, opts = {}) {
  const parsed = parse(ciphertext);
  const pairs = contextPairs(context);
  const canonical = serialiseContext(pairs);
  let env = parsed, aadPrefix = parsed.header.subarray(0, 5);
  if (parsed.version === 2) {
    const row = await lookupRegistry(opts.registry, parsed.dekRef, opts.registrySchema);
    env = { ...parsed, provider: row.provider, keyId: row.keyId, contextKeys: row.names,
      namesBlock: row.nameBlock, wrapped: row.wrapped };
    aadPrefix = parsed.header;                // bytes 0..11: magic, version, reference
  }
  const ppairs = providerPairs(pairs, env.contextKeys);
  let dek;
  if (env.provider === PROVIDER_AWS) {
    if (!opts.kmsClient) throw new Error("this value was wrapped by AWS KMS: pass opts.kmsClient");
    const input = { CiphertextBlob: env.wrapped, KeyId: env.keyId };
    if (ppairs.length > 0)
      input.EncryptionContext = Object.fromEntries(ppairs.map((p) => [p.key.toString("utf8"), p.value.toString("utf8")]));
    dek = Buffer.from((await opts.kmsClient.send(new DecryptCommand(input))).Plaintext);
  } else {
    if (!opts.keyringPath) throw new Error("this value was wrapped by the local provider: pass opts.keyringPath");
    dek = localUnwrap(opts.keyringPath, opts.masterKey, env.keyId, env.wrapped, serialiseContext(ppairs));
  }
  if (dek.length !== DEK_LEN) throw new Error(`the key provider returned a ${dek.length}-byte data key`);
  try {
    return gcmOpen(dek, env.nonce, env.body, env.tag, Buffer.concat([aadPrefix, env.namesBlock, canonical]));
  } finally {
    dek.fill(0);
  }
}
