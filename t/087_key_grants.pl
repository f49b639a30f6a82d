# Key privileges across sessions, a hot standby, pg_dump/pg_restore and the
# update from the frozen 1.0.
#
#  - A revoke committed by another session takes effect at the next
#    statement of a session that was decrypting; the denial is logged once
#    with role, key, privilege, function and query id, never the statement
#    text or any value.
#  - The grants table is WAL-logged: a standby enforces the same grants and
#    conditions, and a revoke on the primary reaches a standby session at
#    its first statement after the commit is replayed.
#  - pg_dump/pg_restore carry the grants (grantee by role name, key by id).
#  - Keys that exist at ALTER EXTENSION kms_pg UPDATE keep 1.0's behaviour
#    (PUBLIC holds every privilege): roles that read before read after;
#    keys created afterwards give PUBLIC only encrypt.
#  - Dropped roles: DROP ROLE deletes the role's rows in the database it
#    runs in; the rows another database keeps grant nothing, even to a new
#    role given the dropped role's oid (forced with pg_resetwal -o), and
#    kms_key_grants shows them as not valid.  A rename from another
#    database makes that database's rows inert too, until granted again.
#  - kms_key_usage(): a role without rewrap or admin on a counted key gets
#    42501 and one LOG line, no counts.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;

sub fails_like
{
	my ($node, $sql, $re, $name, $db) = @_;
	my ($ret, $out, $err) = $node->psql($db // 'postgres', $sql);
	isnt($ret, 0, "$name: fails");
	like($err, $re, "$name: error");
}

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a'));
$primary->start;
$primary->safe_psql(
	'postgres', q{
CREATE EXTENSION kms_pg;
CREATE ROLE app LOGIN;
SELECT kms_create_key('alias/t087');
CREATE TABLE vals (id int PRIMARY KEY, tenant text, ctx jsonb, plain text, ct bytea);
INSERT INTO vals
  SELECT i, 't' || (i % 3), jsonb_build_object('tenant', 't' || (i % 3), 'id', i), 'secret value ' || i,
         kms_encrypt_text('secret value ' || i, jsonb_build_object('tenant', 't' || (i % 3), 'id', i), 'alias/t087')
  FROM generate_series(1, 90) AS i;
GRANT SELECT ON vals TO app;
GRANT EXECUTE ON FUNCTION kms_decrypt_text(bytea, jsonb) TO app;
SELECT kms_grant_key('alias/t087', 'app', '{decrypt}', '{"tenant": {"setting": "app.tenant"}}');
});
my $key = $primary->safe_psql('postgres', q{SELECT key_id FROM kms_keys WHERE alias = 'alias/t087'});

my $own = q{SET ROLE app; SET app.tenant = 't1';
  SELECT count(*) FROM vals WHERE tenant = 't1' AND kms_decrypt_text(ct, ctx) = plain};
is($primary->safe_psql('postgres', $own), '30', 'primary: app reads the 30 rows of its tenant');
fails_like($primary, q{SET ROLE app; SET app.tenant = 't1'; SELECT kms_decrypt_text(ct, ctx) FROM vals WHERE tenant = 't2'},
	qr/permission denied for kms_pg key "\Q$key\E"/, 'primary: another tenant');

# ---- standby ----
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
is($standby->safe_psql('postgres', $own), '30', 'standby: the same grant and condition');
fails_like($standby, q{SET ROLE app; SELECT kms_decrypt_text(ct, ctx) FROM vals WHERE tenant = 't1'},
	qr/42501|permission denied for kms_pg key/, 'standby: unset tenant');
fails_like($standby, q{SELECT kms_grant_key('alias/t087', 'app')}, qr/during recovery/, 'standby: grants change only on the primary');

# grants made on the primary reach the standby through WAL
$primary->safe_psql('postgres', q{SELECT kms_grant_key('alias/t087', 'app', '{decrypt}', '{"tenant": {"in": ["t2"]}}')});
$primary->wait_for_catchup($standby);
is( $standby->safe_psql('postgres',
		q{SET ROLE app; SELECT count(*) FROM vals WHERE tenant = 't2' AND kms_decrypt_text(ct, ctx) = plain}),
	'30', 'standby: a grant made on the primary applies after replay');

# ---- revoke mid-session, on the primary and on the standby ----
my $bg = $primary->background_psql('postgres', on_error_stop => 0);
my $sbg = $standby->background_psql('postgres', on_error_stop => 0);
for my $s ($bg, $sbg)
{
	$s->query_safe(q{SET ROLE app});
	$s->query_safe(q{SET app.tenant = 't1'});
}
my $count_t1 = q{SELECT count(*) FROM vals WHERE tenant = 't1' AND kms_decrypt_text(ct, ctx) = plain;};
is($bg->query_safe($count_t1), '30', 'primary session reads before the revoke');
is($sbg->query_safe($count_t1), '30', 'standby session reads before the revoke');
my $log_offset = -s $primary->logfile;
$primary->safe_psql('postgres', q{SELECT kms_revoke_key('alias/t087', 'app', '{decrypt}')});
$primary->wait_for_catchup($standby);
for my $case ([ $bg, 'primary' ], [ $sbg, 'standby' ])
{
	my ($s, $where) = @$case;
	$s->{stderr} = '';
	my ($out, $ret) = $s->query($count_t1);
	like($s->{stderr}, qr/permission denied for kms_pg key "\Q$key\E"/,
		"$where: the next statement of a session that was reading is refused");
	$s->{stderr} = '';
	$s->quit;
}
my $log = slurp_file($primary->logfile, $log_offset);
like($log, qr/LOG:  kms_pg key privilege denied: role "app", key "\Q$key\E", privilege decrypt, function kms_decrypt_text, query id -?\d+/,
	'the denial is logged with role, key, privilege and function');
my @lines = ($log =~ /kms_pg key privilege denied/g);
is(scalar(@lines), 1, 'one LOG line for the denial');
# (the test server logs every statement: look at the denial's own lines)
my @denial = grep { /kms_pg key|Role "app"|kms_grant_key\(\)|STATEMENT:/ } split /\n/, $log;
is(scalar(grep { /STATEMENT:/ } @denial), 0, 'the denial does not log the statement text');
is(scalar(grep { /secret value|t1/ } @denial), 0, 'nor any value or context');

# ---- pg_dump / pg_restore ----
$primary->safe_psql('postgres', q{SELECT kms_grant_key('alias/t087', 'app', '{decrypt}', '{"tenant": {"setting": "app.tenant"}}')});
my $grants = q{SELECT string_agg(concat_ws(' ', provider, key_id, alias, grantee, privileges, condition, granted_by, granted), E'\n'
  ORDER BY grantee, condition::text) FROM kms_key_grants};
my $before = $primary->safe_psql('postgres', $grants);
my $dumpfile = $primary->basedir . '/t087.dump';
$primary->command_ok([ 'pg_dump', '-Fc', '-f', $dumpfile, '-d', $primary->connstr('postgres') ], 'pg_dump -Fc');
my $dst = PostgreSQL::Test::Cluster->new('restored');
$dst->init;
$dst->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a'));
$dst->start;
$dst->safe_psql('postgres', q{CREATE ROLE app LOGIN; CREATE DATABASE app_restored});
$dst->command_ok([ 'pg_restore', '--exit-on-error', '-d', $dst->connstr('app_restored'), $dumpfile ], 'pg_restore');
is($dst->safe_psql('app_restored', $grants), $before, 'the grants are restored row for row');
is($dst->safe_psql('app_restored', $own), '30', 'restored: app reads its tenant');
fails_like($dst, q{SET ROLE app; SET app.tenant = 't1'; SELECT kms_decrypt_text(ct, ctx) FROM vals WHERE tenant = 't2'},
	qr/permission denied for kms_pg key/, 'restored: not another tenant', 'app_restored');

# ---- update from 1.0 ----
my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION kms_pg VERSION '1.0';
SELECT kms_create_key('alias/up-a');
CREATE TABLE vals (id int PRIMARY KEY, ct bytea);
INSERT INTO vals SELECT i, kms_encrypt_text('v' || i, jsonb_build_object('id', i), 'alias/up-a') FROM generate_series(1, 20) i;
CREATE ROLE reader LOGIN;
CREATE ROLE writer LOGIN;
GRANT SELECT ON vals TO reader;
GRANT SELECT, INSERT ON vals TO writer;
GRANT EXECUTE ON FUNCTION kms_decrypt_text(bytea, jsonb) TO reader;
});
my $read = q{SET ROLE reader; SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'v' || id};
is($node->safe_psql('postgres', $read), '20', '1.0: reader reads');
fails_like($node, q{SET ROLE writer; SELECT kms_decrypt_text(ct, jsonb_build_object('id', id)) FROM vals},
	qr/permission denied for function kms_decrypt_text/, '1.0: writer cannot decrypt');
$node->append_conf('postgresql.conf', master_key_conf('a'));
$node->restart;
$node->safe_psql('postgres', 'ALTER EXTENSION kms_pg UPDATE');
is($node->safe_psql('postgres', q{SELECT grantee || ' ' || privileges::text FROM kms_key_grants WHERE alias = 'alias/up-a'}),
	'PUBLIC {admin,decrypt,encrypt,rewrap}', 'a 1.0 key: PUBLIC holds every privilege');
is($node->safe_psql('postgres', $read), '20', '1.1: reader still reads the values written under 1.0');
fails_like($node, q{SET ROLE writer; SELECT kms_decrypt_text(ct, jsonb_build_object('id', id)) FROM vals},
	qr/permission denied for function kms_decrypt_text/, '1.1: the function grant still gates decrypt');
is( $node->safe_psql('postgres',
		q{SET ROLE writer; INSERT INTO vals VALUES (21, kms_encrypt_text('v21', '{"id": 21}', 'alias/up-a')); SELECT 'ok'}),
	'ok', '1.1: writer still encrypts');
# a key created after the update: PUBLIC encrypt only
$node->safe_psql('postgres', q{SELECT kms_create_key('alias/up-new');
  INSERT INTO vals VALUES (22, kms_encrypt_text('v22', '{"id": 22}', 'alias/up-new'))});
fails_like($node, q{SET ROLE reader; SELECT kms_decrypt_text(ct, '{"id": 22}') FROM vals WHERE id = 22},
	qr/permission denied for kms_pg key/, '1.1: a new key needs a key grant to be read');
# tightening an old key: revoke from PUBLIC, grant the reader
$node->safe_psql('postgres', q{SELECT kms_revoke_key('alias/up-a', 'public', '{decrypt,rewrap,admin}');
  SELECT kms_grant_key('alias/up-a', 'reader')});
is( $node->safe_psql('postgres',
		q{SET ROLE reader; SELECT count(*) FROM vals WHERE id <> 22 AND kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'v' || id}),
	'21', 'tightened: the granted reader reads');

# ---- dropped roles, and a new role given a dropped role's oid ----
my $rn = PostgreSQL::Test::Cluster->new('roles');
$rn->init;
$rn->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a'));
$rn->start;
$rn->safe_psql('postgres', q{CREATE DATABASE other; CREATE ROLE gone LOGIN; CREATE ROLE renamed LOGIN});
# (encrypting by key id: the shared DEK cache does not tell databases apart,
# so the alias alone could pick up the other database's key of that alias)
for my $db ('postgres', 'other')
{
	$rn->safe_psql(
		$db, q{
CREATE EXTENSION kms_pg;
SELECT kms_create_key('alias/roles');
CREATE TABLE vals (id int PRIMARY KEY, ct bytea);
INSERT INTO vals SELECT i, kms_encrypt_text('v' || i, '{}', (SELECT key_id FROM kms_keys WHERE alias = 'alias/roles')) FROM generate_series(1, 5) i;
-- table and function access through PUBLIC, so that DROP ROLE is not
-- refused for them: only the key grants name the roles
GRANT SELECT ON vals TO PUBLIC;
GRANT EXECUTE ON FUNCTION kms_decrypt_text(bytea, jsonb) TO PUBLIC;
SELECT kms_grant_key('alias/roles', 'gone', '{decrypt,rewrap}');
SELECT kms_grant_key('alias/roles', 'renamed', '{decrypt}');
});
}
my $okey = $rn->safe_psql('other', q{SELECT key_id FROM kms_keys WHERE alias = 'alias/roles'});
my $read5 = q{SELECT count(*) FROM vals WHERE kms_decrypt_text(ct) LIKE 'v%'};
is($rn->safe_psql('other', "SET ROLE gone; $read5"), '5', 'other: gone reads under its grant');
my $gone_oid = $rn->safe_psql('postgres', q{SELECT oid FROM pg_roles WHERE rolname = 'gone'});
my $shown = q{SELECT string_agg(grantee || ' ' || privileges::text || ' ' || grantee_valid, ', ' ORDER BY grantee)
  FROM kms_key_grants WHERE grantee IN ('gone', 'renamed', 'renamed2', 'newcomer')};
$rn->safe_psql('postgres', q{DROP ROLE gone; ALTER ROLE renamed RENAME TO renamed2});
is($rn->safe_psql('postgres', $shown), 'renamed2 {decrypt} true',
	'the database DROP ROLE and RENAME ran in: the rows are deleted, and renamed');
is($rn->safe_psql('other', $shown), 'gone {decrypt,rewrap} false, renamed {decrypt} false',
	'another database: the rows stay, shown as not valid');
fails_like($rn, "SET ROLE renamed2; $read5", qr/permission denied for kms_pg key "\Q$okey\E"/,
	'another database: a role renamed elsewhere holds nothing there', 'other');
$rn->safe_psql('other', q{SELECT kms_grant_key('alias/roles', 'renamed2')});
is($rn->safe_psql('other', "SET ROLE renamed2; $read5"), '5', 'until granted again under its new name');

# the next role created gets the dropped role's oid (once VACUUM removed the
# dead pg_authid row: new oids skip those of dead rows too)
$rn->safe_psql('postgres', 'VACUUM pg_catalog.pg_authid');
$rn->stop;
command_ok([ 'pg_resetwal', '-o', $gone_oid, $rn->data_dir ], 'pg_resetwal -o: the next oid is the dropped role\'s');
$rn->start;
$rn->safe_psql('postgres', q{CREATE ROLE newcomer LOGIN});
is($rn->safe_psql('postgres', q{SELECT oid FROM pg_roles WHERE rolname = 'newcomer'}), $gone_oid,
	'the new role has the dropped role\'s oid');
is($rn->safe_psql('other', q{SELECT grantee::regrole::text FROM kms_key_grant WHERE grantee_name = 'gone'}), 'newcomer',
	'the row left in the other database carries that oid');
$log_offset = -s $rn->logfile;
fails_like($rn, "SET ROLE newcomer; $read5", qr/permission denied for kms_pg key "\Q$okey\E"/,
	'the new role inherits nothing from the dropped one', 'other');
is($rn->safe_psql('other', $shown), 'gone {decrypt,rewrap} false, renamed2 {decrypt} true',
	'kms_key_grants still shows the old row as the dropped role\'s, not valid');

# kms_key_usage: rewrap or admin on each counted key, or 42501 and one LOG line
fails_like($rn, q{SET ROLE newcomer; SELECT * FROM kms_key_usage('vals', 'ct')},
	qr/permission denied for kms_pg key "\Q$okey\E".*\n.*Role "newcomer" has no rewrap or admin privilege on the key/,
	'kms_key_usage: no rewrap or admin, no counts', 'other');
$log = slurp_file($rn->logfile, $log_offset);
like($log, qr/LOG:  kms_pg key privilege denied: role "newcomer", key "\Q$okey\E", privilege rewrap or admin, function kms_key_usage_entry/,
	'kms_key_usage: the denial is logged');
@lines = ($log =~ /kms_pg key privilege denied: role "newcomer", key "[^"]+", privilege rewrap or admin/g);
is(scalar(@lines), 1, 'kms_key_usage: one LOG line for the denial');

# the old name removes the dead row; granting the newcomer starts afresh
is($rn->safe_psql('other', q{SELECT kms_revoke_key('alias/roles', 'gone')}), '1', 'revoking the dropped role\'s name removes its row');
$rn->safe_psql('other', q{SELECT kms_grant_key('alias/roles', 'newcomer', '{rewrap}')});
is($rn->safe_psql('other', q{SET ROLE newcomer; SELECT "values" FROM kms_key_usage('vals', 'ct')}), '5',
	'kms_key_usage: counts with rewrap');
fails_like($rn, "SET ROLE newcomer; $read5", qr/permission denied for kms_pg key/,
	'the newcomer holds only what it was granted', 'other');

done_testing();
