/*-------------------------------------------------------------------------
 * kms_pg.h
 *	  Constants shared by every kms_pg module.
 *
 * kms_pg performs KMS envelope encryption inside the backend: a 256-bit
 * data key (DEK) from a key provider seals each value with AES-256-GCM,
 * and the provider-wrapped DEK travels inside the ciphertext.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_PG_H
#define KMS_PG_H

#include "postgres.h"

#include "kms_compat.h"

#define KMS_DEK_LEN			32		/* AES-256 data key */
#define KMS_NONCE_LEN		12		/* 96-bit GCM nonce */
#define KMS_TAG_LEN			16		/* 128-bit GCM tag */
#define KMS_KEY_ID_MAXLEN	255		/* bytes of a key id in a ciphertext */
#define KMS_WRAPPED_MAXLEN	1024	/* bytes of a provider-wrapped DEK */
#define KMS_CTX_KEYS_MAX	32		/* context keys sent to the provider */

/* Provider identifiers as recorded in byte 5 of every ciphertext. */
typedef enum KmsProviderId
{
	KMS_PROVIDER_LOCAL = 1,
	KMS_PROVIDER_AWS = 2
} KmsProviderId;

/* Set once _PG_init has run under shared_preload_libraries. */
extern bool kms_loaded_via_preload;

/* Module initialisers called from _PG_init (kms_pg.c). */
extern void kms_guc_init(void);
extern void kms_dek_cache_init(void);
extern void kms_http_init(void);

#endif							/* KMS_PG_H */
