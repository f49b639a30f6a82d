/*
 * test_sigv4.c - known-answer tests for src/kms_sigv4.c against every AWS
 * SigV4 test vector in the shared vector directory, plus self-contained
 * checks (negative cases, error codes, documented canonicalisation rules).
 *
 * Usage: test_sigv4 [--expect N] [VECTOR_DIR]
 *   VECTOR_DIR defaults to $KMS_SIGV4_VECTORS, else "../shared/vectors/sigv4"
 *   (relative to the repository root).  --expect N additionally requires that
 *   exactly N vectors were found and run.
 *
 * Covered layouts (see VECTOR_DIR/README.md):
 *   awslabs-aws-c-auth/tests/aws-signing-test-suite/v4/<case>/   each case
 *       twice: header signing and presigned-query signing
 *   boto-botocore/tests/unit/auth/aws4_testsuite/.../<case>.req  (header)
 *   extra-kms-botocore-generated/<case>.req                     (header, kms)
 *
 * Output: TAP ("ok N - name" / "not ok N - name" with "# " diagnostics), the
 * plan "1..N" at the end, then "N passed, M failed".  Exit status 1 when any
 * test failed or no vector was found (a missing directory is a failure).
 */
#define _DEFAULT_SOURCE

#include "kms_sigv4.h"

#include <ctype.h>
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define AWSC_DIR "awslabs-aws-c-auth/tests/aws-signing-test-suite/v4"
#define BOTO_DIR "boto-botocore/tests/unit/auth/aws4_testsuite"
#define EXTRA_DIR "extra-kms-botocore-generated"

/* Parameters documented in the vector README (botocore + extra layouts). */
#define EX_AKID "AKIDEXAMPLE"
#define EX_SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define EX_DATE "20150830T123600Z"
#define EX_REGION "us-east-1"
#define EX_SERVICE "service"
/* botocore get-vanilla-with-session-token: the token appears only in its
 * .creq; it is the same token as aws-c-auth's context.json for that case. */
#define BOTO_VANILLA_TOKEN "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"
/* extra-kms-botocore-generated/make.py: token of the session-token case */
#define EXTRA_KMS_TOKEN "EXAMPLESESSIONTOKEN"

#define MAX_HEADERS 64

/* ------------------------------------------------------------------------
 * TAP bookkeeping
 * ------------------------------------------------------------------------ */
static int n_tests;
static int n_failed;
static int n_vectors;
static char diag[16384];
static size_t diag_len;

static void
diagf(const char *fmt,...)
{
	va_list		ap;
	int			w;

	if (diag_len >= sizeof(diag) - 1)
		return;
	va_start(ap, fmt);
	w = vsnprintf(diag + diag_len, sizeof(diag) - diag_len, fmt, ap);
	va_end(ap);
	if (w > 0)
		diag_len += (size_t) w;
	if (diag_len > sizeof(diag) - 1)
		diag_len = sizeof(diag) - 1;
}

/* print the test line, then any collected diagnostics as "# " lines */
static void
report(int ok, const char *name)
{
	n_tests++;
	if (!ok)
		n_failed++;
	printf("%s %d - %s\n", ok ? "ok" : "not ok", n_tests, name);
	if (diag_len > 0)
	{
		char	   *line = diag;

		while (*line)
		{
			char	   *nl = strchr(line, '\n');

			if (nl != NULL)
				*nl = '\0';
			printf("# %s\n", line);
			if (nl == NULL)
				break;
			line = nl + 1;
		}
	}
	diag_len = 0;
	diag[0] = '\0';
	fflush(stdout);
}

/* print s[0..n) visibly (\n, \r, \t, non-ASCII escaped) into diag */
static void
diag_visible(const char *s, size_t n)
{
	size_t		i;

	for (i = 0; i < n && i < 400; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c == '\n')
			diagf("\\n");
		else if (c == '\r')
			diagf("\\r");
		else if (c == '\t')
			diagf("\\t");
		else if (c < 0x20 || c >= 0x7f)
			diagf("\\x%02x", c);
		else
			diagf("%c", c);
	}
	if (n > 400)
		diagf("...");
}

/* byte-exact comparison; on mismatch add a diff hint for the first
 * differing line to diag and return 0 */
static int
check_text(const char *what, const char *expected, size_t explen,
		   const char *got)
{
	size_t		gotlen = got != NULL ? strlen(got) : 0;
	size_t		i = 0;
	size_t		line = 1;
	size_t		ls;
	size_t		le_e;
	size_t		le_g;

	if (got == NULL)
	{
		diagf("%s: no output\n", what);
		return 0;
	}
	if (explen == gotlen && memcmp(expected, got, explen) == 0)
		return 1;
	while (i < explen && i < gotlen && expected[i] == got[i])
	{
		if (expected[i] == '\n')
			line++;
		i++;
	}
	ls = i;
	while (ls > 0 && expected[ls - 1] != '\n')
		ls--;
	le_e = i;
	while (le_e < explen && expected[le_e] != '\n')
		le_e++;
	le_g = i;
	while (le_g < gotlen && got[le_g] != '\n')
		le_g++;
	diagf("%s differs at byte %zu (line %zu; lengths expected %zu, got %zu)\n",
		  what, i, line, explen, gotlen);
	diagf("  expected: ");
	diag_visible(expected + ls, le_e - ls + (le_e < explen ? 1 : 0));
	diagf("\n  got:      ");
	diag_visible(got + ls, le_g - ls + (le_g < gotlen ? 1 : 0));
	diagf("\n");
	return 0;
}

static int
check_str(const char *what, const char *expected, const char *got)
{
	return check_text(what, expected, strlen(expected), got);
}

/* ------------------------------------------------------------------------
 * Files
 * ------------------------------------------------------------------------ */
static char *
read_file(const char *path, size_t *len_out)
{
	FILE	   *f = fopen(path, "rb");
	char	   *buf = NULL;
	size_t		len = 0;
	size_t		cap = 0;

	if (f == NULL)
		return NULL;
	for (;;)
	{
		size_t		got;

		if (cap - len < 4096)
		{
			char	   *nb = realloc(buf, cap + 65536);

			if (nb == NULL)
			{
				free(buf);
				fclose(f);
				return NULL;
			}
			buf = nb;
			cap += 65536;
		}
		got = fread(buf + len, 1, cap - len - 1, f);
		len += got;
		if (got == 0)
			break;
	}
	fclose(f);
	buf[len] = '\0';
	if (len_out != NULL)
		*len_out = len;
	return buf;
}

static char *
path_join(const char *a, const char *b)
{
	size_t		n = strlen(a) + strlen(b) + 2;
	char	   *p = malloc(n);

	if (p == NULL)
	{
		fprintf(stderr, "out of memory\n");
		exit(2);
	}
	snprintf(p, n, "%s/%s", a, b);
	return p;
}

/* read dir/name, trimmed of trailing whitespace when trim */
static char *
read_in(const char *dir, const char *name, size_t *len, int trim)
{
	char	   *p = path_join(dir, name);
	size_t		n = 0;
	char	   *s = read_file(p, &n);

	if (s == NULL)
		diagf("cannot read %s\n", p);
	free(p);
	if (s != NULL && trim)
		while (n > 0 && isspace((unsigned char) s[n - 1]))
			s[--n] = '\0';
	if (len != NULL)
		*len = n;
	return s;
}

static int
is_dir(const char *p)
{
	struct stat st;

	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

typedef struct strlist
{
	char	  **v;
	size_t		n;
	size_t		cap;
} strlist;

static void
sl_add(strlist *l, char *s)
{
	if (l->n == l->cap)
	{
		l->cap = l->cap ? l->cap * 2 : 64;
		l->v = realloc(l->v, l->cap * sizeof(char *));
		if (l->v == NULL)
		{
			fprintf(stderr, "out of memory\n");
			exit(2);
		}
	}
	l->v[l->n++] = s;
}

static void
sl_free(strlist *l)
{
	size_t		i;

	for (i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* entries of dir: subdirectories (want_dirs) or files ending in suffix */
static void
list_dir(const char *dir, int want_dirs, const char *suffix, int recurse,
		 strlist *out)
{
	DIR		   *d = opendir(dir);
	struct dirent *e;

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL)
	{
		char	   *p;
		int			isd;

		if (e->d_name[0] == '.')
			continue;
		p = path_join(dir, e->d_name);
		isd = is_dir(p);
		if (isd && recurse)
			list_dir(p, want_dirs, suffix, recurse, out);
		if (want_dirs ? isd
			: (!isd && strlen(e->d_name) > strlen(suffix) &&
			   strcmp(e->d_name + strlen(e->d_name) - strlen(suffix), suffix) == 0))
			sl_add(out, p);
		else
			free(p);
	}
	closedir(d);
	qsort(out->v, out->n, sizeof(char *), cmp_str);
}

/* ------------------------------------------------------------------------
 * HTTP request parser (request.txt / .req)
 * ------------------------------------------------------------------------ */
typedef struct parsed_req
{
	char	   *method;
	char	   *path;
	KmsSigV4Header headers[MAX_HEADERS];
	char	   *names[MAX_HEADERS];
	char	   *values[MAX_HEADERS];
	size_t		nheaders;
	const unsigned char *body;
	size_t		body_len;
} parsed_req;

static char *
dup_n(const char *s, size_t n)
{
	char	   *p = malloc(n + 1);

	if (p == NULL)
	{
		fprintf(stderr, "out of memory\n");
		exit(2);
	}
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

static void
free_req(parsed_req *r)
{
	size_t		i;

	free(r->method);
	free(r->path);
	for (i = 0; i < r->nheaders; i++)
	{
		free(r->names[i]);
		free(r->values[i]);
	}
	memset(r, 0, sizeof(*r));
}

/*
 * "METHOD SP path SP HTTP/1.1" then "Name:value" lines (a line starting with
 * SP/HTAB continues the previous value: obs-fold, unfolded to one SP as RFC
 * 9112 prescribes), an empty line, then the body (rest of the file).  The
 * body points into text.
 */
static int
parse_request(const char *text, size_t len, parsed_req *r)
{
	size_t		pos = 0;
	size_t		eol;
	size_t		sp1;
	size_t		sp2;
	size_t		end;

	memset(r, 0, sizeof(*r));
	r->body = (const unsigned char *) "";
	eol = 0;
	while (eol < len && text[eol] != '\n')
		eol++;
	end = eol;
	if (end > 0 && text[end - 1] == '\r')
		end--;
	for (sp1 = 0; sp1 < end && text[sp1] != ' '; sp1++)
		;
	for (sp2 = end; sp2 > sp1 && text[sp2 - 1] != ' '; sp2--)
		;
	if (sp1 >= end || sp2 <= sp1 + 1)
	{
		diagf("malformed request line\n");
		return 0;
	}
	r->method = dup_n(text, sp1);
	r->path = dup_n(text + sp1 + 1, sp2 - 1 - sp1 - 1);
	pos = eol < len ? eol + 1 : len;

	while (pos < len)
	{
		size_t		colon;

		eol = pos;
		while (eol < len && text[eol] != '\n')
			eol++;
		end = eol;
		if (end > pos && text[end - 1] == '\r')
			end--;
		if (end == pos)
		{
			/* blank line: body follows */
			pos = eol < len ? eol + 1 : len;
			r->body = (const unsigned char *) text + pos;
			r->body_len = len - pos;
			return 1;
		}
		if (text[pos] == ' ' || text[pos] == '\t')
		{
			char	   *prev;
			size_t		plen;

			if (r->nheaders == 0)
			{
				diagf("continuation line before any header\n");
				return 0;
			}
			prev = r->values[r->nheaders - 1];
			plen = strlen(prev);
			r->values[r->nheaders - 1] = malloc(plen + 1 + (end - pos) + 1);
			if (r->values[r->nheaders - 1] == NULL)
				exit(2);
			memcpy(r->values[r->nheaders - 1], prev, plen);
			r->values[r->nheaders - 1][plen] = ' ';
			memcpy(r->values[r->nheaders - 1] + plen + 1, text + pos, end - pos);
			r->values[r->nheaders - 1][plen + 1 + end - pos] = '\0';
			free(prev);
		}
		else
		{
			if (r->nheaders == MAX_HEADERS)
			{
				diagf("too many headers\n");
				return 0;
			}
			for (colon = pos; colon < end && text[colon] != ':'; colon++)
				;
			if (colon == end)
			{
				diagf("header line without ':'\n");
				return 0;
			}
			r->names[r->nheaders] = dup_n(text + pos, colon - pos);
			r->values[r->nheaders] = dup_n(text + colon + 1, end - colon - 1);
			r->nheaders++;
		}
		pos = eol < len ? eol + 1 : len;
	}
	return 1;
}

static void
fill_request(parsed_req *p, KmsSigV4Request *req, int normalize)
{
	size_t		i;

	for (i = 0; i < p->nheaders; i++)
	{
		p->headers[i].name = p->names[i];
		p->headers[i].value = p->values[i];
	}
	memset(req, 0, sizeof(*req));
	req->method = p->method;
	req->path = p->path;
	req->headers = p->headers;
	req->nheaders = p->nheaders;
	req->body = p->body;
	req->body_len = p->body_len;
	req->normalize_path = normalize;
}

static const char *
find_header(const parsed_req *p, const char *name)
{
	size_t		i;

	for (i = 0; i < p->nheaders; i++)
		if (strcasecmp(p->names[i], name) == 0)
			return p->values[i];
	return NULL;
}

/* ------------------------------------------------------------------------
 * Minimal JSON value lookup for context.json (flat key search; the keys
 * used are unique in those files).
 * ------------------------------------------------------------------------ */
static const char *
json_value(const char *js, const char *key)
{
	char		pat[128];
	const char *p = js;

	snprintf(pat, sizeof(pat), "\"%s\"", key);
	while ((p = strstr(p, pat)) != NULL)
	{
		const char *q = p + strlen(pat);

		while (isspace((unsigned char) *q))
			q++;
		if (*q == ':')
		{
			q++;
			while (isspace((unsigned char) *q))
				q++;
			return q;
		}
		p = q;
	}
	return NULL;
}

static int
json_string(const char *js, const char *key, char *out, size_t outsz)
{
	const char *p = json_value(js, key);
	size_t		n = 0;

	if (p == NULL || *p != '"' || outsz == 0)
		return 0;
	for (p++; *p && *p != '"'; p++)
	{
		char		c = *p;

		if (c == '\\')
		{
			p++;
			switch (*p)
			{
				case 'n':
					c = '\n';
					break;
				case 't':
					c = '\t';
					break;
				case 'r':
					c = '\r';
					break;
				case '"':
				case '\\':
				case '/':
					c = *p;
					break;
				default:
					return 0;	/* \uXXXX etc.: not needed by the vectors */
			}
		}
		if (n + 1 >= outsz)
			return 0;
		out[n++] = c;
	}
	if (*p != '"')
		return 0;
	out[n] = '\0';
	return 1;
}

static int
json_bool(const char *js, const char *key, int *out)
{
	const char *p = json_value(js, key);

	if (p == NULL)
		return 0;
	if (strncmp(p, "true", 4) == 0)
		*out = 1;
	else if (strncmp(p, "false", 5) == 0)
		*out = 0;
	else
		return 0;
	return 1;
}

static int
json_long(const char *js, const char *key, long *out)
{
	const char *p = json_value(js, key);
	char	   *end;

	if (p == NULL)
		return 0;
	*out = strtol(p, &end, 10);
	return end != p;
}

/* "2015-08-30T12:36:00Z" -> "20150830T123600Z" */
static int
iso_to_amz_date(const char *iso, char out[17])
{
	size_t		n = 0;

	for (; *iso; iso++)
	{
		if (*iso == '-' || *iso == ':')
			continue;
		if (n >= 16)
			return 0;
		out[n++] = *iso;
	}
	out[n] = '\0';
	return n == 16;
}

/* ------------------------------------------------------------------------
 * aws-c-auth layout
 * ------------------------------------------------------------------------ */
static const char *
sig_of_authz(const char *authz)
{
	const char *p = authz != NULL ? strstr(authz, "Signature=") : NULL;

	return p != NULL ? p + 10 : NULL;
}

/* value of the "Authorization:" line of a signed request, or NULL */
static char *
authz_line(const char *signed_req)
{
	const char *p = signed_req;

	while (p != NULL && *p)
	{
		const char *eol = strchr(p, '\n');
		size_t		n = eol ? (size_t) (eol - p) : strlen(p);

		if (n > 14 && strncasecmp(p, "Authorization:", 14) == 0)
		{
			while (n > 14 && p[n - 1] == '\r')
				n--;
			return dup_n(p + 14, n - 14);
		}
		p = eol ? eol + 1 : NULL;
	}
	return NULL;
}

/* is param ("a=b") one of the '&'-separated items of query q? */
static int
query_has(const char *q, const char *param, size_t plen)
{
	const char *p = q;

	while (*p)
	{
		const char *amp = strchr(p, '&');
		size_t		n = amp ? (size_t) (amp - p) : strlen(p);

		if (n == plen && memcmp(p, param, n) == 0)
			return 1;
		if (amp == NULL)
			break;
		p = amp + 1;
	}
	return 0;
}

/*
 * Every param of ours must appear in the vector's presigned request line,
 * and every X-Amz-* param of theirs must appear in ours.
 */
static int
check_presigned_query(const char *ours, const char *signed_req)
{
	const char *q = strchr(signed_req, '?');
	const char *eol = strchr(signed_req, '\n');
	const char *sp;
	char	   *theirs;
	const char *p;
	int			ok = 1;

	if (q == NULL || eol == NULL || q > eol)
	{
		diagf("query-signed-request.txt: no query in request line\n");
		return 0;
	}
	for (sp = eol; sp > q && *sp != ' '; sp--)
		;
	theirs = dup_n(q + 1, (size_t) (sp - q - 1));
	for (p = ours; *p;)
	{
		const char *amp = strchr(p, '&');
		size_t		n = amp ? (size_t) (amp - p) : strlen(p);

		if (!query_has(theirs, p, n))
		{
			diagf("presigned query param not in vector's signed request: %.*s\n",
				  (int) (n > 200 ? 200 : n), p);
			ok = 0;
		}
		if (amp == NULL)
			break;
		p = amp + 1;
	}
	for (p = theirs; *p;)
	{
		const char *amp = strchr(p, '&');
		size_t		n = amp ? (size_t) (amp - p) : strlen(p);

		if (n > 6 && strncmp(p, "X-Amz-", 6) == 0 && !query_has(ours, p, n))
		{
			diagf("vector's presigned param missing from ours: %.*s\n",
				  (int) (n > 200 ? 200 : n), p);
			ok = 0;
		}
		if (amp == NULL)
			break;
		p = amp + 1;
	}
	free(theirs);
	return ok;
}

static void
run_awsc_case(const char *dir, const char *name)
{
	char		tname[512];
	char	   *ctx;
	char	   *reqtxt;
	size_t		reqlen = 0;
	char		akid[128];
	char		secret[256];
	char		token[2048];
	char		region[64];
	char		service[64];
	char		iso[64];
	char		amz_date[17];
	int			normalize = 1;
	int			sign_body = 0;
	int			omit = 0;
	long		expires = 0;
	int			setup_ok = 1;
	int			mode;

	ctx = read_in(dir, "context.json", NULL, 0);
	reqtxt = read_in(dir, "request.txt", &reqlen, 0);
	token[0] = '\0';
	if (ctx == NULL || reqtxt == NULL ||
		!json_string(ctx, "access_key_id", akid, sizeof(akid)) ||
		!json_string(ctx, "secret_access_key", secret, sizeof(secret)) ||
		!json_string(ctx, "region", region, sizeof(region)) ||
		!json_string(ctx, "service", service, sizeof(service)) ||
		!json_string(ctx, "timestamp", iso, sizeof(iso)) ||
		!iso_to_amz_date(iso, amz_date) ||
		!json_bool(ctx, "normalize", &normalize) ||
		!json_bool(ctx, "sign_body", &sign_body) ||
		!json_long(ctx, "expiration_in_seconds", &expires))
	{
		diagf("cannot read context.json/request.txt fields\n");
		setup_ok = 0;
	}
	if (ctx != NULL)
	{
		if (json_value(ctx, "token") != NULL &&
			!json_string(ctx, "token", token, sizeof(token)))
			setup_ok = 0;
		(void) json_bool(ctx, "omit_session_token", &omit);	/* default false */
	}

	for (mode = 0; mode < 2; mode++)
	{
		const char *kind = mode == 0 ? "header" : "query";
		char		fname[64];
		parsed_req	pr;
		KmsSigV4Request req;
		KmsSigV4Credentials cred;
		char		authz[4096];
		char	   *creq = NULL;
		char	   *sts = NULL;
		char	   *query = NULL;
		char	   *exp_creq;
		char	   *exp_sts;
		char	   *exp_sig;
		char	   *exp_sreq;
		size_t		exp_creq_len = 0;
		size_t		exp_sts_len = 0;
		int			ok = setup_ok;
		int			rc;

		snprintf(tname, sizeof(tname), "aws-c-auth v4/%s (%s)", name, kind);
		n_vectors++;
		snprintf(fname, sizeof(fname), "%s-canonical-request.txt", kind);
		exp_creq = read_in(dir, fname, &exp_creq_len, 0);
		snprintf(fname, sizeof(fname), "%s-string-to-sign.txt", kind);
		exp_sts = read_in(dir, fname, &exp_sts_len, 0);
		snprintf(fname, sizeof(fname), "%s-signature.txt", kind);
		exp_sig = read_in(dir, fname, NULL, 1);
		snprintf(fname, sizeof(fname), "%s-signed-request.txt", kind);
		exp_sreq = read_in(dir, fname, NULL, 0);
		if (exp_creq == NULL || exp_sts == NULL || exp_sig == NULL ||
			exp_sreq == NULL)
			ok = 0;

		memset(&pr, 0, sizeof(pr));
		if (ok && !parse_request(reqtxt, reqlen, &pr))
			ok = 0;
		if (ok)
		{
			const char *sig;

			fill_request(&pr, &req, normalize);
			memset(&cred, 0, sizeof(cred));
			cred.access_key_id = akid;
			cred.secret_access_key = secret;
			cred.session_token = token[0] ? token : NULL;
			cred.omit_session_token = omit;
			if (mode == 0)
			{
				req.add_content_sha256 = sign_body;
				rc = kms_sigv4_sign(&req, &cred, amz_date, region, service,
									authz, sizeof(authz), &creq, &sts);
				sig = rc == KMS_SIGV4_OK ? sig_of_authz(authz) : NULL;
			}
			else
			{
				rc = kms_sigv4_presign(&req, &cred, amz_date, region, service,
									   (unsigned int) expires, &query,
									   &creq, &sts);
				sig = query != NULL ? strstr(query, "X-Amz-Signature=") : NULL;
				if (sig != NULL)
					sig += 16;
			}
			if (rc != KMS_SIGV4_OK)
			{
				diagf("signing failed: %d (%s)\n", rc, kms_sigv4_strerror(rc));
				ok = 0;
			}
			else
			{
				char		sigbuf[65];

				ok &= check_text("canonical request", exp_creq, exp_creq_len, creq);
				ok &= check_text("string to sign", exp_sts, exp_sts_len, sts);
				snprintf(sigbuf, sizeof(sigbuf), "%s", sig != NULL ? sig : "");
				ok &= check_str("signature", exp_sig, sigbuf);
				if (mode == 0)
				{
					char	   *al = authz_line(exp_sreq);

					if (al == NULL)
					{
						diagf("no Authorization line in header-signed-request.txt\n");
						ok = 0;
					}
					else
						ok &= check_str("Authorization", al, authz);
					free(al);
				}
				else
					ok &= check_presigned_query(query, exp_sreq);
			}
		}
		report(ok, tname);
		kms_sigv4_free(creq);
		kms_sigv4_free(sts);
		kms_sigv4_free(query);
		free(exp_creq);
		free(exp_sts);
		free(exp_sig);
		free(exp_sreq);
		free_req(&pr);
	}
	free(ctx);
	free(reqtxt);
}

/* ------------------------------------------------------------------------
 * botocore layout (also used for the extra KMS cases)
 * ------------------------------------------------------------------------ */
static char *
parent_dir(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? dup_n(path, (size_t) (slash - path)) : dup_n(".", 1);
}

/* token from post-sts-token/readme.txt: its last non-empty line */
static int
boto_readme_token(const char *case_dir, char *out, size_t outsz)
{
	char	   *pd = parent_dir(case_dir);
	char	   *txt = read_in(pd, "readme.txt", NULL, 1);
	const char *last;

	free(pd);
	if (txt == NULL)
		return 0;
	last = strrchr(txt, '\n');
	last = last ? last + 1 : txt;
	if (strlen(last) < 20 || strlen(last) >= outsz || strchr(last, ' '))
	{
		free(txt);
		return 0;
	}
	strcpy(out, last);
	free(txt);
	return 1;
}

/* kind: 0 = botocore, 1 = extra kms */
static void
run_boto_case(const char *req_path, const char *label_root, int kind)
{
	char		tname[2048];
	char		stem[1024];
	char	   *case_dir;
	const char *name;
	char		fname[2048];
	char	   *reqtxt;
	size_t		reqlen = 0;
	char	   *exp_creq;
	char	   *exp_sts;
	char	   *exp_authz;
	size_t		exp_creq_len = 0;
	size_t		exp_sts_len = 0;
	char		token[2048];
	int			omit = 0;
	char		region[64];
	parsed_req	pr;
	int			ok = 1;

	n_vectors++;
	snprintf(stem, sizeof(stem), "%.*s", (int) (strlen(req_path) - 4), req_path);
	case_dir = parent_dir(stem);
	name = strrchr(stem, '/') ? strrchr(stem, '/') + 1 : stem;
	{
		/* label: path relative to the suite root, e.g. "normalize-path/get-slash/get-slash" */
		const char *rel = strstr(stem, kind == 0 ? "aws4_testsuite/" : EXTRA_DIR "/");

		rel = rel != NULL ? strchr(rel, '/') + 1 : name;
		snprintf(tname, sizeof(tname), "%s%s", label_root, rel);
	}

	reqtxt = read_file(req_path, &reqlen);
	snprintf(fname, sizeof(fname), "%s.creq", name);
	exp_creq = read_in(case_dir, fname, &exp_creq_len, 0);
	snprintf(fname, sizeof(fname), "%s.sts", name);
	exp_sts = read_in(case_dir, fname, &exp_sts_len, 0);
	snprintf(fname, sizeof(fname), "%s.authz", name);
	exp_authz = read_in(case_dir, fname, NULL, 1);
	if (reqtxt == NULL || exp_creq == NULL || exp_sts == NULL || exp_authz == NULL)
		ok = 0;

	token[0] = '\0';
	if (kind == 0 && strcmp(name, "get-vanilla-with-session-token") == 0)
		snprintf(token, sizeof(token), "%s", BOTO_VANILLA_TOKEN);
	else if (kind == 0 && strncmp(name, "post-sts-header-", 16) == 0)
	{
		if (!boto_readme_token(case_dir, token, sizeof(token)))
		{
			diagf("cannot read the session token from post-sts-token/readme.txt\n");
			ok = 0;
		}
		omit = strcmp(name, "post-sts-header-after") == 0;
	}
	else if (kind == 1 && strstr(name, "session-token") != NULL)
		snprintf(token, sizeof(token), "%s", EXTRA_KMS_TOKEN);

	memset(&pr, 0, sizeof(pr));
	if (ok && !parse_request(reqtxt, reqlen, &pr))
		ok = 0;
	if (ok)
	{
		KmsSigV4Request req;
		KmsSigV4Credentials cred;
		char		authz[4096];
		char	   *creq = NULL;
		char	   *sts = NULL;
		int			rc;

		/* extra: region as make.py derives it from the host */
		snprintf(region, sizeof(region), "%s", EX_REGION);
		if (kind == 1)
		{
			const char *host = find_header(&pr, "Host");

			if (host != NULL && strncmp(host, "kms.", 4) == 0 &&
				strchr(host + 4, '.') != NULL)
				snprintf(region, sizeof(region), "%.*s",
						 (int) (strchr(host + 4, '.') - (host + 4)), host + 4);
		}
		fill_request(&pr, &req, 1);
		memset(&cred, 0, sizeof(cred));
		cred.access_key_id = EX_AKID;
		cred.secret_access_key = EX_SECRET;
		cred.session_token = token[0] ? token : NULL;
		cred.omit_session_token = omit;
		rc = kms_sigv4_sign(&req, &cred, EX_DATE, region,
							kind == 1 ? "kms" : EX_SERVICE,
							authz, sizeof(authz), &creq, &sts);
		if (rc != KMS_SIGV4_OK)
		{
			diagf("signing failed: %d (%s)\n", rc, kms_sigv4_strerror(rc));
			ok = 0;
		}
		else
		{
			ok &= check_text("canonical request", exp_creq, exp_creq_len, creq);
			ok &= check_text("string to sign", exp_sts, exp_sts_len, sts);
			ok &= check_str("Authorization", exp_authz, authz);
		}
		kms_sigv4_free(creq);
		kms_sigv4_free(sts);
	}
	report(ok, tname);
	free_req(&pr);
	free(reqtxt);
	free(exp_creq);
	free(exp_sts);
	free(exp_authz);
	free(case_dir);
}

/* ------------------------------------------------------------------------
 * Self-contained checks (independent of the vector directory)
 * ------------------------------------------------------------------------ */
static const KmsSigV4Header vanilla_headers[] = {
	{"Host", "example.amazonaws.com"},
};

static void
vanilla_setup(KmsSigV4Request *req, KmsSigV4Credentials *cred)
{
	memset(req, 0, sizeof(*req));
	req->method = "GET";
	req->path = "/";
	req->headers = vanilla_headers;
	req->nheaders = 1;
	req->normalize_path = 1;
	memset(cred, 0, sizeof(*cred));
	cred->access_key_id = EX_AKID;
	cred->secret_access_key = EX_SECRET;
}

/* line `line` (0-based) of s, into out */
static void
nth_line(const char *s, int line, char *out, size_t outsz)
{
	const char *e;

	while (s != NULL && line-- > 0)
	{
		s = strchr(s, '\n');
		if (s != NULL)
			s++;
	}
	if (s == NULL)
	{
		snprintf(out, outsz, "<none>");
		return;
	}
	e = strchr(s, '\n');
	snprintf(out, outsz, "%.*s", (int) (e ? (size_t) (e - s) : strlen(s)), s);
}

static void
self_tests(void)
{
	KmsSigV4Request req;
	KmsSigV4Credentials cred;
	char		good[512];
	char		authz[512];
	char		hex[65];
	char	   *creq = (char *) 1;
	char	   *sts = (char *) 1;
	char	   *query = (char *) 1;
	int			rc;
	int			ok;

	/* 1. SHA-256 known answers */
	ok = kms_sigv4_hex_sha256("abc", 3, hex) == KMS_SIGV4_OK &&
		check_str("sha256(abc)",
				  "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", hex);
	ok &= kms_sigv4_hex_sha256(NULL, 0, hex) == KMS_SIGV4_OK &&
		check_str("sha256()",
				  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", hex);
	report(ok, "self: kms_sigv4_hex_sha256 known answers");

	/* 2. get-vanilla reproduced without vector files (x-amz-date implicit) */
	vanilla_setup(&req, &cred);
	rc = kms_sigv4_sign(&req, &cred, EX_DATE, EX_REGION, EX_SERVICE,
						good, sizeof(good), NULL, NULL);
	ok = rc == KMS_SIGV4_OK &&
		check_str("Authorization",
				  "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
				  "SignedHeaders=host;x-amz-date, "
				  "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
				  good);
	report(ok, "self: get-vanilla built in code");

	/* 3. negative: wrong secret must change the signature */
	cred.secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEz";
	rc = kms_sigv4_sign(&req, &cred, EX_DATE, EX_REGION, EX_SERVICE,
						authz, sizeof(authz), NULL, NULL);
	ok = rc == KMS_SIGV4_OK && strcmp(authz, good) != 0 &&
		strncmp(authz, good, strlen(good) - 64) == 0;
	if (!ok)
		diagf("rc=%d authz=%s\n", rc, authz);
	report(ok, "self: wrong secret gives a different signature");

	/* 4. negative: other body / region / date each change the signature */
	vanilla_setup(&req, &cred);
	req.body = (const unsigned char *) "x";
	req.body_len = 1;
	rc = kms_sigv4_sign(&req, &cred, EX_DATE, EX_REGION, EX_SERVICE,
						authz, sizeof(authz), NULL, NULL);
	ok = rc == KMS_SIGV4_OK && strcmp(authz, good) != 0;
	vanilla_setup(&req, &cred);
	rc = kms_sigv4_sign(&req, &cred, EX_DATE, "eu-west-1", EX_SERVICE,
						authz, sizeof(authz), NULL, NULL);
	ok &= rc == KMS_SIGV4_OK && strcmp(sig_of_authz(authz), sig_of_authz(good)) != 0;
	rc = kms_sigv4_sign(&req, &cred, "20150830T123601Z", EX_REGION, EX_SERVICE,
						authz, sizeof(authz), NULL, NULL);
	ok &= rc == KMS_SIGV4_OK && strcmp(authz, good) != 0 &&
		strcmp(sig_of_authz(authz), sig_of_authz(good)) != 0;
	report(ok, "self: body, region and date are covered by the signature");

	/* 5. error codes; outputs are cleared on failure */
	vanilla_setup(&req, &cred);
	ok = 1;
	rc = kms_sigv4_sign(NULL, &cred, EX_DATE, EX_REGION, EX_SERVICE,
						authz, sizeof(authz), &creq, &sts);
	ok &= rc == KMS_SIGV4_ERR_ARG && creq == NULL && sts == NULL;
	strcpy(authz, "junk");
	rc = kms_sigv4_sign(&req, &cred, EX_DATE, EX_REGION, EX_SERVICE,
						authz, 100, &creq, &sts);	/* needs ~140 bytes */
	ok &= rc == KMS_SIGV4_ERR_BUFFER && authz[0] == '\0' && creq == NULL && sts == NULL;
	rc = kms_sigv4_sign(&req, &cred, "2015-08-30T12:36:00Z", EX_REGION, EX_SERVICE,
						authz, sizeof(authz), NULL, NULL);
	ok &= rc == KMS_SIGV4_ERR_DATE;
	rc = kms_sigv4_sign(&req, &cred, EX_DATE, "us east", EX_SERVICE,
						authz, sizeof(authz), NULL, NULL);
	ok &= rc == KMS_SIGV4_ERR_ARG;
	cred.secret_access_key = "";
	rc = kms_sigv4_sign(&req, &cred, EX_DATE, EX_REGION, EX_SERVICE,
						authz, sizeof(authz), NULL, NULL);
	ok &= rc == KMS_SIGV4_ERR_ARG;
	cred.secret_access_key = EX_SECRET;
	{
		static const KmsSigV4Header crlf[] = {
			{"Host", "example.amazonaws.com"}, {"X-Evil", "a\r\nX-Injected: 1"}};
		static const KmsSigV4Header badname[] = {
			{"Host", "example.amazonaws.com"}, {"Bad Name", "v"}};
		static const KmsSigV4Header baddate[] = {
			{"Host", "example.amazonaws.com"}, {"X-Amz-Date", "20150830T000000Z"}};
		static const KmsSigV4Header gooddate[] = {
			{"X-AMZ-DATE", " " EX_DATE " "}, {"Host", "example.amazonaws.com"}};

		req.headers = crlf;
		req.nheaders = 2;
		rc = kms_sigv4_sign(&req, &cred, EX_DATE, EX_REGION, EX_SERVICE,
							authz, sizeof(authz), NULL, NULL);
		ok &= rc == KMS_SIGV4_ERR_HEADER;
		req.headers = badname;
		rc = kms_sigv4_sign(&req, &cred, EX_DATE, EX_REGION, EX_SERVICE,
							authz, sizeof(authz), NULL, NULL);
		ok &= rc == KMS_SIGV4_ERR_HEADER;
		req.headers = baddate;
		rc = kms_sigv4_sign(&req, &cred, EX_DATE, EX_REGION, EX_SERVICE,
							authz, sizeof(authz), NULL, NULL);
		ok &= rc == KMS_SIGV4_ERR_DATE;
		req.headers = gooddate;		/* explicit X-Amz-Date: same signature */
		rc = kms_sigv4_sign(&req, &cred, EX_DATE, EX_REGION, EX_SERVICE,
							authz, sizeof(authz), NULL, NULL);
		ok &= rc == KMS_SIGV4_OK && strcmp(authz, good) == 0;
	}
	vanilla_setup(&req, &cred);
	rc = kms_sigv4_presign(&req, &cred, EX_DATE, EX_REGION, EX_SERVICE, 0,
						   &query, &creq, &sts);
	ok &= rc == KMS_SIGV4_ERR_ARG && query == NULL && creq == NULL && sts == NULL;
	ok &= strcmp(kms_sigv4_strerror(KMS_SIGV4_ERR_HEADER), kms_sigv4_strerror(12345)) != 0;
	if (!ok)
		diagf("last rc=%d\n", rc);
	report(ok, "self: error codes (ARG, BUFFER, DATE, HEADER) and cleared outputs");

	/* 6. documented canonicalisation beyond the vectors */
	{
		static const struct
		{
			const char *path;
			const char *query;
			int			normalize;
			const char *uri;
			const char *cquery;
		}			cases[] = {
			{"/a/./b/../c/", NULL, 1, "/a/c/", ""},
			{"/a/b/.", NULL, 1, "/a/b/", ""},
			{"/../..", NULL, 1, "/", ""},
			{"", NULL, 1, "/", ""},
			{"/a%20b", NULL, 1, "/a%2520b", ""},	/* non-S3: double encoding */
			{"/a%20b c", NULL, 0, "/a%20b%20c", ""},	/* S3: single */
			{"/x?b=2&&a", NULL, 1, "/x", "a=&b=2"},
			{"/?a=%41+", "c=%2f&a=0", 1, "/", "a=0&a=A%2B&c=%2F"},
		};
		size_t		i;
		char		got[256];

		ok = 1;
		vanilla_setup(&req, &cred);
		for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		{
			req.path = cases[i].path;
			req.query = cases[i].query;
			req.normalize_path = cases[i].normalize;
			rc = kms_sigv4_sign(&req, &cred, EX_DATE, EX_REGION, EX_SERVICE,
								authz, sizeof(authz), &creq, NULL);
			if (rc != KMS_SIGV4_OK)
			{
				diagf("path %s: rc=%d\n", cases[i].path, rc);
				ok = 0;
				continue;
			}
			nth_line(creq, 1, got, sizeof(got));
			ok &= check_str(cases[i].path, cases[i].uri, got);
			nth_line(creq, 2, got, sizeof(got));
			ok &= check_str(cases[i].path, cases[i].cquery, got);
			kms_sigv4_free(creq);
			creq = NULL;
		}
		report(ok, "self: path normalisation/encoding and query canonicalisation");
	}
}

/* ------------------------------------------------------------------------ */
int
main(int argc, char **argv)
{
	const char *root = NULL;
	long		expect = -1;
	int			i;
	char	   *d;
	strlist		l;
	size_t		k;

	for (i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--expect") == 0 && i + 1 < argc)
			expect = strtol(argv[++i], NULL, 10);
		else if (argv[i][0] == '-')
		{
			fprintf(stderr, "usage: %s [--expect N] [VECTOR_DIR]\n", argv[0]);
			return 2;
		}
		else
			root = argv[i];
	}
	if (root == NULL)
		root = getenv("KMS_SIGV4_VECTORS");
	if (root == NULL || root[0] == '\0')
		root = "../shared/vectors/sigv4";
	printf("# SigV4 vectors: %s\n", root);

	self_tests();

	/* aws-c-auth: one directory per case, each signed in two modes */
	memset(&l, 0, sizeof(l));
	d = path_join(root, AWSC_DIR);
	list_dir(d, 1, "", 0, &l);
	if (l.n == 0)
	{
		diagf("no cases found under %s\n", d);
		report(0, "aws-c-auth vector directory present and non-empty");
	}
	for (k = 0; k < l.n; k++)
		run_awsc_case(l.v[k], strrchr(l.v[k], '/') + 1);
	sl_free(&l);
	free(d);

	/* botocore: every *.req below aws4_testsuite (incl. subdirectories) */
	d = path_join(root, BOTO_DIR);
	list_dir(d, 0, ".req", 1, &l);
	if (l.n == 0)
	{
		diagf("no .req files found under %s\n", d);
		report(0, "botocore vector directory present and non-empty");
	}
	for (k = 0; k < l.n; k++)
		run_boto_case(l.v[k], "botocore ", 0);
	sl_free(&l);
	free(d);

	/* extra KMS cases (botocore-generated, not official) */
	d = path_join(root, EXTRA_DIR);
	list_dir(d, 0, ".req", 0, &l);
	if (l.n == 0)
	{
		diagf("no .req files found under %s\n", d);
		report(0, "extra-kms vector directory present and non-empty");
	}
	for (k = 0; k < l.n; k++)
		run_boto_case(l.v[k], "extra-kms ", 1);
	sl_free(&l);
	free(d);

	if (n_vectors == 0)
		diagf("no vectors found at all under %s\n", root);
	if (expect >= 0)
		diagf("found %d vectors, expected %ld\n", n_vectors, expect);
	report(n_vectors > 0 && (expect < 0 || n_vectors == expect),
		   "vector count");

	printf("1..%d\n", n_tests);
	printf("%d passed, %d failed\n", n_tests - n_failed, n_failed);
	return (n_failed > 0 || n_vectors == 0) ? 1 : 0;
}
