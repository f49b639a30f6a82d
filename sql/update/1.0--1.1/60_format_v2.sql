-- Format 2 and its data key registry (sql/install/12_registry.sql and the
-- markings in sql/install/10_core.sql).
ALTER FUNCTION kms_encrypt(bytea, jsonb, text) PARALLEL UNSAFE;
ALTER FUNCTION kms_encrypt_text(text, jsonb, text) PARALLEL UNSAFE;
ALTER FUNCTION kms_encrypt_pairs(bytea, text, "any") PARALLEL UNSAFE;
ALTER FUNCTION kms_encrypt_text_pairs(text, text, "any") PARALLEL UNSAFE;
ALTER FUNCTION kms_reencrypt(bytea, jsonb, text) PARALLEL UNSAFE;
ALTER FUNCTION kms_ciphertext_info(bytea) STABLE;
ALTER FUNCTION kms_ciphertext_key_id(bytea) STABLE;
ALTER FUNCTION kms_ciphertext_provider(bytea) STABLE;

-- @install 12_registry.sql

-- Per protected column format (sql/install/20_columns.sql, 27_column_format.sql).
ALTER TABLE kms_protected_columns ADD COLUMN format smallint
    CONSTRAINT kms_protected_columns_format_check CHECK (format IN (1, 2));

-- @install 27_column_format.sql

-- kms_rotate_column(..., target_format) and kms_grant_access: 25_rotation.sql.
