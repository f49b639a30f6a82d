/*-------------------------------------------------------------------------
 * kms_provider_local.h
 *	  The embedded local key provider: 256-bit root keys with ids, aliases,
 *	  states and versions, managed in SQL and kept in the keyring catalog
 *	  (kms_local_catalog.h) under the master key (kms_master_key.h); the
 *	  1.0 keyring file is read until ALTER EXTENSION UPDATE imports it.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_PROVIDER_LOCAL_H
#define KMS_PROVIDER_LOCAL_H

#include "kms_provider.h"
#include "nodes/pg_list.h"
#include "utils/timestamp.h"

typedef struct KmsLocalKeyInfo
{
	char		key_id[37];
	char	   *alias;			/* NULL when none */
	char	   *description;	/* NULL when none */
	bool		enabled;
	bool		pending_deletion;
	TimestampTz deletion_date;	/* when pending_deletion */
	TimestampTz created;
	int			current_version;
	int			nversions;
} KmsLocalKeyInfo;

/* Create a key (alias may be NULL); returns the new key id (palloc'd). */
extern char *kms_local_create_key(const char *alias, const char *description);

/* Enable or disable a key given by id, alias or ARN form. */
extern void kms_local_set_enabled(const char *key, bool enabled);

/* Add a new key version used for new data keys; returns its number. */
extern int	kms_local_rotate_key(const char *key);

/* Snapshot of all keys, for the kms_keys view. */
extern List *kms_local_list_keys(void);

/* The key id of a key given by id, alias or ARN form (ERROR when unknown). */
extern char *kms_local_key_id(const char *key);

/* Schedule deletion pending_days ahead (the caller checked 7..30); disables the key. */
extern TimestampTz kms_local_schedule_deletion(const char *key, int pending_days,
											   const char **key_id_out);
extern void kms_local_cancel_deletion(const char *key);

/* Delete keys whose deletion date has passed; returns how many. */
extern int	kms_local_purge_deleted(void);

/* Rewrap the catalog under the current master key; returns rows rewrapped. */
extern int	kms_local_rotate_master_key(void);

/* Copy the 1.0 keyring file's keys into the catalog; returns how many. */
extern int	kms_local_import_keyring_file(void);

#endif							/* KMS_PROVIDER_LOCAL_H */
