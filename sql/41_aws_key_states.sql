--
-- 41_aws_key_states: disabled and pending-deletion keys give their own
-- errors for new data keys and for decryption; ReEncrypt through
-- kms_rewrap moves a value to another key without the plaintext DEK
-- leaving KMS.  Against the KMS emulator (test/aws_env.sh).
--
\set VERBOSITY terse
SET kms_pg.provider = 'aws';
SET kms_pg.key_id = 'alias/kms-pg-other';
-- "t" is also sent to KMS as EncryptionContext
SET kms_pg.kms_context_keys = 't';
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults-reset >/dev/null
SELECT kms_cache_flush() >= 0 AS flushed;

CREATE TEMP TABLE ks AS SELECT kms_encrypt_text('state test', '{"t": 1}') AS c;

-- Disabled key: no new data keys, no decryption.
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA key-state alias/kms-pg-other Disabled
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT kms_encrypt_text('new value', '{"t": 1}');
SELECT kms_decrypt_text(c, '{"t": 1}') FROM ks;
SELECT kms_aws_describe_key()->'KeyMetadata'->>'KeyState' AS key_state;

-- Pending deletion.
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA key-state alias/kms-pg-other PendingDeletion
SELECT kms_encrypt_text('new value', '{"t": 1}');
SELECT kms_decrypt_text(c, '{"t": 1}') FROM ks;
SELECT kms_aws_describe_key()->'KeyMetadata'->>'KeyState' AS key_state;

-- Enabled again: the old value decrypts.
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA key-state alias/kms-pg-other Enabled
SELECT kms_decrypt_text(c, '{"t": 1}') FROM ks;

-- ReEncrypt: rewrap to alias/kms-pg-test, exactly one ReEncrypt call, no
-- Decrypt or GenerateDataKey; the rewrapped value names the new key ARN.
SELECT kms_cache_flush() >= 0 AS flushed;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
CREATE TEMP TABLE ks2 AS SELECT kms_rewrap(c, 'alias/kms-pg-test', '{"t": 1}') AS c FROM ks;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops ReEncrypt,Decrypt,GenerateDataKey
SELECT (kms_ciphertext_info(ks2.c)).key_id = (kms_aws_describe_key('alias/kms-pg-test')->'KeyMetadata'->>'Arn') AS new_key,
       (kms_ciphertext_info(ks2.c)).key_id <> (kms_ciphertext_info(ks.c)).key_id AS key_changed
FROM ks, ks2;
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT kms_decrypt_text(c, '{"t": 1}') FROM ks2;
-- the old key no longer matters for the rewrapped value
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA key-state alias/kms-pg-other Disabled
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT kms_decrypt_text(c, '{"t": 1}') FROM ks2;
-- rewrapping from a disabled key fails with the disabled-key error
SELECT kms_rewrap(c, 'alias/kms-pg-test', '{"t": 1}') FROM ks;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA key-state alias/kms-pg-other Enabled
-- a wrong context is refused by KMS during ReEncrypt too
SELECT kms_rewrap(c, 'alias/kms-pg-test', '{"t": 2}') FROM ks;
