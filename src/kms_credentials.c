/*-------------------------------------------------------------------------
 * kms_credentials.c
 *	  The AWS credential chain, in the SDKs' order, limited and ordered by
 *	  kms_pg.credential_sources:
 *
 *	  env           AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
 *	                AWS_SESSION_TOKEN of the server process
 *	  web_identity  AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN
 *	                (+ AWS_ROLE_SESSION_NAME) -> STS AssumeRoleWithWebIdentity
 *	                at kms_pg.sts_endpoint or https://sts.<region>.amazonaws.com
 *	  profile       AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials), then
 *	                AWS_CONFIG_FILE (~/.aws/config, "[profile name]"), for
 *	                kms_pg.aws_profile, else AWS_PROFILE, else "default";
 *	                static keys only (no role_arn/source_profile/SSO/process)
 *	  container     AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (against
 *	                kms_pg.container_endpoint) or _FULL_URI, with
 *	                AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE or
 *	                AWS_CONTAINER_AUTHORIZATION_TOKEN as Authorization
 *	  imds          EC2 IMDSv2 at kms_pg.imds_endpoint: PUT a session token,
 *	                GET the role name, GET the role's credentials
 *
 * A source that is not configured (variables unset, no file, IMDS not
 * reachable) is skipped; a configured source that fails raises, as the
 * SDKs do.  The result is cached in TopMemoryContext and refreshed when
 * less than min(5 minutes, a quarter of its lifetime) remains before
 * Expiration, or when the settings that choose it change.  Secrets are
 * copied only into buffers that are wiped when replaced (or, for
 * temporaries, when their memory context goes away, also on ERROR).
 *-------------------------------------------------------------------------
 */
#include "kms_credentials.h"
#include "kms_aws_config.h"
#include "kms_sigv4.h"
#include "kms_aws_json.h"
#include "kms_guc.h"
#include "kms_http.h"
#include "kms_secure_mem.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <openssl/evp.h>
#include <time.h>
#include <unistd.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"
#include "utils/wait_event.h"

extern char **environ;

#define REFRESH_MARGIN_MS	(5 * 60 * 1000)
#define USABLE_MARGIN_MS	(30 * 1000)
#define REFRESH_BACKOFF_CAP_MS	(30 * 1000)
#define METADATA_TIMEOUT_MS	3000
#define MAX_FILE_BYTES		(1024 * 1024)


/* ---- small helpers ---- */

/* A copy of s[0..len) in a buffer wiped when its context goes away. */
static char *
secure_strndup(const char *s, size_t len)
{
	char	   *p = kms_secure_palloc(len + 1);

	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

static char *
secure_strdup(const char *s)
{
	return secure_strndup(s, strlen(s));
}

static void
wipe_free(char *s)
{
	if (s)
	{
		explicit_bzero(s, strlen(s));
		pfree(s);
	}
}

#define env_nonempty(name) kms_aws_getenv(name)

char *
kms_aws_mask_key_id(const char *akid)
{
	size_t		n = strlen(akid);

	if (n < 12)
		return pstrdup("****");
	return psprintf("%.4s****%s", akid, akid + n - 4);
}

/* Sleep ms, interruptibly. */
static void
cred_sleep(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/* Whole file into a wiped-on-reset buffer; NULL when it does not exist. */
static char *
read_small_file(const char *path, const char *what)
{
	FILE	   *f;
	char	   *buf;
	size_t		n;

	f = AllocateFile(path, "r");
	if (f == NULL)
	{
		if (errno == ENOENT)
			return NULL;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("kms_pg: could not open %s \"%s\": %m", what, path)));
	}
	buf = kms_secure_palloc(MAX_FILE_BYTES + 1);
	n = fread(buf, 1, MAX_FILE_BYTES + 1, f);
	if (ferror(f))
	{
		FreeFile(f);
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("kms_pg: could not read %s \"%s\": %m", what, path)));
	}
	FreeFile(f);
	if (n > MAX_FILE_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("kms_pg: %s \"%s\" is larger than %d bytes", what, path, MAX_FILE_BYTES)));
	buf[n] = '\0';
	return buf;
}

static char *
trim(char *s)
{
	char	   *e;

	while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
		*--e = '\0';
	return s;
}

/* ISO 8601 UTC ("2024-01-02T03:04:05Z", fractions ignored) -> TimestampTz; 0 if bad. */
static TimestampTz
parse_iso8601(const char *s)
{
	struct tm	tm;
	time_t		t;

	memset(&tm, 0, sizeof(tm));
	if (s == NULL ||
		sscanf(s, "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
			   &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
		return 0;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	t = timegm(&tm);
	if (t == (time_t) -1)
		return 0;
	return time_t_to_timestamptz((pg_time_t) t);
}

static void
append_urlencoded(StringInfo s, const char *v)
{
	static const char hex[] = "0123456789ABCDEF";

	for (const unsigned char *p = (const unsigned char *) v; *p; p++)
	{
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			(*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~')
			appendStringInfoChar(s, (char) *p);
		else
		{
			appendStringInfoChar(s, '%');
			appendStringInfoChar(s, hex[*p >> 4]);
			appendStringInfoChar(s, hex[*p & 15]);
		}
	}
}

/* The text between <tag> and </tag>, entities decoded; secure copy or NULL. */
static char *
xml_tag(const char *xml, const char *tag)
{
	char		open[64];
	char		close[64];
	const char *s;
	const char *e;
	char	   *out;
	char	   *o;

	snprintf(open, sizeof(open), "<%s>", tag);
	snprintf(close, sizeof(close), "</%s>", tag);
	s = strstr(xml, open);
	if (s == NULL)
		return NULL;
	s += strlen(open);
	e = strstr(s, close);
	if (e == NULL)
		return NULL;
	out = kms_secure_palloc(e - s + 1);
	o = out;
	while (s < e)
	{
		static const struct
		{
			const char *ent;
			char		c;
		}			ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
		bool		done = false;

		if (*s == '&')
		{
			for (int i = 0; i < (int) lengthof(ents); i++)
			{
				size_t		l = strlen(ents[i].ent);

				if ((size_t) (e - s) >= l && strncmp(s, ents[i].ent, l) == 0)
				{
					*o++ = ents[i].c;
					s += l;
					done = true;
					break;
				}
			}
		}
		if (!done)
			*o++ = *s++;
	}
	*o = '\0';
	return trim(out) == out ? out : secure_strdup(trim(out));
}

/* Temporary result of one source, in secure memory of the current context. */
typedef struct FoundCreds
{
	char	   *akid;
	char	   *secret;
	char	   *token;
	TimestampTz expiration;
	const char *source;
	char		origin[256];
} FoundCreds;

static void
require_creds(FoundCreds *fc, const char *what)
{
	if (fc->akid == NULL || fc->akid[0] == '\0' || fc->secret == NULL || fc->secret[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: %s returned no usable AWS credentials", what),
				 errdetail("source %s at %s", fc->source, fc->origin)));
	if (fc->token && fc->token[0] == '\0')
		fc->token = NULL;
}

/*
 * One credential-endpoint exchange with a single retry on transport
 * errors and 5xx (metadata services hiccup).  Returns false only when
 * missing_ok and the endpoint could not be reached at all.
 */
static bool
cred_http(const char *what, const char *method, const char *url,
		  const char *const *headers, int nheaders,
		  const char *body, size_t body_len, bool allow_metadata,
		  int timeout_ms, bool missing_ok, KmsHttpResponse *resp)
{
	for (int attempt = 0; attempt < 2; attempt++)
	{
		KmsHttpRequest req;

		memset(&req, 0, sizeof(req));
		req.method = method;
		req.url = url;
		req.headers = headers;
		req.nheaders = nheaders;
		req.body = body;
		req.body_len = body_len;
		req.allow_metadata_http = allow_metadata;
		req.deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   Min(timeout_ms, kms_guc_request_timeout_ms));
		kms_http_perform(&req, resp);
		if (resp->status == KMS_HTTP_OK && resp->http_code < 500)
			return true;
		if (resp->status == KMS_HTTP_ERR_TLS || resp->status == KMS_HTTP_ERR_TOO_LARGE)
			break;
		if (missing_ok && (resp->status == KMS_HTTP_ERR_CONNECT ||
						   resp->status == KMS_HTTP_ERR_TIMEOUT))
			return false;
		if (attempt == 0)
			cred_sleep(100);
	}
	if (resp->status == KMS_HTTP_OK)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
				 errmsg("kms_pg: %s failed with HTTP status %ld", what, resp->http_code),
				 errdetail("URL %s", url)));
	ereport(ERROR,
			(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
			 errmsg("kms_pg: %s failed: %s", what, kms_http_status_text(resp->status)),
			 errdetail("URL %s: %s", url, resp->error)));
	pg_unreachable();
}

/* The credential JSON of ECS/EKS and IMDS: AccessKeyId, SecretAccessKey, Token, Expiration. */
static void
parse_credential_json(const KmsHttpResponse *resp, const char *what, FoundCreds *fc)
{
	KmsAwsJsonField f[5] = {{.name = "AccessKeyId"}, {.name = "SecretAccessKey"}, {.name = "Token"}, {.name = "Expiration"}, {.name = "Code"}};
	KmsAwsJsonError jerr;

	jerr = kms_aws_json_extract(resp->body, resp->body_len, f, 5);
	if (jerr != KMS_AWS_JSON_OK)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
				 errmsg("kms_pg: %s returned an invalid credential document: %s",
						what, kms_aws_json_strerror(jerr))));
	if (f[4].kind == KMS_AWS_JSON_STRING && strcmp(f[4].value, "Success") != 0)
	{
		char	   *code = pstrdup(f[4].value);

		kms_aws_json_fields_free(f, 5);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: %s reported credential status \"%s\"", what, code)));
	}
	if (f[0].kind == KMS_AWS_JSON_STRING)
		fc->akid = secure_strdup(f[0].value);
	if (f[1].kind == KMS_AWS_JSON_STRING)
		fc->secret = secure_strdup(f[1].value);
	if (f[2].kind == KMS_AWS_JSON_STRING)
		fc->token = secure_strdup(f[2].value);
	if (f[3].kind == KMS_AWS_JSON_STRING)
		fc->expiration = parse_iso8601(f[3].value);
	kms_aws_json_fields_free(f, 5);
	require_creds(fc, what);
}

/* ---- sources ---- */

static void
fetch_env(FoundCreds *fc)
{
	const char *akid = kms_aws_getenv("AWS_ACCESS_KEY_ID");
	const char *secret = kms_aws_getenv("AWS_SECRET_ACCESS_KEY");
	const char *token = kms_aws_getenv("AWS_SESSION_TOKEN");

	fc->akid = akid ? secure_strdup(akid) : NULL;
	fc->secret = secret ? secure_strdup(secret) : NULL;
	fc->token = token ? secure_strdup(token) : NULL;
	fc->source = "env";
	strlcpy(fc->origin, "environment of the server process", sizeof(fc->origin));
	require_creds(fc, "the environment");
}

static void
fetch_static(const KmsAwsCredPlan *p, FoundCreds *fc)
{
	fc->akid = secure_strdup(p->akid);
	fc->secret = secure_strdup(p->secret);
	fc->token = p->token ? secure_strdup(p->token) : NULL;
	fc->source = "profile";
	snprintf(fc->origin, sizeof(fc->origin), "profile %s in %s", p->profile, p->file);
	require_creds(fc, "the AWS profile");
}

static void
amz_date_now(char *out)
{
	time_t		t = time(NULL);
	struct tm	tm;

	gmtime_r(&t, &tm);
	strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

static char *
secure_body(size_t maxlen, StringInfo s)
{
	s->maxlen = (int) maxlen;
	s->data = kms_secure_palloc(maxlen);
	s->len = 0;
	s->cursor = 0;
	s->data[0] = '\0';
	return s->data;
}

/*
 * One STS Query API call (form body), SigV4-signed with signer unless it
 * is NULL (AssumeRoleWithWebIdentity), and its Credentials parsed into fc.
 */
static void
sts_call(KmsAwsConfig *cfg, const char *action, StringInfo body, const FoundCreds *signer,
		 const char *role, const char *hint, FoundCreds *fc)
{
	const char *signing_region;
	char	   *url = kms_aws_sts_endpoint(cfg, &signing_region);
	const char *hdrs[5];
	int			nh = 0;
	char	   *authz_hdr = NULL;
	char	   *token_hdr = NULL;
	KmsHttpResponse resp;
	char	   *v;
	char	   *what = psprintf("STS %s", action);

	hdrs[nh++] = "Content-Type: application/x-www-form-urlencoded; charset=utf-8";
	if (signer)
	{
		char		amz_date[17];
		char	   *host = kms_http_host_header(url);
		const char *path = strstr(url, "://");
		KmsSigV4Header sh[2];
		KmsSigV4Request sreq;
		KmsSigV4Credentials scred;
		char	   *authz = kms_secure_palloc(4096);
		int			rc;

		path = path ? strchr(path + 3, '/') : NULL;
		amz_date_now(amz_date);
		sh[0].name = "Host";
		sh[0].value = host;
		sh[1].name = "Content-Type";
		sh[1].value = "application/x-www-form-urlencoded; charset=utf-8";
		memset(&sreq, 0, sizeof(sreq));
		sreq.method = "POST";
		sreq.path = path ? path : "/";
		sreq.headers = sh;
		sreq.nheaders = 2;
		sreq.body = (const unsigned char *) body->data;
		sreq.body_len = body->len;
		sreq.normalize_path = 1;
		memset(&scred, 0, sizeof(scred));
		scred.access_key_id = signer->akid;
		scred.secret_access_key = signer->secret;
		scred.session_token = signer->token;
		rc = kms_sigv4_sign(&sreq, &scred, amz_date, signing_region, "sts",
							authz, 4096, NULL, NULL);
		if (rc != KMS_SIGV4_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("kms_pg: could not sign the STS request: %s", kms_sigv4_strerror(rc))));
		authz_hdr = kms_secure_palloc(strlen(authz) + 32);
		snprintf(authz_hdr, strlen(authz) + 32, "Authorization: %s", authz);
		explicit_bzero(authz, 4096);
		hdrs[nh++] = psprintf("X-Amz-Date: %s", amz_date);
		if (signer->token)
		{
			size_t		n = strlen(signer->token) + 32;

			token_hdr = kms_secure_palloc(n);
			snprintf(token_hdr, n, "X-Amz-Security-Token: %s", signer->token);
			hdrs[nh++] = token_hdr;
		}
		hdrs[nh++] = authz_hdr;
	}

	cred_http(what, "POST", url, hdrs, nh, body->data, body->len, false,
			  kms_guc_request_timeout_ms, false, &resp);
	explicit_bzero(body->data, body->maxlen);
	if (authz_hdr)
		explicit_bzero(authz_hdr, strlen(authz_hdr));
	if (token_hdr)
		explicit_bzero(token_hdr, strlen(token_hdr));

	if (resp.http_code != 200)
	{
		char	   *code = xml_tag(resp.body, "Code");
		char	   *msg = xml_tag(resp.body, "Message");
		char	   *rid = resp.request_id[0] ? resp.request_id : xml_tag(resp.body, "RequestId");

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: STS %s failed for role \"%s\"", action, role),
				 errdetail("AWS STS error %s (request id %s): %s",
						   code ? code : "unknown", rid ? rid : "none",
						   msg ? msg : "no message"),
				 errhint("%s", hint)));
	}
	fc->akid = xml_tag(resp.body, "AccessKeyId");
	fc->secret = xml_tag(resp.body, "SecretAccessKey");
	fc->token = xml_tag(resp.body, "SessionToken");
	v = xml_tag(resp.body, "Expiration");
	fc->expiration = parse_iso8601(v);
	kms_http_response_wipe(&resp);
	require_creds(fc, what);
}

static void
append_session_name(StringInfo body, const char *session)
{
	appendStringInfoString(body, "&RoleSessionName=");
	if (session)
		append_urlencoded(body, session);
	else
		appendStringInfo(body, "kms_pg-%d-%ld", MyProcPid, (long) time(NULL));
}

static void
fetch_web_identity(KmsAwsConfig *cfg, const KmsAwsCredPlan *p, FoundCreds *fc)
{
	char	   *token;
	StringInfoData body;

	token = read_small_file(p->token_file, "web identity token file");
	if (token == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: web identity token file \"%s\" does not exist", p->token_file)));
	token = trim(token);
	secure_body(2048 + 3 * strlen(token) + 3 * strlen(p->role_arn) + 256, &body);
	appendStringInfoString(&body, "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=");
	append_urlencoded(&body, p->role_arn);
	append_session_name(&body, p->role_session_name);
	appendStringInfoString(&body, "&WebIdentityToken=");
	append_urlencoded(&body, token);
	explicit_bzero(token, strlen(token));
	sts_call(cfg, "AssumeRoleWithWebIdentity", &body, NULL, p->role_arn,
			 "Check AWS_ROLE_ARN, the token in AWS_WEB_IDENTITY_TOKEN_FILE and the role's trust policy.", fc);
	fc->source = "web_identity";
	snprintf(fc->origin, sizeof(fc->origin), "%s", kms_aws_plan_describe(p));
}

static bool fetch_plan(KmsAwsConfig *cfg, const KmsAwsCredPlan *p, FoundCreds *fc,
					   StringInfo tried, bool top);

static void
wipe_creds(FoundCreds *fc)
{
	if (fc->secret)
		explicit_bzero(fc->secret, strlen(fc->secret));
	if (fc->token)
		explicit_bzero(fc->token, strlen(fc->token));
}

static void
fetch_assume_role(KmsAwsConfig *cfg, const KmsAwsCredPlan *p, FoundCreds *fc)
{
	FoundCreds	src;
	StringInfoData body;

	memset(&src, 0, sizeof(src));
	(void) fetch_plan(cfg, p->source, &src, NULL, false);

	secure_body(4096 + 3 * strlen(p->role_arn) +
				(p->external_id ? 3 * strlen(p->external_id) : 0) +
				(p->role_session_name ? 3 * strlen(p->role_session_name) : 0), &body);
	appendStringInfoString(&body, "Action=AssumeRole&Version=2011-06-15&RoleArn=");
	append_urlencoded(&body, p->role_arn);
	append_session_name(&body, p->role_session_name);
	if (p->external_id)
	{
		appendStringInfoString(&body, "&ExternalId=");
		append_urlencoded(&body, p->external_id);
	}
	if (p->duration_seconds > 0)
		appendStringInfo(&body, "&DurationSeconds=%d", p->duration_seconds);
	sts_call(cfg, "AssumeRole", &body, &src, p->role_arn,
			 "Check role_arn, the role's trust policy and the identity of its source credentials.", fc);
	wipe_creds(&src);
	fc->source = "assume_role";
	snprintf(fc->origin, sizeof(fc->origin), "%s", kms_aws_plan_describe(p));
}

static void
fetch_sso(KmsAwsConfig *cfg, const KmsAwsCredPlan *p, FoundCreds *fc)
{
	const char *key = p->sso_session ? p->sso_session : p->sso_start_url;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char		hex[2 * EVP_MAX_MD_SIZE + 1];
	const char *home = kms_aws_home_dir();
	char	   *path;
	char	   *doc;
	KmsAwsJsonField f[2] = {{.name = "accessToken"}, {.name = "expiresAt"}};
	char	   *token;
	TimestampTz exp;
	char	   *login = p->sso_session ? psprintf("aws sso login --sso-session %s", p->sso_session)
		: psprintf("aws sso login --profile %s", p->profile);
	StringInfoData url;
	char	   *hdr;
	const char *hdrs[1];
	KmsHttpResponse resp;
	KmsAwsJsonField rc[1] = {{.name = "roleCredentials"}};
	KmsAwsJsonField cf[4] = {{.name = "accessKeyId"}, {.name = "secretAccessKey"}, {.name = "sessionToken"}, {.name = "expiration"}};

	if (!EVP_Digest(key, strlen(key), md, &mdlen, EVP_sha1(), NULL))
		elog(ERROR, "kms_pg: SHA-1 failed");
	for (unsigned int i = 0; i < mdlen; i++)
		sprintf(hex + 2 * i, "%02x", md[i]);
	path = psprintf("%s/.aws/sso/cache/%s.json", home ? home : "", hex);
	doc = read_small_file(path, "SSO token cache file");
	if (doc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: no SSO token for profile \"%s\"", p->profile),
				 errdetail("The SSO token cache file \"%s\" does not exist.", path),
				 errhint("Run \"%s\" as the operating system user of the server (HOME %s).", login, home ? home : "unset")));
	if (kms_aws_json_extract(doc, strlen(doc), f, 2) != KMS_AWS_JSON_OK ||
		f[0].kind != KMS_AWS_JSON_STRING || f[1].kind != KMS_AWS_JSON_STRING)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the SSO token cache file \"%s\" is not valid", path),
				 errhint("Run \"%s\" again.", login)));
	explicit_bzero(doc, strlen(doc));
	token = secure_strdup(f[0].value);
	exp = parse_iso8601(f[1].value);
	kms_aws_json_fields_free(f, 2);
	if (exp == 0 || exp <= GetCurrentTimestamp())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the SSO token of profile \"%s\" has expired", p->profile),
				 errdetail("Token cache file \"%s\".", path),
				 errhint("Run \"%s\" as the operating system user of the server.", login)));

	initStringInfo(&url);
	if (kms_guc_sso_endpoint && kms_guc_sso_endpoint[0])
	{
		size_t		bl = strlen(kms_guc_sso_endpoint);

		while (bl > 0 && kms_guc_sso_endpoint[bl - 1] == '/')
			bl--;
		appendBinaryStringInfo(&url, kms_guc_sso_endpoint, bl);
	}
	else
		appendStringInfo(&url, "https://portal.sso.%s.amazonaws.com", p->sso_region);
	appendStringInfoString(&url, "/federation/credentials?role_name=");
	append_urlencoded(&url, p->sso_role_name);
	appendStringInfoString(&url, "&account_id=");
	append_urlencoded(&url, p->sso_account_id);
	hdr = kms_secure_palloc(strlen(token) + 40);
	sprintf(hdr, "x-amz-sso_bearer_token: %s", token);
	hdrs[0] = hdr;
	cred_http("SSO GetRoleCredentials", "GET", url.data, hdrs, 1, NULL, 0, false,
			  kms_guc_request_timeout_ms, false, &resp);
	explicit_bzero(hdr, strlen(hdr));
	explicit_bzero(token, strlen(token));
	if (resp.http_code == 401 || resp.http_code == 403)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the SSO token of profile \"%s\" was refused (HTTP status %ld)",
						p->profile, resp.http_code),
				 errdetail("The token has expired, was revoked, or has no access to role %s in account %s.",
						   p->sso_role_name, p->sso_account_id),
				 errhint("Run \"%s\" as the operating system user of the server.", login)));
	if (resp.http_code != 200)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
				 errmsg("kms_pg: SSO GetRoleCredentials failed with HTTP status %ld", resp.http_code),
				 errdetail("URL %s", url.data)));
	if (kms_aws_json_extract(resp.body, resp.body_len, rc, 1) != KMS_AWS_JSON_OK ||
		rc[0].kind != KMS_AWS_JSON_OBJECT ||
		kms_aws_json_extract(rc[0].value, rc[0].len, cf, 4) != KMS_AWS_JSON_OK)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
				 errmsg("kms_pg: SSO GetRoleCredentials returned an invalid document")));
	kms_aws_json_fields_free(rc, 1);
	kms_http_response_wipe(&resp);
	if (cf[0].kind == KMS_AWS_JSON_STRING)
		fc->akid = secure_strdup(cf[0].value);
	if (cf[1].kind == KMS_AWS_JSON_STRING)
		fc->secret = secure_strdup(cf[1].value);
	if (cf[2].kind == KMS_AWS_JSON_STRING)
		fc->token = secure_strdup(cf[2].value);
	if (cf[3].kind == KMS_AWS_JSON_NUMBER)
		fc->expiration = time_t_to_timestamptz((pg_time_t) (strtod(cf[3].value, NULL) / 1000.0));
	kms_aws_json_fields_free(cf, 4);
	fc->source = "sso";
	snprintf(fc->origin, sizeof(fc->origin), "%s", kms_aws_plan_describe(p));
	require_creds(fc, "SSO GetRoleCredentials");
}

/*
 * credential_process: argv split like a shell word list (as botocore
 * does), run without a shell, stdin and stderr on /dev/null, stdout read
 * into secure memory (never logged), killed after kms_pg.request_timeout.
 */
#define PROCESS_MAX_OUTPUT	65536

static void
fetch_process(const KmsAwsCredPlan *p, FoundCreds *fc)
{
	bool		bad;
	List	   *words = kms_aws_shlex_split(p->command, &bad);
	char	  **argv;
	int			i = 0;
	ListCell   *lc;
	int			pipefd[2];
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t	none,
				all;
	pid_t		pid;
	int			rc;
	char	   *out = kms_secure_palloc(PROCESS_MAX_OUTPUT + 1);
	size_t		outlen = 0;
	int			status = 0;
	bool		timed_out = false;
	bool		too_large = false;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), kms_guc_request_timeout_ms);
	KmsAwsJsonField f[5] = {{.name = "Version"}, {.name = "AccessKeyId"}, {.name = "SecretAccessKey"}, {.name = "SessionToken"}, {.name = "Expiration"}};
	const char *what = psprintf("credential_process of profile \"%s\"", p->profile);

	if (bad || words == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the credential_process of profile \"%s\" is not a valid command line", p->profile)));
	argv = palloc0(sizeof(char *) * (list_length(words) + 1));
	foreach(lc, words)
		argv[i++] = lfirst(lc);

	if (pipe(pipefd) != 0)
		ereport(ERROR, (errcode_for_file_access(), errmsg("kms_pg: could not create a pipe: %m")));
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
	posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#else
	posix_spawn_file_actions_addclose(&fa, pipefd[0]);
	posix_spawn_file_actions_addclose(&fa, pipefd[1]);
#endif
	posix_spawnattr_init(&attr);
	sigemptyset(&none);
	sigfillset(&all);
	sigdelset(&all, SIGKILL);
	sigdelset(&all, SIGSTOP);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	rc = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	close(pipefd[1]);
	if (rc != 0)
	{
		close(pipefd[0]);
		errno = rc;
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: could not run the %s: %m", what),
				 errdetail("Program \"%s\".", argv[0])));
	}

	PG_TRY();
	{
		for (;;)
		{
			struct pollfd pfd;
			long		left = (long) ((deadline - GetCurrentTimestamp()) / 1000);
			ssize_t		n;

			CHECK_FOR_INTERRUPTS();
			if (left <= 0)
			{
				timed_out = true;
				break;
			}
			pfd.fd = pipefd[0];
			pfd.events = POLLIN;
			pfd.revents = 0;
			if (poll(&pfd, 1, (int) Min(left, 100)) <= 0)
				continue;
			n = read(pipefd[0], out + outlen, PROCESS_MAX_OUTPUT - outlen);
			if (n < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (n <= 0)
				break;
			outlen += n;
			if (outlen >= PROCESS_MAX_OUTPUT)
			{
				too_large = true;
				break;
			}
		}
		/* reap it; kill it first if it is late or talks too much */
		if (timed_out || too_large)
			kill(pid, SIGKILL);
		for (;;)
		{
			pid_t		w = waitpid(pid, &status, WNOHANG);

			if (w == pid || (w < 0 && errno != EINTR))
				break;
			if (GetCurrentTimestamp() >= deadline)
			{
				timed_out = true;
				kill(pid, SIGKILL);
				(void) waitpid(pid, &status, 0);
				break;
			}
			pg_usleep(10000);
		}
	}
	PG_CATCH();
	{
		close(pipefd[0]);
		kill(pid, SIGKILL);
		(void) waitpid(pid, &status, 0);
		PG_RE_THROW();
	}
	PG_END_TRY();
	close(pipefd[0]);
	out[outlen] = '\0';

	if (timed_out)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the %s did not finish within %d ms", what, kms_guc_request_timeout_ms),
				 errhint("kms_pg.request_timeout bounds the program's run time.")));
	if (too_large)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the %s wrote more than %d bytes", what, PROCESS_MAX_OUTPUT)));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the %s failed (%s %d)", what,
						WIFEXITED(status) ? "exit status" : "signal",
						WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status)),
				 errdetail("Its output is not logged, as it may hold secrets; run the program by hand as the server's operating system user to see it.")));
	if (kms_aws_json_extract(out, outlen, f, 5) != KMS_AWS_JSON_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the %s did not write a JSON object", what)));
	explicit_bzero(out, outlen);
	if (f[0].kind != KMS_AWS_JSON_NUMBER || strcmp(f[0].value, "1") != 0)
	{
		kms_aws_json_fields_free(f, 5);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the %s wrote an unsupported Version", what),
				 errdetail("Only \"Version\": 1 is supported.")));
	}
	if (f[1].kind != KMS_AWS_JSON_STRING || f[2].kind != KMS_AWS_JSON_STRING ||
		(f[3].kind != KMS_AWS_JSON_ABSENT && f[3].kind != KMS_AWS_JSON_NULL && f[3].kind != KMS_AWS_JSON_STRING) ||
		(f[4].kind != KMS_AWS_JSON_ABSENT && f[4].kind != KMS_AWS_JSON_NULL && f[4].kind != KMS_AWS_JSON_STRING))
	{
		kms_aws_json_fields_free(f, 5);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the %s wrote an invalid credential document", what),
				 errdetail("AccessKeyId and SecretAccessKey must be strings; SessionToken and Expiration strings when present.")));
	}
	fc->akid = secure_strdup(f[1].value);
	fc->secret = secure_strdup(f[2].value);
	fc->token = f[3].kind == KMS_AWS_JSON_STRING ? secure_strdup(f[3].value) : NULL;
	if (f[4].kind == KMS_AWS_JSON_STRING)
	{
		fc->expiration = parse_iso8601(f[4].value);
		if (fc->expiration == 0)
		{
			kms_aws_json_fields_free(f, 5);
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errmsg("kms_pg: the %s wrote an Expiration that is not an ISO 8601 time", what)));
		}
	}
	kms_aws_json_fields_free(f, 5);
	if (fc->expiration != 0 && fc->expiration <= GetCurrentTimestamp())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the %s returned credentials that have already expired", what)));
	fc->source = "process";
	snprintf(fc->origin, sizeof(fc->origin), "%s", kms_aws_plan_describe(p));
	require_creds(fc, what);
}

static bool
source_container(FoundCreds *fc, StringInfo tried)
{
	const char *rel = env_nonempty("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
	const char *full = env_nonempty("AWS_CONTAINER_CREDENTIALS_FULL_URI");
	const char *tokfile = env_nonempty("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
	const char *tokenv = env_nonempty("AWS_CONTAINER_AUTHORIZATION_TOKEN");
	char	   *url;
	const char *hdrs[1];
	int			nh = 0;
	KmsHttpResponse resp;

	if (rel == NULL && full == NULL)
	{
		appendStringInfoString(tried, "container: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/FULL_URI not set; ");
		return false;
	}
	if (rel)
	{
		const char *base = kms_guc_container_endpoint ? kms_guc_container_endpoint : "";
		size_t		bl = strlen(base);

		while (bl > 0 && base[bl - 1] == '/')
			bl--;
		url = psprintf("%.*s%s%s", (int) bl, base, rel[0] == '/' ? "" : "/", rel);
	}
	else
		url = pstrdup(full);

	if (tokfile || tokenv)
	{
		char	   *tok;

		if (tokfile)
		{
			tok = read_small_file(tokfile, "container authorization token file");
			if (tok == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
						 errmsg("kms_pg: container authorization token file \"%s\" does not exist",
								tokfile)));
			tok = trim(tok);
		}
		else
			tok = (char *) tokenv;
		if (strchr(tok, '\r') || strchr(tok, '\n'))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errmsg("kms_pg: container authorization token contains a line break")));
		{
			size_t		n = strlen(tok) + 32;
			char	   *h = kms_secure_palloc(n);

			snprintf(h, n, "Authorization: %s", tok);
			hdrs[nh++] = h;
		}
	}

	cred_http("container credentials request", "GET", url, hdrs, nh, NULL, 0, true,
			  kms_guc_request_timeout_ms, false, &resp);
	if (nh > 0)
		explicit_bzero((char *) hdrs[0], strlen(hdrs[0]));
	if (resp.http_code != 200)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: container credentials endpoint returned HTTP status %ld",
						resp.http_code),
				 errdetail("URL %s", url)));
	fc->source = "container";
	snprintf(fc->origin, sizeof(fc->origin), "%s", url);
	parse_credential_json(&resp, "container credentials endpoint", fc);
	kms_http_response_wipe(&resp);
	return true;
}

static bool
source_imds(FoundCreds *fc, StringInfo tried)
{
	const char *base = kms_guc_imds_endpoint ? kms_guc_imds_endpoint : "";
	size_t		bl = strlen(base);
	char	   *url;
	char	   *tok;
	char	   *tokhdr;
	char	   *role;
	char	   *nl;
	const char *hdrs[1];
	KmsHttpResponse resp;
	static const char *const puthdrs[] = {"X-aws-ec2-metadata-token-ttl-seconds: 21600"};

	while (bl > 0 && base[bl - 1] == '/')
		bl--;
	if (bl == 0)
	{
		appendStringInfoString(tried, "imds: kms_pg.imds_endpoint is empty; ");
		return false;
	}

	url = psprintf("%.*s/latest/api/token", (int) bl, base);
	if (!cred_http("IMDS token request", "PUT", url, puthdrs, 1, NULL, 0, true,
				   METADATA_TIMEOUT_MS, true, &resp))
	{
		appendStringInfo(tried, "imds: %s unreachable (%s); ", url, resp.error);
		return false;
	}
	if (resp.http_code != 200)
	{
		appendStringInfo(tried, "imds: token request returned HTTP status %ld; ", resp.http_code);
		return false;
	}
	tok = secure_strdup(trim(resp.body));
	kms_http_response_wipe(&resp);
	tokhdr = kms_secure_palloc(strlen(tok) + 32);
	sprintf(tokhdr, "X-aws-ec2-metadata-token: %s", tok);
	hdrs[0] = tokhdr;

	url = psprintf("%.*s/latest/meta-data/iam/security-credentials/", (int) bl, base);
	cred_http("IMDS role request", "GET", url, hdrs, 1, NULL, 0, true,
			  METADATA_TIMEOUT_MS, false, &resp);
	if (resp.http_code != 200)
	{
		explicit_bzero(tokhdr, strlen(tokhdr));
		appendStringInfo(tried, "imds: no instance role (HTTP status %ld); ", resp.http_code);
		return false;
	}
	role = pstrdup(trim(resp.body));
	if ((nl = strchr(role, '\n')) != NULL)
		*nl = '\0';
	role = trim(role);
	if (role[0] == '\0' || strchr(role, '/') || strchr(role, '?'))
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
				 errmsg("kms_pg: IMDS returned an invalid role name")));

	url = psprintf("%.*s/latest/meta-data/iam/security-credentials/%s", (int) bl, base, role);
	cred_http("IMDS credentials request", "GET", url, hdrs, 1, NULL, 0, true,
			  METADATA_TIMEOUT_MS, false, &resp);
	explicit_bzero(tokhdr, strlen(tokhdr));
	if (resp.http_code != 200)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: IMDS credentials request returned HTTP status %ld", resp.http_code),
				 errdetail("role %s", role)));
	fc->source = "imds";
	snprintf(fc->origin, sizeof(fc->origin), "role %s via %.*s", role, (int) bl, base);
	parse_credential_json(&resp, "IMDS", fc);
	kms_http_response_wipe(&resp);
	return true;
}


/* The region of the instance, from IMDS (asked once per backend). */
static char *imds_region = NULL;

static const char *
imds_get_region(void)
{
	const char *base = kms_guc_imds_endpoint ? kms_guc_imds_endpoint : "";
	size_t		bl = strlen(base);
	char	   *url;
	char	   *tokhdr;
	const char *hdrs[1];
	KmsHttpResponse resp;
	static const char *const puthdrs[] = {"X-aws-ec2-metadata-token-ttl-seconds: 21600"};
	char	   *r;

	if (imds_region)
		return imds_region;
	while (bl > 0 && base[bl - 1] == '/')
		bl--;
	if (bl == 0)
		return NULL;
	url = psprintf("%.*s/latest/api/token", (int) bl, base);
	if (!cred_http("IMDS token request", "PUT", url, puthdrs, 1, NULL, 0, true,
				   METADATA_TIMEOUT_MS, true, &resp) || resp.http_code != 200)
		return NULL;
	tokhdr = kms_secure_palloc(strlen(resp.body) + 40);
	sprintf(tokhdr, "X-aws-ec2-metadata-token: %s", trim(resp.body));
	kms_http_response_wipe(&resp);
	hdrs[0] = tokhdr;
	url = psprintf("%.*s/latest/meta-data/placement/region", (int) bl, base);
	if (!cred_http("IMDS region request", "GET", url, hdrs, 1, NULL, 0, true,
				   METADATA_TIMEOUT_MS, true, &resp) || resp.http_code != 200)
	{
		explicit_bzero(tokhdr, strlen(tokhdr));
		return NULL;
	}
	explicit_bzero(tokhdr, strlen(tokhdr));
	r = trim(resp.body);
	for (const char *c = r; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-'))
			return NULL;
	if (r[0] == '\0')
		return NULL;
	imds_region = MemoryContextStrdup(TopMemoryContext, r);
	return imds_region;
}

/* ---- plans ---- */

static bool
fetch_plan(KmsAwsConfig *cfg, const KmsAwsCredPlan *p, FoundCreds *fc, StringInfo tried, bool top)
{
	StringInfoData dummy;

	if (tried == NULL)
	{
		initStringInfo(&dummy);
		tried = &dummy;
	}
	memset(fc, 0, sizeof(*fc));
	switch (p->kind)
	{
		case KMS_AWS_CRED_ENV:
			fetch_env(fc);
			break;
		case KMS_AWS_CRED_STATIC:
			fetch_static(p, fc);
			break;
		case KMS_AWS_CRED_ASSUME_ROLE:
			fetch_assume_role(cfg, p, fc);
			break;
		case KMS_AWS_CRED_WEB_IDENTITY:
			fetch_web_identity(cfg, p, fc);
			break;
		case KMS_AWS_CRED_SSO:
			fetch_sso(cfg, p, fc);
			break;
		case KMS_AWS_CRED_PROCESS:
			fetch_process(p, fc);
			break;
		case KMS_AWS_CRED_CONTAINER:
			if (!source_container(fc, tried))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
						 errmsg("kms_pg: no container credentials configured")));
			break;
		case KMS_AWS_CRED_IMDS:
			if (!source_imds(fc, tried))
			{
				if (top)
					return false;
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
						 errmsg("kms_pg: EC2 instance metadata gave no credentials"),
						 errdetail("%s", tried->data)));
			}
			break;
	}
	return true;
}

static void
resolve_chain(FoundCreds *fc)
{
	KmsAwsConfig cfg;

	kms_aws_config_resolve(&cfg, true);
	if (cfg.plan != NULL && fetch_plan(&cfg, cfg.plan, fc, &cfg.tried, true))
		return;

	/* an unreachable IMDS early in a custom order: try the sources after it */
	if (cfg.plan != NULL)
	{
		char	   *saved = kms_guc_credential_sources;
		char	   *rest = strstr(saved ? saved : "", "imds");

		if (rest && (rest = strchr(rest, ',')) != NULL)
		{
			KmsAwsConfig cfg2;

			kms_guc_credential_sources = rest + 1;
			PG_TRY();
			{
				kms_aws_config_resolve(&cfg2, true);
			}
			PG_FINALLY();
			{
				kms_guc_credential_sources = saved;
			}
			PG_END_TRY();
			appendStringInfoString(&cfg.tried, cfg2.tried.data);
			if (cfg2.plan != NULL && fetch_plan(&cfg2, cfg2.plan, fc, &cfg.tried, true))
				return;
		}
	}
	if (cfg.tried.len >= 2)
		cfg.tried.data[cfg.tried.len - 2] = '\0';
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("kms_pg: no AWS credentials found"),
			 errdetail("Tried %s.", cfg.tried.len ? cfg.tried.data : "no sources"),
			 errhint("Configure one of kms_pg.credential_sources (\"%s\") for the server process.",
					 kms_guc_credential_sources ? kms_guc_credential_sources : "")));
}

/* ---- region and endpoints ---- */

static char *cached_region = NULL;
static char *cached_region_from = NULL;
static bool cached_fips = false;
static char *cached_region_sig = NULL;

static char *
config_signature(void)
{
	return psprintf("%s|%s|%s|%s|%s|%s|%s|%s|%d",
					kms_guc_credential_sources ? kms_guc_credential_sources : "",
					kms_guc_aws_profile ? kms_guc_aws_profile : "",
					kms_guc_sts_endpoint ? kms_guc_sts_endpoint : "",
					kms_guc_container_endpoint ? kms_guc_container_endpoint : "",
					kms_guc_imds_endpoint ? kms_guc_imds_endpoint : "",
					kms_guc_region ? kms_guc_region : "",
					kms_guc_ca_file ? kms_guc_ca_file : "",
					kms_guc_sso_endpoint ? kms_guc_sso_endpoint : "",
					(int) kms_guc_use_fips_endpoint);
}

static void
region_settings(void)
{
	char	   *sig = config_signature();
	KmsAwsConfig cfg;
	const char *r;
	const char *from;
	MemoryContext old;

	if (cached_region_sig && strcmp(sig, cached_region_sig) == 0)
		return;
	kms_aws_config_resolve(&cfg, false);
	r = cfg.region;
	from = cfg.region_from;
	if (r == NULL)
	{
		r = imds_get_region();
		from = "imds";
	}
	if (r == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("kms_pg: no AWS region configured"),
				 errdetail("Looked at kms_pg.region, AWS_REGION, AWS_DEFAULT_REGION, the region of profile \"%s\" and EC2 instance metadata.",
						   cfg.profile),
				 errhint("Set kms_pg.region in postgresql.conf, or AWS_REGION in the server's environment.")));
	old = MemoryContextSwitchTo(TopMemoryContext);
	if (cached_region)
		pfree(cached_region);
	if (cached_region_from)
		pfree(cached_region_from);
	if (cached_region_sig)
		pfree(cached_region_sig);
	cached_region = pstrdup(r);
	cached_region_from = pstrdup(from);
	cached_fips = cfg.use_fips;
	cached_region_sig = pstrdup(sig);
	MemoryContextSwitchTo(old);
}

static void
region_forget(void)
{
	if (cached_region_sig)
		pfree(cached_region_sig);
	cached_region_sig = NULL;
}

const char *
kms_aws_region(void)
{
	region_settings();
	return cached_region;
}

bool
kms_aws_use_fips(void)
{
	region_settings();
	return cached_fips;
}

const char *
kms_aws_config_region(KmsAwsConfig *cfg)
{
	if (cfg->region)
		return cfg->region;
	return imds_get_region();
}

/* ---- the cache, with refresh that keeps working credentials ---- */

static KmsAwsCredentials *cached = NULL;
static char *cached_config = NULL;	/* settings the cached credentials came from */

/* The refresh failure streak of the cached credentials. */
static struct
{
	int			failures;
	TimestampTz next_attempt;	/* no refresh attempt before this */
	TimestampTz last_error_at;
	TimestampTz last_success_at;
	char		last_error[512];
} refresh;

static void
cache_free(void)
{
	if (cached == NULL)
		return;
	wipe_free(cached->access_key_id);
	wipe_free(cached->secret_access_key);
	wipe_free(cached->session_token);
	explicit_bzero(cached, sizeof(*cached));
	pfree(cached);
	cached = NULL;
}

void
kms_aws_credentials_invalidate(void)
{
	cache_free();
	if (cached_config)
		pfree(cached_config);
	cached_config = NULL;
	region_forget();
}

static int64
lifetime_ms(const KmsAwsCredentials *c)
{
	return (c->expiration - c->fetched_at) / 1000;
}

/* Refresh window: min(5 minutes, a quarter of the lifetime) before Expiration. */
static bool
needs_refresh(const KmsAwsCredentials *c)
{
	int64		margin_ms;

	if (c->expiration == 0)
		return false;
	margin_ms = Min((int64) REFRESH_MARGIN_MS, lifetime_ms(c) / 4);
	return GetCurrentTimestamp() >= TimestampTzPlusMilliseconds(c->expiration, -margin_ms);
}

/*
 * Still usable while refreshing fails: until min(30 s, a sixteenth of the
 * lifetime) before Expiration, so that a request signed now is not
 * rejected in flight.
 */
static bool
still_usable(const KmsAwsCredentials *c)
{
	int64		margin_ms;

	if (c->expiration == 0)
		return true;
	margin_ms = Min((int64) USABLE_MARGIN_MS, lifetime_ms(c) / 16);
	return GetCurrentTimestamp() < TimestampTzPlusMilliseconds(c->expiration, -margin_ms);
}

/* Doubling backoff from min(1 s, lifetime/64) up to 30 s. */
static int64
refresh_backoff_ms(const KmsAwsCredentials *c, int failures)
{
	int64		base = c->expiration ? Min((int64) 1000, Max((int64) 50, lifetime_ms(c) / 64)) : 1000;
	int64		ms = base << Min(failures - 1, 16);

	return Min(ms, (int64) REFRESH_BACKOFF_CAP_MS);
}

static void
install(FoundCreds *fc, const char *sig)
{
	MemoryContext old;
	KmsAwsCredentials *c;

	cache_free();
	old = MemoryContextSwitchTo(TopMemoryContext);
	c = palloc0(sizeof(KmsAwsCredentials));
	c->access_key_id = pstrdup(fc->akid);
	c->secret_access_key = pstrdup(fc->secret);
	c->session_token = fc->token ? pstrdup(fc->token) : NULL;
	c->expiration = fc->expiration;
	c->fetched_at = GetCurrentTimestamp();
	c->source = fc->source;
	strlcpy(c->origin, fc->origin, sizeof(c->origin));
	if (cached_config)
		pfree(cached_config);
	cached_config = pstrdup(sig);
	MemoryContextSwitchTo(old);
	cached = c;
	wipe_creds(fc);
	refresh.last_success_at = c->fetched_at;
	ereport(DEBUG1,
			(errmsg_internal("kms_pg: using AWS credentials from %s (%s), key id %s",
							 c->source, c->origin, kms_aws_mask_key_id(c->access_key_id))));
}

const KmsAwsCredentials *
kms_aws_credentials_get(void)
{
	char	   *sig = config_signature();
	FoundCreds	fc;
	MemoryContext oldcxt = CurrentMemoryContext;
	ErrorData  *edata;

	if (cached == NULL || cached_config == NULL || strcmp(sig, cached_config) != 0)
	{
		/* first fetch, or the settings changed: errors go to the caller */
		refresh.failures = 0;
		refresh.next_attempt = 0;
		region_forget();
		resolve_chain(&fc);
		install(&fc, sig);
		return cached;
	}
	if (!needs_refresh(cached))
		return cached;
	if (still_usable(cached) && refresh.failures > 0 &&
		GetCurrentTimestamp() < refresh.next_attempt)
		return cached;			/* backing off; the current ones still work */

	PG_TRY();
	{
		resolve_chain(&fc);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN ||
			QueryCancelPending || ProcDiePending)
			PG_RE_THROW();
		FlushErrorState();
		refresh.failures++;
		refresh.last_error_at = GetCurrentTimestamp();
		snprintf(refresh.last_error, sizeof(refresh.last_error), "%s%s%s",
				 edata->message ? edata->message : "unknown error",
				 edata->detail ? ": " : "", edata->detail ? edata->detail : "");
		refresh.next_attempt = TimestampTzPlusMilliseconds(refresh.last_error_at,
														   refresh_backoff_ms(cached, refresh.failures));
		if (!still_usable(cached))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errmsg("kms_pg: the AWS credentials from %s expire at %s and could not be refreshed",
							cached->source, timestamptz_to_str(cached->expiration)),
					 errdetail("Last refresh error (%d in a row): %s", refresh.failures, refresh.last_error),
					 errhint("See kms_aws_credentials_status; kms_pg retries on the next KMS call.")));
		if (refresh.failures == 1)
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errmsg("kms_pg: could not refresh the AWS credentials from %s; using the current ones until %s",
							cached->source, timestamptz_to_str(cached->expiration)),
					 errdetail("%s", refresh.last_error),
					 errhint("kms_pg retries with backoff and warns again only after a successful refresh; see kms_aws_credentials_status.")));
		FreeErrorData(edata);
		return cached;
	}
	PG_END_TRY();
	if (refresh.failures > 0)
		ereport(LOG,
				(errmsg("kms_pg: AWS credentials refreshed from %s after %d failed attempts",
						fc.source, refresh.failures)));
	refresh.failures = 0;
	refresh.next_attempt = 0;
	install(&fc, sig);
	return cached;
}

/*
 * SQL: kms_aws_credentials_status() — this backend's credential state
 * without fetching anything and without any secret.
 */
PG_FUNCTION_INFO_V1(kms_aws_credentials_status);
Datum
kms_aws_credentials_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[10];
	bool		nulls[10] = {0};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	if (cached)
	{
		values[0] = CStringGetTextDatum(cached->source);
		values[1] = CStringGetTextDatum(cached->origin);
		values[2] = CStringGetTextDatum(kms_aws_mask_key_id(cached->access_key_id));
		values[3] = TimestampTzGetDatum(cached->fetched_at);
		if (cached->expiration)
			values[4] = TimestampTzGetDatum(cached->expiration);
		else
			nulls[4] = true;
		values[5] = BoolGetDatum(still_usable(cached));
	}
	else
		nulls[0] = nulls[1] = nulls[2] = nulls[3] = nulls[4] = nulls[5] = true;
	values[6] = Int32GetDatum(refresh.failures);
	if (refresh.last_error[0])
	{
		values[7] = CStringGetTextDatum(refresh.last_error);
		values[8] = TimestampTzGetDatum(refresh.last_error_at);
	}
	else
		nulls[7] = nulls[8] = true;
	if (refresh.failures > 0)
		values[9] = TimestampTzGetDatum(refresh.next_attempt);
	else
		nulls[9] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
