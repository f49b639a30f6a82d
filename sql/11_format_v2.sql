--
-- 11_format_v2: ciphertext format 2 (40 bytes of overhead, the data key in
-- kms_dek_registry): round trips, v1 and v2 mixed in one column,
-- inspection, the registry's durability within a transaction (savepoint
-- rollback), privileges, rotation in O(data keys) with no write to the user
-- table, kms_rewrap/kms_reencrypt, conversion with kms_rotate_column, and a
-- protected column in format 2.
--
\set VERBOSITY terse
SET kms_pg.provider = 'local';
SELECT kms_create_key('alias/regress_v2') IS NOT NULL AS created,
       kms_create_key('alias/regress_v2_other') IS NOT NULL AS other_created;
-- errors that name a key id: the id replaced by <key>
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '[0-9a-f]{8}-[0-9a-f-]{27}', '<key>', 'g');
END $$;
SET kms_pg.key_id = 'alias/regress_v2';
SELECT kms_describe_key('alias/regress_v2') ->> 'KeyId' AS key_v2 \gset

-- Format 1 stays the default (values that leave the database need no registry).
SHOW kms_pg.format;
SELECT name, vartype, context, min_val, max_val FROM pg_settings WHERE name = 'kms_pg.format';
SET kms_pg.format = 3;
SET kms_pg.format = 2;

-- Round trips: bytea, text, pairs; exactly 40 bytes of overhead.
SELECT kms_decrypt_text(kms_encrypt_text('hello v2')) AS text_roundtrip;
SELECT kms_decrypt(kms_encrypt('\x00ff'::bytea, '{"a": 1}'), '{"a": 1}') AS bytea_roundtrip;
SELECT kms_decrypt_text_pairs(kms_encrypt_text_pairs('pairs v2', NULL, 'id', 7), 'id', 7) AS pairs_roundtrip;
SELECT length(kms_encrypt('12345678901'::bytea)) - 11 AS overhead,
       length(kms_encrypt(''::bytea)) AS empty_value_bytes;
SELECT get_byte(c, 4) AS version, substr(c, 1, 4) AS magic, kms_is_ciphertext(c) AS is_ct
FROM (SELECT kms_encrypt('x'::bytea) AS c) s;
SELECT i.format_version, i.provider, i.key_id = :'key_v2' AS key_is_canonical,
       i.kms_context_keys, i.wrapped_dek_bytes, i.plaintext_bytes, i.overhead_bytes
FROM kms_ciphertext_info(kms_encrypt('abc'::bytea, '{"t": 1}')) i;
SELECT kms_ciphertext_key_id(c) = :'key_v2' AS key_id_ok, kms_ciphertext_provider(c) AS provider
FROM (SELECT kms_encrypt('x'::bytea) AS c) s;

-- Context binding, as v1.
SELECT kms_decrypt(kms_encrypt('x'::bytea, '{"a": 1}'), '{"a": 2}');
-- A reference that is not in the registry; reference 0; a truncated value.
SELECT kms_decrypt(overlay(kms_encrypt('x'::bytea) PLACING '\x00000000000001'::bytea FROM 6 FOR 7));
SELECT kms_decrypt(overlay(kms_encrypt('x'::bytea) PLACING '\x00000000000000'::bytea FROM 6 FOR 7));
SELECT kms_decrypt(substr(kms_encrypt('x'::bytea), 1, 39));
SELECT kms_is_ciphertext(substr(kms_encrypt('x'::bytea), 1, 39)) AS truncated_is_ct;
-- The reference is additional data: a value moved to another reference does not open.
SELECT kms_decrypt(overlay(kms_encrypt('x'::bytea) PLACING substr(b, 6, 7) FROM 6 FOR 7))
FROM (SELECT kms_encrypt('y'::bytea, '{}', 'alias/regress_v2_other') AS b) s;

-- One registry row per data key, whatever the number of values (after the
-- flush, the key's current data key is reloaded from the registry: no new row).
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT count(*) AS rows0 FROM kms_dek_registry WHERE key_id = :'key_v2' \gset
CREATE TABLE v2_mixed (i int PRIMARY KEY, c bytea);
INSERT INTO v2_mixed SELECT i, kms_encrypt(('v' || i)::bytea, jsonb_build_object('i', i))
FROM generate_series(1, 200) i;
SELECT count(*) - :rows0 AS new_registry_rows FROM kms_dek_registry WHERE key_id = :'key_v2';
SELECT r.provider, r.name_block, length(r.wrapped_dek) AS wrapped_bytes, r.rewrapped_at IS NULL AS never_rewrapped
FROM kms_dek_registry r WHERE r.key_id = :'key_v2' ORDER BY r.created_at DESC LIMIT 1;
-- Format 1 values in the same column.
SET kms_pg.format = 1;
INSERT INTO v2_mixed SELECT i, kms_encrypt(('v' || i)::bytea, jsonb_build_object('i', i))
FROM generate_series(201, 250) i;
SET kms_pg.format = 2;
SELECT get_byte(c, 4) AS version, count(*), min(length(c)) - 2 AS min_overhead FROM v2_mixed GROUP BY 1 ORDER BY 1;
SELECT provider, key_id = :'key_v2' AS key_ok, "values", deks FROM kms_key_usage('v2_mixed', 'c');
SELECT count(*) FILTER (WHERE kms_decrypt(c, jsonb_build_object('i', i)) = ('v' || i)::bytea) AS decrypted
FROM v2_mixed;

-- The cache: cold, one provider call for the data key; warm, none.
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT decrypt_calls AS d0 FROM kms_cache_stats \gset
SELECT count(*) FILTER (WHERE kms_decrypt(c, jsonb_build_object('i', i)) = ('v' || i)::bytea) AS decrypted
FROM v2_mixed WHERE get_byte(c, 4) = 2;
SELECT decrypt_calls - :d0 AS cold_decrypt_calls FROM kms_cache_stats;
SELECT decrypt_calls AS d1 FROM kms_cache_stats \gset
SELECT count(*) FILTER (WHERE kms_decrypt(c, jsonb_build_object('i', i)) = ('v' || i)::bytea) AS decrypted
FROM v2_mixed WHERE get_byte(c, 4) = 2;
SELECT decrypt_calls - :d1 AS warm_decrypt_calls FROM kms_cache_stats;

-- Savepoint rollback: the registry row inserted in the rolled-back
-- subtransaction is gone, and the next value under the same cached data
-- key registers it again (so it commits with that value).  No data key of
-- the key is young enough to be reused: the savepoint's value gets a new one.
SET kms_pg.dek_max_age = 1;
SELECT pg_sleep(1.2);
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT count(*) AS rows1 FROM kms_dek_registry WHERE key_id = :'key_v2' \gset
BEGIN;
SAVEPOINT s1;
INSERT INTO v2_mixed VALUES (1001, kms_encrypt('sp'::bytea, '{"i": 1001}'));
ROLLBACK TO SAVEPOINT s1;
SELECT count(*) - :rows1 AS rows_after_rollback FROM kms_dek_registry WHERE key_id = :'key_v2';
INSERT INTO v2_mixed VALUES (1002, kms_encrypt('sp'::bytea, '{"i": 1002}'));
COMMIT;
RESET kms_pg.dek_max_age;
SELECT count(*) - :rows1 AS rows_after_commit FROM kms_dek_registry WHERE key_id = :'key_v2';
-- An aborted transaction: its row goes, the next transaction registers again.
BEGIN;
INSERT INTO v2_mixed VALUES (1003, kms_encrypt('ab'::bytea, '{"i": 1003}', 'alias/regress_v2_other'));
ROLLBACK;
INSERT INTO v2_mixed VALUES (1004, kms_encrypt('ab'::bytea, '{"i": 1004}', 'alias/regress_v2_other'));
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT i, convert_from(kms_decrypt(c, jsonb_build_object('i', i)), 'UTF8') AS plain
FROM v2_mixed WHERE i > 1000 ORDER BY i;

-- Where nothing can be written: a read-only transaction refuses format 2 (25006).
BEGIN READ ONLY;
SELECT kms_encrypt('ro'::bytea);
ROLLBACK;
BEGIN READ ONLY;
SET LOCAL kms_pg.format = 1;
SELECT kms_is_ciphertext(kms_encrypt('ro'::bytea)) AS v1_in_read_only;
ROLLBACK;

-- Parallel operations cannot write registry rows: encryption is PARALLEL UNSAFE.
SELECT proname, proparallel FROM pg_proc
WHERE proname IN ('kms_encrypt', 'kms_encrypt_text', 'kms_encrypt_pairs', 'kms_encrypt_text_pairs',
                  'kms_reencrypt', 'kms_rotate_key_registry')
ORDER BY 1;

-- Readers need no privilege on the registry: decryption reads it in C.
CREATE ROLE regress_v2_reader;
GRANT EXECUTE ON FUNCTION kms_decrypt(bytea, jsonb) TO regress_v2_reader;
GRANT SELECT ON v2_mixed TO regress_v2_reader;
SELECT kms_grant_key('alias/regress_v2', 'regress_v2_reader', '{decrypt}');
SELECT kms_cache_flush() >= 0 AS flushed;
SET ROLE regress_v2_reader;
SELECT count(*) FILTER (WHERE kms_decrypt(c, jsonb_build_object('i', i)) = ('v' || i)::bytea) AS reader_decrypted
FROM v2_mixed WHERE i <= 250;
SELECT count(*) FROM kms_dek_registry;
-- encrypt is not granted to it on this key (PUBLIC has encrypt: revoke it)
RESET ROLE;
SELECT kms_revoke_key('alias/regress_v2', 'public', '{encrypt}');
SET ROLE regress_v2_reader;
SELECT pg_temp.try($$SELECT kms_encrypt('x'::bytea)$$) AS reader_encrypt;
RESET ROLE;
SELECT kms_grant_key('alias/regress_v2', 'public', '{encrypt}');

-- Rotation in O(data keys): a new version of the local key, then every
-- registry row of the key is rewrapped: one provider call per data key,
-- no write to the user table.
SELECT kms_rotate_key('alias/regress_v2') AS new_version;
SELECT count(DISTINCT wrapped_dek) AS deks_of_key FROM kms_dek_registry WHERE key_id = :'key_v2' \gset
SELECT rewrap_calls AS r0 FROM kms_cache_stats \gset
SELECT pg_stat_force_next_flush();
SELECT n_tup_upd AS u0, n_tup_ins AS i0 FROM pg_stat_user_tables WHERE relname = 'v2_mixed' \gset
SELECT deks = :deks_of_key AS all_rows, rewrapped = deks AS all_rewrapped, skipped
FROM kms_rotate_key_registry(:'key_v2');
SELECT rewrap_calls - :r0 = :deks_of_key AS one_call_per_dek FROM kms_cache_stats;
SELECT pg_stat_force_next_flush();
SELECT n_tup_upd - :u0 AS user_rows_updated, n_tup_ins - :i0 AS user_rows_inserted
FROM pg_stat_user_tables WHERE relname = 'v2_mixed';
SELECT count(*) FILTER (WHERE rewrapped_at IS NULL) AS not_rewrapped,
       count(*) FILTER (WHERE get_byte(wrapped_dek, 4) <> 2) AS not_under_version_2
FROM kms_dek_registry WHERE key_id = :'key_v2';
-- The values are the same bytes and decrypt cold under the new wrapping.
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT count(*) FILTER (WHERE kms_decrypt(c, jsonb_build_object('i', i)) = ('v' || i)::bytea) AS decrypted
FROM v2_mixed WHERE i <= 250;
-- Data keys bound to provider-context values (a tenant in
-- kms_pg.kms_context_keys) are rewrapped too, with the values their registry
-- row keeps: 3 tenants, 3 data keys, 3 provider calls, none skipped, no user
-- row written, and every value decrypts cold afterwards.
SET kms_pg.kms_context_keys = 'tenant';
SELECT kms_describe_key('alias/regress_v2_other') ->> 'KeyId' AS key_other \gset
CREATE TABLE v2_tenants (id int PRIMARY KEY, tenant text, c bytea);
INSERT INTO v2_tenants SELECT i, 't' || (i % 3),
    kms_encrypt(('row ' || i)::bytea, jsonb_build_object('tenant', 't' || (i % 3)), 'alias/regress_v2_other')
FROM generate_series(1, 30) i;
SELECT count(DISTINCT substr(c, 6, 7)) AS tenant_deks FROM v2_tenants;
SELECT count(*) AS registry_rows, count(*) FILTER (WHERE provider_context IS NULL) AS without_context
FROM kms_dek_registry WHERE key_id = :'key_other';
SELECT kms_rotate_key('alias/regress_v2_other') IS NOT NULL AS other_new_version;
SELECT rewrap_calls AS r1 FROM kms_cache_stats \gset
SELECT pg_stat_force_next_flush();
SELECT n_tup_upd AS tu0 FROM pg_stat_user_tables WHERE relname = 'v2_tenants' \gset
SELECT deks, rewrapped, skipped FROM kms_rotate_key_registry(:'key_other');
SELECT rewrap_calls - :r1 AS tenant_rewrap_calls FROM kms_cache_stats;
SELECT pg_stat_force_next_flush();
SELECT n_tup_upd - :tu0 AS tenant_rows_updated FROM pg_stat_user_tables WHERE relname = 'v2_tenants';
SELECT count(*) FILTER (WHERE rewrapped_at IS NULL) AS tenant_not_rewrapped,
       count(*) FILTER (WHERE name_block = '\x010674656e616e74'::bytea) AS tenant_rows_rewrapped
FROM kms_dek_registry WHERE key_id = :'key_other';
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT count(*) FILTER (WHERE kms_decrypt(c, jsonb_build_object('tenant', tenant)) = ('row ' || id)::bytea) AS tenant_decrypted,
       count(*) AS tenant_values
FROM v2_tenants;
-- The wrong tenant still fails (the provider context binds each data key).
SELECT pg_temp.try($$SELECT kms_decrypt(c, '{"tenant": "t2"}') FROM v2_tenants WHERE id = 1$$) AS wrong_tenant;
RESET kms_pg.kms_context_keys;
-- Only a holder of rewrap on the key may rotate it.
GRANT EXECUTE ON FUNCTION kms_rotate_key_registry(text, text) TO regress_v2_reader;
SET ROLE regress_v2_reader;
SELECT pg_temp.try(format('SELECT kms_rotate_key_registry(%L)', :'key_v2')) AS reader_rotate;
RESET ROLE;

-- kms_rewrap on a v2 value rewraps its registry row; the value stays byte for byte.
SELECT kms_encrypt('rw'::bytea, '{"k": 1}') AS rw \gset
SELECT kms_rewrap(:'rw'::bytea, NULL, '{"k": 1}') = :'rw'::bytea AS value_unchanged;
SELECT kms_decrypt(:'rw'::bytea, '{"k": 1}') AS after_rewrap;
-- kms_reencrypt: a fresh data key, in the current format.
SELECT get_byte(n, 4) AS version, (kms_ciphertext_info(n)).dek_id <> (kms_ciphertext_info(:'rw'::bytea)).dek_id AS fresh_dek,
       kms_decrypt(n, '{"k": 1}') AS plain
FROM (SELECT kms_reencrypt(:'rw'::bytea, '{"k": 1}') AS n) s;

-- Conversion of a column: v1 -> v2 and back, by re-encryption.
CREATE TABLE v2_conv (i int PRIMARY KEY, c bytea);
SET kms_pg.format = 1;
INSERT INTO v2_conv SELECT i, kms_encrypt(('c' || i)::bytea, jsonb_build_object('i', i)) FROM generate_series(1, 30) i;
SET client_min_messages = warning;
CALL kms_rotate_column('v2_conv', 'c', context_expr => 'jsonb_build_object(''i'', t.i)', batch_size => 10, target_format => 2);
SELECT get_byte(c, 4) AS version, count(*), sum(length(c)) AS bytes FROM v2_conv GROUP BY 1;
SELECT count(*) FILTER (WHERE kms_decrypt(c, jsonb_build_object('i', i)) = ('c' || i)::bytea) AS decrypted FROM v2_conv;
CALL kms_rotate_column('v2_conv', 'c', context_expr => 'jsonb_build_object(''i'', t.i)', target_format => 1);
RESET client_min_messages;
SELECT get_byte(c, 4) AS version, count(*) FROM v2_conv GROUP BY 1;
SELECT count(*) FILTER (WHERE kms_decrypt(c, jsonb_build_object('i', i)) = ('c' || i)::bytea) AS decrypted FROM v2_conv;
CALL kms_rotate_column('v2_conv', 'c', target_format => 7);

-- A protected column in format 2, whatever kms_pg.format says.
CREATE TABLE v2_prot (id int PRIMARY KEY, ssn text);
INSERT INTO v2_prot SELECT g, 'ssn-' || g FROM generate_series(1, 5) g;
SET client_min_messages = warning;
CALL kms_protect_column('v2_prot', 'ssn', '{id}');
RESET client_min_messages;
SELECT kms_set_column_format('v2_prot', 'ssn', 2);
SELECT kms_set_column_format('v2_prot', 'ssn', 5);
SELECT kms_set_column_format('v2_prot', 'id', 2);
SHOW kms_pg.format;
INSERT INTO v2_prot VALUES (6, 'ssn-6');
UPDATE v2_prot SET ssn = 'ssn-2b' WHERE id = 2;
SELECT id, get_byte(ssn::bytea, 4) AS version FROM v2_prot ORDER BY id;
SELECT id, ssn FROM v2_prot_decrypted ORDER BY id;
SELECT format FROM kms_protected_columns WHERE relid = 'v2_prot'::regclass;

-- The registry is dumped with the extension's data.
SELECT 'kms_dek_registry'::regclass = ANY (extconfig) AS dumped FROM pg_extension WHERE extname = 'kms_pg';
SELECT has_table_privilege('public', 'kms_dek_registry', 'SELECT') AS public_can_read;

-- A session decrypting v2 values whose data keys are in the shared cache
-- makes no registry lookup (index scans of kms_dek_registry): the cache
-- finds each DEK by its reference, with the key id and name block of its
-- registry row.  Key privileges are still checked against the value's key.
SELECT kms_cache_flush() >= 0 AS flushed;
\c
SELECT count(*) FILTER (WHERE kms_decrypt(c, jsonb_build_object('tenant', tenant)) = ('row ' || id)::bytea) AS first_session_decrypted
FROM v2_tenants;
SELECT pg_stat_force_next_flush();
SELECT idx_scan AS x0 FROM pg_stat_user_tables WHERE relname = 'kms_dek_registry' \gset
SELECT decrypt_calls AS dc0 FROM kms_cache_stats \gset
\c
SELECT count(*) FILTER (WHERE kms_decrypt(c, jsonb_build_object('tenant', tenant)) = ('row ' || id)::bytea) AS second_session_decrypted
FROM v2_tenants;
SELECT pg_stat_force_next_flush();
SELECT idx_scan - :x0 AS second_session_registry_lookups FROM pg_stat_user_tables WHERE relname = 'kms_dek_registry';
SELECT decrypt_calls - :dc0 AS second_session_decrypt_calls FROM kms_cache_stats;
-- A hit by reference on a DEK of a key the reader holds no privilege on is refused.
GRANT SELECT ON v2_tenants TO regress_v2_reader;
\c
SET ROLE regress_v2_reader;
DO $$
BEGIN
  PERFORM kms_decrypt(c, '{"tenant": "t1"}') FROM v2_tenants WHERE id = 1;
  RAISE NOTICE 'opened';
EXCEPTION WHEN OTHERS THEN
  RAISE NOTICE 'refused: %', SQLSTATE;
END $$;
RESET ROLE;
REVOKE SELECT ON v2_tenants FROM regress_v2_reader;
SELECT pg_stat_force_next_flush();
SELECT idx_scan - :x0 AS registry_lookups_after_refusal FROM pg_stat_user_tables WHERE relname = 'kms_dek_registry';

-- Encrypt reuses the tenant's data key (format 2): once the cache is
-- flushed (as by a restart), encrypting for the same tenants reloads each
-- tenant's current DEK from the registry (one unwrap each, and one lease of
-- its budget recorded in its row) instead of making a new one.
SET kms_pg.provider = 'local';
SET kms_pg.key_id = 'alias/regress_v2';
SET kms_pg.format = 2;
SET kms_pg.kms_context_keys = 'tenant';
CREATE TABLE v2_reuse (id int PRIMARY KEY, tenant text, c bytea);
INSERT INTO v2_reuse SELECT i, 'r' || (i % 5),
    kms_encrypt(('reuse ' || i)::bytea, jsonb_build_object('tenant', 'r' || (i % 5)))
FROM generate_series(1, 50) i;
SELECT count(*) AS reg0 FROM kms_dek_registry \gset
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT generate_calls AS g0, decrypt_calls AS d0 FROM kms_cache_stats \gset
INSERT INTO v2_reuse SELECT i, 'r' || (i % 5),
    kms_encrypt(('reuse ' || i)::bytea, jsonb_build_object('tenant', 'r' || (i % 5)))
FROM generate_series(51, 100) i;
SELECT generate_calls - :g0 AS generate_after_flush, decrypt_calls - :d0 AS unwraps_after_flush
FROM kms_cache_stats;
SELECT count(*) - :reg0 AS new_registry_rows FROM kms_dek_registry;
SELECT count(DISTINCT substr(c, 6, 7)) AS deks_of_5_tenants FROM v2_reuse;
-- each tenant's row: two leases of 1/16 of kms_pg.dek_max_messages handed out
SELECT r.leased_messages / (current_setting('kms_pg.dek_max_messages')::bigint / 16) AS leases, count(*)
FROM kms_dek_registry r WHERE r.dek_ref IN (SELECT DISTINCT ('x' || encode(substr(c, 6, 7), 'hex'))::bit(56)::bigint FROM v2_reuse)
GROUP BY 1;
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT count(*) FILTER (WHERE kms_decrypt(c, jsonb_build_object('tenant', tenant)) = ('reuse ' || id)::bytea) AS reuse_decrypted
FROM v2_reuse;
-- A DEK older than kms_pg.dek_max_age is not reused: a new one per tenant.
SET kms_pg.dek_max_age = 1;
SELECT pg_sleep(1.5);
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT generate_calls AS g1 FROM kms_cache_stats \gset
SELECT count(*) AS reg1 FROM kms_dek_registry \gset
INSERT INTO v2_reuse SELECT i, 'r' || (i % 5),
    kms_encrypt(('reuse ' || i)::bytea, jsonb_build_object('tenant', 'r' || (i % 5)))
FROM generate_series(101, 110) i;
SELECT generate_calls - :g1 AS generate_after_age, (SELECT count(*) - :reg1 FROM kms_dek_registry) AS new_rows_after_age
FROM kms_cache_stats;
RESET kms_pg.dek_max_age;
-- Format 1 keeps no registry: after a flush it makes a new DEK per tenant.
SET kms_pg.format = 1;
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT generate_calls AS g2 FROM kms_cache_stats \gset
SELECT count(*) AS v1_values FROM (SELECT kms_encrypt('v1'::bytea, jsonb_build_object('tenant', 'r' || i)) FROM generate_series(0, 4) i) s;
SELECT generate_calls - :g2 AS v1_generate_after_flush FROM kms_cache_stats;
RESET kms_pg.kms_context_keys;
DROP TABLE v2_reuse;

RESET kms_pg.format;
DROP TABLE v2_mixed, v2_conv, v2_tenants;
SET client_min_messages = warning;
SELECT kms_unprotect_column('v2_prot', 'ssn');
RESET client_min_messages;
DROP TABLE v2_prot;
SELECT kms_revoke_key('alias/regress_v2', 'regress_v2_reader', '{decrypt}');
REVOKE ALL ON FUNCTION kms_decrypt(bytea, jsonb) FROM regress_v2_reader;
REVOKE ALL ON FUNCTION kms_rotate_key_registry(text, text) FROM regress_v2_reader;
DROP ROLE regress_v2_reader;
