/*-------------------------------------------------------------------------
 * kms_aws_config.c
 *	  AWS shared config/credentials files and environment, resolved as
 *	  botocore (boto3, the AWS CLI) resolves them.
 *
 * Files: AWS_CONFIG_FILE (default ~/.aws/config) and
 * AWS_SHARED_CREDENTIALS_FILE (default ~/.aws/credentials), parsed with
 * the rules of Python's configparser.RawConfigParser, which botocore uses:
 * "#" and ";" full-line comments, "=" or ":" between key and value, keys
 * lower-cased, indented continuation lines, [DEFAULT] values inherited by
 * every section, and a duplicate section or key, a key outside any
 * section or a line without a delimiter is an error for the whole file.
 * In the config file a profile is "[default]" or "[profile NAME]" (the
 * name split like a shell word list: exactly two words, quotes allowed);
 * "[sso-session NAME]" holds SSO sessions; in the credentials file every
 * section is a profile.  A profile's settings are its config section
 * with its credentials-file section merged over it.
 *
 * Profile: kms_pg.aws_profile, else AWS_DEFAULT_PROFILE, else
 * AWS_PROFILE, else "default".  A profile named explicitly that exists in
 * neither file is an error (botocore's ProfileNotFound).
 *
 * Credentials, kms_pg.credential_sources in order, with botocore's order
 * inside the default list:
 *   env           AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (a key id
 *                 without its secret is an error)
 *   web_identity  (after a profile role_arn when "profile" is also listed,
 *                 as botocore puts AssumeRole first) AWS_WEB_IDENTITY_TOKEN_FILE
 *                 or the profile's web_identity_token_file, with AWS_ROLE_ARN
 *                 or role_arn
 *   profile       role_arn with source_profile (chains, self-reference with
 *                 static keys, loops refused) or credential_source
 *                 (Environment, Ec2InstanceMetadata, EcsContainer);
 *                 web_identity_token_file; SSO (sso_session or legacy sso_*
 *                 keys); static keys in the credentials file;
 *                 credential_process; static keys in the config file
 *   container     AWS_CONTAINER_CREDENTIALS_RELATIVE_URI / _FULL_URI
 *   imds          EC2 instance metadata
 *
 * Region: kms_pg.region, AWS_REGION, AWS_DEFAULT_REGION, the profile's
 * region, then EC2 instance metadata.  FIPS: kms_pg.use_fips_endpoint, else
 * AWS_USE_FIPS_ENDPOINT, else the profile's use_fips_endpoint.  STS:
 * AWS_STS_REGIONAL_ENDPOINTS, else the profile's sts_regional_endpoints,
 * else "regional".
 *
 * Deliberate differences from botocore, documented in docs/aws.md:
 * mfa_serial is refused (a server cannot prompt for a code); kms_pg reads
 * AWS_REGION (as the other SDKs do) and asks IMDS for the region last;
 * kms_pg.aws_profile counts as AWS_PROFILE (it does not disable env).
 *-------------------------------------------------------------------------
 */
#include "kms_aws_config.h"
#include "kms_guc.h"
#include "kms_secure_mem.h"

#include <pwd.h>
#include <unistd.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "nodes/pg_list.h"
#include "storage/fd.h"
#include "utils/memutils.h"
#include "utils/varlena.h"

#define MAX_FILE_BYTES		(1024 * 1024)

/* ---- environment (with the SQL override) ---- */

static List *kms_aws_env_override = NIL;	/* of char * "NAME=value", or NIL */
static bool kms_aws_env_overridden = false;

const char *
kms_aws_getenv(const char *name)
{
	const char *v = NULL;

	if (kms_aws_env_overridden)
	{
		ListCell   *lc;
		size_t		n = strlen(name);

		foreach(lc, kms_aws_env_override)
		{
			const char *e = lfirst(lc);

			if (strncmp(e, name, n) == 0 && e[n] == '=')
				v = e + n + 1;
		}
	}
	else
		v = getenv(name);
	return (v && v[0] != '\0') ? v : NULL;
}

const char *
kms_aws_home_dir(void)
{
	const char *h = kms_aws_getenv("HOME");

	if (h == NULL && !kms_aws_env_overridden)
	{
		struct passwd *pw = getpwuid(geteuid());

		h = pw ? pw->pw_dir : NULL;
	}
	return h;
}

static char *
expand_home(const char *path)
{
	const char *home;

	if (path[0] == '~' && (path[1] == '/' || path[1] == '\0') &&
		(home = kms_aws_home_dir()) != NULL)
		return psprintf("%s%s", home, path + 1);
	return pstrdup(path);
}

/* ---- INI files, configparser.RawConfigParser rules ---- */

typedef struct IniKV
{
	char	   *key;
	StringInfoData value;		/* secure memory */
} IniKV;

typedef struct IniSection
{
	char	   *name;
	List	   *kvs;			/* of IniKV * */
} IniSection;

typedef struct IniFile
{
	const char *path;
	bool		exists;
	List	   *sections;		/* of IniSection *, file order */
	IniSection *defaults;		/* [DEFAULT] */
} IniFile;

static const char *
ini_get(const IniSection *s, const char *key)
{
	ListCell   *lc;

	if (s == NULL)
		return NULL;
	foreach(lc, s->kvs)
	{
		IniKV	   *kv = lfirst(lc);

		if (strcmp(kv->key, key) == 0)
			return kv->value.data;
	}
	return NULL;
}

static IniSection *
ini_section(const IniFile *f, const char *name)
{
	ListCell   *lc;

	foreach(lc, f->sections)
	{
		IniSection *s = lfirst(lc);

		if (strcmp(s->name, name) == 0)
			return s;
	}
	return NULL;
}

static bool
is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static char *
strip(char *s)
{
	char	   *e;

	while (*s && is_space(*s))
		s++;
	e = s + strlen(s);
	while (e > s && is_space(e[-1]))
		*--e = '\0';
	return s;
}

static void
ini_error(const IniFile *f, int lineno, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONFIG_FILE_ERROR),
			 errmsg("kms_pg: could not parse AWS configuration file \"%s\"", f->path),
			 errdetail("Line %d: %s.", lineno, what),
			 errhint("The file must be readable by Python's configparser, as the AWS CLI and SDKs require.")));
}

static void
ini_parse(IniFile *f, char *text)
{
	IniSection *cur = NULL;
	IniKV	   *curopt = NULL;
	int			indent_level = 0;
	int			lineno = 0;
	char	   *p = text;

	while (*p)
	{
		char	   *line = p;
		char	   *value;
		int			cur_indent;

		/* universal newlines: \n, \r\n, \r */
		while (*p && *p != '\n' && *p != '\r')
			p++;
		if (*p == '\r' && p[1] == '\n')
		{
			*p = '\0';
			p += 2;
		}
		else if (*p)
			*p++ = '\0';
		lineno++;

		value = strip(line);
		if (value[0] == '#' || value[0] == ';')
		{
			indent_level = INT_MAX;
			continue;
		}
		if (value[0] == '\0')
		{
			if (cur && curopt)
				appendStringInfoChar(&curopt->value, '\n');
			else
				indent_level = INT_MAX;
			continue;
		}
		cur_indent = (int) (value - line);
		if (cur && curopt && cur_indent > indent_level)
		{
			appendStringInfoChar(&curopt->value, '\n');
			appendStringInfoString(&curopt->value, value);
			continue;
		}
		indent_level = cur_indent;
		if (value[0] == '[' && strrchr(value + 1, ']') != NULL &&
			strrchr(value + 1, ']') > value + 1)
		{
			char	   *close = strrchr(value + 1, ']');
			char	   *name;

			*close = '\0';
			name = value + 1;
			curopt = NULL;
			if (strcmp(name, "DEFAULT") == 0)
			{
				if (f->defaults == NULL)
				{
					f->defaults = palloc0(sizeof(IniSection));
					f->defaults->name = pstrdup(name);
				}
				cur = f->defaults;
				continue;
			}
			if (ini_section(f, name) != NULL)
				ini_error(f, lineno, psprintf("section \"%s\" already exists", name));
			cur = palloc0(sizeof(IniSection));
			cur->name = pstrdup(name);
			f->sections = lappend(f->sections, cur);
			continue;
		}
		if (cur == NULL)
			ini_error(f, lineno, "a key outside any section");
		{
			char	   *d = value + strcspn(value, "=:");
			char	   *k;
			IniKV	   *kv;

			if (*d == '\0')
				ini_error(f, lineno, "no \"=\" or \":\" after the key");
			*d = '\0';
			k = strip(value);
			if (k[0] == '\0')
				ini_error(f, lineno, "an empty key");
			for (char *c = k; *c; c++)
				*c = pg_ascii_tolower((unsigned char) *c);
			if (ini_get(cur, k) != NULL)
				ini_error(f, lineno, psprintf("key \"%s\" appears twice in section \"%s\"", k, cur->name));
			kv = palloc0(sizeof(IniKV));
			kv->key = pstrdup(k);
			kv->value.maxlen = strlen(d + 1) + 64;
			kv->value.data = kms_secure_palloc(kv->value.maxlen);
			kv->value.len = 0;
			kv->value.data[0] = '\0';
			appendStringInfoString(&kv->value, strip(d + 1));
			cur->kvs = lappend(cur->kvs, kv);
			curopt = kv;
		}
	}

	/* trailing newlines of multi-line values; [DEFAULT] inherited */
	{
		ListCell   *lc;

		foreach(lc, f->sections)
		{
			IniSection *s = lfirst(lc);
			ListCell   *lk;

			foreach(lk, s->kvs)
			{
				IniKV	   *kv = lfirst(lk);

				while (kv->value.len > 0 && is_space(kv->value.data[kv->value.len - 1]))
					kv->value.data[--kv->value.len] = '\0';
			}
			if (f->defaults)
			{
				foreach(lk, f->defaults->kvs)
				{
					IniKV	   *kv = lfirst(lk);

					if (ini_get(s, kv->key) == NULL)
						s->kvs = lappend(s->kvs, kv);
				}
			}
		}
	}
}

static IniFile *
ini_load(const char *path, const char *what)
{
	IniFile    *f = palloc0(sizeof(IniFile));
	FILE	   *fp;
	char	   *buf;
	size_t		n;

	f->path = path;
	if (path == NULL)
		return f;
	fp = AllocateFile(path, "r");
	if (fp == NULL)
	{
		if (errno == ENOENT || errno == ENOTDIR)
			return f;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("kms_pg: could not open %s \"%s\": %m", what, path)));
	}
	buf = kms_secure_palloc(MAX_FILE_BYTES + 1);
	n = fread(buf, 1, MAX_FILE_BYTES + 1, fp);
	if (ferror(fp))
	{
		FreeFile(fp);
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("kms_pg: could not read %s \"%s\": %m", what, path)));
	}
	FreeFile(fp);
	if (n > MAX_FILE_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("kms_pg: %s \"%s\" is larger than %d bytes", what, path, MAX_FILE_BYTES)));
	buf[n] = '\0';
	if (memchr(buf, '\0', n) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("kms_pg: could not parse AWS configuration file \"%s\"", path),
				 errdetail("The file contains a NUL byte.")));
	f->exists = true;
	ini_parse(f, buf);
	return f;
}

/*
 * Python's shlex.split (POSIX mode, no comments): returns the words, or
 * NIL with *bad set on an unterminated quote or a trailing backslash.
 */
List *
kms_aws_shlex_split(const char *s, bool *bad)
{
	List	   *words = NIL;
	StringInfoData w;
	bool		inword = false;

	*bad = false;
	initStringInfo(&w);
	while (*s)
	{
		char		c = *s++;

		if (is_space(c))
		{
			if (inword)
			{
				words = lappend(words, pstrdup(w.data));
				resetStringInfo(&w);
				inword = false;
			}
			continue;
		}
		inword = true;
		if (c == '\\')
		{
			if (*s == '\0')
			{
				*bad = true;
				return NIL;
			}
			appendStringInfoChar(&w, *s++);
		}
		else if (c == '\'')
		{
			while (*s && *s != '\'')
				appendStringInfoChar(&w, *s++);
			if (*s == '\0')
			{
				*bad = true;
				return NIL;
			}
			s++;
		}
		else if (c == '"')
		{
			while (*s && *s != '"')
			{
				if (*s == '\\' && (s[1] == '"' || s[1] == '\\'))
					s++;
				appendStringInfoChar(&w, *s++);
			}
			if (*s == '\0')
			{
				*bad = true;
				return NIL;
			}
			s++;
		}
		else
			appendStringInfoChar(&w, c);
	}
	if (inword)
		words = lappend(words, pstrdup(w.data));
	return words;
}

/* ---- profiles ---- */

typedef struct AwsFiles
{
	IniFile    *config;
	IniFile    *creds;
	List	   *profiles;		/* of IniSection *: merged view */
	List	   *config_profiles;	/* of IniSection *: config file only */
	List	   *sso_sessions;	/* of IniSection * */
} AwsFiles;

static IniSection *
find_named(List *l, const char *name)
{
	ListCell   *lc;

	foreach(lc, l)
	{
		IniSection *s = lfirst(lc);

		if (strcmp(s->name, name) == 0)
			return s;
	}
	return NULL;
}

/* Add or replace (botocore: a later section of the same name wins). */
static List *
put_named(List *l, const char *name, List *kvs)
{
	IniSection *s = find_named(l, name);

	if (s == NULL)
	{
		s = palloc0(sizeof(IniSection));
		s->name = pstrdup(name);
		l = lappend(l, s);
	}
	s->kvs = list_copy(kvs);
	return l;
}

static void
build_profiles(AwsFiles *af)
{
	ListCell   *lc;

	foreach(lc, af->config->sections)
	{
		IniSection *s = lfirst(lc);

		if (strncmp(s->name, "profile", 7) == 0 || strncmp(s->name, "sso-session", 11) == 0)
		{
			bool		bad;
			List	   *w = kms_aws_shlex_split(s->name, &bad);

			if (bad || list_length(w) != 2)
				continue;
			if (s->name[0] == 'p')
				af->config_profiles = put_named(af->config_profiles, lsecond(w), s->kvs);
			else
				af->sso_sessions = put_named(af->sso_sessions, lsecond(w), s->kvs);
		}
		else if (strcmp(s->name, "default") == 0)
			af->config_profiles = put_named(af->config_profiles, "default", s->kvs);
	}
	foreach(lc, af->config_profiles)
	{
		IniSection *s = lfirst(lc);

		af->profiles = put_named(af->profiles, s->name, s->kvs);
	}
	foreach(lc, af->creds->sections)
	{
		IniSection *cs = lfirst(lc);
		IniSection *p = find_named(af->profiles, cs->name);
		ListCell   *lk;

		if (p == NULL)
		{
			af->profiles = put_named(af->profiles, cs->name, cs->kvs);
			continue;
		}
		foreach(lk, cs->kvs)
		{
			IniKV	   *kv = lfirst(lk);
			ListCell   *lo;
			bool		replaced = false;

			foreach(lo, p->kvs)
			{
				IniKV	   *o = lfirst(lo);

				if (strcmp(o->key, kv->key) == 0)
				{
					lfirst(lo) = kv;
					replaced = true;
					break;
				}
			}
			if (!replaced)
				p->kvs = lappend(p->kvs, kv);
		}
	}
}

static bool
is_true(const char *v)
{
	return v != NULL && pg_strcasecmp(v, "true") == 0;
}

const char *
kms_aws_cred_kind_name(KmsAwsCredKind kind)
{
	switch (kind)
	{
		case KMS_AWS_CRED_ENV:
			return "env";
		case KMS_AWS_CRED_STATIC:
			return "profile";
		case KMS_AWS_CRED_ASSUME_ROLE:
			return "assume_role";
		case KMS_AWS_CRED_WEB_IDENTITY:
			return "web_identity";
		case KMS_AWS_CRED_SSO:
			return "sso";
		case KMS_AWS_CRED_PROCESS:
			return "process";
		case KMS_AWS_CRED_CONTAINER:
			return "container";
		case KMS_AWS_CRED_IMDS:
			return "imds";
	}
	return "?";
}

char *
kms_aws_plan_describe(const KmsAwsCredPlan *p)
{
	switch (p->kind)
	{
		case KMS_AWS_CRED_ENV:
			return pstrdup("environment variables");
		case KMS_AWS_CRED_STATIC:
			return psprintf("static keys of profile %s in %s", p->profile, p->file);
		case KMS_AWS_CRED_ASSUME_ROLE:
			return psprintf("role %s of profile %s via %s, from %s", p->role_arn, p->profile,
							p->source_how, kms_aws_plan_describe(p->source));
		case KMS_AWS_CRED_WEB_IDENTITY:
			return psprintf("web identity %s for role %s%s%s", p->token_file, p->role_arn,
							p->profile ? " of profile " : "", p->profile ? p->profile : "");
		case KMS_AWS_CRED_SSO:
			return psprintf("SSO role %s in account %s of profile %s", p->sso_role_name,
							p->sso_account_id, p->profile);
		case KMS_AWS_CRED_PROCESS:
			return psprintf("credential_process of profile %s", p->profile);
		case KMS_AWS_CRED_CONTAINER:
			return pstrdup("container credentials endpoint");
		case KMS_AWS_CRED_IMDS:
			return pstrdup("EC2 instance metadata");
	}
	return pstrdup("?");
}

/* ---- the resolver ---- */

typedef struct Resolver
{
	KmsAwsConfig *cfg;
	AwsFiles   *af;
	List	   *visited;		/* profile names of the current role chain */
	bool		did_assume_role;
} Resolver;

static KmsAwsCredPlan *
new_plan(KmsAwsCredKind kind, const char *profile)
{
	KmsAwsCredPlan *p = palloc0(sizeof(KmsAwsCredPlan));

	p->kind = kind;
	p->profile = profile;
	return p;
}

static void
config_error(const char *msg, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("kms_pg: invalid AWS configuration: %s", msg),
			 detail ? errdetail("%s", detail) : 0,
			 errhint("botocore (the AWS CLI, boto3) rejects this configuration too; fix the AWS config or credentials file.")));
}

static bool
has_static(const IniSection *p)
{
	return ini_get(p, "aws_access_key_id") || ini_get(p, "aws_secret_access_key");
}

static bool
has_assume_role_vars(const IniSection *p)
{
	return ini_get(p, "role_arn") && !ini_get(p, "web_identity_token_file");
}

static KmsAwsCredPlan *
plan_env(Resolver *r, bool required_for, const char *profile)
{
	const char *akid = kms_aws_getenv("AWS_ACCESS_KEY_ID");

	if (akid == NULL)
	{
		if (required_for)
			config_error(psprintf("credential_source Environment of profile \"%s\" found no credentials", profile),
						 "AWS_ACCESS_KEY_ID is not set in the environment of the server process.");
		appendStringInfoString(&r->cfg->tried, "env: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY not set; ");
		return NULL;
	}
	if (kms_aws_getenv("AWS_SECRET_ACCESS_KEY") == NULL)
		config_error("AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY", NULL);
	return new_plan(KMS_AWS_CRED_ENV, NULL);
}

/* Static keys of profile in one file (credentials file: raw section names). */
static KmsAwsCredPlan *
plan_static(Resolver *r, const char *profile, bool config_file)
{
	IniSection *s;
	KmsAwsCredPlan *p;
	const IniFile *f = config_file ? r->af->config : r->af->creds;

	s = config_file ? find_named(r->af->config_profiles, profile) : ini_section(f, profile);
	if (s == NULL || ini_get(s, "aws_access_key_id") == NULL)
		return NULL;
	if (ini_get(s, "aws_secret_access_key") == NULL)
		config_error(psprintf("profile \"%s\" in \"%s\" has aws_access_key_id without aws_secret_access_key",
							  profile, f->path), NULL);
	p = new_plan(KMS_AWS_CRED_STATIC, profile);
	p->file = f->path;
	p->from_config_file = config_file;
	p->akid = ini_get(s, "aws_access_key_id");
	p->secret = ini_get(s, "aws_secret_access_key");
	p->token = ini_get(s, "aws_session_token");
	return p;
}

static KmsAwsCredPlan *
plan_web_identity(Resolver *r, const char *profile, bool use_env)
{
	IniSection *s = find_named(r->af->profiles, profile);
	const char *tokfile = use_env ? kms_aws_getenv("AWS_WEB_IDENTITY_TOKEN_FILE") : NULL;
	const char *role = use_env ? kms_aws_getenv("AWS_ROLE_ARN") : NULL;
	const char *session = use_env ? kms_aws_getenv("AWS_ROLE_SESSION_NAME") : NULL;
	KmsAwsCredPlan *p;

	if (tokfile == NULL)
		tokfile = ini_get(s, "web_identity_token_file");
	if (tokfile == NULL)
		return NULL;
	if (role == NULL)
		role = ini_get(s, "role_arn");
	if (session == NULL)
		session = ini_get(s, "role_session_name");
	if (role == NULL)
		config_error("web identity is configured without a role ARN",
					 "Set role_arn in the profile or AWS_ROLE_ARN.");
	p = new_plan(KMS_AWS_CRED_WEB_IDENTITY, s && ini_get(s, "web_identity_token_file") ? profile : NULL);
	p->token_file = tokfile;
	p->role_arn = role;
	p->role_session_name = session;
	return p;
}

static KmsAwsCredPlan *
plan_sso(Resolver *r, const char *profile)
{
	IniSection *s = find_named(r->af->profiles, profile);
	const char *sess_name;
	IniSection *sess = NULL;
	KmsAwsCredPlan *p;
	StringInfoData missing;
	static const char *const keys[] = {"sso_start_url", "sso_region", "sso_role_name", "sso_account_id"};
	const char *vals[4];

	if (s == NULL || (!ini_get(s, "sso_role_name") && !ini_get(s, "sso_account_id")))
		return NULL;
	sess_name = ini_get(s, "sso_session");
	if (sess_name)
	{
		sess = find_named(r->af->sso_sessions, sess_name);
		if (sess == NULL)
			config_error(psprintf("the sso-session \"%s\" of profile \"%s\" does not exist", sess_name, profile), NULL);
	}
	initStringInfo(&missing);
	for (int i = 0; i < 4; i++)
	{
		const char *pv = ini_get(s, keys[i]);
		const char *sv = ini_get(sess, keys[i]);

		if (pv && sv && strcmp(pv, sv) != 0)
			config_error(psprintf("%s differs between profile \"%s\" and sso-session \"%s\"",
								  keys[i], profile, sess_name), NULL);
		vals[i] = sv ? sv : pv;
	}
	/* botocore's order of the message: role name, account id, start url, region */
	if (!vals[2])
		appendStringInfoString(&missing, "sso_role_name, ");
	if (!vals[3])
		appendStringInfoString(&missing, "sso_account_id, ");
	if (!vals[0])
		appendStringInfoString(&missing, "sso_start_url, ");
	if (!vals[1])
		appendStringInfoString(&missing, "sso_region, ");
	if (missing.len)
	{
		missing.data[missing.len - 2] = '\0';
		config_error(psprintf("profile \"%s\" is configured to use SSO but is missing required configuration: %s",
							  profile, missing.data), NULL);
	}
	p = new_plan(KMS_AWS_CRED_SSO, profile);
	p->sso_start_url = vals[0];
	p->sso_region = vals[1];
	p->sso_role_name = vals[2];
	p->sso_account_id = vals[3];
	p->sso_session = sess_name;
	return p;
}

static KmsAwsCredPlan *
plan_process(Resolver *r, const char *profile)
{
	IniSection *s = find_named(r->af->profiles, profile);
	const char *cmd = ini_get(s, "credential_process");
	KmsAwsCredPlan *p;

	if (cmd == NULL)
		return NULL;
	p = new_plan(KMS_AWS_CRED_PROCESS, profile);
	p->command = cmd;
	return p;
}

static KmsAwsCredPlan *plan_assume_role(Resolver *r, const char *profile);

/* botocore's profile providers after AssumeRole, in order. */
static KmsAwsCredPlan *
plan_profile_providers(Resolver *r, const char *profile, bool use_env)
{
	KmsAwsCredPlan *p;

	if ((p = plan_web_identity(r, profile, use_env)) != NULL)
		return p;
	if ((p = plan_sso(r, profile)) != NULL)
		return p;
	if ((p = plan_static(r, profile, false)) != NULL)
		return p;
	if ((p = plan_process(r, profile)) != NULL)
		return p;
	return plan_static(r, profile, true);
}

static KmsAwsCredPlan *
plan_assume_role(Resolver *r, const char *profile)
{
	IniSection *s = find_named(r->af->profiles, profile);
	const char *source_profile = ini_get(s, "source_profile");
	const char *credential_source = ini_get(s, "credential_source");
	const char *dur = ini_get(s, "duration_seconds");
	KmsAwsCredPlan *p = new_plan(KMS_AWS_CRED_ASSUME_ROLE, profile);

	p->role_arn = ini_get(s, "role_arn");
	p->role_session_name = ini_get(s, "role_session_name");
	p->external_id = ini_get(s, "external_id");
	if (dur)
	{
		char	   *end;
		long		v = strtol(dur, &end, 10);

		/* botocore: int(value), ignored when not an integer */
		while (*end == ' ' || *end == '\t')
			end++;
		if (end != dur && *end == '\0' && v > 0 && v <= INT_MAX)
			p->duration_seconds = (int) v;
	}

	if (credential_source && source_profile)
		config_error(psprintf("profile \"%s\" contains both source_profile and credential_source", profile), NULL);
	if (!credential_source && !source_profile)
		config_error(psprintf("profile \"%s\" has role_arn but neither source_profile nor credential_source", profile), NULL);
	if (credential_source)
	{
		if (strcmp(credential_source, "Environment") != 0 &&
			strcmp(credential_source, "Ec2InstanceMetadata") != 0 &&
			strcmp(credential_source, "EcsContainer") != 0)
			config_error(psprintf("the credential_source \"%s\" of profile \"%s\" is not valid",
								  credential_source, profile),
						 "Valid values are Environment, Ec2InstanceMetadata and EcsContainer.");
	}
	else
	{
		IniSection *sp = find_named(r->af->profiles, source_profile);

		if (sp == NULL)
			config_error(psprintf("the source_profile \"%s\" of profile \"%s\" does not exist",
								  source_profile, profile), NULL);
		if (list_member(r->visited, makeString((char *) source_profile)) &&
			(strcmp(source_profile, profile) != 0 || !has_static(sp)))
		{
			StringInfoData chain;
			ListCell   *lc;

			initStringInfo(&chain);
			foreach(lc, r->visited)
				appendStringInfo(&chain, "%s -> ", strVal(lfirst(lc)));
			appendStringInfoString(&chain, source_profile);
			config_error(psprintf("the source_profile chain of profile \"%s\" is a loop", profile),
						 psprintf("Chain: %s.", chain.data));
		}
	}
	if (ini_get(s, "mfa_serial"))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("kms_pg: profile \"%s\" requires an MFA code (mfa_serial)", profile),
				 errdetail("A database server cannot prompt for a one-time code at every credential refresh."),
				 errhint("Use a role whose trust policy does not require MFA for the server, or a different source (instance role, web identity, credential_process).")));

	if (credential_source)
	{
		p->source_how = psprintf("credential_source %s", credential_source);
		if (strcmp(credential_source, "Environment") == 0)
			p->source = plan_env(r, true, profile);
		else if (strcmp(credential_source, "EcsContainer") == 0)
		{
			if (!kms_aws_getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") &&
				!kms_aws_getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
				config_error(psprintf("credential_source EcsContainer of profile \"%s\" found no credentials", profile),
							 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/FULL_URI is not set in the environment of the server process.");
			p->source = new_plan(KMS_AWS_CRED_CONTAINER, NULL);
		}
		else
			p->source = new_plan(KMS_AWS_CRED_IMDS, NULL);
		return p;
	}

	p->source_how = psprintf("source_profile %s", source_profile);
	r->visited = lappend(r->visited, makeString((char *) source_profile));
	{
		IniSection *sp = find_named(r->af->profiles, source_profile);

		if (has_static(sp) || !has_assume_role_vars(sp))
		{
			p->source = plan_profile_providers(r, source_profile, false);
			if (p->source == NULL)
				config_error(psprintf("the source profile \"%s\" has no credentials", source_profile), NULL);
		}
		else
			p->source = plan_assume_role(r, source_profile);
	}
	return p;
}

static bool
list_has(List *names, const char *name)
{
	ListCell   *lc;

	foreach(lc, names)
		if (strcmp((char *) lfirst(lc), name) == 0)
			return true;
	return false;
}

void
kms_aws_config_resolve(KmsAwsConfig *cfg, bool want_plan)
{
	Resolver	r;
	AwsFiles   *af = palloc0(sizeof(AwsFiles));
	const char *v;
	IniSection *prof;
	bool		explicit_profile = true;

	memset(cfg, 0, sizeof(*cfg));
	initStringInfo(&cfg->tried);

	if (kms_guc_aws_profile && kms_guc_aws_profile[0])
	{
		cfg->profile = kms_guc_aws_profile;
		cfg->profile_from = "kms_pg.aws_profile";
	}
	else if ((v = kms_aws_getenv("AWS_DEFAULT_PROFILE")) != NULL)
	{
		cfg->profile = v;
		cfg->profile_from = "AWS_DEFAULT_PROFILE";
	}
	else if ((v = kms_aws_getenv("AWS_PROFILE")) != NULL)
	{
		cfg->profile = v;
		cfg->profile_from = "AWS_PROFILE";
	}
	else
	{
		cfg->profile = "default";
		cfg->profile_from = "default";
		explicit_profile = false;
	}

	if ((v = kms_aws_getenv("AWS_CONFIG_FILE")) != NULL)
		cfg->config_path = expand_home(v);
	else if (kms_aws_home_dir())
		cfg->config_path = psprintf("%s/.aws/config", kms_aws_home_dir());
	if ((v = kms_aws_getenv("AWS_SHARED_CREDENTIALS_FILE")) != NULL)
		cfg->credentials_path = expand_home(v);
	else if (kms_aws_home_dir())
		cfg->credentials_path = psprintf("%s/.aws/credentials", kms_aws_home_dir());

	af->config = ini_load(cfg->config_path, "AWS config file");
	af->creds = ini_load(cfg->credentials_path, "AWS credentials file");
	build_profiles(af);

	prof = find_named(af->profiles, cfg->profile);
	if (prof == NULL && explicit_profile)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("kms_pg: the AWS profile \"%s\" does not exist", cfg->profile),
				 errdetail("The profile comes from %s; looked in \"%s\" and \"%s\".", cfg->profile_from,
						   cfg->config_path ? cfg->config_path : "(no config file)",
						   cfg->credentials_path ? cfg->credentials_path : "(no credentials file)"),
				 errhint("Create the profile, or set kms_pg.aws_profile / AWS_PROFILE to an existing one.")));

	/* region */
	if (kms_guc_region && kms_guc_region[0])
	{
		cfg->region = kms_guc_region;
		cfg->region_from = "kms_pg.region";
	}
	else if ((v = kms_aws_getenv("AWS_REGION")) != NULL)
	{
		cfg->region = v;
		cfg->region_from = "AWS_REGION";
	}
	else if ((v = kms_aws_getenv("AWS_DEFAULT_REGION")) != NULL)
	{
		cfg->region = v;
		cfg->region_from = "AWS_DEFAULT_REGION";
	}
	else if ((v = ini_get(prof, "region")) != NULL && v[0])
	{
		cfg->region = v;
		cfg->region_from = psprintf("profile %s", cfg->profile);
	}
	else
		cfg->region_from = "imds";

	/* FIPS and STS endpoint style */
	if (kms_guc_use_fips_endpoint)
		cfg->use_fips = true;
	else if ((v = kms_aws_getenv("AWS_USE_FIPS_ENDPOINT")) != NULL)
		cfg->use_fips = is_true(v);
	else
		cfg->use_fips = is_true(ini_get(prof, "use_fips_endpoint"));
	v = kms_aws_getenv("AWS_STS_REGIONAL_ENDPOINTS");
	if (v == NULL)
		v = ini_get(prof, "sts_regional_endpoints");
	if (v != NULL && strcmp(v, "legacy") != 0 && strcmp(v, "regional") != 0)
		config_error(psprintf("sts_regional_endpoints is \"%s\"", v),
					 "Valid values are \"legacy\" and \"regional\".");
	cfg->sts_legacy = v != NULL && strcmp(v, "legacy") == 0;

	if (!want_plan)
		return;

	/* credentials */
	memset(&r, 0, sizeof(r));
	r.cfg = cfg;
	r.af = af;
	{
		char	   *raw = pstrdup(kms_guc_credential_sources ? kms_guc_credential_sources : "");
		List	   *names = NIL;
		ListCell   *lc;

		if (!SplitIdentifierString(raw, ',', &names))
			elog(ERROR, "kms_pg: invalid kms_pg.credential_sources");
		foreach(lc, names)
		{
			const char *s = (const char *) lfirst(lc);
			KmsAwsCredPlan *p = NULL;

			if (strcmp(s, "env") == 0)
				p = plan_env(&r, false, NULL);
			else if (strcmp(s, "web_identity") == 0 || strcmp(s, "profile") == 0)
			{
				/* botocore: AssumeRole from the profile comes before web identity */
				if (list_has(names, "profile") && !r.did_assume_role && has_assume_role_vars(prof))
				{
					r.did_assume_role = true;
					r.visited = list_make1(makeString((char *) cfg->profile));
					p = plan_assume_role(&r, cfg->profile);
				}
				if (p == NULL && strcmp(s, "web_identity") == 0)
				{
					p = plan_web_identity(&r, cfg->profile, true);
					if (p == NULL)
						appendStringInfoString(&cfg->tried, "web_identity: AWS_WEB_IDENTITY_TOKEN_FILE/AWS_ROLE_ARN not set; ");
				}
				else if (p == NULL)
				{
					p = list_has(names, "web_identity") ? NULL : plan_web_identity(&r, cfg->profile, false);
					if (p == NULL)
						p = plan_sso(&r, cfg->profile);
					if (p == NULL)
						p = plan_static(&r, cfg->profile, false);
					if (p == NULL)
						p = plan_process(&r, cfg->profile);
					if (p == NULL)
						p = plan_static(&r, cfg->profile, true);
					if (p == NULL)
						appendStringInfo(&cfg->tried, "profile: no credentials for profile \"%s\" in %s or %s; ",
										 cfg->profile,
										 cfg->credentials_path ? cfg->credentials_path : "(no credentials file)",
										 cfg->config_path ? cfg->config_path : "(no config file)");
				}
			}
			else if (strcmp(s, "container") == 0)
			{
				if (kms_aws_getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") ||
					kms_aws_getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
					p = new_plan(KMS_AWS_CRED_CONTAINER, NULL);
				else
					appendStringInfoString(&cfg->tried, "container: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/FULL_URI not set; ");
			}
			else if (strcmp(s, "imds") == 0)
			{
				if (kms_guc_imds_endpoint && kms_guc_imds_endpoint[0])
					p = new_plan(KMS_AWS_CRED_IMDS, NULL);
				else
					appendStringInfoString(&cfg->tried, "imds: kms_pg.imds_endpoint is empty; ");
			}
			if (p != NULL)
			{
				cfg->plan = p;
				return;
			}
		}
	}
}

/* ---- endpoints ---- */

static const char *
dns_suffix(const char *region)
{
	if (strncmp(region, "cn-", 3) == 0)
		return "amazonaws.com.cn";
	return "amazonaws.com";
}

char *
kms_aws_kms_default_endpoint(const char *region, bool fips)
{
	return psprintf("https://kms%s.%s.%s/", fips ? "-fips" : "", region, dns_suffix(region));
}

char *
kms_aws_sts_endpoint(KmsAwsConfig *cfg, const char **signing_region)
{
	static const char *const legacy_global[] = {
		"ap-northeast-1", "ap-south-1", "ap-southeast-1", "ap-southeast-2",
		"aws-global", "ca-central-1", "eu-central-1", "eu-north-1", "eu-west-1",
		"eu-west-2", "eu-west-3", "sa-east-1", "us-east-1", "us-east-2",
		"us-west-1", "us-west-2"
	};
	const char *region = cfg->region;

	if (kms_guc_sts_endpoint && kms_guc_sts_endpoint[0])
	{
		*signing_region = region ? region : "us-east-1";
		return pstrdup(kms_guc_sts_endpoint);
	}
	if (region == NULL)
	{
		*signing_region = "us-east-1";
		return pstrdup("https://sts.amazonaws.com/");
	}
	*signing_region = region;
	if (cfg->use_fips)
		return psprintf("https://sts-fips.%s.%s/", region, dns_suffix(region));
	if (cfg->sts_legacy)
	{
		for (int i = 0; i < (int) lengthof(legacy_global); i++)
			if (strcmp(region, legacy_global[i]) == 0)
			{
				*signing_region = "us-east-1";
				return pstrdup("https://sts.amazonaws.com/");
			}
	}
	return psprintf("https://sts.%s.%s/", region, dns_suffix(region));
}

/* ---- SQL ---- */

/*
 * SQL: kms_aws_config(environment text[] DEFAULT NULL)
 *   RETURNS TABLE(profile, profile_from, config_file, credentials_file,
 *                 source, chain, region, region_from, use_fips,
 *                 kms_endpoint, sts_endpoint)
 * What the server's configuration resolves to, without fetching
 * credentials, running a program or asking IMDS, and without any secret.
 * With environment ("NAME=value" items), that environment replaces the
 * server process's for the resolution (superuser only: it chooses which
 * files the server reads).
 */
PG_FUNCTION_INFO_V1(kms_aws_config);
Datum
kms_aws_config(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[11];
	bool		nulls[11] = {0};
	KmsAwsConfig cfg;
	const char *signing_region;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	if (!PG_ARGISNULL(0))
	{
		ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
		Datum	   *elems;
		bool	   *enulls;
		int			n;

		if (!superuser())
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("kms_pg: only a superuser may resolve the AWS configuration for another environment")));
		deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
		kms_aws_env_override = NIL;
		for (int i = 0; i < n; i++)
		{
			char	   *e;

			if (enulls[i])
				continue;
			e = text_to_cstring(DatumGetTextPP(elems[i]));
			if (strchr(e, '=') == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("kms_pg: environment item \"%s\" is not NAME=value", e)));
			kms_aws_env_override = lappend(kms_aws_env_override, e);
		}
		kms_aws_env_overridden = true;
	}
	PG_TRY();
	{
		kms_aws_config_resolve(&cfg, true);
		values[0] = CStringGetTextDatum(cfg.profile);
		values[1] = CStringGetTextDatum(cfg.profile_from);
		if (cfg.config_path)
			values[2] = CStringGetTextDatum(cfg.config_path);
		else
			nulls[2] = true;
		if (cfg.credentials_path)
			values[3] = CStringGetTextDatum(cfg.credentials_path);
		else
			nulls[3] = true;
		if (cfg.plan)
		{
			values[4] = CStringGetTextDatum(kms_aws_cred_kind_name(cfg.plan->kind));
			values[5] = CStringGetTextDatum(kms_aws_plan_describe(cfg.plan));
		}
		else
		{
			nulls[4] = true;
			cfg.tried.len = Max(cfg.tried.len - 2, 0);
			cfg.tried.data[cfg.tried.len] = '\0';
			values[5] = CStringGetTextDatum(psprintf("none: %s", cfg.tried.data));
		}
		if (cfg.region)
			values[6] = CStringGetTextDatum(cfg.region);
		else
			nulls[6] = true;
		values[7] = CStringGetTextDatum(cfg.region_from);
		values[8] = BoolGetDatum(cfg.use_fips);
		if (kms_guc_endpoint && kms_guc_endpoint[0])
			values[9] = CStringGetTextDatum(kms_guc_endpoint);
		else if (cfg.region)
			values[9] = CStringGetTextDatum(kms_aws_kms_default_endpoint(cfg.region, cfg.use_fips));
		else
			nulls[9] = true;
		values[10] = CStringGetTextDatum(kms_aws_sts_endpoint(&cfg, &signing_region));
	}
	PG_FINALLY();
	{
		kms_aws_env_overridden = false;
		kms_aws_env_override = NIL;
	}
	PG_END_TRY();
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
