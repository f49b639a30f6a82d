--
-- 05_core_privileges: encrypting is open to everyone; decrypting, key
-- management, key and cache inspection need explicit GRANTs; the settings
-- that decide where keys come from cannot be changed by a session.
--
-- The local provider, whatever the server default is.
SET kms_pg.provider = 'local';

-- 'ok' or "SQLSTATE: message" of one statement run by the current role.
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

SELECT kms_create_key('alias/regress_priv05') IS NOT NULL AS created;
SELECT kms_encrypt('secret'::bytea, '{"p": 5}', 'alias/regress_priv05') AS ct \gset
CREATE ROLE regress_kms05_app;
CREATE ROLE regress_kms05_admin;

SET ROLE regress_kms05_app;
SET kms_pg.key_id = 'alias/regress_priv05';
-- allowed without any grant
SELECT pg_temp.try($$SELECT kms_encrypt('x'::bytea, '{"p": 5}')$$) AS encrypt,
       pg_temp.try($$SELECT kms_encrypt_text('x', '{"p": 5}')$$) AS encrypt_text,
       pg_temp.try(format('SELECT kms_ciphertext_info(%L::bytea)', :'ct')) AS ciphertext_info,
       pg_temp.try(format('SELECT kms_is_ciphertext(%L::bytea)', :'ct')) AS is_ciphertext;
-- refused without a grant
SELECT f AS what, pg_temp.try(s) AS outcome FROM (VALUES
  ('kms_decrypt', format($$SELECT kms_decrypt(%L::bytea, '{"p": 5}')$$, :'ct')),
  ('kms_decrypt_text', format($$SELECT kms_decrypt_text(%L::bytea, '{"p": 5}')$$, :'ct')),
  ('kms_reencrypt', format($$SELECT kms_reencrypt(%L::bytea, '{"p": 5}')$$, :'ct')),
  ('kms_rewrap', format($$SELECT kms_rewrap(%L::bytea)$$, :'ct')),
  ('kms_create_key', $$SELECT kms_create_key('alias/regress_priv05_app')$$),
  ('kms_disable_key', $$SELECT kms_disable_key('alias/regress_priv05')$$),
  ('kms_enable_key', $$SELECT kms_enable_key('alias/regress_priv05')$$),
  ('kms_rotate_key', $$SELECT kms_rotate_key('alias/regress_priv05')$$),
  ('kms_describe_key', $$SELECT kms_describe_key('alias/regress_priv05')$$),
  ('kms_keys', $$SELECT * FROM kms_keys$$),
  ('kms_local_keys()', $$SELECT * FROM kms_local_keys()$$),
  ('kms_cache_stats', $$SELECT * FROM kms_cache_stats$$),
  ('kms_cache_flush', $$SELECT kms_cache_flush()$$),
  ('kms_hmac_sha256', $$SELECT kms_hmac_sha256('0123456789abcdef'::bytea, 'x'::bytea)$$)
) AS t(f, s);
-- settings: where keys come from is the server configuration's business
SELECT g AS setting, pg_temp.try(format('SET %s = %L', g, v)) AS set_outcome
FROM (VALUES ('kms_pg.keyring_file', '/tmp/regress_kms05_keyring.json'),
             ('kms_pg.endpoint', 'https://kms.example.invalid'),
             ('kms_pg.ca_file', '/tmp/regress_kms05_ca.pem'),
             ('kms_pg.region', 'us-east-1'),
             ('kms_pg.credential_sources', 'env'),
             ('kms_pg.provider', 'aws'),
             ('kms_pg.cache_entries', '16'),
             ('kms_pg.key_id', 'alias/regress_priv05'),
             ('kms_pg.kms_context_keys', 'tenant'),
             ('kms_pg.dek_max_messages', '1000')) AS t(g, v);
SELECT pg_temp.try($$SELECT set_config('kms_pg.keyring_file', '/tmp/x', false)$$) AS set_config_keyring;
-- PostgreSQL 16 reworded the refusal to show a setting ("permission denied
-- to examine ..."): compare the SQLSTATE and the setting it names.
SELECT split_part(r, ':', 1) AS sqlstate, r LIKE '%examine "' || g || '"' AS names_setting
FROM (VALUES ('kms_pg.keyring_file'), ('kms_pg.ca_file')) AS t(g),
     LATERAL pg_temp.try('SHOW ' || g) AS r;
RESET ROLE;
-- a superuser cannot SET them in a session either (they are PGC_SIGHUP)
SELECT pg_temp.try($$SET kms_pg.keyring_file = '/tmp/x'$$) AS superuser_keyring,
       pg_temp.try($$SET kms_pg.endpoint = 'https://kms.example.invalid'$$) AS superuser_endpoint,
       pg_temp.try($$SET kms_pg.provider = 'local'$$) AS superuser_provider;
SET kms_pg.provider = 'local';

-- The grants the README shows.
-- An application that reads encrypted columns:
GRANT EXECUTE ON FUNCTION kms_decrypt(bytea, jsonb) TO regress_kms05_app;
-- and decrypt on the key itself (10_key_grants)
SELECT kms_grant_key('alias/regress_priv05', 'regress_kms05_app');
SET ROLE regress_kms05_app;
SELECT convert_from(kms_decrypt(:'ct'::bytea, '{"p": 5}'), 'UTF8') AS decrypted;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"p": 5}')$$, :'ct')) AS decrypt_text_still_refused;
SELECT pg_temp.try(format($$SELECT kms_decrypt(%L::bytea, '{"p": 6}')$$, :'ct')) AS wrong_context_still_fails;
RESET ROLE;
GRANT EXECUTE ON FUNCTION kms_decrypt_text(bytea, jsonb) TO regress_kms05_app;
SET ROLE regress_kms05_app;
SELECT kms_decrypt_text(kms_encrypt_text('own value', '{"p": 7}'), '{"p": 7}') AS decrypted_text;
-- still no key administration
SELECT pg_temp.try($$SELECT kms_create_key('alias/regress_priv05_app')$$) AS create_key;
RESET ROLE;

-- A key administrator:
GRANT EXECUTE ON FUNCTION kms_create_key(text, text), kms_disable_key(text),
                          kms_enable_key(text), kms_rotate_key(text),
                          kms_describe_key(text) TO regress_kms05_admin;
GRANT SELECT ON kms_keys TO regress_kms05_admin;
SET ROLE regress_kms05_admin;
-- the view calls kms_local_keys(), whose EXECUTE is needed as well
SELECT pg_temp.try($$SELECT * FROM kms_keys$$) AS view_without_function_grant;
RESET ROLE;
GRANT EXECUTE ON FUNCTION kms_local_keys() TO regress_kms05_admin;
SET ROLE regress_kms05_admin;
SELECT kms_create_key('alias/regress_priv05_admin', 'made by the admin role') IS NOT NULL AS admin_created;
SELECT alias, description, enabled FROM kms_keys WHERE alias LIKE 'alias/regress\_priv05%' ORDER BY alias COLLATE "C";
SELECT kms_rotate_key('alias/regress_priv05_admin') AS rotated_to;
SELECT kms_disable_key('alias/regress_priv05_admin');
SELECT kms_enable_key('alias/regress_priv05_admin');
SELECT kms_describe_key('alias/regress_priv05_admin') ->> 'KeyState' AS key_state;
-- the admin cannot decrypt
SELECT pg_temp.try(format($$SELECT kms_decrypt(%L::bytea, '{"p": 5}')$$, :'ct')) AS admin_decrypt;
RESET ROLE;

-- Monitoring the cache:
GRANT EXECUTE ON FUNCTION kms_cache_stats() TO regress_kms05_admin;
GRANT SELECT ON kms_cache_stats TO regress_kms05_admin;
SET ROLE regress_kms05_admin;
SELECT capacity > 0 AS cache_visible FROM kms_cache_stats;
RESET ROLE;

DROP OWNED BY regress_kms05_app, regress_kms05_admin;
DROP ROLE regress_kms05_app, regress_kms05_admin;
