-- 26_columns_view_writes: INSERT and UPDATE through a decrypting view write
-- with one executor state per statement (kms_columns.c, direct writes),
-- and do what the same INSERT or UPDATE of the table does: defaults,
-- identity, generated columns, the table's triggers (row triggers, UPDATE
-- OF column lists, a trigger that skips or changes the row), constraints,
-- column privileges, RETURNING.  Tables the direct path leaves to SPI
-- (row-level security, statement triggers, REPEATABLE READ updates) give
-- the same results.
--
-- The rows of one statement share one command id (cmin) on the direct
-- path, as a multi-row INSERT into the table does; through SPI every row
-- is a statement of its own.
SET kms_pg.provider = 'local';
\set SHOW_CONTEXT never
\set VERBOSITY terse
SELECT kms_create_key('alias/regress_col26') IS NOT NULL AS key_created;
SET kms_pg.key_id = 'alias/regress_col26';

CREATE TABLE vw (
    id      serial PRIMARY KEY,
    tenant  int NOT NULL DEFAULT 7,
    ssn     text,
    note    text CHECK (note IS DISTINCT FROM 'forbidden'),
    code    text UNIQUE,
    up      text GENERATED ALWAYS AS (upper(note)) STORED
);
CALL kms_protect_column('vw', 'ssn', '{id,tenant}');

-- A row trigger of the table that changes one value and skips another row,
-- and one that fires only for UPDATE OF note.
CREATE TABLE vw_log (op text, id int, note text);
CREATE FUNCTION vw_before() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.note = 'skip' THEN RETURN NULL; END IF;
    IF NEW.note = 'shout' THEN NEW.note := 'SHOUT'; END IF;
    RETURN NEW;
END $$;
CREATE FUNCTION vw_note_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO vw_log VALUES (TG_OP, NEW.id, NEW.note);
    RETURN NEW;
END $$;
CREATE TRIGGER a_before BEFORE INSERT OR UPDATE ON vw FOR EACH ROW EXECUTE FUNCTION vw_before();
CREATE TRIGGER b_note AFTER UPDATE OF note ON vw FOR EACH ROW EXECUTE FUNCTION vw_note_changed();

-- INSERT: serial and column defaults, generated column, RETURNING the
-- table's row (the owner may read it), the skipped row not counted.
BEGIN;
INSERT INTO vw_decrypted (ssn, note, code)
VALUES ('s-1', 'one', 'c1'), ('s-2', 'shout', 'c2'), ('s-3', 'skip', 'c3'), (NULL, NULL, NULL)
RETURNING id, tenant, ssn, note, code, up;
SELECT count(*) AS rows, count(DISTINCT cmin::text) AS command_ids FROM vw;
COMMIT;
SELECT id, tenant, ssn, note, code, up FROM vw_decrypted ORDER BY id;
SELECT count(*) FILTER (WHERE kms_is_ciphertext(ssn)) AS sealed FROM vw;
-- An explicit value for a column with a default is kept.
INSERT INTO vw_decrypted (id, tenant, ssn, note) VALUES (100, 1, 's-100', 'explicit');
SELECT id, tenant, ssn FROM vw_decrypted WHERE id = 100;

-- Constraints as for the table, with the table's names.
INSERT INTO vw_decrypted (ssn, note) VALUES ('x', 'forbidden');
INSERT INTO vw_decrypted (ssn, code) VALUES ('x', 'c1');
SELECT count(*) AS rows_after_errors FROM vw;

-- UPDATE: only the columns that changed are written, so UPDATE OF note
-- fires only when note changes; the protected value is sealed again.
UPDATE vw_decrypted SET ssn = 'new-1' WHERE id = 1;
UPDATE vw_decrypted SET note = 'changed' WHERE id = 2;
UPDATE vw_decrypted SET note = 'shout', ssn = 'new-4' WHERE id = 4 RETURNING id, ssn, note, up;
SELECT op, id, note FROM vw_log ORDER BY id;
SELECT id, tenant, ssn, note, up FROM vw_decrypted WHERE id IN (1, 2, 4) ORDER BY id;
-- A skipped update, an update to a row that is gone, the primary key itself.
UPDATE vw_decrypted SET note = 'skip' WHERE id = 1;
UPDATE vw_decrypted SET id = 200 WHERE id = 100 RETURNING id, ssn;
SELECT id, ssn, note FROM vw_decrypted WHERE id IN (1, 100, 200) ORDER BY id;
-- Many rows in one statement, each re-sealed under its new context.
BEGIN;
UPDATE vw_decrypted SET tenant = tenant + 1;
SELECT count(DISTINCT cmin::text) AS command_ids FROM vw;
COMMIT;
SELECT id, tenant, ssn FROM vw_decrypted ORDER BY id;
UPDATE vw_decrypted SET code = 'c2' WHERE id = 1;

-- Identity GENERATED ALWAYS: the usual errors.
CREATE TABLE vwi (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant int NOT NULL, ssn text);
CALL kms_protect_column('vwi', 'ssn', '{id,tenant}');
INSERT INTO vwi_decrypted (tenant, ssn) VALUES (1, 'a') RETURNING id, ssn;
INSERT INTO vwi_decrypted (id, tenant, ssn) VALUES (5, 1, 'b');
UPDATE vwi_decrypted SET id = 9 WHERE id = 1;
UPDATE vwi_decrypted SET ssn = 'a2' WHERE id = 1 RETURNING id, ssn;

-- Column privileges, checked as for the table: INSERT on the columns
-- written (NULL columns without a default are written), UPDATE on the
-- columns changed, SELECT on the primary key (the view itself needs
-- SELECT on the table for UPDATE).
CREATE ROLE regress_col26_writer;
GRANT USAGE ON SCHEMA public TO regress_col26_writer;
GRANT INSERT, UPDATE ON vw_decrypted TO regress_col26_writer;
GRANT SELECT ON vw_decrypted, vw TO regress_col26_writer;
GRANT INSERT (tenant, ssn, note, code), UPDATE (ssn) ON vw TO regress_col26_writer;
GRANT USAGE ON SEQUENCE vw_id_seq TO regress_col26_writer;
SET ROLE regress_col26_writer;
INSERT INTO vw_decrypted (tenant, ssn) VALUES (3, 'by writer');
UPDATE vw_decrypted SET ssn = 'writer-upd' WHERE id = 2;
UPDATE vw_decrypted SET tenant = 9 WHERE id = 2;
RESET ROLE;
REVOKE INSERT (code) ON vw FROM regress_col26_writer;
SET ROLE regress_col26_writer;
INSERT INTO vw_decrypted (tenant, ssn) VALUES (3, 'no right on code');
RESET ROLE;
SELECT id, tenant, ssn, note FROM vw_decrypted WHERE ssn LIKE 'by writer%' OR id = 2 ORDER BY id;

-- Tables left to SPI give the same results, one command id per row.
CREATE TABLE vws (id int PRIMARY KEY, tenant int NOT NULL, ssn text);
CALL kms_protect_column('vws', 'ssn', '{id,tenant}');
CREATE TABLE vws_count (n int);
INSERT INTO vws_count VALUES (0);
CREATE FUNCTION vws_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE vws_count SET n = n + 1; RETURN NULL; END $$;
CREATE TRIGGER vws_stmt AFTER INSERT ON vws FOR EACH STATEMENT EXECUTE FUNCTION vws_stmt();
BEGIN;
INSERT INTO vws_decrypted VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 1, 'c');
SELECT count(DISTINCT cmin::text) AS command_ids FROM vws;
COMMIT;
SELECT n AS statement_trigger_runs FROM vws_count;
ALTER TABLE vws ENABLE ROW LEVEL SECURITY;
CREATE POLICY vws_all ON vws USING (true);
INSERT INTO vws_decrypted VALUES (4, 1, 'd');
BEGIN ISOLATION LEVEL REPEATABLE READ;
UPDATE vws_decrypted SET ssn = ssn || '!' WHERE id <= 2;
COMMIT;
SELECT id, ssn FROM vws_decrypted ORDER BY id;

-- Foreign keys are checked for each row written through the view.
CREATE TABLE vwp (id int PRIMARY KEY);
INSERT INTO vwp VALUES (1);
CREATE TABLE vwc (id int PRIMARY KEY, pid int NOT NULL REFERENCES vwp, ssn text);
CALL kms_protect_column('vwc', 'ssn', '{id}');
INSERT INTO vwc_decrypted VALUES (1, 1, 'a');
INSERT INTO vwc_decrypted VALUES (2, 2, 'b');
UPDATE vwc_decrypted SET pid = 3 WHERE id = 1;
SELECT id, pid, ssn FROM vwc_decrypted;

DROP TABLE vw, vwi, vws, vw_log, vws_count, vwc, vwp CASCADE;
DROP FUNCTION vw_before(), vw_note_changed(), vws_stmt();
DROP OWNED BY regress_col26_writer;
DROP ROLE regress_col26_writer;
