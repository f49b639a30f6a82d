/*-------------------------------------------------------------------------
 * kms_http.h
 *	  Outbound HTTPS from a backend with libcurl: one reusable handle per
 *	  backend, no signals, no redirects, TLS verification, deadlines and
 *	  query cancel honoured while a request is in flight.
 *
 * kms_http_perform() never raises for transport problems: it reports
 * them in KmsHttpResponse so the caller can decide to retry.  It raises
 * only for a policy violation (plain http to a non-loopback host), out
 * of memory, or a pending interrupt (query cancel, statement_timeout,
 * terminate), in which case the usual SQLSTATE surfaces.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_HTTP_H
#define KMS_HTTP_H

#include "kms_pg.h"

#include "datatype/timestamp.h"

/* Largest response body accepted (a KMS response is a few KB). */
#define KMS_HTTP_MAX_RESPONSE	(1024 * 1024)
#define KMS_HTTP_REQUEST_ID_LEN	128

typedef enum KmsHttpStatus
{
	KMS_HTTP_OK = 0,			/* an HTTP response arrived (any status code) */
	KMS_HTTP_ERR_CONNECT,		/* could not connect (refused, unreachable, DNS) */
	KMS_HTTP_ERR_TRANSPORT,		/* reset, empty reply, send/receive failure */
	KMS_HTTP_ERR_TIMEOUT,		/* connect or attempt timeout expired */
	KMS_HTTP_ERR_TLS,			/* handshake or certificate verification failed */
	KMS_HTTP_ERR_TOO_LARGE,		/* response larger than KMS_HTTP_MAX_RESPONSE */
	KMS_HTTP_ERR_OTHER			/* anything else libcurl reported */
} KmsHttpStatus;

typedef struct KmsHttpRequest
{
	const char *method;			/* "GET", "PUT", "POST" */
	const char *url;
	const char *const *headers; /* "Name: value" lines; Host is derived from url */
	int			nheaders;
	const char *body;			/* may hold key material; never copied by curl */
	size_t		body_len;
	TimestampTz deadline;		/* absolute end of this attempt (0: request_timeout) */
	bool		allow_metadata_http;	/* plain http to link-local metadata hosts */
	bool		count_if_interrupted;	/* count stat_op as a failed provider
										 * call when interrupted after sending */
	int			stat_op;		/* a KmsStatOp */
} KmsHttpRequest;

typedef struct KmsHttpResponse
{
	KmsHttpStatus status;
	long		http_code;
	char	   *body;			/* NUL-terminated, wiped when its context goes */
	size_t		body_len;
	char		request_id[KMS_HTTP_REQUEST_ID_LEN];	/* x-amzn-RequestId or "" */
	char		error[256];		/* transport error text (no secrets) */
	int			elapsed_ms;
	bool		sent;			/* a transfer was started (the peer may have seen it) */
} KmsHttpResponse;

/*
 * Perform one HTTP exchange.  resp->body is allocated with
 * kms_secure_palloc in CurrentMemoryContext, so it is wiped even when an
 * error unwinds; callers wipe earlier with kms_http_response_wipe.
 */
extern void kms_http_perform(const KmsHttpRequest *req, KmsHttpResponse *resp);

/* Wipe the response body now (it may hold a plaintext data key). */
extern void kms_http_response_wipe(KmsHttpResponse *resp);

/*
 * The "Host" header value libcurl will send for url ("host" or
 * "host:port" for a non-default port), for SigV4 signing.  palloc'd;
 * raises for a malformed URL.
 */
extern char *kms_http_host_header(const char *url);

/* Raise unless url is https, or http to a loopback host (or metadata host). */
extern void kms_http_check_url(const char *url, bool allow_metadata_http);

/* Human-readable name of a status, for errdetail. */
extern const char *kms_http_status_text(KmsHttpStatus status);

#endif							/* KMS_HTTP_H */
