-- 20_columns_ddl: a protected table lives on through ALTER TABLE (rename
-- table, protected column and context column; add and drop other columns;
-- owner), refuses to lose what its values depend on, and DROP TABLE leaves
-- nothing behind.
SET kms_pg.provider = 'local';
\set SHOW_CONTEXT never
SELECT kms_create_key('alias/regress_col20_ddl') IS NOT NULL AS key_created;
SET kms_pg.key_id = 'alias/regress_col20_ddl';

CREATE TABLE col_acct (id int PRIMARY KEY, org text NOT NULL, iban text, extra int);
INSERT INTO col_acct SELECT g, 'org' || (g % 2), 'IBAN' || g, g FROM generate_series(1, 6) g;
CALL kms_protect_column('col_acct', 'iban', '{id,org}', view_name => 'col_acct_clear');

-- Renames: the table, the protected column, a context column.  Values
-- still decrypt (the context keys are the names at protect time), the view
-- follows, writes still encrypt.
ALTER TABLE col_acct RENAME TO col_account;
ALTER TABLE col_account RENAME COLUMN iban TO account_no;
ALTER TABLE col_account RENAME COLUMN org TO organisation;
SELECT table_name, column_name, context_columns, context_keys, view_name, trigger_name
FROM kms_protected_columns_info WHERE table_name = 'col_account'::regclass;
SELECT attname FROM pg_attribute WHERE attrelid = 'col_acct_clear'::regclass AND attnum > 0 ORDER BY attnum;
SELECT id, organisation, account_no FROM col_acct_clear ORDER BY id;
INSERT INTO col_account (id, organisation, account_no) VALUES (7, 'org1', 'IBAN7');
UPDATE col_account SET organisation = 'org9' WHERE id = 1;
UPDATE col_acct_clear SET account_no = 'IBAN2-new' WHERE id = 2;
SELECT count(*) FILTER (WHERE kms_is_ciphertext(account_no)) AS ciphertexts, count(*) AS rows FROM col_account;
SELECT id, organisation, account_no FROM col_acct_clear WHERE id IN (1, 2, 7) ORDER BY id;
SELECT kms_column_context_expr('col_account', 'account_no') LIKE '%''id''::text, t.id, ''org''::text, t.organisation))' AS context_follows_rename;

-- Add a column: the view gets it.  Drop another column: PostgreSQL asks
-- for CASCADE because the view reads it; with CASCADE the view is made
-- again without it.
ALTER TABLE col_account ADD COLUMN opened date DEFAULT '2020-01-01';
SELECT attname FROM pg_attribute WHERE attrelid = 'col_acct_clear'::regclass AND attnum > 0 ORDER BY attnum;
INSERT INTO col_acct_clear (id, organisation, account_no) VALUES (8, 'org0', 'IBAN8')
RETURNING id, organisation, account_no, extra, opened;
ALTER TABLE col_account DROP COLUMN extra;
ALTER TABLE col_account DROP COLUMN extra CASCADE;
SELECT attname FROM pg_attribute WHERE attrelid = 'col_acct_clear'::regclass AND attnum > 0 ORDER BY attnum;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'col_acct_clear'::regclass;
SELECT id, organisation, account_no, opened FROM col_acct_clear ORDER BY id;

-- Owner: the view follows the table.
CREATE ROLE regress_col20_owner;
ALTER TABLE col_account OWNER TO regress_col20_owner;
SELECT c.relname, pg_get_userbyid(c.relowner) AS owner
FROM pg_class c WHERE c.oid IN ('col_account'::regclass, 'col_acct_clear'::regclass) ORDER BY 1;
ALTER TABLE col_account OWNER TO CURRENT_USER;

-- What the values depend on cannot go behind kms_pg's back.
ALTER TABLE col_account DROP COLUMN organisation;
ALTER TABLE col_account DROP COLUMN organisation CASCADE;
ALTER TABLE col_account DROP COLUMN account_no CASCADE;
DROP TRIGGER kms_protect_iban ON col_account;
SELECT id, organisation, account_no FROM col_acct_clear WHERE id = 3;

-- A second table with a blind index; DROP TABLE removes rows, trigger,
-- view (CASCADE) and catalog rows.
CREATE TABLE col_gone (id int PRIMARY KEY, s text);
INSERT INTO col_gone VALUES (1, 'x');
CALL kms_protect_column('col_gone', 's', '{id}', blind_index => true);
DROP TABLE col_gone;
DROP TABLE col_gone CASCADE;
-- Another schema: the catalog row and the trigger follow, the view stays.
CREATE SCHEMA col_moved;
ALTER TABLE col_account SET SCHEMA col_moved;
SELECT table_name, column_name, view_name FROM kms_protected_columns_info
WHERE table_name = 'col_moved.col_account'::regclass;
INSERT INTO col_moved.col_account (id, organisation, account_no) VALUES (20, 'org0', 'IBAN20');
SELECT id, organisation, account_no FROM col_acct_clear WHERE id = 20;
DROP TABLE col_moved.col_account CASCADE;
DROP SCHEMA col_moved;
SELECT count(*) AS orphan_catalog_rows FROM kms_protected_columns
WHERE relid::oid NOT IN (SELECT oid FROM pg_class);
SELECT count(*) AS views_left FROM pg_class WHERE relname IN ('col_acct_clear', 'col_gone_decrypted');
DROP ROLE regress_col20_owner;
