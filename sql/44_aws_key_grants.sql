--
-- 44_aws_key_grants: key privileges on the AWS provider, against the
-- emulator.  A grant binds to the key's ARN (resolved with DescribeKey),
-- whether the key was named by alias or ARN; an AWS key without any grant
-- row is ungoverned (1.0 behaviour), its first grant records PUBLIC with
-- every privilege, and revoking the last privilege keeps it governed.
--
\set VERBOSITY terse
SET kms_pg.provider = 'aws';
SELECT kms_cache_flush() >= 0 AS flushed;
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, 'arn:aws:kms:[^"]*', '<arn>', 'g');
END $$;
CREATE ROLE regress_kg_aws;
CREATE ROLE regress_kg_aws2;
GRANT EXECUTE ON FUNCTION kms_decrypt_text(bytea, jsonb) TO regress_kg_aws, regress_kg_aws2;
SELECT kms_aws_describe_key('alias/kms-pg-other')->'KeyMetadata'->>'Arn' AS arn \gset
SELECT kms_encrypt_text('aws one', '{"tenant": "t1"}', 'alias/kms-pg-other') AS ct \gset
SELECT kms_ciphertext_key_id(:'ct') = :'arn' AS ciphertext_records_arn;

-- No grant row: used as in 1.0 (the function grant decides).
SELECT count(*) AS rows FROM kms_key_grants WHERE provider = 'aws';
SET ROLE regress_kg_aws2;
SELECT kms_decrypt_text(:'ct', '{"tenant": "t1"}') AS ungoverned;
RESET ROLE;

-- Granted by alias: bound to the ARN; the first grant records PUBLIC with everything.
SELECT kms_grant_key('alias/kms-pg-other', 'regress_kg_aws', '{decrypt}', '{"tenant": {"in": ["t1"]}}');
SELECT key_id = :'arn' AS bound_to_arn, grantee, privileges, condition
FROM kms_key_grants WHERE provider = 'aws' ORDER BY grantee;
-- tightened by ARN: the same key
SELECT kms_revoke_key(:'arn', 'public', '{decrypt}') AS revoked;
SET ROLE regress_kg_aws;
SELECT kms_decrypt_text(:'ct', '{"tenant": "t1"}') AS granted_role;
SET ROLE regress_kg_aws2;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'ct')) AS other_role;
-- another AWS key is not governed by these rows
SELECT kms_decrypt_text(kms_encrypt_text('other key', '{}', 'alias/kms-pg-test')) AS other_key_ungoverned;
RESET ROLE;

-- Revoking every privilege leaves the key governed: only superusers use it.
SELECT kms_revoke_key('alias/kms-pg-other', 'regress_kg_aws') + kms_revoke_key('alias/kms-pg-other', 'public') AS revoked;
SELECT grantee, privileges FROM kms_key_grants WHERE provider = 'aws';
SET ROLE regress_kg_aws;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'ct')) AS decrypt,
       pg_temp.try($$SELECT kms_encrypt_text('x', '{}', 'alias/kms-pg-other')$$) AS encrypt;
RESET ROLE;
SELECT kms_decrypt_text(:'ct', '{"tenant": "t1"}') AS superuser;

-- DROP ROLE deletes the role's rows; an AWS key left without any row gets an
-- empty PUBLIC row, so it stays governed (no row would make it ungoverned).
CREATE ROLE regress_kg_aws3;
SELECT kms_grant_key('alias/kms-pg-other', 'regress_kg_aws3');
SELECT kms_revoke_key('alias/kms-pg-other', 'public') AS public_rows;
SELECT grantee, privileges FROM kms_key_grants WHERE provider = 'aws';
DROP ROLE regress_kg_aws3;
SELECT grantee, privileges FROM kms_key_grants WHERE provider = 'aws';
SET ROLE regress_kg_aws;
SELECT pg_temp.try(format($$SELECT kms_decrypt_text(%L::bytea, '{"tenant": "t1"}')$$, :'ct')) AS after_drop_role;
RESET ROLE;

DELETE FROM kms_key_grant WHERE provider = 'aws';
REVOKE ALL ON FUNCTION kms_decrypt_text(bytea, jsonb) FROM regress_kg_aws, regress_kg_aws2;
DROP ROLE regress_kg_aws, regress_kg_aws2;
