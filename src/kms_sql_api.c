/*-------------------------------------------------------------------------
 * kms_sql_api.c
 *	  Thin SQL-callable wrappers.  Each function is headed by the SQL
 *	  signature it implements (sql/install/10_core.sql declares them).
 *
 * The per-row path is kms_seal()/kms_open(): canonicalise the context,
 * get a keyed DEK from the cache (no lock on a hit), and run one
 * AES-256-GCM operation straight into the result buffer.
 *-------------------------------------------------------------------------
 */
#include "kms_dek_cache.h"
#include "kms_dek_registry.h"
#include "kms_guc.h"
#include "kms_local_catalog.h"
#include "kms_columns.h"
#include "kms_key_grants.h"
#include "kms_sql_api.h"
#include "kms_provider_local.h"
#include "kms_sql_keyring.h"
#include "kms_secure_mem.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"

#include <unistd.h>

#include <openssl/hmac.h>

PG_MODULE_MAGIC;

/* Largest plaintext whose ciphertext still fits a bytea. */
#define KMS_MAX_OUTPUT	(MaxAllocSize - VARHDRSZ)

static void
get_context(FunctionCallInfo fcinfo, int argno, KmsContext *ctx)
{
	if (PG_NARGS() <= argno)
	{
		kms_context_init_empty(ctx);
		return;
	}
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("encryption context must not be NULL"),
				 errhint("Use '{}' for an empty context.")));
	kms_context_from_jsonb_or_error(PG_GETARG_JSONB_P(argno), ctx);
}

static const char *
get_key_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return kms_provider_resolve_key(NULL);
	return kms_provider_resolve_key(text_to_cstring(PG_GETARG_TEXT_PP(argno)));
}

/*
 * Seal len bytes under ctx with a DEK of key from the current provider.
 * The caller must hold one of privmask on the key the DEK is under (the
 * key itself, however it was named) with a condition admitting ctx.
 */
bytea *
kms_seal(const char *plain, Size len, const KmsContext *ctx, const char *key,
		 int privmask, Oid fn_oid)
{
	return kms_seal_format(plain, len, ctx, key, privmask, fn_oid, 0);
}

bytea *
kms_seal_format(const char *plain, Size len, const KmsContext *ctx, const char *key,
				int privmask, Oid fn_oid, int format)
{
	const KmsProviderRoutine *provider = kms_provider_current();
	KmsContext	kctx;
	KmsDek	   *dek;
	bytea	   *out;
	uint8	   *p;
	Size		total;
	KmsAad		aad;
	int			prefix_len;
	uint64		ref = 0;

	if (format == 0)
		format = kms_guc_format;
	if (kms_guc_kms_context_nkeys > 0)
		kms_context_select(ctx, kms_guc_kms_context_keylist, kms_guc_kms_context_nkeys, &kctx);
	else
		kms_context_init_empty(&kctx);

	dek = kms_dek_for_encrypt(provider, key, &kctx, len, format);
	kms_key_check_header(dek->header, privmask, ctx, fn_oid);
	/* format 2: a registry row that commits with this transaction, or has */
	if (format == 2)
	{
		ref = kms_dek_registry_ensure(dek, key, &kctx);
		/*
		 * The shared entry is found by ref too (a row not yet committed is
		 * merely not found by others: they fall back to the registry).
		 */
		kms_dek_cache_note_ref(dek, ref);
	}
	prefix_len = format == 2 ? KMS_V2_PREFIX_LEN : dek->header_len;
	total = (Size) prefix_len + KMS_NONCE_LEN + len + KMS_TAG_LEN;
	if (len > KMS_MAX_OUTPUT || total > KMS_MAX_OUTPUT)
		kms_report_error(KMS_ERR_VALUE_TOO_LARGE,
						 psprintf("The ciphertext would be %zu bytes; a bytea holds at most %zu.",
								  total, (Size) KMS_MAX_OUTPUT));
	out = (bytea *) palloc(VARHDRSZ + total);
	SET_VARSIZE(out, VARHDRSZ + total);
	p = (uint8 *) VARDATA(out);
	if (format == 2)
	{
		kms_envelope_v2_prefix(ref, p);
		aad.prefix = p;
		aad.prefix_len = KMS_V2_PREFIX_LEN;
	}
	else
	{
		memcpy(p, dek->header, dek->header_len);
		aad.prefix = dek->header;
		aad.prefix_len = 5;
	}
	aad.names = dek->header + dek->names_off;
	aad.names_len = dek->names_len;
	aad.context = (const uint8 *) ctx->canonical.data;
	aad.context_len = ctx->canonical.len;
	kms_random_nonce(p + prefix_len);
	kms_gcm_seal(dek->ctx, &aad, (const uint8 *) plain, (int) len,
				 p + prefix_len,
				 p + prefix_len + KMS_NONCE_LEN,
				 p + prefix_len + KMS_NONCE_LEN + len);
	return out;
}

static void
parse_or_error(bytea *ct, KmsEnvelope *env)
{
	char	   *detail;
	KmsError	err = kms_envelope_parse((const uint8 *) VARDATA_ANY(ct), VARSIZE_ANY_EXHDR(ct),
										 env, &detail);

	if (err != KMS_OK)
		kms_report_error(err, detail);
	/* format 2: the key id, names and wrapped DEK are in the registry */
	if (env->version == KMS_ENVELOPE_V2)
		kms_dek_registry_fill(env);
}

/*
 * Open a ciphertext; the result is wiped when its memory context goes away.
 * The caller must hold one of privmask on the value's key, with a
 * condition admitting ctx, before its DEK is looked up.
 */
static bytea *
kms_open(bytea *ct, const KmsContext *ctx, int privmask, Oid fn_oid)
{
	return kms_open_ext(ct, ctx, false, privmask, fn_oid);
}

/*
 * The same; with auth_fail_ok, a value that does not open under ctx (GCM
 * tag mismatch) gives NULL instead of an error.  Other errors (format,
 * provider) are raised.
 */
bytea *
kms_open_ext(bytea *ct, const KmsContext *ctx, bool auth_fail_ok, int privmask, Oid fn_oid)
{
	KmsEnvelope env;
	const KmsProviderRoutine *provider;
	KmsDek	   *dek = NULL;
	bytea	   *out;
	KmsAad		aad;
	char	   *detail;
	KmsError	err;

	err = kms_envelope_parse((const uint8 *) VARDATA_ANY(ct), VARSIZE_ANY_EXHDR(ct), &env, &detail);
	if (err != KMS_OK)
		kms_report_error(err, detail);
	/*
	 * Format 2: the registry row from this backend's memo, else the DEK
	 * from the shared cache by reference (no registry lookup), else the
	 * registry.
	 */
	if (env.version == KMS_ENVELOPE_V2 && !kms_dek_registry_fill_memo(&env))
	{
		dek = kms_dek_for_decrypt_ref(&env);
		if (dek == NULL)
			kms_dek_registry_fill(&env);
	}
	provider = kms_provider_by_id(env.provider);
	if (provider == NULL)
		kms_report_error(KMS_ERR_CT_BAD_PROVIDER, NULL);
	kms_key_check(env.provider, env.key_id, env.key_id_len, privmask, ctx, fn_oid);
	if (dek == NULL)
		dek = kms_dek_for_decrypt(provider, &env, ctx);

	aad.prefix = (const uint8 *) VARDATA_ANY(ct);
	aad.prefix_len = env.version == KMS_ENVELOPE_V2 ? KMS_V2_PREFIX_LEN : 5;
	aad.names = env.names_block;
	aad.names_len = env.names_block_len;
	aad.context = (const uint8 *) ctx->canonical.data;
	aad.context_len = ctx->canonical.len;
	out = (bytea *) kms_secure_palloc(VARHDRSZ + env.body_len);
	SET_VARSIZE(out, VARHDRSZ + env.body_len);
	if (!kms_gcm_open(dek->ctx, &aad, env.nonce, env.body, env.body_len, env.tag, (uint8 *) VARDATA(out)))
	{
		explicit_bzero(VARDATA(out), env.body_len);
		if (auth_fail_ok)
			return NULL;
		kms_report_error(KMS_ERR_CT_AUTH_FAILED, NULL);
	}
	return out;
}

/* SQL: kms_encrypt(plaintext bytea, context jsonb DEFAULT '{}', key_id text DEFAULT NULL) RETURNS bytea */
PG_FUNCTION_INFO_V1(kms_encrypt);
Datum
kms_encrypt(PG_FUNCTION_ARGS)
{
	bytea	   *pt;
	KmsContext	ctx;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	pt = PG_GETARG_BYTEA_PP(0);
	get_context(fcinfo, 1, &ctx);
	PG_RETURN_BYTEA_P(kms_seal(VARDATA_ANY(pt), VARSIZE_ANY_EXHDR(pt), &ctx, get_key_arg(fcinfo, 2),
								 KMS_PRIV_ENCRYPT, fcinfo->flinfo->fn_oid));
}

/* SQL: kms_encrypt_text(plaintext text, context jsonb DEFAULT '{}', key_id text DEFAULT NULL) RETURNS bytea */
PG_FUNCTION_INFO_V1(kms_encrypt_text);
Datum
kms_encrypt_text(PG_FUNCTION_ARGS)
{
	return kms_encrypt(fcinfo);
}

/* SQL: kms_decrypt(ciphertext bytea, context jsonb DEFAULT '{}') RETURNS bytea */
PG_FUNCTION_INFO_V1(kms_decrypt);
Datum
kms_decrypt(PG_FUNCTION_ARGS)
{
	KmsContext	ctx;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	get_context(fcinfo, 1, &ctx);
	PG_RETURN_BYTEA_P(kms_open(PG_GETARG_BYTEA_PP(0), &ctx, KMS_PRIV_DECRYPT, fcinfo->flinfo->fn_oid));
}

/* A decrypted value returned as text must be valid in the database encoding. */
static text *
as_text(bytea *out)
{
	if (!pg_verifymbstr(VARDATA(out), VARSIZE(out) - VARHDRSZ, true))
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("decrypted value is not valid text in encoding \"%s\"",
						GetDatabaseEncodingName()),
				 errhint("The value was probably encrypted from bytea; use kms_decrypt().")));
	return (text *) out;
}

/* SQL: kms_decrypt_text(ciphertext bytea, context jsonb DEFAULT '{}') RETURNS text */
PG_FUNCTION_INFO_V1(kms_decrypt_text);
Datum
kms_decrypt_text(PG_FUNCTION_ARGS)
{
	KmsContext	ctx;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	get_context(fcinfo, 1, &ctx);
	PG_RETURN_TEXT_P(as_text(kms_open(PG_GETARG_BYTEA_PP(0), &ctx, KMS_PRIV_DECRYPT, fcinfo->flinfo->fn_oid)));
}

/*
 * The context given as key/value arguments (VARIADIC "any") from argument
 * first on: keys are text, values text, integers, numeric or boolean, with
 * the same canonical form as the jsonb a jsonb_build_object() of the same
 * arguments would give, without building a jsonb per row.
 */
static void
get_context_pairs(FunctionCallInfo fcinfo, int first, KmsContext *ctx)
{
	int			nargs = PG_NARGS() - first;
	int			npairs;
	KmsContextPair *pairs;
	char	   *detail;
	KmsError	err;

	if (get_fn_expr_variadic(fcinfo->flinfo))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("context pairs must be passed as separate arguments, not as a VARIADIC array")));
	if (nargs <= 0 || nargs % 2 != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("context must be given as key, value pairs"),
				 errdetail("%d context arguments were given.", nargs)));
	npairs = nargs / 2;
	pairs = palloc(sizeof(KmsContextPair) * npairs);
	for (int i = 0; i < npairs; i++)
	{
		int			ka = first + 2 * i;
		int			va = ka + 1;
		Oid			kt = get_fn_expr_argtype(fcinfo->flinfo, ka);
		Oid			vt = get_fn_expr_argtype(fcinfo->flinfo, va);
		KmsContextPair *p = &pairs[i];
		char	   *s;

		if (PG_ARGISNULL(ka))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("encryption context key must not be NULL")));
		if (kt == UNKNOWNOID)
			s = PG_GETARG_POINTER(ka);
		else if (kt == TEXTOID || kt == VARCHAROID)
			s = text_to_cstring(PG_GETARG_TEXT_PP(ka));
		else
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("encryption context keys must be text"),
					 errdetail("Argument %d is of type %s.", ka + 1, format_type_be(kt))));
		p->key = s;
		p->keylen = strlen(s);

		if (PG_ARGISNULL(va))
			kms_report_error(KMS_ERR_CTX_BAD_VALUE,
							 psprintf("The value of key \"%.*s\" is null.", Min(p->keylen, 64), p->key));
		switch (vt)
		{
			case UNKNOWNOID:
				s = PG_GETARG_POINTER(va);
				p->type = KMS_CTX_TYPE_STRING;
				break;
			case TEXTOID:
			case VARCHAROID:
				s = text_to_cstring(PG_GETARG_TEXT_PP(va));
				p->type = KMS_CTX_TYPE_STRING;
				break;
			case INT2OID:
			case INT4OID:
			case INT8OID:
				{
					int64		v = vt == INT2OID ? PG_GETARG_INT16(va) :
						vt == INT4OID ? PG_GETARG_INT32(va) : PG_GETARG_INT64(va);

					s = palloc(MAXINT8LEN + 1);
					pg_lltoa(v, s);
					p->type = KMS_CTX_TYPE_NUMBER;
					break;
				}
			case NUMERICOID:
				{
					Numeric		n = PG_GETARG_NUMERIC(va);

					if (numeric_is_nan(n) || numeric_is_inf(n))
						kms_report_error(KMS_ERR_CTX_BAD_VALUE,
										 psprintf("The value of key \"%.*s\" is not a finite number.",
												  Min(p->keylen, 64), p->key));
					s = numeric_normalize(n);
					p->type = KMS_CTX_TYPE_NUMBER;
					break;
				}
			case BOOLOID:
				s = PG_GETARG_BOOL(va) ? "true" : "false";
				p->type = KMS_CTX_TYPE_BOOLEAN;
				break;
			default:
				/* uuid, date, timestamp, enums, name, char(n), domains: as to_jsonb() writes them */
				if (kms_context_value_from_datum(PG_GETARG_DATUM(va), vt, p))
				{
					s = (char *) p->value;
					break;
				}
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("encryption context values must be text, integer, numeric or boolean"),
						 errdetail("The value of key \"%.*s\" is of type %s.",
								   Min(p->keylen, 64), p->key, format_type_be(vt)),
						 errhint("Cast it to text, or use the jsonb form of the function.")));
		}
		p->value = s;
		p->valuelen = strlen(s);
	}
	err = kms_context_from_pairs(pairs, npairs, ctx, &detail);
	if (err != KMS_OK)
		kms_report_error(err, detail);
}

/* SQL: kms_encrypt_pairs(plaintext bytea, key_id text, VARIADIC context "any") RETURNS bytea */
PG_FUNCTION_INFO_V1(kms_encrypt_pairs);
Datum
kms_encrypt_pairs(PG_FUNCTION_ARGS)
{
	bytea	   *pt;
	KmsContext	ctx;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	pt = PG_GETARG_BYTEA_PP(0);
	get_context_pairs(fcinfo, 2, &ctx);
	PG_RETURN_BYTEA_P(kms_seal(VARDATA_ANY(pt), VARSIZE_ANY_EXHDR(pt), &ctx, get_key_arg(fcinfo, 1),
								 KMS_PRIV_ENCRYPT, fcinfo->flinfo->fn_oid));
}

/* SQL: kms_encrypt_text_pairs(plaintext text, key_id text, VARIADIC context "any") RETURNS bytea */
PG_FUNCTION_INFO_V1(kms_encrypt_text_pairs);
Datum
kms_encrypt_text_pairs(PG_FUNCTION_ARGS)
{
	return kms_encrypt_pairs(fcinfo);
}

/* SQL: kms_decrypt_pairs(ciphertext bytea, VARIADIC context "any") RETURNS bytea */
PG_FUNCTION_INFO_V1(kms_decrypt_pairs);
Datum
kms_decrypt_pairs(PG_FUNCTION_ARGS)
{
	KmsContext	ctx;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	get_context_pairs(fcinfo, 1, &ctx);
	PG_RETURN_BYTEA_P(kms_open(PG_GETARG_BYTEA_PP(0), &ctx, KMS_PRIV_DECRYPT, fcinfo->flinfo->fn_oid));
}

/* SQL: kms_decrypt_text_pairs(ciphertext bytea, VARIADIC context "any") RETURNS text */
PG_FUNCTION_INFO_V1(kms_decrypt_text_pairs);
Datum
kms_decrypt_text_pairs(PG_FUNCTION_ARGS)
{
	KmsContext	ctx;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	get_context_pairs(fcinfo, 1, &ctx);
	PG_RETURN_TEXT_P(as_text(kms_open(PG_GETARG_BYTEA_PP(0), &ctx, KMS_PRIV_DECRYPT, fcinfo->flinfo->fn_oid)));
}

/*
 * SQL: kms_ciphertext_info(ciphertext bytea, OUT format_version int, OUT provider text,
 *		OUT key_id text, OUT dek_id text, OUT kms_context_keys text[],
 *		OUT wrapped_dek_bytes int, OUT plaintext_bytes int, OUT overhead_bytes int)
 */
PG_FUNCTION_INFO_V1(kms_ciphertext_info);
Datum
kms_ciphertext_info(PG_FUNCTION_ARGS)
{
	bytea	   *ct = PG_GETARG_BYTEA_PP(0);
	KmsEnvelope env;
	TupleDesc	tupdesc;
	Datum		values[8];
	bool		nulls[8] = {0};
	char		dek_id[33];
	Datum	   *names;
	const KmsProviderRoutine *provider;

	/* the result descriptor is built once per call site, not per row */
	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;
	if (tupdesc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "return type must be a row type");
		tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = tupdesc;
	}
	parse_or_error(ct, &env);
	provider = kms_provider_by_id(env.provider);
	kms_envelope_dek_id(env.wrapped, env.wrapped_len, dek_id);
	names = palloc(sizeof(Datum) * Max(env.nctxkeys, 1));
	for (int i = 0; i < env.nctxkeys; i++)
		names[i] = PointerGetDatum(cstring_to_text_with_len(env.ctxkeys[i], env.ctxkeylens[i]));

	values[0] = Int32GetDatum(env.version);
	values[1] = CStringGetTextDatum(provider ? provider->name : "unknown");
	values[2] = PointerGetDatum(cstring_to_text_with_len(env.key_id, env.key_id_len));
	values[3] = CStringGetTextDatum(dek_id);
	values[4] = PointerGetDatum(construct_array(names, env.nctxkeys, TEXTOID, -1, false, TYPALIGN_INT));
	values[5] = Int32GetDatum(env.wrapped_len);
	values[6] = Int32GetDatum(env.body_len);
	values[7] = Int32GetDatum((int) VARSIZE_ANY_EXHDR(ct) - env.body_len);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * SQL: kms_key_usage_entry(ciphertext bytea, OUT provider text, OUT key_id text, OUT dek_id text)
 *
 * The per-value step of kms_key_usage() and kms_key_columns(): a value's
 * provider, key and data key id, for a caller holding rewrap or admin on
 * that key (usage counts serve rotation and the decision to disable or
 * delete a key).  No condition can admit it: the check has an empty
 * context.  A value that is not a kms_pg ciphertext gives a row of NULLs.
 */
PG_FUNCTION_INFO_V1(kms_key_usage_entry);
Datum
kms_key_usage_entry(PG_FUNCTION_ARGS)
{
	bytea	   *ct = PG_GETARG_BYTEA_PP(0);
	KmsEnvelope env;
	KmsContext	empty;
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {0};
	char		dek_id[33];
	const KmsProviderRoutine *provider;

	if (kms_envelope_parse((const uint8 *) VARDATA_ANY(ct), VARSIZE_ANY_EXHDR(ct), &env, NULL) != KMS_OK)
		PG_RETURN_NULL();
	/* format 2: the key id and wrapped DEK are in the registry */
	if (env.version == KMS_ENVELOPE_V2)
		kms_dek_registry_fill(&env);
	kms_context_init_empty(&empty);
	kms_key_check(env.provider, env.key_id, env.key_id_len, KMS_PRIV_REWRAP | KMS_PRIV_ADMIN,
				  &empty, fcinfo->flinfo->fn_oid);
	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;
	if (tupdesc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "return type must be a row type");
		tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = tupdesc;
	}
	provider = kms_provider_by_id(env.provider);
	kms_envelope_dek_id(env.wrapped, env.wrapped_len, dek_id);
	values[0] = CStringGetTextDatum(provider ? provider->name : "unknown");
	values[1] = PointerGetDatum(cstring_to_text_with_len(env.key_id, env.key_id_len));
	values[2] = CStringGetTextDatum(dek_id);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* SQL: kms_is_ciphertext(value bytea) RETURNS boolean */
PG_FUNCTION_INFO_V1(kms_is_ciphertext);
Datum
kms_is_ciphertext(PG_FUNCTION_ARGS)
{
	bytea	   *v = PG_GETARG_BYTEA_PP(0);

	PG_RETURN_BOOL(kms_envelope_is_ciphertext((const uint8 *) VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v)));
}

/* SQL: kms_rewrap(ciphertext bytea, new_key_id text DEFAULT NULL, context jsonb DEFAULT '{}') RETURNS bytea */
PG_FUNCTION_INFO_V1(kms_rewrap);
Datum
kms_rewrap(PG_FUNCTION_ARGS)
{
	bytea	   *ct;
	KmsEnvelope env;
	KmsContext	ctx;
	const KmsProviderRoutine *provider;
	const KmsProviderRoutine *target;
	KmsWrappedKey w;
	const char *names[KMS_CTX_KEYS_MAX];
	uint8	   *header;
	int			header_len;
	bytea	   *out;
	Size		tail;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	ct = PG_GETARG_BYTEA_PP(0);
	get_context(fcinfo, 2, &ctx);
	parse_or_error(ct, &env);
	provider = kms_provider_by_id(env.provider);
	target = kms_provider_current();
	if (provider == NULL)
		kms_report_error(KMS_ERR_CT_BAD_PROVIDER, NULL);
	/* rewrap on the value's key before, on the new key (as resolved) after */
	kms_key_check(env.provider, env.key_id, env.key_id_len, KMS_PRIV_REWRAP, &ctx,
				  fcinfo->flinfo->fn_oid);
	kms_dek_rewrap(provider, &env, &ctx, get_key_arg(fcinfo, 1), &w);
	kms_key_check(target->id, w.key_id, strlen(w.key_id), KMS_PRIV_REWRAP | KMS_PRIV_ENCRYPT, &ctx,
				  fcinfo->flinfo->fn_oid);

	/*
	 * Format 2: the value refers to its DEK, whose registry row gets the
	 * new wrapping; the value itself stays byte for byte.
	 */
	if (env.version == KMS_ENVELOPE_V2)
	{
		kms_dek_registry_rewrapped(&env, target->id, &w);
		PG_RETURN_BYTEA_P(PG_GETARG_BYTEA_P_COPY(0));
	}

	/*
	 * The new header carries the new key id and wrapped DEK; nonce, body
	 * and tag are kept byte for byte (they do not depend on either).
	 */
	for (int i = 0; i < env.nctxkeys; i++)
		names[i] = env.ctxkeys[i];
	header = kms_envelope_build_header(target->id, w.key_id, env.nctxkeys, names, env.ctxkeylens,
									   w.wrapped, w.wrapped_len, &header_len);
	tail = VARSIZE_ANY_EXHDR(ct) - env.header_len;
	out = (bytea *) palloc(VARHDRSZ + header_len + tail);
	SET_VARSIZE(out, VARHDRSZ + header_len + tail);
	memcpy(VARDATA(out), header, header_len);
	memcpy(VARDATA(out) + header_len, VARDATA_ANY(ct) + env.header_len, tail);
	PG_RETURN_BYTEA_P(out);
}

/* SQL: kms_reencrypt(ciphertext bytea, context jsonb, new_key_id text DEFAULT NULL) RETURNS bytea */
PG_FUNCTION_INFO_V1(kms_reencrypt);
Datum
kms_reencrypt(PG_FUNCTION_ARGS)
{
	bytea	   *ct;
	bytea	   *plain;
	bytea	   *out;
	KmsContext	ctx;
	KmsEnvelope oenv;
	KmsEnvelope nenv;
	const char *key;
	uint8	   *old_wrapped;
	int			old_len;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	ct = PG_GETARG_BYTEA_PP(0);
	get_context(fcinfo, 1, &ctx);
	key = get_key_arg(fcinfo, 2);
	/* the plaintext never leaves: rewrap on the old key, rewrap or encrypt on the new */
	plain = kms_open(ct, &ctx, KMS_PRIV_REWRAP, fcinfo->flinfo->fn_oid);
	out = kms_seal(VARDATA(plain), VARSIZE(plain) - VARHDRSZ, &ctx, key,
				   KMS_PRIV_REWRAP | KMS_PRIV_ENCRYPT, fcinfo->flinfo->fn_oid);

	/* A fresh DEK: if the current DEK is the old one, retire it and seal again. */
	parse_or_error(ct, &oenv);
	old_wrapped = palloc(oenv.wrapped_len);
	memcpy(old_wrapped, oenv.wrapped, oenv.wrapped_len);
	old_len = oenv.wrapped_len;
	/* (a v2 value's registry fields are valid until the next registry read) */
	parse_or_error(out, &nenv);
	if (old_len == nenv.wrapped_len &&
		memcmp(old_wrapped, nenv.wrapped, old_len) == 0)
	{
		KmsContext	kctx;

		kms_dek_provider_context(&nenv, &ctx, &kctx);
		kms_dek_retire_encrypt(kms_provider_current(), key, &kctx);
		out = kms_seal(VARDATA(plain), VARSIZE(plain) - VARHDRSZ, &ctx, key,
					   KMS_PRIV_REWRAP | KMS_PRIV_ENCRYPT, fcinfo->flinfo->fn_oid);
	}
	PG_RETURN_BYTEA_P(out);
}

/* SQL: kms_create_key(alias text, description text DEFAULT NULL) RETURNS text */
PG_FUNCTION_INFO_V1(kms_create_key);
Datum
kms_create_key(PG_FUNCTION_ARGS)
{
	char	   *alias = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *descr = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));

	char	   *id = kms_local_create_key(alias, descr);

	/* its creator gets every privilege on it, PUBLIC encrypt */
	kms_key_grants_seed_new(KMS_PROVIDER_LOCAL, id);
	PG_RETURN_TEXT_P(cstring_to_text(id));
}

static char *
required_text_arg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

/*
 * Forget the cached DEKs of a local key given by id, alias or ARN form:
 * values record its key id, encryption may have named it by alias.
 */
static void
forget_local_key(const char *key, bool again_at_commit)
{
	List	   *keys = kms_local_list_keys();
	ListCell   *lc;

	foreach(lc, keys)
	{
		KmsLocalKeyInfo *k = lfirst(lc);

		if (strcmp(k->key_id, key) == 0 || (k->alias && strcmp(k->alias, key) == 0) ||
			(strncmp(key, "arn:", 4) == 0 &&
			 ((strstr(key, ":key/") && strcmp(strstr(key, ":key/") + 5, k->key_id) == 0) ||
			  (k->alias && strstr(key, ":alias/") && strcmp(strstr(key, ":alias/") + 1, k->alias) == 0))))
		{
			kms_dek_cache_forget_key(KMS_PROVIDER_LOCAL, k->key_id);
			if (k->alias)
				kms_dek_cache_forget_key(KMS_PROVIDER_LOCAL, k->alias);
			if (again_at_commit)
			{
				kms_keyring_forget_at_commit(k->key_id);
				if (k->alias)
					kms_keyring_forget_at_commit(k->alias);
			}
			return;
		}
	}
	kms_dek_cache_forget_key(KMS_PROVIDER_LOCAL, key);
	if (again_at_commit)
		kms_keyring_forget_at_commit(key);
}

/* SQL: kms_disable_key(key text) RETURNS void */
PG_FUNCTION_INFO_V1(kms_disable_key);
Datum
kms_disable_key(PG_FUNCTION_ARGS)
{
	char	   *key = kms_key_check_local_admin(required_text_arg(fcinfo, 0, "key"),
												fcinfo->flinfo->fn_oid);

	kms_local_set_enabled(key, false);
	/*
	 * Cached DEKs of the key (and only those) must stop working now, in
	 * every session, and again at commit (another session may cache one
	 * until the change is visible to it).
	 */
	forget_local_key(key, true);
	PG_RETURN_VOID();
}

/* SQL: kms_enable_key(key text) RETURNS void */
PG_FUNCTION_INFO_V1(kms_enable_key);
Datum
kms_enable_key(PG_FUNCTION_ARGS)
{
	kms_local_set_enabled(kms_key_check_local_admin(required_text_arg(fcinfo, 0, "key"),
													fcinfo->flinfo->fn_oid), true);
	PG_RETURN_VOID();
}

/* SQL: kms_rotate_key(key text) RETURNS int */
PG_FUNCTION_INFO_V1(kms_rotate_key);
Datum
kms_rotate_key(PG_FUNCTION_ARGS)
{
	char	   *key = kms_key_check_local_admin(required_text_arg(fcinfo, 0, "key"),
												fcinfo->flinfo->fn_oid);
	int			v = kms_local_rotate_key(key);

	/* new DEKs must use the new version: retire the key's cached DEKs */
	forget_local_key(key, false);
	PG_RETURN_INT32(v);
}

/*
 * SQL: kms_local_keys(OUT key_id text, OUT alias text, OUT description text,
 *		OUT enabled boolean, OUT created timestamptz, OUT current_version int,
 *		OUT versions int) RETURNS SETOF record
 */
PG_FUNCTION_INFO_V1(kms_local_keys);
Datum
kms_local_keys(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	List	   *keys;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	keys = kms_local_list_keys();
	foreach(lc, keys)
	{
		KmsLocalKeyInfo *k = (KmsLocalKeyInfo *) lfirst(lc);
		Datum		values[7];
		bool		nulls[7] = {0};

		values[0] = CStringGetTextDatum(k->key_id);
		if (k->alias)
			values[1] = CStringGetTextDatum(k->alias);
		else
			nulls[1] = true;
		if (k->description)
			values[2] = CStringGetTextDatum(k->description);
		else
			nulls[2] = true;
		values[3] = BoolGetDatum(k->enabled);
		values[4] = TimestampTzGetDatum(k->created);
		values[5] = Int32GetDatum(k->current_version);
		values[6] = Int32GetDatum(k->nversions);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* SQL: kms_describe_key(key text DEFAULT NULL) RETURNS jsonb */
PG_FUNCTION_INFO_V1(kms_describe_key);
Datum
kms_describe_key(PG_FUNCTION_ARGS)
{
	const KmsProviderRoutine *provider = kms_provider_current();
	const char *key = get_key_arg(fcinfo, 0);
	char	   *json = provider->describe_key(key);

	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

/* SQL: kms_cache_flush() RETURNS int */
PG_FUNCTION_INFO_V1(kms_cache_flush);
Datum
kms_cache_flush(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(kms_dek_cache_flush());
}

/*
 * SQL: kms_cache_flush(key text) RETURNS int — the cached DEKs of one key
 * (any provider): DEKs recorded under that key id or ARN, or made by
 * encrypting under that name (alias).  In this session every cached copy
 * is dropped.
 */
PG_FUNCTION_INFO_V1(kms_cache_flush_key);
Datum
kms_cache_flush_key(PG_FUNCTION_ARGS)
{
	char	   *key = required_text_arg(fcinfo, 0, "key");
	int			n;

	n = kms_dek_cache_forget_key(-1, key);
	if (strncmp(key, "alias/", 6) == 0 &&
		(kms_catalog_present() || access(kms_guc_keyring_path(), F_OK) == 0))
	{
		/* a local alias (key catalog, or a 1.0 keyring file): also the key id values record */
		List	   *keys = kms_local_list_keys();
		ListCell   *lc;

		foreach(lc, keys)
		{
			KmsLocalKeyInfo *k = lfirst(lc);

			if (k->alias && strcmp(k->alias, key) == 0)
				n += kms_dek_cache_forget_key(KMS_PROVIDER_LOCAL, k->key_id);
		}
	}
	PG_RETURN_INT32(n);
}

/*
 * SQL: kms_cache_stats(OUT entries bigint, OUT encrypting_entries bigint, OUT capacity bigint,
 *		OUT hits bigint, OUT local_hits bigint, OUT misses bigint,
 *		OUT generate_calls bigint, OUT decrypt_calls bigint, OUT rewrap_calls bigint,
 *		OUT describe_calls bigint, OUT call_errors bigint, OUT coalesced_waits bigint,
 *		OUT evictions bigint, OUT expirations bigint, OUT dek_rotations bigint, OUT flushes bigint,
 *		OUT hit_ratio double precision, OUT thrash_warnings bigint, OUT shared_memory_bytes bigint)
 *
 * hit_ratio: the share of data key lookups served from a cache (local or
 * shared level) rather than the key provider; NULL before the first lookup.
 */
PG_FUNCTION_INFO_V1(kms_cache_stats);
Datum
kms_cache_stats(PG_FUNCTION_ARGS)
{
	KmsCacheStats st;
	TupleDesc	tupdesc;
	Datum		values[19];
	bool		nulls[19] = {0};
	int			i = 0;
	int64		lookups;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	kms_dek_cache_stats(&st);
	values[i++] = Int64GetDatum(st.entries);
	values[i++] = Int64GetDatum(st.entries_encrypting);
	values[i++] = Int64GetDatum(st.capacity);
	values[i++] = Int64GetDatum(st.hits);
	values[i++] = Int64GetDatum(st.local_hits);
	values[i++] = Int64GetDatum(st.misses);
	values[i++] = Int64GetDatum(st.calls[KMS_STAT_GENERATE]);
	values[i++] = Int64GetDatum(st.calls[KMS_STAT_DECRYPT]);
	values[i++] = Int64GetDatum(st.calls[KMS_STAT_REWRAP]);
	values[i++] = Int64GetDatum(st.calls[KMS_STAT_DESCRIBE]);
	values[i++] = Int64GetDatum(st.call_errors);
	values[i++] = Int64GetDatum(st.coalesced_waits);
	values[i++] = Int64GetDatum(st.evictions);
	values[i++] = Int64GetDatum(st.expirations);
	values[i++] = Int64GetDatum(st.rotations);
	values[i++] = Int64GetDatum(st.flushes);
	lookups = st.hits + st.local_hits + st.misses;
	if (lookups > 0)
		values[i++] = Float8GetDatum((double) (st.hits + st.local_hits) / (double) lookups);
	else
	{
		nulls[i] = true;
		values[i++] = (Datum) 0;
	}
	values[i++] = Int64GetDatum(st.thrash_warnings);
	values[i++] = Int64GetDatum(st.memory_bytes);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* SQL: kms_hmac_sha256(key bytea, data bytea) RETURNS bytea (blind indexes) */
PG_FUNCTION_INFO_V1(kms_hmac_sha256);
Datum
kms_hmac_sha256(PG_FUNCTION_ARGS)
{
	bytea	   *key = PG_GETARG_BYTEA_PP(0);
	bytea	   *data = PG_GETARG_BYTEA_PP(1);
	bytea	   *out = (bytea *) palloc(VARHDRSZ + EVP_MAX_MD_SIZE);
	unsigned int len = 0;

	if (VARSIZE_ANY_EXHDR(key) < 16)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("HMAC key must be at least 16 bytes")));
	if (HMAC(EVP_sha256(), VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
			 (const unsigned char *) VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data),
			 (unsigned char *) VARDATA(out), &len) == NULL)
		kms_report_openssl_error("HMAC-SHA256");
	SET_VARSIZE(out, VARHDRSZ + len);
	PG_RETURN_BYTEA_P(out);
}

/*
 * Cheap header readers for bulk predicates (rotation): no hashing, no
 * composite result, NULL for anything that is not a kms_pg ciphertext.
 */

/* SQL: kms_ciphertext_key_id(ciphertext bytea) RETURNS text */
PG_FUNCTION_INFO_V1(kms_ciphertext_key_id);
Datum
kms_ciphertext_key_id(PG_FUNCTION_ARGS)
{
	bytea	   *ct = PG_GETARG_BYTEA_PP(0);
	KmsEnvelope env;

	if (kms_envelope_parse((const uint8 *) VARDATA_ANY(ct), VARSIZE_ANY_EXHDR(ct), &env, NULL) != KMS_OK)
		PG_RETURN_NULL();
	if (env.version == KMS_ENVELOPE_V2)
		kms_dek_registry_fill(&env);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(env.key_id, env.key_id_len));
}

/* SQL: kms_ciphertext_provider(ciphertext bytea) RETURNS text */
PG_FUNCTION_INFO_V1(kms_ciphertext_provider);
Datum
kms_ciphertext_provider(PG_FUNCTION_ARGS)
{
	bytea	   *ct = PG_GETARG_BYTEA_PP(0);
	KmsEnvelope env;
	const KmsProviderRoutine *provider;

	if (kms_envelope_parse((const uint8 *) VARDATA_ANY(ct), VARSIZE_ANY_EXHDR(ct), &env, NULL) != KMS_OK)
		PG_RETURN_NULL();
	if (env.version == KMS_ENVELOPE_V2)
		kms_dek_registry_fill(&env);
	provider = kms_provider_by_id(env.provider);
	PG_RETURN_TEXT_P(cstring_to_text(provider ? provider->name : "unknown"));
}
