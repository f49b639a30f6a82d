/*-------------------------------------------------------------------------
 * kms_aws_json.h
 *	  AWS KMS JSON 1.1 bodies: build requests, parse responses and error
 *	  documents with PostgreSQL's own JSON parser (common/jsonapi.h).
 *
 * The parsing half never calls ereport: it returns a KmsAwsJsonError so
 * it can be linked into a fuzz harness with the frontend libpgcommon
 * (compile with -DFRONTEND; the request builders, which need the
 * backend's escape_json and KmsContext, are then left out).
 *-------------------------------------------------------------------------
 */
#ifndef KMS_AWS_JSON_H
#define KMS_AWS_JSON_H

#include "lib/stringinfo.h"

typedef enum KmsAwsJsonError
{
	KMS_AWS_JSON_OK = 0,
	KMS_AWS_JSON_SYNTAX,		/* not valid JSON */
	KMS_AWS_JSON_NOT_OBJECT,	/* the document is not a JSON object */
	KMS_AWS_JSON_DUPLICATE,		/* a wanted member appears twice */
	KMS_AWS_JSON_TOO_LARGE		/* document larger than we accept */
} KmsAwsJsonError;

typedef enum KmsAwsJsonKind
{
	KMS_AWS_JSON_ABSENT = 0,
	KMS_AWS_JSON_NULL,
	KMS_AWS_JSON_STRING,
	KMS_AWS_JSON_NUMBER,
	KMS_AWS_JSON_BOOL,
	KMS_AWS_JSON_OBJECT,
	KMS_AWS_JSON_ARRAY
} KmsAwsJsonKind;

/* One top-level member to extract. */
typedef struct KmsAwsJsonField
{
	const char *name;			/* member name (case-sensitive) */
	KmsAwsJsonKind kind;		/* out */
	char	   *value;			/* out, palloc'd NUL-terminated: de-escaped
								 * string, number/bool text, or the raw JSON
								 * text of an object/array; NULL otherwise */
	int			len;			/* out: strlen(value) */
} KmsAwsJsonField;

/*
 * Extract the named top-level members of a JSON object.  Intermediate
 * copies the parser makes of string values are wiped; the caller wipes
 * the value of a sensitive field (Plaintext) itself.
 */
extern KmsAwsJsonError kms_aws_json_extract(const char *json, size_t len,
											KmsAwsJsonField *fields, int nfields);

/* Wipe and free the values extract() returned. */
extern void kms_aws_json_fields_free(KmsAwsJsonField *fields, int nfields);

/*
 * An AWS error document: type from "__type" with any "namespace#" prefix
 * stripped, message from "message" or "Message".  Either may come back
 * NULL.  Returns false when body is not a JSON object.
 */
extern bool kms_aws_json_parse_error(const char *body, size_t len,
									 char **type, char **message);

extern const char *kms_aws_json_strerror(KmsAwsJsonError err);

/* base64 helpers (common/base64.h); return the length or -1. */
extern int	kms_aws_b64_decode(const char *src, int srclen, uint8 *dst, int dstlen);

#ifndef FRONTEND
#include "kms_context.h"

/* Building a request body: {"A": ..., "B": ...}.  */
extern void kms_aws_json_begin(StringInfo s);
extern void kms_aws_json_add_string(StringInfo s, const char *name, const char *value);
extern void kms_aws_json_add_base64(StringInfo s, const char *name,
									const uint8 *data, int len);
/* EncryptionContext: every pair's value sent as a JSON string */
extern void kms_aws_json_add_context(StringInfo s, const char *name, const KmsContext *kctx);
extern void kms_aws_json_end(StringInfo s);
#endif

#endif							/* KMS_AWS_JSON_H */
