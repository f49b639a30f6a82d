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

/*
 * A fresh random 96-bit GCM nonce.  Drawn from a per-process pool filled
 * by RAND_bytes 4 KB at a time (one RAND_bytes call costs about as much
 * as sealing a small value); the pool belongs to the process that filled
 * it and is discarded in any other (backends are forked from the
 * postmaster, which never draws from it).
 */
extern void kms_random_nonce(uint8 *out);

#endif							/* KMS_SECURE_MEM_H */
