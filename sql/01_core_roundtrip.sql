--
-- 01_core_roundtrip: kms_encrypt/kms_decrypt round trips on the local
-- provider, bytea and text, from 0 bytes to 1 MB; NULL and empty values;
-- the default key (kms_pg.key_id) against an explicit key; fresh nonces;
-- kms_ciphertext_info.
--
-- Values are compared by digest, never printed.  Key ids are random, so
-- they are compared with kms_keys rather than printed.
--
-- The local provider, whatever the server default is.
SET kms_pg.provider = 'local';

-- Deterministic, non-repeating test bytes: SHA-256 of a counter, n bytes.
CREATE FUNCTION pg_temp.gen(n int, seed int DEFAULT 0) RETURNS bytea
LANGUAGE sql AS $$
  SELECT COALESCE(substring(string_agg(sha256(int4send(seed) || int4send(i)), ''::bytea ORDER BY i)
                            FROM 1 FOR n), ''::bytea)
  FROM generate_series(1, (n + 31) / 32) AS i
$$;

SELECT kms_create_key('alias/regress_rt01_a', 'round trip key A') AS key_a \gset
SELECT kms_create_key('alias/regress_rt01_b') AS key_b \gset

-- kms_create_key returns a version 4 uuid
SELECT :'key_a' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' AS key_a_is_uuid,
       :'key_b' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' AS key_b_is_uuid,
       :'key_a' <> :'key_b' AS distinct_ids;

-- No key given and kms_pg.key_id unset: a clear error.
RESET kms_pg.key_id;
SELECT kms_encrypt('secret'::bytea);
SELECT kms_encrypt_text('secret', '{}', NULL);
SELECT kms_encrypt('secret'::bytea, '{}', '');

SET kms_pg.key_id = 'alias/regress_rt01_a';

-- bytea round trips at the GCM block boundaries and beyond
CREATE TEMP TABLE rt_bytea AS
  SELECT n, pg_temp.gen(n, n) AS pt FROM unnest(ARRAY[0, 1, 15, 16, 17, 1000, 65536, 1048576]) AS n;
ALTER TABLE rt_bytea ADD COLUMN ct bytea;
UPDATE rt_bytea SET ct = kms_encrypt(pt, '{"table": "rt_bytea"}');
SELECT n,
       length(pt) AS plaintext_bytes,
       length(ct) - length(pt) AS overhead,
       sha256(kms_decrypt(ct, '{"table": "rt_bytea"}')) = sha256(pt) AS roundtrip_ok,
       position(pt IN ct) > 0 AND n >= 16 AS plaintext_visible
FROM rt_bytea ORDER BY n;

-- text round trips (ASCII, byte lengths as above)
CREATE TEMP TABLE rt_text AS
  SELECT n, left(repeat('The quick brown fox jumps over the lazy dog. ', n / 45 + 1), n) AS pt
  FROM unnest(ARRAY[0, 1, 15, 16, 17, 1000, 65536, 1048576]) AS n;
ALTER TABLE rt_text ADD COLUMN ct bytea;
UPDATE rt_text SET ct = kms_encrypt_text(pt, '{"table": "rt_text"}');
SELECT n, octet_length(pt) AS plaintext_bytes,
       md5(kms_decrypt_text(ct, '{"table": "rt_text"}')) = md5(pt) AS roundtrip_ok,
       kms_decrypt_text(ct, '{"table": "rt_text"}') = pt AS equal_text,
       (kms_ciphertext_info(ct)).plaintext_bytes = octet_length(pt) AS info_size_ok
FROM rt_text ORDER BY n;

-- unicode text: multi-byte characters, emoji, combining marks, ZWJ sequences
CREATE TEMP TABLE rt_unicode (label text, pt text, ct bytea);
INSERT INTO rt_unicode (label, pt) VALUES
  ('latin-1', 'Grüße aus Köln, çà et là'),
  ('cjk', '鍵管理サービスで暗号化する'),
  ('cyrillic+greek', 'Шифрование ключом κλειδί'),
  ('emoji', '🔐🗝️👩‍💻🏳️‍🌈'),
  ('combining', 'e' || U&'\0301' || ' vs ' || U&'\00E9'),
  ('4-byte only', repeat('😀', 1000)),
  ('1 MB mixed', repeat('aé€😀', 104858));
UPDATE rt_unicode SET ct = kms_encrypt_text(pt, jsonb_build_object('label', label));
SELECT label, length(pt) AS chars, octet_length(pt) AS bytes,
       kms_decrypt_text(ct, jsonb_build_object('label', label)) = pt AS roundtrip_ok,
       length(kms_decrypt(ct, jsonb_build_object('label', label))) = octet_length(pt) AS bytea_len_ok,
       kms_decrypt(ct, jsonb_build_object('label', label)) = convert_to(pt, 'UTF8') AS utf8_bytes_ok
FROM rt_unicode ORDER BY label COLLATE "C";

-- NULL plaintext gives NULL; NULL ciphertext decrypts to NULL
SELECT kms_encrypt(NULL::bytea) IS NULL AS enc_null,
       kms_encrypt_text(NULL::text) IS NULL AS enc_text_null,
       kms_decrypt(NULL::bytea) IS NULL AS dec_null,
       kms_decrypt_text(NULL::bytea) IS NULL AS dec_text_null;

-- empty plaintext round-trips to empty, not NULL
SELECT kms_decrypt(kms_encrypt(''::bytea)) = ''::bytea AS empty_bytea_ok,
       kms_decrypt_text(kms_encrypt_text('')) = '' AS empty_text_ok,
       kms_decrypt_text(kms_encrypt_text('')) IS NOT NULL AS empty_not_null,
       length(kms_encrypt(''::bytea)) AS empty_ciphertext_bytes;

-- defaults: context '{}' and key kms_pg.key_id
SELECT kms_decrypt(kms_encrypt('x'::bytea)) = 'x'::bytea AS defaults_ok,
       kms_decrypt(kms_encrypt('x'::bytea), '{}') = 'x'::bytea AS explicit_empty_ctx_ok,
       kms_decrypt(kms_encrypt('x'::bytea, '{}', NULL), '{}') = 'x'::bytea AS null_key_is_guc;

-- two encryptions of the same plaintext differ (fresh nonce) but decrypt equal
CREATE TEMP TABLE twice AS
  SELECT kms_encrypt('same plaintext'::bytea, '{"k": 1}') AS c1,
         kms_encrypt('same plaintext'::bytea, '{"k": 1}') AS c2;
SELECT c1 <> c2 AS ciphertexts_differ,
       substring(c1 FROM (kms_ciphertext_info(c1)).overhead_bytes - 27 FOR 12)
         <> substring(c2 FROM (kms_ciphertext_info(c2)).overhead_bytes - 27 FOR 12) AS nonces_differ,
       (kms_ciphertext_info(c1)).dek_id = (kms_ciphertext_info(c2)).dek_id AS same_dek,
       kms_decrypt(c1, '{"k": 1}') = kms_decrypt(c2, '{"k": 1}') AS decrypt_equal,
       kms_decrypt(c1, '{"k": 1}') = 'same plaintext'::bytea AS decrypt_ok
FROM twice;
-- 1000 encryptions of one plaintext: 1000 distinct ciphertexts and nonces
SELECT count(DISTINCT c) AS distinct_ciphertexts,
       count(DISTINCT substring(c FROM (kms_ciphertext_info(c)).overhead_bytes - 27 FOR 12)) AS distinct_nonces
FROM (SELECT kms_encrypt('abc'::bytea) AS c FROM generate_series(1, 1000)) s;

-- explicit key_id against kms_pg.key_id
SELECT (kms_ciphertext_info(kms_encrypt('v'::bytea))).key_id = :'key_a' AS guc_key_used,
       (kms_ciphertext_info(kms_encrypt('v'::bytea, '{}', 'alias/regress_rt01_b'))).key_id = :'key_b' AS explicit_alias_used,
       (kms_ciphertext_info(kms_encrypt('v'::bytea, '{}', :'key_b'))).key_id = :'key_b' AS explicit_id_used,
       kms_decrypt(kms_encrypt('v'::bytea, '{}', 'alias/regress_rt01_b')) = 'v'::bytea AS explicit_roundtrip;
SET kms_pg.key_id = :'key_b';
SELECT (kms_ciphertext_info(kms_encrypt('v'::bytea))).key_id = :'key_b' AS guc_key_id_form_used;
SET kms_pg.key_id = 'alias/regress_rt01_a';
-- decryption does not depend on kms_pg.key_id: the key is in the value
CREATE TEMP TABLE under_b AS SELECT kms_encrypt('under b'::bytea, '{}', 'alias/regress_rt01_b') AS c;
RESET kms_pg.key_id;
SELECT kms_decrypt(c) = 'under b'::bytea AS decrypts_without_guc FROM under_b;
SET kms_pg.key_id = 'alias/regress_rt01_a';

-- kms_ciphertext_info: version, provider, key id, DEK id, sizes
CREATE TEMP TABLE info_t AS
  SELECT n, kms_encrypt(pg_temp.gen(n), '{"a": "x", "b": 2}') AS c
  FROM generate_series(0, 40) AS n;
SELECT DISTINCT i.format_version, i.provider, i.key_id = k.key_id AS key_id_matches_kms_keys,
       i.kms_context_keys, i.wrapped_dek_bytes, i.overhead_bytes, length(i.dek_id) AS dek_id_chars
FROM info_t, kms_ciphertext_info(c) i, kms_keys k WHERE k.alias = 'alias/regress_rt01_a';
SELECT count(DISTINCT (kms_ciphertext_info(c)).dek_id) AS dek_ids_in_one_statement,
       bool_and((kms_ciphertext_info(c)).plaintext_bytes = n) AS plaintext_bytes_ok,
       bool_and(length(c) = n + (kms_ciphertext_info(c)).overhead_bytes) AS overhead_ok,
       bool_and(kms_is_ciphertext(c)) AS all_are_ciphertexts
FROM info_t;
-- another local key: the same constant overhead (local key ids are all 36-byte uuids)
SELECT DISTINCT (kms_ciphertext_info(kms_encrypt(pg_temp.gen(n), '{}', :'key_b'))).overhead_bytes
FROM generate_series(0, 5) AS n;
-- info never decrypts: it needs no context
SELECT (kms_ciphertext_info(c)).format_version FROM info_t WHERE n = 3;
SELECT kms_is_ciphertext('plain'::bytea) AS plain_is_ct, kms_is_ciphertext(''::bytea) AS empty_is_ct;
