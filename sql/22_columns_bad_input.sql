-- 22_columns_bad_input: every bad call gets its own SQLSTATE, and a
-- refused kms_protect_column leaves the table exactly as it was (column
-- type, constraints, triggers, catalog rows).
SET kms_pg.provider = 'local';
\set SHOW_CONTEXT never
\set VERBOSITY terse
SELECT kms_create_key('alias/regress_col22') IS NOT NULL AS key_created;
SET kms_pg.key_id = 'alias/regress_col22';

CREATE TABLE bad (id int PRIMARY KEY, tenant int, s text, m money, p point);
INSERT INTO bad VALUES (1, 1, 'one', 1, '(1,1)'), (2, NULL, 'two', 2, '(2,2)'), (3, NULL, NULL, 3, '(3,3)');
CREATE VIEW bad_state AS
SELECT (SELECT string_agg(format('%s %s', attname, format_type(atttypid, atttypmod)), ', ' ORDER BY attnum)
        FROM pg_attribute WHERE attrelid = 'bad'::regclass AND attnum > 0 AND NOT attisdropped) AS columns,
       (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'bad'::regclass) AS triggers,
       (SELECT count(*) FROM pg_constraint WHERE conrelid = 'bad'::regclass AND contype = 'c') AS checks,
       (SELECT count(*) FROM kms_protected_columns WHERE relid = 'bad'::regclass) AS catalog_rows;
SELECT * FROM bad_state;

-- An unknown column.
CALL kms_protect_column('bad', 'nope');
\echo :LAST_ERROR_SQLSTATE
-- An unsupported type (its text form depends on the locale).
CALL kms_protect_column('bad', 'm');
\echo :LAST_ERROR_SQLSTATE
-- A context column of a type that cannot be a context value.
CALL kms_protect_column('bad', 's', '{p}');
\echo :LAST_ERROR_SQLSTATE
-- A primary-key column.
CALL kms_protect_column('bad', 'id');
\echo :LAST_ERROR_SQLSTATE
-- NULL context columns where the value is not NULL (row 2; row 3 is fine).
CALL kms_protect_column('bad', 's', '{id,tenant}');
\echo :LAST_ERROR_SQLSTATE
-- A key that does not exist.
CALL kms_protect_column('bad', 's', '{id}', 'alias/regress_col22_none');
\echo :LAST_ERROR_SQLSTATE
-- A temporary table; a view; a partition (protect its partitioned table).
CREATE TEMP TABLE bad_tmp (id int PRIMARY KEY, s text);
CALL kms_protect_column('bad_tmp', 's');
\echo :LAST_ERROR_SQLSTATE
CALL kms_protect_column('bad_state', 'columns');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE bad_part (id int, s text) PARTITION BY RANGE (id);
CREATE TABLE bad_part_1 PARTITION OF bad_part FOR VALUES FROM (0) TO (10);
CALL kms_protect_column('bad_part_1', 's');
\echo :LAST_ERROR_SQLSTATE
-- Nothing changed by any of these.
SELECT * FROM bad_state;

-- Now protect it properly, then: twice,
UPDATE bad SET tenant = 0 WHERE tenant IS NULL;
CALL kms_protect_column('bad', 's', '{id,tenant}');
CALL kms_protect_column('bad', 's', '{id,tenant}');
\echo :LAST_ERROR_SQLSTATE
-- a NULL context column on write (the value is not NULL),
UPDATE bad SET tenant = NULL WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO bad (id, tenant, s) VALUES (4, NULL, 'four');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO bad (id, tenant, s) VALUES (4, NULL, NULL);
-- a ciphertext of another row,
UPDATE bad SET s = (SELECT s FROM bad WHERE id = 1) WHERE id = 2;
\echo :LAST_ERROR_SQLSTATE
-- a value the original type refuses (written as text into a date column),
CREATE TABLE bad_d (id int PRIMARY KEY, d date);
CALL kms_protect_column('bad_d', 'd', '{id}');
INSERT INTO bad_d VALUES (1, 'not a date');
\echo :LAST_ERROR_SQLSTATE
-- a type without a cast to kms_sealed; the same value as text is read by date's input.
INSERT INTO bad_d VALUES (2, ARRAY[date '2020-01-01']);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO bad_d VALUES (2, (ARRAY[date '2020-01-01'])[1]::text);
SELECT id, d FROM bad_d_decrypted;
-- and a writer without grants, on the table, the view and the blind index.
CREATE ROLE regress_col22_nobody;
SET ROLE regress_col22_nobody;
INSERT INTO bad (id, tenant, s) VALUES (9, 1, 'x');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO bad_decrypted (id, tenant, s) VALUES (9, 1, 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT kms_blind_index('bad', 's', 'x');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT * FROM bad_state;
SELECT id, tenant, s FROM bad_decrypted ORDER BY id;

DROP TABLE bad CASCADE;
DROP TABLE bad_d CASCADE;
DROP TABLE bad_part, bad_tmp;
DROP ROLE regress_col22_nobody;
SELECT count(*) AS catalog_rows_left FROM kms_protected_columns;
