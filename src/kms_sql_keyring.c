/*-------------------------------------------------------------------------
 * kms_sql_keyring.c
 *	  SQL functions of the local keyring catalog (sql/install/15_keyring.sql
 *	  declares them): scheduled deletion with the in-use check, master key
 *	  rotation and fingerprints, and the import of the 1.0 keyring file
 *	  run by ALTER EXTENSION kms_pg UPDATE.
 *-------------------------------------------------------------------------
 */
#include "kms_sql_keyring.h"
#include "kms_dek_cache.h"
#include "kms_key_grants.h"
#include "kms_master_key.h"
#include "kms_provider_local.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

/* Keys (ids or aliases, in TopMemoryContext) to forget at commit. */
static List *forget_pending = NIL;
static bool xact_cb_registered = false;

static void
keyring_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	if (forget_pending == NIL)
		return;
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PREPARE)
	{
		foreach(lc, forget_pending)
			(void) kms_dek_cache_forget_key(KMS_PROVIDER_LOCAL, (const char *) lfirst(lc));
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PREPARE || event == XACT_EVENT_ABORT)
	{
		list_free_deep(forget_pending);
		forget_pending = NIL;
	}
}

void
kms_keyring_forget_at_commit(const char *key)
{
	MemoryContext old;

	if (!xact_cb_registered)
	{
		RegisterXactCallback(keyring_xact_callback, NULL);
		xact_cb_registered = true;
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	forget_pending = lappend(forget_pending, pstrdup(key));
	MemoryContextSwitchTo(old);
}

static char *
text_arg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

/*
 * Refuse when any column this user can read holds a value under key_id:
 * kms_key_columns() (plpgsql, run as the caller through SPI) runs
 * kms_key_usage() over every bytea column.
 */
static void
require_unused(FunctionCallInfo fcinfo, const char *key_id)
{
	Oid			nsp = get_func_namespace(fcinfo->flinfo->fn_oid);
	char	   *sql;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(key_id)};

	sql = psprintf("SELECT tbl::pg_catalog.text, col::pg_catalog.text, \"values\" FROM %s.kms_key_columns($1) LIMIT 1",
				   quote_identifier(get_namespace_name(nsp)));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(sql, 1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "kms_key_columns failed");
	if (SPI_processed > 0)
	{
		char	   *tbl = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		char	   *col = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		char	   *n = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("kms_pg local key \"%s\" is still in use", key_id),
				 errdetail("%s values of column \"%s\" of \"%s\" are encrypted under it (see kms_key_usage()).",
						   n, col, tbl),
				 errhint("Rotate those values to another key with kms_rotate_column() first.")));
	}
	SPI_finish();
}

/* SQL: kms_schedule_key_deletion(key text, pending_days int DEFAULT 30) RETURNS timestamptz */
PG_FUNCTION_INFO_V1(kms_schedule_key_deletion);
Datum
kms_schedule_key_deletion(PG_FUNCTION_ARGS)
{
	char	   *key = text_arg(fcinfo, 0, "key");
	int			days;
	const char *key_id;
	TimestampTz when;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", "pending_days")));
	days = PG_GETARG_INT32(1);
	if (days < 7 || days > 30)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("pending deletion window of %d days is out of range", days),
				 errdetail("A key can be scheduled for deletion 7 to 30 days ahead, as in AWS KMS.")));
	require_unused(fcinfo, kms_key_check_local_admin(key, fcinfo->flinfo->fn_oid));
	when = kms_local_schedule_deletion(key, days, &key_id);
	/* the key is disabled from now on: its cached DEKs must stop working */
	kms_dek_cache_forget_key(KMS_PROVIDER_LOCAL, key_id);
	kms_keyring_forget_at_commit(key_id);
	PG_RETURN_TIMESTAMPTZ(when);
}

/* SQL: kms_cancel_key_deletion(key text) RETURNS void */
PG_FUNCTION_INFO_V1(kms_cancel_key_deletion);
Datum
kms_cancel_key_deletion(PG_FUNCTION_ARGS)
{
	kms_local_cancel_deletion(kms_key_check_local_admin(text_arg(fcinfo, 0, "key"),
														fcinfo->flinfo->fn_oid));
	PG_RETURN_VOID();
}

/* SQL: kms_purge_deleted_keys() RETURNS int */
PG_FUNCTION_INFO_V1(kms_purge_deleted_keys);
Datum
kms_purge_deleted_keys(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(kms_local_purge_deleted());
}

/* SQL: kms_rotate_master_key() RETURNS int */
PG_FUNCTION_INFO_V1(kms_rotate_master_key);
Datum
kms_rotate_master_key(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(kms_local_rotate_master_key());
}

/* SQL: kms_master_key_info(OUT fingerprint text, OUT previous_fingerprint text) RETURNS record */
PG_FUNCTION_INFO_V1(kms_master_key_info);
Datum
kms_master_key_info(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	const KmsMasterKey *prev;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = CStringGetTextDatum(kms_master_key_current()->fingerprint);
	prev = kms_master_key_previous();
	if (prev)
		values[1] = CStringGetTextDatum(prev->fingerprint);
	else
		nulls[1] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/* SQL (update script only): kms_local_import_keyring() RETURNS int */
PG_FUNCTION_INFO_V1(kms_local_import_keyring);
Datum
kms_local_import_keyring(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(kms_local_import_keyring_file());
}
