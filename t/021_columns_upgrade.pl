# ALTER EXTENSION kms_pg UPDATE from 1.0 with a protected column: the
# extension's objects are then exactly those of a fresh 1.1 install (no
# SECURITY DEFINER left), the 1.0 column (type bytea) keeps working through
# the new C trigger and the old view, and kms_pc_upgrade_column() moves it
# to kms_sealed with every ciphertext kept byte for byte, after which
# nothing written is reinterpreted.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgKeyring;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('columns_upgrade');
$node->init;
# 1.1 keeps local keys in its catalog under a master key (the update
# imports the 1.0 keyring file)
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a'));
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE old');
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION kms_pg');

$node->safe_psql('old', q{
CREATE EXTENSION kms_pg VERSION '1.0';
SELECT kms_create_key('alias/upgrade');
ALTER DATABASE old SET kms_pg.key_id = 'alias/upgrade';
});
$node->safe_psql('old', q{
CREATE TABLE person (id int PRIMARY KEY, tenant text NOT NULL, ssn text, born date);
INSERT INTO person SELECT g, 't' || (g % 2), 'ssn-' || g, date '2000-01-01' + g FROM generate_series(1, 50) g;
CALL kms_protect_column('person', 'ssn', '{id,tenant}', blind_index => true);
CALL kms_protect_column('person', 'born', '{id}');
});
my $before = $node->safe_psql('old',
	q{SELECT md5(string_agg(encode(ssn, 'hex') || encode(born, 'hex') || encode(ssn_bidx, 'hex'), ',' ORDER BY id)) FROM person});
my $plain_before = $node->safe_psql('old',
	q{SELECT md5(string_agg(format('%s|%s|%s', id, ssn, born), ',' ORDER BY id)) FROM person_decrypted});

$node->safe_psql('old', q{ALTER EXTENSION kms_pg UPDATE TO '1.1'});

# The same objects as a fresh install: members, and the text of every
# function, cast, type and policy.
my $objects_q = q{
SELECT string_agg(x, E'\n' ORDER BY x) FROM (
  SELECT pg_describe_object(d.classid, d.objid, d.objsubid) ||
         CASE WHEN d.classid = 'pg_proc'::regclass
              THEN ' ' || md5(pg_get_functiondef(d.objid)) || ' secdef=' ||
                   (SELECT p.prosecdef FROM pg_proc p WHERE p.oid = d.objid) ||
                   ' acl=' || coalesce((SELECT p.proacl::text FROM pg_proc p WHERE p.oid = d.objid), '')
              WHEN d.classid = 'pg_cast'::regclass
              THEN (SELECT format(' %s %s %s', c.castfunc::regprocedure, c.castcontext, c.castmethod)
                    FROM pg_cast c WHERE c.oid = d.objid)
              ELSE '' END AS x
  FROM pg_depend d
  WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
    AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'kms_pg')
  UNION ALL
  SELECT format('policy %s %s %s', polname, pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid))
  FROM pg_policy WHERE polrelid = 'kms_protected_columns'::regclass) s};
my $fresh = $node->safe_psql('fresh', $objects_q);
my $updated = $node->safe_psql('old', $objects_q);
is($updated, $fresh, 'updated extension has the objects of a fresh 1.1 install');
is($node->safe_psql('old', q{
SELECT count(*) FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'kms_pg') AND p.prosecdef}), '0',
	'no SECURITY DEFINER function after the update');

# The 1.0 column (bytea) still works: reads, table and view writes, blind index.
is($node->safe_psql('old',
	q{SELECT md5(string_agg(format('%s|%s|%s', id, ssn, born), ',' ORDER BY id)) FROM person_decrypted}),
	$plain_before, 'plaintext unchanged through the view after the update');
$node->safe_psql('old', q{
INSERT INTO person (id, tenant, ssn, born) VALUES (100, 't0', 'ssn-100', '2020-02-02');
INSERT INTO person_decrypted (id, tenant, ssn, born) VALUES (101, 't1', 'ssn-101', '2021-03-03');
UPDATE person SET tenant = 't9' WHERE id = 1;
});
is($node->safe_psql('old', q{
SELECT string_agg(format('%s|%s|%s|%s', id, tenant, ssn, born), ',' ORDER BY id) FROM person_decrypted
WHERE id IN (1, 100, 101) AND ssn_bidx = kms_blind_index('person', 'ssn', ssn)}),
	'1|t9|ssn-1|2000-01-02,100|t0|ssn-100|2020-02-02,101|t1|ssn-101|2021-03-03',
	'1.0 column: writes through table and view, re-seal, blind index');

# Move both columns to kms_sealed: ciphertexts kept byte for byte.
$node->safe_psql('old', q{DELETE FROM person WHERE id >= 100; UPDATE person SET tenant = 't1' WHERE id = 1});
my $cipher_mid = $node->safe_psql('old',
	q{SELECT md5(string_agg(encode(ssn, 'hex') || encode(born, 'hex') || encode(ssn_bidx, 'hex'), ',' ORDER BY id)) FROM person WHERE id <> 1});
is($node->safe_psql('old', q{
SELECT kms_pc_upgrade_column('person', 'ssn'), kms_pc_upgrade_column('person', 'born'),
       kms_pc_upgrade_column('person', 'born')}), 't|t|f', 'kms_pc_upgrade_column');
is($node->safe_psql('old', q{
SELECT string_agg(format_type(atttypid, atttypmod), ',' ORDER BY attnum) FROM pg_attribute
WHERE attrelid = 'person'::regclass AND attname IN ('ssn', 'born')}), 'kms_sealed,kms_sealed', 'columns are kms_sealed');
is($node->safe_psql('old',
	q{SELECT md5(string_agg(encode(ssn, 'hex') || encode(born, 'hex') || encode(ssn_bidx, 'hex'), ',' ORDER BY id)) FROM person WHERE id <> 1}),
	$cipher_mid, 'ciphertexts and blind indexes kept byte for byte');
is($node->safe_psql('old',
	q{SELECT md5(string_agg(format('%s|%s|%s', id, ssn, born), ',' ORDER BY id)) FROM person_decrypted}),
	$plain_before, 'plaintext unchanged through the view after kms_pc_upgrade_column');
is($node->safe_psql('old', q{
SELECT count(*) FROM kms_protected_columns_info WHERE table_name = 'person'::regclass AND trigger_name IS NOT NULL
   AND column_name IN ('ssn', 'born')}), '2', 'catalog rows and triggers back');
$node->safe_psql('old', q{INSERT INTO person (id, tenant, ssn, born) VALUES (200, 't0', '\x41424344', '2022-04-04')});
is($node->safe_psql('old', q{SELECT ssn FROM person_decrypted WHERE id = 200}), '\x41424344',
	'after the move, "\x41424344" is stored as written');
is($node->safe_psql('old', q{SELECT count(*) FROM person WHERE NOT kms_is_ciphertext(ssn) OR NOT kms_is_ciphertext(born)}),
	'0', 'everything encrypted');

$node->stop;
done_testing();
