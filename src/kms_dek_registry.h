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

/*
 * The reference of an encrypting DEK (a v1 header, from the cache), with a
 * registry row that commits with the current transaction or has already
 * committed.  Raises 25006 on a hot standby or in a read-only transaction,
 * 25000 in parallel mode.
 */
extern uint64 kms_dek_registry_ensure(KmsDek *dek);

/*
 * Record the new wrapping of the DEK of v2 value env (kms_rewrap): the
 * row is updated only if it still holds env's old wrapped DEK.
 */
extern void kms_dek_registry_rewrapped(const KmsEnvelope *env, uint8 provider,
									   const KmsWrappedKey *w);

#endif							/* KMS_DEK_REGISTRY_H */
