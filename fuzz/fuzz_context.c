/*-------------------------------------------------------------------------
 * fuzz_context.c
 *	  libFuzzer harness for the encryption-context canonical form
 *	  (src/kms_context.c).
 *
 * kms_context_from_jsonb() needs a Jsonb, which only exists inside the
 * backend.  This harness drives the same canonicaliser from arbitrary
 * JSON text instead: PostgreSQL's frontend JSON parser (pg_parse_json,
 * the lexer jsonb_in uses too) turns the input into top-level pairs with
 * jsonb's rules (duplicate keys: the last one wins; nested values, null,
 * empty keys and oversized contexts are refused as kms_pg refuses them),
 * then the pairs go through the production code:
 *	- kms_context_serialize() into an exactly-sized buffer, as
 *	  kms_context_from_jsonb() does: the bytes must equal an independent
 *	  encoding of the documented format, fill the buffer exactly and stay
 *	  NUL-terminated;
 *	- kms_context_find() (bsearch with the production comparator) must
 *	  find every key at its place in canonical order, and nothing else;
 *	- kms_context_select() with a sorted subset of names plus absent ones
 *	  must produce exactly the canonical form of the selected pairs.
 * Numbers keep their JSON spelling here: numeric_normalize() is backend
 * code, and the pg_regress tests cover number normalisation.
 *-------------------------------------------------------------------------
 */
#include "kms_context.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"

#include "pg_shim.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * kms_context_from_jsonb() is linked in with the rest of kms_context.c
 * but never called here; the backend functions it references trap.
 */
JsonbIterator *
JsonbIteratorInit(JsonbContainer *container)
{
	shim_fail("JsonbIteratorInit is backend code: not reachable from this harness");
}

JsonbIteratorToken
JsonbIteratorNext(JsonbIterator **it, JsonbValue *val, bool skipNested)
{
	shim_fail("JsonbIteratorNext is backend code: not reachable from this harness");
}

char *
numeric_normalize(Numeric num)
{
	shim_fail("numeric_normalize is backend code: not reachable from this harness");
}

typedef struct Member
{
	char	   *key;			/* malloc'd */
	int			keylen;
	uint8		type;			/* KMS_CTX_TYPE_*, 0 = refused value */
	char	   *value;			/* malloc'd */
	int			valuelen;
	int			order;			/* position in the document */
} Member;

typedef struct WalkState
{
	int			depth;
	bool		top_object;
	bool		top_other;
	int			cur;			/* member being parsed at depth 1, or -1 */
	Member	   *members;
	int			nmembers;
	int			cap;
} WalkState;

static char *
dup_bytes(const char *s, int n)
{
	char	   *p = malloc(n + 1);

	if (p == NULL)
		shim_fail("out of memory");
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

static void
w_struct_start(WalkState *st, bool object)
{
	if (st->depth == 0)
	{
		if (object)
			st->top_object = true;
		else
			st->top_other = true;
	}
	else if (st->depth == 1 && st->cur >= 0)
		st->members[st->cur].type = 0;	/* nested value: refused */
	st->depth++;
}

static void
w_object_start(void *state)
{
	w_struct_start(state, true);
}

static void
w_array_start(void *state)
{
	w_struct_start(state, false);
}

static void
w_struct_end(void *state)
{
	((WalkState *) state)->depth--;
}

static void
w_field_start(void *state, char *fname, bool isnull)
{
	WalkState  *st = state;
	Member	   *m;

	if (st->depth != 1)
		return;
	if (st->nmembers == st->cap)
	{
		st->cap = st->cap ? st->cap * 2 : 16;
		st->members = realloc(st->members, sizeof(Member) * st->cap);
		if (st->members == NULL)
			shim_fail("out of memory");
	}
	m = &st->members[st->nmembers];
	m->keylen = (int) strlen(fname);
	m->key = dup_bytes(fname, m->keylen);
	m->type = 0;				/* until a scalar arrives; null stays refused */
	m->value = NULL;
	m->valuelen = 0;
	m->order = st->nmembers;
	st->cur = st->nmembers++;
}

static void
w_field_end(void *state, char *fname, bool isnull)
{
	WalkState  *st = state;

	if (st->depth == 1)
		st->cur = -1;
	pfree(fname);
}

static void
w_scalar(void *state, char *token, JsonTokenType tokentype)
{
	WalkState  *st = state;

	if (st->depth == 0)
		st->top_other = true;
	else if (st->depth == 1 && st->cur >= 0 && tokentype != JSON_TOKEN_NULL)
	{
		Member	   *m = &st->members[st->cur];

		m->type = tokentype == JSON_TOKEN_STRING ? KMS_CTX_TYPE_STRING :
			tokentype == JSON_TOKEN_NUMBER ? KMS_CTX_TYPE_NUMBER : KMS_CTX_TYPE_BOOLEAN;
		m->valuelen = (int) strlen(token);
		m->value = dup_bytes(token, m->valuelen);
	}
	pfree(token);
}

/* canonical order: key bytes, a shorter key first on a tie */
static int
canon_cmp(const char *a, int alen, const char *b, int blen)
{
	int			c = memcmp(a, b, Min(alen, blen));

	if (c != 0)
		return c;
	return (alen > blen) - (alen < blen);
}

/* by key, then document order, so the last duplicate sorts last */
static int
member_cmp(const void *a, const void *b)
{
	const Member *ma = a;
	const Member *mb = b;
	int			c = canon_cmp(ma->key, ma->keylen, mb->key, mb->keylen);

	return c != 0 ? c : ma->order - mb->order;
}

static int
cstr_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* The documented canonical format, written independently of kms_context.c. */
static size_t
reference_encode(const KmsContextPair *pairs, int n, uint8 *out)
{
	size_t		o = 0;

#define PUT32(v) do { uint32 v_ = (uint32) (v); out[o++] = v_ >> 24; out[o++] = v_ >> 16; \
		out[o++] = v_ >> 8; out[o++] = v_; } while (0)
	PUT32(n);
	for (int i = 0; i < n; i++)
	{
		PUT32(pairs[i].keylen);
		memcpy(out + o, pairs[i].key, pairs[i].keylen);
		o += pairs[i].keylen;
		out[o++] = pairs[i].type;
		PUT32(pairs[i].valuelen);
		memcpy(out + o, pairs[i].value, pairs[i].valuelen);
		o += pairs[i].valuelen;
	}
#undef PUT32
	return o;
}

static void
check_canonical(const KmsContextPair *pairs, int n, const StringInfoData *canon, size_t total)
{
	uint8	   *ref = malloc(total);

	CHECK(ref != NULL);
	CHECK(reference_encode(pairs, n, ref) == total);
	CHECK((size_t) canon->len == total);
	CHECK((size_t) canon->maxlen == total + 1);	/* filled exactly, never grown */
	CHECK(canon->data[canon->len] == '\0');
	CHECK(memcmp(canon->data, ref, total) == 0);
	free(ref);
}

static void
check_pairs(Member *members, int n, const uint8 *data, size_t size)
{
	KmsContext	ctx;
	KmsContext	sel;
	KmsContext	empty;
	Size		total = 4;
	char	   *names[KMS_CTX_KEYS_MAX];
	int			nnames = 0;
	char	   *allocated[KMS_CTX_KEYS_MAX];
	int			nallocated = 0;
	KmsContextPair expect[KMS_CTX_KEYS_MAX];
	int			nexpect = 0;
	Size		seltotal = 4;

	memset(&ctx, 0, sizeof(ctx));
	ctx.npairs = n;
	ctx.pairs = palloc(sizeof(KmsContextPair) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		ctx.pairs[i].key = members[i].key;
		ctx.pairs[i].keylen = members[i].keylen;
		ctx.pairs[i].type = members[i].type;
		ctx.pairs[i].value = members[i].value;
		ctx.pairs[i].valuelen = members[i].valuelen;
		total += 9 + (Size) members[i].keylen + (Size) members[i].valuelen;
		if (i > 0)
			CHECK(canon_cmp(members[i - 1].key, members[i - 1].keylen,
							members[i].key, members[i].keylen) < 0);
	}

	/* serialise into an exactly sized buffer, as kms_context_from_jsonb does */
	ctx.canonical.data = palloc(total + 1);
	ctx.canonical.maxlen = total + 1;
	ctx.canonical.len = 0;
	ctx.canonical.cursor = 0;
	ctx.canonical.data[0] = '\0';
	kms_context_serialize(ctx.pairs, n, &ctx.canonical);
	check_canonical(ctx.pairs, n, &ctx.canonical, total);

	/* every key is found where canonical order puts it; near misses are not */
	for (int i = 0; i < n; i++)
	{
		const KmsContextPair *p = kms_context_find(&ctx, members[i].key, members[i].keylen);
		char	   *probe;

		CHECK(p == &ctx.pairs[i]);
		probe = dup_bytes(members[i].key, members[i].keylen + 1);
		probe[members[i].keylen] = '\x01';
		p = kms_context_find(&ctx, probe, members[i].keylen + 1);
		CHECK(p == NULL || (p->keylen == members[i].keylen + 1 &&
							memcmp(p->key, probe, p->keylen) == 0));
		if (members[i].keylen > 1)
		{
			p = kms_context_find(&ctx, probe, members[i].keylen - 1);
			CHECK(p == NULL || (p->keylen == members[i].keylen - 1 &&
								memcmp(p->key, probe, p->keylen) == 0));
		}
		free(probe);
	}

	/*
	 * kms_context_select: names chosen by the input's bytes, sorted as the
	 * kms_pg.kms_context_keys GUC sorts them, with absent names mixed in.
	 */
	for (int i = 0; i < n && nnames < KMS_CTX_KEYS_MAX; i++)
	{
		uint8		b = data[(i * 7) % size];

		if (members[i].keylen >= 255)	/* the GUC takes 1..255-byte names */
			continue;
		if (b & 1)
			names[nnames++] = members[i].key;
		if ((b & 6) == 6 && nnames < KMS_CTX_KEYS_MAX)
		{
			char	   *absent = dup_bytes(members[i].key, members[i].keylen + 1);

			absent[members[i].keylen] = '~';
			/* "~" appended may still name a real key; then it is selected */
			names[nnames++] = absent;
		}
	}
	qsort(names, nnames, sizeof(char *), cstr_cmp);
	for (int j = 0; j < nnames; j++)
	{
		bool		is_member_key = false;

		for (int i = 0; i < n; i++)
			if (names[j] == members[i].key)
				is_member_key = true;
		if (!is_member_key)
			allocated[nallocated++] = names[j];
	}
	/* the GUC de-duplicates its list */
	{
		int			k = 0;

		for (int j = 0; j < nnames; j++)
			if (k == 0 || strcmp(names[k - 1], names[j]) != 0)
				names[k++] = names[j];
		nnames = k;
	}
	for (int j = 0; j < nnames; j++)
	{
		const KmsContextPair *p = NULL;

		for (int i = 0; i < n; i++)
			if (canon_cmp(members[i].key, members[i].keylen, names[j], strlen(names[j])) == 0)
				p = &ctx.pairs[i];
		if (p != NULL)
		{
			expect[nexpect++] = *p;
			seltotal += 9 + (Size) p->keylen + (Size) p->valuelen;
		}
	}
	kms_context_select(&ctx, names, nnames, &sel);
	CHECK(sel.npairs == nexpect);
	for (int j = 0; j < nexpect; j++)
		CHECK(sel.pairs[j].key == expect[j].key && sel.pairs[j].keylen == expect[j].keylen &&
			  sel.pairs[j].value == expect[j].value && sel.pairs[j].type == expect[j].type);
	CHECK((size_t) sel.canonical.len == seltotal);
	{
		uint8	   *ref = malloc(seltotal);

		CHECK(reference_encode(expect, nexpect, ref) == seltotal);
		CHECK(memcmp(sel.canonical.data, ref, seltotal) == 0);
		free(ref);
	}
	for (int j = 0; j < nallocated; j++)
		free(allocated[j]);

	kms_context_init_empty(&empty);
	CHECK(empty.npairs == 0 && empty.canonical.len == 4 &&
		  memcmp(empty.canonical.data, "\0\0\0\0", 4) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *text;
	JsonLexContext *lex;
	JsonSemAction sem;
	WalkState	st;
	JsonParseErrorType rc;
	int			n = 0;
	Size		total = 4;
	bool		refused = false;

	if (size == 0 || size > 256 * 1024)
		return 0;
	text = palloc(size + 1);
	memcpy(text, data, size);
	text[size] = '\0';
	lex = makeJsonLexContextCstringLen(text, (int) size, PG_UTF8, true);
	memset(&st, 0, sizeof(st));
	st.cur = -1;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &st;
	sem.object_start = w_object_start;
	sem.object_end = w_struct_end;
	sem.array_start = w_array_start;
	sem.array_end = w_struct_end;
	sem.object_field_start = w_field_start;
	sem.object_field_end = w_field_end;
	sem.scalar = w_scalar;
	rc = pg_parse_json(lex, &sem);

	if (rc == JSON_SUCCESS && st.top_object && !st.top_other)
	{
		/* jsonb keeps the last of duplicate keys */
		qsort(st.members, st.nmembers, sizeof(Member), member_cmp);
		for (int i = 0; i < st.nmembers; i++)
		{
			Member	   *m = &st.members[i];

			if (i + 1 < st.nmembers &&
				canon_cmp(m->key, m->keylen, st.members[i + 1].key, st.members[i + 1].keylen) == 0)
			{
				free(m->key);
				free(m->value);
				continue;
			}
			if (m->keylen == 0 || m->type == 0)
				refused = true;
			total += 9 + (Size) m->keylen + (Size) m->valuelen;
			st.members[n++] = *m;
		}
		st.nmembers = n;
		if (!refused && n <= KMS_CTX_MAX_PAIRS && total <= KMS_CTX_MAX_BYTES)
			check_pairs(st.members, n, data, size);
	}

	for (int i = 0; i < st.nmembers; i++)
	{
		free(st.members[i].key);
		free(st.members[i].value);
	}
	free(st.members);
	shim_arena_reset();
	return 0;
}
