# Master keys for kms_pg's TAP tests: the local provider's keyring lives in
# the database, wrapped under a master key kept outside it
# (docs/security.md).  Tests write master key files with mode 0600 in a
# temporary directory outside every data directory.

package KmsPgKeyring;

use strict;
use warnings;

use PostgreSQL::Test::Utils;

use Exporter 'import';
our @EXPORT = qw(master_key_hex master_key_file master_key_conf);

my $dir;

# Compatibility of the test harness (not of kms_pg): BackgroundPsql->query of
# older minor releases (16.2, for one) leaves the newline that ends psql's
# output; later releases strip it.  Where the installed module does not strip
# it, strip exactly that one newline, so that every test sees what current
# releases return.
if (eval { require PostgreSQL::Test::BackgroundPsql; 1 })
{
	my $file = $INC{'PostgreSQL/Test/BackgroundPsql.pm'};
	open(my $fh, '<', $file) or die "cannot read $file: $!";
	my $src = do { local $/; <$fh> };
	close $fh;
	if ($src !~ /\$banner_match = qr\/\\r\?\\n\?\$banner/)
	{
		no warnings 'redefine';
		my $orig = \&PostgreSQL::Test::BackgroundPsql::query;
		*PostgreSQL::Test::BackgroundPsql::query = sub {
			my ($output, $ret) = $orig->(@_);
			$output =~ s/\n\z// if defined $output;
			return wantarray ? ($output, $ret) : $output;
		};
	}
}

# A fixed, distinct test key per label ('a', 'b', ...): 64 hex characters.
sub master_key_hex
{
	my ($label) = @_;
	$label //= 'a';
	return unpack('H*', substr("kms_pg tap master key $label" . ('.' x 32), 0, 32));
}

# Path of a 0600 file holding master_key_hex($label) (created once).
sub master_key_file
{
	my ($label) = @_;
	$label //= 'a';
	$dir //= PostgreSQL::Test::Utils::tempdir('master_keys');
	my $path = "$dir/master_$label.key";
	unless (-f $path)
	{
		open(my $fh, '>', $path) or die "could not write $path: $!";
		print $fh master_key_hex($label), "\n";
		close($fh);
		chmod(0600, $path) or die "chmod $path: $!";
	}
	return $path;
}

# postgresql.conf line that points a node at master key $label.
sub master_key_conf
{
	my ($label) = @_;
	return "kms_pg.master_key_file = '" . master_key_file($label) . "'\n";
}

1;
