-- The ciphertext format of a protected column's new values (format 2:
-- docs/format.md).  NULL follows kms_pg.format; 1 or 2 fixes it.  The
-- trigger reads it once per statement.  Existing values keep their format:
-- kms_rotate_column(..., target_format => N) converts them.
COMMENT ON COLUMN kms_protected_columns.format IS
  'ciphertext format of new values (1 or 2); NULL: kms_pg.format';

CREATE FUNCTION kms_set_column_format(tbl regclass, col name, format int)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF format IS NOT NULL AND format NOT IN (1, 2) THEN
        RAISE EXCEPTION 'kms_set_column_format: format must be 1, 2 or NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A Citus table's values are sealed on its shards, where the registry
    -- of format 2 cannot be written (docs/citus.md).
    IF format = 2 AND @extschema@.kms_pc_citus_table(tbl) THEN
        RAISE EXCEPTION 'format 2 is not available for protected columns of Citus tables'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'The values of a Citus table are sealed on its shards, where the kms_pg data key registry cannot be written.',
                  HINT = 'Keep format 1 for this column; format 2 values can be sealed on the coordinator with kms_encrypt().';
    END IF;
    UPDATE @extschema@.kms_protected_columns c SET format = kms_set_column_format.format
     WHERE c.relid = tbl AND (@extschema@.kms_pc_attnames(c.relid, c.trigger_name))[1] = col;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RAISE EXCEPTION 'kms_set_column_format: column "%" of "%" is not protected, or you do not own its table', col, tbl
            USING ERRCODE = 'undefined_object';
    END IF;
    -- the workers' copies of the catalog row (their shards' triggers read it)
    IF @extschema@.kms_pc_citus_table(tbl) THEN
        PERFORM @extschema@.kms_citus_sync_columns(tbl);
    END IF;
END
$$;
COMMENT ON FUNCTION kms_set_column_format(regclass, name, int) IS
  'ciphertext format (1, 2, or NULL for kms_pg.format) of the new values of a protected column';
