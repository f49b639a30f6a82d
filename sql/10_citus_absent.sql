--
-- 10_citus_absent: without the citus extension in the database, kms_pg's
-- Citus code stays dormant: key changes work as on any server, and the
-- Citus functions refuse (t/090, t/091 and t/093 cover a real cluster).
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

-- Protected columns: the Citus paths stay dormant.  A table whose name and
-- trigger name look like a Citus shard's ("<name>_<shardid>") is not
-- looked up in Citus's metadata (pg_dist_shard does not exist here); the
-- trigger finds no catalog row, as on any server.
SELECT kms_pc_citus_table('pg_class'), kms_pc_citus_worker();
CREATE TABLE regress_citus10_t (id int PRIMARY KEY, v text);
INSERT INTO regress_citus10_t VALUES (1, 'one'), (2, 'two');
CALL kms_protect_column('regress_citus10_t', 'v', NULL, 'alias/regress_citus10', blind_index => true);
-- protect took the batched path, not the Citus one: no Citus setting was made
SELECT current_setting('citus.enable_unsafe_triggers', true) IS NULL AS unsafe_triggers_unset,
       current_setting('citus.multi_shard_modify_mode', true) IS NULL AS modify_mode_unset;
INSERT INTO regress_citus10_t VALUES (3, 'three');
SELECT id, v FROM regress_citus10_t_decrypted ORDER BY id;
SELECT kms_create_key('alias/regress_citus10b') IS NOT NULL AS created;
CALL kms_rotate_column('regress_citus10_t', 'v', 'alias/regress_citus10b', batch_size => 2);
SELECT "values" FROM kms_key_usage('regress_citus10_t', 'v');
SELECT current_setting('citus.enable_unsafe_triggers', true) IS NULL AS unsafe_triggers_unset;
SELECT kms_unprotect_column('regress_citus10_t', 'v');
CREATE TABLE regress_citus10_t_102008 (id int PRIMARY KEY, v kms_sealed);
CREATE TRIGGER kms_protect_v_102008 BEFORE INSERT OR UPDATE OF v ON regress_citus10_t_102008
    FOR EACH ROW EXECUTE FUNCTION kms_protected_column_trigger();
INSERT INTO regress_citus10_t_102008 VALUES (1, 'x');
DROP TABLE regress_citus10_t_102008, regress_citus10_t;
-- the Citus functions of protected columns refuse
SELECT kms_citus_sync_columns();
SELECT kms_citus_sync_columns('pg_class');
SELECT kms_citus_apply_columns('pg_class', '[]');
SELECT kms_citus_apply_columns(NULL, '[]');

-- Format 2: the registry stays an ordinary table; its Citus functions refuse,
-- and format 2 sealing, its registry write and a rewrap take the plain path.
SELECT kms_citus_distribute_registry();
SELECT kms_citus_registry_rewrapped('alias/regress_citus10');
SELECT kms_citus_registry_rewrapped(NULL);
SET kms_pg.format = 2;
SELECT count(*) AS registry_rows_before FROM kms_dek_registry \gset
SELECT kms_decrypt_text(kms_encrypt_text('v2 without citus', '{}', 'alias/regress_citus10')) AS v2_roundtrip;
SELECT count(*) - :registry_rows_before AS new_registry_rows FROM kms_dek_registry;
SELECT current_setting('citus.allow_modifications_from_workers_to_replicated_tables', true) IS NULL
       AS citus_setting_unset;
RESET kms_pg.format;
