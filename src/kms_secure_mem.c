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
