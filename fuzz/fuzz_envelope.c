/*-------------------------------------------------------------------------
 * fuzz_envelope.c
 *	  libFuzzer harness for the ciphertext format v1 (src/kms_envelope.c).
 *
 * Every input is parsed by kms_envelope_parse().  On success the parsed
 * fields must describe the input exactly (each length in range, every
 * pointer inside the buffer, the field lengths summing to the input
 * length), kms_envelope_is_ciphertext() must agree, and rebuilding the
 * header with kms_envelope_build_header() from the parsed fields must
 * give back the input's header byte for byte.
 *
 * Inputs that do not start with the magic byte 0xC5 are also read as a
 * recipe: provider, key id, provider-context key names, wrapped DEK and
 * plaintext are taken from the bytes, a value is built and sealed exactly
 * as kms_seal() does, then parsed and opened again.  Whatever
 * kms_envelope_build_header() accepts must parse back to the same fields
 * and decrypt; flipping a byte covered by the GCM tag (magic, version,
 * provider-context key block, nonce, body, tag) must make it fail.
 *-------------------------------------------------------------------------
 */
#include "kms_envelope.h"

#include <openssl/sha.h>

#include "pg_shim.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Everything a successful parse promises about buf/len. */
static void
check_parsed(const uint8 *buf, size_t len, const KmsEnvelope *env)
{
	size_t		off = 7;
	size_t		names_len = 1;
	uint8	   *header;
	int			hlen;
	int			noff;
	int			nlen;
	char		dek_id[33];
	const char *names[KMS_CTX_KEYS_MAX];
	char	   *key_id;
	volatile unsigned sum = 0;

	CHECK(memcmp(buf, kms_envelope_magic, 4) == 0);
	if (env->version == KMS_ENVELOPE_V2)
	{
		/* format 2: prefix, nonce, body, tag; the registry fields unset */
		uint64		ref = 0;

		CHECK(buf[4] == KMS_ENVELOPE_V2 && len >= KMS_V2_OVERHEAD);
		for (int i = 5; i < KMS_V2_PREFIX_LEN; i++)
			ref = (ref << 8) | buf[i];
		CHECK(ref != 0 && ref == env->dek_ref && ref <= KMS_DEK_REF_MAX);
		CHECK(env->key_id == NULL && env->wrapped == NULL && env->provider == 0);
		CHECK(env->header_len == KMS_V2_PREFIX_LEN);
		CHECK(env->nonce == buf + KMS_V2_PREFIX_LEN);
		CHECK(env->body == env->nonce + KMS_NONCE_LEN);
		CHECK(env->tag == env->body + env->body_len);
		CHECK((size_t) KMS_V2_OVERHEAD + env->body_len == len);
		for (int i = 0; i < env->body_len; i++)
			sum += env->body[i];
		CHECK(kms_envelope_is_ciphertext(buf, len));
		{
			uint8		prefix[KMS_V2_PREFIX_LEN];

			kms_envelope_v2_prefix(ref, prefix);
			CHECK(memcmp(prefix, buf, KMS_V2_PREFIX_LEN) == 0);
		}
		return;
	}
	CHECK(len >= KMS_ENVELOPE_MIN_LEN);
	CHECK(env->version == KMS_ENVELOPE_VERSION && buf[4] == env->version);
	CHECK(env->provider == KMS_PROVIDER_LOCAL || env->provider == KMS_PROVIDER_AWS);
	CHECK(env->provider == buf[5]);
	CHECK(env->key_id_len >= 1 && env->key_id_len <= KMS_KEY_ID_MAXLEN);
	CHECK(env->key_id_len == buf[6]);
	CHECK((const uint8 *) env->key_id == buf + 7);
	for (int i = 0; i < env->key_id_len; i++)
		CHECK(env->key_id[i] >= 0x21 && env->key_id[i] <= 0x7e);
	off += env->key_id_len;

	CHECK(env->names_block == buf + off);
	CHECK(env->nctxkeys >= 0 && env->nctxkeys <= KMS_CTX_KEYS_MAX);
	CHECK(env->nctxkeys == buf[off]);
	off++;
	for (int i = 0; i < env->nctxkeys; i++)
	{
		CHECK(env->ctxkeylens[i] >= 1 && env->ctxkeylens[i] <= 255);
		CHECK(env->ctxkeylens[i] == buf[off]);
		CHECK((const uint8 *) env->ctxkeys[i] == buf + off + 1);
		off += 1 + env->ctxkeylens[i];
		names_len += 1 + env->ctxkeylens[i];
		names[i] = env->ctxkeys[i];
	}
	CHECK(env->names_block_len == (int) names_len);

	CHECK(env->wrapped_len >= 1 && env->wrapped_len <= KMS_WRAPPED_MAXLEN);
	CHECK(env->wrapped_len == ((buf[off] << 8) | buf[off + 1]));
	off += 2;
	CHECK(env->wrapped == buf + off);
	off += env->wrapped_len;
	CHECK(env->header_len == (int) off);

	/* the field lengths sum to the input length */
	CHECK(env->nonce == buf + off);
	CHECK(env->body == env->nonce + KMS_NONCE_LEN);
	CHECK(env->body_len >= 0);
	CHECK(env->tag == env->body + env->body_len);
	CHECK((size_t) env->header_len + KMS_NONCE_LEN + env->body_len + KMS_TAG_LEN == len);

	/* every byte the pointers describe is readable (ASan checks) */
	for (int i = 0; i < env->body_len; i++)
		sum += env->body[i];
	for (int i = 0; i < KMS_TAG_LEN; i++)
		sum += env->tag[i] + env->nonce[i % KMS_NONCE_LEN];
	(void) sum;

	CHECK(kms_envelope_is_ciphertext(buf, len));

	/* the header is exactly what build_header makes of the parsed fields */
	key_id = pnstrdup(env->key_id, env->key_id_len);
	header = kms_envelope_build_header(env->provider, key_id, env->nctxkeys, names,
									   env->ctxkeylens, env->wrapped, env->wrapped_len,
									   &hlen);
	CHECK(hlen == env->header_len);
	CHECK(memcmp(header, buf, hlen) == 0);
	kms_envelope_header_names(header, hlen, &noff, &nlen);
	CHECK(noff == env->names_block - buf);
	CHECK(nlen == env->names_block_len);

	kms_envelope_dek_id(env->wrapped, env->wrapped_len, dek_id);
	CHECK(strlen(dek_id) == 32);

	/* a value cut inside its nonce or tag is never accepted */
	{
		KmsEnvelope e2;

		CHECK(kms_envelope_parse(buf, env->header_len + KMS_NONCE_LEN + KMS_TAG_LEN - 1,
								 &e2, NULL) != KMS_OK);
	}
}

/* Parse buf and check the result either way. */
static KmsError
parse_and_check(const uint8 *buf, size_t len, KmsEnvelope *env)
{
	char	   *detail = (char *) 1;	/* must be reset by the parser */
	KmsError	err = kms_envelope_parse(buf, len, env, &detail);

	if (err == KMS_OK)
	{
		CHECK(detail == NULL);
		check_parsed(buf, len, env);
	}
	else
	{
		CHECK(err == KMS_ERR_CT_EMPTY || err == KMS_ERR_CT_TRUNCATED ||
			  err == KMS_ERR_CT_BAD_MAGIC || err == KMS_ERR_CT_BAD_VERSION ||
			  err == KMS_ERR_CT_BAD_PROVIDER || err == KMS_ERR_CT_BAD_FIELD);
		CHECK(detail != (char *) 1);
		if (detail != NULL)
			CHECK(strlen(detail) > 0 && strlen(detail) < 200);
		CHECK(kms_error_text(err) != NULL);
		CHECK(!kms_envelope_is_ciphertext(buf, len));
		if (len == 0)
			CHECK(err == KMS_ERR_CT_EMPTY);
		else if (buf[0] != kms_envelope_magic[0])
			CHECK(err == KMS_ERR_CT_BAD_MAGIC);
	}
	return err;
}

/* A byte-consuming reader over the recipe input. */
typedef struct Reader
{
	const uint8 *p;
	size_t		left;
} Reader;

static uint8
take_byte(Reader *r)
{
	uint8		b = 0;

	if (r->left > 0)
	{
		b = *r->p++;
		r->left--;
	}
	return b;
}

static size_t
take_bytes(Reader *r, size_t want, const uint8 **out)
{
	size_t		n = Min(want, r->left);

	*out = r->p;
	r->p += n;
	r->left -= n;
	return n;
}

/* The name block's order (docs/format.md): bytes, a prefix first. */
static int
recipe_name_cmp(const char *a, int alen, const char *b, int blen)
{
	int			c = memcmp(a, b, Min(alen, blen));

	return c != 0 ? c : alen - blen;
}

static void
seal_open_roundtrip(const uint8 *data, size_t size)
{
	Reader		r = {data, size};
	uint8		provider = 1 + (take_byte(&r) & 1);
	int			klen = 1 + take_byte(&r) % KMS_KEY_ID_MAXLEN;
	char		key_id[KMS_KEY_ID_MAXLEN + 1];
	int			nnames = take_byte(&r) % (KMS_CTX_KEYS_MAX + 1);
	const char *names[KMS_CTX_KEYS_MAX];
	int			namelens[KMS_CTX_KEYS_MAX];
	int			wlen;
	const uint8 *wrapped;
	const uint8 *src;
	const uint8 *plain;
	int			plen;
	uint8	   *volatile header = NULL;
	int			hlen = 0;
	volatile bool raised = false;
	uint8		dek[SHA256_DIGEST_LENGTH];
	uint8		aadctx[16];
	int			aadctx_len;
	uint8		flip_pos_seed;
	uint8	   *ct;
	size_t		ctlen;
	int			noff;
	int			nlen;
	KmsAad		aad;
	KmsEnvelope env;
	EVP_CIPHER_CTX *ctx;
	uint8	   *out;
	bool		key_id_printable = true;
	bool		names_ascending = true;
	bool		local_wrap_ok;
	uint8		shape;
	uint8		wbuf[KMS_WRAPPED_MAXLEN];

	/* key id: any bytes but NUL (it is a C string) */
	klen = (int) take_bytes(&r, klen, &src);
	if (klen == 0)
		return;
	for (int i = 0; i < klen; i++)
	{
		key_id[i] = src[i] ? (char) src[i] : 'x';
		if ((uint8) key_id[i] < 0x21 || (uint8) key_id[i] > 0x7e)
			key_id_printable = false;
	}
	key_id[klen] = '\0';
	for (int i = 0; i < nnames; i++)
	{
		int			l = 1 + take_byte(&r) % 255;

		l = (int) take_bytes(&r, l, &src);
		if (l == 0)
		{
			nnames = i;
			break;
		}
		names[i] = (const char *) src;
		namelens[i] = l;
	}
	wlen = take_byte(&r) << 8;
	wlen = 1 + ((wlen | take_byte(&r)) % KMS_WRAPPED_MAXLEN);
	wlen = (int) take_bytes(&r, wlen, &wrapped);
	if (wlen == 0)
		return;

	/*
	 * Most recipes are shaped into what a writer produces (names sorted and
	 * distinct, a local wrapped DEK of 65 bytes in wrap format 1), so the
	 * round trip below is reached; the others must be refused.
	 */
	shape = take_byte(&r);
	if (shape & 1)
	{
		for (int i = 1; i < nnames; i++)
			for (int j = i; j > 0 && recipe_name_cmp(names[j - 1], namelens[j - 1],
													 names[j], namelens[j]) > 0; j--)
			{
				const char *tn = names[j];
				int			tl = namelens[j];

				names[j] = names[j - 1];
				namelens[j] = namelens[j - 1];
				names[j - 1] = tn;
				namelens[j - 1] = tl;
			}
		for (int i = 1; i < nnames; i++)
			if (recipe_name_cmp(names[i - 1], namelens[i - 1], names[i], namelens[i]) == 0)
			{
				memmove(&names[i], &names[i + 1], sizeof(names[0]) * (nnames - i - 1));
				memmove(&namelens[i], &namelens[i + 1], sizeof(namelens[0]) * (nnames - i - 1));
				nnames--;
				i--;
			}
	}
	if ((shape & 2) && provider == KMS_PROVIDER_LOCAL)
	{
		memset(wbuf, 0, KMS_LOCAL_WRAP_LEN);
		memcpy(wbuf, wrapped, Min(wlen, KMS_LOCAL_WRAP_LEN));
		wbuf[0] = KMS_LOCAL_WRAP_FORMAT;
		wrapped = wbuf;
		wlen = KMS_LOCAL_WRAP_LEN;
	}
	for (int i = 1; i < nnames; i++)
		if (recipe_name_cmp(names[i - 1], namelens[i - 1], names[i], namelens[i]) >= 0)
			names_ascending = false;
	local_wrap_ok = provider != KMS_PROVIDER_LOCAL ||
		(wlen == KMS_LOCAL_WRAP_LEN && wrapped[0] == KMS_LOCAL_WRAP_FORMAT);
	aadctx_len = (int) take_bytes(&r, take_byte(&r) % sizeof(aadctx), &src);
	memcpy(aadctx, src, aadctx_len);
	flip_pos_seed = take_byte(&r);
	plen = (int) take_bytes(&r, r.left, &plain);

	SHIM_TRY()
	{
		header = kms_envelope_build_header(provider, key_id, nnames, names, namelens,
										   wrapped, wlen, (int *) &hlen);
	}
	SHIM_CATCH()
	{
		raised = true;
	}
	SHIM_END_TRY();
	if (raised)
	{
		/* refusing is fine only for fields a ciphertext cannot carry */
		CHECK(!key_id_printable || !names_ascending || !local_wrap_ok);
		return;
	}

	/*
	 * What the writer accepts, the reader must accept: a header built here
	 * must parse, or values written with it could never be decrypted.
	 */
	ctlen = (size_t) hlen + KMS_NONCE_LEN + plen + KMS_TAG_LEN;
	ct = palloc(ctlen);
	memcpy(ct, header, hlen);
	SHA256(data, size, dek);
	memcpy(ct + hlen, dek, KMS_NONCE_LEN);	/* a nonce from the input */
	kms_envelope_header_names(header, hlen, &noff, &nlen);
	aad.prefix = header;
	aad.prefix_len = 5;
	aad.names = header + noff;
	aad.names_len = nlen;
	aad.context = aadctx;
	aad.context_len = aadctx_len;
	ctx = kms_gcm_context_new(dek, true);
	kms_gcm_seal(ctx, &aad, plain, plen, ct + hlen, ct + hlen + KMS_NONCE_LEN,
				 ct + hlen + KMS_NONCE_LEN + plen);
	EVP_CIPHER_CTX_free(ctx);

	/* finding 1 (README.md): non-printable key ids are written unreadable */
	if (!key_id_printable && shim_mask_known())
		return;
	if (kms_envelope_parse(ct, ctlen, &env, NULL) != KMS_OK)
		shim_fail("kms_envelope_build_header accepted a header that kms_envelope_parse rejects "
				  "(provider %d, key id of %d bytes%s, %d names, wrapped %d bytes)",
				  provider, klen, key_id_printable ? "" : " with a non-printable byte",
				  nnames, wlen);
	check_parsed(ct, ctlen, &env);
	CHECK(env.provider == provider);
	CHECK(env.key_id_len == klen && memcmp(env.key_id, key_id, klen) == 0);
	CHECK(env.nctxkeys == nnames);
	for (int i = 0; i < nnames; i++)
		CHECK(env.ctxkeylens[i] == namelens[i] &&
			  memcmp(env.ctxkeys[i], names[i], namelens[i]) == 0);
	CHECK(env.wrapped_len == wlen && memcmp(env.wrapped, wrapped, wlen) == 0);
	CHECK(env.body_len == plen);

	/* open as kms_open() does, with the AAD taken from the parsed value */
	aad.prefix = ct;
	aad.prefix_len = 5;
	aad.names = env.names_block;
	aad.names_len = env.names_block_len;
	/* room for any body a re-parse below may see (it writes via OpenSSL, uninstrumented) */
	out = palloc(ctlen);
	ctx = kms_gcm_context_new(dek, false);
	CHECK(kms_gcm_open(ctx, &aad, env.nonce, env.body, env.body_len, env.tag, out));
	CHECK(memcmp(out, plain, plen) == 0);

	/* flip one bit of an authenticated byte: opening must fail */
	{
		size_t		nauth = 5 + (size_t) env.names_block_len + (ctlen - env.header_len);
		size_t		k = (flip_pos_seed * 2654435761u) % nauth;
		size_t		pos;
		KmsEnvelope e2;

		if (k < 5)
			pos = k;
		else if (k < 5 + (size_t) env.names_block_len)
			pos = (env.names_block - ct) + (k - 5);
		else
			pos = env.header_len + (k - 5 - env.names_block_len);
		ct[pos] ^= (uint8) (1 << (flip_pos_seed & 7));
		if (kms_envelope_parse(ct, ctlen, &e2, NULL) == KMS_OK)
		{
			aad.prefix = ct;
			aad.prefix_len = 5;
			aad.names = e2.names_block;
			aad.names_len = e2.names_block_len;
			CHECK(!kms_gcm_open(ctx, &aad, e2.nonce, e2.body, e2.body_len, e2.tag, out));
		}
	}
	EVP_CIPHER_CTX_free(ctx);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	KmsEnvelope env;

	parse_and_check(data, size, &env);
	if (size > 0 && data[0] != kms_envelope_magic[0])
		seal_open_roundtrip(data, size);
	shim_arena_reset();
	return 0;
}
