/*-------------------------------------------------------------------------
 * kms_guc.c
 *	  Every kms_pg.* configuration variable, with check/assign hooks.
 *
 * Contexts follow risk (the pgaudit model):
 *	- anything that decides where KMS traffic goes or which credentials it
 *	  carries (endpoint, region, CA, credential sources, metadata and STS
 *	  endpoints, profile, keyring file, master key source) is PGC_SIGHUP: only the server
 *	  configuration can set it, so an ordinary user can never redirect KMS
 *	  requests or read another keyring;
 *	- which provider makes new DEKs is PGC_SUSET;
 *	- the default key, the provider-context keys and timeouts are
 *	  PGC_USERSET (bounded): a user can only choose among keys the
 *	  provider lets the server use;
 *	- the cache size is PGC_POSTMASTER (shared memory).
 * Parsing happens in check hooks (GUC_check_errdetail), copying in
 * assign hooks.  No GUC ever holds a secret.
 *-------------------------------------------------------------------------
 */
#include "kms_guc.h"
#include "kms_master_key.h"

#include <limits.h>

#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/varlena.h"

int			kms_guc_provider = KMS_PROVIDER_LOCAL;
char	   *kms_guc_key_id = NULL;
char	   *kms_guc_kms_context_keys = NULL;
int			kms_guc_kms_context_nkeys = 0;
char	  **kms_guc_kms_context_keylist = NULL;
char	   *kms_guc_keyring_file = NULL;
int			kms_guc_format = 1;
int			kms_guc_dek_max_age = 300;
int			kms_guc_dek_max_messages = 10000000;
int			kms_guc_dek_max_bytes_mb = 65536;
int			kms_guc_cache_entries = 65536;
int			kms_guc_cache_thrash_warning = 60;
int			kms_guc_key_state_check_interval = 0;
char	   *kms_guc_region = NULL;
char	   *kms_guc_endpoint = NULL;
char	   *kms_guc_ca_file = NULL;
char	   *kms_guc_mrk_replica_regions = NULL;
char	   *kms_guc_aws_profile = NULL;
char	   *kms_guc_credential_sources = NULL;
char	   *kms_guc_imds_endpoint = NULL;
char	   *kms_guc_sts_endpoint = NULL;
char	   *kms_guc_container_endpoint = NULL;
char	   *kms_guc_sso_endpoint = NULL;
bool		kms_guc_use_fips_endpoint = false;
int			kms_guc_connect_timeout_ms = 2000;
int			kms_guc_request_timeout_ms = 10000;
int			kms_guc_max_retries = 4;

static const struct config_enum_entry provider_options[] = {
	{"local", KMS_PROVIDER_LOCAL, false},
	{"aws", KMS_PROVIDER_AWS, false},
	{NULL, 0, false}
};

/* Parsed form of kms_pg.kms_context_keys, handed from check to assign. */
typedef struct KmsKeyList
{
	int			nkeys;
	char	   *keys[FLEXIBLE_ARRAY_MEMBER];
} KmsKeyList;

static int
cmp_cstr(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * kms_pg.kms_context_keys: comma-separated context key names sent to the
 * provider as its encryption context.  Parsed into a sorted, de-duplicated
 * list in guc_malloc'd memory ("extra") for the assign hook.
 */
static bool
check_kms_context_keys(char **newval, void **extra, GucSource source)
{
	char	   *raw;
	List	   *names = NIL;
	ListCell   *lc;
	KmsKeyList *kl;
	Size		sz;
	char	   *p;
	int			n = 0;
	char	  **tmp;

	raw = pstrdup(*newval ? *newval : "");
	if (!SplitIdentifierString(raw, ',', &names))
	{
		GUC_check_errdetail("List syntax is invalid.");
		return false;
	}
	if (list_length(names) > KMS_CTX_KEYS_MAX)
	{
		GUC_check_errdetail("At most %d context keys can be sent to the key provider.",
							KMS_CTX_KEYS_MAX);
		return false;
	}
	tmp = palloc(sizeof(char *) * (list_length(names) + 1));
	sz = offsetof(KmsKeyList, keys) + sizeof(char *) * (list_length(names) + 1);
	foreach(lc, names)
	{
		char	   *name = (char *) lfirst(lc);

		if (strlen(name) == 0 || strlen(name) > 255)
		{
			GUC_check_errdetail("Context key names must be 1 to 255 bytes long.");
			return false;
		}
		tmp[n++] = name;
		sz += strlen(name) + 1;
	}
	qsort(tmp, n, sizeof(char *), cmp_cstr);

	kl = (KmsKeyList *) kms_guc_extra_alloc(sz);
	if (kl == NULL)
	{
		GUC_check_errdetail("Out of memory.");
		return false;
	}
	p = (char *) &kl->keys[n + 1];
	kl->nkeys = 0;
	for (int i = 0; i < n; i++)
	{
		if (kl->nkeys > 0 && strcmp(kl->keys[kl->nkeys - 1], tmp[i]) == 0)
			continue;
		strcpy(p, tmp[i]);
		kl->keys[kl->nkeys++] = p;
		p += strlen(tmp[i]) + 1;
	}
	kl->keys[kl->nkeys] = NULL;
	*extra = kl;
	return true;
}

static void
assign_kms_context_keys(const char *newval, void *extra)
{
	KmsKeyList *kl = (KmsKeyList *) extra;

	kms_guc_kms_context_nkeys = kl ? kl->nkeys : 0;
	kms_guc_kms_context_keylist = kl ? kl->keys : NULL;
}

/*
 * Endpoints must be http(s) URLs.  Plain http is accepted only for
 * loopback hosts, enforced again at request time by kms_http.c.
 */
static bool
check_url(char **newval, void **extra, GucSource source)
{
	const char *v = *newval;

	if (v == NULL || v[0] == '\0')
		return true;
	if (strncmp(v, "https://", 8) == 0)
		return true;
	if (strncmp(v, "http://", 7) == 0)
		return true;
	GUC_check_errdetail("The endpoint must start with https:// (or http:// for a loopback address).");
	return false;
}

static bool
check_credential_sources(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval ? *newval : "");
	List	   *names = NIL;
	ListCell   *lc;

	if (!SplitIdentifierString(raw, ',', &names))
	{
		GUC_check_errdetail("List syntax is invalid.");
		return false;
	}
	foreach(lc, names)
	{
		const char *s = (const char *) lfirst(lc);

		if (strcmp(s, "env") != 0 && strcmp(s, "web_identity") != 0 &&
			strcmp(s, "profile") != 0 && strcmp(s, "container") != 0 &&
			strcmp(s, "imds") != 0)
		{
			GUC_check_errdetail("Unknown credential source \"%s\"; use env, web_identity, profile, container, imds.", s);
			return false;
		}
	}
	return true;
}

const char *
kms_guc_keyring_path(void)
{
	static char path[MAXPGPATH];

	if (kms_guc_keyring_file == NULL || kms_guc_keyring_file[0] == '\0')
		snprintf(path, sizeof(path), "%s/kms_pg_keyring.json", DataDir);
	else if (is_absolute_path(kms_guc_keyring_file))
		strlcpy(path, kms_guc_keyring_file, sizeof(path));
	else
		snprintf(path, sizeof(path), "%s/%s", DataDir, kms_guc_keyring_file);
	return path;
}

void
kms_guc_init(void)
{
	DefineCustomEnumVariable("kms_pg.provider",
							 "Key provider that generates new data keys.",
							 "Decryption always uses the provider recorded in the ciphertext.",
							 &kms_guc_provider, KMS_PROVIDER_LOCAL, provider_options,
							 PGC_SUSET, 0, NULL, NULL, NULL);

	DefineCustomStringVariable("kms_pg.key_id",
							   "Default key for kms_encrypt: key id, key ARN, alias/name or alias ARN.",
							   NULL, &kms_guc_key_id, "",
							   PGC_USERSET, 0, NULL, NULL, NULL);

	DefineCustomStringVariable("kms_pg.kms_context_keys",
							   "Comma-separated encryption-context keys also sent to the key provider.",
							   "Their values partition the data key cache; never list per-row ids.",
							   &kms_guc_kms_context_keys, "",
							   PGC_USERSET, GUC_LIST_INPUT,
							   check_kms_context_keys, assign_kms_context_keys, NULL);

	DefineCustomStringVariable("kms_pg.keyring_file",
							   "Local provider keyring file (relative paths are inside the data directory).",
							   NULL, &kms_guc_keyring_file, "kms_pg_keyring.json",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);

	DefineCustomStringVariable("kms_pg.master_key_file",
							   "File holding the local provider's master key (relative paths are inside the data directory).",
							   "64 hexadecimal characters; keep the file outside the data directory, mode 0600.",
							   &kms_guc_master_key_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);

	DefineCustomStringVariable("kms_pg.master_key_command",
							   "Command printing the local provider's master key (run without a shell).",
							   "An absolute program path and arguments separated by spaces.",
							   &kms_guc_master_key_command, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);

	DefineCustomStringVariable("kms_pg.previous_master_key_file",
							   "File holding the master key being rotated away from.",
							   NULL, &kms_guc_previous_master_key_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);

	DefineCustomStringVariable("kms_pg.previous_master_key_command",
							   "Command printing the master key being rotated away from.",
							   NULL, &kms_guc_previous_master_key_command, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);

	DefineCustomIntVariable("kms_pg.master_key_command_timeout",
							"Time a master key command may run before it is killed.",
							NULL, &kms_guc_master_key_command_timeout_ms, 10000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	DefineCustomIntVariable("kms_pg.format",
							"Ciphertext format of new values: 1 (self-contained) or 2 (40 bytes of overhead, DEK in the registry).",
							"A format 2 value cannot be decrypted without its kms_dek_registry row: values that leave the database should stay format 1.",
							&kms_guc_format, 1, 1, 2,
							PGC_USERSET, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("kms_pg.dek_max_age",
							"Seconds a cached data key may seal new values.",
							NULL, &kms_guc_dek_max_age, 300, 1, 86400,
							PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);

	DefineCustomIntVariable("kms_pg.dek_max_messages",
							"Values sealed with one data key before a new one is generated.",
							"Random 96-bit nonces make 2^32 the hard ceiling for AES-GCM.",
							&kms_guc_dek_max_messages, 10000000, 1, INT_MAX,
							PGC_USERSET, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("kms_pg.dek_max_bytes",
							"Plaintext bytes sealed with one data key before a new one is generated.",
							NULL, &kms_guc_dek_max_bytes_mb, 65536, 1, INT_MAX,
							PGC_USERSET, GUC_UNIT_MB, NULL, NULL, NULL);

	DefineCustomIntVariable("kms_pg.cache_entries",
							"Data keys held in the shared-memory cache.",
							NULL, &kms_guc_cache_entries, 65536, 16, 1048576,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("kms_pg.cache_thrash_warning",
							"Log when the data key cache evicts as many valid data keys as it holds within this time (0: never).",
							"At most one message per interval; its hint names the kms_pg.cache_entries that would fit.",
							&kms_guc_cache_thrash_warning, 60, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);

	DefineCustomIntVariable("kms_pg.key_state_check_interval",
							"How often the state of AWS KMS keys with cached data keys is re-checked (0: never).",
							"One DescribeKey per key per interval, server-wide; a key that is not Enabled loses its cached data keys.",
							&kms_guc_key_state_check_interval, 0, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);

	DefineCustomStringVariable("kms_pg.region",
							   "AWS region of the KMS endpoint (empty: AWS_REGION or AWS_DEFAULT_REGION of the server).",
							   NULL, &kms_guc_region, "",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomStringVariable("kms_pg.endpoint",
							   "AWS KMS endpoint URL (empty: https://kms.<region>.amazonaws.com).",
							   "Use for FIPS or VPC endpoints.",
							   &kms_guc_endpoint, "",
							   PGC_SIGHUP, 0, check_url, NULL, NULL);

	DefineCustomStringVariable("kms_pg.ca_file",
							   "CA bundle for verifying the KMS endpoint (empty: system trust store).",
							   NULL, &kms_guc_ca_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);

	DefineCustomStringVariable("kms_pg.mrk_replica_regions",
							   "Replica regions for multi-Region keys: region or region=endpoint, comma-separated.",
							   "Tried in order when a multi-Region key's own region fails.",
							   &kms_guc_mrk_replica_regions, "",
							   PGC_SIGHUP, GUC_LIST_INPUT, NULL, NULL, NULL);

	DefineCustomStringVariable("kms_pg.aws_profile",
							   "Profile in the shared AWS credentials/config files (empty: AWS_PROFILE, else default).",
							   NULL, &kms_guc_aws_profile, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);

	DefineCustomStringVariable("kms_pg.credential_sources",
							   "AWS credential sources tried in order.",
							   NULL, &kms_guc_credential_sources,
							   "env,web_identity,profile,container,imds",
							   PGC_SIGHUP, GUC_LIST_INPUT | GUC_SUPERUSER_ONLY,
							   check_credential_sources, NULL, NULL);

	DefineCustomStringVariable("kms_pg.imds_endpoint",
							   "EC2 instance metadata endpoint.",
							   NULL, &kms_guc_imds_endpoint, "http://169.254.169.254",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, check_url, NULL, NULL);

	DefineCustomStringVariable("kms_pg.sts_endpoint",
							   "AWS STS endpoint for web identity (empty: https://sts.<region>.amazonaws.com).",
							   NULL, &kms_guc_sts_endpoint, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, check_url, NULL, NULL);

	DefineCustomStringVariable("kms_pg.container_endpoint",
							   "Base URL for AWS_CONTAINER_CREDENTIALS_RELATIVE_URI.",
							   NULL, &kms_guc_container_endpoint, "http://169.254.170.2",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, check_url, NULL, NULL);

	DefineCustomStringVariable("kms_pg.sso_endpoint",
							   "AWS IAM Identity Center (SSO) portal endpoint (empty: https://portal.sso.<sso_region>.amazonaws.com).",
							   NULL, &kms_guc_sso_endpoint, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, check_url, NULL, NULL);

	DefineCustomBoolVariable("kms_pg.use_fips_endpoint",
							 "Use the FIPS endpoints of KMS and STS (off: AWS_USE_FIPS_ENDPOINT or the profile's use_fips_endpoint decide).",
							 NULL, &kms_guc_use_fips_endpoint, false,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("kms_pg.connect_timeout",
							"Timeout for connecting to KMS.",
							NULL, &kms_guc_connect_timeout_ms, 2000, 100, 60000,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);

	DefineCustomIntVariable("kms_pg.request_timeout",
							"Timeout for one KMS request, retries included.",
							NULL, &kms_guc_request_timeout_ms, 10000, 100, 600000,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);

	DefineCustomIntVariable("kms_pg.max_retries",
							"Retries of a throttled or failed KMS request.",
							NULL, &kms_guc_max_retries, 4, 0, 10,
							PGC_USERSET, 0, NULL, NULL, NULL);

	MarkGUCPrefixReserved("kms_pg");
}
