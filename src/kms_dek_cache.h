/*-------------------------------------------------------------------------
 * kms_dek_cache.h
 *	  Data-key cache: a shared-memory table of plaintext DEKs used by all
 *	  backends and parallel workers, fronted by a small backend-local
 *	  table so the per-row path takes no lock.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_DEK_CACHE_H
#define KMS_DEK_CACHE_H

#include "kms_envelope.h"
#include "kms_provider.h"

/* A DEK ready for use by this backend (owned by the cache; do not free). */
typedef struct KmsDek
{
	EVP_CIPHER_CTX *ctx;		/* keyed GCM context (encrypt or decrypt) */
	const uint8 *header;		/* envelope header, for encryption */
	int			header_len;
	int			names_off;		/* provider-context key block in header */
	int			names_len;
	/* format 2 (kms_dek_registry.c): the DEK's reference, 0 until computed */
	uint64		dek_ref;
	uint64		ensured_epoch;	/* registry row ensured in this (sub)xact epoch */
	/* the DEK's budget (values, bytes) as this cache entry allows it */
	uint64		max_messages;
	uint64		max_bytes;
} KmsDek;

/* Provider operations counted in kms_cache_stats. */
typedef enum KmsStatOp
{
	KMS_STAT_GENERATE = 0,
	KMS_STAT_DECRYPT,
	KMS_STAT_REWRAP,
	KMS_STAT_DESCRIBE,
	KMS_STAT_NOPS
} KmsStatOp;

/*
 * DEK for sealing nbytes under key with provider context kctx.  Counts
 * the value against the DEK's limits (messages, bytes, age).  Under format
 * 2 a miss reloads the current registry DEK of (key, kctx) when one may
 * still seal (docs/cache.md), and a new DEK gets one lease of its budget.
 */
extern KmsDek *kms_dek_for_encrypt(const KmsProviderRoutine *provider, const char *key,
								   const KmsContext *kctx, Size nbytes, int format);

/*
 * DEK for opening env.  full_ctx is the caller's whole context; the
 * provider context is built from it (names recorded in env) only when
 * the provider must be asked.
 */
extern KmsDek *kms_dek_for_decrypt(const KmsProviderRoutine *provider,
								   const KmsEnvelope *env, const KmsContext *full_ctx);

/*
 * DEK of v2 value env (dek_ref set, registry fields not yet) from the cache
 * by its reference alone: fills env's provider, key id and name block as
 * the cache recorded them from the registry row, or returns NULL (the
 * caller then reads the registry and calls kms_dek_for_decrypt).  The
 * caller must check key privileges before using the DEK.
 */
extern KmsDek *kms_dek_for_decrypt_ref(KmsEnvelope *env);

/*
 * The encrypting DEK dek has registry row ref: its shared entry is also
 * found by ref, and keeps serving encryption after the header ring has
 * overwritten its v1 header (rebuilt from the row when it is visible;
 * otherwise the entry retires from encryption as a v1 entry does).
 */
extern void kms_dek_cache_note_ref(KmsDek *dek, uint64 ref);

/* Drop the cached DEK found by v2 reference ref (its row was rewrapped). */
extern void kms_dek_cache_forget_ref(uint64 ref);

/*
 * Re-wrap the DEK of env under new_key.  Identical wrapped DEKs in one
 * transaction are re-wrapped once (the result is remembered).
 */
extern void kms_dek_rewrap(const KmsProviderRoutine *provider, const KmsEnvelope *env,
						   const KmsContext *full_ctx, const char *new_key,
						   KmsWrappedKey *out);

/* Build the provider context from env's recorded names (raises if absent). */
extern void kms_dek_provider_context(const KmsEnvelope *env, const KmsContext *full_ctx,
									 KmsContext *kctx);

/* Make the next value under (provider, key, kctx) use a fresh DEK. */
extern void kms_dek_retire_encrypt(const KmsProviderRoutine *provider, const char *key,
								   const KmsContext *kctx);

/* Wipe every cached DEK, shared and local; returns shared entries wiped. */
extern int	kms_dek_cache_flush(void);

/*
 * Forget the DEKs of one key in every backend (after disabling it, or when
 * KMS says it is disabled, pending deletion or gone): shared slots whose
 * wrapping key id or requested key name matches key (exactly or as an ARN's
 * tail), of provider (-1: any).  This backend's local copies are all
 * dropped.  Returns the shared entries wiped.
 */
extern int	kms_dek_cache_forget_key(int provider, const char *key);

/* Count one provider request (each HTTP attempt for AWS). */
extern void kms_stats_count_call(KmsStatOp op, bool failed);

/* Raise unless the shared cache exists (shared_preload_libraries). */
extern void kms_dek_cache_require(void);

/* Stats snapshot for the kms_cache_stats view. */
typedef struct KmsCacheStats
{
	int64		entries;
	int64		entries_encrypting;
	int64		capacity;
	int64		hits;
	int64		local_hits;
	int64		misses;
	int64		calls[KMS_STAT_NOPS];
	int64		call_errors;
	int64		coalesced_waits;
	int64		evictions;
	int64		expirations;
	int64		rotations;		/* DEKs retired by a limit */
	int64		flushes;
	int64		thrash_warnings;	/* thrash messages logged */
	int64		memory_bytes;	/* shared memory of the cache */
} KmsCacheStats;

extern void kms_dek_cache_stats(KmsCacheStats *out);

#endif							/* KMS_DEK_CACHE_H */
