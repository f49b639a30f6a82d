--
-- 45_aws_format_v2: format 2 on the AWS provider against the KMS emulator:
-- 40 bytes of overhead (against about 296 in format 1), the registry row
-- records the key ARN and the CiphertextBlob, cold decryption costs one KMS
-- Decrypt per data key, and kms_rotate_key_registry moves every data key
-- to another key with one ReEncrypt each and no write to the user table.
--
\set VERBOSITY terse
SET kms_pg.provider = 'aws';
SET kms_pg.kms_context_keys = '';
SET kms_pg.key_id = 'alias/kms-pg-test';
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults-reset >/dev/null
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT kms_aws_describe_key('alias/kms-pg-test')->'KeyMetadata'->>'Arn' AS test_arn \gset
SELECT kms_aws_describe_key('alias/kms-pg-other')->'KeyMetadata'->>'Arn' AS other_arn \gset

SET kms_pg.format = 2;
CREATE TABLE aws_v2 (id int PRIMARY KEY, c bytea);
INSERT INTO aws_v2 SELECT i, kms_encrypt(convert_to('aws ' || i, 'UTF8'), jsonb_build_object('id', i))
FROM generate_series(1, 500) i;
SET kms_pg.format = 1;
INSERT INTO aws_v2 SELECT i, kms_encrypt(convert_to('aws ' || i, 'UTF8'), jsonb_build_object('id', i))
FROM generate_series(501, 510) i;
SET kms_pg.format = 2;

SELECT get_byte(c, 4) AS version, count(*),
       min(length(c) - length(convert_to('aws ' || id, 'UTF8'))) AS min_overhead,
       max(length(c) - length(convert_to('aws ' || id, 'UTF8'))) > 250 AS v1_is_large
FROM aws_v2 GROUP BY 1 ORDER BY 1;
SELECT i.format_version, i.provider, i.key_id = :'test_arn' AS key_is_arn,
       i.wrapped_dek_bytes BETWEEN 150 AND 300 AS realistic_blob, i.overhead_bytes
FROM aws_v2, kms_ciphertext_info(c) i WHERE id = 1;
SELECT r.provider, r.key_id = :'test_arn' AS arn_recorded, r.name_block
FROM kms_dek_registry r
WHERE r.dek_ref = ('x' || encode(substr((SELECT c FROM aws_v2 WHERE id = 1), 6, 7), 'hex'))::bit(56)::bigint;

-- Cold: one Decrypt for the one data key of the 500 format 2 values.
SELECT kms_cache_flush() >= 0 AS flushed;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
SELECT count(*) FILTER (WHERE convert_from(kms_decrypt(c, jsonb_build_object('id', id)), 'UTF8') = 'aws ' || id) AS decrypted
FROM aws_v2 WHERE get_byte(c, 4) = 2;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops GenerateDataKey,Decrypt

-- Rotation to another key: one ReEncrypt per data key, no user row written.
SELECT count(*) AS deks FROM kms_dek_registry WHERE key_id = :'test_arn' \gset
SELECT pg_stat_force_next_flush();
SELECT n_tup_upd AS u0 FROM pg_stat_user_tables WHERE relname = 'aws_v2' \gset
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
SELECT deks = :deks AS all_rows, rewrapped = deks AS all_rewrapped, skipped
FROM kms_rotate_key_registry(:'test_arn', 'alias/kms-pg-other');
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops ReEncrypt,Decrypt,GenerateDataKey,Encrypt
SELECT pg_stat_force_next_flush();
SELECT n_tup_upd - :u0 AS user_rows_updated FROM pg_stat_user_tables WHERE relname = 'aws_v2';
SELECT count(*) FILTER (WHERE kms_ciphertext_key_id(c) = :'other_arn') AS under_other_key,
       count(*) FILTER (WHERE kms_ciphertext_key_id(c) = :'test_arn') AS under_test_key
FROM aws_v2;
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT count(*) FILTER (WHERE convert_from(kms_decrypt(c, jsonb_build_object('id', id)), 'UTF8') = 'aws ' || id) AS decrypted
FROM aws_v2;

-- Data keys bound to a tenant (kms_pg.kms_context_keys) rotate too, with
-- the provider context their registry row keeps: 3 tenants, 3 ReEncrypt
-- (with the tenant as encryption context), none skipped, no user row
-- written, and every value decrypts cold.
SET kms_pg.kms_context_keys = 'tenant';
CREATE TABLE aws_v2_tenants (id int PRIMARY KEY, tenant text, c bytea);
INSERT INTO aws_v2_tenants SELECT i, 't' || (i % 3),
    kms_encrypt(convert_to('tenant ' || i, 'UTF8'), jsonb_build_object('tenant', 't' || (i % 3)))
FROM generate_series(1, 30) i;
SELECT count(DISTINCT substr(c, 6, 7)) AS tenant_deks FROM aws_v2_tenants;
SELECT pg_stat_force_next_flush();
SELECT n_tup_upd AS tu0 FROM pg_stat_user_tables WHERE relname = 'aws_v2_tenants' \gset
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
SELECT deks, rewrapped, skipped FROM kms_rotate_key_registry(:'test_arn', 'alias/kms-pg-other');
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops ReEncrypt,Decrypt,GenerateDataKey,Encrypt
SELECT pg_stat_force_next_flush();
SELECT n_tup_upd - :tu0 AS tenant_rows_updated FROM pg_stat_user_tables WHERE relname = 'aws_v2_tenants';
SELECT count(*) FILTER (WHERE kms_ciphertext_key_id(c) = :'other_arn') AS tenant_under_other_key FROM aws_v2_tenants;
SELECT kms_cache_flush() >= 0 AS flushed;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
SELECT count(*) FILTER (WHERE convert_from(kms_decrypt(c, jsonb_build_object('tenant', tenant)), 'UTF8') = 'tenant ' || id) AS tenant_decrypted
FROM aws_v2_tenants;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops Decrypt
RESET kms_pg.kms_context_keys;

RESET kms_pg.format;
RESET kms_pg.key_id;
DROP TABLE aws_v2, aws_v2_tenants;
