/*-------------------------------------------------------------------------
 * kms_guc.h
 *	  Every kms_pg.* configuration variable.  Defined in kms_guc.c.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_GUC_H
#define KMS_GUC_H

#include "kms_pg.h"

/* kms_pg.provider: which provider makes new DEKs */
extern int	kms_guc_provider;		/* a KmsProviderId */

/* kms_pg.key_id: default key (id, ARN, alias/name or alias ARN) */
extern char *kms_guc_key_id;

/* kms_pg.kms_context_keys, parsed into a sorted, de-duplicated list */
extern char *kms_guc_kms_context_keys;
extern int	kms_guc_kms_context_nkeys;
extern char **kms_guc_kms_context_keylist;	/* in TopMemoryContext */

/* local provider */
extern char *kms_guc_keyring_file;

/* kms_pg.format: ciphertext format of new values (1 or 2) */
extern int	kms_guc_format;

/* DEK reuse limits */
extern int	kms_guc_dek_max_age;		/* seconds */
extern int	kms_guc_dek_max_messages;	/* values sealed per DEK */
extern int	kms_guc_dek_max_bytes_mb;	/* MB sealed per DEK */
extern int	kms_guc_cache_entries;		/* shared cache slots (postmaster) */
extern int	kms_guc_cache_thrash_warning;	/* seconds, 0 = never */
extern int	kms_guc_key_state_check_interval;	/* seconds, 0 = never */

/* AWS provider */
extern char *kms_guc_region;
extern char *kms_guc_endpoint;
extern char *kms_guc_ca_file;
extern char *kms_guc_mrk_replica_regions;
extern char *kms_guc_aws_profile;
extern char *kms_guc_credential_sources;
extern char *kms_guc_imds_endpoint;
extern char *kms_guc_sts_endpoint;
extern char *kms_guc_container_endpoint;
extern char *kms_guc_sso_endpoint;
extern bool kms_guc_use_fips_endpoint;
extern int	kms_guc_connect_timeout_ms;
extern int	kms_guc_request_timeout_ms;
extern int	kms_guc_max_retries;

/* Hard ceiling for random-nonce AES-GCM: 2^32 invocations per key (NIST SP 800-38D 8.3). */
#define KMS_GCM_RANDOM_NONCE_CEILING	((uint64) 1 << 32)

/* Name of the keyring file actually used (resolves the default). */
extern const char *kms_guc_keyring_path(void);

#endif							/* KMS_GUC_H */
