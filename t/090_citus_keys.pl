# The local keyring on a Citus cluster (docs/citus.md).  Opt-in: runs only
# when KMS_CITUS_PG_CONFIG names the pg_config of a PostgreSQL
# installation that has Citus and kms_pg installed; the normal suite skips
# it.  Nothing of Citus is part of kms_pg.
#
# A coordinator and two workers on 127.0.0.1, all with the same master
# key; a third worker is added later.  Proves:
#  - CREATE EXTENSION kms_pg reaches the workers; keys created, rotated,
#    disabled and enabled on the coordinator reach every worker at once
#    (kms_keys is the same on every node), and workers refuse key changes;
#  - a value encrypted on the coordinator decrypts on each worker, in a
#    query Citus pushes down and in a direct session;
#  - disabling the key on the coordinator stops it on every worker,
#    including DEKs already cached there, and enabling brings it back;
#  - the copy is not part of the coordinator's transaction: a rolled-back
#    disable stays on the workers until kms_citus_sync_keys();
#  - master-key rotation on the coordinator reaches the workers;
#  - a worker added later has no keys until kms_citus_sync_keys(), then all;
#    a worker with another master key refuses the copy and the key change
#    fails on the coordinator;
#  - ALTER ROLE / ALTER DATABASE ... SET kms_pg.key_id, SET and SET LOCAL:
#    what reaches the workers.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;
use KmsPgCitus;

sub node { return citus_node(@_); }
sub add_node { citus_add_worker(@_); }

my $coord = node('coord', 'a');
my $w1 = node('w1', 'a');
my $w2 = node('w2', 'a');
my @workers = ($w1, $w2);
$coord->safe_psql('postgres', "SELECT citus_set_coordinator_host('127.0.0.1', " . $coord->port . ")");
add_node($coord, $_) for @workers;
note 'Citus ' . $coord->safe_psql('postgres', 'SELECT citus_version()');

$coord->safe_psql('postgres', 'CREATE EXTENSION kms_pg');
for my $w (@workers)
{
	is($w->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'kms_pg'}),
		'1.1', $w->name . ': CREATE EXTENSION kms_pg reached the worker');
}

my $keys_q = q{SELECT string_agg(key_id || ' ' || coalesce(alias, '-') || ' ' || key_state || ' v' || current_version, ', ' ORDER BY key_id) FROM kms_keys};
sub same_keys
{
	my ($what) = @_;
	my $c = $coord->safe_psql('postgres', $keys_q);
	for my $w (@workers)
	{
		is($w->safe_psql('postgres', $keys_q), $c, $w->name . ": $what");
	}
	return $c;
}

my $kid = $coord->safe_psql('postgres', q{SELECT kms_create_key('alias/cit', $d$it's a "citus" test \ $$ key$d$)});
like(same_keys('the key created on the coordinator is on the worker'), qr/^\Q$kid\E alias\/cit Enabled v1$/,
	'the coordinator lists the new key');

# workers refuse changes of their own
my ($ret, $out, $err) = $w1->psql('postgres', q{SELECT kms_create_key('alias/w1-own')});
like($err, qr/kms_pg local keys of a Citus cluster are changed on the coordinator/, 'a worker refuses kms_create_key');
($ret, $out, $err) = $w1->psql('postgres', q{SELECT kms_disable_key('alias/cit')});
like($err, qr/changed on the coordinator/, 'a worker refuses kms_disable_key');
($ret, $out, $err) = $coord->psql('postgres', q{SELECT kms_citus_apply_keyring('{"keys":[],"versions":[]}')});
like($err, qr/this node is not a Citus worker/, 'the coordinator refuses kms_citus_apply_keyring');

# concurrent key changes on the coordinator: the second waits for the
# first to commit, so its copy to the workers includes the first key
my $s1 = $coord->background_psql('postgres');
$s1->query_safe(q{BEGIN; SELECT kms_create_key('alias/conc-1')});
my $s2 = $coord->background_psql('postgres', on_error_stop => 0);
$s2->query_until(qr/started/, "\\echo started\nSELECT kms_create_key('alias/conc-2');\n");
ok($coord->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM pg_locks WHERE NOT granted AND relation = 'kms_local_key'::regclass}),
	'a second key change on the coordinator waits for the first');
$s1->query_safe('COMMIT');
$s2->query('SELECT 1');
$s1->quit;
$s2->quit;
my $after = same_keys('both concurrent key creations reached the worker');
like($after, qr/alias\/conc-1 Enabled/, 'the first concurrent key is there');
like($after, qr/alias\/conc-2 Enabled/, 'the second concurrent key is there');

# kms_citus_sync_keys() waits for a key change in progress too
$s1 = $coord->background_psql('postgres');
$s1->query_safe(q{BEGIN; SELECT kms_create_key('alias/conc-3')});
$s2 = $coord->background_psql('postgres', on_error_stop => 0);
$s2->query_until(qr/started/, "\\echo started\nSELECT kms_citus_sync_keys();\n");
ok($coord->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM pg_locks WHERE NOT granted AND relation = 'kms_local_key'::regclass}),
	'kms_citus_sync_keys() waits for a key change in progress');
$s1->query_safe('COMMIT');
$s2->query('SELECT 1');
$s1->quit;
$s2->quit;
like(same_keys('a sync during a key change leaves the worker with that key'), qr/alias\/conc-3 Enabled/,
	'the key created during the sync is there');

for my $w (@workers)
{
	is($w->safe_psql('postgres', q{SELECT description FROM kms_keys WHERE alias = 'alias/cit'}),
		q{it's a "citus" test \ $$ key}, $w->name . ': the description arrived intact (quoting)');
}

# a worker takes only rows its master key authenticates: a snapshot whose
# version row was moved to another key id is refused, and nothing changes
my $forged = $coord->safe_psql(
	'postgres', q{
SELECT jsonb_build_object(
  'keys', (SELECT jsonb_agg(k) FROM kms_local_key k)
          || (SELECT jsonb_agg(jsonb_set(to_jsonb(k), '{key_id}', '"00000000-0000-4000-8000-000000000000"') - 'alias')
              FROM kms_local_key k WHERE alias = 'alias/cit'),
  'versions', (SELECT jsonb_agg(v) FROM kms_local_key_version v)
          || (SELECT jsonb_agg(jsonb_set(to_jsonb(v), '{key_id}', '"00000000-0000-4000-8000-000000000000"'))
              FROM kms_local_key_version v JOIN kms_local_key k USING (key_id) WHERE k.alias = 'alias/cit'))::text});
$forged =~ s/'/''/g;
($ret, $out, $err) = $w1->psql('postgres', "SELECT kms_citus_apply_keyring('$forged')");
like($err, qr/kms_pg keyring row for key "00000000-0000-4000-8000-000000000000" version 1 was altered/,
	'w1: a version row copied under another key id fails authentication and is refused');
is($w1->safe_psql('postgres', $keys_q), $coord->safe_psql('postgres', $keys_q), 'w1: the refused copy changed nothing');

# a distributed table with values encrypted on the coordinator
$coord->safe_psql(
	'postgres', q{
CREATE TABLE vals (id int PRIMARY KEY, plain text, ct bytea);
SELECT create_distributed_table('vals', 'id');
INSERT INTO vals SELECT i, 'value ' || i, kms_encrypt_text('value ' || i, jsonb_build_object('id', i), 'alias/cit')
  FROM generate_series(1, 200) AS i;
});
my $check = q{SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = plain};
my $one = $coord->safe_psql('postgres', q{SELECT encode(ct, 'hex') FROM vals WHERE id = 7});
my $direct = qq{SELECT kms_decrypt_text(decode('$one', 'hex'), '{"id": 7}')};
my $shards = q{SELECT string_agg(DISTINCT nodeport::text, ',') FROM citus_shards WHERE table_name = 'vals'::regclass};
is($coord->safe_psql('postgres', $shards), join(',', sort map { $_->port } @workers), 'vals has shards on both workers');
like($coord->safe_psql('postgres', "EXPLAIN (VERBOSE, COSTS OFF) $check"), qr/kms_decrypt_text/,
	'the decrypting filter is pushed down to the workers');
is($coord->safe_psql('postgres', $check), '200', 'all 200 values decrypt in a pushed-down query');
for my $w (@workers)
{
	is($w->safe_psql('postgres', $direct), 'value 7', $w->name . ': a coordinator value decrypts in a worker session');
}

# disable: every node, cached DEKs included
for my $w (@workers)
{
	$w->safe_psql('postgres', "$check; $check");    # warm the worker caches
	ok($w->safe_psql('postgres', q{SELECT sum(entries) FROM kms_cache_stats()}) > 0,
		$w->name . ': DEKs are cached on the worker');
}
$coord->safe_psql('postgres', q{SELECT kms_disable_key('alias/cit')});
like(same_keys('disable reached the worker'), qr/alias\/cit Disabled/, 'the key is disabled');
($ret, $out, $err) = $coord->psql('postgres', $check);
like($err, qr/disabled/, 'the pushed-down query fails once the key is disabled');
for my $w (@workers)
{
	($ret, $out, $err) = $w->psql('postgres', $direct);
	like($err, qr/disabled/, $w->name . ': the disabled key no longer decrypts (cached DEK dropped)');
}
$coord->safe_psql('postgres', q{SELECT kms_enable_key('alias/cit')});
like(same_keys('enable reached the worker'), qr/alias\/cit Enabled/, 'the key is enabled again');
is($coord->safe_psql('postgres', $check), '200', 'all values decrypt again after enable');

# rotate
$coord->safe_psql('postgres', q{SELECT kms_rotate_key('alias/cit')});
like(same_keys('rotation reached the worker'), qr/alias\/cit Enabled v2(,|$)/, 'the key is at version 2');
$coord->safe_psql('postgres',
	q{INSERT INTO vals SELECT i, 'value ' || i, kms_encrypt_text('value ' || i, jsonb_build_object('id', i), 'alias/cit') FROM generate_series(201, 260) AS i});
is($coord->safe_psql('postgres', $check), '260', 'values under versions 1 and 2 decrypt on the workers');

# scheduled deletion and its cancellation
$coord->safe_psql('postgres', q{SELECT kms_create_key('alias/doomed')});
$coord->safe_psql('postgres', q{SELECT kms_schedule_key_deletion('alias/doomed', 7)});
like(same_keys('scheduled deletion reached the worker'), qr/alias\/doomed PendingDeletion/, 'the key is pending deletion');
$coord->safe_psql('postgres', q{SELECT kms_cancel_key_deletion('alias/doomed')});
like(same_keys('cancelled deletion reached the worker'), qr/alias\/doomed Disabled/, 'the cancelled key is disabled');

# the copy commits on each worker before the coordinator commits
$coord->safe_psql('postgres', q{BEGIN; SELECT kms_disable_key('alias/cit'); ROLLBACK;});
is($coord->safe_psql('postgres', q{SELECT key_state FROM kms_keys WHERE alias = 'alias/cit'}), 'Enabled',
	'rolled-back disable: enabled on the coordinator');
for my $w (@workers)
{
	is($w->safe_psql('postgres', q{SELECT key_state FROM kms_keys WHERE alias = 'alias/cit'}), 'Disabled',
		$w->name . ': rolled-back disable: still disabled on the worker (documented)');
}
is($coord->safe_psql('postgres', q{SELECT kms_citus_sync_keys()}), '2', 'kms_citus_sync_keys() copies to 2 workers');
same_keys('kms_citus_sync_keys() restores the coordinator state');

# master-key rotation: every node gets master key b with a as previous
for my $n ($coord, @workers)
{
	$n->append_conf('postgresql.conf', master_key_conf('b')
		  . "kms_pg.previous_master_key_file = '" . master_key_file('a') . "'\n");
	$n->reload;
}
my $fp_b = $coord->safe_psql('postgres', q{SELECT fingerprint FROM kms_master_key_info()});
ok($coord->safe_psql('postgres', q{SELECT kms_rotate_master_key()}) > 0, 'kms_rotate_master_key() rewraps on the coordinator');
my $fps = q{SELECT string_agg(DISTINCT master_key, ',') FROM kms_local_key_version};
for my $w (@workers)
{
	is($w->safe_psql('postgres', $fps), $fp_b, $w->name . ': the worker rows are under the new master key');
	is($w->safe_psql('postgres', $direct), 'value 7', $w->name . ': decrypts after master-key rotation');
}

# a worker added later, first with another master key
my $w3 = node('w3', 'c');
add_node($coord, $w3);
is($w3->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'kms_pg'}), '1.1',
	'w3: citus_add_node created kms_pg on the new worker');
is($w3->safe_psql('postgres', q{SELECT count(*) FROM kms_keys}), '0', 'w3: no keys right after citus_add_node');
($ret, $out, $err) = $coord->psql('postgres', q{SELECT kms_create_key('alias/cit2')});
like($err, qr/could not copy the kms_pg keyring to Citus worker 127\.0\.0\.1:\d+/,
	'a worker with another master key makes the key change fail on the coordinator');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM kms_keys WHERE alias = 'alias/cit2'}), '0',
	'the failed change is rolled back on the coordinator');
$w3->append_conf('postgresql.conf', master_key_conf('b'));
$w3->reload;
is($coord->safe_psql('postgres', q{SELECT kms_citus_sync_keys()}), '3', 'kms_citus_sync_keys() copies to 3 workers');
push @workers, $w3;
same_keys('after kms_citus_sync_keys() the late worker has every key');
is($w3->safe_psql('postgres', $direct), 'value 7', 'w3: decrypts a coordinator value');
is($coord->safe_psql('postgres', $check), '260', 'all values decrypt with 3 workers');


# kms_pg.key_id: ALTER ROLE / ALTER DATABASE / SET / SET LOCAL
$coord->safe_psql('postgres', q{CREATE ROLE app LOGIN; ALTER ROLE app SET kms_pg.key_id = 'alias/cit'});
my $rs = q{SELECT coalesce(string_agg(array_to_string(setconfig, ','), ';'), '-') FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = 'app'};
for my $w (@workers)
{
	is($w->safe_psql('postgres', $rs), 'kms_pg.key_id=alias/cit', $w->name . ': ALTER ROLE ... SET kms_pg.key_id reached the worker');
}
for my $w (@workers)
{
	is($w->safe_psql('postgres', 'SHOW kms_pg.key_id', extra_params => [ '-U', 'app' ]), 'alias/cit',
		$w->name . ': a session of role app on the worker has kms_pg.key_id');
}
$coord->safe_psql('postgres', q{ALTER DATABASE postgres SET kms_pg.key_id = 'alias/cit2x'});
my $ds = q{SELECT coalesce(string_agg(array_to_string(setconfig, ','), ';'), '-') FROM pg_db_role_setting s WHERE setrole = 0 AND setdatabase = (SELECT oid FROM pg_database WHERE datname = 'postgres')};
my %dbset;
for my $w (@workers)
{
	$dbset{ $w->name } = $w->safe_psql('postgres', $ds);
	note $w->name . ': ALTER DATABASE setting on the worker: ' . $dbset{ $w->name };
}
is($dbset{$_->name}, 'kms_pg.key_id=alias/cit2x', $_->name . ': ALTER DATABASE ... SET kms_pg.key_id reached the worker')
  for @workers;
$coord->safe_psql('postgres', q{ALTER DATABASE postgres SET kms_pg.key_id = 'alias/cit'});
# kms_encrypt_text() in a query Citus pushes down runs on the workers, with their setting
my $pushed_enc = q{SELECT string_agg(DISTINCT kms_ciphertext_key_id(kms_encrypt_text(plain)), ',') FROM vals};
is($coord->safe_psql('postgres', $pushed_enc), $kid,
	'after ALTER DATABASE ... SET, a pushed-down kms_encrypt_text() on the workers uses that key');
$coord->safe_psql('postgres', q{ALTER DATABASE postgres RESET kms_pg.key_id});
for my $w (@workers)
{
	is($w->safe_psql('postgres', $ds), '-', $w->name . ': ALTER DATABASE ... RESET reached the worker');
}
($ret, $out, $err) = $coord->psql('postgres', qq{SET kms_pg.key_id = 'alias/cit'; $pushed_enc});
like($err, qr/no key given and kms_pg.key_id is not set/,
	'plain SET: a pushed-down kms_encrypt_text() on the workers has no kms_pg.key_id');
is($coord->safe_psql('postgres',
		qq{SET kms_pg.key_id = 'alias/cit'; INSERT INTO vals VALUES (1000, 'x', kms_encrypt_text('x', '{"id": 1000}'));
		   SELECT kms_ciphertext_key_id(ct) FROM vals WHERE id = 1000}),
	$kid, 'plain SET: an INSERT ... VALUES encrypts on the coordinator with the SET key');
is($coord->safe_psql('postgres', q{SET citus.propagate_set_commands = 'local'; BEGIN; SET LOCAL kms_pg.key_id = 'alias/cit'; } . $pushed_enc . '; COMMIT;'),
	$kid, "SET LOCAL with citus.propagate_set_commands = 'local': the pushed-down kms_encrypt_text() uses the key");

# what a pushed-down query sees of the session's kms_pg.key_id
my $seen = q{SELECT string_agg(DISTINCT coalesce(current_setting('kms_pg.key_id', true), ''), ',') FROM vals};
my $plain_set = $coord->safe_psql('postgres', qq{SET kms_pg.key_id = 'alias/by-set'; $seen});
note "plain SET, pushed-down current_setting: '$plain_set'";
is($plain_set, '', 'plain SET kms_pg.key_id does not reach the workers');
my $local_off = $coord->safe_psql('postgres', qq{BEGIN; SET LOCAL kms_pg.key_id = 'alias/by-local'; $seen; COMMIT;});
is($local_off, '', 'SET LOCAL does not reach the workers with citus.propagate_set_commands = none');
my $local_on = $coord->safe_psql('postgres',
	qq{SET citus.propagate_set_commands = 'local'; BEGIN; SET LOCAL kms_pg.key_id = 'alias/by-local'; $seen; COMMIT;});
is($local_on, 'alias/by-local', "SET LOCAL reaches the workers with citus.propagate_set_commands = 'local'");

$_->stop for ($coord, @workers);
done_testing();
