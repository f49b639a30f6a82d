-- 21_columns_security: no code a non-superuser can define runs with more
-- privileges than its caller through a protected column.  The attacker is
-- an ordinary role that owns its tables, domains, types, operators and
-- functions; every one of them logs who it runs as and, when that is a
-- superuser, makes the attacker superuser (the attack of issue 13).  At the
-- end the attacker is not superuser and the log holds only the attacker
-- and the writer it granted to.
SET kms_pg.provider = 'local';
\set SHOW_CONTEXT never
SELECT kms_create_key('alias/regress_col21') IS NOT NULL AS key_created;
SET kms_pg.key_id = 'alias/regress_col21';

-- Nothing of the extension is SECURITY DEFINER.
SELECT count(*) AS security_definer_functions
FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'kms_pg') AND p.prosecdef;

CREATE ROLE regress_atk LOGIN;
CREATE ROLE regress_atk_writer;
CREATE SCHEMA atk AUTHORIZATION regress_atk;
GRANT CREATE ON SCHEMA public TO regress_atk;
GRANT USAGE ON SCHEMA atk TO regress_atk_writer;
GRANT EXECUTE ON FUNCTION kms_blind_index(regclass, name, text) TO regress_atk;
GRANT EXECUTE ON FUNCTION kms_decrypt_pairs(bytea, "any") TO regress_atk;
-- the attacker reads its own values: decrypt on the key (docs/security.md)
SELECT kms_grant_key('alias/regress_col21', 'regress_atk', '{decrypt}');

SET ROLE regress_atk;
CREATE TABLE atk.ran_as (who name, what text);
GRANT INSERT ON atk.ran_as TO PUBLIC;
CREATE FUNCTION atk.evil(what text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO atk.ran_as VALUES (current_user, what);
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        ALTER ROLE regress_atk SUPERUSER;
    END IF;
    RETURN true;
END $$;
-- A domain CHECK, a composite type whose input runs it, an array of it.
CREATE DOMAIN atk.dom AS text CHECK (atk.evil('domain check'));
CREATE TYPE atk.pair AS (a int, b atk.dom);
-- The issue's attack: a pg_temp domain on a temp table.
CREATE DOMAIN pg_temp.tdom AS text CHECK (atk.evil('temp domain check'));
CREATE TEMP TABLE tt (id int PRIMARY KEY, v pg_temp.tdom);
CALL kms_protect_column('pg_temp.tt', 'v', '{id}');
-- Shadowing functions, in pg_temp and in public, of names the 1.0
-- SECURITY DEFINER code called unqualified, and operators.
CREATE FUNCTION pg_temp.format(text, name, name) RETURNS text LANGUAGE sql
    AS $$ SELECT CASE WHEN atk.evil('pg_temp.format') THEN $1 END $$;
CREATE FUNCTION pg_temp.to_regclass(text) RETURNS regclass LANGUAGE sql
    AS $$ SELECT CASE WHEN atk.evil('pg_temp.to_regclass') THEN NULL::regclass END $$;
CREATE FUNCTION public.format(text, regclass, name) RETURNS text LANGUAGE sql
    AS $$ SELECT CASE WHEN atk.evil('public.format') THEN $1 END $$;
CREATE FUNCTION public.convert_from(bytea, name) RETURNS text LANGUAGE sql
    AS $$ SELECT CASE WHEN atk.evil('public.convert_from') THEN 'x' END $$;
CREATE FUNCTION public.decode(text, name) RETURNS bytea LANGUAGE sql
    AS $$ SELECT CASE WHEN atk.evil('public.decode') THEN '\x'::bytea END $$;
CREATE FUNCTION atk.eq(bytea, bytea) RETURNS boolean LANGUAGE sql
    AS $$ SELECT atk.evil('operator') AND $1 OPERATOR(pg_catalog.=) $2 $$;
CREATE FUNCTION atk.eq_sealed(kms_sealed, kms_sealed) RETURNS boolean LANGUAGE sql
    AS $$ SELECT atk.evil('operator on kms_sealed') AND $1::bytea OPERATOR(pg_catalog.=) $2::bytea $$;
CREATE OPERATOR public.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = atk.eq);
CREATE OPERATOR public.= (LEFTARG = kms_sealed, RIGHTARG = kms_sealed, FUNCTION = atk.eq_sealed);
CREATE FUNCTION atk.eq_nt(name, text) RETURNS boolean LANGUAGE sql
    AS $$ SELECT atk.evil('operator on name') AND $1 OPERATOR(pg_catalog.=) $2 $$;
CREATE OPERATOR pg_temp.= (LEFTARG = name, RIGHTARG = text, FUNCTION = atk.eq_nt);
CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = text, FUNCTION = atk.eq_nt);
CREATE FUNCTION public.pg_has_role(name, regrole, text) RETURNS boolean LANGUAGE sql
    AS $$ SELECT atk.evil('public.pg_has_role') $$;

-- The attacker's own table: a domain column, a composite column, a text
-- column with a blind index; every route in and out.
CREATE TABLE atk.t (id int PRIMARY KEY, tenant int NOT NULL, d atk.dom, p atk.pair, s text);
INSERT INTO atk.t VALUES (1, 1, 'one', '(1,one)', 's1'), (2, 1, 'two', '(2,two)', 's2');
CALL kms_protect_column('atk.t', 'd', '{id,tenant}');
CALL kms_protect_column('atk.t', 'p', '{id,tenant}');
CALL kms_protect_column('atk.t', 's', '{id,tenant}', blind_index => true);
INSERT INTO atk.t VALUES (3, 1, 'three', '(3,three)', 's3');
UPDATE atk.t SET tenant = 2 WHERE id = 1;                       -- sealed again
UPDATE atk.t SET d = 'new two', p = '(2,"new two")' WHERE id = 2;
INSERT INTO atk.t_decrypted (id, tenant, d, p, s) VALUES (4, 1, 'four', '(4,four)', 's4');
UPDATE atk.t_decrypted SET d = 'four!', tenant = 3 WHERE id = 4;
SELECT count(*) AS found FROM atk.t WHERE s_bidx = kms_blind_index('atk.t', 's', 's3');
SELECT id, tenant, d, p, s FROM atk.t_decrypted ORDER BY id;
ALTER TABLE atk.t ADD COLUMN extra int;                        -- event trigger
GRANT USAGE ON SCHEMA atk TO regress_atk_writer;
GRANT SELECT (id, tenant), INSERT, UPDATE ON atk.t TO regress_atk_writer;
RESET ROLE;
SET ROLE regress_atk_writer;
INSERT INTO atk.t (id, tenant, d, p, s) VALUES (5, 1, 'five', '(5,five)', 's5');
UPDATE atk.t SET tenant = 9 WHERE id = 5;
RESET ROLE;

-- Forged catalog rows: the attacker's own table cannot borrow a victim
-- column's identity (column_id is unique) nor use its blind-index key
-- (it opens only under the victim's column_id), and a victim's ciphertext
-- does not go into the attacker's table.
CREATE TABLE victim (id int PRIMARY KEY, tenant int NOT NULL, secret text);
INSERT INTO victim VALUES (1, 1, 'victim secret');
CALL kms_protect_column('victim', 'secret', '{id,tenant}', blind_index => true);
GRANT SELECT ON victim TO regress_atk;
SET ROLE regress_atk;
CREATE FUNCTION pg_temp.try(f text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE f;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
CREATE TABLE atk.forged (id int PRIMARY KEY, tenant int NOT NULL, secret kms_sealed, secret_bidx bytea);
SELECT pg_temp.try($$
    INSERT INTO kms_protected_columns (column_id, relid, trigger_name, context_keys, original_type, key_id,
                                       view_schema, view_name, check_name, blind_index_key)
    SELECT column_id, 'atk.forged', 'kms_forged', context_keys, original_type, key_id,
           'atk', 'forged_v', 'forged_chk', blind_index_key
    FROM kms_protected_columns WHERE relid = 'victim'::regclass$$) AS same_column_id;
SELECT pg_temp.try($$
    INSERT INTO kms_protected_columns (column_id, relid, trigger_name, context_keys, original_type, key_id,
                                       view_schema, view_name, check_name, blind_index_key)
    SELECT gen_random_uuid(), 'atk.forged', 'kms_forged', context_keys, original_type, key_id,
           'atk', 'forged_v', 'forged_chk', blind_index_key
    FROM kms_protected_columns WHERE relid = 'victim'::regclass$$) AS own_column_id;
CREATE TRIGGER kms_forged BEFORE INSERT OR UPDATE OF secret, id, tenant, secret_bidx ON atk.forged
    FOR EACH ROW EXECUTE FUNCTION kms_protected_column_trigger();
SELECT pg_temp.try($$INSERT INTO atk.forged (id, tenant, secret) VALUES (1, 1, 'guess')$$) AS blind_index_oracle;
SELECT pg_temp.try($$INSERT INTO atk.forged (id, tenant, secret) SELECT id, tenant, secret FROM victim$$) AS pasted_ciphertext;
-- Nor another role's catalog rows.
SELECT pg_temp.try($$UPDATE kms_protected_columns SET key_id = 'x' WHERE relid = 'victim'::regclass$$) AS update_other;
SELECT count(*) AS victim_rows_unchanged FROM kms_protected_columns
WHERE relid = 'victim'::regclass AND key_id = 'alias/regress_col21';
DROP TABLE atk.forged;
DROP TABLE atk.t CASCADE;                                     -- event trigger
RESET ROLE;

SELECT count(*) AS catalog_rows_left FROM kms_protected_columns
WHERE relid::oid NOT IN (SELECT oid FROM pg_class);

-- A superuser protecting, rotating and unprotecting its own table, with
-- all of the above in public: none of it runs.
CREATE TABLE su_t (id int PRIMARY KEY, tenant int NOT NULL, secret text);
INSERT INTO su_t SELECT g, g % 2, 'su ' || g FROM generate_series(1, 5) g;
CALL kms_protect_column('su_t', 'secret', '{id,tenant}', blind_index => true);
SELECT kms_create_key('alias/regress_col21_b') IS NOT NULL AS key_created;
CALL kms_rotate_column('su_t', 'secret', 'alias/regress_col21_b');
SELECT count(*) AS under_new_key FROM su_t
WHERE kms_ciphertext_key_id(secret) = (SELECT key_id FROM kms_keys WHERE alias = 'alias/regress_col21_b');
SELECT count(*) AS found FROM su_t WHERE secret_bidx = kms_blind_index('su_t', 'secret', 'su 3');
SELECT kms_unprotect_column('su_t', 'secret') AS decrypted;
DROP TABLE su_t;

-- The verdict.
SELECT rolsuper AS attacker_is_superuser FROM pg_roles WHERE rolname = 'regress_atk';
SELECT who, count(*) > 0 AS ran FROM atk.ran_as GROUP BY who ORDER BY who;
SELECT DISTINCT what FROM atk.ran_as ORDER BY what;

DROP TABLE victim CASCADE;
DROP OPERATOR public.= (name, text);
DROP FUNCTION public.pg_has_role(name, regrole, text);
DROP OPERATOR public.= (bytea, bytea);
DROP OPERATOR public.= (kms_sealed, kms_sealed);
DROP FUNCTION public.format(text, regclass, name), public.convert_from(bytea, name), public.decode(text, name);
DROP OPERATOR pg_temp.= (name, text);
DROP SCHEMA atk CASCADE;
REVOKE CREATE ON SCHEMA public FROM regress_atk;
DISCARD TEMP;
REVOKE EXECUTE ON FUNCTION kms_blind_index(regclass, name, text) FROM regress_atk;
REVOKE EXECUTE ON FUNCTION kms_decrypt_pairs(bytea, "any") FROM regress_atk;
DROP ROLE regress_atk, regress_atk_writer;
