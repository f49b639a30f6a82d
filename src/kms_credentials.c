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
#include "kms_aws_json.h"
#include "kms_guc.h"
#include "kms_http.h"
#include "kms_secure_mem.h"

#include <pwd.h>
#include <time.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"
#include "utils/wait_event.h"

#define REFRESH_MARGIN_MS	(5 * 60 * 1000)
#define METADATA_TIMEOUT_MS	3000
#define MAX_FILE_BYTES		(1024 * 1024)

static KmsAwsCredentials *cached = NULL;
static char *cached_config = NULL;	/* settings the cached credentials came from */

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

static const char *
env_nonempty(const char *name)
{
	const char *v = getenv(name);

	return (v && v[0] != '\0') ? v : NULL;
}

const char *
kms_aws_region(void)
{
	const char *r = kms_guc_region;

	if (r == NULL || r[0] == '\0')
		r = env_nonempty("AWS_REGION");
	if (r == NULL)
		r = env_nonempty("AWS_DEFAULT_REGION");
	if (r == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("kms_pg: no AWS region configured"),
				 errhint("Set kms_pg.region in postgresql.conf, or AWS_REGION in the server's environment.")));
	return r;
}

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

static bool
source_env(FoundCreds *fc, StringInfo tried)
{
	const char *akid = env_nonempty("AWS_ACCESS_KEY_ID");
	const char *secret = env_nonempty("AWS_SECRET_ACCESS_KEY");
	const char *token = env_nonempty("AWS_SESSION_TOKEN");

	if (akid == NULL || secret == NULL)
	{
		appendStringInfoString(tried, "env: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY not set; ");
		return false;
	}
	fc->akid = secure_strdup(akid);
	fc->secret = secure_strdup(secret);
	fc->token = token ? secure_strdup(token) : NULL;
	fc->source = "env";
	strlcpy(fc->origin, "environment of the server process", sizeof(fc->origin));
	return true;
}

static bool
source_web_identity(FoundCreds *fc, StringInfo tried)
{
	const char *tokfile = env_nonempty("AWS_WEB_IDENTITY_TOKEN_FILE");
	const char *role = env_nonempty("AWS_ROLE_ARN");
	const char *session = env_nonempty("AWS_ROLE_SESSION_NAME");
	char	   *token;
	char	   *url;
	StringInfoData body;
	KmsHttpResponse resp;
	static const char *const hdrs[] = {
		"Content-Type: application/x-www-form-urlencoded; charset=utf-8",
		"Accept: application/xml"
	};
	char	   *v;

	if (tokfile == NULL || role == NULL)
	{
		appendStringInfoString(tried, "web_identity: AWS_WEB_IDENTITY_TOKEN_FILE/AWS_ROLE_ARN not set; ");
		return false;
	}
	token = read_small_file(tokfile, "web identity token file");
	if (token == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: web identity token file \"%s\" does not exist", tokfile)));
	token = trim(token);

	if (kms_guc_sts_endpoint && kms_guc_sts_endpoint[0] != '\0')
		url = pstrdup(kms_guc_sts_endpoint);
	else
		url = psprintf("https://sts.%s.amazonaws.com/", kms_aws_region());

	/* the body carries the identity token: secure buffer */
	body.maxlen = 2048 + 3 * strlen(token) + 3 * strlen(role) + 256;
	body.data = kms_secure_palloc(body.maxlen);
	body.len = 0;
	body.cursor = 0;
	body.data[0] = '\0';
	appendStringInfoString(&body, "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=");
	append_urlencoded(&body, role);
	appendStringInfoString(&body, "&RoleSessionName=");
	if (session)
		append_urlencoded(&body, session);
	else
		appendStringInfo(&body, "kms_pg-%d-%ld", MyProcPid, (long) time(NULL));
	appendStringInfoString(&body, "&WebIdentityToken=");
	append_urlencoded(&body, token);
	if (body.len >= body.maxlen - 1)
		elog(ERROR, "kms_pg: STS request buffer overflow");

	cred_http("STS AssumeRoleWithWebIdentity", "POST", url, hdrs, lengthof(hdrs),
			  body.data, body.len, false, kms_guc_request_timeout_ms, false, &resp);
	explicit_bzero(body.data, body.maxlen);

	if (resp.http_code != 200)
	{
		char	   *code = xml_tag(resp.body, "Code");
		char	   *msg = xml_tag(resp.body, "Message");
		char	   *rid = resp.request_id[0] ? resp.request_id : xml_tag(resp.body, "RequestId");

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: STS AssumeRoleWithWebIdentity failed for role \"%s\"", role),
				 errdetail("AWS STS error %s (request id %s): %s",
						   code ? code : "unknown", rid ? rid : "none",
						   msg ? msg : "no message"),
				 errhint("Check AWS_ROLE_ARN, the token in AWS_WEB_IDENTITY_TOKEN_FILE and the role's trust policy.")));
	}
	fc->akid = xml_tag(resp.body, "AccessKeyId");
	fc->secret = xml_tag(resp.body, "SecretAccessKey");
	fc->token = xml_tag(resp.body, "SessionToken");
	v = xml_tag(resp.body, "Expiration");
	fc->expiration = parse_iso8601(v);
	kms_http_response_wipe(&resp);
	fc->source = "web_identity";
	snprintf(fc->origin, sizeof(fc->origin), "%s via %s", role, url);
	require_creds(fc, "STS AssumeRoleWithWebIdentity");
	return true;
}

static const char *
home_dir(void)
{
	const char *h = env_nonempty("HOME");

	if (h == NULL)
	{
		struct passwd *pw = getpwuid(geteuid());

		h = pw ? pw->pw_dir : NULL;
	}
	return h;
}

/*
 * Look for static keys of profile in an INI file.  In the config file
 * the section is "[profile name]" (and "[default]").
 */
static bool
profile_from_file(const char *path, const char *profile, bool is_config, FoundCreds *fc)
{
	char	   *text = read_small_file(path, is_config ? "AWS config file" : "AWS credentials file");
	char	   *line;
	char	   *save = NULL;
	bool		in_section = false;
	bool		seen = false;

	if (text == NULL)
		return false;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		char	   *l = trim(line);
		char	   *eq;
		char	   *k;
		char	   *v;

		if (l[0] == '\0' || l[0] == '#' || l[0] == ';')
			continue;
		if (l[0] == '[')
		{
			char	   *end = strchr(l, ']');
			char	   *name;

			if (end == NULL)
				continue;
			*end = '\0';
			name = trim(l + 1);
			if (is_config && strcmp(name, "default") != 0)
			{
				if (strncmp(name, "profile", 7) == 0 && (name[7] == ' ' || name[7] == '\t'))
					name = trim(name + 8);
				else
				{
					in_section = false;
					continue;
				}
			}
			in_section = strcmp(name, profile) == 0;
			seen |= in_section;
			continue;
		}
		if (!in_section || (eq = strchr(l, '=')) == NULL)
			continue;
		*eq = '\0';
		k = trim(l);
		v = trim(eq + 1);
		if (strcmp(k, "aws_access_key_id") == 0)
			fc->akid = secure_strdup(v);
		else if (strcmp(k, "aws_secret_access_key") == 0)
			fc->secret = secure_strdup(v);
		else if (strcmp(k, "aws_session_token") == 0)
			fc->token = secure_strdup(v);
	}
	return seen && fc->akid != NULL && fc->secret != NULL;
}

static bool
source_profile(FoundCreds *fc, StringInfo tried)
{
	const char *profile = kms_guc_aws_profile;
	const char *credfile = env_nonempty("AWS_SHARED_CREDENTIALS_FILE");
	const char *cfgfile = env_nonempty("AWS_CONFIG_FILE");
	const char *home = home_dir();
	char	   *credpath = NULL;
	char	   *cfgpath = NULL;

	if (profile == NULL || profile[0] == '\0')
		profile = env_nonempty("AWS_PROFILE");
	if (profile == NULL)
		profile = "default";

	if (credfile)
		credpath = pstrdup(credfile);
	else if (home)
		credpath = psprintf("%s/.aws/credentials", home);
	if (cfgfile)
		cfgpath = pstrdup(cfgfile);
	else if (home)
		cfgpath = psprintf("%s/.aws/config", home);

	fc->source = "profile";
	if (credpath && profile_from_file(credpath, profile, false, fc))
	{
		snprintf(fc->origin, sizeof(fc->origin), "profile %s in %s", profile, credpath);
		return true;
	}
	fc->akid = fc->secret = fc->token = NULL;
	if (cfgpath && profile_from_file(cfgpath, profile, true, fc))
	{
		snprintf(fc->origin, sizeof(fc->origin), "profile %s in %s", profile, cfgpath);
		return true;
	}
	fc->akid = fc->secret = fc->token = NULL;
	appendStringInfo(tried, "profile: no keys for profile \"%s\" in %s or %s; ",
					 profile, credpath ? credpath : "(no credentials file)",
					 cfgpath ? cfgpath : "(no config file)");
	return false;
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

/* ---- the chain and the cache ---- */

static char *
config_signature(void)
{
	return psprintf("%s|%s|%s|%s|%s|%s|%s",
					kms_guc_credential_sources ? kms_guc_credential_sources : "",
					kms_guc_aws_profile ? kms_guc_aws_profile : "",
					kms_guc_sts_endpoint ? kms_guc_sts_endpoint : "",
					kms_guc_container_endpoint ? kms_guc_container_endpoint : "",
					kms_guc_imds_endpoint ? kms_guc_imds_endpoint : "",
					kms_guc_region ? kms_guc_region : "",
					kms_guc_ca_file ? kms_guc_ca_file : "");
}

static void
resolve_chain(FoundCreds *fc)
{
	char	   *raw = pstrdup(kms_guc_credential_sources ? kms_guc_credential_sources : "");
	List	   *names = NIL;
	ListCell   *lc;
	StringInfoData tried;

	initStringInfo(&tried);
	if (!SplitIdentifierString(raw, ',', &names))
		elog(ERROR, "kms_pg: invalid kms_pg.credential_sources");
	foreach(lc, names)
	{
		const char *s = (const char *) lfirst(lc);
		bool		found = false;

		memset(fc, 0, sizeof(*fc));
		if (strcmp(s, "env") == 0)
			found = source_env(fc, &tried);
		else if (strcmp(s, "web_identity") == 0)
			found = source_web_identity(fc, &tried);
		else if (strcmp(s, "profile") == 0)
			found = source_profile(fc, &tried);
		else if (strcmp(s, "container") == 0)
			found = source_container(fc, &tried);
		else if (strcmp(s, "imds") == 0)
			found = source_imds(fc, &tried);
		if (found)
			return;
	}
	if (tried.len >= 2)
		tried.data[tried.len - 2] = '\0';
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("kms_pg: no AWS credentials found"),
			 errdetail("Tried %s.", tried.len ? tried.data : "no sources"),
			 errhint("Configure one of kms_pg.credential_sources (\"%s\") for the server process.",
					 kms_guc_credential_sources ? kms_guc_credential_sources : "")));
}

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
}

static bool
needs_refresh(const KmsAwsCredentials *c)
{
	TimestampTz now;
	int64		lifetime_ms;
	int64		margin_ms;

	if (c->expiration == 0)
		return false;
	now = GetCurrentTimestamp();
	lifetime_ms = (c->expiration - c->fetched_at) / 1000;
	margin_ms = Min((int64) REFRESH_MARGIN_MS, lifetime_ms / 4);
	return now >= TimestampTzPlusMilliseconds(c->expiration, -margin_ms);
}

const KmsAwsCredentials *
kms_aws_credentials_get(void)
{
	char	   *sig = config_signature();
	FoundCreds	fc;
	MemoryContext old;
	KmsAwsCredentials *c;

	if (cached && cached_config && strcmp(sig, cached_config) == 0 && !needs_refresh(cached))
	{
		pfree(sig);
		return cached;
	}

	resolve_chain(&fc);

	/* install: copy into TopMemoryContext, wipe what it replaces */
	cache_free();
	old = MemoryContextSwitchTo(TopMemoryContext);
	c = palloc0(sizeof(KmsAwsCredentials));
	c->access_key_id = pstrdup(fc.akid);
	c->secret_access_key = pstrdup(fc.secret);
	c->session_token = fc.token ? pstrdup(fc.token) : NULL;
	c->expiration = fc.expiration;
	c->fetched_at = GetCurrentTimestamp();
	c->source = fc.source;
	strlcpy(c->origin, fc.origin, sizeof(c->origin));
	if (cached_config)
		pfree(cached_config);
	cached_config = pstrdup(sig);
	MemoryContextSwitchTo(old);
	cached = c;

	explicit_bzero(fc.secret, strlen(fc.secret));
	if (fc.token)
		explicit_bzero(fc.token, strlen(fc.token));

	ereport(DEBUG1,
			(errmsg_internal("kms_pg: using AWS credentials from %s (%s), key id %s",
							 c->source, c->origin, kms_aws_mask_key_id(c->access_key_id))));
	return cached;
}
