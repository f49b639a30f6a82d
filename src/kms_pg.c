/*-------------------------------------------------------------------------
 * kms_pg.c
 *	  Module entry point: defines the GUCs and installs the shared-memory
 *	  hooks of the DEK cache when loaded through shared_preload_libraries.
 *-------------------------------------------------------------------------
 */
#include "kms_pg.h"

#include "miscadmin.h"

bool		kms_loaded_via_preload = false;

void		_PG_init(void);

void
_PG_init(void)
{
	kms_loaded_via_preload = process_shared_preload_libraries_in_progress;
	kms_guc_init();
	kms_dek_cache_init();
	kms_http_init();
}
