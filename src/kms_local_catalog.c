/*-------------------------------------------------------------------------
 * kms_local_catalog.c
 *	  The local keyring in the extension's own tables.
 *
 * kms_local_key holds one row per key (id, alias, description, enabled,
 * creation and scheduled deletion dates); kms_local_key_version one row
 * per key version: its number, creation date, the fingerprint of the
 * master key that wraps it, and the wrapped material:
 *	 12-byte nonce | 32-byte ciphertext | 16-byte tag
 * AES-256-GCM under the master key, with additional data
 *	 "kms_pg local key material v1" NUL | key id (36 bytes) | u32be version
 * so a row copied onto another key or version, or altered by hand, does
 * not unwrap.  Both tables are WAL-logged and registered with
 * pg_extension_config_dump: standbys, PITR, base backups and pg_dump carry
 * every key, and only the master key stays outside the database.
 *
 * Reading is direct heap access under the latest snapshot, as the
 * calling user, with no SQL and no privilege change: decrypting needs no
 * privilege on the tables.  Changing is fixed SQL through SPI run as the
 * tables' owner (the extension's superuser) with search_path pinned to
 * pg_catalog, schema-qualified names and typed parameters only: nothing a
 * less privileged role can define is resolved or run.  The functions that
 * change keys are themselves superuser-only unless granted (README).
 *-------------------------------------------------------------------------
 */
#include "kms_local_catalog.h"
#include "kms_citus.h"
#include "kms_dek_cache.h"
#include "kms_provider.h"
#include "kms_sql_keyring.h"
#include "kms_envelope.h"
#include "kms_errors.h"
#include "kms_master_key.h"
#include "kms_secure_mem.h"

#include <openssl/rand.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#define MATERIAL_AAD		"kms_pg local key material v1"
#define MATERIAL_LEN		(KMS_NONCE_LEN + KMS_DEK_LEN + KMS_TAG_LEN)
#define KEY_TABLE			"kms_local_key"
#define VERSION_TABLE		"kms_local_key_version"

/* ---- where the catalog is ---- */

static Oid
extension_schema(void)
{
	Oid			ext = get_extension_oid("kms_pg", true);
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	Oid			nsp = InvalidOid;

	if (!OidIsValid(ext))
		return InvalidOid;
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(ext));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		nsp = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
}

static Oid catalog_relid_or_error(const char *name);

static Oid
catalog_relid(const char *name)
{
	Oid			nsp = extension_schema();

	return OidIsValid(nsp) ? get_relname_relid(name, nsp) : InvalidOid;
}

char *
kms_catalog_schema(void)
{
	return get_namespace_name(get_rel_namespace(catalog_relid_or_error(KEY_TABLE)));
}

Oid
kms_extension_table(const char *name)
{
	return catalog_relid(name);
}

bool
kms_catalog_present(void)
{
	return OidIsValid(catalog_relid(KEY_TABLE));
}

static Oid
catalog_relid_or_error(const char *name)
{
	Oid			relid = catalog_relid(name);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the kms_pg keyring catalog table \"%s\" does not exist", name),
				 errhint("Run ALTER EXTENSION kms_pg UPDATE.")));
	return relid;
}

void
kms_catalog_require_writable(void)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("the kms_pg local keyring cannot be changed during recovery"),
				 errhint("Change keys on the primary; standbys receive the keyring with base backups.")));
}

/* ---- reading: direct heap access ---- */

typedef struct CatalogScan
{
	Relation	rel;
	Snapshot	snap;
	SysScanDesc scan;
	int			natts;
	Datum	   *values;
	bool	   *nulls;
} CatalogScan;

static void
scan_begin(CatalogScan *cs, const char *table)
{
	cs->rel = table_open(catalog_relid_or_error(table), AccessShareLock);
	/*
	 * The latest snapshot sees keys created earlier in the same statement
	 * (kms_encrypt(..., kms_create_key(...))); a parallel worker cannot take
	 * one and uses the statement's.
	 */
	if (!IsInParallelMode())
		cs->snap = RegisterSnapshot(GetLatestSnapshot());
	else
		cs->snap = RegisterSnapshot(ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot());
	cs->scan = systable_beginscan(cs->rel, InvalidOid, false, cs->snap, 0, NULL);
	cs->natts = RelationGetDescr(cs->rel)->natts;
	cs->values = palloc(sizeof(Datum) * cs->natts);
	cs->nulls = palloc(sizeof(bool) * cs->natts);
}

static bool
scan_next(CatalogScan *cs)
{
	HeapTuple	tup = systable_getnext(cs->scan);

	if (tup == NULL)
		return false;
	heap_deform_tuple(tup, RelationGetDescr(cs->rel), cs->values, cs->nulls);
	return true;
}

static void
scan_end(CatalogScan *cs)
{
	systable_endscan(cs->scan);
	UnregisterSnapshot(cs->snap);
	table_close(cs->rel, AccessShareLock);
}

/* Column index (0-based) by name, checking its type. */
static int
scan_col(CatalogScan *cs, const char *name, Oid type)
{
	TupleDesc	d = RelationGetDescr(cs->rel);

	for (int i = 0; i < d->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(d, i);

		if (!a->attisdropped && strcmp(NameStr(a->attname), name) == 0 && a->atttypid == type)
			return i;
	}
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("the kms_pg keyring catalog table \"%s\" has no column \"%s\" of the expected type",
					RelationGetRelationName(cs->rel), name)));
	return -1;
}

static char *
col_text(CatalogScan *cs, int c)
{
	return cs->nulls[c] ? NULL : TextDatumGetCString(cs->values[c]);
}

/* Normalise id / alias / ARN forms: *is_alias tells which column to match. */
static const char *
normalise_key(const char *key, bool *is_alias)
{
	const char *k = key;

	if (strncmp(key, "arn:", 4) == 0)
	{
		const char *p = strstr(key, ":key/");

		if (p != NULL)
			k = p + 5;
		else if ((p = strstr(key, ":alias/")) != NULL)
			k = p + 1;
	}
	*is_alias = strncmp(k, "alias/", 6) == 0;
	return k;
}

/* ---- material wrapping ---- */

static void
material_aad(StringInfo aad, const char *key_id, int version)
{
	uint8		v[4];

	v[0] = (uint8) ((uint32) version >> 24);
	v[1] = (uint8) ((uint32) version >> 16);
	v[2] = (uint8) ((uint32) version >> 8);
	v[3] = (uint8) version;
	initStringInfo(aad);
	appendBinaryStringInfo(aad, MATERIAL_AAD, sizeof(MATERIAL_AAD));	/* with NUL */
	appendBinaryStringInfo(aad, key_id, 36);
	appendBinaryStringInfo(aad, (char *) v, 4);
}

static bytea *
material_wrap(const KmsMasterKey *mk, const char *key_id, int version, const uint8 *material)
{
	bytea	   *out = palloc(VARHDRSZ + MATERIAL_LEN);
	uint8	   *w = (uint8 *) VARDATA(out);
	EVP_CIPHER_CTX *ctx;
	StringInfoData aad;

	SET_VARSIZE(out, VARHDRSZ + MATERIAL_LEN);
	material_aad(&aad, key_id, version);
	ctx = kms_gcm_context_new(mk->key, true);
	PG_TRY();
	{
		KmsAad		a;

		kms_aad_simple(&a, (uint8 *) aad.data, aad.len);
		if (RAND_bytes(w, KMS_NONCE_LEN) != 1)
			kms_report_openssl_error("RAND_bytes");
		kms_gcm_seal(ctx, &a, material, KMS_DEK_LEN, w, w + KMS_NONCE_LEN, w + KMS_NONCE_LEN + KMS_DEK_LEN);
	}
	PG_FINALLY();
	{
		EVP_CIPHER_CTX_free(ctx);
	}
	PG_END_TRY();
	return out;
}

static void
report_altered(const char *key_id, int version, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("kms_pg keyring row for key \"%s\" version %d was altered", key_id, version),
			 errdetail("%s", why),
			 errhint("Restore the keyring tables (kms_local_key, kms_local_key_version) from a backup; "
					 "rows must only be changed through kms_pg's functions.")));
}

static void
material_unwrap(const char *key_id, int version, const char *fp, bytea *wrapped, uint8 *out)
{
	const KmsMasterKey *mk;
	const uint8 *w = (const uint8 *) VARDATA_ANY(wrapped);
	EVP_CIPHER_CTX *ctx;
	StringInfoData aad;
	volatile bool ok = false;
	char		what[80];

	snprintf(what, sizeof(what), "key \"%s\" version %d", key_id, version);
	mk = kms_master_key_for(fp, what);
	if (VARSIZE_ANY_EXHDR(wrapped) != MATERIAL_LEN)
		report_altered(key_id, version, "The wrapped material has the wrong length.");
	material_aad(&aad, key_id, version);
	ctx = kms_gcm_context_new(mk->key, false);
	PG_TRY();
	{
		KmsAad		a;

		kms_aad_simple(&a, (uint8 *) aad.data, aad.len);
		ok = kms_gcm_open(ctx, &a, w, w + KMS_NONCE_LEN, KMS_DEK_LEN, w + KMS_NONCE_LEN + KMS_DEK_LEN, out);
	}
	PG_FINALLY();
	{
		EVP_CIPHER_CTX_free(ctx);
	}
	PG_END_TRY();
	if (!ok)
	{
		explicit_bzero(out, KMS_DEK_LEN);
		report_altered(key_id, version,
					   "Its wrapped material does not authenticate under the master key it names for this key id and version.");
	}
}

/* ---- loading keys ---- */

static void
fill_key_row(CatalogScan *cs, KmsLocalKey *k)
{
	int			c_id = scan_col(cs, "key_id", TEXTOID);
	int			c_alias = scan_col(cs, "alias", TEXTOID);
	int			c_descr = scan_col(cs, "description", TEXTOID);
	int			c_en = scan_col(cs, "enabled", BOOLOID);
	int			c_created = scan_col(cs, "created", TIMESTAMPTZOID);
	int			c_del = scan_col(cs, "deletion_date", TIMESTAMPTZOID);
	char	   *id = col_text(cs, c_id);

	if (id == NULL || strlen(id) != 36)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("kms_pg keyring catalog has a malformed key id")));
	strlcpy(k->key_id, id, sizeof(k->key_id));
	k->alias = col_text(cs, c_alias);
	k->description = col_text(cs, c_descr);
	k->enabled = !cs->nulls[c_en] && DatumGetBool(cs->values[c_en]);
	k->created = cs->nulls[c_created] ? 0 : DatumGetTimestampTz(cs->values[c_created]);
	k->pending_deletion = !cs->nulls[c_del];
	k->deletion_date = k->pending_deletion ? DatumGetTimestampTz(cs->values[c_del]) : 0;
}

static int
cmp_version(const void *a, const void *b)
{
	int			va = ((const KmsLocalKeyVersion *) a)->version;
	int			vb = ((const KmsLocalKeyVersion *) b)->version;

	return va < vb ? -1 : va > vb;
}

/* Versions of the keys in keys[] (matched by id), material only when asked. */
static void
load_versions(KmsLocalKey *keys, int nkeys, bool with_material)
{
	CatalogScan cs;
	int			c_id,
				c_ver,
				c_created,
				c_fp,
				c_mat;
	int		   *cap = palloc0(sizeof(int) * Max(nkeys, 1));

	scan_begin(&cs, VERSION_TABLE);
	c_id = scan_col(&cs, "key_id", TEXTOID);
	c_ver = scan_col(&cs, "version", INT4OID);
	c_created = scan_col(&cs, "created", TIMESTAMPTZOID);
	c_fp = scan_col(&cs, "master_key", TEXTOID);
	c_mat = scan_col(&cs, "material", BYTEAOID);
	while (scan_next(&cs))
	{
		char	   *id;
		KmsLocalKey *k = NULL;
		KmsLocalKeyVersion *v;

		if (cs.nulls[c_id] || cs.nulls[c_ver])
			continue;
		id = TextDatumGetCString(cs.values[c_id]);
		for (int i = 0; i < nkeys; i++)
			if (strcmp(keys[i].key_id, id) == 0)
			{
				k = &keys[i];
				if (k->nversions == cap[i])
				{
					int			ncap = cap[i] == 0 ? 4 : cap[i] * 2;
					KmsLocalKeyVersion *nv = kms_secure_palloc(sizeof(KmsLocalKeyVersion) * ncap);

					if (k->nversions > 0)
					{
						memcpy(nv, k->versions, sizeof(KmsLocalKeyVersion) * k->nversions);
						explicit_bzero(k->versions, sizeof(KmsLocalKeyVersion) * k->nversions);
					}
					k->versions = nv;
					cap[i] = ncap;
				}
				break;
			}
		if (k == NULL)
			continue;
		v = &k->versions[k->nversions++];
		memset(v, 0, sizeof(*v));
		v->version = DatumGetInt32(cs.values[c_ver]);
		v->created = cs.nulls[c_created] ? 0 : DatumGetTimestampTz(cs.values[c_created]);
		if (with_material)
		{
			if (cs.nulls[c_fp] || cs.nulls[c_mat])
				report_altered(k->key_id, v->version, "The master key or material column is NULL.");
			material_unwrap(k->key_id, v->version, TextDatumGetCString(cs.values[c_fp]),
							DatumGetByteaPP(cs.values[c_mat]), v->material);
		}
	}
	scan_end(&cs);
	for (int i = 0; i < nkeys; i++)
		if (keys[i].nversions > 1)
			qsort(keys[i].versions, keys[i].nversions, sizeof(KmsLocalKeyVersion), cmp_version);
}

KmsLocalKey *
kms_catalog_load_key(const char *key, bool with_material)
{
	bool		is_alias;
	const char *k = normalise_key(key, &is_alias);
	CatalogScan cs;
	KmsLocalKey *found = NULL;
	int			c_match;

	scan_begin(&cs, KEY_TABLE);
	c_match = scan_col(&cs, is_alias ? "alias" : "key_id", TEXTOID);
	while (scan_next(&cs))
	{
		char	   *v = col_text(&cs, c_match);

		if (v != NULL && strcmp(v, k) == 0)
		{
			found = palloc0(sizeof(KmsLocalKey));
			fill_key_row(&cs, found);
			break;
		}
	}
	scan_end(&cs);
	if (found == NULL)
		return NULL;
	load_versions(found, 1, with_material);
	if (found->nversions == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("kms_pg local key \"%s\" has no versions in the keyring catalog", found->key_id),
				 errhint("Restore the keyring tables (kms_local_key, kms_local_key_version) from a backup.")));
	return found;
}

List *
kms_catalog_list_keys(void)
{
	CatalogScan cs;
	List	   *out = NIL;
	KmsLocalKey *keys;
	int			n = 0,
				cap = 16;

	keys = palloc0(sizeof(KmsLocalKey) * cap);
	scan_begin(&cs, KEY_TABLE);
	while (scan_next(&cs))
	{
		if (n == cap)
		{
			keys = repalloc(keys, sizeof(KmsLocalKey) * cap * 2);
			memset(keys + cap, 0, sizeof(KmsLocalKey) * cap);
			cap *= 2;
		}
		fill_key_row(&cs, &keys[n++]);
	}
	scan_end(&cs);
	load_versions(keys, n, false);
	for (int i = 0; i < n; i++)
		out = lappend(out, &keys[i]);
	return out;
}

/* ---- changing: fixed SQL as the tables' owner ---- */

typedef struct OwnerSpi
{
	Oid			save_user;
	int			save_sec;
	int			nest;
	char	   *nsp;			/* quoted schema name */
	MemoryContext caller_cxt;	/* current context before SPI_connect */
} OwnerSpi;

static void
owner_enter(OwnerSpi *o)
{
	Oid			relid = catalog_relid_or_error(KEY_TABLE);
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	o->nsp = pstrdup(quote_identifier(get_namespace_name(get_rel_namespace(relid))));
	GetUserIdAndSecContext(&o->save_user, &o->save_sec);
	SetUserIdAndSecContext(owner, o->save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	o->nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	o->caller_cxt = CurrentMemoryContext;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

static void
owner_leave(OwnerSpi *o)
{
	SPI_finish();
	AtEOXact_GUC(true, o->nest);
	SetUserIdAndSecContext(o->save_user, o->save_sec);
}

/*
 * Citus coordinator: each change sends the whole catalog to the workers
 * before its transaction commits, so a concurrent change (or
 * kms_citus_sync_keys()) must wait for it, or its copy would lack this
 * one.  The lock is self-conflicting, does not block readers and lasts
 * until commit.
 */
void
kms_catalog_lock_changes(void)
{
	LockRelationOid(catalog_relid_or_error(KEY_TABLE), ShareRowExclusiveLock);
}

/* Before a change: writable, and not a Citus worker (kms_citus.c). */
static void
owner_spi_begin(OwnerSpi *o)
{
	kms_catalog_require_writable();
	if (kms_citus_check_change_allowed())
		kms_catalog_lock_changes();
	owner_enter(o);
}

static void
owner_spi_end(OwnerSpi *o)
{
	owner_leave(o);
	/* later statements of this transaction see the change */
	CommandCounterIncrement();
	/* on a Citus coordinator, the workers get the changed catalog */
	kms_citus_after_change();
}

static int
owner_exec(OwnerSpi *o, const char *sql, int nargs, Oid *types, Datum *values, const char *nulls)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc < 0)
		elog(ERROR, "kms_pg keyring catalog statement failed: %s", SPI_result_code_string(rc));
	return (int) SPI_processed;
}

static void
insert_version(OwnerSpi *o, const KmsMasterKey *mk, const char *key_id, int version,
			   TimestampTz created, const uint8 *material)
{
	Oid			types[5] = {TEXTOID, INT4OID, TIMESTAMPTZOID, TEXTOID, BYTEAOID};
	Datum		values[5];

	values[0] = CStringGetTextDatum(key_id);
	values[1] = Int32GetDatum(version);
	values[2] = TimestampTzGetDatum(created);
	values[3] = CStringGetTextDatum(mk->fingerprint);
	values[4] = PointerGetDatum(material_wrap(mk, key_id, version, material));
	owner_exec(o, psprintf("INSERT INTO %s." VERSION_TABLE
						   " (key_id, version, created, master_key, material) VALUES ($1, $2, $3, $4, $5)",
						   o->nsp), 5, types, values, NULL);
}

void
kms_catalog_insert_key(const KmsLocalKey *k)
{
	const KmsMasterKey *mk = kms_master_key_current();
	OwnerSpi	o;
	Oid			types[5] = {TEXTOID, TEXTOID, TEXTOID, BOOLOID, TIMESTAMPTZOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	owner_spi_begin(&o);
	values[0] = CStringGetTextDatum(k->key_id);
	if (k->alias)
		values[1] = CStringGetTextDatum(k->alias);
	else
		nulls[1] = 'n';
	if (k->description)
		values[2] = CStringGetTextDatum(k->description);
	else
		nulls[2] = 'n';
	values[3] = BoolGetDatum(k->enabled);
	values[4] = TimestampTzGetDatum(k->created);
	owner_exec(&o, psprintf("INSERT INTO %s." KEY_TABLE
							" (key_id, alias, description, enabled, created) VALUES ($1, $2, $3, $4, $5)",
							o.nsp), 5, types, values, nulls);
	for (int i = 0; i < k->nversions; i++)
		insert_version(&o, mk, k->key_id, k->versions[i].version, k->versions[i].created,
					   k->versions[i].material);
	owner_spi_end(&o);
}

/* Lock the key's row (serialises changes of one key); false when it is gone. */
static bool
lock_key(OwnerSpi *o, const char *key_id)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(key_id)};

	return owner_exec(o, psprintf("SELECT 1 FROM %s." KEY_TABLE
								  " WHERE key_id OPERATOR(pg_catalog.=) $1 FOR UPDATE", o->nsp),
					  1, types, values, NULL) == 1;
}

int
kms_catalog_add_version(const char *key_id)
{
	const KmsMasterKey *mk = kms_master_key_current();
	OwnerSpi	o;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;
	int			version;
	uint8	   *material = kms_secure_palloc(KMS_DEK_LEN);

	owner_spi_begin(&o);
	if (!lock_key(&o, key_id))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("kms_pg local key \"%s\" does not exist", key_id)));
	values[0] = CStringGetTextDatum(key_id);
	owner_exec(&o, psprintf("SELECT COALESCE(pg_catalog.max(version), 0) OPERATOR(pg_catalog.+) 1 FROM %s."
							VERSION_TABLE " WHERE key_id OPERATOR(pg_catalog.=) $1", o.nsp),
			   1, types, values, NULL);
	version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (RAND_bytes(material, KMS_DEK_LEN) != 1)
		kms_report_openssl_error("RAND_bytes");
	insert_version(&o, mk, key_id, version, GetCurrentTimestamp(), material);
	explicit_bzero(material, KMS_DEK_LEN);
	owner_spi_end(&o);
	return version;
}

void
kms_catalog_set_enabled(const char *key_id, bool enabled)
{
	OwnerSpi	o;
	Oid			types[2] = {TEXTOID, BOOLOID};
	Datum		values[2] = {CStringGetTextDatum(key_id), BoolGetDatum(enabled)};

	owner_spi_begin(&o);
	owner_exec(&o, psprintf("UPDATE %s." KEY_TABLE " SET enabled = $2 WHERE key_id OPERATOR(pg_catalog.=) $1",
							o.nsp), 2, types, values, NULL);
	owner_spi_end(&o);
}

void
kms_catalog_set_deletion(const char *key_id, bool has_date, TimestampTz date)
{
	OwnerSpi	o;
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		values[2] = {CStringGetTextDatum(key_id), TimestampTzGetDatum(date)};
	char		nulls[2] = {' ', has_date ? ' ' : 'n'};

	owner_spi_begin(&o);
	owner_exec(&o, psprintf("UPDATE %s." KEY_TABLE " SET deletion_date = $2%s"
							" WHERE key_id OPERATOR(pg_catalog.=) $1",
							o.nsp, has_date ? ", enabled = false" : ""), 2, types, values, nulls);
	owner_spi_end(&o);
}

int
kms_catalog_purge(void)
{
	OwnerSpi	o;
	int			n;

	owner_spi_begin(&o);
	owner_exec(&o, psprintf("DELETE FROM %s." VERSION_TABLE " v USING %s." KEY_TABLE " k"
							" WHERE v.key_id OPERATOR(pg_catalog.=) k.key_id"
							" AND k.deletion_date OPERATOR(pg_catalog.<=) pg_catalog.now()",
							o.nsp, o.nsp), 0, NULL, NULL, NULL);
	n = owner_exec(&o, psprintf("DELETE FROM %s." KEY_TABLE
								" WHERE deletion_date OPERATOR(pg_catalog.<=) pg_catalog.now()", o.nsp),
				   0, NULL, NULL, NULL);
	owner_spi_end(&o);
	return n;
}

int
kms_catalog_rewrap_all(void)
{
	const KmsMasterKey *cur = kms_master_key_current();
	OwnerSpi	o;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(cur->fingerprint)};
	SPITupleTable *tt;
	uint64		n;
	uint8	   *material = kms_secure_palloc(KMS_DEK_LEN);
	char		curfp[KMS_MASTER_FP_LEN + 1];

	strlcpy(curfp, cur->fingerprint, sizeof(curfp));
	owner_spi_begin(&o);
	owner_exec(&o, psprintf("SELECT key_id, version, master_key, material FROM %s." VERSION_TABLE
							" WHERE master_key OPERATOR(pg_catalog.<>) $1 ORDER BY key_id, version FOR UPDATE",
							o.nsp), 1, types, values, NULL);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	t = tt->vals[i];
		bool		isnull;
		char	   *key_id = TextDatumGetCString(SPI_getbinval(t, tt->tupdesc, 1, &isnull));
		int			version = DatumGetInt32(SPI_getbinval(t, tt->tupdesc, 2, &isnull));
		Datum		fpd = SPI_getbinval(t, tt->tupdesc, 3, &isnull);
		Datum		mat = SPI_getbinval(t, tt->tupdesc, 4, &isnull);
		Oid			utypes[4] = {TEXTOID, INT4OID, TEXTOID, BYTEAOID};
		Datum		uvalues[4];

		if (isnull)
			report_altered(key_id, version, "The material column is NULL.");
		material_unwrap(key_id, version, TextDatumGetCString(fpd), DatumGetByteaPP(mat), material);
		uvalues[0] = CStringGetTextDatum(key_id);
		uvalues[1] = Int32GetDatum(version);
		uvalues[2] = CStringGetTextDatum(curfp);
		uvalues[3] = PointerGetDatum(material_wrap(kms_master_key_current(), key_id, version, material));
		explicit_bzero(material, KMS_DEK_LEN);
		owner_exec(&o, psprintf("UPDATE %s." VERSION_TABLE " SET master_key = $3, material = $4"
								" WHERE key_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2",
								o.nsp), 4, utypes, uvalues, NULL);
	}
	owner_spi_end(&o);
	return (int) n;
}

/* ---- Citus: the whole catalog as jsonb text, and its replacement ---- */

char *
kms_catalog_snapshot_json(void)
{
	OwnerSpi	o;
	bool		isnull;
	char	   *json;

	owner_enter(&o);
	owner_exec(&o, psprintf("SELECT pg_catalog.jsonb_build_object("
							"'keys', COALESCE((SELECT pg_catalog.jsonb_agg(k ORDER BY k.key_id) FROM %s." KEY_TABLE " k),"
							" '[]'::pg_catalog.jsonb),"
							"'versions', COALESCE((SELECT pg_catalog.jsonb_agg(v ORDER BY v.key_id, v.version) FROM %s."
							VERSION_TABLE " v), '[]'::pg_catalog.jsonb))::pg_catalog.text",
							o.nsp, o.nsp), 0, NULL, NULL, NULL);
	json = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	/* out of SPI's memory before SPI_finish */
	json = MemoryContextStrdup(o.caller_cxt, json);
	owner_leave(&o);
	return json;
}

/*
 * Replace every row with those of state (kms_catalog_snapshot_json() of
 * the coordinator), checking that this node's master key unwraps every
 * version; forget (now and at commit) the cached DEKs of every key that is
 * not usable afterwards.  Returns the number of keys.
 */
int
kms_catalog_replace_from_json(const char *state)
{
	OwnerSpi	o;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	uint8	   *material = kms_secure_palloc(KMS_DEK_LEN);
	SPITupleTable *tt;
	uint64		n;
	int			nkeys;

	values[0] = CStringGetTextDatum(state);
	kms_catalog_require_writable();
	owner_enter(&o);
	owner_exec(&o, psprintf("LOCK TABLE %s." KEY_TABLE ", %s." VERSION_TABLE " IN SHARE ROW EXCLUSIVE MODE",
							o.nsp, o.nsp), 0, NULL, NULL, NULL);
	/* keys that stop being usable: disabled, pending deletion or gone */
	owner_exec(&o, psprintf("SELECT o.key_id, o.alias FROM %s." KEY_TABLE " o WHERE NOT EXISTS ("
							"SELECT 1 FROM pg_catalog.jsonb_populate_recordset(NULL::%s." KEY_TABLE
							", $1::pg_catalog.jsonb OPERATOR(pg_catalog.->) 'keys') n WHERE n.key_id OPERATOR(pg_catalog.=) o.key_id"
							" AND n.enabled AND n.deletion_date IS NULL)", o.nsp, o.nsp), 1, types, values, NULL);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		char	   *id = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);
		char	   *alias = SPI_getvalue(tt->vals[i], tt->tupdesc, 2);

		kms_dek_cache_forget_key(KMS_PROVIDER_LOCAL, id);
		kms_keyring_forget_at_commit(id);
		if (alias)
		{
			kms_dek_cache_forget_key(KMS_PROVIDER_LOCAL, alias);
			kms_keyring_forget_at_commit(alias);
		}
	}
	owner_exec(&o, psprintf("DELETE FROM %s." VERSION_TABLE, o.nsp), 0, NULL, NULL, NULL);
	owner_exec(&o, psprintf("DELETE FROM %s." KEY_TABLE, o.nsp), 0, NULL, NULL, NULL);
	nkeys = owner_exec(&o, psprintf("INSERT INTO %s." KEY_TABLE " SELECT * FROM pg_catalog.jsonb_populate_recordset("
									"NULL::%s." KEY_TABLE ", $1::pg_catalog.jsonb OPERATOR(pg_catalog.->) 'keys')", o.nsp, o.nsp),
					   1, types, values, NULL);
	owner_exec(&o, psprintf("INSERT INTO %s." VERSION_TABLE " SELECT * FROM pg_catalog.jsonb_populate_recordset("
							"NULL::%s." VERSION_TABLE ", $1::pg_catalog.jsonb OPERATOR(pg_catalog.->) 'versions')"
							" RETURNING key_id, version, master_key, material", o.nsp, o.nsp),
			   1, types, values, NULL);
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	t = tt->vals[i];
		bool		isnull;
		char	   *key_id = TextDatumGetCString(SPI_getbinval(t, tt->tupdesc, 1, &isnull));
		int			version = DatumGetInt32(SPI_getbinval(t, tt->tupdesc, 2, &isnull));
		char	   *fp = TextDatumGetCString(SPI_getbinval(t, tt->tupdesc, 3, &isnull));
		Datum		mat = SPI_getbinval(t, tt->tupdesc, 4, &isnull);

		/* this node must hold the master key the row names, and the row must authenticate */
		material_unwrap(key_id, version, fp, DatumGetByteaPP(mat), material);
		explicit_bzero(material, KMS_DEK_LEN);
	}
	owner_leave(&o);
	CommandCounterIncrement();
	return nkeys;
}
