# Single flight of the shared DEK cache across processes, counted in the
# emulator and in kms_cache_stats:
#  - 16 sessions released at the same moment (an advisory-lock gate) decrypt
#    values under one uncached DEK while KMS answers slowly: exactly one
#    Decrypt call; the other 15 wait for it (coalesced_waits) or find it.
#  - the same with a filler whose call fails (one HTTP 500, max_retries = 0):
#    all 16 get the error, from one Decrypt call; the failure does not stick.
#  - the filler is terminated while 8 sessions wait for it (its call stalls):
#    no waiter is stuck, one of them takes over and all get the value within
#    seconds; nobody waits on or holds an LWLock or a lock afterwards, and
#    the cache serves the DEK with no further KMS call.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use KmsPgCache;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $N = 16;
my $GATE = 505051;

my ($node, $emu) = cache_node('cache_single_flight', <<'EOF');
max_connections = 40
kms_pg.max_retries = 0
kms_pg.request_timeout = '120s'
EOF
my $calls = KmsPgCache->new($node, $emu);

$node->safe_psql('postgres', q{
	SET kms_pg.kms_context_keys = 'tenant';
	CREATE TABLE one AS
	  SELECT i, kms_encrypt_text('value ' || i, jsonb_build_object('tenant', 'solo', 'row', i)) AS ct
	  FROM generate_series(1, 100) i;
});
$calls->expect('setup: 100 values under one DEK', generate_calls => 1);
is($node->safe_psql('postgres', 'SELECT count(DISTINCT (kms_ciphertext_info(ct)).dek_id) FROM one'),
	'1', 'all values share one DEK');

my $decrypt =
  q{SELECT count(*) FROM one WHERE kms_decrypt_text(ct, jsonb_build_object('tenant', 'solo', 'row', i)) = 'value ' || i};

my @sessions = map { $node->background_psql('postgres', on_error_stop => 0) } 1 .. $N;

sub emu_faults
{
	my ($json) = @_;
	emu_control($emu, 'POST', '/__emulator/faults/reset');
	emu_control($emu, 'POST', '/__emulator/faults', $json) if $json;
}

# Run $decrypt in all sessions at once: they queue on an advisory lock held
# by a gate session, which lets them all go together.  Returns the outputs
# and errors of the sessions.
sub decrypt_together
{
	my $gate = $node->background_psql('postgres');
	$gate->query_safe("SELECT pg_advisory_lock($GATE)");
	for my $s (@sessions)
	{
		$s->{stderr} = '';
		$s->query_until(qr/armed/,
			"\\echo armed\nSELECT pg_advisory_xact_lock_shared($GATE);\n$decrypt;\n\\echo finished\n");
	}
	$node->poll_query_until('postgres',
		"SELECT count(*) = $N FROM pg_locks WHERE locktype = 'advisory' AND objid = $GATE AND NOT granted")
	  or die 'the sessions did not reach the gate';
	$gate->query_safe("SELECT pg_advisory_unlock($GATE)");
	my (@out, @err);
	for my $s (@sessions)
	{
		my $o = $s->query_until(qr/finished/, '');
		push @out, $o;
		push @err, $s->{stderr};
	}
	$gate->quit;
	return (\@out, \@err);
}

# ---- 16 sessions, one uncached DEK, KMS slow: one Decrypt ----
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
$calls->mark;
emu_faults('{"latency_ms": 500, "ops": ["Decrypt"]}');
my ($out, $err) = decrypt_together();
is(scalar(grep { /^100$/m } @$out), $N, "all $N sessions decrypted the 100 values");
is(join('', @$err), '', 'and none got an error');
my $d = $calls->expect("$N sessions at once", decrypt_calls => 1, call_errors => 0);
is($d->{misses}, 1, 'one cache miss: one session filled the entry');
cmp_ok($d->{coalesced_waits}, '>=', 1, "sessions waited for the filler (coalesced_waits $d->{coalesced_waits})");
is($d->{hits}, $N - 1, 'the other 15 found the DEK in shared memory');

# ---- the same with a filler that fails ----
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
$calls->mark;
emu_faults('{"latency_ms": 1500, "error_5xx_count": 1, "ops": ["Decrypt"]}');
($out, $err) = decrypt_together();
is(scalar(grep { /ERROR:  KMS Decrypt failed after 1 attempt with HTTP status 500/ } @$err),
	$N, "all $N sessions got the KMS error");
is(scalar(grep { /DETAIL:  Another session asked the key provider for this data key and failed\./ } @$err),
	$N - 1, "$N - 1 of them got it from the filler");
is(scalar(grep { /^100$/m } @$out), 0, 'no session returned a result');
$d = $calls->expect("$N sessions, failing filler", decrypt_calls => 1, call_errors => 1);
is(emu_counters($emu)->{errors_5xx}, 1, 'the emulator answered one call with HTTP 500');
cmp_ok($d->{coalesced_waits}, '>=', $N - 1, 'the others all waited for the filler');

emu_faults();
is($node->safe_psql('postgres', $decrypt), '100', 'the failure is not cached: the next session decrypts');
$calls->expect('after the failed fill', decrypt_calls => 1, call_errors => 0);

$_->quit for @sessions;

# ---- terminate the filler while 8 sessions wait ----
my $NW = 8;
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
$calls->mark;
emu_faults('{"stall_ms": 60000, "stall_count": 1, "ops": ["Decrypt"]}');
my $before = cache_stats($node);
my $decrypts_before = emu_counters($emu)->{Decrypt};

my $filler = $node->background_psql('postgres', on_error_stop => 0);
my $filler_pid = $filler->query_safe('SELECT pg_backend_pid()');
$filler->query_until(qr/filling/, "\\echo filling\n$decrypt;\n");
for (1 .. 200)
{
	last if emu_counters($emu)->{stalled} >= 1;
	usleep(50_000);
}
is(emu_counters($emu)->{stalled}, 1, "the filler's Decrypt is stalled in KMS");

my @waiters = map { $node->background_psql('postgres', on_error_stop => 0) } 1 .. $NW;
$_->query_until(qr/waiting/, "\\echo waiting\n$decrypt;\n\\echo finished\n") for @waiters;
$node->poll_query_until('postgres',
	"SELECT coalesced_waits - $before->{coalesced_waits} >= $NW FROM kms_cache_stats")
  or die 'the waiters did not start waiting';
my $wait_events = $node->safe_psql('postgres',
	qq{SELECT coalesce(wait_event_type, '-'), count(*) FROM pg_stat_activity
	   WHERE query LIKE 'SELECT count(*) FROM one WHERE kms_decrypt_text%' AND pid <> $filler_pid GROUP BY 1});
is($wait_events, "Extension|$NW", "the $NW waiters sleep on the slot (wait event Extension), none on an LWLock");
is(emu_counters($emu)->{Decrypt} - $decrypts_before, 1, 'only the filler asked KMS');

my $t0 = time;
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($filler_pid)"), 't', 'terminate the filler');
my $ok = 0;
for my $w (@waiters)
{
	$ok++ if $w->query_until(qr/finished/, '') =~ /^100$/m;
	$w->quit;
}
my $elapsed = time - $t0;
is($ok, $NW, "all $NW waiters got the values");
cmp_ok($elapsed, '<', 5, sprintf('within seconds of the termination (%.2f s)', $elapsed));
eval { $filler->quit; 1 };

# The filler's stalled call reached KMS, so both sides count it (the
# server as a failed call); one waiter took over and made the second.
$d = $calls->expect('filler terminated, one waiter took over', decrypt_calls => 2, call_errors => 1);
is($d->{misses}, 2, 'two fills: the filler and the one that took over');

is( $node->safe_psql('postgres',
		qq{SELECT count(*) FROM pg_stat_activity WHERE wait_event_type IN ('LWLock', 'Extension')
		   OR (query LIKE 'SELECT count(*) FROM one WHERE kms_decrypt_text%' AND state = 'active')}),
	'0', 'no session left waiting');
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_locks WHERE NOT granted'), '0', 'no lock awaited');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
		  WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()}),
	'0', 'no other session holds a lock');
is($node->safe_psql('postgres', $decrypt), '100', 'the cache works afterwards');
$calls->expect('decrypt after the takeover');
is($node->safe_psql('postgres', 'SELECT entries FROM kms_cache_stats'), '1', 'one live entry');

unlike(slurp_file($node->logfile), qr/was terminated by signal|PANIC/, 'no backend crashed');
$node->stop;
stop_emulator($emu);
done_testing();
