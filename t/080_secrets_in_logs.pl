# Secrets never reach logs, settings or activity views, and ordinary roles
# cannot read the keyring, redirect KMS traffic or use privileged functions.
#
# A server logging everything (debug5, every statement, verbose errors)
# runs the local provider's scenarios: key creation, encryption with and
# without provider-context keys, decryption, rewrap, re-encryption,
# rotation, disabled and unknown keys, wrong contexts and tampered values.
# test/secrets_scan.py then derives every secret independently -- the root
# master key and the root key material unwrapped from the keyring catalog with it, every DEK by unwrapping the wrapped
# DEKs with it (each proven by decrypting its value) -- and scans the
# server log, SHOW ALL, pg_settings, pg_stat_activity (sampled while
# encryption runs) and pg_stat_statements (view and query-text file) for
# each secret raw, in hex and in base64.
#
# Then the same runs with the AWS provider against the KMS emulator, with
# a session token: the secret access key, the session token, the SigV4
# signing keys (and the intermediate HMAC keys) of the dates around now, and
# every AWS DEK (unwrapped by asking the emulator, each proven by decrypting
# its value) must not appear either.
use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use FindBin;
use lib $FindBin::RealBin;
use JSON::PP;
use KmsPgTest;
use MIME::Base64;
use POSIX qw(strftime);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;

my $root = File::Spec->rel2abs(dirname(__FILE__) . '/..');
my $python = $ENV{KMS_PYTHON} // '/usr/bin/python3';
my $scanner = "$root/test/secrets_scan.py";

my $node = PostgreSQL::Test::Cluster->new('secrets_in_logs');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'kms_pg, pg_stat_statements'
log_min_messages = debug5
log_statement = 'all'
log_error_verbosity = verbose
log_min_error_statement = debug5
log_connections = on
log_disconnections = on
pg_stat_statements.track = all
pg_stat_statements.track_utility = on
} . master_key_conf('a'));
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION kms_pg; CREATE EXTENSION pg_stat_statements');

my $master = master_key_file('a');

# ---- the local provider's scenarios ----

$node->safe_psql(
	'postgres', q{
SELECT kms_create_key('alias/t080-a', 'secrets test a');
SELECT kms_create_key('alias/t080-b');
CREATE TABLE vals (id int, ctx jsonb, plain text, ct bytea);
INSERT INTO vals
  SELECT i, jsonb_build_object('tenant', 't' || (i % 3), 'row', i), 'value ' || i,
         kms_encrypt_text('value ' || i, jsonb_build_object('tenant', 't' || (i % 3), 'row', i), 'alias/t080-a')
  FROM generate_series(1, 20) AS i;
SET kms_pg.kms_context_keys = 'tenant';
INSERT INTO vals
  SELECT i, jsonb_build_object('tenant', 't' || (i % 3), 'row', i, 'flag', i % 2 = 0), 'value ' || i,
         kms_encrypt_text('value ' || i, jsonb_build_object('tenant', 't' || (i % 3), 'row', i, 'flag', i % 2 = 0),
                          'alias/t080-a')
  FROM generate_series(21, 40) AS i;
RESET kms_pg.kms_context_keys;
SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, ctx) = plain;
INSERT INTO vals SELECT id + 100, ctx, plain, kms_rewrap(ct, 'alias/t080-b', ctx) FROM vals WHERE id <= 5;
INSERT INTO vals SELECT id + 200, ctx, plain, kms_reencrypt(ct, ctx, 'alias/t080-b') FROM vals WHERE id <= 5;
SELECT kms_rotate_key('alias/t080-a');
SELECT kms_cache_flush();
INSERT INTO vals
  SELECT i, '{}', 'after rotation ' || i, kms_encrypt_text('after rotation ' || i, '{}', 'alias/t080-a')
  FROM generate_series(300, 305) AS i;
SELECT kms_cache_flush();
SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, ctx) = plain;
SELECT kms_describe_key('alias/t080-a');
SELECT (kms_ciphertext_info(ct)).* FROM vals WHERE id IN (1, 21, 101, 201, 300);
SELECT * FROM kms_keys;
SELECT * FROM kms_cache_stats;
});

is( $node->safe_psql('postgres', 'SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, ctx) = plain'),
	'56', 'all 56 values decrypt');

# Error paths, each logged with its statement.
my @failing = (
	[ q{SELECT kms_decrypt_text(ct, '{"tenant": "t1", "row": 99}') FROM vals WHERE id = 1}, qr/22000/ ],
	[ q{SELECT kms_decrypt(set_byte(ct, length(ct) - 1, get_byte(ct, length(ct) - 1) # 1), ctx) FROM vals WHERE id = 2},
		qr/22000/ ],
	[ q{SELECT kms_decrypt(substr(ct, 1, 50), ctx) FROM vals WHERE id = 3}, qr/XX001/ ],
	[ q{SELECT kms_encrypt('x'::bytea, '{}', 'alias/t080-missing')}, qr/42704/ ],
	[ q{SELECT kms_encrypt('x'::bytea, '{"a": null}', 'alias/t080-a')}, qr/22023/ ],
	[ q{SELECT kms_disable_key('alias/t080-b'); SELECT kms_cache_flush(); SELECT kms_decrypt(ct, ctx) FROM vals WHERE id = 101},
		qr/55000/ ],
	[ q{SELECT kms_create_key('alias/t080-a')}, qr/42710/ ],);
for my $f (@failing)
{
	my ($ret, $out, $err) =
	  $node->psql('postgres', $f->[0], extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, $f->[1], "fails as expected: $f->[0]");
}
$node->safe_psql('postgres', q{SELECT kms_enable_key('alias/t080-b')});

# pg_stat_activity while a session is encrypting.
my $bg = $node->background_psql('postgres');
$bg->query_until(qr/started/, q{
\echo started
SELECT kms_encrypt_text('in flight', '{"tenant": "t9"}', 'alias/t080-a'), pg_sleep(3);
});
$node->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%in flight%' AND wait_event = 'PgSleep'})
  or die 'the encrypting session did not show up';

my $dumps = $node->basedir . '/dumps';
mkdir $dumps;
sub dump_query
{
	my ($node, $file, $sql) = @_;
	my $out = $node->safe_psql('postgres', $sql);
	open my $fh, '>', "$dumps/$file" or die $!;
	print $fh $out;
	close $fh;
	return length $out;
}
ok(dump_query($node, 'pg_stat_activity.txt', 'SELECT * FROM pg_stat_activity') > 0, 'pg_stat_activity dumped');
$bg->quit;

ok(dump_query($node, 'show_all.txt', 'SHOW ALL') > 0, 'SHOW ALL dumped');
ok(dump_query($node, 'pg_settings.txt', 'SELECT * FROM pg_settings') > 0, 'pg_settings dumped');
ok(dump_query($node, 'pg_file_settings.txt', 'SELECT * FROM pg_file_settings') > 0, 'pg_file_settings dumped');
ok(dump_query($node, 'pg_stat_statements.txt', 'SELECT * FROM pg_stat_statements') > 0,
	'pg_stat_statements dumped');

# Ordinary roles: see access section below; their outputs are scanned too.
$node->safe_psql('postgres', 'CREATE ROLE app LOGIN; GRANT SELECT ON vals TO app');

sub as_app
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql(
		'postgres', $sql,
		extra_params => [ '-U', 'app', '-v', 'VERBOSITY=verbose' ]);
	return ($ret, $out, $err);
}

sub app_fails
{
	my ($sql, $re, $name) = @_;
	my ($ret, $out, $err) = as_app($sql);
	ok($ret != 0 && $err =~ $re, $name) or diag("ret $ret, stdout: $out, stderr: $err");
}

# Neither the keyring catalog nor the master key file is readable through
# SQL by an ordinary role.
app_fails(q{SELECT * FROM kms_local_key_version}, qr/42501/, 'SELECT from the keyring catalog: denied');
app_fails(q{SELECT * FROM kms_local_key}, qr/42501/, 'SELECT from the key list table: denied');
app_fails(qq{SELECT pg_read_file('$master')}, qr/42501/, 'pg_read_file of the master key: denied');
app_fails(qq{SELECT pg_read_binary_file('$master')}, qr/42501/,
	'pg_read_binary_file of the master key: denied');
app_fails(qq{CREATE TEMP TABLE k (t text); COPY k FROM '$master'}, qr/42501/, 'COPY FROM the master key: denied');
app_fails(qq{SELECT lo_import('$master')}, qr/42501/, 'lo_import of the master key: denied');
app_fails(q{SELECT * FROM pg_ls_dir('.')}, qr/42501/, 'pg_ls_dir of the data directory: denied');

# kms_pg.keyring_file and the master key sources are hidden from ordinary roles.
for my $g (qw(keyring_file master_key_file master_key_command previous_master_key_file
	previous_master_key_command))
{
	app_fails(qq{SHOW kms_pg.$g}, qr/42501/, "SHOW kms_pg.$g: denied");
	app_fails(qq{SELECT current_setting('kms_pg.$g')}, qr/42501/, "current_setting(kms_pg.$g): denied");
	my ($ret, $out, $err) = as_app(qq{SELECT count(*) FROM pg_settings WHERE name = 'kms_pg.$g'});
	is($out, '0', "kms_pg.$g is not in pg_settings for an ordinary role");
	($ret, $out, $err) = as_app(q{SHOW ALL});
	unlike($out, qr/kms_pg\.$g\|/, "SHOW ALL of an ordinary role omits kms_pg.$g");
}
{
	my ($ret, $out, $err) = as_app(q{SHOW ALL});
	like($out, qr/kms_pg\.key_id/, 'SHOW ALL of an ordinary role shows other kms_pg settings');
}

# An ordinary role cannot redirect KMS traffic or change credentials.
for my $guc (
	qw(endpoint region ca_file credential_sources aws_profile imds_endpoint
	sts_endpoint container_endpoint mrk_replica_regions keyring_file master_key_file
	master_key_command previous_master_key_file previous_master_key_command master_key_command_timeout))
{
	app_fails(qq{SET kms_pg.$guc = 'x'}, qr/55P02/, "SET kms_pg.$guc: cannot be changed (55P02)");
	app_fails(qq{SELECT set_config('kms_pg.$guc', 'x', false)}, qr/55P02/,
		"set_config(kms_pg.$guc): cannot be changed (55P02)");
}
app_fails(q{SET kms_pg.provider = 'aws'}, qr/42501/, 'SET kms_pg.provider: permission denied');
app_fails(q{ALTER SYSTEM SET kms_pg.endpoint = 'https://evil.example'}, qr/42501/,
	'ALTER SYSTEM SET kms_pg.endpoint: permission denied');
app_fails(q{ALTER ROLE app SET kms_pg.provider = 'aws'}, qr/42501/,
	'ALTER ROLE app SET kms_pg.provider: permission denied');

# Privileged functions need a GRANT; encryption does not.
{
	my ($ret, $out, $err) = as_app(q{SELECT kms_is_ciphertext(kms_encrypt('x'::bytea, '{}', 'alias/t080-a'))});
	is($out, 't', 'an ordinary role can encrypt');
}
for my $call (
	q{kms_decrypt(ct, ctx) FROM vals WHERE id = 1},
	q{kms_decrypt_text(ct, ctx) FROM vals WHERE id = 1},
	q{kms_rewrap(ct, 'alias/t080-b', ctx) FROM vals WHERE id = 1},
	q{kms_reencrypt(ct, ctx, 'alias/t080-b') FROM vals WHERE id = 1},
	q{kms_create_key('alias/t080-app')},
	q{kms_disable_key('alias/t080-a')},
	q{kms_enable_key('alias/t080-a')},
	q{kms_rotate_key('alias/t080-a')},
	q{kms_describe_key('alias/t080-a')},
	q{kms_cache_flush()},
	q{* FROM kms_cache_stats},
	q{* FROM kms_keys},
	q{kms_hmac_sha256('0123456789abcdef'::bytea, 'x'::bytea)})
{
	app_fails("SELECT $call", qr/42501/, "ordinary role: SELECT $call denied");
}
$node->safe_psql('postgres', q{GRANT EXECUTE ON FUNCTION kms_decrypt_text(bytea, jsonb) TO app;
	SELECT kms_grant_key(k, 'app') FROM unnest(ARRAY['alias/t080-a', 'alias/t080-b']) k});
{
	my ($ret, $out, $err) = as_app(q{SELECT kms_decrypt_text(ct, ctx) FROM vals WHERE id = 7});
	is($out, 'value 7', 'after GRANT EXECUTE the role decrypts');
}

# ---- the AWS provider against the KMS emulator, with a session token ----

# fresh random credentials, so no other text can match them by accident
sub random_text
{
	my ($n) = @_;
	open my $r, '<', '/dev/urandom' or die $!;
	read($r, my $bytes, $n) == $n or die;
	close $r;
	my $t = encode_base64($bytes, '');
	$t =~ tr{+/=}{Ab0};
	return substr($t, 0, $n);
}
my $AK = 'ASIA' . uc(substr(random_text(32), 0, 16));
$AK =~ tr{A-Z0-9}{}cd;
$AK .= 'Q' x (20 - length $AK);
my $SK = random_text(40);
my $TOKEN = random_text(356);
# a second identity for the environment-variable round at the end
my ($AK2, $SK2, $TOKEN2) = ('ASIAENVCREDENTIALS01', random_text(40), random_text(356));
my $emu = start_emulator(
	args => [
		'--cred', "$AK:$SK:$TOKEN",
		'--cred', "$AK2:$SK2:$TOKEN2",
		'--seed-alias', 'alias/kms-pg-test',
		'--seed-alias', 'alias/kms-pg-other'
	]);

# Credentials come from a shared credentials file, not the environment:
# PostgreSQL itself logs the postmaster's whole environment at DEBUG3 (see
# the last round below and docs/security.md).
my $credfile = $node->basedir . '/aws_credentials';
open my $cf, '>', $credfile or die $!;
print $cf "[default]\naws_access_key_id = $AK\naws_secret_access_key = $SK\naws_session_token = $TOKEN\n";
close $cf;
chmod 0600, $credfile;
$node->append_conf('postgresql.conf', qq{
kms_pg.endpoint = '$emu->{url}'
kms_pg.region = 'us-east-1'
kms_pg.ca_file = '$emu->{ca}'
kms_pg.credential_sources = 'profile'
});
start_with_env($node, { AWS_SHARED_CREDENTIALS_FILE => $credfile });
my @sigv4_dates = map { strftime('%Y%m%d', gmtime(time + $_ * 86400)) } (-1, 0, 1);

$node->safe_psql(
	'postgres', q{
SET kms_pg.provider = aws;
INSERT INTO vals
  SELECT 1000 + i, jsonb_build_object('tenant', 't' || (i % 3), 'row', i), 'aws value ' || i,
         kms_encrypt_text('aws value ' || i, jsonb_build_object('tenant', 't' || (i % 3), 'row', i), 'alias/kms-pg-test')
  FROM generate_series(1, 20) AS i;
SET kms_pg.kms_context_keys = 'tenant';
INSERT INTO vals
  SELECT 1000 + i, jsonb_build_object('tenant', 't' || (i % 3), 'row', i), 'aws value ' || i,
         kms_encrypt_text('aws value ' || i, jsonb_build_object('tenant', 't' || (i % 3), 'row', i), 'alias/kms-pg-test')
  FROM generate_series(21, 40) AS i;
RESET kms_pg.kms_context_keys;
SELECT kms_cache_flush();
SELECT count(*) FROM vals WHERE id > 1000 AND kms_decrypt_text(ct, ctx) = plain;
INSERT INTO vals SELECT id + 100, ctx, plain, kms_rewrap(ct, 'alias/kms-pg-other', ctx) FROM vals WHERE id BETWEEN 1001 AND 1005;
INSERT INTO vals SELECT id + 200, ctx, plain, kms_reencrypt(ct, ctx, 'alias/kms-pg-other') FROM vals WHERE id BETWEEN 1021 AND 1025;
SELECT kms_describe_key('alias/kms-pg-test');
SELECT kms_cache_flush();
SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, ctx) = plain;
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, ctx) = plain'),
	'106', 'all 106 local and AWS values decrypt');
emu_control($emu, 'POST', '/__emulator/keys/state', '{"key": "alias/kms-pg-other", "state": "Disabled"}');
for my $f (
	[ q{SELECT kms_cache_flush(); SELECT kms_decrypt(ct, ctx) FROM vals WHERE id = 1101}, qr/55000/ ],
	[ q{SELECT kms_decrypt_text(ct, '{"tenant": "t1", "row": 99}') FROM vals WHERE id = 1021}, qr/22000/ ],
	[ q{SET kms_pg.provider = aws; SELECT kms_encrypt('x'::bytea, '{}', 'alias/kms-pg-missing')}, qr/42704/ ])
{
	my ($ret, $out, $err) =
	  $node->psql('postgres', $f->[0], extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, $f->[1], "AWS: fails as expected: $f->[0]");
}
emu_control($emu, 'POST', '/__emulator/keys/state', '{"key": "alias/kms-pg-other", "state": "Enabled"}');

$bg = $node->background_psql('postgres');
$bg->query_until(qr/started/, q{
\echo started
SET kms_pg.provider = aws;
SELECT kms_encrypt_text('aws in flight', '{"tenant": "t9"}', 'alias/kms-pg-test'), pg_sleep(3);
});
$node->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%aws in flight%' AND wait_event = 'PgSleep'})
  or die 'the encrypting session did not show up';
dump_query($node, 'pg_stat_activity_aws.txt', 'SELECT * FROM pg_stat_activity');
$bg->quit;
dump_query($node, 'show_all_aws.txt', 'SHOW ALL');
dump_query($node, 'pg_settings_aws.txt', 'SELECT * FROM pg_settings');
dump_query($node, 'pg_stat_statements_aws.txt', 'SELECT * FROM pg_stat_statements');

# ---- scan ----

my $values = $node->safe_psql('postgres',
	q{SELECT json_agg(json_build_object('ct', encode(ct, 'hex'), 'context', ctx, 'plain', plain) ORDER BY id) FROM vals});
my $values_file = $node->basedir . '/values.json';
open my $vf, '>', $values_file or die $!;
print $vf $values;
close $vf;

my @scan_files = (glob("$dumps/*.txt"), $node->logfile);
my $pgss_texts = $node->data_dir . '/pg_stat_tmp/pgss_query_texts.stat';
push @scan_files, $pgss_texts if -f $pgss_texts;

my $catalog_file = $node->basedir . '/catalog.json';
{
	my $rows = $node->safe_psql('postgres',
		q{SELECT json_agg(json_build_object('key_id', key_id, 'version', version, 'material', encode(material, 'hex')))
		  FROM kms_local_key_version});
	open my $cf, '>', $catalog_file or die $!;
	print $cf $rows;
	close $cf;
}
my @scan_args = (
	'--catalog', $catalog_file, '--master-key-file', $master, '--values', $values_file,
	'--aws-endpoint', $emu->{url}, '--aws-ca', $emu->{ca}, '--aws-access-key', $AK,
	'--aws-secret', $SK, '--aws-token', $TOKEN, '--aws-region', 'us-east-1',
	map { ('--sigv4-date', $_) } @sigv4_dates);

# the scanner proves it can see: a file holding a DEK's hex must be flagged
{
	my ($out, $err);
	my $probe = $node->basedir . '/probe.txt';
	IPC::Run::run([ $python, '-c', <<'EOF', $catalog_file, $values_file, $probe, $master ], '>', \$out, '2>', \$err);
import base64, json, struct, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
rows = json.load(open(sys.argv[1]))
mk = bytes.fromhex(open(sys.argv[4]).read().strip())
v = json.load(open(sys.argv[2]))[0]
ct = bytes.fromhex(v["ct"])
klen = ct[6]; key_id = ct[7:7 + klen].decode(); off = 7 + klen
n = ct[off]; off += 1
for _ in range(n): off += 1 + ct[off]
wl = struct.unpack(">H", ct[off:off + 2])[0]; w = ct[off + 2:off + 2 + wl]
ver = struct.unpack(">I", w[1:5])[0]
r = [x for x in rows if x["key_id"] == key_id and x["version"] == ver][0]
m = bytes.fromhex(r["material"])
root = AESGCM(mk).decrypt(m[:12], m[12:], b"kms_pg local key material v1\0" + key_id.encode() + struct.pack(">I", ver))
dek = AESGCM(root).decrypt(w[5:17], w[17:], b"kms_pg local wrap v1\0" + key_id.encode() + b"\0\0\0\0")
open(sys.argv[3], "w").write("log line with \\x" + dek[4:20].hex() + " inside\n")
EOF
	($out, $err) = ('', '');
	my $rc = IPC::Run::run([ $python, $scanner, @scan_args, $probe ], '>', \$out, '2>', \$err);
	ok(!$rc && $out =~ /LEAK: DEK/, 'the scanner flags a planted partial DEK') or diag("$out\n$err");
}

{
	my ($out, $err) = ('', '');
	my $rc = IPC::Run::run(
		[ $python, $scanner, @scan_args, '--min-deks', '9', @scan_files ],
		'>', \$out, '2>', \$err);
	ok($rc,
		'no root key, DEK, secret access key, session token or SigV4 signing key in logs, settings, activity or statement statistics'
	) or diag("$out\n$err");
	like($out, qr/106 values opened/, 'the scanner opened every value with the DEK it derived');
	like($out, qr/SigV4 signing key|12 SigV4/, 'the SigV4 signing keys were part of the scan');
	note($out);
}

# The first line of the log message that line $i (0-based) belongs to:
# continuation lines of a multi-line message carry no log_line_prefix.
sub log_message_start
{
	my ($log, $i) = @_;
	$i-- while $i > 0 && $log->[$i] !~ /^\d{4}-\d\d-\d\d /;
	return $log->[$i];
}

# ---- credentials in the server's environment ----
# The postmaster logs its entire environment at DEBUG3 and below
# (PostgreSQL core, postmaster.c, before any library is loaded), so
# AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN in the environment reach the
# log with log_min_messages = debug3..debug5.  kms_pg cannot prevent that;
# docs/security.md says to use another credential source or a higher
# log_min_messages.  Pinned here: those lines are the only place they appear.
my $log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "kms_pg.credential_sources = 'env'\n");
start_with_env($node,
	{ AWS_ACCESS_KEY_ID => $AK2, AWS_SECRET_ACCESS_KEY => $SK2, AWS_SESSION_TOKEN => $TOKEN2 });
is( $node->safe_psql(
		'postgres',
		q{SET kms_pg.provider = aws; SELECT kms_decrypt_text(kms_encrypt_text('env creds', '{}', 'alias/kms-pg-test'), '{}')}),
	'env creds', 'AWS works with environment credentials');
{
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			$python, $scanner, '--aws-secret', $SK2, '--aws-token', $TOKEN2,
			(map { ('--sigv4-date', $_) } @sigv4_dates), $node->logfile
		],
		'>', \$out, '2>', \$err);
	my @log = split /\n/, slurp_file($node->logfile);
	my %lines = map { $_ => 1 } ($out =~ /^LEAK: .* line (\d+)$/mg);
	# Up to 17 each variable is a message of its own; from 18 the dump is
	# one message over many lines.  A leak is allowed only on a variable's
	# line inside that dump.
	my @other = grep {
		my $line = $log[ $_ - 1 ];
		my $start = log_message_start(\@log, $_ - 1);
		!(     $line =~ /^(?:.*DEBUG:  (?:00000: )?)?\tAWS_(?:SECRET_ACCESS_KEY|SESSION_TOKEN)=/
			&& $start =~ /DEBUG:  (?:00000: )?(?:.*environment dump|\tAWS_)/)
	} sort keys %lines;
	ok(%lines > 0, 'PostgreSQL\'s DEBUG3 environment dump shows environment credentials (documented)');
	is(scalar @other, 0, 'environment credentials appear nowhere but in that dump; never a SigV4 key')
	  or diag(join "\n", map { $log[ $_ - 1 ] } @other);
}

$node->stop;
stop_emulator($emu);
done_testing();
