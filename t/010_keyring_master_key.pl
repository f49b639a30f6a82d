# The local keyring catalog under its master key: values survive restarts;
# every master-key fault is a clear error with its own SQLSTATE and never
# falls back to anything (docs/troubleshooting.md):
#   no master key configured            58P01
#   master key file missing             58P01
#   master key file readable by others  F0000
#   master key file without a key       F0000
#   file and command both set           F0000
#   wrong master key                    28P01
#   master key command fails            38000
#   master key command hangs (timeout)  57014
#   catalog row altered by hand         XX001
# Plus: the catalog is unreadable for ordinary roles, master key rotation
# in one call, scheduled deletion (7-30 days, cancellable, refused for keys
# in use), and a disable that takes effect at once in every session.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);
use KmsPgKeyring;

my $node = PostgreSQL::Test::Cluster->new('keyring_master_key');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n");
my $conf_file = $node->data_dir . '/postgresql.auto.conf';
$node->start;

# Point the server at a master key source and reload.
sub set_master
{
	my (%s) = @_;
	my $sql = '';
	for my $g (qw(master_key_file master_key_command previous_master_key_file
		previous_master_key_command master_key_command_timeout))
	{
		$sql .= exists $s{$g}
		  ? "ALTER SYSTEM SET kms_pg.$g = '$s{$g}';\n"
		  : "ALTER SYSTEM RESET kms_pg.$g;\n";
	}
	$node->safe_psql('postgres', $sql . 'SELECT pg_reload_conf();');
	# wait until a new backend sees the settings
	my $want = join('|', map { $s{$_} // '' } qw(master_key_file master_key_command))
	  . '|' . ($s{master_key_command_timeout} // '10s');
	$want =~ s/\|60s$/|1min/;
	for (1 .. 200)
	{
		my $v = $node->safe_psql('postgres',
			q{SELECT current_setting('kms_pg.master_key_file') || '|' || current_setting('kms_pg.master_key_command')
			  || '|' || current_setting('kms_pg.master_key_command_timeout')});
		last if $v eq $want;
		select(undef, undef, undef, 0.05);
	}
	return;
}

sub fails
{
	my ($sql, $re, $name) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "SELECT kms_cache_flush();\n" . $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	ok($ret != 0 && $err =~ $re, $name) or diag("ret $ret\nstdout: $out\nstderr: $err");
	return $err;
}

my $check_all = q{SELECT kms_cache_flush() >= 0, count(*) FROM vals WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'value ' || id};

# No master key configured: creating the first key is already an error.
$node->safe_psql('postgres', 'CREATE EXTENSION kms_pg');
fails(q{SELECT kms_create_key('alias/t010')},
	qr/58P01: no kms_pg master key is configured/, 'no master key configured: 58P01');
is($node->safe_psql('postgres', 'SELECT count(*) FROM kms_local_key'), '0', 'and no key was stored');

set_master(master_key_file => master_key_file('a'));
$node->safe_psql(
	'postgres', q{
SELECT kms_create_key('alias/t010');
SELECT kms_create_key('alias/t010-other');
CREATE TABLE vals (id int PRIMARY KEY, ct bytea);
INSERT INTO vals SELECT i, kms_encrypt_text('value ' || i, jsonb_build_object('id', i),
    CASE WHEN i % 2 = 0 THEN 'alias/t010' ELSE 'alias/t010-other' END) FROM generate_series(1, 100) i;
SELECT kms_rotate_key('alias/t010');
INSERT INTO vals SELECT i, kms_encrypt_text('value ' || i, jsonb_build_object('id', i), 'alias/t010')
    FROM generate_series(101, 120) i;
});
is($node->safe_psql('postgres', $check_all), 't|120', 'values under two keys and two versions decrypt');
is( $node->safe_psql('postgres',
		q{SELECT count(*), count(DISTINCT master_key), min(length(material)) FROM kms_local_key_version}),
	'3|1|60', 'three key versions, wrapped (60 bytes each) under one master key');
is($node->safe_psql('postgres', q{SELECT fingerprint FROM kms_master_key_info()}),
	$node->safe_psql('postgres', q{SELECT DISTINCT master_key FROM kms_local_key_version}),
	'kms_master_key_info() gives the fingerprint the rows record');

# the plaintext key material appears nowhere in the catalog
$node->restart;
is($node->safe_psql('postgres', $check_all), 't|120', 'after a restart every value decrypts');

# ---- master key faults ----
my $dir = PostgreSQL::Test::Utils::tempdir('t010');
set_master(master_key_file => "$dir/absent.key");
fails($check_all, qr/58P01: kms_pg master key file ".*absent\.key" does not exist/,
	'master key file missing: 58P01');
fails(q{SELECT kms_create_key('alias/t010-x')}, qr/58P01/, 'no key can be created without it either');

my $loose = "$dir/loose.key";
append_to_file($loose, master_key_hex('a') . "\n");
chmod(0644, $loose);
set_master(master_key_file => $loose);
fails($check_all, qr/F0000: kms_pg master key file ".*" has group or world access/,
	'master key file readable by others: F0000');

my $junk = "$dir/junk.key";
append_to_file($junk, "not a key\n");
chmod(0600, $junk);
set_master(master_key_file => $junk);
fails($check_all, qr/F0000: kms_pg master key file ".*" does not hold a master key/,
	'master key file without a key: F0000');

set_master(master_key_file => master_key_file('a'), master_key_command => '/bin/cat ' . master_key_file('a'));
fails($check_all, qr/F0000: kms_pg.master_key_file and kms_pg.master_key_command are both set/,
	'two master key sources: F0000');

set_master(master_key_file => master_key_file('b'));
my $err = fails($check_all, qr/28P01: wrong kms_pg master key for key "[-0-9a-f]+" version \d/,
	'wrong master key: 28P01');
unlike($err, qr/\Q${\ master_key_hex('a')}\E|\Q${\ master_key_hex('b')}\E/, 'no master key in the message');

# commands: run without a shell, absolute path, with a timeout
set_master(master_key_command => '/bin/cat ' . master_key_file('a'));
is($node->safe_psql('postgres', $check_all), 't|120', 'master key from a command: every value decrypts');
set_master(master_key_command => '/bin/false');
fails($check_all, qr/38000: kms_pg master key command failed/, 'failing master key command: 38000');
set_master(master_key_command => '/bin/echo not-a-key');
fails($check_all, qr/38000: kms_pg master key command printed no valid master key/,
	'master key command printing garbage: 38000');
set_master(master_key_command => 'cat ' . master_key_file('a'));
fails($check_all, qr/F0000: kms_pg.master_key_command must start with an absolute program path/,
	'relative command: F0000');
set_master(master_key_command => '/bin/echo ' . master_key_hex('a') . ' ; rm -rf /tmp/x');
fails($check_all, qr/38000: kms_pg master key command printed no valid master key/,
	'no shell: a ";" is just an argument');
set_master(master_key_command => '/bin/sleep 60', master_key_command_timeout => '500ms');
my $t0 = time();
fails($check_all, qr/57014: kms_pg master key command timed out after 500 ms/, 'hanging master key command: 57014');
ok(time() - $t0 < 20, 'the hanging command was killed at its timeout');
# a cancel (here statement_timeout) while the command hangs kills it too
set_master(master_key_command => '/bin/sleep 61.25', master_key_command_timeout => '60s');
$t0 = time();
fails("SET statement_timeout = '1s';\n" . $check_all, qr/57014: canceling statement due to statement timeout/,
	'a cancel while the master key command runs: the statement is cancelled');
ok(time() - $t0 < 20, 'at once, not at the command timeout');
my @left = grep { m{/bin/sleep 61\.25} } `ps -eo args`;
is(scalar(@left), 0, 'and the command was killed with it') or diag(@left);

set_master(master_key_file => master_key_file('a'));
is($node->safe_psql('postgres', $check_all), 't|120', 'the right master key again: every value decrypts');

# ---- a catalog row altered by hand ----
my $k1 = $node->safe_psql('postgres', q{SELECT key_id FROM kms_keys WHERE alias = 'alias/t010'});
my $k2 = $node->safe_psql('postgres', q{SELECT key_id FROM kms_keys WHERE alias = 'alias/t010-other'});
my $saved = $node->safe_psql('postgres',
	qq{SELECT encode(material, 'hex') FROM kms_local_key_version WHERE key_id = '$k1' AND version = 1});
# another key's material, validly wrapped under the same master key
$node->safe_psql('postgres',
	qq{UPDATE kms_local_key_version SET material = (SELECT material FROM kms_local_key_version WHERE key_id = '$k2')
	   WHERE key_id = '$k1' AND version = 1});
fails(q{SELECT kms_decrypt_text(ct, jsonb_build_object('id', id)) FROM vals WHERE id = 2},
	qr/XX001: kms_pg keyring row for key "$k1" version 1 was altered/,
	'material copied from another key: XX001');
# one flipped bit
$node->safe_psql('postgres',
	qq{UPDATE kms_local_key_version SET material = set_byte('\\x$saved'::bytea, 20, get_byte('\\x$saved'::bytea, 20) # 1)
	   WHERE key_id = '$k1' AND version = 1});
fails(q{SELECT kms_decrypt_text(ct, jsonb_build_object('id', id)) FROM vals WHERE id = 2},
	qr/XX001: kms_pg keyring row for key "$k1" version 1 was altered/, 'a flipped bit: XX001');
# versions swapped
$node->safe_psql('postgres',
	qq{UPDATE kms_local_key_version SET material = (SELECT material FROM kms_local_key_version WHERE key_id = '$k1' AND version = 2)
	   WHERE key_id = '$k1' AND version = 1});
fails(q{SELECT kms_decrypt_text(ct, jsonb_build_object('id', id)) FROM vals WHERE id = 2},
	qr/XX001/, 'material moved to another version: XX001');
$node->safe_psql('postgres',
	qq{UPDATE kms_local_key_version SET material = '\\x$saved' WHERE key_id = '$k1' AND version = 1});
is($node->safe_psql('postgres', $check_all), 't|120', 'the restored row decrypts again');

# ---- ordinary roles ----
$node->safe_psql('postgres', q{CREATE ROLE app LOGIN; GRANT SELECT ON vals TO app;});
for my $t (qw(kms_local_key kms_local_key_version))
{
	my ($ret, $out, $e) = $node->psql('postgres', "SET ROLE app; SELECT * FROM $t",
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($e, qr/42501/, "an ordinary role cannot read $t");
}
{
	my ($ret, $out, $e) = $node->psql('postgres', 'SET ROLE app; SHOW kms_pg.master_key_file');
	like($e, qr/permission denied|must be superuser|privileges of pg_read_all_settings/,
		'an ordinary role cannot see kms_pg.master_key_file');
	($ret, $out, $e) = $node->psql('postgres', 'SET ROLE app; SELECT kms_rotate_master_key()');
	like($e, qr/permission denied/, 'nor rotate the master key');
}
# a role allowed to decrypt needs no privilege on the catalog
$node->safe_psql('postgres', q{GRANT EXECUTE ON FUNCTION kms_decrypt_text(bytea, jsonb) TO app;
	SELECT kms_grant_key(k, 'app') FROM unnest(ARRAY['alias/t010', 'alias/t010-other']) k});
is( $node->safe_psql('postgres',
		q{SELECT kms_cache_flush(); SET ROLE app; SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'value ' || id}),
	"0\n120", 'a role granted kms_decrypt_text decrypts without reading the catalog');

# ---- master key rotation in one call ----
set_master(master_key_file => master_key_file('b'), previous_master_key_file => master_key_file('a'));
is($node->safe_psql('postgres', $check_all), 't|120', 'during a rotation rows under the previous key still decrypt');
is($node->safe_psql('postgres', 'SELECT kms_rotate_master_key()'), '3', 'kms_rotate_master_key() rewraps the 3 rows');
is($node->safe_psql('postgres', 'SELECT kms_rotate_master_key()'), '0', 'a second call has nothing left to do');
is($node->safe_psql('postgres', 'SELECT count(DISTINCT master_key) FROM kms_local_key_version'), '1',
	'every row is under one master key');
set_master(master_key_file => master_key_file('b'));
is($node->safe_psql('postgres', $check_all), 't|120', 'after rotation the new master key alone decrypts everything');
set_master(master_key_file => master_key_file('a'));
fails($check_all, qr/28P01/, 'and the old master key no longer does');
set_master(master_key_file => master_key_file('b'));

# ---- a role granted key management: no privilege on the catalog needed,
# and nothing it defines runs with the owner's rights ----
$node->safe_psql(
	'postgres', q{
CREATE ROLE keyadm LOGIN;
GRANT EXECUTE ON FUNCTION kms_create_key(text, text), kms_rotate_key(text), kms_disable_key(text),
    kms_enable_key(text) TO keyadm;
CREATE SCHEMA evil AUTHORIZATION keyadm;
});
is( $node->safe_psql('postgres', q{SET ROLE keyadm; SELECT kms_rotate_key(kms_create_key('alias/t010-adm'))}),
	'2', 'a role granted kms_create_key/kms_rotate_key manages keys without privileges on the catalog');
{
	my ($ret, $out, $e) = $node->psql('postgres', 'SET ROLE keyadm; SELECT count(*) FROM kms_local_key');
	like($e, qr/permission denied/, 'and still cannot read the catalog');
}
$node->safe_psql(
	'postgres', q{
SET ROLE keyadm;
CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE plpgsql
  AS $$BEGIN RAISE EXCEPTION 'hijacked: % %', $1, $2; END$$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
CREATE FUNCTION evil.max(int) RETURNS int LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'hijacked max'; END$$;
});
is( $node->safe_psql('postgres',
		q{SET ROLE keyadm; SET search_path = evil, pg_catalog, public;
		  SELECT kms_rotate_key('alias/t010-adm'); SELECT kms_disable_key('alias/t010-adm');
		  SELECT kms_enable_key('alias/t010-adm'); SELECT kms_create_key('alias/t010-adm2') IS NOT NULL}),
	"3


t", "an operator or function of the caller's schema is never resolved by the catalog changes");
$node->safe_psql('postgres', q{DROP SCHEMA evil CASCADE});

# ---- scheduled deletion ----
fails(q{SELECT kms_schedule_key_deletion('alias/t010', 6)},
	qr/22023: pending deletion window of 6 days is out of range/, 'a 6-day window is refused');
fails(q{SELECT kms_schedule_key_deletion('alias/t010', 31)}, qr/22023/, 'a 31-day window is refused');
fails(q{SELECT kms_schedule_key_deletion('alias/t010', 7)},
	qr/55006: kms_pg local key "$k1" is still in use/, 'a key in use cannot be scheduled for deletion');
$node->safe_psql('postgres', q{SELECT kms_create_key('alias/t010-doomed')});
$node->safe_psql('postgres', q{CREATE TABLE doomed AS SELECT kms_encrypt_text('d', '{}', 'alias/t010-doomed') AS ct});
fails(q{SELECT kms_schedule_key_deletion('alias/t010-doomed')}, qr/55006/,
	'a key whose values sit in any table is refused');
$node->safe_psql('postgres', q{DROP TABLE doomed});
is( $node->safe_psql('postgres',
		q{SELECT kms_schedule_key_deletion('alias/t010-doomed', 7)::date = (now() + interval '7 days')::date}),
	't', 'an unused key is scheduled for deletion in 7 days');
is( $node->safe_psql('postgres', q{SELECT key_state, enabled, deletion_date IS NOT NULL FROM kms_keys WHERE alias = 'alias/t010-doomed'}),
	'PendingDeletion|f|t', 'kms_keys shows it pending deletion');
fails(q{SELECT kms_encrypt_text('x', '{}', 'alias/t010-doomed')},
	qr/55000: kms_pg local key ".*" is pending deletion/, 'a key pending deletion cannot be used');
fails(q{SELECT kms_enable_key('alias/t010-doomed')}, qr/55000: .* is pending deletion/,
	'nor enabled');
$node->safe_psql('postgres', q{SELECT kms_cancel_key_deletion('alias/t010-doomed')});
is($node->safe_psql('postgres', q{SELECT key_state FROM kms_keys WHERE alias = 'alias/t010-doomed'}),
	'Disabled', 'a cancelled deletion leaves the key disabled');
fails(q{SELECT kms_cancel_key_deletion('alias/t010-doomed')}, qr/55000: .* is not pending deletion/,
	'cancelling twice is an error');
$node->safe_psql('postgres', q{SELECT kms_enable_key('alias/t010-doomed')});
is($node->safe_psql('postgres', q{SELECT length(kms_encrypt_text('x', '{}', 'alias/t010-doomed')) > 0}),
	't', 'and enabling it makes it usable again');
$node->safe_psql('postgres', q{SELECT kms_schedule_key_deletion('alias/t010-doomed', 30)});
is($node->safe_psql('postgres', 'SELECT kms_purge_deleted_keys()'), '0', 'nothing is purged before its date');
# (the waiting period elapsing, simulated by moving the date)
$node->safe_psql('postgres',
	q{UPDATE kms_local_key SET deletion_date = now() - interval '1 second' WHERE alias = 'alias/t010-doomed'});
is($node->safe_psql('postgres', 'SELECT kms_purge_deleted_keys()'), '1', 'after its date the key is purged');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM kms_local_key k FULL JOIN kms_local_key_version v USING (key_id) WHERE k.alias = 'alias/t010-doomed' OR k.key_id IS NULL}),
	'0', 'with all its versions');
is($node->safe_psql('postgres', $check_all), 't|120', 'the other keys are untouched');

# ---- a disable reaches every session at once ----
# session 1 caches the data keys; session 2 disables; session 1 must fail
# at its very next call, not at cache expiry.
my ($in, $out1, $err1) = ('', '', '');
my $h = IPC::Run::start([ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=0', '-d', $node->connstr('postgres') ],
	'<', \$in, '>', \$out1, '2>', \$err1, IPC::Run::timeout(120));
$in .= q{SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'value ' || id;} . "\n";
$h->pump until $out1 =~ /^120$/m || $err1;
is($out1, "120\n", 'session 1 decrypts (and caches the data keys)');
$node->safe_psql('postgres', q{SELECT kms_disable_key('alias/t010')});
$in .= q{SELECT count(*) FROM vals WHERE id = 2 AND kms_decrypt_text(ct, jsonb_build_object('id', id)) IS NOT NULL;} . "\n";
$h->pump until $err1 =~ /ERROR/ || $out1 =~ /^1$/m;
like($err1, qr/kms_pg local key ".*" is disabled/, 'session 1 fails at once after session 2 disabled the key');
$in .= "\\q\n";
$h->finish;
$node->safe_psql('postgres', q{SELECT kms_enable_key('alias/t010')});

$node->stop;
done_testing();
