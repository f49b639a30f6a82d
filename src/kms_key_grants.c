/*-------------------------------------------------------------------------
 * kms_key_grants.c
 *	  Who may use which key: per-key privileges with encryption-context
 *	  conditions, enforced where a data key is used.
 *
 * The grants live in kms_key_grant (sql/install/17_key_grants.sql), one
 * row per (provider, key, grantee, condition): the key is its local uuid
 * or its AWS ARN (what ciphertexts record), the grantee a regrole (NULL:
 * PUBLIC), privileges a subset of {admin, decrypt, encrypt, rewrap}.  A
 * role holds a privilege when a row grants it to PUBLIC or to a role whose
 * privileges it has (has_privs_of_role: membership with INHERIT), and the
 * row's condition, if any, admits the value's canonical encryption
 * context (the AAD's pairs, already parsed: no second parse).
 *
 * Reading is a direct heap scan under the latest snapshot as the calling
 * user (no SQL, no privilege change), once per (role, key) into a
 * backend-local decision cache.  Changes go through kms_grant_key() /
 * kms_revoke_key(), fixed SQL through SPI as the table's owner with
 * search_path pinned, and send a relcache invalidation of the table: it
 * travels in the commit record, so other backends and standbys replaying
 * WAL drop their decisions.  Invalidations are accepted at the first check
 * of every statement, so a revoke takes effect at the next statement.
 * Role membership changes (pg_auth_members, pg_authid) drop them too.
 *
 * Local keys are always governed: no row, no use (superusers excepted).
 * An AWS key with no row at all is ungoverned, as in 1.0: every role may
 * use it, gated by the function grants and the server's IAM identity; its
 * first grant records PUBLIC with every privilege, and tightening is then
 * revoking from PUBLIC.  Revoking an AWS key's last privilege leaves an
 * empty row, so the key stays governed.
 *-------------------------------------------------------------------------
 */
#include "kms_key_grants.h"
#include "kms_local_catalog.h"
#include "kms_errors.h"
#include "kms_provider.h"
#include "kms_provider_local.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#define GRANT_TABLE		"kms_key_grant"

static const char *const priv_names[] = {"encrypt", "decrypt", "rewrap", "admin"};

/* ---- conditions ---- */

typedef struct CondClause
{
	char	   *ctxkey;			/* context key (UTF-8, not NUL-terminated) */
	int			ctxkeylen;
	char	   *setting;		/* {"setting": name}, or NULL */
	TimestampTz setting_stmt;	/* the statement setting_val was read in */
	char	   *setting_val;	/* its value then (not NUL-terminated) */
	int			setting_len;
	int			setting_cap;
	int			nvals;			/* {"in": [...]}: canonical typed values */
	uint8	   *types;
	char	  **vals;
	int		   *lens;
} CondClause;

typedef struct Cond
{
	int			privs;
	int			nclauses;
	CondClause *clauses;
} Cond;

/*
 * Parse a condition (a jsonb object of context key -> {"setting": name} or
 * {"in": [scalars]}).  With strict, raise on anything else (grant time);
 * otherwise return false (a row altered by hand admits nothing).
 */
static bool
cond_fail(bool strict, const char *detail)
{
	if (strict)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid kms_pg key grant condition"),
				 errdetail("%s", detail),
				 errhint("A condition maps context keys to {\"setting\": \"name\"} or {\"in\": [values]}, e.g. {\"tenant\": {\"setting\": \"app.tenant\"}}.")));
	return false;
}

static bool
canonical_scalar(JsonbValue *v, uint8 *type, char **val, int *len)
{
	switch (v->type)
	{
		case jbvString:
			*type = KMS_CTX_TYPE_STRING;
			*val = pnstrdup(v->val.string.val, v->val.string.len);
			*len = v->val.string.len;
			return true;
		case jbvNumeric:
			*type = KMS_CTX_TYPE_NUMBER;
			*val = numeric_normalize(v->val.numeric);
			*len = strlen(*val);
			return true;
		case jbvBool:
			*type = KMS_CTX_TYPE_BOOLEAN;
			*val = pstrdup(v->val.boolean ? "true" : "false");
			*len = strlen(*val);
			return true;
		default:
			return false;
	}
}

static bool
parse_clause(JsonbValue *spec, CondClause *c, bool strict)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		seen = false;

	c->setting = NULL;
	c->nvals = 0;
	if (spec->type != jbvBinary || !JsonContainerIsObject(spec->val.binary.data))
		return cond_fail(strict, psprintf("The condition on context key \"%s\" is not an object.", c->ctxkey));
	it = JsonbIteratorInit(spec->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *op;

		if (tok != WJB_KEY)
			continue;
		op = pnstrdup(v.val.string.val, v.val.string.len);
		tok = JsonbIteratorNext(&it, &v, true);
		if (seen)
			return cond_fail(strict, psprintf("The condition on context key \"%s\" has more than one operator.", c->ctxkey));
		seen = true;
		if (strcmp(op, "setting") == 0)
		{
			if (v.type != jbvString || v.val.string.len == 0)
				return cond_fail(strict, psprintf("\"setting\" of context key \"%s\" must be a non-empty setting name.", c->ctxkey));
			c->setting = pnstrdup(v.val.string.val, v.val.string.len);
		}
		else if (strcmp(op, "in") == 0)
		{
			JsonbIterator *ait;
			JsonbValue	e;
			int			n;

			if (v.type != jbvBinary || !JsonContainerIsArray(v.val.binary.data) ||
				(n = JsonContainerSize(v.val.binary.data)) == 0)
				return cond_fail(strict, psprintf("\"in\" of context key \"%s\" must be a non-empty array.", c->ctxkey));
			c->types = palloc(sizeof(uint8) * n);
			c->vals = palloc(sizeof(char *) * n);
			c->lens = palloc(sizeof(int) * n);
			ait = JsonbIteratorInit(v.val.binary.data);
			while ((tok = JsonbIteratorNext(&ait, &e, true)) != WJB_DONE)
			{
				if (tok != WJB_ELEM)
					continue;
				if (!canonical_scalar(&e, &c->types[c->nvals], &c->vals[c->nvals], &c->lens[c->nvals]))
					return cond_fail(strict, psprintf("\"in\" of context key \"%s\" may hold only strings, numbers and booleans.", c->ctxkey));
				c->nvals++;
			}
		}
		else
			return cond_fail(strict, psprintf("Unknown operator \"%s\" on context key \"%s\".", op, c->ctxkey));
	}
	if (!seen)
		return cond_fail(strict, psprintf("The condition on context key \"%s\" is empty.", c->ctxkey));
	return true;
}

static bool
parse_condition(Jsonb *jb, Cond *cond, bool strict)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			n;

	cond->nclauses = 0;
	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		return cond_fail(strict, "The condition is not a JSON object.");
	n = JB_ROOT_COUNT(jb);
	if (n == 0)
		return cond_fail(strict, "The condition is empty; pass NULL for a grant without a condition.");
	cond->clauses = palloc0(sizeof(CondClause) * n);
	it = JsonbIteratorInit(&jb->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		CondClause *c;

		if (tok != WJB_KEY)
			continue;
		c = &cond->clauses[cond->nclauses++];
		if (v.val.string.len == 0)
			return cond_fail(strict, "A context key of the condition is empty.");
		c->ctxkey = pnstrdup(v.val.string.val, v.val.string.len);
		c->ctxkeylen = v.val.string.len;
		JsonbIteratorNext(&it, &v, true);
		if (!parse_clause(&v, c, strict))
			return false;
	}
	return true;
}

/*
 * The value of a clause's setting, read once per statement, as
 * current_setting() (a STABLE function) is for a whole statement: looking the
 * GUC up for every row cost about 15% of a pairs decrypt (bench/ case 11).
 * A change made within the statement itself (set_config() in a function it
 * calls) applies from the next statement on.
 */
static void
setting_value(CondClause *c)
{
	TimestampTz stmt = GetCurrentStatementStartTimestamp();
	const char *s;
	int			n;

	if (c->setting_stmt == stmt && c->setting_val != NULL)
		return;
	s = GetConfigOption(c->setting, true, false);
	n = s != NULL ? (int) strlen(s) : 0;
	if (c->setting_val == NULL || n > c->setting_cap)
	{
		c->setting_cap = Max(n, 32);
		c->setting_val = c->setting_val == NULL ?
			MemoryContextAlloc(GetMemoryChunkContext(c->setting), c->setting_cap) :
			repalloc(c->setting_val, c->setting_cap);
	}
	if (n > 0)
		memcpy(c->setting_val, s, n);
	c->setting_len = n;
	c->setting_stmt = stmt;
}

/* All clauses must hold on the canonical context. */
static bool
cond_admits(Cond *cond, const KmsContext *ctx)
{
	for (int i = 0; i < cond->nclauses; i++)
	{
		CondClause *c = &cond->clauses[i];
		const KmsContextPair *p = kms_context_find(ctx, c->ctxkey, c->ctxkeylen);
		bool		ok = false;

		if (p == NULL)
			return false;
		if (c->setting)
		{
			setting_value(c);
			/* an unset or empty setting admits nothing; compared as text */
			ok = c->setting_len > 0 && c->setting_len == p->valuelen &&
				memcmp(c->setting_val, p->value, p->valuelen) == 0;
		}
		else
		{
			for (int j = 0; j < c->nvals && !ok; j++)
				ok = c->types[j] == p->type && c->lens[j] == p->valuelen &&
					memcmp(c->vals[j], p->value, p->valuelen) == 0;
		}
		if (!ok)
			return false;
	}
	return true;
}

/* ---- the grants table ---- */

static Oid
grant_relid(void)
{
	return kms_extension_table(GRANT_TABLE);
}

static int
col_index(Relation rel, const char *name, Oid type)
{
	TupleDesc	d = RelationGetDescr(rel);

	for (int i = 0; i < d->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(d, i);

		if (!a->attisdropped && strcmp(NameStr(a->attname), name) == 0 && a->atttypid == type)
			return i;
	}
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("the kms_pg key grants table has no column \"%s\" of the expected type", name)));
	return -1;
}

static int
privs_from_array(ArrayType *arr, bool strict)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			mask = 0;

	if (ARR_NDIM(arr) > 1)
		return strict ? (cond_fail(true, "privileges must be a one-dimensional array."), 0) : 0;
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		char	   *p;
		int			bit = 0;

		if (nulls[i])
		{
			if (strict)
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("kms_pg key privileges must not contain NULL")));
			continue;
		}
		p = TextDatumGetCString(elems[i]);
		for (int b = 0; b < 4; b++)
			if (pg_strcasecmp(p, priv_names[b]) == 0)
				bit = 1 << b;
		if (bit == 0 && strict)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown kms_pg key privilege \"%s\"", p),
					 errhint("The privileges are encrypt, decrypt, rewrap and admin.")));
		mask |= bit;
	}
	return mask;
}

/* ---- the decision cache ---- */

typedef struct DecisionKey
{
	Oid			role;
	uint8		provider;
	char		key_id[KMS_KEY_ID_MAXLEN + 1];
} DecisionKey;

typedef struct Decision
{
	DecisionKey k;				/* hash key: must be first */
	bool		bypass;			/* superuser, or an ungoverned AWS key */
	int			uncond;			/* privileges held without a condition */
	int			cond_privs;		/* privileges some condition may give */
	int			nconds;
	Cond	   *conds;
} Decision;

static MemoryContext grants_cxt = NULL;
static HTAB *decisions = NULL;
static Decision *last = NULL;	/* the previous lookup, for runs of one key */
static bool stale = true;
static bool callbacks_registered = false;
static Oid	cached_relid = InvalidOid;
static TimestampTz last_stmt = 0;
static bool table_absent = false;

static void
grants_relcache_cb(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == cached_relid || !OidIsValid(cached_relid))
		stale = true;
}

static void
grants_syscache_cb(Datum arg, int cacheid, uint32 hashvalue)
{
	stale = true;
}

static void
reset_decisions(void)
{
	HASHCTL		ctl;

	if (grants_cxt == NULL)
		grants_cxt = AllocSetContextCreate(TopMemoryContext, "kms_pg key grants",
										   ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(grants_cxt);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(DecisionKey);
	ctl.entrysize = sizeof(Decision);
	ctl.hcxt = grants_cxt;
	decisions = hash_create("kms_pg key grant decisions", 64, &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	last = NULL;
	stale = false;
	cached_relid = grant_relid();
	table_absent = !OidIsValid(cached_relid);
}

/*
 * Whether the role with oid grantee is still the role the row was granted
 * to: it exists and has the name the row recorded.  A dropped role's rows
 * (kept in every database but the one DROP ROLE ran in) thus never pass to
 * a later role that is given the same oid; a role renamed while connected
 * to another database loses its rows here until granted again.
 */
static bool
grantee_is(Oid grantee, Datum name)
{
	HeapTuple	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(grantee));
	text	   *t = DatumGetTextPP(name);
	bool		same;

	if (!HeapTupleIsValid(tup))
		return false;
	same = strlen(NameStr(((Form_pg_authid) GETSTRUCT(tup))->rolname)) == VARSIZE_ANY_EXHDR(t) &&
		memcmp(NameStr(((Form_pg_authid) GETSTRUCT(tup))->rolname), VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)) == 0;
	ReleaseSysCache(tup);
	return same;
}

/* Fill d from the table: every row of its key that applies to its role. */
static void
load_decision(Decision *d)
{
	Relation	rel;
	Snapshot	snap;
	SysScanDesc scan;
	HeapTuple	tup;
	int			c_prov,
				c_key,
				c_grantee,
				c_gname,
				c_privs,
				c_cond;
	Datum	   *values;
	bool	   *nulls;
	bool		any_row = false;
	int			cap = 4;
	MemoryContext old;

	d->bypass = superuser_arg(d->k.role);
	d->uncond = 0;
	d->cond_privs = 0;
	d->nconds = 0;
	d->conds = NULL;
	if (d->bypass)
		return;

	rel = table_open(cached_relid, AccessShareLock);
	if (!IsInParallelMode())
		snap = RegisterSnapshot(GetLatestSnapshot());
	else
		snap = RegisterSnapshot(ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot());
	scan = systable_beginscan(rel, InvalidOid, false, snap, 0, NULL);
	c_prov = col_index(rel, "provider", TEXTOID);
	c_key = col_index(rel, "key_id", TEXTOID);
	c_grantee = col_index(rel, "grantee", REGROLEOID);
	c_gname = col_index(rel, "grantee_name", TEXTOID);
	c_privs = col_index(rel, "privileges", TEXTARRAYOID);
	c_cond = col_index(rel, "condition", JSONBOID);
	values = palloc(sizeof(Datum) * RelationGetDescr(rel)->natts);
	nulls = palloc(sizeof(bool) * RelationGetDescr(rel)->natts);
	while ((tup = systable_getnext(scan)) != NULL)
	{
		char	   *prov;
		char	   *key;
		int			privs;

		heap_deform_tuple(tup, RelationGetDescr(rel), values, nulls);
		if (nulls[c_prov] || nulls[c_key] || nulls[c_privs])
			continue;
		prov = TextDatumGetCString(values[c_prov]);
		key = TextDatumGetCString(values[c_key]);
		if (strcmp(key, d->k.key_id) != 0 ||
			strcmp(prov, d->k.provider == KMS_PROVIDER_AWS ? "aws" : "local") != 0)
			continue;
		any_row = true;
		if (!nulls[c_grantee] &&
			(!has_privs_of_role(d->k.role, DatumGetObjectId(values[c_grantee])) ||
			 nulls[c_gname] || !grantee_is(DatumGetObjectId(values[c_grantee]), values[c_gname])))
			continue;
		privs = privs_from_array(DatumGetArrayTypeP(values[c_privs]), false);
		if (privs == 0)
			continue;
		if (nulls[c_cond])
			d->uncond |= privs;
		else
		{
			Cond		cond;

			old = MemoryContextSwitchTo(grants_cxt);
			if (parse_condition(DatumGetJsonbP(values[c_cond]), &cond, false))
			{
				if (d->conds == NULL)
					d->conds = palloc(sizeof(Cond) * cap);
				else if (d->nconds == cap)
					d->conds = repalloc(d->conds, sizeof(Cond) * (cap *= 2));
				cond.privs = privs;
				d->conds[d->nconds++] = cond;
				d->cond_privs |= privs;
			}
			MemoryContextSwitchTo(old);
		}
	}
	systable_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	/* an AWS key nobody granted anything on is used as in 1.0 */
	if (d->k.provider == KMS_PROVIDER_AWS && !any_row)
		d->bypass = true;
}

static Decision *
lookup(uint8 provider, const char *key_id, int key_id_len)
{
	Oid			role = GetUserId();
	TimestampTz stmt = GetCurrentStatementStartTimestamp();
	DecisionKey k;
	Decision   *d;
	bool		found;

	if (!callbacks_registered)
	{
		CacheRegisterRelcacheCallback(grants_relcache_cb, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, grants_syscache_cb, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHOID, grants_syscache_cb, (Datum) 0);
		callbacks_registered = true;
	}
	/* a revoke committed elsewhere counts from the next statement on */
	if (stmt != last_stmt)
	{
		last_stmt = stmt;
		AcceptInvalidationMessages();
	}
	if (stale || decisions == NULL)
		reset_decisions();
	if (table_absent)
		return NULL;
	if (last != NULL && last->k.role == role && last->k.provider == provider &&
		strncmp(last->k.key_id, key_id, key_id_len) == 0 && last->k.key_id[key_id_len] == '\0')
		return last;
	memset(&k, 0, sizeof(k));
	k.role = role;
	k.provider = provider;
	memcpy(k.key_id, key_id, Min(key_id_len, KMS_KEY_ID_MAXLEN));
	d = hash_search(decisions, &k, HASH_ENTER, &found);
	if (!found)
	{
		PG_TRY();
		{
			load_decision(d);
		}
		PG_CATCH();
		{
			hash_search(decisions, &k, HASH_REMOVE, NULL);
			last = NULL;
			PG_RE_THROW();
		}
		PG_END_TRY();
		/* loading may have accepted invalidations: then rebuild next time */
	}
	last = stale ? NULL : d;
	return d;
}

static const char *
priv_label(int privmask)
{
	if (privmask == (KMS_PRIV_REWRAP | KMS_PRIV_ENCRYPT))
		return "rewrap or encrypt";
	if (privmask == (KMS_PRIV_REWRAP | KMS_PRIV_ADMIN))
		return "rewrap or admin";
	if (privmask == (KMS_PRIV_ENCRYPT | KMS_PRIV_DECRYPT))
		return "encrypt or decrypt";
	for (int b = 0; b < 4; b++)
		if (privmask == (1 << b))
			return priv_names[b];
	return "required";
}

static void
deny(const Decision *d, int privmask, Oid fn_oid)
{
	const char *role = GetUserNameFromId(d->k.role, true);
	const char *fn = OidIsValid(fn_oid) ? get_func_name(fn_oid) : NULL;

	if (role == NULL)
		role = psprintf("%u", d->k.role);
	/* role, key and statement (function and query id): never its text or values */
	ereport(LOG,
			(errmsg("kms_pg key privilege denied: role \"%s\", key \"%s\", privilege %s, function %s, query id %lld",
					role, d->k.key_id, priv_label(privmask), fn ? fn : "-",
					(long long) pgstat_get_my_query_id()),
			 errhidestmt(true), errhidecontext(true)));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for kms_pg key \"%s\"", d->k.key_id),
			 (d->cond_privs & privmask) ?
			 errdetail("Role \"%s\" holds the %s privilege on the key only under a condition that this value's encryption context does not meet.",
					   role, priv_label(privmask)) :
			 errdetail("Role \"%s\" has no %s privilege on the key.", role, priv_label(privmask)),
			 errhint("A role with admin on the key grants it with kms_grant_key() (docs/security.md)."),
			 errhidestmt(true)));
}

void
kms_key_check(uint8 provider, const char *key_id, int key_id_len, int privmask,
			  const KmsContext *ctx, Oid fn_oid)
{
	Decision   *d = lookup(provider, key_id, key_id_len);

	if (d == NULL || d->bypass || (d->uncond & privmask))
		return;
	if (d->cond_privs & privmask)
		for (int i = 0; i < d->nconds; i++)
			if ((d->conds[i].privs & privmask) && cond_admits(&d->conds[i], ctx))
				return;
	deny(d, privmask, fn_oid);
}

void
kms_key_check_header(const uint8 *header, int privmask, const KmsContext *ctx, Oid fn_oid)
{
	/* magic(4) version(1) provider(1) key id length(1) key id */
	kms_key_check(header[5], (const char *) header + 7, header[6], privmask, ctx, fn_oid);
}

char *
kms_key_check_local_admin(const char *key, Oid fn_oid)
{
	char	   *id = kms_local_key_id(key);
	KmsContext	empty;

	kms_context_init_empty(&empty);
	kms_key_check(KMS_PROVIDER_LOCAL, id, strlen(id), KMS_PRIV_ADMIN, &empty, fn_oid);
	return id;
}

/* ---- changing grants: fixed SQL as the table's owner ---- */

typedef struct OwnerSpi
{
	Oid			save_user;
	int			save_sec;
	int			nest;
	Oid			relid;
	char	   *tbl;			/* qualified, quoted table name */
} OwnerSpi;

static void
owner_begin(OwnerSpi *o)
{
	HeapTuple	tup;
	Oid			owner;

	o->relid = grant_relid();
	if (!OidIsValid(o->relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the kms_pg key grants table \"%s\" does not exist", GRANT_TABLE),
				 errhint("Run ALTER EXTENSION kms_pg UPDATE.")));
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("kms_pg key grants cannot be changed during recovery"),
				 errhint("Grant and revoke on the primary; standbys receive the grants through WAL.")));
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(o->relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", o->relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	o->tbl = quote_qualified_identifier(get_namespace_name(get_rel_namespace(o->relid)), GRANT_TABLE);
	GetUserIdAndSecContext(&o->save_user, &o->save_sec);
	SetUserIdAndSecContext(owner, o->save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	o->nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

static void
owner_end(OwnerSpi *o)
{
	SPI_finish();
	AtEOXact_GUC(true, o->nest);
	SetUserIdAndSecContext(o->save_user, o->save_sec);
	/* every backend, and standbys replaying the commit, drop their decisions */
	CacheInvalidateRelcacheByRelid(o->relid);
	CommandCounterIncrement();
	stale = true;
}

static int
owner_exec(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc < 0)
		elog(ERROR, "kms_pg key grants statement failed: %s", SPI_result_code_string(rc));
	return (int) SPI_processed;
}

static Datum
privs_array(int mask)
{
	Datum		elems[4];
	int			n = 0;

	/* stored in a fixed order: admin, decrypt, encrypt, rewrap */
	if (mask & KMS_PRIV_ADMIN)
		elems[n++] = CStringGetTextDatum("admin");
	if (mask & KMS_PRIV_DECRYPT)
		elems[n++] = CStringGetTextDatum("decrypt");
	if (mask & KMS_PRIV_ENCRYPT)
		elems[n++] = CStringGetTextDatum("encrypt");
	if (mask & KMS_PRIV_REWRAP)
		elems[n++] = CStringGetTextDatum("rewrap");
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Granting again adds privileges; but a row recorded under another name
 * for the same oid (a dropped role's, whose oid a new role now has, or a
 * role renamed from another database) is replaced, never merged.
 */
#define UPSERT_SQL \
	"INSERT INTO %s AS g (provider, key_id, grantee, grantee_name, privileges, condition, grantor, granted)" \
	" VALUES ($1, $2, $3, $7, $4, $5, $6, pg_catalog.now())" \
	" ON CONFLICT ON CONSTRAINT kms_key_grant_unique DO UPDATE SET" \
	" privileges = CASE WHEN g.grantee_name IS NOT DISTINCT FROM EXCLUDED.grantee_name" \
	"   THEN ARRAY(SELECT DISTINCT p FROM pg_catalog.unnest(g.privileges OPERATOR(pg_catalog.||) EXCLUDED.privileges) p ORDER BY 1)" \
	"   ELSE EXCLUDED.privileges END," \
	" grantee_name = EXCLUDED.grantee_name, grantor = EXCLUDED.grantor, granted = EXCLUDED.granted"

static void
upsert(OwnerSpi *o, const char *prov, const char *key_id, Oid grantee, int mask, Jsonb *cond)
{
	Oid			types[7] = {TEXTOID, TEXTOID, REGROLEOID, TEXTARRAYOID, JSONBOID, TEXTOID, TEXTOID};
	Datum		values[7];
	char		nulls[8] = "       ";

	values[0] = CStringGetTextDatum(prov);
	values[1] = CStringGetTextDatum(key_id);
	values[2] = ObjectIdGetDatum(grantee);
	values[6] = (Datum) 0;
	if (!OidIsValid(grantee))
		nulls[2] = nulls[6] = 'n';
	else
		values[6] = CStringGetTextDatum(GetUserNameFromId(grantee, false));
	values[3] = privs_array(mask);
	values[4] = PointerGetDatum(cond);
	if (cond == NULL)
		nulls[4] = 'n';
	values[5] = CStringGetTextDatum(GetUserNameFromId(o->save_user, false));
	owner_exec(psprintf(UPSERT_SQL, o->tbl), 7, types, values, nulls);
}

/* An AWS key's first grant records 1.0's behaviour: PUBLIC holds everything. */
static void
govern_aws_key(OwnerSpi *o, const char *key_id)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(key_id)};

	owner_exec(psprintf("SELECT 1 FROM %s WHERE provider OPERATOR(pg_catalog.=) 'aws'"
						" AND key_id OPERATOR(pg_catalog.=) $1 FOR UPDATE", o->tbl),
			   1, types, values, NULL);
	if (SPI_processed == 0)
		upsert(o, "aws", key_id, InvalidOid, KMS_PRIV_ALL, NULL);
}

void
kms_key_grants_seed_new(uint8 provider, const char *key_id)
{
	OwnerSpi	o;

	if (!OidIsValid(grant_relid()))
		return;
	owner_begin(&o);
	upsert(&o, provider == KMS_PROVIDER_AWS ? "aws" : "local", key_id, o.save_user, KMS_PRIV_ALL, NULL);
	upsert(&o, provider == KMS_PROVIDER_AWS ? "aws" : "local", key_id, InvalidOid, KMS_PRIV_ENCRYPT, NULL);
	owner_end(&o);
}

/* The key itself, as ciphertexts record it: a local uuid or an AWS ARN. */
static char *
resolve_key(const char *key, uint8 *provider)
{
	const KmsProviderRoutine *p = kms_provider_current();

	*provider = p->id;
	if (p->id == KMS_PROVIDER_LOCAL)
		return kms_local_key_id(key);
	else
	{
		char	   *json = p->describe_key(key);
		Jsonb	   *jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
		JsonbValue	k;
		JsonbValue *meta;
		JsonbValue *arn = NULL;

		k.type = jbvString;
		k.val.string.val = "KeyMetadata";
		k.val.string.len = strlen("KeyMetadata");
		meta = findJsonbValueFromContainer(&jb->root, JB_FOBJECT, &k);
		if (meta != NULL && meta->type == jbvBinary)
		{
			k.val.string.val = "Arn";
			k.val.string.len = strlen("Arn");
			arn = findJsonbValueFromContainer(meta->val.binary.data, JB_FOBJECT, &k);
		}
		if (arn == NULL || arn->type != jbvString || arn->val.string.len == 0 ||
			arn->val.string.len > KMS_KEY_ID_MAXLEN)
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("could not resolve the ARN of AWS KMS key \"%s\"", key),
					 errdetail("DescribeKey returned no KeyMetadata.Arn.")));
		return pnstrdup(arn->val.string.val, arn->val.string.len);
	}
}

static Oid
grantee_arg(FunctionCallInfo fcinfo, int argno)
{
	char	   *name;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", "grantee")));
	name = NameStr(*PG_GETARG_NAME(argno));
	if (pg_strcasecmp(name, "public") == 0)
		return InvalidOid;
	return get_role_oid(name, false);
}

static char *
key_arg(FunctionCallInfo fcinfo, uint8 *provider)
{
	char	   *key;
	char	   *id;
	KmsContext	empty;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", "key_id")));
	key = text_to_cstring(PG_GETARG_TEXT_PP(0));
	id = resolve_key(key, provider);
	kms_context_init_empty(&empty);
	kms_key_check(*provider, id, strlen(id), KMS_PRIV_ADMIN, &empty, fcinfo->flinfo->fn_oid);
	return id;
}

/* SQL: kms_grant_key(key_id text, grantee name, privileges text[] DEFAULT '{decrypt}', condition jsonb DEFAULT NULL) RETURNS void */
PG_FUNCTION_INFO_V1(kms_grant_key);
Datum
kms_grant_key(PG_FUNCTION_ARGS)
{
	uint8		provider;
	char	   *key_id;
	Oid			grantee = grantee_arg(fcinfo, 1);
	int			mask;
	Jsonb	   *cond = NULL;
	OwnerSpi	o;

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", "privileges")));
	mask = privs_from_array(PG_GETARG_ARRAYTYPE_P(2), true);
	if (mask == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no kms_pg key privilege given"),
				 errhint("The privileges are encrypt, decrypt, rewrap and admin.")));
	if (!PG_ARGISNULL(3))
	{
		Cond		parsed;

		cond = PG_GETARG_JSONB_P(3);
		(void) parse_condition(cond, &parsed, true);
	}
	key_id = key_arg(fcinfo, &provider);
	owner_begin(&o);
	if (provider == KMS_PROVIDER_AWS)
		govern_aws_key(&o, key_id);
	upsert(&o, provider == KMS_PROVIDER_AWS ? "aws" : "local", key_id, grantee, mask, cond);
	owner_end(&o);
	PG_RETURN_VOID();
}

/*
 * DELETE FROM the table WHERE cond (over alias g), as its owner; an AWS key
 * left without any row gets an empty PUBLIC row, so that it stays governed
 * (no row at all would make it usable by everybody, as in 1.0).  Returns
 * the number of rows deleted.
 */
static int
delete_rows(OwnerSpi *o, const char *cond, int nargs, Oid *types, Datum *values, const char *nulls)
{
	int			n;
	int			naws = 0;
	Datum	   *aws;

	n = owner_exec(psprintf("DELETE FROM %s g WHERE %s RETURNING g.provider, g.key_id", o->tbl, cond),
				   nargs, types, values, nulls);
	aws = palloc(sizeof(Datum) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		char	   *prov = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		if (prov != NULL && strcmp(prov, "aws") == 0)
			aws[naws++] = CStringGetTextDatum(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2));
	}
	if (naws > 0)
		owner_exec(psprintf("INSERT INTO %1$s (provider, key_id, grantee, grantee_name, privileges, condition, grantor, granted)"
							" SELECT 'aws', k, NULL, NULL, '{}', NULL, $2, pg_catalog.now()"
							" FROM (SELECT DISTINCT u FROM pg_catalog.unnest($1) u) d(k) WHERE NOT EXISTS (SELECT 1 FROM %1$s x"
							" WHERE x.provider OPERATOR(pg_catalog.=) 'aws' AND x.key_id OPERATOR(pg_catalog.=) k)", o->tbl),
				   2, (Oid[]) {TEXTARRAYOID, TEXTOID},
				   (Datum[]) {PointerGetDatum(construct_array(aws, naws, TEXTOID, -1, false, TYPALIGN_INT)),
							  CStringGetTextDatum(GetUserNameFromId(o->save_user, false))}, NULL);
	return n;
}

/* A grant row's grantee is no longer the role it was granted to. */
#define ORPHAN_SQL \
	"g.grantee IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r" \
	" WHERE r.oid OPERATOR(pg_catalog.=) g.grantee::pg_catalog.oid" \
	" AND r.rolname::pg_catalog.text OPERATOR(pg_catalog.=) g.grantee_name)"

/*
 * SQL: kms_revoke_key(key_id text, grantee name, privileges text[] DEFAULT NULL) RETURNS int
 *
 * A grantee that is no role names the rows a dropped (or elsewhere renamed)
 * role left under that name: they are deleted, whatever privileges says.
 */
PG_FUNCTION_INFO_V1(kms_revoke_key);
Datum
kms_revoke_key(PG_FUNCTION_ARGS)
{
	uint8		provider;
	char	   *key_id;
	char	   *gname;
	Oid			grantee;
	int			mask = KMS_PRIV_ALL;
	int			n;
	OwnerSpi	o;
	Oid			types[4] = {TEXTOID, TEXTOID, REGROLEOID, TEXTARRAYOID};
	Datum		values[4];
	char		nulls[5] = "    ";
	const char *prov;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", "grantee")));
	gname = NameStr(*PG_GETARG_NAME(1));
	grantee = pg_strcasecmp(gname, "public") == 0 ? InvalidOid : get_role_oid(gname, true);
	if (!PG_ARGISNULL(2))
		mask = privs_from_array(PG_GETARG_ARRAYTYPE_P(2), true);
	key_id = key_arg(fcinfo, &provider);
	prov = provider == KMS_PROVIDER_AWS ? "aws" : "local";
	values[0] = CStringGetTextDatum(prov);
	values[1] = CStringGetTextDatum(key_id);
	values[2] = ObjectIdGetDatum(grantee);
	if (!OidIsValid(grantee))
		nulls[2] = 'n';
	values[3] = privs_array(mask);
	owner_begin(&o);
	if (pg_strcasecmp(gname, "public") != 0 && !OidIsValid(grantee))
	{
		/* no such role: the rows a dropped role left under this name */
		n = delete_rows(&o, "g.provider OPERATOR(pg_catalog.=) $1 AND g.key_id OPERATOR(pg_catalog.=) $2"
						" AND g.grantee_name OPERATOR(pg_catalog.=) $3 AND " ORPHAN_SQL,
						3, (Oid[]) {TEXTOID, TEXTOID, TEXTOID},
						(Datum[]) {values[0], values[1], CStringGetTextDatum(gname)}, NULL);
		owner_end(&o);
		if (n == 0)
			(void) get_role_oid(gname, false);	/* role "..." does not exist */
		PG_RETURN_INT32(n);
	}
	if (provider == KMS_PROVIDER_AWS)
		govern_aws_key(&o, key_id);
	/* the grantee's rows lose the privileges; rows left with none go */
	n = owner_exec(psprintf("UPDATE %s g SET privileges = ARRAY("
							"SELECT p FROM pg_catalog.unnest(g.privileges) p"
							" WHERE p OPERATOR(pg_catalog.<>) ALL ($4) ORDER BY 1)"
							" WHERE provider OPERATOR(pg_catalog.=) $1 AND key_id OPERATOR(pg_catalog.=) $2"
							" AND grantee IS NOT DISTINCT FROM $3"
							" AND g.privileges OPERATOR(pg_catalog.&&) $4", o.tbl),
				   4, types, values, nulls);
	(void) delete_rows(&o, "g.provider OPERATOR(pg_catalog.=) $1 AND g.key_id OPERATOR(pg_catalog.=) $2"
					   " AND pg_catalog.cardinality(g.privileges) OPERATOR(pg_catalog.=) 0",
					   2, types, values, nulls);
	owner_end(&o);
	PG_RETURN_INT32(n);
}

/* ---- roles dropped and renamed ---- */

static object_access_hook_type prev_object_access_hook = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/*
 * Delete every row of a role in this database (DROP ROLE, DROP OWNED BY),
 * as PostgreSQL drops the role's privileges.  Nothing to do in a database
 * without the grants table.
 */
static void
forget_role(Oid roleid)
{
	OwnerSpi	o;

	if (!OidIsValid(grant_relid()))
		return;
	owner_begin(&o);
	(void) delete_rows(&o, "g.grantee OPERATOR(pg_catalog.=) $1", 1,
					   (Oid[]) {REGROLEOID}, (Datum[]) {ObjectIdGetDatum(roleid)}, NULL);
	owner_end(&o);
}

/* ALTER ROLE ... RENAME: this database's rows follow the role's new name. */
static void
rename_role(Oid roleid, const char *oldname, const char *newname)
{
	OwnerSpi	o;

	if (!OidIsValid(grant_relid()))
		return;
	owner_begin(&o);
	owner_exec(psprintf("UPDATE %s g SET grantee_name = $3 WHERE g.grantee OPERATOR(pg_catalog.=) $1"
						" AND g.grantee_name OPERATOR(pg_catalog.=) $2", o.tbl),
			   3, (Oid[]) {REGROLEOID, TEXTOID, TEXTOID},
			   (Datum[]) {ObjectIdGetDatum(roleid), CStringGetTextDatum(oldname), CStringGetTextDatum(newname)},
			   NULL);
	owner_end(&o);
}

/* DROP ROLE reports each role it drops, before deleting it. */
static void
grants_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && classId == AuthIdRelationId && IsTransactionState())
		forget_role(objectId);
}

static void
grants_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					   ProcessUtilityContext context, ParamListInfo params,
					   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	char	   *oldname = NULL;
	char	   *newname = NULL;
	List	   *owned = NIL;

	if (IsA(parsetree, RenameStmt) && ((RenameStmt *) parsetree)->renameType == OBJECT_ROLE)
	{
		oldname = pstrdup(((RenameStmt *) parsetree)->subname);
		newname = pstrdup(((RenameStmt *) parsetree)->newname);
	}
	else if (IsA(parsetree, DropOwnedStmt))
		owned = ((DropOwnedStmt *) parsetree)->roles;

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);

	if (oldname != NULL)
	{
		Oid			roleid = get_role_oid(newname, true);

		if (OidIsValid(roleid))
			rename_role(roleid, oldname, newname);
	}
	else if (owned != NIL)
	{
		ListCell   *lc;

		/* DROP OWNED BY revokes the roles' privileges in this database */
		foreach(lc, owned)
			forget_role(get_rolespec_oid(lfirst(lc), false));
	}
}

void
kms_key_grants_init(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = grants_object_access;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = grants_process_utility;
}
