/*-------------------------------------------------------------------------
 * kms_http.c
 *	  libcurl inside a backend, done carefully (the pgsql-http model with
 *	  its gaps fixed).
 *
 * - curl_global_init runs once, from _PG_init.
 * - Each backend owns one easy handle and one multi handle, reused for
 *	 every request (curl_easy_reset keeps the connection cache in the multi
 *	 handle), so consecutive KMS calls use one keep-alive TLS connection.
 * - CURLOPT_NOSIGNAL: PostgreSQL owns SIGALRM (statement_timeout).
 * - No redirects, http/https only, TLS peer and host verification always
 *	 on; kms_pg.ca_file replaces the system trust store when set.  Plain
 *	 http is allowed only to loopback hosts (and, for the credential
 *	 chain, to the link-local EC2/ECS metadata addresses).
 * - We drive the transfer with the multi interface and wait at most
 *	 KMS_HTTP_POLL_MS at a time, checking QueryCancelPending and
 *	 ProcDiePending in between (and in the XFERINFO callback), so a query
 *	 cancel, statement_timeout or terminate returns control within a
 *	 fraction of a second even when the peer stalls.  After an aborted
 *	 transfer everything is released first, then CHECK_FOR_INTERRUPTS()
 *	 raises the real error (57014 etc.).
 * - libcurl callbacks never palloc or ereport: the body goes into a
 *	 malloc'd buffer with a hard cap, the request id into a fixed buffer.
 *	 Buffers that may contain key material (request body is the caller's,
 *	 the response buffer and the header list carrying Authorization and the
 *	 session token are ours) are wiped with explicit_bzero before free.
 * - PG_TRY/PG_FINALLY releases the transfer state if anything raises in
 *	 the middle of a call.
 *-------------------------------------------------------------------------
 */
#include "kms_http.h"
#include "kms_dek_cache.h"
#include "kms_guc.h"
#include "kms_secure_mem.h"

#include <arpa/inet.h>
#include <curl/curl.h>

#include "miscadmin.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#define KMS_HTTP_POLL_MS		50
#define KMS_HTTP_INITIAL_BUF	(16 * 1024)
/* Let PostgreSQL's statement_timeout fire before libcurl's own timeout. */
#define KMS_HTTP_STMT_SLACK_MS	250

typedef struct KmsHttpXfer
{
	char	   *buf;			/* malloc'd response body */
	size_t		len;
	size_t		cap;
	bool		too_large;
	bool		oom;
	bool		interrupted;
	char		request_id[KMS_HTTP_REQUEST_ID_LEN];
} KmsHttpXfer;

static bool curl_initialized = false;
static CURL *kms_curl = NULL;
static CURLM *kms_multi = NULL;

/* State of the transfer in progress, released by http_cleanup(). */
static KmsHttpXfer xfer;
static struct curl_slist *xfer_headers = NULL;
static bool xfer_in_multi = false;
static bool xfer_active = false;

void
kms_http_init(void)
{
	if (curl_initialized)
		return;
	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
				 errmsg("kms_pg: could not initialize libcurl")));
	curl_initialized = true;
}

const char *
kms_http_status_text(KmsHttpStatus status)
{
	switch (status)
	{
		case KMS_HTTP_OK:
			return "ok";
		case KMS_HTTP_ERR_CONNECT:
			return "connection failed";
		case KMS_HTTP_ERR_TRANSPORT:
			return "connection error";
		case KMS_HTTP_ERR_TIMEOUT:
			return "timeout";
		case KMS_HTTP_ERR_TLS:
			return "TLS verification failed";
		case KMS_HTTP_ERR_TOO_LARGE:
			return "response too large";
		case KMS_HTTP_ERR_OTHER:
			return "HTTP client error";
	}
	return "unknown";
}

/* ---- URL policy ---- */

static bool
host_is_loopback(const char *host)
{
	char		h[256];
	size_t		n = strlen(host);
	struct in_addr a4;
	struct in6_addr a6;

	if (n == 0 || n >= sizeof(h))
		return false;
	if (host[0] == '[' && host[n - 1] == ']')
	{
		memcpy(h, host + 1, n - 2);
		h[n - 2] = '\0';
	}
	else
		strlcpy(h, host, sizeof(h));

	if (pg_strcasecmp(h, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, h, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, h, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return false;
}

/* The link-local EC2 IMDS and ECS/EKS container credential addresses. */
static bool
host_is_metadata(const char *host)
{
	static const char *const hosts[] = {
		"169.254.169.254", "169.254.170.2", "169.254.170.23",
		"[fd00:ec2::254]", "[fd00:ec2::23]"
	};

	for (int i = 0; i < (int) lengthof(hosts); i++)
		if (pg_strcasecmp(host, hosts[i]) == 0)
			return true;
	return false;
}

typedef struct KmsUrlParts
{
	char		scheme[16];
	char		host[256];
	char		port[16];		/* "" when the URL gives none */
} KmsUrlParts;

/* Split url with libcurl's own parser, so we judge what curl will use. */
static bool
url_parse(const char *url, KmsUrlParts *out)
{
	CURLU	   *u = curl_url();
	char	   *part = NULL;
	bool		ok = false;

	memset(out, 0, sizeof(*out));
	if (u == NULL)
		return false;
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
		goto done;
	if (curl_url_get(u, CURLUPART_SCHEME, &part, 0) != CURLUE_OK)
		goto done;
	strlcpy(out->scheme, part, sizeof(out->scheme));
	curl_free(part);
	part = NULL;
	if (curl_url_get(u, CURLUPART_HOST, &part, 0) != CURLUE_OK)
		goto done;
	strlcpy(out->host, part, sizeof(out->host));
	curl_free(part);
	part = NULL;
	if (curl_url_get(u, CURLUPART_PORT, &part, 0) == CURLUE_OK)
	{
		strlcpy(out->port, part, sizeof(out->port));
		curl_free(part);
		part = NULL;
	}
	ok = true;
done:
	if (part)
		curl_free(part);
	curl_url_cleanup(u);
	return ok;
}

void
kms_http_check_url(const char *url, bool allow_metadata_http)
{
	KmsUrlParts p;

	if (!url_parse(url, &p))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("kms_pg: invalid URL \"%s\"", url)));
	if (pg_strcasecmp(p.scheme, "https") == 0)
		return;
	if (pg_strcasecmp(p.scheme, "http") == 0)
	{
		if (host_is_loopback(p.host))
			return;
		if (allow_metadata_http && host_is_metadata(p.host))
			return;
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("kms_pg: refusing plain http to non-loopback host \"%s\"", p.host),
				 errdetail("Only https is allowed for KMS traffic, except to 127.0.0.0/8, ::1 and localhost."),
				 errhint("Use an https:// endpoint.")));
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("kms_pg: unsupported URL scheme \"%s\"", p.scheme)));
}

char *
kms_http_host_header(const char *url)
{
	KmsUrlParts p;
	bool		default_port;

	if (!url_parse(url, &p))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("kms_pg: invalid URL \"%s\"", url)));
	default_port = p.port[0] == '\0' ||
		(pg_strcasecmp(p.scheme, "https") == 0 && strcmp(p.port, "443") == 0) ||
		(pg_strcasecmp(p.scheme, "http") == 0 && strcmp(p.port, "80") == 0);
	if (default_port)
		return pstrdup(p.host);
	return psprintf("%s:%s", p.host, p.port);
}

/* ---- libcurl callbacks: no palloc, no ereport ---- */

static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	KmsHttpXfer *x = (KmsHttpXfer *) userdata;
	size_t		n = size * nmemb;

	if (n > KMS_HTTP_MAX_RESPONSE - x->len)
	{
		x->too_large = true;
		return 0;
	}
	if (x->len + n + 1 > x->cap)
	{
		size_t		newcap = x->cap;
		char	   *nb;

		while (newcap < x->len + n + 1)
			newcap *= 2;
		if (newcap > KMS_HTTP_MAX_RESPONSE + 1)
			newcap = KMS_HTTP_MAX_RESPONSE + 1;
		/* not realloc: the old block must be wiped, it may hold key bytes */
		nb = malloc(newcap);
		if (nb == NULL)
		{
			x->oom = true;
			return 0;
		}
		memcpy(nb, x->buf, x->len);
		explicit_bzero(x->buf, x->cap);
		free(x->buf);
		x->buf = nb;
		x->cap = newcap;
	}
	memcpy(x->buf + x->len, ptr, n);
	x->len += n;
	x->buf[x->len] = '\0';
	return n;
}

static size_t
header_cb(char *buffer, size_t size, size_t nitems, void *userdata)
{
	KmsHttpXfer *x = (KmsHttpXfer *) userdata;
	size_t		n = size * nitems;
	static const char name[] = "x-amzn-requestid:";
	size_t		nl = sizeof(name) - 1;

	if (n > nl && pg_strncasecmp(buffer, name, nl) == 0)
	{
		size_t		s = nl;
		size_t		e = n;
		size_t		len;

		while (s < e && (buffer[s] == ' ' || buffer[s] == '\t'))
			s++;
		while (e > s && (buffer[e - 1] == '\r' || buffer[e - 1] == '\n' ||
						 buffer[e - 1] == ' ' || buffer[e - 1] == '\t'))
			e--;
		len = Min(e - s, sizeof(x->request_id) - 1);
		memcpy(x->request_id, buffer + s, len);
		x->request_id[len] = '\0';
		/* keep it printable: it goes into errdetail */
		for (size_t i = 0; i < len; i++)
			if ((unsigned char) x->request_id[i] < 0x20 ||
				(unsigned char) x->request_id[i] >= 0x7f)
				x->request_id[i] = '?';
	}
	return n;
}

static int
xferinfo_cb(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
			curl_off_t ultotal, curl_off_t ulnow)
{
	KmsHttpXfer *x = (KmsHttpXfer *) clientp;

	if (QueryCancelPending || ProcDiePending)
	{
		x->interrupted = true;
		return 1;
	}
	return 0;
}

/* ---- transfer ---- */

static void
wipe_slist(struct curl_slist *l)
{
	for (; l != NULL; l = l->next)
		if (l->data)
			explicit_bzero(l->data, strlen(l->data));
}

/* Release everything a transfer holds; safe to call twice. */
static void
http_cleanup(void)
{
	if (xfer_in_multi && kms_multi && kms_curl)
		curl_multi_remove_handle(kms_multi, kms_curl);
	xfer_in_multi = false;
	if (kms_curl)
	{
		/* drop curl's pointers to our header list and the caller's body */
		curl_easy_setopt(kms_curl, CURLOPT_HTTPHEADER, NULL);
		curl_easy_setopt(kms_curl, CURLOPT_POSTFIELDS, NULL);
		curl_easy_setopt(kms_curl, CURLOPT_ERRORBUFFER, NULL);
	}
	if (xfer_headers)
	{
		wipe_slist(xfer_headers);
		curl_slist_free_all(xfer_headers);
		xfer_headers = NULL;
	}
	if (xfer.buf)
	{
		explicit_bzero(xfer.buf, xfer.cap);
		free(xfer.buf);
	}
	memset(&xfer, 0, sizeof(xfer));
	xfer_active = false;
}

static KmsHttpStatus
map_curl_code(CURLcode rc)
{
	switch (rc)
	{
		case CURLE_OK:
			return KMS_HTTP_OK;
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_RESOLVE_PROXY:
		case CURLE_COULDNT_CONNECT:
			return KMS_HTTP_ERR_CONNECT;
		case CURLE_OPERATION_TIMEDOUT:
			return KMS_HTTP_ERR_TIMEOUT;
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CERTPROBLEM:
		case CURLE_SSL_CIPHER:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_ISSUER_ERROR:
		case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
		case CURLE_SSL_INVALIDCERTSTATUS:
		case CURLE_USE_SSL_FAILED:
			return KMS_HTTP_ERR_TLS;
		case CURLE_SSL_CONNECT_ERROR:	/* includes resets during handshake */
		case CURLE_GOT_NOTHING:
		case CURLE_SEND_ERROR:
		case CURLE_RECV_ERROR:
		case CURLE_PARTIAL_FILE:
		case CURLE_HTTP2:
		case CURLE_HTTP2_STREAM:
			return KMS_HTTP_ERR_TRANSPORT;
		default:
			return KMS_HTTP_ERR_OTHER;
	}
}

static void
setopt_or_fail(CURLcode rc, const char *what)
{
	if (rc != CURLE_OK)
		elog(ERROR, "kms_pg: curl_easy_setopt(%s) failed: %s", what, curl_easy_strerror(rc));
}

#define SETOPT(opt, val) setopt_or_fail(curl_easy_setopt(kms_curl, opt, val), #opt)

/* Milliseconds from now until t (may be negative). */
static int64
ms_until(TimestampTz t)
{
	return (t - GetCurrentTimestamp()) / 1000;
}

void
kms_http_perform(const KmsHttpRequest *req, KmsHttpResponse *resp)
{
	TimestampTz start = GetCurrentTimestamp();
	TimestampTz deadline = req->deadline;
	int64		timeout_ms;
	KmsUrlParts parts;
	char		errbuf[CURL_ERROR_SIZE];
	bool		no_proxy;

	memset(resp, 0, sizeof(*resp));
	kms_http_check_url(req->url, req->allow_metadata_http);
	if (!url_parse(req->url, &parts))
		elog(ERROR, "kms_pg: could not parse URL");
	no_proxy = host_is_loopback(parts.host) || host_is_metadata(parts.host);

	if (xfer_active)
		elog(ERROR, "kms_pg: nested HTTP request");

	/* This attempt ends at the request deadline or just after statement_timeout. */
	if (deadline == 0)
		deadline = TimestampTzPlusMilliseconds(start, kms_guc_request_timeout_ms);
	if (get_timeout_active(STATEMENT_TIMEOUT))
	{
		TimestampTz st = TimestampTzPlusMilliseconds(get_timeout_finish_time(STATEMENT_TIMEOUT),
													 KMS_HTTP_STMT_SLACK_MS);

		if (st < deadline)
			deadline = st;
	}
	timeout_ms = ms_until(deadline);
	if (timeout_ms < 1)
	{
		resp->status = KMS_HTTP_ERR_TIMEOUT;
		strlcpy(resp->error, "request deadline reached before sending", sizeof(resp->error));
		return;
	}

	if (!curl_initialized)
		kms_http_init();
	if (kms_multi == NULL)
	{
		kms_multi = curl_multi_init();
		if (kms_multi == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY),
							errmsg("kms_pg: could not create a libcurl multi handle")));
	}
	if (kms_curl == NULL)
	{
		kms_curl = curl_easy_init();
		if (kms_curl == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY),
							errmsg("kms_pg: could not create a libcurl handle")));
	}
	else
		curl_easy_reset(kms_curl);

	memset(&xfer, 0, sizeof(xfer));
	xfer_active = true;

	PG_TRY();
	{
		CURLcode	rc = CURLE_OK;
		CURLMcode	mc;
		bool		got_result = false;
		int			running = 1;
		struct curl_slist *l;
		char	   *hosthdr;

		xfer.buf = malloc(KMS_HTTP_INITIAL_BUF);
		if (xfer.buf == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
		xfer.cap = KMS_HTTP_INITIAL_BUF;
		xfer.buf[0] = '\0';

		/* header list: Host first so it matches what was signed */
		hosthdr = psprintf("Host: %s", kms_http_host_header(req->url));
		l = curl_slist_append(NULL, hosthdr);
		if (l == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
		xfer_headers = l;
		for (int i = 0; i < req->nheaders; i++)
		{
			l = curl_slist_append(xfer_headers, req->headers[i]);
			if (l == NULL)
				ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
			xfer_headers = l;
		}
		l = curl_slist_append(xfer_headers, "Expect:");
		if (l == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
		xfer_headers = l;

		errbuf[0] = '\0';
		SETOPT(CURLOPT_ERRORBUFFER, errbuf);
		SETOPT(CURLOPT_URL, req->url);
		SETOPT(CURLOPT_NOSIGNAL, 1L);
		SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
		SETOPT(CURLOPT_MAXREDIRS, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
		SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
#else
		SETOPT(CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
		SETOPT(CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1);
		SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
		SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
		if (kms_guc_ca_file && kms_guc_ca_file[0] != '\0')
			SETOPT(CURLOPT_CAINFO, kms_guc_ca_file);
		if (no_proxy)
			SETOPT(CURLOPT_NOPROXY, "*");
		SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long) Min(timeout_ms, kms_guc_connect_timeout_ms));
		SETOPT(CURLOPT_TIMEOUT_MS, (long) timeout_ms);
		SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
		SETOPT(CURLOPT_USERAGENT, "kms_pg/1.0");
		SETOPT(CURLOPT_NOPROGRESS, 0L);
		SETOPT(CURLOPT_XFERINFOFUNCTION, xferinfo_cb);
		SETOPT(CURLOPT_XFERINFODATA, &xfer);
		SETOPT(CURLOPT_WRITEFUNCTION, write_cb);
		SETOPT(CURLOPT_WRITEDATA, &xfer);
		SETOPT(CURLOPT_HEADERFUNCTION, header_cb);
		SETOPT(CURLOPT_HEADERDATA, &xfer);
		SETOPT(CURLOPT_HTTPHEADER, xfer_headers);

		if (strcmp(req->method, "GET") == 0)
			SETOPT(CURLOPT_HTTPGET, 1L);
		else
		{
			SETOPT(CURLOPT_POST, 1L);
			SETOPT(CURLOPT_POSTFIELDS, req->body ? req->body : "");
			SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len);
			if (strcmp(req->method, "POST") != 0)
				SETOPT(CURLOPT_CUSTOMREQUEST, req->method);
		}

		mc = curl_multi_add_handle(kms_multi, kms_curl);
		if (mc != CURLM_OK)
			elog(ERROR, "kms_pg: curl_multi_add_handle failed: %s", curl_multi_strerror(mc));
		resp->sent = true;
		xfer_in_multi = true;

		/* Drive the transfer, looking at interrupts every KMS_HTTP_POLL_MS. */
		for (;;)
		{
			CURLMsg    *msg;
			int			nmsgs;

			mc = curl_multi_perform(kms_multi, &running);
			if (mc != CURLM_OK)
				break;
			while ((msg = curl_multi_info_read(kms_multi, &nmsgs)) != NULL)
			{
				if (msg->msg == CURLMSG_DONE && msg->easy_handle == kms_curl)
				{
					rc = msg->data.result;
					got_result = true;
				}
			}
			if (got_result || running == 0)
				break;
			if (QueryCancelPending || ProcDiePending)
			{
				xfer.interrupted = true;
				break;
			}
			mc = curl_multi_wait(kms_multi, NULL, 0, KMS_HTTP_POLL_MS, NULL);
			if (mc != CURLM_OK)
				break;
		}

		resp->elapsed_ms = (int) ((GetCurrentTimestamp() - start) / 1000);
		strlcpy(resp->request_id, xfer.request_id, sizeof(resp->request_id));

		if (xfer.interrupted || (got_result && rc == CURLE_ABORTED_BY_CALLBACK))
		{
			curl_off_t	uploaded = 0;

			/*
			 * KMS may have received the request: count it as a failed call
			 * now, since the error below unwinds past the caller (FATAL for
			 * a terminate does not unwind at all).
			 */
			if (req->count_if_interrupted &&
				curl_easy_getinfo(kms_curl, CURLINFO_SIZE_UPLOAD_T, &uploaded) == CURLE_OK &&
				uploaded > 0)
				kms_stats_count_call((KmsStatOp) req->stat_op, true);
			/* free everything, then let PostgreSQL raise the real error */
			http_cleanup();
			CHECK_FOR_INTERRUPTS();
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("canceling KMS request due to user request")));
		}
		if (mc != CURLM_OK)
		{
			resp->status = KMS_HTTP_ERR_OTHER;
			snprintf(resp->error, sizeof(resp->error), "%s", curl_multi_strerror(mc));
		}
		else if (!got_result)
		{
			resp->status = KMS_HTTP_ERR_OTHER;
			strlcpy(resp->error, "transfer ended without a result", sizeof(resp->error));
		}
		else if (rc != CURLE_OK)
		{
			if (xfer.oom)
			{
				http_cleanup();
				ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
			}
			resp->status = xfer.too_large ? KMS_HTTP_ERR_TOO_LARGE : map_curl_code(rc);
			if (xfer.too_large)
				snprintf(resp->error, sizeof(resp->error),
						 "response larger than %d bytes", KMS_HTTP_MAX_RESPONSE);
			else
				snprintf(resp->error, sizeof(resp->error), "%s%s%s",
						 curl_easy_strerror(rc), errbuf[0] ? ": " : "", errbuf);
		}
		else
		{
			long		code = 0;

			curl_easy_getinfo(kms_curl, CURLINFO_RESPONSE_CODE, &code);
			resp->status = KMS_HTTP_OK;
			resp->http_code = code;
			resp->body = kms_secure_palloc(xfer.len + 1);
			memcpy(resp->body, xfer.buf, xfer.len);
			resp->body[xfer.len] = '\0';
			resp->body_len = xfer.len;
		}
	}
	PG_FINALLY();
	{
		http_cleanup();
	}
	PG_END_TRY();
}

void
kms_http_response_wipe(KmsHttpResponse *resp)
{
	if (resp->body)
	{
		explicit_bzero(resp->body, resp->body_len);
		resp->body_len = 0;
	}
}
