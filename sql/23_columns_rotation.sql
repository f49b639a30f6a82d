-- 23_columns_rotation: one kms_rotate_column call moves a protected
-- column to another key: its catalog row (so the trigger of every writer)
-- switches at once, every value is rewrapped, the other protected column
-- of the table stays where it is, and everything still decrypts.
SET kms_pg.provider = 'local';
\set SHOW_CONTEXT never
SELECT kms_create_key('alias/regress_col23_a') IS NOT NULL AS key_a,
       kms_create_key('alias/regress_col23_b') IS NOT NULL AS key_b;
SET kms_pg.key_id = 'alias/regress_col23_a';
CREATE TABLE rot23 (id int PRIMARY KEY, tenant int NOT NULL, a text, b date);
INSERT INTO rot23 SELECT g, g % 3, 'a' || g, date '2000-01-01' + g FROM generate_series(1, 50) g;
CALL kms_protect_column('rot23', 'a', '{id,tenant}', batch_size => 20);
CALL kms_protect_column('rot23', 'b', '{id}');
CREATE VIEW rot23_keys AS
SELECT k.alias, count(*) FILTER (WHERE kms_ciphertext_key_id(t.a) = k.key_id) AS a_values,
       count(*) FILTER (WHERE kms_ciphertext_key_id(t.b) = k.key_id) AS b_values
FROM kms_keys k CROSS JOIN rot23 t WHERE k.alias LIKE 'alias/regress_col23_%' GROUP BY k.alias ORDER BY k.alias;
SELECT * FROM rot23_keys;

-- The session's kms_pg.key_id plays no part: the catalog row decides.
SET kms_pg.key_id = 'alias/regress_col23_a';
CALL kms_rotate_column('rot23', 'a', 'alias/regress_col23_b', batch_size => 20);
SELECT column_name, key_id FROM kms_protected_columns_info WHERE table_name = 'rot23'::regclass ORDER BY 1;
-- A writer right after: under the new key.
INSERT INTO rot23 (id, tenant, a, b) VALUES (51, 0, 'a51', '2001-01-01');
UPDATE rot23 SET a = 'a1 again' WHERE id = 1;
SELECT * FROM rot23_keys;
SELECT state, rows_done, rows_total, percent_done FROM kms_rotation_status WHERE tbl = 'rot23';
SELECT provider, key_id = (SELECT key_id FROM kms_keys WHERE alias = 'alias/regress_col23_b') AS new_key,
       "values", deks FROM kms_key_usage('rot23', 'a');
SELECT count(*) AS readable FROM rot23_decrypted
WHERE id <= 50 AND a = CASE id WHEN 1 THEN 'a1 again' ELSE 'a' || id END AND b = date '2000-01-01' + id;
SELECT id, tenant, a, b FROM rot23_decrypted WHERE id IN (1, 2, 51) ORDER BY id;
-- Only the owner may move a protected column to another key.
CREATE ROLE regress_col23_updater;
GRANT SELECT, UPDATE ON rot23 TO regress_col23_updater;
GRANT EXECUTE ON PROCEDURE kms_rotate_column(regclass, name, text, int, text, int, int) TO regress_col23_updater;
GRANT EXECUTE ON FUNCTION kms_describe_key(text), kms_rewrap(bytea, text, jsonb) TO regress_col23_updater;
GRANT SELECT ON kms_rotation_status TO regress_col23_updater;
GRANT SELECT, INSERT, UPDATE ON kms_rotation_progress TO regress_col23_updater;
SET ROLE regress_col23_updater;
CALL kms_rotate_column('rot23', 'b', 'alias/regress_col23_b');
RESET ROLE;
SELECT column_name, key_id FROM kms_protected_columns_info WHERE table_name = 'rot23'::regclass ORDER BY 1;
DROP TABLE rot23 CASCADE;
REVOKE EXECUTE ON PROCEDURE kms_rotate_column(regclass, name, text, int, text, int, int) FROM regress_col23_updater;
REVOKE EXECUTE ON FUNCTION kms_describe_key(text), kms_rewrap(bytea, text, jsonb) FROM regress_col23_updater;
REVOKE ALL ON kms_rotation_status, kms_rotation_progress FROM regress_col23_updater;
DROP ROLE regress_col23_updater;
