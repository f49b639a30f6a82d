/*-------------------------------------------------------------------------
 * kms_pg.c
 *	  Module entry point: defines the GUCs and installs the shared-memory
 *	  hooks of the DEK cache when loaded through shared_preload_libraries.
 *-------------------------------------------------------------------------
 */
#include "kms_pg.h"
#include "kms_key_grants.h"
#include "kms_citus.h"

#include "fmgr.h"
#include "miscadmin.h"

bool		kms_loaded_via_preload = false;

/*
 * From 16 on, symbols are hidden by default and fmgr.h declares _PG_init
 * PGDLLEXPORT; 15's fmgr.h does not declare it.  Declared here too, so
 * every version exports it (build check: test/check_exports.sh).
 */
extern PGDLLEXPORT void _PG_init(void);

void
_PG_init(void)
{
	kms_loaded_via_preload = process_shared_preload_libraries_in_progress;
	kms_guc_init();
	kms_dek_cache_init();
	kms_http_init();
	kms_key_grants_init();
	kms_citus_init();
}
