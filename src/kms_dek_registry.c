/*-------------------------------------------------------------------------
 * kms_dek_registry.c
 *	  The DEK registry of format 2: lookup for decryption, the durable
 *	  registration of encrypting DEKs, and O(DEKs) rotation.
 *
 * Reading (kms_dek_registry_fill) is a direct scan of the primary key
 * index as the calling user: readers need no privilege on the table (the
 * function grants and per-key privileges gate decryption, as for v1).
 * Rows read are kept in a backend-local memo (no secrets: the same fields
 * a v1 header carries), dropped by a relcache invalidation of the table,
 * which rotation sends and which travels in its commit record (other
 * backends and standbys).  So a v2 value whose row is in the memo costs
 * no registry lookup; its DEK then comes from the DEK cache exactly as a
 * v1 value's.
 *
 * Durability (kms_dek_registry_ensure): a DEK may seal a v2 value only
 * once a registry row for it exists that commits with the sealing
 * transaction or has already committed.  Each backend finds such a row
 * (by the wrapped DEK, under the latest snapshot) or inserts one under a
 * fresh random reference, in its own transaction: the row then shares the
 * fate of the values (abort, savepoint rollback, crash before commit,
 * PREPARE TRANSACTION, failover: same transaction, same WAL).  Random
 * references make two backends' inserts never conflict, so no writer ever
 * waits for another transaction (a backend that sees no committed row
 * inserts its own, even while another backend's insert for the same DEK is
 * in progress).  A backend-local map remembers per DEK the reference and
 * whether its row is committed (then never checked again) or inserted in a
 * (sub)transaction still open (forgotten when that aborts or is prepared).
 * The per-row path checks one epoch number on the cached DEK.
 *
 * Writes go through fixed SQL run by SPI as the table's owner with
 * search_path pinned; they need a writable primary and a transaction that
 * is not read-only or in parallel mode.
 *
 * Citus (docs/citus.md; dormant without the citus extension): the table
 * becomes a reference table (kms_citus_distribute_registry()).  Reads, on
 * every node, scan the node's own placement (the reference table's one
 * shard) the same way.  Writes are made on the coordinator only: a new
 * row goes to the coordinator's placement, and at pre-commit to every
 * placement through Citus (citus_copy_pending), so that it commits with
 * the values on every node (Citus's two-phase commit); rotation updates
 * every placement through Citus, then tells the workers to drop their
 * memos.  A worker refuses to write (format 2 sealing, rewrap, rotation):
 * the statements it runs are the coordinator's shard tasks, from which
 * Citus allows no write to a reference table.  No DEK is reused (leased)
 * on Citus.
 *-------------------------------------------------------------------------
 */
#include "kms_dek_registry.h"
#include "kms_citus.h"
#include "kms_guc.h"
#include "kms_key_grants.h"
#include "kms_local_catalog.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#define REGISTRY_TABLE	"kms_dek_registry"
#define REG_NATTS		11
#define ANUM_REF		1
#define ANUM_PROVIDER	2
#define ANUM_KEY_ID		3
#define ANUM_NAMES		4
#define ANUM_WRAPPED	5
#define ANUM_PCTX		8
#define KMS_REG_MEMO_MAX	8192
#define KMS_ENS_MAX			65536	/* registered DEKs remembered per backend */

/* ---- the table ---- */

static Oid	cached_relid = InvalidOid;
static bool callbacks_registered = false;

/* where rows are read: the table, or on Citus this node's placement of it */
static Oid	scan_for = InvalidOid;
static Oid	scan_relid = InvalidOid;

/* A registry row as read (palloc'd fields). */
typedef struct RegRow
{
	uint64		ref;
	uint8		provider;
	char	   *key_id;
	int			key_id_len;
	uint8	   *names;
	int			names_len;
	uint8	   *wrapped;
	int			wrapped_len;
	uint8	   *pctx;			/* canonical provider context, NULL if unknown */
	int			pctx_len;
	const char *key_req;		/* the key as requested (inserts only) */
	uint64		leased_messages;	/* inserts only: the budget handed out */
	uint64		leased_bytes;
	bool		own;			/* inserted (or updated) by this transaction */
} RegRow;

/* Backend-local memo for decryption: ref -> row. */
typedef struct MemoEntry
{
	uint64		ref;
	RegRow		row;
} MemoEntry;

static HTAB *reg_memo = NULL;
static bool reg_memo_stale = false;	/* cleared at the next fill, never under a caller's pointers */
static MemoryContext reg_cxt = NULL;

/* Encrypting DEKs of this backend: v1 header hash -> reference and state. */
#define ENS_INSERTED	1		/* row inserted by an open (sub)transaction */
#define ENS_COMMITTED	2		/* row committed: durable */

typedef struct EnsureEntry
{
	uint64		hkey;
	uint64		ref;
	int			state;
	SubTransactionId subid;		/* ENS_INSERTED: the inserting subtransaction */
} EnsureEntry;

static HTAB *ens_map = NULL;
static uint64 ens_epoch = 1;
static bool citus_pending = false;	/* rows in this node's placement only, copied at commit */
static bool ens_any_open = false;	/* an ENS_INSERTED entry may exist: walk at (sub)xact end */

static void registry_init(void);
static void citus_copy_pending(void);

static Oid
registry_relid(void)
{
	if (!OidIsValid(cached_relid))
		cached_relid = kms_extension_table(REGISTRY_TABLE);
	return cached_relid;
}

static Oid
registry_relid_or_error(void)
{
	Oid			relid;

	registry_init();
	relid = registry_relid();
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the kms_pg data key registry \"%s\" does not exist", REGISTRY_TABLE),
				 errdetail("Format 2 values refer to their data keys through the registry."),
				 errhint("Run ALTER EXTENSION kms_pg UPDATE.")));
	return relid;
}

static void
memo_clear(void)
{
	if (reg_memo != NULL)
	{
		hash_destroy(reg_memo);
		reg_memo = NULL;
	}
}

/* Another backend (or this one) rewrapped rows, or the table went away. */
static void
registry_relcache_cb(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == cached_relid || relid == scan_relid)
	{
		reg_memo_stale = true;
		scan_for = InvalidOid;	/* distributed since, or the placement moved */
		if (!OidIsValid(relid))
			cached_relid = InvalidOid;
	}
}

/*
 * End of a (sub)transaction: rows inserted by what ends are committed or
 * gone; every cached DEK checks its state again at its next use.
 */
static void
registry_xact_cb(XactEvent event, void *arg)
{
	HASH_SEQ_STATUS st;
	EnsureEntry *e;

	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (citus_pending)
				citus_copy_pending();
			return;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			break;
		default:
			return;
	}
	citus_pending = false;
	ens_epoch++;
	if (ens_map == NULL || !ens_any_open)
		return;
	ens_any_open = false;
	hash_seq_init(&st, ens_map);
	while ((e = hash_seq_search(&st)) != NULL)
	{
		if (e->state != ENS_INSERTED)
			continue;
		if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
			e->state = ENS_COMMITTED;
		else
		{
			/*
			 * Aborted: the row is gone.  Prepared: its fate is decided
			 * later, maybe by another session; a new reference never waits
			 * for it.
			 */
			hash_search(ens_map, &e->hkey, HASH_REMOVE, NULL);
		}
	}
}

static void
registry_subxact_cb(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS st;
	EnsureEntry *e;

	if (event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		ens_epoch++;
	if (ens_map == NULL || !ens_any_open)
		return;
	hash_seq_init(&st, ens_map);
	while ((e = hash_seq_search(&st)) != NULL)
	{
		/* subtransaction ids grow: >= mySubid is the ending subtree */
		if (e->state != ENS_INSERTED || e->subid < mySubid)
			continue;
		if (event == SUBXACT_EVENT_ABORT_SUB)
			hash_search(ens_map, &e->hkey, HASH_REMOVE, NULL);
		else
			e->subid = parentSubid;
	}
}

static void
registry_init(void)
{
	HASHCTL		info;

	if (callbacks_registered)
		return;
	reg_cxt = AllocSetContextCreate(TopMemoryContext, "kms_pg DEK registry",
									ALLOCSET_SMALL_SIZES);
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(uint64);
	info.entrysize = sizeof(EnsureEntry);
	info.hcxt = reg_cxt;
	ens_map = hash_create("kms_pg registered DEKs", 64, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	CacheRegisterRelcacheCallback(registry_relcache_cb, (Datum) 0);
	RegisterXactCallback(registry_xact_cb, NULL);
	RegisterSubXactCallback(registry_subxact_cb, NULL);
	callbacks_registered = true;
}

/* ---- reading ---- */

static void
row_from_tuple(HeapTuple tup, TupleDesc desc, RegRow *row)
{
	Datum		values[REG_NATTS];
	bool		nulls[REG_NATTS];
	text	   *t;
	bytea	   *b;

	Assert(desc->natts <= REG_NATTS);
	heap_deform_tuple(tup, desc, values, nulls);
	for (int i = 0; i < ANUM_WRAPPED; i++)
		if (nulls[i])
			elog(ERROR, "kms_pg data key registry row has a NULL field");
	row->ref = (uint64) DatumGetInt64(values[ANUM_REF - 1]);
	row->provider = (uint8) DatumGetInt16(values[ANUM_PROVIDER - 1]);
	t = DatumGetTextPP(values[ANUM_KEY_ID - 1]);
	row->key_id_len = VARSIZE_ANY_EXHDR(t);
	row->key_id = pnstrdup(VARDATA_ANY(t), row->key_id_len);
	b = DatumGetByteaPP(values[ANUM_NAMES - 1]);
	row->names_len = VARSIZE_ANY_EXHDR(b);
	row->names = palloc(Max(row->names_len, 1));
	memcpy(row->names, VARDATA_ANY(b), row->names_len);
	b = DatumGetByteaPP(values[ANUM_WRAPPED - 1]);
	row->wrapped_len = VARSIZE_ANY_EXHDR(b);
	row->wrapped = palloc(Max(row->wrapped_len, 1));
	memcpy(row->wrapped, VARDATA_ANY(b), row->wrapped_len);
	row->pctx = NULL;
	row->pctx_len = 0;
	row->key_req = NULL;
	if (desc->natts >= ANUM_PCTX && !nulls[ANUM_PCTX - 1])
	{
		b = DatumGetByteaPP(values[ANUM_PCTX - 1]);
		row->pctx_len = VARSIZE_ANY_EXHDR(b);
		row->pctx = palloc(Max(row->pctx_len, 1));
		memcpy(row->pctx, VARDATA_ANY(b), row->pctx_len);
	}
	row->own = TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data));
}

/*
 * The relation rows are read from: the registry itself, or, when it is a
 * Citus reference table, this node's placement of it (found once per
 * backend, again after an invalidation of either).
 */
static Oid
registry_scan_relid(Oid relid)
{
	Oid			placement;
	Oid			scan = relid;

	if (scan_for == relid && OidIsValid(scan_relid))
		return scan_relid;
	if (kms_citus_reference_placement(relid, &placement))
	{
		if (!OidIsValid(placement))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("this Citus node has no placement of the kms_pg data key registry"),
					 errdetail("The registry is a Citus reference table; each node reads format 2 data keys from its own placement."),
					 errhint("Add the coordinator to the Citus metadata with citus_set_coordinator_host(), or run replicate_reference_tables().")));
		scan = placement;
	}
	scan_for = relid;
	scan_relid = scan;
	return scan;
}

/*
 * Look a row up by reference (by_ref) or by wrapped DEK, under snap, as
 * the calling user.  With match (by wrapped DEK), only a row with the same
 * provider, key id and name block counts.
 */
static bool
registry_read(Oid relid, bool by_ref, uint64 ref, const RegRow *match,
			  Snapshot snap, RegRow *out)
{
	Relation	rel = table_open(registry_scan_relid(relid), AccessShareLock);
	Oid			idx = InvalidOid;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	if (by_ref)
	{
		idx = kms_relation_pkey_index(rel);
		ScanKeyInit(&key, ANUM_REF, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum((int64) ref));
	}
	else
	{
		List	   *idxs = RelationGetIndexList(rel);
		ListCell   *lc;
		bytea	   *w = palloc(VARHDRSZ + match->wrapped_len);

		SET_VARSIZE(w, VARHDRSZ + match->wrapped_len);
		memcpy(VARDATA(w), match->wrapped, match->wrapped_len);
		/* the index on wrapped_dek: the one whose first column it is */
		foreach(lc, idxs)
		{
			HeapTuple	it = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));

			if (!HeapTupleIsValid(it))
				continue;
			if (((Form_pg_index) GETSTRUCT(it))->indnatts == 1 &&
				((Form_pg_index) GETSTRUCT(it))->indkey.values[0] == ANUM_WRAPPED)
				idx = lfirst_oid(lc);
			ReleaseSysCache(it);
		}
		ScanKeyInit(&key, ANUM_WRAPPED, BTEqualStrategyNumber, F_BYTEAEQ, PointerGetDatum(w));
	}
	scan = systable_beginscan(rel, idx, OidIsValid(idx), snap, 1, &key);
	while (!found && HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		row_from_tuple(tup, RelationGetDescr(rel), out);
		found = match == NULL ||
			(out->provider == match->provider &&
			 out->key_id_len == match->key_id_len &&
			 memcmp(out->key_id, match->key_id, match->key_id_len) == 0 &&
			 out->names_len == match->names_len &&
			 memcmp(out->names, match->names, match->names_len) == 0 &&
			 out->wrapped_len == match->wrapped_len &&
			 memcmp(out->wrapped, match->wrapped, match->wrapped_len) == 0);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

static bool
read_latest(Oid relid, bool by_ref, uint64 ref, const RegRow *match, RegRow *out)
{
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	bool		found = registry_read(relid, by_ref, ref, match, snap, out);

	UnregisterSnapshot(snap);
	return found;
}

static void
memo_put(const RegRow *row)
{
	MemoEntry  *m;
	bool		found;
	MemoryContext old;

	if (reg_memo == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(uint64);
		info.entrysize = sizeof(MemoEntry);
		info.hcxt = reg_cxt;
		reg_memo = hash_create("kms_pg registry rows", 64, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	if (hash_get_num_entries(reg_memo) >= KMS_REG_MEMO_MAX)
	{
		memo_clear();
		memo_put(row);
		return;
	}
	m = hash_search(reg_memo, &row->ref, HASH_ENTER, &found);
	if (found)
		return;
	old = MemoryContextSwitchTo(reg_cxt);
	m->row = *row;
	m->row.key_id = pnstrdup(row->key_id, row->key_id_len);
	m->row.names = palloc(Max(row->names_len, 1));
	memcpy(m->row.names, row->names, row->names_len);
	m->row.wrapped = palloc(Max(row->wrapped_len, 1));
	memcpy(m->row.wrapped, row->wrapped, row->wrapped_len);
	m->row.pctx = NULL;			/* decryption never needs it */
	m->row.pctx_len = 0;
	m->row.key_req = NULL;
	MemoryContextSwitchTo(old);
}

/* This backend's memo of row ref (after dropping a stale memo), or NULL. */
static MemoEntry *
memo_find(uint64 ref)
{
	registry_init();
	if (reg_memo_stale)
	{
		memo_clear();
		reg_memo_stale = false;
	}
	return reg_memo != NULL ? hash_search(reg_memo, &ref, HASH_FIND, NULL) : NULL;
}

bool
kms_dek_registry_fill_memo(KmsEnvelope *env)
{
	MemoEntry  *m;
	char	   *detail;
	KmsError	err;

	m = memo_find(env->dek_ref);
	if (m == NULL)
		return false;
	err = kms_envelope_set_registry(env, m->row.provider, m->row.key_id, m->row.key_id_len,
									m->row.names, m->row.names_len, m->row.wrapped,
									m->row.wrapped_len, &detail);
	if (err != KMS_OK)
		kms_report_error(err, detail);
	return true;
}

void
kms_dek_registry_fill(KmsEnvelope *env)
{
	MemoEntry  *m;
	RegRow		row;
	RegRow	   *r;
	char	   *detail;
	KmsError	err;

	m = memo_find(env->dek_ref);
	if (m != NULL)
		r = &m->row;
	else
	{
		Oid			relid = registry_relid_or_error();
		bool		found;
		Snapshot	snap;

		/* the query's snapshot first; a row committed since, outside parallel mode */
		snap = RegisterSnapshot(ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot());
		found = registry_read(relid, true, env->dek_ref, NULL, snap, &row);
		UnregisterSnapshot(snap);
		if (!found && !IsInParallelMode())
			found = read_latest(relid, true, env->dek_ref, NULL, &row);
		if (!found)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("the data key of a format 2 value is not in the kms_pg registry"),
					 errdetail("A format 2 value can be decrypted only where the kms_dek_registry row of its data key exists."),
					 errhint("Restore the registry with the data (pg_dump dumps it with the extension), or move values between databases in format 1 (kms_pg.format = 1, kms_reencrypt).")));
		/* a row of this transaction may still roll back: do not remember it */
		if (!row.own)
			memo_put(&row);
		r = &row;
		if (!row.own)
		{
			m = hash_search(reg_memo, &env->dek_ref, HASH_FIND, NULL);
			if (m != NULL)
				r = &m->row;
		}
	}
	err = kms_envelope_set_registry(env, r->provider, r->key_id, r->key_id_len,
									r->names, r->names_len, r->wrapped, r->wrapped_len, &detail);
	if (err != KMS_OK)
		kms_report_error(err, detail);
}

/* ---- writing: fixed SQL as the table's owner ---- */

typedef struct OwnerSpi
{
	Oid			save_user;
	int			save_sec;
	int			nest;
	char	   *tbl;
} OwnerSpi;

/*
 * On a Citus cluster (only with the citus extension): raise unless this
 * node writes the registry, i.e. it is the coordinator and the registry a
 * reference table (or there are no workers yet).
 */
static void
check_citus_writable(Oid relid, const char *operation)
{
	KmsCitusRole role;
	Oid			placement;

	if (!kms_citus_installed())
		return;
	role = kms_citus_role();
	if (role == KMS_CITUS_WORKER)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot %s on a Citus worker", operation),
				 errdetail("This writes the kms_pg data key registry, a Citus reference table that the coordinator writes; statements on a worker run as the coordinator's shard tasks, which cannot write it."),
				 errhint("Run it on the coordinator (a query on a distributed table runs on the workers: pass the value itself), or SET kms_pg.format = 1 for values sealed on the workers.")));
	if (role == KMS_CITUS_COORDINATOR &&
		!kms_citus_reference_placement(relid, &placement) && kms_citus_has_workers())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the kms_pg data key registry is not a Citus reference table"),
				 errdetail("Format 2 values sealed on the coordinator must be readable on every worker."),
				 errhint("Run SELECT kms_citus_distribute_registry() on the coordinator, or SET kms_pg.format = 1.")));
}

/* Raise unless this transaction may write registry rows. */
static void
check_writable(void)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot encrypt in format 2 during recovery"),
				 errdetail("A format 2 value needs a row in the kms_pg data key registry, and a hot standby cannot write one."),
				 errhint("Encrypt on the primary, or SET kms_pg.format = 1 for values made on a standby.")));
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot encrypt in format 2 in a read-only transaction"),
				 errdetail("A format 2 value needs a row in the kms_pg data key registry, written by the sealing transaction."),
				 errhint("Encrypt in a read-write transaction, or SET kms_pg.format = 1.")));
	if (IsInParallelMode() || IsParallelWorker())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("cannot encrypt in format 2 during a parallel operation"),
				 errdetail("A format 2 value needs a row in the kms_pg data key registry, and parallel operations cannot write."),
				 errhint("The kms_pg encryption functions are PARALLEL UNSAFE; do not call them from a function marked PARALLEL SAFE or RESTRICTED, or SET kms_pg.format = 1.")));
}

static void
owner_begin(OwnerSpi *o, Oid relid)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	o->tbl = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), REGISTRY_TABLE);
	GetUserIdAndSecContext(&o->save_user, &o->save_sec);
	SetUserIdAndSecContext(owner, o->save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION | SECURITY_NOFORCE_RLS);
	o->nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);

	/*
	 * Citus: only the coordinator writes the registry (check_citus_writable),
	 * so its writes need not take Citus's lock on the first worker that
	 * serialises writes from workers.  That lock, taken again over another
	 * connection by a later registry write of the same statement (an
	 * INSERT ... SELECT that streams rows to the shards keeps the first
	 * one busy), is a distributed deadlock with itself.
	 */
	if (kms_citus_installed())
		(void) set_config_option("citus.allow_modifications_from_workers_to_replicated_tables", "off",
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

static void
owner_end(OwnerSpi *o)
{
	SPI_finish();
	AtEOXact_GUC(true, o->nest);
	SetUserIdAndSecContext(o->save_user, o->save_sec);
	CommandCounterIncrement();
}

static int
owner_exec(const char *sql, int nargs, Oid *types, Datum *values)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);

	if (rc < 0)
		elog(ERROR, "kms_pg data key registry statement failed: %s", SPI_result_code_string(rc));
	return (int) SPI_processed;
}

static Datum
bytea_datum(const uint8 *p, int len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), p, len);
	return PointerGetDatum(b);
}

#define INSERT_SQL \
	"INSERT INTO %s (dek_ref, provider, key_id, name_block, wrapped_dek," \
	" provider_context, key_requested, leased_messages, leased_bytes)" \
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (dek_ref) DO NOTHING"

static SPIPlanPtr insert_plan = NULL;	/* prepared once per backend (and table) */
static Oid	insert_plan_relid = InvalidOid;

static void
registry_insert(Oid relid, const RegRow *row)
{
	OwnerSpi	o;
	Oid			types[9] = {INT8OID, INT2OID, TEXTOID, BYTEAOID, BYTEAOID, BYTEAOID, TEXTOID,
	INT8OID, INT8OID};
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			rc;

	Oid			target = registry_scan_relid(relid);

	owner_begin(&o, relid);
	if (target != relid)
	{
		/* Citus: this node's placement now, the others at commit (citus_copy_pending) */
		o.tbl = quote_qualified_identifier(get_namespace_name(get_rel_namespace(target)),
										   get_rel_name(target));
		citus_pending = true;
	}
	values[0] = Int64GetDatum((int64) row->ref);
	values[1] = Int16GetDatum((int16) row->provider);
	values[2] = PointerGetDatum(cstring_to_text_with_len(row->key_id, row->key_id_len));
	values[3] = bytea_datum(row->names, row->names_len);
	values[4] = bytea_datum(row->wrapped, row->wrapped_len);
	values[5] = row->pctx != NULL ? bytea_datum(row->pctx, row->pctx_len) : (Datum) 0;
	nulls[5] = row->pctx != NULL ? ' ' : 'n';
	values[6] = row->key_req != NULL ? CStringGetTextDatum(row->key_req) : (Datum) 0;
	nulls[6] = row->key_req != NULL ? ' ' : 'n';
	values[7] = Int64GetDatum((int64) Min(row->leased_messages, (uint64) PG_INT64_MAX));
	values[8] = Int64GetDatum((int64) Min(row->leased_bytes, (uint64) PG_INT64_MAX));
	if (insert_plan == NULL || insert_plan_relid != target)
	{
		SPIPlanPtr	p;

		if (insert_plan != NULL)
			SPI_freeplan(insert_plan);
		insert_plan = NULL;
		p = SPI_prepare(psprintf(INSERT_SQL, o.tbl), 9, types);
		if (p == NULL)
			elog(ERROR, "kms_pg data key registry statement failed: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(p) != 0)
			elog(ERROR, "SPI_keepplan failed");
		insert_plan = p;
		insert_plan_relid = target;
	}
	rc = SPI_execute_plan(insert_plan, values, nulls, false, 0);
	if (rc < 0)
		elog(ERROR, "kms_pg data key registry statement failed: %s", SPI_result_code_string(rc));
	owner_end(&o);
}

/*
 * Citus, before commit (or PREPARE): copy the rows this transaction put in
 * this node's placement of the registry to every placement, through Citus
 * (ON CONFLICT DO NOTHING: this node's own).  Rows are first written to
 * the local placement only because a statement that streams rows to the
 * shards (INSERT ... SELECT, COPY) keeps Citus's connections to the
 * workers busy, so a write to every placement in the middle of it is
 * refused; at commit the statements are done, and the copy joins the
 * distributed transaction: on every node the rows commit with the values
 * (Citus's two-phase commit), or not at all.  Rows of aborted
 * subtransactions are gone from ens_map and from the placement.
 *
 * This runs before Citus's own pre-commit work (its two-phase commit)
 * because transaction callbacks run newest first, and registry_init()
 * registers ours at the backend's first registry use, long after Citus's
 * _PG_init() registered its own, whatever the order of
 * shared_preload_libraries.
 */
static void
citus_copy_pending(void)
{
	HASH_SEQ_STATUS st;
	EnsureEntry *e;
	Datum	   *refs;
	int			n = 0;
	Oid			relid;
	Oid			target;
	OwnerSpi	o;
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];

	citus_pending = false;
	if (ens_map == NULL || !ens_any_open)
		return;
	relid = registry_relid();
	if (!OidIsValid(relid))
		return;
	target = registry_scan_relid(relid);
	if (target == relid)
		return;
	refs = palloc(sizeof(Datum) * Max(hash_get_num_entries(ens_map), 1));
	hash_seq_init(&st, ens_map);
	while ((e = hash_seq_search(&st)) != NULL)
		if (e->state == ENS_INSERTED)
			refs[n++] = Int64GetDatum((int64) e->ref);
	if (n == 0)
		return;
	values[0] = PointerGetDatum(construct_array(refs, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	PushActiveSnapshot(GetTransactionSnapshot());
	owner_begin(&o, relid);
	owner_exec(psprintf("INSERT INTO %s (dek_ref, provider, key_id, name_block, wrapped_dek, created_at,"
						" rewrapped_at, provider_context, key_requested, leased_messages, leased_bytes)"
						" SELECT p.dek_ref, p.provider, p.key_id, p.name_block, p.wrapped_dek, p.created_at,"
						" p.rewrapped_at, p.provider_context, p.key_requested, p.leased_messages, p.leased_bytes"
						" FROM %s p WHERE p.dek_ref OPERATOR(pg_catalog.=) ANY ($1)"
						" ON CONFLICT (dek_ref) DO NOTHING",
						o.tbl,
						quote_qualified_identifier(get_namespace_name(get_rel_namespace(target)),
												   get_rel_name(target))),
			   1, types, values);
	owner_end(&o);
	PopActiveSnapshot();
}

/* The fields of a v1 header (kms_envelope.h layout) as a registry row. */
static void
row_from_header(const uint8 *h, int hlen, RegRow *row)
{
	int			off;

	memset(row, 0, sizeof(*row));
	row->provider = h[5];
	row->key_id_len = h[6];
	row->key_id = (char *) h + 7;
	off = 7 + row->key_id_len;
	row->names = (uint8 *) h + off;
	off += 1;
	for (int i = 0; i < h[7 + row->key_id_len]; i++)
		off += 1 + h[off];
	row->names_len = off - (7 + row->key_id_len);
	row->wrapped_len = (h[off] << 8) | h[off + 1];
	row->wrapped = (uint8 *) h + off + 2;
	Assert(off + 2 + row->wrapped_len == hlen);
}

static uint64
random_ref(void)
{
	uint8		b[8];
	uint64		ref = 0;

	do
	{
		if (!pg_strong_random(b, 7))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random data key reference")));
		ref = 0;
		for (int i = 0; i < 7; i++)
			ref = (ref << 8) | b[i];
	} while (ref == 0);
	return ref;
}

uint64
kms_dek_registry_ensure(KmsDek *dek, const char *key_req, const KmsContext *kctx)
{
	uint64		hkey;
	EnsureEntry *e;
	RegRow		want;
	RegRow		got;
	Oid			relid;
	bool		found;

	if (dek->ensured_epoch == ens_epoch && dek->dek_ref != 0)
		return dek->dek_ref;

	registry_init();
	hkey = hash_bytes_extended(dek->header, dek->header_len, 0x524547);
	e = hash_search(ens_map, &hkey, HASH_FIND, NULL);
	if (e != NULL)
	{
		dek->dek_ref = e->ref;
		dek->ensured_epoch = ens_epoch;
		return e->ref;
	}

	check_writable();
	relid = registry_relid_or_error();
	check_citus_writable(relid, "encrypt in format 2");
	row_from_header(dek->header, dek->header_len, &want);
	want.pctx = (uint8 *) kctx->canonical.data;
	want.pctx_len = kctx->canonical.len;
	want.key_req = key_req;
	want.leased_messages = dek->max_messages;
	want.leased_bytes = dek->max_bytes;

	/* a committed row of this DEK (any backend's), or one of this transaction */
	found = read_latest(relid, false, 0, &want, &got);
	if (!found)
	{
		for (int attempt = 0; !found && attempt < 3; attempt++)
		{
			want.ref = random_ref();
			registry_insert(relid, &want);
			/* another DEK under the same reference (2^-56): draw again */
			found = read_latest(relid, true, want.ref, &want, &got);
		}
		if (!found)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not register a data key in the kms_pg registry")));
	}
	if (hash_get_num_entries(ens_map) >= KMS_ENS_MAX)
	{
		/* forget committed rows (found again by wrapped DEK), never open ones */
		HASH_SEQ_STATUS st;
		EnsureEntry *x;

		hash_seq_init(&st, ens_map);
		while ((x = hash_seq_search(&st)) != NULL)
			if (x->state == ENS_COMMITTED)
				hash_search(ens_map, &x->hkey, HASH_REMOVE, NULL);
	}
	e = hash_search(ens_map, &hkey, HASH_ENTER, NULL);
	e->ref = got.ref;
	e->state = got.own ? ENS_INSERTED : ENS_COMMITTED;
	if (got.own)
		ens_any_open = true;
	e->subid = GetCurrentSubTransactionId();
	dek->dek_ref = got.ref;
	dek->ensured_epoch = ens_epoch;
	return got.ref;
}

#define REWRAP_SQL \
	"UPDATE %s SET provider = $2, key_id = $3, wrapped_dek = $4, rewrapped_at = pg_catalog.now()" \
	" WHERE dek_ref = $1 AND wrapped_dek = $5"

static int
registry_update(Oid relid, uint64 ref, uint8 provider, const KmsWrappedKey *w,
				const uint8 *old_wrapped, int old_len)
{
	OwnerSpi	o;
	Oid			types[5] = {INT8OID, INT2OID, TEXTOID, BYTEAOID, BYTEAOID};
	Datum		values[5];
	int			n;

	owner_begin(&o, relid);
	values[0] = Int64GetDatum((int64) ref);
	values[1] = Int16GetDatum((int16) provider);
	values[2] = CStringGetTextDatum(w->key_id);
	values[3] = bytea_datum(w->wrapped, w->wrapped_len);
	values[4] = bytea_datum(old_wrapped, old_len);
	n = owner_exec(psprintf(REWRAP_SQL, o.tbl), 5, types, values);
	owner_end(&o);
	return n;
}

void
kms_dek_registry_rewrapped(const KmsEnvelope *env, uint8 provider, const KmsWrappedKey *w)
{
	Oid			relid = registry_relid_or_error();

	check_writable();
	check_citus_writable(relid, "rewrap a format 2 value");
	if (registry_update(relid, env->dek_ref, provider, w, env->wrapped, env->wrapped_len) > 0)
	{
		/* the key id may have changed: not found by reference under the old one */
		kms_dek_cache_forget_ref(env->dek_ref);
		/* every backend (and standby) drops its memo of the row */
		CacheInvalidateRelcacheByRelid(relid);
		reg_memo_stale = true;
	}
}

/*
 * SQL: kms_rotate_key_registry(key_id text, new_key_id text DEFAULT NULL,
 *		OUT deks bigint, OUT rewrapped bigint, OUT skipped bigint)
 *
 * Rewrap every registry row of key_id (the key id values record: a local
 * key's uuid, an AWS key ARN) under new_key_id (NULL: the same key, i.e.
 * its current version), with the current provider: one provider call per
 * distinct wrapped DEK, one row update per row, no write to any user table.
 * Rows whose DEK is bound to provider-context values (kms_pg.kms_context_keys)
 * are rewrapped with the values the row keeps (provider_context); only rows
 * without them (none are made so) are counted as skipped:
 * kms_rewrap() each value with its context, or kms_rotate_column().
 */
PG_FUNCTION_INFO_V1(kms_rotate_key_registry);
Datum
kms_rotate_key_registry(PG_FUNCTION_ARGS)
{
	char	   *key;
	char	   *new_key;
	Oid			relid;
	OwnerSpi	o;
	MemoryContext caller = CurrentMemoryContext;
	RegRow	   *rows;
	uint64		nrows;
	int64		deks = 0;
	int64		rewrapped = 0;
	int64		skipped = 0;
	KmsContext	empty;
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {0};
	bool		checked_src[KMS_PROVIDER_AWS + 1] = {0};
	bool		checked_target = false;
	const KmsProviderRoutine *target = kms_provider_current();
	Oid			types[1] = {TEXTOID};
	Datum		args[1];

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", "key_id")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	key = text_to_cstring(PG_GETARG_TEXT_PP(0));
	new_key = PG_ARGISNULL(1) ? key : text_to_cstring(PG_GETARG_TEXT_PP(1));
	kms_context_init_empty(&empty);
	check_writable();
	relid = registry_relid_or_error();
	check_citus_writable(relid, "rotate the kms_pg data key registry");
	/* one rotation at a time; writers (row inserts) are not blocked */
	LockRelationOid(relid, ShareUpdateExclusiveLock);

	owner_begin(&o, relid);
	args[0] = CStringGetTextDatum(key);
	owner_exec(psprintf("SELECT dek_ref, provider, key_id, name_block, wrapped_dek, NULL, NULL,"
						" provider_context FROM %s WHERE key_id = $1 ORDER BY dek_ref", o.tbl),
			   1, types, args);
	nrows = SPI_processed;
	MemoryContextSwitchTo(caller);
	rows = palloc(sizeof(RegRow) * Max(nrows, 1));
	for (uint64 i = 0; i < nrows; i++)
		row_from_tuple(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &rows[i]);
	/* back to the caller for privilege checks and provider calls */
	SPI_finish();
	AtEOXact_GUC(true, o.nest);
	SetUserIdAndSecContext(o.save_user, o.save_sec);

	for (uint64 i = 0; i < nrows; i++)
	{
		RegRow		row = rows[i];
		KmsEnvelope env;
		char	   *detail;
		KmsError	err;
		const KmsProviderRoutine *provider;
		KmsWrappedKey w;
		KmsContext	pctx;
		const KmsContext *use_ctx = &empty;

		deks++;
		memset(&env, 0, sizeof(env));
		env.version = KMS_ENVELOPE_V2;
		env.dek_ref = row.ref;
		err = kms_envelope_set_registry(&env, row.provider, row.key_id, row.key_id_len,
										row.names, row.names_len, row.wrapped, row.wrapped_len,
										&detail);
		if (err != KMS_OK)
			kms_report_error(err, detail);
		if (env.nctxkeys > 0)
		{
			/*
			 * Bound to provider-context values: the row keeps them (rows
			 * made before it did are skipped).  Privileges may depend on
			 * the context: checked for each such row.
			 */
			if (row.pctx == NULL || !kms_context_from_canonical(row.pctx, row.pctx_len, &pctx))
			{
				skipped++;
				continue;
			}
			use_ctx = &pctx;
		}
		provider = kms_provider_by_id(env.provider);
		if (!checked_src[env.provider] || use_ctx != &empty)
		{
			kms_key_check(env.provider, env.key_id, env.key_id_len, KMS_PRIV_REWRAP, use_ctx,
						  fcinfo->flinfo->fn_oid);
			if (use_ctx == &empty)
				checked_src[env.provider] = true;
		}
		kms_dek_rewrap(provider, &env, use_ctx, new_key, &w);
		if (!checked_target || use_ctx != &empty)
		{
			kms_key_check(target->id, w.key_id, strlen(w.key_id), KMS_PRIV_REWRAP | KMS_PRIV_ENCRYPT,
						  use_ctx, fcinfo->flinfo->fn_oid);
			if (use_ctx == &empty)
				checked_target = true;
		}
		rewrapped += registry_update(relid, row.ref, target->id, &w, row.wrapped, row.wrapped_len);
		CHECK_FOR_INTERRUPTS();
	}
	if (rewrapped > 0)
	{
		Oid			placement;

		CacheInvalidateRelcacheByRelid(relid);
		reg_memo_stale = true;
		/* Citus: the workers' backends drop their memos and cached DEKs of the key */
		if (kms_citus_reference_placement(relid, &placement))
			(void) kms_citus_run_on_workers(psprintf("SELECT %s.kms_citus_registry_rewrapped(%s)",
													 quote_identifier(get_namespace_name(get_rel_namespace(relid))),
													 quote_literal_cstr(key)),
											"pass the kms_pg registry rotation to");
	}
	/* encrypting DEKs cached under the old wrapping must not make new rows */
	kms_dek_cache_forget_key(-1, key);
	if (skipped > 0)
		ereport(NOTICE,
				(errmsg("%lld data keys of key \"%s\" are bound to provider-context values and were not rewrapped",
						(long long) skipped, key),
				 errhint("Rewrap their values with kms_rewrap(value, new_key_id, context) or kms_rotate_column().")));
	values[0] = Int64GetDatum(deks);
	values[1] = Int64GetDatum(rewrapped);
	values[2] = Int64GetDatum(skipped);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* ---- reuse: an encrypting miss reloads the current DEK of (key, provider context) ---- */

#define REUSE_SQL \
	"UPDATE %s r SET leased_messages = r.leased_messages + $5, leased_bytes = r.leased_bytes + $6" \
	" WHERE r.dek_ref = (SELECT c.dek_ref FROM %s c" \
	"   WHERE c.key_requested = $1 AND c.provider = $2" \
	"     AND pg_catalog.sha256(c.provider_context) = pg_catalog.sha256($3)" \
	"     AND c.provider_context = $3 AND c.rewrapped_at IS NULL" \
	"     AND c.created_at > pg_catalog.now() - pg_catalog.make_interval(secs => $4)" \
	"     AND c.leased_messages + $5 <= $7 AND c.leased_bytes + $6 <= $8" \
	"   ORDER BY c.created_at DESC LIMIT 1)" \
	" AND r.rewrapped_at IS NULL AND r.leased_messages + $5 <= $7 AND r.leased_bytes + $6 <= $8" \
	" RETURNING r.key_id, r.wrapped_dek, r.created_at"

static SPIPlanPtr reuse_plan = NULL;
static Oid	reuse_plan_relid = InvalidOid;

bool
kms_dek_registry_reuse(uint8 provider, const char *key_req, const KmsContext *kctx,
					   uint64 lease_m, uint64 lease_b, uint64 max_m, uint64 max_b,
					   KmsWrappedKey *w, TimestampTz *created_at)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			relid;
	OwnerSpi	o;
	Datum		values[8];
	int			rc;
	bool		found = false;

	/* no registry write possible: format 2 sealing raises later, at registration */
	if (RecoveryInProgress() || XactReadOnly || IsInParallelMode() || IsParallelWorker())
		return false;
	registry_init();
	relid = registry_relid();
	if (!OidIsValid(relid))
		return false;
	/* Citus: a lease would be a write to every placement mid-statement; none is taken */
	if (registry_scan_relid(relid) != relid)
		return false;
	owner_begin(&o, relid);
	if (reuse_plan == NULL || reuse_plan_relid != relid)
	{
		Oid			types[8] = {TEXTOID, INT2OID, BYTEAOID, FLOAT8OID, INT8OID, INT8OID, INT8OID, INT8OID};
		SPIPlanPtr	p;

		if (reuse_plan != NULL)
			SPI_freeplan(reuse_plan);
		reuse_plan = NULL;
		p = SPI_prepare(psprintf(REUSE_SQL, o.tbl, o.tbl), 8, types);
		if (p == NULL)
			elog(ERROR, "kms_pg data key registry statement failed: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(p) != 0)
			elog(ERROR, "SPI_keepplan failed");
		reuse_plan = p;
		reuse_plan_relid = relid;
	}
	values[0] = CStringGetTextDatum(key_req);
	values[1] = Int16GetDatum((int16) provider);
	values[2] = bytea_datum((const uint8 *) kctx->canonical.data, kctx->canonical.len);
	values[3] = Float8GetDatum((double) kms_guc_dek_max_age);
	values[4] = Int64GetDatum((int64) lease_m);
	values[5] = Int64GetDatum((int64) lease_b);
	values[6] = Int64GetDatum((int64) Min(max_m, (uint64) PG_INT64_MAX));
	values[7] = Int64GetDatum((int64) Min(max_b, (uint64) PG_INT64_MAX));
	rc = SPI_execute_plan(reuse_plan, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "kms_pg data key registry statement failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		text	   *k = DatumGetTextPP(SPI_getbinval(tup, desc, 1, &isnull));
		bytea	   *b = DatumGetByteaPP(SPI_getbinval(tup, desc, 2, &isnull));

		w->key_id = MemoryContextStrdup(caller, text_to_cstring(k));
		w->wrapped_len = VARSIZE_ANY_EXHDR(b);
		w->wrapped = MemoryContextAlloc(caller, Max(w->wrapped_len, 1));
		memcpy(w->wrapped, VARDATA_ANY(b), w->wrapped_len);
		*created_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
		found = true;
	}
	owner_end(&o);
	return found;
}

void
kms_dek_registry_invalidate(void)
{
	Oid			relid;

	registry_init();
	relid = registry_relid();
	if (OidIsValid(relid))
		CacheInvalidateRelcacheByRelid(relid);
	reg_memo_stale = true;
}

/*
 * SQL: kms_citus_registry_rewrapped(key_id text) RETURNS void -- run on
 * each Citus worker by the coordinator's kms_rotate_key_registry(): every
 * backend of the worker drops its memo of registry rows, and the worker's
 * cached DEKs of key_id go (found again under the new wrapping).
 */
PG_FUNCTION_INFO_V1(kms_citus_registry_rewrapped);
Datum
kms_citus_registry_rewrapped(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", "key_id")));
	if (kms_citus_role() != KMS_CITUS_WORKER)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this node is not a Citus worker"),
				 errdetail("kms_citus_registry_rewrapped() is run on the workers by kms_rotate_key_registry() on the coordinator."),
				 errhint("On the coordinator, run kms_rotate_key_registry().")));
	kms_dek_registry_invalidate();
	(void) kms_dek_cache_forget_key(-1, text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/*
 * The v1 header of the DEK of registry row ref (an encrypting cache entry
 * whose header the ring overwrote), or false when the row is not visible.
 */
bool
kms_dek_registry_header(uint64 ref, uint8 **header, int *header_len)
{
	MemoEntry  *m;
	RegRow		row;
	RegRow	   *r = &row;
	KmsEnvelope env;
	char	   *key_id;
	const char *names[KMS_CTX_KEYS_MAX];
	int			lens[KMS_CTX_KEYS_MAX];

	m = memo_find(ref);
	if (m != NULL)
		r = &m->row;
	else
	{
		Oid			relid = registry_relid();

		if (!OidIsValid(relid) || IsInParallelMode() || !read_latest(relid, true, ref, NULL, &row))
			return false;
		if (!row.own)
			memo_put(&row);
	}
	memset(&env, 0, sizeof(env));
	env.version = KMS_ENVELOPE_V2;
	env.dek_ref = ref;
	if (kms_envelope_set_registry(&env, r->provider, r->key_id, r->key_id_len, r->names, r->names_len,
								  r->wrapped, r->wrapped_len, NULL) != KMS_OK ||
		env.nctxkeys > KMS_CTX_KEYS_MAX)
		return false;
	for (int i = 0; i < env.nctxkeys; i++)
	{
		names[i] = env.ctxkeys[i];
		lens[i] = env.ctxkeylens[i];
	}
	key_id = pnstrdup(r->key_id, r->key_id_len);
	*header = kms_envelope_build_header(env.provider, key_id, env.nctxkeys, names, lens,
										env.wrapped, env.wrapped_len, header_len);
	return true;
}
