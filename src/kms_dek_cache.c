/*-------------------------------------------------------------------------
 * kms_dek_cache.c
 *	  Shared-memory cache of plaintext data keys (DEKs), single-flight
 *	  filling across processes, limits, expiry, wiping and statistics.
 *
 * Two levels:
 *	- The shared level: kms_pg.cache_entries slots in shared memory, each
 *	  holding one plaintext DEK, found through a partitioned shared hash
 *	  index by SHA-256 identities: the decrypt identity is (provider, key
 *	  id, provider-context names, wrapped DEK) and the encrypt identity is
 *	  (provider, requested key, canonical provider context).  A DEK made
 *	  for encryption carries both.
 *	- The local level: each backend keeps keyed OpenSSL contexts for the
 *	  DEKs it uses, found by a 64-bit hash of the same identities, and
 *	  validated on every use against the slot's generation (bumped
 *	  whenever the slot is wiped) with one atomic read and no lock.
 *
 * Shape (PostgreSQL's buffer manager is the model: buf_table.c, freelist.c):
 *	- The index is a shared dynahash with HASH_PARTITION: an identity's
 *	  hash picks one of KMS_CACHE_PARTITIONS partitions, each with its own
 *	  LWLock.  An entry maps an identity to a slot.
 *	- Slots are protected by KMS_SLOT_LOCKS striped LWLocks (slot i uses
 *	  stripe i % KMS_SLOT_LOCKS).  A slot records its identities, so a
 *	  lookup releases the partition lock before it locks the slot and then
 *	  checks that the slot still holds the identity (else it looks again).
 *	- Eviction is a clock sweep: an atomic hand, a usage count per slot
 *	  (raised on use, up to KMS_MAX_USAGE, lowered by the passing hand); a
 *	  slot is taken when its count is zero, or when it has expired.  Expiry
 *	  is checked lazily: on access and by the hand, never by a scan.
 *	- v1 envelope headers (needed only to encrypt) live in a byte ring
 *	  beside the slots; a slot records where its header starts.  A header
 *	  the ring has overwritten makes that slot decrypt-only.  Key names
 *	  (for forgetting one key's DEKs and for key state checks) live in a
 *	  small table of distinct names, fill errors in a small ring keyed by
 *	  slot and generation, so that a slot stays within 256 bytes.
 *
 * Locking protocol: slot stripe lock before partition lock before the misc
 * lock (key names, key checks, fill errors); never two stripes or two
 * partitions at once.  An index entry is added or removed only by a holder
 * of its slot's stripe lock, exclusively, together with the slot's record
 * of the identity, so "slot holds id" and "index maps id to slot" change
 * together.  Hits take one partition lock and one stripe lock, shared; a
 * miss also takes a few stripes conditionally (the clock hand skips busy
 * ones) and its partition exclusively.  Flush, forget-key and stats walk
 * the slots one stripe acquisition at a time.  No lock is held across a
 * provider call: a missing DEK is marked FILLING by the one backend that
 * will ask the provider (the insertion into the index under the partition
 * lock decides who), others wait on the slot's condition variable without
 * a lock and then find it READY (or FAILED with the filler's error).  A
 * filler that errors marks the slot FAILED (or frees it when it was
 * cancelled), and a before_shmem_exit callback frees a slot whose filler
 * exits, so no waiter is left behind.
 *
 * Limits: a DEK seals values until its age, value count or byte count
 * limit is reached (kms_pg.dek_max_*; 2^32 values is the hard ceiling for
 * random 96-bit nonces).  Backends reserve values and bytes from the
 * shared counters in small leases, so a limit is never exceeded, though a
 * DEK may retire slightly before it (unused leases are not returned).
 *
 * Hygiene: slots are wiped with explicit_bzero on eviction, expiry and
 * flush; the slot array is page-aligned and excluded from core dumps with
 * madvise(MADV_DONTDUMP).
 *-------------------------------------------------------------------------
 */
#include "kms_dek_cache.h"
#include "kms_dek_registry.h"
#include "kms_guc.h"
#include "kms_aws_json.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "access/xact.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define SLOT_FREE		0
#define SLOT_FILLING	1
#define SLOT_READY		2
#define SLOT_FAILED		3

#define KMS_SLOT_HEADER_MAX	2048
#define KMS_SLOT_KEY_MAX	256
#define KMS_ID_LEN			SHA256_DIGEST_LENGTH
#define KMS_LEASE_MESSAGES	64
#define KMS_LEASE_BYTES		((uint64) 1 << 20)
#define KMS_L1_MAX			256
#define KMS_STAT_FLUSH_EVERY 1024

#define KMS_CACHE_PARTITIONS 128	/* index partitions (power of 2) */
#define KMS_SLOT_LOCKS		128		/* slot lock stripes */
#define KMS_MAX_USAGE		3		/* clock sweep usage count ceiling */
#define KMS_HEADER_RING_PER_SLOT 128	/* header ring bytes per slot */
#define KMS_KEY_NAMES		1024	/* distinct key names recorded */
#define KMS_FAIL_RING		32		/* recent fill errors */
#define KMS_NO_KEY			0xFFFF	/* key name reference: none */
#define KMS_REUSE_LEASES	16		/* format 2: a DEK's budget in leases */

typedef struct KmsCacheSlot
{
	uint8		state;
	uint8		key_provider;
	bool		has_dec;
	bool		has_enc;
	bool		key_unknown;	/* a name was not recorded: any key matches */
	bool		has_header;
	bool		has_ref;		/* also found by its format 2 reference */
	uint16		names_ref;		/* has_ref: the registry row's name block (hex, as a key name) */
	Oid			ref_db;			/* has_ref: the database of dek_ref */
	uint64		dek_ref;		/* has_ref: the registry reference */
	uint16		key_id_ref;		/* wrapping key id as recorded in values */
	uint16		key_req_ref;	/* the key as requested for encryption */
	int32		filler_pid;
	int32		fail_sqlstate;
	int32		header_len;
	pg_atomic_uint32 generation;
	pg_atomic_uint32 usage;
	ConditionVariable cv;
	uint64		header_pos;		/* in the header ring */
	TimestampTz expires;
	pg_atomic_uint64 messages;
	pg_atomic_uint64 bytes;
	uint64		max_messages;
	uint64		max_bytes;
	uint8		dec_id[KMS_ID_LEN];
	uint8		enc_id[KMS_ID_LEN];
	uint8		dek[KMS_DEK_LEN];
} KmsCacheSlot;

StaticAssertDecl(sizeof(KmsCacheSlot) <= 256, "a cache slot must stay within 256 bytes");

/* A key name that cached DEKs refer to (refs > 0), and its last state check. */
typedef struct KmsKeyName
{
	uint32		refs;
	uint32		id_refs;		/* of refs: as the wrapping key id (state-checked) */
	uint32		hash;
	uint8		provider;
	bool		used;			/* ever used (probe chains continue past it) */
	TimestampTz checked_at;
	char		name[KMS_SLOT_KEY_MAX];
} KmsKeyName;

/* The error of a failed fill, for the waiters of that fill. */
typedef struct KmsFailRecord
{
	int			slot;
	uint32		generation;
	char		message[256];
} KmsFailRecord;

typedef struct KmsCacheShared
{
	LWLockPadded *part_locks;	/* KMS_CACHE_PARTITIONS */
	LWLockPadded *slot_locks;	/* KMS_SLOT_LOCKS */
	LWLock	   *misc_lock;		/* key names, fail ring */
	int			nslots;
	KmsCacheSlot *slots;		/* page-aligned, MADV_DONTDUMP */
	char	   *ring;			/* v1 headers */
	uint64		ring_size;
	pg_atomic_uint64 ring_reserved;
	pg_atomic_uint64 clock_hand;
	KmsKeyName	key_names[KMS_KEY_NAMES];
	KmsFailRecord fails[KMS_FAIL_RING];
	int			fail_next;
	/* thrash detection: valid evictions per kms_pg.cache_thrash_warning */
	pg_atomic_uint64 thrash_window_start;
	pg_atomic_uint64 thrash_window_evictions;
	pg_atomic_uint64 thrash_last_warning;
	pg_atomic_uint64 stat_hits;
	pg_atomic_uint64 stat_local_hits;
	pg_atomic_uint64 stat_misses;
	pg_atomic_uint64 stat_calls[KMS_STAT_NOPS];
	pg_atomic_uint64 stat_call_errors;
	pg_atomic_uint64 stat_coalesced;
	pg_atomic_uint64 stat_evictions;
	pg_atomic_uint64 stat_expirations;
	pg_atomic_uint64 stat_rotations;
	pg_atomic_uint64 stat_flushes;
	pg_atomic_uint64 stat_thrash_warnings;
} KmsCacheShared;

typedef struct KmsIndexEntry
{
	uint8		id[KMS_ID_LEN];
	int			slot;
} KmsIndexEntry;

static KmsCacheShared *kms_cache = NULL;
static HTAB *kms_cache_index = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

#define SLOT_LOCK(i)	(&kms_cache->slot_locks[(i) % KMS_SLOT_LOCKS].lock)
#define PART_LOCK(h)	(&kms_cache->part_locks[(h) % KMS_CACHE_PARTITIONS].lock)

/* ---- backend-local level ---- */

typedef struct KmsLocalDek
{
	uint64		hkey;			/* HTAB key */
	bool		is_enc;
	int			slot;			/* shared slot, or -1 when not shared */
	uint32		slot_gen;
	TimestampTz expires;
	/* leases (shared) or totals (local-only) */
	uint64		lease_messages;
	uint64		lease_bytes;
	uint64		max_messages;
	uint64		max_bytes;
	uint64		used_messages;	/* local-only entries */
	uint64		used_bytes;
	char	   *ident;
	int			ident_len;
	KmsDek		dek;
	uint8	   *header_buf;		/* encrypt: v1 header; by reference: provider, key id, names */
	int			info_len;		/* by reference: bytes in header_buf */
	bool		ref_noted;		/* encrypt: the slot was given its format 2 reference */
} KmsLocalDek;

static HTAB *kms_l1 = NULL;
static MemoryContext kms_l1_cxt = NULL;
static int	kms_filling_slot = -1;
static uint32 kms_filling_gen = 0;
static bool kms_exit_cb_registered = false;
static uint64 pending_local_hits = 0;
static bool xact_cb_registered = false;

/*
 * Rewrap memo of this backend: source wrapped DEK -> new wrapped DEK.  It
 * holds no plaintext, so it outlives transactions (kms_rotate_column
 * commits per batch; a DEK spanning batches still costs one provider call).
 * Entries expire like cached DEKs (kms_pg.dek_max_age); kms_cache_flush()
 * and the size cap empty it.
 */
#define KMS_REWRAP_MEMO_MAX 4096
static HTAB *kms_rewrap_memo = NULL;
static MemoryContext kms_rewrap_cxt = NULL;

static void
rewrap_memo_clear(void)
{
	if (kms_rewrap_cxt)
		MemoryContextReset(kms_rewrap_cxt);
	kms_rewrap_memo = NULL;
}

/*
 * Index entries: two identities per slot (decrypt, encrypt) plus one claim
 * per partition in flight, and a quarter more: a format 2 reference is
 * added only while the index holds fewer than two entries per slot, so a
 * claim always finds room (a decrypt-only v2 entry has two identities:
 * its decrypt identity and its reference).
 */
static long
kms_cache_index_size(void)
{
	return 2L * kms_guc_cache_entries + kms_guc_cache_entries / 4 + KMS_CACHE_PARTITIONS;
}

static Size
kms_cache_slots_size(void)
{
	return add_size(mul_size(sizeof(KmsCacheSlot), kms_guc_cache_entries), 2 * (Size) BLCKSZ * 2);
}

static Size
kms_cache_ring_size(void)
{
	return Max(mul_size(KMS_HEADER_RING_PER_SLOT, kms_guc_cache_entries), (Size) 65536);
}

/* Shared memory of the whole cache (what kms_cache_stats reports). */
static Size
kms_cache_memory_size(void)
{
	Size		sz = MAXALIGN(sizeof(KmsCacheShared));

	sz = add_size(sz, kms_cache_slots_size());
	sz = add_size(sz, kms_cache_ring_size());
	sz = add_size(sz, hash_estimate_size(kms_cache_index_size(), sizeof(KmsIndexEntry)));
	return sz;
}

static void
kms_cache_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(KmsCacheShared)));
	RequestAddinShmemSpace(kms_cache_slots_size());
	RequestAddinShmemSpace(kms_cache_ring_size());
	RequestAddinShmemSpace(hash_estimate_size(kms_cache_index_size(), sizeof(KmsIndexEntry)));
	RequestNamedLWLockTranche("kms_pg dek cache", KMS_CACHE_PARTITIONS + KMS_SLOT_LOCKS + 1);
}

static void
kms_cache_shmem_startup(void)
{
	bool		found;
	bool		found_slots;
	bool		found_ring;
	HASHCTL		info;
	char	   *raw;
	char	   *ring;
	Size		page = (Size) sysconf(_SC_PAGESIZE);

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	kms_cache = ShmemInitStruct("kms_pg dek cache", sizeof(KmsCacheShared), &found);
	raw = ShmemInitStruct("kms_pg dek cache slots", kms_cache_slots_size(), &found_slots);
	ring = ShmemInitStruct("kms_pg dek cache headers", kms_cache_ring_size(), &found_ring);
	if (!found)
	{
		Size		len = mul_size(sizeof(KmsCacheSlot), kms_guc_cache_entries);
		char	   *aligned = (char *) TYPEALIGN(page, raw);
		LWLockPadded *locks = GetNamedLWLockTranche("kms_pg dek cache");

		memset(kms_cache, 0, sizeof(KmsCacheShared));
		kms_cache->part_locks = locks;
		kms_cache->slot_locks = locks + KMS_CACHE_PARTITIONS;
		kms_cache->misc_lock = &locks[KMS_CACHE_PARTITIONS + KMS_SLOT_LOCKS].lock;
		kms_cache->nslots = kms_guc_cache_entries;
		kms_cache->slots = (KmsCacheSlot *) aligned;
		kms_cache->ring = ring;
		kms_cache->ring_size = kms_cache_ring_size();
		pg_atomic_init_u64(&kms_cache->ring_reserved, 0);
		pg_atomic_init_u64(&kms_cache->clock_hand, 0);
		memset(aligned, 0, len);
		for (int i = 0; i < kms_cache->nslots; i++)
		{
			KmsCacheSlot *s = &kms_cache->slots[i];

			s->state = SLOT_FREE;
			s->key_id_ref = s->key_req_ref = s->names_ref = KMS_NO_KEY;
			pg_atomic_init_u32(&s->generation, 1);
			pg_atomic_init_u32(&s->usage, 0);
			pg_atomic_init_u64(&s->messages, 0);
			pg_atomic_init_u64(&s->bytes, 0);
			ConditionVariableInit(&s->cv);
		}
		pg_atomic_init_u64(&kms_cache->thrash_window_start, 0);
		pg_atomic_init_u64(&kms_cache->thrash_window_evictions, 0);
		pg_atomic_init_u64(&kms_cache->thrash_last_warning, 0);
		pg_atomic_init_u64(&kms_cache->stat_hits, 0);
		pg_atomic_init_u64(&kms_cache->stat_local_hits, 0);
		pg_atomic_init_u64(&kms_cache->stat_misses, 0);
		for (int i = 0; i < KMS_STAT_NOPS; i++)
			pg_atomic_init_u64(&kms_cache->stat_calls[i], 0);
		pg_atomic_init_u64(&kms_cache->stat_call_errors, 0);
		pg_atomic_init_u64(&kms_cache->stat_coalesced, 0);
		pg_atomic_init_u64(&kms_cache->stat_evictions, 0);
		pg_atomic_init_u64(&kms_cache->stat_expirations, 0);
		pg_atomic_init_u64(&kms_cache->stat_rotations, 0);
		pg_atomic_init_u64(&kms_cache->stat_flushes, 0);
		pg_atomic_init_u64(&kms_cache->stat_thrash_warnings, 0);

		/* Plaintext DEKs must not end up in core dumps. */
		if (madvise(aligned, TYPEALIGN(page, len), MADV_DONTDUMP) != 0)
			ereport(LOG,
					(errmsg("kms_pg: could not exclude the data key cache from core dumps: %m"),
					 errhint("Disable core dumps of the server, or huge_pages, if data keys must never reach a dump.")));
	}

	memset(&info, 0, sizeof(info));
	info.keysize = KMS_ID_LEN;
	info.entrysize = sizeof(KmsIndexEntry);
	info.num_partitions = KMS_CACHE_PARTITIONS;
	kms_cache_index = ShmemInitHash("kms_pg dek cache index",
									kms_cache_index_size(), kms_cache_index_size(),
									&info, HASH_ELEM | HASH_BLOBS | HASH_PARTITION);
	LWLockRelease(AddinShmemInitLock);
}

void
kms_dek_cache_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = kms_cache_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = kms_cache_shmem_startup;
}

void
kms_dek_cache_require(void)
{
	if (kms_cache == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kms_pg must be loaded via shared_preload_libraries"),
				 errhint("Add kms_pg to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* ---- statistics ---- */

static void
flush_pending_stats(void)
{
	if (pending_local_hits > 0 && kms_cache)
	{
		pg_atomic_fetch_add_u64(&kms_cache->stat_local_hits, pending_local_hits);
		pending_local_hits = 0;
	}
}

static void
kms_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		flush_pending_stats();
	}
}

void
kms_stats_count_call(KmsStatOp op, bool failed)
{
	if (kms_cache == NULL)
		return;
	pg_atomic_fetch_add_u64(&kms_cache->stat_calls[op], 1);
	if (failed)
		pg_atomic_fetch_add_u64(&kms_cache->stat_call_errors, 1);
}

/* ---- key names (misc lock) ---- */

/*
 * A reference to name in the key name table, counted; KMS_NO_KEY when the
 * table is full or the name too long (the slot then matches any key when
 * one is forgotten: safe, merely broader).  Caller holds no misc lock.
 */
static uint16
key_name_ref(uint8 provider, const char *name, int len, bool as_id)
{
	uint32		h;
	int			cand = -1;
	uint16		ref = KMS_NO_KEY;

	if (len <= 0 || len >= KMS_SLOT_KEY_MAX)
		return KMS_NO_KEY;
	h = hash_bytes((const unsigned char *) name, len) ^ provider;
	LWLockAcquire(kms_cache->misc_lock, LW_EXCLUSIVE);
	for (int p = 0; p < KMS_KEY_NAMES; p++)
	{
		int			i = (h + p) % KMS_KEY_NAMES;
		KmsKeyName *k = &kms_cache->key_names[i];

		if (!k->used)
		{
			if (cand < 0)
				cand = i;
			break;
		}
		if (k->hash == h && k->provider == provider && strncmp(k->name, name, len) == 0 &&
			k->name[len] == '\0')
		{
			if (as_id && k->id_refs == 0)
				k->checked_at = GetCurrentTimestamp();
			k->refs++;
			if (as_id)
				k->id_refs++;
			ref = (uint16) i;
			break;
		}
		if (k->refs == 0 && cand < 0)
			cand = i;
	}
	if (ref == KMS_NO_KEY && cand >= 0)
	{
		KmsKeyName *k = &kms_cache->key_names[cand];

		k->used = true;
		k->hash = h;
		k->provider = provider;
		memcpy(k->name, name, len);
		k->name[len] = '\0';
		k->refs = 1;
		k->id_refs = as_id ? 1 : 0;
		/* first seen: its DEK came from KMS moments ago */
		k->checked_at = GetCurrentTimestamp();
		ref = (uint16) cand;
	}
	LWLockRelease(kms_cache->misc_lock);
	return ref;
}

static void
key_name_unref(uint16 ref, bool as_id)
{
	if (ref == KMS_NO_KEY)
		return;
	LWLockAcquire(kms_cache->misc_lock, LW_EXCLUSIVE);
	if (kms_cache->key_names[ref].refs > 0)
		kms_cache->key_names[ref].refs--;
	if (as_id && kms_cache->key_names[ref].id_refs > 0)
		kms_cache->key_names[ref].id_refs--;
	LWLockRelease(kms_cache->misc_lock);
}

/* ---- key state re-check (kms_pg.key_state_check_interval) ---- */

static TimestampTz next_key_check = 0;

/*
 * Ask KMS for the state of every AWS key that has cached DEKs and whose
 * state was last asked an interval ago or more, server-wide: the shared
 * record is claimed under the lock, so one DescribeKey per key per
 * interval, whatever the number of DEKs or backends.  A key that is not
 * Enabled loses its cached DEKs in every backend.  A failed check (KMS
 * unreachable) leaves the DEKs alone; it is tried again an interval later.
 * This walks the table of key names (a few), never the slots.
 */
static void
key_state_check(TimestampTz now)
{
	int64		interval_ms = (int64) kms_guc_key_state_check_interval * 1000;
	List	   *volatile due = NIL;
	ListCell   *lc;

	/* each backend looks 4 times per interval */
	next_key_check = TimestampTzPlusMilliseconds(now, Max(interval_ms / 4, 100));
	LWLockAcquire(kms_cache->misc_lock, LW_EXCLUSIVE);
	for (int i = 0; i < KMS_KEY_NAMES; i++)
	{
		KmsKeyName *k = &kms_cache->key_names[i];

		/* the wrapping key ids (ARNs) only: an alias names the same key */
		if (k->id_refs == 0 || k->provider != KMS_PROVIDER_AWS)
			continue;
		if (now - k->checked_at >= interval_ms * 1000)
		{
			k->checked_at = now;
			due = lappend(due, pstrdup(k->name));
		}
	}
	LWLockRelease(kms_cache->misc_lock);

	foreach(lc, due)
	{
		const char *key = lfirst(lc);
		MemoryContext old = CurrentMemoryContext;

		PG_TRY();
		{
			char	   *json = kms_provider_aws.describe_key(key);
			KmsAwsJsonField f[1] = {{.name = "KeyMetadata"}};
			KmsAwsJsonField st[1] = {{.name = "KeyState"}};

			if (kms_aws_json_extract(json, strlen(json), f, 1) == KMS_AWS_JSON_OK &&
				f[0].kind == KMS_AWS_JSON_OBJECT &&
				kms_aws_json_extract(f[0].value, f[0].len, st, 1) == KMS_AWS_JSON_OK &&
				st[0].kind == KMS_AWS_JSON_STRING && strcmp(st[0].value, "Enabled") != 0)
			{
				int			n = kms_dek_cache_forget_key(KMS_PROVIDER_AWS, key);

				ereport(LOG,
						(errmsg("kms_pg: KMS key \"%s\" is %s: dropped its %d cached data keys",
								key, st[0].value, n)));
			}
		}
		PG_CATCH();
		{
			ErrorData  *ed;

			MemoryContextSwitchTo(old);
			if (QueryCancelPending || ProcDiePending)
				PG_RE_THROW();
			ed = CopyErrorData();
			FlushErrorState();
			ereport(LOG,
					(errmsg("kms_pg: could not check the state of KMS key \"%s\": %s", key, ed->message)));
			FreeErrorData(ed);
		}
		PG_END_TRY();
	}
}

/* ---- header ring (lock-free: reserve, write, validate after reading) ---- */

/* Append a header; returns its position. */
static uint64
ring_write(const uint8 *data, int len)
{
	uint64		pos = pg_atomic_fetch_add_u64(&kms_cache->ring_reserved, (uint64) len);
	uint64		off = pos % kms_cache->ring_size;
	uint64		first = Min((uint64) len, kms_cache->ring_size - off);

	memcpy(kms_cache->ring + off, data, first);
	if (first < (uint64) len)
		memcpy(kms_cache->ring, data + first, len - first);
	pg_write_barrier();
	return pos;
}

/* Copy a header out; false when the ring has since overwritten it. */
static bool
ring_read(uint64 pos, int len, uint8 *out)
{
	uint64		off;
	uint64		first;

	if (pg_atomic_read_u64(&kms_cache->ring_reserved) - pos > kms_cache->ring_size)
		return false;
	off = pos % kms_cache->ring_size;
	first = Min((uint64) len, kms_cache->ring_size - off);
	memcpy(out, kms_cache->ring + off, first);
	if (first < (uint64) len)
		memcpy(out + first, kms_cache->ring, len - first);
	pg_read_barrier();
	return pg_atomic_read_u64(&kms_cache->ring_reserved) - pos <= kms_cache->ring_size;
}

/* ---- the index (partition lock; caller holds the slot's stripe lock exclusively) ---- */

static uint32
cache_index_hash(const uint8 *id)
{
	return get_hash_value(kms_cache_index, id);
}

/* Slot of id, or -1; takes the partition lock shared for the probe only. */
static int
cache_index_lookup(const uint8 *id, uint32 h)
{
	KmsIndexEntry *e;
	int			slot;

	LWLockAcquire(PART_LOCK(h), LW_SHARED);
	e = hash_search_with_hash_value(kms_cache_index, id, h, HASH_FIND, NULL);
	slot = e ? e->slot : -1;
	LWLockRelease(PART_LOCK(h));
	return slot;
}

static void
cache_index_remove(const uint8 *id)
{
	uint32		h = cache_index_hash(id);

	LWLockAcquire(PART_LOCK(h), LW_EXCLUSIVE);
	hash_search_with_hash_value(kms_cache_index, id, h, HASH_REMOVE, NULL);
	LWLockRelease(PART_LOCK(h));
}

/*
 * Map id to slot unless it is mapped already.  Returns the slot it maps
 * to afterwards: slot (added), another slot, or -1 when the index is full.
 */
static int
cache_index_insert(const uint8 *id, uint32 h, int slot)
{
	bool		found;
	KmsIndexEntry *e;
	int			r;

	LWLockAcquire(PART_LOCK(h), LW_EXCLUSIVE);
	e = hash_search_with_hash_value(kms_cache_index, id, h, HASH_ENTER_NULL, &found);
	if (e == NULL)
		r = -1;
	else
	{
		if (!found)
			e->slot = slot;
		r = e->slot;
	}
	LWLockRelease(PART_LOCK(h));
	return r;
}

/*
 * The identity of a format 2 DEK by reference: not a hash, the database and
 * the reference themselves (a reference names one registry row of one
 * database, and the DEK of a row never changes: rotation rewraps it).
 */
static void
ref_id(Oid db, uint64 ref, uint8 *out)
{
	memset(out, 0, KMS_ID_LEN);
	out[0] = 'K';
	out[1] = 'R';
	memcpy(out + 2, &db, sizeof(db));
	memcpy(out + 2 + sizeof(db), &ref, sizeof(ref));
}

static bool
slot_holds(KmsCacheSlot *s, const uint8 *id)
{
	if (s->has_ref && id[0] == 'K' && id[1] == 'R')
	{
		uint8		rid[KMS_ID_LEN];

		ref_id(s->ref_db, s->dek_ref, rid);
		if (memcmp(rid, id, KMS_ID_LEN) == 0)
			return true;
	}
	return (s->has_dec && memcmp(s->dec_id, id, KMS_ID_LEN) == 0) ||
		(s->has_enc && memcmp(s->enc_id, id, KMS_ID_LEN) == 0);
}

/* ---- slot management (caller holds the slot's stripe lock exclusively) ---- */

/* Wipe and free a slot; bumps its generation so local copies retire. */
static void
slot_clear(KmsCacheSlot *s)
{
	if (s->has_dec)
		cache_index_remove(s->dec_id);
	if (s->has_enc)
		cache_index_remove(s->enc_id);
	if (s->has_ref)
	{
		uint8		rid[KMS_ID_LEN];

		ref_id(s->ref_db, s->dek_ref, rid);
		cache_index_remove(rid);
		key_name_unref(s->names_ref, false);
		s->names_ref = KMS_NO_KEY;
		s->has_ref = false;
	}
	explicit_bzero(s->dek, sizeof(s->dek));
	s->has_dec = s->has_enc = false;
	s->has_header = false;
	s->header_len = 0;
	key_name_unref(s->key_id_ref, true);
	key_name_unref(s->key_req_ref, false);
	s->key_id_ref = s->key_req_ref = KMS_NO_KEY;
	s->key_unknown = false;
	s->filler_pid = 0;
	s->state = SLOT_FREE;
	pg_atomic_write_u32(&s->usage, 0);
	pg_atomic_fetch_add_u32(&s->generation, 1);
}

static void
slot_retire_encrypt(KmsCacheSlot *s)
{
	if (s->has_enc)
	{
		cache_index_remove(s->enc_id);
		s->has_enc = false;
		s->has_header = false;
		pg_atomic_fetch_add_u64(&kms_cache->stat_rotations, 1);
	}
}

/* Valid evictions in the current thrash window reached capacity: report it once per interval. */
static int64 thrash_report_evictions = 0;
static int	thrash_report_secs = 0;

static void
thrash_count(TimestampTz now)
{
	int64		interval_us = (int64) kms_guc_cache_thrash_warning * USECS_PER_SEC;
	uint64		start = pg_atomic_read_u64(&kms_cache->thrash_window_start);
	uint64		n;
	uint64		last;

	if (interval_us <= 0)
		return;
	if (start == 0 || now - (TimestampTz) start >= interval_us)
	{
		/* a new window; whoever swaps the start resets the count */
		if (pg_atomic_compare_exchange_u64(&kms_cache->thrash_window_start, &start, (uint64) now))
			pg_atomic_write_u64(&kms_cache->thrash_window_evictions, 0);
		start = pg_atomic_read_u64(&kms_cache->thrash_window_start);
	}
	n = pg_atomic_add_fetch_u64(&kms_cache->thrash_window_evictions, 1);
	if (n < (uint64) kms_cache->nslots)
		return;
	last = pg_atomic_read_u64(&kms_cache->thrash_last_warning);
	if (last != 0 && now - (TimestampTz) last < interval_us)
		return;
	if (!pg_atomic_compare_exchange_u64(&kms_cache->thrash_last_warning, &last, (uint64) now))
		return;
	thrash_report_evictions = (int64) n;
	thrash_report_secs = (int) Max((now - (TimestampTz) start) / USECS_PER_SEC, 1);
}

/* After the locks are released: the thrash message, if this backend owes it. */
static void
thrash_report(void)
{
	int64		fit;
	int64		want;

	if (thrash_report_evictions == 0)
		return;
	/* the working set is at least the capacity plus what it pushed out */
	want = (int64) kms_cache->nslots + thrash_report_evictions;
	fit = 16;
	while (fit < want && fit < 1048576)
		fit *= 2;
	pg_atomic_fetch_add_u64(&kms_cache->stat_thrash_warnings, 1);
	ereport(LOG,
			(errmsg("kms_pg: the data key cache evicted %lld valid data keys within %d seconds",
					(long long) thrash_report_evictions, thrash_report_secs),
			 errdetail("Data keys are evicted before they expire, so they are fetched from the key provider again; kms_pg.cache_entries is %d.",
					   kms_cache->nslots),
			 errhint("Consider increasing the configuration parameter \"kms_pg.cache_entries\" to %lld.",
					 (long long) fit)));
	thrash_report_evictions = 0;
}

/*
 * A free slot, by the clock sweep; returned with its stripe lock held
 * exclusively, or -1 when every slot is busy filling.  Amortized O(1): the
 * hand passes each slot at most KMS_MAX_USAGE + 1 times before it is taken.
 */
static int
slot_allocate(TimestampTz now)
{
	uint64		tries = (uint64) kms_cache->nslots * (KMS_MAX_USAGE + 2);

	for (uint64 t = 0; t < tries; t++)
	{
		int			i = (int) (pg_atomic_fetch_add_u64(&kms_cache->clock_hand, 1) % kms_cache->nslots);
		KmsCacheSlot *s = &kms_cache->slots[i];
		uint32		u = pg_atomic_read_u32(&s->usage);

		/* a used, unexpired READY slot: lower its count and pass (no lock) */
		if (u > 0 && s->state == SLOT_READY && now < s->expires)
		{
			pg_atomic_compare_exchange_u32(&s->usage, &u, u - 1);
			continue;
		}
		if (s->state == SLOT_FILLING)
			continue;
		if (!LWLockConditionalAcquire(SLOT_LOCK(i), LW_EXCLUSIVE))
			continue;
		switch (s->state)
		{
			case SLOT_FREE:
				return i;
			case SLOT_FAILED:
				if (s->filler_pid == 0)
				{
					slot_clear(s);
					return i;
				}
				break;
			case SLOT_READY:
				if (now >= s->expires)
				{
					slot_clear(s);
					pg_atomic_fetch_add_u64(&kms_cache->stat_expirations, 1);
					return i;
				}
				if (pg_atomic_read_u32(&s->usage) == 0)
				{
					slot_clear(s);
					pg_atomic_fetch_add_u64(&kms_cache->stat_evictions, 1);
					thrash_count(now);
					return i;
				}
				break;
			default:
				break;
		}
		LWLockRelease(SLOT_LOCK(i));
	}
	return -1;
}

/* Record a fill error for the waiters of (slot, generation). */
static void
fail_record(int slot, uint32 gen, const char *message)
{
	KmsFailRecord *f;

	LWLockAcquire(kms_cache->misc_lock, LW_EXCLUSIVE);
	f = &kms_cache->fails[kms_cache->fail_next];
	kms_cache->fail_next = (kms_cache->fail_next + 1) % KMS_FAIL_RING;
	f->slot = slot;
	f->generation = gen;
	strlcpy(f->message, message ? message : "", sizeof(f->message));
	LWLockRelease(kms_cache->misc_lock);
}

static bool
fail_lookup(int slot, uint32 gen, char *out, Size outlen)
{
	bool		found = false;

	LWLockAcquire(kms_cache->misc_lock, LW_SHARED);
	for (int i = 0; i < KMS_FAIL_RING; i++)
	{
		KmsFailRecord *f = &kms_cache->fails[i];

		if (f->slot == slot && f->generation == gen && f->message[0] != '\0')
		{
			strlcpy(out, f->message, outlen);
			found = true;
			break;
		}
	}
	LWLockRelease(kms_cache->misc_lock);
	return found;
}

/* A filler leaving without an answer frees its slot so waiters retry. */
static void
release_filling_slot(bool keep_error, int sqlstate, const char *message)
{
	KmsCacheSlot *s;
	int			idx = kms_filling_slot;

	if (idx < 0 || kms_cache == NULL)
		return;
	s = &kms_cache->slots[idx];
	LWLockAcquire(SLOT_LOCK(idx), LW_EXCLUSIVE);
	if (s->state == SLOT_FILLING && s->filler_pid == MyProcPid &&
		pg_atomic_read_u32(&s->generation) == kms_filling_gen)
	{
		if (keep_error)
		{
			/* waiters of this fill get the same error; the slot is reusable */
			if (s->has_dec)
				cache_index_remove(s->dec_id);
			if (s->has_enc)
				cache_index_remove(s->enc_id);
			s->has_dec = s->has_enc = false;
			s->state = SLOT_FAILED;
			s->filler_pid = 0;
			s->fail_sqlstate = sqlstate;
			fail_record(idx, kms_filling_gen, message);
		}
		else
			slot_clear(s);
	}
	LWLockRelease(SLOT_LOCK(idx));
	ConditionVariableBroadcast(&s->cv);
	kms_filling_slot = -1;
}

static void
kms_cache_before_exit(int code, Datum arg)
{
	release_filling_slot(false, 0, NULL);
}

/* A use of a slot: raise its usage count for the clock sweep. */
static inline void
slot_touch(KmsCacheSlot *s)
{
	uint32		u = pg_atomic_read_u32(&s->usage);

	if (u < KMS_MAX_USAGE)
		pg_atomic_compare_exchange_u32(&s->usage, &u, u + 1);
}

/* ---- local level ---- */

/* A backend-local hash table keyed by a 64-bit hash, in cxt. */
static HTAB *
local_hash_create(const char *name, Size entrysize, MemoryContext cxt)
{
	HASHCTL		info;

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(uint64);
	info.entrysize = entrysize;
	info.hcxt = cxt;
	return hash_create(name, 64, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

static void
l1_init(void)
{
	if (kms_l1 != NULL)
		return;
	kms_l1_cxt = AllocSetContextCreate(TopMemoryContext, "kms_pg local data keys",
									   ALLOCSET_DEFAULT_SIZES);
	kms_l1 = local_hash_create("kms_pg local data keys", sizeof(KmsLocalDek), kms_l1_cxt);
	if (!xact_cb_registered)
	{
		RegisterXactCallback(kms_xact_callback, NULL);
		xact_cb_registered = true;
	}
}

/*
 * The decrypt entry used last: rows of one statement usually share a DEK,
 * so the next value is checked against it before building its identity
 * and probing the hash table.  Cleared whenever that entry is wiped.
 */
static KmsLocalDek *last_dec = NULL;

static void
l1_entry_wipe(KmsLocalDek *e)
{
	if (e == last_dec)
		last_dec = NULL;
	if (e->dek.ctx)
		EVP_CIPHER_CTX_free(e->dek.ctx);	/* cleanses the key schedule */
	e->dek.ctx = NULL;
	if (e->ident)
		pfree(e->ident);
	if (e->header_buf)
		pfree(e->header_buf);
	e->ident = NULL;
	e->header_buf = NULL;
}

static void
l1_remove(KmsLocalDek *e)
{
	uint64		k = e->hkey;

	l1_entry_wipe(e);
	hash_search(kms_l1, &k, HASH_REMOVE, NULL);
}

static void
l1_clear(void)
{
	HASH_SEQ_STATUS st;
	KmsLocalDek *e;

	if (kms_l1 == NULL)
		return;
	hash_seq_init(&st, kms_l1);
	while ((e = hash_seq_search(&st)) != NULL)
	{
		l1_entry_wipe(e);
		hash_search(kms_l1, &e->hkey, HASH_REMOVE, NULL);
	}
}

/* A fresh local entry for hkey holding a copy of dek (wiped by the caller). */
static KmsLocalDek *
l1_insert(uint64 hkey, bool is_enc, const char *ident, int ident_len, const uint8 *dek,
		  const uint8 *header, int header_len, int slot, uint32 slot_gen,
		  TimestampTz expires, uint64 max_messages, uint64 max_bytes)
{
	KmsLocalDek *e;
	bool		found;
	MemoryContext old;

	if (hash_get_num_entries(kms_l1) >= KMS_L1_MAX)
		l1_clear();
	e = hash_search(kms_l1, &hkey, HASH_ENTER, &found);
	if (found)
		l1_entry_wipe(e);
	memset(((char *) e) + sizeof(uint64), 0, sizeof(KmsLocalDek) - sizeof(uint64));
	e->is_enc = is_enc;
	e->slot = slot;
	e->slot_gen = slot_gen;
	e->expires = expires;
	e->max_messages = max_messages;
	e->max_bytes = max_bytes;
	e->dek.max_messages = max_messages;
	e->dek.max_bytes = max_bytes;
	old = MemoryContextSwitchTo(kms_l1_cxt);
	e->ident = palloc(ident_len);
	memcpy(e->ident, ident, ident_len);
	e->ident_len = ident_len;
	if (header)
	{
		e->header_buf = palloc(header_len);
		memcpy(e->header_buf, header, header_len);
		e->dek.header = e->header_buf;
		e->dek.header_len = header_len;
		kms_envelope_header_names(e->header_buf, header_len, &e->dek.names_off, &e->dek.names_len);
	}
	MemoryContextSwitchTo(old);
	PG_TRY();
	{
		e->dek.ctx = kms_gcm_context_new(dek, is_enc);
	}
	PG_CATCH();
	{
		l1_remove(e);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return e;
}

static KmsLocalDek *
l1_find(uint64 hkey, bool is_enc, const char *ident, int ident_len)
{
	KmsLocalDek *e = hash_search(kms_l1, &hkey, HASH_FIND, NULL);

	if (e == NULL)
		return NULL;
	if (e->is_enc != is_enc || e->ident_len != ident_len ||
		memcmp(e->ident, ident, ident_len) != 0)
		return NULL;
	return e;
}

/* Still usable: not expired, and the shared slot not wiped since copied. */
static bool
l1_valid(KmsLocalDek *e, TimestampTz now)
{
	if (now >= e->expires)
		return false;
	if (e->slot >= 0 &&
		pg_atomic_read_u32(&kms_cache->slots[e->slot].generation) != e->slot_gen)
		return false;
	return true;
}

/*
 * Take one value of nbytes from the entry's lease, renewing the lease
 * from the shared counters.  False when the DEK has reached a limit.
 */
static bool
l1_take(KmsLocalDek *e, uint64 nbytes)
{
	KmsCacheSlot *s;
	uint64		want_m;
	uint64		want_b;
	uint64		m;
	uint64		b;

	if (e->slot < 0)
	{
		if (e->used_messages + 1 > e->max_messages || e->used_bytes + nbytes > e->max_bytes)
			return false;
		e->used_messages++;
		e->used_bytes += nbytes;
		return true;
	}
	if (e->lease_messages >= 1 && e->lease_bytes >= nbytes)
	{
		e->lease_messages--;
		e->lease_bytes -= nbytes;
		return true;
	}

	s = &kms_cache->slots[e->slot];
	want_m = KMS_LEASE_MESSAGES;
	want_b = Max(nbytes, KMS_LEASE_BYTES);
	m = pg_atomic_fetch_add_u64(&s->messages, want_m);
	if (m >= e->max_messages)
		return false;
	if (m + want_m > e->max_messages)
		want_m = e->max_messages - m;
	b = pg_atomic_fetch_add_u64(&s->bytes, want_b);
	if (b + nbytes > e->max_bytes)
		return false;
	if (b + want_b > e->max_bytes)
		want_b = e->max_bytes - b;
	slot_touch(s);
	e->lease_messages = want_m - 1;
	e->lease_bytes = want_b - nbytes;
	return true;
}

/* ---- identities ---- */

static void
sha256_id(char type, const char *ident, int len, uint8 *out)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int outl;
	Oid			db = MyDatabaseId;

	/*
	 * The shared level is shared by every database of the cluster, but key
	 * names, local keys and the provider settings (ALTER DATABASE ... SET)
	 * belong to one database: the database is part of every identity, so
	 * an alias of one database never finds another database's DEK, and a
	 * value copied from another database never opens from its warm cache.
	 */
	if (md == NULL ||
		EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
		EVP_DigestUpdate(md, &db, sizeof(db)) != 1 ||
		EVP_DigestUpdate(md, &type, 1) != 1 ||
		EVP_DigestUpdate(md, ident, len) != 1 ||
		EVP_DigestFinal_ex(md, out, &outl) != 1)
	{
		EVP_MD_CTX_free(md);
		kms_report_openssl_error("SHA-256");
	}
	EVP_MD_CTX_free(md);
}

/* ident = provider byte, key, NUL, tail */
static char *
build_ident(uint8 provider, const char *key, int keylen, const void *tail, int taillen,
			char *stackbuf, int stacklen, int *len)
{
	int			n = 1 + keylen + 1 + taillen;
	char	   *b = n <= stacklen ? stackbuf : palloc(n);

	b[0] = (char) provider;
	memcpy(b + 1, key, keylen);
	b[1 + keylen] = '\0';
	if (taillen > 0)
		memcpy(b + 2 + keylen, tail, taillen);
	*len = n;
	return b;
}

/*
 * The decrypt identity of a DEK: provider, key id, the provider-context
 * name block it was wrapped under, and the wrapped DEK.  The names are part
 * of it so that a value recording other names than its DEK was wrapped
 * under (made by someone holding the DEK) misses the cache and goes to the
 * provider, which refuses it, exactly as it would with a cold cache.
 */
static char *
build_decrypt_ident(uint8 provider, const char *key, int keylen, const uint8 *names, int names_len,
					const uint8 *wrapped, int wrapped_len, char *stackbuf, int stacklen, int *len)
{
	int			n = 2 + keylen + names_len + wrapped_len;
	char	   *b = n <= stacklen ? stackbuf : palloc(n);

	b[0] = (char) provider;
	memcpy(b + 1, key, keylen);
	b[1 + keylen] = '\0';
	memcpy(b + 2 + keylen, names, names_len);
	memcpy(b + 2 + keylen + names_len, wrapped, wrapped_len);
	*len = n;
	return b;
}

/*
 * Let a READY slot holding the DEK of v2 value env (generation gen) be
 * found by env's reference too, with the key id the slot records and the
 * registry row's name block (kept as a key name, in hex).
 */
static void
slot_add_ref(int idx, uint32 gen, const KmsEnvelope *env)
{
	KmsCacheSlot *s = &kms_cache->slots[idx];
	char		hex[KMS_SLOT_KEY_MAX];
	int			hlen;
	uint8		rid[KMS_ID_LEN];
	static const char digits[] = "0123456789abcdef";

	if (s->has_ref || 1 + 2 * env->names_block_len >= KMS_SLOT_KEY_MAX)
		return;					/* unlocked pre-check; re-checked below */
	hex[0] = '#';
	for (int i = 0; i < env->names_block_len; i++)
	{
		hex[1 + 2 * i] = digits[env->names_block[i] >> 4];
		hex[2 + 2 * i] = digits[env->names_block[i] & 0xf];
	}
	hlen = 1 + 2 * env->names_block_len;
	/* never at the expense of decrypt and encrypt identities (approximate count) */
	if (hash_get_num_entries(kms_cache_index) >= 2L * kms_cache->nslots + KMS_CACHE_PARTITIONS)
		return;
	ref_id(MyDatabaseId, env->dek_ref, rid);
	LWLockAcquire(SLOT_LOCK(idx), LW_EXCLUSIVE);
	if (s->state == SLOT_READY && pg_atomic_read_u32(&s->generation) == gen && !s->has_ref &&
		!s->key_unknown && s->key_id_ref != KMS_NO_KEY && s->key_provider == env->provider)
	{
		uint16		nref = key_name_ref(env->provider, hex, hlen, false);

		if (nref != KMS_NO_KEY)
		{
			if (cache_index_insert(rid, cache_index_hash(rid), idx) == idx)
			{
				s->has_ref = true;
				s->names_ref = nref;
				s->ref_db = MyDatabaseId;
				s->dek_ref = env->dek_ref;
			}
			else
				key_name_unref(nref, false);
		}
	}
	LWLockRelease(SLOT_LOCK(idx));
}

/* ---- the fill protocol ---- */

typedef enum FillOutcome
{
	FILL_FOUND,					/* slot READY: copied */
	FILL_MINE,					/* we own a FILLING slot */
	FILL_UNSHARED				/* no slot available: caller fills without sharing */
} FillOutcome;

static bool
slot_usable(KmsCacheSlot *s, bool for_encrypt, TimestampTz now)
{
	return s->state == SLOT_READY && now < s->expires &&
		(!for_encrypt ||
		 (s->has_header &&
		  pg_atomic_read_u64(&s->messages) < s->max_messages &&
		  pg_atomic_read_u64(&s->bytes) < s->max_bytes));
}

/*
 * Find id in the shared table, or claim a FILLING slot for it, waiting
 * for another backend's fill when there is one.  On FILL_FOUND the DEK,
 * header and limits are copied out.  An encrypting entry whose header the
 * ring has overwritten is given out with header length 0 when it is a
 * format 2 DEK (ref_found: its reference), and retired from encryption
 * otherwise.
 */
static uint64 ref_found = 0;

static FillOutcome
shared_find_or_claim(const uint8 *id, bool for_encrypt, int *slot_out, uint32 *gen_out,
					 uint8 *dek_out, uint8 *header_out, int *header_len_out,
					 TimestampTz *expires_out, uint64 *maxm_out, uint64 *maxb_out)
{
	uint32		h = cache_index_hash(id);
	bool		header_lost = false;

	for (;;)
	{
		int			idx;
		KmsCacheSlot *s;
		uint32		gen;
		TimestampTz now = GetCurrentTimestamp();

		idx = cache_index_lookup(id, h);
		if (idx >= 0)
		{
			s = &kms_cache->slots[idx];
			LWLockAcquire(SLOT_LOCK(idx), LW_SHARED);
			if (!slot_holds(s, id))
			{
				/* the slot was reused since the probe: look again */
				LWLockRelease(SLOT_LOCK(idx));
				continue;
			}
			header_lost = false;
			if (slot_usable(s, for_encrypt, now))
			{
				bool		ok = true;
				bool		by_ref = false;

				if (header_out)
					ok = ring_read(s->header_pos, s->header_len, header_out);
				if (!ok && s->has_ref)
				{
					/* a format 2 DEK: the caller rebuilds the header from its registry row */
					ok = by_ref = true;
					ref_found = s->dek_ref;
				}
				header_lost = !ok;
				if (ok)
				{
					memcpy(dek_out, s->dek, KMS_DEK_LEN);
					if (header_out)
						*header_len_out = by_ref ? 0 : s->header_len;
					*slot_out = idx;
					*gen_out = pg_atomic_read_u32(&s->generation);
					*expires_out = s->expires;
					*maxm_out = s->max_messages;
					*maxb_out = s->max_bytes;
					slot_touch(s);
					LWLockRelease(SLOT_LOCK(idx));
					pg_atomic_fetch_add_u64(&kms_cache->stat_hits, 1);
					return FILL_FOUND;
				}
				/* the header ring moved past it: decrypt-only from now on */
			}
			if (s->state == SLOT_FILLING)
			{
				int			filler = s->filler_pid;

				gen = pg_atomic_read_u32(&s->generation);
				LWLockRelease(SLOT_LOCK(idx));
				pg_atomic_fetch_add_u64(&kms_cache->stat_coalesced, 1);

				/* wait for the filler's answer or its departure */
				ConditionVariablePrepareToSleep(&s->cv);
				for (;;)
				{
					int			st;
					uint32		g;

					LWLockAcquire(SLOT_LOCK(idx), LW_SHARED);
					st = s->state;
					g = pg_atomic_read_u32(&s->generation);
					LWLockRelease(SLOT_LOCK(idx));
					if (g != gen || st != SLOT_FILLING)
						break;
					if (filler > 0 && kill(filler, 0) != 0 && errno == ESRCH)
						break;	/* filler vanished; retry and maybe take over */
					(void) ConditionVariableTimedSleep(&s->cv, 100, PG_WAIT_EXTENSION);
				}
				ConditionVariableCancelSleep();

				LWLockAcquire(SLOT_LOCK(idx), LW_SHARED);
				if (s->state == SLOT_FAILED && pg_atomic_read_u32(&s->generation) == gen)
				{
					int			code = s->fail_sqlstate;
					char		msg[256];

					LWLockRelease(SLOT_LOCK(idx));
					if (!fail_lookup(idx, gen, msg, sizeof(msg)))
						strlcpy(msg, "the key provider failed to return the data key", sizeof(msg));
					ereport(ERROR,
							(errcode(code),
							 errmsg("%s", msg),
							 errdetail("Another session asked the key provider for this data key and failed.")));
				}
				LWLockRelease(SLOT_LOCK(idx));
				continue;
			}
			LWLockRelease(SLOT_LOCK(idx));

			/* READY but expired, exhausted or without header: fix it exclusively */
			LWLockAcquire(SLOT_LOCK(idx), LW_EXCLUSIVE);
			if (slot_holds(s, id) && s->state == SLOT_READY &&
				(!slot_usable(s, for_encrypt, now) || header_lost))
			{
				if (now >= s->expires)
				{
					slot_clear(s);
					pg_atomic_fetch_add_u64(&kms_cache->stat_expirations, 1);
				}
				else
					slot_retire_encrypt(s); /* limit reached: decrypt only from now on */
			}
			LWLockRelease(SLOT_LOCK(idx));
			continue;
		}

		/* a miss: take a slot from the clock sweep and claim id for it */
		idx = slot_allocate(now);
		if (idx < 0)
		{
			thrash_report();
			return FILL_UNSHARED;
		}
		s = &kms_cache->slots[idx];
		{
			int			mapped = cache_index_insert(id, h, idx);

			if (mapped != idx)
			{
				/* claimed by somebody else meanwhile (or index full): slot stays free */
				LWLockRelease(SLOT_LOCK(idx));
				thrash_report();
				if (mapped < 0)
					return FILL_UNSHARED;
				continue;
			}
		}
		s->state = SLOT_FILLING;
		s->filler_pid = MyProcPid;
		pg_atomic_fetch_add_u32(&s->generation, 1);
		if (for_encrypt)
		{
			memcpy(s->enc_id, id, KMS_ID_LEN);
			s->has_enc = true;
		}
		else
		{
			memcpy(s->dec_id, id, KMS_ID_LEN);
			s->has_dec = true;
		}
		*slot_out = idx;
		*gen_out = pg_atomic_read_u32(&s->generation);
		kms_filling_slot = idx;
		kms_filling_gen = *gen_out;
		LWLockRelease(SLOT_LOCK(idx));
		pg_atomic_fetch_add_u64(&kms_cache->stat_misses, 1);
		thrash_report();
		if (!kms_exit_cb_registered)
		{
			before_shmem_exit(kms_cache_before_exit, 0);
			kms_exit_cb_registered = true;
		}
		return FILL_MINE;
	}
}

/* Record the key names of a filled slot. */
static void
slot_set_key(KmsCacheSlot *s, uint8 provider, const char *key_id, int key_id_len, const char *key_req)
{
	s->key_provider = provider;
	s->key_unknown = false;
	key_name_unref(s->key_id_ref, true);
	key_name_unref(s->key_req_ref, false);
	s->key_id_ref = key_name_ref(provider, key_id, key_id_len, true);
	if (s->key_id_ref == KMS_NO_KEY)
		s->key_unknown = true;
	s->key_req_ref = KMS_NO_KEY;
	if (key_req != NULL)
	{
		s->key_req_ref = key_name_ref(provider, key_req, strlen(key_req), false);
		if (s->key_req_ref == KMS_NO_KEY)
			s->key_unknown = true;
	}
}

/* Publish a filled slot.  Returns the generation local copies must match. */
static uint32
shared_publish(int idx, const uint8 *dek, const uint8 *header, int header_len,
			   const uint8 *dec_id, TimestampTz expires, uint64 maxm, uint64 maxb,
			   uint8 provider, const char *key_id, int key_id_len, const char *key_req)
{
	KmsCacheSlot *s = &kms_cache->slots[idx];
	uint32		gen;
	uint64		pos = 0;

	if (header)
		pos = ring_write(header, header_len);
	LWLockAcquire(SLOT_LOCK(idx), LW_EXCLUSIVE);
	slot_set_key(s, provider, key_id, key_id_len, key_req);
	memcpy(s->dek, dek, KMS_DEK_LEN);
	if (header)
	{
		s->header_pos = pos;
		s->header_len = header_len;
		s->has_header = true;
	}
	if (dec_id && !s->has_dec)
	{
		uint32		h = cache_index_hash(dec_id);

		memcpy(s->dec_id, dec_id, KMS_ID_LEN);
		s->has_dec = cache_index_insert(dec_id, h, idx) == idx;
	}
	s->expires = expires;
	s->max_messages = maxm;
	s->max_bytes = maxb;
	pg_atomic_write_u64(&s->messages, 0);
	pg_atomic_write_u64(&s->bytes, 0);
	pg_atomic_write_u32(&s->usage, 1);
	s->filler_pid = 0;
	s->state = SLOT_READY;
	gen = pg_atomic_read_u32(&s->generation);
	LWLockRelease(SLOT_LOCK(idx));
	kms_filling_slot = -1;
	ConditionVariableBroadcast(&s->cv);
	return gen;
}

typedef void (*fill_fn) (void *arg, uint8 *dek_out);

static void
run_fill(fill_fn fill, void *arg, uint8 *dek_out)
{
	MemoryContext oldcxt = CurrentMemoryContext;

	PG_TRY();
	{
		fill(arg, dek_out);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		explicit_bzero(dek_out, KMS_DEK_LEN);
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN || QueryCancelPending || ProcDiePending)
			release_filling_slot(false, 0, NULL);
		else
			release_filling_slot(true, edata->sqlerrcode, edata->message);
		FreeErrorData(edata);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

static void
limits_now(TimestampTz now, TimestampTz *expires, uint64 *maxm, uint64 *maxb)
{
	*expires = TimestampTzPlusMilliseconds(now, (int64) kms_guc_dek_max_age * 1000);
	*maxm = Min((uint64) kms_guc_dek_max_messages, KMS_GCM_RANDOM_NONCE_CEILING);
	*maxb = (uint64) kms_guc_dek_max_bytes_mb * 1024 * 1024;
}

/* ---- encryption ---- */

typedef struct GenerateArgs
{
	const KmsProviderRoutine *provider;
	const char *key;
	const KmsContext *kctx;
	int			format;
	uint64		lease_m;		/* format 2: the budget of one lease */
	uint64		lease_b;
	uint64		max_m;			/* the DEK's whole budget */
	uint64		max_b;
	bool		reused;			/* out: reloaded from the registry */
	TimestampTz created_at;		/* out, when reused */
	KmsWrappedKey wrapped;
} GenerateArgs;

/*
 * A DEK to encrypt with: under format 2 the current registry row of (key,
 * provider context) if one may still seal a lease of values (one unwrap
 * and one registry write), else a new DEK from the provider.
 */
static void
fill_generate(void *arg, uint8 *dek_out)
{
	GenerateArgs *g = (GenerateArgs *) arg;

	if (g->format == 2 &&
		kms_dek_registry_reuse(g->provider->id, g->key, g->kctx, g->lease_m, g->lease_b,
							   g->max_m, g->max_b, &g->wrapped, &g->created_at))
	{
		g->provider->decrypt_data_key(g->wrapped.key_id, g->wrapped.wrapped, g->wrapped.wrapped_len,
									  g->kctx, dek_out);
		g->reused = true;
		return;
	}
	g->provider->generate_data_key(g->key, g->kctx, dek_out, &g->wrapped);
}

static uint8 *
header_for(const KmsProviderRoutine *provider, const KmsWrappedKey *w, const KmsContext *kctx,
		   int *header_len)
{
	const char *names[KMS_CTX_KEYS_MAX];
	int			lens[KMS_CTX_KEYS_MAX];

	for (int i = 0; i < kctx->npairs; i++)
	{
		names[i] = kctx->pairs[i].key;
		lens[i] = kctx->pairs[i].keylen;
	}
	return kms_envelope_build_header(provider->id, w->key_id, kctx->npairs, names, lens,
									 w->wrapped, w->wrapped_len, header_len);
}

KmsDek *
kms_dek_for_encrypt(const KmsProviderRoutine *provider, const char *key,
					const KmsContext *kctx, Size nbytes, int format)
{
	char		stackbuf[512];
	int			ident_len;
	char	   *ident;
	uint64		hkey;
	KmsLocalDek *e;
	TimestampTz now = GetCurrentTimestamp();
	uint8		id[KMS_ID_LEN];
	uint8		dek[KMS_DEK_LEN];
	uint8	   *header = NULL;
	int			header_len = 0;
	int			slot;
	uint32		gen;
	TimestampTz expires;
	uint64		maxm;
	uint64		maxb;
	FillOutcome outcome;

	kms_dek_cache_require();
	if ((uint64) nbytes > (uint64) kms_guc_dek_max_bytes_mb * 1024 * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("value of %zu bytes exceeds kms_pg.dek_max_bytes", (size_t) nbytes),
				 errdetail("No data key may seal more than %d MB.", kms_guc_dek_max_bytes_mb),
				 errhint("Raise kms_pg.dek_max_bytes.")));
	l1_init();
	if (kms_guc_key_state_check_interval > 0 && now >= next_key_check)
		key_state_check(now);
	ident = build_ident(provider->id, key, strlen(key), kctx->canonical.data, kctx->canonical.len,
						stackbuf, sizeof(stackbuf), &ident_len);
	hkey = hash_bytes_extended((const unsigned char *) ident, ident_len, 0x454e43);

	for (int attempt = 0; attempt < 3; attempt++)
	{
		e = l1_find(hkey, true, ident, ident_len);
		if (e != NULL)
		{
			if (l1_valid(e, now) && l1_take(e, nbytes))
			{
				if (++pending_local_hits >= KMS_STAT_FLUSH_EVERY)
					flush_pending_stats();
				return &e->dek;
			}
			l1_remove(e);
		}

		/* slow path: the shared level */
		sha256_id('E', ident, ident_len, id);
		header = palloc(KMS_SLOT_HEADER_MAX);
		ref_found = 0;
		outcome = shared_find_or_claim(id, true, &slot, &gen, dek, header, &header_len,
									   &expires, &maxm, &maxb);
		if (outcome == FILL_FOUND && header_len == 0)
		{
			/* format 2 DEK whose header the ring overwrote: rebuilt from its registry row */
			uint8	   *h = NULL;

			if (ref_found != 0 && kms_dek_registry_header(ref_found, &h, &header_len) &&
				header_len <= KMS_SLOT_HEADER_MAX)
				memcpy(header, h, header_len);
			else
			{
				KmsCacheSlot *s = &kms_cache->slots[slot];

				explicit_bzero(dek, sizeof(dek));
				LWLockAcquire(SLOT_LOCK(slot), LW_EXCLUSIVE);
				if (pg_atomic_read_u32(&s->generation) == gen && s->state == SLOT_READY)
					slot_retire_encrypt(s);
				LWLockRelease(SLOT_LOCK(slot));
				pfree(header);
				continue;
			}
		}
		if (outcome == FILL_FOUND)
		{
			PG_TRY();
			{
				e = l1_insert(hkey, true, ident, ident_len, dek, header, header_len,
							  slot, gen, expires, maxm, maxb);
			}
			PG_FINALLY();
			{
				explicit_bzero(dek, sizeof(dek));
			}
			PG_END_TRY();
			pfree(header);
			if (l1_take(e, nbytes))
				return &e->dek;
			l1_remove(e);
			continue;			/* exhausted between lookup and use: try again */
		}

		/* we fill (shared) or make a DEK for this backend only */
		{
			GenerateArgs g = {.provider = provider, .key = key, .kctx = kctx, .format = format};
			uint8		dec_id[KMS_ID_LEN];
			char		dstack[512];
			int			dlen;
			char	   *dident;

			pfree(header);
			limits_now(now, &expires, &maxm, &maxb);
			if (format == 2)
			{
				/*
				 * Format 2: the budget is handed out in leases recorded in
				 * the registry row, so a reload (after a restart or an
				 * eviction) never counts a value twice.
				 */
				g.max_m = maxm;
				g.max_b = maxb;
				g.lease_m = Max(maxm / KMS_REUSE_LEASES, 1);
				g.lease_b = Max(maxb / KMS_REUSE_LEASES, (uint64) nbytes);
				maxm = g.lease_m;
				maxb = g.lease_b;
			}
			if (outcome == FILL_MINE)
				run_fill(fill_generate, &g, dek);
			else
				fill_generate(&g, dek);
			/* a reloaded DEK expires as it would have, counted from its creation */
			if (g.reused)
				expires = Min(expires, TimestampTzPlusMilliseconds(g.created_at,
																   (int64) kms_guc_dek_max_age * 1000));

			PG_TRY();
			{
				int			noff;
				int			nlen;

				header = header_for(provider, &g.wrapped, kctx, &header_len);
				kms_envelope_header_names(header, header_len, &noff, &nlen);
				dident = build_decrypt_ident(provider->id, g.wrapped.key_id, strlen(g.wrapped.key_id),
											 header + noff, nlen, g.wrapped.wrapped, g.wrapped.wrapped_len,
											 dstack, sizeof(dstack), &dlen);
				sha256_id('D', dident, dlen, dec_id);
				if (outcome == FILL_MINE)
				{
					if (header_len <= KMS_SLOT_HEADER_MAX)
						gen = shared_publish(slot, dek, header, header_len, dec_id, expires, maxm, maxb,
										 provider->id, g.wrapped.key_id, strlen(g.wrapped.key_id), key);
					else
					{
						/* too large to share for encryption: keep it for decryption */
						LWLockAcquire(SLOT_LOCK(slot), LW_EXCLUSIVE);
						slot_retire_encrypt(&kms_cache->slots[slot]);
						LWLockRelease(SLOT_LOCK(slot));
						gen = shared_publish(slot, dek, NULL, 0, dec_id, expires, maxm, maxb,
										 provider->id, g.wrapped.key_id, strlen(g.wrapped.key_id), key);
						slot = -1;
					}
				}
				else
					slot = -1;
				e = l1_insert(hkey, true, ident, ident_len, dek, header, header_len,
							  slot, gen, expires, maxm, maxb);
			}
			PG_CATCH();
			{
				explicit_bzero(dek, sizeof(dek));
				if (outcome == FILL_MINE)
					release_filling_slot(false, 0, NULL);
				PG_RE_THROW();
			}
			PG_END_TRY();
			explicit_bzero(dek, sizeof(dek));
			if (l1_take(e, nbytes))
				return &e->dek;
			l1_remove(e);
		}
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("kms_pg could not obtain a data key within its limits"),
			 errhint("Check kms_pg.dek_max_messages and kms_pg.dek_max_bytes.")));
	return NULL;				/* keep compiler quiet */
}

/*
 * Stop using the current encrypting DEK of (provider, key, kctx), here and
 * in shared memory, so the next value gets a fresh DEK.
 */
void
kms_dek_retire_encrypt(const KmsProviderRoutine *provider, const char *key,
					   const KmsContext *kctx)
{
	char		stackbuf[512];
	int			ident_len;
	char	   *ident;
	uint64		hkey;
	KmsLocalDek *e;
	uint8		id[KMS_ID_LEN];
	int			idx;

	kms_dek_cache_require();
	l1_init();
	ident = build_ident(provider->id, key, strlen(key), kctx->canonical.data, kctx->canonical.len,
						stackbuf, sizeof(stackbuf), &ident_len);
	hkey = hash_bytes_extended((const unsigned char *) ident, ident_len, 0x454e43);
	e = l1_find(hkey, true, ident, ident_len);
	if (e != NULL)
		l1_remove(e);
	sha256_id('E', ident, ident_len, id);
	idx = cache_index_lookup(id, cache_index_hash(id));
	if (idx >= 0)
	{
		KmsCacheSlot *s = &kms_cache->slots[idx];

		LWLockAcquire(SLOT_LOCK(idx), LW_EXCLUSIVE);
		if (s->state == SLOT_READY && s->has_enc && memcmp(s->enc_id, id, KMS_ID_LEN) == 0)
			slot_retire_encrypt(s);
		LWLockRelease(SLOT_LOCK(idx));
	}
}

/* ---- decryption ---- */

void
kms_dek_provider_context(const KmsEnvelope *env, const KmsContext *full_ctx, KmsContext *kctx)
{
	memset(kctx, 0, sizeof(*kctx));
	kctx->pairs = env->nctxkeys > 0 ? palloc(sizeof(KmsContextPair) * env->nctxkeys) : NULL;
	for (int i = 0; i < env->nctxkeys; i++)
	{
		const KmsContextPair *p = kms_context_find(full_ctx, env->ctxkeys[i], env->ctxkeylens[i]);

		if (p == NULL)
			kms_report_error(KMS_ERR_CT_AUTH_FAILED,
							 psprintf("The value was encrypted with context key \"%.*s\", which the given context lacks.",
									  env->ctxkeylens[i], env->ctxkeys[i]));
		kctx->pairs[i] = *p;
	}
	kctx->npairs = env->nctxkeys;
	initStringInfo(&kctx->canonical);
	kms_context_serialize(kctx->pairs, kctx->npairs, &kctx->canonical);
}

typedef struct DecryptArgs
{
	const KmsProviderRoutine *provider;
	const KmsEnvelope *env;
	const KmsContext *full_ctx;
} DecryptArgs;

static void
fill_decrypt(void *arg, uint8 *dek_out)
{
	DecryptArgs *d = (DecryptArgs *) arg;
	KmsContext	kctx;
	char	   *key_id = pnstrdup(d->env->key_id, d->env->key_id_len);

	kms_dek_provider_context(d->env, d->full_ctx, &kctx);
	d->provider->decrypt_data_key(key_id, d->env->wrapped, d->env->wrapped_len, &kctx, dek_out);
}

KmsDek *
kms_dek_for_decrypt(const KmsProviderRoutine *provider, const KmsEnvelope *env,
					const KmsContext *full_ctx)
{
	char		stackbuf[1400];
	int			ident_len;
	char	   *ident;
	uint64		hkey;
	KmsLocalDek *e;
	TimestampTz now = GetCurrentTimestamp();
	uint8		id[KMS_ID_LEN];
	uint8		dek[KMS_DEK_LEN];
	int			slot;
	uint32		gen;
	TimestampTz expires;
	uint64		maxm;
	uint64		maxb;
	FillOutcome outcome;

	kms_dek_cache_require();
	l1_init();
	if (kms_guc_key_state_check_interval > 0 && now >= next_key_check)
		key_state_check(now);

	/* the previous row's DEK, compared piece by piece (layout of build_decrypt_ident) */
	e = last_dec;
	if (e != NULL &&
		e->ident_len == 2 + env->key_id_len + env->names_block_len + env->wrapped_len &&
		(uint8) e->ident[0] == provider->id &&
		e->ident[1 + env->key_id_len] == '\0' &&
		memcmp(e->ident + 2 + env->key_id_len + env->names_block_len,
			   env->wrapped, env->wrapped_len) == 0 &&
		memcmp(e->ident + 2 + env->key_id_len, env->names_block, env->names_block_len) == 0 &&
		memcmp(e->ident + 1, env->key_id, env->key_id_len) == 0 &&
		l1_valid(e, now))
	{
		if (++pending_local_hits >= KMS_STAT_FLUSH_EVERY)
			flush_pending_stats();
		return &e->dek;
	}

	ident = build_decrypt_ident(provider->id, env->key_id, env->key_id_len,
								env->names_block, env->names_block_len,
								env->wrapped, env->wrapped_len,
								stackbuf, sizeof(stackbuf), &ident_len);
	hkey = hash_bytes_extended((const unsigned char *) ident, ident_len, 0x444543);

	e = l1_find(hkey, false, ident, ident_len);
	if (e != NULL)
	{
		if (l1_valid(e, now))
		{
			if (++pending_local_hits >= KMS_STAT_FLUSH_EVERY)
				flush_pending_stats();
			last_dec = e;
			return &e->dek;
		}
		l1_remove(e);
	}

	sha256_id('D', ident, ident_len, id);
	outcome = shared_find_or_claim(id, false, &slot, &gen, dek, NULL, NULL,
								   &expires, &maxm, &maxb);
	if (outcome != FILL_FOUND)
	{
		DecryptArgs d = {provider, env, full_ctx};

		limits_now(now, &expires, &maxm, &maxb);
		if (outcome == FILL_MINE)
		{
			run_fill(fill_decrypt, &d, dek);
			gen = shared_publish(slot, dek, NULL, 0, NULL, expires, maxm, maxb,
								 provider->id, env->key_id, env->key_id_len, NULL);
		}
		else
		{
			fill_decrypt(&d, dek);
			slot = -1;
		}
	}
	PG_TRY();
	{
		e = l1_insert(hkey, false, ident, ident_len, dek, NULL, 0, slot, gen, expires, maxm, maxb);
	}
	PG_FINALLY();
	{
		explicit_bzero(dek, sizeof(dek));
	}
	PG_END_TRY();
	/* a format 2 DEK: other backends find it by reference, without the registry */
	if (env->version == KMS_ENVELOPE_V2 && slot >= 0)
		slot_add_ref(slot, gen, env);
	last_dec = e;
	return &e->dek;
}

/* Fill env's registry fields from a by-reference local entry. */
static void
env_from_info(KmsEnvelope *env, const uint8 *info, int info_len)
{
	char	   *detail;
	KmsError	err;

	err = kms_envelope_set_registry_names(env, info[0], (const char *) info + 2, info[1],
										  info + 2 + info[1], info_len - 2 - info[1], &detail);
	if (err != KMS_OK)
		kms_report_error(err, detail);
}

static int
unhex_nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	return c - 'a' + 10;
}

KmsDek *
kms_dek_for_decrypt_ref(KmsEnvelope *env)
{
	char		ident[2 + sizeof(uint64)];
	uint64		hkey;
	KmsLocalDek *e;
	TimestampTz now = GetCurrentTimestamp();
	uint8		rid[KMS_ID_LEN];
	int			idx;
	KmsCacheSlot *s;
	uint8		dek[KMS_DEK_LEN];
	uint8		info[2 + 2 * KMS_SLOT_KEY_MAX];
	int			info_len;
	uint32		gen;
	TimestampTz expires;
	uint64		maxm;
	uint64		maxb;

	kms_dek_cache_require();
	l1_init();
	if (kms_guc_key_state_check_interval > 0 && now >= next_key_check)
		key_state_check(now);
	ident[0] = (char) 0xff;
	ident[1] = 'R';
	memcpy(ident + 2, &env->dek_ref, sizeof(uint64));
	hkey = hash_bytes_extended((const unsigned char *) ident, sizeof(ident), 0x524546);
	e = l1_find(hkey, false, ident, sizeof(ident));
	if (e != NULL)
	{
		if (l1_valid(e, now) && e->header_buf != NULL)
		{
			env_from_info(env, e->header_buf, e->info_len);
			if (++pending_local_hits >= KMS_STAT_FLUSH_EVERY)
				flush_pending_stats();
			return &e->dek;
		}
		l1_remove(e);
	}

	ref_id(MyDatabaseId, env->dek_ref, rid);
	idx = cache_index_lookup(rid, cache_index_hash(rid));
	if (idx < 0)
		return NULL;
	s = &kms_cache->slots[idx];
	LWLockAcquire(SLOT_LOCK(idx), LW_SHARED);
	if (!slot_holds(s, rid) || !s->has_ref || s->state != SLOT_READY || now >= s->expires ||
		s->key_id_ref == KMS_NO_KEY || s->names_ref == KMS_NO_KEY)
	{
		LWLockRelease(SLOT_LOCK(idx));
		return NULL;
	}
	LWLockAcquire(kms_cache->misc_lock, LW_SHARED);
	{
		const char *k = kms_cache->key_names[s->key_id_ref].name;
		const char *n = kms_cache->key_names[s->names_ref].name + 1;	/* after '#' */
		int			klen = strlen(k);
		int			nlen = strlen(n) / 2;

		info[0] = s->key_provider;
		info[1] = (uint8) klen;
		memcpy(info + 2, k, klen);
		for (int i = 0; i < nlen; i++)
			info[2 + klen + i] = (uint8) ((unhex_nibble(n[2 * i]) << 4) | unhex_nibble(n[2 * i + 1]));
		info_len = 2 + klen + nlen;
	}
	LWLockRelease(kms_cache->misc_lock);
	memcpy(dek, s->dek, KMS_DEK_LEN);
	gen = pg_atomic_read_u32(&s->generation);
	expires = s->expires;
	maxm = s->max_messages;
	maxb = s->max_bytes;
	slot_touch(s);
	LWLockRelease(SLOT_LOCK(idx));
	pg_atomic_fetch_add_u64(&kms_cache->stat_hits, 1);

	PG_TRY();
	{
		e = l1_insert(hkey, false, ident, sizeof(ident), dek, NULL, 0, idx, gen, expires, maxm, maxb);
	}
	PG_FINALLY();
	{
		explicit_bzero(dek, sizeof(dek));
	}
	PG_END_TRY();
	e->header_buf = MemoryContextAlloc(kms_l1_cxt, info_len);
	memcpy(e->header_buf, info, info_len);
	e->info_len = info_len;
	env_from_info(env, e->header_buf, e->info_len);
	return &e->dek;
}

void
kms_dek_cache_note_ref(KmsDek *dek, uint64 ref)
{
	KmsLocalDek *e = (KmsLocalDek *) ((char *) dek - offsetof(KmsLocalDek, dek));
	KmsEnvelope env;

	if (e->slot < 0 || e->ref_noted || dek->header == NULL)
		return;
	e->ref_noted = true;
	memset(&env, 0, sizeof(env));
	env.version = KMS_ENVELOPE_V2;
	env.dek_ref = ref;
	env.provider = dek->header[5];
	env.names_block = dek->header + dek->names_off;
	env.names_block_len = dek->names_len;
	slot_add_ref(e->slot, e->slot_gen, &env);
}

void
kms_dek_cache_forget_ref(uint64 ref)
{
	uint8		rid[KMS_ID_LEN];
	int			idx;

	kms_dek_cache_require();
	l1_clear();
	ref_id(MyDatabaseId, ref, rid);
	idx = cache_index_lookup(rid, cache_index_hash(rid));
	if (idx >= 0)
	{
		KmsCacheSlot *s = &kms_cache->slots[idx];

		LWLockAcquire(SLOT_LOCK(idx), LW_EXCLUSIVE);
		if (slot_holds(s, rid) && s->has_ref)
			slot_clear(s);		/* generation bump: other backends' copies retire */
		LWLockRelease(SLOT_LOCK(idx));
	}
}

/* ---- rewrap ---- */

typedef struct RewrapMemo
{
	uint64		hkey;
	char	   *ident;
	int			ident_len;
	TimestampTz expires;
	KmsWrappedKey result;
} RewrapMemo;

void
kms_dek_rewrap(const KmsProviderRoutine *provider, const KmsEnvelope *env,
			   const KmsContext *full_ctx, const char *new_key, KmsWrappedKey *out)
{
	const KmsProviderRoutine *target = kms_provider_current();
	KmsContext	kctx;
	StringInfoData ident;
	uint64		hkey;
	RewrapMemo *m;
	bool		found;
	KmsWrappedKey w;
	MemoryContext old;

	kms_dek_cache_require();
	l1_init();
	kms_dek_provider_context(env, full_ctx, &kctx);

	initStringInfo(&ident);
	appendStringInfoChar(&ident, (char) provider->id);
	appendBinaryStringInfo(&ident, env->key_id, env->key_id_len);
	appendStringInfoChar(&ident, '\0');
	appendBinaryStringInfo(&ident, (const char *) env->wrapped, env->wrapped_len);
	appendStringInfoChar(&ident, (char) target->id);
	appendStringInfoString(&ident, new_key);
	appendStringInfoChar(&ident, '\0');
	appendBinaryStringInfo(&ident, kctx.canonical.data, kctx.canonical.len);
	hkey = hash_bytes_extended((const unsigned char *) ident.data, ident.len, 0x525700);

	if (kms_rewrap_memo == NULL)
	{
		if (kms_rewrap_cxt == NULL)
			kms_rewrap_cxt = AllocSetContextCreate(TopMemoryContext, "kms_pg rewrap memo",
												   ALLOCSET_DEFAULT_SIZES);
		kms_rewrap_memo = local_hash_create("kms_pg rewrap memo", sizeof(RewrapMemo), kms_rewrap_cxt);
	}
	m = hash_search(kms_rewrap_memo, &hkey, HASH_FIND, NULL);
	if (m != NULL && m->ident_len == ident.len && memcmp(m->ident, ident.data, ident.len) == 0
		&& m->expires > GetCurrentTimestamp())
	{
		*out = m->result;
		return;
	}

	{
		char	   *key_id = pnstrdup(env->key_id, env->key_id_len);

		if (target->id == provider->id)
		{
			provider->rewrap_data_key(key_id, env->wrapped, env->wrapped_len, &kctx, new_key, &w);
		}
		else
		{
			/* across providers: unwrap with the source, wrap with the target */
			uint8		dek[KMS_DEK_LEN];

			PG_TRY();
			{
				provider->decrypt_data_key(key_id, env->wrapped, env->wrapped_len, &kctx, dek);
				target->encrypt_data_key(new_key, &kctx, dek, &w);
			}
			PG_FINALLY();
			{
				explicit_bzero(dek, sizeof(dek));
			}
			PG_END_TRY();
		}
	}

	if (hash_get_num_entries(kms_rewrap_memo) >= KMS_REWRAP_MEMO_MAX)
	{
		rewrap_memo_clear();
		kms_rewrap_memo = local_hash_create("kms_pg rewrap memo", sizeof(RewrapMemo), kms_rewrap_cxt);
	}
	old = MemoryContextSwitchTo(kms_rewrap_cxt);
	m = hash_search(kms_rewrap_memo, &hkey, HASH_ENTER, &found);
	m->expires = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											 (int64) kms_guc_dek_max_age * 1000);
	m->ident = palloc(ident.len);
	memcpy(m->ident, ident.data, ident.len);
	m->ident_len = ident.len;
	m->result.key_id = pstrdup(w.key_id);
	m->result.wrapped = palloc(w.wrapped_len);
	memcpy(m->result.wrapped, w.wrapped, w.wrapped_len);
	m->result.wrapped_len = w.wrapped_len;
	MemoryContextSwitchTo(old);
	*out = w;
}

/* ---- flush, forget, stats (walk the slots one stripe acquisition at a time) ---- */

int
kms_dek_cache_flush(void)
{
	int			n = 0;

	kms_dek_cache_require();
	l1_clear();
	rewrap_memo_clear();
	for (int i = 0; i < kms_cache->nslots; i++)
	{
		KmsCacheSlot *s = &kms_cache->slots[i];

		if (s->state == SLOT_FREE)
			continue;			/* unlocked pre-check; re-checked below */
		LWLockAcquire(SLOT_LOCK(i), LW_EXCLUSIVE);
		if (s->state == SLOT_READY || s->state == SLOT_FAILED)
		{
			n += s->state == SLOT_READY;
			slot_clear(s);
		}
		LWLockRelease(SLOT_LOCK(i));
	}
	pg_atomic_fetch_add_u64(&kms_cache->stat_flushes, 1);
	return n;
}

/*
 * Does a recorded key name match name?  Exactly, or as the tail of an ARN
 * ("arn:...:key/<id>" matches "<id>" and "key/<id>"; "arn:...:alias/x"
 * matches "alias/x").
 */
static bool
key_name_matches(const char *rec, const char *name)
{
	size_t		rl = strlen(rec);
	size_t		nl = strlen(name);

	if (rl == 0 || nl == 0)
		return false;
	if (strcmp(rec, name) == 0)
		return true;
	return rl > nl && (rec[rl - nl - 1] == '/' || rec[rl - nl - 1] == ':') &&
		strcmp(rec + rl - nl, name) == 0;
}

int
kms_dek_cache_forget_key(int provider, const char *key)
{
	int			n = 0;
	bool	   *match;
	bool		any = false;

	kms_dek_cache_require();
	/* this backend's copies: all of them (cheap, and covers local-only DEKs) */
	l1_clear();
	rewrap_memo_clear();

	/* which recorded names match (the table of names, not the slots) */
	match = palloc0(sizeof(bool) * KMS_KEY_NAMES);
	LWLockAcquire(kms_cache->misc_lock, LW_SHARED);
	for (int k = 0; k < KMS_KEY_NAMES; k++)
	{
		KmsKeyName *kn = &kms_cache->key_names[k];

		if (kn->refs > 0 && key_name_matches(kn->name, key))
			match[k] = any = true;
	}
	LWLockRelease(kms_cache->misc_lock);

	for (int i = 0; i < kms_cache->nslots; i++)
	{
		KmsCacheSlot *s = &kms_cache->slots[i];

		if (s->state != SLOT_READY && s->state != SLOT_FAILED)
			continue;			/* unlocked pre-check; re-checked below */
		if (!any && !s->key_unknown)
			continue;
		LWLockAcquire(SLOT_LOCK(i), LW_EXCLUSIVE);
		if ((s->state == SLOT_READY || s->state == SLOT_FAILED) &&
			(provider < 0 || s->key_provider == (uint8) provider || s->key_unknown) &&
			(s->key_unknown ||
			 (s->key_id_ref != KMS_NO_KEY && match[s->key_id_ref]) ||
			 (s->key_req_ref != KMS_NO_KEY && match[s->key_req_ref])))
		{
			n += s->state == SLOT_READY;
			slot_clear(s);		/* generation bump: other backends' copies retire */
		}
		LWLockRelease(SLOT_LOCK(i));
	}
	pfree(match);
	pg_atomic_fetch_add_u64(&kms_cache->stat_flushes, 1);
	return n;
}

void
kms_dek_cache_stats(KmsCacheStats *out)
{
	TimestampTz now = GetCurrentTimestamp();

	kms_dek_cache_require();
	flush_pending_stats();
	memset(out, 0, sizeof(*out));
	for (int i = 0; i < kms_cache->nslots; i++)
	{
		KmsCacheSlot *s = &kms_cache->slots[i];

		if (s->state != SLOT_READY)
			continue;			/* unlocked pre-check; re-checked below */
		LWLockAcquire(SLOT_LOCK(i), LW_EXCLUSIVE);
		if (s->state == SLOT_READY && now >= s->expires)
		{
			slot_clear(s);
			pg_atomic_fetch_add_u64(&kms_cache->stat_expirations, 1);
		}
		else if (s->state == SLOT_READY)
		{
			out->entries++;
			if (s->has_enc)
				out->entries_encrypting++;
		}
		LWLockRelease(SLOT_LOCK(i));
	}
	out->capacity = kms_cache->nslots;
	out->hits = pg_atomic_read_u64(&kms_cache->stat_hits);
	out->local_hits = pg_atomic_read_u64(&kms_cache->stat_local_hits);
	out->misses = pg_atomic_read_u64(&kms_cache->stat_misses);
	for (int i = 0; i < KMS_STAT_NOPS; i++)
		out->calls[i] = pg_atomic_read_u64(&kms_cache->stat_calls[i]);
	out->call_errors = pg_atomic_read_u64(&kms_cache->stat_call_errors);
	out->coalesced_waits = pg_atomic_read_u64(&kms_cache->stat_coalesced);
	out->evictions = pg_atomic_read_u64(&kms_cache->stat_evictions);
	out->expirations = pg_atomic_read_u64(&kms_cache->stat_expirations);
	out->rotations = pg_atomic_read_u64(&kms_cache->stat_rotations);
	out->flushes = pg_atomic_read_u64(&kms_cache->stat_flushes);
	out->thrash_warnings = pg_atomic_read_u64(&kms_cache->stat_thrash_warnings);
	out->memory_bytes = (int64) kms_cache_memory_size();
}
