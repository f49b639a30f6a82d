--
-- 04_core_keys: local provider key management.  kms_create_key, alias
-- rules, the kms_keys view, kms_describe_key, kms_rotate_key (new values
-- use the new version, old values keep decrypting), ARN forms of key ids.
--
-- The local provider, whatever the server default is.
SET kms_pg.provider = 'local';

SELECT kms_create_key('alias/regress_keys04', 'keys test key') AS key_id \gset
SELECT :'key_id' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' AS is_uuid;

-- Alias rules (as in AWS KMS): alias/<name>, not alias/aws/..., unique.
SELECT kms_create_key('regress_keys04_plain');
SELECT kms_create_key('alias/');
SELECT kms_create_key('alias/aws/regress_keys04');
SELECT kms_create_key('alias/regress keys04');
SELECT kms_create_key('alias/regress_keys04_é');
SELECT kms_create_key('alias/' || repeat('k', 251));
SELECT kms_create_key('alias/regress_keys04');
SELECT kms_create_key('alias/regress_keys04', 'same alias, other description');
SELECT kms_create_key('ALIAS/regress_keys04');
-- longest alias, slashes, dashes and underscores are fine
SELECT kms_create_key('alias/regress_keys04_' || repeat('k', 229)) IS NOT NULL AS alias_250_chars;
SELECT kms_create_key('alias/regress_keys04/team-a/db_1', NULL) IS NOT NULL AS path_like_alias;
-- a key without alias is allowed and addressed by id
SELECT kms_create_key(NULL, 'regress_keys04 no alias') AS noalias_id \gset
SELECT alias IS NULL AS no_alias, description FROM kms_keys WHERE key_id = :'noalias_id';
SELECT kms_decrypt(kms_encrypt('n'::bytea, '{}', :'noalias_id')) = 'n'::bytea AS by_id_ok;

-- The kms_keys view.
SELECT left(alias, 32) AS alias_start, length(alias) AS alias_len, description, enabled,
       current_version, versions, key_id ~ '^[0-9a-f-]{36}$' AS id_ok,
       created > now() - interval '1 hour' AND created <= clock_timestamp() AS created_ok
FROM kms_keys WHERE alias LIKE 'alias/regress\_keys04%' ORDER BY alias COLLATE "C";
SELECT count(*) AS keys_04, count(DISTINCT key_id) AS distinct_ids
FROM kms_keys WHERE alias LIKE 'alias/regress\_keys04%' OR description = 'regress_keys04 no alias';
SELECT key_id = :'key_id' AS alias_maps_to_id FROM kms_keys WHERE alias = 'alias/regress_keys04';

-- kms_describe_key
SELECT kms_describe_key('alias/regress_keys04') - 'KeyId' AS described,
       kms_describe_key('alias/regress_keys04') ->> 'KeyId' = :'key_id' AS key_id_ok,
       kms_describe_key(:'key_id') = kms_describe_key('alias/regress_keys04') AS by_id_same;
SET kms_pg.key_id = 'alias/regress_keys04';
SELECT kms_describe_key() ->> 'Alias' AS default_key_alias;
SELECT kms_describe_key('alias/regress_keys04_missing');

-- ARN forms are accepted wherever a key is named.
SELECT (kms_ciphertext_info(kms_encrypt('a'::bytea, '{}',
          'arn:aws:kms:us-east-1:111122223333:alias/regress_keys04'))).key_id = :'key_id' AS alias_arn,
       (kms_ciphertext_info(kms_encrypt('a'::bytea, '{}',
          'arn:aws:kms:us-east-1:111122223333:key/' || :'key_id'))).key_id = :'key_id' AS key_arn;
SET kms_pg.key_id = 'arn:aws:kms:eu-west-1:111122223333:alias/regress_keys04';
SELECT (kms_ciphertext_info(kms_encrypt('a'::bytea))).key_id = :'key_id' AS guc_alias_arn,
       kms_decrypt(kms_encrypt('a'::bytea)) = 'a'::bytea AS guc_alias_arn_roundtrip;
SELECT kms_describe_key('arn:aws:kms:us-east-1:111122223333:key/' || :'key_id') ->> 'Alias' AS described_by_key_arn;
SELECT kms_encrypt('a'::bytea, '{}', 'arn:aws:kms:us-east-1:111122223333:alias/regress_keys04_missing');
SET kms_pg.key_id = 'alias/regress_keys04';

-- Rotation: a new key version; new values use it, old values keep
-- decrypting (with the cache flushed, so the keyring really unwraps).
-- The wrapped DEK's version is bytes 47..50 (docs/format.md).
CREATE TEMP TABLE rot (v int, i int, ct bytea);
INSERT INTO rot SELECT 1, i, kms_encrypt(('v1 row ' || i)::bytea, jsonb_build_object('i', i)) FROM generate_series(1, 3) i;
SELECT kms_rotate_key('alias/regress_keys04') AS new_version;
SELECT current_version, versions FROM kms_keys WHERE alias = 'alias/regress_keys04';
INSERT INTO rot SELECT 2, i, kms_encrypt(('v2 row ' || i)::bytea, jsonb_build_object('i', i)) FROM generate_series(1, 3) i;
SELECT kms_rotate_key('arn:aws:kms:us-east-1:111122223333:key/' || :'key_id') AS new_version;
INSERT INTO rot SELECT 3, i, kms_encrypt(('v3 row ' || i)::bytea, jsonb_build_object('i', i)) FROM generate_series(1, 3) i;
SELECT kms_cache_flush() >= 0 AS flushed;
SELECT v, count(*) AS values,
       array_agg(DISTINCT (get_byte(ct, 47) << 24) | (get_byte(ct, 48) << 16) | (get_byte(ct, 49) << 8) | get_byte(ct, 50)) AS wrap_versions,
       count(DISTINCT (kms_ciphertext_info(ct)).dek_id) AS deks,
       bool_and((kms_ciphertext_info(ct)).key_id = :'key_id') AS same_key_id
FROM rot GROUP BY v ORDER BY v;
SELECT v, string_agg(convert_from(kms_decrypt(ct, jsonb_build_object('i', i)), 'UTF8'), ', ' ORDER BY i) AS decrypted
FROM rot GROUP BY v ORDER BY v;
SELECT kms_describe_key('alias/regress_keys04') ->> 'CurrentVersion' AS current_version;
-- rotating an unknown key, NULL
SELECT kms_rotate_key('alias/regress_keys04_missing');
SELECT kms_rotate_key(NULL);
-- disabling and enabling by ARN and by id
SELECT kms_disable_key('arn:aws:kms:us-east-1:111122223333:alias/regress_keys04');
SELECT alias, enabled FROM kms_keys WHERE alias = 'alias/regress_keys04';
SELECT kms_enable_key(:'key_id');
SELECT alias, enabled FROM kms_keys WHERE alias = 'alias/regress_keys04';
