/*-------------------------------------------------------------------------
 * kms_errors.c
 *	  Map kms_pg's internal error codes to ereport() with specific
 *	  SQLSTATEs, messages, details and hints.
 *
 * Every user-facing error raised for malformed input goes through
 * kms_report_error() so that the SQLSTATE and wording of each failure is
 * decided in exactly one place (docs/troubleshooting.md lists them).
 *-------------------------------------------------------------------------
 */
#include "kms_errors.h"

#include <openssl/err.h>

const char *
kms_error_text(KmsError code)
{
	switch (code)
	{
		case KMS_OK:
			return "no error";
		case KMS_ERR_CT_EMPTY:
			return "kms_pg ciphertext is empty";
		case KMS_ERR_CT_TRUNCATED:
			return "kms_pg ciphertext is truncated";
		case KMS_ERR_CT_BAD_MAGIC:
			return "value is not a kms_pg ciphertext";
		case KMS_ERR_CT_BAD_VERSION:
			return "unsupported kms_pg ciphertext format version";
		case KMS_ERR_CT_BAD_PROVIDER:
			return "kms_pg ciphertext names an unknown key provider";
		case KMS_ERR_CT_BAD_FIELD:
			return "kms_pg ciphertext header is malformed";
		case KMS_ERR_CT_AUTH_FAILED:
			return "kms_pg ciphertext failed authentication: wrong encryption context, or the value was altered";
		case KMS_ERR_CTX_NOT_OBJECT:
			return "encryption context must be a JSON object";
		case KMS_ERR_CTX_BAD_VALUE:
			return "encryption context values must be strings, numbers or booleans";
		case KMS_ERR_CTX_EMPTY_KEY:
			return "encryption context keys must not be empty";
		case KMS_ERR_CTX_DUPLICATE_KEY:
			return "encryption context key is given more than once";
		case KMS_ERR_CTX_TOO_LARGE:
			return "encryption context is too large";
		case KMS_ERR_VALUE_TOO_LARGE:
			return "value is too large to encrypt";
		case KMS_ERR_CRYPTO:
			return "cryptographic library failure";
	}
	return "unknown kms_pg error";
}

void
kms_report_error(KmsError code, const char *detail)
{
	int			sqlstate;
	const char *hint = NULL;

	switch (code)
	{
		case KMS_ERR_CT_EMPTY:
		case KMS_ERR_CT_TRUNCATED:
		case KMS_ERR_CT_BAD_FIELD:
		case KMS_ERR_CT_BAD_PROVIDER:
			sqlstate = ERRCODE_DATA_CORRUPTED;
			break;
		case KMS_ERR_CT_BAD_MAGIC:
			sqlstate = ERRCODE_INVALID_BINARY_REPRESENTATION;
			hint = "Only values produced by kms_encrypt() can be decrypted.";
			break;
		case KMS_ERR_CT_BAD_VERSION:
			sqlstate = ERRCODE_FEATURE_NOT_SUPPORTED;
			hint = "The value was written by a newer kms_pg; upgrade the extension.";
			break;
		case KMS_ERR_CT_AUTH_FAILED:
			sqlstate = ERRCODE_DATA_EXCEPTION;
			hint = "Check that the encryption context is exactly the one used to encrypt the value; "
				"a value copied from another row, column or table does not decrypt.";
			break;
		case KMS_ERR_CTX_NOT_OBJECT:
		case KMS_ERR_CTX_BAD_VALUE:
		case KMS_ERR_CTX_EMPTY_KEY:
		case KMS_ERR_CTX_DUPLICATE_KEY:
			sqlstate = ERRCODE_INVALID_PARAMETER_VALUE;
			hint = "Use a flat JSON object such as {\"tenant\": \"acme\", \"id\": 42}.";
			break;
		case KMS_ERR_CTX_TOO_LARGE:
		case KMS_ERR_VALUE_TOO_LARGE:
			sqlstate = ERRCODE_PROGRAM_LIMIT_EXCEEDED;
			break;
		case KMS_ERR_CRYPTO:
			sqlstate = ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
			break;
		case KMS_OK:
		default:
			elog(ERROR, "kms_report_error called with code %d", (int) code);
			pg_unreachable();
	}

	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg("%s", kms_error_text(code)),
			 detail ? errdetail_internal("%s", detail) : 0,
			 hint ? errhint("%s", hint) : 0));
	pg_unreachable();
}

void
kms_report_openssl_error(const char *what)
{
	unsigned long e = ERR_get_error();
	char		buf[256];

	if (e != 0)
		ERR_error_string_n(e, buf, sizeof(buf));
	else
		strlcpy(buf, "no OpenSSL error queued", sizeof(buf));
	ERR_clear_error();
	ereport(ERROR,
			(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
			 errmsg("kms_pg: OpenSSL failure in %s", what),
			 errdetail_internal("%s", buf)));
	pg_unreachable();
}
