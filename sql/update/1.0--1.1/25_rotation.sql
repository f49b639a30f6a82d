-- Rotation procedures resolve names in pg_catalog only (issue 13): a
-- function or operator someone created in public is never picked.  The
-- functions are taken whole from sql/install/25_rotation.sql by their
-- "-- @install" markers (scripts/update_expand.pl).

-- @install 25_rotation.sql kms_key_usage_entry
-- @install 25_rotation.sql kms_key_usage

-- kms_rotate_column converts formats (target_format, format 2): a new
-- signature, so 1.0's procedure goes.
DROP PROCEDURE kms_rotate_column(regclass, name, text, int, text, int);
-- @install 25_rotation.sql kms_rotate_column

-- kms_grant_access (new) grants the new kms_rotate_column signature.
-- @install 25_rotation.sql kms_grant_access
