-- 20_columns: kms_protect_column on a table with rows; writes through the
-- table and the view (INSERT, UPDATE, UPSERT, COPY); re-sealing when a
-- context column changes; cut-and-paste between rows, columns and tables
-- failing; NULLs; column types round-tripping; kms_unprotect_column.
--
-- Ciphertexts are random: they are checked with kms_is_ciphertext and by
-- decrypting, never printed.
SET kms_pg.provider = 'local';
\set SHOW_CONTEXT never
SELECT kms_create_key('alias/regress_col20') IS NOT NULL AS key_created;
SET kms_pg.key_id = 'alias/regress_col20';

CREATE TABLE col_patient (
    id     int PRIMARY KEY,
    tenant int NOT NULL,
    ssn    text,
    note   text
);
INSERT INTO col_patient
SELECT g, g % 3, CASE WHEN g % 10 = 0 THEN NULL ELSE format('ssn-%s', g) END, 'n' || g
FROM generate_series(1, 40) g;
CREATE TABLE col_patient_plain AS SELECT * FROM col_patient;

-- Protect: existing rows are encrypted in batches of 4 (committed).
CALL kms_protect_column('col_patient', 'ssn', '{id,tenant}', batch_size => 4);

-- No plaintext left: every non-NULL value is a kms_pg ciphertext, NULLs
-- stayed NULL, and no plaintext bytes appear anywhere in the column.
SELECT count(*) AS rows, count(ssn) AS non_null,
       count(*) FILTER (WHERE kms_is_ciphertext(ssn)) AS ciphertexts,
       count(*) FILTER (WHERE position('\x73736e2d'::bytea IN ssn) > 0) AS with_plaintext_bytes
FROM col_patient;
SELECT pg_catalog.format_type(atttypid, atttypmod) AS stored_type
FROM pg_attribute WHERE attrelid = 'col_patient'::regclass AND attname = 'ssn';
SELECT table_name, column_name, original_type, context_columns, context_keys, key_id,
       view_name, trigger_name, blind_index_column
FROM kms_protected_columns_info WHERE table_name = 'col_patient'::regclass;
SELECT c.convalidated, pg_get_constraintdef(c.oid) AS check_constraint
FROM pg_constraint c WHERE c.conrelid = 'col_patient'::regclass AND c.contype = 'c';

-- The context of each value: the column uuid plus the row's id and tenant.
SELECT (kms_ciphertext_info(ssn)).format_version, (kms_ciphertext_info(ssn)).provider,
       count(*) AS n
FROM col_patient WHERE ssn IS NOT NULL GROUP BY 1, 2;
SELECT count(*) AS decrypt_by_hand_ok
FROM col_patient t JOIN col_patient_plain p USING (id)
WHERE convert_from(kms_decrypt(t.ssn, jsonb_build_object(
          'kms_pg:column', (SELECT column_id::text FROM kms_protected_columns
                            WHERE relid = 'col_patient'::regclass),
          'id', t.id, 'tenant', t.tenant)), 'UTF8') = p.ssn;
SELECT kms_column_context_expr('col_patient', 'ssn') LIKE
       'pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(''kms_pg:column''::text, ''%''::text, ''id''::text, t.id, ''tenant''::text, t.tenant))'
       AS context_expr_ok;

-- The view shows exactly the original data.
SELECT count(*) AS view_rows,
       count(*) FILTER (WHERE (v.id, v.tenant, v.ssn, v.note) IS NOT DISTINCT FROM (p.id, p.tenant, p.ssn, p.note)) AS same
FROM col_patient_decrypted v JOIN col_patient_plain p USING (id);
SELECT id, tenant, ssn, note FROM col_patient_decrypted WHERE id IN (1, 2, 10) ORDER BY id;

-- Writes through the table: plaintext (the text form, as bytea input) is
-- encrypted by the trigger.
INSERT INTO col_patient (id, tenant, ssn) VALUES (100, 1, 'ins-100');
INSERT INTO col_patient (id, tenant, ssn) VALUES (101, 1, convert_to('ins-101 ✓', 'UTF8'));
UPDATE col_patient SET ssn = 'upd-2' WHERE id = 2;
-- Writes through the view: plaintext of the original type.
INSERT INTO col_patient_decrypted (id, tenant, ssn, note) VALUES (102, 2, 'view-102', 'v');
UPDATE col_patient_decrypted SET ssn = 'view-upd-3' WHERE id = 3;
UPDATE col_patient_decrypted SET note = 'note only' WHERE id = 4;
DELETE FROM col_patient_decrypted WHERE id = 5;
INSERT INTO col_patient_decrypted (id, tenant, ssn) VALUES (103, 0, 'returning')
RETURNING id, tenant, ssn, note;
-- UPSERT, through the table: the proposed row is encrypted for its own
-- context, which is the context of the row it updates.
INSERT INTO col_patient (id, tenant, ssn) VALUES (100, 1, 'upsert-100'), (104, 1, 'upsert-104')
ON CONFLICT (id) DO UPDATE SET ssn = EXCLUDED.ssn;
-- COPY
COPY col_patient (id, tenant, ssn, note) FROM STDIN;
105	2	copy-105	c
106	0	\N	c
\.
SELECT count(*) FILTER (WHERE ssn IS NOT NULL AND NOT kms_is_ciphertext(ssn)) AS plaintext_values,
       count(*) FILTER (WHERE kms_is_ciphertext(ssn)) AS ciphertexts
FROM col_patient;
SELECT id, tenant, ssn, note FROM col_patient_decrypted WHERE id IN (2, 3, 4, 5) OR id >= 100 ORDER BY id;

-- A ciphertext written in is kept as is when it belongs to the row (a
-- COPY or data-only restore of encrypted data is not encrypted twice)...
CREATE TEMP TABLE col_saved AS SELECT id, ssn FROM col_patient WHERE id IN (6, 7);
DELETE FROM col_patient WHERE id = 6;
INSERT INTO col_patient (id, tenant, ssn) SELECT 6, 0, ssn FROM col_saved WHERE id = 6;
SELECT t.ssn = s.ssn AS stored_unchanged, v.ssn
FROM col_patient t JOIN col_saved s USING (id) JOIN col_patient_decrypted v USING (id) WHERE id = 6;

-- ...and refused when it does not: cut and paste to another row,
UPDATE col_patient SET ssn = (SELECT ssn FROM col_patient WHERE id = 7) WHERE id = 8;
-- the same id under another tenant,
INSERT INTO col_patient (id, tenant, ssn) SELECT 200, 2, ssn FROM col_saved WHERE id = 7;
-- another table protected on the same context columns,
CREATE TABLE col_other (id int PRIMARY KEY, tenant int NOT NULL, secret text);
CALL kms_protect_column('col_other', 'secret', '{id,tenant}');
INSERT INTO col_other (id, tenant, secret) SELECT 7, 1, ssn FROM col_saved WHERE id = 7;
-- another column of the same table.
CALL kms_protect_column('col_patient', 'note', '{id,tenant}');
UPDATE col_patient SET note = ssn WHERE id = 7;
-- Bypassing the trigger (replica role) cannot store plaintext: the CHECK.
BEGIN;
SET LOCAL session_replication_role = replica;
\set VERBOSITY terse
UPDATE col_patient SET ssn = 'raw plaintext' WHERE id = 9;
\set VERBOSITY default
ROLLBACK;
-- A pasted ciphertext stored with the trigger bypassed does not decrypt.
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE col_patient SET ssn = (SELECT ssn FROM col_saved WHERE id = 7) WHERE id = 9;
RESET session_replication_role;
SELECT ssn FROM col_patient_decrypted WHERE id = 9;
ROLLBACK;
SELECT id, tenant, ssn, note FROM col_patient_decrypted WHERE id IN (7, 8, 9) ORDER BY id;

-- A context column changes: the value is re-sealed under the new context
-- (new ciphertext) and stays readable; the old ciphertext no longer fits.
UPDATE col_patient SET tenant = 2 WHERE id = 7;
SELECT t.ssn <> s.ssn AS resealed, v.tenant, v.ssn, v.note
FROM col_patient t JOIN col_saved s USING (id) JOIN col_patient_decrypted v USING (id) WHERE id = 7;
UPDATE col_patient SET ssn = (SELECT ssn FROM col_saved WHERE id = 7) WHERE id = 7;
-- Through the view, and with the protected value changed at the same time.
UPDATE col_patient_decrypted SET tenant = 0 WHERE id = 11;
UPDATE col_patient_decrypted SET tenant = 1, ssn = 'both changed' WHERE id = 12;
-- An UPDATE of other columns leaves the value alone.
CREATE TEMP TABLE col_before AS SELECT id, ssn FROM col_patient WHERE id = 13;
UPDATE col_patient SET id = id WHERE id = 13;
UPDATE col_patient SET ssn = ssn WHERE id = 13;
SELECT t.ssn = b.ssn AS unchanged FROM col_patient t JOIN col_before b USING (id);
SELECT id, tenant, ssn FROM col_patient_decrypted WHERE id IN (11, 12, 13) ORDER BY id;

-- NULLs stay NULL, both ways.
UPDATE col_patient SET ssn = NULL WHERE id = 14;
UPDATE col_patient_decrypted SET ssn = NULL WHERE id = 15;
INSERT INTO col_patient_decrypted (id, tenant) VALUES (107, 0);
SELECT id, ssn IS NULL AS stored_null FROM col_patient WHERE id IN (14, 15, 107) ORDER BY id;
SELECT id, ssn FROM col_patient_decrypted WHERE id IN (14, 15, 107) ORDER BY id;

-- Column types: each round-trips through the view, and unprotect
-- restores the table exactly.
CREATE TABLE col_types (
    id   int PRIMARY KEY,
    b    bytea,
    i    int,
    d    date,
    n    numeric(10,2),
    ts   timestamptz,
    v    varchar(8),
    arr  text[],
    iv   interval,
    f    float8,
    t    text DEFAULT 'default text'
);
SET DateStyle = 'SQL, DMY';
SET TimeZone = 'America/New_York';
INSERT INTO col_types VALUES
    (1, '\x00ff10'::bytea, 42, '2024-02-29', 1.5, '2024-01-02 03:04:05.678+01', 'abc', '{a,"b c"}',
     '1 day 02:03:04', 0.1, 'tab	and ünïcode'),
    (2, ''::bytea, -7, '1999-12-31', -0.01, '1970-01-01 00:00:00+00', '', '{}', '-3 mons', -1e300, ''),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE col_types_plain AS SELECT * FROM col_types;
CALL kms_protect_column('col_types', 'b', '{id}');
CALL kms_protect_column('col_types', 'i', '{id}');
CALL kms_protect_column('col_types', 'd', '{id}');
CALL kms_protect_column('col_types', 'n', '{id}');
CALL kms_protect_column('col_types', 'ts', '{id}');
CALL kms_protect_column('col_types', 'v', '{id}');
CALL kms_protect_column('col_types', 'arr', '{id}');
CALL kms_protect_column('col_types', 'iv', '{id}');
CALL kms_protect_column('col_types', 'f', '{id}');
CALL kms_protect_column('col_types', 't', '{id}');
SELECT count(*) FILTER (WHERE kms_is_ciphertext(b) AND kms_is_ciphertext(i) AND kms_is_ciphertext(d)
                          AND kms_is_ciphertext(n) AND kms_is_ciphertext(ts) AND kms_is_ciphertext(v)
                          AND kms_is_ciphertext(arr) AND kms_is_ciphertext(iv) AND kms_is_ciphertext(f)
                          AND kms_is_ciphertext(t)) AS all_encrypted
FROM col_types;
SELECT attname, pg_catalog.format_type(atttypid, atttypmod)
FROM pg_attribute WHERE attrelid = 'col_types_decrypted'::regclass AND attnum > 0 ORDER BY attnum;
-- Whatever the session's DateStyle and TimeZone, values compare equal.
SELECT dv.id, dv IS NOT DISTINCT FROM pl AS same
FROM col_types_decrypted dv JOIN col_types_plain pl USING (id) ORDER BY dv.id;
RESET DateStyle;
RESET TimeZone;
SELECT * FROM col_types_decrypted WHERE id = 1;
-- Through the view with the original types; through the table as text.
INSERT INTO col_types_decrypted (id, b, i, d, n, ts, v, arr, iv, f)
VALUES (4, '\xdeadbeef', 2147483647, '0001-01-01', 99999999.99, 'infinity', '12345678', '{NULL}', '0', 'NaN');
INSERT INTO col_types (id, i, d, n) VALUES (5, '17', '2020-05-06', '3.14159');
SELECT id, b, i, d, n, ts, v, arr, iv, f, t FROM col_types_decrypted WHERE id IN (4, 5) ORDER BY id;
-- The table checks plaintext against the original type.
INSERT INTO col_types (id, i) VALUES (6, 'not a number');
INSERT INTO col_types (id, v) VALUES (6, 'too long for eight');
INSERT INTO col_types_decrypted (id, v) VALUES (6, 'too long for eight');
DELETE FROM col_types WHERE id IN (4, 5);

-- Unprotect: back to the original types, defaults and values.
SELECT kms_unprotect_column('col_types', 'b') AS b, kms_unprotect_column('col_types', 'i') AS i,
       kms_unprotect_column('col_types', 'd') AS d, kms_unprotect_column('col_types', 'n') AS n,
       kms_unprotect_column('col_types', 'ts') AS ts, kms_unprotect_column('col_types', 'v') AS v,
       kms_unprotect_column('col_types', 'arr') AS arr, kms_unprotect_column('col_types', 'iv') AS iv,
       kms_unprotect_column('col_types', 'f') AS f;
SELECT to_regclass('col_types_decrypted') IS NOT NULL AS view_kept_for_t;
SELECT kms_unprotect_column('col_types', 't') AS t;
SELECT to_regclass('col_types_decrypted') IS NULL AS view_dropped;
SELECT (SELECT array_agg(format('%s %s %s', attname, format_type(atttypid, atttypmod),
                                pg_get_expr(d.adbin, d.adrelid)) ORDER BY attnum)
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE attrelid = 'col_types'::regclass AND attnum > 0)
     = (SELECT array_agg(format('%s %s %s', attname, format_type(atttypid, atttypmod),
                                CASE attname WHEN 't' THEN '''default text''::text' END) ORDER BY attnum)
        FROM pg_attribute WHERE attrelid = 'col_types_plain'::regclass AND attnum > 0) AS same_columns;
SELECT count(*) AS differing_rows FROM
  ((SELECT * FROM col_types EXCEPT SELECT * FROM col_types_plain)
   UNION ALL (SELECT * FROM col_types_plain EXCEPT SELECT * FROM col_types)) x;
SELECT count(*) AS trigger_or_check_left
FROM (SELECT tgname FROM pg_trigger WHERE tgrelid = 'col_types'::regclass
      UNION ALL SELECT conname FROM pg_constraint WHERE conrelid = 'col_types'::regclass AND contype = 'c') x;
SELECT count(*) AS catalog_rows FROM kms_protected_columns WHERE relid = 'col_types'::regclass;

-- col_patient back to plaintext too, equal to the original where untouched.
SELECT kms_unprotect_column('col_patient', 'note') AS note, kms_unprotect_column('col_patient', 'ssn') AS ssn;
SELECT count(*) AS same_as_before
FROM col_patient t JOIN col_patient_plain p USING (id)
WHERE t.id NOT IN (2, 3, 4, 6, 7, 11, 12, 14, 15) AND (t.tenant, t.ssn, t.note) IS NOT DISTINCT FROM (p.tenant, p.ssn, p.note);
SELECT id, tenant, ssn, note FROM col_patient WHERE id IN (2, 3, 4, 6, 7, 11, 12, 14, 15) OR id >= 100 ORDER BY id;

-- Bad calls.
CALL kms_protect_column('col_patient', 'nope');
CALL kms_protect_column('col_patient', 'id');
CALL kms_protect_column('col_patient', 'ssn', '{ssn}');
CALL kms_protect_column('col_patient', 'ssn', '{tenant,tenant}');
CALL kms_protect_column('col_patient', 'ssn', '{missing}');
CALL kms_protect_column('col_types', 'b', '{f}');
CALL kms_protect_column('col_patient', 'ssn', NULL, 'alias/regress_no_such_key');
CALL kms_protect_column('col_patient_decrypted', 'ssn');
SELECT kms_unprotect_column('col_patient', 'ssn');
SELECT count(*) AS catalog_rows FROM kms_protected_columns WHERE relid = 'col_patient'::regclass;

DROP TABLE col_patient, col_patient_plain, col_other CASCADE;
DROP TABLE col_types, col_types_plain;
SELECT count(*) AS orphans FROM kms_protected_columns
WHERE relid::oid NOT IN (SELECT oid FROM pg_class);
