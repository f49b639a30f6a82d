# kill -9 of a backend that holds DEKs: the postmaster reinitialises shared
# memory, the DEK cache comes back empty and consistent (no stale slot, no
# FILLING slot whose filler is gone, no lock held), and everything works
# afterwards without any manual step.
#
# The local provider answers in microseconds, so a backend cannot be caught
# inside a provider call; it is killed while it sits in pg_sleep() after
# having filled the cache, which exercises the same shared-memory
# reinitialisation.  A second round, against the KMS emulator, kills a
# backend that is blocked inside a stalled KMS Decrypt while its cache slot
# is FILLING: after the restart no orphaned slot remains.
use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('crash_recovery');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'kms_pg'
restart_after_crash = on
} . master_key_conf('a'));
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION kms_pg;
SELECT kms_create_key('alias/t081');
CREATE TABLE vals AS
  SELECT i AS id, kms_encrypt_text('value ' || i, jsonb_build_object('id', i), 'alias/t081') AS ct
  FROM generate_series(1, 200) AS i;
});

my $all_ok = q{SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'value ' || id};
is($node->safe_psql('postgres', $all_ok), '200', 'all values decrypt before the crash');
ok($node->safe_psql('postgres', 'SELECT entries FROM kms_cache_stats') > 0, 'the DEK cache holds entries');

# A backend that used the cache, then waits in pg_sleep.
my $victim = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $victim->query_safe(
	q{SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) IS NOT NULL;
	  SELECT pg_backend_pid()});
($pid) = $pid =~ /(\d+)\s*$/;
$victim->query_until(qr/sleeping/, q{
\echo sleeping
SELECT pg_sleep(600);
});
$node->poll_query_until('postgres',
	"SELECT wait_event = 'PgSleep' FROM pg_stat_activity WHERE pid = $pid")
  or die 'the victim did not start sleeping';

my $log_offset = -s $node->logfile;
ok(kill("KILL", $pid), "SIGKILL of the sleeping backend");
eval { $victim->quit; 1 };	# its psql may already have seen the connection die

# The postmaster notices, terminates every backend and reinitialises.
ok( $node->log_contains('terminated by signal 9', $log_offset)
	  || $node->wait_for_log(qr/terminated by signal 9/, $log_offset),
	'the postmaster saw the killed backend');
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
$node->poll_query_until('postgres', 'SELECT true') or die 'the server did not come back';
pass('the server restarted after the crash');

my $stats = $node->safe_psql('postgres', 'SELECT entries, encrypting_entries, hits, misses FROM kms_cache_stats');
is($stats, '0|0|0|0', 'the DEK cache came back empty, with fresh statistics');

is($node->safe_psql('postgres', $all_ok), '200', 'all values decrypt after the crash');
is( $node->safe_psql(
		'postgres',
		q{SELECT kms_decrypt_text(kms_encrypt_text('fresh', '{"k": 1}', 'alias/t081'), '{"k": 1}')}),
	'fresh',
	'encryption works after the crash');
ok($node->safe_psql('postgres', 'SELECT entries FROM kms_cache_stats') > 0, 'the cache fills again');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted}),
	'0', 'no lock is waited for');

# Concurrent sessions after the restart find a consistent cache.
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
my @sessions = map { $node->background_psql('postgres') } 1 .. 4;
$_->query_until(qr/go/, "\\echo go\nSELECT count(*) FROM vals WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'value ' || id;\n")
  for @sessions;
$_->quit for @sessions;	# each psql exits once its statement is done
is($node->safe_psql('postgres', 'SELECT call_errors FROM kms_cache_stats'), '0', 'no provider call failed');
is($node->safe_psql('postgres', $all_ok), '200', 'all values still decrypt');

# ---- kill -9 of a backend blocked inside a stalled KMS call ----
my $AK = 'AKIAKMSPGTAPTEST0081';
my $SK = 'tap-crash-secret/0123456789abcdefghijklmnop';
my $emu = start_emulator(args => [ '--cred', "$AK:$SK", '--seed-alias', 'alias/kms-pg-test' ]);
$node->append_conf('postgresql.conf', qq{
kms_pg.endpoint = '$emu->{url}'
kms_pg.region = 'us-east-1'
kms_pg.ca_file = '$emu->{ca}'
kms_pg.credential_sources = 'env'
kms_pg.request_timeout = '120s'
});
start_with_env($node, { AWS_ACCESS_KEY_ID => $AK, AWS_SECRET_ACCESS_KEY => $SK });
$node->safe_psql(
	'postgres', q{
SET kms_pg.provider = aws;
CREATE TABLE aws_vals AS
  SELECT i AS id, kms_encrypt_text('aws value ' || i, jsonb_build_object('id', i), 'alias/kms-pg-test') AS ct
  FROM generate_series(1, 50) AS i;
SELECT kms_cache_flush();
});
my $aws_ok = q{SELECT count(*) FROM aws_vals WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'aws value ' || id};

emu_control($emu, 'POST', '/__emulator/counters/reset');
emu_control($emu, 'POST', '/__emulator/faults', '{"stall_ms": 60000, "ops": ["Decrypt"]}');
my $misses_before = $node->safe_psql('postgres', 'SELECT misses FROM kms_cache_stats');
my $filler = $node->background_psql('postgres', on_error_stop => 0);
my $filler_pid = $filler->query_safe('SELECT pg_backend_pid()');
$filler->query_until(qr/filling/, "\\echo filling\n$aws_ok;\n");
for (1 .. 200)
{
	last if emu_counters($emu)->{stalled} >= 1;
	usleep(50_000);
}
is(emu_counters($emu)->{stalled}, 1, 'a backend is blocked in a stalled KMS Decrypt');
is($node->safe_psql('postgres', "SELECT misses - $misses_before, entries FROM kms_cache_stats"), '1|0',
	'it has claimed a cache slot that is not filled yet (FILLING)');

$log_offset = -s $node->logfile;
ok(kill('KILL', $filler_pid), 'SIGKILL of the backend inside the KMS call');
eval { $filler->quit; 1 };
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
$node->poll_query_until('postgres', 'SELECT true') or die 'the server did not come back';
is($node->safe_psql('postgres', 'SELECT entries, hits, misses FROM kms_cache_stats'), '0|0|0',
	'after the restart the cache is empty: no orphaned FILLING slot');

emu_control($emu, 'POST', '/__emulator/faults/reset');
is($node->safe_psql('postgres', $aws_ok), '50', 'every AWS value decrypts after the crash');
is( $node->safe_psql(
		'postgres',
		q{SET kms_pg.provider = aws; SELECT kms_decrypt_text(kms_encrypt_text('fresh aws', '{}', 'alias/kms-pg-test'), '{}')}),
	'fresh aws',
	'AWS encryption works after the crash');
is($node->safe_psql('postgres', $all_ok), '200', 'local values still decrypt');

$node->stop;
stop_emulator($emu);
done_testing();
