-- Citus (docs/citus.md): the coordinator copies the local keyring catalog
-- to every worker after each change; kms_citus_sync_keys() copies it again
-- (for a worker added later).  Without the citus extension in the
-- database both refuse and nothing else changes.
CREATE FUNCTION kms_citus_sync_keys()
RETURNS int
AS 'MODULE_PATHNAME', 'kms_citus_sync_keys'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION kms_citus_sync_keys() IS
  'On a Citus coordinator: copy the local keyring (wrapped under the master key) to every worker; returns the number of workers';

CREATE FUNCTION kms_citus_apply_keyring(state text)
RETURNS int
AS 'MODULE_PATHNAME', 'kms_citus_apply_keyring'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION kms_citus_apply_keyring(text) IS
  'On a Citus worker: replace the local keyring with the coordinator''s copy (run by the coordinator)';

REVOKE EXECUTE ON FUNCTION kms_citus_sync_keys() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_citus_apply_keyring(text) FROM PUBLIC;

-- Protected columns on Citus (docs/citus.md).  A Citus worker has the
-- distributed table (its shell) and the shards, each shard with a copy of
-- the column's trigger; the trigger finds the catalog row through the
-- shell (src/kms_citus.c), and the coordinator copies the rows there.
-- Everything below is dormant without the citus extension in the
-- database: the Citus catalogs are only named in dynamic SQL, run after
-- pg_extension shows citus.

-- On a Citus coordinator: copy the kms_protected_columns rows of tbl (a
-- Citus table), or of every Citus table the caller owns, to every worker,
-- where they replace the rows of that table.  kms_protect_column,
-- kms_unprotect_column and kms_rotate_column do it themselves; run it
-- after create_distributed_table() or create_reference_table() of a table
-- that already has protected columns, and after adding a worker.
-- Returns the number of tables copied.  Runs as the caller.
CREATE FUNCTION kms_citus_sync_columns(tbl regclass DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    coord   boolean := false;
    t       oid;
    rows    jsonb;
    r       record;
    n       int := 0;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO coord;
    END IF;
    IF NOT coord THEN
        RAISE EXCEPTION 'this node is not a Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'kms_citus_sync_columns() copies the catalog rows of protected columns of Citus tables to the workers.',
                  HINT = 'Run it on the coordinator, in a database with the citus extension.';
    END IF;
    IF tbl IS NOT NULL AND NOT @extschema@.kms_pc_citus_table(tbl) THEN
        RAISE EXCEPTION '"%" is not a Citus table', tbl
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Distribute it first (create_distributed_table or create_reference_table).';
    END IF;
    FOR t IN EXECUTE 'SELECT DISTINCT p.logicalrelid::pg_catalog.oid FROM pg_catalog.pg_dist_partition p'
                     ' JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) p.logicalrelid'
                     ' WHERE ($1 IS NULL OR p.logicalrelid OPERATOR(pg_catalog.=) $1)'
                     ' AND pg_catalog.pg_has_role(c.relowner, ''USAGE'')'
                 USING tbl LOOP
        SELECT coalesce(jsonb_agg(to_jsonb(c) || jsonb_build_object('relid', format('%I.%I', n.nspname, k.relname))),
                        '[]'::jsonb)
          INTO rows
        FROM @extschema@.kms_protected_columns c
        JOIN pg_catalog.pg_class k ON k.oid = c.relid
        JOIN pg_catalog.pg_namespace n ON n.oid = k.relnamespace
        WHERE c.relid = t;
        FOR r IN EXECUTE 'SELECT w.nodename, w.nodeport, w.success, w.result'
                         ' FROM pg_catalog.run_command_on_workers($1) w'
                 USING format('SELECT %I.kms_citus_apply_columns(%L, %L::jsonb)', '@extschema@',
                              (SELECT format('%I.%I', n.nspname, k.relname) FROM pg_catalog.pg_class k
                               JOIN pg_catalog.pg_namespace n ON n.oid = k.relnamespace WHERE k.oid = t),
                              rows::text) LOOP
            IF NOT r.success THEN
                RAISE EXCEPTION 'could not copy the protected columns of % to Citus worker %:%', t::regclass, r.nodename, r.nodeport
                    USING ERRCODE = 'connection_exception',
                          DETAIL = format('The worker answered: %s', r.result),
                          HINT = 'Every node needs kms_pg; run kms_citus_sync_columns() once the worker is fixed.';
            END IF;
        END LOOP;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION kms_citus_sync_columns(regclass) IS
  'On a Citus coordinator: copy the protected-column catalog rows of a Citus table (NULL: every Citus table the caller owns) to every worker';

-- On a Citus worker (run by the coordinator): replace the catalog rows of
-- the Citus table tbl with rows (kms_protected_columns rows as jsonb, relid
-- as a qualified name).  Runs as the caller: the table owner's rows only
-- (row security of kms_protected_columns).
CREATE FUNCTION kms_citus_apply_columns(tbl text, rows jsonb)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel oid;
    n   int;
BEGIN
    IF tbl IS NULL OR rows IS NULL THEN
        RAISE EXCEPTION 'kms_citus_apply_columns: arguments must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT @extschema@.kms_pc_citus_worker() THEN
        RAISE EXCEPTION 'this node is not a Citus worker'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'kms_citus_apply_columns() takes the coordinator''s catalog rows of protected columns.',
                  HINT = 'On the coordinator, run kms_citus_sync_columns().';
    END IF;
    rel := tbl::regclass::oid;
    IF NOT @extschema@.kms_pc_citus_table(rel) THEN
        RAISE EXCEPTION '"%" is not a Citus table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    DELETE FROM @extschema@.kms_protected_columns c WHERE c.relid = rel;
    INSERT INTO @extschema@.kms_protected_columns
    SELECT (jsonb_populate_record(NULL::@extschema@.kms_protected_columns, e)).*
    FROM jsonb_array_elements(rows) e;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF EXISTS (SELECT 1 FROM @extschema@.kms_protected_columns c
               JOIN jsonb_array_elements(rows) e ON c.column_id = (e ->> 'column_id')::uuid
               WHERE c.relid <> rel) THEN
        RAISE EXCEPTION 'kms_citus_apply_columns: every row must belong to %', tbl USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION kms_citus_apply_columns(text, jsonb) IS
  'On a Citus worker: replace the protected-column catalog rows of a Citus table with the coordinator''s copy (run by the coordinator)';

-- Format 2 on Citus (docs/citus.md): the data key registry becomes a
-- reference table, so that every node reads the rows of the values sealed
-- on the coordinator from its own placement, and the coordinator's writes
-- reach every placement in the sealing transaction.  Run once on the
-- coordinator, which must be in the Citus metadata
-- (citus_set_coordinator_host()); Citus copies the rows there are, and the
-- coordinator's local copy is then emptied.  Until it runs, a coordinator
-- with workers refuses format 2 sealing.  Returns false when the registry
-- already is a reference table.  Runs as the caller (the registry's owner).
CREATE FUNCTION kms_citus_distribute_registry()
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    coord   boolean := false;
    in_meta boolean;
    done    boolean;
    reg     regclass := pg_catalog.format('%I.%I', '@extschema@', 'kms_dek_registry')::regclass;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO coord;
    END IF;
    IF NOT coord THEN
        RAISE EXCEPTION 'this node is not a Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'kms_citus_distribute_registry() makes the format 2 data key registry a Citus reference table.',
                  HINT = 'Run it on the coordinator, in a database with the citus extension.';
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node n WHERE n.groupid OPERATOR(pg_catalog.=) 0)'
        INTO in_meta;
    IF NOT in_meta THEN
        RAISE EXCEPTION 'the Citus coordinator is not in the Citus metadata'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The coordinator reads format 2 data keys from its own placement of the registry.',
                  HINT = 'Run SELECT citus_set_coordinator_host(''<host>'', <port>) first.';
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1)'
        INTO done USING reg;
    IF done THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT pg_catalog.create_reference_table($1)' USING reg;
    EXECUTE 'SELECT pg_catalog.truncate_local_data_after_distributing_table($1)' USING reg;
    RETURN true;
END
$$;
COMMENT ON FUNCTION kms_citus_distribute_registry() IS
  'On a Citus coordinator: make the format 2 data key registry a Citus reference table (once); false when it already is one';

CREATE FUNCTION kms_citus_registry_rewrapped(key_id text)
RETURNS void
AS 'MODULE_PATHNAME', 'kms_citus_registry_rewrapped'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION kms_citus_registry_rewrapped(text) IS
  'On a Citus worker: drop every backend''s memo of registry rows and the cached data keys of key_id (run by kms_rotate_key_registry on the coordinator)';

REVOKE EXECUTE ON FUNCTION kms_citus_distribute_registry() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_citus_registry_rewrapped(text) FROM PUBLIC;
