-- Format 2 and its data key registry (sql/install/12_registry.sql and the
-- markings in sql/install/10_core.sql).
ALTER FUNCTION kms_encrypt(bytea, jsonb, text) PARALLEL UNSAFE;
ALTER FUNCTION kms_encrypt_text(text, jsonb, text) PARALLEL UNSAFE;
ALTER FUNCTION kms_encrypt_pairs(bytea, text, "any") PARALLEL UNSAFE;
ALTER FUNCTION kms_encrypt_text_pairs(text, text, "any") PARALLEL UNSAFE;
ALTER FUNCTION kms_reencrypt(bytea, jsonb, text) PARALLEL UNSAFE;
ALTER FUNCTION kms_ciphertext_info(bytea) STABLE;
ALTER FUNCTION kms_ciphertext_key_id(bytea) STABLE;
ALTER FUNCTION kms_ciphertext_provider(bytea) STABLE;

CREATE TABLE kms_dek_registry (
    dek_ref      bigint PRIMARY KEY
                 CONSTRAINT kms_dek_registry_ref_range CHECK (dek_ref > 0 AND dek_ref < 72057594037927936),
    provider     smallint NOT NULL,         -- 1 local, 2 aws (as a v1 value's provider byte)
    key_id       text NOT NULL,             -- canonical key id: local key uuid, AWS key ARN
    name_block   bytea NOT NULL,            -- provider-context key names, as in a v1 header
    wrapped_dek  bytea NOT NULL,            -- provider-wrapped DEK, as in a v1 header
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    rewrapped_at timestamptz,               -- last O(DEKs) rotation
    -- Columns below are the extension's own (readers use the ones above).
    provider_context bytea,                 -- canonical provider context the DEK is bound to
    key_requested    text,                  -- the key as named when the DEK was made
    leased_messages  bigint NOT NULL DEFAULT 0, -- values the DEK may have sealed (leases handed out)
    leased_bytes     bigint NOT NULL DEFAULT 0  -- bytes likewise
);
-- A backend finds an existing row of the data key it seals with.
CREATE INDEX kms_dek_registry_wrapped ON kms_dek_registry (wrapped_dek);
-- An encrypting miss finds the current data key of (key, provider context).
CREATE INDEX kms_dek_registry_reuse ON kms_dek_registry
    (key_requested, pg_catalog.sha256(provider_context), created_at)
    WHERE rewrapped_at IS NULL;
SELECT pg_catalog.pg_extension_config_dump('kms_dek_registry', '');
REVOKE ALL ON kms_dek_registry FROM PUBLIC;
COMMENT ON TABLE kms_dek_registry IS
  'kms_pg data keys of format 2 values: dek_ref -> provider, key id, context names, wrapped DEK (never delete rows)';

-- Rotation in O(data keys): rewrap every registry row of a key.
CREATE FUNCTION kms_rotate_key_registry(key_id text, new_key_id text DEFAULT NULL,
    OUT deks bigint, OUT rewrapped bigint, OUT skipped bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_rotate_key_registry'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION kms_rotate_key_registry(text, text) IS
  'Rewrap the registry rows (format 2 data keys) of a key under new_key_id (default: the same key''s current version); no user table is written';
REVOKE EXECUTE ON FUNCTION kms_rotate_key_registry(text, text) FROM PUBLIC;

-- Per protected column format (sql/install/20_columns.sql, 27_column_format.sql).
ALTER TABLE kms_protected_columns ADD COLUMN format smallint
    CONSTRAINT kms_protected_columns_format_check CHECK (format IN (1, 2));

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

-- kms_rotate_column converts formats (target_format): a new signature.
DROP PROCEDURE kms_rotate_column(regclass, name, text, int, text, int);
CREATE PROCEDURE kms_rotate_column(tbl regclass, col name, new_key_id text DEFAULT NULL,
                                   batch_size int DEFAULT 10000,
                                   context_expr text DEFAULT NULL,
                                   max_batches int DEFAULT NULL,
                                   target_format int DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_name      text := tbl::text;  -- as the caller's search_path shows it
    v_protected boolean := false;
    max_passes constant int := 3;
    v_key       text;
    v_provider  text;
    v_resolved  text;
    v_target    text;       -- the key string handed to kms_rewrap
    v_ctx       text;
    v_coltype   oid;
    v_relkind   char;
    pk_names    name[];
    pk_types    text[];
    pk_cols     text;       -- t.a, t.b
    pk_arr      text;       -- ARRAY[s.a::text, s.b::text]
    pk_desc     text;       -- s.a DESC, s.b DESC
    pk_row      text;       -- (t.a, t.b) or t.a
    lo_row      text;       -- the same built from $1 (text[])
    hi_row      text;       -- the same built from $5 (text[])
    needs       text;       -- values not yet under ($2 provider, $3 key)
    upd_sql     text;
    v_run       bigint;
    v_lo        text[];
    v_hi        text[];
    v_n         bigint;
    v_in_batch  bigint;
    v_last      boolean;
    v_pending      bigint;
    v_done      bigint := 0;
    v_total     bigint := 0;
    v_pass      int := 0;
    v_batches   int := 0;
    v_pass_rows bigint;
    v_other     bigint;
    v_citus     boolean;
    pk_join     text;       -- t.a = s.a AND t.b = s.b
BEGIN
    -- Names resolve in pg_catalog only (a procedure that COMMITs cannot
    -- have SET search_path): set again after every COMMIT.
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    PERFORM pg_catalog.set_config('kms_pg.format', target_format::text, true) WHERE target_format IS NOT NULL;
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF target_format IS NOT NULL AND target_format NOT IN (1, 2) THEN
        RAISE EXCEPTION 'target_format must be 1 or 2' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_batches IS NOT NULL AND max_batches < 1 THEN
        RAISE EXCEPTION 'max_batches must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT c.relkind INTO v_relkind FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    IF v_relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'kms_rotate_column: "%" is not a table', v_name
            USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT a.atttypid INTO v_coltype FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_coltype IS NULL THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist', col, v_name
            USING ERRCODE = 'undefined_column';
    END IF;
    IF v_coltype <> 'bytea'::regtype AND v_coltype <> '@extschema@.kms_sealed'::regtype THEN
        RAISE EXCEPTION 'kms_rotate_column: column "%" of "%" is of type %, not bytea',
            col, v_name, v_coltype::regtype USING ERRCODE = 'datatype_mismatch';
    END IF;

    -- Keyset pagination over the primary key: each batch is an index range,
    -- the whole run reads the table once, and a stopped run restarts cheaply.
    SELECT array_agg(a.attname ORDER BY k.ord),
           array_agg(pg_catalog.format_type(a.atttypid, a.atttypmod) ORDER BY k.ord)
      INTO pk_names, pk_types
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF pk_names IS NULL THEN
        RAISE EXCEPTION 'kms_rotate_column: table "%" has no primary key', v_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Batches are primary-key ranges; add a primary key, or rotate with a single UPDATE ... SET col = kms_rewrap(col, ...).';
    END IF;
    IF col = ANY (pk_names) THEN
        RAISE EXCEPTION 'kms_rotate_column: column "%" is part of the primary key of "%"', col, v_name
            USING ERRCODE = 'feature_not_supported';
    END IF;
    SELECT string_agg(format('t.%I', n), ', ' ORDER BY o),
           'ARRAY[' || string_agg(format('s.%I::text', n), ', ' ORDER BY o) || ']',
           string_agg(format('s.%I DESC', n), ', ' ORDER BY o),
           string_agg(format('$1[%s]::%s', o, pk_types[o]), ', ' ORDER BY o),
           string_agg(format('$5[%s]::%s', o, pk_types[o]), ', ' ORDER BY o)
      INTO pk_cols, pk_arr, pk_desc, lo_row, hi_row
    FROM unnest(pk_names) WITH ORDINALITY AS u(n, o);
    pk_join := (SELECT string_agg(format('t.%1$I OPERATOR(pg_catalog.=) s.%1$I', n), ' AND ' ORDER BY o)
                FROM unnest(pk_names) WITH ORDINALITY AS u(n, o));
    IF array_length(pk_names, 1) > 1 THEN
        pk_row := '(' || pk_cols || ')';
        lo_row := '(' || lo_row || ')';
        hi_row := '(' || hi_row || ')';
    ELSE
        pk_row := pk_cols;
    END IF;

    v_key := coalesce(nullif(new_key_id, ''), nullif(current_setting('kms_pg.key_id', true), ''));
    IF v_key IS NULL THEN
        RAISE EXCEPTION 'no key given and kms_pg.key_id is not set'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass new_key_id to kms_rotate_column(), or SET kms_pg.key_id.';
    END IF;
    v_provider := current_setting('kms_pg.provider');

    -- The per-row context handed to kms_rewrap(): it only needs the values
    -- of the provider-context keys recorded in each ciphertext.
    v_ctx := context_expr;
    IF v_ctx IS NULL
       AND to_regprocedure('@extschema@.kms_column_context_expr(regclass, name)') IS NOT NULL THEN
        BEGIN
            EXECUTE 'SELECT @extschema@.kms_column_context_expr($1, $2)' INTO v_ctx USING tbl, col;
            v_protected := true;
        EXCEPTION WHEN undefined_object THEN
            v_ctx := NULL;      -- not a protected column: plain '{}' context
        END;
    END IF;
    v_ctx := coalesce(v_ctx, '''{}''::jsonb');

    -- The key id that rewrapped values will record, for the skip predicate.
    -- Local: resolve alias or ARN form now.  AWS: a key ARN is used as is;
    -- an alias or bare id is resolved below from the first rewrapped value.
    IF v_provider = 'local' THEN
        v_resolved := @extschema@.kms_describe_key(v_key) ->> 'KeyId';
        v_target := v_resolved;
    ELSE
        IF v_key ~ '^arn:[^:]+:kms:[^:]*:[^:]*:key/' THEN
            v_resolved := v_key;
        END IF;
        v_target := v_key;
    END IF;

    IF EXISTS (SELECT 1 FROM @extschema@.kms_rotation_status s
               WHERE s.tbl = v_name AND s.col = kms_rotate_column.col AND s.state = 'running'
                 AND s.pid <> pg_backend_pid()) THEN
        RAISE EXCEPTION 'kms_rotate_column: a rotation of %.% is already running', v_name, col
            USING ERRCODE = 'object_in_use',
                  HINT = 'See the kms_rotation_status view.';
    END IF;

    INSERT INTO @extschema@.kms_rotation_progress
        (tbl, col, provider, new_key_id, resolved_key_id, backend_start)
    VALUES (v_name, col, v_provider, v_key, v_resolved,
            (SELECT a.backend_start FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_backend_pid()))
    RETURNING run_id INTO v_run;
    -- A protected column: its trigger encrypts new values under the new
    -- key from the commit below on (writers switch at once).
    IF v_protected THEN
        EXECUTE 'UPDATE @extschema@.kms_protected_columns c SET key_id = $1,'
                ' format = CASE WHEN $4 IS NULL THEN c.format ELSE $4 END'
                ' WHERE c.relid = $2 AND (@extschema@.kms_pc_attnames(c.relid, c.trigger_name))[1] = $3'
            USING v_key, tbl, col, target_format::smallint;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF v_n = 0 THEN
            RAISE EXCEPTION 'kms_rotate_column: must be owner of table % to change the key of its protected column %',
                v_name, col
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    -- A Citus table (only with the citus extension): the workers' triggers
    -- switch with the copy of the catalog row; each batch below is one
    -- distributed UPDATE without functions of column values (Citus refuses
    -- STABLE ones there), from values rewrapped by a SELECT.
    v_citus := @extschema@.kms_pc_citus_table(tbl);
    IF v_citus AND v_protected THEN
        PERFORM @extschema@.kms_citus_sync_columns(tbl);
    END IF;

    -- Makes the run visible, and fails fast inside a transaction block.
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    PERFORM pg_catalog.set_config('kms_pg.format', target_format::text, true) WHERE target_format IS NOT NULL;

    -- kms_ciphertext_key_id/_provider only read the header (NULL for values
    -- that are not kms_pg ciphertexts): cheap enough to run per row.
    -- With target_format, values of another format (byte 4 of a ciphertext)
    -- are due too, and are re-encrypted (a fresh data key) in that format.
    needs := format('@extschema@.kms_ciphertext_key_id(t.%1$I) IS NOT NULL'
                    ' AND ((@extschema@.kms_ciphertext_provider(t.%1$I),'
                    '       @extschema@.kms_ciphertext_key_id(t.%1$I)) IS DISTINCT FROM ($2, $3)%2$s)',
                    col,
                    CASE WHEN target_format IS NULL THEN ''
                         ELSE format(' OR pg_catalog.get_byte(t.%I, 4) <> %s', col, target_format) END);

    IF v_resolved IS NULL THEN
        -- Rewrap the first value due (in the transaction of the first batch,
        -- whose rewrap memo then serves that batch) and read its key id.
        EXECUTE format('SELECT (@extschema@.kms_ciphertext_info(@extschema@.kms_rewrap(t.%I, $4, %s))).key_id'
                       ' FROM %s t WHERE %s ORDER BY %s LIMIT 1',
                       col, v_ctx, tbl, needs, pk_cols)
            INTO v_resolved USING NULL::text[], v_provider, v_key, v_target;
        IF v_resolved IS NULL THEN
            v_resolved := v_key;    -- nothing to rotate
        END IF;
        UPDATE @extschema@.kms_rotation_progress SET resolved_key_id = v_resolved WHERE run_id = v_run;
    END IF;

    upd_sql := format('UPDATE %s t SET %I = @extschema@.%s(t.%I, %s) WHERE %s',
                      tbl, col,
                      CASE WHEN target_format IS NULL THEN 'kms_rewrap' ELSE 'kms_reencrypt' END,
                      col,
                      CASE WHEN target_format IS NULL THEN format('$4, %s', v_ctx)
                           ELSE format('%s, $4', v_ctx) END,
                      needs);

    LOOP
        -- One pass over the key range; the next pass picks up values that
        -- concurrent writers stored under another key meanwhile.
        EXECUTE format('SELECT count(*) FROM %s t WHERE %s', tbl, needs)
            INTO v_pending USING NULL::text[], v_provider, v_resolved;
        EXIT WHEN v_pending = 0;
        IF v_pass = max_passes THEN
            UPDATE @extschema@.kms_rotation_progress SET rows_total = v_total + v_pending WHERE run_id = v_run;
            RAISE WARNING 'kms_rotate_column: % values of %.% are still under another key after % passes',
                v_pending, v_name, col, max_passes
                USING HINT = CASE WHEN v_protected
                                  THEN 'Values were written under another key meanwhile (another rotation?); run kms_rotate_column again.'
                                  ELSE 'Writers are still encrypting under the old key: point them to the new key (kms_pg.key_id), then run kms_rotate_column again.' END;
            EXIT;
        END IF;
        v_pass := v_pass + 1;
        v_total := v_total + v_pending;
        IF v_pass > 1 THEN
            RAISE NOTICE 'kms_rotate_column: pass %: % values were written under another key during the rotation',
                v_pass, v_pending;
        END IF;
        UPDATE @extschema@.kms_rotation_progress
           SET rows_total = v_total, passes = v_pass, updated = clock_timestamp()
         WHERE run_id = v_run;

        v_lo := NULL;
        v_pass_rows := 0;
        LOOP
            IF max_batches IS NOT NULL AND v_batches >= max_batches THEN
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    PERFORM pg_catalog.set_config('kms_pg.format', target_format::text, true) WHERE target_format IS NOT NULL;
                RAISE NOTICE 'kms_rotate_column: stopped after % batches (max_batches); run it again to continue',
                    v_batches;
                RETURN;
            END IF;
            -- The batch: the next batch_size values due after v_lo, up to
            -- v_hi; the last batch of a pass is open-ended, so values
            -- inserted meanwhile at the end of the key range join it.
            EXECUTE format('SELECT %s, count(*) OVER () FROM (SELECT %s FROM %s t WHERE %s%s'
                           ' ORDER BY %s LIMIT %s) s ORDER BY %s LIMIT 1',
                           pk_arr, pk_cols, tbl, needs,
                           CASE WHEN v_lo IS NULL THEN '' ELSE format(' AND %s > %s', pk_row, lo_row) END,
                           pk_cols, batch_size, pk_desc)
                INTO v_hi, v_in_batch USING v_lo, v_provider, v_resolved;
            EXIT WHEN v_hi IS NULL;
            v_last := v_in_batch < batch_size;
            IF v_citus THEN
                -- Only values still as the SELECT read them are replaced
                -- (concurrent writers win).  Citus runs the statement on
                -- each shard placement, so a reference table's placements,
                -- whose ciphertexts of a value differ, each rewrap their own.
                EXECUTE format('WITH s AS MATERIALIZED (SELECT %s, t.%I AS kms_old,'
                               ' @extschema@.kms_rewrap(t.%I, $4, %s) AS kms_new FROM %s t WHERE %s%s%s)'
                               ' UPDATE %s t SET %I = s.kms_new FROM s WHERE %s'
                               ' AND t.%I::pg_catalog.bytea OPERATOR(pg_catalog.=) s.kms_old::pg_catalog.bytea',
                               pk_cols, col, col, v_ctx, tbl, needs,
                               CASE WHEN v_lo IS NULL THEN '' ELSE format(' AND %s > %s', pk_row, lo_row) END,
                               CASE WHEN v_last THEN '' ELSE format(' AND %s <= %s', pk_row, hi_row) END,
                               tbl, col, pk_join, col)
                    USING v_lo, v_provider, v_resolved, v_target, v_hi;
            ELSE
                EXECUTE upd_sql
                        || CASE WHEN v_lo IS NULL THEN '' ELSE format(' AND %s > %s', pk_row, lo_row) END
                        || CASE WHEN v_last THEN '' ELSE format(' AND %s <= %s', pk_row, hi_row) END
                    USING v_lo, v_provider, v_resolved, v_target, v_hi;
            END IF;
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_done := v_done + v_n;
            v_pass_rows := v_pass_rows + v_n;
            v_batches := v_batches + 1;
            -- Values that became due after the count (writers) join the total.
            v_total := greatest(v_total, v_done);
            UPDATE @extschema@.kms_rotation_progress
               SET rows_done = v_done, rows_total = v_total, batches = v_batches, updated = clock_timestamp()
             WHERE run_id = v_run;
            RAISE NOTICE 'kms_rotate_column: % of % rows', v_done, v_total;
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    PERFORM pg_catalog.set_config('kms_pg.format', target_format::text, true) WHERE target_format IS NOT NULL;
            EXIT WHEN v_last;
            v_lo := v_hi;
        END LOOP;
        -- Values counted but no longer due (deleted, or rewritten by writers
        -- under the new key meanwhile) leave the total: a pass ends at 100%.
        v_total := v_done;
        UPDATE @extschema@.kms_rotation_progress SET rows_total = v_total WHERE run_id = v_run;
    END LOOP;

    EXECUTE format('SELECT count(*) FROM %1$s t WHERE t.%2$I IS NOT NULL'
                   ' AND NOT @extschema@.kms_is_ciphertext(t.%2$I)', tbl, col)
        INTO v_other;
    IF v_other > 0 THEN
        RAISE WARNING 'kms_rotate_column: % values of %.% are not kms_pg ciphertexts and were left as they are',
            v_other, v_name, col;
    END IF;
    UPDATE @extschema@.kms_rotation_progress
       SET finished = CASE WHEN v_pending = 0 THEN clock_timestamp() END,
           updated = clock_timestamp()
     WHERE run_id = v_run;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    PERFORM pg_catalog.set_config('kms_pg.format', target_format::text, true) WHERE target_format IS NOT NULL;
    IF v_pending = 0 THEN
        RAISE NOTICE 'kms_rotate_column: done, % rows rewrapped under %', v_done, v_key;
    END IF;
END
$$;
COMMENT ON PROCEDURE kms_rotate_column(regclass, name, text, int, text, int, int) IS
  'rewrap every value of a column under a new key (or re-encrypt it in target_format), online, one committed batch at a time';

-- Rotation rewraps data keys and writes progress: a DBA task.
REVOKE ALL ON PROCEDURE kms_rotate_column(regclass, name, text, int, text, int, int) FROM PUBLIC;

-- kms_grant_access grants the new kms_rotate_column signature.
CREATE OR REPLACE FUNCTION kms_grant_access(tbl regclass, role name, access text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s regclass;
    k text;
    cmd text;
    r record;
    citus_cmds text[] := '{}';
BEGIN
    IF access IS NULL OR access NOT IN ('writer', 'reader', 'auditor', 'admin') THEN
        RAISE EXCEPTION 'kms_grant_access: access must be writer, reader, auditor or admin, not %',
            coalesce(quote_literal(access), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF access <> 'admin' AND NOT EXISTS (SELECT 1 FROM @extschema@.kms_protected_columns c WHERE c.relid = tbl) THEN
        RAISE EXCEPTION 'kms_grant_access: "%" has no column protected by kms_pg', tbl
            USING ERRCODE = 'undefined_object';
    END IF;
    IF access = 'writer' THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %I', tbl, role);
        FOR s IN SELECT d.objid::regclass FROM pg_depend d
                 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.refobjid = tbl AND d.deptype IN ('a', 'i')
                   AND (SELECT c.relkind FROM pg_class c WHERE c.oid = d.objid) = 'S' LOOP
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', s, role);
        END LOOP;
    ELSIF access IN ('reader', 'auditor') THEN
        EXECUTE format('GRANT SELECT ON %s TO %I', tbl, role);
    END IF;
    IF access IN ('reader', 'admin') THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.kms_decrypt_pairs(bytea, "any") TO %I', role);
    END IF;
    IF access = 'reader' AND EXISTS (SELECT 1 FROM @extschema@.kms_protected_columns c
                                     WHERE c.relid = tbl AND c.blind_index_key IS NOT NULL) THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.kms_blind_index(regclass, name, text),'
                       ' @extschema@.kms_blind_index(regclass, name, bytea) TO %I', role);
    END IF;
    -- key privileges (docs/security.md) on the key of every protected column:
    -- writers seal, readers open, the admin does both and rewraps
    FOR k IN SELECT DISTINCT c.key_id FROM @extschema@.kms_protected_columns c WHERE c.relid = tbl LOOP
        IF access = 'writer' THEN
            PERFORM @extschema@.kms_grant_key(k, role, ARRAY['encrypt']);
        ELSIF access = 'reader' THEN
            PERFORM @extschema@.kms_grant_key(k, role, ARRAY['decrypt']);
        ELSIF access = 'admin' THEN
            PERFORM @extschema@.kms_grant_key(k, role, ARRAY['encrypt', 'decrypt', 'rewrap']);
        END IF;
    END LOOP;
    -- A Citus table (only with the citus extension): the shards' triggers,
    -- the view's decryption and kms_blind_index() run on the workers, as
    -- the same role.  Citus copies the table's GRANTs there, not those on
    -- kms_pg's functions nor key privileges: those are made on every worker.
    IF @extschema@.kms_pc_citus_table(tbl) THEN
        IF access IN ('reader', 'admin') THEN
            citus_cmds := citus_cmds || format('GRANT EXECUTE ON FUNCTION %I.kms_decrypt_pairs(bytea, "any") TO %I',
                                               '@extschema@', role);
        END IF;
        IF access = 'reader' AND EXISTS (SELECT 1 FROM @extschema@.kms_protected_columns c
                                         WHERE c.relid = tbl AND c.blind_index_key IS NOT NULL) THEN
            citus_cmds := citus_cmds || format('GRANT EXECUTE ON FUNCTION %1$I.kms_blind_index(regclass, name, text),'
                                               ' %1$I.kms_blind_index(regclass, name, bytea) TO %2$I', '@extschema@', role);
        END IF;
        IF access = 'admin' THEN
            citus_cmds := citus_cmds || format('GRANT EXECUTE ON FUNCTION %1$I.kms_rewrap(bytea, text, jsonb),'
                                               ' %1$I.kms_describe_key(text) TO %2$I', '@extschema@', role);
        END IF;
        -- the keys of the columns and of their blind-index keys: a worker
        -- has no key privileges but these (not even PUBLIC's encrypt on a
        -- new key, docs/citus.md)
        FOR k IN SELECT c.key_id FROM @extschema@.kms_protected_columns c WHERE c.relid = tbl
                 UNION
                 SELECT @extschema@.kms_ciphertext_key_id(c.blind_index_key)
                 FROM @extschema@.kms_protected_columns c WHERE c.relid = tbl AND c.blind_index_key IS NOT NULL LOOP
            IF access IN ('writer', 'reader', 'admin') THEN
                citus_cmds := citus_cmds || format('SELECT %I.kms_grant_key(%L, %L, %L::text[])', '@extschema@', k, role,
                    CASE access WHEN 'writer' THEN '{encrypt}' WHEN 'reader' THEN '{decrypt}'
                                ELSE '{encrypt,decrypt,rewrap}' END);
            END IF;
        END LOOP;
        FOREACH cmd IN ARRAY citus_cmds LOOP
            FOR r IN EXECUTE 'SELECT w.nodename, w.nodeport, w.success, w.result'
                             ' FROM pg_catalog.run_command_on_workers($1) w' USING cmd LOOP
                IF NOT r.success THEN
                    RAISE EXCEPTION 'kms_grant_access: could not grant % access on % on Citus worker %:%',
                        access, tbl, r.nodename, r.nodeport
                        USING ERRCODE = 'connection_exception',
                              DETAIL = format('The worker answered: %s', r.result),
                              HINT = 'Every node needs kms_pg and the role; run kms_grant_access() again once the worker is fixed.';
                END IF;
            END LOOP;
        END LOOP;
    END IF;
    IF access = 'admin' THEN
        EXECUTE format('GRANT EXECUTE ON PROCEDURE @extschema@.kms_rotate_column(regclass, name, text, int, text, int, int) TO %I', role);
        EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.kms_rewrap(bytea, text, jsonb),'
                       ' @extschema@.kms_describe_key(text) TO %I', role);
        EXECUTE format('GRANT SELECT ON @extschema@.kms_rotation_status TO %I', role);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON @extschema@.kms_rotation_progress TO %I', role);
    END IF;
END
$$;
