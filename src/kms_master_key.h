/*-------------------------------------------------------------------------
 * kms_master_key.h
 *	  The local provider's master key: one 256-bit key outside the
 *	  database that wraps the key material stored in the keyring catalog.
 *	  Read from a file (kms_pg.master_key_file) or printed by a command
 *	  (kms_pg.master_key_command), run without a shell, with a timeout.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_MASTER_KEY_H
#define KMS_MASTER_KEY_H

#include "kms_pg.h"

#define KMS_MASTER_KEY_LEN	32
#define KMS_MASTER_FP_LEN	16		/* hex characters of a fingerprint */

typedef struct KmsMasterKey
{
	uint8		key[KMS_MASTER_KEY_LEN];
	char		fingerprint[KMS_MASTER_FP_LEN + 1];
} KmsMasterKey;

/* GUCs (kms_guc.c defines them) */
extern char *kms_guc_master_key_file;
extern char *kms_guc_master_key_command;
extern char *kms_guc_previous_master_key_file;
extern char *kms_guc_previous_master_key_command;
extern int	kms_guc_master_key_command_timeout_ms;

/* The configured master key; ERROR when none is configured or it cannot be read. */
extern const KmsMasterKey *kms_master_key_current(void);

/* The previous master key (during a rotation), or NULL when none is configured. */
extern const KmsMasterKey *kms_master_key_previous(void);

/*
 * The configured key (current or previous) whose fingerprint is fp;
 * ERROR (wrong master key) when neither matches.  what names the catalog
 * row for the message.
 */
extern const KmsMasterKey *kms_master_key_for(const char *fp, const char *what);

/* Fingerprint of a key: hex of the first 8 bytes of SHA-256(label || key). */
extern void kms_master_key_fingerprint(const uint8 *key, char *out);

#endif							/* KMS_MASTER_KEY_H */
