-- Citus (docs/citus.md): the coordinator copies the local keyring catalog
-- to every worker after each change; kms_citus_sync_keys() copies it again
-- (for a worker added later).  Without the citus extension in the
-- database both refuse and nothing else changes.
CREATE FUNCTION kms_citus_sync_keys()
RETURNS int
AS 'MODULE_PATHNAME', 'kms_citus_sync_keys'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION kms_citus_sync_keys() IS
  'On a Citus coordinator: copy the local keyring (wrapped under the master key) to every worker; returns the number of workers';

CREATE FUNCTION kms_citus_apply_keyring(state text)
RETURNS int
AS 'MODULE_PATHNAME', 'kms_citus_apply_keyring'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION kms_citus_apply_keyring(text) IS
  'On a Citus worker: replace the local keyring with the coordinator''s copy (run by the coordinator)';

REVOKE EXECUTE ON FUNCTION kms_citus_sync_keys() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_citus_apply_keyring(text) FROM PUBLIC;
