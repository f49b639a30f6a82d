/*-------------------------------------------------------------------------
 * kms_columns.c
 *	  Protected columns in C: the kms_sealed type, the generated BEFORE
 *	  trigger (kms_protected_column_trigger) and kms_blind_index().
 *
 * Security.  Nothing here is SECURITY DEFINER: the trigger and
 * kms_blind_index() run as the writer (or searcher), so every piece of
 * code a user can define -- the input and output functions of the
 * column's original type, domain CHECKs, casts -- runs with that user's
 * own privileges, exactly as it would for an unprotected column.  The one
 * thing done beyond the caller's SQL privileges is done here in C, on
 * the row being written, and never returns plaintext:
 *	  - a value whose context columns change is opened under the old
 *		context and sealed again under the new one;
 *	  - a ciphertext written in is opened to check that it belongs to the
 *		row (it is stored unchanged);
 *	  - the blind index HMAC key is unwrapped to compute the index.
 * The catalog row (kms_protected_columns) is read directly from the heap
 * by relation and trigger name: no SQL, no name lookup, no operator.
 *
 * The encryption context of a value is {"kms_pg:column": <column uuid>,
 * <context key>: <context column value>...}, values encoded as to_jsonb()
 * encodes them, so that the jsonb form (kms_column_context_expr, 1.0
 * data) and the key/value form (the view) give the same canonical bytes.
 *-------------------------------------------------------------------------
 */
#include "kms_columns.h"
#include "kms_citus.h"
#include "kms_guc.h"
#include "kms_envelope.h"
#include "kms_provider.h"
#include "kms_secure_mem.h"
#include "kms_key_grants.h"
#include "kms_sql_api.h"
#include "kms_compat.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "rewrite/rewriteHandler.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "libpq/pqformat.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"

#include <openssl/hmac.h>

#define KMS_BIDX_LEN	16			/* bytes of HMAC-SHA-256 kept */

static const uint8 kms_pending_magic[4] = {0xC5, 'K', 'P', 'T'};

/* schema.table, for messages */
static char *
rel_name(Relation rel)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
}

/* ---------- the kms_sealed type ---------- */

static bytea *
sealed_pending(const char *data, Size len)
{
	bytea	   *out;

	if (len > MaxAllocSize - VARHDRSZ - sizeof(kms_pending_magic))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("value too large for a protected column")));
	out = (bytea *) palloc(VARHDRSZ + sizeof(kms_pending_magic) + len);
	SET_VARSIZE(out, VARHDRSZ + sizeof(kms_pending_magic) + len);
	memcpy(VARDATA(out), kms_pending_magic, sizeof(kms_pending_magic));
	if (len > 0)
		memcpy(VARDATA(out) + sizeof(kms_pending_magic), data, len);
	return out;
}

static bool
is_pending(const char *data, Size len)
{
	return len >= sizeof(kms_pending_magic) &&
		memcmp(data, kms_pending_magic, sizeof(kms_pending_magic)) == 0;
}

/* Internal bytes (ciphertext or pending plaintext) as they are, or NULL. */
static bytea *
sealed_internal(const char *data, Size len)
{
	bytea	   *out;

	if (!is_pending(data, len) &&
		!kms_envelope_is_ciphertext((const uint8 *) data, len))
		return NULL;
	out = (bytea *) palloc(VARHDRSZ + len);
	SET_VARSIZE(out, VARHDRSZ + len);
	memcpy(VARDATA(out), data, len);
	return out;
}

/*
 * SQL: kms_sealed_in(cstring) RETURNS kms_sealed
 * "\x" and hex digits that decode to a ciphertext or a pending value (the
 * type's own output: dumps, COPY) are taken as such; any other text is
 * plaintext, byte for byte.
 */
PG_FUNCTION_INFO_V1(kms_sealed_in);
Datum
kms_sealed_in(PG_FUNCTION_ARGS)
{
	char	   *s = PG_GETARG_CSTRING(0);
	size_t		len = strlen(s);

	if (len >= 10 && (len % 2) == 0 && s[0] == '\\' && s[1] == 'x' &&
		pg_strncasecmp(s + 2, "c54b50", 6) == 0 &&
		strspn(s + 2, "0123456789abcdefABCDEF") == len - 2)
	{
		size_t		n = (len - 2) / 2;
		char	   *buf = palloc(n);
		bytea	   *v;

		hex_decode(s + 2, len - 2, buf);
		v = sealed_internal(buf, n);
		if (v != NULL)
			PG_RETURN_BYTEA_P(v);
	}
	PG_RETURN_BYTEA_P(sealed_pending(s, len));
}

/* SQL: kms_sealed_out(kms_sealed) RETURNS cstring: "\x" and hex, as bytea. */
PG_FUNCTION_INFO_V1(kms_sealed_out);
Datum
kms_sealed_out(PG_FUNCTION_ARGS)
{
	bytea	   *v = PG_GETARG_BYTEA_PP(0);
	size_t		len = VARSIZE_ANY_EXHDR(v);
	char	   *out = palloc(2 * len + 3);

	out[0] = '\\';
	out[1] = 'x';
	hex_encode(VARDATA_ANY(v), len, out + 2);
	out[2 * len + 2] = '\0';
	PG_RETURN_CSTRING(out);
}

/* SQL: kms_sealed_recv(internal) RETURNS kms_sealed: internal bytes, or plaintext bytes. */
PG_FUNCTION_INFO_V1(kms_sealed_recv);
Datum
kms_sealed_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	int			len = buf->len - buf->cursor;
	const char *data = pq_getmsgbytes(buf, len);
	bytea	   *v = sealed_internal(data, len);

	PG_RETURN_BYTEA_P(v != NULL ? v : sealed_pending(data, len));
}

/* SQL: kms_sealed_send(kms_sealed) RETURNS bytea */
PG_FUNCTION_INFO_V1(kms_sealed_send);
Datum
kms_sealed_send(PG_FUNCTION_ARGS)
{
	bytea	   *v = PG_GETARG_BYTEA_P_COPY(0);

	PG_RETURN_BYTEA_P(v);
}

/* SQL: kms_sealed(text) RETURNS kms_sealed: always plaintext (casts from text, varchar). */
PG_FUNCTION_INFO_V1(kms_sealed_from_text);
Datum
kms_sealed_from_text(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);

	PG_RETURN_BYTEA_P(sealed_pending(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)));
}

/*
 * SQL: kms_sealed(bytea) RETURNS kms_sealed: a kms_pg ciphertext as is
 * (rotation, restore, a value copied from another row: the trigger checks
 * that it belongs), any other bytes as plaintext.
 */
PG_FUNCTION_INFO_V1(kms_sealed_from_bytea);
Datum
kms_sealed_from_bytea(PG_FUNCTION_ARGS)
{
	bytea	   *b = PG_GETARG_BYTEA_PP(0);
	const char *data = VARDATA_ANY(b);
	Size		len = VARSIZE_ANY_EXHDR(b);

	if (kms_envelope_is_ciphertext((const uint8 *) data, len))
		PG_RETURN_BYTEA_P(PG_GETARG_BYTEA_P_COPY(0));
	PG_RETURN_BYTEA_P(sealed_pending(data, len));
}

/* ---------- context values ---------- */

bool
kms_context_value_from_datum(Datum value, Oid typid, KmsContextPair *p)
{
	/* built-in types are never domains: no catalog lookup per value */
	Oid			base = typid < FirstGenbkiObjectId ? typid : getBaseType(typid);
	char	   *s;

	switch (base)
	{
		case INT2OID:
		case INT4OID:
		case INT8OID:
			{
				int64		v = base == INT2OID ? DatumGetInt16(value) :
					base == INT4OID ? DatumGetInt32(value) : DatumGetInt64(value);

				s = palloc(MAXINT8LEN + 1);
				pg_lltoa(v, s);
				p->type = KMS_CTX_TYPE_NUMBER;
				break;
			}
		case NUMERICOID:
			{
				Numeric		n = DatumGetNumeric(value);

				if (numeric_is_nan(n) || numeric_is_inf(n))
				{
					/* to_jsonb() writes these as strings */
					s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(n)));
					p->type = KMS_CTX_TYPE_STRING;
				}
				else
				{
					s = numeric_normalize(n);
					p->type = KMS_CTX_TYPE_NUMBER;
				}
				break;
			}
		case BOOLOID:
			s = DatumGetBool(value) ? "true" : "false";
			p->type = KMS_CTX_TYPE_BOOLEAN;
			break;
		case TEXTOID:
		case VARCHAROID:
			s = TextDatumGetCString(value);
			p->type = KMS_CTX_TYPE_STRING;
			break;
		case BPCHAROID:
			s = DatumGetCString(DirectFunctionCall1(bpcharout, value));
			p->type = KMS_CTX_TYPE_STRING;
			break;
		case NAMEOID:
			s = pstrdup(NameStr(*DatumGetName(value)));
			p->type = KMS_CTX_TYPE_STRING;
			break;
		case UUIDOID:
			s = DatumGetCString(DirectFunctionCall1(uuid_out, value));
			p->type = KMS_CTX_TYPE_STRING;
			break;
		case DATEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			s = JsonEncodeDateTime(NULL, value, base, NULL);
			p->type = KMS_CTX_TYPE_STRING;
			break;
		default:
			if (!type_is_enum(base))
				return false;
			s = DatumGetCString(OidFunctionCall1(F_ENUM_OUT, value));
			p->type = KMS_CTX_TYPE_STRING;
			break;
	}
	p->value = s;
	p->valuelen = strlen(s);
	return true;
}

/* ---------- the catalog row of a protected column ---------- */

typedef struct KmsColumn
{
	Oid			relid;
	Oid			tgoid;
	char	   *tgname;
	char	   *column_id;		/* uuid text */
	char	   *key_id;			/* as stored */
	int			format;			/* ciphertext format; 0: kms_pg.format */
	bool		citus_shard;	/* the trigger of a Citus shard (its table's row) */
	int			nctx;
	char	  **ctx_keys;
	AttrNumber	attnum;			/* the protected column */
	AttrNumber *ctx_attnums;
	Oid		   *ctx_types;
	AttrNumber	bidx_attnum;	/* InvalidAttrNumber: no blind index */
	bytea	   *bidx_key_ct;	/* the wrapped blind-index key */
	uint8	   *bidx_key;		/* unwrapped on first use (secure memory) */
	int			bidx_key_len;
	Oid			orig_type;
	int32		orig_typmod;
	Oid			orig_base;
	bool		orig_bytea;
	bool		orig_text;
	bool		fixed_settings; /* output depends on DateStyle & co */
	FmgrInfo	in_fn;
	Oid			in_ioparam;
	FmgrInfo	out_fn;
} KmsColumn;

/* The extension's catalog table, in the schema of the calling function. */
static Oid
catalog_relid(FunctionCallInfo fcinfo)
{
	Oid			nsp = get_func_namespace(fcinfo->flinfo->fn_oid);
	Oid			relid = get_relname_relid("kms_protected_columns", nsp);

	if (!OidIsValid(relid))
		elog(ERROR, "kms_pg: catalog table kms_protected_columns not found");
	return relid;
}

static Datum
catalog_attr(HeapTuple tup, TupleDesc desc, const char *name, bool *isnull)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);

		if (!a->attisdropped && strcmp(NameStr(a->attname), name) == 0)
			return heap_getattr(tup, i + 1, desc, isnull);
	}
	elog(ERROR, "kms_pg: kms_protected_columns has no column \"%s\"", name);
	return (Datum) 0;
}

/* The same for a column that older catalogs lack: isnull when absent. */
static Datum
catalog_attr_opt(HeapTuple tup, TupleDesc desc, const char *name, bool *isnull)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);

		if (!a->attisdropped && strcmp(NameStr(a->attname), name) == 0)
			return heap_getattr(tup, i + 1, desc, isnull);
	}
	*isnull = true;
	return (Datum) 0;
}

/*
 * Fill col from the catalog row of (relid, trig), allocating in mcxt.
 * False when there is none.
 */
static bool
load_column(FunctionCallInfo fcinfo, Relation rel, Trigger *trig, MemoryContext mcxt,
			KmsColumn *col)
{
	Relation	cat;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	bool		found = false;
	TupleDesc	desc;
	AttrNumber	relid_att = InvalidAttrNumber;
	MemoryContext old;

	List	   *owners = list_make1_oid(RelationGetRelid(rel));
	ListCell   *lc;
	const char *tgname = trig->tgname;
	Oid			logical;
	char	   *logical_tgname;

	/*
	 * A partition's trigger is a clone of its partitioned table's, with the
	 * same name and its own column numbers: the catalog row is the table's
	 * (the nearest ancestor that has one).
	 */
	if (rel->rd_rel->relispartition)
		owners = list_concat(owners, get_partition_ancestors(RelationGetRelid(rel)));
	cat = table_open(catalog_relid(fcinfo), AccessShareLock);
	desc = RelationGetDescr(cat);
	for (int i = 0; i < desc->natts; i++)
		if (strcmp(NameStr(TupleDescAttr(desc, i)->attname), "relid") == 0)
			relid_att = i + 1;
	old = MemoryContextSwitchTo(mcxt);
again:
	foreach(lc, owners)
	{
		if (found)
			break;
		ScanKeyInit(&key, relid_att, BTEqualStrategyNumber, F_OIDEQ,
					ObjectIdGetDatum(lfirst_oid(lc)));
		scan = systable_beginscan(cat, InvalidOid, false, NULL, 1, &key);
		while (!found && HeapTupleIsValid(tup = systable_getnext(scan)))
		{
			bool		isnull;
			Datum		d;
			ArrayType  *arr;
			Datum	   *keys;
			int			nkeys;

			d = catalog_attr(tup, desc, "trigger_name", &isnull);
			if (isnull || strcmp(NameStr(*DatumGetName(d)), tgname) != 0)
				continue;
			found = true;
			memset(col, 0, sizeof(*col));
			col->relid = RelationGetRelid(rel);
			col->tgoid = trig->tgoid;
			col->tgname = pstrdup(trig->tgname);
			d = catalog_attr(tup, desc, "column_id", &isnull);
			col->column_id = DatumGetCString(DirectFunctionCall1(uuid_out, d));
			col->key_id = TextDatumGetCString(catalog_attr(tup, desc, "key_id", &isnull));
			d = catalog_attr_opt(tup, desc, "format", &isnull);
			col->format = isnull ? 0 : DatumGetInt16(d);
			col->orig_type = DatumGetObjectId(catalog_attr(tup, desc, "original_type", &isnull));
			col->orig_typmod = DatumGetInt32(catalog_attr(tup, desc, "original_typmod", &isnull));
			arr = DatumGetArrayTypePCopy(catalog_attr(tup, desc, "context_keys", &isnull));
			deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &keys, NULL, &nkeys);
			col->nctx = nkeys;
			col->ctx_keys = palloc(sizeof(char *) * Max(nkeys, 1));
			for (int i = 0; i < nkeys; i++)
				col->ctx_keys[i] = TextDatumGetCString(keys[i]);
			d = catalog_attr(tup, desc, "blind_index_key", &isnull);
			col->bidx_key_ct = isnull ? NULL : DatumGetByteaPCopy(d);
		}
		systable_endscan(scan);
	}

	/*
	 * A Citus shard's trigger (only when the citus extension is there): the
	 * catalog row is its distributed table's, copied to this worker by
	 * kms_citus_sync_columns(); the column numbers stay the shard's own.
	 */
	if (!found && tgname == trig->tgname &&
		kms_citus_shard_origin(RelationGetRelid(rel), trig->tgname, &logical, &logical_tgname))
	{
		owners = list_make1_oid(logical);
		tgname = logical_tgname;
		goto again;
	}
	MemoryContextSwitchTo(old);
	table_close(cat, AccessShareLock);
	if (!found)
		return false;
	col->citus_shard = tgname != trig->tgname;

	/* Column numbers from the trigger's column list (they follow renames). */
	if (trig->tgnattr != 1 + col->nctx + (col->bidx_key_ct ? 1 : 0))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kms_pg: trigger \"%s\" on \"%s\" does not match its row in kms_protected_columns",
						trig->tgname, rel_name(rel)),
				 errdetail("The trigger lists %d columns; the catalog row needs %d.",
						   trig->tgnattr, 1 + col->nctx + (col->bidx_key_ct ? 1 : 0))));
	old = MemoryContextSwitchTo(mcxt);
	col->attnum = trig->tgattr[0];
	col->ctx_attnums = palloc(sizeof(AttrNumber) * Max(col->nctx, 1));
	col->ctx_types = palloc(sizeof(Oid) * Max(col->nctx, 1));
	for (int i = 0; i < col->nctx; i++)
	{
		col->ctx_attnums[i] = trig->tgattr[1 + i];
		col->ctx_types[i] = TupleDescAttr(RelationGetDescr(rel), col->ctx_attnums[i] - 1)->atttypid;
	}
	col->bidx_attnum = col->bidx_key_ct ? trig->tgattr[1 + col->nctx] : InvalidAttrNumber;

	col->orig_base = getBaseType(col->orig_type);
	col->orig_bytea = col->orig_type == BYTEAOID;
	col->orig_text = col->orig_type == TEXTOID;
	if (!col->orig_bytea && !col->orig_text)
	{
		Oid			infn;
		Oid			outfn;
		bool		isvarlena;

		getTypeInputInfo(col->orig_type, &infn, &col->in_ioparam);
		fmgr_info_cxt(infn, &col->in_fn, mcxt);
		getTypeOutputInfo(col->orig_type, &outfn, &isvarlena);
		fmgr_info_cxt(outfn, &col->out_fn, mcxt);
		switch (col->orig_base)
		{
			case INT2OID:
			case INT4OID:
			case INT8OID:
			case NUMERICOID:
			case BOOLOID:
			case TEXTOID:
			case VARCHAROID:
			case BPCHAROID:
			case NAMEOID:
			case UUIDOID:
			case JSONOID:
			case JSONBOID:
				col->fixed_settings = false;
				break;
			default:
				col->fixed_settings = !type_is_enum(col->orig_base);
		}
	}
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * The catalog rows of protected columns, cached per backend: a statement
 * that writes a protected column (one row through a view, or one row of an
 * OLTP INSERT) does not scan kms_protected_columns again.  An entry is
 * what load_column() read for (table, trigger); statements get a copy
 * (column_copy), and the unwrapped blind-index key and every privilege
 * decision stay per statement.
 *
 * Invalidation, through the relcache callback, drops every entry when
 *	 - the table of an entry changes (ALTER TABLE, a trigger created or
 *	   dropped: kms_protect_column, kms_unprotect_column, renames, type
 *	   changes, ATTACH/DETACH PARTITION), or
 *	 - kms_protected_columns changes in any session: its statement trigger
 *	   (kms_pc_catalog_changed, ENABLE ALWAYS) sends a relcache
 *	   invalidation of the catalog table at commit (key moves by
 *	   kms_rotate_column, protect, unprotect, DROP, restore), or
 *	 - the relcache is reset (InvalidOid).
 * An entry built while an invalidation arrived is used for that statement
 * only, never cached.
 */
typedef struct KmsColumnCacheKey
{
	Oid			relid;
	Oid			tgoid;
} KmsColumnCacheKey;

typedef struct KmsColumnCacheEntry
{
	KmsColumnCacheKey key;
	MemoryContext cxt;			/* holds col's allocations */
	KmsColumn	col;
} KmsColumnCacheEntry;

static HTAB *column_cache = NULL;
static Oid	column_cache_catalog = InvalidOid;
static uint64 column_cache_invals = 0;

static void
column_cache_flush(void)
{
	HASH_SEQ_STATUS st;
	KmsColumnCacheEntry *e;

	hash_seq_init(&st, column_cache);
	while ((e = hash_seq_search(&st)) != NULL)
	{
		MemoryContextDelete(e->cxt);
		(void) hash_search(column_cache, &e->key, HASH_REMOVE, NULL);
	}
}

static void
column_cache_relcache_cb(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS st;
	KmsColumnCacheEntry *e;
	bool		hit = !OidIsValid(relid) || relid == column_cache_catalog;

	column_cache_invals++;
	if (column_cache == NULL)
		return;
	if (!hit)
	{
		hash_seq_init(&st, column_cache);
		while ((e = hash_seq_search(&st)) != NULL)
			if (e->key.relid == relid)
				hit = true;		/* the scan runs to its end */
	}
	if (hit)
		column_cache_flush();
}

/* A copy of src in mcxt for one statement (no blind-index key). */
static void
column_copy(KmsColumn *src, KmsColumn *dst, MemoryContext mcxt)
{
	MemoryContext old = MemoryContextSwitchTo(mcxt);

	*dst = *src;
	dst->tgname = pstrdup(src->tgname);
	dst->column_id = pstrdup(src->column_id);
	dst->key_id = pstrdup(src->key_id);
	dst->ctx_keys = palloc(sizeof(char *) * Max(src->nctx, 1));
	for (int i = 0; i < src->nctx; i++)
		dst->ctx_keys[i] = pstrdup(src->ctx_keys[i]);
	dst->ctx_attnums = palloc(sizeof(AttrNumber) * Max(src->nctx, 1));
	memcpy(dst->ctx_attnums, src->ctx_attnums, sizeof(AttrNumber) * src->nctx);
	dst->ctx_types = palloc(sizeof(Oid) * Max(src->nctx, 1));
	memcpy(dst->ctx_types, src->ctx_types, sizeof(Oid) * src->nctx);
	dst->bidx_key_ct = src->bidx_key_ct ? DatumGetByteaPCopy(PointerGetDatum(src->bidx_key_ct)) : NULL;
	dst->bidx_key = NULL;
	dst->bidx_key_len = 0;
	if (OidIsValid(src->in_fn.fn_oid))
		fmgr_info_copy(&dst->in_fn, &src->in_fn, mcxt);
	if (OidIsValid(src->out_fn.fn_oid))
		fmgr_info_copy(&dst->out_fn, &src->out_fn, mcxt);
	MemoryContextSwitchTo(old);
}

/* load_column() through the backend's cache. */
static bool
load_column_cached(FunctionCallInfo fcinfo, Relation rel, Trigger *trig, MemoryContext mcxt,
				   KmsColumn *col)
{
	KmsColumnCacheKey key;
	KmsColumnCacheEntry *e;
	MemoryContext cxt;
	KmsColumn	built;
	uint64		invals;
	bool		found;

	if (column_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(KmsColumnCacheKey);
		ctl.entrysize = sizeof(KmsColumnCacheEntry);
		ctl.hcxt = CacheMemoryContext;
		column_cache = hash_create("kms_pg protected columns", 64, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(column_cache_relcache_cb, (Datum) 0);
	}
	memset(&key, 0, sizeof(key));
	key.relid = RelationGetRelid(rel);
	key.tgoid = trig->tgoid;
	e = hash_search(column_cache, &key, HASH_FIND, NULL);
	if (e != NULL)
	{
		column_copy(&e->col, col, mcxt);
		return true;
	}

	invals = column_cache_invals;
	cxt = AllocSetContextCreate(CacheMemoryContext, "kms_pg protected column", ALLOCSET_SMALL_SIZES);
	PG_TRY();
	{
		column_cache_catalog = catalog_relid(fcinfo);
		found = load_column(fcinfo, rel, trig, cxt, &built);
	}
	PG_CATCH();
	{
		MemoryContextDelete(cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (!found)
	{
		MemoryContextDelete(cxt);
		return false;
	}
	column_copy(&built, col, mcxt);
	if (invals != column_cache_invals)
	{
		MemoryContextDelete(cxt);	/* may be stale already: this statement only */
		return true;
	}
	e = hash_search(column_cache, &key, HASH_ENTER, NULL);
	e->cxt = cxt;
	e->col = built;
	return true;
}

/*
 * SQL: kms_pc_catalog_changed() RETURNS trigger
 * AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON kms_protected_columns
 * FOR EACH STATEMENT: every backend drops its cached catalog rows when
 * this transaction commits.
 */
PG_FUNCTION_INFO_V1(kms_pc_catalog_changed);
Datum
kms_pc_catalog_changed(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("kms_pc_catalog_changed must be called as a trigger")));
	CacheInvalidateRelcache(td->tg_relation);
	return PointerGetDatum(NULL);
}

/* ---------- per value ---------- */


/* The context of the value in tuple; NULL context values are refused. */
static void
build_context(KmsColumn *col, Relation rel, HeapTuple tuple, KmsContext *ctx)
{
	KmsContextPair *pairs = palloc(sizeof(KmsContextPair) * (col->nctx + 1));
	char	   *detail;
	KmsError	err;

	pairs[0].key = "kms_pg:column";
	pairs[0].keylen = strlen(pairs[0].key);
	pairs[0].type = KMS_CTX_TYPE_STRING;
	pairs[0].value = col->column_id;
	pairs[0].valuelen = strlen(col->column_id);
	for (int i = 0; i < col->nctx; i++)
	{
		KmsContextPair *p = &pairs[i + 1];
		bool		isnull;
		Datum		d = heap_getattr(tuple, col->ctx_attnums[i], RelationGetDescr(rel), &isnull);

		p->key = col->ctx_keys[i];
		p->keylen = strlen(p->key);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("kms_pg: context column \"%s\" of \"%s\" is NULL",
							NameStr(TupleDescAttr(RelationGetDescr(rel), col->ctx_attnums[i] - 1)->attname),
							rel_name(rel)),
					 errdetail("A protected value is sealed under its row's context columns, which must not be NULL."),
					 errhint("Give the context column a value, or store NULL in the protected column \"%s\".",
							 NameStr(TupleDescAttr(RelationGetDescr(rel), col->attnum - 1)->attname))));
		if (!kms_context_value_from_datum(d, col->ctx_types[i], p))
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("kms_pg: context column \"%s\" has type %s, which cannot be a context value",
							NameStr(TupleDescAttr(RelationGetDescr(rel), col->ctx_attnums[i] - 1)->attname),
							format_type_be(col->ctx_types[i]))));
	}
	err = kms_context_from_pairs(pairs, col->nctx + 1, ctx, &detail);
	if (err != KMS_OK)
		kms_report_error(err, detail);
}

/*
 * The canonical plaintext of what a writer sent (data, len: the text in
 * the database encoding, or bytes for a bytea column): bytea as is; text
 * as UTF-8; any other type read by its input function (as the writer:
 * domain CHECKs and typmods apply as for an unprotected column, under the
 * session's DateStyle and TimeZone) and written by its output function
 * under fixed settings (ISO dates, UTC, postgres intervals, shortest
 * exact floats), as UTF-8.
 */
static bytea *
canonical_plaintext(KmsColumn *col, const char *data, int len)
{
	char	   *str;
	char	   *utf8;
	bytea	   *out;

	if (col->orig_bytea)
	{
		out = (bytea *) palloc(VARHDRSZ + len);
		SET_VARSIZE(out, VARHDRSZ + len);
		memcpy(VARDATA(out), data, len);
		return out;
	}
	pg_verify_mbstr(GetDatabaseEncoding(), data, len, false);
	if (col->orig_text)
		str = pnstrdup(data, len);
	else
	{
		Datum		v;
		int			nest = -1;

		if (memchr(data, '\0', len) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNTRANSLATABLE_CHARACTER),
					 errmsg("invalid byte sequence for encoding \"%s\": 0x00",
							GetDatabaseEncodingName())));
		v = InputFunctionCall(&col->in_fn, pnstrdup(data, len), col->in_ioparam, col->orig_typmod);
		if (col->fixed_settings)
		{
			nest = NewGUCNestLevel();
			(void) set_config_option("datestyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
			(void) set_config_option("intervalstyle", "postgres", PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
			(void) set_config_option("extra_float_digits", "1", PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
			(void) set_config_option("timezone", "UTC", PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
		}
		str = OutputFunctionCall(&col->out_fn, v);
		if (nest >= 0)
			AtEOXact_GUC(true, nest);
	}
	utf8 = pg_server_to_any(str, strlen(str), PG_UTF8);
	len = strlen(utf8);
	out = (bytea *) palloc(VARHDRSZ + len);
	SET_VARSIZE(out, VARHDRSZ + len);
	memcpy(VARDATA(out), utf8, len);
	return out;
}


/*
 * The format of a column's new values.  A Citus table's values are sealed
 * by its shards' triggers, on the workers (and on the coordinator's
 * placement of a reference table) as parts of the coordinator's statement,
 * where the data key registry of format 2 cannot be written: format 2 is
 * refused there, whatever asked for it (docs/citus.md).
 */
static int
column_format(const KmsColumn *col)
{
	int			format = col->format != 0 ? col->format : kms_guc_format;

	if (format == 2 && col->citus_shard)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("format 2 is not available for protected columns of Citus tables"),
				 errdetail("The values of a Citus table are sealed on its shards, where the kms_pg data key registry cannot be written."),
				 errhint("SET kms_pg.format = 1 on the nodes, or use kms_set_column_format(table, column, 1).")));
	return format;
}

/* The blind index of canonical plaintext: 16 bytes of HMAC-SHA-256. */
static bytea *
blind_index(KmsColumn *col, MemoryContext keycxt, const char *pt, Size len)
{
	bytea	   *out;
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;

	if (col->bidx_key == NULL)
	{
		KmsContextPair pairs[2];
		KmsContext	ctx;
		char	   *detail;
		KmsError	err;
		bytea	   *key;

		pairs[0].key = "kms_pg:column";
		pairs[0].keylen = strlen(pairs[0].key);
		pairs[0].type = KMS_CTX_TYPE_STRING;
		pairs[0].value = col->column_id;
		pairs[0].valuelen = strlen(col->column_id);
		pairs[1].key = "kms_pg:purpose";
		pairs[1].keylen = strlen(pairs[1].key);
		pairs[1].type = KMS_CTX_TYPE_STRING;
		pairs[1].value = "blind-index";
		pairs[1].valuelen = strlen(pairs[1].value);
		err = kms_context_from_pairs(pairs, 2, &ctx, &detail);
		if (err != KMS_OK)
			kms_report_error(err, detail);
		/* writers (the trigger) hold encrypt, searching readers decrypt */
		key = kms_open_ext(col->bidx_key_ct, &ctx, false, KMS_PRIV_ENCRYPT | KMS_PRIV_DECRYPT, InvalidOid);
		if (VARSIZE(key) - VARHDRSZ < 16)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("kms_pg: the blind-index key of column %s is too short", col->column_id)));
		{
			MemoryContext old = MemoryContextSwitchTo(keycxt);

			col->bidx_key = kms_secure_palloc(VARSIZE(key) - VARHDRSZ);
			MemoryContextSwitchTo(old);
		}
		col->bidx_key_len = VARSIZE(key) - VARHDRSZ;
		memcpy(col->bidx_key, VARDATA(key), col->bidx_key_len);
		explicit_bzero(VARDATA(key), col->bidx_key_len);
	}
	if (HMAC(EVP_sha256(), col->bidx_key, col->bidx_key_len,
			 (const unsigned char *) pt, len, mac, &maclen) == NULL)
		kms_report_openssl_error("HMAC-SHA256");
	out = (bytea *) palloc(VARHDRSZ + KMS_BIDX_LEN);
	SET_VARSIZE(out, VARHDRSZ + KMS_BIDX_LEN);
	memcpy(VARDATA(out), mac, KMS_BIDX_LEN);
	explicit_bzero(mac, sizeof(mac));
	return out;
}

/* ---------- the trigger ---------- */

/*
 * SQL: kms_protected_column_trigger() RETURNS trigger
 * BEFORE INSERT OR UPDATE OF <col>, <context columns>[, <blind index>]:
 *	 NULL                    -> NULL (blind index NULL)
 *	 plaintext               -> canonicalised, sealed under the row's context
 *	 UPDATE, value unchanged -> kept; sealed again under the new context
 *								if a context column changed
 *	 another ciphertext      -> kept if it opens under the row's context
 *								(restore, rotation), else an error
 */
PG_FUNCTION_INFO_V1(kms_protected_column_trigger);
Datum
kms_protected_column_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	KmsColumn  *col;
	HeapTuple	newtup;
	HeapTuple	oldtup = NULL;
	bool		isnull;
	Datum		d;
	bytea	   *v;
	const char *vdata;
	Size		vlen;
	bytea	   *ct = NULL;
	bytea	   *pt = NULL;
	bool		keep_bidx = false;
	int			ncols = 0;
	int			colnums[2];
	Datum		values[2];
	bool		nulls[2];

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!(TRIGGER_FIRED_BY_INSERT(td->tg_event) || TRIGGER_FIRED_BY_UPDATE(td->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("kms_protected_column_trigger must be a BEFORE INSERT OR UPDATE row trigger")));
	rel = td->tg_relation;
	desc = RelationGetDescr(rel);
	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		newtup = td->tg_newtuple;
		oldtup = td->tg_trigtuple;
	}
	else
		newtup = td->tg_trigtuple;

	/* The catalog row, once per statement. */
	col = (KmsColumn *) fcinfo->flinfo->fn_extra;
	if (col == NULL || col->tgoid != td->tg_trigger->tgoid || col->relid != RelationGetRelid(rel))
	{
		col = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(KmsColumn));
		if (!load_column_cached(fcinfo, rel, td->tg_trigger, fcinfo->flinfo->fn_mcxt, col))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("kms_pg: trigger \"%s\" on \"%s\" has no row in kms_protected_columns",
							td->tg_trigger->tgname, rel_name(rel)),
					 errhint("Protect columns with kms_protect_column().  On a Citus worker, run kms_citus_sync_columns() on the coordinator.")));
		fcinfo->flinfo->fn_extra = col;
	}

	d = heap_getattr(newtup, col->attnum, desc, &isnull);
	if (!isnull)
	{
		KmsContext	ctx;

		v = DatumGetByteaPP(d);
		vdata = VARDATA_ANY(v);
		vlen = VARSIZE_ANY_EXHDR(v);
		build_context(col, rel, newtup, &ctx);
		if (!kms_envelope_is_ciphertext((const uint8 *) vdata, vlen))
		{
			/* plaintext: pending in a kms_sealed column, raw in a 1.0 bytea one */
			if (is_pending(vdata, vlen))
			{
				vdata += sizeof(kms_pending_magic);
				vlen -= sizeof(kms_pending_magic);
			}
			pt = canonical_plaintext(col, vdata, (int) vlen);
			ct = kms_seal_format(VARDATA(pt), VARSIZE(pt) - VARHDRSZ, &ctx,
								 kms_provider_resolve_key(col->key_id),
								 KMS_PRIV_ENCRYPT, InvalidOid, column_format(col));
		}
		else
		{
			bool		same = false;
			Datum		od;
			bool		onull = true;

			if (oldtup != NULL)
			{
				od = heap_getattr(oldtup, col->attnum, desc, &onull);
				if (!onull)
				{
					bytea	   *ov = DatumGetByteaPP(od);

					same = VARSIZE_ANY_EXHDR(ov) == vlen &&
						memcmp(VARDATA_ANY(ov), vdata, vlen) == 0;
				}
			}
			if (same)
			{
				KmsContext	octx;

				build_context(col, rel, oldtup, &octx);
				if (octx.canonical.len == ctx.canonical.len &&
					memcmp(octx.canonical.data, ctx.canonical.data, ctx.canonical.len) == 0)
				{
					ct = v;
					if (col->bidx_attnum != InvalidAttrNumber)
					{
						(void) heap_getattr(oldtup, col->bidx_attnum, desc, &isnull);
						keep_bidx = !isnull;
						if (!keep_bidx)
							pt = kms_open_ext(v, &ctx, false, KMS_PRIV_ENCRYPT, InvalidOid);
					}
				}
				else
				{
					/* a context column changed: seal again so the value stays readable */
					pt = kms_open_ext(v, &octx, false, KMS_PRIV_ENCRYPT, InvalidOid);
					ct = kms_seal_format(VARDATA(pt), VARSIZE(pt) - VARHDRSZ, &ctx,
										 kms_provider_resolve_key(col->key_id),
										 KMS_PRIV_ENCRYPT, InvalidOid, column_format(col));
				}
			}
			else
			{
				pt = kms_open_ext(v, &ctx, true, KMS_PRIV_ENCRYPT, InvalidOid);
				if (pt == NULL)
					ereport(ERROR,
							(errcode(ERRCODE_DATA_EXCEPTION),
							 errmsg("kms_pg: the value written to \"%s\" of \"%s\" is a kms_pg ciphertext that does not belong to this row",
									NameStr(TupleDescAttr(desc, col->attnum - 1)->attname),
									rel_name(rel)),
							 errdetail("It does not open under this row's encryption context (another row, column or table, or changed context columns)."),
							 errhint("Write plaintext, or a ciphertext made for this row and column.")));
				ct = v;
			}
		}
	}

	colnums[ncols] = col->attnum;
	values[ncols] = ct ? PointerGetDatum(ct) : (Datum) 0;
	nulls[ncols] = ct == NULL;
	ncols++;
	if (col->bidx_attnum != InvalidAttrNumber)
	{
		colnums[ncols] = col->bidx_attnum;
		if (keep_bidx)
			values[ncols] = heap_getattr(oldtup, col->bidx_attnum, desc, &nulls[ncols]);
		else if (ct == NULL)
		{
			values[ncols] = (Datum) 0;
			nulls[ncols] = true;
		}
		else
		{
			values[ncols] = PointerGetDatum(blind_index(col, fcinfo->flinfo->fn_mcxt,
														VARDATA(pt), VARSIZE(pt) - VARHDRSZ));
			nulls[ncols] = false;
		}
		ncols++;
	}
	if (pt != NULL)
		explicit_bzero(VARDATA(pt), VARSIZE(pt) - VARHDRSZ);
	return PointerGetDatum(heap_modify_tuple_by_cols(newtup, desc, ncols, colnums, values, nulls));
}

/* ---------- the decrypting views ---------- */

/*
 * SQL: kms_pc_view_decrypt(ciphertext bytea, VARIADIC context "any") RETURNS bytea
 * kms_decrypt_pairs() for whoever may execute it, NULL for anyone else
 * (writers, auditors): the views call this, so a role without the right
 * to decrypt still reads the other columns and can UPDATE and DELETE
 * through the view (PostgreSQL checks EXECUTE on every function of an
 * expression when it starts, even in a CASE branch never taken).  The
 * privilege is looked up once per query.
 */
PG_FUNCTION_INFO_V1(kms_pc_view_decrypt);
Datum
kms_pc_view_decrypt(PG_FUNCTION_ARGS)
{
	int		   *allowed = (int *) fcinfo->flinfo->fn_extra;

	if (allowed == NULL)
	{
		Oid			nsp = get_func_namespace(fcinfo->flinfo->fn_oid);
		Oid			argtypes[2] = {BYTEAOID, ANYOID};
		Oid			fn = LookupFuncName(list_make2(makeString(get_namespace_name(nsp)),
												   makeString("kms_decrypt_pairs")),
										2, argtypes, false);

		allowed = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(int));
		*allowed = DatumGetBool(DirectFunctionCall2(has_function_privilege_id,
													ObjectIdGetDatum(fn),
													CStringGetTextDatum("EXECUTE")));
		fcinfo->flinfo->fn_extra = allowed;
	}
	if (!*allowed || PG_ARGISNULL(0))
		PG_RETURN_NULL();
	return kms_decrypt_pairs(fcinfo);
}

/*
 * The call-site state of kms_pc_view_decrypt_text(): the decision whether
 * the caller may decrypt (once per query, as kms_pc_view_decrypt), and the
 * context pairs whose key and value are constants in the view's
 * definition, converted once.  Only the context columns of the row are
 * converted per row.
 */
typedef struct KmsViewDecrypt
{
	bool		allowed;
	bool		generic;		/* not the generated form: kms_decrypt_pairs() */
	int			npairs;
	KmsContextPair *pairs;		/* constants filled in, in argument order */
	bool	   *varying;		/* pair i's value comes from the row */
	Oid		   *valtypes;
} KmsViewDecrypt;

static bool
pc_view_may_decrypt(FunctionCallInfo fcinfo)
{
	Oid			nsp = get_func_namespace(fcinfo->flinfo->fn_oid);
	Oid			argtypes[2] = {BYTEAOID, ANYOID};
	Oid			fn = LookupFuncName(list_make2(makeString(get_namespace_name(nsp)),
											   makeString("kms_decrypt_pairs")),
									2, argtypes, false);

	return DatumGetBool(DirectFunctionCall2(has_function_privilege_id,
											ObjectIdGetDatum(fn),
											CStringGetTextDatum("EXECUTE")));
}

static KmsViewDecrypt *
pc_view_decrypt_state(FunctionCallInfo fcinfo)
{
	FmgrInfo   *fl = fcinfo->flinfo;
	KmsViewDecrypt *st = (KmsViewDecrypt *) fl->fn_extra;
	MemoryContext old;
	int			nargs = PG_NARGS() - 1;

	if (st != NULL)
		return st;
	old = MemoryContextSwitchTo(fl->fn_mcxt);
	st = palloc0(sizeof(KmsViewDecrypt));
	st->allowed = pc_view_may_decrypt(fcinfo);
	st->generic = get_fn_expr_variadic(fl) || nargs <= 0 || nargs % 2 != 0;
	if (!st->generic)
	{
		st->npairs = nargs / 2;
		st->pairs = palloc0(sizeof(KmsContextPair) * st->npairs);
		st->varying = palloc0(sizeof(bool) * st->npairs);
		st->valtypes = palloc0(sizeof(Oid) * st->npairs);
		for (int i = 0; i < st->npairs && !st->generic; i++)
		{
			int			ka = 1 + 2 * i;
			int			va = ka + 1;
			Oid			kt = get_fn_expr_argtype(fl, ka);
			Oid			vt = get_fn_expr_argtype(fl, va);
			KmsContextPair *p = &st->pairs[i];

			/* keys: text constants; anything else takes the generic path */
			if (kt != TEXTOID || !get_fn_expr_arg_stable(fl, ka) || PG_ARGISNULL(ka))
			{
				st->generic = true;
				break;
			}
			p->key = text_to_cstring(PG_GETARG_TEXT_PP(ka));
			p->keylen = strlen(p->key);
			st->valtypes[i] = vt;
			st->varying[i] = !get_fn_expr_arg_stable(fl, va);
			if (!st->varying[i])
			{
				if (PG_ARGISNULL(va) || !kms_context_value_from_datum(PG_GETARG_DATUM(va), vt, p))
					st->generic = true;
			}
		}
	}
	MemoryContextSwitchTo(old);
	fl->fn_extra = st;
	return st;
}

/*
 * SQL: kms_pc_view_decrypt_text(ciphertext bytea, VARIADIC context "any") RETURNS text
 * What the views call for a protected column of any type but bytea: the
 * plaintext (UTF-8, as the trigger sealed it) in the database encoding, or
 * NULL for a role that may not execute kms_decrypt_pairs().  The context
 * is built as the trigger builds it, constants once per query.
 */
PG_FUNCTION_INFO_V1(kms_pc_view_decrypt_text);
Datum
kms_pc_view_decrypt_text(PG_FUNCTION_ARGS)
{
	KmsViewDecrypt *st;
	bytea	   *pt;
	char	   *conv;
	int			len;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	st = pc_view_decrypt_state(fcinfo);
	if (!st->allowed)
		PG_RETURN_NULL();
	if (st->generic)
		pt = DatumGetByteaPP(kms_decrypt_pairs(fcinfo));
	else
	{
		KmsContextPair *pairs = palloc(sizeof(KmsContextPair) * st->npairs);
		KmsContext	ctx;
		char	   *detail;
		KmsError	err;

		memcpy(pairs, st->pairs, sizeof(KmsContextPair) * st->npairs);
		for (int i = 0; i < st->npairs; i++)
		{
			int			va = 2 + 2 * i;

			if (!st->varying[i])
				continue;
			if (PG_ARGISNULL(va))
				kms_report_error(KMS_ERR_CTX_BAD_VALUE,
								 psprintf("The value of key \"%.*s\" is null.",
										  Min(pairs[i].keylen, 64), pairs[i].key));
			if (!kms_context_value_from_datum(PG_GETARG_DATUM(va), st->valtypes[i], &pairs[i]))
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("encryption context values must be text, integer, numeric or boolean"),
						 errdetail("The value of key \"%.*s\" is of type %s.",
								   Min(pairs[i].keylen, 64), pairs[i].key,
								   format_type_be(st->valtypes[i]))));
		}
		err = kms_context_from_pairs(pairs, st->npairs, &ctx, &detail);
		if (err != KMS_OK)
			kms_report_error(err, detail);
		pt = kms_open_ext(PG_GETARG_BYTEA_PP(0), &ctx, false, KMS_PRIV_DECRYPT, fcinfo->flinfo->fn_oid);
	}
	len = VARSIZE_ANY_EXHDR(pt);
	conv = pg_any_to_server(VARDATA_ANY(pt), len, PG_UTF8);
	if (conv != VARDATA_ANY(pt))
		PG_RETURN_TEXT_P(cstring_to_text(conv));	/* converted */
	if (!VARATT_IS_SHORT(pt))
		PG_RETURN_TEXT_P((text *) pt);	/* already valid in this encoding */
	PG_RETURN_TEXT_P(cstring_to_text_with_len(conv, len));
}

/* ---------- kms_blind_index ---------- */

/* The catalog row of rel.colname (by the column's current name), or an error. */
static KmsColumn *
column_by_name(FunctionCallInfo fcinfo, Relation rel, const char *colname)
{
	AttrNumber	attnum = get_attnum(RelationGetRelid(rel), colname);
	KmsColumn  *col = palloc0(sizeof(KmsColumn));

	if (attnum != InvalidAttrNumber && rel->trigdesc != NULL)
	{
		for (int i = 0; i < rel->trigdesc->numtriggers; i++)
		{
			Trigger    *t = &rel->trigdesc->triggers[i];

			if (t->tgnattr >= 1 && t->tgattr[0] == attnum &&
				load_column(fcinfo, rel, t, CurrentMemoryContext, col))
				return col;
		}
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("column \"%s\" of relation \"%s\" is not protected by kms_pg",
					colname, rel_name(rel)),
			 errhint("See the kms_protected_columns_info view.")));
	return NULL;
}

static Datum
blind_index_common(FunctionCallInfo fcinfo, bool as_bytea)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *colname = NameStr(*PG_GETARG_NAME(1));
	Relation	rel = table_open(relid, AccessShareLock);
	KmsColumn  *col = column_by_name(fcinfo, rel, colname);
	bytea	   *pt;
	bytea	   *out;

	if (col->bidx_key_ct == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("protected column \"%s\" of \"%s\" has no blind index",
						colname, rel_name(rel)),
				 errhint("Protect it with blind_index => true.")));
	if (as_bytea)
	{
		bytea	   *b = PG_GETARG_BYTEA_PP(2);

		if (!col->orig_bytea)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("protected column \"%s\" of \"%s\" is of type %s: give the value as text",
							colname, rel_name(rel),
							format_type_with_typemod(col->orig_type, col->orig_typmod))));
		pt = canonical_plaintext(col, VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b));
	}
	else
	{
		text	   *t = PG_GETARG_TEXT_PP(2);

		if (col->orig_bytea)
			pt = DatumGetByteaPP(DirectFunctionCall1(byteain, CStringGetDatum(text_to_cstring(t))));
		else
			pt = canonical_plaintext(col, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	}
	out = blind_index(col, CurrentMemoryContext, VARDATA_ANY(pt), VARSIZE_ANY_EXHDR(pt));
	if (col->bidx_key != NULL)
		explicit_bzero(col->bidx_key, col->bidx_key_len);
	table_close(rel, AccessShareLock);
	PG_RETURN_BYTEA_P(out);
}

/* SQL: kms_blind_index(tbl regclass, col name, value text) RETURNS bytea */
PG_FUNCTION_INFO_V1(kms_blind_index);
Datum
kms_blind_index(PG_FUNCTION_ARGS)
{
	return blind_index_common(fcinfo, false);
}

/* SQL: kms_blind_index(tbl regclass, col name, value bytea) RETURNS bytea */
PG_FUNCTION_INFO_V1(kms_blind_index_bytea);
Datum
kms_blind_index_bytea(PG_FUNCTION_ARGS)
{
	return blind_index_common(fcinfo, true);
}

/* ---------- writes through the decrypting views ---------- */

typedef struct KmsViewPlan
{
	Bitmapset  *cols;			/* table columns written (INSERT, UPDATE) */
	SPIPlanPtr	plan;
} KmsViewPlan;

typedef struct KmsView
{
	Oid			viewid;
	Oid			relid;
	char	   *relname;		/* schema-qualified, quoted */
	int			nviewcols;
	AttrNumber *tabatt;			/* view column i -> table attnum */
	Oid		   *tabtype;		/* type of that table column */
	bool	   *writable;		/* not generated, not a blind index */
	bool	   *defaulted;		/* has a default or identity */
	int		   *prot;			/* -1, or 0 (bytea), 1 (text), 2 (other type) */
	FmgrInfo   *outfn;			/* output function of a protected view column */
	int			npk;
	int		   *pkcol;			/* view columns of the primary key */
	bool		may_decrypt;
	bool		may_select;		/* may read every column of the table: RETURNING */
	List	   *inserts;		/* KmsViewPlan */
	List	   *updates;
	SPIPlanPtr	delete;
	MemoryContextCallback freeplans;
	bool		covers_table;	/* every table column is a view column */

	/*
	 * Direct writes (view_direct_*): the table's own executor routines on
	 * an executor state kept for the statement, instead of a statement
	 * through SPI per row.
	 */
	int			direct[2];		/* INSERT, UPDATE: 0 not decided, 1 direct, -1 SPI */
	EState	   *estate;
	ResultRelInfo *rri;
	Relation	rel;			/* open (and its indexes) until the statement ends */
	ResourceOwner owner;		/* that opened them */
	KmsPermInfo *perm;
	TupleTableSlot *slot;		/* the row written */
	TupleTableSlot *oldslot;	/* UPDATE: the row found by primary key */
	TupleTableSlot *keyslot;	/* UPDATE: the key searched */
	ExprState **defexpr;		/* per table column, prepared on first use */
	Oid			pkindex;
	EPQState	epq;
	Bitmapset  *checked;		/* columns of the last permission check */
	AclMode		checked_mode;
	MemoryContextCallback closerel;
} KmsView;

/* The plans of a statement go with it (its function's memory context). */
static void
view_free_plans(void *arg)
{
	KmsView    *v = (KmsView *) arg;
	ListCell   *lc;

	foreach(lc, v->inserts)
		SPI_freeplan(((KmsViewPlan *) lfirst(lc))->plan);
	foreach(lc, v->updates)
		SPI_freeplan(((KmsViewPlan *) lfirst(lc))->plan);
	if (v->delete != NULL)
		SPI_freeplan(v->delete);
	v->inserts = v->updates = NIL;
	v->delete = NULL;
}

static KmsView *
load_view(FunctionCallInfo fcinfo, Relation view)
{
	MemoryContext mcxt = fcinfo->flinfo->fn_mcxt;
	MemoryContext old;
	KmsView    *v;
	Relation	cat;
	TableScanDesc scan;
	HeapTuple	tup;
	TupleDesc	cdesc;
	char	   *vschema = get_namespace_name(RelationGetNamespace(view));
	Oid			relid = InvalidOid;
	List	   *trignames = NIL;
	List	   *bytea_flags = NIL;
	List	   *bidx_flags = NIL;
	Relation	rel;
	TupleDesc	tdesc;
	TupleDesc	vdesc = RelationGetDescr(view);
	int			j;
	Oid			argtypes[2] = {BYTEAOID, ANYOID};
	Oid			decrypt_fn;

	cat = table_open(catalog_relid(fcinfo), AccessShareLock);
	cdesc = RelationGetDescr(cat);
	scan = table_beginscan_catalog(cat, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		bool		isnull;
		Datum		vs = catalog_attr(tup, cdesc, "view_schema", &isnull);
		Datum		vn = catalog_attr(tup, cdesc, "view_name", &isnull);

		if (strcmp(NameStr(*DatumGetName(vs)), vschema) != 0 ||
			strcmp(NameStr(*DatumGetName(vn)), RelationGetRelationName(view)) != 0)
			continue;
		relid = DatumGetObjectId(catalog_attr(tup, cdesc, "relid", &isnull));
		trignames = lappend(trignames,
							pstrdup(NameStr(*DatumGetName(catalog_attr(tup, cdesc, "trigger_name", &isnull)))));
		bytea_flags = lappend_int(bytea_flags,
								  DatumGetObjectId(catalog_attr(tup, cdesc, "original_type", &isnull)) == BYTEAOID ? 0 :
								  DatumGetObjectId(catalog_attr(tup, cdesc, "original_type", &isnull)) == TEXTOID ? 1 : 2);
		(void) catalog_attr(tup, cdesc, "blind_index_key", &isnull);
		bidx_flags = lappend_int(bidx_flags, !isnull);
	}
	table_endscan(scan);
	table_close(cat, AccessShareLock);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kms_pg: view \"%s.%s\" is not a kms_pg decrypting view",
						vschema, RelationGetRelationName(view))));

	old = MemoryContextSwitchTo(mcxt);
	v = palloc0(sizeof(KmsView));
	v->viewid = RelationGetRelid(view);
	v->relid = relid;
	rel = table_open(relid, AccessShareLock);
	tdesc = RelationGetDescr(rel);
	v->relname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
											RelationGetRelationName(rel));
	v->nviewcols = vdesc->natts;
	v->tabatt = palloc0(sizeof(AttrNumber) * vdesc->natts);
	v->tabtype = palloc0(sizeof(Oid) * vdesc->natts);
	v->writable = palloc0(sizeof(bool) * vdesc->natts);
	v->defaulted = palloc0(sizeof(bool) * vdesc->natts);
	v->prot = palloc(sizeof(int) * vdesc->natts);
	v->outfn = palloc0(sizeof(FmgrInfo) * vdesc->natts);
	v->pkcol = palloc0(sizeof(int) * Max(vdesc->natts, 1));
	/* The view lists the table's columns in order. */
	j = 0;
	v->covers_table = true;
	for (int i = 0; i < tdesc->natts; i++)
	{
		Form_pg_attribute ta = TupleDescAttr(tdesc, i);

		if (j >= vdesc->natts)
		{
			if (!ta->attisdropped)
				v->covers_table = false;	/* added to the table after the view */
			continue;
		}

		if (ta->attisdropped)
			continue;
		v->tabatt[j] = ta->attnum;
		v->tabtype[j] = ta->atttypid;
		v->writable[j] = ta->attgenerated == '\0';
		v->defaulted[j] = ta->atthasdef || ta->attidentity != '\0';
		v->prot[j] = -1;
		j++;
	}
	if (j != vdesc->natts)
		elog(ERROR, "kms_pg: view \"%s\" does not match its table", RelationGetRelationName(view));
	/* Protected and blind index columns, from the generated triggers. */
	for (int k = 0; k < list_length(trignames) && rel->trigdesc; k++)
	{
		const char *tg = list_nth(trignames, k);

		for (int t = 0; t < rel->trigdesc->numtriggers; t++)
		{
			Trigger    *trig = &rel->trigdesc->triggers[t];

			if (strcmp(trig->tgname, tg) != 0 || trig->tgnattr < 1)
				continue;
			for (int c = 0; c < vdesc->natts; c++)
			{
				if (v->tabatt[c] == trig->tgattr[0])
				{
					Oid			outfn;
					bool		isvarlena;

					v->prot[c] = list_nth_int(bytea_flags, k);
					getTypeOutputInfo(TupleDescAttr(vdesc, c)->atttypid, &outfn, &isvarlena);
					fmgr_info_cxt(outfn, &v->outfn[c], mcxt);
				}
				if (list_nth_int(bidx_flags, k) && v->tabatt[c] == trig->tgattr[trig->tgnattr - 1])
					v->writable[c] = false;
			}
		}
	}
	/* The primary key. */
	if (OidIsValid(kms_relation_pkey_index(rel)))
	{
		Relation	idx = index_open(kms_relation_pkey_index(rel), AccessShareLock);

		for (int k = 0; k < idx->rd_index->indnkeyatts; k++)
			for (int c = 0; c < vdesc->natts; c++)
				if (v->tabatt[c] == idx->rd_index->indkey.values[k])
					v->pkcol[v->npk++] = c;
		index_close(idx, AccessShareLock);
	}
	table_close(rel, AccessShareLock);

	decrypt_fn = LookupFuncName(list_make2(makeString(get_namespace_name(get_func_namespace(fcinfo->flinfo->fn_oid))),
										   makeString("kms_decrypt_pairs")),
								2, argtypes, false);
	v->may_decrypt = DatumGetBool(DirectFunctionCall2(has_function_privilege_id,
													  ObjectIdGetDatum(decrypt_fn),
													  CStringGetTextDatum("EXECUTE")));
	v->may_select = pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) == ACLCHECK_OK ||
		pg_attribute_aclcheck_all(relid, GetUserId(), ACL_SELECT, ACLMASK_ALL) == ACLCHECK_OK;
	v->freeplans.func = view_free_plans;
	v->freeplans.arg = v;
	MemoryContextRegisterResetCallback(mcxt, &v->freeplans);
	MemoryContextSwitchTo(old);
	return v;
}

/* A view column's value as the table column's: protected ones as kms_sealed plaintext. */
static Datum
view_to_table(KmsView *v, int c, Datum d)
{
	switch (v->prot[c])
	{
		case -1:
			return d;
		case 0:
		case 1:
			{
				bytea	   *b = DatumGetByteaPP(d);

				return PointerGetDatum(sealed_pending(VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b)));
			}
		default:
			{
				char	   *s = OutputFunctionCall(&v->outfn[c], d);

				return PointerGetDatum(sealed_pending(s, strlen(s)));
			}
	}
}

/*
 * SQL: kms_pc_view_assign(newval anyelement, oldval anyelement, cur kms_sealed)
 *      RETURNS kms_sealed
 * The value an UPDATE through the decrypting view of a Citus table writes
 * to a protected column (the view's rules, kms_pc_citus_view_rules): the
 * stored value cur when the view column is unchanged (as the INSTEAD OF
 * trigger decides it: both NULL, or the same datum; for a role that may not
 * decrypt both are NULL, so a context-column change re-seals cur through
 * the table's trigger), else the new value as kms_sealed plaintext, exactly
 * as view_to_table makes it, for the table's trigger to seal.  Declared
 * IMMUTABLE because Citus refuses non-IMMUTABLE functions with column
 * arguments in a distributed UPDATE: its only setting-dependent part is
 * the output function of a non-text type, whose text the trigger on the
 * same node reads back under the same settings.
 */
PG_FUNCTION_INFO_V1(kms_pc_view_assign);
Datum
kms_pc_view_assign(PG_FUNCTION_ARGS)
{
	bool		nnull = PG_ARGISNULL(0);
	bool		onull = PG_ARGISNULL(1);
	Oid			typ = get_fn_expr_argtype(fcinfo->flinfo, 0);
	int16		typlen;
	bool		typbyval;

	if (!OidIsValid(typ))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("kms_pc_view_assign: could not determine the argument type")));
	get_typlenbyval(typ, &typlen, &typbyval);
	if (nnull == onull &&
		(nnull || datumIsEqual(PG_GETARG_DATUM(0), PG_GETARG_DATUM(1), typbyval, typlen)))
	{
		if (PG_ARGISNULL(2))
			PG_RETURN_NULL();
		PG_RETURN_DATUM(PG_GETARG_DATUM(2));
	}
	if (nnull)
		PG_RETURN_NULL();
	if (typ == BYTEAOID || typ == TEXTOID)
	{
		bytea	   *b = PG_GETARG_BYTEA_PP(0);

		PG_RETURN_BYTEA_P(sealed_pending(VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b)));
	}
	else
	{
		Oid			outfn;
		bool		isvarlena;
		char	   *s;

		getTypeOutputInfo(typ, &outfn, &isvarlena);
		s = OidOutputFunctionCall(outfn, PG_GETARG_DATUM(0));
		PG_RETURN_BYTEA_P(sealed_pending(s, strlen(s)));
	}
}

static SPIPlanPtr
view_plan(KmsView *v, List **plans, Bitmapset *cols, const char *sql, int nargs, Oid *argtypes)
{
	ListCell   *lc;
	KmsViewPlan *p;
	MemoryContext old;
	SPIPlanPtr	plan;

	foreach(lc, *plans)
	{
		p = lfirst(lc);
		if (bms_equal(p->cols, cols))
			return p->plan;
	}
	plan = SPI_prepare(sql, nargs, argtypes);
	if (plan == NULL)
		elog(ERROR, "kms_pg: SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	/* listed only once prepared: the list is freed with the statement, also after an error */
	old = MemoryContextSwitchTo(GetMemoryChunkContext(v));
	p = palloc(sizeof(KmsViewPlan));
	p->cols = bms_copy(cols);
	p->plan = plan;
	*plans = lappend(*plans, p);
	MemoryContextSwitchTo(old);
	return plan;
}

/* The row handed back to the executor (RETURNING): the table's row, with
 * protected columns as written (roles that may decrypt) or NULL. */
static HeapTuple
view_result(KmsView *v, TupleDesc vdesc, HeapTuple newtup, HeapTuple tabrow, TupleDesc tabdesc,
			MemoryContext cxt)
{
	Datum	   *values = palloc(sizeof(Datum) * v->nviewcols);
	bool	   *nulls = palloc(sizeof(bool) * v->nviewcols);
	MemoryContext old;
	HeapTuple	res;

	for (int c = 0; c < v->nviewcols; c++)
	{
		if (v->prot[c] >= 0)
		{
			values[c] = heap_getattr(newtup, c + 1, vdesc, &nulls[c]);
			if (!v->may_decrypt)
				nulls[c] = true;
		}
		else if (tabrow != NULL)
			values[c] = heap_getattr(tabrow, c + 1, tabdesc, &nulls[c]);	/* RETURNING *: the view's columns */
		else
			values[c] = heap_getattr(newtup, c + 1, vdesc, &nulls[c]);
	}
	old = MemoryContextSwitchTo(cxt);
	res = heap_form_tuple(vdesc, values, nulls);
	MemoryContextSwitchTo(old);
	return res;
}

/* ---------- direct writes through the decrypting views ---------- */

/*
 * A statement through SPI per row pays for parsing-free but complete
 * executor start-up and shut-down, the table's CHECK constraints read
 * from the catalog again, its trigger's catalog row loaded again, for
 * every row.  The direct path instead keeps one executor state for the
 * statement (the table and its indexes open, constraint expressions and
 * trigger state prepared once) and writes each row with the executor's
 * own routines for a single row (ExecSimpleRelationInsert/Update, as
 * logical replication applies rows): BEFORE and AFTER row triggers (the
 * table's encrypting trigger among them), generated columns, NOT NULL,
 * CHECK and partition constraints, unique and exclusion indexes, as for
 * an INSERT or UPDATE of the table.  It runs as the caller: the caller's
 * privileges on the table are checked as the executor checks them (same
 * columns, same errors); defaults are evaluated as the caller.  AFTER row
 * triggers (foreign keys) fire after each row, as with SPI.
 *
 * Whatever the direct path would not do exactly as an INSERT or UPDATE
 * statement does stays on SPI: tables with row-level security, rules,
 * statement-level triggers or transition tables, partitioned tables,
 * tables with columns the view lacks, Citus tables (their rows are in
 * shards that only a statement planned by Citus reaches), UPDATE under REPEATABLE READ or
 * SERIALIZABLE (the row is looked up by primary key with the latest
 * snapshot, as READ COMMITTED does), and a row that writes a GENERATED
 * ALWAYS identity column (SPI raises the usual error).
 *
 * The table stays open until the statement's memory goes
 * (view_direct_close); on an error the resource owner releases it.
 */

static void
view_direct_close(void *arg)
{
	KmsView    *v = (KmsView *) arg;
	ResourceOwner save;

	/* after an error the transaction's resource owner has released them */
	if (v->rel == NULL || !IsTransactionState())
		return;
	save = CurrentResourceOwner;
	CurrentResourceOwner = v->owner;
	/* the slots hold a reference to the table's tuple descriptor */
	ExecDropSingleTupleTableSlot(v->slot);
	if (v->oldslot != NULL)
		ExecDropSingleTupleTableSlot(v->oldslot);
	if (v->keyslot != NULL)
		ExecDropSingleTupleTableSlot(v->keyslot);
	/* and so do the executor's own (the triggers' old and new rows) */
	ExecResetTupleTable(v->estate->es_tupleTable, false);
	ExecCloseIndices(v->rri);
	table_close(v->rel, NoLock);
	CurrentResourceOwner = save;
	v->rel = NULL;
}

/* Whether the direct path does exactly what the SPI statement would. */
static bool
view_direct_usable(KmsView *v, bool update)
{
	Relation	rel;
	bool		ok;
	TriggerDesc *td;

	if (!v->covers_table || (update && (v->npk == 0 || IsolationUsesXactSnapshot())))
		return false;
	rel = table_open(v->relid, RowExclusiveLock);
	td = rel->trigdesc;
	ok = rel->rd_rel->relkind == RELKIND_RELATION &&
		!rel->rd_rel->relrowsecurity &&
		rel->rd_rules == NULL;
	if (ok && td != NULL)
	{
		if (update)
			ok = !td->trig_update_before_statement && !td->trig_update_after_statement &&
				!td->trig_update_old_table && !td->trig_update_new_table;
		else
			ok = !td->trig_insert_before_statement && !td->trig_insert_after_statement &&
				!td->trig_insert_new_table;
	}
	if (ok && update)
		ok = OidIsValid(kms_relation_pkey_index(rel));
	table_close(rel, NoLock);
	/* a Citus table's rows are in its shards: only a statement reaches them */
	if (ok)
		ok = !kms_citus_table(v->relid);
	return ok;
}

/* The executor state of the statement, made on first use. */
static void
view_direct_open(KmsView *v, MemoryContext mcxt)
{
	MemoryContext old;
	TriggerDesc *td;

	if (v->estate != NULL)
		return;
	old = MemoryContextSwitchTo(mcxt);
	v->estate = CreateExecutorState();
	MemoryContextSwitchTo(v->estate->es_query_cxt);
	v->owner = CurrentResourceOwner;
	v->rel = table_open(v->relid, RowExclusiveLock);
	v->closerel.func = view_direct_close;
	v->closerel.arg = v;
	MemoryContextRegisterResetCallback(v->estate->es_query_cxt, &v->closerel);
	v->perm = kms_exec_init_rtable(v->estate, v->rel);
	v->perm->checkAsUser = InvalidOid;
	v->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(v->rri, v->rel, 1, NULL, 0);
	/* AFTER row triggers find it here, instead of opening the table again */
	v->estate->es_opened_result_relations = lappend(v->estate->es_opened_result_relations, v->rri);
	ExecOpenIndices(v->rri, false);
	/* trigger functions looked up here, so that their state lives as long */
	td = v->rri->ri_TrigDesc;
	for (int i = 0; td != NULL && i < td->numtriggers; i++)
		fmgr_info(td->triggers[i].tgfoid, &v->rri->ri_TrigFunctions[i]);
	v->slot = MakeSingleTupleTableSlot(RelationGetDescr(v->rel), &TTSOpsVirtual);
	v->defexpr = palloc0(sizeof(ExprState *) * RelationGetDescr(v->rel)->natts);
	v->pkindex = kms_relation_pkey_index(v->rel);
	if (OidIsValid(v->pkindex))
	{
		v->oldslot = table_slot_create(v->rel, NULL);
		v->keyslot = MakeSingleTupleTableSlot(RelationGetDescr(v->rel), &TTSOpsVirtual);
	}
	kms_epq_init(&v->epq, v->estate);
	MemoryContextSwitchTo(old);
}

/* The executor's permission check, again only when the columns change. */
static void
view_direct_check(KmsView *v, AclMode mode, Bitmapset *cols)
{
	MemoryContext old;

	if (v->checked != NULL && v->checked_mode == mode && bms_equal(v->checked, cols))
		return;
	old = MemoryContextSwitchTo(v->estate->es_query_cxt);
	v->perm->requiredPerms = mode;
	v->perm->insertedCols = mode & ACL_INSERT ? bms_copy(cols) : NULL;
	v->perm->updatedCols = mode & ACL_UPDATE ? bms_copy(cols) : NULL;
	v->perm->selectedCols = NULL;
	if (mode & ACL_UPDATE)
	{
		/* WHERE <primary key> = ...: SELECT on those columns */
		v->perm->requiredPerms |= ACL_SELECT;
		for (int k = 0; k < v->npk; k++)
			v->perm->selectedCols = bms_add_member(v->perm->selectedCols,
												   v->tabatt[v->pkcol[k]] - FirstLowInvalidHeapAttributeNumber);
	}
	MemoryContextSwitchTo(old);
	kms_exec_check_perms(v->estate);
	old = MemoryContextSwitchTo(v->estate->es_query_cxt);
	bms_free(v->checked);
	v->checked = bms_copy(cols);
	v->checked_mode = mode;
	MemoryContextSwitchTo(old);
}

/* A column default, evaluated as the caller. */
static Datum
view_direct_default(KmsView *v, AttrNumber attnum, bool *isnull)
{
	if (v->defexpr[attnum - 1] == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(v->estate->es_query_cxt);
		Node	   *expr = build_column_default(v->rel, attnum);

		if (expr == NULL)
			expr = (Node *) makeNullConst(TupleDescAttr(RelationGetDescr(v->rel), attnum - 1)->atttypid,
										  -1, InvalidOid);
		v->defexpr[attnum - 1] = ExecPrepareExpr((Expr *) expr, v->estate);
		MemoryContextSwitchTo(old);
	}
	return ExecEvalExprSwitchContext(v->defexpr[attnum - 1], GetPerTupleExprContext(v->estate), isnull);
}

static bool
identity_always(KmsView *v, int c)
{
	return TupleDescAttr(RelationGetDescr(v->rel), v->tabatt[c] - 1)->attidentity == ATTRIBUTE_IDENTITY_ALWAYS;
}

/*
 * INSERT of the view's row newtup; false when this row must go through
 * SPI instead.  *inserted: whether the table's triggers let it through.
 */
static bool
view_direct_insert(KmsView *v, TupleDesc vdesc, HeapTuple newtup, MemoryContext mcxt, bool *inserted)
{
	TupleTableSlot *slot;
	Bitmapset  *cols = NULL;

	view_direct_open(v, mcxt);
	/* before any default is evaluated (SPI would evaluate them again) */
	for (int c = 0; c < v->nviewcols; c++)
		if (v->writable[c] && identity_always(v, c) && !heap_attisnull(newtup, c + 1, vdesc))
			return false;
	slot = v->slot;
	ExecClearTuple(slot);
	for (int a = 0; a < slot->tts_tupleDescriptor->natts; a++)
		slot->tts_isnull[a] = true;
	for (int c = 0; c < v->nviewcols; c++)
	{
		bool		isnull;
		Datum		d;
		AttrNumber	att = v->tabatt[c];

		if (!v->writable[c])
			continue;
		d = heap_getattr(newtup, c + 1, vdesc, &isnull);
		if (isnull && v->defaulted[c])
		{
			slot->tts_values[att - 1] = view_direct_default(v, att, &slot->tts_isnull[att - 1]);
			continue;
		}
		cols = bms_add_member(cols, att - FirstLowInvalidHeapAttributeNumber);
		slot->tts_values[att - 1] = isnull ? (Datum) 0 : view_to_table(v, c, d);
		slot->tts_isnull[att - 1] = isnull;
	}
	view_direct_check(v, ACL_INSERT, cols);
	ExecStoreVirtualTuple(slot);
	ItemPointerSetInvalid(&slot->tts_tid);
	v->estate->es_snapshot = GetActiveSnapshot();
	v->estate->es_output_cid = GetCurrentCommandId(true);
	AfterTriggerBeginQuery();
	ExecSimpleRelationInsert(v->rri, v->estate, slot);
	AfterTriggerEndQuery(v->estate);
	*inserted = ItemPointerIsValid(&slot->tts_tid);
	return true;
}

/*
 * UPDATE of the table row with the view row's primary key: the view
 * columns in cols (bits: view column numbers) take their values from
 * newtup.  False when this row must go through SPI instead.
 */
static bool
view_direct_update(KmsView *v, TupleDesc vdesc, HeapTuple oldtup, HeapTuple newtup,
				   Bitmapset *vcols, MemoryContext mcxt, bool *updated)
{
	TupleTableSlot *slot;
	TupleTableSlot *key;
	Bitmapset  *cols = NULL;
	int			c = -1;
	int			natts;
	bool		found;

	view_direct_open(v, mcxt);
	while ((c = bms_next_member(vcols, c)) >= 0)
	{
		if (identity_always(v, c))
			return false;
		cols = bms_add_member(cols, v->tabatt[c] - FirstLowInvalidHeapAttributeNumber);
	}
	view_direct_check(v, ACL_UPDATE, cols);
	natts = RelationGetDescr(v->rel)->natts;

	key = v->keyslot;
	ExecClearTuple(key);
	for (int a = 0; a < natts; a++)
		key->tts_isnull[a] = true;
	for (int k = 0; k < v->npk; k++)
	{
		AttrNumber	att = v->tabatt[v->pkcol[k]];

		key->tts_values[att - 1] = heap_getattr(oldtup, v->pkcol[k] + 1, vdesc, &key->tts_isnull[att - 1]);
	}
	ExecStoreVirtualTuple(key);

	v->estate->es_snapshot = GetActiveSnapshot();
	v->estate->es_output_cid = GetCurrentCommandId(true);
	found = RelationFindReplTupleByIndex(v->rel, v->pkindex, ExecUpdateLockMode(v->estate, v->rri),
										 key, v->oldslot);
	*updated = false;
	if (found)
	{
		slot = v->slot;
		ExecClearTuple(slot);
		slot_getallattrs(v->oldslot);
		memcpy(slot->tts_values, v->oldslot->tts_values, sizeof(Datum) * natts);
		memcpy(slot->tts_isnull, v->oldslot->tts_isnull, sizeof(bool) * natts);
		c = -1;
		while ((c = bms_next_member(vcols, c)) >= 0)
		{
			AttrNumber	att = v->tabatt[c];
			bool		isnull;
			Datum		d = heap_getattr(newtup, c + 1, vdesc, &isnull);

			slot->tts_values[att - 1] = isnull ? (Datum) 0 : view_to_table(v, c, d);
			slot->tts_isnull[att - 1] = isnull;
		}
		ExecStoreVirtualTuple(slot);
		ItemPointerSetInvalid(&slot->tts_tid);
		AfterTriggerBeginQuery();
		ExecSimpleRelationUpdate(v->rri, v->estate, &v->epq, v->oldslot, slot);
		AfterTriggerEndQuery(v->estate);
		*updated = ItemPointerIsValid(&slot->tts_tid) &&
			!ItemPointerEquals(&slot->tts_tid, &v->oldslot->tts_tid);
	}
	return true;
}

/* The row handed back for a direct write: as view_result, from the table's row in slot. */
static HeapTuple
view_direct_result(KmsView *v, TupleDesc vdesc, HeapTuple newtup, MemoryContext cxt)
{
	Datum	   *values = palloc(sizeof(Datum) * v->nviewcols);
	bool	   *nulls = palloc(sizeof(bool) * v->nviewcols);
	MemoryContext old;
	HeapTuple	res;

	for (int c = 0; c < v->nviewcols; c++)
	{
		if (v->prot[c] >= 0)
		{
			values[c] = heap_getattr(newtup, c + 1, vdesc, &nulls[c]);
			if (!v->may_decrypt)
				nulls[c] = true;
		}
		else if (v->may_select)
			values[c] = slot_getattr(v->slot, v->tabatt[c], &nulls[c]);
		else
			values[c] = heap_getattr(newtup, c + 1, vdesc, &nulls[c]);
	}
	old = MemoryContextSwitchTo(cxt);
	res = heap_form_tuple(vdesc, values, nulls);
	MemoryContextSwitchTo(old);
	return res;
}

/* End of a row: per-row memory and buffer pins go. */
static void
view_direct_row_done(KmsView *v)
{
	if (v->oldslot != NULL)
		ExecClearTuple(v->oldslot);
	ExecClearTuple(v->slot);
	ResetPerTupleExprContext(v->estate);
}

/*
 * SQL: kms_protected_view_trigger() RETURNS trigger
 * INSTEAD OF INSERT OR UPDATE OR DELETE on a decrypting view: the same
 * statement on the table, through a plan prepared once per statement (and
 * per set of columns written), as the caller: the caller's privileges on
 * the table decide, and the table's trigger encrypts.  UPDATE and DELETE
 * find the row by primary key; INSERT leaves out NULL columns that have a
 * default or identity, so they get it.  The row handed back (RETURNING) is
 * the table's row when the caller may read all of it, else the row as
 * written; protected columns in it only for those who may decrypt.
 */
PG_FUNCTION_INFO_V1(kms_protected_view_trigger);
Datum
kms_protected_view_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	view;
	TupleDesc	vdesc;
	KmsView    *v;
	MemoryContext callercxt = CurrentMemoryContext;
	HeapTuple	result = NULL;
	StringInfoData sql;
	Datum	   *args;
	char	   *argnulls;
	Oid		   *argtypes;
	int			nargs = 0;
	Bitmapset  *cols = NULL;
	SPIPlanPtr	plan;
	int			rc;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_INSTEAD(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("kms_protected_view_trigger must be an INSTEAD OF row trigger")));
	view = td->tg_relation;
	vdesc = RelationGetDescr(view);
	v = (KmsView *) fcinfo->flinfo->fn_extra;
	if (v == NULL || v->viewid != RelationGetRelid(view))
	{
		v = load_view(fcinfo, view);
		fcinfo->flinfo->fn_extra = v;
	}
	if (!TRIGGER_FIRED_BY_INSERT(td->tg_event) && v->npk == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("kms_pg: cannot %s through view \"%s.%s\": table \"%s\" has no primary key",
						TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? "UPDATE" : "DELETE",
						get_namespace_name(RelationGetNamespace(view)), RelationGetRelationName(view),
						v->relname),
				 errhint("Add a primary key, or write to the table directly.")));

	/* The direct path (view_direct_*) where it does what SPI would. */
	if (!TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		bool		upd = TRIGGER_FIRED_BY_UPDATE(td->tg_event);
		bool		done = false;

		if (v->direct[upd] == 0)
			v->direct[upd] = view_direct_usable(v, upd) ? 1 : -1;
		if (v->direct[upd] > 0 && !upd &&
			view_direct_insert(v, vdesc, td->tg_trigtuple, fcinfo->flinfo->fn_mcxt, &done))
		{
			result = done ? view_direct_result(v, vdesc, td->tg_trigtuple, callercxt) : NULL;
			view_direct_row_done(v);
			return PointerGetDatum(result);
		}
		if (v->direct[upd] > 0 && upd)
		{
			Bitmapset  *vcols = NULL;

			for (int c = 0; c < v->nviewcols; c++)
			{
				bool		nnull;
				bool		onull;
				Datum		nd;
				Datum		od;
				Form_pg_attribute a = TupleDescAttr(vdesc, c);

				if (!v->writable[c])
					continue;
				nd = heap_getattr(td->tg_newtuple, c + 1, vdesc, &nnull);
				od = heap_getattr(td->tg_trigtuple, c + 1, vdesc, &onull);
				if (nnull == onull && (nnull || datumIsEqual(nd, od, a->attbyval, a->attlen)))
					continue;
				vcols = bms_add_member(vcols, c);
			}
			if (vcols == NULL)
				return PointerGetDatum(td->tg_newtuple);
			if (view_direct_update(v, vdesc, td->tg_trigtuple, td->tg_newtuple, vcols,
								   fcinfo->flinfo->fn_mcxt, &done))
			{
				result = done ? view_direct_result(v, vdesc, td->tg_newtuple, callercxt) : NULL;
				view_direct_row_done(v);
				return PointerGetDatum(result);
			}
		}
	}

	args = palloc(sizeof(Datum) * (v->nviewcols + v->npk));
	argnulls = palloc(v->nviewcols + v->npk);
	argtypes = palloc(sizeof(Oid) * (v->nviewcols + v->npk));
	initStringInfo(&sql);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "kms_pg: SPI_connect failed");

	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		HeapTuple	newtup = td->tg_trigtuple;
		StringInfoData vals;

		initStringInfo(&vals);
		for (int c = 0; c < v->nviewcols; c++)
		{
			bool		isnull;
			Datum		d;

			if (!v->writable[c])
				continue;
			d = heap_getattr(newtup, c + 1, vdesc, &isnull);
			if (isnull && v->defaulted[c])
				continue;
			cols = bms_add_member(cols, c);
			appendStringInfo(&sql, "%s%s", nargs ? ", " : "",
							 quote_identifier(NameStr(TupleDescAttr(vdesc, c)->attname)));
			args[nargs] = isnull ? (Datum) 0 : view_to_table(v, c, d);
			argnulls[nargs] = isnull ? 'n' : ' ';
			argtypes[nargs] = v->tabtype[c];
			nargs++;
			appendStringInfo(&vals, "%s$%d", nargs > 1 ? ", " : "", nargs);
		}
		{
			char	   *q = nargs > 0 ?
				psprintf("INSERT INTO %s (%s) VALUES (%s)%s", v->relname, sql.data, vals.data,
						 v->may_select ? " RETURNING *" : "") :
				psprintf("INSERT INTO %s DEFAULT VALUES%s", v->relname, v->may_select ? " RETURNING *" : "");

			plan = view_plan(v, &v->inserts, cols, q, nargs, argtypes);
		}
		rc = SPI_execute_plan(plan, args, argnulls, false, 0);
		if (rc != (v->may_select ? SPI_OK_INSERT_RETURNING : SPI_OK_INSERT))
			elog(ERROR, "kms_pg: INSERT through the view failed: %s", SPI_result_code_string(rc));
		if (SPI_processed == 1)
			result = view_result(v, vdesc, newtup, v->may_select ? SPI_tuptable->vals[0] : NULL,
								 v->may_select ? SPI_tuptable->tupdesc : NULL, callercxt);
	}
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		HeapTuple	newtup = td->tg_newtuple;
		HeapTuple	oldtup = td->tg_trigtuple;

		for (int c = 0; c < v->nviewcols; c++)
		{
			bool		nnull;
			bool		onull;
			Datum		nd;
			Datum		od;
			Form_pg_attribute a = TupleDescAttr(vdesc, c);

			if (!v->writable[c])
				continue;
			nd = heap_getattr(newtup, c + 1, vdesc, &nnull);
			od = heap_getattr(oldtup, c + 1, vdesc, &onull);
			if (nnull == onull && (nnull || datumIsEqual(nd, od, a->attbyval, a->attlen)))
				continue;
			cols = bms_add_member(cols, c);
			appendStringInfo(&sql, "%s%s = $%d", nargs ? ", " : "",
							 quote_identifier(NameStr(a->attname)), nargs + 1);
			args[nargs] = nnull ? (Datum) 0 : view_to_table(v, c, nd);
			argnulls[nargs] = nnull ? 'n' : ' ';
			argtypes[nargs] = v->tabtype[c];
			nargs++;
		}
		if (nargs == 0)
		{
			SPI_finish();
			return PointerGetDatum(newtup);
		}
		{
			StringInfoData q;
			int			nset = nargs;

			initStringInfo(&q);
			appendStringInfo(&q, "UPDATE %s SET %s WHERE ", v->relname, sql.data);
			for (int k = 0; k < v->npk; k++)
			{
				int			c = v->pkcol[k];
				bool		isnull;

				appendStringInfo(&q, "%s%s OPERATOR(pg_catalog.=) $%d", k ? " AND " : "",
								 quote_identifier(NameStr(TupleDescAttr(vdesc, c)->attname)), nargs + 1);
				args[nargs] = heap_getattr(oldtup, c + 1, vdesc, &isnull);
				argnulls[nargs] = isnull ? 'n' : ' ';
				argtypes[nargs] = v->tabtype[c];
				nargs++;
			}
			if (v->may_select)
				appendStringInfoString(&q, " RETURNING *");
			(void) nset;
			plan = view_plan(v, &v->updates, cols, q.data, nargs, argtypes);
		}
		rc = SPI_execute_plan(plan, args, argnulls, false, 0);
		if (rc != (v->may_select ? SPI_OK_UPDATE_RETURNING : SPI_OK_UPDATE))
			elog(ERROR, "kms_pg: UPDATE through the view failed: %s", SPI_result_code_string(rc));
		if (SPI_processed == 1)
			result = view_result(v, vdesc, newtup, v->may_select ? SPI_tuptable->vals[0] : NULL,
								 v->may_select ? SPI_tuptable->tupdesc : NULL, callercxt);
	}
	else
	{
		HeapTuple	oldtup = td->tg_trigtuple;

		if (v->delete == NULL)
		{
			StringInfoData q;

			initStringInfo(&q);
			appendStringInfo(&q, "DELETE FROM %s WHERE ", v->relname);
			for (int k = 0; k < v->npk; k++)
			{
				appendStringInfo(&q, "%s%s OPERATOR(pg_catalog.=) $%d", k ? " AND " : "",
								 quote_identifier(NameStr(TupleDescAttr(vdesc, v->pkcol[k])->attname)), k + 1);
				argtypes[k] = v->tabtype[v->pkcol[k]];
			}
			v->delete = SPI_prepare(q.data, v->npk, argtypes);
			if (v->delete == NULL)
				elog(ERROR, "kms_pg: SPI_prepare failed for \"%s\"", q.data);
			SPI_keepplan(v->delete);
		}
		for (int k = 0; k < v->npk; k++)
		{
			bool		isnull;

			args[k] = heap_getattr(oldtup, v->pkcol[k] + 1, vdesc, &isnull);
			argnulls[k] = isnull ? 'n' : ' ';
		}
		rc = SPI_execute_plan(v->delete, args, argnulls, false, 0);
		if (rc != SPI_OK_DELETE)
			elog(ERROR, "kms_pg: DELETE through the view failed: %s", SPI_result_code_string(rc));
		if (SPI_processed == 1)
			result = oldtup;
	}
	SPI_finish();
	return PointerGetDatum(result);
}
