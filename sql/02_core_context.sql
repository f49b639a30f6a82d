--
-- 02_core_context: the encryption context.  Its canonical form does not
-- depend on key order, whitespace or number spelling; everything else is
-- part of it; bad contexts are clear errors; kms_pg.kms_context_keys.
--
-- The local provider, whatever the server default is.
SET kms_pg.provider = 'local';

-- 'ok' or "SQLSTATE: message" (key ids masked), optionally with the detail.
CREATE FUNCTION pg_temp.try_decrypt(ct bytea, ctx jsonb, with_detail boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE st text; msg text; det text;
BEGIN
  PERFORM kms_decrypt(ct, ctx);
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
  RETURN st || ': ' || msg || CASE WHEN with_detail AND det <> '' THEN ' / ' || det ELSE '' END;
END $$;
CREATE FUNCTION pg_temp.try_encrypt(ctx jsonb, with_detail boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE st text; msg text; det text;
BEGIN
  PERFORM kms_encrypt('x'::bytea, ctx);
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
  RETURN st || ': ' || msg || CASE WHEN with_detail AND det <> '' THEN ' / ' || det ELSE '' END;
END $$;

SELECT kms_create_key('alias/regress_ctx02') IS NOT NULL AS created;
SET kms_pg.key_id = 'alias/regress_ctx02';

-- Equivalent spellings decrypt; anything else fails authentication.
CREATE TEMP TABLE ctx_cases (enc jsonb, dec jsonb, why text);
INSERT INTO ctx_cases VALUES
  ('{"a": "x", "b": 2}', '{"b": 2, "a": "x"}', 'key order'),
  ('{"a": "x", "b": 2}', '{ "a" :"x",   "b":2 }', 'whitespace'),
  ('{"n": 1.50}', '{"n": 1.5}', '1.50 = 1.5'),
  ('{"n": 1e2}', '{"n": 100}', '1e2 = 100'),
  ('{"n": 100.000}', '{"n": 1E+2}', '100.000 = 1E+2'),
  ('{"n": -0}', '{"n": 0}', '-0 = 0'),
  ('{"n": 0.0001}', '{"n": 1e-4}', '0.0001 = 1e-4'),
  ('{"a": 1, "a": 2}', '{"a": 2}', 'duplicate key keeps the last'),
  ('{}', '{}', 'empty'),
  ('{"ü": "ß", "€": "😀"}', '{"€": "😀", "ü": "ß"}', 'unicode keys'),
  ('{"n": 1}', '{"n": "1"}', 'number 1 vs string "1"'),
  ('{"b": true}', '{"b": "true"}', 'true vs "true"'),
  ('{"b": false}', '{"b": 0}', 'false vs 0'),
  ('{"n": 1.5}', '{"n": 1.51}', 'different number'),
  ('{"s": "a"}', '{"s": "A"}', 'string case'),
  ('{"s": "a"}', '{"s": "a "}', 'trailing space in a value'),
  ('{"a": "x"}', '{"A": "x"}', 'key case'),
  ('{"a": "x"}', '{"a": "x", "b": "y"}', 'extra key'),
  ('{"a": "x", "b": "y"}', '{"a": "x"}', 'missing key'),
  ('{"a": "x"}', '{}', 'context dropped'),
  ('{}', '{"a": "x"}', 'context added'),
  ('{"ab": "c"}', '{"a": "bc"}', 'key/value boundary moved'),
  ('{"a": "", "b": ""}', '{"a": ""}', 'empty values still count');
SELECT why, pg_temp.try_decrypt(kms_encrypt('v'::bytea, enc), dec) AS outcome
FROM ctx_cases;

-- Cut-and-paste: a value copied into another row does not decrypt there.
CREATE TEMP TABLE patients (id int, tenant text, visits int, vip boolean, ssn bytea);
INSERT INTO patients VALUES (1, 'acme', 3, true, NULL), (2, 'acme', 3, true, NULL),
                            (3, 'globex', 3, true, NULL);
UPDATE patients SET ssn = kms_encrypt_text('ssn-' || id,
  jsonb_build_object('table', 'patients', 'id', id, 'tenant', tenant, 'visits', visits, 'vip', vip));
SELECT id, kms_decrypt_text(ssn, jsonb_build_object('vip', vip, 'visits', visits, 'tenant', tenant,
                                                   'id', id, 'table', 'patients')) AS ssn
FROM patients ORDER BY id;
UPDATE patients SET ssn = (SELECT ssn FROM patients WHERE id = 1) WHERE id IN (2, 3);
SELECT id, pg_temp.try_decrypt(ssn, jsonb_build_object('table', 'patients', 'id', id, 'tenant', tenant,
                                                       'visits', visits, 'vip', vip)) AS outcome
FROM patients ORDER BY id;

-- Anything but a flat object of strings, numbers and booleans is an error,
-- for encryption and for decryption alike.
CREATE TEMP TABLE bad_ctx (label text, ctx jsonb);
INSERT INTO bad_ctx VALUES
  ('array', '[1, 2]'),
  ('empty array', '[]'),
  ('nested object', '{"a": {"b": 1}}'),
  ('array value', '{"a": [1]}'),
  ('null value', '{"a": null}'),
  ('string scalar', '"tenant"'),
  ('number scalar', '42'),
  ('json null', 'null'),
  ('empty key', '{"": "x"}');
SELECT label, pg_temp.try_encrypt(ctx, true) AS encrypt_outcome,
       pg_temp.try_decrypt(kms_encrypt('v'::bytea), ctx, true) AS decrypt_outcome
FROM bad_ctx;
-- SQL NULL as the context
SELECT kms_encrypt('v'::bytea, NULL);
SELECT kms_decrypt(kms_encrypt('v'::bytea), NULL);
SELECT kms_encrypt_text('v', NULL, NULL);
SELECT kms_decrypt_text(kms_encrypt_text('v'), NULL);

-- Size limits: 1024 pairs are fine, more is a clear error; so is a
-- canonical context over 64 kB.
SELECT pg_temp.try_encrypt((SELECT jsonb_object_agg('k' || i, i) FROM generate_series(1, 1024) i)) AS pairs_1024,
       pg_temp.try_encrypt((SELECT jsonb_object_agg('k' || i, i) FROM generate_series(1, 1025) i), true) AS pairs_1025,
       pg_temp.try_encrypt((SELECT jsonb_object_agg('k' || i, 'v' || i) FROM generate_series(1, 5000) i), true) AS pairs_5000,
       pg_temp.try_encrypt(jsonb_build_object('big', repeat('x', 70000)), true) AS canonical_70kB;
SELECT kms_decrypt(kms_encrypt('v'::bytea, c), c) = 'v'::bytea AS pairs_1024_roundtrip
FROM (SELECT jsonb_object_agg('k' || i, i) AS c FROM generate_series(1, 1024) i) s;
SELECT pg_temp.try_decrypt(kms_encrypt('v'::bytea), (SELECT jsonb_object_agg('k' || i, i) FROM generate_series(1, 2000) i), true) AS decrypt_2000;

-- kms_pg.kms_context_keys: the listed keys also go to the key provider.
-- They are recorded (sorted) in the value and needed for decryption.
SET kms_pg.kms_context_keys = 'tenant, region';
SHOW kms_pg.kms_context_keys;
CREATE TEMP TABLE pc AS
  SELECT kms_encrypt('pc'::bytea, '{"tenant": "acme", "region": "eu", "id": 7}') AS full_ctx,
         kms_encrypt('pc'::bytea, '{"tenant": "acme", "id": 7}') AS tenant_only,
         kms_encrypt('pc'::bytea, '{"id": 7}') AS no_listed_keys;
SELECT (kms_ciphertext_info(full_ctx)).kms_context_keys AS full_keys,
       (kms_ciphertext_info(tenant_only)).kms_context_keys AS tenant_only_keys,
       (kms_ciphertext_info(no_listed_keys)).kms_context_keys AS none_keys,
       (kms_ciphertext_info(full_ctx)).overhead_bytes - (kms_ciphertext_info(no_listed_keys)).overhead_bytes AS names_block_bytes
FROM pc;
SELECT pg_temp.try_decrypt(full_ctx, '{"id": 7, "region": "eu", "tenant": "acme"}') AS right_ctx,
       pg_temp.try_decrypt(full_ctx, '{"id": 7, "tenant": "acme"}', true) AS region_missing,
       pg_temp.try_decrypt(full_ctx, '{"id": 7, "region": "us", "tenant": "acme"}') AS region_wrong,
       pg_temp.try_decrypt(full_ctx, '{"id": 8, "region": "eu", "tenant": "acme"}') AS id_wrong
FROM pc;
-- decryption reads the names from the value, not from the setting
RESET kms_pg.kms_context_keys;
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT pg_temp.try_decrypt(full_ctx, '{"id": 7, "region": "eu", "tenant": "acme"}') AS after_reset,
       pg_temp.try_decrypt(tenant_only, '{"id": 7, "tenant": "acme"}') AS tenant_only_ok,
       pg_temp.try_decrypt(tenant_only, '{"id": 7, "tenant": "globex"}') AS tenant_wrong,
       pg_temp.try_decrypt(no_listed_keys, '{"id": 7}') AS none_ok
FROM pc;
-- the wrong or a missing provider context fails at the provider too (nothing cached)
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT pg_temp.try_decrypt(tenant_only, '{"id": 7, "tenant": "globex"}', true) AS tenant_wrong_at_provider FROM pc;
SELECT pg_temp.try_decrypt(full_ctx, '{"id": 7, "tenant": "acme"}', true) AS region_missing_at_provider FROM pc;
SELECT pg_temp.try_decrypt(full_ctx, '{"id": 7, "region": "eu", "tenant": "acme"}') AS still_ok FROM pc;
-- invalid settings
SET kms_pg.kms_context_keys = 'a,,b';
SET kms_pg.kms_context_keys = '"tenant';
SELECT set_config('kms_pg.kms_context_keys', string_agg('k' || i, ','), false)
FROM generate_series(1, 33) i;
SHOW kms_pg.kms_context_keys;
