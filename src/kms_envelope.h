/*-------------------------------------------------------------------------
 * kms_envelope.h
 *	  The kms_pg ciphertext, format version 1 (docs/format.md), and the
 *	  AES-256-GCM seal/open of one value.
 *
 *	 off  len  field
 *	 0    4    magic C5 4B 50 47 ("\xC5KPG": never valid UTF-8)
 *	 4    1    format version, 0x01
 *	 5    1    provider id (1 local, 2 aws)
 *	 6    1    key id length K (1..255)
 *	 7    K    key id (UTF-8)
 *	 .    1    number C of context keys sent to the provider (0..32)
 *	 .         C times: u8 length L (1..255), L bytes of key name (sorted)
 *	 .    2    wrapped DEK length W, big-endian (1..1024)
 *	 .    W    provider-wrapped DEK
 *	 H    12   nonce (H = header length: everything before the nonce)
 *	 H+12 N    AES-256-GCM ciphertext of the N plaintext bytes
 *	 end  16   GCM tag
 * The additional data (AAD) is: bytes 0..4 (magic and version), the
 * provider-context key block (the count byte and the names), then the
 * canonical encryption context (kms_context.h).  The key id and wrapped
 * DEK are not part of it: they are authenticated by the provider when it
 * unwraps (a different wrapped DEK yields a different DEK, whose tag check
 * fails), and leaving them out lets kms_rewrap() re-wrap the DEK under a
 * new key while the sealed body, nonce and tag stay byte for byte.
 *
 * Format version 2 (/work/v2_spec.md, docs/format.md) replaces the key id,
 * name block and wrapped DEK by a 7-byte reference to a row of the DEK
 * registry (kms_dek_registry.h), which holds exactly those fields:
 *	 0    4    magic
 *	 4    1    format version, 0x02
 *	 5    7    DEK reference (big-endian, 1 .. 2^56-1)
 *	 12   12   nonce
 *	 24   N    ciphertext
 *	 24+N 16   GCM tag
 * Its AAD is bytes 0..11, the registry row's name block, the canonical
 * context.  Parsing a v2 value leaves the registry fields unset; the
 * caller fills them with kms_envelope_set_registry().
 *-------------------------------------------------------------------------
 */
#ifndef KMS_ENVELOPE_H
#define KMS_ENVELOPE_H

#include "kms_errors.h"

#include <openssl/evp.h>

#define KMS_ENVELOPE_VERSION	1
#define KMS_ENVELOPE_V2			2
#define KMS_V2_PREFIX_LEN		12	/* magic, version, DEK reference */
#define KMS_V2_OVERHEAD			(KMS_V2_PREFIX_LEN + KMS_NONCE_LEN + KMS_TAG_LEN)
#define KMS_DEK_REF_MAX			((((uint64) 1) << 56) - 1)

/*
 * A wrapped DEK of the local provider (docs/format.md): wrap format byte,
 * u32 key version, nonce, encrypted DEK, tag.  Checked when a value is
 * parsed, so kms_ciphertext_info and kms_decrypt agree on what is valid.
 */
#define KMS_LOCAL_WRAP_FORMAT	1
#define KMS_LOCAL_WRAP_LEN		(1 + 4 + KMS_NONCE_LEN + KMS_DEK_LEN + KMS_TAG_LEN)
#define KMS_ENVELOPE_MIN_LEN	(4 + 1 + 1 + 1 + 1 + 1 + 2 + 1 + KMS_NONCE_LEN + KMS_TAG_LEN)

extern const uint8 kms_envelope_magic[4];

/* A parsed ciphertext; all pointers point into the parsed buffer. */
typedef struct KmsEnvelope
{
	uint8		version;
	uint64		dek_ref;		/* version 2 only */
	uint8		provider;
	const char *key_id;
	int			key_id_len;
	int			nctxkeys;
	const char *ctxkeys[KMS_CTX_KEYS_MAX];
	int			ctxkeylens[KMS_CTX_KEYS_MAX];
	const uint8 *wrapped;
	int			wrapped_len;
	const uint8 *names_block;	/* count byte and names, for the AAD */
	int			names_block_len;
	int			header_len;
	const uint8 *nonce;
	const uint8 *body;
	int			body_len;
	const uint8 *tag;
} KmsEnvelope;

/* Parse without decrypting; never raises.  *detail may be set (palloc'd). */
extern KmsError kms_envelope_parse(const uint8 *buf, size_t len, KmsEnvelope *env,
								   char **detail);

/*
 * Fill the fields of a parsed v2 value that its registry row holds, with
 * the checks a v1 header gets.  The pointers must outlive env.
 */
extern KmsError kms_envelope_set_registry(KmsEnvelope *env, int provider,
										  const char *key_id, int key_id_len,
										  const uint8 *names, int names_len,
										  const uint8 *wrapped, int wrapped_len,
										  char **detail);

/* The same without the wrapped DEK (a v2 DEK served from the cache by reference). */
extern KmsError kms_envelope_set_registry_names(KmsEnvelope *env, int provider,
												const char *key_id, int key_id_len,
												const uint8 *names, int names_len,
												char **detail);

/* Write the 12-byte prefix of a v2 value. */
extern void kms_envelope_v2_prefix(uint64 dek_ref, uint8 *out);

/* True when buf starts like a kms_pg ciphertext and parses completely. */
extern bool kms_envelope_is_ciphertext(const uint8 *buf, size_t len);

/*
 * Serialise a header (everything before the nonce) into a palloc'd buffer.
 * names are the provider-context keys (sorted).
 */
extern uint8 *kms_envelope_build_header(uint8 provider, const char *key_id,
										int nnames, const char *const *names,
										const int *namelens,
										const uint8 *wrapped, int wrapped_len,
										int *header_len);

/* The additional data of one value, in three pieces. */
typedef struct KmsAad
{
	const uint8 *prefix;		/* magic and version (v2: and reference) */
	int			prefix_len;		/* 5 (v1) or 12 (v2) */
	const uint8 *names;			/* provider-context key block */
	int			names_len;
	const uint8 *context;		/* canonical encryption context */
	int			context_len;
} KmsAad;

/* Where the provider-context key block sits in a built header. */
extern void kms_envelope_header_names(const uint8 *header, int header_len,
									  int *offset, int *len);

/* A GCM context keyed once with a DEK, reused for every value. */
extern EVP_CIPHER_CTX *kms_gcm_context_new(const uint8 *dek, bool encrypt);

/* Seal len bytes under nonce (from kms_random_nonce): writes body and tag. */
extern void kms_gcm_seal(EVP_CIPHER_CTX *ctx, const KmsAad *aad,
						 const uint8 *plain, int len,
						 const uint8 *nonce, uint8 *body_out, uint8 *tag_out);

/* Open; false on authentication failure (output must then be discarded). */
extern bool kms_gcm_open(EVP_CIPHER_CTX *ctx, const KmsAad *aad,
						 const uint8 *nonce, const uint8 *body, int len,
						 const uint8 *tag, uint8 *plain_out);

/* One-piece AAD for other uses of GCM (key wrapping). */
extern void kms_aad_simple(KmsAad *aad, const uint8 *data, int len);

/* Short hex id of a wrapped DEK (first 16 bytes of SHA-256), 33 bytes out. */
extern void kms_envelope_dek_id(const uint8 *wrapped, int wrapped_len, char *out);

#endif							/* KMS_ENVELOPE_H */
