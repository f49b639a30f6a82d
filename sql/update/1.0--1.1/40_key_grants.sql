-- Per-key privileges: all of sql/install/17_key_grants.sql (new in 1.1).
-- @install 17_key_grants.sql

-- Keys that exist at the update keep 1.0's behaviour: PUBLIC holds every
-- privilege on them, so the function grants (EXECUTE on kms_decrypt,
-- kms_rewrap, kms_disable_key, ...) still decide alone, exactly as in 1.0.
-- Runs after 31_keyring_import.sql, so keys imported from the 1.0 keyring
-- file are covered.  docs/security.md shows how to tighten them.
INSERT INTO @extschema@.kms_key_grant (provider, key_id, grantee, privileges, condition, grantor, granted)
SELECT 'local', k.key_id, NULL, ARRAY['admin', 'decrypt', 'encrypt', 'rewrap'], NULL,
       CURRENT_USER::pg_catalog.text, pg_catalog.now()
FROM @extschema@.kms_local_key k;
