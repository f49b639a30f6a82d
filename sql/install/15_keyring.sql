-- Local keyring catalog (docs/security.md, docs/format.md): every local
-- key, version, alias, state and deletion date lives in these WAL-logged
-- tables, so standbys, PITR, base backups and pg_dump carry them.  Key
-- material is stored wrapped (AES-256-GCM) under the master key, which
-- lives outside the database (kms_pg.master_key_file or
-- kms_pg.master_key_command).  Only kms_pg's functions change the rows;
-- nobody but the owner may read them.

CREATE TABLE kms_local_key (
    key_id        text PRIMARY KEY,
    alias         text UNIQUE,
    description   text,
    enabled       boolean NOT NULL DEFAULT true,
    created       timestamptz NOT NULL,
    deletion_date timestamptz,
    CONSTRAINT kms_local_key_id_format
        CHECK (key_id OPERATOR(pg_catalog.~) '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')
);
COMMENT ON TABLE kms_local_key IS
  'kms_pg local keys: id, alias, state and scheduled deletion (material in kms_local_key_version)';

CREATE TABLE kms_local_key_version (
    key_id     text NOT NULL,
    version    int NOT NULL CHECK (version OPERATOR(pg_catalog.>) 0),
    created    timestamptz NOT NULL,
    master_key text NOT NULL,
    material   bytea NOT NULL,
    PRIMARY KEY (key_id, version)
);
COMMENT ON TABLE kms_local_key_version IS
  'kms_pg local key versions: material wrapped with AES-256-GCM under the master key whose fingerprint is master_key';

SELECT pg_catalog.pg_extension_config_dump('kms_local_key', '');
SELECT pg_catalog.pg_extension_config_dump('kms_local_key_version', '');
REVOKE ALL ON kms_local_key, kms_local_key_version FROM PUBLIC;

-- Every column this user can read that holds values under key_id, with
-- the count kms_key_usage() gives (bytea columns of tables and
-- materialized views, except kms_pg's own; partitions are counted one by
-- one).
CREATE FUNCTION kms_key_columns(key_id text)
RETURNS TABLE (tbl regclass, col name, "values" bigint)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    r record;
    n bigint;
BEGIN
    FOR r IN
        SELECT c.oid::pg_catalog.regclass AS t, a.attname AS c
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace s ON s.oid OPERATOR(pg_catalog.=) c.relnamespace
        JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid
        WHERE c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'm']::"char"[])
          AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
          AND a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.bytea'::pg_catalog.regtype
          AND s.nspname OPERATOR(pg_catalog.<>) ALL (ARRAY['pg_catalog', 'information_schema'])
          AND s.nspname OPERATOR(pg_catalog.!~) '^pg_toast'
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d      -- kms_pg's own tables
                          WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                            AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'
                            AND d.refobjid OPERATOR(pg_catalog.=)
                                (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'kms_pg'))
        ORDER BY 1, 2
    LOOP
        -- only this key's values, each checked (rewrap or admin) as in kms_key_usage()
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.count(@extschema@.kms_key_usage_entry(t.%1$I)) FROM %2$s t'
            ' WHERE @extschema@.kms_ciphertext_provider(t.%1$I) OPERATOR(pg_catalog.=) ''local'''
            '   AND @extschema@.kms_ciphertext_key_id(t.%1$I) OPERATOR(pg_catalog.=) $1', r.c, r.t)
            INTO n USING kms_key_columns.key_id;
        IF n OPERATOR(pg_catalog.>) 0 THEN
            tbl := r.t; col := r.c; "values" := n;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION kms_key_columns(text) IS
  'columns holding values under a local key (the check kms_schedule_key_deletion() makes)';

CREATE FUNCTION kms_schedule_key_deletion(key text, pending_days int DEFAULT 30)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'kms_schedule_key_deletion'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_cancel_key_deletion(key text)
RETURNS void
AS 'MODULE_PATHNAME', 'kms_cancel_key_deletion'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_purge_deleted_keys()
RETURNS int
AS 'MODULE_PATHNAME', 'kms_purge_deleted_keys'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_rotate_master_key()
RETURNS int
AS 'MODULE_PATHNAME', 'kms_rotate_master_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_master_key_info(OUT fingerprint text, OUT previous_fingerprint text)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_master_key_info'
LANGUAGE C VOLATILE PARALLEL SAFE;

REVOKE EXECUTE ON FUNCTION kms_key_columns(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_schedule_key_deletion(text, int) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_cancel_key_deletion(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_purge_deleted_keys() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_rotate_master_key() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_master_key_info() FROM PUBLIC;

-- kms_keys shows each key's state (Enabled, Disabled, PendingDeletion)
-- and deletion date; CREATE OR REPLACE keeps the grants made on 1.0.
CREATE OR REPLACE VIEW kms_keys AS
SELECT f.key_id, f.alias, f.description, f.enabled, f.created, f.current_version, f.versions,
       CASE WHEN k.deletion_date IS NOT NULL THEN 'PendingDeletion'
            WHEN f.enabled THEN 'Enabled' ELSE 'Disabled' END AS key_state,
       k.deletion_date
FROM @extschema@.kms_local_keys() f
LEFT JOIN @extschema@.kms_local_key k ON k.key_id OPERATOR(pg_catalog.=) f.key_id;
