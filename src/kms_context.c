/*-------------------------------------------------------------------------
 * kms_context.c
 *	  Encryption context canonicalisation (see kms_context.h for the
 *	  byte layout).
 *
 * The canonical bytes are bound to every value as AES-GCM additional data,
 * so they must not depend on how the user wrote the jsonb: key order,
 * whitespace and the spelling of numbers (1.50 vs 1.5) are normalised.
 * jsonb already rejects duplicate keys by keeping the last one.
 *-------------------------------------------------------------------------
 */
#include "kms_context.h"

#include "utils/numeric.h"

static int
kms_context_pair_cmp(const void *a, const void *b)
{
	const KmsContextPair *pa = (const KmsContextPair *) a;
	const KmsContextPair *pb = (const KmsContextPair *) b;
	int			minlen = Min(pa->keylen, pb->keylen);
	int			c = memcmp(pa->key, pb->key, minlen);

	if (c != 0)
		return c;
	return (pa->keylen > pb->keylen) - (pa->keylen < pb->keylen);
}

static inline void
append_u32be(StringInfo buf, uint32 v)
{
	char		b[4];

	b[0] = (char) (v >> 24);
	b[1] = (char) (v >> 16);
	b[2] = (char) (v >> 8);
	b[3] = (char) v;
	appendBinaryStringInfo(buf, b, 4);
}

void
kms_context_serialize(const KmsContextPair *pairs, int npairs, StringInfo out)
{
	append_u32be(out, (uint32) npairs);
	for (int i = 0; i < npairs; i++)
	{
		append_u32be(out, (uint32) pairs[i].keylen);
		appendBinaryStringInfo(out, pairs[i].key, pairs[i].keylen);
		appendStringInfoChar(out, (char) pairs[i].type);
		append_u32be(out, (uint32) pairs[i].valuelen);
		appendBinaryStringInfo(out, pairs[i].value, pairs[i].valuelen);
	}
}

KmsError
kms_context_from_jsonb(Jsonb *jb, KmsContext *out, char **detail)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			npairs;
	int			n = 0;
	Size		total = 4;

	*detail = NULL;
	memset(out, 0, sizeof(*out));

	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
	{
		*detail = psprintf("The context is a JSON %s.",
						   JB_ROOT_IS_SCALAR(jb) ? "scalar" : "array");
		return KMS_ERR_CTX_NOT_OBJECT;
	}

	npairs = JB_ROOT_COUNT(jb);
	if (npairs > KMS_CTX_MAX_PAIRS)
	{
		*detail = psprintf("The context has %d keys; at most %d are allowed.",
						   npairs, KMS_CTX_MAX_PAIRS);
		return KMS_ERR_CTX_TOO_LARGE;
	}
	out->pairs = npairs > 0 ? palloc(sizeof(KmsContextPair) * npairs) : NULL;

	it = JsonbIteratorInit(&jb->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		KmsContextPair *p;

		if (tok == WJB_KEY)
		{
			if (n >= npairs)
				elog(ERROR, "jsonb object holds more keys than its header says");
			p = &out->pairs[n];
			p->key = v.val.string.val;
			p->keylen = v.val.string.len;
			if (p->keylen == 0)
				return KMS_ERR_CTX_EMPTY_KEY;
			continue;
		}
		if (tok != WJB_VALUE)
			continue;

		p = &out->pairs[n];
		switch (v.type)
		{
			case jbvString:
				p->type = KMS_CTX_TYPE_STRING;
				p->value = v.val.string.val;
				p->valuelen = v.val.string.len;
				break;
			case jbvNumeric:
				{
					char	   *s = numeric_normalize(v.val.numeric);

					p->type = KMS_CTX_TYPE_NUMBER;
					p->value = s;
					p->valuelen = strlen(s);
					break;
				}
			case jbvBool:
				p->type = KMS_CTX_TYPE_BOOLEAN;
				p->value = v.val.boolean ? "true" : "false";
				p->valuelen = v.val.boolean ? 4 : 5;
				break;
			default:
				*detail = psprintf("The value of key \"%.*s\" is %s.",
								   Min(p->keylen, 64), p->key,
								   v.type == jbvNull ? "null" : "an array or object");
				return KMS_ERR_CTX_BAD_VALUE;
		}
		total += 9 + (Size) p->keylen + (Size) p->valuelen;
		if (total > KMS_CTX_MAX_BYTES)
		{
			*detail = psprintf("The canonical context exceeds %d bytes.", KMS_CTX_MAX_BYTES);
			return KMS_ERR_CTX_TOO_LARGE;
		}
		n++;
	}
	out->npairs = n;

	/*
	 * jsonb sorts keys by (length, bytes); the canonical order is plain
	 * byte order, so sort unless there is nothing to sort.
	 */
	if (n > 1)
		qsort(out->pairs, n, sizeof(KmsContextPair), kms_context_pair_cmp);

	/* exact size: avoid initStringInfo's 1 kB per row */
	out->canonical.data = palloc(total + 1);
	out->canonical.maxlen = total + 1;
	out->canonical.len = 0;
	out->canonical.cursor = 0;
	out->canonical.data[0] = '\0';
	kms_context_serialize(out->pairs, n, &out->canonical);
	return KMS_OK;
}

void
kms_context_from_jsonb_or_error(Jsonb *jb, KmsContext *out)
{
	char	   *detail;
	KmsError	err = kms_context_from_jsonb(jb, out, &detail);

	if (err != KMS_OK)
		kms_report_error(err, detail);
}

const KmsContextPair *
kms_context_find(const KmsContext *ctx, const char *key, int keylen)
{
	KmsContextPair probe;

	if (ctx->npairs == 0)
		return NULL;
	probe.key = key;
	probe.keylen = keylen;
	return bsearch(&probe, ctx->pairs, ctx->npairs, sizeof(KmsContextPair),
				   kms_context_pair_cmp);
}

void
kms_context_select(const KmsContext *ctx, char **names, int nnames, KmsContext *out)
{
	int			n = 0;

	Size		total = 4;

	memset(out, 0, sizeof(*out));
	out->pairs = nnames > 0 ? palloc(sizeof(KmsContextPair) * nnames) : NULL;
	for (int i = 0; i < nnames; i++)
	{
		const KmsContextPair *p = kms_context_find(ctx, names[i], strlen(names[i]));

		if (p != NULL)
		{
			out->pairs[n++] = *p;
			total += 9 + (Size) p->keylen + (Size) p->valuelen;
		}
	}
	out->npairs = n;
	out->canonical.data = palloc(total + 1);
	out->canonical.maxlen = total + 1;
	out->canonical.len = 0;
	out->canonical.cursor = 0;
	kms_context_serialize(out->pairs, n, &out->canonical);
}

void
kms_context_init_empty(KmsContext *ctx)
{
	/* canonical form of {}: a zero pair count; shared, never appended to */
	static char empty[5] = {0, 0, 0, 0, 0};

	memset(ctx, 0, sizeof(*ctx));
	ctx->canonical.data = empty;
	ctx->canonical.len = 4;
	ctx->canonical.maxlen = 5;
}

/*
 * Canonicalise pairs given one by one (kms_encrypt_pairs and friends):
 * sort them in place, refuse duplicate and empty keys, serialise.  The
 * canonical bytes equal those of a jsonb object with the same keys and
 * values of the same JSON types.
 */
KmsError
kms_context_from_pairs(KmsContextPair *pairs, int npairs, KmsContext *out, char **detail)
{
	Size		total = 4;

	*detail = NULL;
	memset(out, 0, sizeof(*out));
	if (npairs > KMS_CTX_MAX_PAIRS)
	{
		*detail = psprintf("The context has %d keys; at most %d are allowed.",
						   npairs, KMS_CTX_MAX_PAIRS);
		return KMS_ERR_CTX_TOO_LARGE;
	}
	if (npairs > 1)
		qsort(pairs, npairs, sizeof(KmsContextPair), kms_context_pair_cmp);
	for (int i = 0; i < npairs; i++)
	{
		if (pairs[i].keylen == 0)
			return KMS_ERR_CTX_EMPTY_KEY;
		if (i > 0 && kms_context_pair_cmp(&pairs[i - 1], &pairs[i]) == 0)
		{
			*detail = psprintf("Key \"%.*s\" appears twice.",
							   Min(pairs[i].keylen, 64), pairs[i].key);
			return KMS_ERR_CTX_DUPLICATE_KEY;
		}
		total += 9 + (Size) pairs[i].keylen + (Size) pairs[i].valuelen;
		if (total > KMS_CTX_MAX_BYTES)
		{
			*detail = psprintf("The canonical context exceeds %d bytes.", KMS_CTX_MAX_BYTES);
			return KMS_ERR_CTX_TOO_LARGE;
		}
	}
	out->pairs = pairs;
	out->npairs = npairs;
	out->canonical.data = palloc(total + 1);
	out->canonical.maxlen = total + 1;
	kms_context_serialize(pairs, npairs, &out->canonical);
	return KMS_OK;
}

/*
 * Rebuild a context from its canonical bytes (as kms_context_serialize
 * wrote them, e.g. kept in the data key registry).  The pairs point into a
 * copy owned by out.  False when the bytes are not canonical.
 */
bool
kms_context_from_canonical(const uint8 *data, int len, KmsContext *out)
{
	uint8	   *copy;
	int			off = 4;
	uint32		n;

	memset(out, 0, sizeof(*out));
	if (len < 4 || len > KMS_CTX_MAX_BYTES)
		return false;
	copy = palloc(len + 1);
	memcpy(copy, data, len);
	n = ((uint32) copy[0] << 24) | ((uint32) copy[1] << 16) | ((uint32) copy[2] << 8) | copy[3];
	if (n > KMS_CTX_MAX_PAIRS)
		return false;
	out->pairs = n > 0 ? palloc(sizeof(KmsContextPair) * n) : NULL;
	for (uint32 i = 0; i < n; i++)
	{
		uint32		kl;
		uint32		vl;

		if (len - off < 4)
			return false;
		kl = ((uint32) copy[off] << 24) | ((uint32) copy[off + 1] << 16) |
			((uint32) copy[off + 2] << 8) | copy[off + 3];
		off += 4;
		if (kl == 0 || (uint32) (len - off) < kl + 5)
			return false;
		out->pairs[i].key = (const char *) copy + off;
		out->pairs[i].keylen = (int) kl;
		off += kl;
		out->pairs[i].type = copy[off++];
		vl = ((uint32) copy[off] << 24) | ((uint32) copy[off + 1] << 16) |
			((uint32) copy[off + 2] << 8) | copy[off + 3];
		off += 4;
		if ((uint32) (len - off) < vl)
			return false;
		out->pairs[i].value = (const char *) copy + off;
		out->pairs[i].valuelen = (int) vl;
		off += vl;
		if (out->pairs[i].type < KMS_CTX_TYPE_STRING || out->pairs[i].type > KMS_CTX_TYPE_BOOLEAN ||
			(i > 0 && kms_context_pair_cmp(&out->pairs[i - 1], &out->pairs[i]) >= 0))
			return false;
	}
	if (off != len)
		return false;
	out->npairs = (int) n;
	out->canonical.data = (char *) copy;
	out->canonical.len = len;
	out->canonical.maxlen = len + 1;
	out->canonical.cursor = 0;
	return true;
}
