-- AWS configuration resolution and credential refresh status (issue 16).

-- How the AWS configuration resolves (issue 16): profile, credential source
-- and its chain, region, endpoints; no network call, no secret.
CREATE FUNCTION kms_aws_config(environment text[] DEFAULT NULL,
    OUT profile text, OUT profile_from text, OUT config_file text,
    OUT credentials_file text, OUT source text, OUT chain text,
    OUT region text, OUT region_from text, OUT use_fips boolean,
    OUT kms_endpoint text, OUT sts_endpoint text)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_aws_config'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION kms_aws_config(text[]) IS
  'How the AWS config/credentials files, environment and kms_pg settings resolve (no network call, no secret); environment (superuser) replaces the server environment';
REVOKE ALL ON FUNCTION kms_aws_config(text[]) FROM PUBLIC;

-- This backend's AWS credentials and their refresh state, without fetching
-- anything and without any secret.
CREATE FUNCTION kms_aws_credentials_status(
    OUT source text, OUT origin text, OUT access_key_id text,
    OUT fetched_at timestamptz, OUT expiration timestamptz, OUT usable boolean,
    OUT refresh_failures integer, OUT last_refresh_error text,
    OUT last_refresh_error_at timestamptz, OUT next_refresh_attempt timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'kms_aws_credentials_status'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
REVOKE ALL ON FUNCTION kms_aws_credentials_status() FROM PUBLIC;
CREATE VIEW kms_aws_credentials_status AS
  SELECT * FROM kms_aws_credentials_status();
COMMENT ON VIEW kms_aws_credentials_status IS
  'AWS credential source, expiry and last refresh error of this backend (no secrets)';
REVOKE ALL ON kms_aws_credentials_status FROM PUBLIC;
GRANT SELECT ON kms_aws_credentials_status TO pg_monitor;
GRANT EXECUTE ON FUNCTION kms_aws_credentials_status() TO pg_monitor;
