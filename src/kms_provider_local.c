/*-------------------------------------------------------------------------
 * kms_provider_local.c
 *	  The embedded local key provider.
 *
 * Since 1.1 root keys live in the keyring catalog of the database
 * (kms_local_catalog.c), wrapped under the master key (kms_master_key.c);
 * every provider call reads the key it needs from there.  Until ALTER
 * EXTENSION kms_pg UPDATE has created the catalog (and imported the file
 * with kms_local_import_keyring_file()), a database still at 1.0 uses the
 * 1.0 keyring file as described below; the rest of this file is that code.
 *
 * 1.0: root keys live in one JSON keyring file (kms_pg.keyring_file, inside
 * the data directory by default, so pg_basebackup carries it to standbys).
 * The file is created by the first kms_create_key() with mode 0600, and
 * every change is made under an exclusive flock() on "<file>.lock":
 * re-read, modify, write a temporary file, fsync, rename, fsync the
 * directory.  Readers need no lock because rename is atomic; each backend
 * keeps a parsed copy and reloads it when stat() shows the file changed.
 * A missing or unparsable keyring is an error: it is never replaced while
 * ciphertexts may depend on it.
 *
 * A DEK is wrapped with AES-256-GCM under the key's current version:
 *	 u8 0x01 | u32be key version | 12-byte nonce | 32-byte ciphertext | 16-byte tag
 * with additional data "kms_pg local wrap v1" NUL, the key id, and the
 * canonical provider context, so a wrapped DEK moved to another key or
 * context does not unwrap.
 *-------------------------------------------------------------------------
 */
#include "kms_provider_local.h"
#include "kms_local_catalog.h"
#include "kms_guc.h"
#include "kms_dek_cache.h"
#include "kms_secure_mem.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "common/base64.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#define LOCAL_WRAP_FORMAT	KMS_LOCAL_WRAP_FORMAT
#define LOCAL_WRAP_LEN		KMS_LOCAL_WRAP_LEN
#define LOCAL_WRAP_AAD		"kms_pg local wrap v1"
#define KEYRING_FORMAT		"kms_pg local keyring"

typedef KmsLocalKeyVersion LocalKeyVersion;
typedef KmsLocalKey LocalKey;

typedef struct LocalKeyring
{
	int			nkeys;
	LocalKey   *keys;
} LocalKeyring;

/* Backend-local parsed copy of the keyring, and the file identity it came from. */
static MemoryContext keyring_cxt = NULL;
static LocalKeyring *keyring_cached = NULL;
static struct stat keyring_stat;
static char keyring_cached_path[MAXPGPATH];

static void
keyring_wipe(LocalKeyring *kr)
{
	if (kr == NULL)
		return;
	for (int i = 0; i < kr->nkeys; i++)
		for (int v = 0; v < kr->keys[i].nversions; v++)
			explicit_bzero(kr->keys[i].versions[v].material, KMS_DEK_LEN);
}

static void
keyring_forget(void)
{
	keyring_wipe(keyring_cached);
	keyring_cached = NULL;
	if (keyring_cxt)
		MemoryContextReset(keyring_cxt);
}

static void
report_keyring_error(const char *path, const char *what, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONFIG_FILE_ERROR),
			 errmsg("kms_pg local keyring \"%s\" %s", path, what),
			 detail ? errdetail("%s", detail) : 0,
			 errhint("The keyring is the root of every local-provider ciphertext: restore it from backup; "
					 "kms_pg never recreates it while values may depend on it.")));
}

/* ---- JSON field access on the parsed keyring ---- */

static JsonbValue *
json_field(JsonbContainer *c, const char *name)
{
	return getKeyJsonValueFromContainer(c, name, strlen(name), NULL);
}

static char *
json_string_field(JsonbContainer *c, const char *name, bool required, const char *path)
{
	JsonbValue *v = json_field(c, name);

	if (v == NULL || v->type == jbvNull)
	{
		if (required)
			report_keyring_error(path, "is damaged", psprintf("Field \"%s\" is missing.", name));
		return NULL;
	}
	if (v->type != jbvString)
		report_keyring_error(path, "is damaged", psprintf("Field \"%s\" is not a string.", name));
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static TimestampTz
parse_timestamp(const char *s)
{
	return DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(s),
												   ObjectIdGetDatum(InvalidOid),
												   Int32GetDatum(-1)));
}

/* Parse keyring text into kr, allocating in the current memory context. */
static void
keyring_parse(const char *text, const char *path, LocalKeyring *kr)
{
	Jsonb	   *volatile jb = NULL;
	JsonbValue *v;
	JsonbValue *keys;
	char	   *fmt;
	int			n;

	PG_TRY();
	{
		jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
	}
	PG_CATCH();
	{
		FlushErrorState();
		report_keyring_error(path, "is damaged", "The file is not valid JSON.");
	}
	PG_END_TRY();

	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		report_keyring_error(path, "is damaged", "The top level is not a JSON object.");
	fmt = json_string_field(&jb->root, "format", true, path);
	if (strcmp(fmt, KEYRING_FORMAT) != 0)
		report_keyring_error(path, "is not a kms_pg keyring", NULL);
	v = json_field(&jb->root, "version");
	if (v == NULL || v->type != jbvNumeric ||
		DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(v->val.numeric))) != 1)
		report_keyring_error(path, "has an unsupported version", NULL);

	keys = json_field(&jb->root, "keys");
	if (keys == NULL || keys->type != jbvBinary || !JsonContainerIsArray(keys->val.binary.data))
		report_keyring_error(path, "is damaged", "Field \"keys\" is not an array.");
	n = JsonContainerSize(keys->val.binary.data);
	kr->nkeys = n;
	kr->keys = n > 0 ? palloc0(sizeof(LocalKey) * n) : NULL;

	for (int i = 0; i < n; i++)
	{
		JsonbValue *kv = getIthJsonbValueFromContainer(keys->val.binary.data, i);
		JsonbContainer *kc;
		LocalKey   *k = &kr->keys[i];
		JsonbValue *ev;
		JsonbValue *vers;
		char	   *s;
		int			nv;

		if (kv == NULL || kv->type != jbvBinary || !JsonContainerIsObject(kv->val.binary.data))
			report_keyring_error(path, "is damaged", "A key entry is not an object.");
		kc = kv->val.binary.data;
		s = json_string_field(kc, "key_id", true, path);
		if (strlen(s) != 36)
			report_keyring_error(path, "is damaged", "A key id is malformed.");
		strlcpy(k->key_id, s, sizeof(k->key_id));
		k->alias = json_string_field(kc, "alias", false, path);
		k->description = json_string_field(kc, "description", false, path);
		ev = json_field(kc, "enabled");
		if (ev == NULL || ev->type != jbvBool)
			report_keyring_error(path, "is damaged", "Field \"enabled\" is missing.");
		k->enabled = ev->val.boolean;
		k->created = parse_timestamp(json_string_field(kc, "created", true, path));

		vers = json_field(kc, "versions");
		if (vers == NULL || vers->type != jbvBinary || !JsonContainerIsArray(vers->val.binary.data) ||
			JsonContainerSize(vers->val.binary.data) == 0)
			report_keyring_error(path, "is damaged", "A key has no versions.");
		nv = JsonContainerSize(vers->val.binary.data);
		k->nversions = nv;
		k->versions = palloc0(sizeof(LocalKeyVersion) * nv);
		for (int j = 0; j < nv; j++)
		{
			JsonbValue *vv = getIthJsonbValueFromContainer(vers->val.binary.data, j);
			JsonbContainer *vc;
			JsonbValue *num;
			char	   *b64;
			int			dlen;
			uint8		buf[64];

			if (vv == NULL || vv->type != jbvBinary)
				report_keyring_error(path, "is damaged", "A key version is not an object.");
			vc = vv->val.binary.data;
			num = json_field(vc, "version");
			if (num == NULL || num->type != jbvNumeric)
				report_keyring_error(path, "is damaged", "A key version number is missing.");
			k->versions[j].version =
				DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(num->val.numeric)));
			if (j > 0 && k->versions[j].version <= k->versions[j - 1].version)
				report_keyring_error(path, "is damaged", "Key versions are not ascending.");
			k->versions[j].created = parse_timestamp(json_string_field(vc, "created", true, path));
			b64 = json_string_field(vc, "material", true, path);
			if (pg_b64_dec_len(strlen(b64)) > (int) sizeof(buf))
				report_keyring_error(path, "is damaged", "Key material has the wrong length.");
			dlen = kms_b64_decode(b64, strlen(b64), buf, sizeof(buf));
			explicit_bzero(b64, strlen(b64));
			if (dlen != KMS_DEK_LEN)
			{
				explicit_bzero(buf, sizeof(buf));
				report_keyring_error(path, "is damaged", "Key material has the wrong length.");
			}
			memcpy(k->versions[j].material, buf, KMS_DEK_LEN);
			explicit_bzero(buf, sizeof(buf));
		}
	}

	/* the parsed document holds every key's material in base64: wipe it */
	explicit_bzero((Jsonb *) jb, VARSIZE((Jsonb *) jb));
}

/* Read the whole file; NULL with errno ENOENT when it does not exist. */
static char *
read_keyring_file(const char *path, struct stat *st)
{
	int			fd;
	char	   *buf;
	ssize_t		got = 0;

	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		if (errno == ENOENT)
			return NULL;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open kms_pg local keyring \"%s\": %m", path)));
	}
	if (fstat(fd, st) != 0)
		ereport(ERROR, (errcode_for_file_access(),
						errmsg("could not stat kms_pg local keyring \"%s\": %m", path)));
	if ((st->st_mode & (S_IRWXG | S_IRWXO)) != 0)
	{
		CloseTransientFile(fd);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("kms_pg local keyring \"%s\" has group or world access", path),
				 errdetail("The keyring holds root keys; only the database server's OS user may read it."),
				 errhint("chmod 0600 the file.")));
	}
	if (st->st_size > 64 * 1024 * 1024)
	{
		CloseTransientFile(fd);
		report_keyring_error(path, "is damaged", "The file is larger than 64 MB.");
	}
	buf = palloc(st->st_size + 1);
	while (got < st->st_size)
	{
		ssize_t		r = read(fd, buf + got, st->st_size - got);

		if (r < 0)
		{
			int			save = errno;

			CloseTransientFile(fd);
			errno = save;
			ereport(ERROR, (errcode_for_file_access(),
							errmsg("could not read kms_pg local keyring \"%s\": %m", path)));
		}
		if (r == 0)
			break;
		got += r;
	}
	buf[got] = '\0';
	CloseTransientFile(fd);
	return buf;
}

/* The current keyring, reloaded when the file changed. */
static LocalKeyring *
keyring_get(void)
{
	const char *path = kms_guc_keyring_path();
	struct stat st;
	char	   *text;
	MemoryContext old;
	LocalKeyring *kr;

	if (stat(path, &st) != 0)
	{
		if (errno == ENOENT)
		{
			keyring_forget();
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("kms_pg local keyring \"%s\" does not exist", path),
					 errhint("Create a key with kms_create_key(); if keys existed, restore the keyring from backup.")));
		}
		ereport(ERROR, (errcode_for_file_access(),
						errmsg("could not stat kms_pg local keyring \"%s\": %m", path)));
	}
	if (keyring_cached != NULL && strcmp(path, keyring_cached_path) == 0 &&
		st.st_dev == keyring_stat.st_dev && st.st_ino == keyring_stat.st_ino &&
		st.st_size == keyring_stat.st_size &&
		st.st_mtim.tv_sec == keyring_stat.st_mtim.tv_sec &&
		st.st_mtim.tv_nsec == keyring_stat.st_mtim.tv_nsec)
		return keyring_cached;

	keyring_forget();
	if (keyring_cxt == NULL)
		keyring_cxt = AllocSetContextCreate(TopMemoryContext, "kms_pg local keyring",
											ALLOCSET_SMALL_SIZES);
	text = read_keyring_file(path, &st);
	if (text == NULL)
		return keyring_get();	/* vanished between stat and open: report it */

	old = MemoryContextSwitchTo(keyring_cxt);
	kr = palloc0(sizeof(LocalKeyring));
	PG_TRY();
	{
		keyring_parse(text, path, kr);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		keyring_wipe(kr);
		explicit_bzero(text, strlen(text));
		MemoryContextReset(keyring_cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	explicit_bzero(text, strlen(text));
	pfree(text);

	keyring_cached = kr;
	keyring_stat = st;
	strlcpy(keyring_cached_path, path, sizeof(keyring_cached_path));
	return kr;
}

/*
 * Find a key by id, alias/name, or the ARN forms arn:...:key/<id> and
 * arn:...:alias/<name>, so kms_pg.key_id reads the same under both
 * providers.  NULL when not found.
 */
static LocalKey *
keyring_find(LocalKeyring *kr, const char *key)
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
	for (int i = 0; i < kr->nkeys; i++)
	{
		LocalKey   *lk = &kr->keys[i];

		if (strncmp(k, "alias/", 6) == 0)
		{
			if (lk->alias && strcmp(lk->alias, k) == 0)
				return lk;
		}
		else if (strcmp(lk->key_id, k) == 0)
			return lk;
	}
	return NULL;
}

static LocalKey *
keyring_find_or_error(LocalKeyring *kr, const char *key)
{
	LocalKey   *lk = keyring_find(kr, key);

	if (lk == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("kms_pg local key \"%s\" does not exist", key),
				 errhint("See the kms_keys view for the keys of the local keyring.")));
	return lk;
}

/*
 * The key named key (id, alias or ARN form): from the keyring catalog when
 * this database's kms_pg has one (1.1 on), else from the keyring file of
 * kms_pg 1.0 (the state before ALTER EXTENSION kms_pg UPDATE migrates it).
 * A catalog key and its unwrapped material live in *tmp, a child of the
 * current memory context in wipe-on-reset memory: key_done() deletes it,
 * and an error wipes it with its parent.
 */
static LocalKey *
key_get_ext(const char *key, MemoryContext *tmp, bool with_material)
{
	MemoryContext old;
	LocalKey   *lk;

	*tmp = NULL;
	if (!kms_catalog_present())
		return keyring_find_or_error(keyring_get(), key);
	*tmp = AllocSetContextCreate(CurrentMemoryContext, "kms_pg local key", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(*tmp);
	lk = kms_catalog_load_key(key, with_material);
	MemoryContextSwitchTo(old);
	if (lk == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("kms_pg local key \"%s\" does not exist", key),
				 errhint("See the kms_keys view for the keys of the local keyring.")));
	return lk;
}

static LocalKey *
key_get(const char *key, MemoryContext *tmp)
{
	return key_get_ext(key, tmp, true);
}

static void
key_done(MemoryContext tmp)
{
	if (tmp != NULL)
		MemoryContextDelete(tmp);
}

static void
require_enabled(const LocalKey *lk)
{
	if (lk->pending_deletion)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kms_pg local key \"%s\" is pending deletion", lk->key_id),
				 errdetail("It is scheduled for deletion at %s.", timestamptz_to_str(lk->deletion_date)),
				 errhint("A superuser can cancel the deletion with kms_cancel_key_deletion() and then enable the key.")));
	if (!lk->enabled)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kms_pg local key \"%s\" is disabled", lk->key_id),
				 lk->alias ? errdetail("The key has alias \"%s\".", lk->alias) : 0,
				 errhint("A superuser can enable it with kms_enable_key().")));
}

/* additional data for wrapping: label, key id, provider context */
static void
wrap_aad(StringInfo aad, const LocalKey *lk, const KmsContext *kctx)
{
	initStringInfo(aad);
	appendBinaryStringInfo(aad, LOCAL_WRAP_AAD, sizeof(LOCAL_WRAP_AAD));	/* with NUL */
	appendBinaryStringInfo(aad, lk->key_id, 36);
	appendBinaryStringInfo(aad, kctx->canonical.data, kctx->canonical.len);
}

static void
wrap_dek(const LocalKey *lk, const KmsContext *kctx, const uint8 *dek, KmsWrappedKey *out)
{
	const LocalKeyVersion *kv = &lk->versions[lk->nversions - 1];
	EVP_CIPHER_CTX *ctx;
	StringInfoData aad;
	uint8	   *w = palloc(LOCAL_WRAP_LEN);

	w[0] = LOCAL_WRAP_FORMAT;
	w[1] = (uint8) (kv->version >> 24);
	w[2] = (uint8) (kv->version >> 16);
	w[3] = (uint8) (kv->version >> 8);
	w[4] = (uint8) kv->version;
	wrap_aad(&aad, lk, kctx);
	ctx = kms_gcm_context_new(kv->material, true);
	PG_TRY();
	{
		KmsAad		a;

		kms_aad_simple(&a, (uint8 *) aad.data, aad.len);
		kms_random_nonce(w + 5);
		kms_gcm_seal(ctx, &a, dek, KMS_DEK_LEN,
					 w + 5, w + 5 + KMS_NONCE_LEN, w + 5 + KMS_NONCE_LEN + KMS_DEK_LEN);
	}
	PG_FINALLY();
	{
		EVP_CIPHER_CTX_free(ctx);
	}
	PG_END_TRY();
	out->key_id = pstrdup(lk->key_id);
	out->wrapped = w;
	out->wrapped_len = LOCAL_WRAP_LEN;
}

static void
unwrap_dek(const LocalKey *lk, const uint8 *wrapped, int wrapped_len,
		   const KmsContext *kctx, uint8 *dek_out)
{
	uint32		version;
	const LocalKeyVersion *kv = NULL;
	EVP_CIPHER_CTX *ctx;
	StringInfoData aad;
	volatile bool ok = false;

	if (wrapped_len != LOCAL_WRAP_LEN || wrapped[0] != LOCAL_WRAP_FORMAT)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("kms_pg local wrapped data key is malformed"),
				 errdetail("Expected %d bytes in wrap format %d, found %d bytes.",
						   LOCAL_WRAP_LEN, LOCAL_WRAP_FORMAT, wrapped_len)));
	version = ((uint32) wrapped[1] << 24) | (wrapped[2] << 16) | (wrapped[3] << 8) | wrapped[4];
	for (int i = 0; i < lk->nversions; i++)
		if ((uint32) lk->versions[i].version == version)
			kv = &lk->versions[i];
	if (kv == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("kms_pg local key \"%s\" has no version %u", lk->key_id, version),
				 errhint("The keyring may be older than the value; restore a newer backup of it.")));

	wrap_aad(&aad, lk, kctx);
	ctx = kms_gcm_context_new(kv->material, false);
	PG_TRY();
	{
		KmsAad		a;

		kms_aad_simple(&a, (uint8 *) aad.data, aad.len);
		ok = kms_gcm_open(ctx, &a, wrapped + 5, wrapped + 5 + KMS_NONCE_LEN, KMS_DEK_LEN,
						  wrapped + 5 + KMS_NONCE_LEN + KMS_DEK_LEN, dek_out);
	}
	PG_FINALLY();
	{
		EVP_CIPHER_CTX_free(ctx);
	}
	PG_END_TRY();
	if (!ok)
	{
		explicit_bzero(dek_out, KMS_DEK_LEN);
		kms_report_error(KMS_ERR_CT_AUTH_FAILED,
						 "The wrapped data key does not authenticate under the local key with this context.");
	}
}

/* ---- provider table ---- */

static void
local_generate_data_key(const char *key, const KmsContext *kctx, uint8 *dek_out,
						KmsWrappedKey *wrapped_out)
{
	MemoryContext tmp;
	LocalKey   *lk = key_get(key, &tmp);

	kms_stats_count_call(KMS_STAT_GENERATE, false);
	require_enabled(lk);
	if (RAND_bytes(dek_out, KMS_DEK_LEN) != 1)
		kms_report_openssl_error("RAND_bytes");
	wrap_dek(lk, kctx, dek_out, wrapped_out);
	key_done(tmp);
}

static void
local_decrypt_data_key(const char *key_id, const uint8 *wrapped, int wrapped_len,
					   const KmsContext *kctx, uint8 *dek_out)
{
	MemoryContext tmp;
	LocalKey   *lk = key_get(key_id, &tmp);

	kms_stats_count_call(KMS_STAT_DECRYPT, false);
	require_enabled(lk);
	unwrap_dek(lk, wrapped, wrapped_len, kctx, dek_out);
	key_done(tmp);
}

static void
local_rewrap_data_key(const char *key_id, const uint8 *wrapped, int wrapped_len,
					  const KmsContext *kctx, const char *new_key, KmsWrappedKey *out)
{
	MemoryContext tmp_src;
	MemoryContext tmp_dst;
	LocalKey   *src = key_get(key_id, &tmp_src);
	LocalKey   *dst = key_get(new_key, &tmp_dst);
	uint8		dek[KMS_DEK_LEN];

	kms_stats_count_call(KMS_STAT_REWRAP, false);
	require_enabled(src);
	require_enabled(dst);
	unwrap_dek(src, wrapped, wrapped_len, kctx, dek);
	PG_TRY();
	{
		wrap_dek(dst, kctx, dek, out);
	}
	PG_FINALLY();
	{
		explicit_bzero(dek, sizeof(dek));
	}
	PG_END_TRY();
	key_done(tmp_dst);
	key_done(tmp_src);
}

static void
local_encrypt_data_key(const char *key, const KmsContext *kctx, const uint8 *dek,
					   KmsWrappedKey *out)
{
	MemoryContext tmp;
	LocalKey   *lk = key_get(key, &tmp);

	kms_stats_count_call(KMS_STAT_REWRAP, false);
	require_enabled(lk);
	wrap_dek(lk, kctx, dek, out);
	key_done(tmp);
}

static char *
local_describe_key(const char *key)
{
	MemoryContext tmp;
	LocalKey   *lk = key_get_ext(key, &tmp, false);	/* no material needed */
	StringInfoData s;

	kms_stats_count_call(KMS_STAT_DESCRIBE, false);
	initStringInfo(&s);
	appendStringInfoString(&s, "{\"provider\": \"local\", \"KeyId\": ");
	escape_json(&s, lk->key_id);
	appendStringInfoString(&s, ", \"Alias\": ");
	if (lk->alias)
		escape_json(&s, lk->alias);
	else
		appendStringInfoString(&s, "null");
	appendStringInfo(&s, ", \"Enabled\": %s, \"KeyState\": \"%s\", \"CurrentVersion\": %d",
					 lk->enabled ? "true" : "false",
					 lk->pending_deletion ? "PendingDeletion" : lk->enabled ? "Enabled" : "Disabled",
					 lk->versions[lk->nversions - 1].version);
	if (lk->pending_deletion)
	{
		appendStringInfoString(&s, ", \"DeletionDate\": ");
		escape_json(&s, timestamptz_to_str(lk->deletion_date));
	}
	appendStringInfoChar(&s, '}');
	key_done(tmp);
	return s.data;
}

const KmsProviderRoutine kms_provider_local = {
	.name = "local",
	.id = KMS_PROVIDER_LOCAL,
	.generate_data_key = local_generate_data_key,
	.decrypt_data_key = local_decrypt_data_key,
	.rewrap_data_key = local_rewrap_data_key,
	.encrypt_data_key = local_encrypt_data_key,
	.describe_key = local_describe_key,
};

/* ---- keyring changes ---- */

static char *
format_timestamp(TimestampTz t)
{
	/* ISO 8601 in UTC, independent of the session's DateStyle and TimeZone */
	pg_time_t	tt = timestamptz_to_time_t(t);
	struct pg_tm *tm = pg_gmtime(&tt);
	char		buf[64];

	pg_strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", tm);
	return pstrdup(buf);
}

static void
keyring_serialize(const LocalKeyring *kr, StringInfo s)
{
	appendStringInfoString(s, "{\n  \"format\": \"" KEYRING_FORMAT "\",\n  \"version\": 1,\n  \"keys\": [");
	for (int i = 0; i < kr->nkeys; i++)
	{
		const LocalKey *k = &kr->keys[i];

		appendStringInfoString(s, i > 0 ? ",\n    {" : "\n    {");
		appendStringInfoString(s, "\"key_id\": ");
		escape_json(s, k->key_id);
		appendStringInfoString(s, ", \"alias\": ");
		if (k->alias)
			escape_json(s, k->alias);
		else
			appendStringInfoString(s, "null");
		appendStringInfoString(s, ", \"description\": ");
		if (k->description)
			escape_json(s, k->description);
		else
			appendStringInfoString(s, "null");
		appendStringInfo(s, ", \"enabled\": %s, \"created\": ", k->enabled ? "true" : "false");
		escape_json(s, format_timestamp(k->created));
		appendStringInfoString(s, ", \"versions\": [");
		for (int j = 0; j < k->nversions; j++)
		{
			char		b64[64];
			int			l;

			l = kms_b64_encode(k->versions[j].material, KMS_DEK_LEN, b64, sizeof(b64));
			if (l < 0)
				elog(ERROR, "base64 encoding of key material failed");
			appendStringInfo(s, "%s{\"version\": %d, \"created\": ", j > 0 ? ", " : "",
							 k->versions[j].version);
			escape_json(s, format_timestamp(k->versions[j].created));
			appendStringInfoString(s, ", \"material\": \"");
			appendBinaryStringInfo(s, b64, l);
			appendStringInfoString(s, "\"}");
			explicit_bzero(b64, sizeof(b64));
		}
		appendStringInfoString(s, "]}");
	}
	appendStringInfoString(s, "\n  ]\n}\n");
}

static void
fsync_dir_of(const char *path)
{
	char		dir[MAXPGPATH];

	strlcpy(dir, path, sizeof(dir));
	get_parent_directory(dir);
	if (dir[0] == '\0')
		strlcpy(dir, ".", sizeof(dir));
	fsync_fname(dir, true);
}

/* Write the keyring atomically and durably: temp file, fsync, rename, fsync dir. */
static void
keyring_write(const char *path, const LocalKeyring *kr)
{
	char		tmp[MAXPGPATH];
	StringInfoData s;
	int			fd;
	ssize_t		done = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, MyProcPid);
	initStringInfo(&s);
	keyring_serialize(kr, &s);

	fd = OpenTransientFilePerm(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, S_IRUSR | S_IWUSR);
	if (fd < 0)
	{
		explicit_bzero(s.data, s.len);
		ereport(ERROR, (errcode_for_file_access(),
						errmsg("could not create \"%s\": %m", tmp)));
	}
	while (done < s.len)
	{
		ssize_t		w = write(fd, s.data + done, s.len - done);

		if (w <= 0)
		{
			int			save = errno ? errno : ENOSPC;

			CloseTransientFile(fd);
			unlink(tmp);
			explicit_bzero(s.data, s.len);
			errno = save;
			ereport(ERROR, (errcode_for_file_access(),
							errmsg("could not write \"%s\": %m", tmp)));
		}
		done += w;
	}
	explicit_bzero(s.data, s.len);
	pfree(s.data);
	if (pg_fsync(fd) != 0)
	{
		int			save = errno;

		CloseTransientFile(fd);
		unlink(tmp);
		errno = save;
		ereport(ERROR, (errcode_for_file_access(), errmsg("could not fsync \"%s\": %m", tmp)));
	}
	CloseTransientFile(fd);
	if (rename(tmp, path) != 0)
	{
		int			save = errno;

		unlink(tmp);
		errno = save;
		ereport(ERROR, (errcode_for_file_access(),
						errmsg("could not rename \"%s\" to \"%s\": %m", tmp, path)));
	}
	fsync_dir_of(path);
}

typedef void (*keyring_change_fn) (LocalKeyring *kr, void *arg);

/*
 * Apply change to the keyring under the exclusive file lock.  A missing
 * keyring is created only when create_if_missing (kms_create_key).
 */
static void
keyring_modify(keyring_change_fn change, void *arg, bool create_if_missing)
{
	const char *path = kms_guc_keyring_path();
	char		lockpath[MAXPGPATH];
	int			lockfd;
	MemoryContext tmpcxt;
	MemoryContext old;
	LocalKeyring *volatile kr_v;
	struct stat lst;
	bool		had_keyring;

	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("the kms_pg local keyring cannot be changed during recovery"),
				 errhint("Change keys on the primary; standbys receive the keyring with base backups.")));

	snprintf(lockpath, sizeof(lockpath), "%s.lock", path);

	/*
	 * The lock file is created with the keyring and never removed: if it
	 * exists while the keyring does not, the keyring was lost, and making a
	 * new one would orphan every value under the old keys.
	 */
	had_keyring = (stat(lockpath, &lst) == 0);
	lockfd = OpenTransientFilePerm(lockpath, O_RDWR | O_CREAT | PG_BINARY, S_IRUSR | S_IWUSR);
	if (lockfd < 0)
		ereport(ERROR, (errcode_for_file_access(),
						errmsg("could not open \"%s\": %m", lockpath)));

	tmpcxt = AllocSetContextCreate(CurrentMemoryContext, "kms_pg keyring change",
								   ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(tmpcxt);
	kr_v = NULL;
	PG_TRY();
	{
		LocalKeyring *kr = palloc0(sizeof(LocalKeyring));
		struct stat st;
		char	   *text;

		kr_v = kr;

		if (flock(lockfd, LOCK_EX) != 0)
			ereport(ERROR, (errcode_for_file_access(),
							errmsg("could not lock \"%s\": %m", lockpath)));
		text = read_keyring_file(path, &st);
		if (text == NULL && !create_if_missing)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("kms_pg local keyring \"%s\" does not exist", path)));
		if (text == NULL && had_keyring)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("kms_pg local keyring \"%s\" is missing but existed before", path),
					 errdetail("Its lock file \"%s\" is still there; values encrypted under its keys cannot be decrypted without it.",
							   lockpath),
					 errhint("Restore the keyring from backup. To start a new, empty keyring on purpose, remove the lock file first.")));
		if (text != NULL)
		{
			keyring_parse(text, path, kr);
			explicit_bzero(text, strlen(text));
		}
		change(kr, arg);
		keyring_write(path, kr);
	}
	PG_FINALLY();
	{
		/* wipe root key material before the scratch context goes away */
		keyring_wipe(kr_v);
		MemoryContextSwitchTo(old);
		MemoryContextDelete(tmpcxt);
		CloseTransientFile(lockfd);		/* releases the flock */
		keyring_forget();
	}
	PG_END_TRY();
}

typedef struct CreateArgs
{
	const char *alias;
	const char *description;
	char		key_id[37];
} CreateArgs;

static void
format_uuid_v4(char *out)
{
	uint8		u[16];
	static const char hex[] = "0123456789abcdef";
	int			o = 0;

	if (RAND_bytes(u, sizeof(u)) != 1)
		kms_report_openssl_error("RAND_bytes");
	u[6] = (u[6] & 0x0f) | 0x40;
	u[8] = (u[8] & 0x3f) | 0x80;
	for (int i = 0; i < 16; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[u[i] >> 4];
		out[o++] = hex[u[i] & 15];
	}
	out[o] = '\0';
}

static void
create_change(LocalKeyring *kr, void *arg)
{
	CreateArgs *a = (CreateArgs *) arg;
	LocalKey   *k;
	TimestampTz now = GetCurrentTimestamp();

	if (a->alias && keyring_find(kr, a->alias) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("kms_pg local key alias \"%s\" already exists", a->alias)));
	kr->keys = kr->nkeys == 0 ? palloc0(sizeof(LocalKey))
		: repalloc(kr->keys, sizeof(LocalKey) * (kr->nkeys + 1));
	k = &kr->keys[kr->nkeys];
	memset(k, 0, sizeof(*k));
	format_uuid_v4(k->key_id);
	k->alias = a->alias ? pstrdup(a->alias) : NULL;
	k->description = a->description ? pstrdup(a->description) : NULL;
	k->enabled = true;
	k->created = now;
	k->nversions = 1;
	k->versions = palloc0(sizeof(LocalKeyVersion));
	k->versions[0].version = 1;
	k->versions[0].created = now;
	if (RAND_bytes(k->versions[0].material, KMS_DEK_LEN) != 1)
		kms_report_openssl_error("RAND_bytes");
	kr->nkeys++;
	strlcpy(a->key_id, k->key_id, sizeof(a->key_id));
}

static void
validate_alias(const char *alias)
{
	size_t		len = strlen(alias);

	if (strncmp(alias, "alias/", 6) != 0 || len <= 6 || len > 256)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid key alias \"%s\"", alias),
				 errdetail("An alias is written as in AWS KMS: \"alias/\" followed by 1 to 250 characters.")));
	if (strncmp(alias, "alias/aws/", 10) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key alias \"%s\" uses the reserved prefix alias/aws/", alias)));
	for (const char *p = alias + 6; *p; p++)
		if (!(isalnum((unsigned char) *p) || *p == '/' || *p == '_' || *p == '-'))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid key alias \"%s\"", alias),
					 errdetail("Alias names may contain letters, digits, '/', '_' and '-'.")));
}

char *
kms_local_create_key(const char *alias, const char *description)
{
	CreateArgs	a;

	if (alias)
		validate_alias(alias);
	a.alias = alias;
	a.description = description;
	a.key_id[0] = '\0';
	if (kms_catalog_present())
	{
		LocalKey	k;
		LocalKeyVersion *v;

		kms_catalog_require_writable();
		if (alias && kms_catalog_load_key(alias, false) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("kms_pg local key alias \"%s\" already exists", alias)));
		memset(&k, 0, sizeof(k));
		format_uuid_v4(k.key_id);
		k.alias = (char *) alias;
		k.description = (char *) description;
		k.enabled = true;
		k.created = GetCurrentTimestamp();
		k.nversions = 1;
		v = k.versions = kms_secure_palloc(sizeof(LocalKeyVersion));
		v->version = 1;
		v->created = k.created;
		if (RAND_bytes(v->material, KMS_DEK_LEN) != 1)
			kms_report_openssl_error("RAND_bytes");
		kms_catalog_insert_key(&k);
		explicit_bzero(v, sizeof(*v));
		return pstrdup(k.key_id);
	}
	keyring_modify(create_change, &a, true);
	return pstrdup(a.key_id);
}

/* A catalog key by id, alias or ARN form (without material), or ERROR. */
static LocalKey *
catalog_key_or_error(const char *key)
{
	LocalKey   *lk = kms_catalog_load_key(key, false);

	if (lk == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("kms_pg local key \"%s\" does not exist", key),
				 errhint("See the kms_keys view for the keys of the local keyring.")));
	return lk;
}

typedef struct EnableArgs
{
	const char *key;
	bool		enabled;
	int			new_version;
} EnableArgs;

static void
enable_change(LocalKeyring *kr, void *arg)
{
	EnableArgs *a = (EnableArgs *) arg;

	keyring_find_or_error(kr, a->key)->enabled = a->enabled;
}

void
kms_local_set_enabled(const char *key, bool enabled)
{
	EnableArgs	a = {key, enabled, 0};

	if (kms_catalog_present())
	{
		LocalKey   *lk;

		kms_catalog_require_writable();
		lk = catalog_key_or_error(key);
		if (enabled && lk->pending_deletion)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("kms_pg local key \"%s\" is pending deletion", lk->key_id),
					 errdetail("It is scheduled for deletion at %s.", timestamptz_to_str(lk->deletion_date)),
					 errhint("A superuser can cancel the deletion with kms_cancel_key_deletion() and then enable the key.")));
		kms_catalog_set_enabled(lk->key_id, enabled);
		return;
	}
	keyring_modify(enable_change, &a, false);
}

static void
rotate_change(LocalKeyring *kr, void *arg)
{
	EnableArgs *a = (EnableArgs *) arg;
	LocalKey   *k = keyring_find_or_error(kr, a->key);
	LocalKeyVersion *v;

	k->versions = repalloc(k->versions, sizeof(LocalKeyVersion) * (k->nversions + 1));
	v = &k->versions[k->nversions];
	v->version = k->versions[k->nversions - 1].version + 1;
	v->created = GetCurrentTimestamp();
	if (RAND_bytes(v->material, KMS_DEK_LEN) != 1)
		kms_report_openssl_error("RAND_bytes");
	k->nversions++;
	a->new_version = v->version;
}

int
kms_local_rotate_key(const char *key)
{
	EnableArgs	a = {key, true, 0};

	if (kms_catalog_present())
	{
		kms_catalog_require_writable();
		return kms_catalog_add_version(catalog_key_or_error(key)->key_id);
	}
	keyring_modify(rotate_change, &a, false);
	return a.new_version;
}

char *
kms_local_key_id(const char *key)
{
	if (!kms_catalog_present())
		return pstrdup(keyring_find_or_error(keyring_get(), key)->key_id);
	return pstrdup(catalog_key_or_error(key)->key_id);
}

/* The keyring catalog, or an error saying the extension must be updated. */
static void
require_catalog(void)
{
	if (!kms_catalog_present())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("this kms_pg keyring is still the 1.0 keyring file"),
				 errhint("Run ALTER EXTENSION kms_pg UPDATE to move it into the keyring catalog.")));
	kms_catalog_require_writable();
}

TimestampTz
kms_local_schedule_deletion(const char *key, int pending_days, const char **key_id_out)
{
	LocalKey   *lk;
	TimestampTz when;

	require_catalog();
	lk = catalog_key_or_error(key);
	if (lk->pending_deletion)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kms_pg local key \"%s\" is pending deletion", lk->key_id),
				 errdetail("It is scheduled for deletion at %s.", timestamptz_to_str(lk->deletion_date))));
	when = GetCurrentTransactionStartTimestamp() + (TimestampTz) pending_days * USECS_PER_DAY;
	kms_catalog_set_deletion(lk->key_id, true, when);
	*key_id_out = pstrdup(lk->key_id);
	return when;
}

void
kms_local_cancel_deletion(const char *key)
{
	LocalKey   *lk;

	require_catalog();
	lk = catalog_key_or_error(key);
	if (!lk->pending_deletion)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kms_pg local key \"%s\" is not pending deletion", lk->key_id)));
	kms_catalog_set_deletion(lk->key_id, false, 0);
}

int
kms_local_purge_deleted(void)
{
	require_catalog();
	return kms_catalog_purge();
}

int
kms_local_rotate_master_key(void)
{
	require_catalog();
	return kms_catalog_rewrap_all();
}

/*
 * Copy every key of the 1.0 keyring file into the catalog (keys already
 * there are skipped); returns how many were copied.  No file: nothing to
 * do, unless its lock file shows that a keyring existed and was lost.
 */
int
kms_local_import_keyring_file(void)
{
	const char *path = kms_guc_keyring_path();
	char		lockpath[MAXPGPATH];
	struct stat st;
	char	   *text;
	LocalKeyring *kr;
	MemoryContext tmp;
	MemoryContext old;
	int			n = 0;

	require_catalog();
	snprintf(lockpath, sizeof(lockpath), "%s.lock", path);
	text = read_keyring_file(path, &st);
	if (text == NULL)
	{
		if (stat(lockpath, &st) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("kms_pg local keyring \"%s\" is missing but existed before", path),
					 errdetail("Its lock file \"%s\" is still there; values encrypted under its keys cannot be decrypted without it.",
							   lockpath),
					 errhint("Restore the keyring from backup. To start a new, empty keyring on purpose, remove the lock file first.")));
		return 0;
	}
	/* parsed material lives in wipe-on-reset memory */
	tmp = AllocSetContextCreate(CurrentMemoryContext, "kms_pg keyring import", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(tmp);
	kr = palloc0(sizeof(LocalKeyring));
	PG_TRY();
	{
		keyring_parse(text, path, kr);
		explicit_bzero(text, strlen(text));
		for (int i = 0; i < kr->nkeys; i++)
		{
			LocalKey   *k = &kr->keys[i];

			if (kms_catalog_load_key(k->key_id, false) != NULL)
				continue;
			if (k->alias && kms_catalog_load_key(k->alias, false) != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_OBJECT),
						 errmsg("kms_pg local key alias \"%s\" already exists", k->alias)));
			kms_catalog_insert_key(k);
			n++;
		}
	}
	PG_FINALLY();
	{
		explicit_bzero(text, strlen(text));
		keyring_wipe(kr);
		MemoryContextSwitchTo(old);
		MemoryContextDelete(tmp);
	}
	PG_END_TRY();
	return n;
}

List *
kms_local_list_keys(void)
{
	LocalKeyring catalog_kr;
	LocalKeyring *kr;
	List	   *out = NIL;

	if (kms_catalog_present())
	{
		List	   *keys = kms_catalog_list_keys();
		ListCell   *lc;
		int			i = 0;

		catalog_kr.nkeys = list_length(keys);
		catalog_kr.keys = palloc0(sizeof(LocalKey) * Max(catalog_kr.nkeys, 1));
		foreach(lc, keys)
			catalog_kr.keys[i++] = *(LocalKey *) lfirst(lc);
		kr = &catalog_kr;
	}
	else
		kr = keyring_get();

	for (int i = 0; i < kr->nkeys; i++)
	{
		LocalKey   *k = &kr->keys[i];
		KmsLocalKeyInfo *info = palloc0(sizeof(KmsLocalKeyInfo));

		strlcpy(info->key_id, k->key_id, sizeof(info->key_id));
		info->alias = k->alias ? pstrdup(k->alias) : NULL;
		info->description = k->description ? pstrdup(k->description) : NULL;
		info->enabled = k->enabled;
		info->pending_deletion = k->pending_deletion;
		info->deletion_date = k->deletion_date;
		info->created = k->created;
		info->current_version = k->nversions > 0 ? k->versions[k->nversions - 1].version : 0;
		info->nversions = k->nversions;
		out = lappend(out, info);
	}
	return out;
}
