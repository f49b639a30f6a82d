-- Core: envelope encryption, ciphertext inspection, local keys, cache.
--
-- Volatility is declared honestly (Citus and the planner rely on it):
-- kms_encrypt makes a fresh nonce per call: VOLATILE.  kms_decrypt gives
-- the same answer for the same input within a statement: STABLE (not
-- IMMUTABLE: keys can be disabled).  kms_rewrap is STABLE: values that
-- share a wrapped DEK get the same new wrapped DEK within a transaction,
-- so bulk rotation can run as a distributed UPDATE.
--
-- Format 2 (kms_pg.format = 2) seals only after the sealing transaction has
-- a row for its data key in kms_dek_registry (sql/install/12_registry.sql),
-- and a parallel operation cannot write one: the encryption functions are
-- PARALLEL UNSAFE.  The ciphertext inspection functions read the registry
-- for format 2 values (rotation changes what they report): STABLE.

CREATE FUNCTION kms_encrypt(plaintext bytea, context jsonb DEFAULT '{}', key_id text DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_encrypt'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_decrypt(ciphertext bytea, context jsonb DEFAULT '{}')
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_decrypt'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION kms_encrypt_text(plaintext text, context jsonb DEFAULT '{}', key_id text DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_encrypt_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_decrypt_text(ciphertext bytea, context jsonb DEFAULT '{}')
RETURNS text
AS 'MODULE_PATHNAME', 'kms_decrypt_text'
LANGUAGE C STABLE PARALLEL SAFE;

-- The same with the context given as key, value arguments instead of a
-- jsonb: kms_encrypt_pairs(data, NULL, 'id', id, 'tenant', tenant) seals
-- exactly as kms_encrypt(data, jsonb_build_object('id', id, 'tenant',
-- tenant)) would (same canonical context), without building a jsonb per
-- row.  Values: text, integers, numeric, boolean.
CREATE FUNCTION kms_encrypt_pairs(plaintext bytea, key_id text, VARIADIC context "any")
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_encrypt_pairs'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_encrypt_text_pairs(plaintext text, key_id text, VARIADIC context "any")
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_encrypt_text_pairs'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_decrypt_pairs(ciphertext bytea, VARIADIC context "any")
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_decrypt_pairs'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION kms_decrypt_text_pairs(ciphertext bytea, VARIADIC context "any")
RETURNS text
AS 'MODULE_PATHNAME', 'kms_decrypt_text_pairs'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION kms_ciphertext_info(ciphertext bytea,
    OUT format_version int, OUT provider text, OUT key_id text, OUT dek_id text,
    OUT kms_context_keys text[], OUT wrapped_dek_bytes int, OUT plaintext_bytes int,
    OUT overhead_bytes int)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_ciphertext_info'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION kms_ciphertext_key_id(ciphertext bytea)
RETURNS text
AS 'MODULE_PATHNAME', 'kms_ciphertext_key_id'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION kms_ciphertext_provider(ciphertext bytea)
RETURNS text
AS 'MODULE_PATHNAME', 'kms_ciphertext_provider'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION kms_is_ciphertext(value bytea)
RETURNS boolean
AS 'MODULE_PATHNAME', 'kms_is_ciphertext'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION kms_rewrap(ciphertext bytea, new_key_id text DEFAULT NULL, context jsonb DEFAULT '{}')
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_rewrap'
LANGUAGE C STABLE PARALLEL RESTRICTED;

CREATE FUNCTION kms_reencrypt(ciphertext bytea, context jsonb, new_key_id text DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_reencrypt'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- Keyed hash for blind indexes (column encryption).
CREATE FUNCTION kms_hmac_sha256(key bytea, data bytea)
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_hmac_sha256'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Local provider key management.
CREATE FUNCTION kms_create_key(alias text, description text DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'kms_create_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_disable_key(key text)
RETURNS void
AS 'MODULE_PATHNAME', 'kms_disable_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_enable_key(key text)
RETURNS void
AS 'MODULE_PATHNAME', 'kms_enable_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_rotate_key(key text)
RETURNS int
AS 'MODULE_PATHNAME', 'kms_rotate_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_local_keys(
    OUT key_id text, OUT alias text, OUT description text, OUT enabled boolean,
    OUT created timestamptz, OUT current_version int, OUT versions int)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'kms_local_keys'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE VIEW kms_keys AS SELECT * FROM kms_local_keys();

CREATE FUNCTION kms_describe_key(key text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'kms_describe_key'
LANGUAGE C VOLATILE PARALLEL SAFE;

-- DEK cache.
CREATE FUNCTION kms_cache_flush()
RETURNS int
AS 'MODULE_PATHNAME', 'kms_cache_flush'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_cache_stats(
    OUT entries bigint, OUT encrypting_entries bigint, OUT capacity bigint,
    OUT hits bigint, OUT local_hits bigint, OUT misses bigint,
    OUT generate_calls bigint, OUT decrypt_calls bigint, OUT rewrap_calls bigint,
    OUT describe_calls bigint, OUT call_errors bigint, OUT coalesced_waits bigint,
    OUT evictions bigint, OUT expirations bigint, OUT dek_rotations bigint, OUT flushes bigint,
    OUT hit_ratio double precision, OUT thrash_warnings bigint, OUT shared_memory_bytes bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_cache_stats'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE VIEW kms_cache_stats AS SELECT * FROM kms_cache_stats();

-- Privileges: encrypting is open to everyone; decrypting, key management,
-- cache control and key inspection need an explicit GRANT (README).
REVOKE EXECUTE ON FUNCTION kms_decrypt(bytea, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_decrypt_text(bytea, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_decrypt_pairs(bytea, "any") FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_decrypt_text_pairs(bytea, "any") FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_reencrypt(bytea, jsonb, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_rewrap(bytea, text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_hmac_sha256(bytea, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_create_key(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_disable_key(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_enable_key(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_rotate_key(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_local_keys() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_describe_key(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_cache_flush() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_cache_stats() FROM PUBLIC;
REVOKE ALL ON kms_keys FROM PUBLIC;
REVOKE ALL ON kms_cache_stats FROM PUBLIC;

-- The cached DEKs of one key (issue 16): by key id, ARN or the alias used to
-- encrypt; every backend stops using them.
CREATE FUNCTION kms_cache_flush(key text)
RETURNS int
AS 'MODULE_PATHNAME', 'kms_cache_flush_key'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION kms_cache_flush(text) IS
  'Wipe the cached data keys of one key (key id, ARN, or the alias they were made under) in every session; returns shared entries wiped';
REVOKE EXECUTE ON FUNCTION kms_cache_flush(text) FROM PUBLIC;
