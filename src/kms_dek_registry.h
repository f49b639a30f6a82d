/*-------------------------------------------------------------------------
 * kms_dek_registry.h
 *	  The DEK registry of format 2 values: the table kms_dek_registry in
 *	  the extension's schema maps a 56-bit reference to the provider, key
 *	  id, provider-context name block and wrapped DEK that a v1 value
 *	  carries in its header.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_DEK_REGISTRY_H
#define KMS_DEK_REGISTRY_H

#include "kms_dek_cache.h"
#include "kms_envelope.h"

/*
 * Fill the registry fields of a parsed v2 value (env->dek_ref set): from
 * this backend's memo of registry rows, else with one index lookup.  Raises
 * when the row is missing or invalid.  The pointers stay valid until the
 * next registry call of this backend.
 */
extern void kms_dek_registry_fill(KmsEnvelope *env);

/* The same from this backend's memo only; false (env untouched) when not there. */
extern bool kms_dek_registry_fill_memo(KmsEnvelope *env);

/*
 * The reference of an encrypting DEK (a v1 header, from the cache; key_req
 * and kctx as the DEK was requested: kept in a new row for rotation and
 * reuse), with a
 * registry row that commits with the current transaction or has already
 * committed.  Raises 25006 on a hot standby or in a read-only transaction,
 * 25000 in parallel mode.
 */
extern uint64 kms_dek_registry_ensure(KmsDek *dek, const char *key_req,
									  const KmsContext *kctx);

/*
 * Record the new wrapping of the DEK of v2 value env (kms_rewrap): the
 * row is updated only if it still holds env's old wrapped DEK.
 */
extern void kms_dek_registry_rewrapped(const KmsEnvelope *env, uint8 provider,
									   const KmsWrappedKey *w);

/*
 * Encrypting miss under format 2: the newest registry row made for
 * (provider, key as requested, provider context) that is younger than
 * kms_pg.dek_max_age, not rewrapped since, and whose recorded budget leaves
 * room for one more lease (lease_m values, lease_b bytes, within max_m and
 * max_b).  Takes the lease in the row (one registry write) and returns its
 * key id, wrapped DEK and creation time; false when there is none (or the
 * transaction cannot write).
 */
extern bool kms_dek_registry_reuse(uint8 provider, const char *key_req, const KmsContext *kctx,
								   uint64 lease_m, uint64 lease_b, uint64 max_m, uint64 max_b,
								   KmsWrappedKey *w, TimestampTz *created_at);

/*
 * Every backend of this server reads registry rows again (at its next
 * transaction): a Citus worker after the coordinator changed them
 * (kms_citus_registry_rewrapped) or its keyring.
 */
extern void kms_dek_registry_invalidate(void);

/* The v1 header of the DEK of row ref; false when the row is not visible. */
extern bool kms_dek_registry_header(uint64 ref, uint8 **header, int *header_len);

#endif							/* KMS_DEK_REGISTRY_H */
