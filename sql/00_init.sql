--
-- 00_init: the module was initialised.  From PostgreSQL 16 on, a module
-- whose _PG_init is not exported loads without a word and is never
-- initialised: no kms_pg.* settings (only untyped placeholders), no
-- reserved prefix, no shared-memory cache.  Each query below fails then.
--
-- Settings are defined with their types and contexts, not placeholders.
SELECT count(*) >= 20 AS settings_defined
FROM pg_settings WHERE name LIKE 'kms_pg.%' AND short_desc IS NOT NULL;
SELECT name, vartype, context FROM pg_settings
WHERE name IN ('kms_pg.cache_entries', 'kms_pg.provider', 'kms_pg.keyring_file', 'kms_pg.key_id')
ORDER BY name;
-- The prefix is reserved: a name kms_pg does not define is refused.
SET kms_pg.no_such_setting = 'x';
-- The shared-memory cache was attached at server start.
SELECT count(*) = 1 AS cache_attached FROM kms_cache_stats;
