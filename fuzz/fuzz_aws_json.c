/*-------------------------------------------------------------------------
 * fuzz_aws_json.c
 *	  libFuzzer harness for the AWS KMS / credential response parser
 *	  (src/kms_aws_json.c, built with -DFRONTEND).
 *
 * Each input is one response body.  An independent walk over the same
 * document (pg_parse_json with its own callbacks and its own depth count)
 * is the oracle for what kms_aws_json_extract() must return for every
 * member name the provider and the credential code ask for:
 *	- invalid JSON -> SYNTAX; a non-object document -> NOT_OBJECT; a wanted
 *	  member present twice -> DUPLICATE; else OK;
 *	- on OK each field has the member's kind, strings their de-escaped
 *	  value, numbers and booleans their text, objects and arrays their raw
 *	  JSON text (which is itself valid JSON of that kind), len == strlen;
 *	- kms_aws_json_parse_error() agrees with the same oracle;
 *	- kms_aws_b64_decode() of each string value never writes past its
 *	  output buffer and, when it succeeds, matches an independent decoder.
 * Secret hygiene: the string values of Plaintext, SecretAccessKey and
 * Token are registered with the shim's secret watch (when no other token
 * of the document shares their bytes), so any copy of them that the
 * parser frees, reallocates away or leaves behind without wiping is a
 * finding -- in a backend such memory keeps its bytes until reused.
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE				/* memmem() */
#include "postgres_fe.h"

#include "kms_aws_json.h"

#include "common/base64.h"
#include "common/jsonapi.h"
#include "mb/pg_wchar.h"

#include "pg_shim.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every member name kms_provider_aws.c and kms_credentials.c extract. */
static const char *const wanted[] = {
	"CiphertextBlob", "Plaintext", "KeyId", "KeyMetadata",
	"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "Code",
	"__type", "message", "Message"
};
#define NWANTED ((int) lengthof(wanted))

static bool
is_secret_name(const char *name)
{
	return strcmp(name, "Plaintext") == 0 || strcmp(name, "SecretAccessKey") == 0 ||
		strcmp(name, "Token") == 0;
}

/* ---- the oracle walk ---- */

typedef struct Token
{
	char	   *text;			/* malloc'd de-escaped string or scalar text */
	bool		secret_value;	/* the string value of a secret member */
} Token;

typedef struct Oracle
{
	int			depth;
	bool		top_object;
	bool		top_other;
	int			cur;			/* index into wanted[] at depth 1, or -1 */
	int			count[NWANTED];
	KmsAwsJsonKind kind[NWANTED];
	char	   *value[NWANTED]; /* malloc'd, scalars only (last occurrence) */
	Token	   *tokens;			/* every string/number token of the document */
	int			ntokens;
	int			cap;
} Oracle;

static char *
xstrdup(const char *s)
{
	char	   *p = strdup(s);

	if (p == NULL)
		shim_fail("out of memory");
	return p;
}

static void
add_token(Oracle *o, const char *text, bool secret_value)
{
	if (o->ntokens == o->cap)
	{
		o->cap = o->cap ? o->cap * 2 : 32;
		o->tokens = realloc(o->tokens, sizeof(Token) * o->cap);
		if (o->tokens == NULL)
			shim_fail("out of memory");
	}
	o->tokens[o->ntokens].text = xstrdup(text);
	o->tokens[o->ntokens].secret_value = secret_value;
	o->ntokens++;
}

static void
o_struct_start(Oracle *o, KmsAwsJsonKind kind)
{
	if (o->depth == 0)
	{
		if (kind == KMS_AWS_JSON_OBJECT)
			o->top_object = true;
		else
			o->top_other = true;
	}
	else if (o->depth == 1 && o->cur >= 0)
		o->kind[o->cur] = kind;
	o->depth++;
}

static void
o_object_start(void *state)
{
	o_struct_start(state, KMS_AWS_JSON_OBJECT);
}

static void
o_array_start(void *state)
{
	o_struct_start(state, KMS_AWS_JSON_ARRAY);
}

static void
o_struct_end(void *state)
{
	((Oracle *) state)->depth--;
}

static void
o_field_start(void *state, char *fname, bool isnull)
{
	Oracle	   *o = state;

	add_token(o, fname, false);
	if (o->depth != 1)
		return;
	o->cur = -1;
	for (int i = 0; i < NWANTED; i++)
		if (strcmp(fname, wanted[i]) == 0)
		{
			o->cur = i;
			o->count[i]++;
			o->kind[i] = isnull ? KMS_AWS_JSON_NULL : KMS_AWS_JSON_ABSENT;
			free(o->value[i]);
			o->value[i] = NULL;
		}
}

static void
o_field_end(void *state, char *fname, bool isnull)
{
	Oracle	   *o = state;

	if (o->depth == 1)
		o->cur = -1;
	pfree(fname);
}

static void
o_scalar(void *state, char *token, JsonTokenType type)
{
	Oracle	   *o = state;
	bool		secret = false;

	if (o->depth == 0)
		o->top_other = true;
	else if (o->depth == 1 && o->cur >= 0 && type != JSON_TOKEN_NULL)
	{
		o->kind[o->cur] = type == JSON_TOKEN_STRING ? KMS_AWS_JSON_STRING :
			type == JSON_TOKEN_NUMBER ? KMS_AWS_JSON_NUMBER : KMS_AWS_JSON_BOOL;
		o->value[o->cur] = xstrdup(token);
		secret = type == JSON_TOKEN_STRING && is_secret_name(wanted[o->cur]);
	}
	if (type == JSON_TOKEN_STRING || type == JSON_TOKEN_NUMBER)
		add_token(o, token, secret);
	pfree(token);
}

static JsonParseErrorType
oracle_walk(const char *data, size_t size, Oracle *o)
{
	char	   *text = malloc(size + 1);
	JsonLexContext *lex;
	JsonSemAction sem;
	JsonParseErrorType rc;

	if (text == NULL)
		shim_fail("out of memory");
	memcpy(text, data, size);
	text[size] = '\0';
	memset(o, 0, sizeof(*o));
	o->cur = -1;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = o;
	sem.object_start = o_object_start;
	sem.object_end = o_struct_end;
	sem.array_start = o_array_start;
	sem.array_end = o_struct_end;
	sem.object_field_start = o_field_start;
	sem.object_field_end = o_field_end;
	sem.scalar = o_scalar;
	lex = makeJsonLexContextCstringLen(text, (int) size, PG_UTF8, true);
	rc = pg_parse_json(lex, &sem);
	free(text);
	/* the oracle's own lexer state goes away before any secret is watched */
	shim_arena_reset();
	return rc;
}

static void
oracle_free(Oracle *o)
{
	for (int i = 0; i < NWANTED; i++)
		free(o->value[i]);
	for (int i = 0; i < o->ntokens; i++)
		free(o->tokens[i].text);
	free(o->tokens);
}

/* Does another token of the document share 12 bytes with secret s? */
static bool
shares_bytes(const Oracle *o, const char *s)
{
	size_t		n = strlen(s);

	if (n < 12 || n > 4096)
		return true;			/* not watched anyway */
	for (int t = 0; t < o->ntokens; t++)
	{
		if (o->tokens[t].secret_value)
			continue;
		for (size_t off = 0; off + 12 <= n; off++)
			if (memmem(o->tokens[t].text, strlen(o->tokens[t].text), s + off, 12) != NULL)
				return true;
	}
	return false;
}

/* Is text (raw JSON of a member value) a complete JSON document of kind? */
static bool
valid_json_of_kind(const char *text, int len, KmsAwsJsonKind kind)
{
	char	   *copy = malloc(len + 1);
	JsonLexContext *lex;
	JsonParseErrorType rc;

	memcpy(copy, text, len);
	copy[len] = '\0';
	lex = makeJsonLexContextCstringLen(copy, len, PG_UTF8, false);
	rc = pg_parse_json(lex, &nullSemAction);
	pfree(lex);
	free(copy);
	return rc == JSON_SUCCESS && len > 0 &&
		text[0] == (kind == KMS_AWS_JSON_OBJECT ? '{' : '[') &&
		text[len - 1] == (kind == KMS_AWS_JSON_OBJECT ? '}' : ']');
}

/* An independent base64 decoder (RFC 4648, whitespace skipped, = padding). */
static int
ref_b64_decode(const char *s, int len, uint8 *out)
{
	uint32		acc = 0;
	int			bits = 0;
	int			n = 0;
	int			pad = 0;

	for (int i = 0; i < len; i++)
	{
		int			c = (unsigned char) s[i];
		int			v;

		if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
			continue;
		if (c == '=')
		{
			pad++;
			continue;
		}
		if (pad)
			return -1;			/* data after padding */
		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '+')
			v = 62;
		else if (c == '/')
			v = 63;
		else
			return -1;
		acc = (acc << 6) | v;
		bits += 6;
		if (bits >= 8)
		{
			bits -= 8;
			out[n++] = (uint8) (acc >> bits);
		}
	}
	return n;
}

static void
check_b64(const char *value, int len)
{
	for (int dstlen = 0; dstlen <= 64; dstlen += 8)
	{
		/* an exactly sized heap buffer: ASan sees any overrun */
		uint8	   *dst = malloc(dstlen > 0 ? dstlen : 1);
		int			n = kms_aws_b64_decode(value, len, dst, dstlen);

		CHECK(n >= -1 && n <= dstlen);
		if (n > 0)
		{
			uint8	   *ref = malloc(len + 1);
			int			rn = ref_b64_decode(value, len, ref);

			/* pg_b64_decode accepts what the reference accepts, same bytes */
			CHECK(rn == n && memcmp(ref, dst, n) == 0);
			free(ref);
		}
		free(dst);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Oracle		o;
	JsonParseErrorType prc;
	KmsAwsJsonField f[NWANTED];
	KmsAwsJsonError err;
	KmsAwsJsonError expect;
	bool		duplicate = false;
	char	   *type;
	char	   *message;
	bool		perr;

	prc = oracle_walk((const char *) data, size, &o);

	for (int i = 0; i < NWANTED; i++)
	{
		f[i].name = wanted[i];
		if (o.count[i] > 1)
			duplicate = true;
	}
	if (size > 1024 * 1024)
		expect = KMS_AWS_JSON_TOO_LARGE;
	else if (prc != JSON_SUCCESS)
		expect = KMS_AWS_JSON_SYNTAX;
	else if (!o.top_object || o.top_other)
		expect = KMS_AWS_JSON_NOT_OBJECT;
	else if (duplicate)
		expect = KMS_AWS_JSON_DUPLICATE;
	else
		expect = KMS_AWS_JSON_OK;

	/*
	 * Watch the secret values the document carries (finding 2, README.md:
	 * a duplicate member can drop an earlier value unwiped).
	 */
	for (int t = 0; t < o.ntokens && !(duplicate && shim_mask_known()); t++)
		if (o.tokens[t].secret_value && !shares_bytes(&o, o.tokens[t].text))
			shim_secret_add(o.tokens[t].text, strlen(o.tokens[t].text));

	err = kms_aws_json_extract((const char *) data, size, f, NWANTED);
	if (err != expect)
		shim_fail("kms_aws_json_extract returned %d (%s), expected %d (%s)",
				  err, kms_aws_json_strerror(err), expect, kms_aws_json_strerror(expect));

	for (int i = 0; i < NWANTED; i++)
	{
		if (err != KMS_AWS_JSON_OK)
		{
			CHECK(f[i].kind == KMS_AWS_JSON_ABSENT && f[i].value == NULL && f[i].len == 0);
			continue;
		}
		if (o.count[i] == 0)
			CHECK(f[i].kind == KMS_AWS_JSON_ABSENT);
		else
			CHECK(f[i].kind == o.kind[i]);
		switch (f[i].kind)
		{
			case KMS_AWS_JSON_ABSENT:
			case KMS_AWS_JSON_NULL:
				CHECK(f[i].value == NULL && f[i].len == 0);
				break;
			case KMS_AWS_JSON_STRING:
			case KMS_AWS_JSON_NUMBER:
			case KMS_AWS_JSON_BOOL:
				CHECK(f[i].value != NULL && (int) strlen(f[i].value) == f[i].len);
				CHECK(strcmp(f[i].value, o.value[i]) == 0);
				if (f[i].kind == KMS_AWS_JSON_BOOL)
					CHECK(strcmp(f[i].value, "true") == 0 || strcmp(f[i].value, "false") == 0);
				if (f[i].kind == KMS_AWS_JSON_STRING)
					check_b64(f[i].value, f[i].len);
				break;
			case KMS_AWS_JSON_OBJECT:
			case KMS_AWS_JSON_ARRAY:
				CHECK(f[i].value != NULL && (int) strlen(f[i].value) == f[i].len);
				CHECK(memmem(data, size, f[i].value, f[i].len) != NULL);
				CHECK(valid_json_of_kind(f[i].value, f[i].len, f[i].kind));
				break;
		}
	}
	/* what the callers do with their fields: wipe and free */
	kms_aws_json_fields_free(f, NWANTED);
	for (int i = 0; i < NWANTED; i++)
		CHECK(f[i].value == NULL && f[i].kind == KMS_AWS_JSON_ABSENT);

	/* nothing of a secret may survive the parse except in freed-and-wiped memory */
	shim_check_live("live (unfreed, unwiped)");
	shim_secret_clear();

	/* error documents */
	perr = kms_aws_json_parse_error((const char *) data, size, &type, &message);
	{
		/* __type, message, Message: indexes 9..11 of wanted[] */
		bool		ok3 = prc == JSON_SUCCESS && o.top_object && !o.top_other &&
			o.count[9] < 2 && o.count[10] < 2 && o.count[11] < 2 && size <= 1024 * 1024;

		CHECK(perr == ok3);
		if (!perr)
			CHECK(type == NULL && message == NULL);
		else
		{
			if (o.count[9] == 1 && o.kind[9] == KMS_AWS_JSON_STRING)
			{
				const char *h = strrchr(o.value[9], '#');
				char	   *want = xstrdup(h ? h + 1 : o.value[9]);

				if (strchr(want, ':'))
					*strchr(want, ':') = '\0';
				CHECK(type != NULL && strcmp(type, want) == 0);
				CHECK(strchr(type, '#') == NULL && strchr(type, ':') == NULL);
				free(want);
			}
			else
				CHECK(type == NULL);
			if (o.count[10] == 1 && o.kind[10] == KMS_AWS_JSON_STRING)
				CHECK(message != NULL && strcmp(message, o.value[10]) == 0);
			else if (o.count[11] == 1 && o.kind[11] == KMS_AWS_JSON_STRING)
				CHECK(message != NULL && strcmp(message, o.value[11]) == 0);
			else
				CHECK(message == NULL);
		}
		if (type)
			pfree(type);
		if (message)
			pfree(message);
	}

	oracle_free(&o);
	shim_arena_reset();
	return 0;
}
