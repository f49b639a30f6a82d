--
-- 40_aws_roundtrip: the core SQL surface on the AWS provider, against the
-- project's KMS emulator over HTTPS (started by test/aws_env.sh, which sets
-- kms_pg.endpoint/region/ca_file and the server's AWS_* credentials).
-- Emulator call counts come from emuctl.  Request ids are random, so every
-- error runs with VERBOSITY terse (the request id is in DETAIL; the TAP test
-- t/041_aws_errors.pl checks it is there).
--
\set VERBOSITY terse
SET kms_pg.provider = 'aws';
SET kms_pg.key_id = 'alias/kms-pg-test';
SELECT kms_cache_flush() >= 0 AS flushed;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults-reset >/dev/null
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null

-- Round trips, bytea and text, default key and explicit key.
SELECT kms_decrypt_text(kms_encrypt_text('hello from aws')) AS roundtrip_text;
SELECT kms_decrypt(kms_encrypt('\x00ff10'::bytea, '{}', 'alias/kms-pg-other')) AS roundtrip_bytea;
SELECT kms_decrypt_text(kms_encrypt_text('', '{}')) = '' AS empty_ok;
SELECT kms_encrypt_text(NULL) IS NULL AS null_in_null_out;
SELECT md5(kms_decrypt(kms_encrypt(convert_to(repeat('x', 100000), 'UTF8')))) = md5(repeat('x', 100000)) AS large_ok;

-- One GenerateDataKey per key: the cache reuses the DEK for new values.
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops GenerateDataKey,Decrypt

-- The ciphertext records provider aws and the key ARN KMS returned.
CREATE TEMP TABLE aws_ct AS
  SELECT kms_encrypt_text('row one', '{"tenant": "acme", "id": 1}') AS c;
SELECT i.format_version, i.provider,
       i.key_id = (kms_aws_describe_key('alias/kms-pg-test')->'KeyMetadata'->>'Arn') AS key_is_arn,
       i.key_id ~ '^arn:aws:kms:us-east-1:111122223333:key/[0-9a-f-]{36}$' AS arn_shape,
       i.wrapped_dek_bytes BETWEEN 150 AND 300 AS realistic_blob
FROM aws_ct, kms_ciphertext_info(c) i;

-- Context binding: right context decrypts, wrong or missing context fails
-- (the whole context is AES-GCM additional data).
SELECT kms_decrypt_text(c, '{"tenant": "acme", "id": 1}') FROM aws_ct;
SELECT kms_decrypt_text(c, '{"tenant": "acme", "id": 2}') FROM aws_ct;
SELECT kms_decrypt_text(c) FROM aws_ct;

-- Decrypt after a cache flush asks KMS once, then the DEK is cached.
SELECT kms_cache_flush() >= 0 AS flushed;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
SELECT kms_decrypt_text(c, '{"tenant": "acme", "id": 1}') FROM aws_ct;
SELECT kms_decrypt_text(c, '{"tenant": "acme", "id": 1}') FROM aws_ct;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops GenerateDataKey,Decrypt

-- Provider context: with kms_pg.kms_context_keys the tenant also goes to
-- KMS as EncryptionContext, so KMS itself refuses a wrong tenant.
SET kms_pg.kms_context_keys = 'tenant';
CREATE TEMP TABLE aws_ct2 AS
  SELECT kms_encrypt_text('tenant bound', '{"tenant": "acme", "n": 7}') AS c;
SELECT i.kms_context_keys FROM aws_ct2, kms_ciphertext_info(c) i;
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT kms_decrypt_text(c, '{"tenant": "acme", "n": 7}') FROM aws_ct2;
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT kms_decrypt_text(c, '{"tenant": "evil", "n": 7}') FROM aws_ct2;
-- numbers and booleans are sent to KMS as their text
CREATE TEMP TABLE aws_ct3 AS
  SELECT kms_encrypt_text('typed', '{"tenant": 42}') AS c;
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT kms_decrypt_text(c, '{"tenant": 42.0}') FROM aws_ct3;
RESET kms_pg.kms_context_keys;

-- DescribeKey health check.
SELECT d->>'provider' AS provider, d->>'region' AS region,
       d->'KeyMetadata'->>'KeyState' AS key_state,
       d->'KeyMetadata'->>'KeyUsage' AS key_usage,
       (d->'KeyMetadata'->>'Enabled')::boolean AS enabled
FROM kms_aws_describe_key() d;
SELECT kms_aws_describe_key('alias/kms-pg-no-such-key');
SELECT kms_encrypt_text('x', '{}', 'alias/kms-pg-no-such-key');

-- Credentials in use, without secrets.
SELECT source, access_key_id, session_token, expiration IS NULL AS no_expiry
FROM kms_aws_credentials_info();

-- Unprivileged users cannot call the AWS helpers.
CREATE ROLE regress_aws_user;
SET ROLE regress_aws_user;
SELECT kms_aws_describe_key('alias/kms-pg-test');
SELECT * FROM kms_aws_credentials_info();
RESET ROLE;
DROP ROLE regress_aws_user;
