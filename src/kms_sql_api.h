/*-------------------------------------------------------------------------
 * kms_sql_api.h
 *	  The per-value seal and open of kms_sql_api.c, for other modules that
 *	  encrypt in C (the protected-column trigger, kms_columns.c).
 *-------------------------------------------------------------------------
 */
#ifndef KMS_SQL_API_H
#define KMS_SQL_API_H

#include "kms_context.h"
#include "fmgr.h"

/*
 * Seal len bytes under ctx with a DEK of key (resolved) from the current
 * provider.  The caller's role must hold one of privmask (KMS_PRIV_*,
 * kms_key_grants.h) on the key with a condition admitting ctx; fn_oid
 * (or InvalidOid) names the function in the denial's log line.
 */
extern bytea *kms_seal(const char *plain, Size len, const KmsContext *ctx, const char *key,
					   int privmask, Oid fn_oid);

/* The same in a given format (1 or 2; 0: kms_pg.format). */
extern bytea *kms_seal_format(const char *plain, Size len, const KmsContext *ctx, const char *key,
							  int privmask, Oid fn_oid, int format);

/*
 * Open a ciphertext under ctx; the plaintext is wiped with its memory
 * context.  With auth_fail_ok, NULL when it does not open under ctx.  The
 * key privilege is checked as for kms_seal, before any DEK is looked up.
 */
extern bytea *kms_open_ext(bytea *ct, const KmsContext *ctx, bool auth_fail_ok,
						   int privmask, Oid fn_oid);

/* SQL: kms_decrypt_pairs(ciphertext bytea, VARIADIC context "any"), for the views. */
extern Datum kms_decrypt_pairs(PG_FUNCTION_ARGS);

#endif							/* KMS_SQL_API_H */
