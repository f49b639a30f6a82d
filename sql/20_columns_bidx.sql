-- 20_columns_bidx: the blind index of a protected column (maintained by
-- the trigger, searched through a btree index with kms_blind_index), and
-- the privileges of writer-only, reader and admin roles.
SET kms_pg.provider = 'local';
\set SHOW_CONTEXT never
SELECT kms_create_key('alias/regress_col20_bidx') IS NOT NULL AS key_created;
SET kms_pg.key_id = 'alias/regress_col20_bidx';

CREATE TABLE col_person (id int PRIMARY KEY, email text, amount numeric(8,2));
INSERT INTO col_person SELECT g, format('user%s@example.com', g % 50), g FROM generate_series(1, 200) g;
CALL kms_protect_column('col_person', 'email', '{id}', blind_index => true, batch_size => 64);
CALL kms_protect_column('col_person', 'amount', '{id}', blind_index => true);
SELECT column_name, blind_index_column FROM kms_protected_columns_info
WHERE table_name = 'col_person'::regclass ORDER BY column_name;
SELECT indexdef FROM pg_indexes WHERE tablename = 'col_person' AND indexdef LIKE '%bidx%' ORDER BY 1;

-- The trigger filled it: 16 bytes per value, equal plaintexts give equal
-- blind indexes (that is the point, and the leak), different ones differ.
SELECT count(*) AS rows, count(email_bidx) AS with_bidx,
       min(length(email_bidx)) AS min_len, max(length(email_bidx)) AS max_len,
       count(DISTINCT email_bidx) AS distinct_bidx
FROM col_person;
-- The wrapped blind-index key is a kms_pg ciphertext (never stored in clear).
SELECT kms_is_ciphertext(blind_index_key) AS key_wrapped, length(kms_decrypt(blind_index_key,
         jsonb_build_object('kms_pg:column', column_id::text, 'kms_pg:purpose', 'blind-index'))) AS key_bytes
FROM kms_protected_columns WHERE relid = 'col_person'::regclass ORDER BY key_wrapped LIMIT 1;

-- Equality search without decrypting the table, through a btree index.
ANALYZE col_person;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
EXPLAIN (COSTS OFF)
SELECT id FROM col_person WHERE email_bidx = kms_blind_index('col_person', 'email', 'user7@example.com');
SELECT id FROM col_person WHERE email_bidx = kms_blind_index('col_person', 'email', 'user7@example.com') ORDER BY id;
-- Through the view, decrypting only the rows found.
EXPLAIN (COSTS OFF)
SELECT id, email FROM col_person_decrypted WHERE email_bidx = kms_blind_index('col_person', 'email', 'user7@example.com');
SELECT id, email FROM col_person_decrypted
WHERE email_bidx = kms_blind_index('col_person', 'email', 'user7@example.com') ORDER BY id;
RESET enable_seqscan;
RESET enable_bitmapscan;
-- Values are normalised through the column type: 12 finds 12.00.
SELECT id, amount FROM col_person_decrypted WHERE amount_bidx = kms_blind_index('col_person', 'amount', '12');
-- The trigger keeps it right on every write; tampering is undone.
UPDATE col_person SET email = 'user7@example.com' WHERE id = 1;
INSERT INTO col_person_decrypted (id, email) VALUES (201, 'user7@example.com');
UPDATE col_person SET email_bidx = '\x00' WHERE id = 2;
UPDATE col_person SET email = NULL WHERE id = 3;
SELECT id FROM col_person WHERE email_bidx = kms_blind_index('col_person', 'email', 'user7@example.com') ORDER BY id;
SELECT id, email_bidx = kms_blind_index('col_person', 'email', 'user2@example.com') AS bidx_ok
FROM col_person WHERE id = 2;
SELECT id, email_bidx IS NULL AS bidx_null FROM col_person WHERE id = 3;
-- The key is per column: the same plaintext in another table differs.
CREATE TABLE col_person2 (id int PRIMARY KEY, email text);
CALL kms_protect_column('col_person2', 'email', '{id}', blind_index => true);
SELECT kms_blind_index('col_person', 'email', 'x') <> kms_blind_index('col_person2', 'email', 'x') AS per_column_keys;
SELECT kms_blind_index('col_person2', 'nope', 'x');
CREATE TABLE col_nobidx (id int PRIMARY KEY, s text);
CALL kms_protect_column('col_nobidx', 's');
SELECT kms_blind_index('col_nobidx', 's', 'x');

-- Privileges.  Writer-only: may write plaintext (encrypted by the trigger)
-- and sees only ciphertext; the view shows it NULL, kms_blind_index is refused.
CREATE ROLE regress_col20_writer;
CREATE ROLE regress_col20_reader;
CREATE ROLE regress_col20_admin;
GRANT SELECT, INSERT, UPDATE ON col_person TO regress_col20_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON col_person TO regress_col20_reader;
GRANT EXECUTE ON FUNCTION kms_decrypt_pairs(bytea, "any") TO regress_col20_reader;
GRANT EXECUTE ON FUNCTION kms_blind_index(regclass, name, text) TO regress_col20_reader;
-- key privileges (docs/security.md): a new key gives PUBLIC encrypt only
SELECT kms_grant_key('alias/regress_col20_bidx', 'regress_col20_reader', '{decrypt}');
SELECT kms_grant_key('alias/regress_col20_bidx', 'regress_col20_admin', '{decrypt}');
SET ROLE regress_col20_writer;
INSERT INTO col_person (id, email) VALUES (300, 'written by writer');
UPDATE col_person SET email = 'changed by writer' WHERE id = 4;
UPDATE col_person SET id = 400 WHERE id = 5;          -- a context column: re-sealed
SELECT id, kms_is_ciphertext(email) AS ciphertext FROM col_person WHERE id IN (4, 300, 400) ORDER BY id;
SELECT id, email FROM col_person_decrypted WHERE id = 300;
SELECT kms_decrypt(email, jsonb_build_object('id', id)) FROM col_person WHERE id = 300;
SELECT kms_blind_index('col_person', 'email', 'user7@example.com');
INSERT INTO col_person_decrypted (id, email) VALUES (301, 'through the view');
RESET ROLE;
-- Reader: SELECT on the table, EXECUTE on kms_decrypt: plaintext through
-- the view, and plaintext writes through it.
SET ROLE regress_col20_reader;
SELECT id, email FROM col_person_decrypted WHERE id IN (4, 300, 301, 400) ORDER BY id;
UPDATE col_person_decrypted SET email = 'reader update' WHERE id = 300;
SELECT id, email FROM col_person_decrypted WHERE email_bidx = kms_blind_index('col_person', 'email', 'reader update');
-- Not the keys, not the catalog rows of tables it does not own.
SELECT kms_create_key('alias/regress_col20_nope');
UPDATE kms_protected_columns SET key_id = 'alias/other' WHERE relid = 'col_person'::regclass;
SELECT DISTINCT key_id FROM kms_protected_columns WHERE relid = 'col_person'::regclass;
SELECT count(*) > 0 AS catalog_readable FROM kms_protected_columns_info;
-- Not the protection itself.
SELECT kms_unprotect_column('col_person', 'email');
RESET ROLE;
-- Admin: the table owner protects; unprotecting decrypts, so it also
-- needs EXECUTE on kms_decrypt.
CREATE TABLE col_admin (id int PRIMARY KEY, s text);
ALTER TABLE col_admin OWNER TO regress_col20_admin;
GRANT CREATE ON SCHEMA public TO regress_col20_admin;
INSERT INTO col_admin VALUES (1, 'admin data');
SET ROLE regress_col20_admin;
CALL kms_protect_column('col_admin', 's', '{id}');
SELECT pg_get_userbyid(relowner) AS view_owner FROM pg_class WHERE oid = 'col_admin_decrypted'::regclass;
SELECT kms_unprotect_column('col_admin', 's');
SELECT id, kms_is_ciphertext(s) AS still_encrypted FROM col_admin;
RESET ROLE;
GRANT EXECUTE ON FUNCTION kms_decrypt_pairs(bytea, "any") TO regress_col20_admin;
SET ROLE regress_col20_admin;
SELECT kms_unprotect_column('col_admin', 's');
SELECT * FROM col_admin;
RESET ROLE;

DROP TABLE col_person, col_person2, col_nobidx, col_admin CASCADE;
REVOKE CREATE ON SCHEMA public FROM regress_col20_admin;
REVOKE EXECUTE ON FUNCTION kms_decrypt_pairs(bytea, "any") FROM regress_col20_reader, regress_col20_admin;
REVOKE EXECUTE ON FUNCTION kms_blind_index(regclass, name, text) FROM regress_col20_reader;
SELECT kms_revoke_key('alias/regress_col20_bidx', 'regress_col20_reader') AS revoked_reader,
       kms_revoke_key('alias/regress_col20_bidx', 'regress_col20_admin') AS revoked_admin;
DROP ROLE regress_col20_writer, regress_col20_reader, regress_col20_admin;
SELECT count(*) AS orphan_catalog_rows FROM kms_protected_columns
WHERE relid::oid NOT IN (SELECT oid FROM pg_class);
