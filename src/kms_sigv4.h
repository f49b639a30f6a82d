/*
 * kms_sigv4.h - AWS Signature Version 4 (AWS4-HMAC-SHA256) request signing.
 *
 * Plain C99 + OpenSSL libcrypto; no PostgreSQL headers, so it can be unit
 * tested standalone (test/unit/test_sigv4.c runs every official AWS vector).
 *
 * Backend-safety contract:
 *   - no global mutable state, no printing, no abort()/exit(); every failure is
 *     returned as a negative KMS_SIGV4_ERR_* code and outputs are then left
 *     empty ("" / NULL), never half-written;
 *   - temporary memory comes from malloc() and is always released before
 *     returning; the only memory handed to the caller is the optional
 *     char ** outputs, which the caller releases with kms_sigv4_free();
 *   - every internal buffer (the "AWS4"+secret key, all intermediate HMAC keys,
 *     the derived signing key, and the text buffers, which may contain the
 *     session token) is wiped with explicit_bzero() before it is freed.
 *
 * Which headers get signed (header mode, kms_sigv4_sign):
 *   every entry of req->headers (names any case, values raw) is signed, plus
 *   these "implicit" headers when the caller did not pass them:
 *     x-amz-date           = amz_date                      (always)
 *     x-amz-security-token = cred->session_token           (token set and
 *                                                           !cred->omit_session_token)
 *     x-amz-content-sha256 = hex sha256 of the payload     (req->add_content_sha256)
 *   The caller MUST send these headers with exactly those values in the HTTP
 *   request, plus "Authorization: <authz_out>".  When a session token is given
 *   with omit_session_token = 1, the caller still sends X-Amz-Security-Token,
 *   it is just not covered by the signature (the "post-sts-header-after" style).
 *   If the caller passes X-Amz-Date itself, its value must equal amz_date.
 *
 * Canonicalisation rules (as the aws-c-auth and botocore vectors expect):
 *   - path: req->path may carry "?query"; an empty/NULL path is "/".
 *     normalize_path = 1 (every service except S3): remove "." and ".."
 *       segments, collapse repeated '/', then percent-encode every byte that is
 *       not RFC 3986 unreserved (A-Z a-z 0-9 - . _ ~) or '/', including '%'
 *       (so an already-encoded wire path is encoded twice, as AWS requires);
 *     normalize_path = 0 (S3): path kept as is; valid %XX triplets kept, other
 *       bytes encoded as above (single encoding).
 *   - query: parameters from the path's "?..." and from req->query are split on
 *     '&' (empty pieces skipped), percent-decoded ('+' is a literal plus), then
 *     re-encoded (unreserved set) and sorted by name, then value; a parameter
 *     without '=' gets an empty value ("name=").
 *   - headers: names lowercased; values trimmed of leading/trailing SP/HTAB and
 *     inner runs of SP/HTAB collapsed to one space; repeated names combined with
 *     ',' in order of appearance; sorted by name.  Names must be HTTP tokens and
 *     values must not contain CR or LF (unfold obs-fold lines to one SP before
 *     calling): otherwise KMS_SIGV4_ERR_HEADER, so that nothing that could
 *     inject a header line is ever signed.
 *   - payload: hex sha256 of body, unless req->payload_hash is given (e.g.
 *     "UNSIGNED-PAYLOAD" for S3 presigned URLs).
 */
#ifndef KMS_SIGV4_H
#define KMS_SIGV4_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes: 0 = success, negative = failure. */
#define KMS_SIGV4_OK           0
#define KMS_SIGV4_ERR_ARG     (-1)	/* NULL/empty/invalid argument (method, path,
									 * region, service, key id, secret...) */
#define KMS_SIGV4_ERR_NOMEM   (-2)	/* malloc failed */
#define KMS_SIGV4_ERR_CRYPTO  (-3)	/* OpenSSL digest/HMAC failure */
#define KMS_SIGV4_ERR_BUFFER  (-4)	/* caller's output buffer too small */
#define KMS_SIGV4_ERR_DATE    (-5)	/* amz_date not "YYYYMMDDTHHMMSSZ", or an
									 * X-Amz-Date header that differs from it */
#define KMS_SIGV4_ERR_HEADER  (-6)	/* invalid header name, or CR/LF in a value */

/* Length of a lowercase hex SHA-256 digest (without the terminating NUL). */
#define KMS_SIGV4_HEX_SHA256_LEN 64

typedef struct KmsSigV4Header
{
	const char *name;			/* any case, e.g. "Host", "X-Amz-Target" */
	const char *value;			/* raw value; trimmed/collapsed by the signer */
} KmsSigV4Header;

typedef struct KmsSigV4Request
{
	const char *method;			/* "POST", "GET", ... (used verbatim) */
	const char *path;			/* request path as sent, e.g. "/"; may contain
								 * "?query"; NULL or "" means "/" */
	const char *query;			/* extra raw query string without '?', or NULL */
	const KmsSigV4Header *headers;	/* must include Host */
	size_t		nheaders;
	const unsigned char *body;	/* may be NULL when body_len == 0 */
	size_t		body_len;
	const char *payload_hash;	/* NULL: hex sha256(body); else used verbatim */
	int			normalize_path;	/* 1 for every service except S3 (see above) */
	int			add_content_sha256;	/* header mode: also sign
									 * x-amz-content-sha256 (S3 style) */
} KmsSigV4Request;

typedef struct KmsSigV4Credentials
{
	const char *access_key_id;
	const char *secret_access_key;
	const char *session_token;	/* NULL or "" when not using temporary creds */
	int			omit_session_token;	/* 0 (default): the token is signed
									 * (header x-amz-security-token, or query
									 * parameter X-Amz-Security-Token); 1: it is
									 * not signed, the caller adds it after
									 * signing ("post-sts-header-after") */
} KmsSigV4Credentials;

/*
 * Header-mode signing.  On success writes the NUL-terminated Authorization
 * header value
 *   "AWS4-HMAC-SHA256 Credential=<akid>/<date>/<region>/<service>/aws4_request,
 *    SignedHeaders=<h1;h2;...>, Signature=<64 hex>"
 * into authz_out (authz_size bytes; KMS_SIGV4_ERR_BUFFER if too small).
 * amz_date: "YYYYMMDDTHHMMSSZ" (UTC), e.g. "20150830T123600Z".
 * canonical_request_out / string_to_sign_out: optional (may be NULL); on
 * success they receive malloc'd copies the caller frees with kms_sigv4_free();
 * on failure they are set to NULL.  Intended for tests/debugging: note the
 * canonical request contains the session token when it is signed.
 */
int			kms_sigv4_sign(const KmsSigV4Request *req,
						   const KmsSigV4Credentials *cred,
						   const char *amz_date, const char *region,
						   const char *service,
						   char *authz_out, size_t authz_size,
						   char **canonical_request_out,
						   char **string_to_sign_out);

/*
 * Query-mode signing (presigned URL).  Signs only req->headers (no implicit
 * headers; typically just Host) and the query parameters X-Amz-Algorithm,
 * X-Amz-Credential, X-Amz-Date, X-Amz-Expires (expires_seconds, 1..604800),
 * X-Amz-SignedHeaders and, unless omit_session_token, X-Amz-Security-Token.
 * On success *query_out (malloc'd, free with kms_sigv4_free) receives the
 * encoded parameters to append to the request's existing query (joined with
 * '&'), ending with "&X-Amz-Signature=<64 hex>" and, with omit_session_token,
 * an unsigned "&X-Amz-Security-Token=..." after it.
 */
int			kms_sigv4_presign(const KmsSigV4Request *req,
							  const KmsSigV4Credentials *cred,
							  const char *amz_date, const char *region,
							  const char *service, unsigned int expires_seconds,
							  char **query_out,
							  char **canonical_request_out,
							  char **string_to_sign_out);

/* hex(sha256(data)) into out (65 bytes incl. NUL): for X-Amz-Content-Sha256. */
int			kms_sigv4_hex_sha256(const void *data, size_t len,
								 char out[KMS_SIGV4_HEX_SHA256_LEN + 1]);

/* Wipe (explicit_bzero over strlen) and free a string returned by this module;
 * NULL is fine. */
void		kms_sigv4_free(char *s);

/* Static English description of a KMS_SIGV4_* code (never NULL). */
const char *kms_sigv4_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif							/* KMS_SIGV4_H */
