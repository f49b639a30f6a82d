--
-- 10_key_grants: per-key privileges (encrypt, decrypt, rewrap, admin) and
-- encryption-context conditions, enforced in the backend where a data key
-- is used.  The function grants still gate the functions; the key grants
-- decide which keys, and which values, a role may use them on.
--
SET kms_pg.provider = 'local';
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '[0-9a-f]{8}-[0-9a-f-]{27}', '<key>', 'g');
END $$;

CREATE FUNCTION pg_temp.try_verbose(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE d text; h text;
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
  RETURN regexp_replace(SQLSTATE || ': ' || SQLERRM || E'\nDETAIL: ' || d || E'\nHINT: ' || h,
                        '[0-9a-f]{8}-[0-9a-f-]{27}', '<key>', 'g');
END $$;

SELECT kms_create_key('alias/regress_kg_a') AS key_a \gset
SELECT kms_create_key('alias/regress_kg_b') AS key_b \gset
CREATE ROLE regress_kg_app;
CREATE ROLE regress_kg_group NOLOGIN;
CREATE ROLE regress_kg_member IN ROLE regress_kg_group;
CREATE ROLE regress_kg_noinherit NOINHERIT IN ROLE regress_kg_group;
CREATE ROLE regress_kg_rot;
GRANT EXECUTE ON FUNCTION kms_decrypt(bytea, jsonb), kms_decrypt_text(bytea, jsonb),
  kms_decrypt_pairs(bytea, "any"), kms_decrypt_text_pairs(bytea, "any"),
  kms_rewrap(bytea, text, jsonb), kms_reencrypt(bytea, jsonb, text)
  TO regress_kg_app, regress_kg_group, regress_kg_member, regress_kg_noinherit, regress_kg_rot;

-- A new key: its creator holds every privilege, PUBLIC encrypt; bound to the uuid.
SELECT key_id = :'key_a' AS by_uuid, alias,
       CASE WHEN grantee = current_user::text THEN '<creator>' ELSE grantee END AS grantee, privileges, condition, granted_by = current_user::text AS granted_by_me
FROM kms_key_grants WHERE key_id = :'key_a' ORDER BY grantee = 'PUBLIC', 1;

SELECT kms_encrypt_text('a-t1', '{"tenant": "t1"}', 'alias/regress_kg_a') AS a_t1,
       kms_encrypt_text('a-t2', '{"tenant": "t2"}', 'alias/regress_kg_a') AS a_t2,
       kms_encrypt_text('a-t1-eu', '{"tenant": "t1", "region": "eu-west-1"}', 'alias/regress_kg_a') AS a_t1_eu,
       kms_encrypt_text('a-t1-us', '{"tenant": "t1", "region": "us-east-1"}', 'alias/regress_kg_a') AS a_t1_us,
       kms_encrypt_text('b', '{}', 'alias/regress_kg_b') AS b \gset

-- 1. No key grant: encrypting is open (PUBLIC encrypt), decrypting is not,
-- on every decrypt path, whatever the function grants say.
SET ROLE regress_kg_app;
SELECT pg_temp.try($$SELECT kms_encrypt_text('x', '{}', 'alias/regress_kg_a')$$) AS encrypt;
SELECT f, pg_temp.try(s) AS outcome FROM (VALUES
  ('kms_decrypt', format($$SELECT kms_decrypt(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')),
  ('kms_decrypt_text', format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')),
  ('kms_decrypt_pairs', format($$SELECT kms_decrypt_pairs(%L::bytea, 'tenant', 't1')$$, :'a_t1')),
  ('kms_decrypt_text_pairs', format($$SELECT kms_decrypt_text_pairs(%L::bytea, 'tenant', 't1')$$, :'a_t1')),
  ('kms_rewrap', format($$SELECT kms_rewrap(%L::bytea, 'alias/regress_kg_a', '{"tenant": "t1"}')$$, :'a_t1')),
  ('kms_reencrypt', format($$SELECT kms_reencrypt(%L::bytea, '{"tenant": "t1"}', 'alias/regress_kg_a')$$, :'a_t1'))
) AS t(f, s);
-- the message names the role and the key, never the value
SELECT pg_temp.try_verbose(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')) AS denial;
-- no admin: no grants, no disabling
SELECT pg_temp.try($$SELECT kms_grant_key('alias/regress_kg_a', 'regress_kg_app')$$) AS grant_without_execute;
RESET ROLE;
GRANT EXECUTE ON FUNCTION kms_grant_key(text, name, text[], jsonb), kms_revoke_key(text, name, text[]),
  kms_disable_key(text) TO regress_kg_app;
SET ROLE regress_kg_app;
SELECT pg_temp.try($$SELECT kms_grant_key('alias/regress_kg_a', 'regress_kg_app')$$) AS grant_without_admin,
       pg_temp.try($$SELECT kms_revoke_key('alias/regress_kg_a', 'public')$$) AS revoke_without_admin,
       pg_temp.try($$SELECT kms_disable_key('alias/regress_kg_a')$$) AS disable_without_admin;
RESET ROLE;

-- 2. Granted, by the key's id: the alias names the same key.
SELECT kms_grant_key(:'key_a', 'regress_kg_app');
SET ROLE regress_kg_app;
SELECT kms_decrypt_text(:'a_t1'::bytea, '{"tenant": "t1"}') AS granted_by_id,
       kms_decrypt_text_pairs(:'a_t2'::bytea, 'tenant', 't2') AS pairs;
-- key B is another key
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea)$$, :'b')) AS other_key;
-- decrypt is not rewrap
SELECT pg_temp.try(format($$SELECT kms_rewrap(%L::bytea, 'alias/regress_kg_a', '{"tenant": "t1"}')$$, :'a_t1')) AS rewrap;
RESET ROLE;

-- 3. Revoked mid-session: the next statement is refused.
SELECT kms_revoke_key('alias/regress_kg_a', 'regress_kg_app') AS revoked_rows;
SET ROLE regress_kg_app;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')) AS after_revoke;
RESET ROLE;

-- 4. Through a group: members with INHERIT, not NOINHERIT ones until SET ROLE.
SELECT kms_grant_key('alias/regress_kg_a', 'regress_kg_group', '{decrypt}');
SET ROLE regress_kg_member;
SELECT kms_decrypt_text(:'a_t1'::bytea, '{"tenant": "t1"}') AS member;
SET ROLE regress_kg_noinherit;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')) AS noinherit;
SET ROLE regress_kg_group;
SELECT kms_decrypt_text(:'a_t1'::bytea, '{"tenant": "t1"}') AS noinherit_as_group;
RESET ROLE;
-- leaving the group takes the privilege away
REVOKE regress_kg_group FROM regress_kg_member;
SET ROLE regress_kg_member;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')) AS left_group;
RESET ROLE;
-- a renamed role keeps its grants (stored as a regrole)
ALTER ROLE regress_kg_group RENAME TO regress_kg_group2;
SELECT grantee, privileges FROM kms_key_grants WHERE key_id = :'key_a' AND grantee LIKE 'regress_kg_group%';
ALTER ROLE regress_kg_group2 RENAME TO regress_kg_group;

-- 5. PUBLIC.
SELECT kms_grant_key('alias/regress_kg_b', 'public', '{decrypt}');
SET ROLE regress_kg_app;
SELECT kms_decrypt_text(:'b'::bytea) AS public_grant;
RESET ROLE;
SELECT kms_revoke_key('alias/regress_kg_b', 'PUBLIC', '{decrypt}') AS revoked_public_decrypt;
SELECT CASE WHEN grantee = current_user::text THEN '<creator>' ELSE grantee END AS grantee, privileges
FROM kms_key_grants WHERE key_id = :'key_b' ORDER BY grantee = 'PUBLIC';

-- 6. Conditions: the tenant the connection set, and a fixed set of regions.
SELECT kms_grant_key('alias/regress_kg_a', 'regress_kg_app', '{decrypt}',
                     '{"tenant": {"setting": "app.tenant"}}');
SET ROLE regress_kg_app;
-- unset: nothing
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')) AS setting_unset;
SET app.tenant = '';
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')) AS setting_empty;
SET app.tenant = 't1';
SELECT kms_decrypt_text(:'a_t1'::bytea, '{"tenant": "t1"}') AS own_tenant,
       kms_decrypt_text_pairs(:'a_t1_eu'::bytea, 'tenant', 't1', 'region', 'eu-west-1') AS own_tenant_pairs;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t2"}')$$, :'a_t2')) AS other_tenant,
       pg_temp.try(format($$SELECT kms_decrypt_text_pairs(%L::bytea, 'tenant', 't2')$$, :'a_t2')) AS other_tenant_pairs;
-- lying about the context does not help: the context is the AAD
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t2')) AS forged_context;
-- the setting is read once per statement (as current_setting() is STABLE):
-- a set_config() within the statement counts from the next one
SELECT kms_decrypt_text(:'a_t1'::bytea, '{"tenant": "t1"}') AS first,
       set_config('app.tenant', 't2', false) AS changed,
       kms_decrypt_text(:'a_t1'::bytea, '{"tenant": "t1"}') AS same_statement;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')) AS next_statement;
SET app.tenant = 't2';
SELECT kms_decrypt_text(:'a_t2'::bytea, '{"tenant": "t2"}') AS switched_tenant;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')) AS previous_tenant;
RESET ROLE;
SELECT kms_revoke_key('alias/regress_kg_a', 'regress_kg_app');
-- several context keys: all must hold
SELECT kms_grant_key('alias/regress_kg_a', 'regress_kg_app', '{decrypt}',
                     '{"tenant": {"setting": "app.tenant"}, "region": {"in": ["eu-west-1", "eu-central-1"]}}');
SET ROLE regress_kg_app;
SET app.tenant = 't1';
SELECT kms_decrypt_text(:'a_t1_eu'::bytea, '{"tenant": "t1", "region": "eu-west-1"}') AS eu_row;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1", "region": "us-east-1"}')$$, :'a_t1_us')) AS us_row,
       pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')) AS no_region;
RESET app.tenant;
RESET ROLE;
SELECT grantee, privileges, condition FROM kms_key_grants
WHERE key_id = :'key_a' AND grantee = 'regress_kg_app';
SELECT kms_revoke_key('alias/regress_kg_a', 'regress_kg_app');

-- Invalid grants are refused with clear errors.
SELECT c AS bad, pg_temp.try(format('SELECT kms_grant_key(%L, %L, %s, %L)', 'alias/regress_kg_a', g, p, c)) AS outcome
FROM (VALUES ('regress_kg_app', $$'{decrypt}'$$, '[]'),
             ('regress_kg_app', $$'{decrypt}'$$, '{}'),
             ('regress_kg_app', $$'{decrypt}'$$, '{"tenant": "t1"}'),
             ('regress_kg_app', $$'{decrypt}'$$, '{"tenant": {"setting": ""}}'),
             ('regress_kg_app', $$'{decrypt}'$$, '{"tenant": {"in": []}}'),
             ('regress_kg_app', $$'{decrypt}'$$, '{"tenant": {"in": [{"a": 1}]}}'),
             ('regress_kg_app', $$'{decrypt}'$$, '{"tenant": {"like": "t%"}}'),
             ('regress_kg_app', $$'{decrypt}'$$, '{"tenant": {"setting": "a", "in": ["x"]}}'),
             ('regress_kg_app', $$'{read}'$$, NULL),
             ('regress_kg_app', $$'{}'$$, NULL),
             ('regress_kg_app', $$'{decrypt,NULL}'$$, NULL),
             ('regress_kg_nobody', $$'{decrypt}'$$, NULL)) AS t(g, p, c);
SELECT pg_temp.try($$SELECT kms_grant_key('alias/regress_kg_nope', 'regress_kg_app')$$) AS unknown_key;

-- 7. Rotation by a role holding only rewrap (on both keys): rewrap,
-- reencrypt and kms_rotate_column work, reading does not.
SELECT kms_grant_key('alias/regress_kg_a', 'regress_kg_rot', '{rewrap}'),
       kms_grant_key('alias/regress_kg_b', 'regress_kg_rot', '{rewrap}');
SET ROLE regress_kg_rot;
SELECT kms_ciphertext_key_id(kms_rewrap(:'a_t1'::bytea, 'alias/regress_kg_b', '{"tenant": "t1"}')) = :'key_b' AS rewrapped,
       kms_ciphertext_key_id(kms_reencrypt(:'a_t1'::bytea, '{"tenant": "t1"}', 'alias/regress_kg_b')) = :'key_b' AS reencrypted;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')) AS read;
RESET ROLE;
CREATE TABLE kg_rot (id int PRIMARY KEY, v bytea);
INSERT INTO kg_rot SELECT g, kms_encrypt_text('r' || g, '{}', 'alias/regress_kg_a') FROM generate_series(1, 5) g;
ALTER TABLE kg_rot OWNER TO regress_kg_rot;
GRANT EXECUTE ON PROCEDURE kms_rotate_column(regclass, name, text, int, text, int, int) TO regress_kg_rot;
GRANT SELECT, INSERT, UPDATE ON kms_rotation_progress TO regress_kg_rot;
GRANT EXECUTE ON FUNCTION kms_describe_key(text) TO regress_kg_rot;
GRANT SELECT ON kms_rotation_status TO regress_kg_rot;
SET ROLE regress_kg_rot;
SET client_min_messages = warning;
CALL kms_rotate_column('kg_rot', 'v', 'alias/regress_kg_b');
RESET client_min_messages;
SELECT count(*) FILTER (WHERE kms_ciphertext_key_id(v) = :'key_b') AS rotated FROM kg_rot;
RESET ROLE;
SELECT string_agg(kms_decrypt_text(v), ',' ORDER BY id) AS same_values FROM kg_rot;
-- the target needs rewrap or encrypt (PUBLIC's encrypt is enough) ...
SELECT kms_revoke_key('alias/regress_kg_a', 'regress_kg_rot');
SET ROLE regress_kg_rot;
SELECT pg_temp.try(format($$SELECT kms_rewrap(%L::bytea, 'alias/regress_kg_a')$$, :'b')) AS rewrap_to_public_encrypt;
RESET ROLE;
-- ... without either, no rotation to it
SELECT kms_revoke_key('alias/regress_kg_a', 'public', '{encrypt}');
SET ROLE regress_kg_rot;
SELECT pg_temp.try(format($$SELECT kms_rewrap(%L::bytea, 'alias/regress_kg_a')$$, :'b')) AS rewrap_to_ungranted;
-- kms_rotate_column, too (it commits, so it runs at top level: SQLSTATE only)
SET client_min_messages = warning;
\set VERBOSITY sqlstate
CALL kms_rotate_column('kg_rot', 'v', 'alias/regress_kg_a');
\set VERBOSITY default
RESET client_min_messages;
RESET ROLE;
SELECT count(*) FILTER (WHERE kms_ciphertext_key_id(v) = :'key_b') AS still_under_b FROM kg_rot;
SELECT kms_grant_key('alias/regress_kg_a', 'public', '{encrypt}');

-- 7b. kms_key_usage() counts a key's values only for a role holding rewrap
-- or admin on that key (the counts serve rotation and the decision to
-- disable or delete it); decrypt is not enough.  A value under a key the
-- role holds neither on refuses the whole call: no counts at all.
CREATE FUNCTION pg_temp.denied_key(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN insufficient_privilege THEN
  RETURN substring(SQLERRM from 'kms_pg key "([^"]+)"');
END $$;
CREATE TABLE kg_usage (id int PRIMARY KEY, v bytea);
INSERT INTO kg_usage VALUES (1, :'a_t1'), (2, :'a_t2'), (3, :'a_t1_eu'), (4, 'not a ciphertext');
CREATE TABLE kg_usage_ab (id int PRIMARY KEY, v bytea);
INSERT INTO kg_usage_ab VALUES (1, :'a_t1'), (2, :'b');
-- (kms_key_columns() reads every table: SELECT on all of them, kg_rot under B included)
GRANT SELECT ON ALL TABLES IN SCHEMA public TO regress_kg_app;
GRANT EXECUTE ON FUNCTION kms_key_columns(text) TO regress_kg_app;
SELECT kms_grant_key('alias/regress_kg_a', 'regress_kg_app', '{decrypt}');
SET ROLE regress_kg_app;
SELECT pg_temp.try_verbose($$SELECT * FROM kms_key_usage('kg_usage', 'v')$$) AS usage_with_decrypt_only,
       pg_temp.try($$SELECT * FROM kms_key_usage_entry(kms_encrypt_text('x', '{}', 'alias/regress_kg_a'))$$) AS entry_with_decrypt_only;
RESET ROLE;
SELECT kms_grant_key('alias/regress_kg_a', 'regress_kg_app', '{rewrap}');
SET ROLE regress_kg_app;
SELECT provider, key_id = :'key_a' AS key_a, "values", deks FROM kms_key_usage('kg_usage', 'v');
-- rewrap on A, nothing but PUBLIC encrypt on B: the value under B refuses the call, naming B
SELECT pg_temp.denied_key($$SELECT * FROM kms_key_usage('kg_usage_ab', 'v')$$) = :'key_b' AS names_key_b;
-- kms_key_columns() counts only its key's values: B's do not get in the way of A ...
SELECT tbl, col, "values" FROM kms_key_columns(:'key_a') WHERE tbl::text LIKE 'kg_usage%' ORDER BY 1;
-- ... and it is gated the same way for B
SELECT pg_temp.denied_key(format('SELECT * FROM kms_key_columns(%L)', :'key_b')) = :'key_b' AS columns_of_b;
RESET ROLE;
-- admin serves as well as rewrap
SELECT kms_revoke_key('alias/regress_kg_a', 'regress_kg_app', '{rewrap}'),
       kms_grant_key('alias/regress_kg_a', 'regress_kg_app', '{admin}'),
       kms_grant_key('alias/regress_kg_b', 'regress_kg_app', '{admin}');
SET ROLE regress_kg_app;
SELECT provider, key_id = :'key_a' AS key_a, "values", deks FROM kms_key_usage('kg_usage_ab', 'v') ORDER BY 2;
RESET ROLE;
-- superusers bypass
SELECT count(*) AS keys FROM kms_key_usage('kg_usage_ab', 'v');
SELECT kms_revoke_key('alias/regress_kg_a', 'regress_kg_app'), kms_revoke_key('alias/regress_kg_b', 'regress_kg_app');
REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM regress_kg_app;
REVOKE ALL ON FUNCTION kms_key_columns(text) FROM regress_kg_app;
DROP TABLE kg_usage, kg_usage_ab;

-- 8. admin: granted admin lets a role grant and disable; superusers bypass.
SELECT kms_grant_key('alias/regress_kg_b', 'regress_kg_app', '{admin}');
SET ROLE regress_kg_app;
SELECT kms_grant_key('alias/regress_kg_b', 'regress_kg_app', '{decrypt}');
SELECT kms_decrypt_text(:'b'::bytea) AS own_grant;
SELECT kms_disable_key('alias/regress_kg_b');
RESET ROLE;
SELECT kms_enable_key('alias/regress_kg_b');
SELECT CASE WHEN grantee = current_user::text THEN '<creator>' ELSE grantee END AS grantee, privileges
FROM kms_key_grants WHERE key_id = :'key_b' ORDER BY grantee = 'PUBLIC', grantee = current_user::text, grantee;
SELECT sum(kms_revoke_key('alias/regress_kg_b', g)) AS revoked
FROM unnest(ARRAY['public', 'regress_kg_app', 'regress_kg_rot', current_user]) g;
SELECT kms_decrypt_text(:'b'::bytea) AS superuser_without_rows;
SELECT count(*) AS rows_left FROM kms_key_grants WHERE key_id = :'key_b';
SET ROLE regress_kg_app;
SELECT f, pg_temp.try(q) AS no_rows_no_encrypt FROM (VALUES
  ('kms_encrypt', $$SELECT kms_encrypt('\x00', '{}', 'alias/regress_kg_b')$$),
  ('kms_encrypt_text', $$SELECT kms_encrypt_text('x', '{}', 'alias/regress_kg_b')$$),
  ('kms_encrypt_pairs', $$SELECT kms_encrypt_pairs('\x00', 'alias/regress_kg_b', 'tenant', 't1')$$),
  ('kms_encrypt_text_pairs', $$SELECT kms_encrypt_text_pairs('x', 'alias/regress_kg_b', 'tenant', 't1')$$)
) AS t(f, q);
RESET ROLE;

-- 10. Protected columns: the view decrypts as the reader (decrypt on the
-- column's key, conditions included: the row's context is the AAD), the
-- trigger seals and re-seals as the writer (encrypt on the column's key), the
-- blind index needs encrypt or decrypt.
SELECT kms_create_key('alias/regress_kg_col') AS key_col \gset
CREATE TABLE kg_col (id int PRIMARY KEY, tenant text NOT NULL, email text);
INSERT INTO kg_col VALUES (1, 't1', 'one@t1'), (2, 't2', 'two@t2');
SET client_min_messages = warning;
CALL kms_protect_column('kg_col', 'email', '{id,tenant}', key_id => 'alias/regress_kg_col', blind_index => true);
RESET client_min_messages;
SELECT kms_revoke_key('alias/regress_kg_col', 'public') AS no_public_encrypt;
CREATE ROLE regress_kg_colr;
CREATE ROLE regress_kg_colw;
GRANT SELECT ON kg_col, kg_col_decrypted TO regress_kg_colr;
GRANT EXECUTE ON FUNCTION kms_decrypt_pairs(bytea, "any"), kms_blind_index(regclass, name, text) TO regress_kg_colr;
GRANT SELECT, INSERT, UPDATE ON kg_col TO regress_kg_colw;
SET ROLE regress_kg_colr;
SELECT pg_temp.try('SELECT email FROM kg_col_decrypted WHERE id = 1') AS view_without_decrypt,
       pg_temp.try($$SELECT kms_blind_index('kg_col', 'email', 'one@t1')$$) AS blind_index_without_key;
RESET ROLE;
SELECT kms_grant_key('alias/regress_kg_col', 'regress_kg_colr', '{decrypt}', '{"tenant": {"setting": "app.tenant"}}');
SET ROLE regress_kg_colr;
SET app.tenant = 't1';
SELECT id, email FROM kg_col_decrypted WHERE tenant = 't1';
SELECT pg_temp.try('SELECT email FROM kg_col_decrypted WHERE id = 2') AS view_other_tenant;
-- the blind-index key's context is the column's, with no tenant in it: a
-- condition on the tenant never admits it (searching needs a grant without one)
SELECT pg_temp.try_verbose($$SELECT kms_blind_index('kg_col', 'email', 'one@t1')$$) AS blind_index_conditional;
RESET app.tenant;
RESET ROLE;
SELECT kms_grant_key('alias/regress_kg_col', 'regress_kg_colr', '{decrypt}');
SET ROLE regress_kg_colr;
SELECT id FROM kg_col WHERE email_bidx = kms_blind_index('kg_col', 'email', 'one@t1');
RESET ROLE;
SET ROLE regress_kg_colw;
SELECT pg_temp.try($$INSERT INTO kg_col VALUES (3, 't1', 'three@t1')$$) AS insert_without_encrypt;
RESET ROLE;
SELECT kms_grant_key('alias/regress_kg_col', 'regress_kg_colw', '{encrypt}');
SET ROLE regress_kg_colw;
INSERT INTO kg_col VALUES (3, 't1', 'three@t1');
UPDATE kg_col SET tenant = 't3' WHERE id = 3;                 -- re-sealed under the new context
RESET ROLE;
SELECT kms_revoke_key('alias/regress_kg_col', 'regress_kg_colw');
SET ROLE regress_kg_colw;
SELECT pg_temp.try($$UPDATE kg_col SET tenant = 't4' WHERE id = 3$$) AS reseal_without_encrypt,
       pg_temp.try($$UPDATE kg_col SET email = 'new@t3' WHERE id = 3$$) AS write_without_encrypt;
RESET ROLE;
SELECT id, tenant, email FROM kg_col_decrypted ORDER BY id;
SET client_min_messages = warning;
DROP TABLE kg_col CASCADE;
RESET client_min_messages;
DROP OWNED BY regress_kg_colr, regress_kg_colw;
SELECT count(*) AS col_grants_left FROM kms_key_grant WHERE key_id = :'key_col' AND grantee IS NOT NULL
  AND grantee_name <> current_user;
DROP ROLE regress_kg_colr, regress_kg_colw;

-- 9. Dropped and renamed roles.  DROP ROLE and DROP OWNED BY delete the
-- role's rows in this database (as PostgreSQL drops its privileges); a row
-- whose oid no longer belongs to a role of the recorded name grants nothing.
CREATE ROLE regress_kg_gone;
CREATE ROLE regress_kg_owned;
SELECT kms_grant_key('alias/regress_kg_a', 'regress_kg_gone'),
       kms_grant_key('alias/regress_kg_b', 'regress_kg_gone', '{decrypt,rewrap}'),
       kms_grant_key('alias/regress_kg_a', 'regress_kg_owned');
SELECT grantee, count(*) AS keys, bool_and(grantee_valid) AS valid FROM kms_key_grants
WHERE grantee LIKE 'regress_kg_gone' OR grantee LIKE 'regress_kg_owned' GROUP BY 1 ORDER BY 1;
DROP ROLE regress_kg_gone;
-- grants are privileges, not ownership: REASSIGN OWNED keeps them, DROP OWNED removes them
REASSIGN OWNED BY regress_kg_owned TO CURRENT_USER;
SELECT count(*) AS after_reassign FROM kms_key_grant WHERE grantee_name = 'regress_kg_owned';
DROP OWNED BY regress_kg_owned;
SELECT count(*) AS rows_left FROM kms_key_grant WHERE grantee_name IN ('regress_kg_gone', 'regress_kg_owned');
DROP ROLE regress_kg_owned;
-- A row another database's DROP ROLE left behind, now carrying the oid of
-- a live role (written by hand here; t/087 reuses a dropped role's oid):
-- it grants nothing, the view says so, and revoking the old name removes it.
INSERT INTO kms_key_grant (provider, key_id, grantee, grantee_name, privileges, condition, grantor, granted)
VALUES ('local', :'key_a', 'regress_kg_app'::regrole, 'regress_kg_dropped', '{decrypt,rewrap,admin}', NULL, 'someone', now());
SELECT grantee, privileges, grantee_valid FROM kms_key_grants WHERE key_id = :'key_a' AND grantee = 'regress_kg_dropped';
SET ROLE regress_kg_app;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'a_t1')) AS stale_row_decrypt,
       pg_temp.try($$SELECT kms_disable_key('alias/regress_kg_a')$$) AS stale_row_admin;
RESET ROLE;
-- granting to the role that now has the oid replaces the row, never merges it
SELECT kms_grant_key('alias/regress_kg_a', 'regress_kg_app', '{encrypt}');
SELECT grantee, privileges, grantee_valid FROM kms_key_grants
WHERE key_id = :'key_a' AND grantee IN ('regress_kg_dropped', 'regress_kg_app');
SELECT kms_revoke_key('alias/regress_kg_a', 'regress_kg_app');
INSERT INTO kms_key_grant (provider, key_id, grantee, grantee_name, privileges, condition, grantor, granted)
VALUES ('local', :'key_a', 'regress_kg_app'::regrole, 'regress_kg_dropped', '{decrypt}', NULL, 'someone', now());
SELECT kms_revoke_key('alias/regress_kg_a', 'regress_kg_dropped') AS removed_stale_row,
       pg_temp.try($$SELECT kms_revoke_key('alias/regress_kg_a', 'regress_kg_dropped')$$) AS again;

-- The grants table is the owner's: no direct reads or writes.
SET ROLE regress_kg_app;
SELECT pg_temp.try('SELECT * FROM kms_key_grant') AS read_table,
       pg_temp.try('SELECT * FROM kms_key_grants') AS read_view,
       pg_temp.try($$INSERT INTO kms_key_grant (provider, key_id, privileges, grantor, granted) VALUES ('local', 'x', '{decrypt}', 'regress_kg_app', now())$$) AS write_table;
RESET ROLE;

DROP TABLE kg_rot;
SELECT kms_revoke_key('alias/regress_kg_a', g) FROM unnest(ARRAY['regress_kg_group']) g;
REVOKE ALL ON kms_rotation_progress FROM regress_kg_rot;
REVOKE ALL ON FUNCTION kms_describe_key(text) FROM regress_kg_rot;
REVOKE ALL ON kms_rotation_status FROM regress_kg_rot;
REVOKE ALL ON PROCEDURE kms_rotate_column(regclass, name, text, int, text, int, int) FROM regress_kg_rot;
REVOKE ALL ON FUNCTION kms_decrypt(bytea, jsonb), kms_decrypt_text(bytea, jsonb),
  kms_decrypt_pairs(bytea, "any"), kms_decrypt_text_pairs(bytea, "any"),
  kms_rewrap(bytea, text, jsonb), kms_reencrypt(bytea, jsonb, text)
  FROM regress_kg_app, regress_kg_group, regress_kg_member, regress_kg_noinherit, regress_kg_rot;
REVOKE ALL ON FUNCTION kms_grant_key(text, name, text[], jsonb), kms_revoke_key(text, name, text[]),
  kms_disable_key(text) FROM regress_kg_app;
DROP ROLE regress_kg_app, regress_kg_member, regress_kg_noinherit, regress_kg_rot, regress_kg_group;
