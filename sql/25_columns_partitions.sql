-- 25_columns_partitions: protecting a partitioned table protects every
-- partition: those there already, those created later, those attached
-- later; rows moving between partitions stay readable; the view, the
-- blind index, rotation and unprotect work on the whole table.
SET kms_pg.provider = 'local';
\set SHOW_CONTEXT never
\set VERBOSITY terse
SELECT kms_create_key('alias/regress_col25') IS NOT NULL AS key_a,
       kms_create_key('alias/regress_col25_b') IS NOT NULL AS key_b;
SET kms_pg.key_id = 'alias/regress_col25';

CREATE TABLE pt (id int PRIMARY KEY, tenant int NOT NULL, s text, d date) PARTITION BY RANGE (id);
CREATE TABLE pt_1 PARTITION OF pt FOR VALUES FROM (0) TO (100);
CREATE TABLE pt_2 PARTITION OF pt FOR VALUES FROM (100) TO (200);
INSERT INTO pt SELECT g, g % 3, 's' || g, date '2020-01-01' + g FROM generate_series(1, 150) g;
CALL kms_protect_column('pt_1', 's');
CALL kms_protect_column('pt', 's', '{id,tenant}', blind_index => true, batch_size => 40);
CALL kms_protect_column('pt', 'd', '{id}');
SELECT tableoid::regclass AS part, count(*) AS rows,
       count(*) FILTER (WHERE kms_is_ciphertext(s) AND kms_is_ciphertext(d)) AS encrypted,
       count(s_bidx) AS indexed
FROM pt GROUP BY 1 ORDER BY 1;

-- A partition created later, and one attached later (its columns already
-- of the protected types): both get the trigger and the CHECK.
CREATE TABLE pt_3 PARTITION OF pt FOR VALUES FROM (200) TO (300);
-- A table attached later needs what ATTACH PARTITION always needs: the same
-- column types and the parent's CHECK constraints (here the kms_pg ones).
CREATE TABLE pt_4 (id int NOT NULL, tenant int NOT NULL, s kms_sealed, d kms_sealed, s_bidx bytea);
ALTER TABLE pt ATTACH PARTITION pt_4 FOR VALUES FROM (300) TO (400);
ALTER TABLE pt_4 ADD CONSTRAINT s_kms_ciphertext CHECK (s IS NULL OR kms_is_ciphertext(s)),
                 ADD CONSTRAINT d_kms_ciphertext CHECK (d IS NULL OR kms_is_ciphertext(d));
ALTER TABLE pt ATTACH PARTITION pt_4 FOR VALUES FROM (300) TO (400);
INSERT INTO pt (id, tenant, s, d) VALUES (250, 1, 'later', '2021-02-03'), (350, 2, 'attached', '2022-03-04');
INSERT INTO pt_decrypted (id, tenant, s, d) VALUES (251, 0, 'via view', '2023-04-05');
INSERT INTO pt_4 (id, tenant, s) VALUES (351, 1, 'straight into the partition');
SELECT tgrelid::regclass AS part, count(*) AS kms_triggers FROM pg_trigger
WHERE tgrelid IN ('pt_3'::regclass, 'pt_4'::regclass) AND tgname LIKE 'kms_protect_%' GROUP BY 1 ORDER BY 1;
SELECT conrelid::regclass AS part, count(*) AS checks FROM pg_constraint
WHERE conrelid IN ('pt_3'::regclass, 'pt_4'::regclass) AND contype = 'c' GROUP BY 1 ORDER BY 1;
-- A plaintext written into a partition bypassing the trigger is refused by the cloned CHECK.
BEGIN;
SET LOCAL session_replication_role = replica;
INSERT INTO pt_4 (id, tenant, s) VALUES (399, 1, 'raw');
ROLLBACK;

-- A row moving to another partition (and so to another context) stays readable.
UPDATE pt SET id = 180, tenant = 2 WHERE id = 50;
UPDATE pt_decrypted SET id = 260 WHERE id = 180;
SELECT id, tenant, s, d FROM pt_decrypted WHERE id IN (1, 50, 180, 250, 251, 260, 350, 351) ORDER BY id;
SELECT count(*) AS all_encrypted FROM pt WHERE kms_is_ciphertext(s) AND (d IS NULL OR kms_is_ciphertext(d));
SELECT count(*) AS rows FROM pt;
SELECT id FROM pt WHERE s_bidx = kms_blind_index('pt', 's', 'attached');

-- Rotation of the whole table; then unprotect.
CALL kms_rotate_column('pt', 's', 'alias/regress_col25_b');
SELECT count(*) FILTER (WHERE kms_ciphertext_key_id(s) = (SELECT key_id FROM kms_keys WHERE alias = 'alias/regress_col25_b'))
       AS under_new_key, count(*) AS rows FROM pt;
SELECT kms_unprotect_column('pt', 's') AS s, kms_unprotect_column('pt', 'd') AS d;
SELECT id, tenant, s, d FROM pt WHERE id IN (1, 250, 251, 260, 350, 351) ORDER BY id;
SELECT count(*) AS triggers_left FROM pg_trigger t JOIN pg_partition_tree('pt') p ON p.relid = t.tgrelid
WHERE t.tgname LIKE 'kms_protect_%';
DROP TABLE pt;
SELECT count(*) AS catalog_rows_left FROM kms_protected_columns;
