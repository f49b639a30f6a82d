--
-- 03_core_errors: bad input gets a specific SQLSTATE and a clear message,
-- never a crash and never plaintext.  Truncation at every length, every
-- single-bit flip, wrong magic/version/provider, wrong context, unknown
-- and disabled keys, empty input, non-UTF-8 plaintext for decrypt_text.
--
-- The local provider, whatever the server default is.
SET kms_pg.provider = 'local';

-- 'DECRYPTED ...' (which must never happen for a damaged value) or
-- "SQLSTATE: message", with key ids and numbers in messages masked so the
-- outcome does not depend on the random key id.
CREATE FUNCTION pg_temp.try_decrypt(ct bytea, ctx jsonb DEFAULT '{}', with_detail boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE st text; msg text; det text; pt bytea;
BEGIN
  pt := kms_decrypt(ct, ctx);
  RETURN 'DECRYPTED ' || CASE WHEN pt = 'attack at dawn'::bytea THEN 'to the original' ELSE 'to something else' END;
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
  msg := regexp_replace(msg, '".*"', '"<key>"');
  msg := regexp_replace(msg, 'version -?\d+', 'version <n>');
  RETURN st || ': ' || msg || CASE WHEN with_detail AND det <> '' THEN ' / ' || det ELSE '' END;
END $$;

SELECT kms_create_key('alias/regress_err03') AS key_id \gset
SELECT kms_create_key('alias/regress_err03_dis') IS NOT NULL AS created;
SET kms_pg.key_id = 'alias/regress_err03';

CREATE TEMP TABLE base AS SELECT kms_encrypt('attack at dawn'::bytea, '{"row": 1}') AS ct;
-- layout of this value (docs/format.md): 111-byte header, nonce, 14-byte body, tag
SELECT length(ct) AS total, (kms_ciphertext_info(ct)).overhead_bytes - 28 AS header_bytes,
       pg_temp.try_decrypt(ct, '{"row": 1}') AS intact
FROM base;

-- Every proper prefix: an error, never a crash, never plaintext.
SELECT outcome, count(*) AS prefixes, min(n) AS shortest, max(n) AS longest
FROM (SELECT n, pg_temp.try_decrypt(substring(ct FROM 1 FOR n), '{"row": 1}') AS outcome
      FROM base, generate_series(0, length(ct) - 1) AS n) s
GROUP BY outcome ORDER BY min(n);
-- the details say how long the value is
SELECT n, pg_temp.try_decrypt(substring(ct FROM 1 FOR n), '{"row": 1}', true) AS outcome
FROM base, unnest(ARRAY[0, 1, 4, 5, 39, 40, 110, 138]) AS n ORDER BY n;
-- kms_is_ciphertext never raises, and accepts only complete layouts
SELECT kms_is_ciphertext(substring(ct FROM 1 FOR n)) AS parses, count(*), min(n), max(n)
FROM base, generate_series(0, length(ct)) AS n GROUP BY 1 ORDER BY 1;

-- Every single-bit flip, summarised by the field it hits.  Counts are
-- shown except for the key id bytes, where whether a flipped character
-- is still printable depends on the random key id.
CREATE TEMP TABLE flips AS
  SELECT bit, bit / 8 AS byte,
         CASE WHEN bit / 8 < 4 THEN '01 magic'
              WHEN bit / 8 = 4 THEN '02 version'
              WHEN bit / 8 = 5 THEN '03 provider'
              WHEN bit / 8 = 6 THEN '04 key id length'
              WHEN bit / 8 < 43 THEN '05 key id'
              WHEN bit / 8 = 43 THEN '06 context key count'
              WHEN bit / 8 < 46 THEN '07 wrapped DEK length'
              WHEN bit / 8 = 46 THEN '08 wrap format'
              WHEN bit / 8 < 51 THEN '09 wrap key version'
              WHEN bit / 8 < 111 THEN '10 wrap nonce, DEK, tag'
              WHEN bit / 8 < 123 THEN '11 nonce'
              WHEN bit / 8 < 137 THEN '12 body'
              ELSE '13 tag' END AS field,
         pg_temp.try_decrypt(set_bit(ct, bit, 1 - get_bit(ct, bit)), '{"row": 1}') AS outcome,
         kms_is_ciphertext(set_bit(ct, bit, 1 - get_bit(ct, bit))) AS parses
  FROM base, generate_series(0, length(ct) * 8 - 1) AS bit;
SELECT field, outcome, CASE WHEN field = '05 key id' THEN NULL ELSE count(*) END AS bits
FROM flips GROUP BY field, outcome ORDER BY field, outcome;
SELECT count(*) AS bits_flipped,
       count(*) FILTER (WHERE outcome LIKE 'DECRYPTED%') AS decrypted,
       count(DISTINCT byte) AS bytes_covered
FROM flips;
-- the original still decrypts after all that (nothing was poisoned)
SELECT pg_temp.try_decrypt(ct, '{"row": 1}') AS intact_after_flips FROM base;

-- Wrong magic, version and provider bytes, with their details.
SELECT pg_temp.try_decrypt(set_byte(ct, 0, 0), '{"row": 1}', true) AS bad_magic,
       pg_temp.try_decrypt('hello world, not encrypted'::bytea, '{}', true) AS plain_value,
       pg_temp.try_decrypt('\x00'::bytea, '{}', true) AS one_zero_byte,
       pg_temp.try_decrypt('\xc5'::bytea, '{}', true) AS one_magic_byte
FROM base;
SELECT pg_temp.try_decrypt(set_byte(ct, 4, 3), '{"row": 1}', true) AS version_3,
       pg_temp.try_decrypt(set_byte(ct, 4, 0), '{"row": 1}', true) AS version_0,
       pg_temp.try_decrypt(set_byte(ct, 4, 255), '{"row": 1}', true) AS version_255
FROM base;
SELECT pg_temp.try_decrypt(set_byte(ct, 5, 0), '{"row": 1}', true) AS provider_0,
       pg_temp.try_decrypt(set_byte(ct, 5, 3), '{"row": 1}', true) AS provider_3,
       pg_temp.try_decrypt(set_byte(ct, 5, 255), '{"row": 1}', true) AS provider_255
FROM base;
-- the version is checked before anything else after the magic: a
-- future version 3 value with an entirely different layout is 0A000
-- (version 2 is sql/11_format_v2.sql's)
SELECT pg_temp.try_decrypt('\xc54b5047030000'::bytea, '{}', true) AS short_v3;
-- the same errors from kms_ciphertext_info and kms_decrypt_text
SELECT kms_ciphertext_info(set_byte(ct, 4, 3)) FROM base;
SELECT kms_ciphertext_info(''::bytea);
SELECT kms_decrypt_text(set_byte(ct, 0, 0), '{"row": 1}') FROM base;

-- Empty input.
SELECT kms_decrypt(''::bytea);
SELECT kms_decrypt_text(''::bytea);

-- Trailing bytes are part of the body: the tag check fails.
SELECT pg_temp.try_decrypt(ct || '\x00'::bytea, '{"row": 1}') AS trailing_byte FROM base;

-- Wrong context.
SELECT pg_temp.try_decrypt(ct, '{"row": 2}') AS wrong_value,
       pg_temp.try_decrypt(ct, '{}') AS no_context,
       pg_temp.try_decrypt(ct, '{"row": "1"}') AS string_not_number
FROM base;

-- Unknown key: for encryption, and a value naming a key id that is not
-- in the keyring (the key id bytes replaced by a well-formed unknown id).
SELECT kms_encrypt('x'::bytea, '{}', 'alias/regress_err03_nonexistent');
SELECT kms_encrypt('x'::bytea, '{}', '00000000-0000-4000-8000-000000000000');
SELECT kms_encrypt('x'::bytea, '{}', 'not-a-key');
SELECT kms_encrypt('x'::bytea, '{}', repeat('k', 256));
SELECT overlay(ct PLACING convert_to('00000000-0000-4000-8000-000000000000', 'UTF8') FROM 8 FOR 36) AS foreign_ct
FROM base \gset
SELECT kms_decrypt(:'foreign_ct'::bytea, '{"row": 1}');

-- Disabled key: 55000 for encryption and decryption; enabling restores both.
CREATE TEMP TABLE dis AS SELECT kms_encrypt('attack at dawn'::bytea, '{}', 'alias/regress_err03_dis') AS ct;
SELECT pg_temp.try_decrypt(ct) AS before_disable FROM dis;
SELECT kms_disable_key('alias/regress_err03_dis');
SELECT enabled FROM kms_keys WHERE alias = 'alias/regress_err03_dis';
SELECT pg_temp.try_decrypt(ct) AS while_disabled FROM dis;
SELECT pg_temp.try_decrypt(ct) AS while_disabled_again FROM dis;
DO $$
BEGIN
  PERFORM kms_encrypt('x'::bytea, '{}', 'alias/regress_err03_dis');
EXCEPTION WHEN OTHERS THEN
  RAISE NOTICE 'encrypt while disabled: % %', SQLSTATE, regexp_replace(SQLERRM, '".*"', '"<key>"');
END $$;
-- other keys are unaffected
SELECT pg_temp.try_decrypt(ct, '{"row": 1}') AS other_key_ok FROM base;
SELECT kms_enable_key('alias/regress_err03_dis');
SELECT pg_temp.try_decrypt(ct) AS after_enable FROM dis;
SELECT kms_decrypt(kms_encrypt('y'::bytea, '{}', 'alias/regress_err03_dis')) AS encrypt_after_enable;
-- disable/enable of a key that does not exist, and NULL
SELECT kms_disable_key('alias/regress_err03_nonexistent');
SELECT kms_enable_key(NULL);

-- decrypt_text of a plaintext that is not valid UTF-8
SELECT kms_decrypt_text(kms_encrypt('\xff'::bytea));
SELECT kms_decrypt_text(kms_encrypt('\xc3'::bytea));
SELECT kms_decrypt_text(kms_encrypt('\x610062'::bytea));
SELECT kms_decrypt(kms_encrypt('\xff'::bytea)) AS as_bytea_fine;
