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
RESET ROLE;
SELECT kms_grant_key('alias/regress_kg_a', 'public', '{encrypt}');

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
SELECT pg_temp.try($$SELECT kms_encrypt_text('x', '{}', 'alias/regress_kg_b')$$) AS no_rows_no_encrypt;
RESET ROLE;

-- The grants table is the owner's: no direct reads or writes.
SET ROLE regress_kg_app;
SELECT pg_temp.try('SELECT * FROM kms_key_grant') AS read_table,
       pg_temp.try('SELECT * FROM kms_key_grants') AS read_view,
       pg_temp.try($$INSERT INTO kms_key_grant VALUES ('local', 'x', NULL, '{decrypt}', NULL, 'regress_kg_app', now())$$) AS write_table;
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
