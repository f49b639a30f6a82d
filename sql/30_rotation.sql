-- Column rotation: kms_rotate_column, kms_key_usage, kms_rotation_status.
--
-- The key names are psql variables so that an AWS variant can set
-- kms_pg.provider = 'aws', define rot_old/rot_new/rot_third as emulator
-- key aliases and rot_local = false, and include this file with \ir.
\if :{?rot_old}
\else
\set rot_old 'alias/rot-old'
\set rot_new 'alias/rot-new'
\set rot_third 'alias/rot-third'
\set rot_local true
SET kms_pg.provider = 'local';
SELECT kms_create_key(:'rot_old', 'rotation test: old') IS NOT NULL AS created;
SELECT kms_create_key(:'rot_new', 'rotation test: new') IS NOT NULL AS created;
SELECT kms_create_key(:'rot_third', 'rotation test: third') IS NOT NULL AS created;
\endif

-- Key ids show up as the key names given above.
CREATE TEMP TABLE rot_keys AS
SELECT name, (kms_ciphertext_info(kms_encrypt('\x00'::bytea, '{}', key))).key_id AS key_id
FROM (VALUES ('old', :'rot_old'), ('new', :'rot_new'), ('third', :'rot_third')) v(name, key);
CREATE FUNCTION rot_usage(t regclass, c name)
RETURNS TABLE (provider text, key text, n_values bigint, deks bigint)
LANGUAGE sql AS $$
    SELECT u.provider, coalesce(k.name, u.key_id), u."values", u.deks
    FROM kms_key_usage(t, c) u LEFT JOIN rot_keys k ON k.key_id = u.key_id
    ORDER BY 2 $$;
CREATE FUNCTION rot_calls() RETURNS bigint LANGUAGE sql AS
    $$ SELECT rewrap_calls FROM kms_cache_stats $$;
-- The SQLSTATE of a statement (messages name key ids, which vary).
CREATE FUNCTION rot_sqlstate(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;

-- 20,000 values sharing exactly three data keys (the cache is flushed
-- between the statements, so each statement gets a fresh DEK).
CREATE TABLE rot_t (id int PRIMARY KEY, tenant text NOT NULL, plain text NOT NULL, secret bytea);
SELECT kms_cache_flush() >= 0 AS flushed;
INSERT INTO rot_t SELECT i, 'tenant' || (i % 7), 'secret number ' || i,
    kms_encrypt_text('secret number ' || i, jsonb_build_object('row', i, 'tenant', 'tenant' || (i % 7)), :'rot_old')
FROM generate_series(1, 6667) i;
SELECT kms_cache_flush() >= 0 AS flushed;
INSERT INTO rot_t SELECT i, 'tenant' || (i % 7), 'secret number ' || i,
    kms_encrypt_text('secret number ' || i, jsonb_build_object('row', i, 'tenant', 'tenant' || (i % 7)), :'rot_old')
FROM generate_series(6668, 13334) i;
SELECT kms_cache_flush() >= 0 AS flushed;
INSERT INTO rot_t SELECT i, 'tenant' || (i % 7), 'secret number ' || i,
    kms_encrypt_text('secret number ' || i, jsonb_build_object('row', i, 'tenant', 'tenant' || (i % 7)), :'rot_old')
FROM generate_series(13335, 20000) i;
INSERT INTO rot_t VALUES (20001, 'tenant0', 'a NULL value', NULL);
CREATE TABLE rot_before AS SELECT id, secret FROM rot_t;

SELECT * FROM rot_usage('rot_t', 'secret');

-- Rotate in 8 batches of 2,500 rows: one rewrap call per data key.
SELECT rot_calls() AS calls_before \gset
CALL kms_rotate_column('rot_t', 'secret', :'rot_new', 2500);
SELECT rot_calls() - :calls_before AS rewrap_calls;

SELECT * FROM rot_usage('rot_t', 'secret');
SELECT tbl, col, provider, new_key_id = :'rot_new' AS given_key,
       resolved_key_id = (SELECT key_id FROM rot_keys WHERE name = 'new') AS resolved_key,
       state, rows_done, rows_total, percent_done, batches, passes,
       finished >= started AS finished, estimated_remaining
FROM kms_rotation_status WHERE tbl = 'rot_t';

-- Same plaintext under the same context; nonce, body and tag unchanged;
-- only the header (key id, wrapped DEK) differs.
SELECT count(*) AS decrypt_ok FROM rot_t
WHERE kms_decrypt_text(secret, jsonb_build_object('row', id, 'tenant', tenant)) = plain;
SELECT count(*) AS tail_unchanged,
       count(*) FILTER (WHERE substring(b.secret for n - tail) <> substring(t.secret for octet_length(t.secret) - tail)) AS header_changed
FROM rot_t t JOIN rot_before b USING (id),
     LATERAL (SELECT octet_length(b.secret) AS n,
                     (kms_ciphertext_info(b.secret)).plaintext_bytes + 28 AS tail) x
WHERE substring(b.secret from n - tail + 1) = substring(t.secret from octet_length(t.secret) - tail + 1);
SELECT count(*) AS null_kept FROM rot_t WHERE id = 20001 AND secret IS NULL;
-- Values that shared a DEK still share one (rewrapped once, not per row).
SELECT count(DISTINCT (kms_ciphertext_info(secret)).dek_id) AS deks_after FROM rot_t;

-- Nothing left to do: a second run makes no provider call.
SELECT rot_calls() AS calls_before \gset
CALL kms_rotate_column('rot_t', 'secret', :'rot_new', 2500);
SELECT rot_calls() - :calls_before AS rewrap_calls;

-- Disabling the old key breaks nothing that was rotated; values still
-- under it (the copy taken before) stop decrypting.
\if :rot_local
SELECT kms_disable_key(:'rot_old');
\endif
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT count(*) AS decrypt_ok FROM rot_t
WHERE kms_decrypt_text(secret, jsonb_build_object('row', id, 'tenant', tenant)) = plain;
SELECT rot_sqlstate($$SELECT kms_decrypt_text(secret, jsonb_build_object('row', id, 'tenant', 'tenant' || (id % 7)))
                      FROM rot_before WHERE id = 1$$) AS old_value_decrypt;
\if :rot_local
SELECT kms_enable_key(:'rot_old');
\endif

-- Resumable: stopped after two batches, then run again to the end.
CREATE TABLE rot_r (id bigint PRIMARY KEY, secret bytea);
INSERT INTO rot_r SELECT i, kms_encrypt(int8send(i), '{}', :'rot_old') FROM generate_series(1, 5000) i;
CALL kms_rotate_column('rot_r', 'secret', :'rot_new', 1000, max_batches => 2);
SELECT * FROM rot_usage('rot_r', 'secret');
SELECT state, rows_done, rows_total, batches, finished IS NULL AS unfinished
FROM kms_rotation_status WHERE tbl = 'rot_r';
-- Rows 1..2000 were done; the new run starts at row 2001.
SELECT min(id) FILTER (WHERE k.name = 'old') AS first_old, max(id) FILTER (WHERE k.name = 'new') AS last_new
FROM rot_r JOIN rot_keys k ON k.key_id = (kms_ciphertext_info(secret)).key_id;
CALL kms_rotate_column('rot_r', 'secret', :'rot_new', 1000);
SELECT * FROM rot_usage('rot_r', 'secret');
SELECT run_id > 0 AS run, state, rows_done, rows_total, batches
FROM kms_rotation_status WHERE tbl = 'rot_r' ORDER BY run_id;
SELECT count(*) AS decrypt_ok FROM rot_r WHERE kms_decrypt(secret) = int8send(id);

-- Composite primary key, rotation onwards to a third key, and values
-- under several keys at once: only those not yet under the target move.
CREATE TABLE rot_m (a int, b text, secret bytea, PRIMARY KEY (b, a));
INSERT INTO rot_m SELECT i % 10, 'k' || (i / 10), kms_encrypt_text('m' || i, '{}',
    CASE WHEN i % 3 = 0 THEN :'rot_old' WHEN i % 3 = 1 THEN :'rot_new' ELSE :'rot_third' END)
FROM generate_series(0, 299) i;
SELECT * FROM rot_usage('rot_m', 'secret');
CALL kms_rotate_column('rot_m', 'secret', :'rot_third', 70);
SELECT * FROM rot_usage('rot_m', 'secret');
SELECT count(*) AS decrypt_ok FROM rot_m WHERE kms_decrypt_text(secret) = 'm' || (a + 10 * substr(b, 2)::int);

-- Provider-context keys: the wrapped DEK is bound to the tenant, so the
-- rotation needs the row's context (context_expr, in the row's columns).
CREATE TABLE rot_c (id int PRIMARY KEY, tenant text NOT NULL, secret bytea);
SET kms_pg.kms_context_keys = 'tenant';
INSERT INTO rot_c SELECT i, 't' || (i % 3),
    kms_encrypt_text('c' || i, jsonb_build_object('tenant', 't' || (i % 3), 'row', i), :'rot_old')
FROM generate_series(1, 300) i;
RESET kms_pg.kms_context_keys;
SELECT DISTINCT (kms_ciphertext_info(secret)).kms_context_keys FROM rot_c;
SELECT * FROM rot_usage('rot_c', 'secret');
\set VERBOSITY terse
CALL kms_rotate_column('rot_c', 'secret', :'rot_new');
\set VERBOSITY default
SELECT rot_calls() AS calls_before \gset
CALL kms_rotate_column('rot_c', 'secret', :'rot_new',
                       context_expr => $$jsonb_build_object('tenant', tenant)$$);
SELECT rot_calls() - :calls_before AS rewrap_calls;
SELECT * FROM rot_usage('rot_c', 'secret');
SELECT count(*) AS decrypt_ok FROM rot_c
WHERE kms_decrypt_text(secret, jsonb_build_object('tenant', tenant, 'row', id)) = 'c' || id;
SELECT state, count(*) FROM kms_rotation_status WHERE tbl = 'rot_c' GROUP BY 1 ORDER BY 1;

-- kms_key_usage also counts values that are not kms_pg ciphertexts.
CREATE TABLE rot_x (id int PRIMARY KEY, secret bytea);
INSERT INTO rot_x VALUES (1, kms_encrypt('\x01'::bytea, '{}', :'rot_old')), (2, '\xdeadbeef'), (3, NULL);
SELECT * FROM rot_usage('rot_x', 'secret');
CALL kms_rotate_column('rot_x', 'secret', :'rot_new');
SELECT * FROM rot_usage('rot_x', 'secret');

-- The default target is kms_pg.key_id.
SET kms_pg.key_id = :'rot_old';
CALL kms_rotate_column('rot_x', 'secret');
SELECT * FROM rot_usage('rot_x', 'secret');
RESET kms_pg.key_id;

\if :rot_local
-- Local key versions: after kms_rotate_key new data keys are wrapped with
-- the new version, values under the old version keep decrypting, and
-- kms_rewrap onto the same key moves a value to the newest version.
CREATE FUNCTION rot_wrap_version(ct bytea) RETURNS int LANGUAGE sql AS $$
    SELECT ('x' || encode(substring(ct from octet_length(ct) - i.plaintext_bytes - 28
                                    - i.wrapped_dek_bytes + 2 for 4), 'hex'))::bit(32)::int
    FROM kms_ciphertext_info(ct) i $$;
SELECT DISTINCT rot_wrap_version(secret) AS version FROM rot_t WHERE secret IS NOT NULL;
SELECT kms_rotate_key(:'rot_new') AS new_version;
SELECT current_version, versions FROM kms_keys WHERE alias = :'rot_new';
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT rot_wrap_version(kms_encrypt('\x02'::bytea, '{}', :'rot_new')) AS new_dek_version;
SELECT count(*) AS decrypt_ok FROM rot_t
WHERE kms_decrypt_text(secret, jsonb_build_object('row', id, 'tenant', tenant)) = plain;
SELECT rot_wrap_version(kms_rewrap(secret, :'rot_new')) AS rewrapped_version,
       kms_decrypt_text(kms_rewrap(secret, :'rot_new'), jsonb_build_object('row', id, 'tenant', tenant)) AS plain
FROM rot_t WHERE id = 42;
-- Same key id: kms_rotate_column has nothing to do.
CALL kms_rotate_column('rot_t', 'secret', :'rot_new');
\endif

-- Errors.
\set VERBOSITY terse
CREATE TABLE rot_nopk (secret bytea);
CALL kms_rotate_column('rot_nopk', 'secret', :'rot_new');
CALL kms_rotate_column('rot_t', 'plain', :'rot_new');
CALL kms_rotate_column('rot_t', 'nosuch', :'rot_new');
CALL kms_rotate_column('rot_t', 'secret', :'rot_new', 0);
CALL kms_rotate_column('rot_t', 'secret', :'rot_new', max_batches => 0);
CALL kms_rotate_column('rot_t', 'secret', 'alias/rot-no-such-key');
CALL kms_rotate_column('rot_t', 'id', :'rot_new');
CALL kms_rotate_column('rot_t', 'secret');
SELECT * FROM kms_key_usage('rot_t', 'nosuch');
BEGIN;
CALL kms_rotate_column('rot_r', 'secret', :'rot_old');
ROLLBACK;
\set VERBOSITY default
-- A failed or refused run leaves no half-written batch behind.
SELECT * FROM rot_usage('rot_r', 'secret');
