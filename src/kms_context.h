/*-------------------------------------------------------------------------
 * kms_context.h
 *	  Encryption context: jsonb object -> canonical bytes (the AES-GCM
 *	  additional data), and the subset of it that goes to the provider.
 *
 * Canonical form (docs/format.md, "Encryption context"):
 *	 u32be  number of pairs
 *	 per pair, sorted by key bytes (memcmp, shorter key first on a tie):
 *	   u32be key length, key bytes (UTF-8 as stored by jsonb)
 *	   u8    type: 1 string, 2 number, 3 boolean
 *	   u32be value length, value bytes
 *	 string values are their UTF-8 bytes; numbers the normalised decimal
 *	 text of numeric_normalize() (no exponent, no trailing fractional
 *	 zeros, "-0" is "0"); booleans "true" or "false".
 *-------------------------------------------------------------------------
 */
#ifndef KMS_CONTEXT_H
#define KMS_CONTEXT_H

#include "kms_errors.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"

#define KMS_CTX_TYPE_STRING		1
#define KMS_CTX_TYPE_NUMBER		2
#define KMS_CTX_TYPE_BOOLEAN	3

#define KMS_CTX_MAX_PAIRS		1024
#define KMS_CTX_MAX_BYTES		65536

typedef struct KmsContextPair
{
	const char *key;
	int			keylen;
	uint8		type;
	const char *value;			/* canonical text (not NUL-terminated) */
	int			valuelen;
} KmsContextPair;

typedef struct KmsContext
{
	int			npairs;
	KmsContextPair *pairs;		/* sorted by key */
	StringInfoData canonical;	/* canonical bytes, see above */
} KmsContext;

/* Parse and canonicalise; on failure returns a code and sets *detail. */
extern KmsError kms_context_from_jsonb(Jsonb *jb, KmsContext *out, char **detail);

/* Canonicalise pairs passed one by one (sorted in place). */
extern KmsError kms_context_from_pairs(KmsContextPair *pairs, int npairs, KmsContext *out,
									   char **detail);

/* Same, raising the error. */
extern void kms_context_from_jsonb_or_error(Jsonb *jb, KmsContext *out);

/* Canonical bytes of an arbitrary pair array (already sorted). */
extern void kms_context_serialize(const KmsContextPair *pairs, int npairs, StringInfo out);

/*
 * The provider context: pairs of ctx whose keys are in names (sorted,
 * NUL-terminated strings).  Names absent from ctx are skipped; the names
 * actually used are returned so the ciphertext can record them.
 */
extern void kms_context_select(const KmsContext *ctx, char **names, int nnames,
							   KmsContext *out);

/* The empty context {} (no allocation). */
extern void kms_context_init_empty(KmsContext *ctx);

/* Find a pair by key; NULL when absent. */
extern const KmsContextPair *kms_context_find(const KmsContext *ctx,
											  const char *key, int keylen);

/* Rebuild a context from canonical bytes; false when not canonical. */
extern bool kms_context_from_canonical(const uint8 *data, int len, KmsContext *out);

#endif							/* KMS_CONTEXT_H */
