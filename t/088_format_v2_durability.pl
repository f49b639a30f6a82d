# Format 2 never loses a data key: every committed format 2 value has a
# committed kms_dek_registry row, whatever happened to the transaction that
# first used its data key.  Each case ends with the values decrypting with a
# cold cache (kms_cache_flush() and a new connection: no registry memo, no
# cached DEK), and with no committed value whose reference is missing from
# the registry:
#   - abort, and savepoint rollback, of the transaction that made the DEK;
#   - PREPARE TRANSACTION, then COMMIT PREPARED and ROLLBACK PREPARED, with
#     the same cached DEK used meanwhile by committed values;
#   - two sessions sharing a cached DEK: the first (which made it) aborts,
#     the second commits; checked after a restart;
#   - kill -9 of the postmaster right after the KMS call, in an open
#     transaction, while another session committed values with that DEK;
#   - a standby made with pg_basebackup: it decrypts format 2 values cold,
#     refuses to encrypt in format 2 (25006, the chosen policy), encrypts in
#     format 1 when asked; after promotion it decrypts and encrypts format 2;
#   - pg_dump and restore into a fresh database (the registry is dumped
#     with the extension's data).
# Each case encrypts under a key of its own: an encrypting miss under
# format 2 reloads the key's current DEK from the registry (docs/cache.md),
# so a fresh key is what makes a case start with a new DEK.  After the
# kill -9, encrypting again under that case's key reloads its DEK: one
# unwrap, no new DEK, no new registry row.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use KmsPgKeyring;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('format_v2');
$node->init(allows_streaming => 1);
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'kms_pg'
max_prepared_transactions = 5
restart_after_crash = on
kms_pg.provider = 'local'
kms_pg.key_id = 'alias/t088'
kms_pg.format = 2
} . master_key_conf('a'));
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION kms_pg;
SELECT kms_create_key('alias/t088');
SELECT kms_create_key('alias/t088_' || i) FROM generate_series(1, 6) i;
CREATE TABLE vals (id int PRIMARY KEY, ct bytea NOT NULL);
});

# A value of id i is 'v<i>' under context {"id": i}, under key $key.
my $key = 'alias/t088';
sub ins
{
	my ($lo, $hi) = @_;
	return "INSERT INTO vals SELECT i, kms_encrypt_text('v' || i, jsonb_build_object('id', i), '$key')"
	  . " FROM generate_series($lo, $hi) i;";
}

# Committed values that decrypt with a cold cache, from a new connection.
sub cold_ok
{
	my ($n) = @_;
	$n->safe_psql('postgres', 'SELECT kms_cache_flush()');
	return $n->safe_psql('postgres',
		q{SELECT count(*) || '/' || count(*) FILTER (WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'v' || id) FROM vals});
}

# Committed format 2 values whose reference has no committed registry row.
my $orphans = q{SELECT count(*) FROM vals v WHERE get_byte(v.ct, 4) = 2 AND NOT EXISTS (
  SELECT 1 FROM kms_dek_registry r
  WHERE r.dek_ref = ('x' || encode(substr(v.ct, 6, 7), 'hex'))::bit(56)::bigint)};

sub gen_calls
{
	return $node->safe_psql('postgres', 'SELECT generate_calls FROM kms_cache_stats');
}

# 1. Abort and savepoint rollback of the transaction that made the DEK.
$key = 'alias/t088_1';
$node->safe_psql('postgres', 'SELECT kms_cache_flush(); BEGIN; ' . ins(1, 10) . ' ROLLBACK; ' . ins(1, 10));
$key = 'alias/t088_2';
$node->safe_psql('postgres',
	'SELECT kms_cache_flush(); BEGIN; SAVEPOINT a; ' . ins(11, 20) . ' ROLLBACK TO SAVEPOINT a; ' . ins(11, 20) . ' COMMIT;');
is($node->safe_psql('postgres', "SELECT count(DISTINCT substr(ct, 6, 7)) FROM vals"), '2',
	'abort and savepoint rollback: two data keys, one reference each');
is($node->safe_psql('postgres', $orphans), '0', 'abort, savepoint rollback: no orphaned reference');
is(cold_ok($node), '20/20', 'abort, savepoint rollback: the values decrypt cold');

# 2. PREPARE TRANSACTION: the prepared registry row's fate is decided later;
# values committed meanwhile with the same cached DEK must not depend on it.
$key = 'alias/t088_3';
$node->safe_psql('postgres',
	'SELECT kms_cache_flush(); BEGIN; ' . ins(21, 30) . " PREPARE TRANSACTION 'p1'; " . ins(31, 40));
is($node->safe_psql('postgres', 'SELECT count(*) FROM vals WHERE id BETWEEN 21 AND 40'), '10',
	'only the values outside the prepared transaction are visible');
$node->safe_psql('postgres', "COMMIT PREPARED 'p1'");
$key = 'alias/t088_4';
$node->safe_psql('postgres',
	'SELECT kms_cache_flush(); BEGIN; ' . ins(41, 50) . " PREPARE TRANSACTION 'p2'; " . ins(51, 60));
$node->safe_psql('postgres', "ROLLBACK PREPARED 'p2'");
is($node->safe_psql('postgres', 'SELECT count(*) FROM vals WHERE id BETWEEN 21 AND 60'), '30',
	'COMMIT PREPARED kept its values, ROLLBACK PREPARED dropped its own');
is($node->safe_psql('postgres', $orphans), '0', 'prepared transactions: no orphaned reference');
is(cold_ok($node), '50/50', 'prepared transactions: the values decrypt cold');

# 3. Two sessions share a cached DEK; the one that made it aborts, the other commits.
$key = 'alias/t088_5';
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
my $first = $node->background_psql('postgres', on_error_stop => 1);
$first->query_safe('BEGIN');
$first->query_safe(ins(61, 70));
my $g = gen_calls();
$node->safe_psql('postgres', ins(71, 80));
is(gen_calls(), $g, 'the second session sealed with the first one\'s cached DEK');
$first->query_safe('ROLLBACK');
$first->quit;
$node->restart;
is($node->safe_psql('postgres', 'SELECT count(*) FROM vals WHERE id BETWEEN 61 AND 80'), '10',
	'the aborted session left no value');
is($node->safe_psql('postgres', $orphans), '0', 'shared DEK, first session aborted: no orphaned reference');
is(cold_ok($node), '60/60', 'shared DEK, first session aborted: the values decrypt cold after a restart');

# 4. kill -9 of the postmaster right after the KMS call, before commit: a
# session holds an open transaction that made a new DEK (its registry row
# not committed), another session committed values with that DEK.
$key = 'alias/t088_6';
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
my $victim = $node->background_psql('postgres', on_error_stop => 1);
$victim->query_safe('BEGIN');
$g = gen_calls();
$victim->query_safe(ins(81, 90));
is(gen_calls() - $g, 1, 'the open transaction called the KMS for a new DEK');
$g = gen_calls();
$node->safe_psql('postgres', ins(91, 100));
is(gen_calls(), $g, 'a committed session sealed with that DEK');
my $pm_pid = $node->{_pid};
$node->kill9;
eval { $victim->quit; 1 };
# The orphaned backends exit when they notice the postmaster is gone.  A
# killed postmaster that nobody reaps stays a zombie, which the lock file
# check takes for a live one: its postmaster.pid is stale then.
my $started = 0;
for (my $i = 0; $i < 120 && !$started; $i++)
{
	my $status = -e "/proc/$pm_pid/status" ? slurp_file("/proc/$pm_pid/status") : '';
	unlink($node->data_dir . '/postmaster.pid') if $status =~ /^State:\s+Z/m;
	$node->{_pid} = undef;	# a failed start reads the stale pid file
	$started = $node->start(fail_ok => 1);
	sleep 1 unless $started;
}
ok($started, 'the server starts again after kill -9 of the postmaster');
is($node->safe_psql('postgres', 'SELECT count(*) FROM vals WHERE id BETWEEN 81 AND 100'), '10',
	'only the committed session\'s values survived');
is($node->safe_psql('postgres', $orphans), '0', 'kill -9: no orphaned reference');
is(cold_ok($node), '70/70', 'kill -9: every committed value decrypts cold');

# 4b. After the restart, encrypting under that key again reloads its DEK
# from the registry: one unwrap, no GenerateDataKey, no new registry row.
my ($g0, $d0) = split /\|/, $node->safe_psql('postgres', 'SELECT generate_calls, decrypt_calls FROM kms_cache_stats');
my $rows0 = $node->safe_psql('postgres', 'SELECT count(*) FROM kms_dek_registry');
$node->safe_psql('postgres', 'SELECT kms_cache_flush(); ' . ins(131, 140));
my ($g1, $d1) = split /\|/, $node->safe_psql('postgres', 'SELECT generate_calls, decrypt_calls FROM kms_cache_stats');
is($g1 - $g0, 0, 'restart then encrypt: no new DEK');
is($d1 - $d0, 1, 'restart then encrypt: one unwrap of the key\'s current DEK');
is($node->safe_psql('postgres', 'SELECT count(*) FROM kms_dek_registry'), $rows0,
	'restart then encrypt: no new registry row');
is($node->safe_psql('postgres', "SELECT count(DISTINCT substr(ct, 6, 7)) FROM vals WHERE id BETWEEN 91 AND 140"),
	'1', 'restart then encrypt: the values before and after share the DEK');
$node->safe_psql('postgres', 'DELETE FROM vals WHERE id BETWEEN 131 AND 140');
$key = 'alias/t088';

# 5. A standby from pg_basebackup, then failover.
$node->safe_psql('postgres', ins(101, 110));
$node->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('format_v2_standby');
$standby->init_from_backup($node, 'base', has_streaming => 1);
$standby->start;
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
$node->safe_psql('postgres', ins(111, 120));
$node->wait_for_catchup($standby);
is(cold_ok($standby), '90/90', 'the standby decrypts format 2 values cold (rows from the backup and from WAL)');
my ($ret, $out, $err) = $standby->psql('postgres',
	q{\set VERBOSITY verbose
SELECT kms_encrypt_text('on standby')});
like($err, qr/25006.*cannot encrypt in format 2 during recovery/s, 'the standby refuses format 2 with 25006');
like($err, qr/HINT:.*kms_pg.format = 1/s, 'with a hint');
is($standby->safe_psql('postgres',
		q{SET kms_pg.format = 1; SELECT kms_decrypt_text(kms_encrypt_text('v1 on standby'))}),
	'v1 on standby', 'the standby encrypts in format 1 when asked');
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'promotion failed';
is(cold_ok($standby), '90/90', 'the promoted standby decrypts format 2 values cold');
$standby->safe_psql('postgres', 'SELECT kms_cache_flush(); ' . ins(121, 130));
is($standby->safe_psql('postgres', $orphans), '0', 'the promoted standby registers its data keys');
is(cold_ok($standby), '100/100', 'the promoted standby encrypts format 2 values that decrypt cold');
$standby->stop;

# 6. pg_dump and restore into a fresh database of the same cluster.
my $dumpfile = $node->basedir . '/v2.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dumpfile, '-d', $node->connstr('postgres') ], 'pg_dump -Fc');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('restored'), $dumpfile ],
	'pg_restore into a fresh database');
is($node->safe_psql('restored', 'SELECT count(*) FROM kms_dek_registry'),
	$node->safe_psql('postgres', 'SELECT count(*) FROM kms_dek_registry'), 'the registry rows were restored');
$node->safe_psql('restored', 'SELECT kms_cache_flush()');
is($node->safe_psql('restored',
		q{SELECT count(*) FILTER (WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'v' || id) FROM vals}),
	'90', 'the restored format 2 values decrypt cold');

$node->stop;
done_testing();
