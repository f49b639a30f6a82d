-- kms_cache_stats gains hit_ratio, thrash_warnings and shared_memory_bytes
-- (issue 19).  The view and its function are recreated: grants on them
-- must be given again after the update.
DROP VIEW kms_cache_stats;
DROP FUNCTION kms_cache_stats();
CREATE FUNCTION kms_cache_stats(
    OUT entries bigint, OUT encrypting_entries bigint, OUT capacity bigint,
    OUT hits bigint, OUT local_hits bigint, OUT misses bigint,
    OUT generate_calls bigint, OUT decrypt_calls bigint, OUT rewrap_calls bigint,
    OUT describe_calls bigint, OUT call_errors bigint, OUT coalesced_waits bigint,
    OUT evictions bigint, OUT expirations bigint, OUT dek_rotations bigint, OUT flushes bigint,
    OUT hit_ratio double precision, OUT thrash_warnings bigint, OUT shared_memory_bytes bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_cache_stats'
LANGUAGE C VOLATILE PARALLEL SAFE;
CREATE VIEW kms_cache_stats AS SELECT * FROM kms_cache_stats();
REVOKE EXECUTE ON FUNCTION kms_cache_stats() FROM PUBLIC;
REVOKE ALL ON kms_cache_stats FROM PUBLIC;
