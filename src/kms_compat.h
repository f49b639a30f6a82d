/*-------------------------------------------------------------------------
 * kms_compat.h
 *	  Every PostgreSQL-version difference kms_pg depends on, in one place.
 *
 * kms_pg supports PostgreSQL 15, 16, 17 and 18 from one source tree.  The
 * rest of the code uses only the kms_* names below and never tests
 * PG_VERSION_NUM itself.  Each guard sits at the release that made the
 * change (16 has no Debian package for the CI machine: its guards are
 * right by construction, from the release notes and headers, not by test).
 *
 *	 16: JSON semantic-action callbacks return JsonParseErrorType;
 *		 GUC check-hook "extra" is freed with guc_free (allocate with
 *		 guc_malloc), no longer free().
 *	 17: makeJsonLexContextCstringLen takes the context to initialise
 *		 (NULL: allocate) and a size_t length; freeJsonLexContext frees.
 *	 18: pg_attribute_noreturn() is gone (pg_noreturn goes in front);
 *		 pg_b64_encode/decode take uint8 * for the binary side;
 *		 RelationGetPrimaryKeyIndex takes deferrable_ok (false: as before,
 *		 a deferrable primary key is not reported).
 *
 * The executor calls of the decrypting views' direct writes
 * (kms_columns.c): 16 moved the permission fields of a range-table entry
 * (requiredPerms, checkAsUser, selected/inserted/updatedCols, same names)
 * to RTEPermissionInfo, so ExecInitRangeTable takes the permInfos list,
 * ExecCheckRTPerms became ExecCheckPermissions, and EvalPlanQualInit took
 * the resultRelations list; 18 added ExecInitRangeTable's unpruned_relids.
 *-------------------------------------------------------------------------
 */
#ifndef KMS_COMPAT_H
#define KMS_COMPAT_H

#include "common/base64.h"

/*
 * A function that never returns: written in front of the declaration,
 * where both pg_noreturn (18+, may be C11 _Noreturn) and the older
 * pg_attribute_noreturn() (an __attribute__ or __declspec) are valid.
 */
#if PG_VERSION_NUM >= 180000
#define kms_noreturn pg_noreturn
#else
#define kms_noreturn pg_attribute_noreturn()
#endif

/*
 * Base64 of binary data (common/base64.h).  Returns the length written,
 * or -1, as pg_b64_* do.
 */
static inline int
kms_b64_encode(const uint8 *src, int len, char *dst, int dstlen)
{
#if PG_VERSION_NUM >= 180000
	return pg_b64_encode(src, len, dst, dstlen);
#else
	return pg_b64_encode((const char *) src, len, dst, dstlen);
#endif
}

static inline int
kms_b64_decode(const char *src, int len, uint8 *dst, int dstlen)
{
#if PG_VERSION_NUM >= 180000
	return pg_b64_decode(src, len, dst, dstlen);
#else
	return pg_b64_decode(src, len, (char *) dst, dstlen);
#endif
}

/*
 * The OID of a relation's (non-deferrable) primary key index, or InvalidOid.
 */
#ifndef FRONTEND
#include "utils/relcache.h"

static inline Oid
kms_relation_pkey_index(Relation rel)
{
#if PG_VERSION_NUM >= 180000
	return RelationGetPrimaryKeyIndex(rel, false);
#else
	return RelationGetPrimaryKeyIndex(rel);
#endif
}
#endif							/* !FRONTEND */

/*
 * A one-relation range table for an executor state of our own (the
 * decrypting views' direct writes).  Returns the entry that carries the
 * permission fields: the RangeTblEntry up to 15, its RTEPermissionInfo from
 * 16 on (the field names are the same).
 */
#ifndef FRONTEND
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "utils/rel.h"

#if PG_VERSION_NUM >= 160000
typedef RTEPermissionInfo KmsPermInfo;
#else
typedef RangeTblEntry KmsPermInfo;
#endif

static inline KmsPermInfo *
kms_exec_init_rtable(EState *estate, Relation rel)
{
	RangeTblEntry *rte = makeNode(RangeTblEntry);

	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
#if PG_VERSION_NUM >= 160000
	{
		RTEPermissionInfo *perm = makeNode(RTEPermissionInfo);

		perm->relid = RelationGetRelid(rel);
		perm->inh = false;
		rte->perminfoindex = 1;
#if PG_VERSION_NUM >= 180000
		ExecInitRangeTable(estate, list_make1(rte), list_make1(perm), bms_make_singleton(1));
#else
		ExecInitRangeTable(estate, list_make1(rte), list_make1(perm));
#endif
		return perm;
	}
#else
	ExecInitRangeTable(estate, list_make1(rte));
	return rte;
#endif
}

/* The permission check of the executor (and its hook) on that range table. */
static inline void
kms_exec_check_perms(EState *estate)
{
#if PG_VERSION_NUM >= 160000
	(void) ExecCheckPermissions(estate->es_range_table, estate->es_rteperminfos, true);
#else
	(void) ExecCheckRTPerms(estate->es_range_table, true);
#endif
}

/* An EvalPlanQual state without a plan (the row is locked beforehand). */
static inline void
kms_epq_init(EPQState *epq, EState *estate)
{
#if PG_VERSION_NUM >= 160000
	EvalPlanQualInit(epq, estate, NULL, NIL, -1, NIL);
#else
	EvalPlanQualInit(epq, estate, NULL, NIL, -1);
#endif
}
#endif							/* !FRONTEND */

/*
 * Memory for a GUC check hook's "extra": guc.c releases it with free()
 * up to 15 and with guc_free() (which expects guc_malloc) from 16 on.
 * Returns NULL when out of memory (the check hook then fails).
 */
#ifndef FRONTEND
#include "utils/guc.h"

static inline void *
kms_guc_extra_alloc(size_t size)
{
#if PG_VERSION_NUM >= 160000
	return guc_malloc(LOG, size);
#else
	return malloc(size);
#endif
}
#endif							/* !FRONTEND */

/*
 * JSON parser (common/jsonapi.h).  Semantic-action callbacks are written
 *
 *		static KMS_JSON_ACTION cb(void *state, ...) { ...; KMS_JSON_DONE; }
 *
 * and lexers are made and freed with the two functions below.  Define
 * KMS_COMPAT_WANT_JSON before including this header to get them.
 */
#endif							/* KMS_COMPAT_H */

/* The JSON part has its own guard: a file may want it after kms_pg.h. */
#if defined(KMS_COMPAT_WANT_JSON) && !defined(KMS_COMPAT_JSON_H)
#define KMS_COMPAT_JSON_H
#include "common/jsonapi.h"
#include "mb/pg_wchar.h"

#if PG_VERSION_NUM >= 160000
#define KMS_JSON_ACTION JsonParseErrorType
#define KMS_JSON_DONE return JSON_SUCCESS
#else
#define KMS_JSON_ACTION void
#define KMS_JSON_DONE return
#endif

/* A lexer over a UTF-8 buffer of len bytes, de-escaping strings if asked. */
static inline JsonLexContext *
kms_json_lex_make(char *json, size_t len, bool need_escapes)
{
#if PG_VERSION_NUM >= 170000
	return makeJsonLexContextCstringLen(NULL, json, len, PG_UTF8, need_escapes);
#else
	return makeJsonLexContextCstringLen(json, (int) len, PG_UTF8, need_escapes);
#endif
}

/*
 * Free a lexer from kms_json_lex_make.  The caller has already wiped what
 * must be wiped (the de-escaping buffer lex->strval).
 */
static inline void
kms_json_lex_free(JsonLexContext *lex)
{
#if PG_VERSION_NUM >= 170000
	freeJsonLexContext(lex);
#else
	if (lex->strval)
	{
		pfree(lex->strval->data);
		pfree(lex->strval);
	}
	pfree(lex);
#endif
}
#endif							/* KMS_COMPAT_WANT_JSON */
