-- kms_pg five-minute tour on the embedded local provider.
CREATE EXTENSION kms_pg;

-- 1. A root key in the local keyring (AWS-style alias), used by default.
SELECT kms_create_key('alias/demo-app', 'demo key') AS key_id \gset
SELECT alias, enabled, current_version FROM kms_keys;
SET kms_pg.key_id = 'alias/demo-app';

-- 2. A table whose secret column is sealed with a context built from the row.
CREATE TABLE customers (id int PRIMARY KEY, tenant text NOT NULL, ssn bytea);
INSERT INTO customers
SELECT i, 't' || (i % 2), kms_encrypt_text('ssn-' || i, jsonb_build_object('id', i, 'tenant', 't' || (i % 2)))
FROM generate_series(1, 5) i;
SELECT id, tenant, left(encode(ssn, 'hex'), 24) || '...' AS stored FROM customers ORDER BY id;

-- 3. Decrypt with the row's own context.
SELECT id, kms_decrypt_text(ssn, jsonb_build_object('id', id, 'tenant', tenant)) AS ssn
FROM customers ORDER BY id;

-- 3b. The same context given as key, value arguments (no jsonb per row).
SELECT id, kms_decrypt_text_pairs(ssn, 'id', id, 'tenant', tenant) AS ssn
FROM customers ORDER BY id;

-- 4. What a ciphertext says about itself, without decrypting.
SELECT format_version, provider, dek_id, overhead_bytes FROM kms_ciphertext_info((SELECT ssn FROM customers WHERE id = 1));

-- 5. A value copied to another row does not decrypt there.
UPDATE customers SET ssn = (SELECT ssn FROM customers WHERE id = 1) WHERE id = 2;
DO $$
BEGIN
  PERFORM kms_decrypt_text(ssn, jsonb_build_object('id', id, 'tenant', tenant)) FROM customers WHERE id = 2;
  RAISE EXCEPTION 'the copied value decrypted: this must not happen';
EXCEPTION WHEN data_exception THEN
  RAISE NOTICE 'copied value refused as expected: %', SQLERRM;
END $$;

-- 6. One data key served every row: the cache made one provider call.
SELECT entries, generate_calls, decrypt_calls FROM kms_cache_stats;
