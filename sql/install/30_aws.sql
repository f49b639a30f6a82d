-- AWS KMS provider: health check and credential introspection.
-- Superuser only by default (they reveal which AWS identity the server
-- uses and make KMS calls); GRANT EXECUTE to a monitoring role if wanted.

CREATE FUNCTION kms_aws_describe_key(key text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'kms_aws_describe_key'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION kms_aws_describe_key(text) IS
  'AWS KMS DescribeKey for key (default kms_pg.key_id): a health check of endpoint, credentials and key';
REVOKE ALL ON FUNCTION kms_aws_describe_key(text) FROM PUBLIC;

CREATE FUNCTION kms_aws_credentials_info(
    OUT source text, OUT origin text, OUT access_key_id text,
    OUT session_token boolean, OUT expiration timestamptz, OUT fetched_at timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_aws_credentials_info'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION kms_aws_credentials_info() IS
  'Which AWS credential source this backend uses (access key id masked, no secrets)';
REVOKE ALL ON FUNCTION kms_aws_credentials_info() FROM PUBLIC;

CREATE FUNCTION kms_aws_backend_stats(
    OUT attempts bigint, OUT retries bigint, OUT errors bigint, OUT mrk_fallbacks bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_aws_backend_stats'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION kms_aws_backend_stats() IS
  'AWS KMS HTTP attempts, retries, errors and multi-Region fallbacks of this backend';
