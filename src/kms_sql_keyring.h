/*-------------------------------------------------------------------------
 * kms_sql_keyring.h
 *	  SQL functions of the keyring catalog: deletion schedule, master key
 *	  rotation and information, import of the 1.0 keyring file.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_SQL_KEYRING_H
#define KMS_SQL_KEYRING_H

#include "kms_pg.h"

/*
 * Forget the cached DEKs of a local key (recorded under key, an id or an
 * alias) again when the current transaction commits: a key disabled now
 * must not stay usable through a DEK another backend cached between the
 * change and its commit.
 */
extern void kms_keyring_forget_at_commit(const char *key);

#endif							/* KMS_SQL_KEYRING_H */
