/*-------------------------------------------------------------------------
 * kms_credentials.h
 *	  The AWS credential chain (environment, web identity, shared
 *	  credentials/config files, container credentials, EC2 IMDSv2), with
 *	  a backend-local cache refreshed before the credentials expire.
 *
 * Nothing in this module ever puts a secret access key, session token,
 * web identity token or container authorization token into an error
 * message, a log line or a GUC.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_CREDENTIALS_H
#define KMS_CREDENTIALS_H

#include "kms_pg.h"

#include "datatype/timestamp.h"

typedef struct KmsAwsCredentials
{
	char	   *access_key_id;
	char	   *secret_access_key;
	char	   *session_token;	/* NULL when the credentials are long-term */
	TimestampTz expiration;		/* 0 when they do not expire */
	TimestampTz fetched_at;
	const char *source;			/* "env", "profile", "assume_role", "web_identity", "sso", "process", "container", "imds" */
	char		origin[256];	/* where from, without secrets: profile name, role ARN, URL */
} KmsAwsCredentials;

/*
 * Current credentials, fetched or refreshed as needed.  The result lives
 * in TopMemoryContext and stays valid until the next call of
 * kms_aws_credentials_get or kms_aws_credentials_invalidate; do not keep
 * copies of the secret fields.
 */
extern const KmsAwsCredentials *kms_aws_credentials_get(void);

/* Forget (and wipe) the cached credentials, e.g. after ExpiredTokenException. */
extern void kms_aws_credentials_invalidate(void);

/*
 * The AWS region: kms_pg.region, AWS_REGION, AWS_DEFAULT_REGION, the
 * profile's region, then EC2 instance metadata.  Raises when none is found.
 */
extern const char *kms_aws_region(void);

/* Whether the FIPS endpoints are to be used (kms_pg.use_fips_endpoint, env, profile). */
extern bool kms_aws_use_fips(void);

/* "AKIA****ABCD" style masking for display (palloc'd). */
extern char *kms_aws_mask_key_id(const char *akid);

#endif							/* KMS_CREDENTIALS_H */
