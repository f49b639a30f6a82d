--
-- 43_aws_rotation: kms_rotate_column on the AWS provider against the KMS
-- emulator.  100,000 values sharing K = 3 data keys are moved to another
-- key with exactly K ReEncrypt calls (the emulator's own counters), every
-- value keeps its plaintext, the old key ends at zero values, and
-- disabling the old key afterwards breaks nothing.  Also: moving values
-- from the local provider to AWS.
--
\set VERBOSITY terse
SET kms_pg.provider = 'aws';
SET kms_pg.kms_context_keys = '';
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults-reset >/dev/null
SELECT kms_cache_flush() >= 0 AS flushed;

-- 100,000 rows, a new data key every 40,000 values: K = 3.
SET kms_pg.dek_max_messages = 40000;
CREATE TABLE rot_aws (id int PRIMARY KEY, secret bytea);
INSERT INTO rot_aws
SELECT i, kms_encrypt(convert_to('value ' || i, 'UTF8'), '{}', 'alias/kms-pg-test')
FROM generate_series(1, 100000) i;
RESET kms_pg.dek_max_messages;
SELECT count(DISTINCT (kms_ciphertext_info(secret)).dek_id) AS deks,
       count(DISTINCT kms_ciphertext_key_id(secret)) AS keys
FROM rot_aws;
SELECT provider, values, deks FROM kms_key_usage('rot_aws', 'secret');
CREATE TABLE rot_aws_before AS SELECT id, secret FROM rot_aws;

-- Rotate in batches of 10,000: exactly 3 ReEncrypt calls, nothing else.
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
SET client_min_messages = warning;
CALL kms_rotate_column('rot_aws', 'secret', 'alias/kms-pg-other', 10000);
RESET client_min_messages;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops ReEncrypt,Decrypt,GenerateDataKey,Encrypt

-- Every value now names the other key's ARN; K data keys remain.
SELECT kms_aws_describe_key('alias/kms-pg-other')->'KeyMetadata'->>'Arn' AS other_arn \gset
SELECT count(*) FILTER (WHERE kms_ciphertext_key_id(secret) = :'other_arn') AS under_new_key,
       count(DISTINCT (kms_ciphertext_info(secret)).dek_id) AS deks
FROM rot_aws;
SELECT state, rows_done, rows_total FROM kms_rotation_status WHERE tbl = 'rot_aws';

-- Nonce, body and tag are unchanged; only the header differs.
SELECT count(*) AS tail_unchanged
FROM rot_aws a JOIN rot_aws_before b USING (id),
     LATERAL (SELECT 12 + (kms_ciphertext_info(a.secret)).plaintext_bytes + 16 AS n) tail
WHERE substring(a.secret FROM octet_length(a.secret) - tail.n + 1)
    = substring(b.secret FROM octet_length(b.secret) - tail.n + 1)
  AND a.secret <> b.secret;

-- The old key can be disabled: after a flush, all 100,000 values decrypt
-- with one Decrypt per data key, none under the old key.
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA key-state alias/kms-pg-test Disabled
SELECT kms_cache_flush() >= 0 AS flushed;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
SELECT count(*) FILTER (WHERE convert_from(kms_decrypt(secret), 'UTF8') = 'value ' || id) AS decrypt_ok
FROM rot_aws;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops Decrypt
-- ... while the saved copies under the old key are refused.
SELECT kms_decrypt(secret) FROM rot_aws_before WHERE id = 1;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA key-state alias/kms-pg-test Enabled

-- A second run has nothing to do.  Given an alias, the AWS path learns the
-- key ARN from one ReEncrypt of the first value (the value stays valid);
-- given the ARN, it makes no call at all.  Zero values are rotated.
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
SET client_min_messages = warning;
CALL kms_rotate_column('rot_aws', 'secret', 'alias/kms-pg-other', 10000);
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops ReEncrypt
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
CALL kms_rotate_column('rot_aws', 'secret', :'other_arn', 10000);
RESET client_min_messages;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops ReEncrypt
SELECT count(*) FILTER (WHERE kms_ciphertext_key_id(secret) = :'other_arn') AS under_new_key FROM rot_aws;

-- Moving between providers: local values rewrapped under an AWS key
-- (unwrap locally, KMS Encrypt of the same DEK), and back.
SET kms_pg.provider = 'local';
SELECT kms_create_key('alias/rot-aws-local') IS NOT NULL AS created;
CREATE TEMP TABLE mv AS
SELECT i AS id, kms_encrypt(convert_to('move ' || i, 'UTF8'), jsonb_build_object('id', i), 'alias/rot-aws-local') AS c
FROM generate_series(1, 100) i;
SET kms_pg.provider = 'aws';
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
UPDATE mv SET c = kms_rewrap(c, 'alias/kms-pg-other');
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops Encrypt,ReEncrypt,GenerateDataKey
SELECT DISTINCT (kms_ciphertext_info(c)).provider FROM mv;
SELECT count(*) FILTER (WHERE convert_from(kms_decrypt(c, jsonb_build_object('id', id)), 'UTF8') = 'move ' || id) AS moved_ok
FROM mv;
SET kms_pg.provider = 'local';
UPDATE mv SET c = kms_rewrap(c, 'alias/rot-aws-local');
SELECT DISTINCT (kms_ciphertext_info(c)).provider FROM mv;
SELECT count(*) FILTER (WHERE convert_from(kms_decrypt(c, jsonb_build_object('id', id)), 'UTF8') = 'move ' || id) AS back_ok
FROM mv;
RESET kms_pg.provider;
DROP TABLE rot_aws, rot_aws_before;
