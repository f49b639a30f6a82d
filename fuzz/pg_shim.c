/*-------------------------------------------------------------------------
 * pg_shim.c
 *	  Memory-context and ereport stand-ins for running kms_pg's parsers
 *	  outside the backend (see pg_shim.h for the contract).
 *
 * PostgreSQL's frontend libpgcommon provides palloc in fe_memutils.o as
 * plain malloc; this file defines every symbol of that object the linked
 * code uses, so fe_memutils.o is never pulled from the archive and all
 * allocations go through the arena below.  Each block carries a header
 * (magic, size, list links) so a pfree of a foreign pointer, a double
 * pfree, or a pfree of an interior pointer is caught at once.
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE				/* memmem() */
#include "postgres_fe.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_shim.h"

/* Backend elevels (utils/elog.h) without including backend headers. */
#define SHIM_ERROR		21

#define BLOCK_MAGIC		UINT64_C(0x6b6d735f70616c6c)	/* "kms_pall" */
#define FREED_MAGIC		UINT64_C(0x6b6d735f66726565)	/* "kms_free" */
#define MAX_ALLOC		((size_t) 0x3fffffff)	/* MaxAllocSize */

typedef struct Block
{
	uint64_t	magic;
	size_t		size;
	struct Block *prev;
	struct Block *next;
} Block;

/* user data follows the header, kept 16-byte aligned */
#define HDR_SIZE	((sizeof(Block) + 15) & ~(size_t) 15)

static Block arena = {0, 0, &arena, &arena};
static size_t arena_count = 0;

sigjmp_buf *shim_error_jmp = NULL;
char		shim_error_message[512];

/* ---- failures ---- */

void
shim_fail(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fputs("kms_pg fuzz: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	abort();
}

bool
shim_mask_known(void)
{
	static int	mask = -1;

	if (mask < 0)
	{
		const char *v = getenv("KMS_FUZZ_MASK_KNOWN");

		mask = v != NULL && strcmp(v, "1") == 0;
	}
	return mask == 1;
}

/* ---- secret watch ---- */

#define MAX_SECRETS		8
#define CHUNK			12

static struct
{
	unsigned char *data;
	size_t		len;
}			secrets[MAX_SECRETS];
static int	nsecrets = 0;

void
shim_secret_add(const void *secret, size_t len)
{
	if (len < CHUNK || len > 4096 || nsecrets == MAX_SECRETS)
		return;
	secrets[nsecrets].data = malloc(len);
	if (secrets[nsecrets].data == NULL)
		shim_fail("out of memory");
	memcpy(secrets[nsecrets].data, secret, len);
	secrets[nsecrets].len = len;
	nsecrets++;
}

void
shim_secret_clear(void)
{
	for (int i = 0; i < nsecrets; i++)
		free(secrets[i].data);
	nsecrets = 0;
}

/*
 * Does the region hold a recognisable piece of a secret?  Any leftover of
 * 2*CHUNK-1 or more consecutive secret bytes contains one of the aligned
 * CHUNK-byte pieces tested here.
 */
static void
scan_region(const unsigned char *p, size_t n, const char *what)
{
	for (int s = 0; s < nsecrets; s++)
	{
		for (size_t off = 0; off + CHUNK <= secrets[s].len; off += CHUNK)
		{
			if (memmem(p, n, secrets[s].data + off, CHUNK) != NULL)
				shim_fail("secret bytes (registered secret %d, offset %zu) left in %s memory",
						  s, off, what);
		}
	}
}

/* ---- arena ---- */

static void *
arena_alloc(size_t size, bool zero)
{
	Block	   *b;

	if (size > MAX_ALLOC)
	{
		/* the backend raises "invalid memory alloc request size" */
		snprintf(shim_error_message, sizeof(shim_error_message),
				 "invalid memory alloc request size %zu", size);
		if (shim_error_jmp)
			siglongjmp(*shim_error_jmp, 1);
		shim_fail("%s", shim_error_message);
	}
	b = zero ? calloc(1, HDR_SIZE + size) : malloc(HDR_SIZE + size);
	if (b == NULL)
		shim_fail("out of memory for %zu bytes", size);
	b->magic = BLOCK_MAGIC;
	b->size = size;
	b->next = arena.next;
	b->prev = &arena;
	arena.next->prev = b;
	arena.next = b;
	arena_count++;
	return (char *) b + HDR_SIZE;
}

static Block *
block_of(void *p, const char *op)
{
	Block	   *b;

	if (p == NULL)
		shim_fail("%s(NULL)", op);
	b = (Block *) ((char *) p - HDR_SIZE);
	if (b->magic == FREED_MAGIC)
		shim_fail("%s of a pointer already freed", op);
	if (b->magic != BLOCK_MAGIC)
		shim_fail("%s of a pointer that palloc did not return", op);
	return b;
}

static void
arena_release(Block *b, const char *what)
{
	if (nsecrets > 0)
		scan_region((unsigned char *) b + HDR_SIZE, b->size, what);
	b->prev->next = b->next;
	b->next->prev = b->prev;
	b->magic = FREED_MAGIC;
	arena_count--;
	free(b);
}

void
shim_arena_reset(void)
{
	while (arena.next != &arena)
		arena_release(arena.next, "memory-context-reset");
}

size_t
shim_arena_live(void)
{
	return arena_count;
}

void
shim_check_live(const char *where)
{
	for (Block *b = arena.next; b != &arena; b = b->next)
		scan_region((unsigned char *) b + HDR_SIZE, b->size, where);
}

/* ---- fe_memutils.h / palloc.h API ---- */

void *
palloc(Size size)
{
	return arena_alloc(size, false);
}

void *
palloc0(Size size)
{
	return arena_alloc(size, true);
}

void *
palloc_extended(Size size, int flags)
{
	return arena_alloc(size, (flags & MCXT_ALLOC_ZERO) != 0);
}

void
pfree(void *pointer)
{
	arena_release(block_of(pointer, "pfree"), "pfree'd");
}

void *
repalloc(void *pointer, Size size)
{
	Block	   *old = block_of(pointer, "repalloc");
	void	   *p = arena_alloc(size, false);

	memcpy(p, pointer, Min(old->size, size));
	/* the backend may move the chunk and leave the old bytes behind */
	arena_release(old, "repalloc'd-away");
	return p;
}

char *
pstrdup(const char *in)
{
	size_t		n = strlen(in);
	char	   *p = arena_alloc(n + 1, false);

	memcpy(p, in, n + 1);
	return p;
}

char *
pnstrdup(const char *in, Size size)
{
	size_t		n = strnlen(in, size);
	char	   *p = arena_alloc(n + 1, false);

	memcpy(p, in, n);
	p[n] = '\0';
	return p;
}

void *
pg_malloc(size_t size)
{
	return arena_alloc(size, false);
}

void *
pg_malloc0(size_t size)
{
	return arena_alloc(size, true);
}

void *
pg_malloc_extended(size_t size, int flags)
{
	return arena_alloc(size, (flags & MCXT_ALLOC_ZERO) != 0);
}

void *
pg_realloc(void *pointer, size_t size)
{
	return pointer ? repalloc(pointer, size) : arena_alloc(size, false);
}

char *
pg_strdup(const char *in)
{
	return pstrdup(in);
}

void
pg_free(void *pointer)
{
	if (pointer)
		pfree(pointer);
}

/* ---- utils/elog.h, for code compiled as backend code ---- */

static int	cur_elevel;

bool		errstart(int elevel, const char *domain);
bool		errstart_cold(int elevel, const char *domain);
void		errfinish(const char *filename, int lineno, const char *funcname);
int			errcode(int sqlerrcode);
int			errmsg(const char *fmt,...);
int			errmsg_internal(const char *fmt,...);
int			errdetail(const char *fmt,...);
int			errdetail_internal(const char *fmt,...);
int			errhint(const char *fmt,...);
void		ExceptionalCondition(const char *conditionName, const char *errorType,
								 const char *fileName, int lineNumber);

bool
errstart(int elevel, const char *domain)
{
	/* only ERROR and above matter here; lower levels are dropped */
	if (elevel < SHIM_ERROR)
		return false;
	cur_elevel = elevel;
	shim_error_message[0] = '\0';
	return true;
}

bool
errstart_cold(int elevel, const char *domain)
{
	return errstart(elevel, domain);
}

int
errcode(int sqlerrcode)
{
	return 0;
}

#define SHIM_FORMAT_MESSAGE(fmt) \
	do { \
		va_list ap; \
		size_t used = strlen(shim_error_message); \
		va_start(ap, fmt); \
		if (used + 2 < sizeof(shim_error_message)) \
		{ \
			if (used > 0) { shim_error_message[used++] = ' '; shim_error_message[used] = '\0'; } \
			vsnprintf(shim_error_message + used, sizeof(shim_error_message) - used, fmt, ap); \
		} \
		va_end(ap); \
	} while (0)

int
errmsg(const char *fmt,...)
{
	SHIM_FORMAT_MESSAGE(fmt);
	return 0;
}

int
errmsg_internal(const char *fmt,...)
{
	SHIM_FORMAT_MESSAGE(fmt);
	return 0;
}

int
errdetail(const char *fmt,...)
{
	SHIM_FORMAT_MESSAGE(fmt);
	return 0;
}

int
errdetail_internal(const char *fmt,...)
{
	SHIM_FORMAT_MESSAGE(fmt);
	return 0;
}

int
errhint(const char *fmt,...)
{
	SHIM_FORMAT_MESSAGE(fmt);
	return 0;
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	if (cur_elevel < SHIM_ERROR)
		return;
	if (shim_error_jmp)
		siglongjmp(*shim_error_jmp, 1);
	shim_fail("unexpected ERROR at %s:%d (%s): %s", filename, lineno,
			  funcname ? funcname : "?", shim_error_message);
}

void
ExceptionalCondition(const char *conditionName, const char *errorType,
					 const char *fileName, int lineNumber)
{
	shim_fail("Assert(%s) failed at %s:%d", conditionName, fileName, lineNumber);
}
