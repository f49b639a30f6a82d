--
-- 06_core_cache: one DEK seals many values; the provider is asked once per
-- DEK, not per row; limits on values and bytes per DEK; the provider
-- context partitions the cache.  Counter differences of kms_cache_stats
-- are shown (the counters are shared by the whole server).
--
-- The local provider, whatever the server default is.
SET kms_pg.provider = 'local';

SELECT kms_create_key('alias/regress_cache06') IS NOT NULL AS created;
SET kms_pg.key_id = 'alias/regress_cache06';

-- 1000 rows in one statement: one GenerateDataKey, one DEK.
SELECT generate_calls AS g0, decrypt_calls AS d0, flushes AS f0 FROM kms_cache_stats \gset
CREATE TEMP TABLE c1000 AS
  SELECT i, kms_encrypt(('row ' || i)::bytea, jsonb_build_object('tbl', 'c1000', 'i', i)) AS ct
  FROM generate_series(1, 1000) i;
SELECT generate_calls - :g0 AS generate_calls, decrypt_calls - :d0 AS decrypt_calls,
       entries >= 1 AS cached, encrypting_entries >= 1 AS cached_for_encryption
FROM kms_cache_stats;
SELECT count(DISTINCT (kms_ciphertext_info(ct)).dek_id) AS deks FROM c1000;
-- the DEK made for encryption also serves decryption: no provider call
SELECT generate_calls AS g1, decrypt_calls AS d1 FROM kms_cache_stats \gset
SELECT count(*) FILTER (WHERE kms_decrypt(ct, jsonb_build_object('tbl', 'c1000', 'i', i)) = ('row ' || i)::bytea) AS decrypted
FROM c1000;
SELECT generate_calls - :g1 AS generate_calls, decrypt_calls - :d1 AS decrypt_calls FROM kms_cache_stats;

-- After a flush: decrypting all 1000 rows asks the provider exactly once.
SELECT kms_cache_flush() >= 1 AS flushed_some;
SELECT generate_calls AS g2, decrypt_calls AS d2, flushes AS f2, entries AS e2 FROM kms_cache_stats \gset
SELECT :f2 - :f0 AS flushes, :e2 AS entries_after_flush;
SELECT count(*) FILTER (WHERE kms_decrypt(ct, jsonb_build_object('tbl', 'c1000', 'i', i)) = ('row ' || i)::bytea) AS decrypted
FROM c1000;
SELECT generate_calls - :g2 AS generate_calls, decrypt_calls - :d2 AS decrypt_calls FROM kms_cache_stats;
-- and again: cached now
SELECT count(*) FILTER (WHERE kms_decrypt_text(ct, jsonb_build_object('tbl', 'c1000', 'i', i)) = 'row ' || i) AS decrypted
FROM c1000;
SELECT generate_calls - :g2 AS generate_calls, decrypt_calls - :d2 AS decrypt_calls FROM kms_cache_stats;
-- a new encryption after the flush gets a new DEK
SELECT (kms_ciphertext_info(kms_encrypt('after flush'::bytea))).dek_id
       <> (SELECT (kms_ciphertext_info(ct)).dek_id FROM c1000 WHERE i = 1) AS new_dek;
SELECT generate_calls - :g2 AS generate_calls FROM kms_cache_stats;

-- kms_pg.dek_max_messages = 10: 25 values need 3 DEKs (10 + 10 + 5).
SET kms_pg.dek_max_messages = 10;
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT generate_calls AS g3, dek_rotations AS r3 FROM kms_cache_stats \gset
CREATE TEMP TABLE c25 AS
  SELECT i, kms_encrypt(('m ' || i)::bytea, jsonb_build_object('i', i)) AS ct FROM generate_series(1, 25) i;
SELECT generate_calls - :g3 AS generate_calls FROM kms_cache_stats;
SELECT count(DISTINCT (kms_ciphertext_info(ct)).dek_id) AS deks FROM c25;
SELECT n AS values_per_dek, count(*) AS deks
FROM (SELECT (kms_ciphertext_info(ct)).dek_id, count(*) AS n FROM c25 GROUP BY 1) s
GROUP BY n ORDER BY n;
SELECT bool_and(kms_decrypt(ct, jsonb_build_object('i', i)) = ('m ' || i)::bytea) AS all_decrypt FROM c25;
RESET kms_pg.dek_max_messages;

-- kms_pg.dek_max_bytes = 1 MB: three 400 kB values need 2 DEKs.
SET kms_pg.dek_max_bytes = '1MB';
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT generate_calls AS g4 FROM kms_cache_stats \gset
CREATE TEMP TABLE cbig AS
  SELECT i, kms_encrypt(decode(repeat(lpad(to_hex(i), 2, '0'), 400000), 'hex')) AS ct FROM generate_series(1, 3) i;
SELECT generate_calls - :g4 AS generate_calls,
       (SELECT count(DISTINCT (kms_ciphertext_info(ct)).dek_id) FROM cbig) AS deks
FROM kms_cache_stats;
-- a single value larger than the byte limit can never be sealed within it:
-- a configuration-limit error, raised before any data key is generated
SELECT generate_calls AS g4b FROM kms_cache_stats \gset
DO $$
BEGIN
  PERFORM kms_encrypt(decode(repeat('ab', 1100000), 'hex'));
  RAISE NOTICE 'sealed a 1100000-byte value under a 1 MB limit';
EXCEPTION WHEN OTHERS THEN
  RAISE NOTICE 'value over kms_pg.dek_max_bytes: %', SQLSTATE;
END $$;
SELECT generate_calls - :g4b AS generate_calls FROM kms_cache_stats;
RESET kms_pg.dek_max_bytes;

-- kms_pg.kms_context_keys = 'tenant': 2 tenants over 1000 rows, 2 DEKs.
SET kms_pg.kms_context_keys = 'tenant';
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT generate_calls AS g5, decrypt_calls AS d5 FROM kms_cache_stats \gset
CREATE TEMP TABLE ct2 AS
  SELECT i, CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END AS tenant FROM generate_series(1, 1000) i;
ALTER TABLE ct2 ADD COLUMN ct bytea;
UPDATE ct2 SET ct = kms_encrypt(('t ' || i)::bytea, jsonb_build_object('tenant', tenant, 'i', i));
SELECT generate_calls - :g5 AS generate_calls FROM kms_cache_stats;
SELECT tenant, count(*) AS values, count(DISTINCT (kms_ciphertext_info(ct)).dek_id) AS deks,
       min((kms_ciphertext_info(ct)).kms_context_keys) AS context_keys
FROM ct2 GROUP BY tenant ORDER BY tenant;
SELECT count(DISTINCT (kms_ciphertext_info(ct)).dek_id) AS deks_overall FROM ct2;
-- after a flush, decrypting all rows: one provider call per tenant DEK
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT decrypt_calls AS d6 FROM kms_cache_stats \gset
SELECT count(*) FILTER (WHERE kms_decrypt(ct, jsonb_build_object('i', i, 'tenant', tenant)) = ('t ' || i)::bytea) AS decrypted
FROM ct2;
SELECT decrypt_calls - :d6 AS decrypt_calls FROM kms_cache_stats;
RESET kms_pg.kms_context_keys;
