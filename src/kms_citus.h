/*-------------------------------------------------------------------------
 * kms_citus.h
 *	  The local keyring on a Citus cluster (docs/citus.md): the coordinator
 *	  copies its keyring catalog to every worker after each change, workers
 *	  refuse changes of their own.  Dormant unless the citus extension is
 *	  installed in the current database; no link-time dependency on Citus.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_CITUS_H
#define KMS_CITUS_H

#include "postgres.h"

/* This node's part in a Citus cluster (KMS_CITUS_NONE without the citus extension). */
typedef enum KmsCitusRole
{
	KMS_CITUS_NONE,				/* no citus extension in this database */
	KMS_CITUS_COORDINATOR,		/* citus_is_coordinator() */
	KMS_CITUS_WORKER,			/* a node with a group id other than 0 */
	KMS_CITUS_SINGLE			/* citus installed, no cluster yet */
} KmsCitusRole;

extern KmsCitusRole kms_citus_role(void);

/* Whether the citus extension is installed in this database (no SPI). */
extern bool kms_citus_installed(void);

/*
 * The DEK registry of format 2 as a Citus reference table
 * (kms_citus_distribute_registry(), docs/citus.md).  True when relid is a
 * Citus reference table; *placement is then this node's placement of it
 * (its one shard), InvalidOid when this node has none.  False without the
 * citus extension and for any other table.
 */
extern bool kms_citus_reference_placement(Oid relid, Oid *placement);

/* On a coordinator: whether the cluster has a node other than the coordinator. */
extern bool kms_citus_has_workers(void);

/*
 * On a coordinator: run cmd on every worker (run_command_on_workers, each
 * in its own transaction); an ERROR naming the first worker that failed
 * and what was being done (words that precede "Citus worker host:port").
 * Returns the number of workers.
 */
extern int	kms_citus_run_on_workers(const char *cmd, const char *what);

/*
 * Before a keyring change: refuse it on a Citus worker (55000), except
 * while applying the coordinator's copy; true on a Citus coordinator,
 * where the caller serialises key changes until commit.
 */
extern bool kms_citus_check_change_allowed(void);

/* After a keyring change: on a Citus coordinator, copy the catalog to every worker (or fail). */
extern void kms_citus_after_change(void);

/*
 * Protected columns on a Citus worker (docs/citus.md): the distributed
 * table that shard relation relid belongs to, and the name of the trigger
 * on it that the shard's trigger tgname ("<name>_<shardid>") was copied
 * from.  Looked up in Citus's metadata (pg_dist_shard) only when the citus
 * extension is installed; false otherwise, and when relid is not a shard.
 */
/* Whether relid is a Citus table (false without the citus extension). */
extern bool kms_citus_table(Oid relid);

extern bool kms_citus_shard_origin(Oid relid, const char *tgname,
								   Oid *logical_relid, char **logical_tgname);

/*
 * The planner hook for UPDATE and DELETE through the decrypting view of a
 * Citus table (kms_citus.c); from _PG_init.
 */
extern void kms_citus_init(void);

#endif							/* KMS_CITUS_H */
