# The DEK cache against (emulated) AWS KMS, counted on both sides: every
# step's KMS calls are checked in the emulator's counters and in
# kms_cache_stats, which must agree.
#  - 100,000 rows encrypted in one statement with kms_pg.kms_context_keys =
#    'tenant' and two tenants: exactly 2 GenerateDataKey calls (one DEK per
#    tenant; the per-row id stays out of the partition).
#  - a second, fresh session decrypts them all with 0 KMS calls; after
#    kms_cache_flush() exactly one Decrypt per distinct DEK (2, counted
#    from the ciphertexts with kms_ciphertext_info).
#  - a parallel seq scan (two workers, leader not participating) decrypting
#    all rows after a flush: still one Decrypt per DEK in total.
#  - kms_pg.dek_max_messages = 30000: 50,000 rows per tenant need
#    ceil(50000/30000) = 2 DEKs each, so exactly 4 GenerateDataKey calls,
#    and no DEK seals more than 30,000 values; retired DEKs still decrypt
#    from the cache.
#  - kms_pg.dek_max_age = 1: the entry expires and is gone from the cache
#    (counted as an expiration); the next value needs a new DEK.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use KmsPgCache;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

my ($node, $emu) = cache_node('cache_aws', "max_worker_processes = 8\n");
my $calls = KmsPgCache->new($node, $emu);

my $ctx = q{jsonb_build_object('tenant', tenant, 'row', i)};
my $fill = sub {
	my ($table, $settings) = @_;
	$node->safe_psql('postgres', qq{
		SET kms_pg.kms_context_keys = 'tenant';
		$settings
		CREATE TABLE $table AS
		  SELECT i, tenant, kms_encrypt_text('value ' || i, $ctx) AS ct
		  FROM (SELECT i, CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END AS tenant
		        FROM generate_series(1, 100000) i) s;
	});
};
my $all_decrypt = sub {
	my ($table, $settings) = @_;
	return $node->safe_psql('postgres',
		($settings // '') . qq{ SELECT count(*) FROM $table WHERE kms_decrypt_text(ct, $ctx) = 'value ' || i});
};
my $distinct_deks = sub {
	my ($table) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(DISTINCT (kms_ciphertext_info(ct)).dek_id) FROM $table");
};

# ---- 100,000 rows, 2 tenants, one statement: 2 GenerateDataKey ----
$fill->('t1', '');
my $d = $calls->expect('encrypt 100,000 rows of 2 tenants', generate_calls => 2, call_errors => 0);
is($d->{misses}, 2, 'two cache misses (one per tenant)');
is( $node->safe_psql('postgres', q{
		SELECT count(*), count(*) FILTER (WHERE (kms_ciphertext_info(ct)).provider = 'aws'
		                                    AND (kms_ciphertext_info(ct)).kms_context_keys = '{tenant}')
		FROM t1}),
	'100000|100000', 'every value is an AWS envelope that sent only "tenant" to KMS');
is($distinct_deks->('t1'), '2', 'the values carry 2 distinct DEKs');
is( $node->safe_psql('postgres',
		'SELECT count(DISTINCT (kms_ciphertext_info(ct)).dek_id) FROM t1 GROUP BY tenant ORDER BY tenant'),
	"1\n1", 'one DEK per tenant');
is($node->safe_psql('postgres', 'SELECT entries, encrypting_entries FROM kms_cache_stats'),
	'2|2', 'two cache entries, both encrypting');

# ---- a second, fresh session decrypts everything from the cache ----
is($all_decrypt->('t1'), '100000', 'fresh session: all 100,000 values decrypt');
$d = $calls->expect('fresh session decrypts 100,000 rows');
is($d->{misses}, 0, 'fresh session: no cache miss');
cmp_ok($d->{hits}, '>=', 2, 'fresh session: its DEKs came from shared memory');

# ---- after a flush: one Decrypt per distinct DEK ----
is($node->safe_psql('postgres', 'SELECT kms_cache_flush()'), '2', 'kms_cache_flush() wipes 2 entries');
is($node->safe_psql('postgres', 'SELECT entries FROM kms_cache_stats'), '0', 'the cache is empty');
is($all_decrypt->('t1'), '100000', 'after the flush: all values decrypt');
$d = $calls->expect('decrypt after flush (2 distinct DEKs)', decrypt_calls => $distinct_deks->('t1'));
is($d->{misses}, 2, 'after the flush: 2 misses');
is($d->{flushes}, 1, 'one flush counted');

# ---- parallel workers share the cache ----
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
$calls->mark;
my $par = q{
	SET max_parallel_workers_per_gather = 2;
	SET parallel_setup_cost = 0;
	SET parallel_tuple_cost = 0;
	SET min_parallel_table_scan_size = 0;
	SET parallel_leader_participation = off;
};
my $plan = $node->safe_psql('postgres', $par . qq{
	EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
	SELECT count(*) FROM t1 WHERE kms_decrypt_text(ct, $ctx) = 'value ' || i});
like($plan, qr/Parallel Seq Scan on t1/, 'the decrypting scan is parallel');
like($plan, qr/Workers Launched: 2/, 'two workers launched (the leader does not scan)');
like($plan, qr/Filter: \(kms_decrypt_text\(ct/, 'the workers decrypt');
$d = $calls->expect('parallel decrypt after flush', decrypt_calls => 2);
is($d->{misses}, 2, 'parallel: 2 misses in all');
is($all_decrypt->('t1', $par), '100000', 'parallel: every value decrypts correctly (from the cache)');
$calls->expect('parallel decrypt again');

# ---- dek_max_messages = 30000: 4 DEKs, none above its limit ----
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
$calls->mark;
$fill->('t2', 'SET kms_pg.dek_max_messages = 30000;');
$d = $calls->expect('encrypt 2 x 50,000 rows with dek_max_messages = 30000', generate_calls => 4);
is($d->{dek_rotations}, 2, 'two DEKs retired at their limit');
is($distinct_deks->('t2'), '4', 'the values carry 4 distinct DEKs');
is( $node->safe_psql('postgres', q{
		SELECT tenant, count(*) FROM t2 GROUP BY tenant, (kms_ciphertext_info(ct)).dek_id
		ORDER BY tenant, count(*) DESC}),
	"acme|30000\nacme|20000\nglobex|30000\nglobex|20000",
	'each tenant: one DEK sealed exactly 30,000 values, the next the other 20,000');
is( $node->safe_psql('postgres', q{
		SELECT max(n) FROM (SELECT count(*) AS n FROM t2 GROUP BY (kms_ciphertext_info(ct)).dek_id) s}),
	'30000', 'no DEK sealed more than 30,000 values');
is($node->safe_psql('postgres', 'SELECT entries, encrypting_entries FROM kms_cache_stats'),
	'4|2', 'retired DEKs stay cached for decryption only');
is($all_decrypt->('t2'), '100000', 'fresh session: all values under the 4 DEKs decrypt');
$calls->expect('decrypt values of retired and current DEKs');

# ---- dek_max_age = 2: expiry ----
# No timed assertion: the "before expiry" check runs only when the machine
# was fast enough to make it before the entry's 2 s were up, and the
# expiration is counted from stats taken before the entry existed.
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
$calls->mark;
my $before = cache_stats($node);
my $t0 = Time::HiRes::time();
$node->safe_psql('postgres', q{
	SET kms_pg.dek_max_age = 2;
	CREATE TABLE t3 AS SELECT kms_encrypt_text('short-lived', '{}') AS ct});
my $entries_then = $node->safe_psql('postgres', 'SELECT entries FROM kms_cache_stats');
my $elapsed = Time::HiRes::time() - $t0;
SKIP:
{
	skip "the machine took ${elapsed}s, past the entry's lifetime", 1 if $elapsed >= 1.9;
	is($entries_then, '1', 'one entry before expiry');
}
Time::HiRes::sleep(3 - $elapsed) if $elapsed < 3;
my $after = cache_stats($node);
is($after->{entries}, 0, 'after 3 s the entry is gone from shared memory');
is($after->{expirations} - $before->{expirations}, 1, 'and it counted as an expiration');
$calls->expect('encrypt with dek_max_age = 2', generate_calls => 1);
$node->safe_psql('postgres', q{INSERT INTO t3 SELECT kms_encrypt_text('short-lived', '{}')});
$calls->expect('encrypt after expiry', generate_calls => 1);
is($distinct_deks->('t3'), '2', 'the value after expiry has a new DEK');
is( $node->safe_psql('postgres', q{SELECT count(*) FROM t3 WHERE kms_decrypt_text(ct) = 'short-lived'}),
	'2', 'both values decrypt');
$calls->expect('decrypt: the expired DEK is fetched again, the live one is cached', decrypt_calls => 1);

unlike(slurp_file($node->logfile), qr/was terminated by signal|PANIC/, 'no backend crashed');
$node->stop;
stop_emulator($emu);
done_testing();
