/*-------------------------------------------------------------------------
 * kms_local_catalog.h
 *	  The local provider's keyring as a WAL-logged catalog of the
 *	  extension (tables kms_local_key and kms_local_key_version), with the
 *	  key material of every version wrapped under the master key.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_LOCAL_CATALOG_H
#define KMS_LOCAL_CATALOG_H

#include "kms_pg.h"
#include "nodes/pg_list.h"
#include "utils/timestamp.h"

typedef struct KmsLocalKeyVersion
{
	int			version;
	TimestampTz created;
	uint8		material[KMS_DEK_LEN];
} KmsLocalKeyVersion;

typedef struct KmsLocalKey
{
	char		key_id[37];
	char	   *alias;			/* NULL when none */
	char	   *description;	/* NULL when none */
	bool		enabled;
	bool		pending_deletion;
	TimestampTz deletion_date;	/* when pending_deletion */
	TimestampTz created;
	int			nversions;
	KmsLocalKeyVersion *versions;	/* ascending by version */
} KmsLocalKey;

/* Does this database's kms_pg have the keyring catalog (version 1.1 on)? */
extern bool kms_catalog_present(void);

/*
 * The extension's table name, in the extension's schema; InvalidOid when
 * kms_pg (or that table) is not in this database.
 */
extern Oid	kms_extension_table(const char *name);

/*
 * Load one key by id or alias/name, with every version's material
 * unwrapped (in wipe-on-reset memory) when with_material; NULL when the
 * catalog has no such key.
 */
extern KmsLocalKey *kms_catalog_load_key(const char *key, bool with_material);

/* Every key without material (versions[] holds numbers and dates only). */
extern List *kms_catalog_list_keys(void);

/* Store a new key with its versions, wrapping the material under the master key. */
extern void kms_catalog_insert_key(const KmsLocalKey *k);

/* Add a new version with fresh random material; returns its number. */
extern int	kms_catalog_add_version(const char *key_id);

extern void kms_catalog_set_enabled(const char *key_id, bool enabled);

/* Set (when has_date) or clear the scheduled deletion date; setting disables. */
extern void kms_catalog_set_deletion(const char *key_id, bool has_date, TimestampTz date);

/* Delete keys whose deletion date has passed; returns how many. */
extern int	kms_catalog_purge(void);

/* Rewrap every version row not under the current master key; returns how many. */
extern int	kms_catalog_rewrap_all(void);

/* Refuse keyring changes on a standby (25006). */
extern void kms_catalog_require_writable(void);

/* Citus coordinator: serialise keyring changes and copies until commit. */
extern void kms_catalog_lock_changes(void);

/* Name of the schema holding the catalog (kms_pg's schema). */
extern char *kms_catalog_schema(void);

/* Citus (kms_citus.c): every row as jsonb text, read as the tables' owner. */
extern char *kms_catalog_snapshot_json(void);

/*
 * Citus worker: replace every row with a snapshot's, checking that this
 * node's master key unwraps each version and forgetting the cached DEKs of
 * keys no longer usable; returns the number of keys.
 */
extern int	kms_catalog_replace_from_json(const char *state);

#endif							/* KMS_LOCAL_CATALOG_H */
