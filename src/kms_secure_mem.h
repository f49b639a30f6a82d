/*-------------------------------------------------------------------------
 * kms_secure_mem.h
 *	  Wipe-on-reset allocations for plaintext (the pgsodium idea).
 *-------------------------------------------------------------------------
 */
#ifndef KMS_SECURE_MEM_H
#define KMS_SECURE_MEM_H

#include "kms_pg.h"

#include <string.h>

/*
 * palloc size bytes in CurrentMemoryContext and wipe them with
 * explicit_bzero when that context is reset or deleted, including on
 * ERROR.  Use for buffers that hold plaintext or key material.
 */
extern void *kms_secure_palloc(Size size);

#endif							/* KMS_SECURE_MEM_H */
