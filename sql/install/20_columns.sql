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
-- Nothing here is SECURITY DEFINER.  The trigger and kms_blind_index()
-- are C (src/kms_columns.c) running as the writer: the input and output
-- functions of the column's type, its domain CHECKs and casts run with the
-- writer's own privileges.  What the writer may lack -- opening a value to
-- seal it again when a context column changes, checking that a ciphertext
-- written in belongs to its row, unwrapping the blind-index key -- is done
-- in C on that row only, and no plaintext is handed back (see the security
-- section of docs/column-encryption.md).
--
-- A protected column has type kms_sealed: a kms_pg ciphertext, or, on its
-- way to the trigger, the plaintext a writer sent (kms_columns.h).  Writers
-- write values of the column's original type: assignment casts from text,
-- varchar, char, bytea, integers, numeric, floats, boolean, dates and
-- times, uuid and json(b) keep what the driver sent, byte for byte, and the
-- trigger reads it with the original type's input function.

-- @begin kms_sealed (also in the 1.0--1.1 update: sql/update/1.0--1.1/20_columns.sql)
CREATE TYPE kms_sealed;
CREATE FUNCTION kms_sealed_in(cstring) RETURNS kms_sealed
AS 'MODULE_PATHNAME', 'kms_sealed_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION kms_sealed_out(kms_sealed) RETURNS cstring
AS 'MODULE_PATHNAME', 'kms_sealed_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION kms_sealed_recv(internal) RETURNS kms_sealed
AS 'MODULE_PATHNAME', 'kms_sealed_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION kms_sealed_send(kms_sealed) RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_sealed_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE TYPE kms_sealed (
    INPUT = kms_sealed_in, OUTPUT = kms_sealed_out,
    RECEIVE = kms_sealed_recv, SEND = kms_sealed_send,
    INTERNALLENGTH = VARIABLE, STORAGE = extended, CATEGORY = 'U'
);
COMMENT ON TYPE kms_sealed IS
  'a protected column''s value: a kms_pg ciphertext (plaintext written to it is sealed by the column''s trigger)';

CREATE FUNCTION kms_sealed(text) RETURNS kms_sealed
AS 'MODULE_PATHNAME', 'kms_sealed_from_text' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION kms_sealed(bytea) RETURNS kms_sealed
AS 'MODULE_PATHNAME', 'kms_sealed_from_bytea' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
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
-- @end kms_sealed

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
    format           smallint CONSTRAINT kms_protected_columns_format_check CHECK (format IN (1, 2)),
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
-- kms_unprotect_column run as the caller); everyone may read them, and
-- delete a row whose table is gone (the sql_drop event trigger runs as
-- whoever dropped it, after the table has left pg_class).
ALTER TABLE kms_protected_columns ENABLE ROW LEVEL SECURITY;
CREATE POLICY kms_protected_columns_read ON kms_protected_columns FOR SELECT USING (true);
CREATE POLICY kms_protected_columns_orphan ON kms_protected_columns FOR DELETE
    USING (NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) relid));
CREATE POLICY kms_protected_columns_owner ON kms_protected_columns FOR ALL
    USING (pg_catalog.pg_has_role(current_user,
             (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = relid), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role(current_user,
             (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = relid), 'USAGE'));
GRANT SELECT, INSERT, UPDATE, DELETE ON kms_protected_columns TO PUBLIC;

-- Backends cache these rows (src/kms_columns.c); any change to them, by any
-- path and in any session, drops those caches when it commits.  ALWAYS:
-- also under session_replication_role = replica.
CREATE FUNCTION kms_pc_catalog_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'kms_pc_catalog_changed'
LANGUAGE C;
CREATE TRIGGER kms_pc_catalog_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON kms_protected_columns
    FOR EACH STATEMENT EXECUTE FUNCTION kms_pc_catalog_changed();
ALTER TABLE kms_protected_columns ENABLE ALWAYS TRIGGER kms_pc_catalog_changed;

-- Citus (docs/citus.md).  Dormant without the citus extension: the Citus
-- catalogs are named only in dynamic SQL, run after pg_extension shows citus.
-- True when the citus extension is installed and tbl is a Citus table
-- (distributed, reference or added to Citus's metadata).
CREATE FUNCTION kms_pc_citus_table(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p'
            ' WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1)' INTO r USING tbl;
    RETURN r;
END
$$;

-- True on a Citus worker (the citus extension installed, a group id other
-- than 0, not the coordinator): its event triggers leave protected columns
-- to the coordinator.
CREATE FUNCTION kms_pc_citus_worker()
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT NOT pg_catalog.citus_is_coordinator() AND'
            ' COALESCE((SELECT g.groupid FROM pg_catalog.pg_dist_local_group g LIMIT 1), 0) OPERATOR(pg_catalog.<>) 0'
        INTO r;
    RETURN r;
END
$$;

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

-- The context of a protected column as key/value arguments for
-- kms_decrypt_pairs() over the row alias alias_name (NULL: bare column
-- names, as ALTER TABLE ... USING needs): the same canonical context as
-- kms_pc_context_sql, without a jsonb per row.
CREATE FUNCTION kms_pc_pairs_sql(column_id uuid, context_keys text[], context_cols name[],
                                 alias_name text DEFAULT 't')
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog
AS $$
    SELECT format('%L::text, %L::text%s', 'kms_pg:column', column_id::text,
                  coalesce(string_agg(format(', %L::text, %s', k,
                                             CASE WHEN alias_name IS NULL THEN format('%I', c)
                                                  ELSE format('%I.%I', alias_name, c) END),
                                      '' ORDER BY i), ''))
    FROM unnest(context_keys, context_cols) WITH ORDINALITY AS u(k, c, i)
$$;

-- The plaintext of a protected value, as an SQL expression: bytea as is,
-- other types from their UTF-8 text form.  pairs_sql: the context from
-- kms_pc_pairs_sql.  for_view: through kms_pc_view_decrypt(), which gives
-- NULL to a role that may not execute kms_decrypt_pairs() (writers and
-- auditors see NULL, and can still UPDATE and DELETE through the view).
CREATE FUNCTION kms_pc_decrypt_sql(p @extschema@.kms_protected_columns, col name, pairs_sql text,
                                   alias_name text DEFAULT 't', for_view boolean DEFAULT false)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
    SELECT CASE
        WHEN p.original_type = 'bytea'::regtype
            THEN format('@extschema@.%s(%s, %s)', fn, ref, pairs_sql)
        -- the views: text straight from C (UTF-8 to the database encoding)
        WHEN for_view AND p.original_type = 'text'::regtype
            THEN format('(@extschema@.kms_pc_view_decrypt_text(%s, %s) COLLATE pg_catalog."default")',
                        ref, pairs_sql)
        WHEN for_view
            THEN format('(@extschema@.kms_pc_view_decrypt_text(%s, %s) COLLATE pg_catalog."default")::%s',
                        ref, pairs_sql, format_type(p.original_type, p.original_typmod))
        WHEN p.original_type = 'text'::regtype
            THEN format('(pg_catalog.convert_from(@extschema@.%s(%s, %s), %L) COLLATE pg_catalog."default")',
                        fn, ref, pairs_sql, 'UTF8')
        ELSE format('(pg_catalog.convert_from(@extschema@.%s(%s, %s), %L) COLLATE pg_catalog."default")::%s',
                    fn, ref, pairs_sql, 'UTF8', format_type(p.original_type, p.original_typmod))
    END
    FROM (SELECT CASE WHEN alias_name IS NULL THEN format('%I', col)
                      ELSE format('%I.%I', alias_name, col) END,
                 CASE WHEN for_view THEN 'kms_pc_view_decrypt' ELSE 'kms_decrypt_pairs' END) AS r(ref, fn)
$$;

-- kms_decrypt_pairs() for whoever may execute it, NULL for anyone else.
CREATE FUNCTION kms_pc_view_decrypt(ciphertext bytea, VARIADIC context "any")
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_pc_view_decrypt'
LANGUAGE C STABLE PARALLEL SAFE;

-- The same for every other original type, as text in the database
-- encoding (the view casts it to the original type): the context columns
-- converted as the trigger converts them, constants once per query.
CREATE FUNCTION kms_pc_view_decrypt_text(ciphertext bytea, VARIADIC context "any")
RETURNS text
AS 'MODULE_PATHNAME', 'kms_pc_view_decrypt_text'
LANGUAGE C STABLE PARALLEL SAFE;

-- The generated trigger (one generic function for every protected column),
-- in C, running as the writer (src/kms_columns.c):
--   NULL                      -> NULL (blind index NULL)
--   plaintext                 -> read by the original type's input function,
--                                written in its canonical text form (UTF-8;
--                                ISO dates, UTC, postgres intervals), sealed
--                                under the row's context
--   UPDATE, value unchanged   -> kept; sealed again under the new context if
--                                a context column changed
--   any other ciphertext      -> kept if it opens under the row's context
--                                (COPY/restore of encrypted data, rotation),
--                                else an error: never stored unreadable
CREATE FUNCTION kms_protected_column_trigger()
RETURNS trigger
AS 'MODULE_PATHNAME', 'kms_protected_column_trigger'
LANGUAGE C;
-- EXECUTE stays with PUBLIC: CREATE TRIGGER needs it.  It runs as the
-- writer; a table owner attaching it to a table of their own gains nothing
-- kms_protect_column would not give them (the catalog row is theirs, its
-- column_id unique, and it is the context of every value and key it opens).

-- INSTEAD OF trigger of the decrypting views, in C (src/kms_columns.c):
-- the row written to the table as the caller (the caller's privileges on
-- the table decide; the table's trigger encrypts): INSERT and UPDATE with
-- one executor state per statement and the executor's single-row
-- routines, or, where that would differ from an INSERT or UPDATE of the
-- table (row security, rules, statement triggers...) and for DELETE, the
-- same statement through a plan prepared once per statement.  Plaintext goes to the table as
-- kms_sealed plaintext: bytea and text as they are, other types in their
-- text form under the session's settings.  UPDATE and DELETE find the row
-- by primary key.  RETURNING shows protected columns only to roles that
-- may execute kms_decrypt_pairs().
CREATE FUNCTION kms_protected_view_trigger()
RETURNS trigger
AS 'MODULE_PATHNAME', 'kms_protected_view_trigger'
LANGUAGE C;

-- UPDATE and DELETE through the decrypting view of a Citus table.  Citus
-- plans no write to a view (its INSTEAD OF trigger never runs: "cannot
-- modify views when the query contains citus tables"), so on a Citus table
-- the view also gets two rules (kms_pc_citus_view_rules) that turn the
-- write into an UPDATE or DELETE of the table, found by primary key, which
-- Citus plans on the shards; the table's trigger seals on the workers as
-- the writer.  A rule's table is accessed with its owner's privileges, so
-- the rule first calls kms_pc_view_write_check(), which runs as the caller
-- and checks the caller's own privileges on the table.  The rules have no
-- RETURNING: UPDATE/DELETE ... RETURNING through such a view is refused.
-- The view of a Citus table is a security_barrier view: the planner then
-- keeps it a subquery instead of flattening its STABLE decrypt calls into
-- the rule's SET list, where Citus refuses STABLE functions with column
-- arguments.  Citus deparses only FROM items marked inFromCl, which the
-- view's entry (the rule's OLD and NEW) is not: kms_pg's planner hook
-- marks it (src/kms_citus.c, kms_citus_planner).
CREATE FUNCTION kms_pc_view_assign(newval anyelement, oldval anyelement, cur @extschema@.kms_sealed)
RETURNS @extschema@.kms_sealed
AS 'MODULE_PATHNAME', 'kms_pc_view_assign'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

-- The caller's privileges for a write through a rule of the view: priv
-- ('UPDATE' on every column in cols, or 'DELETE') on tbl.  Tables with row
-- security are refused (the rule would apply the owner's policies).
CREATE FUNCTION kms_pc_view_write_check(tbl regclass, priv text, cols name[])
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
BEGIN
    IF (SELECT c.relrowsecurity FROM pg_catalog.pg_class c WHERE c.oid = tbl) THEN
        RAISE EXCEPTION 'kms_pg: cannot % through the decrypting view of Citus table %: it has row-level security', priv, tbl
              USING ERRCODE = 'feature_not_supported',
                    HINT = 'Write to the table itself.';
    END IF;
    IF priv = 'DELETE' AND NOT pg_catalog.has_table_privilege(tbl, 'DELETE') OR
       priv = 'UPDATE' AND EXISTS (SELECT 1 FROM unnest(cols) AS u(c)
                                    WHERE NOT pg_catalog.has_column_privilege(tbl, u.c, 'UPDATE')) THEN
        RAISE EXCEPTION 'permission denied for table %', tbl
              USING ERRCODE = 'insufficient_privilege',
                    DETAIL = format('%s through the decrypting view of a Citus table needs %s on the table%s.',
                                    priv, priv, CASE WHEN priv = 'UPDATE' THEN ' (every column but the distribution column and generated ones)' ELSE '' END);
    END IF;
    RETURN true;
END
$$;

-- The rules of the decrypting view vschema.vname of the Citus table tbl
-- (made again on every call; none without a primary key).  UPDATE: every
-- writable column but the distribution column (Citus does not change it;
-- a changed one matches no row) and the blind index; protected columns
-- through kms_pc_view_assign (unchanged: the stored ciphertext).
CREATE FUNCTION kms_pc_citus_view_rules(tbl oid, vschema name, vname name)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    distcol name;
    prot    name[] := '{}';
    skip    name[] := '{}';
    n       name[];
    pr      @extschema@.kms_protected_columns;
    tref    text := format('%I', (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = tbl));
    sets    text;
    cols    name[];
    keyq    text;
    updq    text;
    r       record;
BEGIN
    FOR r IN SELECT w.rulename FROM pg_catalog.pg_rewrite w
             WHERE w.ev_class = format('%I.%I', vschema, vname)::pg_catalog.regclass
               AND w.rulename IN ('kms_update', 'kms_delete') LOOP
        EXECUTE format('DROP RULE %I ON %I.%I', r.rulename, vschema, vname);
    END LOOP;
    SELECT string_agg(format('%s.%I OPERATOR(pg_catalog.=) old.%I', tref, a.attname, a.attname), ' AND ')
      INTO keyq
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF keyq IS NULL THEN
        RETURN;     -- as the INSTEAD OF trigger: UPDATE and DELETE need a primary key
    END IF;
    EXECUTE 'SELECT pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)'
            ' FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1 AND p.partkey IS NOT NULL'
       INTO distcol USING tbl;
    FOR pr IN SELECT * FROM @extschema@.kms_protected_columns c WHERE c.relid = tbl LOOP
        n := @extschema@.kms_pc_attnames(pr.relid, pr.trigger_name);
        prot := prot || n[1];
        IF pr.blind_index_key IS NOT NULL THEN
            skip := skip || n[cardinality(n)];
        END IF;
    END LOOP;
    SELECT string_agg(CASE WHEN a.attname = ANY (prot)
                           THEN format('%I = @extschema@.kms_pc_view_assign(new.%I, old.%I, %s.%I)',
                                       a.attname, a.attname, a.attname, tref, a.attname)
                           ELSE format('%I = new.%I', a.attname, a.attname) END,
                      ', ' ORDER BY a.attnum),
           array_agg(a.attname ORDER BY a.attnum)
      INTO sets, cols
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
      AND a.attname IS DISTINCT FROM distcol AND NOT a.attname = ANY (skip);
    updq := keyq;
    IF distcol IS NOT NULL THEN
        updq := updq || format(' AND %s.%I OPERATOR(pg_catalog.=) new.%I', tref, distcol, distcol);
    END IF;
    EXECUTE format('CREATE RULE kms_update AS ON UPDATE TO %I.%I DO INSTEAD UPDATE %s SET %s WHERE %s'
                   ' AND @extschema@.kms_pc_view_write_check(%L::pg_catalog.regclass, %L, %L::pg_catalog.name[])',
                   vschema, vname, tbl::regclass, sets, updq, tbl::regclass, 'UPDATE', cols);
    EXECUTE format('CREATE RULE kms_delete AS ON DELETE TO %I.%I DO INSTEAD DELETE FROM %s WHERE %s'
                   ' AND @extschema@.kms_pc_view_write_check(%L::pg_catalog.regclass, %L, %L::pg_catalog.name[])',
                   vschema, vname, tbl::regclass, keyq, tbl::regclass, 'DELETE', '{}');
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
    citus   boolean := @extschema@.kms_pc_citus_table(tbl);
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
                @extschema@.kms_pc_pairs_sql(pr.column_id, pr.context_keys,
                                               n[2:cardinality(pr.context_keys) + 1], 't'),
                't', true));
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
            EXECUTE format('CREATE OR REPLACE VIEW %I.%I WITH (security_invoker = true%s) AS SELECT %s FROM %s t',
                           vschema, vname,
                           CASE WHEN citus THEN ', security_barrier = true' ELSE '' END, sel, tbl::regclass);
        EXCEPTION WHEN invalid_table_definition THEN
            -- A column changed type: only a new view will do.
            EXECUTE format('DROP VIEW %s', vrel::regclass);
            vrel := NULL;
        END;
    END IF;
    IF vrel IS NULL THEN
        EXECUTE format('CREATE VIEW %I.%I WITH (security_invoker = true%s) AS SELECT %s FROM %s t',
                       vschema, vname,
                           CASE WHEN citus THEN ', security_barrier = true' ELSE '' END, sel, tbl::regclass);
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
    -- A Citus table: UPDATE and DELETE through the view as rules (above).
    IF citus THEN
        PERFORM @extschema@.kms_pc_citus_view_rules(tbl, vschema, vname);
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
    v_name      text := tbl::text;  -- as the caller's search_path shows it
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
    v_leaf      oid;
    v_citus     boolean;
BEGIN
    -- Names resolve in pg_catalog only (a procedure that COMMITs cannot
    -- have SET search_path): set again after every COMMIT.
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT c.relkind, n.nspname, c.relname INTO v_relkind, v_nsp, v_relname
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = tbl;
    IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', v_name USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (SELECT c.relispartition FROM pg_catalog.pg_class c WHERE c.oid = tbl) THEN
        RAISE EXCEPTION 'kms_protect_column: "%" is a partition', v_name
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Protect the partitioned table: every partition, including those attached later, is protected with it.';
    ELSIF v_relkind NOT IN ('r', 'p') OR v_relkind IS NULL THEN
        RAISE EXCEPTION 'kms_protect_column: "%" is not a table', v_name
            USING ERRCODE = 'wrong_object_type';
    END IF;
    -- A Citus table (only with the citus extension): its shards get copies
    -- of the trigger, and the workers a copy of the catalog row
    -- (docs/citus.md).
    v_citus := @extschema@.kms_pc_citus_table(tbl);
    IF v_citus THEN
        -- Citus runs DDL on a view (dropped and made again below) only
        -- over one connection per node, also for what came before it in
        -- the transaction.
        PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
    IF v_citus AND v_relkind = 'p' THEN
        RAISE EXCEPTION 'kms_protect_column: "%" is a partitioned Citus table', v_name
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Protected columns on Citus are verified for distributed and reference tables that are not partitioned.';
    END IF;
    IF (SELECT c.relpersistence FROM pg_catalog.pg_class c WHERE c.oid = tbl) = 't' THEN
        -- A temp table goes at session end without event triggers, which
        -- would leave its catalog row behind.
        RAISE EXCEPTION 'kms_protect_column: "%" is a temporary table', v_name
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Temporary tables are dropped at session end without a DROP event, which would leave a catalog row behind.';
    END IF;
    SELECT a.attnum, a.atttypid, a.atttypmod, a.attgenerated, a.attidentity, a.atthasdef
      INTO v_att
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist', col, v_name
            USING ERRCODE = 'undefined_column';
    END IF;

    -- Already protected: finish the encryption of its rows (step 2 and 3).
    SELECT * INTO v_exists FROM @extschema@.kms_protected_columns c
    WHERE c.relid = tbl AND (@extschema@.kms_pc_attnames(c.relid, c.trigger_name))[1] = col;
    IF FOUND THEN
        v_chk := v_exists.check_name;
        IF (SELECT k.convalidated FROM pg_catalog.pg_constraint k
            WHERE k.conrelid = tbl AND k.conname = v_chk) THEN
            RAISE EXCEPTION 'kms_protect_column: column "%" of "%" is already protected', col, v_name
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Use kms_rotate_column() to move it to another key, kms_unprotect_column() to undo.';
        END IF;
        RAISE NOTICE 'kms_protect_column: %.% is already protected; encrypting rows left in plaintext', tbl, col;
    ELSE
        IF v_att.attgenerated <> '' OR v_att.attidentity <> '' THEN
            RAISE EXCEPTION 'kms_protect_column: column "%" of "%" is a generated or identity column', col, v_name
                USING ERRCODE = 'feature_not_supported';
        END IF;
        SELECT array_agg(a.attname) INTO v_pk
        FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
          ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = tbl AND i.indisprimary;
        IF col = ANY (v_pk) THEN
            RAISE EXCEPTION 'kms_protect_column: column "%" is part of the primary key of "%"', col, v_name
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
            RAISE EXCEPTION 'kms_protect_column: column "%" of "%" is a context or blind index column of another protected column', col, v_name
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
                RAISE EXCEPTION 'column "%" of relation "%" does not exist', v_c, v_name
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

        -- Every value is sealed under its row's context columns: none may be
        -- NULL where the value is not (checked before anything changes).
        IF cardinality(v_ctx) > 0 THEN
            EXECUTE format('SELECT count(*) FROM %s t WHERE t.%I IS NOT NULL AND (%s)', tbl, col,
                           (SELECT string_agg(format('t.%I IS NULL', x), ' OR ') FROM unnest(v_ctx) x))
                INTO v_n;
            IF v_n > 0 THEN
                RAISE EXCEPTION 'kms_protect_column: % rows of "%" have a NULL context column', v_n, v_name
                    USING ERRCODE = 'null_value_not_allowed',
                          DETAIL = format('Context columns: %s.  A protected value is sealed under them.', array_to_string(v_ctx, ', ')),
                          HINT = 'Fill them in (or make the protected value NULL) first.';
            END IF;
        END IF;

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
                RAISE EXCEPTION 'kms_protect_column: "%" already has the decrypting view %.%', v_name, v_vschema, v_view
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
        -- Citus names a shard's copy <trigger>_<shard id>: short enough
        -- that it is not shortened (the shard's trigger finds its row by it).
        v_trg := @extschema@.kms_pc_free_name(tbl, CASE WHEN v_citus THEN left('kms_protect_' || col, 40)
                                                        ELSE 'kms_protect_' || col END, 't');
        v_chk := @extschema@.kms_pc_free_name(tbl, col || '_kms_ciphertext', 'c');

        -- The column becomes kms_sealed holding the plaintext in its text
        -- form (ISO dates, UTC, shortest exact floats; bytea as is); the
        -- trigger encrypts it below.
        PERFORM set_config('DateStyle', 'ISO, YMD', true),
                set_config('IntervalStyle', 'postgres', true),
                set_config('extra_float_digits', '1', true),
                set_config('TimeZone', 'UTC', true);
        IF v_att.atthasdef THEN
            SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) INTO v_default
            FROM pg_catalog.pg_attrdef d WHERE d.adrelid = tbl AND d.adnum = v_att.attnum;
            EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', tbl, col);
        END IF;
        v_using := CASE WHEN v_att.atttypid IN ('text'::regtype, 'bytea'::regtype) THEN format('%I', col)
                        ELSE format('%I::text', col) END;
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE @extschema@.kms_sealed USING (%s)::@extschema@.kms_sealed',
                       tbl, col, v_using);
        IF v_default IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT (%s)::@extschema@.kms_sealed',
                           tbl, col,
                           CASE WHEN v_att.atttypid IN ('text'::regtype, 'bytea'::regtype) THEN format('(%s)', v_default)
                                ELSE format('(%s)::text', v_default) END);
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
        IF v_citus THEN
            -- The workers get the catalog row before the shards get the
            -- trigger; Citus refuses triggers on its tables without this.
            PERFORM @extschema@.kms_citus_sync_columns(tbl);
            PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
        END IF;
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
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;

    -- Step 2: the trigger encrypts, the UPDATE itself calls nothing volatile.
    -- A Citus table: one distributed UPDATE (Citus plans no ctid ranges);
    -- the shards' triggers encrypt on the workers.
    IF v_citus THEN
        EXECUTE format('UPDATE %1$s SET %2$I = %2$I WHERE %2$I IS NOT NULL AND NOT @extschema@.kms_is_ciphertext(%2$I)',
                       tbl, col);
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_done := v_done + v_n;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;
    -- A partitioned table: each leaf partition in turn (its trigger and
    -- CHECK are clones of the parent's).
    FOR v_leaf IN SELECT tbl::oid WHERE v_relkind = 'r' AND NOT v_citus
                  UNION ALL
                  SELECT pt.relid::oid FROM pg_catalog.pg_partition_tree(tbl) pt
                  WHERE v_relkind = 'p' AND pt.isleaf LOOP
        v_lo := 0;
        v_blocks := pg_catalog.pg_relation_size(v_leaf) / current_setting('block_size')::int;
        SELECT CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN greatest(1, (c.reltuples / c.relpages)::bigint)
                    ELSE 100 END
          INTO v_per FROM pg_catalog.pg_class c WHERE c.oid = v_leaf;
        v_per := greatest(1, batch_size / v_per);           -- blocks per batch
        WHILE v_lo < v_blocks LOOP
            -- The text forms above were written under these settings: read
            -- them back under the same.
            PERFORM set_config('DateStyle', 'ISO, YMD', true),
                    set_config('IntervalStyle', 'postgres', true),
                    set_config('TimeZone', 'UTC', true);
            EXECUTE format('UPDATE %1$s SET %2$I = %2$I WHERE ctid >= $1::text::tid AND ctid < $2::text::tid'
                           ' AND %2$I IS NOT NULL AND NOT @extschema@.kms_is_ciphertext(%2$I)', v_leaf::regclass, col)
                USING format('(%s,0)', v_lo), format('(%s,0)', v_lo + v_per);
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_done := v_done + v_n;
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            v_lo := v_lo + v_per;
        END LOOP;
        -- Rows that moved past the scanned range meanwhile.
        LOOP
            PERFORM set_config('DateStyle', 'ISO, YMD', true),
                    set_config('IntervalStyle', 'postgres', true),
                    set_config('TimeZone', 'UTC', true);
            EXECUTE format('UPDATE %1$s SET %2$I = %2$I WHERE ctid = ANY (ARRAY(SELECT ctid FROM %1$s'
                           ' WHERE %2$I IS NOT NULL AND NOT @extschema@.kms_is_ciphertext(%2$I) LIMIT %3$s))',
                           v_leaf::regclass, col, batch_size);
            GET DIAGNOSTICS v_n = ROW_COUNT;
            EXIT WHEN v_n = 0;
            v_done := v_done + v_n;
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        END LOOP;
    END LOOP;
    -- Step 3: proves that no plaintext is left.
    PERFORM set_config('kms_pg_internal.columns_ddl', 'on', true);
    EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', tbl, v_chk);
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    RAISE NOTICE 'kms_protect_column: %.% protected, % rows encrypted', v_name, col, v_done;
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
    vals  bigint;
BEGIN
    p := @extschema@.kms_pc_lookup(tbl, col);
    IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    n := @extschema@.kms_pc_attnames(p.relid, p.trigger_name);
    nctx := cardinality(p.context_keys);
    IF @extschema@.kms_pc_citus_table(tbl) THEN
        -- Citus refuses DROP TRIGGER on its tables without this, and runs
        -- DDL on a view only over one connection per node, also for what
        -- came before it in the transaction.  The workers' catalog rows go
        -- after the column is decrypted (below).
        PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
        PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
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
    IF p.original_default IS NOT NULL
       OR (SELECT a.atthasdef FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = col) THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', tbl, col);
    END IF;
    -- USING names the row's columns bare.
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s USING %s',
                   tbl, col, format_type(p.original_type, p.original_typmod),
                   @extschema@.kms_pc_decrypt_sql(p, col,
                       @extschema@.kms_pc_pairs_sql(p.column_id, p.context_keys, n[2:nctx + 1], NULL),
                       NULL));
    IF p.original_default IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', tbl, col, p.original_default);
    END IF;
    IF p.blind_index_key IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s DROP COLUMN %I', tbl, n[nctx + 2]);
    END IF;
    PERFORM @extschema@.kms_pc_ensure_view(tbl);
    IF @extschema@.kms_pc_citus_table(tbl) THEN
        PERFORM @extschema@.kms_citus_sync_columns(tbl);
    END IF;
    PERFORM set_config('kms_pg_internal.columns_ddl', '', true);
    RETURN vals;
END
$$;
COMMENT ON FUNCTION kms_unprotect_column(regclass, name) IS
  'decrypt a protected column in place, restore its type, and drop what kms_protect_column made';

-- The search term for a blind index: the same 16 bytes the trigger stores
-- in <col>_bidx for this plaintext.  value is the text form (read by the
-- column's original type as a write would be) or, for bytea columns, the
-- bytes.  C, running as the caller (src/kms_columns.c).
CREATE FUNCTION kms_blind_index(tbl regclass, col name, value text)
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_blind_index'
LANGUAGE C STABLE STRICT;

CREATE FUNCTION kms_blind_index(tbl regclass, col name, value bytea)
RETURNS bytea
AS 'MODULE_PATHNAME', 'kms_blind_index_bytea'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION kms_blind_index(regclass, name, text) IS
  'blind index search term of a protected column: WHERE <col>_bidx = kms_blind_index(tbl, col, value)';

-- The blind index gives equality of plaintexts: searchers get a GRANT.
REVOKE ALL ON FUNCTION kms_blind_index(regclass, name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kms_blind_index(regclass, name, bytea) FROM PUBLIC;

-- A column protected by kms_pg 1.0 has type bytea: plaintext written to it
-- goes through bytea input (a string "\x41" is stored as "A").  This moves
-- it to kms_sealed, keeping every stored ciphertext byte for byte, the
-- trigger (same name, same columns), CHECK and catalog row.  Runs as the
-- caller, who must own the table.  Returns false when there was nothing to
-- do.
CREATE FUNCTION kms_pc_upgrade_column(tbl regclass, col name)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p     @extschema@.kms_protected_columns;
    n     name[];
    def   text;
BEGIN
    p := @extschema@.kms_pc_lookup(tbl, col);
    IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col)
       <> 'bytea'::regtype THEN
        RETURN false;
    END IF;
    n := @extschema@.kms_pc_attnames(p.relid, p.trigger_name);
    PERFORM set_config('kms_pg_internal.columns_ddl', 'on', true);
    -- The trigger's column list depends on the column: it goes and comes
    -- back with the catalog row (the sql_drop guard lets it go without one).
    DELETE FROM @extschema@.kms_protected_columns c WHERE c.column_id = p.column_id;
    IF to_regclass(format('%I.%I', p.view_schema, p.view_name)) IS NOT NULL THEN
        EXECUTE format('DROP VIEW %I.%I', p.view_schema, p.view_name);
    END IF;
    EXECUTE format('DROP TRIGGER %I ON %s', p.trigger_name, tbl);
    SELECT pg_get_expr(d.adbin, d.adrelid) INTO def
    FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
    WHERE d.adrelid = tbl AND a.attname = col;
    IF def IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', tbl, col);
    END IF;
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE @extschema@.kms_sealed USING %I::@extschema@.kms_sealed',
                   tbl, col, col);
    IF def IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT (%s)::@extschema@.kms_sealed', tbl, col, def);
    END IF;
    INSERT INTO @extschema@.kms_protected_columns SELECT p.*;
    EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %s ON %s FOR EACH ROW'
                   ' EXECUTE FUNCTION @extschema@.kms_protected_column_trigger()',
                   p.trigger_name,
                   (SELECT string_agg(format('%I', x), ', ' ORDER BY i) FROM unnest(n) WITH ORDINALITY AS u(x, i)),
                   tbl);
    PERFORM @extschema@.kms_pc_ensure_view(tbl);
    PERFORM set_config('kms_pg_internal.columns_ddl', '', true);
    RETURN true;
END
$$;
COMMENT ON FUNCTION kms_pc_upgrade_column(regclass, name) IS
  'move a column protected by kms_pg 1.0 (type bytea) to kms_sealed, keeping its ciphertexts';

-- DROP TABLE: its catalog rows go with it.  Dropping a generated trigger
-- any other way (DROP TRIGGER, or DROP COLUMN ... CASCADE of the protected
-- column or of a context column) is refused: the values would stay
-- encrypted with nothing to read or maintain them.
-- Runs as whoever drops (not SECURITY DEFINER): the catalog rows of a
-- dropped table are deletable by anyone once the table is gone (policy
-- kms_protected_columns_orphan).
CREATE FUNCTION kms_pc_on_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql
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
        -- A Citus worker: DDL comes from the coordinator, which guards it.
        IF @extschema@.kms_pc_citus_worker() THEN
            RETURN;
        END IF;
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
        -- A Citus worker: the coordinator keeps the view (Citus copies it).
        IF @extschema@.kms_pc_citus_worker() THEN
            RETURN;
        END IF;
        PERFORM @extschema@.kms_pc_ensure_view(r.relid);
    END LOOP;
END
$$;

CREATE EVENT TRIGGER kms_pg_columns_alter_table ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION kms_pc_on_alter_table();
