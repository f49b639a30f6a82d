/*-------------------------------------------------------------------------
 * kms_columns.h
 *	  Protected columns (docs/column-encryption.md): the kms_sealed column
 *	  type, the generated BEFORE trigger that seals what writers store, and
 *	  the blind index, in C running as the caller.
 *
 * kms_sealed holds, as varlena bytes, either
 *	  - a kms_pg ciphertext (magic C5 4B 50 47, kms_envelope.h), the only
 *		thing the column's CHECK constraint lets the table keep, or
 *	  - plaintext on its way to the trigger: C5 4B 50 54 ("\xC5KPT")
 *		followed by the bytes the writer sent (the text in the database
 *		encoding, or the bytes of a bytea), made by the type's input and
 *		receive functions and by the assignment casts from the column's
 *		original type.
 * Its text form is "\x" and the hex of those bytes, as for bytea; any
 * other text written to it is plaintext, byte for byte.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_COLUMNS_H
#define KMS_COLUMNS_H

#include "kms_context.h"

/*
 * The context value of a datum of type typid (domains allowed) as
 * to_jsonb() would encode it: integers and numeric as numbers, boolean,
 * and text, varchar, char(n), name, uuid, enums, date, timestamp and
 * timestamptz as strings (dates and times in ISO 8601, as jsonb writes
 * them).  Fills p->type, p->value (NUL-terminated), p->valuelen; false for
 * any other type.
 */
extern bool kms_context_value_from_datum(Datum value, Oid typid, KmsContextPair *p);

#endif							/* KMS_COLUMNS_H */
