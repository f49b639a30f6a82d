/*-------------------------------------------------------------------------
 * kms_key_grants.h
 *	  Per-key privileges (encrypt, decrypt, rewrap, admin) with conditions
 *	  on the encryption context, read from the kms_key_grant table and
 *	  checked in the backend wherever a data key is used.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_KEY_GRANTS_H
#define KMS_KEY_GRANTS_H

#include "kms_context.h"
#include "kms_pg.h"

#include "fmgr.h"

#define KMS_PRIV_ENCRYPT	0x01
#define KMS_PRIV_DECRYPT	0x02
#define KMS_PRIV_REWRAP		0x04
#define KMS_PRIV_ADMIN		0x08
#define KMS_PRIV_ALL		0x0F

/*
 * Raise 42501 unless the current user holds one of the privileges in
 * privmask on (provider, key_id) with a condition that admits ctx.
 * fn_oid names the SQL function in the denial's log line.  Superusers
 * pass; so does everybody while the grants table does not exist (before
 * ALTER EXTENSION kms_pg UPDATE).
 */
extern void kms_key_check(uint8 provider, const char *key_id, int key_id_len,
						  int privmask, const KmsContext *ctx, Oid fn_oid);

/* The same for a built header (kms_envelope.h layout): its provider and key. */
extern void kms_key_check_header(const uint8 *header, int privmask,
								 const KmsContext *ctx, Oid fn_oid);

/* admin on a local key named by id, alias or ARN form; returns its id. */
extern char *kms_key_check_local_admin(const char *key, Oid fn_oid);

/* A new local key: its creator gets every privilege, PUBLIC encrypt. */
extern void kms_key_grants_seed_new(uint8 provider, const char *key_id);

/*
 * Hooks: DROP ROLE and DROP OWNED BY delete the role's rows in the current
 * database, ALTER ROLE ... RENAME renames them.
 */
extern void kms_key_grants_init(void);

#endif							/* KMS_KEY_GRANTS_H */
