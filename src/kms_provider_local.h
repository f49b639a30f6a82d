/*-------------------------------------------------------------------------
 * kms_provider_local.h
 *	  The embedded local key provider: a keyring file of 256-bit root keys
 *	  with ids, aliases, states and versions, managed in SQL.
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

#endif							/* KMS_PROVIDER_LOCAL_H */
