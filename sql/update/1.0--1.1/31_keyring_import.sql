-- Move the 1.0 keyring file into the keyring catalog (30_keyring.sql made
-- it): every key and version, wrapped under the master key, which must be
-- configured first when the file exists (the update fails, changing
-- nothing, otherwise).  The file itself is left in place: remove it once every
-- database is updated and the master key and a backup are safe (docs/security.md).
CREATE FUNCTION kms_local_import_keyring()
RETURNS int
AS 'MODULE_PATHNAME', 'kms_local_import_keyring'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
SELECT kms_local_import_keyring();
DROP FUNCTION kms_local_import_keyring();
