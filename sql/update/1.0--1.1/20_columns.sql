-- Protected columns, rebuilt (issue 13): the kms_sealed column type, the
-- trigger and kms_blind_index() in C running as the caller (no SECURITY
-- DEFINER left), the view decrypting with the key/value context form.
-- Columns protected under 1.0 keep type bytea and keep working (the C
-- trigger handles them); kms_pc_upgrade_column() moves one to kms_sealed.
-- Every function that is new or changed is taken from
-- sql/install/20_columns.sql by its "-- @install" marker
-- (scripts/update_expand.pl); only what differs from a fresh install is
-- written here.

-- @install 20_columns.sql kms_pc_citus_table

-- @install 20_columns.sql kms_pc_citus_worker

CREATE TYPE kms_sealed;
-- @install 20_columns.sql kms_sealed_in
-- @install 20_columns.sql kms_sealed_out
-- @install 20_columns.sql kms_sealed_recv
-- @install 20_columns.sql kms_sealed_send
CREATE TYPE kms_sealed (
    INPUT = kms_sealed_in, OUTPUT = kms_sealed_out,
    RECEIVE = kms_sealed_recv, SEND = kms_sealed_send,
    INTERNALLENGTH = VARIABLE, STORAGE = extended, CATEGORY = 'U'
);
COMMENT ON TYPE kms_sealed IS
  'a protected column''s value: a kms_pg ciphertext (plaintext written to it is sealed by the column''s trigger)';

-- @install 20_columns.sql kms_sealed(text)
-- @install 20_columns.sql kms_sealed(bytea)
-- The stored bytes are a kms_pg ciphertext: kms_decrypt(), kms_rewrap(),
-- kms_ciphertext_info() take the column as it is.
CREATE CAST (kms_sealed AS bytea) WITHOUT FUNCTION AS IMPLICIT;
-- Plaintext of the original type, as the writer's driver sends it.
CREATE CAST (text AS kms_sealed) WITH FUNCTION kms_sealed(text) AS ASSIGNMENT;
CREATE CAST (varchar AS kms_sealed) WITH FUNCTION kms_sealed(text) AS ASSIGNMENT;
CREATE CAST (bytea AS kms_sealed) WITH FUNCTION kms_sealed(bytea) AS ASSIGNMENT;
CREATE CAST (bpchar AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (name AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (smallint AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (integer AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (bigint AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (numeric AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (real AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (double precision AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (boolean AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (date AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (time AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (timestamp AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (timestamptz AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (interval AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (uuid AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (json AS kms_sealed) WITH INOUT AS ASSIGNMENT;
CREATE CAST (jsonb AS kms_sealed) WITH INOUT AS ASSIGNMENT;

CREATE POLICY kms_protected_columns_orphan ON kms_protected_columns FOR DELETE
    USING (NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) relid));

DROP FUNCTION kms_pc_canonical(kms_protected_columns, bytea);

DROP FUNCTION kms_pc_bidx(kms_protected_columns, bytea);

DROP FUNCTION kms_pc_text_forms(anyelement, name[]);

-- @install 20_columns.sql kms_pc_pairs_sql

DROP FUNCTION kms_pc_decrypt_sql(kms_protected_columns, name, text, text);
-- @install 20_columns.sql kms_pc_decrypt_sql

-- @install 20_columns.sql kms_pc_view_decrypt

-- @install 20_columns.sql kms_pc_catalog_changed
CREATE TRIGGER kms_pc_catalog_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON kms_protected_columns
    FOR EACH STATEMENT EXECUTE FUNCTION kms_pc_catalog_changed();
ALTER TABLE kms_protected_columns ENABLE ALWAYS TRIGGER kms_pc_catalog_changed;

-- @install 20_columns.sql kms_pc_view_decrypt_text

-- @install 20_columns.sql kms_protected_column_trigger

-- @install 20_columns.sql kms_protected_view_trigger

-- @install 20_columns.sql kms_pc_view_assign

-- @install 20_columns.sql kms_pc_view_write_check

-- @install 20_columns.sql kms_pc_citus_view_rules

-- @install 20_columns.sql kms_pc_ensure_view

-- @install 20_columns.sql kms_protect_column

-- @install 20_columns.sql kms_unprotect_column

-- @install 20_columns.sql kms_blind_index(regclass, name, text)

-- @install 20_columns.sql kms_blind_index(regclass, name, bytea)

-- @install 20_columns.sql kms_pc_upgrade_column

-- @install 20_columns.sql kms_pc_on_sql_drop

-- Citus workers leave the view to the coordinator (docs/citus.md).
-- @install 20_columns.sql kms_pc_on_alter_table
