/*-------------------------------------------------------------------------
 * kms_secure_mem.c
 *	  Allocations that are wiped when their memory context goes away.
 *
 * A decrypted value is returned to the executor in the caller's memory
 * context; a reset callback on that context wipes the buffer when the
 * context is reset (per row) or deleted, also when the query fails.
 *-------------------------------------------------------------------------
 */
#include "kms_secure_mem.h"
#include "kms_errors.h"

#include <openssl/rand.h>

#include "miscadmin.h"

typedef struct KmsWipeCallback
{
	MemoryContextCallback cb;
	void	   *ptr;
	Size		size;
} KmsWipeCallback;

static void
kms_wipe_callback(void *arg)
{
	KmsWipeCallback *w = (KmsWipeCallback *) arg;

	explicit_bzero(w->ptr, w->size);
}

void *
kms_secure_palloc(Size size)
{
	KmsWipeCallback *w = palloc(sizeof(KmsWipeCallback));

	w->ptr = palloc(size);
	w->size = size;
	w->cb.func = kms_wipe_callback;
	w->cb.arg = w;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, &w->cb);
	return w->ptr;
}

#define KMS_NONCE_POOL	4092	/* a multiple of 12 */

static uint8 nonce_pool[KMS_NONCE_POOL];
static int	nonce_pos = KMS_NONCE_POOL;
static int	nonce_pid = 0;

void
kms_random_nonce(uint8 *out)
{
	if (nonce_pid != MyProcPid || nonce_pos + KMS_NONCE_LEN > KMS_NONCE_POOL)
	{
		/* mark the pool empty first: an error below must not leave it reusable */
		nonce_pos = KMS_NONCE_POOL;
		if (RAND_bytes(nonce_pool, KMS_NONCE_POOL) != 1)
			kms_report_openssl_error("RAND_bytes");
		nonce_pid = MyProcPid;
		nonce_pos = 0;
	}
	memcpy(out, nonce_pool + nonce_pos, KMS_NONCE_LEN);
	/* a nonce is used once: clear it from the pool */
	memset(nonce_pool + nonce_pos, 0, KMS_NONCE_LEN);
	nonce_pos += KMS_NONCE_LEN;
}
