-- kms_cache_stats gains hit_ratio, thrash_warnings and shared_memory_bytes
-- (issue 19).  The view and its function are recreated: grants on them
-- must be given again after the update.
DROP VIEW kms_cache_stats;
DROP FUNCTION kms_cache_stats();
-- @install 10_core.sql kms_cache_stats
-- @install 10_core.sql VIEW kms_cache_stats
