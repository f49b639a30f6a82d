--
-- 10_citus_absent: without the citus extension in the database, kms_pg's
-- Citus code stays dormant: key changes work as on any server, and the two
-- Citus functions refuse (t/090_citus_keys.pl covers a real cluster).
--
SET kms_pg.provider = 'local';
SELECT count(*) AS citus_installed FROM pg_extension WHERE extname = 'citus';

SELECT kms_create_key('alias/regress_citus10') IS NOT NULL AS created;
SELECT kms_rotate_key('alias/regress_citus10');
SELECT kms_disable_key('alias/regress_citus10');
SELECT kms_enable_key('alias/regress_citus10');
SELECT key_state, current_version FROM kms_keys WHERE alias = 'alias/regress_citus10';

SELECT kms_citus_sync_keys();
SELECT kms_citus_apply_keyring('{"keys": [], "versions": []}');
SELECT kms_citus_apply_keyring(NULL);
-- the keyring is untouched
SELECT key_state, current_version FROM kms_keys WHERE alias = 'alias/regress_citus10';

-- only superusers (and roles they grant) may call them
CREATE ROLE regress_citus10_user;
SET ROLE regress_citus10_user;
SELECT kms_citus_sync_keys();
SELECT kms_citus_apply_keyring('{"keys": [], "versions": []}');
RESET ROLE;
DROP ROLE regress_citus10_user;
