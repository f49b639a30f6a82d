/*-------------------------------------------------------------------------
 * kms_aws_json.c
 *	  Request bodies and response/error parsing for the AWS KMS JSON 1.1
 *	  protocol, on PostgreSQL's JSON parser (pg_parse_json with semantic
 *	  actions) and base64 (common/base64.h).
 *
 * Responses can carry a plaintext data key (GenerateDataKey, Decrypt),
 * so the parser's intermediate copies of string values are wiped as soon
 * as they are consumed, and no parse error message ever quotes the input
 * (json_errdetail would).  Nothing here raises: errors are returned, and
 * kms_provider_aws.c maps them to ereport().
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include "kms_aws_json.h"

#define KMS_COMPAT_WANT_JSON
#include "kms_compat.h"

#ifndef FRONTEND
#include "utils/json.h"
#endif

/* A KMS response is a few KB; kms_http.c caps bodies at 1 MB anyway. */
#define KMS_AWS_JSON_MAX_LEN	(1024 * 1024)

typedef struct ExtractState
{
	JsonLexContext *lex;
	KmsAwsJsonField *fields;
	int			nfields;
	int			cur;			/* index of the top-level member being parsed */
	const char *span_start;		/* raw start of an object/array member value */
	bool		not_object;
	bool		duplicate;
} ExtractState;

static void
wipe_str(char *s)
{
	if (s)
		explicit_bzero(s, strlen(s));
}

/* Wipe and free a value seen earlier for the same (duplicated) member. */
static void
drop_value(KmsAwsJsonField *f)
{
	if (f->value)
	{
		explicit_bzero(f->value, f->len);
		pfree(f->value);
		f->value = NULL;
		f->len = 0;
	}
}

/* A member whose value is an object or array keeps its raw JSON text. */
static void
end_container_span(ExtractState *st, KmsAwsJsonKind kind)
{
	if (st->lex->lex_level == 1 && st->cur >= 0 && st->span_start)
	{
		KmsAwsJsonField *f = &st->fields[st->cur];
		int			n = st->lex->prev_token_terminator - st->span_start;

		f->kind = kind;
		drop_value(f);
		f->value = palloc(n + 1);
		memcpy(f->value, st->span_start, n);
		f->value[n] = '\0';
		f->len = n;
		st->span_start = NULL;
	}
}

static KMS_JSON_ACTION
ex_object_start(void *state)
{
	ExtractState *st = (ExtractState *) state;

	if (st->lex->lex_level == 1 && st->cur >= 0)
		st->span_start = st->lex->token_start;
	KMS_JSON_DONE;
}

static KMS_JSON_ACTION
ex_object_end(void *state)
{
	ExtractState *st = (ExtractState *) state;

	end_container_span(st, KMS_AWS_JSON_OBJECT);
	KMS_JSON_DONE;
}

static KMS_JSON_ACTION
ex_array_start(void *state)
{
	ExtractState *st = (ExtractState *) state;

	if (st->lex->lex_level == 0)
		st->not_object = true;
	else if (st->lex->lex_level == 1 && st->cur >= 0)
		st->span_start = st->lex->token_start;
	KMS_JSON_DONE;
}

static KMS_JSON_ACTION
ex_array_end(void *state)
{
	ExtractState *st = (ExtractState *) state;

	end_container_span(st, KMS_AWS_JSON_ARRAY);
	KMS_JSON_DONE;
}

static KMS_JSON_ACTION
ex_field_start(void *state, char *fname, bool isnull)
{
	ExtractState *st = (ExtractState *) state;

	if (st->lex->lex_level != 1 || fname == NULL)
		KMS_JSON_DONE;
	st->cur = -1;
	for (int i = 0; i < st->nfields; i++)
	{
		if (strcmp(st->fields[i].name, fname) == 0)
		{
			if (st->fields[i].kind != KMS_AWS_JSON_ABSENT)
				st->duplicate = true;
			st->cur = i;
			st->fields[i].kind = isnull ? KMS_AWS_JSON_NULL : KMS_AWS_JSON_ABSENT;
			break;
		}
	}
	/* fname is handed to object_field_end too, which frees it */
	KMS_JSON_DONE;
}

static KMS_JSON_ACTION
ex_field_end(void *state, char *fname, bool isnull)
{
	ExtractState *st = (ExtractState *) state;

	if (st->lex->lex_level == 1)
		st->cur = -1;
	if (fname)
	{
		/* a hostile document could put anything in a name */
		wipe_str(fname);
		pfree(fname);
	}
	KMS_JSON_DONE;
}

static KMS_JSON_ACTION
ex_scalar(void *state, char *token, JsonTokenType tokentype)
{
	ExtractState *st = (ExtractState *) state;

	if (st->lex->lex_level == 0)
		st->not_object = true;
	else if (st->lex->lex_level == 1 && st->cur >= 0 && tokentype != JSON_TOKEN_NULL)
	{
		KmsAwsJsonField *f = &st->fields[st->cur];

		switch (tokentype)
		{
			case JSON_TOKEN_STRING:
				f->kind = KMS_AWS_JSON_STRING;
				break;
			case JSON_TOKEN_NUMBER:
				f->kind = KMS_AWS_JSON_NUMBER;
				break;
			default:
				f->kind = KMS_AWS_JSON_BOOL;
				break;
		}
		drop_value(f);
		f->value = pstrdup(token ? token : "");
		f->len = strlen(f->value);
	}
	if (token)
	{
		wipe_str(token);
		pfree(token);
	}
	KMS_JSON_DONE;
}

/* Free a lexer, wiping its de-escaping buffer (it held every string value). */
static void
lex_free(JsonLexContext *lex)
{
	if (lex->strval)
		explicit_bzero(lex->strval->data, lex->strval->maxlen);
	kms_json_lex_free(lex);
}

KmsAwsJsonError
kms_aws_json_extract(const char *json, size_t len, KmsAwsJsonField *fields, int nfields)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	ExtractState st;
	JsonParseErrorType rc;
	char	   *copy;

	for (int i = 0; i < nfields; i++)
	{
		fields[i].kind = KMS_AWS_JSON_ABSENT;
		fields[i].value = NULL;
		fields[i].len = 0;
	}
	if (len > KMS_AWS_JSON_MAX_LEN)
		return KMS_AWS_JSON_TOO_LARGE;

	/* the lexer wants a writable buffer; ours is wiped afterwards */
	copy = palloc(len + 1);
	memcpy(copy, json, len);
	copy[len] = '\0';

	/*
	 * Validate first, with no semantic actions and no de-escaping: the
	 * parser then copies nothing.  On a syntax
	 * error part-way through the real pass it would leave copies of field
	 * names or values it had already made, which may hold key material.
	 */
	lex = kms_json_lex_make(copy, len, false);
	rc = pg_parse_json(lex, &nullSemAction);
	lex_free(lex);
	if (rc != JSON_SUCCESS)
	{
		explicit_bzero(copy, len);
		pfree(copy);
		return KMS_AWS_JSON_SYNTAX;
	}

	lex = kms_json_lex_make(copy, len, true);

	/*
	 * The lexer de-escapes every string into lex->strval, growing it with
	 * repalloc, which would free a copy of a long secret unwiped.  No token
	 * is longer than the input: size it once, and lex_free() wipes it.
	 */
	explicit_bzero(lex->strval->data, lex->strval->maxlen);
	enlargeStringInfo(lex->strval, (int) len + 1);

	memset(&st, 0, sizeof(st));
	st.lex = lex;
	st.fields = fields;
	st.nfields = nfields;
	st.cur = -1;

	memset(&sem, 0, sizeof(sem));
	sem.semstate = &st;
	sem.object_start = ex_object_start;
	sem.object_end = ex_object_end;
	sem.array_start = ex_array_start;
	sem.array_end = ex_array_end;
	sem.object_field_start = ex_field_start;
	sem.object_field_end = ex_field_end;
	sem.scalar = ex_scalar;

	rc = pg_parse_json(lex, &sem);

	lex_free(lex);
	explicit_bzero(copy, len);
	pfree(copy);

	if (rc != JSON_SUCCESS || st.not_object || st.duplicate)
	{
		kms_aws_json_fields_free(fields, nfields);
		if (rc != JSON_SUCCESS)
			return KMS_AWS_JSON_SYNTAX;
		return st.not_object ? KMS_AWS_JSON_NOT_OBJECT : KMS_AWS_JSON_DUPLICATE;
	}
	return KMS_AWS_JSON_OK;
}

void
kms_aws_json_fields_free(KmsAwsJsonField *fields, int nfields)
{
	for (int i = 0; i < nfields; i++)
	{
		if (fields[i].value)
		{
			explicit_bzero(fields[i].value, fields[i].len);
			pfree(fields[i].value);
		}
		fields[i].value = NULL;
		fields[i].len = 0;
		fields[i].kind = KMS_AWS_JSON_ABSENT;
	}
}

bool
kms_aws_json_parse_error(const char *body, size_t len, char **type, char **message)
{
	KmsAwsJsonField f[3] = {{.name = "__type"}, {.name = "message"}, {.name = "Message"}};

	*type = NULL;
	*message = NULL;
	if (kms_aws_json_extract(body, len, f, 3) != KMS_AWS_JSON_OK)
		return false;
	if (f[0].kind == KMS_AWS_JSON_STRING)
	{
		char	   *hash = strrchr(f[0].value, '#');

		*type = pstrdup(hash ? hash + 1 : f[0].value);
		/* some services append ":http://..." to the type */
		if (strchr(*type, ':'))
			*strchr(*type, ':') = '\0';
	}
	if (f[1].kind == KMS_AWS_JSON_STRING)
		*message = pstrdup(f[1].value);
	else if (f[2].kind == KMS_AWS_JSON_STRING)
		*message = pstrdup(f[2].value);
	kms_aws_json_fields_free(f, 3);
	return true;
}

const char *
kms_aws_json_strerror(KmsAwsJsonError err)
{
	switch (err)
	{
		case KMS_AWS_JSON_OK:
			return "no error";
		case KMS_AWS_JSON_SYNTAX:
			return "response is not valid JSON";
		case KMS_AWS_JSON_NOT_OBJECT:
			return "response is not a JSON object";
		case KMS_AWS_JSON_DUPLICATE:
			return "response repeats a member";
		case KMS_AWS_JSON_TOO_LARGE:
			return "response is too large";
	}
	return "unknown JSON error";
}

/*
 * Strict base64 as AWS sends it: [A-Za-z0-9+/], length a multiple of 4,
 * at most two '=' and only at the very end.  pg_b64_decode alone is more
 * lenient (it accepts '=' followed by more data), and a KMS response that
 * is not canonical base64 is damaged, not something to guess at.
 */
int
kms_aws_b64_decode(const char *src, int srclen, uint8 *dst, int dstlen)
{
	int			pad = 0;

	if (srclen <= 0 || srclen % 4 != 0 || pg_b64_dec_len(srclen) > dstlen)
		return -1;
	if (src[srclen - 1] == '=')
		pad = (src[srclen - 2] == '=') ? 2 : 1;
	for (int i = 0; i < srclen - pad; i++)
	{
		char		c = src[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			  (c >= '0' && c <= '9') || c == '+' || c == '/'))
			return -1;
	}
	return kms_b64_decode(src, srclen, dst, dstlen);
}

#ifndef FRONTEND

/* ---- request builders ---- */

void
kms_aws_json_begin(StringInfo s)
{
	appendStringInfoChar(s, '{');
}

static void
add_name(StringInfo s, const char *name)
{
	if (s->len > 0 && s->data[s->len - 1] != '{')
		appendStringInfoString(s, ", ");
	escape_json(s, name);
	appendStringInfoString(s, ": ");
}

void
kms_aws_json_add_string(StringInfo s, const char *name, const char *value)
{
	add_name(s, name);
	escape_json(s, value);
}

void
kms_aws_json_add_base64(StringInfo s, const char *name, const uint8 *data, int len)
{
	int			enclen = pg_b64_enc_len(len);
	int			n;

	add_name(s, name);
	appendStringInfoChar(s, '"');
	enlargeStringInfo(s, enclen + 2);
	n = kms_b64_encode(data, len, s->data + s->len, enclen + 1);
	if (n < 0)
		elog(ERROR, "kms_pg: base64 encoding failed");
	s->len += n;
	s->data[s->len] = '\0';
	appendStringInfoChar(s, '"');
}

void
kms_aws_json_add_context(StringInfo s, const char *name, const KmsContext *kctx)
{
	add_name(s, name);
	appendStringInfoChar(s, '{');
	for (int i = 0; i < kctx->npairs; i++)
	{
		const KmsContextPair *p = &kctx->pairs[i];
		char	   *k = pnstrdup(p->key, p->keylen);
		char	   *v = pnstrdup(p->value, p->valuelen);

		if (i > 0)
			appendStringInfoString(s, ", ");
		escape_json(s, k);
		appendStringInfoString(s, ": ");
		/* AWS wants string values: numbers and booleans go as their text */
		escape_json(s, v);
		pfree(k);
		pfree(v);
	}
	appendStringInfoChar(s, '}');
}

void
kms_aws_json_end(StringInfo s)
{
	appendStringInfoChar(s, '}');
}

#endif							/* !FRONTEND */
