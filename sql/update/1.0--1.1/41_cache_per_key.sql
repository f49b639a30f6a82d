-- The cached DEKs of one key (issue 16).
CREATE FUNCTION kms_cache_flush(key text)
RETURNS int
AS 'MODULE_PATHNAME', 'kms_cache_flush_key'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION kms_cache_flush(text) IS
  'Wipe the cached data keys of one key (key id, ARN, or the alias they were made under) in every session; returns shared entries wiped';
REVOKE EXECUTE ON FUNCTION kms_cache_flush(text) FROM PUBLIC;
