--
-- 42_aws_faults: throttling storms, 5xx bursts, dropped connections and
-- stalls injected by the KMS emulator; retries with backoff are bounded by
-- kms_pg.max_retries and kms_pg.request_timeout.
--
\set VERBOSITY terse
SET kms_pg.provider = 'aws';
SET kms_pg.key_id = 'alias/kms-pg-test';
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults-reset >/dev/null

-- Each case flushes the DEK cache first, so that it needs KMS.

-- Throttling on every call, max_retries = 2: exactly 3 calls, then 53400.
SET kms_pg.max_retries = 2;
SELECT kms_cache_flush() >= 0 AS flushed;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults '{"throttle_rate": 1.0}' >/dev/null
SELECT kms_encrypt_text('throttled', '{"f": 1}');
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops GenerateDataKey,throttled
DO $$
BEGIN
  PERFORM kms_encrypt_text('throttled', '{"f": 1}');
EXCEPTION WHEN configuration_limit_exceeded THEN
  RAISE NOTICE 'throttling exhausted: SQLSTATE %', SQLSTATE;
END $$;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults-reset >/dev/null

-- A burst of two 500s with max_retries = 2: succeeds on the third call.
SELECT kms_cache_flush() >= 0 AS flushed;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults '{"error_5xx_count": 2}' >/dev/null
SELECT kms_decrypt_text(kms_encrypt_text('after 5xx', '{"f": 2}'), '{"f": 2}') AS survived_5xx;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops GenerateDataKey,errors_5xx

-- Two 503s with max_retries = 1: gives up after 2 calls.
SELECT kms_cache_flush() >= 0 AS flushed;
SET kms_pg.max_retries = 1;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults '{"error_5xx_count": 2, "error_5xx_status": 503}' >/dev/null
SELECT kms_encrypt_text('5xx exhausted', '{"f": 3}');
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops GenerateDataKey,errors_5xx
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults-reset >/dev/null

-- A dropped connection is retried.
SELECT kms_cache_flush() >= 0 AS flushed;
SET kms_pg.max_retries = 2;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults '{"drop_count": 1}' >/dev/null
SELECT kms_decrypt_text(kms_encrypt_text('after drop', '{"f": 4}'), '{"f": 4}') AS survived_drop;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops GenerateDataKey,dropped

-- No retries at all with max_retries = 0.
SELECT kms_cache_flush() >= 0 AS flushed;
SET kms_pg.max_retries = 0;
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA reset >/dev/null
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults '{"error_5xx_count": 1}' >/dev/null
SELECT kms_encrypt_text('no retry', '{"f": 5}');
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA counters --ops GenerateDataKey
RESET kms_pg.max_retries;

-- A stalled KMS call ends at kms_pg.request_timeout (not a cancel: 39000).
SELECT kms_cache_flush() >= 0 AS flushed;
SET kms_pg.request_timeout = '400ms';
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults '{"stall_ms": 3000, "stall_count": 1}' >/dev/null
DO $$
BEGIN
  PERFORM kms_encrypt_text('stalled', '{"f": 6}');
EXCEPTION WHEN external_routine_invocation_exception THEN
  RAISE NOTICE 'stalled call: SQLSTATE %, %', SQLSTATE, SQLERRM;
END $$;
RESET kms_pg.request_timeout;
-- and the next call works (the stalled connection was discarded)
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT kms_decrypt_text(kms_encrypt_text('after stall', '{"f": 7}'), '{"f": 7}') AS survived_stall;

-- Backend counters of the AWS client.
SELECT attempts > 0 AS attempted, retries > 0 AS retried, errors > 0 AS errored
FROM kms_aws_backend_stats();
\! /usr/bin/python3 $KMS_PG_ROOT/test/emulator/emuctl.py --cafile $KMS_EMULATOR_CA faults-reset >/dev/null
