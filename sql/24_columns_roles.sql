-- 24_columns_roles: the four roles of docs/column-encryption.md, set up
-- with kms_grant_access() exactly as documented, each on each route.
--   writer  : writes plaintext through the table and the view (with a
--             serial key), reads none back: not through the view, not with
--             RETURNING, not with the decrypt functions;
--   reader  : plaintext through the view, blind-index search;
--   auditor : ciphertext only;
--   admin   : owns the table; protects, rotates, unprotects.
SET kms_pg.provider = 'local';
\set SHOW_CONTEXT never
\set VERBOSITY terse
SELECT kms_create_key('alias/regress_col24') IS NOT NULL AS key_a,
       kms_create_key('alias/regress_col24_new') IS NOT NULL AS key_b;
CREATE ROLE regress_col24_writer;
CREATE ROLE regress_col24_reader;
CREATE ROLE regress_col24_auditor;
CREATE ROLE regress_col24_admin;
CREATE SCHEMA app AUTHORIZATION regress_col24_admin;

SET ROLE regress_col24_admin;
CREATE TABLE app.patient (id serial PRIMARY KEY, tenant int NOT NULL, ssn text, email text);
INSERT INTO app.patient (tenant, ssn, email) VALUES (1, '111-11-1111', 'a@example.com');
RESET ROLE;
SELECT kms_grant_access('app.patient', 'regress_col24_admin', 'admin');
SET ROLE regress_col24_admin;
CALL kms_protect_column('app.patient', 'ssn', '{id,tenant}', key_id => 'alias/regress_col24');
CALL kms_protect_column('app.patient', 'email', '{id}', key_id => 'alias/regress_col24', blind_index => true);
RESET ROLE;
SELECT kms_grant_access('app.patient', 'regress_col24_writer', 'writer');
SELECT kms_grant_access('app.patient', 'regress_col24_reader', 'reader');
SELECT kms_grant_access('app.patient', 'regress_col24_auditor', 'auditor');
GRANT USAGE ON SCHEMA app TO regress_col24_writer, regress_col24_reader, regress_col24_auditor;
SELECT kms_grant_access('app.patient', 'regress_col24_writer', 'owner');

-- Writer.
SET ROLE regress_col24_writer;
INSERT INTO app.patient (tenant, ssn, email) VALUES (1, '222-22-2222', 'b@example.com');
INSERT INTO app.patient_decrypted (tenant, ssn, email) VALUES (2, '333-33-3333', 'c@example.com')
RETURNING id, tenant, ssn, email;
INSERT INTO app.patient (tenant, ssn) VALUES (2, '444-44-4444') RETURNING id, kms_is_ciphertext(ssn) AS ciphertext;
UPDATE app.patient_decrypted SET ssn = '333-33-0000', tenant = 3 WHERE id = 3 RETURNING id, tenant, ssn;
UPDATE app.patient SET tenant = 4 WHERE id = 2;       -- sealed again, by the C trigger
SELECT id, tenant, ssn, email FROM app.patient_decrypted ORDER BY id;
SELECT id, kms_is_ciphertext(ssn) AS ciphertext FROM app.patient ORDER BY id;
SELECT kms_decrypt_pairs(ssn, 'kms_pg:column', 'x') FROM app.patient WHERE id = 1;
SELECT kms_pc_view_decrypt(ssn, 'kms_pg:column', 'x') IS NULL AS masked FROM app.patient WHERE id = 1;
SELECT kms_blind_index('app.patient', 'email', 'a@example.com');
DELETE FROM app.patient_decrypted WHERE id = 4;
RESET ROLE;

-- A narrower writer: INSERT only (no SELECT at all) inserts through the
-- view too; UPDATE through the view reads the view, so it needs SELECT on
-- the table (as the writer above has).
CREATE ROLE regress_col24_inserter;
CREATE ROLE regress_col24_updater;
GRANT USAGE ON SCHEMA app TO regress_col24_inserter, regress_col24_updater;
GRANT INSERT ON app.patient TO regress_col24_inserter;
GRANT USAGE ON SEQUENCE app.patient_id_seq TO regress_col24_inserter;
GRANT SELECT (id, tenant), UPDATE ON app.patient TO regress_col24_updater;
SET ROLE regress_col24_inserter;
INSERT INTO app.patient_decrypted (tenant, ssn, email) VALUES (5, '555-55-5555', 'e@example.com');
INSERT INTO app.patient_decrypted (tenant, ssn) VALUES (5, '556-55-5555') RETURNING tenant, ssn;
SET ROLE regress_col24_updater;
UPDATE app.patient_decrypted SET email = 'e2@example.com' WHERE id = 5;
UPDATE app.patient SET email = 'e2@example.com' WHERE id = 5;
RESET ROLE;

-- Reader.
SET ROLE regress_col24_reader;
SELECT id, tenant, ssn, email FROM app.patient_decrypted ORDER BY id;
SELECT id FROM app.patient_decrypted WHERE email_bidx = kms_blind_index('app.patient', 'email', 'c@example.com');
INSERT INTO app.patient (tenant, ssn) VALUES (9, 'x');
RESET ROLE;

-- Auditor.
SET ROLE regress_col24_auditor;
SELECT id, tenant, kms_is_ciphertext(ssn) AS ssn_ciphertext, kms_is_ciphertext(email) AS email_ciphertext
FROM app.patient ORDER BY id;
SELECT id, ssn, email FROM app.patient_decrypted ORDER BY id;
SELECT kms_decrypt_pairs(ssn, 'kms_pg:column', 'x') FROM app.patient WHERE id = 1;
SELECT kms_blind_index('app.patient', 'email', 'a@example.com');
UPDATE app.patient SET tenant = 1;
RESET ROLE;

-- Admin: rotate one column to another key, then unprotect both.  Key
-- privileges: kms_grant_access covers the keys of columns protected when it
-- runs (none yet for the admin, granted before protecting), so the admin
-- gets them on the column's key and on the key it moves to.
SELECT kms_grant_key('alias/regress_col24', 'regress_col24_admin', '{encrypt,decrypt,rewrap}'),
       kms_grant_key('alias/regress_col24_new', 'regress_col24_admin', '{encrypt,decrypt,rewrap}');
SET ROLE regress_col24_admin;
CALL kms_rotate_column('app.patient', 'ssn', 'alias/regress_col24_new');
SELECT column_name, key_id FROM kms_protected_columns_info WHERE table_name = 'app.patient'::regclass ORDER BY 1;
SELECT kms_unprotect_column('app.patient', 'ssn') AS ssn, kms_unprotect_column('app.patient', 'email') AS email;
SELECT id, tenant, ssn, email FROM app.patient ORDER BY id;
RESET ROLE;

DROP SCHEMA app CASCADE;
REVOKE ALL ON FUNCTION kms_decrypt_pairs(bytea, "any"), kms_blind_index(regclass, name, text),
    kms_blind_index(regclass, name, bytea), kms_rewrap(bytea, text, jsonb), kms_describe_key(text)
    FROM regress_col24_reader, regress_col24_admin;
REVOKE ALL ON PROCEDURE kms_rotate_column(regclass, name, text, int, text, int, int) FROM regress_col24_admin;
REVOKE ALL ON kms_rotation_status, kms_rotation_progress FROM regress_col24_admin;
DROP ROLE regress_col24_writer, regress_col24_reader, regress_col24_auditor, regress_col24_admin,
    regress_col24_inserter, regress_col24_updater;
