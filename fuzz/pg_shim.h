/*-------------------------------------------------------------------------
 * pg_shim.h
 *	  What the fuzz harnesses need from the backend, provided outside it.
 *
 * kms_pg's parsers are linked into standalone libFuzzer programs together
 * with PostgreSQL's frontend libpgcommon/libpgport.  pg_shim.c supplies
 * the rest:
 *	- palloc and friends on an "arena" that behaves like a memory context:
 *	  allocations the code under test forgets to pfree are released by
 *	  shim_arena_reset() after each input (as a context reset would in a
 *	  backend), so LeakSanitizer only sees real leaks of the harness;
 *	- a secret watch: while a secret is registered, every block that is
 *	  pfree'd, repalloc'd away or still live at reset is scanned for it,
 *	  because freed backend memory keeps its bytes until reused;
 *	- ereport/elog: an ERROR longjmps to the harness when it is inside
 *	  SHIM_TRY (the PG_TRY analogue), and aborts otherwise, so an
 *	  unexpected ERROR is a fuzzer finding.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_FUZZ_PG_SHIM_H
#define KMS_FUZZ_PG_SHIM_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Set by SHIM_TRY; an ERROR jumps here instead of aborting. */
extern sigjmp_buf *shim_error_jmp;
/* Message of the last ERROR caught (for harness diagnostics). */
extern char shim_error_message[512];

/*
 * The PG_TRY analogue (not nestable; locals changed inside must be
 * volatile):
 *	SHIM_TRY() { code } SHIM_CATCH() { on ERROR } SHIM_END_TRY();
 */
#define SHIM_TRY() \
	do { sigjmp_buf shim_jb_; \
		if (sigsetjmp(shim_jb_, 0) == 0) { shim_error_jmp = &shim_jb_;
#define SHIM_CATCH() \
			shim_error_jmp = NULL; } else { shim_error_jmp = NULL;
#define SHIM_END_TRY() \
		} } while (0)

/* Free every live arena block (a memory-context reset). */
extern void shim_arena_reset(void);

/* Number of live arena blocks. */
extern size_t shim_arena_live(void);

/*
 * Register a secret (copied; at most 8, each 12..4096 bytes).  While
 * registered, finding any 12-byte aligned chunk of it in memory that is
 * freed, reallocated away, or scanned by shim_check_live() aborts with
 * what as the reason.
 */
extern void shim_secret_add(const void *secret, size_t len);
extern void shim_secret_clear(void);

/* Scan live blocks for registered secrets; aborts naming where. */
extern void shim_check_live(const char *where);

/*
 * True when KMS_FUZZ_MASK_KNOWN=1: the harnesses then step over inputs
 * that hit an already reported bug (README.md, "Findings"), so a long
 * run can look for new ones.  Replays and CI runs never set it.
 */
extern bool shim_mask_known(void);

/* Abort with a message (a harness invariant failed). */
extern void shim_fail(const char *fmt,...) __attribute__((noreturn, format(printf, 1, 2)));

#define CHECK(cond) \
	do { if (!(cond)) shim_fail("%s:%d: invariant failed: %s", __FILE__, __LINE__, #cond); } while (0)

#endif							/* KMS_FUZZ_PG_SHIM_H */
