/*-------------------------------------------------------------------------
 * kms_provider.h
 *	  The key-provider function table.  Every provider (local keyring,
 *	  AWS KMS) implements these operations; the rest of kms_pg never
 *	  knows which one it talks to.
 *
 * Providers raise their own errors with ereport() (specific SQLSTATEs,
 * provider error type and request id in errdetail, never key bytes).
 * Plaintext DEKs are written only into caller buffers, which the caller
 * wipes.  Providers must not hold LWLocks; callers never call them while
 * holding one.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_PROVIDER_H
#define KMS_PROVIDER_H

#include "kms_context.h"

/* Result of generate_data_key and rewrap_data_key (palloc'd fields). */
typedef struct KmsWrappedKey
{
	char	   *key_id;			/* canonical key id to record (NUL-terminated) */
	uint8	   *wrapped;		/* provider-wrapped DEK blob */
	int			wrapped_len;
} KmsWrappedKey;

typedef struct KmsProviderRoutine
{
	const char *name;			/* "local", "aws" */
	KmsProviderId id;

	/*
	 * Make a new 256-bit DEK under key (as the user wrote it: id, ARN,
	 * alias/name, alias ARN), bound to the provider context kctx.  Writes
	 * the plaintext DEK to dek_out[KMS_DEK_LEN].
	 */
	void		(*generate_data_key) (const char *key, const KmsContext *kctx,
									  uint8 *dek_out, KmsWrappedKey *wrapped_out);

	/*
	 * Unwrap a DEK recorded in a ciphertext under key_id with the provider
	 * context kctx; writes the plaintext DEK to dek_out[KMS_DEK_LEN].
	 */
	void		(*decrypt_data_key) (const char *key_id, const uint8 *wrapped,
									 int wrapped_len, const KmsContext *kctx,
									 uint8 *dek_out);

	/*
	 * Re-wrap a DEK under new_key, keeping the provider context.  The
	 * plaintext DEK should not leave the provider where it can help it
	 * (AWS ReEncrypt).
	 */
	void		(*rewrap_data_key) (const char *key_id, const uint8 *wrapped,
									int wrapped_len, const KmsContext *kctx,
									const char *new_key, KmsWrappedKey *wrapped_out);

	/*
	 * Wrap an existing plaintext DEK under key (moving a value from another
	 * provider to this one).  AWS: Encrypt.
	 */
	void		(*encrypt_data_key) (const char *key, const KmsContext *kctx,
									 const uint8 *dek, KmsWrappedKey *wrapped_out);

	/*
	 * Describe a key for health checks: fills a palloc'd text description
	 * (JSON object text) or raises.
	 */
	char	   *(*describe_key) (const char *key);
} KmsProviderRoutine;

/* Look up a provider by its ciphertext id or by name; NULL when unknown. */
extern const KmsProviderRoutine *kms_provider_by_id(int id);
extern const KmsProviderRoutine *kms_provider_by_name(const char *name);

/* The provider selected by kms_pg.provider for new DEKs. */
extern const KmsProviderRoutine *kms_provider_current(void);

/*
 * The key to use for new DEKs: explicit argument, else kms_pg.key_id;
 * raises a clear error when neither is set.
 */
extern const char *kms_provider_resolve_key(const char *explicit_key);

/* Providers' tables, defined in their own files. */
extern const KmsProviderRoutine kms_provider_local;
extern const KmsProviderRoutine kms_provider_aws;

#endif							/* KMS_PROVIDER_H */
