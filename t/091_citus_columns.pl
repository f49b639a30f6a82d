# Protected columns on a Citus cluster (docs/citus.md).  Opt-in: runs only
# when KMS_CITUS_PG_CONFIG names the pg_config of a PostgreSQL installation
# that has Citus and kms_pg installed; the normal suite skips it.  Nothing
# of Citus is part of kms_pg.
#
# A coordinator and two workers on 127.0.0.1, all with the same master key.
# Proves, for a distributed table and a reference table:
#  - kms_protect_column encrypts the rows on the workers (the shards'
#    copies of the trigger find their catalog row through the distributed
#    table; the workers get the rows from the coordinator);
#  - Citus copies the decrypting view to the workers, and reading it
#    decrypts there;
#  - writes through the table (INSERT, typed PREPARE, COPY, UPDATE, a
#    changed context column) and INSERT and COPY through the view are
#    encrypted on the workers and read back through the view;
#  - a ciphertext of another row is refused by a shard's trigger;
#  - UPDATE and DELETE through the view (the view's rules on a Citus table),
#    by the writer too, a changed context column re-sealed on the workers;
#    RETURNING refused, a role without the table privilege refused;
#  - kms_blind_index in a query pushed down to the workers, and on each
#    worker directly, gives the coordinator's value;
#  - kms_rotate_column moves every value, on every shard and placement,
#    to the new key, and writers switch at once;
#  - kms_unprotect_column restores the plaintext and the workers' rows go;
#  - kms_grant_access: writer, reader and auditor on a distributed table
#    (a bare kms_grant_key on the coordinator does not reach the workers);
#  - a column with a long name (Citus shortens long shard trigger names);
#  - a table protected first and distributed later (the documented steps);
#  - a worker added later: keys, catalog rows, the reference table's
#    placement, and a shard of a distributed table moved to it;
#  - DROP TABLE removes the catalog rows on every node.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;
use KmsPgCitus;

sub node { return citus_node($_[0], 'a', "kms_pg.provider = 'local'\n"); }

my $coord = node('coord');
my @workers = (node('w1'), node('w2'));
my @nodes = ($coord, @workers);
$coord->safe_psql('postgres', "SELECT citus_set_coordinator_host('127.0.0.1', " . $coord->port . ")");
$coord->safe_psql('postgres', "SELECT citus_add_node('127.0.0.1', " . $_->port . ")") for @workers;
note 'Citus ' . $coord->safe_psql('postgres', 'SELECT citus_version()');
$coord->safe_psql('postgres', 'CREATE EXTENSION kms_pg');
my $k1 = $coord->safe_psql('postgres', q{SELECT kms_create_key('alias/col1')});
my $k2 = $coord->safe_psql('postgres', q{SELECT kms_create_key('alias/col2')});

sub cq { return $coord->safe_psql('postgres', $_[0]); }

# ---------- a distributed table ----------
cq(q{
CREATE TABLE patient (id bigint PRIMARY KEY, tenant int NOT NULL, ssn text, dob date);
SELECT create_distributed_table('patient', 'id');
INSERT INTO patient SELECT g, g % 3, 'ssn-' || g, date '2000-01-01' + g FROM generate_series(1, 60) g;
});
is(cq(q{SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = 'patient'::regclass}),
	'2', 'the distributed table has shards on both workers');

my ($ret, $out, $err) = $coord->psql('postgres',
	q{CALL kms_protect_column('patient', 'ssn', '{tenant}', 'alias/col1', blind_index => true)});
is($ret, 0, 'kms_protect_column on a distributed table') or diag($err);
like($err, qr/patient\.ssn protected, 60 rows encrypted/, 'the 60 existing rows were encrypted');
($ret, $out, $err) = $coord->psql('postgres',
	q{CALL kms_protect_column('patient', 'dob', '{tenant}', 'alias/col1')});
is($ret, 0, 'a second protected column (date) on the same table') or diag($err);

for my $w (@workers)
{
	is($w->safe_psql('postgres',
			q{SELECT string_agg(trigger_name || ' ' || key_id, ', ' ORDER BY trigger_name) FROM kms_protected_columns WHERE relid = 'patient'::regclass}),
		'kms_protect_dob alias/col1, kms_protect_ssn alias/col1',
		$w->name . ': has the catalog rows of the distributed table');
}
is(cq(q{SELECT count(*) FROM patient WHERE NOT kms_is_ciphertext(ssn) OR NOT kms_is_ciphertext(dob)}),
	'0', 'every stored value is a ciphertext');
is(cq(q{SELECT count(*) FROM patient_decrypted p
       WHERE p.ssn = 'ssn-' || p.id AND p.dob = date '2000-01-01' + p.id::int}),
	'60', 'the view decrypts every row to its original value and type');

for my $w (@workers)
{
	is($w->safe_psql('postgres', q{SELECT to_regclass('patient_decrypted') IS NOT NULL}), 't',
		$w->name . ': Citus copied the decrypting view');
}
like(cq(q{EXPLAIN (VERBOSE, COSTS OFF) SELECT ssn FROM patient_decrypted}),
	qr/Query: SELECT .*kms_pc_view_decrypt/s, 'reading the view decrypts on the workers');

# writes through the table, the view, PREPARE and COPY
($ret, $out, $err) = $coord->psql('postgres', q{
INSERT INTO patient VALUES (100, 1, 'back\slash \x41', '2020-02-02');
INSERT INTO patient_decrypted (id, tenant, ssn, dob) VALUES (101, 2, 'through the view', '2021-03-03');
PREPARE ins(bigint, int, text, date) AS INSERT INTO patient (id, tenant, ssn, dob) VALUES ($1, $2, $3, $4);
EXECUTE ins(102, 0, 'prepared', '2019-12-31');
COPY patient (id, tenant, ssn, dob) FROM STDIN;
103	1	copied in	2018-01-01
\.
COPY patient_decrypted (id, tenant, ssn, dob) FROM STDIN;
104	2	copied through the view	2017-01-01
\.
UPDATE patient SET ssn = 'updated' WHERE id = 1;
UPDATE patient SET tenant = 7 WHERE id = 2;
DELETE FROM patient WHERE id = 3;
}, on_error_stop => 1);
is($ret, 0, 'INSERT, PREPARE, COPY through the table and the view, UPDATE, DELETE') or diag($err);
is(cq(q{SELECT string_agg(id || ':' || tenant || ':' || ssn || ':' || dob, ' | ' ORDER BY id)
       FROM patient_decrypted WHERE id IN (1, 2, 3, 100, 101, 102, 103, 104)}),
	'1:1:updated:2000-01-02 | 2:7:ssn-2:2000-01-03 | 100:1:back\slash \x41:2020-02-02'
	  . ' | 101:2:through the view:2021-03-03 | 102:0:prepared:2019-12-31'
	  . ' | 103:1:copied in:2018-01-01 | 104:2:copied through the view:2017-01-01',
	'what was written reads back through the view (a changed context column re-sealed on the worker)');
is(cq(q{SELECT count(*) FROM patient WHERE NOT kms_is_ciphertext(ssn) OR NOT kms_is_ciphertext(dob)}),
	'0', 'every written value was encrypted on the workers');

# a shard's trigger checks that a ciphertext belongs to its row
my $other = cq(q{SELECT ssn::bytea FROM patient WHERE id = 5});
($ret, $out, $err) = $coord->psql('postgres', "UPDATE patient SET ssn = '$other'::bytea WHERE id = 6");
like($err, qr/is a kms_pg ciphertext that does not belong to this row/,
	'a ciphertext of another row is refused on the worker');

# UPDATE and DELETE through the view: on a Citus table the view's rules make
# them an UPDATE or DELETE of the table, which Citus plans on the shards
my %ct_before = map { $_ => cq("SELECT md5(ssn::bytea) FROM patient WHERE id = $_") } (8, 20);
($ret, $out, $err) = $coord->psql('postgres', q{
INSERT INTO patient VALUES (105, 1, 'delete me by id', '2001-01-01'), (106, 2, 'delete me by value', '2001-01-01');
UPDATE patient_decrypted SET ssn = 'via the view' WHERE id = 17;
UPDATE patient_decrypted SET tenant = 8 WHERE id = 8;
UPDATE patient_decrypted SET dob = '1999-09-09', ssn = 'both \x41' WHERE id = 9;
UPDATE patient_decrypted SET tenant = 5 WHERE id BETWEEN 20 AND 25;
UPDATE patient_decrypted SET ssn = ssn || ' matched' WHERE ssn = 'ssn-30';
DELETE FROM patient_decrypted WHERE id = 105;
DELETE FROM patient_decrypted WHERE ssn = 'delete me by value';
}, on_error_stop => 1);
is($ret, 0, 'UPDATE and DELETE through the view of a distributed table (one shard and many)') or diag($err);
is(cq(q{SELECT string_agg(id || ':' || tenant || ':' || ssn || ':' || dob, ' | ' ORDER BY id)
       FROM patient_decrypted WHERE id IN (17, 8, 9, 20, 25, 30, 105, 106)}),
	'8:8:ssn-8:2000-01-09 | 9:0:both \x41:1999-09-09 | 17:2:via the view:2000-01-18 | 20:5:ssn-20:2000-01-21 | 25:5:ssn-25:2000-01-26 | 30:0:ssn-30 matched:2000-01-31',
	'what was updated through the view reads back; the deleted rows are gone');
for my $id (8, 20)
{
	isnt(cq("SELECT md5(ssn::bytea) FROM patient WHERE id = $id"), $ct_before{$id},
		"row $id: a context column changed through the view re-sealed the protected value on the worker");
}
is(cq(q{SELECT count(*) FROM patient WHERE NOT kms_is_ciphertext(ssn) OR NOT kms_is_ciphertext(dob)}),
	'0', 'every value written through the view was encrypted on the workers');
like(cq(q{EXPLAIN (COSTS OFF) UPDATE patient_decrypted SET ssn = 'x' WHERE id = 7}),
	qr/Task Count: 1\b/, 'an UPDATE through the view by primary key goes to one shard');
($ret, $out, $err) = $coord->psql('postgres', q{UPDATE patient_decrypted SET id = 1000 WHERE id = 7});
is($ret, 0, 'a change of the distribution column through the view runs (and matches no row)') or diag($err);
is(cq(q{SELECT count(*) FROM patient WHERE id IN (7, 1000)}), '1', 'and row 7 is unchanged');

# blind index: pushed down to the workers, and on each worker directly
is(cq(q{SELECT string_agg(id::text, ',') FROM patient WHERE ssn_bidx = kms_blind_index('patient', 'ssn', 'ssn-7')}),
	'7', 'a blind-index lookup finds the row');
like(cq(q{EXPLAIN (VERBOSE, COSTS OFF) SELECT id FROM patient WHERE ssn_bidx = kms_blind_index('patient', 'ssn', 'ssn-7')}),
	qr/Task Count: 32.*Query: SELECT .*kms_blind_index/s, 'the blind-index lookup runs on the workers');
my $bidx = cq(q{SELECT kms_blind_index('patient', 'ssn', 'ssn-7')});
for my $w (@workers)
{
	is($w->safe_psql('postgres', q{SELECT kms_blind_index('patient', 'ssn', 'ssn-7')}), $bidx,
		$w->name . ': kms_blind_index gives the coordinator\'s value');
}
is(cq(q{SELECT count(*) FROM patient WHERE ssn_bidx IS NULL AND ssn IS NOT NULL}), '0',
	'every written value has its blind index');

# rotation: every value of every shard to the new key; writers switch
($ret, $out, $err) = $coord->psql('postgres',
	q{CALL kms_rotate_column('patient', 'ssn', 'alias/col2', batch_size => 25)});
is($ret, 0, 'kms_rotate_column on a distributed table') or diag($err);
is(cq(q{SELECT string_agg(key_id || ' ' || "values", ', ') FROM kms_key_usage('patient', 'ssn')}),
	"$k2 64", 'every value of the rotated column is under the new key');
is(cq(q{SELECT rows_done || '/' || rows_total || ' ' || (finished IS NOT NULL) FROM kms_rotation_progress ORDER BY run_id DESC LIMIT 1}),
	'64/64 true', 'the progress figures are exact');
is(cq(q{SELECT string_agg(key_id || ' ' || "values", ', ') FROM kms_key_usage('patient', 'dob')}),
	"$k1 64", 'the other protected column keeps its key');
for my $w (@workers)
{
	is($w->safe_psql('postgres',
			q{SELECT key_id FROM kms_protected_columns WHERE relid = 'patient'::regclass AND trigger_name = 'kms_protect_ssn'}),
		'alias/col2', $w->name . ': the catalog row names the new key');
}
cq(q{INSERT INTO patient VALUES (200, 1, 'after rotation', '2022-01-01')});
is(cq(q{SELECT kms_ciphertext_key_id(ssn) FROM patient WHERE id = 200}), $k2,
	'a write after the rotation is encrypted under the new key on the worker');
is(cq(q{SELECT count(*) FROM patient_decrypted WHERE ssn IS NOT NULL}), '65', 'every value still decrypts');

# unprotect: the plaintext back in its type, the workers' rows gone
($ret, $out, $err) = $coord->psql('postgres', q{SELECT kms_unprotect_column('patient', 'dob')});
is($ret, 0, 'kms_unprotect_column on a distributed table') or diag($err);
is(cq(q{SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'patient'::regclass AND attname = 'dob'}),
	'date', 'the column has its type back');
is(cq(q{SELECT dob FROM patient WHERE id = 100}), '2020-02-02', 'and its plaintext');
for my $w (@workers)
{
	is($w->safe_psql('postgres',
			q{SELECT string_agg(trigger_name, ',') FROM kms_protected_columns WHERE relid = 'patient'::regclass}),
		'kms_protect_ssn', $w->name . ': only the still protected column has a catalog row');
}

# roles: kms_grant_access makes the key privileges and function grants on
# the workers too (a bare kms_grant_key on the coordinator does not reach them)
cq(q{CREATE ROLE cit_writer LOGIN; CREATE ROLE cit_reader LOGIN; CREATE ROLE cit_auditor LOGIN;
     CREATE ROLE cit_other LOGIN;
     SELECT kms_grant_key('alias/col2', 'cit_other', '{encrypt}');});
for my $w (@workers)
{
	is($w->safe_psql('postgres', q{SELECT count(*) FROM kms_key_grants WHERE grantee = 'cit_other'}), '0',
		$w->name . ': a kms_grant_key() on the coordinator does not reach the worker');
}
($ret, $out, $err) = $coord->psql('postgres', q{
SELECT kms_grant_access('patient', 'cit_writer', 'writer');
SELECT kms_grant_access('patient', 'cit_reader', 'reader');
SELECT kms_grant_access('patient', 'cit_auditor', 'auditor');
}, on_error_stop => 1);
is($ret, 0, 'kms_grant_access on a distributed table') or diag($err);
($ret, $out, $err) = $coord->psql('postgres', q{
SET ROLE cit_writer;
INSERT INTO patient (id, tenant, ssn) VALUES (300, 1, 'by the writer');
INSERT INTO patient_decrypted (id, tenant, ssn) VALUES (301, 2, 'by the writer, view');
UPDATE patient SET ssn = 'changed by the writer' WHERE id = 1;
INSERT INTO patient (id, tenant, ssn) VALUES (303, 1, 'to delete'), (304, 1, 'to update');
UPDATE patient_decrypted SET ssn = 'by the writer, updated through the view' WHERE id = 304;
UPDATE patient_decrypted SET tenant = 1 WHERE id = 301;
DELETE FROM patient_decrypted WHERE id = 303;
}, on_error_stop => 1);
is($ret, 0, 'the writer writes through the table and the view, UPDATE and DELETE included (encrypted on the workers as the writer)') or diag($err);
is(cq(q{SELECT count(*) FROM patient WHERE id = 303}), '0', 'the writer\'s DELETE through the view removed the row');
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE cit_writer; UPDATE patient_decrypted SET ssn = 'r' WHERE id = 300 RETURNING ssn});
like($err, qr/cannot perform UPDATE RETURNING on relation "patient_decrypted"/,
	'UPDATE ... RETURNING through the view of a Citus table is refused (no plaintext back)');
is($out, '', 'and returns nothing');
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE cit_writer; DELETE FROM patient_decrypted WHERE id = 300 RETURNING *});
like($err, qr/cannot perform DELETE RETURNING on relation "patient_decrypted"/, 'so is DELETE ... RETURNING');
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE cit_auditor; UPDATE patient_decrypted SET tenant = 2 WHERE id = 300});
like($err, qr/permission denied for table (public\.)?patient/, 'a role without UPDATE on the table cannot UPDATE through the view');
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE cit_auditor; DELETE FROM patient_decrypted WHERE id = 300});
like($err, qr/permission denied for table (public\.)?patient/, 'nor DELETE through it');
is(cq(q{SELECT tenant FROM patient WHERE id = 300}), '1', 'row 300 is unchanged');
is($coord->safe_psql('postgres', q{SET ROLE cit_writer; SELECT count(ssn) FROM patient_decrypted WHERE id IN (1, 300, 301)}),
	'0', 'the writer reads no plaintext back through the view');
is($coord->safe_psql('postgres', q{SET ROLE cit_reader;
	SELECT string_agg(id || ':' || ssn, ',' ORDER BY id) FROM patient_decrypted WHERE id IN (1, 300, 301, 304)}),
	'1:changed by the writer,300:by the writer,301:by the writer, view,304:by the writer, updated through the view',
	'the reader reads the plaintext (decrypted on the workers; 301 re-sealed under its new tenant as the writer)');
is($coord->safe_psql('postgres', q{SET ROLE cit_reader;
	SELECT string_agg(id::text, ',') FROM patient WHERE ssn_bidx = kms_blind_index('patient', 'ssn', 'by the writer')}),
	'300', 'the reader searches the blind index (on the workers)');
is($coord->safe_psql('postgres', q{SET ROLE cit_auditor;
	SELECT count(*) FILTER (WHERE kms_is_ciphertext(p.ssn)) || ' ' || count(d.ssn)
	FROM patient p JOIN patient_decrypted d USING (id) WHERE id IN (1, 300, 301)}),
	'3 0', 'the auditor sees ciphertext only');

# after a rotation to a new key, the workers have no privilege on it for
# the writer until kms_grant_access runs again
cq(q{SELECT kms_create_key('alias/col3')});
($ret, $out, $err) = $coord->psql('postgres', q{CALL kms_rotate_column('patient', 'ssn', 'alias/col3')});
is($ret, 0, 'a second rotation') or diag($err);
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE cit_writer; INSERT INTO patient (id, tenant, ssn) VALUES (302, 1, 'x')});
like($err, qr/permission denied for kms_pg key/, 'after it the writer cannot encrypt on the workers under the new key');
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE cit_writer; UPDATE patient_decrypted SET ssn = 'x' WHERE id = 300});
like($err, qr/permission denied for kms_pg key/, 'nor through an UPDATE of the view');
($ret, $out, $err) = $coord->psql('postgres', q{SELECT kms_grant_access('patient', 'cit_writer', 'writer');
	SET ROLE cit_writer; INSERT INTO patient (id, tenant, ssn) VALUES (302, 1, 'x')}, on_error_stop => 1);
is($ret, 0, 'kms_grant_access again: the writer writes under the new key') or diag($err);

# ---------- a reference table ----------
($ret, $out, $err) = $coord->psql('postgres', q{
CREATE TABLE doc (id int PRIMARY KEY, body text);
SELECT create_reference_table('doc');
INSERT INTO doc VALUES (1, 'alpha'), (2, 'beta');
CALL kms_protect_column('doc', 'body', NULL, 'alias/col1', blind_index => true);
INSERT INTO doc VALUES (3, 'gamma');
INSERT INTO doc_decrypted VALUES (4, 'delta');
UPDATE doc SET body = 'BETA' WHERE id = 2;
INSERT INTO doc VALUES (5, 'epsilon'), (6, 'zeta');
UPDATE doc_decrypted SET body = 'DELTA' WHERE id = 4;
DELETE FROM doc_decrypted WHERE id = 5;
DELETE FROM doc_decrypted WHERE body = 'zeta';
}, on_error_stop => 1);
is($ret, 0, 'a reference table: protect, INSERT through the table and the view, UPDATE, UPDATE and DELETE through the view') or diag($err);
is(cq(q{SELECT string_agg(id || ':' || body, ',' ORDER BY id) FROM doc_decrypted}),
	'1:alpha,2:BETA,3:gamma,4:DELTA', 'the reference table reads back through the view');
my $shard = cq(q{SELECT shardid FROM pg_dist_shard WHERE logicalrelid = 'doc'::regclass});
for my $n (@nodes)
{
	is($n->safe_psql('postgres',
			"SELECT string_agg(id || ':' || convert_from(kms_decrypt_pairs(body::bytea, 'kms_pg:column', c.column_id::text), 'UTF8'), ',' ORDER BY id)"
			  . " FROM doc_$shard, kms_protected_columns c WHERE c.relid = 'doc'::regclass"),
		'1:alpha,2:BETA,3:gamma,4:DELTA', $n->name . ': its placement holds ciphertexts of the same values');
}
my %ct = map { $_->safe_psql('postgres', "SELECT md5(body::bytea) FROM doc_$shard WHERE id = 3") => 1 } @nodes;
is(scalar(keys %ct), 3, 'each placement sealed its own ciphertext of the same value');
is(cq(q{SELECT id FROM doc WHERE body_bidx = kms_blind_index('doc', 'body', 'gamma')}), '3',
	'a blind-index lookup in the reference table');
($ret, $out, $err) = $coord->psql('postgres', q{CALL kms_rotate_column('doc', 'body', 'alias/col2')});
is($ret, 0, 'kms_rotate_column on a reference table') or diag($err);
for my $n (@nodes)
{
	is($n->safe_psql('postgres', "SELECT string_agg(DISTINCT kms_ciphertext_key_id(body), ',') FROM doc_$shard"),
		$k2, $n->name . ': every value of its placement is under the new key');
}
($ret, $out, $err) = $coord->psql('postgres', q{SELECT kms_unprotect_column('doc', 'body')});
is($ret, 0, 'kms_unprotect_column on a reference table') or diag($err);
for my $n (@nodes)
{
	is($n->safe_psql('postgres', "SELECT string_agg(id || ':' || body, ',' ORDER BY id) FROM doc_$shard"),
		'1:alpha,2:BETA,3:gamma,4:DELTA', $n->name . ': its placement has the plaintext back');
}

# ---------- a reference table with a context column, written by the writer through the view ----------
($ret, $out, $err) = $coord->psql('postgres', q{
CREATE TABLE rdoc (id int PRIMARY KEY, grp int NOT NULL, body text);
SELECT create_reference_table('rdoc');
INSERT INTO rdoc VALUES (1, 1, 'one'), (2, 1, 'two'), (3, 1, 'three');
CALL kms_protect_column('rdoc', 'body', '{grp}', 'alias/col3');
SELECT kms_grant_access('rdoc', 'cit_writer', 'writer');
SELECT kms_grant_access('rdoc', 'cit_reader', 'reader');
}, on_error_stop => 1);
is($ret, 0, 'a reference table with a context column, protected, writer and reader granted') or diag($err);
my $rdshard = cq(q{SELECT shardid FROM pg_dist_shard WHERE logicalrelid = 'rdoc'::regclass});
my %rd_before = map { $_->name => $_->safe_psql('postgres', "SELECT md5(body::bytea) FROM rdoc_$rdshard WHERE id = 1") } @nodes;
($ret, $out, $err) = $coord->psql('postgres', q{
SET ROLE cit_writer;
UPDATE rdoc_decrypted SET body = 'TWO' WHERE id = 2;
UPDATE rdoc_decrypted SET grp = 5 WHERE id = 1;
DELETE FROM rdoc_decrypted WHERE id = 3;
}, on_error_stop => 1);
is($ret, 0, 'the writer updates (a context column too) and deletes through the view of the reference table') or diag($err);
is($coord->safe_psql('postgres', q{SET ROLE cit_writer; SELECT count(body) FROM rdoc_decrypted}), '0',
	'the writer reads no plaintext back');
is($coord->safe_psql('postgres', q{SET ROLE cit_reader; SELECT string_agg(id || ':' || grp || ':' || body, ',' ORDER BY id) FROM rdoc_decrypted}),
	'1:5:one,2:1:TWO', 'the reader reads what the writer wrote, row 1 under its new context');
for my $n (@nodes)
{
	is($n->safe_psql('postgres', "SELECT string_agg(id::text, ',' ORDER BY id) FROM rdoc_$rdshard WHERE kms_is_ciphertext(body)"),
		'1,2', $n->name . ': its placement has the rows left, encrypted');
	isnt($n->safe_psql('postgres', "SELECT md5(body::bytea) FROM rdoc_$rdshard WHERE id = 1"), $rd_before{$n->name},
		$n->name . ': its placement re-sealed row 1 under the new context');
}
cq(q{DROP TABLE rdoc CASCADE});

# ---------- a long column name (Citus shortens long shard trigger names) ----------
my $long = 'a_column_name_long_enough_for_citus_to_shorten_it';
($ret, $out, $err) = $coord->psql('postgres', qq{
CREATE TABLE longname (id int PRIMARY KEY, $long text);
SELECT create_distributed_table('longname', 'id');
INSERT INTO longname VALUES (1, 'one');
CALL kms_protect_column('longname', '$long', NULL, 'alias/col1');
INSERT INTO longname VALUES (2, 'two');
}, on_error_stop => 1);
is($ret, 0, 'a column with a 50-character name is protected on a distributed table') or diag($err);
is(cq(qq{SELECT string_agg(id || ':' || $long, ',' ORDER BY id) FROM longname_decrypted}), '1:one,2:two',
	'its values are encrypted on the workers and read back');

# ---------- protected first, distributed later ----------
cq(q{CREATE TABLE acct (id int PRIMARY KEY, owner text);
    INSERT INTO acct VALUES (1, 'ann'), (2, 'bob');
    CALL kms_protect_column('acct', 'owner', NULL, 'alias/col1');});
($ret, $out, $err) = $coord->psql('postgres', q{SELECT create_distributed_table('acct', 'id')});
like($err, qr/cannot distribute relation "acct" because it has triggers/,
	'Citus refuses to distribute a table with a protected column by default');
($ret, $out, $err) = $coord->psql('postgres', q{
SET citus.enable_unsafe_triggers = on;
ALTER TABLE acct DISABLE TRIGGER kms_protect_owner;
SELECT create_distributed_table('acct', 'id');
SELECT kms_citus_sync_columns('acct');
ALTER TABLE acct ENABLE TRIGGER kms_protect_owner;
}, on_error_stop => 1);
is($ret, 0, 'the documented steps distribute a protected table') or diag($err);
($ret, $out, $err) = $coord->psql('postgres', q{
INSERT INTO acct VALUES (3, 'cid');
INSERT INTO acct_decrypted VALUES (4, 'dan');
UPDATE acct SET owner = 'BOB' WHERE id = 2;
}, on_error_stop => 1);
is($ret, 0, 'writes to the distributed protected table') or diag($err);
is(cq(q{SELECT string_agg(id || ':' || owner, ',' ORDER BY id) FROM acct_decrypted}),
	'1:ann,2:BOB,3:cid,4:dan', 'its values read back through the view');
is(cq(q{SELECT count(*) FROM acct WHERE NOT kms_is_ciphertext(owner)}), '0',
	'and are stored encrypted');
is(cq(q{SELECT string_agg(rulename, ',' ORDER BY rulename) FROM pg_rewrite WHERE ev_class = 'acct_decrypted'::regclass AND rulename <> '_RETURN'}),
	'kms_delete,kms_update', 'the ALTER TABLE of the documented steps remade its view with the rules');
($ret, $out, $err) = $coord->psql('postgres', q{UPDATE acct_decrypted SET owner = 'ANN' WHERE id = 1; DELETE FROM acct_decrypted WHERE id = 4},
	on_error_stop => 1);
is($ret, 0, 'UPDATE and DELETE through its view') or diag($err);
is(cq(q{SELECT string_agg(id || ':' || owner, ',' ORDER BY id) FROM acct_decrypted}),
	'1:ANN,2:BOB,3:cid', 'read back through the view');

# ---------- a worker added later, and a shard moved to it ----------
cq(q{CREATE TABLE rt (id int PRIMARY KEY, body text);
     SELECT create_reference_table('rt');
     INSERT INTO rt VALUES (1, 'one');
     CALL kms_protect_column('rt', 'body', NULL, 'alias/col1');});
my $w3 = node('w3');
push @nodes, $w3;
($ret, $out, $err) = $coord->psql('postgres', "SELECT citus_add_node('127.0.0.1', " . $w3->port . ");
SELECT kms_citus_sync_keys();
SELECT kms_citus_sync_columns();
SELECT replicate_reference_tables('block_writes');", on_error_stop => 1);
is($ret, 0, 'a worker added later gets the keys, the catalog rows and the reference table') or diag($err);
is($w3->safe_psql('postgres', q{SELECT string_agg(relid::text, ',' ORDER BY relid::text) FROM kms_protected_columns}),
	'acct,longname,patient,rt', 'the new worker has the catalog rows of the protected Citus tables');
my $rshard = cq(q{SELECT shardid FROM pg_dist_shard WHERE logicalrelid = 'rt'::regclass});
cq(q{INSERT INTO rt VALUES (2, 'two')});
is($w3->safe_psql('postgres', "SELECT count(*) FROM rt_$rshard WHERE kms_is_ciphertext(body)"), '2',
	'the new worker\'s placement of the reference table holds ciphertexts');
my $ashard = cq(q{SELECT get_shard_id_for_distribution_column('acct', 2)});
($ret, $out, $err) = $coord->psql('postgres', "SELECT citus_move_shard_placement($ashard, '127.0.0.1',
	(SELECT nodeport FROM citus_shards WHERE shardid = $ashard), '127.0.0.1', " . $w3->port . ", shard_transfer_mode => 'block_writes')");
is($ret, 0, 'a shard of the protected distributed table moves to the new worker') or diag($err);
($ret, $out, $err) = $coord->psql('postgres', q{UPDATE acct SET owner = 'moved bob' WHERE id = 2}, on_error_stop => 1);
is($ret, 0, 'a write to the moved shard') or diag($err);
is(cq(q{SELECT owner FROM acct_decrypted WHERE id = 2}), 'moved bob', 'reads back through the view');
is($w3->safe_psql('postgres', "SELECT count(*) FROM acct_$ashard WHERE id = 2 AND kms_is_ciphertext(owner)"), '1',
	'and is stored encrypted on the new worker');

# ---------- DROP TABLE: no catalog row left on any node ----------
cq(q{DROP TABLE patient CASCADE; DROP TABLE acct CASCADE; DROP TABLE longname CASCADE; DROP TABLE rt CASCADE});
for my $n (@nodes)
{
	is($n->safe_psql('postgres', q{SELECT count(*) FROM kms_protected_columns}), '0',
		$n->name . ': no catalog row is left after DROP TABLE');
}

$_->stop for @nodes;
done_testing();
