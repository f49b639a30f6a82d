/*-------------------------------------------------------------------------
 * kms_envelope.c
 *	  kms_pg ciphertext format v1: parse, build, and AES-256-GCM.
 *
 * The parser is a pure function over bytes (no ereport, no allocation
 * except an optional detail string) so that it can be fuzzed on its own.
 * Every length is checked against the remaining input before use.
 *-------------------------------------------------------------------------
 */
#include "kms_envelope.h"

#include <openssl/sha.h>

const uint8 kms_envelope_magic[4] = {0xC5, 0x4B, 0x50, 0x47};

#define SET_DETAIL(...) do { if (detail) *detail = psprintf(__VA_ARGS__); } while (0)

/*
 * Compare two provider-context key names as the name block orders them:
 * by bytes, a name that is a prefix of another first.
 */
static int
name_cmp(const char *a, int alen, const char *b, int blen)
{
	int			c = memcmp(a, b, Min(alen, blen));

	return c != 0 ? c : alen - blen;
}

/* A local wrapped DEK has the one size and wrap format docs/format.md gives. */
static bool
local_wrap_ok(uint8 provider, const uint8 *wrapped, int wrapped_len)
{
	return provider != KMS_PROVIDER_LOCAL ||
		(wrapped_len == KMS_LOCAL_WRAP_LEN && wrapped[0] == KMS_LOCAL_WRAP_FORMAT);
}

static KmsError parse_v2(const uint8 *buf, size_t len, KmsEnvelope *env, char **detail);

/*
 * Parse the provider-context name block at *offp (count byte, then length
 * and name pairs, strictly ascending) into env.
 */
static KmsError
parse_names(const uint8 *buf, size_t len, size_t *offp, KmsEnvelope *env, char **detail)
{
	size_t		off = *offp;

	if (off + 1 > len)
		return KMS_ERR_CT_TRUNCATED;
	env->names_block = buf + off;
	env->nctxkeys = buf[off++];
	if (env->nctxkeys > KMS_CTX_KEYS_MAX)
	{
		SET_DETAIL("The value lists %d provider-context keys; at most %d are allowed.",
				   env->nctxkeys, KMS_CTX_KEYS_MAX);
		return KMS_ERR_CT_BAD_FIELD;
	}
	for (int i = 0; i < env->nctxkeys; i++)
	{
		int			l;

		if (off + 1 > len)
			return KMS_ERR_CT_TRUNCATED;
		l = buf[off++];
		if (l == 0)
		{
			SET_DETAIL("A provider-context key name is empty.");
			return KMS_ERR_CT_BAD_FIELD;
		}
		if (off + l > len)
			return KMS_ERR_CT_TRUNCATED;
		env->ctxkeys[i] = (const char *) buf + off;
		env->ctxkeylens[i] = l;
		off += l;
		/* strictly ascending: sorted, and no name twice */
		if (i > 0)
		{
			int			c = name_cmp(env->ctxkeys[i - 1], env->ctxkeylens[i - 1],
									 env->ctxkeys[i], l);

			if (c >= 0)
			{
				SET_DETAIL("Provider-context key names %d and %d are %s.", i, i + 1,
						   c == 0 ? "the same" : "out of order");
				return KMS_ERR_CT_BAD_FIELD;
			}
		}
	}

	env->names_block_len = (int) (buf + off - env->names_block);
	*offp = off;
	return KMS_OK;
}

KmsError
kms_envelope_parse(const uint8 *buf, size_t len, KmsEnvelope *env, char **detail)
{
	size_t		off = 0;
	KmsError	err;

	if (detail)
		*detail = NULL;
	memset(env, 0, sizeof(*env));

	if (len == 0)
		return KMS_ERR_CT_EMPTY;
	if (len < 5)
	{
		if (memcmp(buf, kms_envelope_magic, len) != 0)
			return KMS_ERR_CT_BAD_MAGIC;
		SET_DETAIL("The value is %zu bytes long.", len);
		return KMS_ERR_CT_TRUNCATED;
	}
	if (memcmp(buf, kms_envelope_magic, 4) != 0)
		return KMS_ERR_CT_BAD_MAGIC;
	env->version = buf[4];
	if (env->version == KMS_ENVELOPE_V2)
		return parse_v2(buf, len, env, detail);
	if (env->version != KMS_ENVELOPE_VERSION)
	{
		SET_DETAIL("The value has format version %d; this kms_pg reads versions %d and %d.",
				   env->version, KMS_ENVELOPE_VERSION, KMS_ENVELOPE_V2);
		return KMS_ERR_CT_BAD_VERSION;
	}
	if (len < KMS_ENVELOPE_MIN_LEN)
	{
		SET_DETAIL("The value is %zu bytes long; the shortest ciphertext is %d bytes.",
				   len, KMS_ENVELOPE_MIN_LEN);
		return KMS_ERR_CT_TRUNCATED;
	}
	env->provider = buf[5];
	if (env->provider != KMS_PROVIDER_LOCAL && env->provider != KMS_PROVIDER_AWS)
	{
		SET_DETAIL("Provider byte is %d.", env->provider);
		return KMS_ERR_CT_BAD_PROVIDER;
	}
	off = 6;

	/* key id */
	env->key_id_len = buf[off++];
	if (env->key_id_len == 0)
	{
		SET_DETAIL("The key id is empty.");
		return KMS_ERR_CT_BAD_FIELD;
	}
	if (off + env->key_id_len + 1 > len)
		return KMS_ERR_CT_TRUNCATED;
	env->key_id = (const char *) buf + off;
	for (int i = 0; i < env->key_id_len; i++)
	{
		if (buf[off + i] < 0x21 || buf[off + i] > 0x7e)
		{
			SET_DETAIL("The key id contains a byte that is not printable ASCII.");
			return KMS_ERR_CT_BAD_FIELD;
		}
	}
	off += env->key_id_len;

	/* provider-context key names */
	err = parse_names(buf, len, &off, env, detail);
	if (err != KMS_OK)
		return err;

	/* wrapped DEK */
	if (off + 2 > len)
		return KMS_ERR_CT_TRUNCATED;
	env->wrapped_len = (buf[off] << 8) | buf[off + 1];
	off += 2;
	if (env->wrapped_len == 0 || env->wrapped_len > KMS_WRAPPED_MAXLEN)
	{
		SET_DETAIL("The wrapped data key length is %d bytes.", env->wrapped_len);
		return KMS_ERR_CT_BAD_FIELD;
	}
	if (off + env->wrapped_len > len)
		return KMS_ERR_CT_TRUNCATED;
	env->wrapped = buf + off;
	off += env->wrapped_len;
	if (!local_wrap_ok(env->provider, env->wrapped, env->wrapped_len))
	{
		SET_DETAIL("A local wrapped data key is %d bytes in wrap format %d; this one is %d bytes in format %d.",
				   KMS_LOCAL_WRAP_LEN, KMS_LOCAL_WRAP_FORMAT, env->wrapped_len, env->wrapped[0]);
		return KMS_ERR_CT_BAD_FIELD;
	}

	env->header_len = (int) off;
	if (off + KMS_NONCE_LEN + KMS_TAG_LEN > len)
		return KMS_ERR_CT_TRUNCATED;
	env->nonce = buf + off;
	off += KMS_NONCE_LEN;
	env->body = buf + off;
	env->body_len = (int) (len - off - KMS_TAG_LEN);
	env->tag = buf + len - KMS_TAG_LEN;
	return KMS_OK;
}

/* A v2 value: prefix, nonce, body, tag; the registry fields stay unset. */
static KmsError
parse_v2(const uint8 *buf, size_t len, KmsEnvelope *env, char **detail)
{
	uint64		ref = 0;

	if (len < KMS_V2_OVERHEAD)
	{
		SET_DETAIL("The value is %zu bytes long; the shortest format 2 ciphertext is %d bytes.",
				   len, KMS_V2_OVERHEAD);
		return KMS_ERR_CT_TRUNCATED;
	}
	for (int i = 5; i < KMS_V2_PREFIX_LEN; i++)
		ref = (ref << 8) | buf[i];
	if (ref == 0)
	{
		SET_DETAIL("The data key reference is 0.");
		return KMS_ERR_CT_BAD_FIELD;
	}
	env->dek_ref = ref;
	env->header_len = KMS_V2_PREFIX_LEN;
	env->nonce = buf + KMS_V2_PREFIX_LEN;
	env->body = buf + KMS_V2_PREFIX_LEN + KMS_NONCE_LEN;
	env->body_len = (int) (len - KMS_V2_OVERHEAD);
	env->tag = buf + len - KMS_TAG_LEN;
	return KMS_OK;
}

KmsError
kms_envelope_set_registry(KmsEnvelope *env, int provider, const char *key_id, int key_id_len,
						  const uint8 *names, int names_len,
						  const uint8 *wrapped, int wrapped_len, char **detail)
{
	KmsError	err = kms_envelope_set_registry_names(env, provider, key_id, key_id_len,
													  names, names_len, detail);

	if (err != KMS_OK)
		return err;
	if (wrapped_len <= 0 || wrapped_len > KMS_WRAPPED_MAXLEN ||
		!local_wrap_ok(env->provider, wrapped, wrapped_len))
	{
		SET_DETAIL("The registry row's wrapped data key (%d bytes) is not valid for its provider.",
				   wrapped_len);
		return KMS_ERR_CT_BAD_FIELD;
	}
	env->wrapped = wrapped;
	env->wrapped_len = wrapped_len;
	return KMS_OK;
}

KmsError
kms_envelope_set_registry_names(KmsEnvelope *env, int provider, const char *key_id, int key_id_len,
								const uint8 *names, int names_len, char **detail)
{
	size_t		off = 0;
	KmsError	err;

	if (detail)
		*detail = NULL;
	if (provider != KMS_PROVIDER_LOCAL && provider != KMS_PROVIDER_AWS)
	{
		SET_DETAIL("The registry row of data key reference %llu has provider %d.",
				   (unsigned long long) env->dek_ref, provider);
		return KMS_ERR_CT_BAD_PROVIDER;
	}
	env->provider = (uint8) provider;
	if (key_id_len < 1 || key_id_len > KMS_KEY_ID_MAXLEN)
	{
		SET_DETAIL("The registry row's key id is %d bytes long.", key_id_len);
		return KMS_ERR_CT_BAD_FIELD;
	}
	for (int i = 0; i < key_id_len; i++)
		if ((uint8) key_id[i] < 0x21 || (uint8) key_id[i] > 0x7e)
		{
			SET_DETAIL("The registry row's key id contains a byte that is not printable ASCII.");
			return KMS_ERR_CT_BAD_FIELD;
		}
	env->key_id = key_id;
	env->key_id_len = key_id_len;
	err = parse_names(names, names_len, &off, env, detail);
	if (err == KMS_OK && off != (size_t) names_len)
	{
		SET_DETAIL("The registry row's name block has %d bytes after its names.",
				   (int) (names_len - off));
		err = KMS_ERR_CT_BAD_FIELD;
	}
	if (err != KMS_OK)
		return err == KMS_ERR_CT_TRUNCATED ? KMS_ERR_CT_BAD_FIELD : err;
	return KMS_OK;
}

void
kms_envelope_v2_prefix(uint64 dek_ref, uint8 *out)
{
	Assert(dek_ref > 0 && dek_ref <= KMS_DEK_REF_MAX);
	memcpy(out, kms_envelope_magic, 4);
	out[4] = KMS_ENVELOPE_V2;
	for (int i = KMS_V2_PREFIX_LEN - 1; i >= 5; i--)
	{
		out[i] = (uint8) (dek_ref & 0xff);
		dek_ref >>= 8;
	}
}

bool
kms_envelope_is_ciphertext(const uint8 *buf, size_t len)
{
	KmsEnvelope env;

	return len >= 4 && memcmp(buf, kms_envelope_magic, 4) == 0 &&
		kms_envelope_parse(buf, len, &env, NULL) == KMS_OK;
}

uint8 *
kms_envelope_build_header(uint8 provider, const char *key_id,
						  int nnames, const char *const *names, const int *namelens,
						  const uint8 *wrapped, int wrapped_len, int *header_len)
{
	int			klen = strlen(key_id);
	int			size = 4 + 1 + 1 + 1 + klen + 1 + 2 + wrapped_len;
	uint8	   *h;
	int			off = 0;

	if (klen == 0 || klen > KMS_KEY_ID_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key id of %d bytes cannot be recorded in a ciphertext", klen),
				 errdetail("Key ids must be 1 to %d bytes.", KMS_KEY_ID_MAXLEN)));
	/* the reader accepts printable ASCII only: never write what it cannot read */
	for (int i = 0; i < klen; i++)
		if ((unsigned char) key_id[i] < 0x21 || (unsigned char) key_id[i] > 0x7e)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("key id contains a byte that is not printable ASCII"),
					 errdetail("The key provider returned a key id that a kms_pg ciphertext cannot record.")));
	if (wrapped_len <= 0 || wrapped_len > KMS_WRAPPED_MAXLEN)
		elog(ERROR, "wrapped data key of %d bytes cannot be recorded", wrapped_len);
	if (nnames > KMS_CTX_KEYS_MAX)
		elog(ERROR, "too many provider-context keys");
	/* never write what the reader refuses */
	if (!local_wrap_ok(provider, wrapped, wrapped_len))
		elog(ERROR, "local wrapped data key of %d bytes cannot be recorded", wrapped_len);
	for (int i = 0; i < nnames; i++)
	{
		size += 1 + namelens[i];
		if (i > 0 && name_cmp(names[i - 1], namelens[i - 1], names[i], namelens[i]) >= 0)
			elog(ERROR, "provider-context key names must be recorded sorted and distinct");
	}

	h = palloc(size);
	memcpy(h, kms_envelope_magic, 4);
	off = 4;
	h[off++] = KMS_ENVELOPE_VERSION;
	h[off++] = provider;
	h[off++] = (uint8) klen;
	memcpy(h + off, key_id, klen);
	off += klen;
	h[off++] = (uint8) nnames;
	for (int i = 0; i < nnames; i++)
	{
		if (namelens[i] < 1 || namelens[i] > 255)
			elog(ERROR, "provider-context key name of %d bytes cannot be recorded", namelens[i]);
		h[off++] = (uint8) namelens[i];
		memcpy(h + off, names[i], namelens[i]);
		off += namelens[i];
	}
	h[off++] = (uint8) (wrapped_len >> 8);
	h[off++] = (uint8) wrapped_len;
	memcpy(h + off, wrapped, wrapped_len);
	off += wrapped_len;
	Assert(off == size);
	*header_len = size;
	return h;
}

EVP_CIPHER_CTX *
kms_gcm_context_new(const uint8 *dek, bool encrypt)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

	if (ctx == NULL)
		kms_report_openssl_error("EVP_CIPHER_CTX_new");
	if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, dek, NULL, encrypt ? 1 : 0) != 1)
	{
		EVP_CIPHER_CTX_free(ctx);
		kms_report_openssl_error("EVP_CipherInit_ex");
	}
	return ctx;
}

void
kms_envelope_header_names(const uint8 *header, int header_len, int *offset, int *len)
{
	int			off = 7 + header[6];
	int			n = header[off];
	int			end = off + 1;

	for (int i = 0; i < n; i++)
		end += 1 + header[end];
	Assert(end <= header_len);
	*offset = off;
	*len = end - off;
}

void
kms_aad_simple(KmsAad *aad, const uint8 *data, int len)
{
	memset(aad, 0, sizeof(*aad));
	aad->context = data;
	aad->context_len = len;
}

static inline bool
gcm_aad(EVP_CIPHER_CTX *ctx, const KmsAad *aad)
{
	int			outl;

	return (aad->prefix == NULL || EVP_CipherUpdate(ctx, NULL, &outl, aad->prefix, aad->prefix_len) == 1) &&
		(aad->names_len == 0 || EVP_CipherUpdate(ctx, NULL, &outl, aad->names, aad->names_len) == 1) &&
		(aad->context_len == 0 || EVP_CipherUpdate(ctx, NULL, &outl, aad->context, aad->context_len) == 1);
}

void
kms_gcm_seal(EVP_CIPHER_CTX *ctx, const KmsAad *aad, const uint8 *plain, int len,
			 const uint8 *nonce, uint8 *body_out, uint8 *tag_out)
{
	int			outl;

	if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1 ||
		!gcm_aad(ctx, aad) ||
		(len > 0 && EVP_EncryptUpdate(ctx, body_out, &outl, plain, len) != 1) ||
		EVP_EncryptFinal_ex(ctx, body_out + len, &outl) != 1 ||
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, KMS_TAG_LEN, tag_out) != 1)
		kms_report_openssl_error("AES-256-GCM encryption");
}

bool
kms_gcm_open(EVP_CIPHER_CTX *ctx, const KmsAad *aad, const uint8 *nonce,
			 const uint8 *body, int len, const uint8 *tag, uint8 *plain_out)
{
	int			outl;

	if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1 ||
		!gcm_aad(ctx, aad) ||
		(len > 0 && EVP_DecryptUpdate(ctx, plain_out, &outl, body, len) != 1) ||
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, KMS_TAG_LEN, (void *) tag) != 1)
		kms_report_openssl_error("AES-256-GCM decryption");
	return EVP_DecryptFinal_ex(ctx, plain_out + len, &outl) == 1;
}

void
kms_envelope_dek_id(const uint8 *wrapped, int wrapped_len, char *out)
{
	uint8		md[SHA256_DIGEST_LENGTH];
	static const char hex[] = "0123456789abcdef";
	static EVP_MD *sha256 = NULL;

	/* fetch the implementation once: an implicit fetch per call costs more than the hash */
	if (sha256 == NULL && (sha256 = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL)
		kms_report_openssl_error("EVP_MD_fetch");
	if (EVP_Digest(wrapped, wrapped_len, md, NULL, sha256, NULL) != 1)
		kms_report_openssl_error("SHA-256");
	for (int i = 0; i < 16; i++)
	{
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[32] = '\0';
}
