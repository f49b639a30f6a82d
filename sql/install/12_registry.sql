-- The data key registry of format 2 values (docs/format.md): a format 2
-- value carries a 56-bit reference to a row here instead of its key id and
-- wrapped data key.  WAL-logged (replicated with the database), dumped with
-- the extension's data.  Only the extension (C, as the table's owner)
-- writes it: a row is inserted by the first transaction of a backend that
-- seals a format 2 value with a data key, and rewrapped by
-- kms_rotate_key_registry() and kms_rewrap().  Readers need no privilege on
-- it: decryption reads it in C.  Never delete rows: a value whose row is
-- gone cannot be decrypted.
CREATE TABLE kms_dek_registry (
    dek_ref      bigint PRIMARY KEY
                 CONSTRAINT kms_dek_registry_ref_range CHECK (dek_ref > 0 AND dek_ref < 72057594037927936),
    provider     smallint NOT NULL,         -- 1 local, 2 aws (as a v1 value's provider byte)
    key_id       text NOT NULL,             -- canonical key id: local key uuid, AWS key ARN
    name_block   bytea NOT NULL,            -- provider-context key names, as in a v1 header
    wrapped_dek  bytea NOT NULL,            -- provider-wrapped DEK, as in a v1 header
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    rewrapped_at timestamptz,               -- last O(DEKs) rotation
    -- Columns below are the extension's own (readers use the ones above).
    provider_context bytea,                 -- canonical provider context the DEK is bound to
    key_requested    text,                  -- the key as named when the DEK was made
    leased_messages  bigint NOT NULL DEFAULT 0, -- values the DEK may have sealed (leases handed out)
    leased_bytes     bigint NOT NULL DEFAULT 0  -- bytes likewise
);
-- A backend finds an existing row of the data key it seals with.
CREATE INDEX kms_dek_registry_wrapped ON kms_dek_registry (wrapped_dek);
-- An encrypting miss finds the current data key of (key, provider context).
CREATE INDEX kms_dek_registry_reuse ON kms_dek_registry
    (key_requested, pg_catalog.sha256(provider_context), created_at)
    WHERE rewrapped_at IS NULL;
SELECT pg_catalog.pg_extension_config_dump('kms_dek_registry', '');
REVOKE ALL ON kms_dek_registry FROM PUBLIC;
COMMENT ON TABLE kms_dek_registry IS
  'kms_pg data keys of format 2 values: dek_ref -> provider, key id, context names, wrapped DEK (never delete rows)';

-- Rotation in O(data keys): rewrap every registry row of a key.
CREATE FUNCTION kms_rotate_key_registry(key_id text, new_key_id text DEFAULT NULL,
    OUT deks bigint, OUT rewrapped bigint, OUT skipped bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_rotate_key_registry'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION kms_rotate_key_registry(text, text) IS
  'Rewrap the registry rows (format 2 data keys) of a key under new_key_id (default: the same key''s current version); no user table is written';
REVOKE EXECUTE ON FUNCTION kms_rotate_key_registry(text, text) FROM PUBLIC;
