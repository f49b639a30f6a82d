/*-------------------------------------------------------------------------
 * kms_errors.h
 *	  Internal error codes and the one function that turns them into
 *	  user-facing ereport()s (the pgcrypto px_THROW_ERROR idea).
 *
 * Parsers (ciphertext, context) return a KmsError instead of raising, so
 * they can run in fuzz harnesses and never leave state half-built.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_ERRORS_H
#define KMS_ERRORS_H

#include "kms_pg.h"

typedef enum KmsError
{
	KMS_OK = 0,
	/* ciphertext format */
	KMS_ERR_CT_EMPTY,
	KMS_ERR_CT_TRUNCATED,
	KMS_ERR_CT_BAD_MAGIC,
	KMS_ERR_CT_BAD_VERSION,
	KMS_ERR_CT_BAD_PROVIDER,
	KMS_ERR_CT_BAD_FIELD,
	KMS_ERR_CT_AUTH_FAILED,		/* GCM tag mismatch: tampering or wrong context */
	/* encryption context */
	KMS_ERR_CTX_NOT_OBJECT,
	KMS_ERR_CTX_BAD_VALUE,
	KMS_ERR_CTX_EMPTY_KEY,
	KMS_ERR_CTX_DUPLICATE_KEY,
	KMS_ERR_CTX_TOO_LARGE,
	/* sizes */
	KMS_ERR_VALUE_TOO_LARGE,
	/* crypto library */
	KMS_ERR_CRYPTO
} KmsError;

/*
 * Raise the error for code; detail may be NULL.  Never returns for an
 * error code.  Nothing secret may be passed in detail.
 */
kms_noreturn extern void kms_report_error(KmsError code, const char *detail);

/* Raise an OpenSSL failure with the library's reason (never key bytes). */
kms_noreturn extern void kms_report_openssl_error(const char *what);

/* Short English text for a code (also used by the fuzz harnesses). */
extern const char *kms_error_text(KmsError code);

#endif							/* KMS_ERRORS_H */
