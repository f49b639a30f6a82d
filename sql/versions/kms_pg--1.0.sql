-- kms_pg extension install script, assembled from sql/install/*.sql by the Makefile.
\echo Use "CREATE EXTENSION kms_pg" to load this file. \quit
-- Core: envelope encryption, ciphertext inspection, local keys, cache.
--
-- Volatility is declared honestly (Citus and the planner rely on it):
-- kms_encrypt makes a fresh nonce per call: VOLATILE.  kms_decrypt gives
-- the same answer for the same input within a statement: STABLE (not
-- IMMUTABLE: keys can be disabled).  kms_rewrap is STABLE: values that
-- share a wrapped DEK get the same new wrapped DEK within a transaction,
-- so bulk rotation can run as a distributed UPDATE.

CREATE FUNCTION kms_encrypt(plaintext bytea, context jsonb DEFAULT '{}', key_id text DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_encrypt'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION kms_decrypt(ciphertext bytea, context jsonb DEFAULT '{}')
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_decrypt'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION kms_encrypt_text(plaintext text, context jsonb DEFAULT '{}', key_id text DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_encrypt_text'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION kms_decrypt_text(ciphertext bytea, context jsonb DEFAULT '{}')
RETURNS text
AS 'MODULE_PATHNAME', 'kms_decrypt_text'
LANGUAGE C STABLE PARALLEL SAFE;

-- The same with the context given as key, value arguments instead of a
-- jsonb: kms_encrypt_pairs(data, NULL, 'id', id, 'tenant', tenant) seals
-- exactly as kms_encrypt(data, jsonb_build_object('id', id, 'tenant',
-- tenant)) would (same canonical context), without building a jsonb per
-- row.  Values: text, integers, numeric, boolean.
CREATE FUNCTION kms_encrypt_pairs(plaintext bytea, key_id text, VARIADIC context "any")
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_encrypt_pairs'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION kms_encrypt_text_pairs(plaintext text, key_id text, VARIADIC context "any")
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_encrypt_text_pairs'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION kms_decrypt_pairs(ciphertext bytea, VARIADIC context "any")
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_decrypt_pairs'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION kms_decrypt_text_pairs(ciphertext bytea, VARIADIC context "any")
RETURNS text
AS 'MODULE_PATHNAME', 'kms_decrypt_text_pairs'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION kms_ciphertext_info(ciphertext bytea,
    OUT format_version int, OUT provider text, OUT key_id text, OUT dek_id text,
    OUT kms_context_keys text[], OUT wrapped_dek_bytes int, OUT plaintext_bytes int,
    OUT overhead_bytes int)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_ciphertext_info'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION kms_ciphertext_key_id(ciphertext bytea)
RETURNS text
AS 'MODULE_PATHNAME', 'kms_ciphertext_key_id'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION kms_ciphertext_provider(ciphertext bytea)
RETURNS text
AS 'MODULE_PATHNAME', 'kms_ciphertext_provider'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION kms_is_ciphertext(value bytea)
RETURNS boolean
AS 'MODULE_PATHNAME', 'kms_is_ciphertext'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION kms_rewrap(ciphertext bytea, new_key_id text DEFAULT NULL, context jsonb DEFAULT '{}')
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_rewrap'
LANGUAGE C STABLE PARALLEL RESTRICTED;

CREATE FUNCTION kms_reencrypt(ciphertext bytea, context jsonb, new_key_id text DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_reencrypt'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

-- Keyed hash for blind indexes (column encryption).
CREATE FUNCTION kms_hmac_sha256(key bytea, data bytea)
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_hmac_sha256'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Local provider key management.
CREATE FUNCTION kms_create_key(alias text, description text DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'kms_create_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_disable_key(key text)
RETURNS void
AS 'MODULE_PATHNAME', 'kms_disable_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_enable_key(key text)
RETURNS void
AS 'MODULE_PATHNAME', 'kms_enable_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_rotate_key(key text)
RETURNS int
AS 'MODULE_PATHNAME', 'kms_rotate_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_local_keys(
    OUT key_id text, OUT alias text, OUT description text, OUT enabled boolean,
    OUT created timestamptz, OUT current_version int, OUT versions int)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'kms_local_keys'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE VIEW kms_keys AS SELECT * FROM kms_local_keys();

CREATE FUNCTION kms_describe_key(key text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'kms_describe_key'
LANGUAGE C VOLATILE PARALLEL SAFE;

-- DEK cache.
CREATE FUNCTION kms_cache_flush()
RETURNS int
AS 'MODULE_PATHNAME', 'kms_cache_flush'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_cache_stats(
    OUT entries bigint, OUT encrypting_entries bigint, OUT capacity bigint,
    OUT hits bigint, OUT local_hits bigint, OUT misses bigint,
    OUT generate_calls bigint, OUT decrypt_calls bigint, OUT rewrap_calls bigint,
    OUT describe_calls bigint, OUT call_errors bigint, OUT coalesced_waits bigint,
    OUT evictions bigint, OUT expirations bigint, OUT dek_rotations bigint, OUT flushes bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_cache_stats'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE VIEW kms_cache_stats AS SELECT * FROM kms_cache_stats();

-- Privileges: encrypting is open to everyone; decrypting, key management,
-- cache control and key inspection need an explicit GRANT (README).
REVOKE EXECUTE ON FUNCTION kms_decrypt(bytea, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_decrypt_text(bytea, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_decrypt_pairs(bytea, "any") FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_decrypt_text_pairs(bytea, "any") FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_reencrypt(bytea, jsonb, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_rewrap(bytea, text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_hmac_sha256(bytea, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_create_key(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_disable_key(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_enable_key(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_rotate_key(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_local_keys() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_describe_key(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_cache_flush() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_cache_stats() FROM PUBLIC;
REVOKE ALL ON kms_keys FROM PUBLIC;
REVOKE ALL ON kms_cache_stats FROM PUBLIC;
-- Column encryption: protect a column of a table in place, with a per-row
-- encryption context built from other columns of the row, a generated
-- trigger that encrypts what writers store, a generated decrypting view,
-- and an optional blind index (docs/column-encryption.md).
--
-- How a protected column is identified, robustly:
--  * The generated trigger is column-specific: BEFORE INSERT OR UPDATE OF
--    <col>, <context columns...>[, <blind index column>].  PostgreSQL keeps
--    its column list (pg_trigger.tgattr) as attribute numbers in that
--    order, follows column renames, and pg_dump writes it back by name.
--    So the catalog row stores only the table and the trigger name, and
--    every column name is resolved from tgattr at use time.
--  * The context keys are the context column names at protect time, kept
--    in the catalog: renaming a context column later changes nothing.
--  * "kms_pg:column" in every context is a random uuid made at protect
--    time and dumped with the catalog row: stable across renames and
--    dump/restore, different for every protected column, so a value
--    copied to another row, column or table does not decrypt.
--
-- The trigger function is SECURITY DEFINER (owned by the extension owner):
-- it must decrypt to re-seal a value when a context column changes, to
-- check that a ciphertext written in is bound to its row, and to compute
-- the blind index.  It never returns plaintext; see the security section
-- of docs/column-encryption.md.

-- One row per protected column.  Rows are dumped by pg_dump (config table).
CREATE TABLE kms_protected_columns (
    column_id        uuid PRIMARY KEY,
    relid            regclass NOT NULL,
    trigger_name     name NOT NULL,
    context_keys     text[] NOT NULL DEFAULT '{}',
    original_type    regtype NOT NULL,
    original_typmod  int NOT NULL DEFAULT -1,
    original_default text,
    key_id           text NOT NULL,
    view_schema      name NOT NULL,
    view_name        name NOT NULL,
    check_name       name NOT NULL,
    blind_index_key  bytea,
    created          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (relid, trigger_name)
);
COMMENT ON TABLE kms_protected_columns IS
  'columns protected by kms_protect_column(); column names are resolved from the trigger''s column list (see kms_protected_columns_info)';
COMMENT ON COLUMN kms_protected_columns.column_id IS
  'the value of "kms_pg:column" in every encryption context of this column';
COMMENT ON COLUMN kms_protected_columns.context_keys IS
  'context key names (the context column names at protect time), in the order of the trigger''s column list';
COMMENT ON COLUMN kms_protected_columns.blind_index_key IS
  'the blind-index HMAC key, a kms_pg ciphertext under context {"kms_pg:column": column_id, "kms_pg:purpose": "blind-index"}';
SELECT pg_catalog.pg_extension_config_dump('kms_protected_columns', '');

-- Table owners manage the rows of their own tables (kms_protect_column and
-- kms_unprotect_column run as the caller); everyone may read them.
ALTER TABLE kms_protected_columns ENABLE ROW LEVEL SECURITY;
CREATE POLICY kms_protected_columns_read ON kms_protected_columns FOR SELECT USING (true);
CREATE POLICY kms_protected_columns_owner ON kms_protected_columns FOR ALL
    USING (pg_catalog.pg_has_role(current_user,
             (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = relid), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role(current_user,
             (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = relid), 'USAGE'));
GRANT SELECT, INSERT, UPDATE, DELETE ON kms_protected_columns TO PUBLIC;

-- Column names of a generated trigger's column list, in order:
-- {protected column, context columns..., blind index column}.
CREATE FUNCTION kms_pc_attnames(rel oid, trg name)
RETURNS name[]
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
    SELECT array_agg(a.attname ORDER BY k.i)
    FROM pg_catalog.pg_trigger tg
    CROSS JOIN LATERAL unnest(tg.tgattr::int2[]) WITH ORDINALITY AS k(attnum, i)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = tg.tgrelid AND a.attnum = k.attnum
    WHERE tg.tgrelid = rel AND tg.tgname = trg
$$;

-- The protected columns with their current names.
CREATE VIEW kms_protected_columns_info AS
SELECT p.column_id, p.relid AS table_name, n[1] AS column_name,
       pg_catalog.format_type(p.original_type, p.original_typmod) AS original_type,
       n[2:pg_catalog.cardinality(p.context_keys) + 1] AS context_columns,
       p.context_keys, p.key_id,
       pg_catalog.format('%I.%I', p.view_schema, p.view_name) AS view_name,
       p.trigger_name,
       CASE WHEN p.blind_index_key IS NOT NULL THEN n[pg_catalog.cardinality(p.context_keys) + 2] END
           AS blind_index_column,
       p.created
FROM @extschema@.kms_protected_columns p
CROSS JOIN LATERAL (SELECT @extschema@.kms_pc_attnames(p.relid, p.trigger_name)) AS r(n);
GRANT SELECT ON kms_protected_columns_info TO PUBLIC;

-- The catalog row of tbl.col (by the column's current name), or an error.
CREATE FUNCTION kms_pc_lookup(tbl regclass, col name)
RETURNS @extschema@.kms_protected_columns
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
    p @extschema@.kms_protected_columns;
BEGIN
    SELECT * INTO p FROM @extschema@.kms_protected_columns c
    WHERE c.relid = tbl AND (@extschema@.kms_pc_attnames(c.relid, c.trigger_name))[1] = col;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation "%" is not protected by kms_pg', col, tbl
            USING ERRCODE = 'undefined_object',
                  HINT = 'See the kms_protected_columns_info view.';
    END IF;
    RETURN p;
END
$$;

-- The context of a protected column as an SQL expression over the row
-- alias alias_name (NULL: bare column names, as ALTER TABLE ... USING needs).  The trigger builds the same object from to_jsonb(NEW):
-- jsonb_build_object and to_jsonb encode values alike (numbers stay
-- numbers); NULL context values are left out.
CREATE FUNCTION kms_pc_context_sql(column_id uuid, context_keys text[], context_cols name[],
                                   alias_name text DEFAULT 't')
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog
AS $$
    SELECT format('pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(%L::text, %L::text%s))',
                  'kms_pg:column', column_id::text,
                  coalesce(string_agg(format(', %L::text, %s', k,
                                             CASE WHEN alias_name IS NULL THEN format('%I', c)
                                                  ELSE format('%I.%I', alias_name, c) END),
                                      '' ORDER BY i), ''))
    FROM unnest(context_keys, context_cols) WITH ORDINALITY AS u(k, c, i)
$$;

-- The context expression of tbl.col over the alias t, for statements that
-- handle a column's values in bulk (kms_rotate_column uses it).
CREATE FUNCTION kms_column_context_expr(tbl regclass, col name)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
    p @extschema@.kms_protected_columns;
    n name[];
BEGIN
    p := @extschema@.kms_pc_lookup(tbl, col);
    n := @extschema@.kms_pc_attnames(p.relid, p.trigger_name);
    RETURN @extschema@.kms_pc_context_sql(p.column_id, p.context_keys,
                                          n[2:cardinality(p.context_keys) + 1], 't');
END
$$;
COMMENT ON FUNCTION kms_column_context_expr(regclass, name) IS
  'the per-row encryption context of a protected column, as an SQL expression over the table alias t';

-- The plaintext of a protected value as the view shows it, as an SQL
-- expression: bytea as is, other types from their UTF-8 text form.
CREATE FUNCTION kms_pc_decrypt_sql(p @extschema@.kms_protected_columns, col name, context_sql text,
                                   alias_name text DEFAULT 't')
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
    SELECT CASE
        WHEN p.original_type = 'bytea'::regtype
            THEN format('@extschema@.kms_decrypt(%s, %s)', ref, context_sql)
        WHEN p.original_type = 'text'::regtype
            THEN format('(pg_catalog.convert_from(@extschema@.kms_decrypt(%s, %s), %L) COLLATE pg_catalog."default")',
                        ref, context_sql, 'UTF8')
        ELSE format('(pg_catalog.convert_from(@extschema@.kms_decrypt(%s, %s), %L) COLLATE pg_catalog."default")::%s',
                    ref, context_sql, 'UTF8', format_type(p.original_type, p.original_typmod))
    END
    FROM (SELECT CASE WHEN alias_name IS NULL THEN format('%I', col)
                      ELSE format('%I.%I', alias_name, col) END) AS r(ref)
$$;

-- Canonical plaintext bytes of a value given as its UTF-8 text form:
-- checked against (and normalised through) the original type, under fixed
-- date, interval, float and time zone output settings, so that the view,
-- the blind index and every writer agree on the bytes.
CREATE FUNCTION kms_pc_canonical(p @extschema@.kms_protected_columns, v bytea)
RETURNS bytea
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres'
SET extra_float_digits = 1
SET TimeZone = 'UTC'
AS $$
DECLARE
    r bytea;
BEGIN
    IF v IS NULL OR p.original_type = 'bytea'::regtype THEN
        RETURN v;
    END IF;
    IF p.original_type = 'text'::regtype THEN
        PERFORM convert_from(v, 'UTF8');       -- valid UTF-8, or an error
        RETURN v;
    END IF;
    -- Explicit casts truncate character types silently; stores do not.
    IF p.original_type IN ('varchar'::regtype, 'bpchar'::regtype) AND p.original_typmod > 4
       AND char_length(rtrim(convert_from(v, 'UTF8'), ' ')) > p.original_typmod - 4 THEN
        RAISE EXCEPTION 'value too long for type %', format_type(p.original_type, p.original_typmod)
            USING ERRCODE = 'string_data_right_truncation';
    END IF;
    EXECUTE format('SELECT pg_catalog.convert_to(pg_catalog.convert_from($1, %L)::%s::text, %L)',
                   'UTF8', format_type(p.original_type, p.original_typmod), 'UTF8')
        INTO r USING v;
    RETURN r;
END
$$;

-- The blind index of canonical plaintext bytes: HMAC-SHA-256 under the
-- column's unwrapped blind-index key, truncated to 16 bytes.
CREATE FUNCTION kms_pc_bidx(p @extschema@.kms_protected_columns, pt bytea)
RETURNS bytea
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
    SELECT substr(@extschema@.kms_hmac_sha256(
               @extschema@.kms_decrypt(p.blind_index_key,
                   jsonb_build_object('kms_pg:column', p.column_id::text,
                                      'kms_pg:purpose', 'blind-index')),
               pt), 1, 16)
$$;

-- The generated trigger (one generic function for every protected column).
--   NULL                      -> NULL (blind index NULL)
--   not a kms_pg ciphertext   -> plaintext: canonicalised, encrypted under
--                                the row's context
--   UPDATE, value unchanged   -> kept; re-sealed under the new context if a
--                                context column changed
--   any other ciphertext      -> kept if it opens under the row's context
--                                (COPY/restore of encrypted data, rotation),
--                                else an error: never stored unreadable
CREATE FUNCTION kms_protected_column_trigger()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET bytea_output = 'hex'
AS $$
DECLARE
    p     @extschema@.kms_protected_columns;
    n     name[];
    nctx  int;
    col   name;
    bcol  name;
    j     jsonb;
    oj    jsonb;
    v     bytea;
    ov    bytea;
    ctx   jsonb;
    octx  jsonb;
    pt    bytea;
    ct    bytea;
    bidx  bytea;
    keep_bidx boolean := false;
    upd   jsonb;
BEGIN
    SELECT * INTO p FROM @extschema@.kms_protected_columns c
    WHERE c.relid = TG_RELID AND c.trigger_name = TG_NAME;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'kms_pg: trigger "%" on "%" has no row in kms_protected_columns',
            TG_NAME, TG_RELID::regclass
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Protect columns with kms_protect_column().';
    END IF;
    n := @extschema@.kms_pc_attnames(TG_RELID, TG_NAME);
    nctx := cardinality(p.context_keys);
    col := n[1];
    IF p.blind_index_key IS NOT NULL THEN
        bcol := n[nctx + 2];
    END IF;

    j := to_jsonb(NEW);
    v := decode(substr(j ->> col, 3), 'hex');
    ctx := jsonb_strip_nulls(jsonb_build_object('kms_pg:column', p.column_id::text)
           || coalesce((SELECT jsonb_object_agg(u.k, j -> u.c)
                        FROM unnest(p.context_keys, n[2:nctx + 1]) AS u(k, c)), '{}'));

    IF v IS NULL THEN
        ct := NULL;
    ELSIF NOT @extschema@.kms_is_ciphertext(v) THEN
        pt := @extschema@.kms_pc_canonical(p, v);
        ct := @extschema@.kms_encrypt(pt, ctx, p.key_id);
    ELSE
        IF TG_OP = 'UPDATE' THEN
            oj := to_jsonb(OLD);
            ov := decode(substr(oj ->> col, 3), 'hex');
        END IF;
        IF TG_OP = 'UPDATE' AND v = ov THEN
            octx := jsonb_strip_nulls(jsonb_build_object('kms_pg:column', p.column_id::text)
                    || coalesce((SELECT jsonb_object_agg(u.k, oj -> u.c)
                                 FROM unnest(p.context_keys, n[2:nctx + 1]) AS u(k, c)), '{}'));
            IF octx = ctx THEN
                ct := v;
                keep_bidx := bcol IS NOT NULL AND oj -> bcol <> 'null'::jsonb;
                IF bcol IS NOT NULL AND NOT keep_bidx THEN
                    pt := @extschema@.kms_decrypt(v, ctx);
                END IF;
            ELSE
                -- A context column changed: re-seal so the value stays readable.
                pt := @extschema@.kms_decrypt(v, octx);
                ct := @extschema@.kms_encrypt(pt, ctx, p.key_id);
            END IF;
        ELSE
            -- A ciphertext written in: it must belong to this row.
            BEGIN
                pt := @extschema@.kms_decrypt(v, ctx);
            EXCEPTION WHEN data_exception THEN
                RAISE EXCEPTION 'kms_pg: the value written to "%" of "%" is a kms_pg ciphertext that does not belong to this row',
                    col, TG_RELID::regclass
                    USING ERRCODE = 'data_exception',
                          DETAIL = 'It does not open under this row''s encryption context (another row, column or table, or changed context columns).',
                          HINT = 'Write plaintext, or a ciphertext made for this row and column.';
            END;
            ct := v;
        END IF;
    END IF;

    upd := jsonb_build_object(col, '\x' || encode(ct, 'hex'));
    IF bcol IS NOT NULL THEN
        IF keep_bidx THEN
            upd := upd || jsonb_build_object(bcol, oj -> bcol);
        ELSE
            bidx := CASE WHEN ct IS NOT NULL THEN @extschema@.kms_pc_bidx(p, pt) END;
            upd := upd || jsonb_build_object(bcol, '\x' || encode(bidx, 'hex'));
        END IF;
    END IF;
    NEW := jsonb_populate_record(NEW, upd);
    RETURN NEW;
END
$$;
-- EXECUTE stays with PUBLIC: CREATE TRIGGER needs it, and a table owner
-- attaching it to a table of their own gains nothing kms_protect_column
-- would not give them (the catalog row is theirs, its column_id unique).

-- Text forms of some columns of a row, under the fixed output settings of
-- kms_pc_canonical (bytea as hex).
CREATE FUNCTION kms_pc_text_forms(rec anyelement, cols name[])
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres'
SET extra_float_digits = 1
SET TimeZone = 'UTC'
SET bytea_output = 'hex'
AS $$
DECLARE
    r text[];
BEGIN
    IF coalesce(cardinality(cols), 0) = 0 THEN
        RETURN '{}';
    END IF;
    EXECUTE format('SELECT ARRAY[%s]::text[]',
                   (SELECT string_agg(format('($1).%I::text', c), ', ' ORDER BY i)
                    FROM unnest(cols) WITH ORDINALITY AS u(c, i)))
        INTO r USING rec;
    RETURN r;
END
$$;

-- INSTEAD OF trigger of the decrypting views: plaintext written through the
-- view goes to the table as UTF-8 text form (bytea as is), where the
-- table's trigger encrypts it.  Runs as the caller: the caller's privileges
-- on the table decide.  UPDATE and DELETE find the row by primary key.
CREATE FUNCTION kms_protected_view_trigger()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET bytea_output = 'hex'
AS $$
DECLARE
    tbl     oid;
    prot    jsonb := '{}';     -- protected column name -> true if bytea
    bidx    text[] := '{}';
    pcols   name[];
    forms   text[];
    done    boolean;
    pk      name[];
    j       jsonb;
    oj      jsonb;
    v       jsonb;
    cols    text;
    sel     text;
    setl    text;
    cond    text;
    rj      jsonb;
    r       record;
    n       name[];
BEGIN
    SELECT min(c.relid::oid) INTO tbl FROM @extschema@.kms_protected_columns c
    WHERE c.view_schema = TG_TABLE_SCHEMA AND c.view_name = TG_TABLE_NAME;
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'kms_pg: view "%.%" is not a kms_pg decrypting view', TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    FOR r IN SELECT * FROM @extschema@.kms_protected_columns c WHERE c.relid = tbl LOOP
        n := @extschema@.kms_pc_attnames(r.relid, r.trigger_name);
        prot := prot || jsonb_build_object(n[1], r.original_type = 'bytea'::regtype);
        IF r.blind_index_key IS NOT NULL THEN
            bidx := bidx || n[cardinality(r.context_keys) + 2]::text;
        END IF;
    END LOOP;

    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        j := to_jsonb(NEW);
        -- Protected values as bytea input text: bytea as is, other types
        -- the UTF-8 bytes of their text form.
        pcols := ARRAY(SELECT jsonb_object_keys(prot));
        forms := @extschema@.kms_pc_text_forms(NEW, pcols);
        FOR i IN 1 .. coalesce(cardinality(pcols), 0) LOOP
            IF forms[i] IS NOT NULL THEN
                j := j || jsonb_build_object(pcols[i],
                    CASE WHEN (prot ->> pcols[i])::boolean THEN forms[i]
                         ELSE '\x' || encode(convert_to(forms[i], 'UTF8'), 'hex') END);
            END IF;
        END LOOP;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT array_agg(att.attname ORDER BY k.i) INTO pk
        FROM pg_catalog.pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, i)
        JOIN pg_catalog.pg_attribute att ON att.attrelid = i.indrelid AND att.attnum = k.attnum
        WHERE i.indrelid = tbl AND i.indisprimary;
        IF pk IS NULL THEN
            RAISE EXCEPTION 'kms_pg: cannot % through view "%.%": table "%" has no primary key',
                TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, tbl::regclass
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'Add a primary key, or write to the table directly.';
        END IF;
        oj := to_jsonb(OLD);
        SELECT string_agg(format('kms_row.%1$I = o.%1$I', c), ' AND ') INTO cond FROM unnest(pk) AS c;
    END IF;

    IF TG_OP = 'INSERT' THEN
        -- Columns left NULL that have a default or identity get it.
        SELECT string_agg(format('%I', att.attname), ', ' ORDER BY att.attnum),
               string_agg(format('r.%I', att.attname), ', ' ORDER BY att.attnum)
          INTO cols, sel
        FROM pg_catalog.pg_attribute att
        WHERE att.attrelid = tbl AND att.attnum > 0 AND NOT att.attisdropped
          AND att.attgenerated = '' AND att.attname::text <> ALL (bidx)
          AND NOT ((att.atthasdef OR att.attidentity <> '')
                   AND coalesce(j -> att.attname::text, 'null'::jsonb) = 'null'::jsonb);
        EXECUTE format('INSERT INTO %s AS kms_row (%s) SELECT %s FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) r'
                       ' RETURNING pg_catalog.to_jsonb(kms_row)', tbl::regclass, cols, sel, tbl::regclass)
            INTO rj USING j;
        NEW := jsonb_populate_record(NEW, rj - ARRAY(SELECT jsonb_object_keys(prot)));
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT string_agg(format('%1$I = r.%1$I', att.attname), ', ' ORDER BY att.attnum) INTO setl
        FROM pg_catalog.pg_attribute att
        WHERE att.attrelid = tbl AND att.attnum > 0 AND NOT att.attisdropped
          AND att.attgenerated = '' AND att.attname::text <> ALL (bidx)
          AND (to_jsonb(NEW) -> att.attname::text) IS DISTINCT FROM (oj -> att.attname::text);
        IF setl IS NULL THEN
            RETURN NEW;
        END IF;
        EXECUTE format('UPDATE %s AS kms_row SET %s FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) r,'
                       ' pg_catalog.jsonb_populate_record(NULL::%s, $2) o WHERE %s'
                       ' RETURNING pg_catalog.to_jsonb(kms_row)',
                       tbl::regclass, setl, tbl::regclass, tbl::regclass, cond)
            INTO rj USING j, oj - ARRAY(SELECT jsonb_object_keys(prot));
        IF rj IS NULL THEN
            RETURN NULL;
        END IF;
        NEW := jsonb_populate_record(NEW, rj - ARRAY(SELECT jsonb_object_keys(prot)));
        RETURN NEW;
    ELSE
        EXECUTE format('DELETE FROM %s AS kms_row USING pg_catalog.jsonb_populate_record(NULL::%s, $1) o WHERE %s'
                       ' RETURNING true', tbl::regclass, tbl::regclass, cond)
            INTO done USING oj - ARRAY(SELECT jsonb_object_keys(prot));
        RETURN CASE WHEN done THEN OLD END;
    END IF;
END
$$;

-- Create or bring up to date the decrypting view of a table: every column
-- of the table in order, protected ones decrypted to their original type.
-- Existing view columns are renamed after renamed table columns, new table
-- columns are appended; a view that is gone (DROP ... CASCADE) is made
-- again.  Runs as the caller (the table owner, or the event trigger of an
-- ALTER TABLE by the owner).
CREATE FUNCTION kms_pc_ensure_view(tbl oid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    vschema name;
    vname   name;
    vrel    oid;
    owner   name;
    sel     text;
    r       record;
    pr      @extschema@.kms_protected_columns;
    n       name[];
    exprs   jsonb := '{}';
BEGIN
    SELECT c.view_schema, c.view_name INTO vschema, vname
    FROM @extschema@.kms_protected_columns c WHERE c.relid = tbl LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    FOR pr IN SELECT * FROM @extschema@.kms_protected_columns c WHERE c.relid = tbl LOOP
        n := @extschema@.kms_pc_attnames(pr.relid, pr.trigger_name);
        IF n IS NULL OR cardinality(n) < cardinality(pr.context_keys) + 1 THEN
            RETURN;     -- trigger not (yet) there, e.g. in the middle of a restore
        END IF;
        exprs := exprs || jsonb_build_object(n[1],
            @extschema@.kms_pc_decrypt_sql(pr, n[1],
                @extschema@.kms_pc_context_sql(pr.column_id, pr.context_keys,
                                               n[2:cardinality(pr.context_keys) + 1], 't')));
    END LOOP;

    SELECT string_agg(coalesce(exprs ->> a.attname::text || format(' AS %I', a.attname),
                               format('t.%I', a.attname)), ', ' ORDER BY a.attnum)
      INTO sel
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped;
    SELECT pg_catalog.pg_get_userbyid(c.relowner) INTO owner FROM pg_catalog.pg_class c WHERE c.oid = tbl;

    vrel := to_regclass(format('%I.%I', vschema, vname));
    IF vrel IS NOT NULL THEN
        -- Follow renamed table columns, position by position.
        FOR r IN SELECT va.attname AS vcol, ta.attname AS tcol
                 FROM (SELECT a.attname, row_number() OVER (ORDER BY a.attnum) AS pos
                       FROM pg_catalog.pg_attribute a
                       WHERE a.attrelid = vrel AND a.attnum > 0 AND NOT a.attisdropped) va
                 JOIN (SELECT a.attname, row_number() OVER (ORDER BY a.attnum) AS pos
                       FROM pg_catalog.pg_attribute a
                       WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped) ta
                   USING (pos)
                 WHERE va.attname <> ta.attname LOOP
            EXECUTE format('ALTER VIEW %s RENAME COLUMN %I TO %I', vrel::regclass, r.vcol, r.tcol);
        END LOOP;
        BEGIN
            EXECUTE format('CREATE OR REPLACE VIEW %I.%I WITH (security_invoker = true) AS SELECT %s FROM %s t',
                           vschema, vname, sel, tbl::regclass);
        EXCEPTION WHEN invalid_table_definition THEN
            -- A column changed type: only a new view will do.
            EXECUTE format('DROP VIEW %s', vrel::regclass);
            vrel := NULL;
        END;
    END IF;
    IF vrel IS NULL THEN
        EXECUTE format('CREATE VIEW %I.%I WITH (security_invoker = true) AS SELECT %s FROM %s t',
                       vschema, vname, sel, tbl::regclass);
        EXECUTE format('CREATE TRIGGER kms_write INSTEAD OF INSERT OR UPDATE OR DELETE ON %I.%I'
                       ' FOR EACH ROW EXECUTE FUNCTION @extschema@.kms_protected_view_trigger()',
                       vschema, vname);
        -- security_invoker: the caller's privileges on the table and on
        -- kms_decrypt decide, so the view itself adds no access.
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO PUBLIC', vschema, vname);
        EXECUTE format('COMMENT ON VIEW %I.%I IS %L', vschema, vname,
                       format('decrypting view of %s, generated by kms_pg', tbl::regclass));
    END IF;
    IF (SELECT c.relowner FROM pg_catalog.pg_class c
        WHERE c.oid = to_regclass(format('%I.%I', vschema, vname)))
       IS DISTINCT FROM (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = tbl) THEN
        EXECUTE format('ALTER VIEW %I.%I OWNER TO %I', vschema, vname, owner);
    END IF;
END
$$;

-- A name not yet used by pg_trigger / pg_constraint / pg_attribute of tbl:
-- base, or base with a numeric suffix.
CREATE FUNCTION kms_pc_free_name(tbl oid, base text, kind char)
RETURNS name
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
    cand name;
    i int := 0;
BEGIN
    LOOP
        cand := CASE WHEN i = 0 THEN left(base, 63)
                     ELSE left(base, 63 - length(i::text) - 1) || '_' || i END;
        EXIT WHEN NOT CASE kind
            WHEN 't' THEN EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl AND tgname = cand)
            WHEN 'c' THEN EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = tbl AND conname = cand)
            ELSE EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = tbl AND attname = cand)
        END;
        i := i + 1;
    END LOOP;
    RETURN cand;
END
$$;

-- Protect tbl.col: from now on it holds kms_pg ciphertexts (type bytea),
-- sealed under {"kms_pg:column": <column uuid>, <context key>: <value>...}.
--  1. one transaction: change the column to bytea holding the UTF-8 text
--     form (no function of any volatility in the rewrite), add the CHECK
--     (NOT VALID), the trigger, the catalog row and the view; COMMIT.
--     From here on every write is encrypted by the trigger.
--  2. encrypt the rows already there through the trigger, batch_size rows
--     (in ctid ranges) per committed transaction: UPDATE t SET c = c.
--  3. VALIDATE the CHECK: no plaintext is left.
-- CALL it outside a transaction block (it commits); calling it again for a
-- column already protected finishes an interrupted run.
CREATE PROCEDURE kms_protect_column(tbl regclass, col name, context_columns name[] DEFAULT NULL,
                                    key_id text DEFAULT NULL, view_name name DEFAULT NULL,
                                    batch_size int DEFAULT 10000, blind_index boolean DEFAULT false)
LANGUAGE plpgsql
AS $$
DECLARE
    v_relkind   char;
    v_nsp       name;
    v_relname   name;
    v_att       record;
    v_ctx       name[] := coalesce(context_columns, '{}');
    v_key       text;
    v_view      name;
    v_vschema   name;
    v_trg       name;
    v_chk       name;
    v_bcol      name;
    v_bkey      bytea;
    v_id        uuid;
    v_default   text;
    v_using     text;
    v_exists    @extschema@.kms_protected_columns;
    v_c         name;
    v_base      oid;
    v_blocks    bigint;
    v_per       bigint;
    v_lo        bigint := 0;
    v_n         bigint;
    v_done      bigint := 0;
    v_pk        name[];
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT c.relkind, n.nspname, c.relname INTO v_relkind, v_nsp, v_relname
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = tbl;
    IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF v_relkind <> 'r' THEN
        RAISE EXCEPTION 'kms_protect_column: "%" is not a table', tbl
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = CASE WHEN v_relkind = 'p' THEN 'Partitioned tables are not supported; protect each partition.' END;
    END IF;
    SELECT a.attnum, a.atttypid, a.atttypmod, a.attgenerated, a.attidentity, a.atthasdef
      INTO v_att
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist', col, tbl
            USING ERRCODE = 'undefined_column';
    END IF;

    -- Already protected: finish the encryption of its rows (step 2 and 3).
    SELECT * INTO v_exists FROM @extschema@.kms_protected_columns c
    WHERE c.relid = tbl AND (@extschema@.kms_pc_attnames(c.relid, c.trigger_name))[1] = col;
    IF FOUND THEN
        v_chk := v_exists.check_name;
        RAISE NOTICE 'kms_protect_column: %.% is already protected; encrypting rows left in plaintext', tbl, col;
    ELSE
        IF v_att.attgenerated <> '' OR v_att.attidentity <> '' THEN
            RAISE EXCEPTION 'kms_protect_column: column "%" of "%" is a generated or identity column', col, tbl
                USING ERRCODE = 'feature_not_supported';
        END IF;
        SELECT array_agg(a.attname) INTO v_pk
        FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
          ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = tbl AND i.indisprimary;
        IF col = ANY (v_pk) THEN
            RAISE EXCEPTION 'kms_protect_column: column "%" is part of the primary key of "%"', col, tbl
                USING ERRCODE = 'feature_not_supported';
        END IF;
        v_base := v_att.atttypid;
        WHILE (SELECT t.typtype FROM pg_catalog.pg_type t WHERE t.oid = v_base) = 'd' LOOP
            v_base := (SELECT t.typbasetype FROM pg_catalog.pg_type t WHERE t.oid = v_base);
        END LOOP;
        IF v_base = 'money'::regtype OR (SELECT t.typtype FROM pg_catalog.pg_type t WHERE t.oid = v_base) = 'p' THEN
            RAISE EXCEPTION 'kms_protect_column: type % of column "%" is not supported', v_att.atttypid::regtype, col
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = 'Its text form depends on the session''s locale.';
        END IF;
        IF EXISTS (SELECT 1 FROM @extschema@.kms_protected_columns c
                   WHERE c.relid = tbl
                     AND col = ANY ((@extschema@.kms_pc_attnames(c.relid, c.trigger_name))[2:])) THEN
            RAISE EXCEPTION 'kms_protect_column: column "%" of "%" is a context or blind index column of another protected column', col, tbl
                USING ERRCODE = 'feature_not_supported';
        END IF;

        -- Context columns: existing, distinct, scalar types whose JSON form
        -- does not depend on session settings.
        IF cardinality(v_ctx) > 40 THEN
            RAISE EXCEPTION 'kms_protect_column: at most 40 context columns' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF cardinality(v_ctx) <> (SELECT count(DISTINCT x) FROM unnest(v_ctx) x) THEN
            RAISE EXCEPTION 'kms_protect_column: context columns must be distinct' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOREACH v_c IN ARRAY v_ctx LOOP
            IF v_c IS NULL OR v_c = col THEN
                RAISE EXCEPTION 'kms_protect_column: the protected column cannot be its own context column'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF v_c LIKE 'kms\_pg:%' THEN
                RAISE EXCEPTION 'kms_protect_column: context column names starting with "kms_pg:" are reserved'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            SELECT a.atttypid INTO v_base FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = tbl AND a.attname = v_c AND a.attnum > 0 AND NOT a.attisdropped;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'column "%" of relation "%" does not exist', v_c, tbl
                    USING ERRCODE = 'undefined_column';
            END IF;
            WHILE (SELECT t.typtype FROM pg_catalog.pg_type t WHERE t.oid = v_base) = 'd' LOOP
                v_base := (SELECT t.typbasetype FROM pg_catalog.pg_type t WHERE t.oid = v_base);
            END LOOP;
            IF NOT (v_base IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype,
                               'text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'name'::regtype,
                               'uuid'::regtype, 'bool'::regtype, 'date'::regtype, 'timestamp'::regtype)
                    OR (SELECT t.typtype FROM pg_catalog.pg_type t WHERE t.oid = v_base) = 'e') THEN
                RAISE EXCEPTION 'kms_protect_column: context column "%" has type %, which cannot be a context value',
                    v_c, v_base::regtype
                    USING ERRCODE = 'datatype_mismatch',
                          HINT = 'Context columns must be integers, numeric, text, uuid, boolean, date, timestamp or enums.';
            END IF;
            IF EXISTS (SELECT 1 FROM @extschema@.kms_protected_columns c
                       WHERE c.relid = tbl AND (@extschema@.kms_pc_attnames(c.relid, c.trigger_name))[1] = v_c) THEN
                RAISE EXCEPTION 'kms_protect_column: context column "%" is itself protected', v_c
                    USING ERRCODE = 'feature_not_supported';
            END IF;
        END LOOP;

        -- The key: stored as given, or kms_pg.key_id now; checked by use.
        v_key := coalesce(nullif(key_id, ''), nullif(current_setting('kms_pg.key_id', true), ''));
        IF v_key IS NULL THEN
            RAISE EXCEPTION 'no key given and kms_pg.key_id is not set'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Pass key_id to kms_protect_column(), or SET kms_pg.key_id.';
        END IF;
        PERFORM @extschema@.kms_encrypt(''::bytea, '{}', v_key);

        -- One view per table.
        SELECT c.view_schema, c.view_name INTO v_vschema, v_view
        FROM @extschema@.kms_protected_columns c WHERE c.relid = tbl LIMIT 1;
        IF FOUND THEN
            IF view_name IS NOT NULL AND view_name <> v_view THEN
                RAISE EXCEPTION 'kms_protect_column: "%" already has the decrypting view %.%', tbl, v_vschema, v_view
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF to_regclass(format('%I.%I', v_vschema, v_view)) IS NOT NULL THEN
                -- It reads the column whose type changes; made again below.
                EXECUTE format('DROP VIEW %I.%I', v_vschema, v_view);
            END IF;
        ELSE
            v_vschema := v_nsp;
            v_view := coalesce(view_name, left(v_relname, 53) || '_decrypted');
            IF to_regclass(format('%I.%I', v_vschema, v_view)) IS NOT NULL THEN
                RAISE EXCEPTION 'kms_protect_column: relation "%.%" already exists', v_vschema, v_view
                    USING ERRCODE = 'duplicate_table',
                          HINT = 'Pass view_name.';
            END IF;
        END IF;

        PERFORM set_config('kms_pg_internal.columns_ddl', 'on', true);
        v_id := gen_random_uuid();
        v_trg := @extschema@.kms_pc_free_name(tbl, 'kms_protect_' || col, 't');
        v_chk := @extschema@.kms_pc_free_name(tbl, col || '_kms_ciphertext', 'c');

        -- The column becomes bytea holding the UTF-8 text form (ISO dates,
        -- UTC, shortest exact floats); the trigger encrypts it below.
        PERFORM set_config('DateStyle', 'ISO, YMD', true),
                set_config('IntervalStyle', 'postgres', true),
                set_config('extra_float_digits', '1', true),
                set_config('TimeZone', 'UTC', true);
        IF v_att.atttypid <> 'bytea'::regtype THEN
            IF v_att.atthasdef THEN
                SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) INTO v_default
                FROM pg_catalog.pg_attrdef d WHERE d.adrelid = tbl AND d.adnum = v_att.attnum;
                EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', tbl, col);
            END IF;
            v_using := CASE WHEN v_att.atttypid = 'text'::regtype THEN format('%I', col)
                            ELSE format('%I::text', col) END;
            EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE bytea USING pg_catalog.convert_to(%s, %L)',
                           tbl, col, v_using, 'UTF8');
            IF v_default IS NOT NULL THEN
                EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT pg_catalog.convert_to(%s, %L)',
                               tbl, col,
                               CASE WHEN v_att.atttypid = 'text'::regtype THEN format('(%s)', v_default)
                                    ELSE format('pg_catalog.to_jsonb(%s) #>> ''{}''', v_default) END,
                               'UTF8');
            END IF;
        END IF;
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%I IS NULL OR @extschema@.kms_is_ciphertext(%I)) NOT VALID',
                       tbl, v_chk, col, col);
        IF blind_index THEN
            v_bcol := @extschema@.kms_pc_free_name(tbl, col || '_bidx', 'a');
            EXECUTE format('ALTER TABLE %s ADD COLUMN %I bytea', tbl, v_bcol);
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', tbl, v_bcol,
                           format('kms_pg blind index of %s (16 bytes of HMAC-SHA-256); search with kms_blind_index()', col));
            -- 256 random bits (three uuids of pg_strong_random), hashed.
            v_bkey := @extschema@.kms_encrypt(
                sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')),
                jsonb_build_object('kms_pg:column', v_id::text, 'kms_pg:purpose', 'blind-index'), v_key);
        END IF;
        INSERT INTO @extschema@.kms_protected_columns
            (column_id, relid, trigger_name, context_keys, original_type, original_typmod, original_default,
             key_id, view_schema, view_name, check_name, blind_index_key)
        VALUES (v_id, tbl, v_trg, v_ctx::text[], v_att.atttypid, v_att.atttypmod, v_default,
                v_key, v_vschema, v_view, v_chk, v_bkey);
        EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %s ON %s FOR EACH ROW'
                       ' EXECUTE FUNCTION @extschema@.kms_protected_column_trigger()',
                       v_trg,
                       (SELECT string_agg(format('%I', x), ', ' ORDER BY i)
                        FROM unnest(ARRAY[col] || v_ctx || CASE WHEN v_bcol IS NOT NULL THEN ARRAY[v_bcol] ELSE '{}'::name[] END)
                             WITH ORDINALITY AS u(x, i)),
                       tbl);
        IF v_bcol IS NOT NULL THEN
            EXECUTE format('CREATE INDEX ON %s (%I)', tbl, v_bcol);
        END IF;
        PERFORM @extschema@.kms_pc_ensure_view(tbl);
        PERFORM set_config('kms_pg_internal.columns_ddl', '', true);
        COMMIT;
    END IF;

    -- Step 2: the trigger encrypts, the UPDATE itself calls nothing volatile.
    v_blocks := pg_catalog.pg_relation_size(tbl) / current_setting('block_size')::int;
    SELECT CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN greatest(1, (c.reltuples / c.relpages)::bigint)
                ELSE 100 END
      INTO v_per FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    v_per := greatest(1, batch_size / v_per);           -- blocks per batch
    WHILE v_lo < v_blocks LOOP
        EXECUTE format('UPDATE %1$s SET %2$I = %2$I WHERE ctid >= $1::text::tid AND ctid < $2::text::tid'
                       ' AND %2$I IS NOT NULL AND NOT @extschema@.kms_is_ciphertext(%2$I)', tbl, col)
            USING format('(%s,0)', v_lo), format('(%s,0)', v_lo + v_per);
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_done := v_done + v_n;
        COMMIT;
        v_lo := v_lo + v_per;
    END LOOP;
    -- Rows that moved past the scanned range meanwhile.
    LOOP
        EXECUTE format('UPDATE %1$s SET %2$I = %2$I WHERE ctid = ANY (ARRAY(SELECT ctid FROM %1$s'
                       ' WHERE %2$I IS NOT NULL AND NOT @extschema@.kms_is_ciphertext(%2$I) LIMIT %3$s))',
                       tbl, col, batch_size);
        GET DIAGNOSTICS v_n = ROW_COUNT;
        EXIT WHEN v_n = 0;
        v_done := v_done + v_n;
        COMMIT;
    END LOOP;
    -- Step 3: proves that no plaintext is left.
    PERFORM set_config('kms_pg_internal.columns_ddl', 'on', true);
    EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', tbl, v_chk);
    COMMIT;
    RAISE NOTICE 'kms_protect_column: %.% protected, % rows encrypted', tbl, col, v_done;
END
$$;
COMMENT ON PROCEDURE kms_protect_column(regclass, name, name[], text, name, int, boolean) IS
  'encrypt a column in place under a per-row context; generated trigger, decrypting view, optional blind index';

-- Undo kms_protect_column: decrypt in place back to the original type and
-- default, and drop the trigger, CHECK, blind index column and catalog
-- row; the view is made again without it, or dropped with the last
-- protected column of the table.  One transaction; kms_decrypt is STABLE,
-- so the rewrite is a plain statement (also on Citus).  Returns the number
-- of values decrypted.
CREATE FUNCTION kms_unprotect_column(tbl regclass, col name)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p     @extschema@.kms_protected_columns;
    n     name[];
    nctx  int;
    ctx   text;
    vals  bigint;
BEGIN
    p := @extschema@.kms_pc_lookup(tbl, col);
    IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    n := @extschema@.kms_pc_attnames(p.relid, p.trigger_name);
    nctx := cardinality(p.context_keys);
    ctx := @extschema@.kms_pc_context_sql(p.column_id, p.context_keys, n[2:nctx + 1], 't');
    EXECUTE format('SELECT count(%I) FROM %s', col, tbl) INTO vals;

    PERFORM set_config('kms_pg_internal.columns_ddl', 'on', true);
    -- The catalog row goes first: the sql_drop guard then lets the
    -- trigger go.  The view reads the column: drop it, make it again.
    DELETE FROM @extschema@.kms_protected_columns c WHERE c.column_id = p.column_id;
    IF to_regclass(format('%I.%I', p.view_schema, p.view_name)) IS NOT NULL THEN
        EXECUTE format('DROP VIEW %I.%I', p.view_schema, p.view_name);
    END IF;
    EXECUTE format('DROP TRIGGER %I ON %s', p.trigger_name, tbl);
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', tbl, p.check_name);

    PERFORM set_config('DateStyle', 'ISO, YMD', true),
            set_config('IntervalStyle', 'postgres', true);
    IF p.original_type = 'bytea'::regtype THEN
        EXECUTE format('UPDATE %s t SET %I = %s WHERE t.%I IS NOT NULL',
                       tbl, col, @extschema@.kms_pc_decrypt_sql(p, col, ctx, 't'), col);
    ELSE
        IF p.original_default IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', tbl, col);
        END IF;
        -- USING names the row's columns bare.
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s USING %s',
                       tbl, col, format_type(p.original_type, p.original_typmod),
                       @extschema@.kms_pc_decrypt_sql(p, col,
                           @extschema@.kms_pc_context_sql(p.column_id, p.context_keys, n[2:nctx + 1], NULL),
                           NULL));
        IF p.original_default IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', tbl, col, p.original_default);
        END IF;
    END IF;
    IF p.blind_index_key IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s DROP COLUMN %I', tbl, n[nctx + 2]);
    END IF;
    PERFORM @extschema@.kms_pc_ensure_view(tbl);
    PERFORM set_config('kms_pg_internal.columns_ddl', '', true);
    RETURN vals;
END
$$;
COMMENT ON FUNCTION kms_unprotect_column(regclass, name) IS
  'decrypt a protected column in place, restore its type, and drop what kms_protect_column made';

-- The search term for a blind index: the same 16 bytes the trigger stores
-- in <col>_bidx for this plaintext.  value is the text form (normalised
-- through the column's original type) or, for bytea columns, the bytes.
CREATE FUNCTION kms_blind_index(tbl regclass, col name, value text)
RETURNS bytea
LANGUAGE plpgsql STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p @extschema@.kms_protected_columns;
BEGIN
    p := @extschema@.kms_pc_lookup(tbl, col);
    IF p.blind_index_key IS NULL THEN
        RAISE EXCEPTION 'protected column "%" of "%" has no blind index', col, tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Protect it with blind_index => true.';
    END IF;
    IF p.original_type = 'bytea'::regtype THEN
        RETURN @extschema@.kms_pc_bidx(p, value::bytea);
    END IF;
    RETURN @extschema@.kms_pc_bidx(p, @extschema@.kms_pc_canonical(p, convert_to(value, 'UTF8')));
END
$$;

CREATE FUNCTION kms_blind_index(tbl regclass, col name, value bytea)
RETURNS bytea
LANGUAGE plpgsql STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p @extschema@.kms_protected_columns;
BEGIN
    p := @extschema@.kms_pc_lookup(tbl, col);
    IF p.blind_index_key IS NULL THEN
        RAISE EXCEPTION 'protected column "%" of "%" has no blind index', col, tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Protect it with blind_index => true.';
    END IF;
    IF p.original_type <> 'bytea'::regtype THEN
        RAISE EXCEPTION 'protected column "%" of "%" is of type %: give the value as text',
            col, tbl, format_type(p.original_type, p.original_typmod)
            USING ERRCODE = 'datatype_mismatch';
    END IF;
    RETURN @extschema@.kms_pc_bidx(p, value);
END
$$;
COMMENT ON FUNCTION kms_blind_index(regclass, name, text) IS
  'blind index search term of a protected column: WHERE <col>_bidx = kms_blind_index(tbl, col, value)';

-- Internal helpers are not for direct use.
REVOKE ALL ON FUNCTION kms_pc_canonical(kms_protected_columns, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION kms_pc_bidx(kms_protected_columns, bytea) FROM PUBLIC;
-- The blind index gives equality of plaintexts: searchers get a GRANT.
REVOKE ALL ON FUNCTION kms_blind_index(regclass, name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kms_blind_index(regclass, name, bytea) FROM PUBLIC;

-- DROP TABLE: its catalog rows go with it.  Dropping a generated trigger
-- any other way (DROP TRIGGER, or DROP COLUMN ... CASCADE of the protected
-- column or of a context column) is refused: the values would stay
-- encrypted with nothing to read or maintain them.
CREATE FUNCTION kms_pc_on_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    DELETE FROM @extschema@.kms_protected_columns c
    USING pg_event_trigger_dropped_objects() d
    WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND d.objid = c.relid::oid;

    FOR r IN SELECT c.relid, c.trigger_name
             FROM pg_event_trigger_dropped_objects() d
             JOIN @extschema@.kms_protected_columns c
               ON d.object_type = 'trigger'
              AND c.trigger_name = d.address_names[3]
              AND c.relid::oid = to_regclass(format('%I.%I', d.address_names[1], d.address_names[2]))
    LOOP
        RAISE EXCEPTION 'cannot drop trigger "%" on "%": it protects a column encrypted by kms_pg',
            r.trigger_name, r.relid
            USING ERRCODE = 'dependent_objects_still_exist',
                  DETAIL = 'The protected column, its context columns and its blind index column can only go with kms_unprotect_column() or DROP TABLE.',
                  HINT = 'Call kms_unprotect_column() first.';
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION kms_pc_on_sql_drop() FROM PUBLIC;

CREATE EVENT TRIGGER kms_pg_columns_sql_drop ON sql_drop
    EXECUTE FUNCTION kms_pc_on_sql_drop();

-- ALTER TABLE of a protected table (rename, add or drop other columns,
-- owner): bring its decrypting view up to date.  Runs as the caller, who
-- owns the table.
CREATE FUNCTION kms_pc_on_alter_table()
RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    -- kms_protect_column / kms_unprotect_column maintain the view themselves.
    IF current_setting('kms_pg_internal.columns_ddl', true) = 'on' THEN
        RETURN;
    END IF;
    FOR r IN SELECT DISTINCT c.relid::oid AS relid
             FROM pg_event_trigger_ddl_commands() d
             JOIN @extschema@.kms_protected_columns c ON c.relid::oid = d.objid
             WHERE d.classid = 'pg_class'::regclass
    LOOP
        PERFORM @extschema@.kms_pc_ensure_view(r.relid);
    END LOOP;
END
$$;

CREATE EVENT TRIGGER kms_pg_columns_alter_table ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION kms_pc_on_alter_table();
-- Key rotation of whole columns: rewrap online in committed batches,
-- progress another session can watch, and per-key usage counts that tell
-- a DBA when a key is no longer needed (docs/rotation.md is the runbook).
--
-- Everything here is plain SQL over kms_rewrap() (STABLE),
-- kms_ciphertext_info() and kms_is_ciphertext() (IMMUTABLE), so each
-- batch is an ordinary UPDATE: row locks make it safe against concurrent
-- writers, and on Citus it runs as a distributed UPDATE per shard.
--
-- The procedure has no SET clause (that would forbid its COMMITs), so
-- every name in its dynamic SQL is schema-qualified with @extschema@.

-- One row per run of kms_rotate_column(); committed with every batch.
CREATE TABLE kms_rotation_progress (
    run_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tbl             text NOT NULL,
    col             name NOT NULL,
    provider        text NOT NULL,
    new_key_id      text NOT NULL,
    resolved_key_id text,
    rows_done       bigint NOT NULL DEFAULT 0,
    rows_total      bigint,
    batches         int NOT NULL DEFAULT 0,
    passes          int NOT NULL DEFAULT 0,
    started         timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated         timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished        timestamptz,
    pid             int NOT NULL DEFAULT pg_backend_pid(),
    backend_start   timestamptz
);
COMMENT ON TABLE kms_rotation_progress IS
  'kms_rotate_column() runs: rows rewrapped so far, committed per batch (see kms_rotation_status)';
COMMENT ON COLUMN kms_rotation_progress.new_key_id IS
  'the key as given (alias, id or ARN)';
COMMENT ON COLUMN kms_rotation_progress.resolved_key_id IS
  'the key id the provider records in rewrapped values (local: key uuid; aws: key ARN)';

-- A run is "running" only while its backend (same pid and start time, so
-- a reused pid does not count) is executing a statement.
CREATE VIEW kms_rotation_status AS
SELECT p.run_id, p.tbl, p.col, p.provider, p.new_key_id, p.resolved_key_id,
       CASE WHEN p.finished IS NOT NULL THEN 'finished'
            WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                         WHERE a.pid = p.pid AND a.backend_start = p.backend_start
                           AND a.state = 'active' AND a.pid <> pg_backend_pid()) THEN 'running'
            ELSE 'stopped' END AS state,
       p.rows_done, p.rows_total,
       round(100.0 * p.rows_done / nullif(p.rows_total, 0), 1) AS percent_done,
       p.batches, p.passes, p.started, p.updated, p.finished,
       coalesce(p.finished, p.updated) - p.started AS elapsed,
       CASE WHEN p.finished IS NULL AND p.rows_done > 0 AND p.rows_total > p.rows_done
                 AND p.updated > p.started
            THEN (p.updated - p.started) * ((p.rows_total - p.rows_done)::float8 / p.rows_done)
       END AS estimated_remaining,
       p.pid
FROM kms_rotation_progress p;
COMMENT ON VIEW kms_rotation_status IS
  'kms_rotate_column() runs with state (running, stopped, finished), percent done and time left';

-- Per provider and key id: how many values of tbl.col it protects and
-- through how many distinct data keys.  Values that are not kms_pg
-- ciphertexts are counted in a row with provider and key_id NULL.
CREATE FUNCTION kms_key_usage(tbl regclass, col name)
RETURNS TABLE (provider text, key_id text, "values" bigint, deks bigint)
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = tbl AND a.attname = col
                     AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist', col, tbl
            USING ERRCODE = 'undefined_column';
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT i.provider, i.key_id, count(*), count(DISTINCT i.dek_id)'
        ' FROM %2$s t LEFT JOIN LATERAL @extschema@.kms_ciphertext_info('
        '     CASE WHEN @extschema@.kms_is_ciphertext(t.%1$I) THEN t.%1$I END) i ON true'
        ' WHERE t.%1$I IS NOT NULL'
        ' GROUP BY 1, 2 ORDER BY 1, 2', col, tbl);
END
$$;
COMMENT ON FUNCTION kms_key_usage(regclass, name) IS
  'values and distinct data keys of a column per provider and key id (before disabling or deleting a key)';

-- Rewrap every value of tbl.col under new_key_id (default kms_pg.key_id)
-- with the current kms_pg.provider, batch_size rows per transaction, in
-- primary-key order.  See docs/rotation.md for the guarantees.
CREATE PROCEDURE kms_rotate_column(tbl regclass, col name, new_key_id text DEFAULT NULL,
                                   batch_size int DEFAULT 10000,
                                   context_expr text DEFAULT NULL,
                                   max_batches int DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
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
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_batches IS NOT NULL AND max_batches < 1 THEN
        RAISE EXCEPTION 'max_batches must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT c.relkind INTO v_relkind FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    IF v_relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'kms_rotate_column: "%" is not a table', tbl
            USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT a.atttypid INTO v_coltype FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_coltype IS NULL THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist', col, tbl
            USING ERRCODE = 'undefined_column';
    END IF;
    IF v_coltype <> 'bytea'::regtype THEN
        RAISE EXCEPTION 'kms_rotate_column: column "%" of "%" is of type %, not bytea',
            col, tbl, v_coltype::regtype USING ERRCODE = 'datatype_mismatch';
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
        RAISE EXCEPTION 'kms_rotate_column: table "%" has no primary key', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Batches are primary-key ranges; add a primary key, or rotate with a single UPDATE ... SET col = kms_rewrap(col, ...).';
    END IF;
    IF col = ANY (pk_names) THEN
        RAISE EXCEPTION 'kms_rotate_column: column "%" is part of the primary key of "%"', col, tbl
            USING ERRCODE = 'feature_not_supported';
    END IF;
    SELECT string_agg(format('t.%I', n), ', ' ORDER BY o),
           'ARRAY[' || string_agg(format('s.%I::text', n), ', ' ORDER BY o) || ']',
           string_agg(format('s.%I DESC', n), ', ' ORDER BY o),
           string_agg(format('$1[%s]::%s', o, pk_types[o]), ', ' ORDER BY o),
           string_agg(format('$5[%s]::%s', o, pk_types[o]), ', ' ORDER BY o)
      INTO pk_cols, pk_arr, pk_desc, lo_row, hi_row
    FROM unnest(pk_names) WITH ORDINALITY AS u(n, o);
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
               WHERE s.tbl = kms_rotate_column.tbl::text AND s.col = kms_rotate_column.col AND s.state = 'running'
                 AND s.pid <> pg_backend_pid()) THEN
        RAISE EXCEPTION 'kms_rotate_column: a rotation of %.% is already running', tbl, col
            USING ERRCODE = 'object_in_use',
                  HINT = 'See the kms_rotation_status view.';
    END IF;

    INSERT INTO @extschema@.kms_rotation_progress
        (tbl, col, provider, new_key_id, resolved_key_id, backend_start)
    VALUES (tbl::text, col, v_provider, v_key, v_resolved,
            (SELECT a.backend_start FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_backend_pid()))
    RETURNING run_id INTO v_run;
    -- Makes the run visible, and fails fast inside a transaction block.
    COMMIT;

    -- kms_ciphertext_key_id/_provider only read the header (NULL for values
    -- that are not kms_pg ciphertexts): cheap enough to run per row.
    needs := format('@extschema@.kms_ciphertext_key_id(t.%1$I) IS NOT NULL'
                    ' AND (@extschema@.kms_ciphertext_provider(t.%1$I),'
                    '      @extschema@.kms_ciphertext_key_id(t.%1$I)) IS DISTINCT FROM ($2, $3)',
                    col);

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

    upd_sql := format('UPDATE %s t SET %I = @extschema@.kms_rewrap(t.%I, $4, %s) WHERE %s',
                      tbl, col, col, v_ctx, needs);

    LOOP
        -- One pass over the key range; the next pass picks up values that
        -- concurrent writers stored under another key meanwhile.
        EXECUTE format('SELECT count(*) FROM %s t WHERE %s', tbl, needs)
            INTO v_pending USING NULL::text[], v_provider, v_resolved;
        EXIT WHEN v_pending = 0;
        IF v_pass = max_passes THEN
            RAISE WARNING 'kms_rotate_column: % values of %.% are still under another key after % passes',
                v_pending, tbl, col, max_passes
                USING HINT = 'Writers are still encrypting under the old key: point them to the new key (kms_pg.key_id), then run kms_rotate_column again.';
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
            EXECUTE upd_sql
                    || CASE WHEN v_lo IS NULL THEN '' ELSE format(' AND %s > %s', pk_row, lo_row) END
                    || CASE WHEN v_last THEN '' ELSE format(' AND %s <= %s', pk_row, hi_row) END
                USING v_lo, v_provider, v_resolved, v_target, v_hi;
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_done := v_done + v_n;
            v_pass_rows := v_pass_rows + v_n;
            v_batches := v_batches + 1;
            UPDATE @extschema@.kms_rotation_progress
               SET rows_done = v_done, batches = v_batches, updated = clock_timestamp()
             WHERE run_id = v_run;
            RAISE NOTICE 'kms_rotate_column: % of % rows', v_done, v_total;
            COMMIT;
            EXIT WHEN v_last;
            v_lo := v_hi;
        END LOOP;
    END LOOP;

    EXECUTE format('SELECT count(*) FROM %1$s t WHERE t.%2$I IS NOT NULL'
                   ' AND NOT @extschema@.kms_is_ciphertext(t.%2$I)', tbl, col)
        INTO v_other;
    IF v_other > 0 THEN
        RAISE WARNING 'kms_rotate_column: % values of %.% are not kms_pg ciphertexts and were left as they are',
            v_other, tbl, col;
    END IF;
    UPDATE @extschema@.kms_rotation_progress
       SET finished = CASE WHEN v_pending = 0 THEN clock_timestamp() END,
           updated = clock_timestamp()
     WHERE run_id = v_run;
    COMMIT;
    IF v_pending = 0 THEN
        RAISE NOTICE 'kms_rotate_column: done, % rows rewrapped under %', v_done, v_key;
    END IF;
END
$$;
COMMENT ON PROCEDURE kms_rotate_column(regclass, name, text, int, text, int) IS
  'rewrap every value of a column under a new key, online, one committed batch at a time';

-- Rotation rewraps data keys and writes progress: a DBA task.
REVOKE ALL ON PROCEDURE kms_rotate_column(regclass, name, text, int, text, int) FROM PUBLIC;
REVOKE ALL ON kms_rotation_progress FROM PUBLIC;
REVOKE ALL ON kms_rotation_status FROM PUBLIC;
-- AWS KMS provider: health check and credential introspection.
-- Superuser only by default (they reveal which AWS identity the server
-- uses and make KMS calls); GRANT EXECUTE to a monitoring role if wanted.

CREATE FUNCTION kms_aws_describe_key(key text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'kms_aws_describe_key'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION kms_aws_describe_key(text) IS
  'AWS KMS DescribeKey for key (default kms_pg.key_id): a health check of endpoint, credentials and key';
REVOKE ALL ON FUNCTION kms_aws_describe_key(text) FROM PUBLIC;

CREATE FUNCTION kms_aws_credentials_info(
    OUT source text, OUT origin text, OUT access_key_id text,
    OUT session_token boolean, OUT expiration timestamptz, OUT fetched_at timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_aws_credentials_info'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION kms_aws_credentials_info() IS
  'Which AWS credential source this backend uses (access key id masked, no secrets)';
REVOKE ALL ON FUNCTION kms_aws_credentials_info() FROM PUBLIC;

CREATE FUNCTION kms_aws_backend_stats(
    OUT attempts bigint, OUT retries bigint, OUT errors bigint, OUT mrk_fallbacks bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_aws_backend_stats'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION kms_aws_backend_stats() IS
  'AWS KMS HTTP attempts, retries, errors and multi-Region fallbacks of this backend';
