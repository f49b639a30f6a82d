# Eight sessions wait for one backend that is filling the DEK cache slot
# they all need (the filler is stuck in a stalled KMS Decrypt).  Ending the
# filler -- pg_terminate_backend, then in a second round pg_cancel_backend
# -- must leave no waiter stuck: one of them takes over the fill, all eight
# get the right plaintext within a few seconds, and afterwards no session
# is left waiting and no lock is held or awaited.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $AK = 'AKIAKMSPGTAPTEST0082';
my $SK = 'tap-waiters-secret/0123456789abcdefghijklmn';
my $NWAITERS = 8;

my $emu = start_emulator(args => [ '--cred', "$AK:$SK", '--seed-alias', 'alias/kms-pg-test' ]);
my $node = kms_node('cache_waiters', <<"EOF");
kms_pg.endpoint = '$emu->{url}'
kms_pg.region = 'us-east-1'
kms_pg.ca_file = '$emu->{ca}'
kms_pg.credential_sources = 'env'
kms_pg.provider = 'aws'
kms_pg.request_timeout = '120s'
max_connections = 30
EOF
start_with_env($node, { AWS_ACCESS_KEY_ID => $AK, AWS_SECRET_ACCESS_KEY => $SK });
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION kms_pg;
CREATE TABLE vals AS
  SELECT kms_encrypt_text('the waited-for value', '{"t": "082"}', 'alias/kms-pg-test') AS ct;
});

my $decrypt = q{SELECT kms_decrypt_text(ct, '{"t": "082"}') FROM vals};

sub decrypting_sessions
{
	return $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT kms_decrypt_text(ct%' AND state = 'active'});
}

for my $how ('terminate', 'cancel')
{
	$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
	emu_control($emu, 'POST', '/__emulator/counters/reset');
	emu_control($emu, 'POST', '/__emulator/faults',
		'{"stall_ms": 60000, "stall_count": 1, "ops": ["Decrypt"]}');
	my $coalesced_before = $node->safe_psql('postgres', 'SELECT coalesced_waits FROM kms_cache_stats');

	# the filler: its Decrypt stalls for a minute
	my $filler = $node->background_psql('postgres', on_error_stop => 0);
	my $filler_pid = $filler->query_safe('SELECT pg_backend_pid()');
	$filler->query_until(qr/filling/, "\\echo filling\n$decrypt;\n");
	for (1 .. 200)
	{
		last if emu_counters($emu)->{stalled} >= 1;
		usleep(50_000);
	}
	is(emu_counters($emu)->{stalled}, 1, "$how: the filler's Decrypt is stalled");

	# eight waiters on the same slot
	my @waiters;
	for my $i (1 .. $NWAITERS)
	{
		my $w = $node->background_psql('postgres', on_error_stop => 0);
		$w->query_until(qr/waiting/, "\\echo waiting\n$decrypt;\n\\echo finished\n");
		push @waiters, $w;
	}
	$node->poll_query_until('postgres',
		"SELECT coalesced_waits - $coalesced_before >= $NWAITERS FROM kms_cache_stats")
	  or die 'the waiters did not start waiting';
	is(decrypting_sessions(), $NWAITERS + 1, "$how: $NWAITERS waiters and the filler are active");
	is(emu_counters($emu)->{Decrypt}, 1, "$how: only the filler asked KMS");

	# end the filler
	my $t0 = time;
	my $fn = $how eq 'terminate' ? 'pg_terminate_backend' : 'pg_cancel_backend';
	is($node->safe_psql('postgres', "SELECT $fn($filler_pid)"), 't', "$how: $fn of the filler");

	my $finished = 0;
	for my $w (@waiters)
	{
		my $out = $w->query_until(qr/finished/, '');
		$finished++ if $out =~ /^the waited-for value$/m;
		$w->quit;
	}
	my $elapsed = time - $t0;
	note(sprintf('%s: all waiters finished %.2f s after the filler was ended', $how, $elapsed));
	is($finished, $NWAITERS, "$how: all $NWAITERS waiters got the plaintext");
	ok($elapsed < 5, "$how: they finished within 5 seconds");
	is(emu_counters($emu)->{Decrypt}, 2, "$how: exactly one waiter took over the fill");

	if ($how eq 'cancel')
	{
		$filler->{stderr} = '';
		my $out = $filler->query('SELECT 1');
		is($out, '1', 'cancel: the filler session is still usable');
	}
	eval { $filler->quit; 1 };	# a terminated filler's psql is already gone

	is( $node->safe_psql('postgres',
			q{SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Extension' OR query LIKE 'SELECT kms_decrypt_text(ct%' AND state = 'active'}),
		'0', "$how: no session left waiting");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_locks WHERE NOT granted'),
		'0', "$how: no lock awaited");
	is( $node->safe_psql('postgres',
			q{SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()}),
		'0', "$how: no other client backend holds a lock");
	is($node->safe_psql('postgres', $decrypt), 'the waited-for value', "$how: the value decrypts from the cache");
	emu_control($emu, 'POST', '/__emulator/faults/reset');
}

unlike(slurp_file($node->logfile), qr/was terminated by signal|PANIC/, 'no backend crashed');

$node->stop;
stop_emulator($emu);
done_testing();
