# The DEK cache at many tenants (issue 19), local provider, counted in
# kms_cache_stats:
#  - at the default size (65,536 slots, within 32 MB of shared memory),
#    100,000 rows over 50,000 interleaved tenants (tenant in
#    kms_pg.kms_context_keys) make one GenerateDataKey per tenant, and a
#    cold read of them one unwrap per tenant; nothing is evicted;
#  - concurrent misses: 16 sessions missing on one DEK make 1 call; 8
#    sessions missing on 8 x 50 different DEKs make 400 calls;
#  - eviction order (clock sweep: DEKs used since the hand last passed
#    survive, the others go) and lazy expiry, in a 16-slot cache;
#  - thrash: evicting as many valid DEKs as the cache holds logs one message
#    per kms_pg.cache_thrash_warning interval, with a HINT naming
#    kms_pg.cache_entries and a size; evictions and expirations are counted
#    apart, hit_ratio and thrash_warnings are reported.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

sub stat1
{
	my ($node, $col) = @_;
	return $node->safe_psql('postgres', "SELECT $col FROM kms_cache_stats");
}

# ---- the default size: 50,000 tenants, 100,000 interleaved rows ----
my $big = kms_node('cache_scale', "max_connections = 40\nkms_pg.key_id = 'alias/scale'\n");
$big->start;
$big->safe_psql('postgres', "CREATE EXTENSION kms_pg; SELECT kms_create_key('alias/scale')");

is(stat1($big, 'capacity'), '65536', 'default kms_pg.cache_entries is 65536');
my $mem = stat1($big, 'shared_memory_bytes');
cmp_ok($mem, '<=', 32 * 1024 * 1024, "the cache takes at most 32 MB at the default size ($mem bytes)");
# the server's own accounting agrees: the named allocations of the cache are within it
my $named = $big->safe_psql('postgres',
	q{SELECT coalesce(sum(allocated_size), 0) FROM pg_shmem_allocations WHERE name LIKE 'kms_pg dek cache%'});
cmp_ok($named, '<=', $mem, "named shared allocations ($named bytes) within the reported size");

my ($g0, $d0) = split /\|/, $big->safe_psql('postgres', 'SELECT generate_calls, decrypt_calls FROM kms_cache_stats');
$big->safe_psql('postgres', q{
	SET kms_pg.kms_context_keys = 'tenant';
	CREATE TABLE t50k AS
	  SELECT i, kms_encrypt_text('value ' || i, jsonb_build_object('tenant', 't' || (i % 50000), 'row', i)) AS ct
	  FROM generate_series(1, 100000) i;
});
my ($g1, $ev1) = split /\|/, $big->safe_psql('postgres', 'SELECT generate_calls, evictions FROM kms_cache_stats');
cmp_ok($g1 - $g0, '<=', 50500, '100k rows over 50k interleaved tenants: at most 50.5k GenerateDataKey calls');
is($g1 - $g0, 50000, '... exactly one per tenant');
is($ev1, '0', '... and nothing evicted');
is($big->safe_psql('postgres', 'SELECT count(DISTINCT (kms_ciphertext_info(ct)).dek_id) FROM t50k'),
	'50000', 'the values use one DEK per tenant');

$big->safe_psql('postgres', 'SELECT kms_cache_flush()');
is($big->safe_psql('postgres', q{
	SET kms_pg.kms_context_keys = 'tenant';
	SELECT count(*) FROM t50k
	 WHERE kms_decrypt_text(ct, jsonb_build_object('tenant', 't' || (i % 50000), 'row', i)) = 'value ' || i}),
	'100000', 'cold read: every value decrypts');
my $d1 = stat1($big, 'decrypt_calls');
cmp_ok($d1 - $d0, '<=', 50500, 'cold read: at most 50.5k unwraps');
is($d1 - $d0, 50000, '... exactly one per tenant');
my ($hits, $ratio) = split /\|/, $big->safe_psql('postgres', 'SELECT hits + local_hits, hit_ratio FROM kms_cache_stats');
cmp_ok($hits, '>', 0, 'hits are counted');
ok($ratio > 0 && $ratio < 1, "hit_ratio is a fraction ($ratio)");

# ---- concurrency: one DEK (1 call), different DEKs (one call each) ----
my $GATE = 505053;

sub together
{
	my ($node, $queries) = @_;
	my @sessions = map { $node->background_psql('postgres', on_error_stop => 0) } @$queries;
	my $gate = $node->background_psql('postgres');
	$gate->query_safe("SELECT pg_advisory_lock($GATE)");
	for my $i (0 .. $#sessions)
	{
		$sessions[$i]->query_until(qr/armed/,
			"\\echo armed\nSELECT pg_advisory_xact_lock_shared($GATE);\n$queries->[$i];\n\\echo finished\n");
	}
	my $n = scalar @sessions;
	$node->poll_query_until('postgres',
		"SELECT count(*) = $n FROM pg_locks WHERE locktype = 'advisory' AND objid = $GATE AND NOT granted")
	  or die 'the sessions did not reach the gate';
	$gate->query_safe("SELECT pg_advisory_unlock($GATE)");
	my @out = map { $_->query_until(qr/finished/, '') } @sessions;
	$_->quit for @sessions;
	$gate->quit;
	return @out;
}

$big->safe_psql('postgres', 'SELECT kms_cache_flush()');
$d0 = stat1($big, 'decrypt_calls');
my $one = q{SET kms_pg.kms_context_keys = 'tenant'; SELECT count(*) FROM t50k WHERE i % 50000 = 7 AND kms_decrypt_text(ct, jsonb_build_object('tenant', 't7', 'row', i)) = 'value ' || i};
my @out = together($big, [ ($one) x 16 ]);
is(scalar(grep { /\b2\b/ } @out), 16, '16 sessions decrypt the values of one uncached DEK');
is(stat1($big, 'decrypt_calls') - $d0, 1, '... with one unwrap between them');

$g0 = stat1($big, 'generate_calls');
my @q = map {
	my $s = $_;
	"SET kms_pg.kms_context_keys = 'tenant'; SELECT count(kms_encrypt_text('x', jsonb_build_object('tenant', 'c$s-' || j))) FROM generate_series(1, 50) j"
} 1 .. 8;
@out = together($big, \@q);
is(scalar(grep { /\b50\b/ } @out), 8, '8 sessions encrypt for 50 new tenants each at once');
is(stat1($big, 'generate_calls') - $g0, 400, '... one GenerateDataKey per tenant: 400');
$big->stop;

# ---- a 16-slot cache: eviction order, expiry, thrash ----
my $small = kms_node('cache_small', <<'EOF');
kms_pg.cache_entries = 16
kms_pg.cache_thrash_warning = 0
kms_pg.key_id = 'alias/scale'
EOF
$small->start;
$small->safe_psql('postgres', "CREATE EXTENSION kms_pg; SELECT kms_create_key('alias/scale')");
is(stat1($small, 'capacity'), '16', 'capacity 16');

my $ctx = q{jsonb_build_object('tenant', 'e' || n)};
$small->safe_psql('postgres', qq{
	SET kms_pg.kms_context_keys = 'tenant';
	CREATE TABLE ev AS SELECT n, kms_encrypt_text('v' || n, $ctx) AS ct FROM generate_series(0, 15) n;
});
is(stat1($small, 'entries'), '16', '16 tenants fill the 16 slots');

sub read_calls
{
	my ($node, $where) = @_;
	my $d = stat1($node, 'decrypt_calls');
	$node->safe_psql('postgres', qq{
		SET kms_pg.kms_context_keys = 'tenant';
		SELECT count(kms_decrypt_text(ct, $ctx)) FROM ev WHERE $where});
	return stat1($node, 'decrypt_calls') - $d;
}

# tenants 0..7 used again (a new session: shared hits), 8..15 not
is(read_calls($small, 'n < 8'), 0, 'tenants 0-7 read from the shared cache');
my $ev0 = stat1($small, 'evictions');
$small->safe_psql('postgres', q{
	SET kms_pg.kms_context_keys = 'tenant';
	SELECT count(kms_encrypt_text('w', jsonb_build_object('tenant', 'new' || n))) FROM generate_series(1, 8) n});
is(stat1($small, 'evictions') - $ev0, 8, '8 new tenants evict 8 valid entries');
is(read_calls($small, 'n < 8'), 0, 'the entries used since the hand passed survive');
is(read_calls($small, 'n >= 8'), 8, 'the unused ones were evicted: one unwrap each');

# expiry: a DEK past kms_pg.dek_max_age is dropped when next looked up
$small->safe_psql('postgres', 'SELECT kms_cache_flush()');
$small->safe_psql('postgres', qq{
	SET kms_pg.kms_context_keys = 'tenant'; SET kms_pg.dek_max_age = 1;
	SELECT count(kms_decrypt_text(ct, $ctx)) FROM ev WHERE n = 3});
my $exp0 = stat1($small, 'expirations');
sleep 2;
is(read_calls($small, 'n = 3'), 1, 'an expired DEK is fetched again');
is(stat1($small, 'expirations') - $exp0, 1, '... counted as an expiration');

# thrash: 200 tenants through 16 slots, the warning on (it was off so far)
$small->safe_psql('postgres', "ALTER SYSTEM SET kms_pg.cache_thrash_warning = '1h'");
$small->reload;
$small->poll_query_until('postgres', "SELECT current_setting('kms_pg.cache_thrash_warning') = '1h'")
  or die 'reload';
my $log_off = -s $small->logfile;
$ev0 = stat1($small, 'evictions');
$small->safe_psql('postgres', q{
	SET kms_pg.kms_context_keys = 'tenant';
	SELECT count(kms_encrypt_text('w', jsonb_build_object('tenant', 'th' || n))) FROM generate_series(1, 200) n});
$small->safe_psql('postgres', q{
	SET kms_pg.kms_context_keys = 'tenant';
	SELECT count(kms_encrypt_text('w', jsonb_build_object('tenant', 'th2-' || n))) FROM generate_series(1, 200) n});
cmp_ok(stat1($small, 'evictions') - $ev0, '>=', 350, 'thrashing: valid entries evicted');
my $log = slurp_file($small->logfile, $log_off);
my @msgs = ($log =~ /the data key cache evicted \d+ valid data keys within \d+ seconds/g);
is(scalar @msgs, 1, 'one thrash message per interval');
like($log, qr/HINT:  Consider increasing the configuration parameter "kms_pg.cache_entries" to \d+\./,
	'its HINT names kms_pg.cache_entries and a size');
my ($fit) = $log =~ /"kms_pg.cache_entries" to (\d+)/;
cmp_ok($fit, '>', 16, "the size named is larger than the cache ($fit)");
is(stat1($small, 'thrash_warnings'), '1', 'thrash_warnings counts it');
ok(stat1($small, 'hit_ratio') < 1, 'hit_ratio below 1 while thrashing');

# disabled: no message
$small->safe_psql('postgres', "ALTER SYSTEM SET kms_pg.cache_thrash_warning = 0");
$small->restart;
$log_off = -s $small->logfile;
$small->safe_psql('postgres', q{
	SET kms_pg.kms_context_keys = 'tenant';
	SELECT count(kms_encrypt_text('w', jsonb_build_object('tenant', 'th3-' || n))) FROM generate_series(1, 100) n});
$log = slurp_file($small->logfile, $log_off);
unlike($log, qr/valid data keys within/, 'kms_pg.cache_thrash_warning = 0: no message');
$small->stop;

done_testing();
