-- Per-key privileges (docs/security.md, "Key privileges"): who may use
-- which key, and under which encryption-context condition.  One row per
-- key, grantee and condition; the key is bound by what it is (a local key's
-- uuid, an AWS key's ARN), never by the alias it was named by; grantee is
-- a regrole (NULL: PUBLIC), so pg_dump writes role names, and grantee_name
-- the role's name when granted: a row applies only while the role with that
-- oid still has that name, so a dropped role's rows (left in databases
-- other than the one DROP ROLE ran in) never pass to a later role that gets
-- the same oid.  DROP ROLE and DROP OWNED BY delete the role's rows in the
-- current database, ALTER ROLE ... RENAME renames them (docs/security.md,
-- "Dropped and renamed roles").  grantor is the granting role's name.  The
-- table is WAL-logged and registered with pg_extension_config_dump like the
-- keyring catalog: standbys, PITR and pg_dump carry the grants.  Only
-- kms_grant_key()/kms_revoke_key() (and key creation) change rows; the
-- backend reads them as the caller, without SQL, when a data key is used.
CREATE TABLE kms_key_grant (
    provider   text NOT NULL CHECK (provider OPERATOR(pg_catalog.=) ANY (ARRAY['local', 'aws'])),
    key_id     text NOT NULL,
    grantee    regrole,
    grantee_name text CHECK ((grantee IS NULL) OPERATOR(pg_catalog.=) (grantee_name IS NULL)),
    privileges text[] NOT NULL,
    condition  jsonb,
    grantor    text NOT NULL,
    granted    timestamptz NOT NULL,
    CONSTRAINT kms_key_grant_unique UNIQUE NULLS NOT DISTINCT (provider, key_id, grantee, condition)
);
COMMENT ON TABLE kms_key_grant IS
  'kms_pg key privileges: provider, key (uuid or ARN), grantee (NULL: PUBLIC), privileges, context condition';
SELECT pg_catalog.pg_extension_config_dump('kms_key_grant', '');
REVOKE ALL ON kms_key_grant FROM PUBLIC;

CREATE FUNCTION kms_grant_key(key_id text, grantee name, privileges text[] DEFAULT '{decrypt}',
                              condition jsonb DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'kms_grant_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION kms_revoke_key(key_id text, grantee name, privileges text[] DEFAULT NULL)
RETURNS int
AS 'MODULE_PATHNAME', 'kms_revoke_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

REVOKE EXECUTE ON FUNCTION kms_grant_key(text, name, text[], jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION kms_revoke_key(text, name, text[]) FROM PUBLIC;

-- Readable by the table owner; GRANT SELECT on it to auditors.
CREATE VIEW kms_key_grants AS
SELECT g.provider, g.key_id, k.alias,
       COALESCE(g.grantee_name, 'PUBLIC') AS grantee,
       g.privileges, g.condition, g.grantor AS granted_by, g.granted,
       -- false: no role has this oid and name any more; the row grants nothing
       (g.grantee IS NULL OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                                     WHERE r.oid OPERATOR(pg_catalog.=) g.grantee::pg_catalog.oid
                                       AND r.rolname::pg_catalog.text OPERATOR(pg_catalog.=) g.grantee_name)) AS grantee_valid
FROM @extschema@.kms_key_grant g
LEFT JOIN @extschema@.kms_local_key k
       ON g.provider OPERATOR(pg_catalog.=) 'local' AND k.key_id OPERATOR(pg_catalog.=) g.key_id;
REVOKE ALL ON kms_key_grants FROM PUBLIC;

-- Keys that exist at the update keep 1.0's behaviour: PUBLIC holds every
-- privilege on them, so the function grants (EXECUTE on kms_decrypt,
-- kms_rewrap, kms_disable_key, ...) still decide alone, exactly as in 1.0.
-- Runs after 31_keyring_import.sql, so keys imported from the 1.0 keyring
-- file are covered.  docs/security.md shows how to tighten them.
INSERT INTO @extschema@.kms_key_grant (provider, key_id, grantee, privileges, condition, grantor, granted)
SELECT 'local', k.key_id, NULL, ARRAY['admin', 'decrypt', 'encrypt', 'rewrap'], NULL,
       CURRENT_USER::pg_catalog.text, pg_catalog.now()
FROM @extschema@.kms_local_key k;
