/*-------------------------------------------------------------------------
 * kms_aws_config.h
 *	  The shared AWS config and credentials files, the AWS_* environment
 *	  and kms_pg.* settings, resolved into a credential plan, a region and
 *	  endpoints exactly as botocore resolves them (see kms_aws_config.c for
 *	  the rules and the few deliberate differences).
 *
 * Resolving never makes a network call and never runs a program: it says
 * WHERE credentials will come from.  kms_credentials.c executes the plan.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_AWS_CONFIG_H
#define KMS_AWS_CONFIG_H

#include "kms_pg.h"

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"

typedef enum KmsAwsCredKind
{
	KMS_AWS_CRED_ENV,			/* AWS_ACCESS_KEY_ID/... of the server process */
	KMS_AWS_CRED_STATIC,		/* aws_access_key_id in a profile */
	KMS_AWS_CRED_ASSUME_ROLE,	/* role_arn + source_profile/credential_source */
	KMS_AWS_CRED_WEB_IDENTITY,	/* web identity token file + role ARN */
	KMS_AWS_CRED_SSO,			/* sso_* keys + cached SSO token */
	KMS_AWS_CRED_PROCESS,		/* credential_process */
	KMS_AWS_CRED_CONTAINER,		/* ECS/EKS container credentials */
	KMS_AWS_CRED_IMDS			/* EC2 instance metadata (IMDSv2) */
} KmsAwsCredKind;

typedef struct KmsAwsCredPlan
{
	KmsAwsCredKind kind;
	const char *profile;		/* profile the step comes from, or NULL */
	const char *file;			/* STATIC: the file the keys are in */
	bool		from_config_file;	/* STATIC: config (true) or credentials file */

	/* STATIC: pointers into the parsed files (secure memory) */
	const char *akid;
	const char *secret;
	const char *token;

	/* ASSUME_ROLE and WEB_IDENTITY */
	const char *role_arn;
	const char *role_session_name;	/* NULL: generated */
	const char *external_id;	/* ASSUME_ROLE only */
	int			duration_seconds;	/* 0: STS default */
	struct KmsAwsCredPlan *source;	/* ASSUME_ROLE: where the source credentials come from */
	const char *source_how;		/* "source_profile x" or "credential_source Y" */

	/* WEB_IDENTITY */
	const char *token_file;

	/* SSO */
	const char *sso_start_url;
	const char *sso_region;
	const char *sso_account_id;
	const char *sso_role_name;
	const char *sso_session;	/* NULL for the legacy profile form */

	/* PROCESS */
	const char *command;
} KmsAwsCredPlan;

typedef struct KmsAwsConfig
{
	const char *profile;		/* profile name in effect */
	const char *profile_from;	/* "kms_pg.aws_profile", "AWS_PROFILE", ... or "default" */
	const char *config_path;	/* NULL when no HOME and no AWS_CONFIG_FILE */
	const char *credentials_path;

	const char *region;			/* NULL: none configured (IMDS would be asked) */
	const char *region_from;	/* "kms_pg.region", "AWS_REGION", ..., "profile x", "imds" */

	bool		use_fips;		/* use_fips_endpoint / AWS_USE_FIPS_ENDPOINT */
	bool		sts_legacy;		/* sts_regional_endpoints = legacy */

	KmsAwsCredPlan *plan;		/* NULL when no source is configured */
	StringInfoData tried;		/* what was skipped, for the "none found" error */
} KmsAwsConfig;

/*
 * Resolve everything in CurrentMemoryContext (secret values live in secure
 * memory wiped when that context goes away).  Configuration errors (a
 * profile that does not exist, a source_profile loop, mfa_serial, a bad
 * file) raise.  want_plan = false resolves only profile, region and
 * endpoints settings.
 */
extern void kms_aws_config_resolve(KmsAwsConfig *cfg, bool want_plan);

/* The region of cfg; asks IMDS when nothing else is configured.  Raises if none. */
extern const char *kms_aws_config_region(KmsAwsConfig *cfg);

/* KMS endpoint for a region when kms_pg.endpoint is not set (FIPS-aware). */
extern char *kms_aws_kms_default_endpoint(const char *region, bool fips);

/* STS endpoint and signing region for cfg (kms_pg.sts_endpoint wins). */
extern char *kms_aws_sts_endpoint(KmsAwsConfig *cfg, const char **signing_region);

/* A one-line description of a plan, without secrets. */
extern char *kms_aws_plan_describe(const KmsAwsCredPlan *plan);

/* The short name of a plan step: "env", "profile", "assume_role", ... */
extern const char *kms_aws_cred_kind_name(KmsAwsCredKind kind);

/*
 * Environment lookup used by every AWS setting: the server process's
 * environment, or, while kms_aws_config() runs with an environment
 * argument, that one.  Empty values count as unset.
 */
extern const char *kms_aws_getenv(const char *name);

/* Python's shlex.split (POSIX mode); NIL and *bad on unbalanced quotes. */
extern List *kms_aws_shlex_split(const char *s, bool *bad);

/* Home directory ($HOME, else the passwd entry). */
extern const char *kms_aws_home_dir(void);

#endif							/* KMS_AWS_CONFIG_H */
