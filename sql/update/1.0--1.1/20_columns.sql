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

-- The kms_sealed type, its functions and casts.
-- @install 20_columns.sql SECTION kms_sealed

-- A row whose table is gone may be deleted by anyone (as in a fresh install).
CREATE POLICY kms_protected_columns_orphan ON kms_protected_columns FOR DELETE
    USING (NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) relid));

-- 1.0 functions that 1.1 does in C, or no longer needs.
DROP FUNCTION kms_pc_canonical(kms_protected_columns, bytea);
DROP FUNCTION kms_pc_bidx(kms_protected_columns, bytea);
DROP FUNCTION kms_pc_text_forms(anyelement, name[]);

-- @install 20_columns.sql kms_pc_pairs_sql

-- kms_pc_decrypt_sql gained arguments: a new signature.
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
