
# Shared helpers for kms_pg's AWS TAP tests: throwaway TLS material, KMS
# emulator instances (test/emulator/kms_emulator.py) on 127.0.0.1, its
# unsigned control API, and nodes with kms_pg preloaded whose server
# process gets exactly the AWS_* environment a test asks for.

package KmsPgTest;

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use JSON::PP;
use Time::HiRes qw(usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;

use Exporter 'import';
our @EXPORT = qw(kms_root kms_certs start_emulator stop_emulator emu_control
  emu_counters kms_node start_with_env);

my $python = $ENV{KMS_PYTHON} // '/usr/bin/python3';
my $certs_dir;

# Repository root (t/..).
sub kms_root
{
	return $ENV{KMS_PG_ROOT} // abs_path(dirname(__FILE__) . '/..');
}

# Directory with the certificates of test/emulator/make_certs.sh (made once).
sub kms_certs
{
	return $certs_dir if defined $certs_dir;
	$certs_dir = PostgreSQL::Test::Utils::tempdir('certs');
	my $root = kms_root();
	system('sh', "$root/test/emulator/make_certs.sh", $certs_dir) == 0
	  or die "make_certs.sh failed";
	return $certs_dir;
}

# Start an emulator.  Options:
#   cert    => 'server' (default) | 'expired' | 'wronghost' | 'untrusted' | 'selfsigned'
#   plain   => 1 for plain http (no TLS)
#   region  => 'us-east-1'
#   port    => 0 (pick one) or a fixed port (to restart on the same port)
#   args    => [ extra kms_emulator.py arguments ]
# Returns a hash: pid, port, url, ca, log, opts.
sub start_emulator
{
	my (%o) = @_;
	my $root = kms_root();
	my $certs = kms_certs();
	my $dir = PostgreSQL::Test::Utils::tempdir('emu');
	my $portfile = "$dir/port";
	my $log = "$dir/emulator.log";
	my $cert = $o{cert} // 'server';
	my @cmd = (
		$python, "$root/test/emulator/kms_emulator.py",
		'--port', $o{port} // 0,
		'--port-file', $portfile,
		'--region', $o{region} // 'us-east-1',
		'--quiet', '--die-with-parent');
	push @cmd, '--tls-cert', "$certs/$cert.pem", '--tls-key', "$certs/$cert.key"
	  unless $o{plain};
	push @cmd, @{ $o{args} // [] };

	my $pid = fork();
	die "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', $log) or die;
		open(STDERR, '>&', \*STDOUT) or die;
		exec(@cmd) or die "exec: $!";
	}
	for (my $i = 0; $i < 200; $i++)
	{
		last if -s $portfile;
		if (waitpid($pid, 1) == $pid)
		{
			diag(slurp_file($log));
			die "emulator exited at start-up";
		}
		usleep(50_000);
	}
	die "emulator did not write its port file" unless -s $portfile;
	my $port = slurp_file($portfile);
	$port =~ s/\s+//g;
	my $scheme = $o{plain} ? 'http' : 'https';
	return {
		pid => $pid,
		port => $port,
		url => "$scheme://127.0.0.1:$port",
		ca => "$certs/ca.pem",
		log => $log,
		opts => \%o
	};
}

sub stop_emulator
{
	my ($emu) = @_;
	return unless $emu && $emu->{pid};
	kill 'TERM', $emu->{pid};
	waitpid($emu->{pid}, 0);
	$emu->{pid} = undef;
}

# Call the emulator's unsigned control API; returns the decoded JSON (or text).
sub emu_control
{
	my ($emu, $method, $path, $body) = @_;
	my @cmd = ('curl', '-sS', '-k', '-X', $method, "$emu->{url}$path");
	push @cmd, '-H', 'Content-Type: application/json', '--data', $body
	  if defined $body;
	my ($stdout, $stderr);
	IPC::Run::run(\@cmd, '>', \$stdout, '2>', \$stderr)
	  or die "control call $method $path failed: $stderr";
	my $r = eval { decode_json($stdout) };
	return defined $r ? $r : $stdout;
}

sub emu_counters
{
	my ($emu) = @_;
	return emu_control($emu, 'GET', '/__emulator/counters');
}

# A node with kms_pg preloaded, the test master key 'a' and extra
# configuration, not started.
sub kms_node
{
	my ($name, $conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a') . ($conf // ''));
	return $node;
}

# (Re)start node with a server environment that has no AWS_* variables but
# those in %$env.
sub start_with_env
{
	my ($node, $env, %params) = @_;
	local %ENV = %ENV;
	delete $ENV{$_} for grep { /^AWS_/ } keys %ENV;
	$ENV{$_} = $env->{$_} for keys %{ $env // {} };
	if ($node->{_pid})
	{
		$node->restart(%params);
	}
	else
	{
		$node->start(%params);
	}
	return;
}

1;
