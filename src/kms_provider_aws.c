/*-------------------------------------------------------------------------
 * kms_provider_aws.c
 *	  The AWS KMS key provider: GenerateDataKey, Decrypt, ReEncrypt,
 *	  Encrypt and DescribeKey over the JSON 1.1 protocol
 *	  (POST /, Content-Type: application/x-amz-json-1.1,
 *	  X-Amz-Target: TrentService.<Op>), signed with SigV4.
 *
 * Endpoint: kms_pg.endpoint as given (VPC endpoints), else
 * https://kms.<region>.amazonaws.com, or https://kms-fips.<region>... when
 * FIPS endpoints are asked for.  The signing region is always the region
 * (kms_aws_region(): kms_pg.region, AWS_REGION, AWS_DEFAULT_REGION, the
 * profile's region, EC2 instance metadata).
 *
 * Retries: throttling (ThrottlingException and kin, HTTP 429), 5xx and
 * KMS's internal/dependency errors, and transport failures are retried
 * with exponential backoff and full jitter (base 50 ms, cap 2 s), at most
 * kms_pg.max_retries times, never past kms_pg.request_timeout (retries
 * included); sleeps wait on the latch so query cancel and
 * statement_timeout interrupt them.  Multi-Region keys (mrk- key ARNs)
 * fall back to the regions of kms_pg.mrk_replica_regions, each with a
 * fresh deadline, when their own region keeps failing with transport
 * errors, timeouts or 5xx.
 *
 * Errors map to SQLSTATEs in report_kms_error(); errdetail always carries
 * the AWS error type and the x-amzn-RequestId so a DBA can find the call
 * in CloudTrail.  Never printed: key bytes, signatures, the Authorization
 * header, secrets or session tokens.
 *-------------------------------------------------------------------------
 */
#include "kms_provider.h"
#include "kms_aws_json.h"
#include "kms_credentials.h"
#include "kms_aws_config.h"
#include "kms_dek_cache.h"
#include "kms_guc.h"
#include "kms_http.h"
#include "kms_secure_mem.h"
#include "kms_sigv4.h"

#include <time.h>

#include "common/base64.h"
#include "common/pg_prng.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"
#include "utils/wait_event.h"

#define AWS_BACKOFF_BASE_MS		50
#define AWS_BACKOFF_CAP_MS		2000
#define AWS_AUTHZ_MAX			1024
/* an attempt needs at least this much time left to be worth making */
#define KMS_AWS_MIN_ATTEMPT_MS	100

/* How a request ended, after retries. */
typedef enum AwsOutcome
{
	AWS_OK = 0,
	AWS_FAIL_SERVICE,			/* a non-retryable AWS error (4xx) */
	AWS_FAIL_THROTTLED,			/* still throttled when retries ran out */
	AWS_FAIL_5XX,				/* still 5xx / internal errors */
	AWS_FAIL_TRANSPORT,			/* connection refused/reset, empty reply */
	AWS_FAIL_TIMEOUT,			/* request deadline reached */
	AWS_FAIL_TLS,				/* certificate verification failed */
	AWS_FAIL_BAD_RESPONSE		/* unparsable or oversized response */
} AwsOutcome;

typedef struct AwsResult
{
	AwsOutcome	outcome;
	int			attempts;
	int			elapsed_ms;
	long		http_code;
	char	   *body;			/* secure, NUL-terminated (AWS_OK) */
	size_t		body_len;
	char		request_id[KMS_HTTP_REQUEST_ID_LEN];
	char	   *err_type;		/* AWS error type, or NULL */
	char	   *err_message;
	char		transport_error[256];
	const char *region;			/* region that answered (or failed last) */
	const char *url;
} AwsResult;

/* Builds the request body for a region (key ARN rewritten for MRK replicas). */
typedef void (*AwsBodyBuilder) (StringInfo body, const char *key, void *arg);

typedef struct AwsOp
{
	const char *target;			/* "GenerateDataKey", ... */
	KmsStatOp	stat;
	const char *key;			/* key as sent to the primary region */
	AwsBodyBuilder build;
	void	   *arg;
	int			body_bound;		/* upper bound of the body size */
} AwsOp;

/* Backend-local call counters (the shared view is kms_cache_stats). */
typedef struct KmsAwsStats
{
	int64		attempts;
	int64		retries;
	int64		errors;
	int64		mrk_fallbacks;
} KmsAwsStats;

static KmsAwsStats aws_stats;

/* ---- endpoints ---- */

static char *
default_endpoint(const char *region)
{
	return kms_aws_kms_default_endpoint(region, kms_aws_use_fips());
}

static char *
primary_endpoint(const char *region)
{
	if (kms_guc_endpoint && kms_guc_endpoint[0] != '\0')
		return pstrdup(kms_guc_endpoint);
	return default_endpoint(region);
}

/*
 * If key is a multi-Region key ARN (arn:<part>:kms:<region>:<acct>:key/mrk-...),
 * return its parts; false otherwise.
 */
static bool
parse_mrk_arn(const char *key, char **prefix, char **region, char **rest)
{
	const char *p = key;
	const char *c[5];
	int			n = 0;

	if (strncmp(key, "arn:", 4) != 0)
		return false;
	for (; *p && n < 5; p++)
		if (*p == ':')
			c[n++] = p;
	if (n < 5)
		return false;
	/* c[0]=after arn, c[1]=after partition, c[2]=after kms, c[3]=after region, c[4]=after account */
	if (strncmp(c[1] + 1, "kms:", 4) != 0 || strncmp(c[4] + 1, "key/mrk-", 8) != 0)
		return false;
	*prefix = pnstrdup(key, c[2] - key + 1);
	*region = pnstrdup(c[2] + 1, c[3] - c[2] - 1);
	*rest = pstrdup(c[3]);
	return true;
}

/* ---- error classification ---- */

static bool
type_in_list(const char *type, const char *const *list, int n)
{
	if (type == NULL)
		return false;
	for (int i = 0; i < n; i++)
		if (strcmp(type, list[i]) == 0)
			return true;
	return false;
}

static bool
is_throttling(const char *type)
{
	static const char *const t[] = {
		"ThrottlingException", "ThrottledException", "Throttling",
		"RequestLimitExceeded", "LimitExceededException", "TooManyRequestsException",
		"RequestThrottledException", "RequestThrottled", "SlowDown"
	};

	return type_in_list(type, t, lengthof(t));
}

static bool
is_transient_service_error(const char *type)
{
	static const char *const t[] = {
		"KMSInternalException", "DependencyTimeoutException", "ServiceUnavailable",
		"ServiceUnavailableException", "InternalFailure", "InternalServerError",
		"InternalError"
	};

	return type_in_list(type, t, lengthof(t));
}

static bool
is_credential_error(const char *type)
{
	static const char *const t[] = {
		"InvalidSignatureException", "UnrecognizedClientException", "ExpiredTokenException",
		"InvalidClientTokenId", "MissingAuthenticationTokenException",
		"MissingAuthenticationToken", "IncompleteSignatureException",
		"IncompleteSignature", "SignatureDoesNotMatch", "AuthFailure"
	};

	return type_in_list(type, t, lengthof(t));
}

/* ---- one signed attempt ---- */

static void
amz_now(char out[17])
{
	time_t		t = time(NULL);
	struct tm	tm;

	gmtime_r(&t, &tm);
	strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

/*
 * Sign and send one request.  The Authorization header and the session
 * token header are built in buffers wiped before returning or on error.
 */
static void
aws_attempt(const char *target, KmsStatOp stat, const char *region, const char *url,
			const char *body, size_t body_len, TimestampTz deadline,
			KmsHttpResponse *resp)
{
	const KmsAwsCredentials *cred = kms_aws_credentials_get();
	char		amz_date[17];
	char	   *host = kms_http_host_header(url);
	char	   *target_hdr = psprintf("TrentService.%s", target);
	KmsSigV4Header sh[3];
	KmsSigV4Request sreq;
	KmsSigV4Credentials scred;
	char	   *authz = kms_secure_palloc(AWS_AUTHZ_MAX);
	char	   *authz_hdr;
	char	   *token_hdr = NULL;
	const char *hdrs[5];
	int			nh = 0;
	int			rc;
	KmsHttpRequest req;

	amz_now(amz_date);
	sh[0].name = "Host";
	sh[0].value = host;
	sh[1].name = "Content-Type";
	sh[1].value = "application/x-amz-json-1.1";
	sh[2].name = "X-Amz-Target";
	sh[2].value = target_hdr;

	memset(&sreq, 0, sizeof(sreq));
	sreq.method = "POST";
	sreq.path = "/";
	sreq.headers = sh;
	sreq.nheaders = 3;
	sreq.body = (const unsigned char *) body;
	sreq.body_len = body_len;
	sreq.normalize_path = 1;

	memset(&scred, 0, sizeof(scred));
	scred.access_key_id = cred->access_key_id;
	scred.secret_access_key = cred->secret_access_key;
	scred.session_token = cred->session_token;

	rc = kms_sigv4_sign(&sreq, &scred, amz_date, region, "kms",
						authz, AWS_AUTHZ_MAX, NULL, NULL);
	if (rc != KMS_SIGV4_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("kms_pg: could not sign the KMS request: %s", kms_sigv4_strerror(rc))));

	authz_hdr = kms_secure_palloc(strlen(authz) + 32);
	snprintf(authz_hdr, strlen(authz) + 32, "Authorization: %s", authz);
	explicit_bzero(authz, AWS_AUTHZ_MAX);

	hdrs[nh++] = "Content-Type: application/x-amz-json-1.1";
	hdrs[nh++] = psprintf("X-Amz-Target: %s", target_hdr);
	hdrs[nh++] = psprintf("X-Amz-Date: %s", amz_date);
	if (cred->session_token)
	{
		size_t		n = strlen(cred->session_token) + 32;

		token_hdr = kms_secure_palloc(n);
		snprintf(token_hdr, n, "X-Amz-Security-Token: %s", cred->session_token);
		hdrs[nh++] = token_hdr;
	}
	hdrs[nh++] = authz_hdr;

	memset(&req, 0, sizeof(req));
	req.method = "POST";
	req.url = url;
	req.headers = hdrs;
	req.nheaders = nh;
	req.body = body;
	req.body_len = body_len;
	req.deadline = deadline;
	req.count_if_interrupted = true;
	req.stat_op = stat;

	PG_TRY();
	{
		kms_http_perform(&req, resp);
	}
	PG_FINALLY();
	{
		explicit_bzero(authz_hdr, strlen(authz_hdr));
		if (token_hdr)
			explicit_bzero(token_hdr, strlen(token_hdr));
	}
	PG_END_TRY();
	aws_stats.attempts++;
}

/* Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^attempt)]. */
static long
backoff_ms(int attempt)
{
	double		ceiling = (double) AWS_BACKOFF_BASE_MS * (double) ((int64) 1 << Min(attempt, 20));

	if (ceiling > AWS_BACKOFF_CAP_MS)
		ceiling = AWS_BACKOFF_CAP_MS;
	return (long) (pg_prng_double(&pg_global_prng_state) * ceiling);
}

/* Sleep ms on the latch; query cancel and statement_timeout interrupt it. */
static void
backoff_sleep(long ms)
{
	TimestampTz end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		left = (long) ((end - GetCurrentTimestamp()) / 1000);

		CHECK_FOR_INTERRUPTS();
		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	CHECK_FOR_INTERRUPTS();
}

/*
 * One region: send with retries until success, a non-retryable error,
 * kms_pg.max_retries, or the deadline.
 */
static void
aws_request_region(const AwsOp *op, const char *region, const char *url,
				   const char *key, AwsResult *res)
{
	TimestampTz start = GetCurrentTimestamp();
	TimestampTz deadline = TimestampTzPlusMilliseconds(start, kms_guc_request_timeout_ms);
	StringInfoData body;
	bool		refreshed_credentials = false;

	/* the body may carry a plaintext DEK (Encrypt): fixed secure buffer */
	body.maxlen = op->body_bound + 4 * strlen(key) + 64;
	body.data = kms_secure_palloc(body.maxlen);
	body.data[0] = '\0';
	body.len = 0;
	body.cursor = 0;
	op->build(&body, key, op->arg);
	if (body.len >= body.maxlen - 1)
		elog(ERROR, "kms_pg: KMS request body bound exceeded");

	memset(res, 0, sizeof(*res));
	res->region = region;
	res->url = url;

	for (int attempt = 0;; attempt++)
	{
		KmsHttpResponse resp;
		bool		retry = false;
		long		wait;

		res->attempts = attempt + 1;
		res->err_type = res->err_message = NULL;
		res->transport_error[0] = '\0';
		aws_attempt(op->target, op->stat, region, url, body.data, body.len, deadline, &resp);
		strlcpy(res->request_id, resp.request_id, sizeof(res->request_id));
		res->http_code = resp.http_code;

		if (resp.status == KMS_HTTP_OK && resp.http_code == 200)
		{
			kms_stats_count_call(op->stat, false);
			res->outcome = AWS_OK;
			res->body = resp.body;
			res->body_len = resp.body_len;
			break;
		}
		/* an attempt that never left (deadline already reached) is no KMS call */
		if (resp.sent)
			kms_stats_count_call(op->stat, true);

		if (resp.status == KMS_HTTP_OK)
		{
			if (!kms_aws_json_parse_error(resp.body, resp.body_len,
										  &res->err_type, &res->err_message))
				res->err_type = res->err_message = NULL;
			kms_http_response_wipe(&resp);
			if (resp.http_code == 429 || is_throttling(res->err_type))
			{
				res->outcome = AWS_FAIL_THROTTLED;
				retry = true;
			}
			else if (resp.http_code >= 500 || is_transient_service_error(res->err_type))
			{
				res->outcome = AWS_FAIL_5XX;
				retry = true;
			}
			else if (res->err_type && strcmp(res->err_type, "ExpiredTokenException") == 0 &&
					 !refreshed_credentials)
			{
				/* expired under us (clock, early revocation): refetch once, at once */
				res->outcome = AWS_FAIL_SERVICE;
				refreshed_credentials = true;
				kms_aws_credentials_invalidate();
				attempt--;
				continue;
			}
			else
				res->outcome = AWS_FAIL_SERVICE;
		}
		else
		{
			strlcpy(res->transport_error, resp.error, sizeof(res->transport_error));
			switch (resp.status)
			{
				case KMS_HTTP_ERR_CONNECT:
				case KMS_HTTP_ERR_TRANSPORT:
				case KMS_HTTP_ERR_OTHER:
					res->outcome = AWS_FAIL_TRANSPORT;
					retry = true;
					break;
				case KMS_HTTP_ERR_TIMEOUT:
					res->outcome = AWS_FAIL_TIMEOUT;
					/* retry only with time for a real attempt left */
					retry = resp.sent &&
						TimestampTzPlusMilliseconds(GetCurrentTimestamp(), KMS_AWS_MIN_ATTEMPT_MS) < deadline;
					break;
				case KMS_HTTP_ERR_TLS:
					res->outcome = AWS_FAIL_TLS;
					break;
				default:
					res->outcome = AWS_FAIL_BAD_RESPONSE;
					break;
			}
		}

		if (!retry || attempt >= kms_guc_max_retries)
			break;
		wait = backoff_ms(attempt);
		/* no time left for another real attempt after the sleep */
		if (TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait + KMS_AWS_MIN_ATTEMPT_MS) >= deadline)
			break;
		aws_stats.retries++;
		backoff_sleep(wait);
	}
	explicit_bzero(body.data, body.maxlen);
	res->elapsed_ms = (int) ((GetCurrentTimestamp() - start) / 1000);
}

/* Raise the error for a failed request (never returns). */
kms_noreturn static void
report_kms_error(const AwsOp *op, const AwsResult *res, const char *key);


static char *aws_describe_key(const char *key);

/*
 * Drop the cached DEKs of key in every backend.  Values record the key
 * ARN, so an alias is resolved with one DescribeKey (which answers for
 * disabled keys and keys pending deletion too).
 */
static void
aws_forget_key(const char *key)
{
	static bool busy = false;
	MemoryContext old = CurrentMemoryContext;

	kms_dek_cache_forget_key(KMS_PROVIDER_AWS, key);
	if (busy || (strncmp(key, "alias/", 6) != 0 && strstr(key, ":alias/") == NULL))
		return;
	busy = true;
	PG_TRY();
	{
		char	   *json = aws_describe_key(key);
		KmsAwsJsonField f[1] = {{.name = "KeyMetadata"}};
		KmsAwsJsonField a[1] = {{.name = "Arn"}};

		if (kms_aws_json_extract(json, strlen(json), f, 1) == KMS_AWS_JSON_OK &&
			f[0].kind == KMS_AWS_JSON_OBJECT &&
			kms_aws_json_extract(f[0].value, f[0].len, a, 1) == KMS_AWS_JSON_OK &&
			a[0].kind == KMS_AWS_JSON_STRING)
			kms_dek_cache_forget_key(KMS_PROVIDER_AWS, a[0].value);
	}
	PG_CATCH();
	{
		busy = false;
		MemoryContextSwitchTo(old);
		if (QueryCancelPending || ProcDiePending)
			PG_RE_THROW();
		/* the alias is gone too: there is no ARN to forget */
		FlushErrorState();
	}
	PG_END_TRY();
	busy = false;
}

static void
report_kms_error(const AwsOp *op, const AwsResult *res, const char *key)
{
	const char *type = res->err_type ? res->err_type : "none";
	const char *rid = res->request_id[0] ? res->request_id : "none";
	const char *msg = res->err_message ? res->err_message : "no message";
	int			sqlstate = ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION;
	const char *hint = NULL;
	char	   *errm;

	aws_stats.errors++;
	switch (res->outcome)
	{
		case AWS_FAIL_SERVICE:
			break;
		case AWS_FAIL_THROTTLED:
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("KMS request throttled: %s still throttled after %d %s",
							op->target, res->attempts, res->attempts == 1 ? "attempt" : "attempts"),
					 errdetail("AWS KMS error %s (request id %s): %s", type, rid, msg),
					 errhint("Raise the KMS request quota, or let the data key cache absorb more calls (kms_pg.dek_max_age).")));
			break;
		case AWS_FAIL_5XX:
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
					 errmsg("KMS %s failed after %d %s with HTTP status %ld",
							op->target, res->attempts, res->attempts == 1 ? "attempt" : "attempts",
							res->http_code),
					 errdetail("AWS KMS error %s (request id %s): %s", type, rid, msg)));
			break;
		case AWS_FAIL_TRANSPORT:
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
					 errmsg("could not reach KMS for %s after %d %s", op->target, res->attempts,
							res->attempts == 1 ? "attempt" : "attempts"),
					 errdetail("Endpoint %s (region %s): %s", res->url, res->region,
							   res->transport_error)));
			break;
		case AWS_FAIL_TIMEOUT:
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
					 errmsg("KMS request timed out after %d ms", kms_guc_request_timeout_ms),
					 errdetail("%s to %s (region %s), %d attempts in %d ms: %s", op->target,
							   res->url, res->region, res->attempts, res->elapsed_ms,
							   res->transport_error),
					 errhint("kms_pg.request_timeout bounds one KMS request, retries included.")));
			break;
		case AWS_FAIL_TLS:
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
					 errmsg("TLS verification of the KMS endpoint failed"),
					 errdetail("Endpoint %s: %s", res->url, res->transport_error),
					 errhint("Check kms_pg.endpoint, and kms_pg.ca_file if the endpoint uses a private CA.")));
			break;
		case AWS_FAIL_BAD_RESPONSE:
		default:
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
					 errmsg("KMS %s failed: %s", op->target,
							res->transport_error[0] ? res->transport_error : "invalid response"),
					 errdetail("Endpoint %s, request id %s", res->url, rid)));
			break;
	}

	/* a non-retryable AWS error */
	if (res->err_type == NULL)
	{
		errm = psprintf("KMS %s failed with HTTP status %ld", op->target, res->http_code);
	}
	else if (strcmp(type, "AccessDeniedException") == 0)
	{
		sqlstate = ERRCODE_INSUFFICIENT_PRIVILEGE;
		errm = psprintf("KMS denied %s on key \"%s\"", op->target, key);
		hint = "Check the key policy and the IAM permissions of the server's AWS identity (kms_aws_credentials_info()).";
	}
	else if (strcmp(type, "DisabledException") == 0)
	{
		/* KMS says the key cannot be used: drop its cached DEKs everywhere */
		aws_forget_key(key);
		sqlstate = ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
		errm = pstrdup("KMS key is disabled");
		hint = "Enable the key in KMS, or use another key.";
	}
	else if (strcmp(type, "KMSInvalidStateException") == 0)
	{
		/* KMS says the key cannot be used: drop its cached DEKs everywhere */
		aws_forget_key(key);
		sqlstate = ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
		errm = pstrdup("KMS key is not in a usable state (pending deletion?)");
		hint = "A key pending deletion can be restored with CancelKeyDeletion before its deletion date.";
	}
	else if (strcmp(type, "KeyUnavailableException") == 0 ||
			 strcmp(type, "InvalidKeyUsageException") == 0)
	{
		sqlstate = ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
		errm = psprintf("KMS key \"%s\" cannot be used for %s", key, op->target);
	}
	else if (strcmp(type, "NotFoundException") == 0)
	{
		/* KMS says the key cannot be used: drop its cached DEKs everywhere */
		aws_forget_key(key);
		sqlstate = ERRCODE_UNDEFINED_OBJECT;
		errm = psprintf("KMS key \"%s\" not found", key);
		hint = "Check the key id or alias, and kms_pg.region.";
	}
	else if (strcmp(type, "InvalidCiphertextException") == 0 ||
			 strcmp(type, "IncorrectKeyException") == 0)
	{
		sqlstate = ERRCODE_DATA_EXCEPTION;
		errm = pstrdup("KMS could not decrypt the data key: wrong encryption context or damaged wrapped key");
		hint = "Check that the encryption context is exactly the one used to encrypt the value.";
	}
	else if (is_credential_error(type))
	{
		sqlstate = ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
		errm = psprintf("KMS rejected the credentials of the server (%s)", type);
		hint = "Check the AWS credentials of the server process (kms_aws_credentials_info()) and its clock.";
		/* new credentials may fix it on the next call */
		kms_aws_credentials_invalidate();
	}
	else if (strcmp(type, "ValidationException") == 0 ||
			 strcmp(type, "InvalidArnException") == 0 ||
			 strcmp(type, "SerializationException") == 0)
	{
		sqlstate = ERRCODE_INVALID_PARAMETER_VALUE;
		errm = psprintf("KMS rejected the %s request as invalid", op->target);
	}
	else
		errm = psprintf("KMS %s failed with %s", op->target, type);

	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg_internal("%s", errm),
			 errdetail("AWS KMS error %s (request id %s): %s", type, rid, msg),
			 hint ? errhint("%s", hint) : 0));
	pg_unreachable();
}

/*
 * Run op against the primary region, then, for a multi-Region key whose
 * region keeps failing at the transport level, against each configured
 * replica region with the key ARN rewritten.  Raises on failure.
 */
static void
aws_execute(const AwsOp *op, AwsResult *res)
{
	const char *region = kms_aws_region();
	char	   *url = primary_endpoint(region);
	char	   *prefix,
			   *keyregion,
			   *rest;
	const char *primary_region = region;
	List	   *replicas = NIL;
	char	   *raw;
	ListCell   *lc;

	/* the primary region of an mrk ARN is the ARN's own region */
	if (parse_mrk_arn(op->key, &prefix, &keyregion, &rest) &&
		strcmp(keyregion, region) != 0 &&
		!(kms_guc_endpoint && kms_guc_endpoint[0] != '\0'))
	{
		primary_region = keyregion;
		url = default_endpoint(keyregion);
	}

	aws_request_region(op, primary_region, url, op->key, res);
	if (res->outcome == AWS_OK)
		return;
	if ((res->outcome != AWS_FAIL_TRANSPORT && res->outcome != AWS_FAIL_5XX &&
		 res->outcome != AWS_FAIL_TIMEOUT) ||
		!parse_mrk_arn(op->key, &prefix, &keyregion, &rest) ||
		kms_guc_mrk_replica_regions == NULL || kms_guc_mrk_replica_regions[0] == '\0')
		report_kms_error(op, res, op->key);

	raw = pstrdup(kms_guc_mrk_replica_regions);
	if (!SplitGUCList(raw, ',', &replicas))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("kms_pg.mrk_replica_regions is not a valid list")));
	foreach(lc, replicas)
	{
		char	   *entry = pstrdup((char *) lfirst(lc));
		char	   *eq = strchr(entry, '=');
		char	   *rregion = entry;
		char	   *rurl;
		char	   *rkey;
		AwsResult	rres;

		if (eq)
		{
			*eq = '\0';
			rurl = pstrdup(eq + 1);
		}
		else
			rurl = default_endpoint(rregion);
		if (strcmp(rregion, primary_region) == 0)
			continue;
		rkey = psprintf("%s%s%s", prefix, rregion, rest);
		ereport(LOG,
				(errmsg("kms_pg: KMS %s in region %s failed, trying multi-Region replica in %s",
						op->target, primary_region, rregion)));
		aws_stats.mrk_fallbacks++;
		aws_request_region(op, rregion, rurl, rkey, &rres);
		if (rres.outcome == AWS_OK)
		{
			*res = rres;
			return;
		}
		/* a definite answer from a replica (e.g. AccessDenied) is final */
		if (rres.outcome != AWS_FAIL_TRANSPORT && rres.outcome != AWS_FAIL_5XX &&
			rres.outcome != AWS_FAIL_TIMEOUT)
			report_kms_error(op, &rres, rkey);
	}
	report_kms_error(op, res, op->key);
}

/* ---- response fields ---- */

kms_noreturn static void
bad_response(const AwsOp *op, const AwsResult *res, const char *what);

static void
bad_response(const AwsOp *op, const AwsResult *res, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
			 errmsg("KMS %s returned an invalid response: %s", op->target, what),
			 errdetail("Endpoint %s, request id %s", res->url,
					   res->request_id[0] ? res->request_id : "none")));
}

/* Extract fields; raises on malformed JSON. */
static void
extract_or_error(const AwsOp *op, AwsResult *res, KmsAwsJsonField *f, int n)
{
	KmsAwsJsonError jerr = kms_aws_json_extract(res->body, res->body_len, f, n);

	explicit_bzero(res->body, res->body_len);
	if (jerr != KMS_AWS_JSON_OK)
		bad_response(op, res, kms_aws_json_strerror(jerr));
}

/* Decode a base64 Plaintext of exactly KMS_DEK_LEN bytes into dek_out. */
static void
decode_plaintext(const AwsOp *op, const AwsResult *res, KmsAwsJsonField *f, uint8 *dek_out)
{
	uint8		buf[KMS_DEK_LEN + 8];
	int			n;

	if (f->kind != KMS_AWS_JSON_STRING)
		bad_response(op, res, "no Plaintext");
	n = kms_aws_b64_decode(f->value, f->len, buf, sizeof(buf));
	if (n != KMS_DEK_LEN)
	{
		explicit_bzero(buf, sizeof(buf));
		bad_response(op, res, "Plaintext is not a 256-bit key");
	}
	memcpy(dek_out, buf, KMS_DEK_LEN);
	explicit_bzero(buf, sizeof(buf));
}

static void
decode_wrapped(const AwsOp *op, const AwsResult *res, KmsAwsJsonField *blob,
			   KmsAwsJsonField *keyid, KmsWrappedKey *out)
{
	uint8	   *w;
	int			n;

	if (blob->kind != KMS_AWS_JSON_STRING)
		bad_response(op, res, "no CiphertextBlob");
	if (keyid->kind != KMS_AWS_JSON_STRING || keyid->len == 0 || keyid->len > KMS_KEY_ID_MAXLEN)
		bad_response(op, res, "no usable KeyId");
	w = palloc(pg_b64_dec_len(blob->len) + 1);
	n = kms_aws_b64_decode(blob->value, blob->len, w, pg_b64_dec_len(blob->len) + 1);
	if (n <= 0 || n > KMS_WRAPPED_MAXLEN)
		bad_response(op, res, "CiphertextBlob is not valid base64 of 1 to 1024 bytes");
	out->wrapped = w;
	out->wrapped_len = n;
	out->key_id = pstrdup(keyid->value);
}

/* ---- body builders ---- */

typedef struct AwsBodyArgs
{
	const KmsContext *kctx;
	const uint8 *blob;
	int			blob_len;
	const char *dest_key;
	const uint8 *dek;
} AwsBodyArgs;

static int
context_bound(const KmsContext *kctx)
{
	int			n = 64;

	for (int i = 0; i < kctx->npairs; i++)
		n += 6 * (kctx->pairs[i].keylen + kctx->pairs[i].valuelen) + 16;
	return n;
}

static void
build_generate(StringInfo s, const char *key, void *arg)
{
	AwsBodyArgs *a = (AwsBodyArgs *) arg;

	kms_aws_json_begin(s);
	kms_aws_json_add_string(s, "KeyId", key);
	kms_aws_json_add_string(s, "KeySpec", "AES_256");
	if (a->kctx->npairs > 0)
		kms_aws_json_add_context(s, "EncryptionContext", a->kctx);
	kms_aws_json_end(s);
}

static void
build_decrypt(StringInfo s, const char *key, void *arg)
{
	AwsBodyArgs *a = (AwsBodyArgs *) arg;

	kms_aws_json_begin(s);
	kms_aws_json_add_base64(s, "CiphertextBlob", a->blob, a->blob_len);
	kms_aws_json_add_string(s, "KeyId", key);
	if (a->kctx->npairs > 0)
		kms_aws_json_add_context(s, "EncryptionContext", a->kctx);
	kms_aws_json_end(s);
}

static void
build_reencrypt(StringInfo s, const char *key, void *arg)
{
	AwsBodyArgs *a = (AwsBodyArgs *) arg;

	kms_aws_json_begin(s);
	kms_aws_json_add_base64(s, "CiphertextBlob", a->blob, a->blob_len);
	kms_aws_json_add_string(s, "SourceKeyId", key);
	if (a->kctx->npairs > 0)
		kms_aws_json_add_context(s, "SourceEncryptionContext", a->kctx);
	kms_aws_json_add_string(s, "DestinationKeyId", a->dest_key);
	if (a->kctx->npairs > 0)
		kms_aws_json_add_context(s, "DestinationEncryptionContext", a->kctx);
	kms_aws_json_end(s);
}

static void
build_encrypt(StringInfo s, const char *key, void *arg)
{
	AwsBodyArgs *a = (AwsBodyArgs *) arg;

	kms_aws_json_begin(s);
	kms_aws_json_add_string(s, "KeyId", key);
	kms_aws_json_add_base64(s, "Plaintext", a->dek, KMS_DEK_LEN);
	if (a->kctx->npairs > 0)
		kms_aws_json_add_context(s, "EncryptionContext", a->kctx);
	kms_aws_json_end(s);
}

static void
build_describe(StringInfo s, const char *key, void *arg)
{
	kms_aws_json_begin(s);
	kms_aws_json_add_string(s, "KeyId", key);
	kms_aws_json_end(s);
}

/* ---- the provider table ---- */

static void
aws_generate_data_key(const char *key, const KmsContext *kctx, uint8 *dek_out,
					  KmsWrappedKey *wrapped_out)
{
	AwsBodyArgs a = {.kctx = kctx};
	AwsOp		op = {"GenerateDataKey", KMS_STAT_GENERATE, key, build_generate, &a,
	256 + context_bound(kctx)};
	AwsResult	res;
	KmsAwsJsonField f[3] = {{.name = "CiphertextBlob"}, {.name = "Plaintext"}, {.name = "KeyId"}};

	aws_execute(&op, &res);
	extract_or_error(&op, &res, f, 3);
	PG_TRY();
	{
		decode_wrapped(&op, &res, &f[0], &f[2], wrapped_out);
		decode_plaintext(&op, &res, &f[1], dek_out);
	}
	PG_FINALLY();
	{
		kms_aws_json_fields_free(f, 3);
	}
	PG_END_TRY();
}

static void
aws_decrypt_data_key(const char *key_id, const uint8 *wrapped, int wrapped_len,
					 const KmsContext *kctx, uint8 *dek_out)
{
	AwsBodyArgs a = {.kctx = kctx, .blob = wrapped, .blob_len = wrapped_len};
	AwsOp		op = {"Decrypt", KMS_STAT_DECRYPT, key_id, build_decrypt, &a,
	256 + context_bound(kctx) + pg_b64_enc_len(wrapped_len)};
	AwsResult	res;
	KmsAwsJsonField f[1] = {{.name = "Plaintext"}};

	aws_execute(&op, &res);
	extract_or_error(&op, &res, f, 1);
	PG_TRY();
	{
		decode_plaintext(&op, &res, &f[0], dek_out);
	}
	PG_FINALLY();
	{
		kms_aws_json_fields_free(f, 1);
	}
	PG_END_TRY();
}

static void
aws_rewrap_data_key(const char *key_id, const uint8 *wrapped, int wrapped_len,
					const KmsContext *kctx, const char *new_key, KmsWrappedKey *out)
{
	AwsBodyArgs a = {.kctx = kctx, .blob = wrapped, .blob_len = wrapped_len, .dest_key = new_key};
	AwsOp		op = {"ReEncrypt", KMS_STAT_REWRAP, key_id, build_reencrypt, &a,
	256 + 2 * context_bound(kctx) + pg_b64_enc_len(wrapped_len) + 6 * strlen(new_key)};
	AwsResult	res;
	KmsAwsJsonField f[2] = {{.name = "CiphertextBlob"}, {.name = "KeyId"}};

	aws_execute(&op, &res);
	extract_or_error(&op, &res, f, 2);
	decode_wrapped(&op, &res, &f[0], &f[1], out);
	kms_aws_json_fields_free(f, 2);
}

static void
aws_encrypt_data_key(const char *key, const KmsContext *kctx, const uint8 *dek,
					 KmsWrappedKey *out)
{
	AwsBodyArgs a = {.kctx = kctx, .dek = dek};
	AwsOp		op = {"Encrypt", KMS_STAT_REWRAP, key, build_encrypt, &a,
	256 + context_bound(kctx) + pg_b64_enc_len(KMS_DEK_LEN)};
	AwsResult	res;
	KmsAwsJsonField f[2] = {{.name = "CiphertextBlob"}, {.name = "KeyId"}};

	aws_execute(&op, &res);
	extract_or_error(&op, &res, f, 2);
	decode_wrapped(&op, &res, &f[0], &f[1], out);
	kms_aws_json_fields_free(f, 2);
}

static char *
aws_describe_key(const char *key)
{
	AwsOp		op = {"DescribeKey", KMS_STAT_DESCRIBE, key, build_describe, NULL, 256};
	AwsResult	res;
	KmsAwsJsonField f[1] = {{.name = "KeyMetadata"}};
	StringInfoData s;

	aws_execute(&op, &res);
	extract_or_error(&op, &res, f, 1);
	if (f[0].kind != KMS_AWS_JSON_OBJECT)
		bad_response(&op, &res, "no KeyMetadata");

	initStringInfo(&s);
	appendStringInfoString(&s, "{\"provider\": \"aws\", \"region\": ");
	escape_json(&s, res.region);
	appendStringInfoString(&s, ", \"endpoint\": ");
	escape_json(&s, res.url);
	appendStringInfo(&s, ", \"KeyMetadata\": %s}", f[0].value);
	kms_aws_json_fields_free(f, 1);
	return s.data;
}

const KmsProviderRoutine kms_provider_aws = {
	.name = "aws",
	.id = KMS_PROVIDER_AWS,
	.generate_data_key = aws_generate_data_key,
	.decrypt_data_key = aws_decrypt_data_key,
	.rewrap_data_key = aws_rewrap_data_key,
	.encrypt_data_key = aws_encrypt_data_key,
	.describe_key = aws_describe_key,
};

/* ---- SQL ---- */

PG_FUNCTION_INFO_V1(kms_aws_describe_key);
PG_FUNCTION_INFO_V1(kms_aws_credentials_info);
PG_FUNCTION_INFO_V1(kms_aws_backend_stats);

/* SQL: kms_aws_describe_key(key text DEFAULT NULL) RETURNS jsonb */
Datum
kms_aws_describe_key(PG_FUNCTION_ARGS)
{
	const char *key = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *json;

	key = kms_provider_resolve_key(key);
	json = kms_provider_aws.describe_key(key);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

/*
 * SQL: kms_aws_credentials_info(OUT source text, OUT origin text,
 *        OUT access_key_id text, OUT session_token boolean,
 *        OUT expiration timestamptz, OUT fetched_at timestamptz)
 * The access key id is masked; no secret is ever returned.
 */
Datum
kms_aws_credentials_info(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[6];
	bool		nulls[6] = {0};
	const KmsAwsCredentials *c;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	c = kms_aws_credentials_get();
	values[0] = CStringGetTextDatum(c->source);
	values[1] = CStringGetTextDatum(c->origin);
	values[2] = CStringGetTextDatum(kms_aws_mask_key_id(c->access_key_id));
	values[3] = BoolGetDatum(c->session_token != NULL);
	if (c->expiration)
		values[4] = TimestampTzGetDatum(c->expiration);
	else
		nulls[4] = true;
	values[5] = TimestampTzGetDatum(c->fetched_at);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * SQL: kms_aws_backend_stats(OUT attempts bigint, OUT retries bigint,
 *        OUT errors bigint, OUT mrk_fallbacks bigint)
 * This backend's AWS request counters.
 */
Datum
kms_aws_backend_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {0};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	values[0] = Int64GetDatum(aws_stats.attempts);
	values[1] = Int64GetDatum(aws_stats.retries);
	values[2] = Int64GetDatum(aws_stats.errors);
	values[3] = Int64GetDatum(aws_stats.mrk_fallbacks);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
