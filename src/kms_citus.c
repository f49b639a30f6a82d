/*-------------------------------------------------------------------------
 * kms_citus.c
 *	  The local keyring on a Citus cluster (docs/citus.md).
 *
 *	  Citus does not copy the contents of an extension's tables, so on a
 *	  Citus coordinator every change to the keyring catalog is followed by
 *	  a copy of the whole catalog (rows as they are stored: key material
 *	  wrapped under the master key) to every worker through Citus's
 *	  run_command_on_workers(); each worker replaces its rows, checks that
 *	  its own master key unwraps every version, and forgets the cached DEKs
 *	  of every key no longer usable.  A worker refuses keyring changes of
 *	  its own.  Everything here is looked up at run time through SQL and
 *	  stays dormant unless the citus extension is installed in the current
 *	  database.
 *
 *	  Protected columns: a shard's copy of a column's trigger finds its
 *	  catalog row through the distributed table the shard belongs to
 *	  (kms_citus_shard_origin); the rows themselves are copied to the
 *	  workers by kms_citus_sync_columns() (sql/install/40_citus.sql).
 *-------------------------------------------------------------------------
 */
#include "kms_citus.h"
#include "kms_dek_registry.h"
#include "kms_local_catalog.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "catalog/namespace.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/planner.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

/* true while a worker applies the coordinator's copy */
static bool applying = false;

KmsCitusRole
kms_citus_role(void)
{
	KmsCitusRole role = KMS_CITUS_SINGLE;
	bool		isnull;

	if (!OidIsValid(get_extension_oid("citus", true)))
		return KMS_CITUS_NONE;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT pg_catalog.citus_is_coordinator(),"
					" COALESCE((SELECT groupid FROM pg_catalog.pg_dist_local_group LIMIT 1), 0)",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read this node's Citus role");
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		role = KMS_CITUS_COORDINATOR;
	else if (DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)) != 0)
		role = KMS_CITUS_WORKER;
	SPI_finish();
	return role;
}

bool
kms_citus_check_change_allowed(void)
{
	KmsCitusRole role;

	if (applying || creating_extension)
		return false;
	role = kms_citus_role();
	if (role == KMS_CITUS_COORDINATOR)
		return true;
	if (role == KMS_CITUS_WORKER)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kms_pg local keys of a Citus cluster are changed on the coordinator"),
				 errdetail("This node is a Citus worker; the coordinator copies its keyring to every worker."),
				 errhint("Run the key function on the coordinator.")));
	return false;
}

bool
kms_citus_installed(void)
{
	return OidIsValid(get_extension_oid("citus", true));
}

int
kms_citus_run_on_workers(const char *cmd, const char *what)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	int			n;

	values[0] = CStringGetTextDatum(cmd);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT nodename, nodeport, success, result"
							  " FROM pg_catalog.run_command_on_workers($1)",
							  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "run_command_on_workers failed");
	n = (int) SPI_processed;
	for (int i = 0; i < n; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;

		if (!DatumGetBool(SPI_getbinval(t, d, 3, &isnull)))
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_EXCEPTION),
					 errmsg("could not %s Citus worker %s:%s", what,
							SPI_getvalue(t, d, 1), SPI_getvalue(t, d, 2)),
					 errdetail("The worker answered: %s", SPI_getvalue(t, d, 4)),
					 errhint("Every node needs kms_pg and the coordinator's master key. "
							 "Workers that took the change keep it; run the function again once the worker is fixed "
							 "(kms_citus_sync_keys() for the keyring).")));
	}
	SPI_finish();
	return n;
}

/* Copy the whole catalog to every worker; returns how many took it. */
static int
push_to_workers(void)
{
	char	   *state = kms_catalog_snapshot_json();
	char	   *cmd;
	int			n;

	cmd = psprintf("SELECT %s.kms_citus_apply_keyring(%s)",
				   quote_identifier(kms_catalog_schema()), quote_literal_cstr(state));
	n = kms_citus_run_on_workers(cmd, "copy the kms_pg keyring to");
	pfree(cmd);
	pfree(state);
	return n;
}

bool
kms_citus_reference_placement(Oid relid, Oid *placement)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	bool		isnull;
	bool		found = false;
	int64		shardid = 0;

	*placement = InvalidOid;
	if (!kms_citus_installed())
		return false;
	values[0] = ObjectIdGetDatum(relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT s.shardid FROM pg_catalog.pg_dist_partition p"
							  " JOIN pg_catalog.pg_dist_shard s ON s.logicalrelid OPERATOR(pg_catalog.=) p.logicalrelid"
							  " WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass"
							  " AND p.partmethod OPERATOR(pg_catalog.=) 'n'"
							  " AND p.repmodel OPERATOR(pg_catalog.=) 't'",
							  1, types, values, NULL, true, 2) != SPI_OK_SELECT)
		elog(ERROR, "could not read Citus table metadata");
	if (SPI_processed == 1)
	{
		shardid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		found = !isnull;
	}
	SPI_finish();
	if (found)
	{
		/* a reference table's one shard: <table>_<shardid>, in the table's schema */
		char	   *relname = get_rel_name(relid);

		if (relname != NULL)
			*placement = get_relname_relid(psprintf("%s_" INT64_FORMAT, relname, shardid),
										   get_rel_namespace(relid));
	}
	return found;
}

bool
kms_citus_has_workers(void)
{
	bool		found;

	if (!kms_citus_installed())
		return false;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT 1 FROM pg_catalog.pg_dist_node n"
					" WHERE n.groupid OPERATOR(pg_catalog.<>) 0 AND n.noderole OPERATOR(pg_catalog.=) 'primary'",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read Citus node metadata");
	found = SPI_processed == 1;
	SPI_finish();
	return found;
}

void
kms_citus_after_change(void)
{
	if (applying || creating_extension)
		return;
	if (kms_citus_role() == KMS_CITUS_COORDINATOR)
		(void) push_to_workers();
}

/* SQL: kms_citus_sync_keys() RETURNS int -- copy the keyring to every worker */
PG_FUNCTION_INFO_V1(kms_citus_sync_keys);
Datum
kms_citus_sync_keys(PG_FUNCTION_ARGS)
{
	if (kms_citus_role() != KMS_CITUS_COORDINATOR)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this node is not a Citus coordinator"),
				 errdetail("kms_citus_sync_keys() copies the coordinator's keyring to the Citus workers."),
				 errhint("Run it on the coordinator, in a database with the citus extension.")));
	/* wait for key changes in progress: the copy must include them */
	kms_catalog_lock_changes();
	PG_RETURN_INT32(push_to_workers());
}

/* SQL: kms_citus_apply_keyring(state text) RETURNS int -- run on a worker by the coordinator */
PG_FUNCTION_INFO_V1(kms_citus_apply_keyring);
Datum
kms_citus_apply_keyring(PG_FUNCTION_ARGS)
{
	int			n;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", "state")));
	if (kms_citus_role() != KMS_CITUS_WORKER)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this node is not a Citus worker"),
				 errdetail("kms_citus_apply_keyring() replaces a worker's keyring with the coordinator's copy."),
				 errhint("On the coordinator, run kms_citus_sync_keys().")));
	applying = true;
	PG_TRY();
	{
		n = kms_catalog_replace_from_json(text_to_cstring(PG_GETARG_TEXT_PP(0)));
		/* a key disabled or gone: every backend reads registry rows again */
		kms_dek_registry_invalidate();
	}
	PG_FINALLY();
	{
		applying = false;
	}
	PG_END_TRY();
	PG_RETURN_INT32(n);
}

bool
kms_citus_shard_origin(Oid relid, const char *tgname, Oid *logical_relid, char **logical_tgname)
{
	char	   *relname;
	char	   *us;
	char	   *end;
	int64		shardid;
	size_t		tglen;
	size_t		sufflen;
	Oid			types[2] = {INT8OID, OIDOID};
	Datum		values[2];
	bool		isnull;
	bool		found = false;
	char		suffix[32];

	if (!OidIsValid(get_extension_oid("citus", true)))
		return false;
	/* Citus names a shard <table>_<shardid> (long names: truncated and hashed) */
	relname = get_rel_name(relid);
	if (relname == NULL || (us = strrchr(relname, '_')) == NULL || us[1] == '\0')
		return false;
	errno = 0;
	shardid = strtoi64(us + 1, &end, 10);
	if (errno != 0 || *end != '\0' || shardid <= 0)
		return false;
	/* and its triggers <trigger>_<shardid> */
	snprintf(suffix, sizeof(suffix), "_" INT64_FORMAT, shardid);
	tglen = strlen(tgname);
	sufflen = strlen(suffix);
	if (tglen <= sufflen || strcmp(tgname + tglen - sufflen, suffix) != 0)
		return false;

	/*
	 * Citus's own test (relation_is_a_known_shard: the shard's name is the
	 * one Citus gives shard <shardid> of its table, in the table's schema),
	 * so that no other table can pass for a shard.
	 */
	values[0] = Int64GetDatum(shardid);
	values[1] = ObjectIdGetDatum(relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT s.logicalrelid::pg_catalog.oid FROM pg_catalog.pg_dist_shard s"
							  " WHERE s.shardid OPERATOR(pg_catalog.=) $1"
							  " AND pg_catalog.relation_is_a_known_shard($2::pg_catalog.regclass)",
							  2, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read Citus shard metadata");
	if (SPI_processed == 1)
	{
		*logical_relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 1, &isnull));
		found = !isnull;
	}
	SPI_finish();
	if (found)
		*logical_tgname = pnstrdup(tgname, tglen - sufflen);
	return found;
}

/*
 * Whether relid is in Citus's metadata (a distributed, reference or Citus
 * local table).  Its rows then live in shards reached only through Citus's
 * planner, so a protected column's view must write it with a statement,
 * never straight into the coordinator's shell table.  False without the
 * citus extension, without asking anything else.
 */
bool
kms_citus_table(Oid relid)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	bool		found;

	if (!OidIsValid(get_extension_oid("citus", true)))
		return false;
	values[0] = ObjectIdGetDatum(relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT 1 FROM pg_catalog.pg_dist_partition p"
							  " WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read Citus table metadata");
	found = SPI_processed == 1;
	SPI_finish();
	return found;
}

/*
 * UPDATE and DELETE through the decrypting view of a Citus table
 * (kms_pc_citus_view_rules, sql/install/20_columns.sql): the view's rule
 * turns the statement into an UPDATE or DELETE of the table whose FROM
 * holds the view (the rule's OLD and NEW: the statement's original result
 * relation).  The rewriter leaves that range-table entry marked as not
 * written in FROM (inFromCl false), and Citus, which deparses the query
 * for each shard the way ruleutils does, leaves such entries out of the
 * FROM list: the shard's statement then names a relation it does not
 * have.  This hook, which runs before Citus's planner, marks the entry as
 * in FROM.  It touches only UPDATE and DELETE statements whose WHERE calls
 * kms_pc_view_write_check() (only the rules do), and only subquery
 * entries; the flag changes nothing in PostgreSQL's planning.
 */
static planner_hook_type prev_planner = NULL;

static bool
calls_write_check(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, FuncExpr))
	{
		FuncExpr   *f = (FuncExpr *) node;
		char	   *name = get_func_name(f->funcid);

		if (name != NULL && strcmp(name, "kms_pc_view_write_check") == 0 && kms_catalog_present() &&
			get_func_namespace(f->funcid) == get_namespace_oid(kms_catalog_schema(), true))
			return true;
	}
	return expression_tree_walker(node, calls_write_check, context);
}

static PlannedStmt *
kms_citus_planner(Query *parse, const char *query_string, int cursor_options, ParamListInfo bound_params)
{
	if ((parse->commandType == CMD_UPDATE || parse->commandType == CMD_DELETE) &&
		parse->jointree != NULL && parse->jointree->quals != NULL &&
		OidIsValid(get_extension_oid("citus", true)) &&
		calls_write_check(parse->jointree->quals, NULL))
	{
		ListCell   *lc;

		foreach(lc, parse->rtable)
		{
			RangeTblEntry *rte = (RangeTblEntry *) lfirst(lc);

			if (rte->rtekind == RTE_SUBQUERY && !rte->inFromCl)
				rte->inFromCl = true;
		}
	}
	if (prev_planner != NULL)
		return prev_planner(parse, query_string, cursor_options, bound_params);
	return standard_planner(parse, query_string, cursor_options, bound_params);
}

void
kms_citus_init(void)
{
	prev_planner = planner_hook;
	planner_hook = kms_citus_planner;
}
