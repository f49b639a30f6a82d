# The 1.0 -> 1.1 update script is assembled by scripts/update_expand.pl:
# each "-- @install" marker of sql/update/1.0--1.1/ brings an object from
# sql/install/ byte for byte (CREATE OR REPLACE where 1.0 has the object),
# and a marker whose object is not found exactly once fails the build,
# naming the marker.  (t/021 and t/086 check that the update gives the same
# database as a fresh install.)
use strict;
use warnings;

use File::Temp qw(tempdir);
use Test::More;

my $script = 'scripts/update_expand.pl';
my $base = 'sql/versions/kms_pg--1.0.sql';
my $dir = tempdir(CLEANUP => 1);

sub slurp
{
	my ($path) = @_;
	open(my $fh, '<', $path) or die "$path: $!";
	local $/;
	return scalar <$fh>;
}

# Expand one update part holding $text; returns (exit code, stdout, stderr).
sub expand
{
	my ($text) = @_;
	my $part = "$dir/part.sql";
	open(my $fh, '>', $part) or die $!;
	print $fh $text;
	close($fh);
	my $rc = system("perl $script sql/install $base $part > $dir/out 2> $dir/err");
	return ($rc >> 8, slurp("$dir/out"), slurp("$dir/err"));
}

# The text of the install part from the CREATE line of $first through the
# first line that ends a dollar-quoted body or a statement ($end).
sub install_text
{
	my ($file, $first, $end) = @_;
	my $text = slurp("sql/install/$file");
	my $at = index($text, $first);
	die "$first not in $file" if $at < 0;
	my $stop = index($text, $end, $at);
	return substr($text, $at, $stop + length($end) - $at);
}

# A procedure new in 1.1 (1.0's has one argument less): byte for byte, still
# CREATE, with its COMMENT and REVOKE.
my ($rc, $out, $err) = expand("-- \@install 25_rotation.sql kms_rotate_column\n");
is($rc, 0, 'kms_rotate_column expands') or diag($err);
my $body = install_text('25_rotation.sql', 'CREATE PROCEDURE kms_rotate_column(', "\$\$;\n");
ok(index($out, $body) >= 0, 'kms_rotate_column: the install part\'s text, byte for byte');
like($out, qr/^COMMENT ON PROCEDURE kms_rotate_column\(regclass, name, text, int, text, int, int\) IS/m,
	'kms_rotate_column: its COMMENT comes along');
like($out, qr/^REVOKE ALL ON PROCEDURE kms_rotate_column\(regclass, name, text, int, text, int, int\) FROM PUBLIC;$/m,
	'kms_rotate_column: its REVOKE comes along');
unlike($out, qr/kms_rotation_progress FROM PUBLIC/, 'kms_rotate_column: no statement of another object');

# An overloaded function that 1.0 has: the one named, CREATE OR REPLACE.
($rc, $out, $err) = expand("-- \@install 20_columns.sql kms_blind_index(regclass, name, bytea)\n");
is($rc, 0, 'kms_blind_index(regclass, name, bytea) expands') or diag($err);
$body = install_text('20_columns.sql', 'CREATE FUNCTION kms_blind_index(tbl regclass, col name, value bytea)', ";\n");
$body =~ s/^CREATE FUNCTION/CREATE OR REPLACE FUNCTION/;
ok(index($out, $body) >= 0, 'kms_blind_index: CREATE OR REPLACE (1.0 has it), the rest byte for byte');
like($out, qr/^REVOKE ALL ON FUNCTION kms_blind_index\(regclass, name, bytea\) FROM PUBLIC;$/m,
	'kms_blind_index(..., bytea): its REVOKE');
unlike($out, qr/value text|kms_blind_index\(regclass, name, text\)/, 'kms_blind_index: not the other overload');

# A view and a function of the same name.
($rc, $out, $err) = expand("-- \@install 30_aws.sql VIEW kms_aws_credentials_status\n");
is($rc, 0, 'a view expands') or diag($err);
like($out, qr/^CREATE VIEW kms_aws_credentials_status AS\n/m, 'the view');
like($out, qr/^GRANT SELECT ON kms_aws_credentials_status TO pg_monitor;$/m, 'the view\'s GRANT');
unlike($out, qr/FUNCTION/, 'not the function of the same name');

# A section and a whole part.
($rc, $out, $err) = expand("-- \@install 20_columns.sql SECTION kms_sealed\n-- \@install 27_column_format.sql\n");
is($rc, 0, 'a section and a whole part expand') or diag($err);
like($out, qr/^CREATE TYPE kms_sealed;\n.*^CREATE CAST \(jsonb AS kms_sealed\) WITH INOUT AS ASSIGNMENT;\n-- \@install 27_column_format.sql\n/ms,
	'the section: from its begin to its end line');
ok(index($out, slurp('sql/install/27_column_format.sql')) >= 0, 'the whole part, byte for byte');

# Markers that must fail the build, naming the marker.
for my $case (
	[ "-- \@install 25_rotation.sql kms_rotate_columns\n", qr/part\.sql:1: kms_rotate_columns in sql\/install\/25_rotation\.sql: no CREATE statement found/ ],
	[ "\n-- \@install 20_columns.sql kms_blind_index\n", qr/part\.sql:2: kms_blind_index in sql\/install\/20_columns\.sql: 2 CREATE statements match/ ],
	[ "-- \@install 20_columns.sql kms_blind_index(regclass, name, int)\n", qr/part\.sql:1: .*no CREATE statement found/ ],
	[ "-- \@install 20_columns.sql SECTION kms_sealed_casts\n", qr/part\.sql:1: SECTION kms_sealed_casts .*found 0 times/ ],
	[ "-- \@install 21_columns.sql\n", qr/part\.sql:1: cannot read sql\/install\/21_columns\.sql/ ],
	[ "-- \@install 15_keyring.sql VIEW kms_local_key\n", qr/part\.sql:1: VIEW kms_local_key .*no CREATE statement found/ ])
{
	($rc, $out, $err) = expand($case->[0]);
	isnt($rc, 0, "fails: $case->[0]");
	like($err, $case->[1], 'and says which marker');
}

# The update parts as they are expand, and every marker is expanded.
my @parts = sort glob('sql/update/1.0--1.1/*.sql');
my $rc2 = system("perl $script sql/install $base @parts > $dir/update.sql 2> $dir/err");
is($rc2, 0, 'the update parts expand') or diag(slurp("$dir/err"));
my $update = slurp("$dir/update.sql");
my $markers = () = join('', map { slurp($_) } @parts) =~ /^-- \@install /mg;
ok($markers > 20, "the update parts use markers ($markers)");
like($update, qr/^-- \@install 25_rotation\.sql kms_rotate_column\n(?:--.*\n)*CREATE PROCEDURE kms_rotate_column\(/m,
	'the update script holds the install part\'s kms_rotate_column');

done_testing();
