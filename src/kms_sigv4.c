/*
 * kms_sigv4.c - AWS Signature Version 4 signing (see kms_sigv4.h for the API
 * and the canonicalisation rules).
 *
 * Deliberately free of PostgreSQL headers; written in the declarations-first
 * style so it also builds warning-free under PGXS CFLAGS.
 */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE			/* explicit_bzero() */
#endif

#include "kms_sigv4.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#define SIGV4_ALGORITHM "AWS4-HMAC-SHA256"
#define SIGV4_TERMINATOR "aws4_request"

/* ------------------------------------------------------------------------
 * Growable string buffer.  Growth never uses realloc(), so no copy of the
 * contents is left behind unwiped; sb_free() wipes the whole capacity.
 * Errors are sticky (b->err) so call sites can append freely and check once.
 * ------------------------------------------------------------------------ */
typedef struct sbuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
	int			err;
} sbuf;

static void
sb_init(sbuf *b)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->err = KMS_SIGV4_OK;
}

static void
sb_free(sbuf *b)
{
	if (b->data != NULL)
	{
		explicit_bzero(b->data, b->cap);
		free(b->data);
	}
	sb_init(b);
}

static int
sb_reserve(sbuf *b, size_t extra)
{
	size_t		need;
	size_t		newcap;
	char	   *p;

	if (b->err != KMS_SIGV4_OK)
		return b->err;
	if (extra > SIZE_MAX - b->len - 1)
		return b->err = KMS_SIGV4_ERR_NOMEM;
	need = b->len + extra + 1;
	if (need <= b->cap)
		return KMS_SIGV4_OK;
	newcap = b->cap < 128 ? 128 : b->cap;
	while (newcap < need)
	{
		if (newcap > SIZE_MAX / 2)
		{
			newcap = need;
			break;
		}
		newcap *= 2;
	}
	p = malloc(newcap);
	if (p == NULL)
		return b->err = KMS_SIGV4_ERR_NOMEM;
	if (b->data != NULL)
	{
		memcpy(p, b->data, b->len);
		explicit_bzero(b->data, b->cap);
		free(b->data);
	}
	p[b->len] = '\0';
	b->data = p;
	b->cap = newcap;
	return KMS_SIGV4_OK;
}

static void
sb_append(sbuf *b, const char *s, size_t n)
{
	if (sb_reserve(b, n) != KMS_SIGV4_OK)
		return;
	if (n > 0)
		memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void
sb_puts(sbuf *b, const char *s)
{
	sb_append(b, s, strlen(s));
}

static void
sb_putc(sbuf *b, char c)
{
	sb_append(b, &c, 1);
}

/* Hand the (NUL-terminated) contents over to the caller; b is reset. */
static char *
sb_steal(sbuf *b)
{
	char	   *p;

	if (sb_reserve(b, 0) != KMS_SIGV4_OK)
		return NULL;
	p = b->data;
	sb_init(b);
	return p;
}

/* ------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------ */
static const char hexdig_lower[] = "0123456789abcdef";
static const char hexdig_upper[] = "0123456789ABCDEF";

static void
to_hex(const unsigned char *in, size_t n, char *out)
{
	size_t		i;

	for (i = 0; i < n; i++)
	{
		out[2 * i] = hexdig_lower[in[i] >> 4];
		out[2 * i + 1] = hexdig_lower[in[i] & 0x0f];
	}
	out[2 * n] = '\0';
}

static int
hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int
is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static int
is_alnum(unsigned char c)
{
	return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* RFC 3986 unreserved characters */
static int
is_unreserved(unsigned char c)
{
	return is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/* RFC 9110 token characters (header names, method) */
static int
is_tchar(unsigned char c)
{
	return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int
is_token(const char *s)
{
	if (s == NULL || *s == '\0')
		return 0;
	for (; *s; s++)
		if (!is_tchar((unsigned char) *s))
			return 0;
	return 1;
}

static unsigned char
to_lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char) (c - 'A' + 'a') : c;
}

static int
strcase_eq(const char *a, const char *b)
{
	while (*a && *b)
	{
		if (to_lower((unsigned char) *a) != to_lower((unsigned char) *b))
			return 0;
		a++;
		b++;
	}
	return *a == *b;
}

static int
is_hws(unsigned char c)
{
	return c == ' ' || c == '\t';
}

/* region / service: a non-empty [A-Za-z0-9._-]+ */
static int
is_scope_part(const char *s)
{
	if (s == NULL || *s == '\0')
		return 0;
	for (; *s; s++)
		if (!is_alnum((unsigned char) *s) && *s != '-' && *s != '_' && *s != '.')
			return 0;
	return 1;
}

/* access key id: non-empty, printable, no space, '/', ',' or '=' */
static int
is_access_key_id(const char *s)
{
	if (s == NULL || *s == '\0')
		return 0;
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;

		if (c <= 0x20 || c >= 0x7f || c == '/' || c == ',' || c == '=')
			return 0;
	}
	return 1;
}

/* "YYYYMMDDTHHMMSSZ" */
static int
is_amz_date(const char *s)
{
	int			i;

	if (s == NULL || strlen(s) != 16)
		return 0;
	for (i = 0; i < 16; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (i == 8)
		{
			if (c != 'T')
				return 0;
		}
		else if (i == 15)
		{
			if (c != 'Z')
				return 0;
		}
		else if (!is_digit(c))
			return 0;
	}
	return 1;
}

/*
 * Percent-encode s[0..n) into b: unreserved bytes verbatim, everything else
 * as %XX (uppercase).  keep_slash keeps '/', keep_pct keeps valid %XX
 * triplets unchanged (S3-style single encoding of an already-encoded path).
 */
static void
sb_uri_encode(sbuf *b, const char *s, size_t n, int keep_slash, int keep_pct)
{
	size_t		i;

	for (i = 0; i < n; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (is_unreserved(c) || (keep_slash && c == '/'))
			sb_putc(b, (char) c);
		else if (keep_pct && c == '%' && i + 2 < n &&
				 hexval((unsigned char) s[i + 1]) >= 0 &&
				 hexval((unsigned char) s[i + 2]) >= 0)
		{
			sb_append(b, s + i, 3);
			i += 2;
		}
		else
		{
			char		enc[3];

			enc[0] = '%';
			enc[1] = hexdig_upper[c >> 4];
			enc[2] = hexdig_upper[c & 0x0f];
			sb_append(b, enc, 3);
		}
	}
}

/* Percent-decode s[0..n) into b (invalid escapes are kept literally). */
static void
sb_uri_decode(sbuf *b, const char *s, size_t n)
{
	size_t		i;

	for (i = 0; i < n; i++)
	{
		int			hi,
					lo;

		if (s[i] == '%' && i + 2 < n &&
			(hi = hexval((unsigned char) s[i + 1])) >= 0 &&
			(lo = hexval((unsigned char) s[i + 2])) >= 0)
		{
			sb_putc(b, (char) ((hi << 4) | lo));
			i += 2;
		}
		else
			sb_putc(b, s[i]);
	}
}

/* ------------------------------------------------------------------------
 * Crypto
 * ------------------------------------------------------------------------ */
static int
sha256_raw(const void *data, size_t len, unsigned char out[SHA256_DIGEST_LENGTH])
{
	unsigned int outlen = 0;
	static const unsigned char empty = 0;

	if (data == NULL)
	{
		if (len != 0)
			return KMS_SIGV4_ERR_ARG;
		data = &empty;
	}
	if (EVP_Digest(data, len, out, &outlen, EVP_sha256(), NULL) != 1 ||
		outlen != SHA256_DIGEST_LENGTH)
		return KMS_SIGV4_ERR_CRYPTO;
	return KMS_SIGV4_OK;
}

static int
hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
			unsigned char out[SHA256_DIGEST_LENGTH])
{
	unsigned int outlen = 0;

	if (keylen > INT_MAX)
		return KMS_SIGV4_ERR_ARG;
	if (HMAC(EVP_sha256(), key, (int) keylen, (const unsigned char *) msg,
			 msglen, out, &outlen) == NULL ||
		outlen != SHA256_DIGEST_LENGTH)
		return KMS_SIGV4_ERR_CRYPTO;
	return KMS_SIGV4_OK;
}

/*
 * signature = hex(HMAC(kSigning, sts)) with
 * kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service),
 *                 "aws4_request").  Every key is wiped before returning.
 */
static int
compute_signature(const char *secret, const char *date8, const char *region,
				  const char *service, const char *sts, size_t sts_len,
				  char sig_hex[KMS_SIGV4_HEX_SHA256_LEN + 1])
{
	size_t		slen = strlen(secret);
	unsigned char *ksecret;
	unsigned char k1[SHA256_DIGEST_LENGTH];
	unsigned char k2[SHA256_DIGEST_LENGTH];
	unsigned char sig[SHA256_DIGEST_LENGTH];
	int			rc;

	if (slen > SIZE_MAX - 4)
		return KMS_SIGV4_ERR_ARG;
	ksecret = malloc(slen + 4);
	if (ksecret == NULL)
		return KMS_SIGV4_ERR_NOMEM;
	memcpy(ksecret, "AWS4", 4);
	memcpy(ksecret + 4, secret, slen);

	rc = hmac_sha256(ksecret, slen + 4, date8, 8, k1);	/* kDate */
	if (rc == KMS_SIGV4_OK)
		rc = hmac_sha256(k1, sizeof(k1), region, strlen(region), k2);	/* kRegion */
	if (rc == KMS_SIGV4_OK)
		rc = hmac_sha256(k2, sizeof(k2), service, strlen(service), k1);	/* kService */
	if (rc == KMS_SIGV4_OK)
		rc = hmac_sha256(k1, sizeof(k1), SIGV4_TERMINATOR,
						 strlen(SIGV4_TERMINATOR), k2);	/* kSigning */
	if (rc == KMS_SIGV4_OK)
		rc = hmac_sha256(k2, sizeof(k2), sts, sts_len, sig);
	if (rc == KMS_SIGV4_OK)
		to_hex(sig, sizeof(sig), sig_hex);

	explicit_bzero(ksecret, slen + 4);
	free(ksecret);
	explicit_bzero(k1, sizeof(k1));
	explicit_bzero(k2, sizeof(k2));
	explicit_bzero(sig, sizeof(sig));
	return rc;
}

/* ------------------------------------------------------------------------
 * Canonical URI
 * ------------------------------------------------------------------------ */
typedef struct seg
{
	const char *p;
	size_t		n;
} seg;

static void
canonical_uri(sbuf *out, const char *path, size_t n, int normalize)
{
	seg		   *segs;
	size_t		nsegs = 0;
	size_t		maxsegs = 1;
	size_t		i;
	size_t		start;
	int			trailing_slash = 0;

	if (n == 0)
	{
		sb_putc(out, '/');
		return;
	}
	if (!normalize)
	{
		sb_uri_encode(out, path, n, 1, 1);
		return;
	}

	for (i = 0; i < n; i++)
		if (path[i] == '/')
			maxsegs++;
	segs = malloc(maxsegs * sizeof(seg));
	if (segs == NULL)
	{
		out->err = KMS_SIGV4_ERR_NOMEM;
		return;
	}

	/* RFC 3986 remove_dot_segments, with empty segments dropped */
	start = 0;
	for (i = 0; i <= n; i++)
	{
		if (i < n && path[i] != '/')
			continue;
		if (i > start)
		{
			const char *s = path + start;
			size_t		len = i - start;

			if (len == 1 && s[0] == '.')
				trailing_slash = 1;
			else if (len == 2 && s[0] == '.' && s[1] == '.')
			{
				if (nsegs > 0)
					nsegs--;
				trailing_slash = 1;
			}
			else
			{
				segs[nsegs].p = s;
				segs[nsegs].n = len;
				nsegs++;
				trailing_slash = 0;
			}
		}
		if (i < n)
			trailing_slash = 1; /* provisionally: path ends in '/' */
		start = i + 1;
	}

	if (nsegs == 0)
		sb_putc(out, '/');
	for (i = 0; i < nsegs; i++)
	{
		sb_putc(out, '/');
		sb_uri_encode(out, segs[i].p, segs[i].n, 0, 0);
	}
	if (nsegs > 0 && trailing_slash)
		sb_putc(out, '/');
	free(segs);
}

/* ------------------------------------------------------------------------
 * Canonical query string
 * ------------------------------------------------------------------------ */
typedef struct qparam
{
	char	   *name;			/* encoded */
	char	   *value;			/* encoded */
} qparam;

typedef struct qlist
{
	qparam	   *items;
	size_t		n;
	size_t		cap;
	int			err;
} qlist;

static void
ql_free(qlist *q)
{
	size_t		i;

	for (i = 0; i < q->n; i++)
	{
		kms_sigv4_free(q->items[i].name);
		kms_sigv4_free(q->items[i].value);
	}
	free(q->items);
	q->items = NULL;
	q->n = q->cap = 0;
}

/* encode (optionally after percent-decoding) s[0..n) into a new string */
static char *
encode_component(const char *s, size_t n, int decode, int *err)
{
	sbuf		tmp;
	sbuf		enc;
	char	   *res;

	sb_init(&tmp);
	sb_init(&enc);
	if (decode)
	{
		sb_uri_decode(&tmp, s, n);
		if (sb_reserve(&tmp, 0) == KMS_SIGV4_OK)
			sb_uri_encode(&enc, tmp.data, tmp.len, 0, 0);
		else
			enc.err = tmp.err;
	}
	else
		sb_uri_encode(&enc, s, n, 0, 0);
	res = sb_steal(&enc);
	if (res == NULL)
		*err = enc.err != KMS_SIGV4_OK ? enc.err : KMS_SIGV4_ERR_NOMEM;
	sb_free(&tmp);
	sb_free(&enc);
	return res;
}

static void
ql_add(qlist *q, const char *name, size_t nlen, const char *value,
	   size_t vlen, int decode)
{
	char	   *en;
	char	   *ev;

	if (q->err != KMS_SIGV4_OK)
		return;
	if (q->n == q->cap)
	{
		size_t		newcap = q->cap ? q->cap * 2 : 16;
		qparam	   *p;

		if (newcap > SIZE_MAX / sizeof(qparam))
		{
			q->err = KMS_SIGV4_ERR_NOMEM;
			return;
		}
		p = malloc(newcap * sizeof(qparam));
		if (p == NULL)
		{
			q->err = KMS_SIGV4_ERR_NOMEM;
			return;
		}
		if (q->n > 0)
			memcpy(p, q->items, q->n * sizeof(qparam));
		free(q->items);
		q->items = p;
		q->cap = newcap;
	}
	en = encode_component(name, nlen, decode, &q->err);
	ev = encode_component(value, vlen, decode, &q->err);
	if (en == NULL || ev == NULL)
	{
		kms_sigv4_free(en);
		kms_sigv4_free(ev);
		return;
	}
	q->items[q->n].name = en;
	q->items[q->n].value = ev;
	q->n++;
}

/* add every '&'-separated "name[=value]" of a raw query string */
static void
ql_parse(qlist *q, const char *s, size_t n)
{
	size_t		i = 0;

	while (i < n)
	{
		size_t		j = i;
		size_t		eq;

		while (j < n && s[j] != '&')
			j++;
		if (j > i)
		{
			eq = i;
			while (eq < j && s[eq] != '=')
				eq++;
			if (eq < j)
				ql_add(q, s + i, eq - i, s + eq + 1, j - eq - 1, 1);
			else
				ql_add(q, s + i, j - i, "", 0, 1);
		}
		i = j + 1;
	}
}

static int
qparam_cmp(const void *a, const void *b)
{
	const qparam *x = a;
	const qparam *y = b;
	int			c = strcmp(x->name, y->name);

	return c != 0 ? c : strcmp(x->value, y->value);
}

static void
ql_emit(sbuf *out, const qlist *q)
{
	size_t		i;

	for (i = 0; i < q->n; i++)
	{
		if (i > 0)
			sb_putc(out, '&');
		sb_puts(out, q->items[i].name);
		sb_putc(out, '=');
		sb_puts(out, q->items[i].value);
	}
}

/* ------------------------------------------------------------------------
 * Canonical headers
 * ------------------------------------------------------------------------ */
typedef struct hentry
{
	char	   *name;			/* lowercased copy */
	const char *value;			/* raw, borrowed */
	size_t		order;
} hentry;

static int
hentry_cmp(const void *a, const void *b)
{
	const hentry *x = a;
	const hentry *y = b;
	int			c = strcmp(x->name, y->name);

	if (c != 0)
		return c;
	return (x->order > y->order) - (x->order < y->order);
}

/* trim SP/HTAB at both ends, collapse inner runs into one SP */
static void
sb_header_value(sbuf *out, const char *v)
{
	int			pending_space = 0;
	int			any = 0;

	for (; *v; v++)
	{
		unsigned char c = (unsigned char) *v;

		if (is_hws(c))
		{
			pending_space = any;
			continue;
		}
		if (pending_space)
			sb_putc(out, ' ');
		pending_space = 0;
		sb_putc(out, (char) c);
		any = 1;
	}
}

static int
header_value_ok(const char *v)
{
	return v != NULL && strpbrk(v, "\r\n") == NULL;
}

/* whether header value v, once trimmed, equals want */
static int
header_value_equals(const char *v, const char *want)
{
	sbuf		b;
	int			eq;

	sb_init(&b);
	sb_header_value(&b, v);
	if (sb_reserve(&b, 0) != KMS_SIGV4_OK)
		eq = -1;
	else
		eq = strcmp(b.data, want) == 0;
	sb_free(&b);
	return eq;
}

/*
 * Build the canonical header block ("name:value\n"...) into canon and the
 * signed header list ("a;b;c") into signed_list.  extra/nextra are the
 * implicit headers added by the signer (already known to be absent).
 */
static int
build_headers(const KmsSigV4Request *req, const KmsSigV4Header *extra,
			  size_t nextra, sbuf *canon, sbuf *signed_list)
{
	size_t		total;
	size_t		i;
	size_t		k;
	hentry	   *ents;
	int			rc = KMS_SIGV4_OK;

	if (req->nheaders > SIZE_MAX / 2 - nextra)
		return KMS_SIGV4_ERR_ARG;
	total = req->nheaders + nextra;
	if (total == 0)
		return KMS_SIGV4_ERR_ARG;	/* at least Host is required */
	ents = calloc(total, sizeof(hentry));
	if (ents == NULL)
		return KMS_SIGV4_ERR_NOMEM;

	for (i = 0; i < total && rc == KMS_SIGV4_OK; i++)
	{
		const KmsSigV4Header *h = i < req->nheaders ? &req->headers[i]
			: &extra[i - req->nheaders];
		size_t		nlen;
		size_t		j;

		if (!is_token(h->name))
		{
			rc = KMS_SIGV4_ERR_HEADER;
			break;
		}
		if (!header_value_ok(h->value))
		{
			rc = KMS_SIGV4_ERR_HEADER;
			break;
		}
		nlen = strlen(h->name);
		ents[i].name = malloc(nlen + 1);
		if (ents[i].name == NULL)
		{
			rc = KMS_SIGV4_ERR_NOMEM;
			break;
		}
		for (j = 0; j < nlen; j++)
			ents[i].name[j] = (char) to_lower((unsigned char) h->name[j]);
		ents[i].name[nlen] = '\0';
		ents[i].value = h->value;
		ents[i].order = i;
	}

	if (rc == KMS_SIGV4_OK)
	{
		qsort(ents, total, sizeof(hentry), hentry_cmp);
		for (i = 0; i < total; i = k)
		{
			if (i > 0)
				sb_putc(signed_list, ';');
			sb_puts(signed_list, ents[i].name);
			sb_puts(canon, ents[i].name);
			sb_putc(canon, ':');
			for (k = i; k < total && strcmp(ents[k].name, ents[i].name) == 0; k++)
			{
				if (k > i)
					sb_putc(canon, ',');
				sb_header_value(canon, ents[k].value);
			}
			sb_putc(canon, '\n');
		}
		if (canon->err != KMS_SIGV4_OK)
			rc = canon->err;
		else if (signed_list->err != KMS_SIGV4_OK)
			rc = signed_list->err;
	}

	for (i = 0; i < total; i++)
		free(ents[i].name);
	free(ents);
	return rc;
}

static int
has_header(const KmsSigV4Request *req, const char *lname)
{
	size_t		i;

	for (i = 0; i < req->nheaders; i++)
		if (req->headers[i].name != NULL && strcase_eq(req->headers[i].name, lname))
			return 1;
	return 0;
}

/* ------------------------------------------------------------------------
 * Core
 * ------------------------------------------------------------------------ */
typedef struct sign_result
{
	sbuf		creq;
	sbuf		sts;
	sbuf		signed_list;
	sbuf		credential;		/* "<akid>/<date>/<region>/<service>/aws4_request" */
	char		signature[KMS_SIGV4_HEX_SHA256_LEN + 1];
} sign_result;

static void
result_init(sign_result *r)
{
	sb_init(&r->creq);
	sb_init(&r->sts);
	sb_init(&r->signed_list);
	sb_init(&r->credential);
	r->signature[0] = '\0';
}

static void
result_free(sign_result *r)
{
	sb_free(&r->creq);
	sb_free(&r->sts);
	sb_free(&r->signed_list);
	sb_free(&r->credential);
	explicit_bzero(r->signature, sizeof(r->signature));
}

static int
sigv4_core(const KmsSigV4Request *req, const KmsSigV4Credentials *cred,
		   const char *amz_date, const char *region, const char *service,
		   int presign, unsigned int expires, sign_result *r)
{
	const char *path;
	size_t		path_len;
	const char *qmark;
	const char *token;
	char		date8[9];
	char		payload_hex[KMS_SIGV4_HEX_SHA256_LEN + 1];
	const char *payload;
	char		sts_hash_hex[KMS_SIGV4_HEX_SHA256_LEN + 1];
	unsigned char digest[SHA256_DIGEST_LENGTH];
	KmsSigV4Header extra[3];
	size_t		nextra = 0;
	sbuf		canon_headers;
	qlist		q;
	size_t		i;
	int			rc;

	/* ---- argument validation ---- */
	if (req == NULL || cred == NULL || region == NULL || service == NULL)
		return KMS_SIGV4_ERR_ARG;
	if (!is_token(req->method) || !is_scope_part(region) ||
		!is_scope_part(service) || !is_access_key_id(cred->access_key_id) ||
		cred->secret_access_key == NULL || cred->secret_access_key[0] == '\0')
		return KMS_SIGV4_ERR_ARG;
	if (req->nheaders > 0 && req->headers == NULL)
		return KMS_SIGV4_ERR_ARG;
	if (req->body == NULL && req->body_len != 0)
		return KMS_SIGV4_ERR_ARG;
	if (!is_amz_date(amz_date))
		return KMS_SIGV4_ERR_DATE;
	if (presign && (expires < 1 || expires > 604800))
		return KMS_SIGV4_ERR_ARG;
	for (i = 0; i < req->nheaders; i++)
	{
		if (!is_token(req->headers[i].name) ||
			!header_value_ok(req->headers[i].value))
			return KMS_SIGV4_ERR_HEADER;
		if (strcase_eq(req->headers[i].name, "x-amz-date") &&
			header_value_equals(req->headers[i].value, amz_date) != 1)
			return KMS_SIGV4_ERR_DATE;
	}
	path = req->path != NULL ? req->path : "";
	if (path[0] != '\0' && path[0] != '/')
		return KMS_SIGV4_ERR_ARG;
	token = (cred->session_token != NULL && cred->session_token[0] != '\0')
		? cred->session_token : NULL;
	if (token != NULL && !header_value_ok(token))
		return KMS_SIGV4_ERR_HEADER;

	memcpy(date8, amz_date, 8);
	date8[8] = '\0';

	/* ---- payload hash ---- */
	if (req->payload_hash != NULL)
	{
		if (req->payload_hash[0] == '\0' || !header_value_ok(req->payload_hash))
			return KMS_SIGV4_ERR_ARG;
		payload = req->payload_hash;
	}
	else
	{
		rc = kms_sigv4_hex_sha256(req->body, req->body_len, payload_hex);
		if (rc != KMS_SIGV4_OK)
			return rc;
		payload = payload_hex;
	}

	/* ---- credential scope ---- */
	sb_puts(&r->credential, cred->access_key_id);
	sb_putc(&r->credential, '/');
	sb_puts(&r->credential, date8);
	sb_putc(&r->credential, '/');
	sb_puts(&r->credential, region);
	sb_putc(&r->credential, '/');
	sb_puts(&r->credential, service);
	sb_putc(&r->credential, '/');
	sb_puts(&r->credential, SIGV4_TERMINATOR);
	if (r->credential.err != KMS_SIGV4_OK)
		return r->credential.err;

	/* ---- implicit headers (header mode only) ---- */
	if (!presign)
	{
		if (!has_header(req, "x-amz-date"))
		{
			extra[nextra].name = "x-amz-date";
			extra[nextra].value = amz_date;
			nextra++;
		}
		if (token != NULL && !cred->omit_session_token &&
			!has_header(req, "x-amz-security-token"))
		{
			extra[nextra].name = "x-amz-security-token";
			extra[nextra].value = token;
			nextra++;
		}
		if (req->add_content_sha256 && !has_header(req, "x-amz-content-sha256"))
		{
			extra[nextra].name = "x-amz-content-sha256";
			extra[nextra].value = payload;
			nextra++;
		}
	}

	sb_init(&canon_headers);
	rc = build_headers(req, extra, nextra, &canon_headers, &r->signed_list);
	if (rc != KMS_SIGV4_OK)
	{
		sb_free(&canon_headers);
		return rc;
	}

	/* ---- query parameters ---- */
	memset(&q, 0, sizeof(q));
	q.err = KMS_SIGV4_OK;
	qmark = strchr(path, '?');
	path_len = qmark != NULL ? (size_t) (qmark - path) : strlen(path);
	if (qmark != NULL)
		ql_parse(&q, qmark + 1, strlen(qmark + 1));
	if (req->query != NULL)
		ql_parse(&q, req->query, strlen(req->query));
	if (presign)
	{
		char		exp[16];

		snprintf(exp, sizeof(exp), "%u", expires);
		ql_add(&q, "X-Amz-Algorithm", 15, SIGV4_ALGORITHM,
			   strlen(SIGV4_ALGORITHM), 0);
		ql_add(&q, "X-Amz-Credential", 16, r->credential.data,
			   r->credential.len, 0);
		ql_add(&q, "X-Amz-Date", 10, amz_date, strlen(amz_date), 0);
		ql_add(&q, "X-Amz-Expires", 13, exp, strlen(exp), 0);
		if (token != NULL && !cred->omit_session_token)
			ql_add(&q, "X-Amz-Security-Token", 20, token, strlen(token), 0);
		ql_add(&q, "X-Amz-SignedHeaders", 19, r->signed_list.data,
			   r->signed_list.len, 0);
	}
	if (q.err == KMS_SIGV4_OK && q.n > 1)
		qsort(q.items, q.n, sizeof(qparam), qparam_cmp);

	/* ---- canonical request ---- */
	sb_puts(&r->creq, req->method);
	sb_putc(&r->creq, '\n');
	canonical_uri(&r->creq, path, path_len, req->normalize_path);
	sb_putc(&r->creq, '\n');
	ql_emit(&r->creq, &q);
	sb_putc(&r->creq, '\n');
	if (canon_headers.err == KMS_SIGV4_OK)
		sb_append(&r->creq, canon_headers.data, canon_headers.len);
	sb_putc(&r->creq, '\n');
	if (r->signed_list.err == KMS_SIGV4_OK)
		sb_append(&r->creq, r->signed_list.data, r->signed_list.len);
	sb_putc(&r->creq, '\n');
	sb_puts(&r->creq, payload);

	rc = q.err;
	ql_free(&q);
	sb_free(&canon_headers);
	if (rc == KMS_SIGV4_OK)
		rc = r->creq.err;
	if (rc != KMS_SIGV4_OK)
		return rc;

	/* ---- string to sign ---- */
	rc = sha256_raw(r->creq.data, r->creq.len, digest);
	if (rc != KMS_SIGV4_OK)
		return rc;
	to_hex(digest, sizeof(digest), sts_hash_hex);
	sb_puts(&r->sts, SIGV4_ALGORITHM "\n");
	sb_puts(&r->sts, amz_date);
	sb_putc(&r->sts, '\n');
	sb_puts(&r->sts, date8);
	sb_putc(&r->sts, '/');
	sb_puts(&r->sts, region);
	sb_putc(&r->sts, '/');
	sb_puts(&r->sts, service);
	sb_puts(&r->sts, "/" SIGV4_TERMINATOR "\n");
	sb_puts(&r->sts, sts_hash_hex);
	if (r->sts.err != KMS_SIGV4_OK)
		return r->sts.err;

	/* ---- signature ---- */
	return compute_signature(cred->secret_access_key, date8, region, service,
							 r->sts.data, r->sts.len, r->signature);
}

static void
clear_outputs(char **creq_out, char **sts_out)
{
	if (creq_out != NULL)
		*creq_out = NULL;
	if (sts_out != NULL)
		*sts_out = NULL;
}

/* hand over the optional debug outputs; on failure both are NULL */
static int
give_outputs(sign_result *r, char **creq_out, char **sts_out)
{
	char	   *c = NULL;
	char	   *s = NULL;

	if (creq_out != NULL && (c = sb_steal(&r->creq)) == NULL)
		return KMS_SIGV4_ERR_NOMEM;
	if (sts_out != NULL && (s = sb_steal(&r->sts)) == NULL)
	{
		kms_sigv4_free(c);
		return KMS_SIGV4_ERR_NOMEM;
	}
	if (creq_out != NULL)
		*creq_out = c;
	if (sts_out != NULL)
		*sts_out = s;
	return KMS_SIGV4_OK;
}

/* ------------------------------------------------------------------------
 * Public API
 * ------------------------------------------------------------------------ */
int
kms_sigv4_sign(const KmsSigV4Request *req, const KmsSigV4Credentials *cred,
			   const char *amz_date, const char *region, const char *service,
			   char *authz_out, size_t authz_size,
			   char **canonical_request_out, char **string_to_sign_out)
{
	sign_result r;
	sbuf		authz;
	int			rc;

	clear_outputs(canonical_request_out, string_to_sign_out);
	if (authz_out == NULL || authz_size == 0)
		return KMS_SIGV4_ERR_ARG;
	authz_out[0] = '\0';

	result_init(&r);
	sb_init(&authz);
	rc = sigv4_core(req, cred, amz_date, region, service, 0, 0, &r);
	if (rc == KMS_SIGV4_OK)
	{
		sb_puts(&authz, SIGV4_ALGORITHM " Credential=");
		sb_append(&authz, r.credential.data, r.credential.len);
		sb_puts(&authz, ", SignedHeaders=");
		sb_append(&authz, r.signed_list.data, r.signed_list.len);
		sb_puts(&authz, ", Signature=");
		sb_puts(&authz, r.signature);
		rc = authz.err;
	}
	if (rc == KMS_SIGV4_OK && authz.len >= authz_size)
		rc = KMS_SIGV4_ERR_BUFFER;
	if (rc == KMS_SIGV4_OK)
		rc = give_outputs(&r, canonical_request_out, string_to_sign_out);
	if (rc == KMS_SIGV4_OK)
		memcpy(authz_out, authz.data, authz.len + 1);

	sb_free(&authz);
	result_free(&r);
	return rc;
}

int
kms_sigv4_presign(const KmsSigV4Request *req, const KmsSigV4Credentials *cred,
				  const char *amz_date, const char *region,
				  const char *service, unsigned int expires_seconds,
				  char **query_out,
				  char **canonical_request_out, char **string_to_sign_out)
{
	sign_result r;
	sbuf		qs;
	int			rc;

	clear_outputs(canonical_request_out, string_to_sign_out);
	if (query_out == NULL)
		return KMS_SIGV4_ERR_ARG;
	*query_out = NULL;

	result_init(&r);
	sb_init(&qs);
	rc = sigv4_core(req, cred, amz_date, region, service, 1, expires_seconds,
					&r);
	if (rc == KMS_SIGV4_OK)
	{
		const char *token = (cred->session_token != NULL &&
							 cred->session_token[0] != '\0')
			? cred->session_token : NULL;
		char		exp[16];

		snprintf(exp, sizeof(exp), "%u", expires_seconds);
		sb_puts(&qs, "X-Amz-Algorithm=" SIGV4_ALGORITHM "&X-Amz-Credential=");
		sb_uri_encode(&qs, r.credential.data, r.credential.len, 0, 0);
		sb_puts(&qs, "&X-Amz-Date=");
		sb_puts(&qs, amz_date);
		sb_puts(&qs, "&X-Amz-Expires=");
		sb_puts(&qs, exp);
		if (token != NULL && !cred->omit_session_token)
		{
			sb_puts(&qs, "&X-Amz-Security-Token=");
			sb_uri_encode(&qs, token, strlen(token), 0, 0);
		}
		sb_puts(&qs, "&X-Amz-SignedHeaders=");
		sb_uri_encode(&qs, r.signed_list.data, r.signed_list.len, 0, 0);
		sb_puts(&qs, "&X-Amz-Signature=");
		sb_puts(&qs, r.signature);
		if (token != NULL && cred->omit_session_token)
		{
			sb_puts(&qs, "&X-Amz-Security-Token=");
			sb_uri_encode(&qs, token, strlen(token), 0, 0);
		}
		rc = qs.err;
	}
	if (rc == KMS_SIGV4_OK)
		rc = give_outputs(&r, canonical_request_out, string_to_sign_out);
	if (rc == KMS_SIGV4_OK)
	{
		*query_out = sb_steal(&qs);
		if (*query_out == NULL)
		{
			rc = KMS_SIGV4_ERR_NOMEM;
			if (canonical_request_out != NULL)
			{
				kms_sigv4_free(*canonical_request_out);
				*canonical_request_out = NULL;
			}
			if (string_to_sign_out != NULL)
			{
				kms_sigv4_free(*string_to_sign_out);
				*string_to_sign_out = NULL;
			}
		}
	}

	sb_free(&qs);
	result_free(&r);
	return rc;
}

int
kms_sigv4_hex_sha256(const void *data, size_t len,
					 char out[KMS_SIGV4_HEX_SHA256_LEN + 1])
{
	unsigned char digest[SHA256_DIGEST_LENGTH];
	int			rc;

	if (out == NULL)
		return KMS_SIGV4_ERR_ARG;
	out[0] = '\0';
	rc = sha256_raw(data, len, digest);
	if (rc == KMS_SIGV4_OK)
		to_hex(digest, sizeof(digest), out);
	return rc;
}

void
kms_sigv4_free(char *s)
{
	if (s == NULL)
		return;
	explicit_bzero(s, strlen(s));
	free(s);
}

const char *
kms_sigv4_strerror(int code)
{
	switch (code)
	{
		case KMS_SIGV4_OK:
			return "success";
		case KMS_SIGV4_ERR_ARG:
			return "invalid SigV4 signing argument";
		case KMS_SIGV4_ERR_NOMEM:
			return "out of memory while signing request";
		case KMS_SIGV4_ERR_CRYPTO:
			return "OpenSSL digest/HMAC failure while signing request";
		case KMS_SIGV4_ERR_BUFFER:
			return "SigV4 output buffer too small";
		case KMS_SIGV4_ERR_DATE:
			return "invalid or inconsistent X-Amz-Date";
		case KMS_SIGV4_ERR_HEADER:
			return "invalid header name or value (CR/LF) for SigV4 signing";
		default:
			return "unknown SigV4 error";
	}
}
